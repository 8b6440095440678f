//! What the pipeline records, and the sink it records into.
//!
//! The store (in `airlock-control`) implements [`AuditSink`]. Events of one
//! session are chained by hash there; here they are plain data. Events never
//! carry secrets: tokens and upstream credentials have no field to go in.

use std::future::Future;
use std::pin::Pin;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::model::{Classification, Decision};

/// Microseconds since the Unix epoch.
pub fn unix_micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One appended audit record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub session_id: Uuid,
    /// Microseconds since the Unix epoch.
    pub at_us: i64,
    pub body: EventBody,
}

impl AuditEvent {
    pub fn now(session_id: Uuid, body: EventBody) -> Self {
        AuditEvent {
            session_id,
            at_us: unix_micros(SystemTime::now()),
            body,
        }
    }
}

/// The kinds of audit records. `type` tags the JSON form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// A session was authenticated and is about to connect upstream.
    SessionStart {
        identity: String,
        identity_kind: String,
        connection: String,
        protocol: String,
        client_addr: String,
        application_name: Option<String>,
        tls: bool,
    },
    /// A connection attempt that failed before a session existed (bad token,
    /// unknown connection, policy refused `connect`, upstream down).
    AuthFailed {
        /// The user name the client claimed (never the password).
        claimed_identity: String,
        connection: String,
        protocol: String,
        client_addr: String,
        reason: String,
    },
    /// A command, recorded before it is forwarded (or refused).
    Command {
        /// Per-session command number, from 1.
        seq: u64,
        text: String,
        params: Vec<Option<String>>,
        via: String,
        classification: Classification,
        decision: Decision,
    },
    /// What came back for a command.
    CommandResult {
        seq: u64,
        /// Command tag(s), e.g. `SELECT 3`.
        tags: Vec<String>,
        rows: u64,
        duration_us: u64,
        /// SQLSTATE of the first error, if any.
        error_code: Option<String>,
        error_message: Option<String>,
        /// Masking rules that fired and how many cells they changed.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        masked: Vec<MaskCount>,
    },
    /// The session ended.
    SessionEnd {
        bytes_from_client: u64,
        bytes_to_client: u64,
        commands: u64,
        reason: String,
    },
    /// A held command became an approval request.
    ApprovalRequested {
        request_id: Uuid,
        /// The held command (`Command.seq`).
        seq: u64,
        reviewers: Vec<String>,
        min_approvals: u32,
        expires_at_us: i64,
    },
    /// A reviewer decided, or the request otherwise moved on (expired,
    /// withdrawn, released to the target).
    ApprovalDecided {
        request_id: Uuid,
        /// The request's status after this event.
        status: String,
        /// Who decided, when a reviewer did.
        reviewer: Option<String>,
        /// `approve` or `reject`, when a reviewer decided.
        decision: Option<String>,
        comment: Option<String>,
    },
}

impl EventBody {
    /// Short name of the event kind, as stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::SessionStart { .. } => "session_start",
            EventBody::AuthFailed { .. } => "auth_failed",
            EventBody::Command { .. } => "command",
            EventBody::CommandResult { .. } => "command_result",
            EventBody::SessionEnd { .. } => "session_end",
            EventBody::ApprovalRequested { .. } => "approval_requested",
            EventBody::ApprovalDecided { .. } => "approval_decided",
        }
    }
}

/// How many cells one masking rule changed in a command's results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaskCount {
    pub rule: String,
    pub cells: u64,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    #[error("audit store unavailable: {0}")]
    Unavailable(String),
}

pub type RecordFuture = Pin<Box<dyn Future<Output = Result<(), RecordError>> + Send>>;

/// Where audit events go. `append` resolves once the event is durable (as
/// durable as the store is configured to be); callers that must record before
/// acting await it, others may drop the future and the event is still written
/// in order.
pub trait AuditSink: Send + Sync + 'static {
    /// Appends an event; the future resolves once it is recorded (durably,
    /// as the sink defines it). The order of a session's events is fixed at
    /// the call, whether or not the future is awaited.
    fn append(&self, event: AuditEvent) -> RecordFuture;

    /// Appends an event nobody waits for (a command's result). The sink may
    /// hold it briefly and write it with the next event; its order among
    /// the session's events is still fixed at the call.
    fn append_detached(&self, event: AuditEvent) {
        drop(self.append(event));
    }
}

/// A sink that keeps events in memory; for tests and `policy explain`.
#[derive(Default)]
pub struct MemorySink {
    pub events: std::sync::Mutex<Vec<AuditEvent>>,
}

impl AuditSink for MemorySink {
    fn append(&self, event: AuditEvent) -> RecordFuture {
        if let Ok(mut v) = self.events.lock() {
            v.push(event);
        }
        Box::pin(async { Ok(()) })
    }
}

//! Data types the store returns and the REST API serves; the CLI parses them back.
//!
//! They live apart from the store's machinery so that a client can depend on
//! the shapes without caring how they are produced. Nothing here has a field
//! for a token or a credential: the store never holds one.

use airlock_pipeline::model::{Classification, Decision};
use airlock_pipeline::record::MaskCount;
use serde::{Deserialize, Serialize};

/// Which sessions to list. Every field narrows the result; `None` means "any".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFilter {
    pub identity: Option<String>,
    pub connection: Option<String>,
    /// Only sessions started at or after this instant (µs since the Unix epoch).
    pub since_us: Option<i64>,
    /// At most this many sessions; the store caps it at [`MAX_LIST_LIMIT`].
    pub limit: Option<u32>,
    /// Only connection attempts that failed before a session existed.
    #[serde(default)]
    pub failed_only: bool,
}

/// How many sessions a listing returns when the filter does not say.
pub const DEFAULT_LIST_LIMIT: u32 = 50;
/// The most sessions one listing returns, so one request cannot pull the whole store.
pub const MAX_LIST_LIMIT: u32 = 1000;

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionStatus {
    /// Started and not yet ended (or the gateway stopped before recording the end).
    Active,
    Ended,
    /// A connection attempt refused before a session existed.
    Failed,
}

impl SessionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionStatus::Active => "active",
            SessionStatus::Ended => "ended",
            SessionStatus::Failed => "failed",
        }
    }

    /// Parses the stored column value; unknown values read as `Active` so a
    /// newer writer's status does not make old readers fail.
    pub fn from_column(s: &str) -> Self {
        match s {
            "ended" => SessionStatus::Ended,
            "failed" => SessionStatus::Failed,
            _ => SessionStatus::Active,
        }
    }
}

/// One row of a session listing, derived from the session's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionSummary {
    /// The session's UUID.
    pub id: String,
    /// The authenticated identity, or for a failed attempt the name the client claimed.
    pub identity: String,
    pub identity_kind: Option<String>,
    pub connection: String,
    pub protocol: String,
    pub client_addr: String,
    pub application_name: Option<String>,
    pub tls: bool,
    /// µs since the Unix epoch.
    pub started_at_us: i64,
    pub ended_at_us: Option<i64>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub commands: u64,
    /// Commands whose verdict was deny.
    pub denied: u64,
    /// True for a connection attempt that failed before a session existed.
    pub failed: bool,
    pub status: SessionStatus,
    /// Why the session ended, or why the attempt failed.
    pub end_reason: Option<String>,
}

/// A session with its timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionDetail {
    pub summary: SessionSummary,
    /// Commands in order, each with its result when one was recorded.
    pub commands: Vec<CommandEntry>,
    /// Every other event (start, end, failures, results without a command), in order.
    pub events: Vec<EventEntry>,
}

/// A recorded command joined with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandEntry {
    /// Position of the command event in the session's chain.
    pub seq: i64,
    /// The adapter's command number (from 1).
    pub command_seq: u64,
    pub at_us: i64,
    pub text: String,
    pub params: Vec<Option<String>>,
    pub via: String,
    pub classification: Classification,
    pub decision: Decision,
    /// `None` when nothing came back: refused, held, or the session died first.
    pub result: Option<CommandOutcome>,
}

/// What came back for a command: one result event, or the sum of several
/// when the client fetched a portal in steps (Execute with a row limit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandOutcome {
    /// Position of the (last) result event in the session's chain.
    pub seq: i64,
    pub at_us: i64,
    /// Command tags of every step, in order.
    pub tags: Vec<String>,
    /// Rows of every step together.
    pub rows: u64,
    /// Time upstream spent answering, every step together.
    pub duration_us: u64,
    /// The first error of any step.
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    #[serde(default)]
    pub masked: Vec<MaskCount>,
    /// Result events summed here: more than 1 for a portal fetched in steps.
    #[serde(default = "one")]
    pub fetches: u32,
}

fn one() -> u32 {
    1
}

impl CommandOutcome {
    /// This outcome followed by the next step of the same command.
    pub fn then(mut self, next: CommandOutcome) -> CommandOutcome {
        self.seq = next.seq;
        self.at_us = next.at_us;
        self.tags.extend(next.tags);
        self.rows += next.rows;
        self.duration_us += next.duration_us;
        if self.error_code.is_none() {
            self.error_code = next.error_code;
            self.error_message = next.error_message;
        }
        for m in next.masked {
            match self.masked.iter_mut().find(|c| c.rule == m.rule) {
                Some(c) => c.cells += m.cells,
                None => self.masked.push(m),
            }
        }
        self.fetches += next.fetches;
        self
    }
}

/// Any event that is not a command joined with its result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEntry {
    pub seq: i64,
    pub at_us: i64,
    pub kind: String,
    /// The event body as stored (JSON of `EventBody`, or whatever the row holds).
    pub body: serde_json::Value,
}

/// Outcome of walking every session's hash chain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub sessions: u64,
    pub events: u64,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// One thing wrong with one session's chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub session_id: String,
    /// The event the problem is about, when it is about one.
    pub seq: Option<i64>,
    pub problem: String,
}

/// Counters about the journal and the indexer, for tests and diagnostics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    /// Events written to the journal (each one durable before its append returned).
    pub events: u64,
    /// SQLite transactions the indexer committed.
    pub batches: u64,
    /// Events the indexer copied into SQLite.
    pub indexed_events: u64,
    /// Largest number of events indexed in one transaction.
    pub max_batch: u64,
    /// Index transactions that failed (and were retried).
    pub failed_batches: u64,
    /// Journal bytes the indexer could not read as events and skipped (a
    /// line torn by a crash, or damage), each logged as an error.
    pub skipped_bytes: u64,
    /// Writes to the journal's files; fewer than `events` when appends that
    /// came together shared a write.
    pub journal_writes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        seq: i64,
        tags: &[&str],
        rows: u64,
        error: Option<&str>,
        masked: u64,
    ) -> CommandOutcome {
        CommandOutcome {
            seq,
            at_us: seq * 10,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            rows,
            duration_us: 100,
            error_code: error.map(str::to_string),
            error_message: error.map(|e| format!("error {e}")),
            masked: vec![MaskCount {
                rule: "email".into(),
                cells: masked,
            }],
            fetches: 1,
        }
    }

    #[test]
    fn steps_of_one_portal_add_up() {
        let all = step(3, &[], 3, None, 2)
            .then(step(5, &[], 3, Some("57014"), 1))
            .then(step(7, &["SELECT 1"], 1, Some("XX000"), 0));
        assert_eq!((all.seq, all.at_us), (7, 70), "the last step's position");
        assert_eq!(all.tags, ["SELECT 1"]);
        assert_eq!((all.rows, all.duration_us, all.fetches), (7, 300, 3));
        assert_eq!(all.error_code.as_deref(), Some("57014"), "the first error");
        assert_eq!(all.error_message.as_deref(), Some("error 57014"));
        assert_eq!(all.masked.len(), 1);
        assert_eq!(all.masked[0].cells, 3);
    }

    #[test]
    fn an_outcome_without_fetches_reads_as_one() {
        let json = r#"{"seq":1,"at_us":2,"tags":[],"rows":0,"duration_us":0,"error_code":null,"error_message":null}"#;
        let o: CommandOutcome = serde_json::from_str(json).unwrap();
        assert_eq!(o.fetches, 1);
    }
}

//! Helpers shared by the store and API tests: event builders and raw access to the file.

#![allow(dead_code)]

use std::path::Path;

use airlock_control::store::{Store, StoreOptions, SyncMode};
use airlock_pipeline::model::{ActionClass, Classification, Decision, SqlStatement, Verdict};
use airlock_pipeline::record::{AuditEvent, AuditSink, EventBody, MaskCount};
use sqlx::{Connection, SqliteConnection};
use uuid::Uuid;

pub async fn open(dir: &Path) -> Store {
    open_with(dir, 512).await
}

pub async fn open_with(dir: &Path, max_batch: usize) -> Store {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    Store::open(
        &url,
        StoreOptions {
            // Normal keeps the suite quick; Full is exercised in its own test.
            sync: SyncMode::Normal,
            max_batch,
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open store")
}

/// A second, independent connection to the store's file, for tampering.
pub async fn raw(dir: &Path) -> SqliteConnection {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    SqliteConnection::connect(&url)
        .await
        .expect("raw connection")
}

pub fn ev(session: Uuid, at_us: i64, body: EventBody) -> AuditEvent {
    AuditEvent {
        session_id: session,
        at_us,
        body,
    }
}

pub fn start(identity: &str, connection: &str) -> EventBody {
    EventBody::SessionStart {
        identity: identity.into(),
        identity_kind: "agent".into(),
        connection: connection.into(),
        protocol: "postgres".into(),
        client_addr: "127.0.0.1:50000".into(),
        application_name: Some("psql".into()),
        tls: true,
    }
}

pub fn decision(verdict: Verdict) -> Decision {
    Decision {
        verdict,
        action: "sql:read".into(),
        policies: vec!["policy0".into()],
        reason: None,
        reviewers: vec![],
        min_approvals: 0,
        approval_ttl_secs: None,
        policy_version: "v1".into(),
        statement: 0,
    }
}

pub fn command(seq: u64, text: &str, verdict: Verdict) -> EventBody {
    EventBody::Command {
        seq,
        text: text.into(),
        params: vec![Some("42".into()), None],
        via: "extended".into(),
        classification: Classification {
            statements: vec![SqlStatement {
                kind: "select".into(),
                class: ActionClass::Read,
                tables_read: vec!["users".into()],
                tables_written: vec![],
                has_where: None,
                functions: vec![],
                text: text.into(),
                note: None,
            }],
        },
        decision: decision(verdict),
    }
}

pub fn result(seq: u64, rows: u64) -> EventBody {
    EventBody::CommandResult {
        seq,
        tags: vec![format!("SELECT {rows}")],
        rows,
        duration_us: 250,
        error_code: None,
        error_message: None,
        masked: vec![MaskCount {
            rule: "email".into(),
            cells: rows,
        }],
    }
}

pub fn end(commands: u64) -> EventBody {
    EventBody::SessionEnd {
        bytes_from_client: 1000,
        bytes_to_client: 2000,
        commands,
        reason: "client terminated".into(),
    }
}

/// Records a whole session: start, `commands` commands each with a result, end.
/// Returns the number of events written.
pub async fn session(store: &Store, id: Uuid, identity: &str, at_us: i64, commands: u64) -> u64 {
    let mut t = at_us;
    let mut next = || {
        t += 10;
        t
    };
    store
        .append(ev(id, next(), start(identity, "prod-pg")))
        .await
        .unwrap();
    for seq in 1..=commands {
        let text = format!("SELECT {seq}");
        store
            .append(ev(id, next(), command(seq, &text, Verdict::Allow)))
            .await
            .unwrap();
        store
            .append(ev(id, next(), result(seq, seq)))
            .await
            .unwrap();
    }
    store.append(ev(id, next(), end(commands))).await.unwrap();
    2 + 2 * commands
}

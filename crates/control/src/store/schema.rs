//! The SQLite schema and the numbered migrations that build it.
//!
//! Migrations are applied in order inside one transaction at open, and the
//! highest applied number is kept in `schema_version`, so a store written by a
//! newer binary is refused instead of being misread.

use sqlx::SqliteConnection;

use super::StoreError;

/// `(version, statements)`; append new versions, never edit applied ones.
const MIGRATIONS: &[(i64, &str)] = &[(1, V1), (2, V2), (3, V3)];

/// The newest schema this binary understands.
pub const CURRENT_VERSION: i64 = 3;

const V1: &str = r#"
CREATE TABLE events (
    id         INTEGER PRIMARY KEY,
    session_id TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    at_us      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    prev_hash  TEXT    NOT NULL,
    hash       TEXT    NOT NULL,
    UNIQUE (session_id, seq)
);

CREATE TABLE session_heads (
    session_id TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL,
    last_hash  TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE sessions (
    session_id        TEXT PRIMARY KEY,
    identity          TEXT    NOT NULL DEFAULT '',
    identity_kind     TEXT,
    connection        TEXT    NOT NULL DEFAULT '',
    protocol          TEXT    NOT NULL DEFAULT '',
    client_addr       TEXT    NOT NULL DEFAULT '',
    application_name  TEXT,
    tls               INTEGER NOT NULL DEFAULT 0,
    started_us        INTEGER NOT NULL,
    ended_us          INTEGER,
    bytes_from_client INTEGER NOT NULL DEFAULT 0,
    bytes_to_client   INTEGER NOT NULL DEFAULT 0,
    commands          INTEGER NOT NULL DEFAULT 0,
    denied            INTEGER NOT NULL DEFAULT 0,
    failed            INTEGER NOT NULL DEFAULT 0,
    status            TEXT    NOT NULL DEFAULT 'active',
    end_reason        TEXT
);

CREATE INDEX sessions_started ON sessions (started_us DESC);
CREATE INDEX sessions_identity ON sessions (identity, started_us DESC);
CREATE INDEX sessions_connection ON sessions (connection, started_us DESC);
"#;

/// Approvals (held commands and just-in-time access requests), the reviewers'
/// decisions, and every notification delivery attempt. State changes are
/// single guarded UPDATEs (`WHERE status = 'pending'`), so the table itself
/// is the arbiter when reviewers, timers and sessions race.
const V2: &str = r#"
CREATE TABLE approvals (
    id             TEXT PRIMARY KEY,
    kind           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    requester      TEXT    NOT NULL,
    connection     TEXT    NOT NULL,
    session_id     TEXT,
    -- Required reviewer groups as ',a,b,' so instr() can match one exactly.
    reviewers      TEXT    NOT NULL,
    min_approvals  INTEGER NOT NULL,
    subject        TEXT    NOT NULL,
    request        TEXT    NOT NULL,
    created_us     INTEGER NOT NULL,
    expires_us     INTEGER NOT NULL,
    decided_us     INTEGER,
    claimed        INTEGER NOT NULL DEFAULT 0,
    claimed_us     INTEGER,
    grant_until_us INTEGER,
    revoked_us     INTEGER,
    revoked_by     TEXT
);

CREATE INDEX approvals_created ON approvals (created_us DESC);
CREATE INDEX approvals_status ON approvals (status, created_us DESC);
CREATE INDEX approvals_requester ON approvals (requester, created_us DESC);

CREATE TABLE approval_decisions (
    approval_id TEXT    NOT NULL REFERENCES approvals (id),
    reviewer    TEXT    NOT NULL,
    decision    TEXT    NOT NULL,
    comment     TEXT,
    at_us       INTEGER NOT NULL,
    PRIMARY KEY (approval_id, reviewer)
);

CREATE TABLE notify_deliveries (
    id          INTEGER PRIMARY KEY,
    delivery_id TEXT    NOT NULL,
    approval_id TEXT    NOT NULL,
    event       TEXT    NOT NULL,
    target      TEXT    NOT NULL,
    attempt     INTEGER NOT NULL,
    at_us       INTEGER NOT NULL,
    ok          INTEGER NOT NULL,
    status_code INTEGER,
    error       TEXT
);

CREATE INDEX notify_deliveries_approval ON notify_deliveries (approval_id, at_us);
"#;

/// Where the indexer has got to in the audit journal: every event before
/// (segment, offset) is in `events`. One row, moved in the same transaction
/// as the events it covers.
const V3: &str = r#"
CREATE TABLE journal_checkpoint (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    segment INTEGER NOT NULL,
    offset  INTEGER NOT NULL
);

INSERT INTO journal_checkpoint (id, segment, offset) VALUES (1, 1, 0);
"#;

/// Brings the schema up to [`CURRENT_VERSION`].
pub async fn migrate(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        .execute(&mut *conn)
        .await?;
    // IMMEDIATE takes the write lock before reading the version, so two
    // processes opening the same new file cannot both apply migration 1.
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let result = apply(conn).await;
    let end = if result.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::query(end).execute(&mut *conn).await;
    result?;
    ended?;
    Ok(())
}

async fn apply(conn: &mut SqliteConnection) -> Result<(), StoreError> {
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM schema_version")
        .fetch_one(&mut *conn)
        .await?;
    let found = found.unwrap_or(0);
    if found > CURRENT_VERSION {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: CURRENT_VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > found) {
        sqlx::raw_sql(sql).execute(&mut *conn).await?;
        sqlx::query("DELETE FROM schema_version")
            .execute(&mut *conn)
            .await?;
        sqlx::query("INSERT INTO schema_version (version) VALUES (?)")
            .bind(version)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

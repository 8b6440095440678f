//! The SQLite schema and the numbered migrations that build it.
//!
//! Migrations are applied in order inside one transaction at open, and the
//! highest applied number is kept in `schema_version`, so a store written by a
//! newer binary is refused instead of being misread.

use sqlx::SqliteConnection;

use super::StoreError;

/// `(version, statements)`; append new versions, never edit applied ones.
const MIGRATIONS: &[(i64, &str)] = &[(1, V1)];

/// The newest schema this binary understands.
pub const CURRENT_VERSION: i64 = 1;

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

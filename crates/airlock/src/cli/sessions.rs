//! `airlock sessions list|show`: recorded sessions from the REST API, as
//! tables for people or the API's JSON for scripts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_control::store::{
    CommandEntry, EventEntry, SessionDetail, SessionStatus, SessionSummary,
};
use airlock_pipeline::model::Verdict;
use clap::Subcommand;

use super::client::ApiClient;
use super::table::{Table, truncate};

#[derive(Debug, Subcommand)]
pub enum SessionsCmd {
    /// List recorded sessions, newest first.
    List {
        /// Only sessions of this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only sessions on this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only sessions started within this long (`1h`, `30m`) or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// Only connection attempts that failed (bad token, unknown connection, ...).
        #[arg(long)]
        failed: bool,
        /// At most this many sessions.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one session and its timeline of commands.
    Show {
        /// Session id, or a unique prefix of it (as `list` shows).
        id: String,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: SessionsCmd) -> anyhow::Result<()> {
    let client = ApiClient::from_env()?;
    match cmd {
        SessionsCmd::List {
            identity,
            connection,
            since,
            failed,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(identity.map(|v| ("identity", v)));
            query.extend(connection.map(|v| ("connection", v)));
            query.extend(since.map(|v| ("since", v)));
            if failed {
                query.push(("failed", "true".into()));
            }
            client
                .print(
                    &["api", "sessions"],
                    &query,
                    json,
                    |s: &Vec<SessionSummary>| list_table(s),
                )
                .await
        }
        SessionsCmd::Show { id, json } => {
            client
                .print(&["api", "sessions", id.as_str()], &[], json, show_text)
                .await
        }
    }
}

/// µs since the epoch as a time; negative values (never written) read as the epoch.
fn instant(us: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0))
}

/// `2024-05-01 12:03:04Z`.
fn fmt_time(us: i64) -> String {
    humantime::format_rfc3339_seconds(instant(us))
        .to_string()
        .replacen('T', " ", 1)
}

/// `12:03:04.123`, for timeline rows within one session.
fn fmt_clock(us: i64) -> String {
    let full = humantime::format_rfc3339_millis(instant(us)).to_string();
    full.get(11..23).unwrap_or(&full).to_owned()
}

/// Short human duration: `850µs`, `3.4ms`, `1.25s`, `5m 3s`.
pub fn fmt_duration_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        format!("{:.1}ms", us as f64 / 1_000.0)
    } else if us < 60_000_000 {
        format!("{:.2}s", us as f64 / 1_000_000.0)
    } else {
        humantime::format_duration(Duration::from_secs(us / 1_000_000)).to_string()
    }
}

fn fmt_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// How long the session lasted; `-` while it runs and for failed attempts,
/// which never had a session to time.
fn session_duration(s: &SessionSummary) -> String {
    match s.ended_at_us {
        Some(end) if !s.failed => {
            fmt_duration_us(u64::try_from(end - s.started_at_us).unwrap_or(0))
        }
        _ => "-".into(),
    }
}

fn list_table(sessions: &[SessionSummary]) -> String {
    if sessions.is_empty() {
        return "no sessions found\n".into();
    }
    let mut t = Table::new([
        "ID",
        "IDENTITY",
        "CONNECTION",
        "CLIENT",
        "STARTED",
        "DURATION",
        "COMMANDS",
        "STATUS",
    ])
    .max_width(1, 24)
    .max_width(2, 24)
    .max_width(3, 24)
    .align_right(5)
    .align_right(6);
    for s in sessions {
        let status = match (s.status, s.denied) {
            (SessionStatus::Failed, _) => {
                format!("failed: {}", s.end_reason.as_deref().unwrap_or(""))
            }
            (status, 0) => status.as_str().to_owned(),
            (status, denied) => format!("{} ({denied} denied)", status.as_str()),
        };
        t.row([
            short_id(&s.id).to_owned(),
            s.identity.clone(),
            s.connection.clone(),
            s.client_addr.clone(),
            fmt_time(s.started_at_us),
            session_duration(s),
            s.commands.to_string(),
            truncate(&status, 48),
        ]);
    }
    t.render()
}

fn show_text(d: &SessionDetail) -> String {
    let s = &d.summary;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("{name:<12}{value}\n"));
    };
    field("Session", s.id.clone());
    field(
        "Identity",
        match &s.identity_kind {
            Some(kind) => format!("{} ({kind})", s.identity),
            None => s.identity.clone(),
        },
    );
    field("Connection", format!("{} ({})", s.connection, s.protocol));
    let mut client = s.client_addr.clone();
    if let Some(app) = &s.application_name {
        client.push_str(&format!(", {app}"));
    }
    client.push_str(if s.tls { ", TLS" } else { ", no TLS" });
    field("Client", client);
    field("Started", fmt_time(s.started_at_us));
    match s.ended_at_us {
        Some(end) if s.failed => field("Ended", fmt_time(end)),
        Some(end) => field(
            "Ended",
            format!("{} (after {})", fmt_time(end), session_duration(s)),
        ),
        None => {}
    }
    let mut status = s.status.as_str().to_owned();
    if let Some(reason) = &s.end_reason {
        status.push_str(&format!(": {reason}"));
    }
    field("Status", status);
    field("Commands", format!("{} ({} denied)", s.commands, s.denied));
    field(
        "Traffic",
        format!(
            "{} from client, {} to client",
            fmt_bytes(s.bytes_from_client),
            fmt_bytes(s.bytes_to_client)
        ),
    );
    out.push('\n');
    out.push_str(&timeline_table(&d.commands, &d.events).render());
    out
}

/// One row per event, in chain order: commands with their outcome, and the
/// session's other events in between.
fn timeline_table(commands: &[CommandEntry], events: &[EventEntry]) -> Table {
    let mut t = Table::new([
        "SEQ",
        "TIME",
        "VERDICT",
        "STATEMENT",
        "PARAMS",
        "OUTCOME",
        "DURATION",
    ])
    .align_right(0)
    .max_width(3, 60)
    .max_width(4, 30)
    .max_width(5, 40)
    .align_right(6);
    let mut rows: Vec<(i64, [String; 7])> = Vec::new();
    for c in commands {
        rows.push((c.seq, command_row(c)));
    }
    for e in events {
        rows.push((
            e.seq,
            [
                e.seq.to_string(),
                fmt_clock(e.at_us),
                String::new(),
                event_text(e),
                String::new(),
                String::new(),
                String::new(),
            ],
        ));
    }
    rows.sort_by_key(|(seq, _)| *seq);
    for (_, row) in rows {
        t.row(row);
    }
    t
}

fn command_row(c: &CommandEntry) -> [String; 7] {
    let params = c
        .params
        .iter()
        .map(|p| p.as_deref().unwrap_or("NULL"))
        .collect::<Vec<_>>()
        .join(", ");
    let (outcome, duration) = match &c.result {
        Some(r) => {
            let mut outcome = match (&r.error_code, &r.error_message) {
                (Some(code), Some(msg)) => format!("ERROR {code}: {msg}"),
                (Some(code), None) => format!("ERROR {code}"),
                // A portal fetched in steps: its tags count single steps.
                (None, _) if r.fetches > 1 => {
                    format!("{} rows in {} fetches", r.rows, r.fetches)
                }
                (None, _) if !r.tags.is_empty() => r.tags.join("; "),
                (None, _) => format!("{} rows", r.rows),
            };
            let masked: u64 = r.masked.iter().map(|m| m.cells).sum();
            if masked > 0 {
                outcome.push_str(&format!(" ({masked} masked)"));
            }
            (outcome, fmt_duration_us(r.duration_us))
        }
        None => {
            let outcome = match c.decision.verdict {
                Verdict::Deny => "refused",
                Verdict::Review => "held for review",
                Verdict::Allow => "-",
            };
            (outcome.to_owned(), String::new())
        }
    };
    [
        c.seq.to_string(),
        fmt_clock(c.at_us),
        c.decision.verdict.as_str().to_owned(),
        c.text.clone(),
        params,
        outcome,
        duration,
    ]
}

/// A one-line description of a non-command event.
fn event_text(e: &EventEntry) -> String {
    let text = |key: &str| e.body.get(key).and_then(|v| v.as_str()).unwrap_or("");
    match e.kind.as_str() {
        "session_start" => format!(
            "[session start] {} on {}",
            text("identity"),
            text("connection")
        ),
        "session_end" => format!("[session end] {}", text("reason")),
        "auth_failed" => format!("[connection refused] {}", text("reason")),
        "command_result" => format!(
            "[result without a recorded command #{}]",
            e.body.get("seq").map(|v| v.to_string()).unwrap_or_default()
        ),
        other => format!("[{other}]"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_control::store::CommandOutcome;
    use airlock_pipeline::model::{Classification, Decision};

    fn summary() -> SessionSummary {
        SessionSummary {
            id: "0193a1b2-c3d4-7000-8000-00000000abcd".into(),
            identity: "alice".into(),
            identity_kind: Some("human".into()),
            connection: "prod-pg".into(),
            protocol: "postgres".into(),
            client_addr: "127.0.0.1:5000".into(),
            application_name: Some("psql".into()),
            tls: true,
            started_at_us: 1_000_000,
            ended_at_us: Some(3_500_000),
            bytes_from_client: 100,
            bytes_to_client: 4096,
            commands: 2,
            denied: 1,
            failed: false,
            status: SessionStatus::Ended,
            end_reason: Some("client terminated".into()),
        }
    }

    fn command(
        seq: i64,
        text: &str,
        verdict: Verdict,
        result: Option<CommandOutcome>,
    ) -> CommandEntry {
        CommandEntry {
            seq,
            command_seq: seq as u64,
            at_us: 1_000_000 + seq * 1000,
            text: text.into(),
            params: vec![Some("42".into()), None],
            via: "extended".into(),
            classification: Classification { statements: vec![] },
            decision: Decision {
                verdict,
                action: "sql:read".into(),
                policies: vec![],
                reason: None,
                reviewers: vec![],
                min_approvals: 0,
                approval_ttl_secs: None,
                policy_version: "v1".into(),
                statement: 0,
            },
            result,
        }
    }

    #[test]
    fn list_shows_short_ids_and_status() {
        let mut failed = summary();
        failed.status = SessionStatus::Failed;
        failed.end_reason = Some("bad credentials".into());
        let text = list_table(&[summary(), failed]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("ID        IDENTITY"), "{text}");
        assert!(lines[1].starts_with("0193a1b2  alice"), "{text}");
        assert!(lines[1].contains("1970-01-01 00:00:01Z"), "{text}");
        assert!(lines[1].contains("2.50s"), "{text}");
        assert!(lines[1].ends_with("ended (1 denied)"), "{text}");
        assert!(lines[2].ends_with("failed: bad credentials"), "{text}");
        assert_eq!(list_table(&[]), "no sessions found\n");
    }

    #[test]
    fn show_interleaves_commands_and_events() {
        let ok = CommandOutcome {
            seq: 3,
            at_us: 1_003_500,
            tags: vec!["SELECT 3".into()],
            rows: 3,
            duration_us: 850,
            error_code: None,
            error_message: None,
            masked: vec![],
            fetches: 1,
        };
        let detail = SessionDetail {
            summary: summary(),
            commands: vec![
                command(2, "SELECT *\n  FROM users", Verdict::Allow, Some(ok)),
                command(4, "DROP TABLE users", Verdict::Deny, None),
            ],
            events: vec![EventEntry {
                seq: 1,
                at_us: 1_000_000,
                kind: "session_start".into(),
                body: serde_json::json!({"identity": "alice", "connection": "prod-pg"}),
            }],
        };
        let text = show_text(&detail);
        assert!(
            text.starts_with("Session     0193a1b2-c3d4-7000-8000-00000000abcd\n"),
            "{text}"
        );
        assert!(
            text.contains("Client      127.0.0.1:5000, psql, TLS\n"),
            "{text}"
        );
        let timeline: Vec<&str> = text.lines().skip_while(|l| !l.starts_with("SEQ")).collect();
        assert!(
            timeline[1].contains("[session start] alice on prod-pg"),
            "{text}"
        );
        let cells: Vec<&str> = timeline[2]
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        assert_eq!(
            cells,
            [
                "2",
                "00:00:01.002",
                "allow",
                "SELECT * FROM users",
                "42, NULL",
                "SELECT 3",
                "850µs"
            ],
            "{text}"
        );
        assert!(timeline[2].ends_with("850µs"), "{text}");
        assert!(
            timeline[3].contains("deny") && timeline[3].ends_with("refused"),
            "{text}"
        );
        assert!(
            text.lines().all(|l| l == l.trim_end()),
            "no trailing spaces"
        );
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(fmt_duration_us(850), "850µs");
        assert_eq!(fmt_duration_us(3_400), "3.4ms");
        assert_eq!(fmt_duration_us(1_250_000), "1.25s");
        assert_eq!(fmt_duration_us(303_000_000), "5m 3s");
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(fmt_time(1_000_000), "1970-01-01 00:00:01Z");
        assert_eq!(fmt_clock(3_723_456_000), "01:02:03.456");
        assert_eq!(fmt_bytes(512), "512 B");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
    }
}

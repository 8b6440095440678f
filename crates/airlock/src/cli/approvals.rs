//! `airlock approvals list|show|approve|reject|watch`: approval requests over
//! the REST API, as tables for people or the API's JSON for scripts, and a
//! follower of the live event stream (Server-Sent Events).

use std::time::{Duration, UNIX_EPOCH};

use airlock_control::approvals::{ApprovalEvent, ApprovalEventKind, ApprovalRecord};
use airlock_pipeline::approvals::{ApprovalSubject, DecisionKind};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::client::{ApiClient, print_json};
use super::table::{Table, truncate};

#[derive(Debug, Subcommand)]
pub enum ApprovalsCmd {
    /// List approval requests you may see, newest first.
    List {
        /// Only requests in this state.
        #[arg(long, value_parser = ["pending", "approved", "rejected", "expired", "withdrawn", "executed"])]
        status: Option<String>,
        /// Only requests on this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only requests made by this identity.
        #[arg(long)]
        identity: Option<String>,
        /// At most this many requests.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one request: what is asked, by whom, and the decisions so far.
    Show {
        /// Request id, or a unique prefix of it (as `list` shows).
        id: String,
        /// Print the API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a request (you must be a human in one of its reviewer groups).
    Approve {
        /// Request id, or a unique prefix of it.
        id: String,
        /// A note kept with your decision.
        #[arg(long, visible_alias = "reason")]
        comment: Option<String>,
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Reject a request; one rejection rejects it.
    Reject {
        /// Request id, or a unique prefix of it.
        id: String,
        /// Why; shown to the requester.
        #[arg(long, visible_alias = "reason")]
        comment: String,
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// Follow approval events as they happen, one line each (Ctrl-C stops).
    Watch {
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: ApprovalsCmd) -> anyhow::Result<()> {
    let client = ApiClient::from_env()?;
    match cmd {
        ApprovalsCmd::List {
            status,
            connection,
            identity,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(status.map(|v| ("status", v)));
            query.extend(connection.map(|v| ("connection", v)));
            query.extend(identity.map(|v| ("identity", v)));
            client
                .print(
                    &["api", "approvals"],
                    &query,
                    json,
                    |r: &Vec<ApprovalRecord>| list_table(r),
                )
                .await
        }
        ApprovalsCmd::Show { id, json } => {
            client
                .print(&["api", "approvals", id.as_str()], &[], json, show_text)
                .await
        }
        ApprovalsCmd::Approve { id, comment, json } => {
            let body = serde_json::json!({ "comment": comment });
            decide(&client, &id, "approve", &body, json).await
        }
        ApprovalsCmd::Reject { id, comment, json } => {
            if comment.trim().is_empty() {
                bail!("--comment must say why the request is rejected");
            }
            let body = serde_json::json!({ "comment": comment });
            decide(&client, &id, "reject", &body, json).await
        }
        ApprovalsCmd::Watch { json } => watch(&client, json).await,
    }
}

async fn decide(
    client: &ApiClient,
    id: &str,
    verb: &str,
    body: &serde_json::Value,
    json: bool,
) -> anyhow::Result<()> {
    let value = client
        .post_value(&["api", "approvals", id, verb], body)
        .await?;
    if json {
        return print_json(&value);
    }
    let record: ApprovalRecord =
        serde_json::from_value(value).context("unexpected response from the Airlock API")?;
    let r = &record.request;
    let done = match verb {
        "approve" => "approved",
        _ => "rejected",
    };
    println!(
        "{done} request {}; it is now {} ({})",
        short_id(&r.id.to_string()),
        r.status.as_str(),
        approvals_count(&record)
    );
    Ok(())
}

async fn watch(client: &ApiClient, json: bool) -> anyhow::Result<()> {
    let mut events = SseReader::new(client.stream(&["api", "approvals", "events"]).await?);
    if !json {
        eprintln!("watching approval events (Ctrl-C to stop)");
    }
    while let Some(sse) = events.next().await? {
        if sse.event == "lagged" {
            eprintln!("(missed {} events; run `airlock approvals list`)", sse.data);
            continue;
        }
        if json {
            // The API's JSON, one object per line, exactly as sent.
            println!("{}", sse.data);
            continue;
        }
        match serde_json::from_str::<ApprovalEvent>(&sse.data) {
            Ok(ev) => println!("{}", event_line(&ev)),
            Err(_) => println!("{} {}", sse.event, truncate(&sse.data, 120)),
        }
    }
    bail!("the event stream ended; the gateway may have stopped")
}

pub(super) fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// `2024-05-01 12:03:04Z`.
pub(super) fn fmt_time(us: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_micros(u64::try_from(us).unwrap_or(0));
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replacen('T', " ", 1)
}

/// `12:03:04`, for event lines.
fn fmt_clock(us: i64) -> String {
    let full = fmt_time(us);
    full.get(11..19).unwrap_or(&full).to_owned()
}

/// `1/2 approvals`.
fn approvals_count(record: &ApprovalRecord) -> String {
    let r = &record.request;
    let given = r
        .decisions
        .iter()
        .filter(|d| d.decision == DecisionKind::Approve)
        .count();
    format!("{given}/{} approvals", r.min_approvals.max(1))
}

/// What is asked, in one short line.
fn what(record: &ApprovalRecord) -> String {
    match &record.request.subject {
        ApprovalSubject::Command { text, .. } => text.clone(),
        ApprovalSubject::Access {
            duration_secs,
            reason,
        } => format!(
            "access for {}: {reason}",
            humantime::format_duration(Duration::from_secs(*duration_secs))
        ),
    }
}

fn list_table(records: &[ApprovalRecord]) -> String {
    if records.is_empty() {
        return "no approval requests found\n".into();
    }
    let mut t = Table::new([
        "ID",
        "REQUESTER",
        "CONNECTION",
        "STATUS",
        "APPROVALS",
        "CREATED",
        "REQUEST",
    ])
    .max_width(1, 20)
    .max_width(2, 20)
    .max_width(6, 60);
    for rec in records {
        let r = &rec.request;
        t.row([
            short_id(&r.id.to_string()).to_owned(),
            r.requester.clone(),
            r.connection.clone(),
            r.status.as_str().to_owned(),
            approvals_count(rec),
            fmt_time(r.created_at_us),
            what(rec),
        ]);
    }
    t.render()
}

fn show_text(rec: &ApprovalRecord) -> String {
    let r = &rec.request;
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("{name:<12}{value}\n"));
    };
    field("Request", r.id.to_string());
    field("Status", r.status.as_str().to_owned());
    field(
        "Requester",
        format!("{} ({})", r.requester, r.requester_kind.as_str()),
    );
    field("Connection", r.connection.clone());
    field("Created", fmt_time(r.created_at_us));
    field("Expires", fmt_time(r.expires_at_us));
    if let Some(at) = rec.decided_at_us {
        field("Decided", fmt_time(at));
    }
    if let Some(at) = rec.executed_at_us {
        field("Released", fmt_time(at));
    }
    let groups = if r.reviewers.is_empty() {
        "any human".to_owned()
    } else {
        r.reviewers.join(", ")
    };
    field("Reviewers", format!("{groups} ({})", approvals_count(rec)));
    if let Some(reason) = &r.reason {
        field("Reason", reason.clone());
    }
    if !r.policies.is_empty() {
        field("Policies", r.policies.join(", "));
    }
    match &r.subject {
        ApprovalSubject::Command {
            session_id,
            seq,
            text,
            params,
            ..
        } => {
            field("Session", format!("{session_id} (command {seq})"));
            field("Command", truncate(text, 400));
            if !params.is_empty() {
                let shown: Vec<&str> = params
                    .iter()
                    .map(|p| p.as_deref().unwrap_or("NULL"))
                    .collect();
                field("Params", truncate(&shown.join(", "), 200));
            }
        }
        ApprovalSubject::Access { duration_secs, .. } => {
            field(
                "Access",
                humantime::format_duration(Duration::from_secs(*duration_secs)).to_string(),
            );
            if let Some(until) = rec.grant_until_us {
                field("Until", fmt_time(until));
            }
            if let (Some(at), Some(by)) = (rec.revoked_at_us, &rec.revoked_by) {
                field("Revoked", format!("{} by {by}", fmt_time(at)));
            }
        }
    }
    if !r.decisions.is_empty() {
        out.push('\n');
        let mut t = Table::new(["TIME", "REVIEWER", "DECISION", "COMMENT"]).max_width(3, 60);
        for d in &r.decisions {
            t.row([
                fmt_time(d.at_us),
                d.reviewer.clone(),
                match d.decision {
                    DecisionKind::Approve => "approve",
                    DecisionKind::Reject => "reject",
                }
                .to_owned(),
                d.comment.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&t.render());
    }
    out
}

/// One line per event for `watch`.
pub(super) fn event_line(ev: &ApprovalEvent) -> String {
    let rec = &ev.request;
    let r = &rec.request;
    let id = r.id.to_string();
    let detail = match ev.event {
        ApprovalEventKind::Created => format!(
            "{} on {}: {}",
            r.requester,
            r.connection,
            truncate(&what(rec), 80)
        ),
        ApprovalEventKind::Decided => match &ev.decision {
            Some(d) => {
                let verb = match d.decision {
                    DecisionKind::Approve => "approved",
                    DecisionKind::Reject => "rejected",
                };
                let mut s = format!("{} {verb}", d.reviewer);
                if let Some(c) = &d.comment {
                    s.push_str(&format!(" ({})", truncate(c, 60)));
                }
                format!("{s}; {} ({})", r.status.as_str(), approvals_count(rec))
            }
            None => r.status.as_str().to_owned(),
        },
        ApprovalEventKind::Revoked => {
            format!("revoked by {}", ev.by.as_deref().unwrap_or("?"))
        }
        ApprovalEventKind::Approved if rec.grant_until_us.is_some() => format!(
            "granted until {}",
            fmt_time(rec.grant_until_us.unwrap_or_default())
        ),
        _ => format!("{} on {}", r.requester, r.connection),
    };
    format!(
        "{}  {:<13} {}  {detail}",
        fmt_clock(ev.at_us),
        ev.event.as_str(),
        short_id(&id)
    )
}

/// One Server-Sent Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Reads events off a streaming response; comments (keep-alives) are skipped.
pub(super) struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

/// A single event may be this large before the stream is given up on.
const MAX_EVENT_BYTES: usize = 4 << 20;

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, or `None` once the server ends the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(event) = take_event(&mut self.buf) {
                return Ok(Some(event));
            }
            if self.buf.len() > MAX_EVENT_BYTES {
                bail!("the event stream sent an oversized event");
            }
            match self
                .resp
                .chunk()
                .await
                .context("reading the event stream")?
            {
                Some(chunk) => self
                    .buf
                    .push_str(&String::from_utf8_lossy(&chunk).replace("\r\n", "\n")),
                None => return Ok(None),
            }
        }
    }
}

/// Takes the first complete event (ended by a blank line) off `buf`.
fn take_event(buf: &mut String) -> Option<SseEvent> {
    loop {
        let end = buf.find("\n\n")?;
        let block: String = buf.drain(..end + 2).collect();
        let mut event = String::from("message");
        let mut data: Vec<&str> = Vec::new();
        for line in block.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => event = value.to_owned(),
                "data" => data.push(value),
                _ => {}
            }
        }
        if !data.is_empty() {
            return Some(SseEvent {
                event,
                data: data.join("\n"),
            });
        }
        // A comment-only block (keep-alive): look at the next one.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_blocks_are_split_and_comments_skipped() {
        let mut buf = String::from(
            ": connected\n\nevent: created\ndata: {\"a\":1}\n\n:\n\ndata: x\ndata: y\n\nevent: part",
        );
        assert_eq!(
            take_event(&mut buf),
            Some(SseEvent {
                event: "created".into(),
                data: "{\"a\":1}".into()
            })
        );
        assert_eq!(
            take_event(&mut buf),
            Some(SseEvent {
                event: "message".into(),
                data: "x\ny".into()
            })
        );
        assert_eq!(take_event(&mut buf), None);
        assert_eq!(buf, "event: part", "an incomplete event waits for more");
    }
}

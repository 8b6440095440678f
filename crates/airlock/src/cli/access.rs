//! `airlock access request|list|revoke`: just-in-time access to a
//! connection, over the REST API. An approved request becomes a grant that
//! runs from the approval for the requested time; policy sees it and skips
//! the reviews it covers.

use std::time::Duration;

use airlock_control::approvals::{ApprovalEvent, ApprovalEventKind, ApprovalRecord, Grant};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::Failure;
use super::approvals::{SseReader, event_line, fmt_time, short_id};
use super::client::{ApiClient, print_json};
use super::table::Table;

#[derive(Debug, Subcommand)]
pub enum AccessCmd {
    /// Ask for time-bound access to a connection; reviewers approve it.
    Request {
        /// The connection, as named in the gateway's config.
        connection: String,
        /// How long the access should last once approved (`30m`, `1h`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: String,
        /// Why you need it; reviewers see this.
        #[arg(long)]
        reason: String,
        /// Wait until the request is decided, showing each decision.
        #[arg(long)]
        wait: bool,
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
    /// List access requests and grants, active and past.
    List {
        /// Only those of this identity.
        #[arg(long)]
        identity: Option<String>,
        /// Only those on this connection.
        #[arg(long)]
        connection: Option<String>,
        /// Only grants running now.
        #[arg(long)]
        active: bool,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a grant early (the grantee or an admin), or withdraw a pending request.
    Revoke {
        /// Request id, or a unique prefix of it (as `list` shows).
        id: String,
        /// Print the API's JSON instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: AccessCmd) -> anyhow::Result<()> {
    let client = ApiClient::from_env()?;
    match cmd {
        AccessCmd::Request {
            connection,
            duration,
            reason,
            wait,
            json,
        } => {
            // Checked here too, so a typo is reported before anything is sent.
            humantime::parse_duration(duration.trim()).with_context(|| {
                format!("--for {duration:?}: expected a duration like 30m or 1h")
            })?;
            request(&client, &connection, &duration, &reason, wait, json).await
        }
        AccessCmd::List {
            identity,
            connection,
            active,
            limit,
            json,
        } => {
            let mut query = vec![("limit", limit.to_string())];
            query.extend(identity.map(|v| ("identity", v)));
            query.extend(connection.map(|v| ("connection", v)));
            if active {
                query.push(("active", "true".into()));
            }
            client
                .print(&["api", "access"], &query, json, |g: &Vec<Grant>| {
                    list_table(g)
                })
                .await
        }
        AccessCmd::Revoke { id, json } => {
            let value = client
                .post_value(
                    &["api", "access", id.as_str(), "revoke"],
                    &serde_json::json!({}),
                )
                .await?;
            if json {
                return print_json(&value);
            }
            let grant: Grant = serde_json::from_value(value)
                .context("unexpected response from the Airlock API")?;
            println!(
                "access {} of {} on {} is now {}",
                short_id(&grant.id.to_string()),
                grant.identity,
                grant.connection,
                grant.state.as_str()
            );
            Ok(())
        }
    }
}

async fn request(
    client: &ApiClient,
    connection: &str,
    duration: &str,
    reason: &str,
    wait: bool,
    json: bool,
) -> anyhow::Result<()> {
    // With --wait the event stream is opened first, so no decision can slip
    // between creating the request and starting to listen.
    let mut events = match wait {
        true => Some(SseReader::new(
            client.stream(&["api", "approvals", "events"]).await?,
        )),
        false => None,
    };
    let body = serde_json::json!({
        "connection": connection,
        "duration": duration,
        "reason": reason,
    });
    let value = client.post_value(&["api", "access"], &body).await?;
    let record: ApprovalRecord = serde_json::from_value(value.clone())
        .context("unexpected response from the Airlock API")?;
    let r = &record.request;
    let id = r.id.to_string();
    if json {
        print_json(&value)?;
    } else {
        let groups = if r.reviewers.is_empty() {
            "any human".to_owned()
        } else {
            r.reviewers.join(" or ")
        };
        println!(
            "access request {id} for {connection} ({duration}) awaits approval by {groups} \
             ({} needed, before {})",
            r.min_approvals.max(1),
            fmt_time(r.expires_at_us)
        );
        if !wait {
            println!(
                "follow it with `airlock access list` or `airlock approvals show {}`",
                short_id(&id)
            );
        }
    }
    let Some(events) = events.as_mut() else {
        return Ok(());
    };
    if !json {
        eprintln!("waiting for reviewers (Ctrl-C stops waiting; the request stays)");
    }
    while let Some(sse) = events.next().await? {
        let Ok(ev) = serde_json::from_str::<ApprovalEvent>(&sse.data) else {
            continue;
        };
        if ev.request.request.id != r.id {
            continue;
        }
        if json {
            println!("{}", sse.data);
        } else {
            eprintln!("{}", event_line(&ev));
        }
        match ev.event {
            ApprovalEventKind::Approved => {
                if !json {
                    let until = ev.request.grant_until_us.map(fmt_time).unwrap_or_default();
                    println!("access granted on {connection} until {until}");
                }
                return Ok(());
            }
            ApprovalEventKind::Rejected
            | ApprovalEventKind::Expired
            | ApprovalEventKind::Withdrawn => {
                if !json {
                    println!("access not granted: the request was {}", ev.event.as_str());
                }
                // Already reported; only the exit status is left to set.
                return Err(Failure(1).into());
            }
            _ => {}
        }
    }
    bail!("the event stream ended before the request was decided; check `airlock access list`")
}

fn list_table(grants: &[Grant]) -> String {
    if grants.is_empty() {
        return "no access requests found\n".into();
    }
    let mut t = Table::new([
        "ID",
        "IDENTITY",
        "CONNECTION",
        "STATE",
        "FOR",
        "UNTIL",
        "REASON",
    ])
    .max_width(1, 20)
    .max_width(2, 20)
    .max_width(6, 50);
    for g in grants {
        let until = match (g.revoked_at_us, g.until_us) {
            (Some(at), _) => format!("{} (revoked)", fmt_time(at)),
            (None, Some(until)) => fmt_time(until),
            (None, None) => "-".into(),
        };
        t.row([
            short_id(&g.id.to_string()).to_owned(),
            g.identity.clone(),
            g.connection.clone(),
            g.state.as_str().to_owned(),
            humantime::format_duration(Duration::from_secs(g.duration_secs)).to_string(),
            until,
            g.reason.clone(),
        ]);
    }
    t.render()
}

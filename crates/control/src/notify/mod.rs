//! Approval notifications: a background task fed by the broker's event
//! stream delivers each event to every configured target (HMAC-signed
//! webhooks, Slack with Approve/Reject buttons, e-mail over SMTP), retrying
//! with exponential backoff and recording every attempt in
//! `notify_deliveries`.
//!
//! A notification only informs: nothing here decides anything, and a failed
//! delivery is logged, retried and then given up on, never treated as an
//! answer. Webhook and Slack URLs may be `http://` or `https://`; TLS is
//! rustls with the aws-lc-rs provider, trusting the system's roots plus the
//! target's `ca_file` (see [`tls`]). A certificate that is not trusted fails
//! the delivery at once, without retries.

pub mod email;
pub mod slack;
pub mod tls;
pub mod webhook;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use airlock_pipeline::approvals::{ApprovalSubject, DecisionKind};
use airlock_pipeline::record::unix_micros;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::approvals::{ApprovalEvent, ApprovalEventKind, ApprovalRecord, Broker, DeliveryRow};
use crate::config::NotifyTarget;

pub use slack::SlackApp;
pub use tls::read_ca_file;

/// Attempts per delivery, the first included.
pub const MAX_ATTEMPTS: u32 = 5;
/// Wait before the second attempt; doubled after each failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// One HTTP delivery may take this long before it counts as failed.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// Why one delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryError {
    /// HTTP status or SMTP reply code, when the peer answered.
    pub status: Option<u16>,
    pub message: String,
    /// Worth trying again (network trouble, 5xx, 429, SMTP 4xx).
    pub retry: bool,
}

impl DeliveryError {
    pub fn transient(message: impl Into<String>) -> Self {
        DeliveryError {
            status: None,
            message: message.into(),
            retry: true,
        }
    }
}

/// The console link for a request.
pub fn approval_link(public_url: &str, id: Uuid) -> String {
    format!("{}/approvals/{id}", public_url.trim_end_matches('/'))
}

/// One line saying what is asked, for people.
pub fn summary(record: &ApprovalRecord) -> String {
    let r = &record.request;
    match &r.subject {
        ApprovalSubject::Command { text, .. } => format!(
            "{} wants to run on {}: {}",
            r.requester,
            r.connection,
            one_line(text, 200)
        ),
        ApprovalSubject::Access {
            duration_secs,
            reason,
        } => format!(
            "{} asks for {} of access to {}: {}",
            r.requester,
            humantime::format_duration(Duration::from_secs(*duration_secs)),
            r.connection,
            one_line(reason, 200)
        ),
    }
}

/// What happened, in a few words, for people.
pub fn outcome(event: &ApprovalEvent) -> String {
    let r = &event.request.request;
    match event.event {
        ApprovalEventKind::Created => "approval requested".into(),
        ApprovalEventKind::Decided => match &event.decision {
            Some(d) => {
                let verb = match d.decision {
                    DecisionKind::Approve => "approved",
                    DecisionKind::Reject => "rejected",
                };
                let approvals = r
                    .decisions
                    .iter()
                    .filter(|d| d.decision == DecisionKind::Approve)
                    .count();
                let mut s = format!("{} {verb}", d.reviewer);
                if d.decision == DecisionKind::Approve {
                    s.push_str(&format!(" ({approvals} of {})", r.min_approvals.max(1)));
                }
                if let Some(c) = &d.comment {
                    s.push_str(&format!(": {}", one_line(c, 200)));
                }
                s.push_str(&format!("; the request is {}", r.status.as_str()));
                s
            }
            None => format!("decided; the request is {}", r.status.as_str()),
        },
        ApprovalEventKind::Approved => "approved".into(),
        ApprovalEventKind::Rejected => "rejected".into(),
        ApprovalEventKind::Expired => "expired: nobody decided in time".into(),
        ApprovalEventKind::Withdrawn => "withdrawn by the requester".into(),
        ApprovalEventKind::Executed => "released to the target".into(),
        ApprovalEventKind::Revoked => format!(
            "grant revoked by {}",
            event.by.as_deref().unwrap_or("someone")
        ),
        ApprovalEventKind::GrantExpired => "grant ended".into(),
    }
}

/// `s` on one line, cut to `max` characters with an ellipsis.
pub(crate) fn one_line(s: &str, max: usize) -> String {
    let flat = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// Which events people are told about; webhooks get every event.
fn for_people(kind: ApprovalEventKind) -> bool {
    matches!(
        kind,
        ApprovalEventKind::Created
            | ApprovalEventKind::Decided
            | ApprovalEventKind::Expired
            | ApprovalEventKind::Withdrawn
            | ApprovalEventKind::Revoked
    )
}

struct Shared {
    broker: Broker,
    /// The HTTP client of each target, by index: `None` for e-mail, or if
    /// it could not be built (every delivery then fails, and is recorded).
    http: Vec<Option<reqwest::Client>>,
    public_url: String,
}

/// One HTTP client per target that needs one: targets without a `ca_file`
/// share one client (and its connection pool); each `ca_file` gets its own.
fn http_clients(targets: &[NotifyTarget]) -> Vec<Option<reqwest::Client>> {
    let mut shared: Option<Option<reqwest::Client>> = None;
    targets
        .iter()
        .enumerate()
        .map(|(i, target)| {
            if matches!(target, NotifyTarget::Email(_)) {
                return None;
            }
            let ca_file = target.ca_file();
            if ca_file.is_none()
                && let Some(client) = &shared
            {
                return client.clone();
            }
            let client = match tls::http_client(ca_file, HTTP_TIMEOUT) {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::error!(
                        target = %format!("notify[{i}] {}", target.kind().as_str()),
                        error = %e,
                        "cannot build the notification HTTP client; this target's deliveries will fail"
                    );
                    None
                }
            };
            if ca_file.is_none() {
                shared = Some(client.clone());
            }
            client
        })
        .collect()
}

/// Starts the notification task. It subscribes before returning, so every
/// event after this call is delivered; it ends when the broker is gone.
pub fn spawn(broker: &Broker, targets: Vec<NotifyTarget>, public_url: &str) -> JoinHandle<()> {
    let mut rx = broker.subscribe();
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        http: http_clients(&targets),
        public_url: public_url.to_owned(),
    });
    let targets: Arc<[NotifyTarget]> = targets.into();
    tokio::spawn(async move {
        loop {
            let event = match rx.recv().await {
                Ok(e) => Arc::new(e),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(
                        missed = n,
                        "notifications fell behind; some events were not sent"
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            for (i, target) in targets.iter().enumerate() {
                let wanted = match target {
                    NotifyTarget::Webhook { .. } => true,
                    NotifyTarget::Slack { .. } | NotifyTarget::Email(_) => for_people(event.event),
                };
                if !wanted {
                    continue;
                }
                // One task per delivery, so a slow or failing target never
                // holds up the others or the next event.
                let shared = shared.clone();
                let event = event.clone();
                let targets = targets.clone();
                tokio::spawn(async move {
                    if let Some(target) = targets.get(i) {
                        deliver(&shared, i, target, &event).await;
                    }
                });
            }
        }
    })
}

async fn deliver(shared: &Shared, index: usize, target: &NotifyTarget, event: &ApprovalEvent) {
    let delivery_id = Uuid::new_v4();
    let label = format!("notify[{index}] {}", target.kind().as_str());
    let http = shared.http.get(index).and_then(Option::as_ref);
    let mut delay = FIRST_BACKOFF;
    for attempt in 1..=MAX_ATTEMPTS {
        let result = attempt_once(shared, http, target, event, delivery_id).await;
        record(shared, &label, delivery_id, event, attempt, &result).await;
        match result {
            Ok(_) => return,
            Err(e) => {
                let last = attempt == MAX_ATTEMPTS || !e.retry;
                tracing::warn!(
                    target = %label,
                    request = %event.request.request.id,
                    event = event.event.as_str(),
                    attempt,
                    status = ?e.status,
                    error = %e.message,
                    giving_up = last,
                    "notification delivery failed"
                );
                if last {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

async fn attempt_once(
    shared: &Shared,
    http: Option<&reqwest::Client>,
    target: &NotifyTarget,
    event: &ApprovalEvent,
    delivery_id: Uuid,
) -> Result<Option<u16>, DeliveryError> {
    let link = approval_link(&shared.public_url, event.request.request.id);
    let no_client = || DeliveryError {
        status: None,
        message: "no HTTP client (see the start-up log)".into(),
        retry: false,
    };
    match target {
        NotifyTarget::Webhook { url, secret, .. } => {
            let http = http.ok_or_else(no_client)?;
            let body = webhook::payload(event, &link, delivery_id);
            webhook::send(http, url, secret, event.event.as_str(), delivery_id, body)
                .await
                .map(Some)
        }
        NotifyTarget::Slack { webhook_url, .. } => {
            let http = http.ok_or_else(no_client)?;
            let body = slack::message(event, &link);
            slack::send(http, webhook_url, &body).await.map(Some)
        }
        NotifyTarget::Email(e) => {
            let (subject, text) = email::compose(event, &link);
            email::send(e, &subject, &text).await.map(Some)
        }
    }
}

async fn record(
    shared: &Shared,
    label: &str,
    delivery_id: Uuid,
    event: &ApprovalEvent,
    attempt: u32,
    result: &Result<Option<u16>, DeliveryError>,
) {
    let (ok, status_code, error) = match result {
        Ok(code) => (true, *code, None),
        Err(e) => (false, e.status, Some(e.message.as_str())),
    };
    let row = DeliveryRow {
        delivery_id,
        approval_id: event.request.request.id,
        event: event.event.as_str(),
        target: label,
        attempt,
        at_us: unix_micros(SystemTime::now()),
        ok,
        status_code,
        error,
    };
    let recorded = async {
        let mut conn = shared.broker.pool().acquire().await?;
        crate::approvals::insert_delivery(&mut conn, &row).await
    }
    .await;
    if let Err(e) = recorded {
        tracing::warn!(error = %e, "cannot record a notification delivery attempt");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_and_lines() {
        let id = Uuid::nil();
        assert_eq!(
            approval_link("http://gw:8080/", id),
            format!("http://gw:8080/approvals/{id}")
        );
        assert_eq!(one_line("a\n  b\tc", 10), "a b c");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}

//! Slack: incoming-webhook messages with Approve/Reject buttons, and the
//! checks for the button clicks Slack posts back (signature, age, who).
//!
//! A click is trusted only if `X-Slack-Signature` is `v0=` + the hex
//! HMAC-SHA256, keyed with the app's signing secret, of
//! `v0:<X-Slack-Request-Timestamp>:<raw body>`, and the timestamp is within
//! five minutes of now (so a captured request cannot be replayed later). The
//! Slack user is then mapped to an Airlock identity through the configured
//! `users` table, and the decision goes through the same rules as any other.

use std::collections::BTreeMap;

use airlock_pipeline::approvals::{ApprovalSubject, DecisionKind};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;
use uuid::Uuid;

use super::{DeliveryError, one_line, outcome, summary};
use crate::approvals::{ApprovalEvent, ApprovalEventKind};
use crate::config::NotifyTarget;

/// Oldest (or furthest in the future) a signed request may be, in seconds.
pub const MAX_SKEW_SECS: i64 = 5 * 60;
pub const APPROVE_ACTION: &str = "airlock_approve";
pub const REJECT_ACTION: &str = "airlock_reject";

/// A Slack app whose signed button clicks are accepted.
#[derive(Clone)]
pub struct SlackApp {
    signing_secret: Vec<u8>,
    /// Slack user id -> Airlock identity name.
    pub users: BTreeMap<String, String>,
}

impl std::fmt::Debug for SlackApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlackApp")
            .field("signing_secret", &"<redacted>")
            .field("users", &self.users)
            .finish()
    }
}

impl SlackApp {
    pub fn new(signing_secret: Vec<u8>, users: BTreeMap<String, String>) -> Self {
        SlackApp {
            signing_secret,
            users,
        }
    }

    /// The Slack apps among the configured targets.
    pub fn from_targets(targets: &[NotifyTarget]) -> Vec<SlackApp> {
        targets
            .iter()
            .filter_map(|t| match t {
                NotifyTarget::Slack {
                    signing_secret,
                    users,
                    ..
                } => Some(SlackApp::new(signing_secret.clone(), users.clone())),
                _ => None,
            })
            .collect()
    }
}

/// `v0=<hex>` for a request body signed at `timestamp`.
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    format!("v0={}", hex::encode(mac.finalize().into_bytes()))
}

/// Why a Slack request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyError {
    MissingHeaders,
    Stale,
    BadSignature,
}

/// The app whose secret signed this request, if any did, checked in
/// constant time, and only if the timestamp is fresh at `now_secs`.
pub fn verify<'a>(
    apps: &'a [SlackApp],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<&'a SlackApp, VerifyError> {
    let (Some(ts), Some(sig)) = (timestamp, signature) else {
        return Err(VerifyError::MissingHeaders);
    };
    let at: i64 = ts.trim().parse().map_err(|_| VerifyError::Stale)?;
    if (now_secs - at).abs() > MAX_SKEW_SECS {
        return Err(VerifyError::Stale);
    }
    let given = sig
        .strip_prefix("v0=")
        .and_then(|h| hex::decode(h).ok())
        .ok_or(VerifyError::BadSignature)?;
    apps.iter()
        .find(|app| {
            let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&app.signing_secret) else {
                return false;
            };
            mac.update(b"v0:");
            mac.update(ts.as_bytes());
            mac.update(b":");
            mac.update(body);
            // `verify_slice` compares in constant time.
            mac.verify_slice(&given).is_ok()
        })
        .ok_or(VerifyError::BadSignature)
}

/// A button click: who clicked what on which request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interaction {
    pub user_id: String,
    pub decision: DecisionKind,
    pub request_id: Uuid,
}

#[derive(Deserialize)]
struct Form {
    payload: String,
}

#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Deserialize)]
struct User {
    id: String,
}

#[derive(Deserialize)]
struct Action {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

/// Reads the form-encoded `payload=` of a `block_actions` interaction.
pub fn parse_interaction(body: &[u8]) -> Result<Interaction, String> {
    let form: Form = serde_urlencoded::from_bytes(body)
        .map_err(|_| "expected a form body with a payload field".to_string())?;
    let payload: Payload = serde_json::from_str(&form.payload)
        .map_err(|e| format!("the interaction payload is not understood: {e}"))?;
    if payload.kind != "block_actions" {
        return Err(format!(
            "interactions of type {:?} are not handled",
            payload.kind
        ));
    }
    let action = payload
        .actions
        .iter()
        .find(|a| a.action_id == APPROVE_ACTION || a.action_id == REJECT_ACTION)
        .ok_or_else(|| "no Airlock action in the interaction".to_string())?;
    let decision = if action.action_id == APPROVE_ACTION {
        DecisionKind::Approve
    } else {
        DecisionKind::Reject
    };
    let request_id = action
        .value
        .as_deref()
        .and_then(|v| Uuid::parse_str(v).ok())
        .ok_or_else(|| "the action carries no request id".to_string())?;
    Ok(Interaction {
        user_id: payload.user.id,
        decision,
        request_id,
    })
}

/// Slack's mrkdwn needs only these three escaped.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The message posted for `event`: buttons on a new request, a line of
/// outcome otherwise.
pub fn message(event: &ApprovalEvent, link: &str) -> serde_json::Value {
    let r = &event.request.request;
    let id = r.id.hyphenated().to_string();
    let short = id.get(..8).unwrap_or(&id);
    if event.event != ApprovalEventKind::Created {
        let text = format!(
            "Airlock request `{short}` ({}): {}",
            escape(&one_line(&summary(&event.request), 120)),
            escape(&outcome(event))
        );
        return json!({
            "text": text,
            "blocks": [
                { "type": "section", "text": { "type": "mrkdwn", "text": text } },
                { "type": "context", "elements": [
                    { "type": "mrkdwn", "text": format!("<{link}|Open in Airlock>") }
                ] }
            ]
        });
    }
    let headline = match &r.subject {
        ApprovalSubject::Command { .. } => format!(
            "*Approval needed*: *{}* wants to run a command on *{}*",
            escape(&r.requester),
            escape(&r.connection)
        ),
        ApprovalSubject::Access { duration_secs, .. } => format!(
            "*Access requested*: *{}* asks for {} on *{}*",
            escape(&r.requester),
            humantime::format_duration(std::time::Duration::from_secs(*duration_secs)),
            escape(&r.connection)
        ),
    };
    let detail = match &r.subject {
        ApprovalSubject::Command { text, .. } => {
            // Section text is limited to 3000 characters.
            let mut sql: String = text.chars().take(2500).collect();
            if sql.len() < text.len() {
                sql.push('…');
            }
            format!("```{}```", escape(&sql.replace("```", "` ` `")))
        }
        ApprovalSubject::Access { reason, .. } => {
            format!("Reason: {}", escape(&one_line(reason, 2500)))
        }
    };
    let mut context = format!(
        "Request `{short}` · needs {} approval(s)",
        r.min_approvals.max(1)
    );
    if !r.reviewers.is_empty() {
        context.push_str(&format!(" from {}", escape(&r.reviewers.join(", "))));
    }
    if let Some(reason) = &r.reason
        && matches!(r.subject, ApprovalSubject::Command { .. })
    {
        context.push_str(&format!(" · {}", escape(&one_line(reason, 200))));
    }
    json!({
        "text": format!("Airlock: {}", one_line(&summary(&event.request), 200)),
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": headline } },
            { "type": "section", "text": { "type": "mrkdwn", "text": detail } },
            { "type": "context", "elements": [ { "type": "mrkdwn", "text": context } ] },
            { "type": "actions", "block_id": "airlock_decision", "elements": [
                { "type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                  "text": { "type": "plain_text", "text": "Approve" }, "value": id },
                { "type": "button", "action_id": REJECT_ACTION, "style": "danger",
                  "text": { "type": "plain_text", "text": "Reject" }, "value": id },
                { "type": "button", "action_id": "airlock_open",
                  "text": { "type": "plain_text", "text": "Open" }, "url": link }
            ] }
        ]
    })
}

/// Posts to the incoming webhook.
pub async fn send(
    http: &reqwest::Client,
    webhook_url: &str,
    body: &serde_json::Value,
) -> Result<u16, DeliveryError> {
    let resp = http
        .post(webhook_url)
        .json(body)
        .send()
        .await
        .map_err(|e| super::webhook::request_error(&e))?;
    super::webhook::status_result(resp.status())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(secret: &str) -> SlackApp {
        SlackApp::new(secret.as_bytes().to_vec(), BTreeMap::new())
    }

    #[test]
    fn signature_checks() {
        let apps = [app("first"), app("second")];
        let body = b"payload=%7B%7D";
        let sig = sign(b"second", "1000", body);
        assert!(verify(&apps, Some("1000"), Some(&sig), body, 1000).is_ok());
        assert!(verify(&apps, Some("1000"), Some(&sig), body, 1000 + MAX_SKEW_SECS).is_ok());
        assert_eq!(
            verify(&apps, Some("1000"), Some(&sig), body, 1001 + MAX_SKEW_SECS).unwrap_err(),
            VerifyError::Stale
        );
        assert_eq!(
            verify(&apps, Some("1000"), Some(&sig), b"payload=x", 1000).unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(
            verify(&apps, Some("1001"), Some(&sig), body, 1000).unwrap_err(),
            VerifyError::BadSignature
        );
        assert_eq!(
            verify(&apps, None, Some(&sig), body, 1000).unwrap_err(),
            VerifyError::MissingHeaders
        );
        assert_eq!(
            verify(&apps, Some("1000"), Some("v0=zz"), body, 1000).unwrap_err(),
            VerifyError::BadSignature
        );
    }

    #[test]
    fn interactions_parse() {
        let id = Uuid::new_v4();
        let payload = json!({
            "type": "block_actions",
            "user": { "id": "U123" },
            "actions": [ { "action_id": REJECT_ACTION, "value": id.to_string() } ]
        });
        let body = serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap();
        let i = parse_interaction(body.as_bytes()).unwrap();
        assert_eq!(i.user_id, "U123");
        assert_eq!(i.decision, DecisionKind::Reject);
        assert_eq!(i.request_id, id);
        assert!(parse_interaction(b"nope").is_err());
        assert!(parse_interaction(b"payload=%7B%7D").is_err());
    }
}

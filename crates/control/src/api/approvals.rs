//! Approval and just-in-time access routes: listing and deciding requests,
//! the Server-Sent Events stream of their lifecycle, access requests and
//! revocation, and Slack's interactive endpoint.
//!
//! Visibility: admins and auditors see every request; anyone else sees their
//! own requests and those they could decide (a human in one of the
//! request's reviewer groups). A request one may not see answers 404, as
//! sessions do. Deciding applies the shared rules ([`check_reviewer`],
//! [`tally`]); a rule that refuses answers 403 with its message.
//!
//! The routes need the broker, which [`super::router_with_approvals`] adds;
//! without it they answer 404.
//!
//! [`check_reviewer`]: airlock_pipeline::approvals::check_reviewer
//! [`tally`]: airlock_pipeline::approvals::tally

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_pipeline::approvals::{ApprovalError, ApprovalStatus, DecisionKind};
use airlock_pipeline::model::Identity;
use airlock_pipeline::record::unix_micros;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::auth::Caller;
use super::error::ApiError;
use super::{ApiState, MIN_PREFIX};
use crate::approvals::{
    ApprovalEvent, ApprovalFilter, ApprovalRecord, Broker, Grant, GrantState, SubjectKind, may_see,
};
use crate::config::Config;
use crate::notify::SlackApp;
use crate::notify::slack;

/// What the approval routes need besides [`ApiState`].
#[derive(Debug, Clone)]
pub struct ApprovalsApi {
    pub broker: Broker,
    /// Slack apps whose signed button clicks are accepted.
    pub slack: Arc<[SlackApp]>,
    /// Connections one may ask access to; empty accepts any name.
    pub connections: Arc<[String]>,
}

impl ApprovalsApi {
    pub fn new(broker: Broker) -> Self {
        ApprovalsApi {
            broker,
            slack: Arc::new([]),
            connections: Arc::new([]),
        }
    }

    /// The broker with the Slack apps and connections of `cfg`.
    pub fn from_config(broker: Broker, cfg: &Config) -> Self {
        ApprovalsApi {
            broker,
            slack: SlackApp::from_targets(&cfg.notify).into(),
            connections: cfg
                .targets
                .iter()
                .map(|t| t.info.name.clone())
                .collect::<Vec<_>>()
                .into(),
        }
    }
}

/// The approvals extension, or 404 when this gateway has none.
struct Approvals(ApprovalsApi);

impl FromRequestParts<ApiState> for Approvals {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &ApiState) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<ApprovalsApi>()
            .cloned()
            .map(Approvals)
            .ok_or_else(|| ApiError::not_found("approvals"))
    }
}

impl From<ApprovalError> for ApiError {
    fn from(e: ApprovalError) -> Self {
        match e {
            ApprovalError::NotFound(_) => ApiError::not_found("approval request"),
            ApprovalError::NotAllowed(msg) => ApiError::new(StatusCode::FORBIDDEN, msg),
            ApprovalError::NotPending(_) => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            ApprovalError::Unavailable(msg) => {
                tracing::error!(error = %msg, "approval store failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the approval store is unavailable",
                )
            }
        }
    }
}

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/approvals", get(list))
        .route("/api/approvals/events", get(events))
        .route("/api/approvals/{id}", get(show))
        .route("/api/approvals/{id}/approve", post(approve))
        .route("/api/approvals/{id}/reject", post(reject))
        .route("/api/access", get(list_access).post(request_access))
        .route("/api/access/{id}/revoke", post(revoke))
        .route("/api/slack/interactive", post(slack_interactive))
}

/// `None` for those who see everything.
fn viewer(caller: &Caller) -> Option<&Identity> {
    (!caller.role.sees_everything()).then_some(&*caller.identity)
}

fn visible(caller: &Caller, record: &ApprovalRecord) -> bool {
    caller.role.sees_everything() || may_see(&record.request, &caller.identity)
}

/// A full id, or a unique prefix among the requests the caller may see.
async fn resolve(api: &ApprovalsApi, caller: &Caller, id: &str) -> Result<Uuid, ApiError> {
    if let Ok(uuid) = Uuid::parse_str(id) {
        return Ok(uuid);
    }
    let prefix_like = id.len() >= MIN_PREFIX
        && id.len() < 36
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !prefix_like {
        return Err(ApiError::bad_request(format!(
            "request id: expected a UUID or at least {MIN_PREFIX} of its leading characters"
        )));
    }
    let mut ids = api.broker.find_ids(id, viewer(caller), 2).await?;
    match ids.len() {
        0 => Err(ApiError::not_found("approval request")),
        1 => Ok(ids.remove(0)),
        _ => Err(ApiError::bad_request(
            "ambiguous request id prefix; give more characters",
        )),
    }
}

/// The record if it exists and the caller may see it; 404 otherwise.
async fn visible_record(
    api: &ApprovalsApi,
    caller: &Caller,
    id: Uuid,
) -> Result<ApprovalRecord, ApiError> {
    match api.broker.get(id).await? {
        Some(r) if visible(caller, &r) => Ok(r),
        _ => Err(ApiError::not_found("approval request")),
    }
}

/// Query string of `GET /api/approvals`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<String>,
    connection: Option<String>,
    identity: Option<String>,
    kind: Option<String>,
    limit: Option<u32>,
}

async fn list(
    caller: Caller,
    Approvals(api): Approvals,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ApprovalRecord>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let status = match q.status.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(ApprovalStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "status: expected pending, approved, rejected, expired, withdrawn or executed",
            )
        })?),
        None => None,
    };
    let kind = match q.kind.as_deref().filter(|s| !s.is_empty()) {
        Some("command") => Some(SubjectKind::Command),
        Some("access") => Some(SubjectKind::Access),
        Some(_) => return Err(ApiError::bad_request("kind: expected command or access")),
        None => None,
    };
    let filter = ApprovalFilter {
        status,
        connection: q.connection,
        identity: q.identity,
        kind,
        limit: q.limit,
    };
    Ok(Json(api.broker.list(&filter, viewer(&caller)).await?))
}

async fn show(
    caller: Caller,
    Approvals(api): Approvals,
    Path(id): Path<String>,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let id = resolve(&api, &caller, &id).await?;
    Ok(Json(visible_record(&api, &caller, id).await?))
}

/// Body of approve/reject; may be empty for an approval.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    comment: Option<String>,
    /// Accepted as another name for `comment` (the CLI's `--reason`).
    reason: Option<String>,
}

fn decision_body(body: &Bytes) -> Result<Option<String>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let b: DecisionBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("expected {{\"comment\": \"...\"}}: {e}")))?;
    Ok(b.comment
        .or(b.reason)
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty()))
}

async fn decide(
    caller: Caller,
    api: ApprovalsApi,
    id: String,
    kind: DecisionKind,
    body: Bytes,
) -> Result<Json<ApprovalRecord>, ApiError> {
    let comment = decision_body(&body)?;
    if kind == DecisionKind::Reject && comment.is_none() {
        return Err(ApiError::bad_request(
            "a rejection needs a comment saying why",
        ));
    }
    let id = resolve(&api, &caller, &id).await?;
    api.broker
        .decide(id, &caller.identity, kind, comment)
        .await?;
    // Read back with its timestamps; the decision itself is already made.
    match api.broker.get(id).await? {
        Some(r) => Ok(Json(r)),
        None => Err(ApiError::not_found("approval request")),
    }
}

async fn approve(
    caller: Caller,
    Approvals(api): Approvals,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ApprovalRecord>, ApiError> {
    decide(caller, api, id, DecisionKind::Approve, body).await
}

async fn reject(
    caller: Caller,
    Approvals(api): Approvals,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<ApprovalRecord>, ApiError> {
    decide(caller, api, id, DecisionKind::Reject, body).await
}

/// The caller's view of the event stream: only the requests they may see.
fn event_stream(
    caller: Caller,
    rx: broadcast::Receiver<ApprovalEvent>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let hello = futures::stream::once(async { Ok(Event::default().comment("connected")) });
    let events = futures::stream::unfold((caller, rx), |(caller, mut rx)| async move {
        loop {
            match rx.recv().await {
                Ok(ev) if visible(&caller, &ev.request) => {
                    let Ok(event) = Event::default().event(ev.event.as_str()).json_data(&ev) else {
                        continue;
                    };
                    return Some((Ok(event), (caller, rx)));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // Tell the client it missed some, so it can re-list.
                    let event = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(event), (caller, rx)));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    hello.chain(events)
}

async fn events(caller: Caller, Approvals(api): Approvals) -> Response {
    // Subscribed before the response is returned: once a client has the
    // headers, no later event can be missed.
    let rx = api.broker.subscribe();
    Sse::new(event_stream(caller, rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Body of `POST /api/access`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AccessBody {
    connection: String,
    /// `1h`, `30m`, ...
    duration: String,
    reason: String,
}

async fn request_access(
    caller: Caller,
    Approvals(api): Approvals,
    body: Bytes,
) -> Result<Response, ApiError> {
    let b: AccessBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"connection\": \"...\", \"duration\": \"1h\", \"reason\": \"...\"}}: {e}"
        ))
    })?;
    if !api.connections.is_empty() && !api.connections.contains(&b.connection) {
        return Err(ApiError::bad_request(format!(
            "unknown connection '{}'",
            b.connection
        )));
    }
    let duration = humantime::parse_duration(b.duration.trim())
        .map_err(|_| ApiError::bad_request("duration: expected a duration such as 30m or 1h"))?;
    let settings = api.broker.settings();
    if duration < Duration::from_secs(1) || duration > settings.max_access_duration {
        return Err(ApiError::bad_request(format!(
            "duration: must be between 1s and {}",
            humantime::format_duration(settings.max_access_duration)
        )));
    }
    if b.reason.trim().is_empty() {
        return Err(ApiError::bad_request("reason: say why you need access"));
    }
    let request = api
        .broker
        .request_access(
            &caller.identity,
            &b.connection,
            duration,
            b.reason,
            settings.access_reviewers.clone(),
            settings.access_min_approvals,
        )
        .await?;
    let record = visible_record(&api, &caller, request.id).await?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// Query string of `GET /api/access`.
#[derive(Debug, Deserialize)]
struct AccessQuery {
    identity: Option<String>,
    connection: Option<String>,
    /// Only grants running now.
    #[serde(default)]
    active: bool,
    limit: Option<u32>,
}

fn now_us() -> i64 {
    unix_micros(SystemTime::now())
}

async fn list_access(
    caller: Caller,
    Approvals(api): Approvals,
    query: Result<Query<AccessQuery>, QueryRejection>,
) -> Result<Json<Vec<Grant>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let filter = ApprovalFilter {
        status: q.active.then_some(ApprovalStatus::Approved),
        connection: q.connection,
        identity: q.identity,
        kind: Some(SubjectKind::Access),
        limit: q.limit,
    };
    let now = now_us();
    let grants = api
        .broker
        .list(&filter, viewer(&caller))
        .await?
        .iter()
        .filter_map(|r| Grant::from_record(r, now))
        .filter(|g| !q.active || g.state == GrantState::Active)
        .collect();
    Ok(Json(grants))
}

async fn revoke(
    caller: Caller,
    Approvals(api): Approvals,
    Path(id): Path<String>,
) -> Result<Json<Grant>, ApiError> {
    let id = resolve(&api, &caller, &id).await?;
    // Someone else's request that one cannot even see looks missing.
    visible_record(&api, &caller, id).await?;
    let record = api.broker.revoke_grant(id, &caller.identity).await?;
    Grant::from_record(&record, now_us())
        .map(Json)
        .ok_or_else(|| ApiError::not_found("access grant"))
}

fn slack_reply(text: impl Into<String>) -> Response {
    Json(serde_json::json!({
        "response_type": "ephemeral",
        "replace_original": false,
        "text": text.into(),
    }))
    .into_response()
}

/// Replaces the message whose button was clicked (Slack accepts this as the
/// response to an interaction).
fn slack_update(text: impl Into<String>) -> Response {
    Json(serde_json::json!({
        "response_type": "in_channel",
        "replace_original": true,
        "text": text.into(),
    }))
    .into_response()
}

/// Slack's button clicks. Authenticated by Slack's request signature, not a
/// bearer token; the clicking Slack user must map to an Airlock identity,
/// which then decides under the same rules as everywhere else. Refusals by
/// the rules are answered 200 with a message Slack shows the user.
async fn slack_interactive(
    State(state): State<ApiState>,
    Approvals(api): Approvals,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let app = match slack::verify(
        &api.slack,
        header("x-slack-request-timestamp"),
        header("x-slack-signature"),
        &body,
        now,
    ) {
        Ok(app) => app,
        Err(e) => {
            tracing::warn!(reason = ?e, "refused a Slack interaction");
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid Slack request signature")
                .into_response();
        }
    };
    let click = match slack::parse_interaction(&body) {
        Ok(i) => i,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let Some(name) = app.users.get(&click.user_id) else {
        return slack_reply(
            "Your Slack user is not linked to an Airlock identity; ask an admin to add it to `users` of the Slack notifier.",
        );
    };
    let Some(identity) = state.identities.load().get(name).cloned() else {
        return slack_reply(format!("The Airlock identity '{name}' no longer exists."));
    };
    let comment = match click.decision {
        DecisionKind::Approve => None,
        DecisionKind::Reject => Some("rejected in Slack".to_owned()),
    };
    let short = click.request_id.hyphenated().to_string();
    let short = short.get(..8).unwrap_or(&short).to_owned();
    match api
        .broker
        .decide(click.request_id, &identity, click.decision, comment)
        .await
    {
        Ok(request) => {
            let verb = match click.decision {
                DecisionKind::Approve => "approved",
                DecisionKind::Reject => "rejected",
            };
            if request.status == ApprovalStatus::Pending {
                // More approvals needed: the buttons must stay for others.
                slack_reply(format!(
                    "You {verb} request {short} as {}; it still needs more approvals.",
                    identity.name
                ))
            } else {
                // Decided: the message itself changes for everyone in the
                // channel, and its buttons go away.
                slack_update(format!(
                    "Airlock request {short} was {verb} by {} in Slack; it is now {}.",
                    identity.name,
                    request.status.as_str()
                ))
            }
        }
        Err(ApprovalError::Unavailable(msg)) => {
            tracing::error!(error = %msg, "approval store failed during a Slack decision");
            slack_reply("Airlock could not record the decision; try again or use the console.")
        }
        Err(e) => slack_reply(format!("Not recorded: {e}")),
    }
}

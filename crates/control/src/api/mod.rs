//! The REST API: sessions, audit verification, health and metrics.
//!
//! Every `/api` route needs `Authorization: Bearer TOKEN`, resolved against the
//! identity registry. Admins and auditors read everything; any other identity
//! reads only its own sessions, and someone else's session answers 404 so that
//! ids cannot be probed. Errors are JSON `{ "error": "..." }`.

mod approvals;
mod auth;
mod error;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use airlock_pipeline::auth::IdentityRegistry;
use airlock_pipeline::record::unix_micros;
use arc_swap::ArcSwap;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use uuid::Uuid;

use crate::store::{SessionDetail, SessionFilter, SessionSummary, Store, VerifyReport};

pub use approvals::ApprovalsApi;
pub use auth::{Caller, Role};
pub use error::ApiError;

/// What the API handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub store: Store,
    pub identities: Arc<ArcSwap<IdentityRegistry>>,
    pub admin_groups: Vec<String>,
    pub auditor_groups: Vec<String>,
    /// `None` leaves `/metrics` answering 404.
    pub metrics: Option<PrometheusHandle>,
}

/// All API routes, ready to serve or to merge into a larger router.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/sessions", get(list_sessions))
        .route("/api/sessions/{id}", get(get_session))
        .route("/api/audit/verify", get(verify))
        .merge(approvals::routes())
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

/// [`router`] with the approval, access and Slack routes served by
/// `approvals` (without it they answer 404).
pub fn router_with_approvals(state: ApiState, approvals: ApprovalsApi) -> Router {
    router(state).layer(axum::Extension(approvals))
}

/// Liveness for load balancers. Reports 503 once the audit writer has
/// stopped: the gateway then refuses every command, so it should not get traffic.
async fn healthz(State(state): State<ApiState>) -> Response {
    if state.store.is_writable() {
        Json(serde_json::json!({ "status": "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "status": "unavailable",
                "error": "the audit store is not accepting events",
            })),
        )
            .into_response()
    }
}

async fn metrics(State(state): State<ApiState>) -> Response {
    match &state.metrics {
        Some(handle) => (
            [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
            handle.render(),
        )
            .into_response(),
        None => ApiError::not_found("metrics").into_response(),
    }
}

/// Query string of `GET /api/sessions`.
#[derive(Debug, Deserialize)]
struct SessionsQuery {
    identity: Option<String>,
    connection: Option<String>,
    limit: Option<u32>,
    /// A duration back from now (`1h`, `30m`), an RFC 3339 instant, or µs
    /// since the Unix epoch.
    since: Option<String>,
    #[serde(default)]
    failed: bool,
}

fn parse_since(s: &str, now: SystemTime) -> Result<i64, ApiError> {
    let s = s.trim();
    if let Ok(us) = s.parse::<i64>() {
        return Ok(us);
    }
    if let Ok(ago) = humantime::parse_duration(s) {
        let at = now.checked_sub(ago).unwrap_or(SystemTime::UNIX_EPOCH);
        return Ok(unix_micros(at));
    }
    if let Ok(at) = humantime::parse_rfc3339_weak(s) {
        return Ok(unix_micros(at));
    }
    Err(ApiError::bad_request(
        "since: expected a duration (1h), an RFC 3339 time, or microseconds since the epoch",
    ))
}

async fn list_sessions(
    caller: Caller,
    State(state): State<ApiState>,
    query: Result<Query<SessionsQuery>, QueryRejection>,
) -> Result<Json<Vec<SessionSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let since_us = q
        .since
        .as_deref()
        .map(|s| parse_since(s, SystemTime::now()))
        .transpose()?;
    let mut filter = SessionFilter {
        identity: q.identity,
        connection: q.connection,
        since_us,
        limit: q.limit,
        failed_only: q.failed,
    };
    if !caller.role.sees_everything() {
        if filter
            .identity
            .as_deref()
            .is_some_and(|i| i != caller.identity.name)
        {
            // Asking for someone else's sessions: there are none to see.
            return Ok(Json(Vec::new()));
        }
        filter.identity = Some(caller.identity.name.clone());
    }
    Ok(Json(state.store.list_sessions(&filter).await?))
}

/// Shortest id prefix accepted, so a prefix cannot enumerate the store.
const MIN_PREFIX: usize = 4;

/// Turns a full id or a unique prefix of one (as the CLI shows) into a full id.
async fn resolve_id(state: &ApiState, caller: &Caller, id: &str) -> Result<String, ApiError> {
    if let Ok(uuid) = Uuid::parse_str(id) {
        return Ok(uuid.hyphenated().to_string());
    }
    let prefix_like = id.len() >= MIN_PREFIX
        && id.len() < 36
        && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !prefix_like {
        return Err(ApiError::bad_request(format!(
            "session id: expected a UUID or at least {MIN_PREFIX} of its leading characters"
        )));
    }
    // Members only resolve among their own sessions, so an ambiguity error
    // cannot reveal that someone else's session shares the prefix.
    let only = (!caller.role.sees_everything()).then_some(caller.identity.name.as_str());
    let mut ids = state.store.find_session_ids(id, only, 2).await?;
    match ids.len() {
        0 => Err(ApiError::not_found("session")),
        1 => Ok(ids.remove(0)),
        _ => Err(ApiError::bad_request(
            "ambiguous session id prefix; give more characters",
        )),
    }
}

async fn get_session(
    caller: Caller,
    State(state): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Json<SessionDetail>, ApiError> {
    let id = resolve_id(&state, &caller, &id).await?;
    match state.store.get_session(&id).await? {
        Some(detail) if caller.may_read(&detail.summary.identity) => Ok(Json(detail)),
        // Someone else's session looks exactly like a missing one.
        _ => Err(ApiError::not_found("session")),
    }
}

async fn verify(
    caller: Caller,
    State(state): State<ApiState>,
) -> Result<Json<VerifyReport>, ApiError> {
    if !caller.role.sees_everything() {
        // Says what to change: the example config gives no one this role.
        let groups = &caller.identity.groups;
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "audit verification requires an admin or auditor role: add one of {}'s groups ({}) to server.auditor_groups or server.admin_groups",
                caller.identity.name,
                if groups.is_empty() {
                    "none".to_string()
                } else {
                    groups.join(", ")
                },
            ),
        ));
    }
    Ok(Json(state.store.verify().await?))
}

/// Default histogram buckets, in seconds: most gateway latencies (policy,
/// recording, proxied commands) are well under a millisecond, so the low end
/// is fine-grained; the top still catches slow upstream queries.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Events per group commit.
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

fn builder() -> Result<PrometheusBuilder, metrics_exporter_prometheus::BuildError> {
    PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            Matcher::Full("airlock_command_duration_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("airlock_store_batch_size".into()),
            BATCH_BUCKETS,
        )
}

/// Installs the process-wide Prometheus recorder (once) and returns a handle
/// that renders it. Later calls return the same handle, so tests and the
/// binary may both call it. Must run before metrics are first used
/// (before `Store::open`), since handles bind to the recorder present when
/// they are registered.
pub fn install_metrics_recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Only an empty bucket list makes the builder fail; ours are not.
            let recorder = builder()
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will stay empty");
            }
            // Histograms accumulate samples until upkeep drains them; without
            // a periodic pass memory grows between scrapes.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(7200);
        assert_eq!(parse_since("1h", now).unwrap(), 3_600_000_000);
        assert_eq!(parse_since("42", now).unwrap(), 42);
        assert_eq!(parse_since("1970-01-01T00:00:01Z", now).unwrap(), 1_000_000);
        assert_eq!(
            parse_since("yesterday", now).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn recorder_installs_once() {
        let a = install_metrics_recorder();
        let b = install_metrics_recorder();
        metrics::counter!("airlock_test_total").increment(1);
        assert!(a.render().contains("airlock_test_total"));
        assert!(b.render().contains("airlock_test_total"));
    }
}

//! The REST API driven in-process through `tower::ServiceExt::oneshot`:
//! authentication, who sees which sessions, verification rights, health and metrics.

mod common;

use std::sync::Arc;

use airlock_control::api::{ApiState, install_metrics_recorder, router};
use airlock_control::store::{SessionDetail, SessionSummary, Store, VerifyReport};
use airlock_pipeline::auth::{IdentityEntry, IdentityRegistry, sha256};
use airlock_pipeline::model::{Identity, IdentityKind};
use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use common::*;
use tower::ServiceExt;
use uuid::Uuid;

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    app: Router,
    alice_session: Uuid,
    bob_session: Uuid,
}

fn identity(name: &str, groups: &[&str], token: &str) -> IdentityEntry {
    IdentityEntry {
        identity: Arc::new(Identity {
            name: name.into(),
            kind: IdentityKind::Human,
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }),
        token_sha256: sha256(token.as_bytes()),
    }
}

async fn fixture() -> Fixture {
    // Installed before the store registers its metric handles.
    let handle = install_metrics_recorder();
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let alice_session = Uuid::new_v4();
    let bob_session = Uuid::new_v4();
    session(&store, alice_session, "alice", 1_000, 2).await;
    session(&store, bob_session, "bob", 2_000, 1).await;
    let registry = IdentityRegistry::new(vec![
        identity("root", &["admins"], "admin-token"),
        identity("carol", &["auditors"], "auditor-token"),
        identity("alice", &["dev"], "alice-token"),
        identity("bob", &["dev"], "bob-token"),
    ]);
    let app = router(ApiState {
        store: store.clone(),
        identities: Arc::new(ArcSwap::from_pointee(registry)),
        admin_groups: vec!["admins".into()],
        auditor_groups: vec!["auditors".into()],
        metrics: Some(handle),
    });
    Fixture {
        _dir: dir,
        store,
        app,
        alice_session,
        bob_session,
    }
}

/// Sends a GET and returns the status, the content type and the body.
async fn get(app: &Router, uri: &str, token: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(uri);
    if let Some(token) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let ctype = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (status, ctype, String::from_utf8(body.to_vec()).unwrap())
}

fn error_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("JSON error body");
    v["error"].as_str().expect("error field").to_owned()
}

#[tokio::test]
async fn healthz_needs_no_token() {
    let f = fixture().await;
    let (status, ctype, body) = get(&f.app, "/healthz", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("application/json"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["status"],
        "ok"
    );

    // With the writer gone the gateway refuses every command: not healthy.
    f.store.close().await;
    let (status, _, body) = get(&f.app, "/healthz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("unavailable"));
}

#[tokio::test]
async fn missing_or_wrong_token_is_401_without_echoing_it() {
    let f = fixture().await;
    for uri in [
        "/api/sessions",
        "/api/audit/verify",
        &format!("/api/sessions/{}", f.alice_session),
    ] {
        let (status, ctype, body) = get(&f.app, uri, None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(ctype.starts_with("application/json"));
        assert!(!error_of(&body).is_empty());

        let (status, _, body) = get(&f.app, uri, Some("not-a-real-token-xyzzy")).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(
            !body.contains("xyzzy"),
            "the token must not be echoed: {body}"
        );
    }
    // Another scheme carrying a valid token is not a bearer token.
    let resp = f
        .app
        .clone()
        .oneshot(
            Request::get("/api/sessions")
                .header(header::AUTHORIZATION, "Basic alice-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

fn listed(body: &str) -> Vec<String> {
    let sessions: Vec<SessionSummary> = serde_json::from_str(body).unwrap();
    let mut ids: Vec<String> = sessions.into_iter().map(|s| s.identity).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn members_see_only_their_own_sessions() {
    let f = fixture().await;
    let (status, _, body) = get(&f.app, "/api/sessions", Some("alice-token")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed(&body), ["alice"]);

    // Asking for someone else's sessions yields nothing rather than them.
    let (status, _, body) = get(&f.app, "/api/sessions?identity=bob", Some("alice-token")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(listed(&body).is_empty());

    // Someone else's session id looks like a missing one.
    let bob = format!("/api/sessions/{}", f.bob_session);
    let (status, _, body) = get(&f.app, &bob, Some("alice-token")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_of(&body), "session not found");
    let (status, _, _) = get(
        &f.app,
        &format!("/api/sessions/{}", Uuid::new_v4()),
        Some("alice-token"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let own = format!("/api/sessions/{}", f.alice_session);
    let (status, _, body) = get(&f.app, &own, Some("alice-token")).await;
    assert_eq!(status, StatusCode::OK);
    let detail: SessionDetail = serde_json::from_str(&body).unwrap();
    assert_eq!(detail.summary.identity, "alice");
    assert_eq!(detail.commands.len(), 2);

    // The short id the CLI prints resolves too, among the caller's own sessions only.
    let short = &f.alice_session.to_string()[..8];
    let (status, _, body) = get(
        &f.app,
        &format!("/api/sessions/{short}"),
        Some("alice-token"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let short_bob = &f.bob_session.to_string()[..8];
    let (status, _, _) = get(
        &f.app,
        &format!("/api/sessions/{short_bob}"),
        Some("alice-token"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = get(&f.app, "/api/sessions/x'--", Some("alice-token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).contains("UUID"));
}

#[tokio::test]
async fn admins_and_auditors_see_every_session() {
    let f = fixture().await;
    for token in ["admin-token", "auditor-token"] {
        let (status, _, body) = get(&f.app, "/api/sessions", Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed(&body), ["alice", "bob"]);
        let (status, _, body) =
            get(&f.app, "/api/sessions?identity=bob&limit=5", Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(listed(&body), ["bob"]);
        let (status, _, _) = get(
            &f.app,
            &format!("/api/sessions/{}", f.bob_session),
            Some(token),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, body) = get(&f.app, "/api/sessions?since=1h", Some("admin-token")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        listed(&body).is_empty(),
        "the fixture's sessions are from 1970"
    );
    let (status, _, body) = get(&f.app, "/api/sessions?since=whenever", Some("admin-token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_of(&body).starts_with("since:"));
    let (status, _, body) = get(&f.app, "/api/sessions?limit=many", Some("admin-token")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!error_of(&body).is_empty());
}

#[tokio::test]
async fn verify_is_for_admins_and_auditors_only() {
    let f = fixture().await;
    let (status, _, body) = get(&f.app, "/api/audit/verify", Some("alice-token")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // The refusal says what to change.
    let error = error_of(&body);
    assert!(
        error.contains("alice's groups (dev)") && error.contains("server.auditor_groups"),
        "{error}"
    );
    for token in ["admin-token", "auditor-token"] {
        let (status, _, body) = get(&f.app, "/api/audit/verify", Some(token)).await;
        assert_eq!(status, StatusCode::OK);
        let report: VerifyReport = serde_json::from_str(&body).unwrap();
        assert!(report.is_ok());
        assert_eq!((report.sessions, report.events), (2, 10));
    }
}

/// Collects every object key in a JSON document.
fn keys(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.to_ascii_lowercase());
                keys(v, out);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, out)),
        _ => {}
    }
}

#[tokio::test]
async fn session_json_has_no_secret_fields() {
    let f = fixture().await;
    let mut all = Vec::new();
    for uri in [
        "/api/sessions".to_owned(),
        format!("/api/sessions/{}", f.alice_session),
    ] {
        let (status, _, body) = get(&f.app, &uri, Some("admin-token")).await;
        assert_eq!(status, StatusCode::OK);
        keys(&serde_json::from_str(&body).unwrap(), &mut all);
    }
    assert!(
        all.contains(&"identity".to_owned()),
        "the walk saw the documents"
    );
    for key in &all {
        assert!(
            !key.contains("password") && !key.contains("token") && !key.contains("secret"),
            "field {key:?} must not exist in session JSON"
        );
    }
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text() {
    let f = fixture().await;
    let (status, ctype, body) = get(&f.app, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(ctype.starts_with("text/plain"));
    assert!(body.contains("airlock_store_batch_size_bucket"), "{body}");
    assert!(body.contains("airlock_store_commit_seconds"), "{body}");
}

#[tokio::test]
async fn unknown_routes_are_json_404s() {
    let f = fixture().await;
    let (status, _, body) = get(&f.app, "/api/nope", Some("admin-token")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(!error_of(&body).is_empty());
}

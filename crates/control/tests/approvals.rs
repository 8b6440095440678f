//! The approval broker, its REST API and its notifiers, against a real
//! SQLite store in a temporary directory, local HTTP and HTTPS receivers for
//! webhooks and Slack, and a local SMTP sink.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_control::api::{ApiState, ApprovalsApi, router_with_approvals};
use airlock_control::approvals::{
    ApprovalEventKind, ApprovalRecord, Broker, BrokerSettings, Grant, GrantState,
};
use airlock_control::config::{EmailTarget, NotifyTarget};
use airlock_control::notify::{self, SlackApp, slack, webhook};
use airlock_control::store::Store;
use airlock_pipeline::approvals::{
    ApprovalBroker, ApprovalError, ApprovalRequest, ApprovalStatus, ApprovalSubject, DecisionKind,
    Resolution,
};
use airlock_pipeline::auth::{IdentityEntry, IdentityRegistry, sha256};
use airlock_pipeline::model::{Classification, Identity, IdentityKind};
use airlock_pipeline::record::{AuditSink, unix_micros};
use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use common::*;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tower::ServiceExt;
use uuid::Uuid;

const PUBLIC_URL: &str = "http://airlock.test";
const SLACK_SECRET: &[u8] = b"slack-signing-secret";

/// `(name, kind, groups)`; each one's token is `<name>-token`.
const PEOPLE: &[(&str, IdentityKind, &[&str])] = &[
    ("root", IdentityKind::Human, &["admins"]),
    ("carol", IdentityKind::Human, &["auditors"]),
    ("alice", IdentityKind::Human, &["dba"]),
    ("bob", IdentityKind::Human, &["dba"]),
    ("dave", IdentityKind::Human, &["dev"]),
    ("agent", IdentityKind::Agent, &["agents"]),
    ("bot", IdentityKind::Agent, &["dba"]),
];

fn who(name: &str) -> Identity {
    let (name, kind, groups) = PEOPLE
        .iter()
        .find(|(n, _, _)| *n == name)
        .expect("known identity");
    Identity {
        name: (*name).into(),
        kind: *kind,
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

fn registry() -> IdentityRegistry {
    IdentityRegistry::new(
        PEOPLE
            .iter()
            .map(|(name, _, _)| IdentityEntry {
                identity: Arc::new(who(name)),
                token_sha256: sha256(format!("{name}-token").as_bytes()),
            })
            .collect(),
    )
}

struct Fixture {
    _dir: tempfile::TempDir,
    store: Store,
    broker: Broker,
    app: Router,
}

fn settings() -> BrokerSettings {
    BrokerSettings {
        access_reviewers: vec!["dba".into()],
        ..BrokerSettings::default()
    }
}

async fn fixture() -> Fixture {
    fixture_with(settings()).await
}

async fn fixture_with(settings: BrokerSettings) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let broker = Broker::open(&store, settings).await.unwrap();
    let mut users = BTreeMap::new();
    users.insert("U_ALICE".to_owned(), "alice".to_owned());
    users.insert("U_AGENT".to_owned(), "agent".to_owned());
    let api = ApprovalsApi {
        broker: broker.clone(),
        slack: vec![SlackApp::new(SLACK_SECRET.to_vec(), users)].into(),
        connections: vec!["shop".to_owned(), "prod-pg".to_owned()].into(),
    };
    let app = router_with_approvals(
        ApiState {
            store: store.clone(),
            identities: Arc::new(ArcSwap::from_pointee(registry())),
            admin_groups: vec!["admins".into()],
            auditor_groups: vec!["auditors".into()],
            metrics: None,
        },
        api,
    );
    Fixture {
        _dir: dir,
        store,
        broker,
        app,
    }
}

fn now_us() -> i64 {
    unix_micros(SystemTime::now())
}

/// A held command of `requester` in `session`, decided by `reviewers`.
fn held(session: Uuid, requester: &str, reviewers: &[&str], min: u32) -> ApprovalRequest {
    let me = who(requester);
    let now = now_us();
    ApprovalRequest {
        id: Uuid::new_v4(),
        requester: me.name,
        requester_kind: me.kind,
        connection: "shop".into(),
        subject: ApprovalSubject::Command {
            session_id: session,
            seq: 1,
            protocol: "postgres".into(),
            text: "DELETE FROM users WHERE id = 42".into(),
            params: vec![],
            wire_sha256: "00".repeat(32),
            classification: Classification { statements: vec![] },
            policy_version: "v1".into(),
        },
        policies: vec!["review-deletes".into()],
        reason: Some("deletes need a DBA".into()),
        reviewers: reviewers.iter().map(|g| g.to_string()).collect(),
        min_approvals: min,
        created_at_us: now,
        expires_at_us: now + 15 * 60 * 1_000_000,
        status: ApprovalStatus::Pending,
        decisions: vec![],
    }
}

/// Submits a held command in a freshly started session; returns its id.
async fn submit(f: &Fixture, requester: &str, reviewers: &[&str], min: u32) -> Uuid {
    let session = Uuid::new_v4();
    f.store
        .append(ev(session, now_us(), start(requester, "shop")))
        .await
        .unwrap();
    let request = held(session, requester, reviewers, min);
    let id = request.id;
    f.broker.submit(request).await.unwrap();
    id
}

async fn status_of(f: &Fixture, id: Uuid) -> ApprovalStatus {
    f.broker.get(id).await.unwrap().unwrap().request.status
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {token}-token"));
    let body = match body {
        Some(v) => {
            req = req.header(header::CONTENT_TYPE, "application/json");
            Body::from(v.to_string())
        }
        None => Body::empty(),
    };
    let resp = app.clone().oneshot(req.body(body).unwrap()).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, value)
}

fn ids_of(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_array()
        .expect("a list")
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn approval_releases_exactly_once_and_is_audited() {
    let f = fixture().await;
    let id = submit(&f, "agent", &["dba"], 1).await;
    let waiting = {
        let broker = f.broker.clone();
        tokio::spawn(async move { broker.wait(id).await })
    };
    let decided = f
        .broker
        .decide(id, &who("alice"), DecisionKind::Approve, Some("ok".into()))
        .await
        .unwrap();
    assert_eq!(decided.status, ApprovalStatus::Approved);
    assert_eq!(waiting.await.unwrap(), Resolution::Released);
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Executed);

    // The approval is spent: a second wait (a re-sent copy) is not released.
    match f.broker.wait(id).await {
        Resolution::Failed(msg) => assert!(msg.contains("already used"), "{msg}"),
        other => panic!("a second release: {other:?}"),
    }
    let record = f.broker.get(id).await.unwrap().unwrap();
    assert!(record.executed_at_us.is_some());
    assert_eq!(record.request.decisions.len(), 1);

    // The session's chain tells the story, and still verifies.
    let ApprovalSubject::Command { session_id, .. } = record.request.subject else {
        unreachable!()
    };
    f.store.flush().await.unwrap();
    let detail = f
        .store
        .get_session(&session_id.to_string())
        .await
        .unwrap()
        .unwrap();
    let kinds: Vec<&str> = detail.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "session_start",
            "approval_requested",
            "approval_decided",
            "approval_decided"
        ]
    );
    assert_eq!(detail.events[2].body["reviewer"], "alice");
    assert_eq!(detail.events[2].body["status"], "approved");
    assert_eq!(detail.events[3].body["status"], "executed");
    assert!(f.store.verify().await.unwrap().is_ok());
}

#[tokio::test]
async fn rejection_names_the_reviewer_and_needs_a_comment() {
    let f = fixture().await;
    let id = submit(&f, "agent", &["dba"], 2).await;
    let waiting = {
        let broker = f.broker.clone();
        tokio::spawn(async move { broker.wait(id).await })
    };
    let uri = format!("/api/approvals/{id}/reject");
    let (status, body) = call(&f.app, "POST", &uri, "bob", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = call(
        &f.app,
        "POST",
        &uri,
        "bob",
        Some(json!({ "comment": "  " })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);

    let (status, body) = call(
        &f.app,
        "POST",
        &uri,
        "bob",
        Some(json!({ "comment": "not on a Friday" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "rejected");
    assert_eq!(body["decisions"][0]["reviewer"], "bob");
    assert_eq!(
        waiting.await.unwrap(),
        Resolution::Rejected {
            by: "bob".into(),
            comment: Some("not on a Friday".into())
        }
    );
    // Decided requests take no more decisions.
    let (status, body) = call(
        &f.app,
        "POST",
        &format!("/api/approvals/{id}/approve"),
        "alice",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn an_undecided_request_expires_by_itself() {
    let f = fixture().await;
    let mut events = f.broker.subscribe();
    let session = Uuid::new_v4();
    let mut request = held(session, "agent", &["dba"], 1);
    request.expires_at_us = request.created_at_us + 1_000_000;
    let id = request.id;
    f.broker.submit(request).await.unwrap();
    // Nobody decides: the wait ends on its own when the TTL runs out.
    assert_eq!(f.broker.wait(id).await, Resolution::Expired);
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Expired);
    let kinds: Vec<ApprovalEventKind> = [events.recv().await, events.recv().await]
        .into_iter()
        .map(|e| e.unwrap().event)
        .collect();
    assert_eq!(
        kinds,
        [ApprovalEventKind::Created, ApprovalEventKind::Expired]
    );
    let err = f
        .broker
        .decide(id, &who("alice"), DecisionKind::Approve, None)
        .await
        .unwrap_err();
    assert_eq!(err, ApprovalError::NotPending("expired"));
}

#[tokio::test]
async fn reviewer_rules_are_enforced() {
    let f = fixture().await;
    let id = submit(&f, "alice", &["dba"], 1).await;
    let refuse = |name: &'static str| {
        let broker = f.broker.clone();
        async move {
            broker
                .decide(id, &who(name), DecisionKind::Approve, None)
                .await
                .unwrap_err()
        }
    };
    // Self-approval, a non-human in the right group, a human outside it.
    for (name, expected) in [
        ("alice", "own request"),
        ("bot", "not a human"),
        ("dave", "required reviewer groups"),
    ] {
        match refuse(name).await {
            ApprovalError::NotAllowed(msg) => assert!(msg.contains(expected), "{name}: {msg}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);

    // Over the API the rule's message comes back as 403.
    let uri = format!("/api/approvals/{id}/approve");
    let (status, body) = call(&f.app, "POST", &uri, "alice", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body["error"].as_str().unwrap().contains("own request"));
    let (status, _) = call(&f.app, "POST", &uri, "dave", None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = call(
        &f.app,
        "POST",
        &format!("/api/approvals/{}/approve", Uuid::new_v4()),
        "bob",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);
}

#[tokio::test]
async fn two_approvals_needed_one_given_stays_pending() {
    let f = fixture().await;
    let id = submit(&f, "agent", &["dba"], 2).await;
    let after = f
        .broker
        .decide(id, &who("alice"), DecisionKind::Approve, None)
        .await
        .unwrap();
    assert_eq!(after.status, ApprovalStatus::Pending);
    // One person counts once.
    assert!(matches!(
        f.broker
            .decide(id, &who("alice"), DecisionKind::Approve, None)
            .await,
        Err(ApprovalError::NotAllowed(_))
    ));
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);
    let after = f
        .broker
        .decide(id, &who("bob"), DecisionKind::Approve, None)
        .await
        .unwrap();
    assert_eq!(after.status, ApprovalStatus::Approved);
    assert_eq!(f.broker.wait(id).await, Resolution::Released);
}

#[tokio::test]
async fn withdrawing_ends_the_wait() {
    let f = fixture().await;
    let id = submit(&f, "agent", &["dba"], 1).await;
    let waiting = {
        let broker = f.broker.clone();
        tokio::spawn(async move { broker.wait(id).await })
    };
    f.broker.withdraw(id).await;
    assert_eq!(waiting.await.unwrap(), Resolution::Withdrawn);
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Withdrawn);
    assert_eq!(
        f.broker
            .decide(id, &who("alice"), DecisionKind::Approve, None)
            .await
            .unwrap_err(),
        ApprovalError::NotPending("withdrawn")
    );
}

#[tokio::test]
async fn concurrent_reviewers_release_once() {
    let f = fixture().await;
    let id = submit(&f, "agent", &["dba"], 1).await;
    let (alice, bob) = (who("alice"), who("bob"));
    let (alice, bob) = tokio::join!(
        f.broker.decide(id, &alice, DecisionKind::Approve, None),
        f.broker.decide(id, &bob, DecisionKind::Approve, None),
    );
    let outcomes = [alice, bob];
    let won = outcomes.iter().filter(|r| r.is_ok()).count();
    assert_eq!(won, 1, "exactly one decision counts: {outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|r| matches!(r, Err(ApprovalError::NotPending("approved"))))
    );
    let record = f.broker.get(id).await.unwrap().unwrap();
    assert_eq!(record.request.decisions.len(), 1);

    // Two sessions racing to claim it: one release.
    let (a, b) = tokio::join!(f.broker.wait(id), f.broker.wait(id));
    let both = [a, b];
    let released = both.iter().filter(|r| **r == Resolution::Released).count();
    assert_eq!(released, 1, "{both:?}");
}

#[tokio::test]
async fn jit_grants_follow_approval_revocation_and_expiry() {
    let f = fixture().await;
    let agent = who("agent");
    assert!(!f.broker.has_grant("agent", "prod-pg"));
    let request = f
        .broker
        .request_access(
            &agent,
            "prod-pg",
            Duration::from_secs(3600),
            "incident 42".into(),
            vec!["dba".into()],
            1,
        )
        .await
        .unwrap();
    assert!(
        !f.broker.has_grant("agent", "prod-pg"),
        "not before approval"
    );
    f.broker
        .decide(request.id, &who("alice"), DecisionKind::Approve, None)
        .await
        .unwrap();
    assert!(f.broker.has_grant("agent", "prod-pg"));
    assert!(!f.broker.has_grant("agent", "shop"));
    assert!(!f.broker.has_grant("alice", "prod-pg"));
    // The grant runs from the approval, not from the request.
    let record = f.broker.get(request.id).await.unwrap().unwrap();
    assert_eq!(
        record.grant_until_us,
        record.decided_at_us.map(|d| d + 3_600_000_000)
    );

    // A reviewer who is neither admin nor grantee cannot revoke it.
    assert!(matches!(
        f.broker.revoke_grant(request.id, &who("bob")).await,
        Err(ApprovalError::NotAllowed(_))
    ));
    f.broker.revoke_grant(request.id, &agent).await.unwrap();
    assert!(!f.broker.has_grant("agent", "prod-pg"), "revoked");
    assert_eq!(
        f.broker.revoke_grant(request.id, &agent).await.unwrap_err(),
        ApprovalError::NotPending("revoked")
    );

    // A short grant ends by itself.
    let mut events = f.broker.subscribe();
    let short = f
        .broker
        .request_access(
            &agent,
            "prod-pg",
            Duration::from_secs(1),
            "quick look".into(),
            vec!["dba".into()],
            1,
        )
        .await
        .unwrap();
    f.broker
        .decide(short.id, &who("bob"), DecisionKind::Approve, None)
        .await
        .unwrap();
    assert!(f.broker.has_grant("agent", "prod-pg"));
    loop {
        let e = events.recv().await.unwrap();
        if e.event == ApprovalEventKind::GrantExpired && e.request.request.id == short.id {
            break;
        }
    }
    assert!(!f.broker.has_grant("agent", "prod-pg"), "expired");
}

#[tokio::test]
async fn restart_withdraws_orphaned_commands_and_keeps_grants() {
    let f = fixture().await;
    let held_id = submit(&f, "agent", &["dba"], 1).await;
    let grant = f
        .broker
        .request_access(
            &who("agent"),
            "prod-pg",
            Duration::from_secs(3600),
            "on call".into(),
            vec!["dba".into()],
            1,
        )
        .await
        .unwrap();
    f.broker
        .decide(grant.id, &who("alice"), DecisionKind::Approve, None)
        .await
        .unwrap();
    drop(f.broker);

    let broker = Broker::open(&f.store, settings()).await.unwrap();
    let held = broker.get(held_id).await.unwrap().unwrap();
    assert_eq!(held.request.status, ApprovalStatus::Withdrawn);
    assert!(broker.has_grant("agent", "prod-pg"));
}

#[tokio::test]
async fn api_lists_only_what_the_caller_may_see() {
    let f = fixture().await;
    let for_dba = submit(&f, "agent", &["dba"], 1).await.to_string();
    let for_sre = submit(&f, "agent", &["sre"], 1).await.to_string();
    let daves = submit(&f, "dave", &["sre"], 1).await.to_string();

    let list = |token: &'static str, query: &'static str| {
        let app = f.app.clone();
        async move {
            let (status, body) =
                call(&app, "GET", &format!("/api/approvals{query}"), token, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            ids_of(&body)
        }
    };
    let mut all = vec![for_dba.clone(), for_sre.clone(), daves.clone()];
    all.sort();
    assert_eq!(list("carol", "").await, all, "auditors see everything");
    assert_eq!(list("root", "").await, all, "admins see everything");
    assert_eq!(
        list("alice", "").await,
        vec![for_dba.clone()],
        "reviewers see theirs"
    );
    assert_eq!(
        list("dave", "").await,
        vec![daves.clone()],
        "members see their own"
    );
    assert_eq!(
        list("bot", "").await,
        Vec::<String>::new(),
        "agents review nothing"
    );
    assert_eq!(
        list("carol", "?identity=dave").await,
        vec![daves.clone()],
        "filter by requester"
    );
    let (status, _) = call(&f.app, "GET", "/api/approvals?status=bogus", "carol", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    f.broker
        .decide(
            Uuid::parse_str(&for_dba).unwrap(),
            &who("alice"),
            DecisionKind::Approve,
            None,
        )
        .await
        .unwrap();
    let mut pending = vec![for_sre.clone(), daves.clone()];
    pending.sort();
    assert_eq!(list("carol", "?status=pending").await, pending);

    // One request: by id or unique prefix; someone else's looks missing.
    let (status, body) = call(
        &f.app,
        "GET",
        &format!("/api/approvals/{}", &for_dba[..8]),
        "alice",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let record: ApprovalRecord = serde_json::from_value(body).unwrap();
    assert_eq!(record.request.id.to_string(), for_dba);
    assert_eq!(record.request.status, ApprovalStatus::Approved);
    let (status, _) = call(
        &f.app,
        "GET",
        &format!("/api/approvals/{daves}"),
        "alice",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&f.app, "GET", "/api/approvals", "nobody", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn api_access_request_grant_and_revoke() {
    let f = fixture().await;
    let (status, body) = call(
        &f.app,
        "POST",
        "/api/access",
        "agent",
        Some(json!({ "connection": "nope", "duration": "1h", "reason": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = call(
        &f.app,
        "POST",
        "/api/access",
        "agent",
        Some(json!({ "connection": "prod-pg", "duration": "90d", "reason": "x" })),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "longer than the maximum");

    let (status, body) = call(
        &f.app,
        "POST",
        "/api/access",
        "agent",
        Some(json!({ "connection": "prod-pg", "duration": "1h", "reason": "incident 7" })),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        body["reviewers"],
        json!(["dba"]),
        "from [approvals] access_reviewers"
    );
    assert_eq!(body["subject"]["kind"], "access");

    let grants = |token: &'static str| {
        let app = f.app.clone();
        async move {
            let (status, body) = call(&app, "GET", "/api/access", token, None).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            serde_json::from_value::<Vec<Grant>>(body).unwrap()
        }
    };
    let mine = grants("agent").await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0].state, GrantState::Pending);
    assert!(grants("dave").await.is_empty());

    let (status, body) = call(
        &f.app,
        "POST",
        &format!("/api/approvals/{id}/approve"),
        "alice",
        Some(json!({ "comment": "go" })),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(f.broker.has_grant("agent", "prod-pg"));
    let mine = grants("agent").await;
    assert_eq!(mine[0].state, GrantState::Active);
    assert!(mine[0].until_us.is_some());

    let revoke = format!("/api/access/{id}/revoke");
    let (status, _) = call(&f.app, "POST", &revoke, "dave", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "cannot even see it");
    let (status, _) = call(&f.app, "POST", &revoke, "bob", None).await;
    assert_eq!(
        status,
        StatusCode::FORBIDDEN,
        "a reviewer is not the grantee"
    );
    let (status, body) = call(&f.app, "POST", &revoke, "root", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "revoked");
    assert_eq!(body["revoked_by"], "root");
    assert!(!f.broker.has_grant("agent", "prod-pg"));
    let (status, _) = call(&f.app, "POST", &revoke, "root", None).await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn event_stream_delivers_visible_events() {
    let f = fixture().await;
    let resp = f
        .app
        .clone()
        .oneshot(
            Request::get("/api/approvals/events")
                .header(header::AUTHORIZATION, "Bearer alice-token")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    // Subscribed once the response exists: both of these happen after.
    let hidden = submit(&f, "agent", &["sre"], 1).await;
    let shown = submit(&f, "agent", &["dba"], 1).await;
    let mut body = resp.into_body().into_data_stream();
    let mut text = String::new();
    while !text.contains("event: created\ndata: ") || !text.ends_with("\n\n") {
        let chunk = body.next().await.expect("stream open").unwrap();
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .expect("a data line");
    let event: Value = serde_json::from_str(data).unwrap();
    assert_eq!(event["event"], "created");
    assert_eq!(event["request"]["id"], shown.to_string());
    assert!(!text.contains(&hidden.to_string()), "{text}");
}

type Hits = mpsc::UnboundedReceiver<(HeaderMap, Bytes)>;

/// A local HTTP receiver: records every request; answers 500 to the first
/// `fail_first` of them, 200 after.
async fn receiver(fail_first: usize) -> (String, Hits) {
    let (app, rx) = hook_app(fail_first);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), rx)
}

/// The receiver's app: `POST /hook` records the request and answers 500 to
/// the first `fail_first` requests, 200 after.
fn hook_app(fail_first: usize) -> (Router, Hits) {
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = Arc::new(AtomicUsize::new(0));
    let app = Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let tx = tx.clone();
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send((headers, body));
                if n < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    (app, rx)
}

#[tokio::test]
async fn webhook_is_signed_and_retried_after_a_failure() {
    let f = fixture().await;
    let (url, mut hits) = receiver(1).await;
    let secret = b"hook-secret".to_vec();
    notify::spawn(
        &f.broker,
        vec![NotifyTarget::Webhook {
            url,
            secret: secret.clone(),
            ca_file: None,
        }],
        PUBLIC_URL,
    );
    let id = submit(&f, "agent", &["dba"], 1).await;

    let (first_headers, first_body) = hits.recv().await.unwrap();
    // The receiver said 500; the same delivery comes again.
    let (headers, body) = hits.recv().await.unwrap();
    assert_eq!(body, first_body);
    assert_eq!(
        headers["x-airlock-delivery"],
        first_headers["x-airlock-delivery"]
    );
    assert_eq!(headers["x-airlock-event"], "created");
    let sig = headers["x-airlock-signature"].to_str().unwrap();
    assert!(webhook::verify(&secret, &body, sig), "{sig}");
    assert!(!webhook::verify(b"wrong", &body, sig));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["event"], "created");
    assert_eq!(payload["request"]["id"], id.to_string());
    assert_eq!(
        payload["approval_url"],
        format!("{PUBLIC_URL}/approvals/{id}")
    );

    // The failed first attempt was recorded before the retry was made.
    let mut conn = raw(f._dir.path()).await;
    let rows: Vec<(i64, bool, Option<i64>)> = sqlx::query_as(
        "SELECT attempt, ok, status_code FROM notify_deliveries WHERE approval_id = ? \
         ORDER BY attempt",
    )
    .bind(id.to_string())
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.first(), Some(&(1, false, Some(500))));

    // Decisions are sent too, and a notification never decides anything.
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);
    f.broker
        .decide(id, &who("alice"), DecisionKind::Approve, None)
        .await
        .unwrap();
    // Each event is its own delivery, so they may arrive in either order.
    let mut seen = Vec::new();
    while !(seen.contains(&"decided".to_owned()) && seen.contains(&"approved".to_owned())) {
        let (headers, body) = hits.recv().await.unwrap();
        assert!(webhook::verify(
            &secret,
            &body,
            headers["x-airlock-signature"].to_str().unwrap()
        ));
        seen.push(headers["x-airlock-event"].to_str().unwrap().to_owned());
    }
}

fn slack_request(body: String, timestamp: i64, secret: &[u8]) -> Request<Body> {
    let ts = timestamp.to_string();
    let sig = slack::sign(secret, &ts, body.as_bytes());
    Request::post("/api/slack/interactive")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(Body::from(body))
        .unwrap()
}

fn click(user: &str, action: &str, id: Uuid) -> String {
    let payload = json!({
        "type": "block_actions",
        "user": { "id": user },
        "actions": [ { "action_id": action, "value": id.to_string() } ],
    });
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

async fn send(app: &Router, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn slack_buttons_are_posted_and_signed_clicks_decide() {
    let f = fixture().await;
    let (url, mut hits) = receiver(0).await;
    notify::spawn(
        &f.broker,
        vec![NotifyTarget::Slack {
            webhook_url: url,
            signing_secret: SLACK_SECRET.to_vec(),
            users: BTreeMap::new(),
            ca_file: None,
        }],
        PUBLIC_URL,
    );
    let id = submit(&f, "agent", &["dba"], 1).await;
    let (_, body) = hits.recv().await.unwrap();
    let message: Value = serde_json::from_slice(&body).unwrap();
    let buttons = message["blocks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("an actions block")["elements"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(buttons[0]["action_id"], slack::APPROVE_ACTION);
    assert_eq!(buttons[0]["value"], id.to_string());
    assert_eq!(buttons[1]["action_id"], slack::REJECT_ACTION);
    assert_eq!(buttons[1]["value"], id.to_string());

    let now = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    )
    .unwrap();
    // Forged, stale, or unsigned clicks are refused and change nothing.
    let forged = slack_request(click("U_ALICE", slack::APPROVE_ACTION, id), now, b"guess");
    assert_eq!(send(&f.app, forged).await.0, StatusCode::UNAUTHORIZED);
    let stale = slack_request(
        click("U_ALICE", slack::APPROVE_ACTION, id),
        now - 10 * 60,
        SLACK_SECRET,
    );
    assert_eq!(send(&f.app, stale).await.0, StatusCode::UNAUTHORIZED);
    let unsigned = Request::post("/api/slack/interactive")
        .body(Body::from(click("U_ALICE", slack::APPROVE_ACTION, id)))
        .unwrap();
    assert_eq!(send(&f.app, unsigned).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);

    // Signed, but by someone not linked to an identity, or by the requester.
    let (status, body) = send(
        &f.app,
        slack_request(
            click("U_NOBODY", slack::APPROVE_ACTION, id),
            now,
            SLACK_SECRET,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["text"].as_str().unwrap().contains("not linked"),
        "{body}"
    );
    let (_, body) = send(
        &f.app,
        slack_request(
            click("U_AGENT", slack::APPROVE_ACTION, id),
            now,
            SLACK_SECRET,
        ),
    )
    .await;
    assert!(
        body["text"].as_str().unwrap().contains("Not recorded"),
        "{body}"
    );
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);

    let (status, body) = send(
        &f.app,
        slack_request(
            click("U_ALICE", slack::APPROVE_ACTION, id),
            now,
            SLACK_SECRET,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["text"].as_str().unwrap().contains("approved by alice"),
        "{body}"
    );
    // Decided: the original message is replaced for everyone, buttons gone.
    assert_eq!(body["replace_original"], true, "{body}");
    assert_eq!(body["response_type"], "in_channel", "{body}");
    let record = f.broker.get(id).await.unwrap().unwrap();
    assert_eq!(record.request.status, ApprovalStatus::Approved);
    assert_eq!(record.request.decisions[0].reviewer, "alice");
}

/// One message as an SMTP sink received it.
#[derive(Debug)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

/// A tiny SMTP server: accepts everything, un-stuffs dots, hands over each
/// message.
async fn smtp_sink() -> (SocketAddr, mpsc::UnboundedReceiver<Mail>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read);
                write.write_all(b"220 sink ready\r\n").await.unwrap();
                let (mut from, mut to) = (String::new(), Vec::new());
                loop {
                    let mut line = String::new();
                    if lines.read_line(&mut line).await.unwrap() == 0 {
                        return;
                    }
                    let cmd = line.trim_end().to_owned();
                    let upper = cmd.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if let Some(a) = upper.strip_prefix("MAIL FROM:") {
                        from = cmd[cmd.len() - a.len()..].to_owned();
                        b"250 ok\r\n"
                    } else if let Some(a) = upper.strip_prefix("RCPT TO:") {
                        to.push(cmd[cmd.len() - a.len()..].to_owned());
                        b"250 ok\r\n"
                    } else if upper == "DATA" {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        loop {
                            let mut l = String::new();
                            lines.read_line(&mut l).await.unwrap();
                            let l = l.trim_end_matches(['\r', '\n']);
                            if l == "." {
                                break;
                            }
                            data.push_str(l.strip_prefix('.').unwrap_or(l));
                            data.push('\n');
                        }
                        let _ = tx.send(Mail {
                            from: std::mem::take(&mut from),
                            to: std::mem::take(&mut to),
                            data,
                        });
                        b"250 queued\r\n"
                    } else if upper == "QUIT" {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"502 not implemented\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, rx)
}

#[tokio::test]
async fn email_carries_the_approval_link() {
    let f = fixture().await;
    let (addr, mut mails) = smtp_sink().await;
    notify::spawn(
        &f.broker,
        vec![NotifyTarget::Email(EmailTarget {
            smtp_host: addr.ip().to_string(),
            smtp_port: addr.port(),
            from: "airlock@example.com".into(),
            to: vec!["dba@example.com".into(), "oncall@example.com".into()],
            credentials: None,
            starttls: false,
        })],
        PUBLIC_URL,
    );
    let id = submit(&f, "agent", &["dba"], 1).await;
    let mail = mails.recv().await.unwrap();
    assert_eq!(mail.from, "<airlock@example.com>");
    assert_eq!(mail.to, ["<dba@example.com>", "<oncall@example.com>"]);
    assert!(
        mail.data
            .contains("Subject: [Airlock] Approval needed: agent on shop"),
        "{}",
        mail.data
    );
    assert!(mail.data.contains("DELETE FROM users WHERE id = 42"));
    assert!(
        mail.data.contains(&format!("{PUBLIC_URL}/approvals/{id}")),
        "{}",
        mail.data
    );
}

/// A private CA and a server certificate it issued for `127.0.0.1`.
struct PrivatePki {
    /// The CA certificate, PEM: what a `ca_file` holds.
    ca_pem: String,
    server: Arc<rustls::ServerConfig>,
}

fn private_pki() -> PrivatePki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Airlock test private CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "hooks.test");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    let key = rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
    .unwrap();
    PrivatePki {
        ca_pem: ca_cert.pem(),
        server: Arc::new(server),
    }
}

/// Accepts TCP connections and completes the TLS handshake before handing
/// them to axum; failed handshakes are reported on `failures`.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    failures: mpsc::UnboundedSender<String>,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(10), self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, addr),
                Ok(Err(e)) => {
                    let _ = self.failures.send(e.to_string());
                }
                Err(_) => {
                    let _ = self.failures.send("handshake timed out".into());
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// [`receiver`] over TLS only, with `pki`'s server certificate: its URL,
/// the requests it got, and the TLS handshakes that failed.
async fn https_receiver(pki: &PrivatePki) -> (String, Hits, mpsc::UnboundedReceiver<String>) {
    let (app, hits) = hook_app(0);
    let (failures_tx, failures) = mpsc::unbounded_channel();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener {
        tcp,
        acceptor: tokio_rustls::TlsAcceptor::from(pki.server.clone()),
        failures: failures_tx,
    };
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("https://{addr}/hook"), hits, failures)
}

/// One recorded delivery attempt: `(target, attempt, ok, status_code, error)`.
type DeliveryAttempt = (String, i64, bool, Option<i64>, Option<String>);

/// The recorded delivery attempts for `id`, once there are at least `n`
/// (polled: recording follows the receiver's answer), ordered by target and
/// attempt.
async fn deliveries(f: &Fixture, id: Uuid, n: usize) -> Vec<DeliveryAttempt> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut conn = raw(f._dir.path()).await;
    loop {
        let rows: Vec<DeliveryAttempt> = sqlx::query_as(
            "SELECT target, attempt, ok, status_code, error FROM notify_deliveries \
             WHERE approval_id = ? ORDER BY target, attempt",
        )
        .bind(id.to_string())
        .fetch_all(&mut conn)
        .await
        .unwrap();
        if rows.len() >= n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} recorded deliveries for {id}, have {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn webhook_and_slack_are_delivered_over_https_trusting_a_private_ca() {
    let f = fixture().await;
    let pki = private_pki();
    let (url, mut hits, mut failures) = https_receiver(&pki).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("private-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let secret = b"hook-secret".to_vec();
    notify::spawn(
        &f.broker,
        vec![
            NotifyTarget::Webhook {
                url: url.clone(),
                secret: secret.clone(),
                ca_file: Some(ca_file.clone()),
            },
            NotifyTarget::Slack {
                webhook_url: url,
                signing_secret: SLACK_SECRET.to_vec(),
                users: BTreeMap::new(),
                ca_file: Some(ca_file),
            },
        ],
        PUBLIC_URL,
    );
    let id = submit(&f, "agent", &["dba"], 1).await;

    // The receiver serves TLS only: anything it got came over HTTPS.
    let (mut webhook_hit, mut slack_hit) = (None, None);
    while webhook_hit.is_none() || slack_hit.is_none() {
        let (headers, body) = hits.recv().await.unwrap();
        if headers.contains_key("x-airlock-signature") {
            webhook_hit = Some((headers, body));
        } else {
            slack_hit = Some((headers, body));
        }
    }
    let (headers, body) = webhook_hit.unwrap();
    assert_eq!(headers["x-airlock-event"], "created");
    let sig = headers["x-airlock-signature"].to_str().unwrap();
    assert!(webhook::verify(&secret, &body, sig), "{sig}");
    assert!(!webhook::verify(b"wrong", &body, sig));
    let payload: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(payload["event"], "created");
    assert_eq!(payload["request"]["id"], id.to_string());
    let (_, body) = slack_hit.unwrap();
    let message: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        message["text"]
            .as_str()
            .unwrap()
            .contains("agent wants to run"),
        "{message}"
    );

    let rows = deliveries(&f, id, 2).await;
    assert_eq!(
        rows.iter()
            .map(|(t, a, ok, code, _)| (t.as_str(), *a, *ok, *code))
            .collect::<Vec<_>>(),
        [
            ("notify[0] webhook", 1, true, Some(200)),
            ("notify[1] slack", 1, true, Some(200)),
        ]
    );
    assert!(failures.try_recv().is_err(), "no TLS handshake failed");
    // A notification informs; it decides nothing.
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_delivery_and_approves_nothing() {
    let f = fixture().await;
    let pki = private_pki();
    let (url, mut hits, mut failures) = https_receiver(&pki).await;
    // No ca_file: only the system's roots, which do not know this CA.
    notify::spawn(
        &f.broker,
        vec![NotifyTarget::Webhook {
            url: url.clone(),
            secret: b"hook-secret".to_vec(),
            ca_file: None,
        }],
        PUBLIC_URL,
    );
    let id = submit(&f, "agent", &["dba"], 1).await;

    // The client refuses the certificate during the handshake.
    let failure = failures.recv().await.unwrap();
    assert!(
        failure.to_ascii_lowercase().contains("alert"),
        "the client should abort with an alert: {failure}"
    );
    let rows = deliveries(&f, id, 1).await;
    let (target, attempt, ok, code, error) = &rows[0];
    assert_eq!(
        (target.as_str(), *attempt, *ok, *code),
        ("notify[0] webhook", 1, false, None)
    );
    let error = error.as_deref().unwrap_or_default();
    assert!(
        error.contains("certificate") && error.contains("UnknownIssuer"),
        "{error}"
    );
    // Not retried: an untrusted certificate stays untrusted, so the sender
    // marks the failure final (the delivery loop stops on that). Asked of
    // the sender directly, with the same client a target gets.
    let http = notify::tls::http_client(None, Duration::from_secs(10)).unwrap();
    let err = notify::webhook::send(&http, &url, b"s", "created", Uuid::new_v4(), b"{}".to_vec())
        .await
        .expect_err("an untrusted certificate fails the delivery");
    assert!(!err.retry, "must not be retried: {}", err.message);
    failures.recv().await.unwrap();
    assert_eq!(deliveries(&f, id, 1).await.len(), 1);
    // Nothing reached the receiver's handler, and nothing was decided.
    assert!(hits.try_recv().is_err());
    assert_eq!(status_of(&f, id).await, ApprovalStatus::Pending);
    let record = f.broker.get(id).await.unwrap().unwrap();
    assert!(record.request.decisions.is_empty());
}

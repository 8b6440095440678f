//! The audit store against real SQLite files: group commit, ordering, the
//! hash chain and its verification, derived session rows, failing closed.

mod common;

use std::collections::HashMap;

use airlock_control::store::{
    GENESIS, SessionFilter, SessionStatus, Store, StoreError, StoreOptions, SyncMode,
};
use airlock_pipeline::model::Verdict;
use airlock_pipeline::record::{AuditSink, EventBody};
use common::*;
use futures::future::join_all;
use sqlx::SqliteConnection;
use uuid::Uuid;

/// `(seq, body, prev_hash, hash)` of every event of a session, in seq order.
async fn chain_of(conn: &mut SqliteConnection, id: Uuid) -> Vec<(i64, String, String, String)> {
    sqlx::query_as(
        "SELECT seq, body, prev_hash, hash FROM events WHERE session_id = ? ORDER BY seq",
    )
    .bind(id.to_string())
    .fetch_all(conn)
    .await
    .unwrap()
}

fn body_seq(body: &str) -> u64 {
    match serde_json::from_str::<EventBody>(body).unwrap() {
        EventBody::Command { seq, .. } => seq,
        other => panic!("expected a command, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_all_stored_chained_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let sessions: Vec<Uuid> = (0..16).map(|_| Uuid::new_v4()).collect();
    const PER_SESSION: u64 = 40;

    // Many tasks at once; each appends its session's commands in order,
    // awaiting each one the way an adapter does.
    let tasks: Vec<_> = sessions
        .iter()
        .map(|&id| {
            let store = store.clone();
            tokio::spawn(async move {
                for seq in 1..=PER_SESSION {
                    let body = command(seq, &format!("SELECT {seq}"), Verdict::Allow);
                    store.append(ev(id, seq as i64, body)).await.unwrap();
                }
            })
        })
        .collect();
    for t in join_all(tasks).await {
        t.unwrap();
    }

    let stats = store.stats();
    assert_eq!(stats.events, 16 * PER_SESSION, "every append was journaled");
    store.flush().await.unwrap();
    let stats = store.stats();
    assert_eq!(stats.indexed_events, 16 * PER_SESSION);
    assert_eq!(stats.failed_batches, 0);

    let mut raw = raw(dir.path()).await;
    for &id in &sessions {
        let chain = chain_of(&mut raw, id).await;
        assert_eq!(chain.len() as u64, PER_SESSION);
        let mut prev = GENESIS.to_owned();
        for (i, (seq, body, prev_hash, hash)) in chain.iter().enumerate() {
            assert_eq!(*seq, i as i64 + 1);
            assert_eq!(body_seq(body), i as u64 + 1, "per-session order kept");
            assert_eq!(*prev_hash, prev);
            prev = hash.clone();
        }
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.sessions, 16);
    assert_eq!(report.events, 16 * PER_SESSION);
    store.close().await;
}

/// On a current-thread runtime the indexer cannot run until this task
/// yields, so every append below is journaled first: the batching is
/// deterministic.
#[tokio::test]
async fn queued_appends_are_indexed_in_batches_in_call_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), 16).await;
    let a = Uuid::new_v4();
    let b = Uuid::new_v4();
    let mut futures = vec![
        store.append(ev(a, 1, start("alice", "prod-pg"))),
        store.append(ev(b, 1, start("bob", "prod-pg"))),
    ];
    for seq in 1..=100u64 {
        let sid = if seq % 3 == 0 { b } else { a };
        futures.push(store.append(ev(
            sid,
            1000 - seq as i64,
            command(seq, "SELECT 1", Verdict::Allow),
        )));
    }
    // Awaited in reverse: order is fixed by the append calls, not by polling.
    futures.reverse();
    for r in join_all(futures).await {
        r.unwrap();
    }
    store.flush().await.unwrap();

    let stats = store.stats();
    assert_eq!((stats.events, stats.indexed_events), (102, 102));
    assert_eq!(stats.max_batch, 16, "batches fill up to max_batch");
    assert!(stats.batches >= 7 && stats.batches < 20, "{stats:?}");

    let mut raw = raw(dir.path()).await;
    for (sid, pick) in [(a, 1u64), (b, 0u64)] {
        let seqs: Vec<u64> = chain_of(&mut raw, sid)
            .await
            .iter()
            .skip(1)
            .map(|(_, body, _, _)| body_seq(body))
            .collect();
        let expected: Vec<u64> = (1..=100u64)
            .filter(|s| u64::from(s % 3 != 0) == pick)
            .collect();
        assert_eq!(seqs, expected);
    }
    store.close().await;
}

#[tokio::test]
async fn dropped_futures_are_still_written_and_close_drains_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = Uuid::new_v4();
    for seq in 1..=50 {
        // Fire and forget: the event is queued at the call.
        drop(store.append(ev(id, seq, command(seq as u64, "SELECT 1", Verdict::Allow))));
    }
    store.close().await;
    assert!(!store.is_writable());

    // Closed: refused at once, so the caller fails closed.
    let err = store
        .append(ev(id, 99, end(50)))
        .await
        .expect_err("append after close must fail");
    assert!(err.to_string().contains("closed"), "{err}");
    assert!(matches!(store.flush().await, Err(StoreError::Closed)));

    let store = open(dir.path()).await;
    let detail = store.get_session(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(detail.commands.len(), 50);
    assert!(store.verify().await.unwrap().is_ok());
    store.close().await;
}

#[tokio::test]
async fn flush_waits_for_earlier_appends() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = Uuid::new_v4();
    drop(store.append(ev(id, 1, start("alice", "prod-pg"))));
    store.flush().await.unwrap();
    let listed = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, id.to_string());
    store.close().await;
}

#[tokio::test]
async fn full_sync_mode_works_and_chains_continue_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/audit.db").display()
    );
    let opts = StoreOptions {
        sync: SyncMode::Full,
        max_batch: 64,
        ..StoreOptions::default()
    };
    let id = Uuid::new_v4();
    let store = Store::open(&url, opts).await.unwrap();
    store
        .append(ev(id, 1, start("alice", "prod-pg")))
        .await
        .unwrap();
    store
        .append(ev(id, 2, command(1, "SELECT 1", Verdict::Allow)))
        .await
        .unwrap();
    store.close().await;

    // The writer's head cache is gone; the chain must continue from session_heads.
    let store = Store::open(&url, opts).await.unwrap();
    store.append(ev(id, 3, result(1, 1))).await.unwrap();
    store.append(ev(id, 4, end(1))).await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.sessions, report.events), (1, 4));
    store.close().await;
}

/// With `sync = "full"` segments are preallocated (zeros, written over):
/// rotating through many of them loses nothing and the indexer never takes
/// their zero tails for damage, while running or replaying at reopen.
#[tokio::test]
async fn full_sync_rotates_through_preallocated_segments_without_skipping() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let opts = StoreOptions {
        sync: SyncMode::Full,
        max_segment_bytes: 8 * 1024,
        ..StoreOptions::default()
    };
    let id = Uuid::new_v4();
    let store = Store::open(&url, opts).await.unwrap();
    store
        .append(ev(id, 1, start("alice", "prod-pg")))
        .await
        .unwrap();
    for n in 1..=200u64 {
        let text = format!("SELECT {n}, '{}'", "x".repeat(200));
        store
            .append(ev(id, 1 + n as i64, command(n, &text, Verdict::Allow)))
            .await
            .unwrap();
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 201);
    assert_eq!(store.stats().skipped_bytes, 0);
    store.close().await;

    let store = Store::open(&url, opts).await.unwrap();
    store.append(ev(id, 500, end(200))).await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.events, 202);
    assert_eq!(store.stats().skipped_bytes, 0);
    store.close().await;
}

/// Sessions on one thread whose appends come in the same turn of its
/// runtime share a journal write (the first to resume writes them all),
/// and each append still returns only once its own line is written.
#[tokio::test]
async fn appends_in_the_same_turn_share_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    for &id in &ids {
        store
            .append(ev(id, 1, start("alice", "prod-pg")))
            .await
            .unwrap();
    }
    let before = store.stats();
    let journal_dir = dir.path().join("audit.db.journal.d");
    let tasks: Vec<_> = ids
        .iter()
        .map(|&id| {
            let store = store.clone();
            let journal_dir = journal_dir.clone();
            tokio::spawn(async move {
                store
                    .append(ev(id, 2, command(1, "SELECT 1", Verdict::Allow)))
                    .await
                    .unwrap();
                // Returned: the line is in the file already.
                let seg = std::fs::read_dir(&journal_dir).unwrap();
                let text: String = seg
                    .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
                    .collect();
                assert!(text.contains(&id.to_string()) && text.contains("SELECT 1"));
            })
        })
        .collect();
    for t in join_all(tasks).await {
        t.unwrap();
    }
    let after = store.stats();
    assert_eq!(after.events - before.events, 3);
    // Three appends, one write (two at most, should the journal's own
    // 50 ms flush land between them): never one each.
    let writes = after.journal_writes - before.journal_writes;
    assert!((1..3).contains(&writes), "{writes} writes for 3 appends");
    store.flush().await.unwrap();
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    store.close().await;
}

/// One large batch (many statements of several sizes, several sessions):
/// every event, every session's counters and every chain head arrive.
#[tokio::test]
async fn a_large_batch_of_several_sessions_is_indexed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(dir.path(), 2048).await;
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    let mut futures = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        futures.push(store.append(ev(id, i as i64, start("alice", "prod-pg"))));
    }
    let mut seqs = [0u64; 3];
    for n in 0..700u64 {
        let i = (n % 3) as usize;
        seqs[i] += 1;
        // Every seventh command of a session is denied.
        let verdict = if seqs[i] % 7 == 0 {
            Verdict::Deny
        } else {
            Verdict::Allow
        };
        futures.push(store.append(ev(
            ids[i],
            10 + n as i64,
            command(seqs[i], "SELECT 1", verdict),
        )));
    }
    // Nothing is indexed before this task yields (current-thread runtime).
    for r in join_all(futures).await {
        r.unwrap();
    }
    store.flush().await.unwrap();
    let stats = store.stats();
    assert_eq!((stats.indexed_events, stats.batches), (703, 1), "{stats:?}");

    let all = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    for (i, id) in ids.iter().enumerate() {
        let s = all.iter().find(|s| s.id == id.to_string()).unwrap();
        assert_eq!(
            (s.commands, s.denied),
            (seqs[i], seqs[i] / 7),
            "session {i}"
        );
    }
    let report = store.verify().await.unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.sessions, report.events), (3, 703));
    store.close().await;
}

#[tokio::test]
async fn derived_sessions_track_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let alice = Uuid::new_v4();
    let bob = Uuid::new_v4();
    let failed = Uuid::new_v4();
    session(&store, alice, "alice", 1_000, 2).await;
    store
        .append(ev(bob, 5_000, start("bob", "staging-pg")))
        .await
        .unwrap();
    store
        .append(ev(
            bob,
            5_010,
            command(1, "DROP TABLE users", Verdict::Deny),
        ))
        .await
        .unwrap();
    store
        .append(ev(
            failed,
            9_000,
            EventBody::AuthFailed {
                claimed_identity: "mallory".into(),
                connection: "prod-pg".into(),
                protocol: "postgres".into(),
                client_addr: "10.0.0.9:4000".into(),
                reason: "authentication failed".into(),
            },
        ))
        .await
        .unwrap();

    let all = store
        .list_sessions(&SessionFilter::default())
        .await
        .unwrap();
    let ids: Vec<&str> = all.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [failed.to_string(), bob.to_string(), alice.to_string()],
        "newest first"
    );

    let a = &all[2];
    assert_eq!(a.identity, "alice");
    assert_eq!(a.identity_kind.as_deref(), Some("agent"));
    assert_eq!(a.connection, "prod-pg");
    assert_eq!(a.application_name.as_deref(), Some("psql"));
    assert!(a.tls);
    assert_eq!(a.status, SessionStatus::Ended);
    assert_eq!((a.commands, a.denied), (2, 0));
    assert_eq!((a.bytes_from_client, a.bytes_to_client), (1000, 2000));
    assert_eq!(a.started_at_us, 1_010);
    assert_eq!(a.ended_at_us, Some(1_060));
    assert_eq!(a.end_reason.as_deref(), Some("client terminated"));

    let b = &all[1];
    assert_eq!(b.status, SessionStatus::Active);
    assert_eq!((b.commands, b.denied), (1, 1));
    assert_eq!(b.ended_at_us, None);

    let f = &all[0];
    assert!(f.failed);
    assert_eq!(f.status, SessionStatus::Failed);
    assert_eq!(f.identity, "mallory");
    assert_eq!(f.end_reason.as_deref(), Some("authentication failed"));

    let filter = |f: SessionFilter| {
        let store = store.clone();
        async move {
            store
                .list_sessions(&f)
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.identity)
                .collect::<Vec<_>>()
        }
    };
    let by_identity = SessionFilter {
        identity: Some("bob".into()),
        ..Default::default()
    };
    assert_eq!(filter(by_identity).await, ["bob"]);
    let by_connection = SessionFilter {
        connection: Some("prod-pg".into()),
        ..Default::default()
    };
    assert_eq!(filter(by_connection).await, ["mallory", "alice"]);
    let since = SessionFilter {
        since_us: Some(5_000),
        ..Default::default()
    };
    assert_eq!(filter(since).await, ["mallory", "bob"]);
    let failed_only = SessionFilter {
        failed_only: true,
        ..Default::default()
    };
    assert_eq!(filter(failed_only).await, ["mallory"]);
    let limited = SessionFilter {
        limit: Some(1),
        ..Default::default()
    };
    assert_eq!(filter(limited).await, ["mallory"]);
    store.close().await;
}

#[tokio::test]
async fn session_detail_joins_commands_with_results() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let id = Uuid::new_v4();
    store
        .append(ev(id, 10, start("alice", "prod-pg")))
        .await
        .unwrap();
    store
        .append(ev(
            id,
            20,
            command(1, "SELECT email FROM users", Verdict::Allow),
        ))
        .await
        .unwrap();
    store
        .append(ev(id, 30, command(2, "DROP TABLE users", Verdict::Deny)))
        .await
        .unwrap();
    store.append(ev(id, 40, result(1, 3))).await.unwrap();
    store.append(ev(id, 50, result(7, 0))).await.unwrap();
    store.append(ev(id, 60, end(2))).await.unwrap();

    assert!(
        store
            .get_session(&Uuid::new_v4().to_string())
            .await
            .unwrap()
            .is_none()
    );
    let d = store.get_session(&id.to_string()).await.unwrap().unwrap();
    assert_eq!(d.summary.identity, "alice");
    assert_eq!(d.commands.len(), 2);

    let c1 = &d.commands[0];
    assert_eq!((c1.seq, c1.command_seq, c1.at_us), (2, 1, 20));
    assert_eq!(c1.text, "SELECT email FROM users");
    assert_eq!(c1.params, [Some("42".to_owned()), None]);
    assert_eq!(c1.decision.verdict, Verdict::Allow);
    assert_eq!(c1.decision.policy_version, "v1");
    let r1 = c1.result.as_ref().expect("result joined");
    assert_eq!((r1.seq, r1.rows, r1.duration_us), (4, 3, 250));
    assert_eq!(r1.tags, ["SELECT 3"]);
    assert_eq!(r1.masked[0].cells, 3);

    let c2 = &d.commands[1];
    assert_eq!(c2.decision.verdict, Verdict::Deny);
    assert!(c2.result.is_none(), "a denied command has no result");

    let kinds: Vec<(i64, &str)> = d.events.iter().map(|e| (e.seq, e.kind.as_str())).collect();
    assert_eq!(
        kinds,
        [
            (1, "session_start"),
            (5, "command_result"),
            (6, "session_end")
        ],
        "a result without its command stays visible as an event"
    );
    assert_eq!(d.events[0].body["identity"], "alice");
    store.close().await;
}

/// Records three sessions of 6 events each, closes the store and returns their ids.
async fn three_sessions(dir: &std::path::Path) -> [Uuid; 3] {
    let store = open(dir).await;
    let ids = [Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4()];
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(session(&store, *id, "alice", i as i64 * 1000, 2).await, 6);
    }
    assert!(store.verify().await.unwrap().is_ok());
    store.close().await;
    ids
}

async fn exec(conn: &mut SqliteConnection, sql: &str, id: Uuid) {
    let done = sqlx::query(sql)
        .bind(id.to_string())
        .execute(conn)
        .await
        .unwrap();
    assert!(done.rows_affected() > 0, "{sql}");
}

fn problems_by_session(
    report: &airlock_control::store::VerifyReport,
) -> HashMap<String, Vec<(Option<i64>, String)>> {
    let mut map: HashMap<String, Vec<(Option<i64>, String)>> = HashMap::new();
    for p in &report.problems {
        map.entry(p.session_id.clone())
            .or_default()
            .push((p.seq, p.problem.clone()));
    }
    map
}

#[tokio::test]
async fn verify_reports_every_kind_of_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let [altered, gap, truncated] = three_sessions(dir.path()).await;
    let mut raw = raw(dir.path()).await;
    exec(
        &mut raw,
        "UPDATE events SET body = replace(body, 'SELECT 1', 'SELECT 0') WHERE session_id = ? AND seq = 2",
        altered,
    )
    .await;
    exec(
        &mut raw,
        "DELETE FROM events WHERE session_id = ? AND seq = 3",
        gap,
    )
    .await;
    exec(
        &mut raw,
        "DELETE FROM events WHERE session_id = ? AND seq = 6",
        truncated,
    )
    .await;

    let store = open(dir.path()).await;
    let report = store.verify().await.unwrap();
    assert_eq!(report.sessions, 3);
    assert_eq!(report.events, 16);
    let by = problems_by_session(&report);
    assert_eq!(by.len(), 3, "{:?}", report.problems);

    let p = &by[&altered.to_string()];
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, Some(2));
    assert!(p[0].1.contains("altered"), "{}", p[0].1);

    let p = &by[&gap.to_string()];
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, Some(3));
    assert!(p[0].1.contains("missing"), "{}", p[0].1);

    let p = &by[&truncated.to_string()];
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].0, Some(6));
    assert!(p[0].1.contains("session_heads"), "{}", p[0].1);
    store.close().await;
}

#[tokio::test]
async fn rehashing_an_altered_event_breaks_the_next_link() {
    let dir = tempfile::tempdir().unwrap();
    let [id, _, _] = three_sessions(dir.path()).await;
    let mut raw = raw(dir.path()).await;
    // A careful forger recomputes the altered event's own hash...
    let (seq, at_us, kind, body, prev): (i64, i64, String, String, String) = sqlx::query_as(
        "SELECT seq, at_us, kind, body, prev_hash FROM events WHERE session_id = ? AND seq = 2",
    )
    .bind(id.to_string())
    .fetch_one(&mut raw)
    .await
    .unwrap();
    let forged = body.replace("SELECT 1", "SELECT 0");
    let sid = id.to_string();
    let hash = airlock_control::store::event_hash(&airlock_control::store::ChainInput {
        prev_hash: &prev,
        session_id: &sid,
        seq,
        at_us,
        kind: &kind,
        body: &forged,
    });
    sqlx::query("UPDATE events SET body = ?, hash = ? WHERE session_id = ? AND seq = 2")
        .bind(&forged)
        .bind(&hash)
        .bind(&sid)
        .execute(&mut raw)
        .await
        .unwrap();

    // ...but the next event still points at the original.
    let store = open(dir.path()).await;
    let report = store.verify().await.unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    assert_eq!(report.problems[0].session_id, sid);
    assert_eq!(report.problems[0].seq, Some(3));
    assert!(report.problems[0].problem.contains("broken link"));
    store.close().await;
}

#[tokio::test]
async fn verify_reports_sessions_whose_events_are_all_gone() {
    let dir = tempfile::tempdir().unwrap();
    let [id, other, _] = three_sessions(dir.path()).await;
    let mut raw = raw(dir.path()).await;
    exec(&mut raw, "DELETE FROM events WHERE session_id = ?", id).await;
    exec(
        &mut raw,
        "DELETE FROM session_heads WHERE session_id = ?",
        other,
    )
    .await;

    let store = open(dir.path()).await;
    let report = store.verify().await.unwrap();
    assert_eq!(report.sessions, 3);
    let by = problems_by_session(&report);
    assert_eq!(
        by[&id.to_string()],
        [(Some(1), "events 1 to 6 are missing".to_owned())]
    );
    let p = &by[&other.to_string()];
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].0, None);
    assert!(p[0].1.contains("session_heads"));
    store.close().await;
}

#[tokio::test]
async fn a_second_process_cannot_open_the_same_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path()).await;
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let err = Store::open(&url, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::InUse(_)), "{err}");
    assert!(err.to_string().contains("another Airlock process"), "{err}");
    store.close().await;
    // Closed: free to open again.
    open(dir.path()).await.close().await;
}

/// A broken SQLite index does not lose events (the journal has them), but
/// reads say so, and once too much waits to be indexed appends are refused:
/// the gateway fails closed instead of filling the disk.
#[tokio::test]
async fn a_broken_index_is_reported_and_refuses_appends_once_too_far_behind() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let opts = StoreOptions {
        sync: SyncMode::Normal,
        max_unindexed_bytes: 4096,
        ..StoreOptions::default()
    };
    let store = Store::open(&url, opts).await.unwrap();
    let id = Uuid::new_v4();
    store
        .append(ev(id, 1, start("alice", "prod-pg")))
        .await
        .unwrap();
    store.flush().await.unwrap();

    let mut raw = raw(dir.path()).await;
    sqlx::query("DROP TABLE events")
        .execute(&mut raw)
        .await
        .unwrap();

    // Journaled, so accepted; the index cannot take it.
    store
        .append(ev(id, 2, command(1, "SELECT 1", Verdict::Allow)))
        .await
        .unwrap();
    let err = store.flush().await.expect_err("the index is broken");
    assert!(matches!(err, StoreError::IndexBehind(_)), "{err}");
    assert!(store.stats().failed_batches >= 1);
    let err = store
        .verify()
        .await
        .expect_err("reads say the index is behind");
    assert!(err.to_string().contains("behind"), "{err}");

    // Past 4 kB of unindexed journal every append is refused.
    let mut refused = None;
    for t in 3..100 {
        let big = command(t as u64, &"x".repeat(500), Verdict::Allow);
        if let Err(e) = store.append(ev(id, t, big)).await {
            refused = Some(e);
            break;
        }
    }
    let err = refused.expect("appends must be refused once the index is too far behind");
    assert!(err.to_string().contains("behind"), "{err}");
    assert!(store.is_writable(), "the journal itself is fine");
    store.close().await;
}

/// Events journaled but never indexed (the process died first) are indexed
/// when the store opens again; a torn last line is dropped.
#[test]
fn events_left_in_the_journal_are_indexed_at_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let opts = StoreOptions {
        sync: SyncMode::Full,
        ..StoreOptions::default()
    };
    let id = Uuid::new_v4();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (store, journal_dir, mut blocker) = rt.block_on(async {
        let store = Store::open(&url, opts).await.unwrap();
        // Another connection holds SQLite's write lock, so the indexer
        // cannot commit anything: the events live only in the journal.
        let mut blocker = raw(dir.path()).await;
        sqlx::query("BEGIN IMMEDIATE")
            .execute(&mut blocker)
            .await
            .unwrap();
        session(&store, id, "alice", 1_000, 3).await;
        let journal_dir = store.journal_dir().to_owned();
        (store, journal_dir, blocker)
    });
    // The process "dies": its tasks vanish without closing anything.
    rt.shutdown_background();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        // Its file handles go with it (the store's lock among them).
        drop(store);
        sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
        let mut segments: Vec<_> = std::fs::read_dir(&journal_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "log"))
            .collect();
        segments.sort();
        // One segment, or an empty plain one and the preallocated one the
        // journal switched to (with sync = "full", once its spare was ready).
        assert!(matches!(segments.len(), 1 | 2), "{segments:?}");
        let seg = segments.last().unwrap().clone();
        // A write cut short by the crash, where the data ends: at the end
        // of a growing segment, or over the zeros of a preallocated one.
        let data = std::fs::read(&seg).unwrap();
        let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        assert!(
            end > 0 && data[end - 1] == b'\n',
            "whole lines before the tear"
        );
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"{\"sid\":\"torn", end as u64).unwrap();

        let store = Store::open(&url, opts).await.unwrap();
        let detail = store.get_session(&id.to_string()).await.unwrap().unwrap();
        assert_eq!(detail.commands.len(), 3);
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events, 8);
        assert!(
            segments.iter().all(|s| !s.exists()),
            "replayed segments are deleted"
        );
        // The chain goes on from the replayed head.
        store
            .append(ev(
                id,
                9_999,
                EventBody::ApprovalDecided {
                    request_id: Uuid::new_v4(),
                    status: "expired".into(),
                    reviewer: None,
                    decision: None,
                    comment: None,
                },
            ))
            .await
            .unwrap();
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
        assert_eq!(report.events, 9);
        store.close().await;
    });
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    open(dir.path()).await.close().await;
    let mut raw = raw(dir.path()).await;
    sqlx::query("UPDATE schema_version SET version = 99")
        .execute(&mut raw)
        .await
        .unwrap();
    let url = format!("sqlite://{}", dir.path().join("audit.db").display());
    let err = Store::open(&url, StoreOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::SchemaTooNew { found: 99, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["postgres://x", "sqlite://", "sqlite://:memory:"] {
        let err = Store::open(url, StoreOptions::default()).await.unwrap_err();
        assert!(matches!(err, StoreError::InvalidUrl { .. }), "{url}: {err}");
    }
}

/// A new database gets 16 KiB pages (the index's rows cost less CPU with
/// them); an existing one keeps the page size it was made with.
#[tokio::test]
async fn a_new_store_uses_16_kib_pages_and_an_old_one_keeps_its_own() {
    let page_size = |dir: std::path::PathBuf| async move {
        let (n,): (i64,) = sqlx::query_as("PRAGMA page_size")
            .fetch_one(&mut raw(&dir).await)
            .await
            .unwrap();
        n
    };
    let new = tempfile::tempdir().unwrap();
    open(new.path()).await.close().await;
    assert_eq!(page_size(new.path().to_owned()).await, 16384);

    let old = tempfile::tempdir().unwrap();
    {
        let url = format!("sqlite://{}", old.path().join("audit.db").display());
        let mut conn = sqlx::ConnectOptions::connect(
            &url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                .unwrap()
                .create_if_missing(true),
        )
        .await
        .unwrap();
        sqlx::query("CREATE TABLE made_by_an_older_airlock (x)")
            .execute(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(page_size(old.path().to_owned()).await, 4096);
    let store = open(old.path()).await;
    store.close().await;
    assert_eq!(page_size(old.path().to_owned()).await, 4096);
}

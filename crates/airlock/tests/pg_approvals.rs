//! Human-in-the-loop approvals end to end: a psycopg session's statement is
//! held (the NoticeResponse arrives at once), reviewers decide through the
//! real CLI and REST API, and exactly the held statement runs once, or the
//! client gets 42501 and its session goes on. A client's CancelRequest (or
//! disconnect) withdraws the request.

mod support;

use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;

use futures::StreamExt;
use support::*;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, NoTls};

/// Runs one statement per argument in a psycopg session, printing each
/// notice as it arrives (`NOTICE ...`), then `OK <status>` or
/// `ERR <sqlstate> <message>` per statement, and finally `ALIVE 1`.
const CLIENT: &str = r#"
import sys, threading, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=(sys.argv[2] == "autocommit"))
conn.add_notice_handler(lambda d: print("NOTICE", d.message_primary, flush=True))
if len(sys.argv) > 3 and sys.argv[3] == "cancel-on-notice":
    conn.add_notice_handler(lambda d: threading.Thread(target=conn.cancel).start())
    statements = sys.argv[4:]
else:
    statements = sys.argv[3:]
cur = conn.cursor()
for sql in statements:
    try:
        cur.execute(sql)
        print("OK", cur.statusmessage, flush=True)
    except psycopg.Error as e:
        print("ERR", e.sqlstate, str(e).splitlines()[0], flush=True)
        if not conn.autocommit:
            conn.rollback()
if not conn.autocommit:
    conn.commit()
cur.execute("SELECT 1")
print("ALIVE", cur.fetchone()[0], flush=True)
"#;

struct Client {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Client {
    fn start(
        gw: &Gateway,
        identity: &str,
        connection: &str,
        mode: &str,
        statements: &[&str],
    ) -> Client {
        let mut child = Command::new(require_psycopg())
            .arg("-c")
            .arg(CLIENT)
            .arg(gw.conninfo(identity, connection))
            .arg(mode)
            .args(statements)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start python");
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Client { child, lines }
    }

    fn next_line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(l)) => l,
            other => panic!("client ended early: {other:?}"),
        }
    }

    /// Waits for the hold notice and returns the approval request id.
    fn held_id(&mut self) -> String {
        held_id_in(&self.next_line())
    }

    fn rest(mut self) -> String {
        let mut out = Vec::new();
        for l in self.lines.by_ref() {
            out.push(l.unwrap());
        }
        let _ = self.child.wait();
        out.join("\n")
    }
}

/// The approval request id in a hold notice.
fn held_id_in(notice: &str) -> String {
    let marker = "statement held for approval ";
    let at = notice
        .find(marker)
        .unwrap_or_else(|| panic!("expected a hold notice, got {notice:?}"));
    notice[at + marker.len()..]
        .split(':')
        .next()
        .unwrap()
        .trim()
        .to_string()
}

fn cli(gw: &Gateway, identity: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(args)
        .env("AIRLOCK_URL", gw.api_url())
        .env("AIRLOCK_TOKEN", gw.token(identity))
        .output()
        .expect("run airlock CLI")
}

/// `identity` approves request `id` through the CLI; fails the test if the
/// CLI refuses.
fn approve(gw: &Gateway, identity: &str, id: &str) {
    let out = cli(gw, identity, &["approvals", "approve", id]);
    assert!(
        out.status.success(),
        "{identity} could not approve {id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn status_of(gw: &Gateway, id: &str) -> String {
    let out = cli(gw, "alice", &["approvals", "show", id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["status"]
        .as_str()
        .or_else(|| v["request"]["status"].as_str())
        .unwrap_or_default()
        .to_string()
}

fn setup_with(extra: &str) -> (PgCluster, Gateway) {
    setup_config(|c| c.extra_toml(extra))
}

fn setup_config(tune: impl FnOnce(GatewayConfig) -> GatewayConfig) -> (PgCluster, Gateway) {
    let pg = PgCluster::start();
    for db in ["shop", "lab"] {
        pg.create_database(db, SCRAM_USER);
        pg.psql_admin_db(
            db,
            &format!("SET ROLE {SCRAM_USER}; CREATE TABLE payments (id int PRIMARY KEY, amount int); INSERT INTO payments VALUES (1, 10), (2, 20);"),
        );
    }
    let gw = Gateway::start(tune(
        GatewayConfig::new(&pg)
            .identity("bob", "human", &["dba"])
            .identity("carol", "human", &["devs"])
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"])),
    ));
    (pg, gw)
}

fn setup() -> (PgCluster, Gateway) {
    setup_with("")
}

#[test]
fn approved_statement_runs_once_and_a_replay_needs_a_new_approval() {
    let (pg, gw) = setup();
    let insert = "INSERT INTO payments VALUES (3, 30)";
    let mut c = Client::start(&gw, "agent", "shop", "autocommit", &[insert]);
    let id = c.held_id();
    assert_eq!(status_of(&gw, &id), "pending");
    let out = cli(
        &gw,
        "alice",
        &["approvals", "approve", &id, "--comment", "looks fine"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = c.rest();
    assert!(rest.contains("OK INSERT 0 1"), "{rest}");
    assert!(rest.contains("ALIVE 1"), "{rest}");
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments WHERE id = 3")
            .trim(),
        "1"
    );
    assert_eq!(status_of(&gw, &id), "executed");
    // A second approve of a released request changes nothing.
    assert!(
        !cli(&gw, "bob", &["approvals", "approve", &id])
            .status
            .success()
    );

    // The same statement again is a new command: it needs a new approval.
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["INSERT INTO payments VALUES (4, 40)"],
    );
    let second = c.held_id();
    assert_ne!(second, id);
    assert!(
        cli(
            &gw,
            "alice",
            &["approvals", "reject", &second, "--comment", "enough"]
        )
        .status
        .success()
    );
    let rest = c.rest();
    assert!(rest.contains("ERR 42501"), "{rest}");
}

#[test]
fn rejection_returns_42501_with_reviewer_and_reason_and_the_session_goes_on() {
    let (pg, gw) = setup();
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["DELETE FROM payments WHERE id = 1"],
    );
    let id = c.held_id();
    let out = cli(
        &gw,
        "bob",
        &[
            "approvals",
            "reject",
            &id,
            "--comment",
            "not during the freeze",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rest = c.rest();
    assert!(rest.contains("ERR 42501"), "{rest}");
    assert!(
        rest.contains("rejected by bob") && rest.contains("not during the freeze"),
        "{rest}"
    );
    assert!(rest.contains("ALIVE 1"), "{rest}");
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments")
            .trim(),
        "2"
    );
}

#[test]
fn expiry_refuses_the_held_statement() {
    let (pg, gw) = setup_with("[approvals]\npending_ttl = \"1s\"");
    // Unbounded DELETE on lab: reviewed by a policy without @approval_ttl.
    let mut c = Client::start(&gw, "alice", "lab", "autocommit", &["DELETE FROM payments"]);
    let id = c.held_id();
    let rest = c.rest();
    assert!(
        rest.contains("ERR 42501") && rest.contains("expired"),
        "{rest}"
    );
    assert!(rest.contains("ALIVE 1"), "{rest}");
    assert_eq!(status_of(&gw, &id), "expired");
    assert_eq!(
        pg.psql_admin_db("lab", "SELECT count(*) FROM payments")
            .trim(),
        "2"
    );
}

#[test]
fn requesters_non_humans_and_non_reviewers_cannot_approve() {
    let (_pg, gw) = setup();
    // alice (a dba) asks to drop a production table: held for a dba.
    let mut c = Client::start(&gw, "alice", "shop", "autocommit", &["DROP TABLE payments"]);
    let id = c.held_id();
    for (who, why) in [
        ("alice", "own request"),
        ("carol", "not a dba"),
        ("agent", "not a human"),
    ] {
        let out = cli(&gw, who, &["approvals", "approve", &id]);
        assert!(!out.status.success(), "{who} ({why}) must not approve");
    }
    assert_eq!(status_of(&gw, &id), "pending");
    assert!(
        cli(&gw, "bob", &["approvals", "reject", &id, "--comment", "no"])
            .status
            .success()
    );
    assert!(c.rest().contains("ERR 42501"));
}

#[test]
fn two_approvals_required_one_given_is_still_held() {
    let policy = r#"
@id("connect") permit (principal, action == Airlock::Action::"connect", resource);
@id("read") permit (principal, action == Airlock::Action::"sql:read", resource);
@id("two-person-write")
@reason("writes need two DBAs")
@reviewers("dba")
@min_approvals("2")
permit (principal, action == Airlock::Action::"sql:write", resource) when { context.approved };
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.cedar");
    std::fs::write(&path, policy).unwrap();
    let (pg, gw) = setup_with(&format!(
        "[policy]\nfile = {}",
        toml_string(path.to_string_lossy())
    ));
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["UPDATE payments SET amount = 0 WHERE id = 1"],
    );
    let id = c.held_id();
    approve(&gw, "alice", &id);
    assert_eq!(status_of(&gw, &id), "pending", "one of two approvals");
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "the client is still waiting"
    );
    approve(&gw, "bob", &id);
    let rest = c.rest();
    assert!(rest.contains("OK UPDATE 1"), "{rest}");
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT amount FROM payments WHERE id = 1")
            .trim(),
        "0"
    );
}

#[test]
fn disconnect_withdraws_the_request() {
    let (_pg, gw) = setup();
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["DELETE FROM payments WHERE id = 2"],
    );
    let id = c.held_id();
    c.child.kill().unwrap();
    let _ = c.child.wait();
    // The gateway notices the closed socket on its own; wait for its verdict.
    wait_until("the request is no longer pending", || {
        status_of(&gw, &id) != "pending"
    });
    assert_eq!(status_of(&gw, &id), "withdrawn");
}

#[test]
fn a_held_statement_inside_a_transaction_commits_with_it() {
    let (pg, gw) = setup();
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "transaction",
        &[
            "SELECT count(*) FROM payments",
            "INSERT INTO payments VALUES (9, 90)",
        ],
    );
    assert_eq!(c.next_line(), "OK SELECT 1");
    let id = c.held_id();
    approve(&gw, "alice", &id);
    let rest = c.rest();
    assert!(rest.contains("OK INSERT 0 1"), "{rest}");
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments WHERE id = 9")
            .trim(),
        "1"
    );
}

/// On one session thread, so waiting sessions must not hold the thread
/// that serves the others.
#[test]
fn fifty_sessions_wait_at_once_while_others_keep_working() {
    let (pg, gw) = setup_config(|c| c.server_setting("session_threads", "1"));
    let threads = gw.thread_names();
    assert_eq!(
        threads
            .iter()
            .filter(|n| n.starts_with("airlock-session"))
            .count(),
        1,
        "{threads:?}"
    );
    let script = r#"
import sys, threading, psycopg
ci = sys.argv[1]
# print() from many threads can interleave two lines into one; one lock,
# one write per line.
out = threading.Lock()
def say(*parts):
    with out:
        sys.stdout.write(" ".join(str(p) for p in parts) + "\n")
        sys.stdout.flush()
def run(i):
    with psycopg.connect(ci, autocommit=True) as conn:
        conn.add_notice_handler(lambda d: say("NOTICE", i, d.message_primary))
        try:
            conn.execute("INSERT INTO payments VALUES (%s, 1)" % (100 + i))
            say("OK", i)
        except psycopg.Error as e:
            say("ERR", i, e.sqlstate)
threads = [threading.Thread(target=run, args=(i,)) for i in range(50)]
for t in threads: t.start()
for t in threads: t.join()
print("DONE", flush=True)
"#;
    let mut child = Command::new(require_psycopg())
        .arg("-c")
        .arg(script)
        .arg(gw.conninfo("agent", "shop"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut ids = Vec::new();
    while ids.len() < 50 {
        let line = lines.next().expect("notice").unwrap();
        let marker = "statement held for approval ";
        for (at, _) in line.match_indices(marker) {
            ids.push(
                line[at + marker.len()..]
                    .split(':')
                    .next()
                    .unwrap()
                    .trim()
                    .to_string(),
            );
        }
    }
    // 50 held statements; another session is served meanwhile.
    let out = psql(
        &gw.conninfo("alice", "shop"),
        "SELECT count(*) FROM payments",
        &[],
    );
    assert_eq!(out.expect_success().trim(), "2");
    let pending = cli(
        &gw,
        "alice",
        &[
            "approvals",
            "list",
            "--status",
            "pending",
            "--json",
            "--limit",
            "100",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&pending.stdout).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(50), "{v}");
    for id in &ids {
        approve(&gw, "alice", id);
    }
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let _ = child.wait();
    assert_eq!(
        rest.iter().filter(|l| l.starts_with("OK ")).count(),
        50,
        "{rest:?}"
    );
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments")
            .trim(),
        "52"
    );
}

#[test]
fn a_just_in_time_grant_lets_reviewed_statements_through_until_revoked() {
    let (pg, gw) = setup();
    let out = cli(
        &gw,
        "agent",
        &[
            "access",
            "request",
            "shop",
            "--for",
            "1h",
            "--reason",
            "incident 42",
            "--json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"]
        .as_str()
        .or_else(|| v["request"]["id"].as_str())
        .expect("request id")
        .to_string();
    assert!(
        cli(
            &gw,
            "alice",
            &["approvals", "approve", &id, "--comment", "go"]
        )
        .status
        .success()
    );

    // With the grant: no review for the agent's production write.
    let c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["INSERT INTO payments VALUES (5, 50)"],
    );
    let rest = c.rest();
    assert!(rest.starts_with("OK INSERT 0 1"), "{rest}");
    // Hard limits stay: no DROP for agents even with a grant.
    let out = psql(&gw.conninfo("agent", "shop"), "DROP TABLE payments", &[]);
    assert!(out.stderr.contains("may not DROP"), "{out:?}");

    assert!(
        cli(&gw, "alice", &["access", "revoke", &id])
            .status
            .success()
    );
    let mut c = Client::start(
        &gw,
        "agent",
        "shop",
        "autocommit",
        &["INSERT INTO payments VALUES (6, 60)"],
    );
    let held = c.held_id();
    assert!(
        cli(
            &gw,
            "alice",
            &["approvals", "reject", &held, "--comment", "grant is over"]
        )
        .status
        .success()
    );
    assert!(c.rest().contains("ERR 42501"));
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments WHERE id IN (5, 6)")
            .trim(),
        "1"
    );
}

/// A tokio-postgres session through the gateway whose notices arrive on a
/// channel as they come (the hold notice arrives while the statement waits).
async fn connect_with_notices(
    conninfo: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let (client, mut connection) = tokio_postgres::connect(conninfo, NoTls)
        .await
        .expect("connect through airlock");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notice(n) = message {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    (client, rx)
}

/// Sends an agent's simple-protocol DELETE on production in the background;
/// returns the pending query and the id of the approval request it waits
/// on, read from the hold notice.
fn send_held_delete(
    rt: &tokio::runtime::Runtime,
    client: &Arc<tokio_postgres::Client>,
    notices: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
) -> (
    tokio::task::JoinHandle<Result<Vec<tokio_postgres::SimpleQueryMessage>, tokio_postgres::Error>>,
    String,
) {
    let delete = rt.spawn({
        let client = client.clone();
        async move {
            client
                .simple_query("DELETE FROM payments WHERE id = 1")
                .await
        }
    });
    let id = held_id_in(&rt.block_on(notices.recv()).expect("the hold notice"));
    (delete, id)
}

/// Asserts that `err` is the gateway's answer to a cancelled held statement.
fn assert_withdrawn_by_cancel(err: &tokio_postgres::Error, id: &str) {
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:?}"));
    assert_eq!(db.code(), &SqlState::QUERY_CANCELED, "{db:?}");
    assert_eq!(
        db.message(),
        format!("canceling statement due to user request (approval request {id} withdrawn)")
    );
}

#[test]
fn a_cancel_request_withdraws_the_held_statement_and_the_session_goes_on() {
    let (pg, gw) = setup();
    let rt = rt();
    let (client, mut notices) = rt.block_on(connect_with_notices(&gw.conninfo("agent", "shop")));
    let client = Arc::new(client);

    // Simple protocol: an agent's DELETE on production is held for a DBA.
    let (delete, id) = send_held_delete(&rt, &client, &mut notices);
    assert_eq!(status_of(&gw, &id), "pending");

    // The client cancels, as psql does on Ctrl-C.
    rt.block_on(client.cancel_token().cancel_query(NoTls))
        .expect("send the CancelRequest");
    let err = rt
        .block_on(delete)
        .unwrap()
        .expect_err("a cancelled held statement must fail");
    assert_withdrawn_by_cancel(&err, &id);

    // The session withdrew the request before answering, so this is final.
    assert_eq!(status_of(&gw, &id), "withdrawn");
    let out = cli(&gw, "alice", &["approvals", "approve", &id]);
    assert!(
        !out.status.success(),
        "a withdrawn request cannot be approved"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("withdrawn"), "{stderr}");
    assert_eq!(status_of(&gw, &id), "withdrawn");
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments WHERE id = 1")
            .trim(),
        "1",
        "the held DELETE never ran"
    );

    // The session goes on: an allowed statement runs.
    let rows = rt
        .block_on(client.query_one("SELECT count(*)::int FROM payments", &[]))
        .expect("the session still works after the cancel");
    assert_eq!(rows.get::<_, i32>(0), 2);

    // Extended protocol (Parse/Bind/Execute), in the same session: held at
    // Execute, cancelled the same way.
    let delete = rt.spawn({
        let client = client.clone();
        async move {
            client
                .execute("DELETE FROM payments WHERE id = $1", &[&2i32])
                .await
        }
    });
    let second = held_id_in(&rt.block_on(notices.recv()).expect("the second hold notice"));
    assert_ne!(second, id);
    rt.block_on(client.cancel_token().cancel_query(NoTls))
        .expect("send the second CancelRequest");
    let err = rt
        .block_on(delete)
        .unwrap()
        .expect_err("the second cancelled statement must fail");
    assert_withdrawn_by_cancel(&err, &second);
    assert_eq!(status_of(&gw, &second), "withdrawn");
    assert!(
        !cli(&gw, "bob", &["approvals", "approve", &second])
            .status
            .success()
    );
    let rows = rt
        .block_on(client.query_one("SELECT count(*)::int FROM payments", &[]))
        .expect("the session still works after the second cancel");
    assert_eq!(rows.get::<_, i32>(0), 2);
    assert_eq!(
        pg.psql_admin_db(
            "shop",
            "SELECT string_agg(id::text, ',' ORDER BY id) FROM payments"
        )
        .trim(),
        "1,2"
    );
}

/// Stopping the gateway while a statement is held: the client gets 57P01,
/// the statement never runs, and the session withdraws the request as it
/// ends (the next start finds nothing left to clean up).
#[test]
fn stopping_the_gateway_withdraws_a_held_statement() {
    let (pg, mut gw) = setup();
    let rt = rt();
    let (client, mut notices) = rt.block_on(connect_with_notices(&gw.conninfo("agent", "shop")));
    let client = Arc::new(client);
    let (delete, id) = send_held_delete(&rt, &client, &mut notices);

    gw.terminate_cleanly();
    let err = rt
        .block_on(delete)
        .unwrap()
        .expect_err("a held statement does not outlive the gateway");
    assert_eq!(err.code(), Some(&SqlState::ADMIN_SHUTDOWN), "{err:?}");

    gw.restart();
    assert_eq!(status_of(&gw, &id), "withdrawn");
    let log = gw.stderr_contents();
    assert!(
        !log.contains("withdrew a held command left by a previous run"),
        "withdrawn at shutdown, not by the next start: {log}"
    );
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments")
            .trim(),
        "2"
    );
}

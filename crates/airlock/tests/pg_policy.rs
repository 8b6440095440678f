//! Policy enforcement end to end with the default pack: statements ×
//! identities × verdicts through real psql and psycopg sessions, including
//! multi-statement strings, comment/case/quoting tricks, unparseable input,
//! the transaction rule and the extended protocol.
//!
//! Approvals are switched off here (`[approvals] enabled = false`), so a
//! review verdict refuses with "statement needs approval" instead of holding.

mod support;

use support::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum V {
    Allow,
    Review,
    Deny,
}

fn setup() -> (PgCluster, Gateway) {
    let pg = PgCluster::start();
    pg.create_database("shop", SCRAM_USER);
    pg.create_database("lab", SCRAM_USER);
    let schema = format!(
        "SET ROLE {SCRAM_USER};
         CREATE TABLE customers (id int PRIMARY KEY, name text, phone text);
         CREATE TABLE payments (id int PRIMARY KEY, customer_id int, amount int);
         INSERT INTO customers VALUES (1, 'Ann', '555'), (2, 'Bob', '556');
         INSERT INTO payments VALUES (1, 1, 10), (2, 2, 20);"
    );
    pg.psql_admin_db("shop", &schema);
    pg.psql_admin_db("lab", &schema);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .identity("svc", "service", &["deployers"])
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"]))
            .extra_toml("[approvals]\nenabled = false"),
    );
    (pg, gw)
}

fn verdict_of(out: &Output) -> V {
    if out.success() {
        V::Allow
    } else if out.stderr.contains("statement needs approval") {
        V::Review
    } else {
        V::Deny
    }
}

#[test]
fn default_pack_verdicts_through_psql() {
    let (pg, gw) = setup();
    use V::*;
    #[rustfmt::skip]
    let table: &[(&str, &str, &str, V)] = &[
        ("agent", "shop", "SELECT * FROM customers", Allow),
        ("agent", "shop", "select name from \"customers\" where id = 1", Allow),
        ("agent", "shop", "COPY customers TO STDOUT", Allow),
        ("agent", "shop", "BEGIN; SELECT 1; COMMIT", Allow),
        ("agent", "shop", "INSERT INTO customers VALUES (9, 'x', 'y')", Review),
        ("agent", "shop", "UPDATE customers SET phone = NULL WHERE id = 1", Review),
        ("agent", "shop", "DELETE FROM payments", Review),
        ("agent", "shop", "DROP TABLE payments", Deny),
        ("agent", "shop", "TRUNCATE payments", Deny),
        ("agent", "shop", "/* just a comment */ DROP TABLE payments", Deny),
        ("agent", "shop", "dRoP tAbLe PaYmEnTs", Deny),
        ("agent", "shop", "SELECT 1; DROP TABLE payments", Deny),
        ("agent", "shop", "SELECT 1; -- trailing\nDROP TABLE payments", Deny),
        ("agent", "shop", "SELECT pg_terminate_backend(pg_backend_pid())", Deny),
        ("agent", "shop", "GRANT ALL ON customers TO PUBLIC", Deny),
        ("agent", "shop", "DO $$ BEGIN PERFORM 1; END $$", Deny),
        ("agent", "shop", "COPY customers FROM '/etc/passwd'", Deny),
        ("agent", "shop", "SELEC * FORM customers", Review),
        ("agent", "lab", "INSERT INTO customers VALUES (9, 'x', 'y')", Allow),
        ("agent", "lab", "DELETE FROM payments WHERE id = 2", Allow),
        ("agent", "lab", "DELETE FROM payments", Review),
        ("alice", "shop", "UPDATE customers SET phone = NULL WHERE id = 1", Allow),
        ("alice", "shop", "UPDATE customers SET phone = NULL", Review),
        ("alice", "shop", "DROP TABLE payments", Review),
        ("alice", "shop", "CREATE TABLE audit_me (id int)", Review),
        ("alice", "shop", "ALTER SYSTEM SET work_mem = '8MB'", Review),
        ("alice", "lab", "CREATE TABLE scratch (id int)", Allow),
        ("svc", "shop", "CREATE INDEX ON customers (phone)", Allow),
    ];
    let mut failures = Vec::new();
    for (identity, connection, sql, expected) in table {
        let out = psql(&gw.conninfo(identity, connection), sql, &[]);
        let got = verdict_of(&out);
        if got != *expected {
            failures.push(format!(
                "{identity}@{connection}: {sql:?}: expected {expected:?}, got {got:?} ({})",
                out.stderr.trim()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "verdict mismatches:\n{}",
        failures.join("\n")
    );
    // Nothing refused reached the database.
    let left = pg.psql_admin_db("shop", "SELECT count(*) FROM payments");
    assert_eq!(left.trim(), "2");
    // Deny messages carry the @reason and the determining policy ids.
    let out = psql(&gw.conninfo("agent", "shop"), "DROP TABLE payments", &[]);
    assert!(
        out.stderr
            .contains("AI agents may not DROP or TRUNCATE on production"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("agent-no-destroy-production"),
        "{out:?}"
    );
}

#[test]
fn refusals_are_42501_and_the_session_goes_on() {
    let (_pg, gw) = setup();
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    cur = conn.cursor()
    for sql, params in [("DROP TABLE payments", None), ("DELETE FROM payments WHERE id = %s", (1,))]:
        try:
            cur.execute(sql, params)
            print("allowed", sql)
        except psycopg.Error as e:
            print("refused", e.sqlstate, sql)
    cur.execute("SELECT count(*) FROM payments")
    print("count", cur.fetchone()[0])
"#;
    let out = python(script, &[&gw.conninfo("agent", "shop")]);
    let text = out.expect_success();
    assert!(text.contains("refused 42501 DROP TABLE payments"), "{text}");
    // Extended protocol with a bind parameter: judged at Execute.
    assert!(
        text.contains("refused 42501 DELETE FROM payments WHERE id = %s"),
        "{text}"
    );
    assert!(text.contains("count 2"), "{text}");
}

#[test]
fn a_refused_statement_fails_the_open_transaction() {
    let (pg, gw) = setup();
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1])
cur = conn.cursor()
cur.execute("INSERT INTO customers VALUES (50, 'in-tx', '1')")
try:
    cur.execute("DROP TABLE payments")
except psycopg.Error as e:
    print("refused", e.sqlstate)
print("status", conn.info.transaction_status.name)
try:
    cur.execute("SELECT 1")
except psycopg.Error as e:
    print("after", e.sqlstate)
conn.commit()
"#;
    let out = python(script, &[&gw.conninfo("alice", "shop")]);
    let text = out.expect_success();
    assert!(text.contains("refused 42501"), "{text}");
    assert!(
        text.contains("status INERROR"),
        "the transaction is failed: {text}"
    );
    assert!(
        text.contains("after 25P02"),
        "later statements are refused by PostgreSQL: {text}"
    );
    let n = pg.psql_admin_db("shop", "SELECT count(*) FROM customers WHERE id = 50");
    assert_eq!(
        n.trim(),
        "0",
        "COMMIT of a failed transaction must not commit the INSERT"
    );
}

#[test]
fn extended_protocol_pipeline_skips_to_sync_after_a_refusal() {
    let (pg, gw) = setup();
    let script = r#"
import sys, psycopg
conn = psycopg.connect(sys.argv[1], autocommit=True)
results = []
try:
    with conn.pipeline() as p:
        c1 = conn.execute("SELECT %s::int", (1,))
        c2 = conn.execute("DROP TABLE payments")
        c3 = conn.execute("INSERT INTO payments VALUES (%s, 1, 1)", (77,))
        p.sync()
except psycopg.Error as e:
    print("pipeline error", type(e).__name__, getattr(e, "sqlstate", None))
print("first", c1.fetchone()[0])
for c in (c2, c3):
    try:
        c.fetchone()
        print("ran")
    except psycopg.Error as e:
        print("not run", type(e).__name__, getattr(e, "sqlstate", None))
"#;
    let out = python(script, &[&gw.conninfo("agent", "shop")]);
    let text = out.expect_success();
    assert!(
        text.contains("first 1"),
        "the statement before the refusal ran: {text}"
    );
    assert!(text.contains("42501"), "{text}");
    let inserted = pg.psql_admin_db("shop", "SELECT count(*) FROM payments WHERE id = 77");
    assert_eq!(
        inserted.trim(),
        "0",
        "messages after the refused one are skipped until Sync"
    );
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM payments")
            .trim(),
        "2"
    );
}

#[test]
fn verdicts_and_classification_are_recorded() {
    let (_pg, gw) = setup();
    let _ = psql(&gw.conninfo("agent", "shop"), "DELETE FROM payments", &[]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["sessions", "list", "--identity", "agent", "--json"])
        .env("AIRLOCK_URL", gw.api_url())
        .env("AIRLOCK_TOKEN", gw.token("alice"))
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = list.as_array().unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["sessions", "show", &id, "--json"])
        .env("AIRLOCK_URL", gw.api_url())
        .env("AIRLOCK_TOKEN", gw.token("alice"))
        .output()
        .unwrap();
    let detail: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    // Compact form for substring checks.
    let text = detail.to_string();
    assert!(text.contains("\"verdict\":\"review\""), "{text}");
    assert!(
        text.contains("unbounded-writes"),
        "determining policy recorded: {text}"
    );
    assert!(
        text.contains("\"has_where\":false"),
        "classification recorded: {text}"
    );
    assert!(text.contains("\"policy_version\""), "{text}");
    assert!(
        text.contains("42501"),
        "the refusal is the recorded outcome: {text}"
    );
}

#[test]
fn policy_cli_check_and_explain() {
    let bin = env!("CARGO_BIN_EXE_airlock");
    let out = std::process::Command::new(bin)
        .args(["policy", "check"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.cedar");
    std::fs::write(&bad, "permit (principal, action == Airlock::Action::\"sql:read\", resource)\nwhen { context.no_such_field };\n").unwrap();
    let out = std::process::Command::new(bin)
        .args(["policy", "check"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.cedar:2:"),
        "errors carry line and column: {err}"
    );

    let out = std::process::Command::new(bin)
        .args([
            "policy",
            "explain",
            "--identity",
            "agent",
            "--kind",
            "agent",
            "--connection",
            "shop",
            "--tags",
            "production",
            "--json",
            "DELETE FROM payments",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["decision"]["verdict"], "review");
    assert_eq!(v["statements"][0]["statement"]["kind"], "delete");
    assert_eq!(v["statements"][0]["statement"]["has_where"], false);
}

/// Waits (bounded) until the gateway's log contains `needle`: the reload
/// happens in the gateway's own time, and its log line is the signal.
fn wait_for_log(gw: &Gateway, needle: &str) {
    wait_until(&format!("the gateway log says {needle:?}"), || {
        gw.stderr_contents().contains(needle)
    });
}

#[test]
fn policy_reloads_on_change_and_sighup_and_keeps_the_old_one_when_invalid() {
    let allow_reads = "@id(\"connect\") permit (principal, action == Airlock::Action::\"connect\", resource);\n@id(\"reads\") permit (principal, action == Airlock::Action::\"sql:read\", resource);\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("policy.cedar");
    std::fs::write(&path, allow_reads).unwrap();
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER))
            .extra_toml(&format!(
                "[policy]\nfile = {}\n[approvals]\nenabled = false",
                toml_string(path.to_string_lossy())
            )),
    );
    let ci = gw.conninfo("alice", "lab");
    assert!(psql(&ci, "SELECT 1", &[]).success());
    assert!(
        !psql(&ci, "CREATE TABLE t (id int)", &[]).success(),
        "no policy permits DDL yet"
    );

    // The file changes: picked up without a restart.
    std::fs::write(&path, format!("{allow_reads}@id(\"ddl\") permit (principal, action == Airlock::Action::\"sql:ddl\", resource);\n")).unwrap();
    wait_for_log(&gw, "policy reloaded");
    assert!(
        psql(&ci, "CREATE TABLE t (id int)", &[]).success(),
        "the new policy permits DDL"
    );

    // An invalid file is rejected with a clear log line; the old policy stays.
    std::fs::write(
        &path,
        "permit (principal, action == Airlock::Action::\"sql:nope\", resource);",
    )
    .unwrap();
    wait_for_log(&gw, "policy reload rejected");
    assert!(
        psql(&ci, "CREATE TABLE t2 (id int)", &[]).success(),
        "the previous policy is still in force"
    );

    // SIGHUP forces a reload too (here: back to reads only).
    std::fs::write(&path, allow_reads).unwrap();
    let before = gw.stderr_contents().matches("policy reloaded").count();
    let pid = gw.pid().expect("gateway pid").to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_until("the gateway logs another \"policy reloaded\"", || {
        gw.stderr_contents().matches("policy reloaded").count() > before
    });
    assert!(!psql(&ci, "CREATE TABLE t3 (id int)", &[]).success());
}

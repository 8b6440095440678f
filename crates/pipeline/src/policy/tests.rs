//! Policy tests: the default pack as a verdict table, the verdict rule, loading errors, reload.

use super::*;
use crate::classify::{ClassifyLimits, SqlClassifier, SqlDialect};
use crate::model::{IdentityKind, Protocol};

fn identity(who: &str) -> Identity {
    // "agent", "human", "service", optionally ":group1,group2".
    let (kind, groups) = who.split_once(':').unwrap_or((who, ""));
    Identity {
        name: format!("{kind}-1"),
        kind: match kind {
            "agent" => IdentityKind::Agent,
            "service" => IdentityKind::Service,
            _ => IdentityKind::Human,
        },
        groups: groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

fn connection(tags: &str) -> ConnectionInfo {
    ConnectionInfo {
        name: if tags.is_empty() { "dev-pg" } else { "prod-pg" }.into(),
        protocol: Protocol::Postgres,
        tags: tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_string)
            .collect(),
    }
}

fn classify(sql: &str) -> Arc<Classification> {
    SqlClassifier::new(SqlDialect::Postgres, ClassifyLimits::default()).classify(sql)
}

fn decide(set: &PolicySet, who: &str, tags: &str, grant: bool, sql: &str) -> Decision {
    let ctx = PolicyContext {
        params: vec![],
        grant,
    };
    set.decide_sql(&identity(who), &connection(tags), &classify(sql), &ctx)
}

const P: &str = "production";

/// The default pack, row by row: who, connection tags, JIT grant, SQL, verdict.
#[test]
fn default_pack_table() {
    use Verdict::{Allow, Deny, Review};
    let rows: &[(&str, &str, bool, &str, Verdict)] = &[
        // Reading, transactions and session settings: open to everyone.
        ("human", "", false, "SELECT 1", Allow),
        (
            "agent",
            P,
            false,
            "SELECT * FROM payments WHERE id = 1",
            Allow,
        ),
        ("agent", P, false, "BEGIN", Allow),
        ("agent", P, false, "SET search_path = app, public", Allow),
        ("agent", P, false, "SELECT pg_sleep(1)", Allow),
        ("agent", P, false, "", Allow),
        ("agent", P, false, "-- nothing here", Allow),
        // Writes: free off production and for people and services.
        ("service", P, false, "INSERT INTO t VALUES (1)", Allow),
        ("human", P, false, "UPDATE t SET a = 1 WHERE id = 1", Allow),
        ("agent", "", false, "UPDATE t SET a = 1 WHERE id = 1", Allow),
        ("human", "", false, "COPY t FROM STDIN", Allow),
        // Agents' writes on production: review, unless a JIT grant.
        ("agent", P, false, "UPDATE t SET a = 1 WHERE id = 1", Review),
        ("agent", P, false, "INSERT INTO t VALUES (1)", Review),
        ("agent", P, false, "SELECT nextval('order_seq')", Review),
        (
            "agent",
            P,
            false,
            "WITH d AS (DELETE FROM t WHERE id = 1 RETURNING *) SELECT * FROM d",
            Review,
        ),
        ("agent", P, true, "INSERT INTO t VALUES (1)", Allow),
        // Every row at once: review for everyone, everywhere.
        ("human", "", false, "DELETE FROM t", Review),
        ("service", "", false, "UPDATE t SET a = 1", Review),
        ("agent", "", false, "DELETE FROM t", Review),
        ("agent", P, false, "EXPLAIN ANALYZE DELETE FROM t", Review),
        ("human", "", true, "DELETE FROM t", Allow),
        // DROP / TRUNCATE on production: never for agents, reviewed for others.
        ("agent", P, false, "DROP TABLE t", Deny),
        ("agent", P, true, "DROP TABLE t", Deny),
        ("agent", P, false, "TRUNCATE t", Deny),
        (
            "agent",
            P,
            false,
            "/* cleanup */ dRoP sChEmA billing CASCADE",
            Deny,
        ),
        ("human", P, false, "DROP TABLE t", Review),
        ("human", P, false, "/* */ dRoP tAbLe \"Payments\"", Review),
        ("human", P, false, "TRUNCATE t", Review),
        ("service", P, false, "DROP TABLE t", Review),
        ("human", P, true, "DROP TABLE t", Allow),
        ("human", "", false, "DROP TABLE t", Allow),
        ("agent", "", false, "DROP TABLE t", Allow),
        // Schema changes on production: reviewed for people, free for services.
        ("human", P, false, "CREATE INDEX idx ON t (a)", Review),
        ("service", P, false, "ALTER TABLE t ADD COLUMN b int", Allow),
        ("human", P, true, "ALTER TABLE t ADD COLUMN b int", Allow),
        ("agent", P, false, "CREATE TABLE x (id int)", Review),
        // Admin: never for agents; reviewed for others, grant or not.
        ("agent", "", false, "GRANT SELECT ON t TO bob", Deny),
        ("human", "", false, "GRANT SELECT ON t TO bob", Review),
        ("human", P, true, "GRANT SELECT ON t TO bob", Review),
        ("agent", "", false, "SELECT pg_terminate_backend(42)", Deny),
        (
            "human",
            "",
            false,
            "SELECT pg_terminate_backend(42)",
            Review,
        ),
        ("agent", "", false, "DO $$ BEGIN PERFORM 1; END $$", Deny),
        ("agent", P, false, "COPY t TO '/tmp/t.csv'", Deny),
        ("service", "", false, "SET ROLE postgres", Review),
        // Unclassifiable: review, even with a grant.
        ("human", "", false, "SELEKT * FROM t", Review),
        ("agent", P, false, "FROBNICATE ALL THE THINGS", Review),
        ("human", P, true, "EXECUTE q1(1)", Review),
        // Several statements: the strictest wins.
        ("human", P, false, "SELECT 1; DROP TABLE x", Review),
        ("agent", P, false, "SELECT 1; DROP TABLE x; SELEKT", Deny),
        ("agent", "", false, "SELECT 1; SELECT 2", Allow),
    ];
    assert!(rows.len() >= 30);
    let set = PolicySet::default_pack();
    let mut failures = Vec::new();
    for (who, tags, grant, sql, expected) in rows {
        let d = decide(&set, who, tags, *grant, sql);
        if d.verdict != *expected {
            failures.push(format!(
                "{who} on [{tags}] grant={grant} {sql:?}: expected {expected:?}, got {:?} ({:?} by {:?})",
                d.verdict, d.action, d.policies
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn default_pack_loads_with_ids() {
    let set = PolicySet::from_source(DEFAULT_PACK_SOURCE, DEFAULT_PACK_ORIGIN)
        .unwrap_or_else(|e| panic!("{e}"));
    let ids = set.policy_ids();
    assert_eq!(ids.first().map(String::as_str), Some("connect"));
    assert!(ids.iter().all(|id| !id.starts_with("policy")), "{ids:?}");
    assert_eq!(set.version(), version_of(DEFAULT_PACK_SOURCE));
    assert_eq!(set.version().len(), 16);
}

#[test]
fn review_reports_the_policies_that_make_the_difference() {
    let set = PolicySet::default_pack();
    let d = decide(&set, "agent", P, false, "DELETE FROM t");
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.action, "sql:write");
    assert_eq!(d.policies, ["agent-production-writes", "unbounded-writes"]);
    assert_eq!(
        d.reason.as_deref(),
        Some("writes by AI agents on production need a DBA's approval")
    );
    assert_eq!(d.reviewers, ["dba"]);
    assert_eq!(d.min_approvals, 1);
    assert_eq!(d.approval_ttl_secs, Some(900));
    assert_eq!(d.policy_version, set.version());

    // Review offered by a permit that applies only with approval.
    let d = decide(&set, "human", "", false, "SELEKT");
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.policies, ["unknown-review"]);
    assert_eq!(d.action, "sql:unknown");
}

#[test]
fn allow_and_deny_report_their_policies() {
    let set = PolicySet::default_pack();
    let d = decide(&set, "agent", P, false, "SELECT 1");
    assert_eq!(
        (d.verdict, d.policies.as_slice()),
        (Verdict::Allow, &["read".to_string()][..])
    );

    let d = decide(&set, "agent", P, false, "DROP TABLE t");
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.policies, ["agent-no-destroy-production"]);
    assert_eq!(
        d.client_message("prod-pg"),
        "AI agents may not DROP or TRUNCATE on production (policies: agent-no-destroy-production)"
    );

    // Denied because nothing permits it: no policy, no reason.
    let d = set.decide_action(&identity("agent"), &connection(""), "ssh:shell", false);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.policies.is_empty() && d.reason.is_none());
    assert_eq!(
        d.client_message("box"),
        "denied by policy: no policy permits ssh:shell on box"
    );
}

#[test]
fn strictest_statement_decides() {
    let set = PolicySet::default_pack();
    let d = decide(
        &set,
        "agent",
        P,
        false,
        "SELECT 1; DELETE FROM t WHERE id = 1; DROP TABLE x; SELECT 2",
    );
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.statement, 2);
    assert_eq!(d.action, "sql:ddl");

    let d = decide(&set, "human", "", false, "SELECT 1; SELECT 2");
    assert_eq!((d.verdict, d.statement), (Verdict::Allow, 0));

    let empty = decide(&set, "agent", P, false, "");
    assert_eq!(empty.verdict, Verdict::Allow);
    assert_eq!(empty.action, "sql:other");
}

#[test]
fn reviews_of_several_statements_are_merged() {
    let src = r#"
        @id("all") permit (principal, action, resource);
        @id("a") @reviewers("dba") @min_approvals("1") @approval_ttl("1h")
        forbid (principal, action == Airlock::Action::"sql:write", resource)
        when { context.tables.contains("a") } unless { context.approved };
        @id("b") @reason("b is sensitive") @reviewers("sre, dba") @min_approvals("2") @approval_ttl("10m")
        forbid (principal, action == Airlock::Action::"sql:write", resource)
        when { context.tables.contains("b") } unless { context.approved };
    "#;
    let set = PolicySet::from_source(src, "merge.cedar").unwrap_or_else(|e| panic!("{e}"));
    let d = decide(
        &set,
        "human",
        "",
        false,
        "UPDATE a SET x = 1 WHERE id = 1; UPDATE b SET x = 1 WHERE id = 1",
    );
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.statement, 0);
    assert_eq!(d.policies, ["a", "b"]);
    assert_eq!(d.reason.as_deref(), Some("b is sensitive"));
    assert_eq!(d.reviewers, ["dba", "sre"]);
    assert_eq!(d.min_approvals, 2);
    assert_eq!(d.approval_ttl_secs, Some(600));
}

#[test]
fn review_names_permits_that_apply_only_with_approval() {
    let src = r#"
        @id("base") permit (principal, action == Airlock::Action::"sql:read", resource)
        when { context.kind == "select" };
        @id("approved-reads") @reviewers("auditors")
        permit (principal, action == Airlock::Action::"sql:read", resource) when { context.approved };
        @id("secret") @reviewers("dba")
        forbid (principal, action == Airlock::Action::"sql:read", resource)
        when { context.table_names.contains("secret") } unless { context.approved };
    "#;
    let set = PolicySet::from_source(src, "third.cedar").unwrap_or_else(|e| panic!("{e}"));
    let d = decide(&set, "human", "", false, "SELECT * FROM vault.secret");
    assert_eq!(d.verdict, Verdict::Review);
    assert_eq!(d.policies, ["secret", "approved-reads"]);
    assert_eq!(d.reviewers, ["dba", "auditors"]);
}

#[test]
fn connect_unmask_and_other_actions() {
    let set = PolicySet::default_pack();
    let prod = connection(P);
    assert_eq!(
        set.decide_connect(&identity("agent"), &prod).verdict,
        Verdict::Allow
    );
    assert!(set.decide_unmask(&identity("human:pii-readers"), &prod));
    assert!(!set.decide_unmask(&identity("human:dba"), &prod));
    assert!(!set.decide_unmask(&identity("agent:pii-readers"), &prod));

    let d = set.decide_action(&identity("agent"), &prod, "ssh:exec", false);
    assert_eq!(
        (d.verdict, d.reviewers.as_slice()),
        (Verdict::Review, &["sre".to_string()][..])
    );
    let d = set.decide_action(&identity("human"), &prod, "ssh:shell", false);
    assert_eq!(d.verdict, Verdict::Allow);
    let d = set.decide_action(&identity("human"), &prod, "no:such-action", false);
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(d.reason.is_some_and(|r| r.contains("failing closed")));
}

#[test]
fn evaluation_errors_fail_closed() {
    // Cedar skips a policy that errors, which here would drop the forbid and allow.
    let src = r#"
        permit (principal, action, resource);
        forbid (principal, action, resource) when { 9223372036854775807 + 1 > 0 };
    "#;
    let set = PolicySet::from_source(src, "overflow.cedar").unwrap_or_else(|e| panic!("{e}"));
    let d = decide(&set, "human", "", false, "SELECT 1");
    assert_eq!(d.verdict, Verdict::Deny);
    assert!(
        d.reason
            .as_deref()
            .is_some_and(|r| r.contains("failing closed")),
        "{d:?}"
    );
}

#[test]
fn default_ids_without_annotations() {
    let src = "permit (principal, action == Airlock::Action::\"sql:read\", resource);\n\
               forbid (principal, action == Airlock::Action::\"sql:read\", resource) when { context.tables.contains(\"secret\") };";
    let set = PolicySet::from_source(src, "plain.cedar").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.policy_ids(), ["policy0", "policy1"]);
    let d = decide(&set, "human", "", false, "SELECT * FROM secret");
    assert_eq!(
        (d.verdict, d.policies.as_slice()),
        (Verdict::Deny, &["policy1".to_string()][..])
    );
}

#[test]
fn params_are_in_context_only_when_used() {
    let src = r#"
        permit (principal, action, resource);
        @id("no-evil") forbid (principal, action == Airlock::Action::"sql:read", resource)
        when { context has params && context.params.contains("evil") };
    "#;
    let set = PolicySet::from_source(src, "params.cedar").unwrap_or_else(|e| panic!("{e}"));
    let cls = classify("SELECT * FROM t WHERE name = $1");
    let with = |p: &str| PolicyContext {
        params: vec![Some(p.to_string()), None],
        grant: false,
    };
    let (who, conn) = (identity("human"), connection(""));
    assert_eq!(
        set.decide_sql(&who, &conn, &cls, &with("good")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        set.decide_sql(&who, &conn, &cls, &with("evil")).verdict,
        Verdict::Deny
    );
    // Cached verdicts are keyed by the parameters too.
    assert_eq!(
        set.decide_sql(&who, &conn, &cls, &with("good")).verdict,
        Verdict::Allow
    );
    assert_eq!(
        set.decide_sql(&who, &conn, &cls, &with("evil")).verdict,
        Verdict::Deny
    );
}

#[test]
fn verdicts_are_cached_per_inputs() {
    let set = PolicySet::default_pack();
    let first = decide(&set, "agent", P, false, "DELETE FROM t");
    assert_eq!(set.verdicts.len(), 1);
    assert_eq!(decide(&set, "agent", P, false, "DELETE FROM t"), first);
    assert_eq!(set.verdicts.len(), 1);
    // A different grant, identity or connection is a different entry.
    assert_eq!(
        decide(&set, "agent", P, true, "DELETE FROM t").verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&set, "human", P, false, "DELETE FROM t").verdict,
        Verdict::Review
    );
    assert_eq!(
        decide(&set, "agent", "", false, "DELETE FROM t").verdict,
        Verdict::Review
    );
    assert_eq!(set.verdicts.len(), 4);
    // Same name, changed groups: not served from the old entry.
    let mut reader = identity("human");
    let conn = connection(P);
    let cls = classify("SELECT 1");
    let ctx = PolicyContext::default();
    assert_eq!(
        set.decide_sql(&reader, &conn, &cls, &ctx).verdict,
        Verdict::Allow
    );
    reader.groups.push("pii-readers".into());
    set.decide_sql(&reader, &conn, &cls, &ctx);
    assert_eq!(set.verdicts.len(), 6);
}

#[test]
fn literals_share_a_verdict_unless_policies_read_text() {
    let set = PolicySet::default_pack();
    for aid in 1..50 {
        let sql = format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
        assert_eq!(
            decide(&set, "agent", P, false, &sql).verdict,
            Verdict::Allow
        );
    }
    assert_eq!(set.verdicts.len(), 1);

    let src = r#"
        permit (principal, action, resource);
        @id("no-42") forbid (principal, action == Airlock::Action::"sql:read", resource)
        when { context.text like "*= 42*" };
    "#;
    let set = PolicySet::from_source(src, "text.cedar").unwrap_or_else(|e| panic!("{e}"));
    let sql = |aid: u32| format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid}");
    assert_eq!(
        decide(&set, "human", "", false, &sql(41)).verdict,
        Verdict::Allow
    );
    assert_eq!(
        decide(&set, "human", "", false, &sql(42)).verdict,
        Verdict::Deny
    );
    assert_eq!(
        decide(&set, "human", "", false, &sql(41)).verdict,
        Verdict::Allow
    );
    assert_eq!(set.verdicts.len(), 2);
}

#[track_caller]
fn load_error(src: &str) -> String {
    match PolicySet::from_source(src, "test.cedar") {
        Ok(_) => panic!("accepted:\n{src}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn load_errors_carry_positions() {
    let e =
        load_error("permit (principal, action, resource);\npermit (principal action, resource);");
    assert!(e.starts_with("test.cedar:2:"), "{e}");

    let e = load_error(
        "permit (principal, action, resource);\n\
         forbid (principal, action == Airlock::Action::\"sql:read\", resource)\n  when { context.bogus };",
    );
    assert!(e.starts_with("test.cedar:3:"), "{e}");
    assert!(e.contains("bogus"), "{e}");

    let e =
        load_error("permit (principal, action == Airlock::Action::\"sql:frobnicate\", resource);");
    assert!(e.starts_with("test.cedar:1:"), "{e}");

    // Strict validation: optional attributes need a `has` test.
    let e = load_error(
        "permit (principal, action == Airlock::Action::\"ssh:exec\", resource) when { context.program == \"ls\" };",
    );
    assert!(e.starts_with("test.cedar:1:"), "{e}");

    let e =
        load_error("@id(\"x\") @min_approvals(\"zero\")\npermit (principal, action, resource);");
    assert!(
        e.starts_with("test.cedar:1:") && e.contains("@min_approvals"),
        "{e}"
    );
    let e = load_error("\n@approval_ttl(\"soon\")\npermit (principal, action, resource);");
    assert!(
        e.starts_with("test.cedar:2:1:") && e.contains("@approval_ttl"),
        "{e}"
    );
    let e = load_error("@reviewers(\" , \")\npermit (principal, action, resource);");
    assert!(e.contains("@reviewers"), "{e}");

    let e = load_error(
        "@id(\"dup\") permit (principal, action, resource);\n@id(\"dup\") forbid (principal, action, resource);",
    );
    assert!(e.contains("duplicate policy id"), "{e}");

    let e = load_error("permit (principal == ?principal, action, resource);");
    assert!(e.contains("templates"), "{e}");

    // Several problems: one line each.
    let e = load_error(
        "permit (principal, action, resource) when { context.nope1 };\n\
         permit (principal, action == Airlock::Action::\"sql:read\", resource) when { context.nope2 };",
    );
    assert!(e.lines().count() >= 2, "{e}");
}

#[test]
fn schema_parses() {
    assert!(schema().is_ok());
}

#[test]
fn explanation_for_people_and_scripts() {
    let set = PolicySet::default_pack();
    let cls = classify("SELECT * FROM orders; DELETE FROM orders");
    let x = set.explain(
        &identity("agent"),
        &connection(P),
        &cls,
        &PolicyContext::default(),
    );
    assert_eq!(x.decision.verdict, Verdict::Review);
    assert_eq!(x.statements.len(), 2);
    assert_eq!(x.statements[0].decision.verdict, Verdict::Allow);
    assert_eq!(x.statements[1].decision.verdict, Verdict::Review);
    let json = serde_json::to_value(&x).unwrap_or_default();
    assert_eq!(json["decision"]["verdict"], "review");
    assert_eq!(json["statements"][1]["statement"]["kind"], "delete");
    assert_eq!(json["statements"][1]["statement"]["has_where"], false);
    let text = x.to_string();
    assert!(
        text.starts_with("agent agent-1 on prod-pg: REVIEW"),
        "{text}"
    );
    assert!(text.contains("determined by: agent-production-writes, unbounded-writes"));
    assert!(text.contains("review: 1 approval(s) from dba, expires after 15m"));
    assert!(text.contains("statement 2: DELETE FROM orders"));
}

fn temp_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("airlock-policy-{}-{name}", uuid::Uuid::new_v4()))
}

#[test]
fn load_file_reads_and_names_the_file() {
    let path = temp_path("load.cedar");
    std::fs::write(&path, DEFAULT_PACK_SOURCE).unwrap_or_default();
    let set = load_file(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(set.version(), PolicySet::default_pack().version());
    std::fs::write(&path, "permit (principal, action, resource) when { nope };")
        .unwrap_or_default();
    let e = load_file(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.starts_with(&format!("{}:1:", path.display())), "{e}");
    let _ = std::fs::remove_file(&path);
    let e = load_file(&path)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("cannot read"), "{e}");
}

#[tokio::test]
async fn watch_file_reloads_valid_and_keeps_running_on_invalid() {
    let path = temp_path("watch.cedar");
    let v1 = "permit (principal, action, resource);\n";
    let v2 = "permit (principal, action == Airlock::Action::\"connect\", resource);\n";
    std::fs::write(&path, v1).unwrap_or_default();
    let engine = Arc::new(PolicyEngine::new(
        load_file(&path).unwrap_or_else(|e| panic!("{e}")),
    ));
    let task = tokio::spawn(watch_file(Arc::clone(&engine), path.clone()));

    let wait_for = |want: String| {
        let engine = Arc::clone(&engine);
        async move {
            for _ in 0..60 {
                if engine.current().version() == want {
                    return true;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            false
        }
    };
    std::fs::write(&path, v2).unwrap_or_default();
    assert!(wait_for(version_of(v2)).await, "valid change not picked up");

    std::fs::write(&path, "permit (principal, action, resource) when { nope };")
        .unwrap_or_default();
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(
        engine.current().version(),
        version_of(v2),
        "invalid file replaced policy"
    );

    std::fs::write(&path, v1).unwrap_or_default();
    assert!(wait_for(version_of(v1)).await, "recovery not picked up");
    task.abort();
    let _ = std::fs::remove_file(&path);
}

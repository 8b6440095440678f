//! Proves the end-to-end harness itself works, without `airlock serve`:
//! real PostgreSQL clusters with every authentication method in force,
//! real clients (psql, tokio-postgres, psycopg), the config builder and the
//! gateway readiness protocol.

mod support;

use std::path::Path;

use support::*;

/// psql as `user` against `cluster`, returning stdout or panicking.
#[track_caller]
fn psql_ok(cluster: &PgCluster, user: &str, sql: &str) -> String {
    psql(&cluster.conninfo(user, "postgres"), sql, &[])
        .expect_success()
        .to_owned()
}

#[test]
fn plain_cluster_enforces_each_auth_method() {
    let pg = PgCluster::start();
    assert!(!pg.is_tls());
    assert_eq!(pg.host(), "127.0.0.1");
    assert_ne!(pg.port(), 0);

    assert_eq!(pg.psql_admin("SHOW password_encryption"), "scram-sha-256");
    assert_eq!(pg.psql_admin("SHOW ssl"), "off");

    // Stored verifiers: SCRAM for scram/cleartext users, md5 for md5_user,
    // none for trust_user.
    let stored = pg.psql_admin(
        "SELECT rolname || ' ' || CASE \
           WHEN rolpassword LIKE 'SCRAM-SHA-256$%' THEN 'SCRAM-SHA-256' \
           WHEN rolpassword ~ '^md5[0-9a-f]{32}$' THEN 'md5' \
           ELSE coalesce(rolpassword, '-') END \
         FROM pg_authid WHERE rolname IN ('scram_user','md5_user','trust_user','cleartext_user') \
         ORDER BY rolname",
    );
    let rows: Vec<&str> = stored.lines().collect();
    assert_eq!(
        rows,
        vec![
            "cleartext_user SCRAM-SHA-256",
            "md5_user md5",
            "scram_user SCRAM-SHA-256",
            "trust_user -",
        ],
        "pg_authid:\n{stored}"
    );
    let md5_hash = pg.psql_admin("SELECT rolpassword FROM pg_authid WHERE rolname = 'md5_user'");
    assert!(
        md5_hash.starts_with("md5") && md5_hash.len() == 35,
        "{md5_hash}"
    );

    // Each role logs in with its own method, and the server says which.
    for (user, method) in [
        (SCRAM_USER, Some("scram-sha-256")),
        (MD5_USER, Some("md5")),
        (CLEARTEXT_USER, Some("password")),
        (TRUST_USER, None),
    ] {
        assert_eq!(psql_ok(&pg, user, "SELECT current_user"), user);
        if let Some(method) = method {
            let needle = format!("identity=\"{user}\" method={method}");
            assert!(
                pg.log_contents().contains(&needle),
                "server log lacks {needle:?}:\n{}",
                pg.log_contents()
            );
        }
    }
    let hba = pg.psql_admin(
        "SELECT user_name[1] || ' ' || auth_method FROM pg_hba_file_rules \
         WHERE type = 'host' AND user_name[1] <> 'all' ORDER BY line_number",
    );
    assert_eq!(
        hba.lines().collect::<Vec<_>>(),
        vec![
            "scram_user scram-sha-256",
            "md5_user md5",
            "trust_user trust",
            "cleartext_user password",
            "postgres scram-sha-256",
        ]
    );

    // Wrong passwords are refused: authentication is really checked.
    for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER] {
        let conninfo = format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres password=wrong",
            pg.port()
        );
        let out = psql(&conninfo, "SELECT 1", &[]);
        assert!(
            out.expect_failure().contains(&format!(
                "password authentication failed for user \"{user}\""
            )),
            "{out:?}"
        );
    }
    // A password given through PGPASSWORD (env) works too.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} user={SCRAM_USER} dbname=postgres",
            pg.port()
        ),
        "SELECT 'env-ok'",
        &[("PGPASSWORD", pg.password(SCRAM_USER))],
    );
    assert_eq!(out.expect_success(), "env-ok");

    // tls_user may only come in over TLS, which this cluster doesn't have.
    let out = psql(&pg.conninfo(TLS_USER, "postgres"), "SELECT 1", &[]);
    assert!(
        out.expect_failure()
            .contains("pg_hba.conf rejects connection"),
        "{out:?}"
    );

    // The superuser over TCP needs its (scram) password.
    assert_eq!(
        psql_ok(
            &pg,
            SUPERUSER,
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ),
        "t"
    );
}

#[test]
fn databases_scripts_and_stop_start() {
    let mut pg = PgCluster::start();
    pg.create_database("shop", SCRAM_USER);
    assert_eq!(
        pg.psql_admin("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'shop'"),
        SCRAM_USER
    );
    // The owner can create tables in its database; psql_script runs several
    // statements from stdin and stops at the first error.
    let conninfo = pg.conninfo(SCRAM_USER, "shop");
    let out = psql_script(
        &conninfo,
        "CREATE TABLE customers (id int PRIMARY KEY, email text);\n\
         INSERT INTO customers VALUES (1, 'ann@example.com'), (2, 'bob@example.com');\n\
         SELECT email FROM customers ORDER BY id;\n",
        &[],
    );
    assert_eq!(
        out.lines(),
        vec![
            "CREATE TABLE",
            "INSERT 0 2",
            "ann@example.com",
            "bob@example.com"
        ],
        "{out:?}"
    );
    let out = psql_script(&conninfo, "SELECT 1;\nSELECT nope;\nSELECT 3;\n", &[]);
    assert!(!out.success());
    assert_eq!(
        out.stdout.trim(),
        "1",
        "ON_ERROR_STOP must stop the script: {out:?}"
    );
    assert!(
        out.stderr.contains("column \"nope\" does not exist"),
        "{out:?}"
    );
    // psql_admin_db runs in the named database.
    assert_eq!(
        pg.psql_admin_db("shop", "SELECT count(*) FROM customers"),
        "2"
    );

    // stop() really stops the server; start_again() brings it back with data.
    pg.stop();
    assert!(!pg.is_running());
    let out = psql(&conninfo, "SELECT 1", &[]);
    assert!(
        out.expect_failure().contains("Connection refused"),
        "{out:?}"
    );
    pg.start_again();
    assert_eq!(
        psql(&conninfo, "SELECT count(*) FROM customers", &[]).expect_success(),
        "2"
    );
}

#[test]
fn tls_cluster_requires_tls_for_tls_user() {
    let pg = PgCluster::builder()
        .tls(true)
        .password_encryption("md5")
        .setting("max_connections", "40")
        .start();
    assert!(pg.is_tls());
    assert_eq!(pg.psql_admin("SHOW ssl"), "on");
    assert_eq!(pg.psql_admin("SHOW max_connections"), "40");
    // The builder's default encryption is in force for new roles, while the
    // built-in roles keep the verifier their auth method needs.
    assert_eq!(pg.psql_admin("SHOW password_encryption"), "md5");
    pg.psql_admin("CREATE ROLE later_user LOGIN PASSWORD 'x'");
    assert_eq!(
        pg.psql_admin(
            "SELECT rolname || ' ' || CASE WHEN rolpassword ~ '^md5[0-9a-f]{32}$' THEN 'md5' \
             ELSE split_part(rolpassword, '$', 1) END FROM pg_authid \
             WHERE rolname IN ('later_user', 'scram_user', 'tls_user') ORDER BY rolname"
        )
        .lines()
        .collect::<Vec<_>>(),
        vec![
            "later_user md5",
            "scram_user SCRAM-SHA-256",
            "tls_user SCRAM-SHA-256"
        ]
    );

    let ssl_in_use = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    // sslmode=require: encrypted, no verification.
    let out = psql(
        &format!("{} sslmode=require", pg.conninfo(TLS_USER, "postgres")),
        ssl_in_use,
        &[],
    );
    assert_eq!(out.expect_success(), "t");
    // sslmode=verify-full against the CA, by name and by IP.
    for host in ["host=localhost hostaddr=127.0.0.1", "host=127.0.0.1"] {
        let conninfo = format!(
            "{host} port={} user={TLS_USER} dbname=postgres password={} sslmode=verify-full sslrootcert={}",
            pg.port(),
            pg.password(TLS_USER),
            pg.cert_path().display()
        );
        assert_eq!(psql(&conninfo, ssl_in_use, &[]).expect_success(), "t");
    }
    // A wrong CA is refused by verify-full: the verification is real.
    let other = tempfile::tempdir().unwrap();
    let other_ca = generate_tls(&other.path().join("tls")).ca_cert;
    let conninfo = format!(
        "host=localhost hostaddr=127.0.0.1 port={} user={TLS_USER} dbname=postgres password={} \
         sslmode=verify-full sslrootcert={}",
        pg.port(),
        pg.password(TLS_USER),
        other_ca.display()
    );
    let out = psql(&conninfo, "SELECT 1", &[]);
    assert!(
        out.expect_failure().contains("certificate verify failed"),
        "{out:?}"
    );
    // sslmode=disable: tls_user is refused.
    let out = psql(
        &format!("{} sslmode=disable", pg.conninfo(TLS_USER, "postgres")),
        "SELECT 1",
        &[],
    );
    let err = out.expect_failure();
    assert!(
        err.contains("pg_hba.conf rejects connection") && err.contains("no encryption"),
        "{out:?}"
    );
    // Other roles may use either.
    for mode in ["disable", "require"] {
        let out = psql(
            &format!("{} sslmode={mode}", pg.conninfo(SCRAM_USER, "postgres")),
            ssl_in_use,
            &[],
        );
        assert_eq!(
            out.expect_success(),
            if mode == "require" { "t" } else { "f" }
        );
    }
    // The server certificate is the leaf signed by the CA, not the CA.
    assert_ne!(pg.server_cert_path(), pg.ca_cert_path());
    assert!(pg.server_cert_path().exists() && pg.ca_cert_path().exists());
}

#[test]
fn tokio_postgres_scram_and_md5() {
    let pg = PgCluster::start();
    let rt = rt();
    rt.block_on(async {
        for user in [SCRAM_USER, MD5_USER] {
            let client = tokio_pg_connect(&pg.conninfo(user, "postgres"))
                .await
                .unwrap_or_else(|e| panic!("tokio-postgres as {user}: {e}"));
            let row = client
                .query_one("SELECT current_user::text, $1::int + 1", &[&41i32])
                .await
                .expect("query");
            assert_eq!(row.get::<_, String>(0), user);
            assert_eq!(row.get::<_, i32>(1), 42);
        }
        let wrong = format!(
            "host=127.0.0.1 port={} user={MD5_USER} dbname=postgres password=wrong",
            pg.port()
        );
        let err = match tokio_pg_connect(&wrong).await {
            Ok(_) => panic!("a wrong md5 password must be refused"),
            Err(e) => e,
        };
        let db = err.as_db_error().expect("server error");
        assert_eq!(
            db.code(),
            &tokio_postgres::error::SqlState::INVALID_PASSWORD
        );
    });
    assert!(
        pg.log_contents()
            .contains("identity=\"md5_user\" method=md5")
    );
    assert!(
        pg.log_contents()
            .contains("identity=\"scram_user\" method=scram-sha-256")
    );
}

const PSYCOPG_SCRIPT: &str = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, %s::int * 2", (21,))
        user, n = cur.fetchone()
        cur.execute("SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)")
        ssl = cur.fetchone()[0]
print(user, n, ssl)
"#;

#[test]
fn psycopg_clients() {
    let pg = PgCluster::builder().tls(true).start();
    let out = python(PSYCOPG_SCRIPT, &[&pg.conninfo(SCRAM_USER, "postgres")]);
    assert_eq!(out.expect_success(), "scram_user 42 True");
    let out = python(
        PSYCOPG_SCRIPT,
        &[&format!(
            "{} sslmode=disable",
            pg.conninfo(MD5_USER, "postgres")
        )],
    );
    assert_eq!(out.expect_success(), "md5_user 42 False");
    let out = python(
        PSYCOPG_SCRIPT,
        &[&format!(
            "{} sslmode=verify-full sslrootcert={}",
            pg.conninfo(TLS_USER, "postgres"),
            pg.cert_path().display()
        )],
    );
    assert_eq!(out.expect_success(), "tls_user 42 True");
    // Failures come back as output to assert on, not panics.
    let out = python(
        PSYCOPG_SCRIPT,
        &[&format!(
            "{} sslmode=disable",
            pg.conninfo(TLS_USER, "postgres")
        )],
    );
    assert!(
        out.expect_failure()
            .contains("pg_hba.conf rejects connection"),
        "{out:?}"
    );
}

#[test]
fn ready_line_parser() {
    let addrs =
        parse_ready_line("airlock ready api=127.0.0.1:41234 postgres=127.0.0.1:39999\n").unwrap();
    assert_eq!(addrs.len(), 2);
    assert_eq!(addrs["api"].to_string(), "127.0.0.1:41234");
    assert_eq!(addrs["postgres"].port(), 39999);

    let addrs = parse_ready_line(
        "airlock ready api=127.0.0.1:1 postgres=127.0.0.1:2 mysql=127.0.0.1:3 http=[::1]:4",
    )
    .unwrap();
    assert_eq!(
        addrs.keys().collect::<Vec<_>>(),
        ["api", "http", "mysql", "postgres"]
    );
    assert_eq!(addrs["http"].to_string(), "[::1]:4");

    for bad in [
        "airlock starting",
        "airlock readyapi=127.0.0.1:1",
        "airlock ready",
        "airlock ready api",
        "airlock ready api=localhost:80",
        "airlock ready api=127.0.0.1:0",
        "airlock ready api=127.0.0.1:1 api=127.0.0.1:2",
        "airlock ready =127.0.0.1:1",
    ] {
        assert!(parse_ready_line(bad).is_err(), "{bad:?} must not parse");
    }
}

#[test]
fn gateway_config_renders_the_example() {
    let pg = PgCluster::start();
    let config = GatewayConfig::new(&pg);
    let data_dir = Path::new("/tmp/x/airlock-data");
    let expected = EXAMPLE_CONFIG_TEMPLATE
        .replace("{data_dir}", "/tmp/x/airlock-data")
        .replace("{port}", &pg.port().to_string());
    assert_eq!(config.render(data_dir), expected);

    // Env carries distinct random tokens and the upstream password.
    let env = config.process_env();
    let get = |k: &str| {
        env.iter()
            .find(|(ek, _)| ek == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {k} in {env:?}"))
    };
    assert_eq!(get("AGENT_TOKEN"), config.token("agent"));
    assert_eq!(get("ALICE_TOKEN"), config.token("alice"));
    assert_ne!(config.token("agent"), config.token("alice"));
    assert_eq!(get("SHOP_DB_PASSWORD"), pg.password(SCRAM_USER));

    // Extra identities, connections (md5 / TLS upstream) and sections.
    let tls_pg = PgCluster::builder().tls(true).start();
    let config = config
        .identity("bob", "human", &["reviewers"])
        .connection(ConnectionSpec::postgres("shop-md5", &pg, "shop", MD5_USER).tags(&["staging"]))
        .connection(
            ConnectionSpec::postgres("shop-tls", &tls_pg, "shop", TLS_USER)
                .tls("verify-full")
                .set(
                    "tls_ca_file",
                    &toml_string(tls_pg.cert_path().to_string_lossy()),
                ),
        )
        .connection(ConnectionSpec::postgres(
            "shop-trust",
            &pg,
            "shop",
            TRUST_USER,
        ))
        .server_setting("admin_groups", r#"["admins"]"#)
        .listener("http", "127.0.0.1:0")
        .extra_toml("[masking]\nenabled = true")
        .env("EXTRA", "1");
    let text = config.render(data_dir);
    assert!(text.contains("name = \"bob\"\nkind = \"human\"\ngroups = [\"reviewers\"]\ntoken_env = \"BOB_TOKEN\"\n"), "{text}");
    assert!(text.contains(&format!("name = \"shop-md5\"\nprotocol = \"postgres\"\nhost = \"127.0.0.1\"\nport = {}\ndatabase = \"shop\"\nusername = \"md5_user\"\npassword_env = \"SHOP_MD5_DB_PASSWORD\"\ntls = \"prefer\"\ntags = [\"staging\"]\n", pg.port())), "{text}");
    assert!(
        text.contains(&format!("port = {}\n", tls_pg.port())),
        "{text}"
    );
    assert!(text.contains("tls = \"verify-full\"\n"), "{text}");
    assert!(
        text.contains(&format!(
            "tls_ca_file = \"{}\"\n",
            tls_pg.cert_path().display()
        )),
        "{text}"
    );
    assert!(text.contains("data_dir = \"/tmp/x/airlock-data\"\nadmin_groups = [\"admins\"]\n\n[listeners]\npostgres = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n"), "{text}");
    assert!(text.ends_with("\n[masking]\nenabled = true\n"), "{text}");
    // The trust connection has no password_env at all.
    let trust = text
        .split("[[connections]]")
        .find(|s| s.contains("shop-trust"))
        .unwrap();
    assert!(!trust.contains("password_env"), "{trust}");
    let env = config.process_env();
    assert!(env.contains(&("SHOP_MD5_DB_PASSWORD".into(), pg.password(MD5_USER).into())));
    assert!(env.contains(&(
        "SHOP_TLS_DB_PASSWORD".into(),
        tls_pg.password(TLS_USER).into()
    )));
    assert!(env.contains(&("BOB_TOKEN".into(), config.token("bob").into())));
    assert!(env.contains(&("EXTRA".into(), "1".into())));
}

/// A stand-in for `airlock serve` (a shell script), to check the harness's
/// readiness handling independently of the real binary.
fn fake_gateway(script: &str, config: GatewayConfig) -> Gateway {
    Gateway::start_with_program(
        Path::new("/bin/sh"),
        &["-c", script, "fake-airlock"],
        config,
    )
}

#[test]
fn gateway_waits_for_the_ready_line_and_captures_output() {
    let pg = PgCluster::start();
    // $1 = serve, $2 = --config, $3 = the config path.
    let script = r#"
        test "$1" = serve && test "$2" = --config || exit 9
        echo "starting with $3" >&2
        grep '^data_dir' "$3" >&2
        test "$SHOP_DB_PASSWORD" = "$EXPECT_PW" || { echo "bad env" >&2; exit 8; }
        echo "some banner"
        echo "airlock ready api=127.0.0.1:41001 postgres=127.0.0.1:41002 http=127.0.0.1:41003"
        exec sleep 600
    "#;
    let mut gw = fake_gateway(
        script,
        GatewayConfig::new(&pg)
            .listener("http", "127.0.0.1:0")
            .env("EXPECT_PW", pg.password(SCRAM_USER)),
    );
    assert_eq!(gw.api_url(), "http://127.0.0.1:41001");
    assert_eq!(gw.pg_addr().to_string(), "127.0.0.1:41002");
    assert_eq!(gw.addr("http").unwrap().port(), 41003);
    assert!(gw.is_running());
    let stderr = gw.stderr_contents();
    assert!(stderr.contains("starting with"), "{stderr}");
    assert!(
        stderr.contains(&format!("data_dir = \"{}\"", gw.data_dir().display())),
        "{stderr}"
    );
    assert!(
        gw.stdout_contents()
            .starts_with("some banner\nairlock ready ")
    );
    assert!(gw.data_dir().starts_with(gw.dir()));
    let conninfo = gw.conninfo("agent", "shop");
    assert_eq!(
        conninfo,
        format!(
            "host=127.0.0.1 port=41002 user=agent dbname=shop password='{}'",
            gw.token("agent")
        )
    );
    let pid = gw.pid().unwrap();
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    // SIGTERM ends it; the status says it was signalled, not a clean exit.
    let status = gw.terminate();
    assert!(status.is_some_and(|s| !s.success()));
    assert!(!gw.is_running());
}

#[test]
fn gateway_start_failure_reports_status_and_stderr() {
    let (status, stderr) = Gateway::start_expect_failure_with_program(
        Path::new("/bin/sh"),
        &[
            "-c",
            "echo 'error: connections[0].port: invalid type at line 3' >&2; exit 2",
            "fake-airlock",
        ],
        GatewayConfig::bare(),
    );
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("invalid type at line 3"), "{stderr}");
}

#[test]
#[should_panic(expected = "exited (exit status: 3) before printing its ready line")]
fn gateway_start_fails_when_the_process_exits_early() {
    fake_gateway("echo boom >&2; exit 3", GatewayConfig::bare());
}

#[test]
#[should_panic(expected = "does not name listener(s) [\"postgres\"]")]
fn gateway_start_fails_when_a_listener_is_missing() {
    fake_gateway(
        "echo 'airlock ready api=127.0.0.1:41001'; exec sleep 600",
        GatewayConfig::bare(),
    );
}

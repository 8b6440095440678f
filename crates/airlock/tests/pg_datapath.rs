//! The PostgreSQL data path end to end: real PostgreSQL, the real `airlock
//! serve`, real clients (psql, tokio-postgres, psycopg). These tests use a
//! connection without the `production` tag and a human identity, so the
//! default policy pack lets everything through; policy has its own tests.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use futures::StreamExt;
use support::*;
use tokio_postgres::{AsyncMessage, NoTls};

/// A cluster with a `lab` database owned by scram_user and a gateway whose
/// `lab` connection reaches it; `alice` is a human DBA.
fn lab() -> (PgCluster, Gateway) {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"])),
    );
    (pg, gw)
}

async fn connect(gw: &Gateway, identity: &str, connection: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(&gw.conninfo(identity, connection), NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect through the gateway: {e}\n{}", gw.stderr_contents()));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// The recorded sessions on `connection`, as the CLI's `sessions list
/// --json` gives them.
fn sessions_on(gw: &Gateway, connection: &str) -> Vec<serde_json::Value> {
    let list = gw.cli_json(&["sessions", "list", "--json"]);
    list.as_array()
        .or_else(|| list["sessions"].as_array())
        .unwrap_or_else(|| panic!("a list of sessions: {list}"))
        .iter()
        .filter(|s| s["connection"] == connection)
        .cloned()
        .collect()
}

/// The timeline of one recorded session, as JSON text.
fn timeline_of(gw: &Gateway, session: &serde_json::Value) -> String {
    let id = session["id"].as_str().expect("a session id");
    gw.cli_json(&["sessions", "show", id, "--json"]).to_string()
}

#[test]
fn simple_queries_including_multi_statement_strings() {
    let (_pg, gw) = lab();
    let ci = gw.conninfo("alice", "lab");
    psql(&ci, "CREATE TABLE t (id int PRIMARY KEY, name text)", &[]).expect_success();
    let out = psql(
        &ci,
        "INSERT INTO t VALUES (1, 'one'), (2, 'two'); UPDATE t SET name = 'uno' WHERE id = 1; SELECT id, name FROM t ORDER BY id",
        &[],
    );
    // psql prints each statement's command tag, then the rows.
    assert_eq!(
        out.expect_success().trim(),
        "INSERT 0 2\nUPDATE 1\n1|uno\n2|two"
    );
    // An error mid-string rolls the whole implicit transaction back.
    let out = psql(&ci, "INSERT INTO t VALUES (3, 'three'); SELECT 1/0", &[]);
    assert!(out.stderr.contains("division by zero"), "{out:?}");
    assert_eq!(
        psql(&ci, "SELECT count(*) FROM t", &[])
            .expect_success()
            .trim(),
        "2"
    );
}

#[test]
fn extended_protocol_prepared_statements_and_pipelining() {
    let (_pg, gw) = lab();
    rt().block_on(async {
        let c = connect(&gw, "alice", "lab").await;
        c.batch_execute("CREATE TABLE kv (k int PRIMARY KEY, v text)")
            .await
            .unwrap();
        let insert = c.prepare("INSERT INTO kv VALUES ($1, $2)").await.unwrap();
        for i in 0..300i32 {
            c.execute(&insert, &[&i, &format!("value {i}")])
                .await
                .unwrap();
        }
        let select = c.prepare("SELECT v FROM kv WHERE k = $1").await.unwrap();
        // Pipelined: all queries are sent before the first answer is read.
        let futures = (0..300i32).map(|i| {
            let c = &c;
            let select = &select;
            async move {
                c.query_one(select, &[&i])
                    .await
                    .map(|r| r.get::<_, String>(0))
            }
        });
        let values = futures::future::try_join_all(futures).await.unwrap();
        assert_eq!(values.len(), 300);
        assert_eq!(values[0], "value 0");
        assert_eq!(values[299], "value 299");
        // An error inside a pipeline fails only its own statement.
        let bad = c.query_one("SELECT 1/$1::int", &[&0i32]).await;
        assert_eq!(
            bad.unwrap_err().code(),
            Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
        );
        let n: i64 = c
            .query_one("SELECT count(*) FROM kv", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 300);
        // A large row crosses in one piece.
        let big: String = c
            .query_one("SELECT repeat('x', 3000000)", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(big.len(), 3_000_000);
    });
}

#[test]
fn copy_in_and_out_with_a_multi_megabyte_payload() {
    let (_pg, gw) = lab();
    rt().block_on(async {
        let c = connect(&gw, "alice", "lab").await;
        c.batch_execute("CREATE TABLE blob (id int, payload text)")
            .await
            .unwrap();
        let mut data = Vec::new();
        for i in 0..40_000 {
            writeln!(data, "{i}\t{}", "abcdefghij".repeat(10)).unwrap();
        }
        assert!(data.len() > 4_000_000);
        let sink = c.copy_in("COPY blob FROM STDIN").await.unwrap();
        futures::pin_mut!(sink);
        use futures::SinkExt;
        for chunk in data.chunks(64 * 1024) {
            sink.send(bytes::Bytes::copy_from_slice(chunk))
                .await
                .unwrap();
        }
        let rows = sink.finish().await.unwrap();
        assert_eq!(rows, 40_000);

        let stream = c.copy_out("COPY blob TO STDOUT").await.unwrap();
        futures::pin_mut!(stream);
        let mut back = Vec::new();
        while let Some(chunk) = stream.next().await {
            back.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!(back.len(), data.len());
        assert_eq!(back, data);
    });
}

#[test]
fn listen_notify_and_backend_pid_agree() {
    let (_pg, gw) = lab();
    rt().block_on(async {
        let (listener, mut conn) = tokio_postgres::connect(&gw.conninfo("alice", "lab"), NoTls)
            .await
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            while let Some(Ok(m)) = messages.next().await {
                if let AsyncMessage::Notification(n) = m {
                    let _ = tx.send(n);
                }
            }
        });
        listener.batch_execute("LISTEN events").await.unwrap();
        let sender = connect(&gw, "alice", "lab").await;
        let sender_pid: i32 = sender
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0);
        sender
            .batch_execute("NOTIFY events, 'hello'")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("notification arrives")
            .expect("listener alive");
        assert_eq!(n.channel(), "events");
        assert_eq!(n.payload(), "hello");
        assert_eq!(
            n.process_id(),
            sender_pid,
            "NOTIFY sender pid matches pg_backend_pid()"
        );
    });
}

#[test]
fn cancel_request_reaches_the_upstream_backend() {
    let (pg, gw) = lab();
    rt().block_on(async {
        let c = connect(&gw, "alice", "lab").await;
        let token = c.cancel_token();
        let sleeper = tokio::spawn(async move { c.query("SELECT pg_sleep(30)", &[]).await });
        // Wait until the upstream really runs the sleep before cancelling.
        let mut running = false;
        for _ in 0..600 {
            let out = pg.psql_admin("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'");
            if out.trim() == "1" {
                running = true;
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(running, "the sleep never started upstream");
        token.cancel_query(NoTls).await.expect("cancel through the gateway");
        let err = tokio::time::timeout(Duration::from_secs(20), sleeper)
            .await
            .expect("cancelled before pg_sleep(30) ends")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.code(), Some(&tokio_postgres::error::SqlState::QUERY_CANCELED));
    });
}

#[test]
fn psycopg_backend_pid_and_parameters() {
    let (_pg, gw) = lab();
    let script = r#"
import sys, psycopg
with psycopg.connect(sys.argv[1]) as conn:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        assert cur.fetchone()[0] == conn.info.backend_pid, "pid mismatch"
        cur.execute("CREATE TABLE p (id int, note text)")
        cur.executemany("INSERT INTO p VALUES (%s, %s)", [(i, f"n{i}") for i in range(50)])
        cur.execute("SELECT count(*), max(note) FROM p WHERE id >= %s", (10,))
        print(cur.fetchone())
    with conn.cursor(binary=True) as cur:
        cur.execute("SELECT %s::int + 1", (41,))
        print(cur.fetchone()[0])
"#;
    let out = python(script, &[&gw.conninfo("alice", "lab")]);
    let stdout = out.expect_success();
    assert!(stdout.contains("(40, 'n49')"), "{stdout}");
    assert!(stdout.contains("42"), "{stdout}");
}

#[test]
fn client_tls_with_sslmode_require_and_tls_required_by_config() {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER))
            .extra_toml("[postgres]\nrequire_tls = true"),
    );
    let ci = gw.conninfo("alice", "lab");
    let out = psql(
        &format!("{ci} sslmode=require"),
        "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        &[],
    );
    // The upstream leg is plain here (cluster without TLS); the client leg is TLS.
    assert!(out.success(), "{out:?}");
    let out = psql(&format!("{ci} sslmode=disable"), "SELECT 1", &[]);
    assert!(out.stderr.contains("requires TLS"), "{out:?}");
    let sessions = gw.cli_json(&["sessions", "list", "--json"]);
    let text = sessions.to_string();
    assert!(text.contains("\"tls\":true"), "{text}");
}

/// This machine's address on its default route: a client connecting to it
/// is not on loopback. (A UDP connect sends nothing; it only picks a route.)
fn non_loopback_ip() -> std::net::IpAddr {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let ip = socket
        .connect("203.0.113.1:9")
        .and_then(|()| socket.local_addr())
        .map(|a| a.ip())
        .unwrap_or_else(|e| {
            panic!(
                "this test needs a network interface besides loopback, with a default route: {e}"
            )
        });
    assert!(
        !ip.is_loopback() && !ip.is_unspecified(),
        "this test needs a network interface besides loopback, with a default route (got {ip})"
    );
    ip
}

/// From a client that is not on loopback, a token (a cleartext password)
/// is accepted only over TLS, unless `allow_cleartext_without_tls` says
/// otherwise. The TLS certificate is the configured one (`tls_cert`/
/// `tls_key`): libpq's `verify-ca` against its CA would refuse the
/// self-signed fallback.
#[test]
fn tokens_from_other_hosts_need_tls_and_the_configured_certificate_is_presented() {
    let ip = non_loopback_ip();
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let dir = tempfile::tempdir().unwrap();
    let tls = generate_tls(&dir.path().join("gateway-tls"));
    let start = |allow_cleartext: bool| {
        Gateway::start(
            GatewayConfig::new(&pg)
                .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"]))
                .listener("postgres", &format!("{ip}:0"))
                .extra_toml(&format!(
                    "[postgres]\ntls_cert = {}\ntls_key = {}\nallow_cleartext_without_tls = {allow_cleartext}",
                    toml_string(tls.server_cert.to_string_lossy()),
                    toml_string(tls.server_key.to_string_lossy()),
                )),
        )
    };
    let gw = start(false);
    let ci = gw.conninfo("alice", "lab");
    assert!(ci.contains(&format!("host={ip} ")), "{ci}");
    let out = psql(&format!("{ci} sslmode=disable"), "SELECT 1", &[]);
    assert!(out.stderr.contains("requires TLS"), "{out:?}");
    let ca = tls.ca_cert.to_string_lossy();
    let out = psql(
        &format!("{ci} sslmode=verify-ca sslrootcert={ca}"),
        "SELECT 1",
        &[],
    );
    assert_eq!(out.expect_success().trim(), "1");
    let sessions = gw.cli_json(&["sessions", "list", "--json"]).to_string();
    assert!(
        sessions.contains(&format!("\"client_addr\":\"{ip}:")),
        "{sessions}"
    );
    assert!(sessions.contains("\"tls\":true"), "{sessions}");
    drop(gw);

    let gw = start(true);
    let out = psql(
        &format!("{} sslmode=disable", gw.conninfo("alice", "lab")),
        "SELECT 1",
        &[],
    );
    assert_eq!(out.expect_success().trim(), "1", "allowed by config");
}

#[test]
fn upstream_scram_md5_cleartext_trust_and_tls_modes() {
    let pg = PgCluster::builder().tls(true).start();
    for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER, TRUST_USER, TLS_USER] {
        pg.create_database(&format!("db_{user}"), user);
    }
    let mut cfg = GatewayConfig::new(&pg);
    for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER, TRUST_USER] {
        cfg = cfg.connection(
            ConnectionSpec::postgres(&format!("c_{user}"), &pg, &format!("db_{user}"), user)
                .tls("disable"),
        );
    }
    cfg = cfg
        .connection(
            ConnectionSpec::postgres("c_tls_require", &pg, &format!("db_{TLS_USER}"), TLS_USER)
                .tls("require"),
        )
        .connection(
            ConnectionSpec::postgres("c_tls_verify", &pg, &format!("db_{TLS_USER}"), TLS_USER)
                .tls("verify-full")
                .set("ca_file", &toml_string(pg.ca_cert_path().to_string_lossy()))
                .set("tls_server_name", "\"localhost\""),
        )
        .connection(
            ConnectionSpec::postgres("c_tls_refused", &pg, &format!("db_{TLS_USER}"), TLS_USER)
                .tls("disable"),
        );
    let gw = Gateway::start(cfg);
    for user in [SCRAM_USER, MD5_USER, CLEARTEXT_USER, TRUST_USER] {
        let out = psql(
            &gw.conninfo("alice", &format!("c_{user}")),
            "SELECT current_user",
            &[],
        );
        assert_eq!(out.expect_success().trim(), user, "upstream auth as {user}");
    }
    for conn in ["c_tls_require", "c_tls_verify"] {
        let out = psql(
            &gw.conninfo("alice", conn),
            "SELECT current_user || ' ' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        );
        assert_eq!(
            out.expect_success().trim(),
            format!("{TLS_USER} true"),
            "{conn}"
        );
    }
    // tls_user may only connect over TLS: with tls = "disable" the upstream refuses.
    let out = psql(&gw.conninfo("alice", "c_tls_refused"), "SELECT 1", &[]);
    assert!(!out.success());
    assert!(!out.stderr.contains(pg.password(TLS_USER)), "{out:?}");
}

#[test]
fn wrong_token_unknown_connection_and_upstream_down() {
    let (pg, gw_lab) = lab();
    drop(gw_lab);
    let down_port = free_port();
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER))
            .connection(ConnectionSpec::postgres("down", &pg, "lab", SCRAM_USER).port(down_port)),
    );
    let addr = gw.pg_addr();
    let wrong = format!(
        "host={} port={} user=alice dbname=lab password=not-the-token",
        addr.ip(),
        addr.port()
    );
    let out = psql(&wrong, "SELECT 1", &[]);
    assert!(
        out.stderr.contains("password authentication failed"),
        "{out:?}"
    );

    let out = psql(&gw.conninfo("alice", "nosuch"), "SELECT 1", &[]);
    assert!(
        out.stderr.contains("connection \"nosuch\" does not exist"),
        "{out:?}"
    );

    let out = psql(&gw.conninfo("alice", "down"), "SELECT 1", &[]);
    assert!(
        out.stderr.contains("could not connect to the target"),
        "{out:?}"
    );
    assert!(!out.stderr.contains(pg.password(SCRAM_USER)));

    // The gateway still serves, and recorded the failed attempts.
    assert_eq!(
        psql(&gw.conninfo("alice", "lab"), "SELECT 7", &[])
            .expect_success()
            .trim(),
        "7"
    );
    let sessions = gw.cli_json(&["sessions", "list", "--json"]).to_string();
    assert!(
        sessions.contains("nosuch"),
        "unknown-connection attempt recorded: {sessions}"
    );
    assert!(
        sessions.contains("bad credentials"),
        "wrong-token attempt recorded: {sessions}"
    );
    assert!(
        !gw.stderr_contents().contains("not-the-token"),
        "presented tokens are never logged"
    );
}

/// libpq 18 can ask for protocol 3.2 and protocol options (`_pq_.*`); like
/// PostgreSQL, Airlock answers NegotiateProtocolVersion (version 3.0, the
/// options it does not know) and the session goes on in 3.0.
#[test]
fn a_newer_protocol_minor_is_negotiated_down_to_3_0() {
    let (_pg, gw) = lab();
    let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let v3_2 = (3 << 16) | 2;
    s.write_all(&startup_packet(
        v3_2,
        &[
            ("user", "alice"),
            ("database", "lab"),
            ("_pq_.made_up", "on"),
        ],
    ))
    .unwrap();
    let (tag, body) = read_message(&mut s);
    assert_eq!(tag, b'v', "NegotiateProtocolVersion first");
    // The version it will speak, whole (libpq refuses anything below 3.0).
    let mut expected = PROTOCOL_3_0.to_be_bytes().to_vec();
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.made_up\0");
    assert_eq!(body, expected);
    assert!(is_password_request(&read_message(&mut s)));
    let login = send_token(&gw, "alice", &mut s);
    let key = login
        .iter()
        .find(|(tag, _)| *tag == b'K')
        .expect("BackendKeyData");
    assert_eq!(
        key.1.len(),
        8,
        "a protocol 3.0 BackendKeyData: pid and a 4-byte key"
    );
    assert_eq!(raw_select_1(&mut s), vec![b'T', b'D', b'C', b'Z']);

    // A 3.0 client gets no NegotiateProtocolVersion.
    let mut plain = TcpStream::connect(gw.pg_addr()).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    plain
        .write_all(&startup_packet(
            PROTOCOL_3_0,
            &[("user", "alice"), ("database", "lab")],
        ))
        .unwrap();
    assert!(is_password_request(&read_message(&mut plain)));
}

/// A client that does not finish logging in within `login_timeout` is
/// disconnected (as PostgreSQL's authentication_timeout does, without a
/// message), wherever it stalls; logged-in sessions are untouched.
#[test]
fn a_client_that_does_not_log_in_in_time_is_disconnected() {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"]))
            .extra_toml("[postgres]\nlogin_timeout = \"3s\""),
    );
    let mut bystander = raw_login(&gw, "alice", "lab");
    let stall = |first: &[u8]| {
        let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
        // Only a guard against a hang: the gateway closes it after 3 s.
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s.write_all(first).unwrap();
        s
    };
    let half_startup = startup_packet(PROTOCOL_3_0, &[("user", "alice"), ("database", "lab")]);
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    let mut stalled = vec![
        ("silent", stall(&[]), Vec::new()),
        (
            "half a startup packet",
            stall(&half_startup[..7]),
            Vec::new(),
        ),
        (
            "no TLS handshake after SSLRequest",
            stall(&ssl_request),
            b"S".to_vec(),
        ),
        (
            "no password",
            stall(&half_startup),
            b"R\0\0\0\x08\0\0\0\x03".to_vec(),
        ),
    ];
    for (what, s, expected) in &mut stalled {
        let mut got = Vec::new();
        s.read_to_end(&mut got)
            .unwrap_or_else(|e| panic!("{what}: the gateway kept the connection open: {e}"));
        assert_eq!(got, *expected, "{what}: closed without a message");
    }
    assert_eq!(raw_select_1(&mut bystander), vec![b'T', b'D', b'C', b'Z']);
    let (_, metrics) = http_get(gw.api_addr(), "/metrics");
    assert_eq!(
        sample(
            &metrics,
            "airlock_login_timeouts_total",
            &[("protocol", "postgres")]
        ),
        Some(4.0),
        "{metrics}"
    );
}

#[test]
fn malformed_startup_and_oversized_messages_close_only_that_session() {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER))
            .extra_toml("[postgres]\nmax_message_bytes = 1048576"),
    );
    // A session that stays open throughout.
    let mut bystander = raw_login(&gw, "alice", "lab");

    // Startup length smaller than its own header.
    let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[0, 0, 0, 3, 0, 0, 0, 0]).unwrap();
    let (tag, body) = read_message(&mut s);
    assert_eq!(tag, b'E');
    assert!(String::from_utf8_lossy(&body).contains("08P01"));

    // Startup length far beyond the limit.
    let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(&[0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0]).unwrap();
    let (tag, _) = read_message(&mut s);
    assert_eq!(tag, b'E');

    // After login: a Query whose length exceeds max_message_bytes.
    let mut s = raw_login(&gw, "alice", "lab");
    s.write_all(&[b'Q', 0x10, 0, 0, 0]).unwrap();
    let (tag, body) = read_message(&mut s);
    assert_eq!(tag, b'E');
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("08P01") && text.contains("FATAL"), "{text}");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);

    // An unknown message type.
    let mut s = raw_login(&gw, "alice", "lab");
    s.write_all(&[b'?', 0, 0, 0, 4]).unwrap();
    let (tag, _) = read_message(&mut s);
    assert_eq!(tag, b'E');

    // Everyone else is still served.
    assert_eq!(raw_select_1(&mut bystander), vec![b'T', b'D', b'C', b'Z']);
    assert_eq!(
        psql(&gw.conninfo("alice", "lab"), "SELECT 2", &[])
            .expect_success()
            .trim(),
        "2"
    );
}

/// SIGTERM: an idle session (listening, just notified) gets PostgreSQL's
/// own shutdown error (57P01); a session with statements running or queued
/// upstream first gets their real outcomes (cancelled, 57014), then 57P01.
/// Both ends are recorded, and so are the cancelled statements' results.
#[test]
fn stopping_the_gateway_ends_open_sessions_with_57p01_and_records_the_end() {
    let (pg, mut gw) = lab();
    let rt = rt();
    let open = |rt: &tokio::runtime::Runtime| {
        let (client, conn) = rt
            .block_on(tokio_postgres::connect(&gw.conninfo("alice", "lab"), NoTls))
            .unwrap();
        (client, rt.spawn(conn))
    };
    // The idle session listens and has just been sent a notification.
    let (idle, mut idle_conn) = rt
        .block_on(tokio_postgres::connect(&gw.conninfo("alice", "lab"), NoTls))
        .unwrap();
    let (notified, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let idle_conn = rt.spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| idle_conn.poll_message(cx));
        while let Some(message) = messages.next().await {
            if let AsyncMessage::Notification(n) = message? {
                let _ = notified.send(n.channel().to_owned());
            }
        }
        Ok(())
    });
    rt.block_on(idle.batch_execute("LISTEN airlock_stop"))
        .unwrap();
    pg.psql_admin_db("lab", "NOTIFY airlock_stop");
    assert_eq!(
        rt.block_on(notifications.recv()).as_deref(),
        Some("airlock_stop")
    );
    let (busy, busy_conn) = open(&rt);
    // Kept here: a dropped client would end its connection on its own.
    let busy = std::sync::Arc::new(busy);
    // Two statements pipelined: the second is already upstream, queued
    // behind the first, when the gateway stops; both must be cancelled.
    let sleeper = rt.spawn({
        let busy = busy.clone();
        async move {
            let (first, second) = futures::join!(
                busy.simple_query("SELECT pg_sleep(30)"),
                busy.simple_query("SELECT pg_sleep(31)")
            );
            [first.err(), second.err()]
        }
    });
    wait_until("pg_sleep(30) runs upstream", || {
        pg.psql_admin("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = 'SELECT pg_sleep(30)'")
            .trim()
            == "1"
    });

    gw.terminate_cleanly();
    let shut_down =
        |which: &str, conn: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>| {
            let err = rt
                .block_on(conn)
                .unwrap()
                .expect_err("the connection ends with the gateway's error");
            assert_eq!(
                err.code(),
                Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
                "{which}: {err:?}"
            );
            let message = err.as_db_error().map(|e| e.message().to_owned());
            assert!(
                message
                    .as_deref()
                    .is_some_and(|m| m.contains("shutting down")),
                "{message:?}"
            );
        };
    shut_down("idle", idle_conn);
    let slept = rt.block_on(sleeper).unwrap();
    for err in &slept {
        assert_eq!(
            err.as_ref().and_then(|e| e.code()),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
            "{slept:?}"
        );
    }
    shut_down("busy", busy_conn);

    gw.restart();
    let lab = sessions_on(&gw, "lab");
    assert_eq!(lab.len(), 2, "{lab:?}");
    for session in &lab {
        assert_eq!(session["status"], "ended", "{session}");
        assert_eq!(
            session["end_reason"], "the gateway is shutting down",
            "{session}"
        );
        assert!(
            session["bytes_from_client"].as_u64().is_some_and(|n| n > 0),
            "client bytes are counted whichever half ended first: {session}"
        );
    }
    let timelines: String = lab.iter().map(|s| timeline_of(&gw, s)).collect();
    assert!(timelines.contains("pg_sleep(30)"), "{timelines}");
    assert!(
        timelines.contains("57014"),
        "the cancelled statement's outcome is recorded: {timelines}"
    );
}

/// A COPY FROM STDIN cut off by the gateway's shutdown fails as cancelled
/// (57014, "COPY from stdin failed", nothing loaded) rather than with a
/// protocol error; the session then gets 57P01, and the COPY's outcome is
/// recorded.
#[test]
fn stopping_the_gateway_during_copy_in_fails_the_copy_cleanly() {
    use futures::SinkExt;
    let (pg, mut gw) = lab();
    let rt = rt();
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(&gw.conninfo("alice", "lab"), NoTls))
        .unwrap();
    let conn = rt.spawn(conn);
    rt.block_on(client.batch_execute("CREATE TABLE loaded (id int)"))
        .unwrap();
    let sink = rt
        .block_on(client.copy_in("COPY loaded FROM STDIN"))
        .unwrap();
    let mut sink = Box::pin(sink);
    rt.block_on(sink.send(bytes::Bytes::from_static(b"1\n2\n")))
        .unwrap();
    rt.block_on(sink.flush()).unwrap();
    wait_until("the COPY runs upstream", || {
        pg.psql_admin_db(
            "lab",
            "SELECT count(*) FROM pg_stat_activity WHERE query = 'COPY loaded FROM STDIN'",
        )
        .trim()
            == "1"
    });

    gw.terminate_cleanly();
    // tokio-postgres runs COPY through the extended protocol without a
    // Sync, so after the COPY's error PostgreSQL sends no ReadyForQuery and
    // the gateway's 57P01 arrives inside the COPY's unfinished response:
    // the connection ends as closed, and the sink could only report the
    // error on `finish`, which can no longer send. The record below is
    // what is checked.
    let end = rt.block_on(conn).unwrap();
    assert!(end.is_err(), "the connection was ended by the gateway");
    drop(sink);
    assert_eq!(
        pg.psql_admin_db("lab", "SELECT count(*) FROM loaded")
            .trim(),
        "0"
    );

    gw.restart();
    let lab = sessions_on(&gw, "lab");
    let timeline = timeline_of(&gw, lab.first().expect("the lab session"));
    assert!(timeline.contains("COPY loaded FROM STDIN"), "{timeline}");
    assert!(timeline.contains("57014"), "{timeline}");
    assert!(
        timeline.contains("COPY from stdin failed: airlock: the gateway is shutting down"),
        "{timeline}"
    );
    assert!(!timeline.contains("08P01"), "no protocol error: {timeline}");
    drop(client);
}

/// A session still connecting upstream when the gateway stops (its
/// upstream accepted TCP and never answered) does not drain; when its
/// thread stops, its end is still recorded, so it does not read as active.
#[test]
fn a_session_stopped_while_connecting_upstream_still_gets_an_end() {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    // Accepts and then says nothing.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut gw = Gateway::start(
        GatewayConfig::new(&pg).connection(
            ConnectionSpec::postgres("mute", &pg, "lab", SCRAM_USER)
                .port(silent_port)
                .tls("disable")
                .tags(&["dev"]),
        ),
    );
    let conninfo = format!("{} connect_timeout=60", gw.conninfo("alice", "mute"));
    let client = std::thread::spawn(move || psql(&conninfo, "SELECT 1", &[]));
    let (_upstream, _) = silent.accept().expect("the gateway connects upstream");

    gw.terminate_cleanly();
    let out = client.join().unwrap();
    assert!(!out.status.success(), "the client did not get through");

    gw.restart();
    let sessions = sessions_on(&gw, "mute");
    let mute = sessions.first().expect("the mute session");
    assert_eq!(mute["status"], "ended", "{mute}");
    assert!(
        mute["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("gateway shut down")),
        "{mute}"
    );
    let verify = gw.cli(gw.token("alice"), &["audit", "verify"]);
    assert!(
        verify.status.success(),
        "the end written on drop extends the chain: {}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn every_statement_is_recorded_and_the_chain_detects_tampering() {
    let (pg, gw) = lab();
    rt().block_on(async {
        let c = connect(&gw, "alice", "lab").await;
        c.batch_execute("CREATE TABLE r (id int, secret_note text)")
            .await
            .unwrap();
        c.execute(
            "INSERT INTO r VALUES ($1, $2)",
            &[&7i32, &"bind-param-value"],
        )
        .await
        .unwrap();
        let rows = c.query("SELECT * FROM r", &[]).await.unwrap();
        assert_eq!(rows.len(), 1);
        let _ = c.query("SELECT 1/0", &[]).await.unwrap_err();
    });
    let lab = sessions_on(&gw, "lab");
    let session = lab.first().expect("the lab session");
    let id = session["id"].as_str().expect("a session id").to_owned();
    let text = timeline_of(&gw, session);
    assert!(text.contains("CREATE TABLE r"), "{text}");
    assert!(text.contains("INSERT INTO r VALUES ($1, $2)"), "{text}");
    assert!(
        text.contains("bind-param-value"),
        "bind parameters recorded: {text}"
    );
    assert!(text.contains("INSERT 0 1"), "command tag recorded: {text}");
    assert!(
        text.contains("22012"),
        "SQLSTATE of the failed statement recorded: {text}"
    );

    let out = gw.cli(gw.token("alice"), &["audit", "verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Alter one recorded statement by hand.
    let db = gw.data_dir().join("airlock.db");
    let edit = python(
        "import sqlite3, sys\ncon = sqlite3.connect(sys.argv[1])\nn = con.execute(\"UPDATE events SET body = replace(body, 'bind-param-value', 'forged') WHERE body LIKE '%bind-param-value%'\").rowcount\ncon.commit()\nprint(n)",
        &[&db.to_string_lossy()],
    );
    assert_ne!(edit.expect_success().trim(), "0", "a row was altered");
    let out = gw.cli(gw.token("alice"), &["audit", "verify"]);
    assert!(!out.status.success(), "verify must fail after tampering");
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        report.contains(&id),
        "the altered session is named: {report}"
    );
    drop(pg);
}

#[test]
fn upstream_password_never_reaches_data_dir_logs_or_api() {
    let (pg, gw) = lab();
    let password = pg.password(SCRAM_USER).to_string();
    let ci = gw.conninfo("alice", "lab");
    psql(
        &ci,
        "SELECT 1; SELECT current_setting('server_version')",
        &[],
    )
    .expect_success();
    let _ = psql(&ci, "SELECT * FROM nowhere", &[]);
    let list = gw.cli(gw.token("alice"), &["sessions", "list", "--json"]);
    let api_text = String::from_utf8_lossy(&list.stdout).to_string();
    assert!(!api_text.contains(&password));
    let files = walk(gw.data_dir());
    assert!(
        files.iter().any(|f| f.ends_with("airlock.db")),
        "the store was scanned: {files:?}"
    );
    for entry in files {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !bytes
                .windows(password.len())
                .any(|w| w == password.as_bytes()),
            "upstream password found in {}",
            entry.display()
        );
    }
    assert!(!gw.stderr_contents().contains(&password));
    assert!(!gw.stdout_contents().contains(&password));
    assert!(!gw.stderr_contents().contains(gw.token("alice")));
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Started with a low soft limit on open files (as systemd's 1024 is), the
/// gateway raises it to the hard limit, so sessions are not refused long
/// before the machine runs out.
#[test]
fn the_open_files_limit_is_raised_to_the_hard_limit() {
    let prlimit = support::util::which("prlimit")
        .unwrap_or_else(|| panic!("`prlimit` not found (apt-get install util-linux)"));
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    // The gateway's hard limit: 4096, or this machine's if lower.
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap();
    let hard: u64 = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4))
        .and_then(|h| h.parse().ok())
        .unwrap_or(4096)
        .min(4096);
    assert!(
        hard > 256,
        "this test needs a hard open-files limit above 256, not {hard}"
    );
    let nofile = format!("--nofile=256:{hard}");
    let gw = Gateway::start_with_program(
        &prlimit,
        &[&nofile, "--", env!("CARGO_BIN_EXE_airlock")],
        GatewayConfig::new(&pg)
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"])),
    );
    let pid = gw.pid().expect("the gateway runs");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("{limits}"));
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    let hard = hard.to_string();
    assert_eq!(numbers, [hard.as_str(), hard.as_str()], "{open_files}");
    assert_eq!(
        gw.psql("alice", "lab", "SELECT 1").expect_success().trim(),
        "1"
    );
}

/// `airlock serve` with a broken config stops before listening, with a
/// message that names the key and its line, or the missing secret variable.
#[test]
fn serve_refuses_a_bad_config_naming_the_key_line_and_missing_secret() {
    let example = EXAMPLE_CONFIG_TEMPLATE
        .replace("{data_dir}", "@DATA_DIR@")
        .replace("{port}", "5432");
    let env = [
        ("AGENT_TOKEN", "agent-token-0123456789"),
        ("ALICE_TOKEN", "alice-token-0123456789"),
        ("SHOP_DB_PASSWORD", "upstream-secret"),
    ];

    let misspelt = example.replace("tls = \"prefer\"", "tls_mode = \"prefer\"");
    let line = misspelt
        .lines()
        .position(|l| l.starts_with("tls_mode"))
        .unwrap()
        + 1;
    let (status, stderr) = Gateway::start_toml_expect_failure(&misspelt, &env);
    assert!(!status.success());
    assert!(
        stderr.contains(&format!("airlock.toml:{line}:")) && stderr.contains("`tls_mode`"),
        "{stderr}"
    );

    let (status, stderr) = Gateway::start_toml_expect_failure(&example, &env[..2]);
    assert!(!status.success());
    assert!(
        stderr.contains("SHOP_DB_PASSWORD") && stderr.contains("password_env"),
        "{stderr}"
    );
}

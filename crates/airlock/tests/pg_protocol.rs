//! Less common parts of the PostgreSQL protocol end to end: the fast-path
//! FunctionCall (large objects through psql), NoticeResponse, named portals
//! fetched with a row limit (PortalSuspended), Close of statements and
//! portals, GSSENCRequest, the SQLSTATEs of refused logins, ParameterStatus
//! and application_name, and `/metrics` after traffic. Real PostgreSQL, the
//! real `airlock serve`, real clients (psql, tokio-postgres).
//!
//! The gateway runs the default policy pack plus one permit: members of
//! `protocol-testers` (the human `probe`) may run administrative and
//! unclassifiable commands, which a fast-path call (`FUNCTION CALL oid=N`)
//! and a DO block are. Approvals are off, so anything else the pack reviews
//! is refused instead of held.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rand::RngCore;
use serde_json::Value;
use support::*;
use tokio_postgres::error::SqlState;

/// The group the extra permit names.
const TESTERS: &str = "protocol-testers";

/// The statement the portal tests fetch in chunks.
const SERIES: &str = "SELECT g FROM generate_series(1, 10) g";

/// A cluster with a `lab` database owned by scram_user, and a gateway whose
/// `lab` connection (tagged `dev`) reaches it. `alice` is a human DBA under
/// the default pack; `probe` is a human in `protocol-testers`.
struct Lab {
    pg: PgCluster,
    gw: Gateway,
    /// Holds the policy file for the gateway's lifetime.
    _policy: tempfile::TempDir,
}

fn lab() -> Lab {
    lab_with("")
}

/// [`lab`] with more TOML for the gateway's config.
fn lab_with(extra_toml: &str) -> Lab {
    let pg = PgCluster::start();
    pg.create_database("lab", SCRAM_USER);
    let policy_dir = tempfile::tempdir().expect("create policy dir");
    let policy = policy_dir.path().join("policy.cedar");
    let default_pack = std::fs::read_to_string(workspace_root().join("policies/default.cedar"))
        .expect("read policies/default.cedar");
    std::fs::write(
        &policy,
        format!(
            "{default_pack}\n@id(\"protocol-testers\")\npermit (\n  principal in Airlock::Group::\"{TESTERS}\",\n  action in [Airlock::Action::\"sql:admin\", Airlock::Action::\"sql:unknown\"],\n  resource\n);\n"
        ),
    )
    .expect("write policy file");
    let gw = Gateway::start(
        GatewayConfig::new(&pg)
            .identity("probe", "human", &[TESTERS])
            .connection(ConnectionSpec::postgres("lab", &pg, "lab", SCRAM_USER).tags(&["dev"]))
            .extra_toml(&format!(
                "[policy]\nfile = {}\n[approvals]\nenabled = false",
                toml_string(policy.to_string_lossy())
            ))
            .extra_toml(extra_toml),
    );
    Lab {
        pg,
        gw,
        _policy: policy_dir,
    }
}

async fn connect(gw: &Gateway, identity: &str, connection: &str) -> tokio_postgres::Client {
    tokio_pg_connect(&gw.conninfo(identity, connection))
        .await
        .unwrap_or_else(|e| panic!("connect through the gateway: {e}\n{}", gw.stderr_contents()))
}

/// The recorded sessions of `identity` on `connection`, as the CLI's
/// `sessions list --json` gives them.
fn sessions_of(gw: &Gateway, identity: &str, connection: &str) -> Vec<Value> {
    let list = gw.cli_json(&["sessions", "list", "--json"]);
    list.as_array()
        .or_else(|| list["sessions"].as_array())
        .unwrap_or_else(|| panic!("a list of sessions: {list}"))
        .iter()
        .filter(|s| s["identity"] == identity && s["connection"] == connection)
        .cloned()
        .collect()
}

/// The one recorded session of `identity` on `connection`.
fn only_session(gw: &Gateway, identity: &str, connection: &str) -> Value {
    let mut sessions = sessions_of(gw, identity, connection);
    assert_eq!(
        sessions.len(),
        1,
        "one session of {identity} on {connection}: {sessions:?}"
    );
    sessions.remove(0)
}

/// The timeline of one recorded session (`sessions show --json`):
/// `commands` joined with their results, and every other `events`.
fn timeline(gw: &Gateway, session: &Value) -> Value {
    let id = session["id"].as_str().expect("a session id");
    gw.cli_json(&["sessions", "show", id, "--json"])
}

fn commands(timeline: &Value) -> &Vec<Value> {
    timeline["commands"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of commands: {timeline}"))
}

/// Results recorded for a command but not joined to it: `command_result`
/// events left among the timeline's other events.
fn unjoined_results(timeline: &Value) -> Vec<Value> {
    timeline["events"]
        .as_array()
        .unwrap_or_else(|| panic!("a list of events: {timeline}"))
        .iter()
        .filter(|e| e["kind"] == "command_result")
        .cloned()
        .collect()
}

/// `\lo_import` and `\lo_export` run lo_creat/lo_open/lowrite/loread/
/// lo_close as fast-path FunctionCalls: the bytes cross unchanged, each
/// call is judged (refused without the permit) and recorded with its result.
#[test]
fn large_objects_cross_as_function_calls_and_every_call_is_recorded() {
    let lab = lab();
    let (pg, gw) = (&lab.pg, &lab.gw);
    let dir = tempfile::tempdir().unwrap();
    let original = dir.path().join("original.bin");
    let exported = dir.path().join("exported.bin");
    let mut data = vec![0u8; 300 * 1024 + 17];
    rand::rng().fill_bytes(&mut data);
    std::fs::write(&original, &data).unwrap();
    let import = format!("\\lo_import '{}'", original.display());

    // Under the default pack a fast-path call cannot be classified: review,
    // and with approvals off, refused.
    let out = psql(&gw.conninfo("alice", "lab"), &import, &[]);
    let stderr = out.expect_failure();
    assert!(stderr.contains("statement needs approval"), "{out:?}");

    let out = psql(&gw.conninfo("probe", "lab"), &import, &[]);
    let oid: u32 = out
        .expect_success()
        .trim()
        .strip_prefix("lo_import ")
        .and_then(|oid| oid.parse().ok())
        .unwrap_or_else(|| panic!("psql prints `lo_import OID`: {out:?}"));
    assert_eq!(
        pg.psql_admin_db("lab", &format!("SELECT octet_length(lo_get({oid}))")),
        data.len().to_string(),
        "the large object upstream has every byte"
    );
    let out = psql(
        &gw.conninfo("probe", "lab"),
        &format!("\\lo_export {oid} '{}'", exported.display()),
        &[],
    );
    assert_eq!(out.expect_success().trim(), "lo_export", "{out:?}");
    let back = std::fs::read(&exported).expect("psql wrote the exported file");
    assert_eq!(back.len(), data.len());
    assert!(
        back == data,
        "the exported bytes differ from the imported ones"
    );

    // The functions' OIDs, to name the recorded calls.
    let names: std::collections::HashMap<String, String> = pg
        .psql_admin(
            "SELECT oid || ' ' || proname FROM pg_proc WHERE pronamespace = 'pg_catalog'::regnamespace AND proname IN ('lo_creat', 'lo_create', 'lo_open', 'lowrite', 'loread', 'lo_close')",
        )
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(oid, name)| (format!("FUNCTION CALL oid={oid}"), name.to_owned()))
        .collect();
    let sessions = sessions_of(gw, "probe", "lab");
    assert_eq!(
        sessions.len(),
        2,
        "import and export sessions: {sessions:?}"
    );
    let mut per_session: Vec<Vec<String>> = Vec::new();
    // The data argument of every lowrite call, in order (binary: `\x` hex).
    let mut written = String::new();
    for session in &sessions {
        let t = timeline(gw, session);
        let mut called = Vec::new();
        for c in commands(&t).iter().filter(|c| c["via"] == "functioncall") {
            let text = c["text"].as_str().unwrap_or_default();
            let name = names
                .get(text)
                .unwrap_or_else(|| panic!("a large-object function: {c}"));
            assert_eq!(c["decision"]["verdict"], "allow", "{c}");
            assert!(
                c["result"].is_object(),
                "the call's result is recorded: {c}"
            );
            assert!(
                c["result"]["error_code"].is_null(),
                "the call succeeded: {c}"
            );
            if name == "lowrite" {
                let data = c["params"][1].as_str().unwrap_or_default();
                written.push_str(
                    data.strip_prefix("\\x")
                        .unwrap_or_else(|| panic!("binary data as hex: {c}")),
                );
            }
            called.push(name.clone());
        }
        assert!(unjoined_results(&t).is_empty(), "{t}");
        per_session.push(called);
    }
    let import_calls = per_session
        .iter()
        .find(|calls| calls.iter().any(|n| n == "lowrite"))
        .unwrap_or_else(|| panic!("a session with lowrite calls: {per_session:?}"));
    let export_calls = per_session
        .iter()
        .find(|calls| calls.iter().any(|n| n == "loread"))
        .unwrap_or_else(|| panic!("a session with loread calls: {per_session:?}"));
    for name in ["lo_creat", "lo_open", "lowrite", "lo_close"] {
        assert!(
            import_calls.iter().any(|n| n == name),
            "import called {name}: {import_calls:?}"
        );
    }
    for name in ["lo_open", "loread", "lo_close"] {
        assert!(
            export_calls.iter().any(|n| n == name),
            "export called {name}: {export_calls:?}"
        );
    }
    // The calls' arguments are recorded like bind parameters: the written
    // chunks add up to the imported file.
    let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        written == hex,
        "the recorded lowrite arguments are the file"
    );
}

/// On a masked connection the binary arguments of a fast-path call (hex
/// to a detector, so unmaskable) are recorded by size only: a file of
/// e-mail addresses written through `\lo_import` leaves no address in the
/// recording.
#[test]
fn binary_function_call_arguments_are_not_recorded_on_a_masked_connection() {
    let lab = lab_with(
        "[[masking]]\nname = \"mails\"\nconnections = [\"lab\"]\ndetectors = [\"email\"]\nstrategy = \"redact\"",
    );
    let gw = &lab.gw;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mails.txt");
    std::fs::write(&file, "jane.roe@example.com\n".repeat(100)).unwrap();
    let out = psql(
        &gw.conninfo("probe", "lab"),
        &format!("\\lo_import '{}'", file.display()),
        &[],
    );
    assert!(out.expect_success().starts_with("lo_import "), "{out:?}");
    let t = timeline(gw, &only_session(gw, "probe", "lab"));
    let text = t.to_string();
    let hex: String = b"jane.roe".iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        !text.contains(&hex),
        "the data went into the recording: {text}"
    );
    assert!(!text.contains("jane.roe"), "{text}");
    let by_size = commands(&t)
        .iter()
        .filter(|c| c["via"] == "functioncall")
        .flat_map(|c| c["params"].as_array().cloned().unwrap_or_default())
        .filter(|p| {
            p.as_str()
                .is_some_and(|p| p.ends_with("not recorded: masked connection>"))
        })
        .count();
    assert!(by_size > 0, "binary arguments recorded by size: {text}");
}

/// A NoticeResponse raised upstream reaches the client, and the statement
/// still completes.
#[test]
fn notices_from_the_upstream_reach_psql() {
    let lab = lab();
    let gw = &lab.gw;
    let out = psql(
        &gw.conninfo("probe", "lab"),
        "DO $$ BEGIN RAISE NOTICE 'hello %', 42; END $$;",
        &[],
    );
    assert_eq!(out.expect_success().trim(), "DO", "{out:?}");
    assert!(
        out.stderr.lines().any(|l| l == "NOTICE:  hello 42"),
        "{out:?}"
    );
}

/// Binds a named portal on SERIES in a transaction and fetches it three
/// rows at a time until an Execute returns nothing. Returns each Execute's
/// rows.
fn fetch_series_in_chunks_of_three(gw: &Gateway) -> Vec<Vec<i32>> {
    rt().block_on(async {
        let mut c = connect(gw, "alice", "lab").await;
        let tx = c.transaction().await.unwrap();
        let portal = tx.bind(SERIES, &[]).await.unwrap();
        let mut chunks: Vec<Vec<i32>> = Vec::new();
        loop {
            let rows = tx.query_portal(&portal, 3).await.unwrap();
            let values: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
            let done = values.is_empty();
            chunks.push(values);
            if done {
                break;
            }
            assert!(
                chunks.len() <= 5,
                "more chunks than 10 rows make: {chunks:?}"
            );
        }
        drop(portal);
        tx.commit().await.unwrap();
        chunks
    })
}

/// Executes with a row limit get PortalSuspended until the portal is
/// drained; the rows arrive in order, in chunks of the limit. The portal is
/// one statement, so one command (one policy decision), and the timeline
/// shows every step's result summed: all 10 rows, in 5 fetches, with no
/// step left over as an unjoined result.
#[test]
fn a_portal_fetched_in_steps_is_one_command_with_all_its_rows() {
    let lab = lab();
    let gw = &lab.gw;
    let chunks = fetch_series_in_chunks_of_three(gw);
    assert_eq!(
        chunks,
        vec![
            vec![1, 2, 3],
            vec![4, 5, 6],
            vec![7, 8, 9],
            vec![10],
            vec![]
        ]
    );
    let session = only_session(gw, "alice", "lab");
    let t = timeline(gw, &session);
    let executes: Vec<&Value> = commands(&t)
        .iter()
        .filter(|c| c["text"] == SERIES)
        .collect();
    assert_eq!(executes.len(), 1, "one command for the portal: {t}");
    let result = &executes[0]["result"];
    assert_eq!(result["rows"], 10, "{t}");
    assert_eq!(result["fetches"], 5, "{t}");
    assert!(result["error_code"].is_null(), "{t}");
    assert_eq!(
        unjoined_results(&t),
        Vec::<Value>::new(),
        "every result belongs to its command: {t}"
    );
    let id = session["id"].as_str().unwrap();
    let out = gw.cli(gw.token("alice"), &["sessions", "show", id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("10 rows in 5 fetches"), "{text}");
}

/// tokio-postgres closes a statement (and a portal) when it is dropped.
/// Many prepare/execute/close cycles give the right results, every Close
/// reaches the upstream (nothing is left prepared or open there), every
/// Execute is recorded with its parameters and result, and the session is
/// still healthy afterwards.
#[test]
fn closed_statements_and_portals_can_be_prepared_again_many_times() {
    const CYCLES: i32 = 200;
    let lab = lab();
    let gw = &lab.gw;
    rt().block_on(async {
        let mut c = connect(gw, "alice", "lab").await;
        for i in 0..CYCLES {
            let st = c.prepare("SELECT $1::int * 2, $2::text").await.unwrap();
            let row = c.query_one(&st, &[&i, &format!("c{i}")]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), i * 2);
            assert_eq!(row.get::<_, String>(1), format!("c{i}"));
            let tx = c.transaction().await.unwrap();
            let portal = tx.bind(&st, &[&(i + 1), &"portal"]).await.unwrap();
            let rows = tx.query_portal(&portal, 0).await.unwrap();
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].get::<_, i32>(0), (i + 1) * 2);
            drop(portal);
            // Simple protocol: its own unnamed portal is not listed.
            let open = tx
                .simple_query("SELECT count(*) FROM pg_cursors")
                .await
                .unwrap();
            assert_eq!(first_value(&open), "0", "the dropped portal was closed");
            tx.commit().await.unwrap();
            drop(st);
        }
        let prepared = c
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        assert_eq!(
            first_value(&prepared),
            "0",
            "every dropped statement was closed upstream"
        );
        let n: i64 = c
            .query_one("SELECT count(*) FROM generate_series(1, $1::int)", &[&7i32])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 7, "the session is still healthy");
    });
    let t = timeline(gw, &only_session(gw, "alice", "lab"));
    let executes: Vec<&Value> = commands(&t)
        .iter()
        .filter(|c| c["text"] == "SELECT $1::int * 2, $2::text")
        .collect();
    assert_eq!(executes.len(), 2 * CYCLES as usize, "{t}");
    for c in &executes {
        assert_eq!(c["result"]["rows"], 1, "{c}");
        assert!(c["result"]["error_code"].is_null(), "{c}");
    }
    assert_eq!(executes[0]["params"], serde_json::json!(["0", "c0"]));
    assert_eq!(
        executes.last().unwrap()["params"],
        serde_json::json!([CYCLES.to_string(), "portal"])
    );
}

/// The first column of the first row of a simple-protocol answer.
fn first_value(messages: &[tokio_postgres::SimpleQueryMessage]) -> String {
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

/// GSSENCRequest is declined with `N`, and the same connection then goes on
/// with a plain StartupMessage: cleartext password request, token,
/// AuthenticationOk, ready for a query.
#[test]
fn gssenc_request_is_declined_and_the_startup_goes_on() {
    let lab = lab();
    let gw = &lab.gw;
    let mut s = TcpStream::connect(gw.pg_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut gssenc = 8i32.to_be_bytes().to_vec();
    gssenc.extend_from_slice(&80_877_104i32.to_be_bytes());
    s.write_all(&gssenc).unwrap();
    let mut reply = [0u8; 1];
    s.read_exact(&mut reply).expect("a one-byte answer");
    assert_eq!(reply[0], b'N', "GSS encryption is declined");

    s.write_all(&startup_packet(
        PROTOCOL_3_0,
        &[("user", "alice"), ("database", "lab")],
    ))
    .unwrap();
    let (tag, body) = read_message(&mut s);
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &3i32.to_be_bytes()[..]),
        "AuthenticationCleartextPassword"
    );
    let mut password = gw.token("alice").as_bytes().to_vec();
    password.push(0);
    s.write_all(&frontend_message(b'p', &password)).unwrap();
    let (tag, body) = read_message(&mut s);
    assert_eq!(
        (tag, body.as_slice()),
        (b'R', &0i32.to_be_bytes()[..]),
        "AuthenticationOk"
    );
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read_message(&mut s);
        assert_ne!(tag, b'E', "login failed after {tags:?}");
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert!(tags.contains(&b'S'), "ParameterStatus: {tags:?}");
    assert!(tags.contains(&b'K'), "BackendKeyData: {tags:?}");

    s.write_all(&frontend_message(b'Q', b"SELECT 1\0")).unwrap();
    let mut tags = Vec::new();
    loop {
        let (tag, _) = read_message(&mut s);
        tags.push(tag);
        if tag == b'Z' {
            break;
        }
    }
    assert_eq!(tags, vec![b'T', b'D', b'C', b'Z']);
    s.write_all(&frontend_message(b'X', &[])).unwrap();
}

/// A wrong token fails with 28P01 and an unknown connection with 3D000, as
/// PostgreSQL's own codes for those failures.
#[test]
fn failed_logins_carry_postgres_sqlstates() {
    let lab = lab();
    let gw = &lab.gw;
    let addr = gw.pg_addr();
    rt().block_on(async {
        let wrong = format!(
            "host={} port={} user=alice dbname=lab password=not-the-token",
            addr.ip(),
            addr.port()
        );
        let err = tokio_pg_connect(&wrong)
            .await
            .expect_err("a wrong token is refused");
        assert_eq!(err.code(), Some(&SqlState::INVALID_PASSWORD), "{err:?}");

        let err = tokio_pg_connect(&gw.conninfo("alice", "nosuch"))
            .await
            .expect_err("an unknown connection is refused");
        assert_eq!(err.code(), Some(&SqlState::INVALID_CATALOG_NAME), "{err:?}");

        let c = connect(gw, "alice", "lab").await;
        let one: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(one, 1, "a correct login still works");
    });
}

/// The upstream's ParameterStatus reaches the client (psql's
/// SERVER_VERSION_NAME is the upstream's server_version), and
/// application_name is passed upstream and recorded with the session.
#[test]
fn parameter_status_and_application_name_cross_and_are_recorded() {
    let lab = lab();
    let (pg, gw) = (&lab.pg, &lab.gw);
    let upstream_version = pg.psql_admin("SHOW server_version");
    assert!(!upstream_version.is_empty());
    let out = psql_script(
        &format!("{} application_name=probe-app", gw.conninfo("alice", "lab")),
        "\\echo :SERVER_VERSION_NAME\nSHOW application_name;\n",
        &[],
    );
    out.expect_success();
    assert_eq!(
        out.lines(),
        vec![upstream_version.as_str(), "probe-app"],
        "{out:?}"
    );
    let session = only_session(gw, "alice", "lab");
    assert_eq!(session["application_name"], "probe-app", "{session}");
}

/// After traffic (including a failing statement), `/metrics` answers
/// without a token and counts sessions, commands, bytes both ways, errors
/// and per-command latency.
#[test]
fn metrics_count_sessions_commands_bytes_errors_and_latency() {
    let lab = lab();
    let gw = &lab.gw;
    let ci = gw.conninfo("alice", "lab");
    psql(&ci, "CREATE TABLE m (id int)", &[]).expect_success();
    psql(
        &ci,
        "INSERT INTO m SELECT generate_series(1, 100); SELECT count(*) FROM m",
        &[],
    )
    .expect_success();
    let out = psql(&ci, "SELECT 1/0", &[]);
    assert!(out.expect_failure().contains("division by zero"), "{out:?}");

    let (status, text) = http_get(gw.api_addr(), "/metrics");
    assert_eq!(status, 200, "{text}");
    let value = |name: &str, labels: &[(&str, &str)]| {
        sample(&text, name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in:\n{text}"))
    };
    assert!(value("airlock_sessions_total", &[]) >= 3.0, "{text}");
    assert!(
        value("airlock_connections_total", &[("protocol", "postgres")]) >= 3.0,
        "{text}"
    );
    assert!(
        value("airlock_commands_total", &[("verdict", "allow")]) >= 3.0,
        "{text}"
    );
    for direction in ["from_client", "to_client"] {
        assert!(
            value(
                "airlock_bytes_total",
                &[("protocol", "postgres"), ("direction", direction)]
            ) > 0.0,
            "{direction}: {text}"
        );
    }
    assert_eq!(
        value("airlock_command_errors_total", &[("protocol", "postgres")]),
        1.0,
        "only SELECT 1/0 failed: {text}"
    );
    let pg_label = [("protocol", "postgres")];
    let count = value("airlock_command_duration_seconds_count", &pg_label);
    assert!(count >= 3.0, "{text}");
    assert!(
        value("airlock_command_duration_seconds_sum", &pg_label) > 0.0,
        "{text}"
    );
    assert_eq!(
        value(
            "airlock_command_duration_seconds_bucket",
            &[("protocol", "postgres"), ("le", "+Inf")]
        ),
        count,
        "a histogram: {text}"
    );
}

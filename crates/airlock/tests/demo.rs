//! `airlock demo`, the one-command quick start, run as a newcomer would:
//! start it, paste the printed psql line, see masked PII and policy at work,
//! then Ctrl-C and find everything cleaned up.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use support::*;

#[test]
fn demo_starts_serves_masks_and_cleans_up() {
    let _ = pg_bindir(); // fails with an install hint when PostgreSQL is missing
    let mut child = Command::new(env!("CARGO_BIN_EXE_airlock"))
        .args(["demo", "--port", "0", "--api-port", "0"])
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start airlock demo");
    let stdout = child.stdout.take().unwrap();
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("demo stdout");
        let ready = line.starts_with("airlock ready");
        lines.push(line);
        if ready {
            break;
        }
    }
    let text = lines.join("\n");
    if !text.contains("airlock ready") {
        // Stdout closed: the demo exited. Say why.
        let _ = child.wait();
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        panic!("the demo never became ready:\n{text}\nstderr:\n{stderr}");
    }
    let agent_line = lines
        .iter()
        .find(|l| l.contains("user=agent"))
        .expect("a psql line for the agent")
        .trim()
        .to_string();
    // `PGPASSWORD=... psql "host=... port=... user=agent dbname=shop"`
    let password = agent_line
        .split_whitespace()
        .next()
        .unwrap()
        .trim_start_matches("PGPASSWORD=")
        .to_string();
    let conninfo = agent_line.split('"').nth(1).unwrap().to_string();
    let tmp_dir = std::env::temp_dir().join(format!("airlock-demo-{}", child.id()));
    assert!(tmp_dir.exists(), "demo files in {}", tmp_dir.display());

    let out = psql(
        &conninfo,
        "SELECT email, ssn FROM customers WHERE id = 1",
        &[("PGPASSWORD", &password)],
    );
    assert_eq!(out.expect_success().trim(), "j****@*****.com|***-**-6789");
    let out = psql(
        &conninfo,
        "DROP TABLE customers",
        &[("PGPASSWORD", &password)],
    );
    assert!(out.stderr.contains("AI agents may not DROP"), "{out:?}");

    // Ctrl-C stops everything and removes the files.
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "demo exits cleanly on Ctrl-C: {exit}");
    assert!(!tmp_dir.exists(), "demo files removed");
}

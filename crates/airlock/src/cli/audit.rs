//! `airlock audit verify`: asks the API to walk every session's hash chain and
//! reports the result; any problem makes the command exit with status 1.

use airlock_control::store::VerifyReport;
use clap::Subcommand;

use super::Failure;
use super::client::{ApiClient, print_json};
use super::table::Table;

#[derive(Debug, Subcommand)]
pub enum AuditCmd {
    /// Check that no recorded event was altered or removed (admins and auditors).
    Verify {
        /// Print the API's JSON report instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: AuditCmd) -> anyhow::Result<()> {
    let client = ApiClient::from_env()?;
    match cmd {
        AuditCmd::Verify { json } => {
            let value = client.get_value(&["api", "audit", "verify"], &[]).await?;
            let report: VerifyReport = serde_json::from_value(value.clone())?;
            if json {
                print_json(&value)?;
            } else {
                print!("{}", report_text(&report));
            }
            if report.is_ok() {
                Ok(())
            } else {
                // Already reported above; main only sets the exit status.
                Err(Failure(1).into())
            }
        }
    }
}

fn report_text(report: &VerifyReport) -> String {
    if report.is_ok() {
        return format!(
            "audit chain OK: {} sessions, {} events verified\n",
            report.sessions, report.events
        );
    }
    let mut affected: Vec<&str> = report
        .problems
        .iter()
        .map(|p| p.session_id.as_str())
        .collect();
    affected.sort_unstable();
    affected.dedup();
    let mut out = format!(
        "audit chain BROKEN: {} problem(s) in {} session(s); {} sessions, {} events checked\n\n",
        report.problems.len(),
        affected.len(),
        report.sessions,
        report.events
    );
    // Full ids: these are what an investigator searches for.
    let mut t = Table::new(["SESSION", "SEQ", "PROBLEM"]).align_right(1);
    for p in &report.problems {
        t.row([
            p.session_id.clone(),
            p.seq.map(|s| s.to_string()).unwrap_or_else(|| "-".into()),
            p.problem.clone(),
        ]);
    }
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_control::store::Problem;

    #[test]
    fn ok_report_is_one_line() {
        let report = VerifyReport {
            sessions: 2,
            events: 10,
            problems: vec![],
        };
        assert_eq!(
            report_text(&report),
            "audit chain OK: 2 sessions, 10 events verified\n"
        );
    }

    #[test]
    fn problems_are_listed_with_full_session_ids() {
        let id = "0193a1b2-0000-7000-8000-000000000001";
        let report = VerifyReport {
            sessions: 2,
            events: 9,
            problems: vec![
                Problem {
                    session_id: id.into(),
                    seq: Some(3),
                    problem: "event 3 is missing".into(),
                },
                Problem {
                    session_id: id.into(),
                    seq: None,
                    problem: "no chain head".into(),
                },
            ],
        };
        let text = report_text(&report);
        assert!(
            text.starts_with("audit chain BROKEN: 2 problem(s) in 1 session(s)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("{id}    3  event 3 is missing")),
            "{text}"
        );
        assert!(
            text.contains(&format!("{id}    -  no chain head")),
            "{text}"
        );
    }
}

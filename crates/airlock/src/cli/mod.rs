//! The operator CLI: subcommands that talk to the REST API (`client`), print
//! tables for people and JSON for scripts (`table`).

pub mod access;
pub mod approvals;
pub mod audit;
pub mod client;
pub mod policy;
pub mod sessions;
pub mod table;

/// An error already reported to the user; exit with this code.
#[derive(Debug)]
pub struct Failure(pub u8);

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}", self.0)
    }
}

impl std::error::Error for Failure {}

//! The vocabulary shared by adapters, the pipeline and the control plane.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Wire protocol of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Postgres,
    Mysql,
    Ssh,
    Http,
    Kubernetes,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Postgres => "postgres",
            Protocol::Mysql => "mysql",
            Protocol::Ssh => "ssh",
            Protocol::Http => "http",
            Protocol::Kubernetes => "kubernetes",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What kind of principal an identity is. Only humans count as approvers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    Human,
    Agent,
    Service,
}

impl IdentityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityKind::Human => "human",
            IdentityKind::Agent => "agent",
            IdentityKind::Service => "service",
        }
    }
}

/// An authenticated principal. Carries no secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub name: String,
    pub kind: IdentityKind,
    pub groups: Vec<String>,
}

impl Identity {
    pub fn in_group(&self, group: &str) -> bool {
        self.groups.iter().any(|g| g == group)
    }
}

/// The policy-visible facts of a connection (never its credential).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionInfo {
    pub name: String,
    pub protocol: Protocol,
    pub tags: Vec<String>,
}

/// One client session through the gateway.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    pub id: Uuid,
    pub identity: Arc<Identity>,
    pub connection: Arc<ConnectionInfo>,
    pub client_addr: SocketAddr,
    pub application_name: Option<String>,
    pub tls: bool,
    pub started_at: SystemTime,
}

/// How a command reached the gateway; adapters pick the closest one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandVia {
    /// PostgreSQL simple query (`Q`), possibly several statements.
    SimpleQuery,
    /// PostgreSQL extended protocol, judged at Execute with its bind parameters.
    Extended,
    /// PostgreSQL FunctionCall (`F`) by OID.
    FunctionCall,
}

impl CommandVia {
    /// The name recorded in audit events (`simplequery`, `extended`, `functioncall`).
    pub fn as_str(self) -> &'static str {
        match self {
            CommandVia::SimpleQuery => "simplequery",
            CommandVia::Extended => "extended",
            CommandVia::FunctionCall => "functioncall",
        }
    }
}

/// What an adapter hands the pipeline for one command.
#[derive(Debug, Clone)]
pub struct CommandInput {
    /// The statement text exactly as the client sent it.
    pub text: Arc<str>,
    /// Bind parameters rendered for humans and policy (`None` = SQL NULL).
    pub params: Vec<Option<String>>,
    pub via: CommandVia,
}

/// Coarse class of what a statement does; policy actions are built from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionClass {
    Read,
    Write,
    Ddl,
    Admin,
    Tx,
    Other,
    Unknown,
}

impl ActionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ActionClass::Read => "read",
            ActionClass::Write => "write",
            ActionClass::Ddl => "ddl",
            ActionClass::Admin => "admin",
            ActionClass::Tx => "tx",
            ActionClass::Other => "other",
            ActionClass::Unknown => "unknown",
        }
    }

    /// The Cedar action id for SQL statements of this class, e.g. `sql:read`.
    pub fn sql_action(self) -> &'static str {
        match self {
            ActionClass::Read => "sql:read",
            ActionClass::Write => "sql:write",
            ActionClass::Ddl => "sql:ddl",
            ActionClass::Admin => "sql:admin",
            ActionClass::Tx => "sql:tx",
            ActionClass::Other => "sql:other",
            ActionClass::Unknown => "sql:unknown",
        }
    }
}

/// Facts about one SQL statement, as policy sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlStatement {
    /// `select`, `insert`, `drop_table`, ... or `unknown`.
    pub kind: String,
    pub class: ActionClass,
    pub tables_read: Vec<String>,
    pub tables_written: Vec<String>,
    /// For UPDATE/DELETE: whether a WHERE clause is present. `None` otherwise.
    pub has_where: Option<bool>,
    /// Functions called anywhere in the statement (lower-case, unqualified).
    pub functions: Vec<String>,
    /// The statement's own text (one statement of a multi-statement string).
    pub text: String,
    /// Why classification fell back to `unknown`, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Classification of a whole command: one entry per statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Classification {
    pub statements: Vec<SqlStatement>,
}

/// The three outcomes of policy, strictest last (`Ord` follows strictness).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allow,
    Review,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Review => "review",
            Verdict::Deny => "deny",
        }
    }
}

/// A policy decision with what determined it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub verdict: Verdict,
    /// The Cedar action that was evaluated (for multi-statement commands, the
    /// one of the strictest statement).
    pub action: String,
    /// Ids of the policies that determined the verdict.
    pub policies: Vec<String>,
    /// Message for the client (`@reason`), if any.
    pub reason: Option<String>,
    /// Required reviewer groups (`@reviewers`), for `Review`.
    pub reviewers: Vec<String>,
    /// Required number of distinct approvals (`@min_approvals`), for `Review`.
    pub min_approvals: u32,
    /// `@approval_ttl`, for `Review`.
    pub approval_ttl_secs: Option<u64>,
    /// Hash of the policy set that produced this decision.
    pub policy_version: String,
    /// Index of the statement that determined the verdict.
    pub statement: usize,
}

impl Decision {
    /// The message a client sees when this decision stops its command.
    pub fn client_message(&self, connection: &str) -> String {
        let base = match (&self.reason, self.verdict) {
            (Some(r), _) => r.clone(),
            (None, Verdict::Review) => {
                format!("{} on {connection} requires approval", self.action)
            }
            (None, _) => format!(
                "denied by policy: no policy permits {} on {connection}",
                self.action
            ),
        };
        if self.policies.is_empty() {
            base
        } else {
            format!("{base} (policies: {})", self.policies.join(", "))
        }
    }
}

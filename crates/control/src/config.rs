//! `airlock.toml`: the serde shape of the file and its validation into runtime
//! values. Every error names the key (and the line, where one can be found),
//! and secrets are resolved here, once, from the environment or files.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use airlock_pipeline::auth::{IdentityEntry, IdentityRegistry, sha256};
use airlock_pipeline::model::{ConnectionInfo, Identity, IdentityKind, Protocol};
use serde::Deserialize;

/// A configuration problem, phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn default_true() -> bool {
    true
}
fn default_api_listen() -> String {
    "127.0.0.1:8080".into()
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./airlock-data")
}
fn default_admin_groups() -> Vec<String> {
    vec!["admins".into()]
}
fn default_auditor_groups() -> Vec<String> {
    vec!["auditors".into()]
}

/// The file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub store: StoreSection,
    #[serde(default)]
    pub listeners: ListenersSection,
    #[serde(default)]
    pub postgres: PostgresSection,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub identities: Vec<IdentitySection>,
    #[serde(default)]
    pub connections: Vec<ConnectionSection>,
    #[serde(default)]
    pub masking: Vec<airlock_pipeline::mask::MaskRuleConfig>,
    /// Custom masking detectors: `name = 'regex'`.
    #[serde(default)]
    pub masking_detectors: BTreeMap<String, String>,
    #[serde(default)]
    pub masking_options: MaskingOptionsSection,
    /// Human-in-the-loop approvals and just-in-time access.
    #[serde(default)]
    pub approvals: ApprovalsSection,
    /// Where approval notifications go (`[[notify]]`, any number).
    #[serde(default)]
    pub notify: Vec<NotifySection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    #[serde(default = "default_api_listen")]
    pub api_listen: String,
    /// Base URL people use to reach the API/console (links in notices).
    pub public_url: Option<String>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default = "default_admin_groups")]
    pub admin_groups: Vec<String>,
    #[serde(default = "default_auditor_groups")]
    pub auditor_groups: Vec<String>,
    /// `text` (default) or `json` log lines on stderr.
    #[serde(default)]
    pub log_format: LogFormat,
    /// Threads that run client sessions (1–1024; default one per CPU).
    pub session_threads: Option<u16>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            api_listen: default_api_listen(),
            public_url: None,
            data_dir: default_data_dir(),
            admin_groups: default_admin_groups(),
            auditor_groups: default_auditor_groups(),
            log_format: LogFormat::Text,
            session_threads: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    /// `sqlite://PATH`; defaults to `sqlite://<data_dir>/airlock.db`.
    pub url: Option<String>,
    /// `full` (fsync every group commit, the default) or `normal`.
    #[serde(default)]
    pub sync: SyncSetting,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersSection {
    pub postgres: Option<String>,
}

fn default_max_message() -> usize {
    64 * 1024 * 1024
}

/// PostgreSQL's own `authentication_timeout` default.
fn default_login_timeout() -> String {
    "60s".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSection {
    /// PEM certificate chain for client-side TLS; self-signed if absent.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that do not use TLS, even from loopback.
    #[serde(default)]
    pub require_tls: bool,
    /// Accept cleartext passwords (tokens) without TLS from non-loopback
    /// clients. Off by default: tokens would cross the network in clear.
    #[serde(default)]
    pub allow_cleartext_without_tls: bool,
    /// Largest protocol message accepted from a client or upstream.
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
    /// How long a client may take from connecting to sending its password
    /// (startup packet and TLS handshake included), e.g. `60s`.
    #[serde(default = "default_login_timeout")]
    pub login_timeout: String,
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            allow_cleartext_without_tls: false,
            max_message_bytes: default_max_message(),
            login_timeout: default_login_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySection {
    /// A Cedar policy file; the built-in default pack applies without it.
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingOptionsSection {
    /// Environment variable holding the key for the `hash` strategy.
    pub hash_key_env: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    pub name: String,
    pub kind: IdentityKind,
    #[serde(default)]
    pub groups: Vec<String>,
    pub token_env: Option<String>,
    pub token_sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamTls {
    Disable,
    #[default]
    Prefer,
    Require,
    VerifyFull,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionSection {
    pub name: String,
    pub protocol: Protocol,
    pub host: String,
    pub port: u16,
    pub database: Option<String>,
    pub username: Option<String>,
    pub password_env: Option<String>,
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub tls: UpstreamTls,
    /// CA bundle (PEM) for `verify-full`; the system roots otherwise.
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the upstream certificate; defaults to `host`.
    pub tls_server_name: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// A resolved upstream target. `password` is the only place the upstream
/// credential lives; `Debug` never prints it.
#[derive(Clone)]
pub struct Target {
    pub info: ConnectionInfo,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: Option<Vec<u8>>,
    pub tls: UpstreamTls,
    pub ca_file: Option<PathBuf>,
    pub tls_server_name: String,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.info.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .finish()
    }
}

/// Validated configuration, ready to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: FileConfig,
    pub path: Option<PathBuf>,
    pub api_listen: SocketAddr,
    pub public_url: String,
    pub data_dir: PathBuf,
    pub store_url: String,
    pub postgres_listen: Option<SocketAddr>,
    /// `[postgres] login_timeout`, parsed.
    pub postgres_login_timeout: std::time::Duration,
    pub identities: IdentityRegistry,
    pub targets: Vec<Target>,
    pub masking: airlock_pipeline::mask::MaskingConfig,
    pub approvals: ApprovalsConfig,
    pub notify: Vec<NotifyTarget>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        let mut cfg = Self::from_toml(&src, &path.display().to_string(), &|k| {
            std::env::var(k).ok()
        })?;
        // Relative paths in the file are relative to the file, not the cwd.
        if let Some(dir) = path.parent() {
            cfg.rebase_paths(dir);
        }
        check_notify_ca_files(&cfg.notify, &src, &path.display().to_string())?;
        cfg.path = Some(path.to_path_buf());
        Ok(cfg)
    }

    fn rebase_paths(&mut self, dir: &Path) {
        let rebase = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        rebase(&mut self.data_dir);
        self.file.server.data_dir = self.data_dir.clone();
        if self.file.store.url.is_none() {
            self.store_url = format!("sqlite://{}", self.data_dir.join("airlock.db").display());
        }
        if let Some(p) = self.file.policy.file.as_mut() {
            rebase(p);
        }
        if let Some(p) = self.file.postgres.tls_cert.as_mut() {
            rebase(p);
        }
        if let Some(p) = self.file.postgres.tls_key.as_mut() {
            rebase(p);
        }
        for t in &mut self.targets {
            if let Some(p) = t.ca_file.as_mut() {
                rebase(p);
            }
        }
        for n in &mut self.notify {
            if let Some(p) = n.ca_file_mut() {
                rebase(p);
            }
        }
    }

    /// Parses and validates TOML text. `env` resolves environment variables
    /// (injected so tests need not touch the process environment).
    pub fn from_toml(
        src: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(src).map_err(|e| {
            let msg = e.message().to_string();
            let loc = e
                .span()
                .map(|s| {
                    let (line, col) = line_col(src, s.start);
                    format!(":{line}:{col}")
                })
                .unwrap_or_default();
            ConfigError(format!("{origin}{loc}: {msg}"))
        })?;
        let loc = Locator { src, origin };

        let api_listen = parse_addr(&file.server.api_listen)
            .map_err(|e| loc.err("server", None, "api_listen", &e))?;
        let postgres_listen = match &file.listeners.postgres {
            Some(a) => Some(parse_addr(a).map_err(|e| loc.err("listeners", None, "postgres", &e))?),
            None => None,
        };
        let public_url = file
            .server
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{api_listen}"))
            .trim_end_matches('/')
            .to_string();
        let data_dir = file.server.data_dir.clone();
        let store_url = match &file.store.url {
            Some(u) => {
                if !u.starts_with("sqlite:") {
                    return Err(loc.err(
                        "store",
                        None,
                        "url",
                        "only sqlite:// stores are supported in this version",
                    ));
                }
                u.clone()
            }
            None => format!("sqlite://{}", data_dir.join("airlock.db").display()),
        };
        if file
            .server
            .session_threads
            .is_some_and(|n| !(1..=1024).contains(&n))
        {
            return Err(loc.err(
                "server",
                None,
                "session_threads",
                "must be between 1 and 1024",
            ));
        }
        if file.postgres.max_message_bytes < 1024 {
            return Err(loc.err(
                "postgres",
                None,
                "max_message_bytes",
                "must be at least 1024",
            ));
        }
        let postgres_login_timeout = parse_positive_duration(&file.postgres.login_timeout)
            .map_err(|e| loc.err("postgres", None, "login_timeout", &e))?;
        if file.postgres.tls_cert.is_some() != file.postgres.tls_key.is_some() {
            return Err(loc.err(
                "postgres",
                None,
                "tls_cert",
                "tls_cert and tls_key must be given together",
            ));
        }

        // Identities.
        let mut seen = HashSet::new();
        let mut entries = Vec::new();
        for (i, id) in file.identities.iter().enumerate() {
            let at = |key: &str, msg: &str| loc.err("identities", Some(i), key, msg);
            if id.name.is_empty()
                || !id
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
            {
                return Err(at(
                    "name",
                    "must be non-empty and use only letters, digits, '-', '_', '.', '@'",
                ));
            }
            if !seen.insert(id.name.clone()) {
                return Err(at(
                    "name",
                    &format!("identity '{}' is defined twice", id.name),
                ));
            }
            let token_sha256 = match (&id.token_env, &id.token_sha256) {
                (Some(var), None) => match env(var) {
                    Some(tok) if !tok.is_empty() => sha256(tok.as_bytes()),
                    _ => {
                        return Err(at(
                            "token_env",
                            &format!(
                                "environment variable {var} (token of identity '{}') is not set",
                                id.name
                            ),
                        ));
                    }
                },
                (None, Some(hexed)) => {
                    let mut out = [0u8; 32];
                    hex::decode_to_slice(hexed.trim(), &mut out).map_err(|_| {
                        at(
                            "token_sha256",
                            "must be 64 hex digits (the SHA-256 of the token)",
                        )
                    })?;
                    out
                }
                (Some(_), Some(_)) => {
                    return Err(at("token_env", "give token_env or token_sha256, not both"));
                }
                (None, None) => {
                    return Err(at(
                        "name",
                        &format!("identity '{}' needs token_env or token_sha256", id.name),
                    ));
                }
            };
            entries.push(IdentityEntry {
                identity: std::sync::Arc::new(Identity {
                    name: id.name.clone(),
                    kind: id.kind,
                    groups: id.groups.clone(),
                }),
                token_sha256,
            });
        }

        // Connections.
        let mut seen = HashSet::new();
        let mut targets = Vec::new();
        for (i, c) in file.connections.iter().enumerate() {
            let at = |key: &str, msg: &str| loc.err("connections", Some(i), key, msg);
            if c.name.is_empty()
                || !c
                    .name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
            {
                return Err(at(
                    "name",
                    "must be non-empty and use only letters, digits, '-', '_', '.'",
                ));
            }
            if !seen.insert(c.name.clone()) {
                return Err(at(
                    "name",
                    &format!("connection '{}' is defined twice", c.name),
                ));
            }
            if c.protocol != Protocol::Postgres {
                return Err(at(
                    "protocol",
                    &format!(
                        "protocol '{}' is not supported yet (postgres is)",
                        c.protocol
                    ),
                ));
            }
            let username = c
                .username
                .clone()
                .ok_or_else(|| at("username", "is required for postgres connections"))?;
            let database = c.database.clone().unwrap_or_else(|| username.clone());
            let password = match (&c.password_env, &c.password_file) {
                (Some(var), None) => match env(var) {
                    Some(p) => Some(p.into_bytes()),
                    None => {
                        return Err(at(
                            "password_env",
                            &format!(
                                "environment variable {var} (password of connection '{}') is not set",
                                c.name
                            ),
                        ));
                    }
                },
                (None, Some(path)) => {
                    let p = std::fs::read(path).map_err(|e| {
                        at(
                            "password_file",
                            &format!("cannot read {}: {}", path.display(), e.kind()),
                        )
                    })?;
                    let trimmed = p.strip_suffix(b"\n").unwrap_or(&p);
                    let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
                    Some(trimmed.to_vec())
                }
                (Some(_), Some(_)) => {
                    return Err(at(
                        "password_env",
                        "give password_env or password_file, not both",
                    ));
                }
                (None, None) => None,
            };
            if c.tls == UpstreamTls::VerifyFull && c.ca_file.is_none() {
                // System roots are used; that is fine, but say nothing here.
            }
            targets.push(Target {
                info: ConnectionInfo {
                    name: c.name.clone(),
                    protocol: c.protocol,
                    tags: c.tags.clone(),
                },
                host: c.host.clone(),
                port: c.port,
                database,
                username,
                password,
                tls: c.tls,
                ca_file: c.ca_file.clone(),
                tls_server_name: c.tls_server_name.clone().unwrap_or_else(|| c.host.clone()),
            });
        }

        for (i, rule) in file.masking.iter().enumerate() {
            for name in &rule.connections {
                if !seen.contains(name.as_str()) {
                    return Err(loc.err(
                        "masking",
                        Some(i),
                        "connections",
                        &format!("unknown connection '{name}'"),
                    ));
                }
            }
        }
        let hash_key = match &file.masking_options.hash_key_env {
            Some(var) => Some(
                env(var)
                    .ok_or_else(|| {
                        loc.err(
                            "masking_options",
                            None,
                            "hash_key_env",
                            &format!("environment variable {var} is not set"),
                        )
                    })?
                    .into_bytes(),
            ),
            None => None,
        };
        let masking = airlock_pipeline::mask::MaskingConfig {
            rules: file.masking.clone(),
            custom_detectors: file.masking_detectors.clone(),
            hash_key,
        };
        airlock_pipeline::mask::Masker::new(&masking)
            .map_err(|e| ConfigError(format!("{origin}: masking: {e}")))?;
        let approvals = approvals_config(&file, &loc)?;
        let notify = notify_targets(&file, &loc, env)?;

        Ok(Config {
            api_listen,
            public_url,
            data_dir,
            store_url,
            postgres_listen,
            postgres_login_timeout,
            identities: IdentityRegistry::new(entries),
            targets,
            masking,
            approvals,
            notify,
            path: None,
            file,
        })
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("'{s}' is not a valid listen address (host:port): {e}"))?
        .next()
        .ok_or_else(|| format!("'{s}' resolves to no address"))
}

fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let before = &src[..offset.min(src.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map(|p| offset - p).unwrap_or(offset + 1);
    (line, col)
}

/// Finds the line of a key for error messages, by scanning the source for
/// the section header (the n-th `[[array]]` entry) and then the key.
struct Locator<'a> {
    src: &'a str,
    origin: &'a str,
}

impl Locator<'_> {
    fn line_of(&self, section: &str, index: Option<usize>, key: &str) -> Option<usize> {
        let header = match index {
            Some(_) => format!("[[{section}]]"),
            None => format!("[{section}]"),
        };
        let mut seen = 0usize;
        let mut in_section = false;
        for (n, raw) in self.src.lines().enumerate() {
            let line = raw.trim();
            if line.starts_with('[') {
                in_section = false;
                if line == header {
                    if index.is_none_or(|i| i == seen) {
                        in_section = true;
                    }
                    seen += 1;
                }
                continue;
            }
            if in_section {
                let k = line.split('=').next().unwrap_or("").trim();
                if k == key {
                    return Some(n + 1);
                }
            }
        }
        None
    }

    fn err(&self, section: &str, index: Option<usize>, key: &str, msg: &str) -> ConfigError {
        let path = match index {
            Some(i) => format!("{section}[{i}].{key}"),
            None => format!("{section}.{key}"),
        };
        match self.line_of(section, index, key) {
            Some(line) => ConfigError(format!("{}:{line}: {path}: {msg}", self.origin)),
            None => ConfigError(format!("{}: {path}: {msg}", self.origin)),
        }
    }
}

fn default_pending_ttl() -> String {
    "15m".into()
}
fn default_access_min_approvals() -> u32 {
    1
}
fn default_max_access_duration() -> String {
    "24h".into()
}

/// `[approvals]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsSection {
    /// Hold review verdicts for approval (default). With `false`, a review
    /// verdict refuses the command at once, as where no reviewer is on duty.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a request waits for reviewers before it expires (auto-deny),
    /// when the policy gives no `@approval_ttl`. Default `15m`.
    #[serde(default = "default_pending_ttl")]
    pub pending_ttl: String,
    /// Groups allowed to decide just-in-time access requests (any of them).
    /// Default: `server.admin_groups`.
    pub access_reviewers: Option<Vec<String>>,
    /// Distinct approvals an access request needs. Default 1.
    #[serde(default = "default_access_min_approvals")]
    pub access_min_approvals: u32,
    /// Longest access anyone may ask for. Default `24h`.
    #[serde(default = "default_max_access_duration")]
    pub max_access_duration: String,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        ApprovalsSection {
            enabled: true,
            pending_ttl: default_pending_ttl(),
            access_reviewers: None,
            access_min_approvals: default_access_min_approvals(),
            max_access_duration: default_max_access_duration(),
        }
    }
}

/// Validated `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    pub enabled: bool,
    pub pending_ttl: std::time::Duration,
    pub access_reviewers: Vec<String>,
    pub access_min_approvals: u32,
    pub max_access_duration: std::time::Duration,
}

/// The kind of a `[[notify]]` entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    Webhook,
    Slack,
    Email,
}

impl NotifyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Webhook => "webhook",
            NotifyKind::Slack => "slack",
            NotifyKind::Email => "email",
        }
    }
}

fn default_smtp_port() -> u16 {
    25
}

/// One `[[notify]]` entry as written. One flat shape for every `type`, so an
/// error can name the exact key; keys of another type are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    #[serde(rename = "type")]
    pub kind: NotifyKind,
    /// webhook: where to POST the signed JSON.
    pub url: Option<String>,
    /// webhook: environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// slack: environment variable holding the incoming-webhook URL.
    pub webhook_url_env: Option<String>,
    /// slack: environment variable holding the app's signing secret.
    pub signing_secret_env: Option<String>,
    /// slack: Slack user id -> Airlock identity, for the Approve/Reject buttons.
    pub users: Option<BTreeMap<String, String>>,
    /// email: the SMTP relay.
    pub smtp_host: Option<String>,
    #[serde(default = "default_smtp_port")]
    pub smtp_port: u16,
    pub from: Option<String>,
    pub to: Option<Vec<String>>,
    pub username_env: Option<String>,
    pub password_env: Option<String>,
    /// email: upgrade the connection with STARTTLS before anything else.
    #[serde(default)]
    pub starttls: bool,
    /// webhook, slack: a PEM file of CA certificates trusted for the
    /// `https://` URL in addition to the system's roots (a private CA).
    pub ca_file: Option<PathBuf>,
}

/// A validated notification target with its secrets resolved. `Debug`
/// never prints a secret (webhook URLs of Slack are secrets too).
#[derive(Clone)]
pub enum NotifyTarget {
    Webhook {
        url: String,
        secret: Vec<u8>,
        /// Extra CA certificates (PEM) for an `https://` URL.
        ca_file: Option<PathBuf>,
    },
    Slack {
        webhook_url: String,
        signing_secret: Vec<u8>,
        /// Slack user id -> Airlock identity name.
        users: BTreeMap<String, String>,
        /// Extra CA certificates (PEM) for an `https://` URL.
        ca_file: Option<PathBuf>,
    },
    Email(EmailTarget),
}

/// A validated `type = "email"` entry.
#[derive(Clone)]
pub struct EmailTarget {
    pub smtp_host: String,
    pub smtp_port: u16,
    pub from: String,
    pub to: Vec<String>,
    /// `(username, password)` for AUTH PLAIN.
    pub credentials: Option<(String, String)>,
    pub starttls: bool,
}

impl NotifyTarget {
    pub fn kind(&self) -> NotifyKind {
        match self {
            NotifyTarget::Webhook { .. } => NotifyKind::Webhook,
            NotifyTarget::Slack { .. } => NotifyKind::Slack,
            NotifyTarget::Email(_) => NotifyKind::Email,
        }
    }

    /// The extra CA file of an HTTP target.
    pub fn ca_file(&self) -> Option<&Path> {
        match self {
            NotifyTarget::Webhook { ca_file, .. } | NotifyTarget::Slack { ca_file, .. } => {
                ca_file.as_deref()
            }
            NotifyTarget::Email(_) => None,
        }
    }

    fn ca_file_mut(&mut self) -> Option<&mut PathBuf> {
        match self {
            NotifyTarget::Webhook { ca_file, .. } | NotifyTarget::Slack { ca_file, .. } => {
                ca_file.as_mut()
            }
            NotifyTarget::Email(_) => None,
        }
    }
}

impl std::fmt::Debug for NotifyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyTarget::Webhook { url, ca_file, .. } => f
                .debug_struct("Webhook")
                .field("url", url)
                .field("secret", &"<redacted>")
                .field("ca_file", ca_file)
                .finish(),
            NotifyTarget::Slack { users, ca_file, .. } => f
                .debug_struct("Slack")
                .field("webhook_url", &"<redacted>")
                .field("signing_secret", &"<redacted>")
                .field("users", users)
                .field("ca_file", ca_file)
                .finish(),
            NotifyTarget::Email(e) => e.fmt(f),
        }
    }
}

impl std::fmt::Debug for EmailTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("smtp_host", &self.smtp_host)
            .field("smtp_port", &self.smtp_port)
            .field("from", &self.from)
            .field("to", &self.to)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|(u, _)| (u, "<redacted>")),
            )
            .field("starttls", &self.starttls)
            .finish()
    }
}

fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 15m or 1h: {e}"))?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("'{s}' must be at least 1s"));
    }
    Ok(d)
}

fn approvals_config(file: &FileConfig, loc: &Locator<'_>) -> Result<ApprovalsConfig, ConfigError> {
    let a = &file.approvals;
    let at = |key: &str, msg: &str| loc.err("approvals", None, key, msg);
    let pending_ttl = parse_positive_duration(&a.pending_ttl).map_err(|e| at("pending_ttl", &e))?;
    let max_access_duration = parse_positive_duration(&a.max_access_duration)
        .map_err(|e| at("max_access_duration", &e))?;
    if a.access_min_approvals == 0 {
        return Err(at("access_min_approvals", "must be at least 1"));
    }
    let access_reviewers = match &a.access_reviewers {
        Some(groups) => {
            if groups.is_empty() || groups.iter().any(|g| g.trim().is_empty()) {
                return Err(at(
                    "access_reviewers",
                    "must name at least one group, and no empty names",
                ));
            }
            groups.clone()
        }
        None => file.server.admin_groups.clone(),
    };
    Ok(ApprovalsConfig {
        enabled: a.enabled,
        pending_ttl,
        access_reviewers,
        access_min_approvals: a.access_min_approvals,
        max_access_duration,
    })
}

/// A bare e-mail address: something@something, nothing that could end a
/// header or an SMTP command.
fn plausible_address(a: &str) -> bool {
    let ok_chars = !a
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "<>,;\"".contains(c));
    matches!(a.split_once('@'), Some((user, host)) if !user.is_empty() && !host.is_empty())
        && ok_chars
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Checks an http(s) URL of a notification target; true for `https://`.
/// (The scheme is matched case-insensitively, as URLs allow.)
fn check_notify_url(url: &str) -> Result<bool, String> {
    let scheme_is = |s: &str| {
        url.get(..s.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(s))
    };
    let (rest, https) = if scheme_is("http://") {
        (&url["http://".len()..], false)
    } else if scheme_is("https://") {
        (&url["https://".len()..], true)
    } else {
        return Err("must be an http:// or https:// URL".into());
    };
    if rest.is_empty() || rest.starts_with('/') || url.chars().any(char::is_whitespace) {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(https)
}

/// Checks that every notification target's `ca_file` holds at least one
/// PEM certificate, so a wrong path stops start-up instead of failing each
/// delivery. Runs once paths are relative to the config file's directory.
fn check_notify_ca_files(
    targets: &[NotifyTarget],
    src: &str,
    origin: &str,
) -> Result<(), ConfigError> {
    let loc = Locator { src, origin };
    for (i, t) in targets.iter().enumerate() {
        if let Some(path) = t.ca_file() {
            crate::notify::read_ca_file(path)
                .map_err(|e| loc.err("notify", Some(i), "ca_file", &e))?;
        }
    }
    Ok(())
}

fn notify_targets(
    file: &FileConfig,
    loc: &Locator<'_>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<NotifyTarget>, ConfigError> {
    let known: HashSet<&str> = file.identities.iter().map(|i| i.name.as_str()).collect();
    let mut out = Vec::new();
    for (i, n) in file.notify.iter().enumerate() {
        let at = |key: &str, msg: &str| loc.err("notify", Some(i), key, msg);
        let kind = n.kind.as_str();
        // Keys that belong to another type are mistakes worth naming.
        let used: &[(&str, bool)] = &[
            ("url", n.url.is_some()),
            ("secret_env", n.secret_env.is_some()),
            ("webhook_url_env", n.webhook_url_env.is_some()),
            ("signing_secret_env", n.signing_secret_env.is_some()),
            ("users", n.users.is_some()),
            ("smtp_host", n.smtp_host.is_some()),
            ("smtp_port", n.smtp_port != default_smtp_port()),
            ("from", n.from.is_some()),
            ("to", n.to.is_some()),
            ("username_env", n.username_env.is_some()),
            ("password_env", n.password_env.is_some()),
            ("starttls", n.starttls),
            ("ca_file", n.ca_file.is_some()),
        ];
        let allowed: &[&str] = match n.kind {
            NotifyKind::Webhook => &["url", "secret_env", "ca_file"],
            NotifyKind::Slack => &["webhook_url_env", "signing_secret_env", "users", "ca_file"],
            NotifyKind::Email => &[
                "smtp_host",
                "smtp_port",
                "from",
                "to",
                "username_env",
                "password_env",
                "starttls",
            ],
        };
        if let Some((key, _)) = used
            .iter()
            .find(|(key, set)| *set && !allowed.contains(key))
        {
            return Err(at(key, &format!("is not used by type = \"{kind}\"")));
        }
        // A CA file only matters for https://; with http:// it is a mistake.
        let ca_file = |https: bool| -> Result<Option<PathBuf>, ConfigError> {
            match &n.ca_file {
                Some(_) if !https => Err(at("ca_file", "is only used with an https:// URL")),
                Some(p) if p.as_os_str().is_empty() => Err(at("ca_file", "must name a file")),
                other => Ok(other.clone()),
            }
        };
        let secret = |key: &str, var: &Option<String>| -> Result<String, ConfigError> {
            let var = var
                .as_deref()
                .ok_or_else(|| at(key, &format!("is required for type = \"{kind}\"")))?;
            match env(var) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(at(key, &format!("environment variable {var} is not set"))),
            }
        };
        let target = match n.kind {
            NotifyKind::Webhook => {
                let url = n
                    .url
                    .clone()
                    .ok_or_else(|| at("url", "is required for type = \"webhook\""))?;
                let https = check_notify_url(&url).map_err(|e| at("url", &e))?;
                let ca_file = ca_file(https)?;
                let secret = secret("secret_env", &n.secret_env)?.into_bytes();
                NotifyTarget::Webhook {
                    url,
                    secret,
                    ca_file,
                }
            }
            NotifyKind::Slack => {
                let webhook_url = secret("webhook_url_env", &n.webhook_url_env)?;
                // The URL itself is secret: the error names only the variable.
                let https = check_notify_url(&webhook_url).map_err(|e| {
                    at(
                        "webhook_url_env",
                        &format!(
                            "the URL in {}: {e}",
                            n.webhook_url_env.as_deref().unwrap_or_default()
                        ),
                    )
                })?;
                let ca_file = ca_file(https)?;
                let signing_secret =
                    secret("signing_secret_env", &n.signing_secret_env)?.into_bytes();
                let users = n.users.clone().unwrap_or_default();
                if let Some((slack, name)) = users
                    .iter()
                    .find(|(_, name)| !known.contains(name.as_str()))
                {
                    return Err(at(
                        "users",
                        &format!("Slack user {slack} maps to unknown identity '{name}'"),
                    ));
                }
                NotifyTarget::Slack {
                    webhook_url,
                    signing_secret,
                    users,
                    ca_file,
                }
            }
            NotifyKind::Email => {
                let smtp_host = n
                    .smtp_host
                    .clone()
                    .filter(|h| !h.trim().is_empty())
                    .ok_or_else(|| at("smtp_host", "is required for type = \"email\""))?;
                let from = n
                    .from
                    .clone()
                    .ok_or_else(|| at("from", "is required for type = \"email\""))?;
                if !plausible_address(&from) {
                    return Err(at("from", &format!("'{from}' is not an e-mail address")));
                }
                let to = n.to.clone().unwrap_or_default();
                if to.is_empty() {
                    return Err(at("to", "must list at least one recipient"));
                }
                if let Some(bad) = to.iter().find(|a| !plausible_address(a)) {
                    return Err(at("to", &format!("'{bad}' is not an e-mail address")));
                }
                let credentials = match (&n.username_env, &n.password_env) {
                    (None, None) => None,
                    (Some(_), Some(_)) => Some((
                        secret("username_env", &n.username_env)?,
                        secret("password_env", &n.password_env)?,
                    )),
                    (Some(_), None) => {
                        return Err(at("password_env", "is required with username_env"));
                    }
                    (None, Some(_)) => {
                        return Err(at("username_env", "is required with password_env"));
                    }
                };
                if credentials.is_some() && !n.starttls && !is_loopback_host(&smtp_host) {
                    return Err(at(
                        "starttls",
                        "must be true when a password is sent to a non-loopback SMTP host",
                    ));
                }
                NotifyTarget::Email(EmailTarget {
                    smtp_host,
                    smtp_port: n.smtp_port,
                    from,
                    to,
                    credentials,
                    starttls: n.starttls,
                })
            }
        };
        out.push(target);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[server]
api_listen = "127.0.0.1:8080"
public_url = "http://127.0.0.1:8080"
data_dir = "./airlock-data"

[listeners]
postgres = "127.0.0.1:6432"

[[identities]]
name = "agent"
kind = "agent"
groups = ["agents"]
token_env = "AGENT_TOKEN"

[[identities]]
name = "alice"
kind = "human"
groups = ["dba", "reviewers"]
token_env = "ALICE_TOKEN"

[[connections]]
name = "shop"
protocol = "postgres"
host = "127.0.0.1"
port = 5432
database = "shop"
username = "shop_owner"
password_env = "SHOP_DB_PASSWORD"
tls = "prefer"            # disable | prefer | require | verify-full
tags = ["production", "pii"]
"#;

    fn env_all(k: &str) -> Option<String> {
        match k {
            "AGENT_TOKEN" => Some("agent-token".into()),
            "ALICE_TOKEN" => Some("alice-token".into()),
            "SHOP_DB_PASSWORD" => Some("hunter2".into()),
            _ => None,
        }
    }

    #[test]
    fn example_config_loads() {
        let cfg = Config::from_toml(EXAMPLE, "airlock.toml", &env_all).unwrap();
        assert_eq!(cfg.postgres_listen.unwrap().port(), 6432);
        assert_eq!(cfg.targets[0].database, "shop");
        assert_eq!(cfg.targets[0].tls, UpstreamTls::Prefer);
        assert!(cfg.identities.authenticate("agent", b"agent-token").is_ok());
        assert!(cfg.store_url.ends_with("airlock-data/airlock.db"));
        assert!(!format!("{:?}", cfg.targets[0]).contains("hunter2"));
    }

    #[test]
    fn missing_secret_env_is_named_with_line() {
        let env = |k: &str| {
            if k == "SHOP_DB_PASSWORD" {
                None
            } else {
                env_all(k)
            }
        };
        let err = Config::from_toml(EXAMPLE, "airlock.toml", &env)
            .unwrap_err()
            .0;
        assert!(err.contains("SHOP_DB_PASSWORD"), "{err}");
        assert!(err.contains("connections[0].password_env"), "{err}");
        assert!(err.starts_with("airlock.toml:29:"), "{err}");
    }

    #[test]
    fn session_threads_is_checked_and_named() {
        let with = |n: &str| {
            EXAMPLE.replace(
                "data_dir = \"./airlock-data\"",
                &format!("data_dir = \"./airlock-data\"\nsession_threads = {n}"),
            )
        };
        let cfg = Config::from_toml(&with("3"), "airlock.toml", &env_all).unwrap();
        assert_eq!(cfg.file.server.session_threads, Some(3));
        for bad in ["0", "2000"] {
            let err = Config::from_toml(&with(bad), "airlock.toml", &env_all)
                .unwrap_err()
                .0;
            assert!(err.contains("server.session_threads"), "{err}");
            assert!(err.contains("airlock.toml:6:"), "{err}");
        }
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let src = EXAMPLE.replace("tls = \"prefer\"", "tls_mode = \"prefer\"");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(err.contains("tls_mode"), "{err}");
        assert!(err.contains("airlock.toml:30:"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let src = EXAMPLE.replace("tls = \"prefer\"", "tls = \"sometimes\"");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(
            err.contains("sometimes") || err.contains("unknown variant"),
            "{err}"
        );
        assert!(err.contains(":30:"), "{err}");
    }

    #[test]
    fn bad_listen_address_is_named() {
        let src = EXAMPLE.replace("127.0.0.1:6432", "nope");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(err.contains("listeners.postgres"), "{err}");
        assert!(err.contains("airlock.toml:8:"), "{err}");
    }

    #[test]
    fn login_timeout_defaults_to_60s_and_a_bad_one_is_named() {
        let cfg = Config::from_toml(EXAMPLE, "airlock.toml", &env_all).unwrap();
        assert_eq!(
            cfg.postgres_login_timeout,
            std::time::Duration::from_secs(60)
        );
        let src = format!("{EXAMPLE}\n[postgres]\nlogin_timeout = \"5s\"\n");
        let cfg = Config::from_toml(&src, "airlock.toml", &env_all).unwrap();
        assert_eq!(
            cfg.postgres_login_timeout,
            std::time::Duration::from_secs(5)
        );
        let src = format!("{EXAMPLE}\n[postgres]\nlogin_timeout = \"soon\"\n");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(err.contains("postgres.login_timeout"), "{err}");
        let line = src.lines().count();
        assert!(err.contains(&format!("airlock.toml:{line}:")), "{err}");
    }

    #[test]
    fn duplicate_identity_refused() {
        let src = EXAMPLE.replace("name = \"alice\"", "name = \"agent\"");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(err.contains("identities[1].name"), "{err}");
    }
}

#[cfg(test)]
mod approvals_config_tests {
    use super::*;

    const BASE: &str = r#"
[[identities]]
name = "alice"
kind = "human"
groups = ["dba"]
token_env = "ALICE_TOKEN"
"#;

    fn env(k: &str) -> Option<String> {
        match k {
            "ALICE_TOKEN" => Some("alice-token".into()),
            "HOOK_SECRET" => Some("s3cret-hook".into()),
            "SLACK_URL" => Some("http://127.0.0.1:9/slack".into()),
            "SLACK_SIGNING_SECRET" => Some("s3cret-slack".into()),
            "SMTP_USER" => Some("mailer".into()),
            "SMTP_PASSWORD" => Some("s3cret-smtp".into()),
            _ => None,
        }
    }

    fn load(extra: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{BASE}{extra}"), "airlock.toml", &env).map_err(|e| e.0)
    }

    #[test]
    fn defaults_apply_without_sections() {
        let cfg = load("").unwrap();
        assert_eq!(
            cfg.approvals.pending_ttl,
            std::time::Duration::from_secs(900)
        );
        assert_eq!(cfg.approvals.access_reviewers, ["admins"]);
        assert_eq!(cfg.approvals.access_min_approvals, 1);
        assert!(cfg.notify.is_empty());
    }

    #[test]
    fn approvals_section_is_validated_with_key_and_line() {
        let cfg = load(
            "\n[approvals]\npending_ttl = \"5m\"\naccess_reviewers = [\"dba\"]\naccess_min_approvals = 2\n",
        )
        .unwrap();
        assert_eq!(
            cfg.approvals.pending_ttl,
            std::time::Duration::from_secs(300)
        );
        assert_eq!(cfg.approvals.access_reviewers, ["dba"]);
        assert_eq!(cfg.approvals.access_min_approvals, 2);

        let err = load("\n[approvals]\npending_ttl = \"soon\"\n").unwrap_err();
        assert!(
            err.starts_with("airlock.toml:9: approvals.pending_ttl:"),
            "{err}"
        );
        let err = load("\n[approvals]\naccess_min_approvals = 0\n").unwrap_err();
        assert!(err.contains("approvals.access_min_approvals"), "{err}");
        let err = load("\n[approvals]\nttl = \"5m\"\n").unwrap_err();
        assert!(err.contains("ttl") && err.contains(":9:"), "{err}");
    }

    #[test]
    fn notify_targets_resolve_their_secrets() {
        let cfg = load(
            r#"
[[notify]]
type = "webhook"
url = "http://127.0.0.1:9/hook"
secret_env = "HOOK_SECRET"

[[notify]]
type = "slack"
webhook_url_env = "SLACK_URL"
signing_secret_env = "SLACK_SIGNING_SECRET"
users = { "U123" = "alice" }

[[notify]]
type = "email"
smtp_host = "127.0.0.1"
from = "airlock@example.com"
to = ["dba@example.com"]
username_env = "SMTP_USER"
password_env = "SMTP_PASSWORD"
"#,
        )
        .unwrap();
        assert_eq!(cfg.notify.len(), 3);
        let NotifyTarget::Webhook { secret, .. } = &cfg.notify[0] else {
            panic!("webhook first");
        };
        assert_eq!(secret, b"s3cret-hook");
        let NotifyTarget::Email(email) = &cfg.notify[2] else {
            panic!("email last");
        };
        assert_eq!(email.smtp_port, 25);
        assert_eq!(
            email.credentials,
            Some(("mailer".into(), "s3cret-smtp".into()))
        );
        let shown = format!("{:?}", cfg.notify);
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(
            !shown.contains("/slack"),
            "the Slack URL is a secret: {shown}"
        );
    }

    #[test]
    fn notify_mistakes_name_key_and_line() {
        let check = |extra: &str, expected: &str| {
            let err = load(extra).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        };
        check(
            "\n[[notify]]\ntype = \"webhook\"\nurl = \"ftp://hooks.example\"\nsecret_env = \"HOOK_SECRET\"\n",
            "airlock.toml:10: notify[0].url: must be an http:// or https:// URL",
        );
        check(
            "\n[[notify]]\ntype = \"webhook\"\nurl = \"https:///x\"\nsecret_env = \"HOOK_SECRET\"\n",
            "notify[0].url: must be an http:// or https:// URL with a host",
        );
        check(
            "\n[[notify]]\ntype = \"webhook\"\nurl = \"http://h/x\"\nsecret_env = \"HOOK_SECRET\"\nca_file = \"ca.pem\"\n",
            "airlock.toml:12: notify[0].ca_file: is only used with an https:// URL",
        );
        check(
            "\n[[notify]]\ntype = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nca_file = \"ca.pem\"\n",
            "notify[0].ca_file: is not used by type = \"email\"",
        );
        check(
            "\n[[notify]]\ntype = \"webhook\"\nurl = \"http://h/x\"\nsecret_env = \"NOPE\"\n",
            "airlock.toml:11: notify[0].secret_env: environment variable NOPE is not set",
        );
        check(
            "\n[[notify]]\ntype = \"email\"\nurl = \"http://h/x\"\n",
            "notify[0].url: is not used by type = \"email\"",
        );
        check(
            "\n[[notify]]\ntype = \"slack\"\nwebhook_url_env = \"SLACK_URL\"\nsigning_secret_env = \"SLACK_SIGNING_SECRET\"\nusers = { \"U1\" = \"mallory\" }\n",
            "notify[0].users: Slack user U1 maps to unknown identity 'mallory'",
        );
        check(
            "\n[[notify]]\ntype = \"email\"\nsmtp_host = \"mail.example.com\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\"]\nusername_env = \"SMTP_USER\"\npassword_env = \"SMTP_PASSWORD\"\n",
            "notify[0].starttls: must be true",
        );
        check(
            "\n[[notify]]\ntype = \"email\"\nsmtp_host = \"h\"\nfrom = \"a@example.com\"\nto = [\"b@example.com\\r\\nBcc: x@y\"]\n",
            "notify[0].to:",
        );
        check("\n[[notify]]\ntype = \"pager\"\n", "pager");
    }

    #[test]
    fn https_targets_take_a_ca_file_relative_to_the_config() {
        let extra = r#"
[[notify]]
type = "webhook"
url = "https://hooks.internal/airlock"
secret_env = "HOOK_SECRET"
ca_file = "private-ca.pem"

[[notify]]
type = "slack"
webhook_url_env = "SLACK_HTTPS_URL"
signing_secret_env = "SLACK_SIGNING_SECRET"

[[notify]]
type = "webhook"
url = "HTTPS://hooks.internal/other"
secret_env = "HOOK_SECRET"
ca_file = "missing.pem"
"#;
        let src = format!("{BASE}{extra}");
        let env = |k: &str| match k {
            "SLACK_HTTPS_URL" => Some("https://hooks.slack.com/services/T/B/x".into()),
            other => env(other),
        };
        let mut cfg = Config::from_toml(&src, "airlock.toml", &env).unwrap();
        let dir = tempfile::tempdir().unwrap();
        cfg.rebase_paths(dir.path());
        assert_eq!(
            cfg.notify[0].ca_file(),
            Some(dir.path().join("private-ca.pem").as_path())
        );
        assert_eq!(cfg.notify[1].ca_file(), None);

        // What `Config::load` checks once paths are rebased: each CA file
        // must exist and hold a certificate, or start-up stops, naming the
        // key and the line.
        let ca = rcgen::generate_simple_self_signed(vec!["hooks.internal".to_string()]).unwrap();
        std::fs::write(dir.path().join("private-ca.pem"), ca.cert.pem()).unwrap();
        let err = check_notify_ca_files(&cfg.notify, &src, "airlock.toml")
            .unwrap_err()
            .0;
        assert!(
            err.starts_with("airlock.toml:23: notify[2].ca_file: cannot read certificates from"),
            "{err}"
        );
        assert!(err.contains("missing.pem"), "{err}");
        cfg.notify.pop();
        check_notify_ca_files(&cfg.notify, &src, "airlock.toml").unwrap();
    }
}

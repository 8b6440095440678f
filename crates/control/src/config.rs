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
}

impl Default for PostgresSection {
    fn default() -> Self {
        PostgresSection {
            tls_cert: None,
            tls_key: None,
            require_tls: false,
            allow_cleartext_without_tls: false,
            max_message_bytes: default_max_message(),
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
    pub identities: IdentityRegistry,
    pub targets: Vec<Target>,
    pub masking: airlock_pipeline::mask::MaskingConfig,
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
        if file.postgres.max_message_bytes < 1024 {
            return Err(loc.err(
                "postgres",
                None,
                "max_message_bytes",
                "must be at least 1024",
            ));
        }
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

        Ok(Config {
            api_listen,
            public_url,
            data_dir,
            store_url,
            postgres_listen,
            identities: IdentityRegistry::new(entries),
            targets,
            masking,
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
    fn duplicate_identity_refused() {
        let src = EXAMPLE.replace("name = \"alice\"", "name = \"agent\"");
        let err = Config::from_toml(&src, "airlock.toml", &env_all)
            .unwrap_err()
            .0;
        assert!(err.contains("identities[1].name"), "{err}");
    }
}

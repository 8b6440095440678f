//! `airlock policy check|explain`: local commands (no API needed) that
//! validate a Cedar policy file and show how a command would be judged.

use std::path::{Path, PathBuf};

use airlock_control::config::Config;
use airlock_pipeline::classify::{ClassifyLimits, SqlClassifier, SqlDialect};
use airlock_pipeline::model::{ConnectionInfo, Identity, IdentityKind, Protocol};
use airlock_pipeline::policy::{self, PolicyContext, PolicySet};
use anyhow::{Context, bail};
use clap::Subcommand;

use super::Failure;

#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate a Cedar policy file against Airlock's schema (without FILE:
    /// the built-in default pack). Errors carry line and column.
    Check {
        file: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Show the verdict, the determining policies, their annotations and the
    /// classification for one command.
    Explain {
        /// Identity name (looked up in the config for kind and groups).
        #[arg(long)]
        identity: String,
        /// Connection name (looked up in the config for protocol and tags).
        #[arg(long)]
        connection: String,
        /// The command, e.g. "DELETE FROM payments".
        command: String,
        /// Config file to read identities, connections and [policy] from.
        #[arg(long, short, env = "AIRLOCK_CONFIG", default_value = "airlock.toml")]
        config: PathBuf,
        /// Policy file (overrides the config's [policy] file).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// Identity kind when the identity is not in the config.
        #[arg(long, value_parser = ["human", "agent", "service"])]
        kind: Option<String>,
        /// Groups (comma-separated) when the identity is not in the config.
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// Connection tags (comma-separated) when it is not in the config.
        #[arg(long, value_delimiter = ',')]
        tags: Vec<String>,
        /// Evaluate as if the identity held a just-in-time access grant.
        #[arg(long)]
        grant: bool,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PolicyCmd) -> anyhow::Result<()> {
    match cmd {
        PolicyCmd::Check { file, json } => check(file.as_deref(), json),
        PolicyCmd::Explain {
            identity,
            connection,
            command,
            config,
            policy,
            kind,
            groups,
            tags,
            grant,
            json,
        } => {
            let cfg = load_config_for_inspection(&config)?;
            let policy_file =
                policy.or_else(|| cfg.as_ref().and_then(|c| c.file.policy.file.clone()));
            let set = match &policy_file {
                Some(p) => policy::load_file(p).map_err(|e| anyhow::anyhow!("{e}"))?,
                None => PolicySet::default_pack(),
            };
            let ident = match cfg
                .as_ref()
                .and_then(|c| c.identities.get(&identity).cloned())
            {
                Some(id) if kind.is_none() && groups.is_empty() => (*id).clone(),
                _ => {
                    let Some(kind) = kind else {
                        bail!(
                            "identity '{identity}' is not in {}; give --kind (and --groups)",
                            config.display()
                        );
                    };
                    Identity {
                        name: identity.clone(),
                        kind: match kind.as_str() {
                            "human" => IdentityKind::Human,
                            "agent" => IdentityKind::Agent,
                            _ => IdentityKind::Service,
                        },
                        groups,
                    }
                }
            };
            let conn = match cfg
                .as_ref()
                .and_then(|c| c.targets.iter().find(|t| t.info.name == connection))
            {
                Some(t) if tags.is_empty() => t.info.clone(),
                _ => ConnectionInfo {
                    name: connection.clone(),
                    protocol: Protocol::Postgres,
                    tags,
                },
            };
            let classifier = SqlClassifier::new(SqlDialect::Postgres, ClassifyLimits::default());
            let cls = classifier.classify(&command);
            let ctx = PolicyContext {
                params: Vec::new(),
                grant,
            };
            let explanation = set.explain(&ident, &conn, &cls, &ctx);
            if json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{explanation}");
            }
            Ok(())
        }
    }
}

fn check(file: Option<&Path>, json: bool) -> anyhow::Result<()> {
    let result = match file {
        Some(p) => policy::load_file(p),
        None => Ok(PolicySet::default_pack()),
    };
    let origin = file
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in default pack".into());
    match result {
        Ok(set) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": true, "origin": origin, "version": set.version(), "policies": set.policy_ids()})
                );
            } else {
                println!(
                    "{origin}: OK ({} policies, version {})",
                    set.policy_ids().len(),
                    set.version()
                );
            }
            Ok(())
        }
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "origin": origin, "errors": e.to_string()})
                );
            } else {
                eprintln!("{e}");
            }
            Err(Failure(1).into())
        }
    }
}

/// Reads the config for its identities, connections and policy file only:
/// secrets that are not set do not matter here.
fn load_config_for_inspection(path: &Path) -> anyhow::Result<Option<Config>> {
    if !path.exists() {
        return Ok(None);
    }
    let src =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let env = |k: &str| Some(std::env::var(k).unwrap_or_else(|_| "unset-for-inspection".into()));
    let cfg = Config::from_toml(&src, &path.display().to_string(), &env)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Some(cfg))
}

//! Loading a policy file and reloading it on SIGHUP or when its content changes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{PolicyEngine, PolicyError, PolicySet, version_of};

/// How often the watched file is re-read. Polling one small file is cheap
/// and works on every file system, including mounted config maps.
const POLL: Duration = Duration::from_secs(1);

/// Reads and validates a policy file; errors name the file, line and column.
pub fn load_file(path: impl AsRef<Path>) -> Result<PolicySet, PolicyError> {
    let path = path.as_ref();
    let origin = path.display().to_string();
    let src = std::fs::read_to_string(path)
        .map_err(|e| PolicyError::message(&origin, format!("cannot read: {e}")))?;
    PolicySet::from_source(&src, &origin)
}

/// Keeps `engine` in step with the file at `path`: reloads on SIGHUP and
/// whenever the file's content differs from the running version. An invalid
/// file is rejected and the running policy kept. Runs until the task is
/// dropped or aborted.
pub async fn watch_file(engine: Arc<PolicyEngine>, path: PathBuf) {
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    // The version of content that was rejected (or an unreadable file's
    // error), so a bad file is reported once, not every second.
    let mut rejected: Option<String> = None;
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            () = next_hangup(&mut hangup) => true,
        };
        let origin = path.display().to_string();
        let src = match tokio::fs::read_to_string(&path).await {
            Ok(src) => src,
            Err(e) => {
                let message = format!("cannot read {origin}: {e}");
                if forced || rejected.as_deref() != Some(message.as_str()) {
                    tracing::warn!(
                        path = %origin,
                        "policy reload rejected: {message}; keeping version {}",
                        engine.current().version()
                    );
                    rejected = Some(message);
                }
                continue;
            }
        };
        let version = version_of(&src);
        let unchanged = version == engine.current().version();
        if !forced && (unchanged || rejected.as_deref() == Some(version.as_str())) {
            continue;
        }
        match PolicySet::from_source(&src, &origin) {
            Ok(set) => {
                engine.replace(set);
                rejected = None;
                tracing::info!(path = %origin, version = %version, "policy reloaded: version {version}");
            }
            Err(e) => {
                tracing::warn!(
                    path = %origin,
                    "policy reload rejected: {}; keeping version {}",
                    e.to_string().replace('\n', "; "),
                    engine.current().version()
                );
                rejected = Some(version);
            }
        }
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP ({e}); policy reloads by polling only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

/// Resolves on the next SIGHUP; never, when there is no signal to wait for.
async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return;
        }
        // The signal stream ended: stop selecting on it.
        *hangup = None;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending::<()>().await
}

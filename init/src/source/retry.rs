//! What a retried transfer leaves behind: counts for the result line
//! ([`SourceStats`]), and the error that says a broken transfer cannot be
//! resumed ([`RestartRequired`]). When and how long to retry is
//! [`crate::http`]'s, shared with every other HTTP client of imprint.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// What happened to a source while it was read, shared with the caller for
/// the result line.
#[derive(Debug, Default)]
pub struct SourceStats {
    /// Transfers resumed mid-stream with a Range request.
    pub resumes: AtomicU32,
    /// Bytes received again that had been received before (a server that
    /// resumed from an earlier offset). Exact Range resumes leave it at 0.
    pub refetched_bytes: AtomicU64,
    /// Requests made again after a retryable failure, on open and on resume.
    pub retries: AtomicU32,
    /// Where redirects led, when that is not the URL given.
    pub final_url: OnceLock<String>,
    /// The image pinned by digest (`oci://reg/repo@sha256:…`), for the
    /// result line: what to deploy again to get the same bytes.
    pub image_digest: OnceLock<String>,
    /// Bytes each mirror served (`host[:port]`, in mirror order), when the
    /// image was read in ranges ([`super::ranged`]).
    pub mirrors: OnceLock<Vec<(String, AtomicU64)>>,
    /// Bytes the swarm delivered, set when a torrent was asked for
    /// ([`super::swarm`]), even if the swarm never started.
    pub swarm_served: OnceLock<AtomicU64>,
    /// The running swarm, kept for seeding after the deploy.
    pub swarm: OnceLock<std::sync::Arc<super::swarm::Swarm>>,
    /// A swarm waiting for the target, its pieces to go on the disk's tail
    /// ([`super::swarm::start_on_target`]).
    pub swarm_pending: std::sync::Mutex<Option<super::swarm::Pending>>,
    /// Told when ranges move to another mirror: `(from, to)` hosts and the
    /// bytes served so far.
    pub on_switch: SwitchObserver,
}

/// Whom a mirror switch is reported to (the session's status events); set
/// once, after the source is opened.
#[derive(Default)]
pub struct SwitchObserver(OnceLock<Box<SwitchFn>>);

type SwitchFn = dyn Fn(&str, &str, &[(String, u64)]) + Send + Sync;

impl SwitchObserver {
    pub fn set(&self, observer: impl Fn(&str, &str, &[(String, u64)]) + Send + Sync + 'static) {
        let _ = self.0.set(Box::new(observer));
    }

    pub fn notify(&self, from: &str, to: &str, served: &[(String, u64)]) {
        if let Some(observer) = self.0.get() {
            observer(from, to, served);
        }
    }
}

impl std::fmt::Debug for SwitchObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "set"
        } else {
            "unset"
        })
    }
}

/// A copy of [`SourceStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatsSnapshot {
    pub resumes: u32,
    pub refetched_bytes: u64,
    pub retries: u32,
    pub final_url: Option<String>,
    pub image_digest: Option<String>,
    /// `host[:port]` and bytes served, per mirror in order.
    pub mirrors: Vec<(String, u64)>,
    /// Bytes the swarm delivered, when a torrent was asked for.
    pub swarm: Option<u64>,
}

impl SourceStats {
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            resumes: self.resumes.load(Ordering::Relaxed),
            refetched_bytes: self.refetched_bytes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            final_url: self.final_url.get().cloned(),
            image_digest: self.image_digest.get().cloned(),
            mirrors: self.mirrors_served(),
            swarm: self
                .swarm_served
                .get()
                .map(|bytes| bytes.load(Ordering::Relaxed)),
        }
    }

    /// Bytes served per mirror so far.
    pub fn mirrors_served(&self) -> Vec<(String, u64)> {
        self.mirrors.get().map_or_else(Vec::new, |mirrors| {
            mirrors
                .iter()
                .map(|(host, bytes)| (host.clone(), bytes.load(Ordering::Relaxed)))
                .collect()
        })
    }
}

/// A broken transfer that cannot be continued where it stopped: the server
/// ignored the Range request or the file changed. Splicing would corrupt
/// the image, so the deploy has to start over from byte 0 (or fail).
///
/// It travels inside the [`std::io::Error`] the source's reader returns;
/// find it with [`restart_required`] or [`restart_required_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartRequired {
    /// Why, e.g. `the server ignored the Range request (HTTP 200)`.
    pub reason: String,
}

impl std::fmt::Display for RestartRequired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot resume: {}", self.reason)
    }
}

impl std::error::Error for RestartRequired {}

/// The [`RestartRequired`] inside a read error, if that is what it is.
pub fn restart_required(error: &std::io::Error) -> Option<&RestartRequired> {
    error.get_ref()?.downcast_ref()
}

/// The [`RestartRequired`] anywhere in an error chain. `io::Error::source`
/// skips the error it wraps, so `anyhow`'s chain alone would miss it.
pub fn restart_required_in(error: &anyhow::Error) -> Option<&RestartRequired> {
    error.chain().find_map(|cause| {
        cause.downcast_ref::<RestartRequired>().or_else(|| {
            cause
                .downcast_ref::<std::io::Error>()
                .and_then(restart_required)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_required_is_found_inside_io_and_anyhow_errors() {
        let reason = "the server ignored the Range request (HTTP 200)".to_owned();
        let io_error = std::io::Error::other(RestartRequired {
            reason: reason.clone(),
        });
        assert_eq!(restart_required(&io_error).unwrap().reason, reason);
        assert_eq!(
            io_error.to_string(),
            "cannot resume: the server ignored the Range request (HTTP 200)"
        );
        let wrapped = anyhow::Error::from(io_error).context("reading http://h/x");
        assert_eq!(restart_required_in(&wrapped).unwrap().reason, reason);
        let plain = std::io::Error::other("Peer disconnected");
        assert!(restart_required(&plain).is_none());
        assert!(restart_required_in(&anyhow::Error::from(plain)).is_none());
        assert!(restart_required_in(&anyhow::anyhow!("x")).is_none());
    }

    #[test]
    fn stats_snapshot() {
        let stats = SourceStats::default();
        stats.resumes.fetch_add(2, Ordering::Relaxed);
        stats.retries.fetch_add(3, Ordering::Relaxed);
        stats.final_url.set("http://b/x".into()).unwrap();
        assert_eq!(
            stats.snapshot(),
            SourceStatsSnapshot {
                resumes: 2,
                refetched_bytes: 0,
                retries: 3,
                final_url: Some("http://b/x".into()),
                image_digest: None,
                mirrors: Vec::new(),
                swarm: None,
            }
        );
    }
}

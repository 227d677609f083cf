//! The HTTP client plumbing every feature shares: how an agent is built
//! ([`agent`]: timeouts, TLS trust, no proxy), which failures are worth
//! another attempt ([`classify`]), how long to wait before it ([`backoff`]),
//! and the loop that ties those together ([`retry`]).
//!
//! It sits below its users in the module graph: image sources and the
//! checksum and spec fetches ([`crate::source`]), the DRP client
//! ([`crate::drp`]) and the report webhook ([`crate::status`]) all call
//! into it, and it calls none of them. A rule about retrying or trusting a
//! server therefore changes in one place for all of them.

use std::time::Duration;

pub mod agent;
pub mod backoff;
pub mod classify;
pub mod retry;
pub mod tls;

/// Timeouts, retries and TLS trust for HTTP(S). Image sources are opened
/// with them (hence [`crate::source::SourceOptions`], the same type); the
/// DRP client and the webhook take the trust and the connect timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpOptions {
    /// How long connecting to a server may take (`imprint.connect-timeout=`).
    pub connect_timeout: Duration,
    /// How long a read may wait for the next bytes before the transfer is
    /// declared stalled and treated like a dropped connection
    /// (`imprint.stall-timeout=`).
    pub stall_timeout: Duration,
    /// Retries of a failed request or a broken transfer (`imprint.retries=`).
    pub retries: u32,
    /// The time all retries of one transfer may take (`imprint.retry-timeout=`).
    pub retry_timeout: Duration,
    /// Trust roots for HTTPS: a PEM bundle's URL or path (`imprint.ca=`).
    pub ca: Option<String>,
    /// Skip certificate verification (`imprint.insecure=1`). Loud, and
    /// reported in the result.
    pub insecure: bool,
    /// The user name for OCI registries (`imprint.oci-username=`).
    pub oci_username: Option<String>,
    /// Its password or token (`imprint.oci-password=`); never printed.
    pub oci_password: Option<Password>,
    /// The layer of an OCI artifact to deploy, by title
    /// (`imprint.oci-layer=`).
    pub oci_layer: Option<String>,
    /// Mirrors, parallel ranges and the chunk manifest of the image
    /// (`imprint.url=A|B`, `imprint.parallel=`, `imprint.chunk=`,
    /// `imprint.manifest=`): see `source::ranged`.
    pub ranges: RangeOptions,
}

/// How an HTTP(S) image is fetched in chunk-aligned ranges.
#[derive(Clone, PartialEq, Eq)]
pub struct RangeOptions {
    /// Every mirror of the image, in order of preference, the first being
    /// `imprint.url=`'s first URL; empty when the image was not given
    /// through `imprint.url=` (a checksum list, a spec).
    pub mirrors: Vec<String>,
    /// Ranges in flight (`imprint.parallel=`); 1 with a single mirror is
    /// one streaming GET.
    pub parallel: usize,
    /// The range size and alignment (`imprint.chunk=`).
    pub chunk: u64,
    /// The chunk manifest's URL (`imprint.manifest=`).
    pub manifest: Option<String>,
    /// `imprint.decode-memory=`, when set: half of it bounds the chunks
    /// held for reordering.
    pub memory: Option<u64>,
    /// The image's torrent (`imprint.torrent=`): chunks come from a swarm
    /// first, the mirrors being the fallback (`source::swarm`).
    pub torrent: Option<String>,
    /// How long the machine seeds after a good deploy (`imprint.seed-time=`).
    pub seed_time: Duration,
    /// How long the swarm may make no progress before chunks come from the
    /// mirrors (`imprint.torrent-timeout=`).
    pub torrent_timeout: Duration,
}

/// `imprint.parallel=`'s default.
pub const DEFAULT_PARALLEL: usize = 8;
/// `imprint.chunk=`'s default: nginx's common `slice` size and a usual S3
/// multipart part size.
pub const DEFAULT_CHUNK: u64 = 16 << 20;
/// `imprint.seed-time=`'s default: long enough for the machines that
/// started together to take the pieces only this one has.
pub const DEFAULT_SEED_TIME: Duration = Duration::from_secs(30);
/// `imprint.torrent-timeout=`'s default: a tracker's first answer and the
/// first peers' handshakes take seconds, not tens of seconds.
pub const DEFAULT_TORRENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Default for RangeOptions {
    fn default() -> Self {
        RangeOptions {
            mirrors: Vec::new(),
            parallel: DEFAULT_PARALLEL,
            chunk: DEFAULT_CHUNK,
            manifest: None,
            memory: None,
            torrent: None,
            seed_time: DEFAULT_SEED_TIME,
            torrent_timeout: DEFAULT_TORRENT_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for RangeOptions {
    // Presigned URLs carry their signature in the query: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mirrors: Vec<String> = self.mirrors.iter().map(|url| redact_url(url)).collect();
        f.debug_struct("RangeOptions")
            .field("mirrors", &mirrors)
            .field("parallel", &self.parallel)
            .field("chunk", &self.chunk)
            .field("manifest", &self.manifest.as_deref().map(redact_url))
            .field("memory", &self.memory)
            .field("torrent", &self.torrent.as_deref().map(redact_url))
            .field("seed_time", &self.seed_time)
            .field("torrent_timeout", &self.torrent_timeout)
            .finish()
    }
}

/// A password that must not reach a log, an event or `/status`: `Debug`
/// prints `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(value: impl Into<String>) -> Self {
        Password(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(30),
            retries: 8,
            retry_timeout: Duration::from_secs(600),
            ca: None,
            insecure: false,
            oci_username: None,
            oci_password: None,
            oci_layer: None,
            ranges: RangeOptions::default(),
        }
    }
}

/// `url` without user info, query and fragment, which may hold tokens:
/// `https://user:pw@drp:8092/hook?token=x` is `https://drp:8092/hook`.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (authority, path) = match rest.find('/') {
        Some(slash) => rest.split_at(slash),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// Whether `url` is `http://` or `https://` (any case).
pub fn is_web_url(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_credentials_and_queries() {
        assert_eq!(
            redact_url("https://user:pw@drp:8092/hook?token=x#f"),
            "https://drp:8092/hook"
        );
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(redact_url("http://h?x"), "http://h");
        assert_eq!(redact_url("no-scheme/path"), "no-scheme/path");
    }

    #[test]
    fn web_urls() {
        assert!(is_web_url("HTTPS://h/x"));
        assert!(is_web_url("http://h"));
        assert!(!is_web_url("ftp://h/x"));
        assert!(!is_web_url("/srv/ca.pem"));
        assert!(!is_web_url("file:///srv/ca.pem"));
    }
}

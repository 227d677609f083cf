//! The one place a `ureq` agent is configured.
//!
//! Every agent shares: TLS trust from [`HttpOptions`] ([`super::tls`]),
//! the `imprint/<version>` User-Agent, HTTP statuses handed back rather
//! than turned into errors (callers name the URL in their messages), and
//! ureq's proxy from the environment (`HTTPS_PROXY`, `HTTP_PROXY`,
//! `ALL_PROXY`): PID 1 has none, and the CLI behind a proxy keeps working as
//! it always did. What differs is the kind of exchange: see [`Exchange`].

use std::time::Duration;

use anyhow::Result;
use ureq::tls::TlsConfig;

use super::HttpOptions;

/// What an agent is for; decides its timeouts and redirects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exchange {
    /// A download that may run for an hour (an image, a checksum list, the
    /// deploy spec): connecting is bounded by `connect_timeout`, and then
    /// each read by `stall_timeout`, so a slow but moving body is never cut
    /// while a stalled one is (and resumed). Redirects are followed, up to
    /// [`MAX_REDIRECTS`]: image servers and CDNs redirect.
    Download,
    /// A small API request (DRP, the webhook): the whole exchange, connecting
    /// included, is bounded by `timeout`, and redirects are not followed: an
    /// API that redirects is misconfigured, and following one would send
    /// the `Authorization` header elsewhere.
    Api { timeout: Duration },
}

/// The most ranges of one image in flight (`imprint.parallel=`'s limit).
pub const MAX_PARALLEL: usize = 64;

/// Redirects a download follows before giving up; a loop ends here.
pub const MAX_REDIRECTS: u32 = 10;

/// An agent for `exchange`, trusting what `options` say. May fetch an
/// `imprint.ca=` bundle given by URL (once per process).
pub fn agent(options: &HttpOptions, exchange: Exchange) -> Result<ureq::Agent> {
    Ok(agent_with_tls(
        options,
        exchange,
        super::tls::tls_config(options)?,
    ))
}

/// Like [`agent`], with TLS trust decided by the caller: the DRP API's own
/// trust mode ([`super::tls::drp_api_tls_config`]) is the one user.
pub fn agent_with_tls(options: &HttpOptions, exchange: Exchange, tls: TlsConfig) -> ureq::Agent {
    let builder = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")));
    let builder = match exchange {
        Exchange::Download => builder
            .timeout_connect(Some(options.connect_timeout))
            .timeout_recv_response(Some(options.stall_timeout))
            .timeout_recv_body(None)
            // A body that stalls this long is treated as broken and resumed.
            .timeout_per_read(Some(options.stall_timeout))
            .max_redirects(MAX_REDIRECTS)
            // Ranges in flight (`imprint.parallel=`, at most 64) each keep
            // their connection to a mirror alive for the next range.
            .max_idle_connections_per_host(MAX_PARALLEL)
            .max_idle_connections(4 * MAX_PARALLEL),
        Exchange::Api { timeout } => builder
            .timeout_global(Some(timeout))
            .timeout_connect(Some(options.connect_timeout.min(timeout)))
            .max_redirects(0),
    };
    builder.build().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents_keep_statuses() {
        let options = HttpOptions::default();
        for exchange in [
            Exchange::Download,
            Exchange::Api {
                timeout: Duration::from_secs(3),
            },
        ] {
            let agent = agent(&options, exchange).unwrap();
            let config = agent.config();
            assert!(!config.http_status_as_error(), "{exchange:?}");
        }
        let api = agent(
            &options,
            Exchange::Api {
                timeout: Duration::from_secs(3),
            },
        )
        .unwrap();
        assert_eq!(api.config().max_redirects(), 0);
        assert_eq!(
            api.config().timeouts().connect,
            Some(Duration::from_secs(3))
        );
        let download = agent(&options, Exchange::Download).unwrap();
        assert_eq!(download.config().max_redirects(), MAX_REDIRECTS);
        assert_eq!(
            download.config().timeout_per_read(),
            Some(options.stall_timeout)
        );
    }
}

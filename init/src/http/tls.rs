//! Trust for HTTPS: image sources, the checksum and spec fetches, DRP and the
//! webhook all verify servers the same way.
//!
//! TLS is rustls with ring, compiled in: nothing is loaded at run time. Which roots
//! verify a server, first match wins:
//!
//! 1. `imprint.insecure=1`: none; verification is off, with a warning on every use
//!    and `insecure=1` in the result line. There is no silent fallback to this.
//! 2. `imprint.ca=`: the PEM bundle at that path, or fetched from that URL.
//! 3. [`INITRAMFS_CA_BUNDLE`], when it exists (`imprint-build --ca FILE` puts it there).
//! 4. The Mozilla roots compiled into the binary (webpki-roots).
//!
//! A bundle from 2 or 3 *replaces* the Mozilla roots rather than adding to them: a
//! deployment that names its CA trusts that CA alone.
//!
//! The DRP API is the one exception ([`drp_api_trust`]): DRP serves it over
//! HTTPS with a certificate it generated for itself at install, self-signed
//! and for an IP address, that no root knows. Unless `imprint.ca=` or
//! `imprint.insecure=1` says otherwise, imprint trusts it the way `drpcli`
//! and every stock DRP script do (they skip verification), says so once,
//! and keeps verifying everything else.
//!
//! A bundle given by URL is fetched over the same trust path as everything that has
//! no `ca`: `http://` plainly, `https://` verified by 3 or 4. So an `http://` bundle
//! is only as trustworthy as the network it crosses, exactly like an `http://` image.
//! It is fetched once per process (retried like an image, [`super::retry`]), then
//! reused by every connection.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use super::agent::{Exchange, agent};
use super::backoff::RetryPolicy;
use super::classify::{self, Failure};
use super::retry::{Failed, Retrier, SystemClock, retry_after_of};
use super::{HttpOptions, is_web_url};

/// The bundle an initramfs carries, used when no `imprint.ca=` is given.
pub const INITRAMFS_CA_BUNDLE: &str = "/etc/imprint/ca.pem";

/// What is logged each time a connection is set up without verification.
pub const INSECURE_WARNING: &str = "TLS certificate verification is OFF (imprint.insecure=1): \
     anyone on the network can substitute the image";

/// Mozilla's whole bundle is about 250 KiB; a CA list many times that is a mistake.
const MAX_BUNDLE_LEN: u64 = 4 << 20;

/// Where the roots that verify servers come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Verification is off.
    Insecure,
    /// The Mozilla roots compiled in.
    Bundled,
    /// A PEM bundle on a local filesystem.
    Path(String),
    /// A PEM bundle fetched from an `http://` or `https://` URL.
    Url(String),
}

/// Decides where trust comes from; `initramfs_bundle_exists` says whether
/// [`INITRAMFS_CA_BUNDLE`] is there.
pub fn choose_trust(options: &HttpOptions, initramfs_bundle_exists: bool) -> Trust {
    if options.insecure {
        return Trust::Insecure;
    }
    match options.ca.as_deref() {
        Some(ca) if is_web_url(ca) => Trust::Url(ca.to_owned()),
        Some(ca) => Trust::Path(ca.strip_prefix("file://").unwrap_or(ca).to_owned()),
        None if initramfs_bundle_exists => Trust::Path(INITRAMFS_CA_BUNDLE.to_owned()),
        None => Trust::Bundled,
    }
}

/// Whether certificate verification is off, so the result line can say so.
pub fn insecure_in_effect(options: &HttpOptions) -> bool {
    options.insecure
}

/// The TLS configuration for the HTTP agent.
pub fn tls_config(options: &HttpOptions) -> Result<TlsConfig> {
    let trust = choose_trust(options, Path::new(INITRAMFS_CA_BUNDLE).exists());
    let roots = match &trust {
        Trust::Insecure => {
            log::warn!("{INSECURE_WARNING}");
            return Ok(TlsConfig::builder().disable_verification(true).build());
        }
        Trust::Bundled => RootCerts::WebPki,
        Trust::Path(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading CA bundle {path}"))?;
            RootCerts::Specific(Arc::new(parse_bundle(path, &pem)?))
        }
        Trust::Url(url) => RootCerts::Specific(fetched_bundle(url, options)?),
    };
    Ok(TlsConfig::builder().root_certs(roots).build())
}

/// How the DRP API's server is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrpApiTrust {
    /// As everything else ([`choose_trust`]): `imprint.ca=` names the CA that
    /// signed DRP's certificate (one that replaced the self-signed one, as
    /// DRP's security guide advises for production), or
    /// `imprint.insecure=1` is on anyway, or the API is plain `http://`.
    LikeSources,
    /// Not verified, as `drpcli` does: DRP's certificate is self-signed.
    LikeDrpcli,
}

/// Decides how the DRP API at `endpoint` is verified (module docs).
pub fn drp_api_trust(options: &HttpOptions, endpoint: &str) -> DrpApiTrust {
    let https = endpoint
        .split_once("://")
        .is_some_and(|(scheme, _)| scheme.eq_ignore_ascii_case("https"));
    if !https || options.insecure || options.ca.is_some() {
        DrpApiTrust::LikeSources
    } else {
        DrpApiTrust::LikeDrpcli
    }
}

/// What is logged, once per process, when the DRP API is not verified.
pub const DRP_API_UNVERIFIED: &str = "certificate not verified, as drpcli does (DRP's own is \
     self-signed); image downloads are still verified. To verify the API too, give DRP a \
     certificate from your CA and pass that CA with imprint.ca=";

/// The TLS configuration for the DRP API at `endpoint` (no user info):
/// [`drp_api_trust`] decides.
pub fn drp_api_tls_config(options: &HttpOptions, endpoint: &str) -> Result<TlsConfig> {
    match drp_api_trust(options, endpoint) {
        DrpApiTrust::LikeSources => tls_config(options),
        DrpApiTrust::LikeDrpcli => {
            static ONCE: std::sync::Once = std::sync::Once::new();
            ONCE.call_once(|| log::warn!("DRP API {endpoint}: {DRP_API_UNVERIFIED}"));
            Ok(TlsConfig::builder().disable_verification(true).build())
        }
    }
}

/// The certificate problem behind a failed request, as one line with the fix, e.g.
/// `invalid certificate: UnknownIssuer; pass the CA with imprint.ca=`; `None` when
/// the error is something else. Such a failure is final: retrying cannot fix it.
pub fn certificate_failure(error: &ureq::Error, options: &HttpOptions) -> Option<String> {
    // ureq hands rustls errors over inside an io::Error, and does not re-export
    // rustls to downcast to, so the failure is recognised by rustls' wording of
    // `Error::InvalidCertificate` (tests pin it).
    let text = error.to_string();
    let reason = text
        .split_once("invalid peer certificate: ")
        .map(|(_, reason)| reason)?;
    let hint = match (reason, options.ca.as_deref()) {
        ("UnknownIssuer" | "BadSignature", None) => "; pass the CA with imprint.ca=".to_owned(),
        ("UnknownIssuer" | "BadSignature", Some(ca)) => format!("; not signed by {ca}"),
        _ => String::new(),
    };
    Some(format!("invalid certificate: {reason}{hint}"))
}

/// The certificates in a PEM bundle; other PEM sections (keys, CRLs) are skipped.
/// `name` is the bundle's path or URL, for errors.
pub fn parse_bundle(name: &str, pem: &[u8]) -> Result<Vec<Certificate<'static>>> {
    let mut certificates = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        if let PemItem::Certificate(certificate) =
            item.with_context(|| format!("reading CA bundle {name}"))?
        {
            certificates.push(certificate);
        }
    }
    if certificates.is_empty() {
        bail!("reading CA bundle {name}: no certificates found");
    }
    Ok(certificates)
}

type Bundle = Arc<Vec<Certificate<'static>>>;

/// Bundles fetched so far, by URL: every connection of a deploy (retries, resumes,
/// the checksum list) needs the roots, and the bundle's server need not see each one.
static FETCHED: LazyLock<Mutex<HashMap<String, Bundle>>> = LazyLock::new(Mutex::default);

fn fetched_bundle(url: &str, options: &HttpOptions) -> Result<Bundle> {
    let cached = FETCHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .get(url)
        .cloned();
    if let Some(bundle) = cached {
        return Ok(bundle);
    }
    // Without a `ca`, the fetch itself is verified by the default roots (see the
    // module comment), and cannot come back here.
    let default_trust = HttpOptions {
        ca: None,
        ..options.clone()
    };
    let pem = fetch_small(url, MAX_BUNDLE_LEN, &default_trust)
        .context("fetching the CA bundle (verified by the default roots)")?;
    let bundle = Arc::new(parse_bundle(url, &pem)?);
    log::info!("CA bundle {url}: {} certificates", bundle.len());
    FETCHED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(url.to_owned(), Arc::clone(&bundle));
    Ok(bundle)
}

/// `GET url` and its body, at most `max_len` bytes, retried like an image
/// (a body that breaks off is fetched again whole: it is small).
fn fetch_small(url: &str, max_len: u64, options: &HttpOptions) -> Result<Vec<u8>> {
    let agent = agent(options, Exchange::Download)?;
    let mut retrier = Retrier::new(RetryPolicy::transfer(options), Arc::new(SystemClock::new()));
    let request = format!("GET {url}");
    let attempt = || -> Result<Vec<u8>, Failed> {
        let mut response = agent
            .get(url)
            .call()
            .map_err(|error| Failed::request(&request, &error, options))?;
        let status = response.status();
        if !status.is_success() {
            return Err(Failed::status(&request, status, retry_after_of(&response)));
        }
        response
            .body_mut()
            .with_config()
            .limit(max_len)
            .read_to_vec()
            .map_err(|error| Failed {
                failure: match &error {
                    ureq::Error::BodyExceedsLimit(_) => Failure::Fatal,
                    other => classify::classify(other),
                },
                message: format!("{request}: reading the body: {error}"),
                retry_after: None,
            })
    };
    retrier
        .run(attempt, Failed::log_retry)
        .map_err(|exhausted| exhausted.error.into_error(exhausted.give_up))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(ca: Option<&str>, insecure: bool) -> HttpOptions {
        HttpOptions {
            ca: ca.map(str::to_owned),
            insecure,
            ..HttpOptions::default()
        }
    }

    #[test]
    fn trust_order() {
        assert_eq!(choose_trust(&options(None, false), false), Trust::Bundled);
        assert_eq!(
            choose_trust(&options(None, false), true),
            Trust::Path(INITRAMFS_CA_BUNDLE.into())
        );
        assert_eq!(
            choose_trust(&options(Some("/srv/ca.pem"), false), true),
            Trust::Path("/srv/ca.pem".into())
        );
        assert_eq!(
            choose_trust(&options(Some("file:///srv/ca.pem"), false), false),
            Trust::Path("/srv/ca.pem".into())
        );
        assert_eq!(
            choose_trust(&options(Some("HTTPS://h/ca.pem"), false), true),
            Trust::Url("HTTPS://h/ca.pem".into())
        );
        assert_eq!(
            choose_trust(&options(Some("http://h/ca.pem"), true), true),
            Trust::Insecure
        );
    }

    #[test]
    fn the_drp_api_is_trusted_like_drpcli_unless_told_otherwise() {
        let drp = "https://10.0.0.2:8092";
        assert_eq!(
            drp_api_trust(&options(None, false), drp),
            DrpApiTrust::LikeDrpcli
        );
        assert_eq!(
            drp_api_trust(&options(None, false), "HTTPS://drp:8092"),
            DrpApiTrust::LikeDrpcli
        );
        assert_eq!(
            drp_api_trust(&options(Some("/ca.pem"), false), drp),
            DrpApiTrust::LikeSources
        );
        assert_eq!(
            drp_api_trust(&options(None, true), drp),
            DrpApiTrust::LikeSources
        );
        assert_eq!(
            drp_api_trust(&options(None, false), "http://10.0.0.2:8092"),
            DrpApiTrust::LikeSources
        );
        // Only the API: everything else is still verified.
        assert_eq!(choose_trust(&options(None, false), false), Trust::Bundled);
    }

    #[test]
    fn insecure_is_reported() {
        assert!(insecure_in_effect(&options(None, true)));
        assert!(!insecure_in_effect(&options(Some("/ca.pem"), false)));
    }

    #[test]
    fn certificate_failures_say_what_to_do() {
        let error = |text: &str| ureq::Error::Io(std::io::Error::other(text.to_owned()));
        let unknown = error("invalid peer certificate: UnknownIssuer");
        assert_eq!(
            certificate_failure(&unknown, &options(None, false)).as_deref(),
            Some("invalid certificate: UnknownIssuer; pass the CA with imprint.ca=")
        );
        assert_eq!(
            certificate_failure(&unknown, &options(Some("/ca.pem"), false)).as_deref(),
            Some("invalid certificate: UnknownIssuer; not signed by /ca.pem")
        );
        let expired = error("invalid peer certificate: certificate expired: at 5, not after 4");
        assert_eq!(
            certificate_failure(&expired, &options(None, false)).as_deref(),
            Some("invalid certificate: certificate expired: at 5, not after 4")
        );
        let refused = error("Connection refused (os error 111)");
        assert_eq!(certificate_failure(&refused, &options(None, false)), None);
    }

    #[test]
    fn bundle_errors_name_the_bundle() {
        let msg = format!(
            "{:#}",
            parse_bundle("/etc/imprint/ca.pem", b"hello\n").unwrap_err()
        );
        assert_eq!(
            msg,
            "reading CA bundle /etc/imprint/ca.pem: no certificates found"
        );
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let msg = format!("{:#}", parse_bundle("/x/ca.pem", broken).unwrap_err());
        assert!(msg.starts_with("reading CA bundle /x/ca.pem: "), "{msg}");

        let missing = options(Some("/nonexistent/ca.pem"), false);
        let msg = format!("{:#}", tls_config(&missing).unwrap_err());
        assert!(
            msg.starts_with("reading CA bundle /nonexistent/ca.pem: "),
            "{msg}"
        );
    }

    #[test]
    fn bundle_keeps_certificates_and_skips_keys() {
        let ca = imprint_qemu::http::TestCa::new("test CA").unwrap();
        let server = ca.issue_for_fixture().unwrap();
        let pem = format!("{}{}", server.key_pem, server.chain_pem);
        let certs = parse_bundle("mixed.pem", pem.as_bytes()).unwrap();
        assert_eq!(certs.len(), 2);
    }

    #[test]
    fn url_bundle_is_fetched_once() {
        let server = imprint_qemu::http::FixtureServer::start().unwrap();
        let ca = imprint_qemu::http::TestCa::new("test CA").unwrap();
        server.add_file("ca.pem", ca.cert_pem());
        let opts = options(Some(&server.url("ca.pem")), false);
        tls_config(&opts).unwrap();
        tls_config(&opts).unwrap();
        // A second fetch would show up within the wait.
        let requests = server.requests_at_least(2, std::time::Duration::from_millis(500));
        assert_eq!(requests.len(), 1);

        server.add_file("empty.pem", "");
        let url = server.url("empty.pem");
        let msg = format!("{:#}", tls_config(&options(Some(&url), false)).unwrap_err());
        assert_eq!(
            msg,
            format!("reading CA bundle {url}: no certificates found")
        );

        let url = server.url("missing.pem");
        let msg = format!("{:#}", tls_config(&options(Some(&url), false)).unwrap_err());
        assert!(
            msg.starts_with(&format!(
                "fetching the CA bundle (verified by the default roots): GET {url}: HTTP 404"
            )),
            "{msg}"
        );
    }
}

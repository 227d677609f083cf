//! Which failures are worth another attempt: one table for image sources,
//! the checksum and spec fetches, DRP and the webhook.
//!
//! The rule of thumb: retry what the server or the network may get over on
//! its own (an outage, an overload, a restart, a flaky link); fail at once
//! on what another attempt would only repeat (a wrong URL or token, a
//! request the server does not support, a certificate it does not have).

use std::io;

/// Why a request or a transfer failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server answered with this status.
    Status(u16),
    /// Connecting failed: refused, unreachable, reset, name not resolved.
    Connection,
    /// A connect, response or read timeout (a stalled body included).
    Timeout,
    /// The body broke off before its end.
    BrokenBody,
    /// Anything else: TLS and certificate errors, malformed URLs, protocol
    /// errors that a retry would only repeat.
    Fatal,
}

/// Whether a failure is worth another attempt.
pub fn is_retryable(failure: Failure) -> bool {
    match failure {
        Failure::Status(status) => is_retryable_status(status),
        // A server restarting, a link flapping, DHCP or DNS not settled yet.
        Failure::Connection | Failure::Timeout | Failure::BrokenBody => true,
        Failure::Fatal => false,
    }
}

/// The HTTP statuses that are retried (RFC 9110 §15 unless noted). The
/// image source retried 408, 429, 500, 502, 503 and 504; DRP and the webhook
/// retried 408, 429 and every 5xx. This is the union, less the 5xx that
/// describe the request or the server's configuration, not a passing state.
pub fn is_retryable_status(status: u16) -> bool {
    match status {
        // Request Timeout: the server gave up waiting for us; a new
        // connection gets a new chance.
        408 => true,
        // Too Many Requests (RFC 6585 §4): a rate limit, which passes;
        // its Retry-After is honoured.
        429 => true,
        // Not Implemented, HTTP Version Not Supported, Variant Also
        // Negotiates (RFC 2295), Loop Detected (RFC 5842), Not Extended
        // (RFC 2774), Network Authentication Required (RFC 6585, a captive
        // portal wanting a login): the same request gets the same answer.
        501 | 505 | 506 | 508 | 510 | 511 => false,
        // Internal Server Error, Bad Gateway, Service Unavailable, Gateway
        // Timeout, Insufficient Storage (RFC 4918) and the non-standard
        // proxy and CDN codes (509, 52x, 598/599): the server or what
        // stands before it is failing now, typically while it restarts or
        // is overloaded, and may not be in a moment.
        500..=599 => true,
        _ => false,
    }
}

/// How a failed exchange (no HTTP answer, or none readable) counts.
pub fn classify(error: &ureq::Error) -> Failure {
    match error {
        ureq::Error::StatusCode(status) => Failure::Status(*status),
        ureq::Error::Timeout(_) => Failure::Timeout,
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => Failure::Connection,
        ureq::Error::Io(e) => classify_io(e),
        // Malformed URLs, redirect loops, protocol violations, TLS set-up:
        // the next attempt meets the same.
        _ => Failure::Fatal,
    }
}

/// How a failed read or write on an established connection counts.
pub fn classify_io(error: &io::Error) -> Failure {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
        io::ErrorKind::UnexpectedEof => Failure::BrokenBody,
        // rustls reports certificate and handshake failures as InvalidData.
        io::ErrorKind::InvalidData
        | io::ErrorKind::InvalidInput
        | io::ErrorKind::PermissionDenied
        | io::ErrorKind::Unsupported => Failure::Fatal,
        _ => Failure::Connection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let retried: Vec<u16> = (100..=599).filter(|s| is_retryable_status(*s)).collect();
        let mut expected = vec![408, 429, 500, 502, 503, 504, 507, 509];
        expected.extend([512, 513, 514, 515, 516, 517, 518, 519]);
        expected.extend(520..=599);
        assert_eq!(retried, expected);
        for status in [
            200, 206, 302, 400, 401, 403, 404, 409, 410, 416, 501, 505, 511,
        ] {
            assert!(!is_retryable(Failure::Status(status)), "{status}");
        }
    }

    #[test]
    fn transport_table() {
        let cases = [
            (
                ureq::Error::Timeout(ureq::Timeout::Connect),
                Failure::Timeout,
            ),
            (ureq::Error::HostNotFound, Failure::Connection),
            (ureq::Error::ConnectionFailed, Failure::Connection),
            (ureq::Error::StatusCode(503), Failure::Status(503)),
            (
                ureq::Error::Io(io::ErrorKind::ConnectionReset.into()),
                Failure::Connection,
            ),
            (
                ureq::Error::Io(io::ErrorKind::ConnectionRefused.into()),
                Failure::Connection,
            ),
            (
                ureq::Error::Io(io::ErrorKind::TimedOut.into()),
                Failure::Timeout,
            ),
            (
                ureq::Error::Io(io::ErrorKind::UnexpectedEof.into()),
                Failure::BrokenBody,
            ),
            (
                ureq::Error::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "invalid peer certificate: UnknownIssuer",
                )),
                Failure::Fatal,
            ),
            (ureq::Error::BadUri("x".into()), Failure::Fatal),
            (ureq::Error::TooManyRedirects, Failure::Fatal),
            (ureq::Error::BodyExceedsLimit(1), Failure::Fatal),
        ];
        for (error, failure) in cases {
            assert_eq!(classify(&error), failure, "{error:?}");
        }
        assert!(is_retryable(Failure::Connection));
        assert!(is_retryable(Failure::Timeout));
        assert!(is_retryable(Failure::BrokenBody));
        assert!(!is_retryable(Failure::Fatal));
    }
}

//! When to try a request again, and how long to wait first.
//!
//! Pure decisions: the caller passes in the time spent so far and a random
//! number, so every branch is tested with a fake clock (see [`Clock`]).
//!
//! - **What is retried:** connection failures (refused, reset, DNS), timeouts
//!   (connect, response, and a body that stalls past `stall-timeout`), a body
//!   that breaks off early, and HTTP 408, 429, 500, 502, 503 and 504. Any other
//!   status (404, 403, 416, …) and TLS/certificate errors fail at once.
//! - **How long to wait:** exponential backoff from [`BASE_DELAY`], doubling
//!   per consecutive failure up to [`MAX_DELAY`], with jitter: the wait is
//!   drawn from the upper half of that interval, so a rack of machines that
//!   lost the same server does not come back in lockstep. A `Retry-After`
//!   (delta-seconds or an HTTP date) longer than the backoff is honoured as
//!   given, without the cap.
//! - **Budget:** `imprint.retries=` retries per transfer in total, the initial
//!   request and every resume of the body counting against the same budget;
//!   and `imprint.retry-timeout=`, the time all waits and failed attempts of
//!   one transfer may take together. A retry whose wait would end past that
//!   time is not started. The backoff restarts from [`BASE_DELAY`] once a
//!   resumed transfer has made progress, the budget does not.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::SourceOptions;

/// The first wait; doubled per consecutive failure.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff wait (a `Retry-After` may ask for longer).
pub const MAX_DELAY: Duration = Duration::from_secs(30);

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
        Failure::Status(status) => matches!(status, 408 | 429 | 500 | 502 | 503 | 504),
        Failure::Connection | Failure::Timeout | Failure::BrokenBody => true,
        Failure::Fatal => false,
    }
}

/// The limits of one transfer's retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub retry_timeout: Duration,
    pub base_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(options: &SourceOptions) -> Self {
        RetryPolicy {
            retries: options.retries,
            retry_timeout: options.retry_timeout,
            base_delay: BASE_DELAY,
            max_delay: MAX_DELAY,
        }
    }

    /// What to do after a retryable failure.
    pub fn decide(&self, attempt: &Attempt) -> Decision {
        if attempt.retries_used >= self.retries {
            return Decision::GiveUp(GiveUp::RetriesExhausted(attempt.retries_used));
        }
        let backoff = self.backoff(attempt.consecutive_failures, attempt.random);
        let delay = attempt
            .retry_after
            .map_or(backoff, |asked| asked.max(backoff));
        if attempt.elapsed.saturating_add(delay) > self.retry_timeout {
            return Decision::GiveUp(GiveUp::TimedOut {
                retries: attempt.retries_used,
                retry_timeout: self.retry_timeout,
            });
        }
        Decision::Retry {
            number: attempt.retries_used + 1,
            of: self.retries,
            delay,
        }
    }

    /// The jittered wait after the `consecutive`-th failure in a row (from 1):
    /// uniformly in [d/2, d] for d = base × 2^(consecutive-1), capped.
    fn backoff(&self, consecutive: u32, random: u64) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(31);
        let full = self
            .base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay);
        let half = full / 2;
        let half_nanos = half.as_nanos();
        let jitter_nanos = half_nanos * u128::from(random % 1024) / 1023;
        half + Duration::from_nanos(u64::try_from(jitter_nanos).unwrap_or(u64::MAX))
    }
}

/// The state of a transfer when a retryable failure happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Retries already made in this transfer.
    pub retries_used: u32,
    /// Failures in a row without progress, this one included (from 1).
    pub consecutive_failures: u32,
    /// Time spent in failed attempts and waits so far, this one included.
    pub elapsed: Duration,
    /// The server's `Retry-After`, already turned into a wait.
    pub retry_after: Option<Duration>,
    /// A random number for the jitter.
    pub random: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait `delay`, then make retry `number` of `of`.
    Retry {
        number: u32,
        of: u32,
        delay: Duration,
    },
    GiveUp(GiveUp),
}

/// Why no more retries are made; displayed after the last error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    RetriesExhausted(u32),
    TimedOut {
        retries: u32,
        retry_timeout: Duration,
    },
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GiveUp::RetriesExhausted(0) => write!(f, "retries are off"),
            GiveUp::RetriesExhausted(1) => write!(f, "gave up after 1 retry"),
            GiveUp::RetriesExhausted(n) => write!(f, "gave up after {n} retries"),
            GiveUp::TimedOut {
                retries,
                retry_timeout,
            } => write!(
                f,
                "gave up after {retries} retries: the next would pass the retry timeout of {}",
                seconds(*retry_timeout)
            ),
        }
    }
}

/// `1.6 s`, for log lines.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// A `Retry-After` header as a wait from `now`: delta-seconds or an
/// IMF-fixdate (RFC 9110 §10.2.3). A date in the past is no wait; the
/// obsolete date formats and anything unparsable are ignored (`None`), and
/// the ordinary backoff applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of seconds saturates; the retry timeout bounds it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = parse_http_date(value)?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn parse_http_date(value: &str) -> Option<SystemTime> {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (_weekday, rest) = value.split_once(", ")?;
    let mut parts = rest.split(' ');
    let day: u32 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    let year: i64 = parts.next()?.parse().ok()?;
    let mut clock = parts.next()?.split(':');
    let hour: u64 = clock.next()?.parse().ok()?;
    let minute: u64 = clock.next()?.parse().ok()?;
    let second: u64 = clock.next()?.parse().ok()?;
    if parts.next()? != "GMT"
        || parts.next().is_some()
        || clock.next().is_some()
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    UNIX_EPOCH.checked_add(Duration::from_secs(seconds))
}

/// Howard Hinnant's days_from_civil: days since 1970-01-01.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Time and randomness for the retry loop, from outside so tests need not
/// wait.
pub trait Clock: Send + Sync {
    /// Monotonic time since some fixed start.
    fn elapsed(&self) -> Duration;
    /// The wall clock, for `Retry-After` dates.
    fn system_time(&self) -> SystemTime;
    fn sleep(&self, duration: Duration);
    /// A random number for jitter; it need not be cryptographic.
    fn random(&self) -> u64;
}

/// The real clock.
#[derive(Debug)]
pub struct SystemClock {
    start: Instant,
}

impl SystemClock {
    pub fn new() -> Self {
        SystemClock {
            start: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }

    fn sleep(&self, duration: Duration) {
        std::thread::sleep(duration);
    }

    fn random(&self) -> u64 {
        // std seeds every RandomState from the OS once and then varies it,
        // which is random enough to spread retries; no crate needed.
        use std::hash::{BuildHasher, Hasher};
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u128(self.start.elapsed().as_nanos());
        hasher.finish()
    }
}

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
}

/// A copy of [`SourceStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatsSnapshot {
    pub resumes: u32,
    pub refetched_bytes: u64,
    pub retries: u32,
    pub final_url: Option<String>,
}

impl SourceStats {
    pub fn snapshot(&self) -> SourceStatsSnapshot {
        SourceStatsSnapshot {
            resumes: self.resumes.load(Ordering::Relaxed),
            refetched_bytes: self.refetched_bytes.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            final_url: self.final_url.get().cloned(),
        }
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
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Time passes only when someone sleeps; sleeps are recorded.
    #[derive(Debug, Default)]
    pub(crate) struct FakeClock {
        pub now: Mutex<Duration>,
        pub sleeps: Mutex<Vec<Duration>>,
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            *self.now.lock().unwrap()
        }
        fn system_time(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.elapsed()
        }
        fn sleep(&self, duration: Duration) {
            *self.now.lock().unwrap() += duration;
            self.sleeps.lock().unwrap().push(duration);
        }
        fn random(&self) -> u64 {
            0
        }
    }

    fn policy(retries: u32, timeout_secs: u64) -> RetryPolicy {
        RetryPolicy {
            retries,
            retry_timeout: Duration::from_secs(timeout_secs),
            base_delay: BASE_DELAY,
            max_delay: MAX_DELAY,
        }
    }

    fn attempt(retries_used: u32, consecutive: u32, elapsed_ms: u64, random: u64) -> Attempt {
        Attempt {
            retries_used,
            consecutive_failures: consecutive,
            elapsed: Duration::from_millis(elapsed_ms),
            retry_after: None,
            random,
        }
    }

    fn delay(decision: Decision) -> Duration {
        match decision {
            Decision::Retry { delay, .. } => delay,
            Decision::GiveUp(g) => panic!("gave up: {g}"),
        }
    }

    #[test]
    fn classification() {
        for status in [408, 429, 500, 502, 503, 504] {
            assert!(is_retryable(Failure::Status(status)), "{status}");
        }
        for status in [400, 401, 403, 404, 410, 416, 501, 505, 200, 302] {
            assert!(!is_retryable(Failure::Status(status)), "{status}");
        }
        assert!(is_retryable(Failure::Connection));
        assert!(is_retryable(Failure::Timeout));
        assert!(is_retryable(Failure::BrokenBody));
        assert!(!is_retryable(Failure::Fatal));
    }

    #[test]
    fn backoff_doubles_with_jitter_in_the_upper_half_and_is_capped() {
        let p = policy(100, 100_000);
        // random 0 is the bottom of the interval, 1023 the top.
        let low: Vec<u128> = (1..=8)
            .map(|n| delay(p.decide(&attempt(n - 1, n, 0, 0))).as_millis())
            .collect();
        assert_eq!(low, [250, 500, 1000, 2000, 4000, 8000, 15_000, 15_000]);
        let high = delay(p.decide(&attempt(2, 3, 0, 1023)));
        assert_eq!(high, Duration::from_secs(2));
        let mid = delay(p.decide(&attempt(2, 3, 0, 511)));
        assert!(
            mid > Duration::from_secs(1) && mid < Duration::from_secs(2),
            "{mid:?}"
        );
        // Huge failure counts do not overflow.
        assert_eq!(
            delay(p.decide(&attempt(0, u32::MAX, 0, 1023))),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn decision_numbers_the_retry() {
        assert_eq!(
            policy(8, 600).decide(&attempt(1, 2, 0, 1023)),
            Decision::Retry {
                number: 2,
                of: 8,
                delay: Duration::from_secs(1)
            }
        );
    }

    #[test]
    fn retries_are_bounded_by_count() {
        let p = policy(3, 600);
        assert!(matches!(
            p.decide(&attempt(2, 3, 0, 0)),
            Decision::Retry { number: 3, .. }
        ));
        assert_eq!(
            p.decide(&attempt(3, 4, 0, 0)),
            Decision::GiveUp(GiveUp::RetriesExhausted(3))
        );
        assert_eq!(
            policy(0, 600).decide(&attempt(0, 1, 0, 0)),
            Decision::GiveUp(GiveUp::RetriesExhausted(0))
        );
    }

    #[test]
    fn retries_are_bounded_by_time() {
        let p = policy(100, 10);
        // 9.5 s spent, the next wait would be at least 0.25 s: fine up to 10 s.
        assert!(matches!(
            p.decide(&attempt(5, 1, 9_750, 0)),
            Decision::Retry { .. }
        ));
        assert_eq!(
            p.decide(&attempt(5, 1, 9_751, 0)),
            Decision::GiveUp(GiveUp::TimedOut {
                retries: 5,
                retry_timeout: Duration::from_secs(10)
            })
        );
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let p = policy(8, 600);
        let mut a = attempt(0, 1, 0, 1023);
        a.retry_after = Some(Duration::from_secs(120));
        assert_eq!(delay(p.decide(&a)), Duration::from_secs(120));
        a.retry_after = Some(Duration::ZERO);
        assert_eq!(delay(p.decide(&a)), Duration::from_millis(500));
        // A Retry-After past the retry timeout ends the retries now.
        a.retry_after = Some(Duration::from_secs(601));
        assert!(matches!(
            p.decide(&a),
            Decision::GiveUp(GiveUp::TimedOut { .. })
        ));
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:51:07 GMT", now),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 29 Feb 2024 00:00:00 GMT", UNIX_EPOCH),
            Some(Duration::from_secs(1_709_164_800))
        );
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:49 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
    }

    #[test]
    fn give_up_messages() {
        assert_eq!(
            GiveUp::RetriesExhausted(8).to_string(),
            "gave up after 8 retries"
        );
        assert_eq!(GiveUp::RetriesExhausted(0).to_string(), "retries are off");
        assert_eq!(
            GiveUp::TimedOut {
                retries: 3,
                retry_timeout: Duration::from_secs(10)
            }
            .to_string(),
            "gave up after 3 retries: the next would pass the retry timeout of 10.0 s"
        );
    }

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
                final_url: Some("http://b/x".into())
            }
        );
    }
}

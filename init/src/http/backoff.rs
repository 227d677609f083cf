//! How long to wait before the next attempt, and whether to make one.
//!
//! Pure decisions: the caller passes in the time spent so far and a random
//! number, so every branch is tested without a clock ([`super::retry`]
//! brings the real one, and a fake for tests).
//!
//! - **How long to wait:** exponential backoff from [`Backoff::first`],
//!   doubling per consecutive failure up to [`Backoff::cap`], with jitter:
//!   the wait is drawn from the upper half of that interval, so a rack of
//!   machines that lost the same server does not come back in lockstep. A
//!   `Retry-After` (delta-seconds or an HTTP date) longer than the backoff
//!   is honoured as given, without the cap.
//! - **Budget:** a number of retries, and a time all waits and failed
//!   attempts may take together. A retry whose wait would end past that
//!   time is not started. Image sources take both from `imprint.retries=`
//!   and `imprint.retry-timeout=` (one budget per transfer, its resumes
//!   included); the background reporters a number of attempts per request.

use std::time::{Duration, SystemTime};

use super::HttpOptions;

/// The first wait of an image transfer; doubled per consecutive failure.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest backoff wait of an image transfer (a `Retry-After` may ask
/// for longer).
pub const MAX_DELAY: Duration = Duration::from_secs(30);

/// Exponential backoff with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure (before jitter).
    pub first: Duration,
    /// The longest wait (before jitter).
    pub cap: Duration,
}

impl Backoff {
    /// The jittered wait after the `consecutive`-th failure in a row (from 1):
    /// uniformly in [d/2, d] for d = first × 2^(consecutive-1), capped.
    pub fn delay(&self, consecutive: u32, random: u64) -> Duration {
        let doublings = consecutive.saturating_sub(1).min(31);
        let full = self.first.saturating_mul(1u32 << doublings).min(self.cap);
        let half = full / 2;
        let half_nanos = half.as_nanos();
        let jitter_nanos = half_nanos * u128::from(random % 1024) / 1023;
        half + Duration::from_nanos(u64::try_from(jitter_nanos).unwrap_or(u64::MAX))
    }
}

/// The limits of one transfer's (or one request's) retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retries: u32,
    pub retry_timeout: Duration,
    pub backoff: Backoff,
}

impl RetryPolicy {
    /// An image transfer's: `imprint.retries=` and `imprint.retry-timeout=`.
    pub fn transfer(options: &HttpOptions) -> Self {
        RetryPolicy {
            retries: options.retries,
            retry_timeout: options.retry_timeout,
            backoff: Backoff {
                first: BASE_DELAY,
                cap: MAX_DELAY,
            },
        }
    }

    /// A background report's: `attempts` in all (at least one), with no
    /// time limit of its own; the reporter's bounded flush is that.
    pub fn attempts(attempts: u32, backoff: Backoff) -> Self {
        RetryPolicy {
            retries: attempts.max(1) - 1,
            retry_timeout: Duration::MAX,
            backoff,
        }
    }

    /// What to do after a retryable failure.
    pub fn decide(&self, attempt: &Attempt) -> Decision {
        if attempt.retries_used >= self.retries {
            return Decision::GiveUp(GiveUp::RetriesExhausted(attempt.retries_used));
        }
        let backoff = self
            .backoff
            .delay(attempt.consecutive_failures, attempt.random);
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
    /// The caller is shutting down (a reporter closing) and cut the wait.
    Stopped,
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
            GiveUp::Stopped => write!(f, "stopped while waiting to retry"),
        }
    }
}

/// `1.6 s`, for log lines.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// A `Retry-After` header as a wait from `now`: delta-seconds or an HTTP
/// date (RFC 9110 §10.2.3; the obsolete RFC 850 and asctime forms too, as
/// §5.6.7 asks of recipients). A date in the past is no wait; anything
/// unparsable is ignored (`None`), and the ordinary backoff applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // An absurd number of seconds saturates; the retry timeout bounds it.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn policy(retries: u32, timeout_secs: u64) -> RetryPolicy {
        RetryPolicy {
            retries,
            retry_timeout: Duration::from_secs(timeout_secs),
            backoff: Backoff {
                first: BASE_DELAY,
                cap: MAX_DELAY,
            },
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
        // The obsolete forms mean the same instant.
        for obsolete in ["Sunday, 06-Nov-94 08:51:07 GMT", "Sun Nov  6 08:51:07 1994"] {
            assert_eq!(
                parse_retry_after(obsolete, now),
                Some(Duration::from_secs(90)),
                "{obsolete}"
            );
        }
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
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
    fn reporter_policies_count_attempts_and_have_no_time_limit() {
        let backoff = Backoff {
            first: Duration::from_millis(100),
            cap: Duration::from_millis(300),
        };
        let p = RetryPolicy::attempts(5, backoff);
        // random 1023 is the top of the jitter interval: the plain doubling.
        let waits: Vec<u128> = (1..=4)
            .map(|n| delay(p.decide(&attempt(n - 1, n, u64::MAX / 2, 1023))).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 300, 300]);
        assert_eq!(
            p.decide(&attempt(4, 5, 0, 0)),
            Decision::GiveUp(GiveUp::RetriesExhausted(4))
        );
        assert_eq!(
            RetryPolicy::attempts(0, backoff).decide(&attempt(0, 1, 0, 0)),
            Decision::GiveUp(GiveUp::RetriesExhausted(0))
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
}

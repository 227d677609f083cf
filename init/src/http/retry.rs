//! The retry loop: try, classify ([`super::classify`]), wait
//! ([`super::backoff`]), try again, within a budget. Time and randomness
//! come from a [`Clock`], so tests run it with a fake one and never sleep;
//! a background reporter passes a clock whose sleep ends early when it is
//! closed.

use std::time::{Duration, Instant, SystemTime};

use super::HttpOptions;
use super::backoff::{self, Attempt, Decision, GiveUp, RetryPolicy};
use super::classify::{self, Failure};

/// Time and randomness for the retry loop, from outside so tests need not
/// wait.
pub trait Clock: Send + Sync {
    /// Monotonic time since some fixed start.
    fn elapsed(&self) -> Duration;
    /// The wall clock, for `Retry-After` dates.
    fn system_time(&self) -> SystemTime;
    /// Waits `duration`; `false` when the wait was cut short because the
    /// caller is shutting down, and no retry should follow.
    fn sleep(&self, duration: Duration) -> bool;
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

    fn sleep(&self, duration: Duration) -> bool {
        std::thread::sleep(duration);
        true
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

/// A failed attempt, as the retry loop needs to see it.
pub trait Retryable {
    /// What kind of failure it was ([`classify`]).
    fn failure(&self) -> Failure;
    /// The server's `Retry-After` header, when it sent one.
    fn retry_after(&self) -> Option<&str> {
        None
    }
}

/// A failed HTTP exchange: how it counts, what to say about it (the
/// request, then what went wrong), and the server's `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failed {
    pub failure: Failure,
    pub message: String,
    pub retry_after: Option<String>,
}

impl Failed {
    /// `request` (`GET <url>`) got no answer: `error`, with what to do
    /// about a certificate failure.
    pub fn request(request: &str, error: &ureq::Error, options: &HttpOptions) -> Failed {
        let detail =
            super::tls::certificate_failure(error, options).unwrap_or_else(|| error.to_string());
        Failed {
            failure: classify::classify(error),
            message: format!("{request}: {detail}"),
            retry_after: None,
        }
    }

    /// `request` was answered with `status`, which is not a success.
    pub fn status(
        request: &str,
        status: ureq::http::StatusCode,
        retry_after: Option<String>,
    ) -> Failed {
        let code = status.as_u16();
        let reason = status.canonical_reason().unwrap_or_default();
        Failed {
            failure: Failure::Status(code),
            message: format!("{request}: HTTP {code} {reason}"),
            retry_after,
        }
    }

    /// Logs the retry this failure leads to, as image transfers do:
    /// `GET <url>: HTTP 503 Service Unavailable; retry 2/8 in 1.6 s`.
    pub fn log_retry(&self, retry: &Retry) {
        log::warn!(
            "{}; retry {}/{} in {}",
            self.message,
            retry.number,
            retry.of,
            backoff::seconds(retry.delay)
        );
    }

    /// The error once no retry follows.
    pub fn into_error(self, give_up: Option<GiveUp>) -> anyhow::Error {
        anyhow::anyhow!(with_give_up(self.message, give_up))
    }
}

impl Retryable for Failed {
    fn failure(&self) -> Failure {
        self.failure
    }
    fn retry_after(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }
}

/// The `Retry-After` header of a response, if any.
pub fn retry_after_of<B>(response: &ureq::http::Response<B>) -> Option<String> {
    response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .map(|value| value.trim().to_owned())
}

/// The retry about to be made, for the caller's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// This is retry `number` of `of`.
    pub number: u32,
    pub of: u32,
    /// The wait before it.
    pub delay: Duration,
}

/// Why the loop ended without a value: the last error, and why it was not
/// retried (`None`: it was not retryable).
#[derive(Debug)]
pub struct Exhausted<E> {
    pub error: E,
    pub give_up: Option<GiveUp>,
}

/// `message` (the last failure) with why it was not retried, for errors.
/// With retries off, or a failure that is never retried, errors read as
/// they would without retries.
pub fn with_give_up(message: String, give_up: Option<GiveUp>) -> String {
    match give_up {
        None | Some(GiveUp::RetriesExhausted(0)) => message,
        Some(give_up) => format!("{message} ({give_up})"),
    }
}

/// One budget of retries (an image transfer's, resumes included; or one
/// report request's) and where it stands.
pub struct Retrier {
    policy: RetryPolicy,
    clock: std::sync::Arc<dyn Clock>,
    /// Retries made so far.
    used: u32,
    /// Failures in a row without progress.
    consecutive: u32,
    /// Time spent in finished outages.
    spent: Duration,
}

impl std::fmt::Debug for Retrier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Retrier")
            .field("policy", &self.policy)
            .field("used", &self.used)
            .field("consecutive", &self.consecutive)
            .field("spent", &self.spent)
            .finish_non_exhaustive()
    }
}

impl Retrier {
    pub fn new(policy: RetryPolicy, clock: std::sync::Arc<dyn Clock>) -> Self {
        Retrier {
            policy,
            clock,
            used: 0,
            consecutive: 0,
            spent: Duration::ZERO,
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the budget is
    /// spent. `before_retry` is called with each retryable failure and the
    /// retry it leads to, before the wait (to log it).
    pub fn run<T, E: Retryable>(
        &mut self,
        mut attempt: impl FnMut() -> Result<T, E>,
        mut before_retry: impl FnMut(&E, &Retry),
    ) -> Result<T, Exhausted<E>> {
        let outage_start = self.clock.elapsed();
        loop {
            let error = match attempt() {
                Ok(value) => {
                    self.end_outage(outage_start);
                    return Ok(value);
                }
                Err(error) if !classify::is_retryable(error.failure()) => {
                    return Err(Exhausted {
                        error,
                        give_up: None,
                    });
                }
                Err(error) => error,
            };
            let retry = match self.next(outage_start, error.retry_after()) {
                Ok(retry) => retry,
                Err(give_up) => {
                    return Err(Exhausted {
                        error,
                        give_up: Some(give_up),
                    });
                }
            };
            before_retry(&error, &retry);
            if let Err(give_up) = self.wait(&retry) {
                return Err(Exhausted {
                    error,
                    give_up: Some(give_up),
                });
            }
        }
    }

    /// Decides on the retry after a retryable failure of an outage that
    /// began at `outage_start` (a [`Clock::elapsed`] time).
    pub fn next(
        &mut self,
        outage_start: Duration,
        retry_after: Option<&str>,
    ) -> Result<Retry, GiveUp> {
        self.consecutive = self.consecutive.saturating_add(1);
        let now = self.clock.elapsed();
        let attempt = Attempt {
            retries_used: self.used,
            consecutive_failures: self.consecutive,
            elapsed: self.spent + now.saturating_sub(outage_start),
            retry_after: retry_after
                .and_then(|value| backoff::parse_retry_after(value, self.clock.system_time())),
            random: self.clock.random(),
        };
        match self.policy.decide(&attempt) {
            Decision::Retry { number, of, delay } => Ok(Retry { number, of, delay }),
            Decision::GiveUp(give_up) => {
                self.spent += now.saturating_sub(outage_start);
                Err(give_up)
            }
        }
    }

    /// Waits before `retry` and counts it.
    pub fn wait(&mut self, retry: &Retry) -> Result<(), GiveUp> {
        if !self.clock.sleep(retry.delay) {
            return Err(GiveUp::Stopped);
        }
        self.used += 1;
        Ok(())
    }

    /// The outage that began at `outage_start` is over (an answer came).
    pub fn end_outage(&mut self, outage_start: Duration) {
        self.spent += self.clock.elapsed().saturating_sub(outage_start);
    }

    /// Bytes arrived: the backoff starts from its first step again (the
    /// budget does not).
    pub fn progressed(&mut self) {
        self.consecutive = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::http::backoff::{BASE_DELAY, Backoff, MAX_DELAY};
    use std::sync::{Arc, Mutex};
    use std::time::UNIX_EPOCH;

    /// Time passes only when someone sleeps; sleeps are recorded. The
    /// random number is fixed.
    #[derive(Debug, Default)]
    pub(crate) struct FakeClock {
        pub now: Mutex<Duration>,
        pub sleeps: Mutex<Vec<Duration>>,
        pub random: u64,
    }

    impl Clock for FakeClock {
        fn elapsed(&self) -> Duration {
            *self.now.lock().unwrap()
        }
        fn system_time(&self) -> SystemTime {
            UNIX_EPOCH + Duration::from_secs(1_700_000_000) + self.elapsed()
        }
        fn sleep(&self, duration: Duration) -> bool {
            *self.now.lock().unwrap() += duration;
            self.sleeps.lock().unwrap().push(duration);
            true
        }
        fn random(&self) -> u64 {
            self.random
        }
    }

    #[derive(Debug, PartialEq)]
    struct Error(Failure, Option<&'static str>);

    impl Retryable for Error {
        fn failure(&self) -> Failure {
            self.0
        }
        fn retry_after(&self) -> Option<&str> {
            self.1
        }
    }

    fn retrier(retries: u32, timeout_secs: u64, clock: &Arc<FakeClock>) -> Retrier {
        let policy = RetryPolicy {
            retries,
            retry_timeout: Duration::from_secs(timeout_secs),
            backoff: Backoff {
                first: BASE_DELAY,
                cap: MAX_DELAY,
            },
        };
        Retrier::new(policy, Arc::clone(clock) as Arc<dyn Clock>)
    }

    #[test]
    fn retries_until_success_with_the_backoff_sequence() {
        let clock = Arc::new(FakeClock {
            random: 1023,
            ..FakeClock::default()
        });
        let mut r = retrier(8, 600, &clock);
        let mut answers = vec![
            Err(Error(Failure::Status(503), None)),
            Err(Error(Failure::Connection, None)),
            Err(Error(Failure::Status(429), Some("7"))),
            Err(Error(Failure::Timeout, None)),
            Ok(42),
        ]
        .into_iter();
        let mut logged = Vec::new();
        let value = r.run(
            || answers.next().unwrap(),
            |error, retry| logged.push((error.0, retry.number)),
        );
        assert_eq!(value.unwrap(), 42);
        assert_eq!(
            *clock.sleeps.lock().unwrap(),
            [
                Duration::from_millis(500),
                Duration::from_secs(1),
                // Retry-After, longer than the 2 s backoff.
                Duration::from_secs(7),
                Duration::from_secs(4),
            ]
        );
        assert_eq!(
            logged,
            [
                (Failure::Status(503), 1),
                (Failure::Connection, 2),
                (Failure::Status(429), 3),
                (Failure::Timeout, 4)
            ]
        );
    }

    #[test]
    fn a_final_failure_is_not_retried() {
        let clock = Arc::new(FakeClock::default());
        let mut calls = 0;
        let result: Result<(), _> = retrier(8, 600, &clock).run(
            || {
                calls += 1;
                Err(Error(Failure::Status(404), None))
            },
            |_, _| {},
        );
        let exhausted = result.unwrap_err();
        assert_eq!(
            (exhausted.error, exhausted.give_up, calls),
            (Error(Failure::Status(404), None), None, 1)
        );
        assert!(clock.sleeps.lock().unwrap().is_empty());
    }

    #[test]
    fn the_budget_is_shared_across_runs_and_progress_resets_the_backoff() {
        let clock = Arc::new(FakeClock::default());
        let mut r = retrier(3, 600, &clock);
        let fail = || Err::<(), _>(Error(Failure::BrokenBody, None));
        let first = r.run(fail, |_, _| {}).unwrap_err();
        assert_eq!(first.give_up, Some(GiveUp::RetriesExhausted(3)));
        assert_eq!(clock.sleeps.lock().unwrap().len(), 3);

        let clock = Arc::new(FakeClock::default());
        let mut r = retrier(3, 600, &clock);
        let mut answers = vec![Err(Error(Failure::Timeout, None)), Ok(())].into_iter();
        r.run(|| answers.next().unwrap(), |_, _| {}).unwrap();
        r.progressed();
        let mut answers = vec![Err(Error(Failure::Timeout, None)), Ok(())].into_iter();
        r.run(|| answers.next().unwrap(), |_, _| {}).unwrap();
        // Both waits are the first step: progress came in between.
        assert_eq!(
            *clock.sleeps.lock().unwrap(),
            [Duration::from_millis(250); 2]
        );
        let last = r.run(fail, |_, _| {}).unwrap_err();
        assert_eq!(last.give_up, Some(GiveUp::RetriesExhausted(3)));
    }

    #[test]
    fn a_retry_after_past_the_retry_timeout_gives_up_at_once() {
        let clock = Arc::new(FakeClock::default());
        let result: Result<(), _> =
            retrier(8, 60, &clock).run(|| Err(Error(Failure::Status(503), Some("120"))), |_, _| {});
        assert!(matches!(
            result.unwrap_err().give_up,
            Some(GiveUp::TimedOut { retries: 0, .. })
        ));
        assert!(clock.sleeps.lock().unwrap().is_empty());
    }

    #[test]
    fn a_cut_sleep_stops_the_loop() {
        struct Closing;
        impl Clock for Closing {
            fn elapsed(&self) -> Duration {
                Duration::ZERO
            }
            fn system_time(&self) -> SystemTime {
                UNIX_EPOCH
            }
            fn sleep(&self, _: Duration) -> bool {
                false
            }
            fn random(&self) -> u64 {
                0
            }
        }
        let policy = RetryPolicy::attempts(
            5,
            Backoff {
                first: BASE_DELAY,
                cap: MAX_DELAY,
            },
        );
        let mut calls = 0;
        let result: Result<(), _> = Retrier::new(policy, Arc::new(Closing)).run(
            || {
                calls += 1;
                Err(Error(Failure::Connection, None))
            },
            |_, _| {},
        );
        assert_eq!(result.unwrap_err().give_up, Some(GiveUp::Stopped));
        assert_eq!(calls, 1);
    }
}

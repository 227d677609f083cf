//! The report webhook (`imprint.report=<url>`): each event is POSTed as
//! `application/json` to the URL, in order, by a background thread.
//!
//! The deploy never waits for it and never fails because of it:
//! [`Webhook::send`] only queues, on the [shared worker](super::worker),
//! whose queue is bounded: when it is full the oldest `progress` event is
//! dropped (a newer one says more), or the oldest event when there is none,
//! and the drop is counted. A POST that fails in a way
//! [`crate::http::classify`] calls retryable (connection error, timeout,
//! HTTP 408/429, most 5xx) is retried with its backoff; another answer that
//! is not 2xx is final. After the last attempt the event is given up and
//! the next one is tried. The first failure of a streak is logged as a
//! warning, the recovery once as info; attempts in between are not logged,
//! so an unreachable receiver does not flood the console.
//! [`Webhook::flush`] waits, for a bounded time, until the queue is empty:
//! PID 1 calls it before kexec or power-off so the last events leave.
//!
//! HTTPS is verified like image sources ([`crate::http::tls`]):
//! `imprint.ca=` and `imprint.insecure=1` apply. The agent is built on the
//! worker thread, so fetching an `imprint.ca=` bundle cannot hold up the caller.
//! Messages name the URL without user info and query, where tokens hide.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Result, bail};
use serde_json::Value;

use super::worker::{Class, Deliver, Reporter};
use super::{Event, Sink};
use crate::http::agent::{Exchange, agent};
use crate::http::backoff::{Backoff, RetryPolicy};
use crate::http::classify::Failure;
use crate::http::retry::{Clock, Failed, Retrier, retry_after_of};
use crate::http::{is_web_url, redact_url};
use crate::source::SourceOptions;

/// How hard the webhook tries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookOptions {
    /// POSTs of one event before it is given up.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each further one
    /// (with jitter, [`crate::http::backoff`]).
    pub first_backoff: Duration,
    /// The longest wait between two attempts (a `Retry-After` may ask for
    /// longer).
    pub max_backoff: Duration,
    /// The time one attempt may take, connecting included.
    pub timeout: Duration,
    /// Events waiting to be sent before the oldest are dropped.
    pub queue_len: usize,
}

impl Default for WebhookOptions {
    fn default() -> Self {
        WebhookOptions {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
            queue_len: 256,
        }
    }
}

/// What happened to the events so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Answered with a 2xx.
    pub delivered: u64,
    /// Given up after the last attempt, or at a final HTTP status.
    pub given_up: u64,
    /// Dropped unsent because the queue was full.
    pub dropped: u64,
}

/// A running webhook; its thread stops when this is dropped (without
/// waiting for the queue: call [`flush`](Self::flush) first).
pub struct Webhook {
    reporter: Reporter<String>,
    stats: Arc<Mutex<WebhookStats>>,
    url: String,
}

impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &redact_url(&self.url))
            .finish()
    }
}

impl Webhook {
    /// Starts the thread that posts to `url` (`http://` or `https://`).
    /// Fails only on another scheme, or when no thread can be started.
    pub fn start(url: &str, source: &SourceOptions, options: WebhookOptions) -> Result<Webhook> {
        if !is_web_url(url) {
            bail!("report URL {} is not http:// or https://", redact_url(url));
        }
        let stats = Arc::new(Mutex::new(WebhookStats::default()));
        let poster = Poster {
            url: url.to_owned(),
            source: source.clone(),
            policy: RetryPolicy::attempts(
                options.attempts,
                Backoff {
                    first: options.first_backoff,
                    cap: options.max_backoff,
                },
            ),
            timeout: options.timeout,
            agent: None,
            failing: false,
            stats: Arc::clone(&stats),
        };
        let reporter = Reporter::start("report-webhook", options.queue_len, poster)?;
        Ok(Webhook {
            reporter,
            stats,
            url: url.to_owned(),
        })
    }

    /// Queues `body` (one JSON event) to be posted after those queued
    /// before it. Never blocks on the network. `progress` marks an event
    /// that may be dropped first when the queue is full.
    pub fn send(&self, body: String, progress: bool) {
        let class = if progress {
            Class::Progress
        } else {
            Class::Event
        };
        self.reporter.push(body, class);
    }

    /// Waits until every queued event is delivered or given up, at most
    /// `timeout`; `true` when the queue is empty.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.reporter.flush(timeout)
    }

    /// Counts of delivered, given-up and dropped events.
    pub fn stats(&self) -> WebhookStats {
        WebhookStats {
            dropped: self.reporter.dropped(),
            ..*self.stats.lock().unwrap_or_else(PoisonError::into_inner)
        }
    }
}

impl Sink for Webhook {
    fn event(&self, event: &Event, json: &Value) {
        self.send(json.to_string(), event.kind.is_progress());
    }

    fn flush(&self, timeout: Duration) -> bool {
        Webhook::flush(self, timeout)
    }

    fn name(&self) -> &'static str {
        "webhook"
    }
}

/// Posts events, on the worker thread.
struct Poster {
    url: String,
    source: SourceOptions,
    policy: RetryPolicy,
    timeout: Duration,
    agent: Option<ureq::Agent>,
    /// In a failure streak: the first failure was logged, later ones are not.
    failing: bool,
    stats: Arc<Mutex<WebhookStats>>,
}

impl Deliver for Poster {
    type Item = String;

    fn deliver(&mut self, items: Vec<String>, clock: &Arc<dyn Clock>) {
        for body in items {
            let delivered = self.deliver_one(&body, clock);
            let mut stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
            if delivered {
                stats.delivered += 1;
            } else {
                stats.given_up += 1;
            }
        }
    }
}

impl Poster {
    /// Posts one event until it is delivered, final, or out of attempts.
    fn deliver_one(&mut self, body: &str, clock: &Arc<dyn Clock>) -> bool {
        let mut retrier = Retrier::new(self.policy, Arc::clone(clock));
        let result = retrier.run(
            || {
                let result = self.post(body);
                if let Err(failed) = &result
                    && !self.failing
                {
                    self.failing = true;
                    log::warn!(
                        "report: {}; events are retried in the background \
                         and further failures are not logged",
                        failed.message
                    );
                }
                result
            },
            |_, _| {},
        );
        match result {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    let stats = *self.stats.lock().unwrap_or_else(PoisonError::into_inner);
                    log::info!(
                        "report {}: delivering again ({} events given up so far)",
                        redact_url(&self.url),
                        stats.given_up,
                    );
                }
                true
            }
            Err(exhausted) => {
                log::debug!("report: event given up: {}", exhausted.error.message);
                false
            }
        }
    }

    fn post(&mut self, body: &str) -> Result<(), Failed> {
        if self.agent.is_none() {
            let built = agent(
                &self.source,
                Exchange::Api {
                    timeout: self.timeout,
                },
            )
            // A CA bundle that cannot be read or fetched now may be later:
            // counted as a connection failure, which is retried.
            .map_err(|error| Failed {
                failure: Failure::Connection,
                message: format!("{}: {error:#}", redact_url(&self.url)),
                retry_after: None,
            })?;
            self.agent = Some(built);
        }
        let Some(agent) = &self.agent else {
            return Err(Failed {
                failure: Failure::Fatal,
                message: "no HTTP agent".into(),
                retry_after: None,
            });
        };
        let request = format!("POST {}", redact_url(&self.url));
        let response = agent
            .post(&self.url)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
            .map_err(|error| Failed::request(&request, &error, &self.source))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failed::status(&request, status, retry_after_of(&response)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_qemu::http::{Behavior, FixtureServer};
    use std::time::Instant;

    fn fast() -> WebhookOptions {
        WebhookOptions {
            attempts: 4,
            first_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
            queue_len: 64,
        }
    }

    fn posted(server: &FixtureServer, count: usize) -> Vec<String> {
        server
            .requests_at_least(count, Duration::from_secs(10))
            .into_iter()
            .filter(|request| request.method == "POST" && request.status == 204)
            .map(|request| String::from_utf8(request.body).unwrap())
            .collect()
    }

    #[test]
    fn delivers_events_in_order() {
        let server = FixtureServer::start().unwrap();
        let hook = Webhook::start(&server.url("hook"), &SourceOptions::default(), fast()).unwrap();
        let events: Vec<String> = (1..=20).map(|n| format!("{{\"seq\":{n}}}")).collect();
        for event in &events {
            hook.send(event.clone(), false);
        }
        assert!(hook.flush(Duration::from_secs(20)));
        assert_eq!(posted(&server, 20), events);
        let requests = server.requests();
        assert!(requests.iter().all(|r| r.path == "/hook"));
        assert_eq!(
            hook.stats(),
            WebhookStats {
                delivered: 20,
                given_up: 0,
                dropped: 0
            }
        );
    }

    #[test]
    fn retries_after_server_errors_then_delivers() {
        let server = FixtureServer::start().unwrap();
        server.push_behaviors("hook", [Behavior::Status(500), Behavior::Status(503)]);
        let hook = Webhook::start(&server.url("hook"), &SourceOptions::default(), fast()).unwrap();
        hook.send("{\"seq\":1}".into(), false);
        hook.send("{\"seq\":2}".into(), false);
        assert!(hook.flush(Duration::from_secs(20)));
        let requests = server.requests_at_least(4, Duration::from_secs(10));
        let seen: Vec<(u16, &[u8])> = requests
            .iter()
            .map(|r| (r.status, r.body.as_slice()))
            .collect();
        assert_eq!(
            seen,
            vec![
                (500, &b"{\"seq\":1}"[..]),
                (503, &b"{\"seq\":1}"[..]),
                (204, &b"{\"seq\":1}"[..]),
                (204, &b"{\"seq\":2}"[..]),
            ]
        );
        assert_eq!(hook.stats().delivered, 2);
    }

    #[test]
    fn final_status_and_exhausted_attempts_give_up_and_move_on() {
        let server = FixtureServer::start().unwrap();
        server.push_behaviors(
            "hook",
            [
                Behavior::Status(404),
                Behavior::Status(500),
                Behavior::Status(500),
                Behavior::Status(500),
                Behavior::Status(500),
            ],
        );
        let hook = Webhook::start(&server.url("hook"), &SourceOptions::default(), fast()).unwrap();
        for n in 1..=3 {
            hook.send(format!("{{\"seq\":{n}}}"), false);
        }
        assert!(hook.flush(Duration::from_secs(20)));
        // 1: one 404, final. 2: four 500s, out of attempts. 3: delivered.
        let statuses: Vec<u16> = server
            .requests_at_least(6, Duration::from_secs(10))
            .iter()
            .map(|r| r.status)
            .collect();
        assert_eq!(statuses, vec![404, 500, 500, 500, 500, 204]);
        assert_eq!(posted(&server, 6), vec!["{\"seq\":3}".to_owned()]);
        assert_eq!(
            hook.stats(),
            WebhookStats {
                delivered: 1,
                given_up: 2,
                dropped: 0
            }
        );
    }

    #[test]
    fn unreachable_receiver_never_blocks_the_sender() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let options = WebhookOptions {
            first_backoff: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(3600),
            queue_len: 4,
            ..fast()
        };
        let hook = Webhook::start(
            &format!("http://127.0.0.1:{port}/hook"),
            &SourceOptions::default(),
            options,
        )
        .unwrap();
        for n in 0..100 {
            hook.send(format!("{{\"seq\":{n}}}"), true);
        }
        // The worker sits in an hour-long backoff: only a bounded wait ends.
        assert!(!hook.flush(Duration::from_millis(200)));
        let stats = hook.stats();
        assert_eq!(stats.delivered, 0);
        // 100 sent, at most 4 queued and 1 in flight.
        assert!(stats.dropped >= 95, "{stats:?}");
    }

    #[test]
    fn a_full_queue_drops_progress_before_other_events() {
        let server = FixtureServer::start().unwrap();
        // The first event waits out an hour of backoff, so the rest queue up.
        let options = WebhookOptions {
            first_backoff: Duration::from_secs(3600),
            queue_len: 3,
            ..fast()
        };
        server.push_behaviors("hook", [Behavior::Status(503)]);
        let hook = Webhook::start(&server.url("hook"), &SourceOptions::default(), options).unwrap();
        hook.send("first".into(), false);
        // Wait until the worker holds it, so the queue below is what it seems.
        server.requests_at_least(1, Duration::from_secs(10));
        hook.send("p1".into(), true);
        hook.send("started".into(), false);
        hook.send("p2".into(), true);
        hook.send("failed".into(), false); // drops p1
        hook.send("handoff".into(), false); // drops p2
        hook.send("last".into(), false); // no progress left: drops the oldest
        // Which ones went is the worker's policy, tested there.
        assert_eq!(hook.stats().dropped, 3);
    }

    #[test]
    fn https_is_verified_with_the_sources_trust() {
        let ca = imprint_qemu::http::TestCa::new("webhook test CA").unwrap();
        let cert = ca.issue_for_fixture().unwrap();
        let server = FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let trusted = SourceOptions {
            ca: Some(ca_path.display().to_string()),
            ..SourceOptions::default()
        };
        let hook = Webhook::start(&server.url("hook"), &trusted, fast()).unwrap();
        hook.send("{\"seq\":1}".into(), false);
        assert!(hook.flush(Duration::from_secs(20)));
        assert_eq!(posted(&server, 1), ["{\"seq\":1}"]);

        // Without the CA the certificate is refused, once: retrying cannot fix it.
        let untrusted =
            Webhook::start(&server.url("hook"), &SourceOptions::default(), fast()).unwrap();
        untrusted.send("{\"seq\":2}".into(), false);
        assert!(untrusted.flush(Duration::from_secs(20)));
        assert_eq!(untrusted.stats().given_up, 1);
        // The server notices the refused handshake on its own thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.failed_handshakes() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(server.failed_handshakes(), 1);
        assert_eq!(server.requests().len(), 1);
    }

    #[test]
    fn bad_scheme_is_refused() {
        let message = format!(
            "{:#}",
            Webhook::start(
                "ftp://user:secret@host/x?token=abc",
                &SourceOptions::default(),
                fast()
            )
            .unwrap_err()
        );
        assert_eq!(
            message,
            "report URL ftp://host/x is not http:// or https://"
        );
    }
}

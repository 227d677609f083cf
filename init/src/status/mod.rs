//! Status events: what the deploy is doing, told to whoever asks besides the
//! console.
//!
//! One [`Status`] handle is shared by everything that has something to say.
//! [`Status::emit`] records an [`EventKind`] in the shared state and hands
//! it to every attached [`Sink`]: with `imprint.report=<url>` the
//! [`webhook`], which POSTs each event as JSON in order, retrying in the
//! background; with DRP credentials in the deploy spec, DRP's job reporter
//! ([`crate::drp::DrpReporter`]), which copies each event into the job log
//! and closes the job with the run's result ([`Status::set_result`]). Both
//! run on the one [background worker](worker). With
//! `imprint.status-port=<port>`, a [read-only HTTP server](server) answers
//! `GET /status` with the [status document](Status::document). Neither ever
//! blocks or fails the deploy: a report URL that is not HTTP(S) or a port
//! that cannot be bound is logged as a warning and left out.
//!
//! Events carry only what callers pass them; callers must not pass secrets
//! (tokens, passwords, URLs with credentials): `/status` has no
//! authentication, and the receiver of the webhook may log what it gets.
//! The README ("Status events") documents every event and the document.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::pipeline::progress::{LogProgress, Progress};
use crate::source::SourceOptions;

pub mod event;
pub mod machine;
mod result;
pub mod server;
pub mod webhook;
pub(crate) mod worker;

pub use event::{Event, EventKind, HandoffHow, MirrorServed, Stage};
pub use machine::MachineInfo;
pub use result::{LastDeploy, RunResult};
pub use server::StatusServer;
pub use webhook::{Webhook, WebhookOptions, WebhookStats};

/// Where status goes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusOptions {
    /// `imprint.report=`: the URL each event is POSTed to.
    pub report_url: Option<String>,
    /// `imprint.status-port=`: the TCP port `GET /status` is answered on.
    pub status_port: Option<u16>,
    /// Timeouts and TLS trust (`imprint.ca=`, `imprint.insecure=`), shared
    /// with image sources.
    pub source: SourceOptions,
    /// Retries and queue size of the webhook.
    pub webhook: WebhookOptions,
}

/// Where the deploy is, as `/status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// Handed over after a successful deploy.
    Succeeded,
    /// The last word was a `failed` event (no `retrying` since).
    Failed,
}

impl RunState {
    fn name(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }
}

/// What has happened so far: the events, and the latest of each thing.
#[derive(Debug)]
struct StatusState {
    /// The `seq` of the last event.
    seq: u64,
    run: RunState,
    stage: Option<Stage>,
    machine: Value,
    progress: Value,
    error: Value,
    /// Every event in order, a run of progress events kept as its latest.
    events: Vec<Value>,
    /// The boot timeline so far (`crate::timeline`).
    timeline: Value,
    /// Why nobody else heard of a failure (no DRP job to report it to).
    unreported: Option<String>,
}

impl Default for StatusState {
    fn default() -> Self {
        StatusState {
            seq: 0,
            run: RunState::Running,
            stage: None,
            machine: Value::Null,
            progress: Value::Null,
            error: Value::Null,
            timeline: Value::Null,
            events: Vec::new(),
            unreported: None,
        }
    }
}

impl StatusState {
    /// Takes `event` into account; returns its JSON.
    fn record(&mut self, event: &Event) -> Value {
        let json = event.to_json();
        if let Some(stage) = event.kind.stage() {
            self.stage = Some(stage);
        }
        match &event.kind {
            EventKind::Started { .. } => self.machine = json["machine"].clone(),
            EventKind::Progress { .. } => self.progress = json.clone(),
            EventKind::Failed { .. } => {
                self.run = RunState::Failed;
                self.error = json.clone();
            }
            EventKind::Retrying { .. } => self.run = RunState::Running,
            // A handoff after a failure (on-failure=reboot) is no success.
            EventKind::Handoff { .. } if self.run != RunState::Failed => {
                self.run = RunState::Succeeded;
            }
            _ => {}
        }
        let coalesce = event.kind.is_progress()
            && self
                .events
                .last()
                .is_some_and(|last| last["event"] == "progress");
        if coalesce {
            self.events.pop();
        }
        self.events.push(json.clone());
        json
    }

    fn document(&self) -> Value {
        json!({
            "imprint": event::VERSION,
            "state": self.run.name(),
            "stage": self.stage,
            "machine": self.machine,
            "progress": self.progress,
            "error": self.error,
            "timeline": self.timeline,
            "unreported": self.unreported,
            "events": self.events,
        })
    }
}

/// The state behind [`Status`], shared with the [`StatusServer`].
#[derive(Debug, Clone, Default)]
pub struct SharedState(Arc<Mutex<StatusState>>);

impl SharedState {
    fn lock(&self) -> MutexGuard<'_, StatusState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The status document, as `GET /status` answers it.
    pub fn document(&self) -> Value {
        self.lock().document()
    }
}

/// Where events go besides the status document: the webhook, DRP's job.
pub trait Sink: Send + Sync {
    /// Takes `event`, just recorded (`json` is its JSON, as the webhook
    /// posts it). Called in `seq` order; must only queue, never block.
    fn event(&self, event: &Event, json: &Value);

    /// The run ended with `result`, after every event emitted before the
    /// [`Status::flush`] that passes it on. Must only queue.
    fn run_ended(&self, _result: &RunResult) {}

    /// Waits, at most `timeout`, until everything given is delivered or
    /// given up; whether it is.
    fn flush(&self, timeout: Duration) -> bool;

    /// What kind of sink it is; [`Status`] holds one of each.
    fn name(&self) -> &'static str;
}

struct Inner {
    state: SharedState,
    /// The webhook, also among the sinks: kept for its stats.
    webhook: OnceLock<Arc<Webhook>>,
    server: OnceLock<StatusServer>,
    sinks: Mutex<Vec<Arc<dyn Sink>>>,
    /// The current run's result, until a flush passes it on.
    result: Mutex<Option<RunResult>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inner")
            .field("state", &self.state)
            .field("webhook", &self.webhook)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// The handle everything reports through; cheap to clone, usable from any
/// thread.
#[derive(Debug, Clone)]
pub struct Status {
    inner: Arc<Inner>,
}

impl Status {
    /// Starts the webhook and the status server that `options` ask for.
    /// Never fails: what cannot start is logged as a warning and left out.
    pub fn new(options: &StatusOptions) -> Status {
        let status = Status {
            inner: Arc::new(Inner {
                state: SharedState::default(),
                webhook: OnceLock::new(),
                server: OnceLock::new(),
                sinks: Mutex::new(Vec::new()),
                result: Mutex::new(None),
            }),
        };
        status.adopt(options);
        status
    }

    /// Starts what `options` ask for and is not running yet: a deploy spec
    /// loaded later (DRP's `imprint.json`) may name a report URL or a status
    /// port the command line did not. What already runs is kept; events
    /// emitted before a late webhook started are not replayed to it.
    pub fn adopt(&self, options: &StatusOptions) {
        if let Some(url) = options.report_url.as_deref()
            && self.inner.webhook.get().is_none()
        {
            match Webhook::start(url, &options.source, options.webhook.clone()) {
                Ok(webhook) => {
                    log::info!(
                        "status events are posted to {}",
                        crate::http::redact_url(url)
                    );
                    let webhook = Arc::new(webhook);
                    if self.inner.webhook.set(Arc::clone(&webhook)).is_ok() {
                        self.attach(webhook);
                    }
                }
                Err(error) => log::warn!("imprint.report: {error:#}; events are not posted"),
            }
        }
        if let Some(port) = options.status_port
            && self.inner.server.get().is_none()
        {
            match StatusServer::start(port, self.inner.state.clone()) {
                Ok(server) => {
                    log::info!("status: GET http://<this machine>:{port}/status");
                    let _ = self.inner.server.set(server);
                }
                Err(error) => {
                    log::warn!("imprint.status-port: {error:#}; there is no status endpoint");
                }
            }
        }
    }

    /// Records `kind` as the next event and hands it to every sink.
    /// Never blocks on the network.
    pub fn emit(&self, kind: EventKind) {
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let mut state = self.inner.state.lock();
        state.seq += 1;
        let event = Event {
            seq: state.seq,
            time,
            uptime: crate::timeline::since_boot().as_secs_f64(),
            kind,
        };
        let mut json = state.record(&event);
        // The end of a run carries the timeline that led to it.
        if matches!(
            event.kind,
            EventKind::Handoff { .. } | EventKind::Failed { .. }
        ) && !state.timeline.is_null()
            && let Value::Object(object) = &mut json
        {
            object.insert("timeline".into(), state.timeline.clone());
        }
        // Handed over under the state lock, so every sink sees `seq` order
        // whichever threads emit.
        for sink in self.sinks().iter() {
            sink.event(&event, &json);
        }
    }

    /// Hands every event from now on to `sink` too. A sink of a kind
    /// already attached ([`Sink::name`]) is not attached again.
    pub fn attach(&self, sink: Arc<dyn Sink>) {
        let mut sinks = self.sinks();
        if !sinks.iter().any(|s| s.name() == sink.name()) {
            sinks.push(sink);
        }
    }

    /// Whether a sink of kind `name` is attached.
    pub fn has_sink(&self, name: &str) -> bool {
        self.sinks().iter().any(|sink| sink.name() == name)
    }

    fn sinks(&self) -> MutexGuard<'_, Vec<Arc<dyn Sink>>> {
        self.inner
            .sinks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn held_result(&self) -> MutexGuard<'_, Option<RunResult>> {
        self.inner
            .result
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Says how the current run ended: the result line as printed, and what
    /// it did. Kept until the next [`flush`](Self::flush), which passes it to
    /// the sinks after every event emitted before (the `handoff` or
    /// `retrying` that follows the result line included); a second call
    /// before that replaces it. With `on-failure=retry:N`, each run sets its
    /// result and flushes before the next begins.
    pub fn set_result(&self, result: RunResult) {
        *self.held_result() = Some(result);
    }

    /// Changes the current run's result if it is not passed on yet (a
    /// `kexec!` that fails after the result line turns success into
    /// failure); `false` when there is none to change.
    pub fn amend_result(&self, amend: impl FnOnce(&mut RunResult)) -> bool {
        self.held_result().as_mut().map(amend).is_some()
    }

    /// Says which stage the deploy is in, for `/status`, without an event
    /// (stages that have none of their own: `drivers`, `network`, `spec`, `disk`).
    pub fn enter(&self, stage: Stage) {
        self.inner.state.lock().stage = Some(stage);
    }

    /// Sets the boot timeline shown in `/status` and sent with the
    /// `handoff` and `failed` events.
    pub fn set_timeline(&self, timeline: Value) {
        self.inner.state.lock().timeline = timeline;
    }

    /// Says, in `/status`'s `unreported`, what no report sink was told: a
    /// failure before DRP's `imprint.json` was loaded reaches no DRP job.
    pub fn set_unreported(&self, why: String) {
        self.inner.state.lock().unreported = Some(why);
    }

    /// The stage last entered (`write` before any).
    pub fn stage(&self) -> Stage {
        self.inner.state.lock().stage.unwrap_or(Stage::Write)
    }

    /// Passes the run's result on (see [`set_result`](Self::set_result)),
    /// then waits, at most `timeout` in all, until every sink has dealt with
    /// everything (delivered or given up); `true` when all have, or when
    /// there are none. Call before kexec, reboot or power-off, and between
    /// the runs of `on-failure=retry:N`.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let sinks = self.sinks().clone();
        if let Some(result) = self.held_result().take() {
            for sink in &sinks {
                sink.run_ended(&result);
            }
        }
        let mut all = true;
        for sink in &sinks {
            let left = deadline.saturating_duration_since(Instant::now());
            all &= sink.flush(left);
        }
        all
    }

    /// The status document (see the README, "Status events").
    pub fn document(&self) -> Value {
        self.inner.state.document()
    }

    /// The state a [`StatusServer`] serves.
    pub fn shared_state(&self) -> SharedState {
        self.inner.state.clone()
    }

    /// What the webhook did so far, when there is one.
    pub fn webhook_stats(&self) -> Option<WebhookStats> {
        self.inner.webhook.get().map(|webhook| webhook.stats())
    }

    /// Where the status server listens, when there is one.
    pub fn status_address(&self) -> Option<SocketAddr> {
        self.inner.server.get().map(StatusServer::local_addr)
    }
}

/// A [`Progress`] sink for the pipeline that does both: logs a progress line
/// every [`LOG_INTERVAL`](Self::LOG_INTERVAL) (through [`LogProgress`]) and
/// emits a `progress` event at most every
/// [`EVENT_INTERVAL`](Self::EVENT_INTERVAL).
#[derive(Debug)]
pub struct ProgressEvents {
    status: Status,
    stage: Stage,
    interval: Duration,
    log: LogProgress,
    /// When the last event went out (or the sink was made), and the bytes then.
    last: (Instant, u64),
}

impl ProgressEvents {
    /// How often a `progress` event is emitted at most.
    pub const EVENT_INTERVAL: Duration = Duration::from_secs(5);
    /// How often a progress line is logged.
    pub const LOG_INTERVAL: Duration = Duration::from_secs(2);

    /// Progress of `stage` (normally [`Stage::Write`]) to `status`.
    pub fn new(status: Status, stage: Stage) -> ProgressEvents {
        ProgressEvents {
            status,
            stage,
            interval: Self::EVENT_INTERVAL,
            log: LogProgress::new(Self::LOG_INTERVAL),
            last: (Instant::now(), 0),
        }
    }

    /// [`Progress::update`] at the time `now`.
    fn update_at(&mut self, done: u64, total: Option<u64>, now: Instant) {
        let (last_time, last_done) = self.last;
        let elapsed = now.saturating_duration_since(last_time);
        if elapsed < self.interval {
            return;
        }
        let bytes = u128::from(done.saturating_sub(last_done));
        let rate = (bytes * 1_000_000)
            .checked_div(elapsed.as_micros())
            .map_or(0, |rate| u64::try_from(rate).unwrap_or(u64::MAX));
        self.last = (now, done);
        self.status.emit(EventKind::Progress {
            stage: self.stage,
            bytes: done,
            total,
            rate,
        });
    }
}

impl Progress for ProgressEvents {
    fn update(&mut self, done: u64, total: Option<u64>) {
        self.log.update(done, total);
        self.update_at(done, total, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint_qemu::http::FixtureServer;

    fn failed(stage: Stage, error: &str) -> EventKind {
        EventKind::Failed {
            stage,
            error: error.into(),
            offset: None,
            attempt: None,
        }
    }

    fn progress(bytes: u64) -> EventKind {
        EventKind::Progress {
            stage: Stage::Write,
            bytes,
            total: Some(100),
            rate: 1,
        }
    }

    fn handoff(how: HandoffHow) -> EventKind {
        EventKind::Handoff {
            how,
            kernel: None,
            cmdline: None,
            detail: None,
        }
    }

    #[test]
    fn the_timeline_is_in_the_document_and_the_final_events() {
        let status = Status::new(&StatusOptions::default());
        status.emit(EventKind::Verified {
            sha256: "ab".into(),
            algorithm: None,
            bytes: 1,
            image_digest: None,
        });
        status.set_timeline(json!({"kernel": 0.0, "pid1": 1.5}));
        status.emit(handoff(HandoffHow::Reboot));
        let document = status.document();
        assert_eq!(document["timeline"], json!({"kernel": 0.0, "pid1": 1.5}));
        let sink = Arc::new(Recorder::default());
        status.attach(Arc::clone(&sink) as Arc<dyn Sink>);
        status.emit(EventKind::Failed {
            stage: Stage::Handoff,
            error: "kexec refused".into(),
            offset: None,
            attempt: None,
        });
        let seen = sink.seen();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].starts_with("event "), "{}", seen[0]);
        assert!(seen[0].contains("failed: {"), "{}", seen[0]);
        assert!(seen[0].contains("kexec refused"), "{}", seen[0]);
        assert!(!seen[0].contains("\"seq\""), "{}", seen[0]);
    }

    /// A sink that writes down what it is given.
    #[derive(Default)]
    struct Recorder {
        seen: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn seen(&self) -> Vec<String> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Sink for Recorder {
        fn event(&self, event: &Event, json: &Value) {
            assert_eq!(json["seq"], event.seq);
            self.seen
                .lock()
                .unwrap()
                .push(format!("event {}", event.log_line()));
        }
        fn run_ended(&self, result: &RunResult) {
            self.seen.lock().unwrap().push(format!(
                "end {} {}",
                result.line,
                result.deploy.to_json()["result"]
            ));
        }
        fn flush(&self, _: Duration) -> bool {
            self.seen.lock().unwrap().push("flush".into());
            true
        }
        fn name(&self) -> &'static str {
            "recorder"
        }
    }

    fn run_result(line: &str, error: Option<&str>) -> RunResult {
        RunResult {
            line: line.into(),
            deploy: LastDeploy {
                image: "http://h/img".into(),
                sha256: None,
                seconds: 1.0,
                error: error.map(str::to_owned),
            },
        }
    }

    #[test]
    fn the_result_reaches_sinks_at_the_flush_after_the_events() {
        let status = Status::new(&StatusOptions::default());
        let sink = Arc::new(Recorder::default());
        status.attach(Arc::clone(&sink) as Arc<dyn Sink>);
        // A second sink of the same kind is not attached.
        status.attach(Arc::new(Recorder::default()));
        assert!(status.has_sink("recorder"));
        assert!(!status.has_sink("webhook"));

        // Run 1 fails and is retried: failed, result, retrying, flush.
        status.emit(failed(Stage::Write, "reset"));
        status.set_result(run_result("IMPRINT-RESULT: error 1", Some("reset")));
        status.emit(EventKind::Retrying {
            attempt: 2,
            of: 2,
            delay_seconds: 10.0,
        });
        assert!(status.flush(Duration::from_secs(1)));
        // Run 2 succeeds; kexec! then fails before the flush and amends it.
        status.set_result(run_result("IMPRINT-RESULT: ok", None));
        assert!(status.amend_result(|result| {
            result.line = "IMPRINT-RESULT: error kexec".into();
            result.deploy.error = Some("kexec".into());
        }));
        status.emit(failed(Stage::Handoff, "kexec"));
        assert!(status.flush(Duration::from_secs(1)));
        // Nothing left to amend once it is passed on.
        assert!(!status.amend_result(|_| unreachable!()));
        assert!(status.flush(Duration::from_secs(1)));

        let seen: Vec<String> = sink
            .seen()
            .into_iter()
            .map(|line| line.split(": {").next().unwrap().to_owned())
            .collect();
        let expected = [
            "event [", // failed
            "event [", // retrying
            "end IMPRINT-RESULT: error 1 \"failed\"",
            "flush",
            "event [", // failed
            "end IMPRINT-RESULT: error kexec \"failed\"",
            "flush",
            "flush",
        ];
        assert_eq!(seen.len(), expected.len(), "{seen:#?}");
        for (seen, expected) in seen.iter().zip(expected) {
            assert!(seen.starts_with(expected), "{seen} / {expected}");
        }
    }

    #[test]
    fn document_before_any_event() {
        let status = Status::new(&StatusOptions::default());
        assert_eq!(
            status.document(),
            json!({
                "imprint": event::VERSION, "state": "running", "stage": null,
                "machine": null, "progress": null, "error": null, "timeline": null,
                "unreported": null, "events": [],
            })
        );
        assert!(status.flush(Duration::ZERO));
        assert_eq!(status.webhook_stats(), None);
        assert_eq!(status.status_address(), None);
    }

    #[test]
    fn document_tracks_events_and_coalesces_progress() {
        let status = Status::new(&StatusOptions::default());
        let machine = MachineInfo {
            nics: vec![machine::Nic {
                name: "eth0".into(),
                mac: "52:54:00:00:00:01".into(),
            }],
            ..MachineInfo::default()
        };
        status.emit(EventKind::Started {
            machine: machine.clone(),
        });
        status.enter(Stage::Network);
        assert_eq!(status.document()["stage"], "network");
        for bytes in [10, 20, 30] {
            status.emit(progress(bytes));
        }
        status.emit(EventKind::Verified {
            sha256: "00".repeat(32),
            algorithm: None,
            bytes: 30,
            image_digest: None,
        });
        status.emit(progress(40));
        let document = status.document();
        assert_eq!(document["state"], "running");
        assert_eq!(document["stage"], "write");
        assert_eq!(document["machine"], serde_json::to_value(&machine).unwrap());
        assert_eq!(document["progress"]["bytes"], 40);
        assert_eq!(document["progress"]["seq"], 6);
        let events: Vec<(String, u64)> = document["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["event"].as_str().unwrap().into(),
                    e["seq"].as_u64().unwrap(),
                )
            })
            .collect();
        let expected = [
            ("started", 1),
            ("progress", 4),
            ("verified", 5),
            ("progress", 6),
        ];
        assert_eq!(
            events,
            expected.map(|(name, seq)| (name.to_owned(), seq)).to_vec()
        );
        let first = &document["events"][0];
        assert!(first["time"].as_u64().unwrap() > 1_600_000_000, "{first}");
        assert!(first["uptime"].as_f64().unwrap() > 0.0, "{first}");
        assert_eq!(first["imprint"], event::VERSION);

        status.emit(handoff(HandoffHow::Kexec));
        let document = status.document();
        assert_eq!(
            (&document["state"], &document["stage"]),
            (&json!("succeeded"), &json!("handoff"))
        );
        assert!(document["error"].is_null());
    }

    #[test]
    fn failure_sticks_until_a_retry() {
        let status = Status::new(&StatusOptions::default());
        status.emit(failed(Stage::Disk, "no disk matches size>=1T"));
        let document = status.document();
        assert_eq!(
            (&document["state"], &document["stage"]),
            (&json!("failed"), &json!("disk"))
        );
        assert_eq!(document["error"]["error"], "no disk matches size>=1T");
        // on-failure=reboot hands over, but the deploy did not succeed.
        status.emit(handoff(HandoffHow::Reboot));
        assert_eq!(status.document()["state"], "failed");
        status.emit(EventKind::Retrying {
            attempt: 2,
            of: 3,
            delay_seconds: 1.0,
        });
        let document = status.document();
        assert_eq!(document["state"], "running");
        // The last error stays visible while the retry runs.
        assert_eq!(document["error"]["seq"], 1);
    }

    #[test]
    fn events_reach_the_webhook_in_order() {
        let server = FixtureServer::start().unwrap();
        let status = Status::new(&StatusOptions {
            report_url: Some(server.url("report")),
            ..StatusOptions::default()
        });
        status.emit(EventKind::Started {
            machine: MachineInfo::default(),
        });
        status.emit(progress(50));
        status.emit(failed(Stage::Write, "corrupt xz stream at byte 4096"));
        assert!(status.flush(Duration::from_secs(20)));
        let posted: Vec<Value> = server
            .requests_at_least(3, Duration::from_secs(10))
            .iter()
            .map(|r| {
                assert_eq!(
                    (r.method.as_str(), r.path.as_str(), r.status),
                    ("POST", "/report", 204)
                );
                serde_json::from_slice(&r.body).unwrap()
            })
            .collect();
        let names: Vec<&str> = posted
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["started", "progress", "failed"]);
        assert_eq!(posted[2], status.document()["error"]);
        assert_eq!(posted[1], status.document()["progress"]);
        assert_eq!(status.webhook_stats().map(|stats| stats.delivered), Some(3));
    }

    #[test]
    fn bad_url_or_busy_port_never_fails() {
        let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let status = Status::new(&StatusOptions {
            report_url: Some("ftp://x/y".into()),
            status_port: Some(taken.local_addr().unwrap().port()),
            ..StatusOptions::default()
        });
        assert_eq!(status.webhook_stats(), None);
        assert_eq!(status.status_address(), None);
        status.emit(failed(Stage::Spec, "x"));
        assert_eq!(status.document()["state"], "failed");
    }

    #[test]
    fn status_port_serves_the_same_document() {
        use std::io::{Read, Write};
        let status = Status::new(&StatusOptions {
            status_port: Some(0),
            ..StatusOptions::default()
        });
        status.emit(failed(Stage::Write, "wrong sha256"));
        let port = status.status_address().unwrap().port();
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.write_all(b"GET /status HTTP/1.1\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let (_, body) = reply.split_once("\r\n\r\n").unwrap();
        let served: Value = serde_json::from_str(body).unwrap();
        assert_eq!(served, status.document());
        assert_eq!(served["error"]["error"], "wrong sha256");
    }

    #[test]
    fn progress_events_are_rate_limited() {
        let status = Status::new(&StatusOptions::default());
        let mut sink = ProgressEvents::new(status.clone(), Stage::Write);
        let start = sink.last.0;
        let at = |ms: u64| start + Duration::from_millis(ms);
        sink.update_at(100, Some(1000), at(1000));
        sink.update_at(200, Some(1000), at(4999));
        assert!(status.document()["progress"].is_null(), "too early");
        sink.update_at(500, Some(1000), at(5000));
        let first = status.document()["progress"].clone();
        assert_eq!(
            (&first["bytes"], &first["total"], &first["rate"]),
            (&json!(500), &json!(1000), &json!(100))
        );
        assert_eq!(first["stage"], "write");
        sink.update_at(900, Some(1000), at(9000));
        assert_eq!(
            status.document()["progress"]["bytes"],
            500,
            "4 s after the last"
        );
        sink.update_at(1000, Some(1000), at(10_000));
        let second = status.document()["progress"].clone();
        // 500 bytes in the 5 s since the last event.
        assert_eq!(
            (&second["bytes"], &second["rate"]),
            (&json!(1000), &json!(100))
        );
        assert_eq!(second["seq"], 2);
        assert_eq!(status.document()["events"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn progress_interval_is_configurable() {
        let status = Status::new(&StatusOptions::default());
        let mut sink = ProgressEvents::new(status.clone(), Stage::Write);
        sink.interval = Duration::ZERO;
        for done in [1, 2, 3] {
            sink.update(done, None);
        }
        let progress = status.document()["progress"].clone();
        assert_eq!(
            (&progress["bytes"], &progress["seq"]),
            (&json!(3), &json!(3))
        );
        assert!(progress["total"].is_null());
    }
}

//! [`DrpReporter`]: the deploy's job in DRP, kept up to date by the
//! [shared background worker](crate::status::worker) so the deploy never
//! waits for DRP. It is a [status sink](crate::status::Sink): attached to
//! [`Status`], it copies every event into the job log, and the run's result
//! closes the job (see [`Status::set_result`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use super::client::{DrpClient, DrpError, DrpOptions, Job};
use super::{LAST_DEPLOY_PARAM, LastDeploy};
use crate::http::retry::{Clock, Retrier};
use crate::inject::DrpAgent;
use crate::source::SourceOptions;
use crate::status::worker::{Class, Deliver, Reporter};
use crate::status::{Event, RunResult, Sink, Status};

/// What the reporter did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrpStats {
    /// The job DRP made for the current (or last) run; `None` before it
    /// exists, when DRP had no task to run, or when creating it failed.
    pub job: Option<String>,
    /// The job's state as this reporter last set it (`running`, `finished`,
    /// `failed`); `None` while it has not set one.
    pub state: Option<String>,
    /// Log lines appended to the job.
    pub lines_sent: u64,
    /// Log lines dropped: the queue was full, there was no job to append
    /// to, or appending was given up.
    pub lines_dropped: u64,
    /// `imprint/last-deploy` was set.
    pub param_set: bool,
    /// Requests given up (after their last attempt, or at a final answer).
    pub failures: u64,
    /// After a finished job, what asking for the next one gave:
    /// `Some(None)` nothing left (the workflow moved on), `Some(Some(task))`
    /// a further task left `incomplete` for the installed system's agent.
    pub advanced: Option<Option<String>>,
}

/// What the worker is given to send, in order.
enum JobWork {
    /// A line for the job log.
    Line(String),
    /// The end of a run: the job becomes `finished` or `failed`, and
    /// `imprint/last-deploy` is set.
    End(LastDeploy),
}

/// Reports the deploy to DRP as a machine agent would, from the shared
/// worker's thread: see the [module docs](super). Each run of the deploy
/// (`on-failure=retry:N` makes several) is one job: the first is created
/// when the reporter starts, each later one when the run after an ended one
/// sends its first line or its end. Dropping the reporter stops the thread
/// without waiting (call [`flush`](Self::flush) first).
pub struct DrpReporter {
    reporter: Reporter<JobWork>,
    stats: Arc<Mutex<DrpStats>>,
    endpoint: String,
}

impl std::fmt::Debug for DrpReporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrpReporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl DrpReporter {
    /// Starts the thread, which creates the job and moves it to `running`
    /// in the background. Fails only when no thread can be started.
    pub fn start(client: DrpClient, options: DrpOptions) -> Result<DrpReporter> {
        let endpoint = client.endpoint();
        let stats = Arc::new(Mutex::new(DrpStats::default()));
        let agent = JobAgent {
            client: client.with_timeout(options.timeout),
            stats: Arc::clone(&stats),
            run: Run::Ended,
            failing: false,
            options: options.clone(),
        };
        let reporter = Reporter::start("report-drp", options.queue_lines, agent)?;
        Ok(DrpReporter {
            reporter,
            stats,
            endpoint,
        })
    }

    /// Queues `line` for the job log (a newline is added). Never blocks on
    /// the network; when the queue is full the oldest line is dropped.
    pub fn log_line(&self, line: String) {
        self.reporter.push(JobWork::Line(line), Class::Event);
    }

    /// Queues the end of the run: after the lines queued before, the job
    /// becomes `finished` or `failed` and `imprint/last-deploy` is set to
    /// `result`. Never dropped.
    pub fn finish(&self, result: LastDeploy) {
        self.reporter.push(JobWork::End(result), Class::Essential);
    }

    /// Waits, at most `timeout`, until everything queued is sent or given
    /// up; `true` when it is. Call before kexec, reboot or power-off.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.reporter.flush(timeout)
    }

    /// What the reporter did so far.
    pub fn stats(&self) -> DrpStats {
        let mut stats = lock(&self.stats).clone();
        stats.lines_dropped += self.reporter.dropped();
        stats
    }
}

impl Sink for DrpReporter {
    fn event(&self, event: &Event, _json: &Value) {
        let class = if event.kind.is_progress() {
            Class::Progress
        } else {
            Class::Event
        };
        self.reporter.push(JobWork::Line(event.log_line()), class);
    }

    fn run_ended(&self, result: &RunResult) {
        self.log_line(result.line.clone());
        self.finish(result.deploy.clone());
    }

    fn flush(&self, timeout: Duration) -> bool {
        DrpReporter::flush(self, timeout)
    }

    fn name(&self) -> &'static str {
        SINK_NAME
    }
}

/// Whether `status` reports to a DRP job ([`report_to`] attached it).
pub fn is_reporting(status: &Status) -> bool {
    status.has_sink(SINK_NAME)
}

/// What a failure before the deploy spec was loaded means for DRP, for the
/// console (README, "When DRP shows nothing").
pub const UNREPORTED_FAILURE: &str = "this failure is not reported: DRP shows no job, \
     no job log and no imprint/last-deploy for this boot, and the machine stays in its \
     imprint stage; this console (and /status, when imprint.status-port= is on the \
     command line) is all there is";

/// The [`Sink::name`] of the DRP reporter.
const SINK_NAME: &str = "DRP job";

/// Reports the deploy to DRP as a job of the machine `agent` names, when
/// `status` does not do so already (a later run of `on-failure=retry:N`
/// keeps the reporter, and gets a job of its own). Never fails: a reporter
/// that cannot start is logged and left out.
pub fn report_to(status: &Status, agent: &DrpAgent, source: &SourceOptions) {
    if status.has_sink(SINK_NAME) {
        return;
    }
    let started = DrpClient::new(&agent.endpoint, &agent.token, &agent.machine_id, source)
        .and_then(|client| DrpReporter::start(client, DrpOptions::default()));
    match started {
        Ok(reporter) => {
            log::info!(
                "reporting the deploy as a job of DRP machine {}",
                agent.machine_id
            );
            status.attach(Arc::new(reporter));
        }
        Err(e) => log::warn!("not reporting to DRP: {e:#}"),
    }
}

fn lock(stats: &Mutex<DrpStats>) -> MutexGuard<'_, DrpStats> {
    stats.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where the current run's job stands.
enum Run {
    /// The run's job, when it has one (DRP may have had no task, or
    /// creating it failed), and whether this reporter moved it to
    /// `running`, so it may end it.
    Open { job: Option<Job>, running: bool },
    /// The last run ended: the next line or end belongs to a new run.
    Ended,
}

/// Talks to DRP, on the worker thread.
struct JobAgent {
    client: DrpClient,
    options: DrpOptions,
    stats: Arc<Mutex<DrpStats>>,
    run: Run,
    /// In a streak of retryable failures: the first was logged, later ones are not.
    failing: bool,
}

impl Deliver for JobAgent {
    type Item = JobWork;

    fn begin(&mut self, clock: &Arc<dyn Clock>) {
        self.start_job(clock);
    }

    fn batch_len<'a>(&self, pending: impl Iterator<Item = &'a JobWork>) -> usize {
        lines_in_batch(pending, self.options.batch_bytes)
    }

    fn deliver(&mut self, items: Vec<JobWork>, clock: &Arc<dyn Clock>) {
        if matches!(self.run, Run::Ended) {
            self.start_job(clock);
        }
        let mut lines = Vec::new();
        for work in items {
            match work {
                JobWork::Line(line) => lines.push(line),
                JobWork::End(result) => self.finish(&result, clock),
            }
        }
        if !lines.is_empty() {
            self.append(&lines, clock);
        }
    }
}

/// How many of the first lines of `pending` go in one append: up to
/// `max_bytes` of them (at least one line), and never past an end of run.
fn lines_in_batch<'a>(pending: impl Iterator<Item = &'a JobWork>, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let mut len = 0;
    for work in pending {
        let JobWork::Line(line) = work else {
            break;
        };
        let size = line.len() + 1;
        if len > 0 && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        len += 1;
    }
    len
}

impl JobAgent {
    /// Creates the job and moves it to `running`.
    fn start_job(&mut self, clock: &Arc<dyn Clock>) {
        self.run = Run::Open {
            job: None,
            running: false,
        };
        self.prepare_machine(clock);
        let job = match self.attempt(clock, "creating a job", DrpClient::create_job) {
            Ok(Some(job)) => job,
            Ok(None) => {
                log::info!(
                    "DRP {}: no task to run for machine {}; the deploy has no job to log to",
                    self.client.endpoint(),
                    self.client.machine()
                );
                return;
            }
            Err(_) => return,
        };
        {
            let mut stats = lock(&self.stats);
            stats.job = Some(job.uuid.clone());
            stats.state = None;
        }
        let id = job.uuid.clone();
        let from = job.state.clone();
        let moved = self.attempt(clock, &format!("starting job {id}"), |client| {
            client.set_job_state(&id, &from, "running", None)
        });
        let running = moved.is_ok();
        if running {
            lock(&self.stats).state = Some("running".into());
            log::info!(
                "DRP {}: job {id} (task {}) is running",
                self.client.endpoint(),
                job.task
            );
        }
        self.run = Run::Open {
            job: Some(job),
            running,
        };
    }

    /// What `drpcli agent` does before it asks for a job (agent/agent.go),
    /// so DRP makes one: `init()` fails the machine's current job when a
    /// machine agent (`Context` empty) left it `created` or `running` (a
    /// deploy cut short by a power loss or a reset: DRP refuses new jobs
    /// while it stands, 409 "already has running or created job"); `Run()`
    /// marks the machine runnable (setting the workflow changed its BootEnv,
    /// or its last job failed, and DRP refuses jobs to a machine that is not
    /// runnable, 409 "is not runnable"). Done at the start of every run, as
    /// an agent does at every start. Failures are logged and the run goes on:
    /// creating the job then says what DRP thinks.
    fn prepare_machine(&mut self, clock: &Arc<dyn Clock>) {
        let Ok(mut machine) = self.attempt(clock, "reading the machine", DrpClient::machine_state)
        else {
            return;
        };
        if !machine.current_job.is_empty() {
            let id = machine.current_job.clone();
            let job = self.attempt(clock, &format!("reading job {id}"), |client| {
                client.job(&id)
            });
            if let Ok(job) = job
                && matches!(job.state.as_str(), "created" | "running")
                && job.context.is_empty()
            {
                log::info!(
                    "DRP {}: job {id} (task {}) was left {} by a deploy cut short; \
                     marking it failed, as drpcli agent does",
                    self.client.endpoint(),
                    job.task,
                    job.state
                );
                let failed = self.attempt(clock, "failing the stale job", |client| {
                    client.set_job_state(&id, &job.state, "failed", None)
                });
                // Failing a job may have changed the machine (on DRP, the
                // agent marks it not runnable).
                if failed.is_ok()
                    && let Ok(now) =
                        self.attempt(clock, "reading the machine", DrpClient::machine_state)
                {
                    machine = now;
                }
            }
        }
        if !machine.runnable {
            log::info!(
                "DRP {}: machine {} is not runnable (BootEnv {:?}, workflow {:?}); \
                 marking it runnable, as drpcli agent does",
                self.client.endpoint(),
                self.client.machine(),
                machine.boot_env,
                machine.workflow
            );
            // A failure shows again, with DRP's reason, when the job is asked for.
            let _ = self.attempt(
                clock,
                "marking the machine runnable",
                DrpClient::mark_runnable,
            );
        }
    }

    fn append(&mut self, lines: &[String], clock: &Arc<dyn Clock>) {
        let count = lines.len() as u64;
        let Run::Open { job: Some(job), .. } = &self.run else {
            lock(&self.stats).lines_dropped += count;
            return;
        };
        let id = job.uuid.clone();
        let mut bytes = Vec::new();
        for line in lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        let appended = self.attempt(
            clock,
            &format!("appending to the log of job {id}"),
            |client| client.append_log(&id, &bytes),
        );
        let mut stats = lock(&self.stats);
        match appended {
            Ok(()) => stats.lines_sent += count,
            Err(_) => stats.lines_dropped += count,
        }
    }

    /// Ends the run: its job, then `imprint/last-deploy`, then (after a
    /// success) asks for the next job.
    fn finish(&mut self, result: &LastDeploy, clock: &Arc<dyn Clock>) {
        let (job, running) = match std::mem::replace(&mut self.run, Run::Ended) {
            Run::Open { job, running } => (job, running),
            Run::Ended => (None, false),
        };
        // Left running: ending it failed, so the workflow must not move on.
        let mut left_running = false;
        if let (Some(job), true) = (&job, running) {
            let id = job.uuid.clone();
            let (state, exit_state) = if result.succeeded() {
                ("finished", "complete")
            } else {
                ("failed", "failed")
            };
            let ended = self.attempt(clock, &format!("ending job {id}"), |client| {
                client.set_job_state(&id, "running", state, Some(exit_state))
            });
            match ended {
                Ok(_) => lock(&self.stats).state = Some(state.into()),
                Err(_) => left_running = true,
            }
        }
        let value = result.to_json();
        let set = self.attempt(clock, &format!("setting {LAST_DEPLOY_PARAM}"), |client| {
            client.set_param(LAST_DEPLOY_PARAM, &value)
        });
        if set.is_ok() {
            lock(&self.stats).param_set = true;
        }
        if result.succeeded() && job.is_some() && !left_running {
            self.advance(clock);
        }
    }

    /// Asks DRP for the machine's next job, as `drpcli agent` does after
    /// each one: that request is what moves the workflow on (to `complete`,
    /// which sets BootEnv `local`, so the next boot is from the disk and not
    /// another deploy). DRP answers `204` when nothing is left. A job for a
    /// further task cannot run here: it is handed to the installed system's
    /// agent as DRP hands over a task that needs a reboot, `running` then
    /// `incomplete` (ExitState `reboot`), which DRP gives to the next agent
    /// that asks.
    fn advance(&mut self, clock: &Arc<dyn Clock>) {
        let next = self.attempt(clock, "asking DRP for the next job", DrpClient::create_job);
        let job = match next {
            Ok(Some(job)) => job,
            Ok(None) => {
                log::info!(
                    "DRP {}: machine {} has no further task; its workflow moves on",
                    self.client.endpoint(),
                    self.client.machine()
                );
                lock(&self.stats).advanced = Some(None);
                return;
            }
            Err(_) => return,
        };
        let id = job.uuid.clone();
        let from = job.state.clone();
        let handed = self
            .attempt(clock, &format!("starting job {id}"), |client| {
                client.set_job_state(&id, &from, "running", None)
            })
            .and_then(|_| {
                self.attempt(clock, &format!("handing job {id} on"), |client| {
                    client.set_job_state(&id, "running", "incomplete", Some("reboot"))
                })
            });
        if handed.is_ok() {
            log::info!(
                "DRP {}: the next task, {}, is left for the installed system's agent (job {id} incomplete)",
                self.client.endpoint(),
                job.task
            );
            lock(&self.stats).advanced = Some(Some(job.task));
        }
    }

    /// Runs `operation` with retries and logs how it failed: a final answer
    /// always (with DRP's messages); a streak of retryable failures once, at
    /// its first failure, and its end once.
    fn attempt<T>(
        &mut self,
        clock: &Arc<dyn Clock>,
        what: &str,
        mut operation: impl FnMut(&mut DrpClient) -> Result<T, DrpError>,
    ) -> Result<T, DrpError> {
        let JobAgent {
            client,
            options,
            failing,
            stats,
            ..
        } = self;
        let mut retrier = Retrier::new(options.retry_policy(), Arc::clone(clock));
        let result = retrier.run(
            || {
                let result = operation(client);
                match &result {
                    Err(error) if error.retryable() && !*failing => {
                        *failing = true;
                        log::warn!(
                            "DRP: {what}: {error}; retrying in the background, \
                             further failures are not logged"
                        );
                    }
                    Ok(_) if *failing => {
                        *failing = false;
                        log::info!("DRP {}: reachable again", client.endpoint());
                    }
                    _ => {}
                }
                result
            },
            |_, _| {},
        );
        result.map_err(|exhausted| {
            let error = exhausted.error;
            lock(stats).failures += 1;
            if error.retryable() {
                log::debug!("DRP: {what}: given up: {error}");
            } else {
                log::warn!("DRP: {what}: {error}; the deploy goes on without it");
            }
            error
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inject::Secret;
    use crate::status::{EventKind, HandoffHow, Stage, StatusOptions};
    use imprint_qemu::drp::DrpStandIn;

    const MACHINE: &str = "6c2d3f4e-aaaa-4bbb-8ccc-0123456789ab";

    fn result(line: &str, error: Option<&str>) -> RunResult {
        RunResult {
            line: line.into(),
            deploy: LastDeploy {
                image: "http://files/golden.raw".into(),
                sha256: None,
                seconds: 1.0,
                error: error.map(str::to_owned),
            },
        }
    }

    /// What PID 1 does with `on-failure=retry:1`, the first run failing:
    /// each run is its own job, whose log ends with the run's result line.
    #[test]
    fn each_run_of_a_retried_deploy_is_its_own_job() {
        let drp = DrpStandIn::start().unwrap();
        drp.add_machine(MACHINE);
        let status = Status::new(&StatusOptions::default());
        let agent = DrpAgent {
            endpoint: drp.url(""),
            token: Secret::new(drp.token()),
            machine_id: MACHINE.into(),
            provisioner_web: "http://files".into(),
        };
        report_to(&status, &agent, &SourceOptions::default());
        // A second run of the spec keeps the reporter.
        report_to(&status, &agent, &SourceOptions::default());
        assert!(status.has_sink(SINK_NAME));

        status.emit(EventKind::Failed {
            stage: Stage::Write,
            error: "connection reset".into(),
            offset: None,
            attempt: Some(1),
        });
        status.set_result(result("IMPRINT-RESULT: error 1", Some("connection reset")));
        status.emit(EventKind::Retrying {
            attempt: 2,
            of: 2,
            delay_seconds: 10.0,
        });
        assert!(status.flush(Duration::from_secs(20)));
        status.emit(EventKind::Handoff {
            how: HandoffHow::Reboot,
            kernel: None,
            cmdline: None,
            detail: None,
        });
        status.set_result(result("IMPRINT-RESULT: ok", None));
        assert!(status.flush(Duration::from_secs(20)));

        // Run 2 asks for a job of its own. The failed job left the machine
        // not runnable (qemu/src/drp/machine.rs), so it is marked runnable
        // first, as drpcli agent does; DRP then retries the same task, and
        // the finished job moves the workflow on (204).
        let jobs = drp.jobs();
        assert_eq!(jobs.len(), 2);
        let job = jobs[0]["Uuid"].as_str().unwrap().to_owned();
        let second = jobs[1]["Uuid"].as_str().unwrap().to_owned();
        let calls: Vec<(String, String, u16)> = drp
            .calls()
            .iter()
            .map(|c| {
                let path = c.path.replace(&job, "JOB").replace(&second, "JOB2");
                (c.method.clone(), path.replace(MACHINE, "M"), c.status)
            })
            .collect();
        let param = format!("/api/v3/machines/M/params/{LAST_DEPLOY_PARAM}");
        let expected = [
            ("GET", "/api/v3/machines/M", 200),
            ("POST", "/api/v3/jobs", 201),
            ("PATCH", "/api/v3/jobs/JOB", 200),
            ("PUT", "/api/v3/jobs/JOB/log", 204),
            ("PATCH", "/api/v3/jobs/JOB", 200),
            ("POST", param.as_str(), 200),
            ("GET", "/api/v3/machines/M", 200),
            ("GET", "/api/v3/jobs/JOB", 200),
            ("PATCH", "/api/v3/machines/M", 200),
            ("POST", "/api/v3/jobs", 201),
            ("PATCH", "/api/v3/jobs/JOB2", 200),
            ("PUT", "/api/v3/jobs/JOB2/log", 204),
            ("PATCH", "/api/v3/jobs/JOB2", 200),
            ("POST", param.as_str(), 200),
            ("POST", "/api/v3/jobs", 204),
        ]
        .map(|(method, path, status)| (method.to_owned(), path.to_owned(), status));
        assert_eq!(calls, expected);
        assert_eq!(jobs[1]["State"], "finished");
        assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
        assert_eq!(drp.jobs()[0]["State"], "failed");
        let log: Vec<String> = String::from_utf8(drp.job_log(&job))
            .unwrap()
            .lines()
            .map(|line| {
                let line = line.split(": {").next().unwrap();
                line.rsplit("] ").next().unwrap().to_owned()
            })
            .collect();
        assert_eq!(log, ["failed", "retrying", "IMPRINT-RESULT: error 1"]);
        assert_eq!(
            drp.machine_param(MACHINE, LAST_DEPLOY_PARAM).unwrap()["result"],
            "ok"
        );
    }

    fn lines(texts: &[&str]) -> Vec<JobWork> {
        texts
            .iter()
            .map(|t| JobWork::Line((*t).to_owned()))
            .collect()
    }

    #[test]
    fn batches_keep_order_and_respect_the_byte_limit() {
        // Each line is 5 bytes with its newline.
        let queue = lines(&["aaaa", "bbbb", "cccc"]);
        assert_eq!(lines_in_batch(queue.iter(), 10), 2);
        assert_eq!(lines_in_batch(queue[2..].iter(), 10), 1);
        assert_eq!(lines_in_batch([].iter(), 10), 0);
        // A line longer than the limit still goes, alone.
        let long = lines(&[&"x".repeat(50), "y"]);
        assert_eq!(lines_in_batch(long.iter(), 10), 1);
        // An end of run is never batched with lines.
        let mut ended = lines(&["a"]);
        ended.push(JobWork::End(LastDeploy {
            image: String::new(),
            sha256: None,
            seconds: 0.0,
            error: None,
        }));
        ended.extend(lines(&["b"]));
        assert_eq!(lines_in_batch(ended.iter(), 100), 1);
        assert_eq!(lines_in_batch(ended[1..].iter(), 100), 0);
    }
}

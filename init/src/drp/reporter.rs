//! [`DrpReporter`]: the deploy's job in DRP, kept up to date by a background
//! thread so the deploy never waits for DRP.

use std::collections::VecDeque;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client::{DrpClient, DrpError, DrpOptions, Job, with_retries};
use super::{LAST_DEPLOY_PARAM, LastDeploy};

/// What the reporter did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrpStats {
    /// The job DRP made for this deploy; `None` before it exists, when DRP
    /// had no task to run, or when creating it failed.
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

#[derive(Default)]
struct Queue {
    lines: VecDeque<String>,
    finish: Option<LastDeploy>,
    /// The worker is doing something the caller may wait for (at first:
    /// creating the job and moving it to running).
    busy: bool,
    closed: bool,
    stats: DrpStats,
}

type Shared = crate::status::queue::Shared<Queue>;

/// Reports one deploy to DRP as a machine agent would, from its own
/// thread: see the [module docs](super). Dropping it stops the thread
/// without waiting (call [`flush`](Self::flush) first).
pub struct DrpReporter {
    shared: Arc<Shared>,
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
        let shared = Arc::new(Shared::new(
            Queue {
                busy: true,
                ..Queue::default()
            },
            options.queue_lines,
        ));
        let worker = Worker {
            shared: Arc::clone(&shared),
            client: client.with_timeout(options.timeout),
            options,
            job: None,
            running: false,
            failing: false,
        };
        std::thread::Builder::new()
            .name("report-drp".into())
            .spawn(move || worker.run())
            .context("starting the DRP report thread")?;
        Ok(DrpReporter { shared, endpoint })
    }

    /// Queues `line` for the job log (a newline is added). Never blocks on
    /// the network; when the queue is full the oldest line is dropped.
    pub fn log_line(&self, line: String) {
        let mut queue = self.shared.lock();
        if queue.lines.len() >= self.shared.capacity {
            queue.lines.pop_front();
            queue.stats.lines_dropped += 1;
        }
        queue.lines.push_back(line);
        drop(queue);
        self.shared.changed.notify_all();
    }

    /// Queues the end of the deploy: after the lines queued before, the job
    /// becomes `finished` or `failed` and `imprint/last-deploy` is set to
    /// `result`. A second call replaces a result not yet sent.
    pub fn finish(&self, result: LastDeploy) {
        self.shared.lock().finish = Some(result);
        self.shared.changed.notify_all();
    }

    /// Waits, at most `timeout`, until everything queued is sent or given
    /// up; `true` when it is. Call before kexec, reboot or power-off.
    pub fn flush(&self, timeout: Duration) -> bool {
        self.shared.wait_until(timeout, |queue| {
            !queue.busy && queue.lines.is_empty() && queue.finish.is_none()
        })
    }

    /// What the reporter did so far.
    pub fn stats(&self) -> DrpStats {
        self.shared.lock().stats.clone()
    }
}

impl Drop for DrpReporter {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

/// The next thing the worker does.
enum Work {
    Lines(Vec<String>),
    Finish(LastDeploy),
}

struct Worker {
    shared: Arc<Shared>,
    client: DrpClient,
    options: DrpOptions,
    job: Option<Job>,
    /// This reporter moved the job to `running`, so it may end it.
    running: bool,
    /// In a streak of retryable failures: the first was logged, later ones are not.
    failing: bool,
}

impl Worker {
    fn run(mut self) {
        self.start_job();
        loop {
            let work = {
                let mut queue = self.shared.lock();
                queue.busy = false;
                self.shared.changed.notify_all();
                loop {
                    if queue.closed {
                        return;
                    }
                    // Marked busy under the same lock that takes the work, so
                    // `flush` never sees an empty queue with work unfinished.
                    if !queue.lines.is_empty() {
                        queue.busy = true;
                        break Work::Lines(take_batch(&mut queue.lines, self.options.batch_bytes));
                    }
                    if let Some(result) = queue.finish.take() {
                        queue.busy = true;
                        break Work::Finish(result);
                    }
                    queue = self
                        .shared
                        .changed
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            };
            match work {
                Work::Lines(lines) => self.append(lines),
                Work::Finish(result) => self.finish(&result),
            }
        }
    }

    /// Creates the job and moves it to `running`.
    fn start_job(&mut self) {
        let job = match self.attempt("creating a job", |client| client.create_job()) {
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
        self.shared.lock().stats.job = Some(job.uuid.clone());
        let id = job.uuid.clone();
        let from = job.state.clone();
        let moved = self.attempt(&format!("starting job {id}"), |client| {
            client.set_job_state(&id, &from, "running", None)
        });
        if moved.is_ok() {
            self.running = true;
            self.shared.lock().stats.state = Some("running".into());
            log::info!(
                "DRP {}: job {id} (task {}) is running",
                self.client.endpoint(),
                job.task
            );
        }
        self.job = Some(job);
    }

    fn append(&mut self, lines: Vec<String>) {
        let count = lines.len() as u64;
        let Some(id) = self.job.as_ref().map(|job| job.uuid.clone()) else {
            self.shared.lock().stats.lines_dropped += count;
            return;
        };
        let mut bytes = Vec::new();
        for line in &lines {
            bytes.extend_from_slice(line.as_bytes());
            bytes.push(b'\n');
        }
        let appended = self.attempt(&format!("appending to the log of job {id}"), |client| {
            client.append_log(&id, &bytes)
        });
        let mut queue = self.shared.lock();
        match appended {
            Ok(()) => queue.stats.lines_sent += count,
            Err(_) => queue.stats.lines_dropped += count,
        }
    }

    fn finish(&mut self, result: &LastDeploy) {
        if let (Some(job), true) = (&self.job, self.running) {
            let id = job.uuid.clone();
            let (state, exit_state) = if result.succeeded() {
                ("finished", "complete")
            } else {
                ("failed", "failed")
            };
            let ended = self.attempt(&format!("ending job {id}"), |client| {
                client.set_job_state(&id, "running", state, Some(exit_state))
            });
            if ended.is_ok() {
                self.running = false;
                self.shared.lock().stats.state = Some(state.into());
            }
        }
        let value = result.to_json();
        let set = self.attempt(&format!("setting {LAST_DEPLOY_PARAM}"), |client| {
            client.set_param(LAST_DEPLOY_PARAM, &value)
        });
        if set.is_ok() {
            self.shared.lock().stats.param_set = true;
        }
        if result.succeeded() && self.job.is_some() && !self.running {
            self.advance();
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
    fn advance(&mut self) {
        let next = self.attempt("asking DRP for the next job", DrpClient::create_job);
        let job = match next {
            Ok(Some(job)) => job,
            Ok(None) => {
                log::info!(
                    "DRP {}: machine {} has no further task; its workflow moves on",
                    self.client.endpoint(),
                    self.client.machine()
                );
                self.shared.lock().stats.advanced = Some(None);
                return;
            }
            Err(_) => return,
        };
        let id = job.uuid.clone();
        let from = job.state.clone();
        let handed = self
            .attempt(&format!("starting job {id}"), |client| {
                client.set_job_state(&id, &from, "running", None)
            })
            .and_then(|_| {
                self.attempt(&format!("handing job {id} on"), |client| {
                    client.set_job_state(&id, "running", "incomplete", Some("reboot"))
                })
            });
        if handed.is_ok() {
            log::info!(
                "DRP {}: the next task, {}, is left for the installed system's agent (job {id} incomplete)",
                self.client.endpoint(),
                job.task
            );
            self.shared.lock().stats.advanced = Some(Some(job.task));
        }
    }

    /// Runs `operation` with retries and logs how it failed: a final answer
    /// always (with DRP's messages); a streak of retryable failures once, at
    /// its first failure, and its end once.
    fn attempt<T>(
        &mut self,
        what: &str,
        mut operation: impl FnMut(&mut DrpClient) -> Result<T, DrpError>,
    ) -> Result<T, DrpError> {
        let Worker {
            shared,
            client,
            options,
            failing,
            ..
        } = self;
        let result = with_retries(
            options,
            |backoff| pause(shared, backoff),
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
        );
        if let Err(error) = &result {
            shared.lock().stats.failures += 1;
            if error.retryable() {
                log::debug!("DRP: {what}: given up: {error}");
            } else {
                log::warn!("DRP: {what}: {error}; the deploy goes on without it");
            }
        }
        result
    }
}

/// Sleeps `duration` unless the reporter is closed first; `false` then.
fn pause(shared: &Shared, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    let mut queue = shared.lock();
    loop {
        if queue.closed {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        queue = shared
            .changed
            .wait_timeout(queue, deadline - now)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
    }
}

/// The oldest lines, up to `max_bytes` of them (at least one line).
fn take_batch(lines: &mut VecDeque<String>, max_bytes: usize) -> Vec<String> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(line) = lines.front() {
        let size = line.len() + 1;
        if !batch.is_empty() && bytes + size > max_bytes {
            break;
        }
        bytes += size;
        batch.extend(lines.pop_front());
    }
    batch
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_order_and_respect_the_byte_limit() {
        let mut lines: VecDeque<String> = ["aaaa", "bbbb", "cccc"].map(String::from).into();
        // Each line is 5 bytes with its newline.
        assert_eq!(take_batch(&mut lines, 10), ["aaaa", "bbbb"]);
        assert_eq!(take_batch(&mut lines, 10), ["cccc"]);
        assert!(take_batch(&mut lines, 10).is_empty());
        // A line longer than the limit still goes, alone.
        let mut long: VecDeque<String> = ["x".repeat(50), "y".into()].into();
        assert_eq!(take_batch(&mut long, 10), ["x".repeat(50)]);
        assert_eq!(take_batch(&mut long, 10), ["y"]);
    }
}

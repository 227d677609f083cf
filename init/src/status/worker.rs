//! The background reporter: a bounded queue in front of a thread that
//! delivers what is queued, in order, so the deploy never waits for the
//! network. The report webhook and DRP's job reporter are its two users;
//! each says how to deliver ([`Deliver`]), the worker does the rest:
//!
//! - **Bounded queue, drop policy.** [`Reporter::push`] never blocks. When
//!   the queue is full, the oldest [`Class::Progress`] item is dropped (a
//!   newer one says more), or the oldest [`Class::Event`] when there is no
//!   progress left; [`Class::Essential`] items (the end of a DRP job) are
//!   never dropped and do not count against the capacity. Drops are counted.
//! - **Ordered delivery.** One thread takes items from the front, one
//!   delivery (a batch, if the user batches) at a time.
//! - **Retries.** Deliveries retry through [`crate::http::retry`] with the
//!   [`Clock`] the worker hands them, whose sleep ends as soon as the
//!   reporter is dropped, so a closed reporter does not sit out a backoff.
//! - **Bounded flush.** [`Reporter::flush`] waits, at most a given time,
//!   until the queue is empty and nothing is in flight. PID 1 calls it
//!   before kexec or power-off.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};

use crate::http::retry::{Clock, SystemClock};

/// How an item fares when the queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Dropped first: a later progress report supersedes it.
    Progress,
    /// Dropped, oldest first, when no progress is queued.
    Event,
    /// Never dropped, and not counted against the capacity.
    Essential,
}

/// How a user of the worker delivers its items; runs on the worker thread.
pub(crate) trait Deliver: Send + 'static {
    type Item: Send + 'static;

    /// Runs first, before any item; [`Reporter::flush`] waits for it.
    fn begin(&mut self, _clock: &Arc<dyn Clock>) {}

    /// How many items from the front of `pending` go in the next delivery
    /// (it is at least one, and at most all of them).
    fn batch_len<'a>(&self, _pending: impl Iterator<Item = &'a Self::Item>) -> usize {
        1
    }

    /// Delivers `items`, retrying with `clock`'s sleeps; gives up on its own.
    fn deliver(&mut self, items: Vec<Self::Item>, clock: &Arc<dyn Clock>);
}

struct Queued<T> {
    item: T,
    class: Class,
}

struct State<T> {
    pending: VecDeque<Queued<T>>,
    /// The worker holds work the caller may wait for.
    busy: bool,
    closed: bool,
    dropped: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Items (other than essential ones) queued before the oldest is dropped.
    capacity: usize,
    /// Signalled when work is queued or done, or the reporter closes.
    changed: Condvar,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits, at most until `deadline`, until `done` holds; whether it does.
    fn wait_until(&self, deadline: Instant, done: impl Fn(&State<T>) -> bool) -> bool {
        let mut state = self.lock();
        loop {
            if done(&state) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Queues `item`, dropping another if the queue is full (see the module
/// docs); whether one was dropped.
fn admit<T>(pending: &mut VecDeque<Queued<T>>, queued: Queued<T>, capacity: usize) -> bool {
    let counted = |q: &Queued<T>| q.class != Class::Essential;
    let full = queued.class != Class::Essential
        && pending.iter().filter(|q| counted(q)).count() >= capacity;
    let mut dropped = false;
    if full {
        let victim = pending
            .iter()
            .position(|q| q.class == Class::Progress)
            .or_else(|| pending.iter().position(counted));
        if let Some(victim) = victim {
            pending.remove(victim);
            dropped = true;
        }
    }
    pending.push_back(queued);
    dropped
}

/// The handle of a running worker; dropping it stops the thread without
/// waiting for the queue (call [`flush`](Self::flush) first).
pub(crate) struct Reporter<T> {
    shared: Arc<Shared<T>>,
}

impl<T: Send + 'static> Reporter<T> {
    /// Starts a thread named `name` that delivers through `deliver`, with
    /// room for `capacity` items.
    pub(crate) fn start<D: Deliver<Item = T>>(
        name: &str,
        capacity: usize,
        deliver: D,
    ) -> Result<Reporter<T>> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: VecDeque::new(),
                busy: true,
                closed: false,
                dropped: 0,
            }),
            capacity: capacity.max(1),
            changed: Condvar::new(),
        });
        let worker = Arc::clone(&shared);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || run(&worker, deliver))
            .with_context(|| format!("starting the {name} thread"))?;
        Ok(Reporter { shared })
    }

    /// Queues `item` after those queued before. Never blocks on the network.
    pub(crate) fn push(&self, item: T, class: Class) {
        let mut state = self.shared.lock();
        if admit(
            &mut state.pending,
            Queued { item, class },
            self.shared.capacity,
        ) {
            state.dropped += 1;
        }
        drop(state);
        self.shared.changed.notify_all();
    }

    /// Waits, at most `timeout`, until everything queued is delivered or
    /// given up; `true` when it is.
    pub(crate) fn flush(&self, timeout: Duration) -> bool {
        self.shared.wait_until(Instant::now() + timeout, |state| {
            !state.busy && state.pending.is_empty()
        })
    }

    /// Items dropped unsent because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.lock().dropped
    }
}

impl<T> Drop for Reporter<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.changed.notify_all();
    }
}

fn run<D: Deliver>(shared: &Arc<Shared<D::Item>>, mut deliver: D) {
    let clock: Arc<dyn Clock> = Arc::new(WorkerClock {
        shared: Arc::clone(shared),
        system: SystemClock::new(),
    });
    deliver.begin(&clock);
    loop {
        let batch = {
            let mut state = shared.lock();
            state.busy = false;
            shared.changed.notify_all();
            loop {
                if state.closed {
                    return;
                }
                // Marked busy under the same lock that takes the work, so
                // `flush` never sees an empty queue with work unfinished.
                if !state.pending.is_empty() {
                    let len = deliver
                        .batch_len(state.pending.iter().map(|q| &q.item))
                        .clamp(1, state.pending.len());
                    state.busy = true;
                    break state
                        .pending
                        .drain(..len)
                        .map(|q| q.item)
                        .collect::<Vec<_>>();
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
        };
        deliver.deliver(batch, &clock);
    }
}

/// The real clock, except that a sleep ends early, with `false`, when the
/// reporter is closed.
struct WorkerClock<T> {
    shared: Arc<Shared<T>>,
    system: SystemClock,
}

impl<T: Send> Clock for WorkerClock<T> {
    fn elapsed(&self) -> Duration {
        self.system.elapsed()
    }

    fn system_time(&self) -> SystemTime {
        self.system.system_time()
    }

    fn sleep(&self, duration: Duration) -> bool {
        let deadline = Instant::now() + duration;
        self.shared.wait_until(deadline, |state| state.closed);
        !self.shared.lock().closed
    }

    fn random(&self) -> u64 {
        self.system.random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn queue(items: &[(&'static str, Class)]) -> VecDeque<Queued<&'static str>> {
        items
            .iter()
            .map(|&(item, class)| Queued { item, class })
            .collect()
    }

    fn names(pending: &VecDeque<Queued<&'static str>>) -> Vec<&'static str> {
        pending.iter().map(|q| q.item).collect()
    }

    /// Admits `item` with room for 3; whether another was dropped.
    fn push(
        pending: &mut VecDeque<Queued<&'static str>>,
        item: &'static str,
        class: Class,
    ) -> bool {
        admit(pending, Queued { item, class }, 3)
    }

    #[test]
    fn a_full_queue_drops_progress_first_then_the_oldest_event_never_essentials() {
        use Class::{Essential, Event, Progress};
        let mut pending = queue(&[("p1", Progress), ("started", Event), ("p2", Progress)]);
        assert!(push(&mut pending, "failed", Event));
        assert_eq!(names(&pending), ["started", "p2", "failed"]);
        assert!(push(&mut pending, "handoff", Event));
        assert_eq!(names(&pending), ["started", "failed", "handoff"]);
        // No progress left: the oldest event goes.
        assert!(push(&mut pending, "last", Event));
        assert_eq!(names(&pending), ["failed", "handoff", "last"]);
        // Essentials neither count nor go.
        assert!(!push(&mut pending, "end", Essential));
        assert!(push(&mut pending, "after", Event));
        assert_eq!(names(&pending), ["handoff", "last", "end", "after"]);
        // A progress item makes room like any other.
        let mut events = queue(&[
            ("end1", Essential),
            ("a", Event),
            ("b", Event),
            ("c", Event),
        ]);
        assert!(push(&mut events, "p", Progress));
        assert_eq!(names(&events), ["end1", "b", "c", "p"]);
    }

    /// Delivers by handing each batch to the test, then waiting for its
    /// go-ahead (or for the reporter to close).
    struct Gate {
        delivered: mpsc::Sender<Vec<u32>>,
        go: Arc<Mutex<bool>>,
        batch: usize,
    }

    impl Deliver for Gate {
        type Item = u32;

        fn batch_len<'a>(&self, _: impl Iterator<Item = &'a u32>) -> usize {
            self.batch
        }

        fn deliver(&mut self, items: Vec<u32>, clock: &Arc<dyn Clock>) {
            self.delivered.send(items).unwrap();
            while !*self.go.lock().unwrap() {
                if !clock.sleep(Duration::from_millis(5)) {
                    return;
                }
            }
        }
    }

    #[test]
    fn delivers_in_order_in_batches_and_flush_is_bounded() {
        let (sender, delivered) = mpsc::channel();
        let go = Arc::new(Mutex::new(false));
        let reporter = Reporter::start(
            "test-reporter",
            2,
            Gate {
                delivered: sender,
                go: Arc::clone(&go),
                batch: 2,
            },
        )
        .unwrap();
        reporter.push(1, Class::Event);
        // The worker holds item 1 until the gate opens.
        assert_eq!(delivered.recv().unwrap(), [1]);
        for n in 2..=5 {
            reporter.push(n, Class::Event);
        }
        let started = Instant::now();
        assert!(!reporter.flush(Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(reporter.dropped(), 2, "2 and 3 made room for 4 and 5");
        *go.lock().unwrap() = true;
        assert!(reporter.flush(Duration::from_secs(10)));
        assert_eq!(delivered.recv().unwrap(), [4, 5]);
    }

    #[test]
    fn closing_cuts_a_delivery_short() {
        let (sender, delivered) = mpsc::channel();
        let reporter = Reporter::start(
            "test-reporter",
            4,
            Gate {
                delivered: sender,
                go: Arc::new(Mutex::new(false)),
                batch: 1,
            },
        )
        .unwrap();
        reporter.push(1, Class::Event);
        assert_eq!(delivered.recv().unwrap(), [1]);
        drop(reporter);
        // The worker ends: its end of the channel goes away.
        assert!(delivered.recv_timeout(Duration::from_secs(10)).is_err());
    }
}

//! The state a caller and its background reporter thread share: a queue
//! under a mutex, its capacity, and a condition variable signalled whenever
//! either side changes it. The report webhook and DRP's job reporter both
//! run on one.

use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

pub(crate) struct Shared<Q> {
    queue: Mutex<Q>,
    /// How many items the queue holds before the oldest is dropped.
    pub(crate) capacity: usize,
    /// Signalled when work is queued or done, or the caller closes.
    pub(crate) changed: Condvar,
}

impl<Q> Shared<Q> {
    pub(crate) fn new(queue: Q, capacity: usize) -> Self {
        Shared {
            queue: Mutex::new(queue),
            capacity: capacity.max(1),
            changed: Condvar::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Q> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits, at most `timeout`, until `done` holds for the queue; whether
    /// it does.
    pub(crate) fn wait_until(&self, timeout: Duration, done: impl Fn(&Q) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut queue = self.lock();
        loop {
            if done(&queue) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            queue = self
                .changed
                .wait_timeout(queue, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

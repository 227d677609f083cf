//! Progress reporting: the pipeline calls a trait, the caller decides how
//! (and how often) to show it. The library itself never prints.

use std::time::{Duration, Instant};

pub trait Progress {
    /// `done` bytes of `total` (when known) have been written.
    fn update(&mut self, done: u64, total: Option<u64>);
}

/// For callers that want no progress output.
#[derive(Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn update(&mut self, _: u64, _: Option<u64>) {}
}

/// Logs a progress line at most once per `interval`.
#[derive(Debug)]
pub struct LogProgress {
    started: Instant,
    last: Instant,
    interval: Duration,
}

impl LogProgress {
    pub fn new(interval: Duration) -> Self {
        let now = Instant::now();
        LogProgress {
            started: now,
            last: now,
            interval,
        }
    }
}

impl Progress for LogProgress {
    fn update(&mut self, done: u64, total: Option<u64>) {
        let now = Instant::now();
        if now.duration_since(self.last) >= self.interval {
            self.last = now;
            log::info!(
                "{}",
                progress_line(done, total, now.duration_since(self.started))
            );
        }
    }
}

/// `written 64.0 MiB of 256.0 MiB (25%) at 120.3 MB/s, ETA 2 s`
pub fn progress_line(done: u64, total: Option<u64>, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    #[allow(clippy::cast_precision_loss)] // a rate for humans
    let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
    let mut line = format!("written {}", crate::text::human_size(done));
    if let Some(total) = total.filter(|t| *t > 0) {
        let percent = done.saturating_mul(100) / total;
        line += &format!(" of {} ({percent}%)", crate::text::human_size(total));
        if rate > 0.0 {
            #[allow(clippy::cast_precision_loss)]
            let eta = total.saturating_sub(done) as f64 / rate;
            line += &format!(" at {:.1} MB/s, ETA {eta:.0} s", rate / 1e6);
            return line;
        }
    }
    line + &format!(" at {:.1} MB/s", rate / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_with_total() {
        let l = progress_line(64 << 20, Some(256 << 20), Duration::from_secs(2));
        assert_eq!(
            l,
            "written 64.0 MiB of 256.0 MiB (25%) at 33.6 MB/s, ETA 6 s"
        );
    }

    #[test]
    fn line_without_total_or_time() {
        assert_eq!(
            progress_line(1024, None, Duration::ZERO),
            "written 1.0 KiB at 0.0 MB/s"
        );
        assert_eq!(
            progress_line(0, Some(0), Duration::from_secs(1)),
            "written 0 B at 0.0 MB/s"
        );
    }
}

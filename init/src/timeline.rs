//! The boot timeline: when each stage of a deploy was reached, in seconds
//! since the kernel started (its own clock, `CLOCK_BOOTTIME`, which starts
//! at zero when the kernel does), so firmware time is left out and kernel
//! time is in.
//!
//! `IMPRINT-TIMELINE: kernel=0.00 pid1=1.21 drivers=2.02 link=2.05 lease=4.40 …`
//! is printed before the handoff; the same marks are in the status JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

pub const TIMELINE_PREFIX: &str = "IMPRINT-TIMELINE:";

/// A stage boundary, in the order a deploy reaches them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    /// PID 1 started (everything before is the kernel's).
    Pid1,
    /// The coldplug fixpoint: every driver for the hardware is loaded.
    Drivers,
    /// A NIC has carrier.
    Link,
    /// An address: a DHCP lease, or the static setup applied.
    Lease,
    /// The deploy spec is complete (the command line, or a fetched JSON).
    Spec,
    /// The first byte of the image reached the disk.
    FirstByte,
    /// The last byte of the image reached the disk.
    LastByte,
    /// The image's checksums matched and the disk was flushed.
    Verified,
    /// The identity is in the installed system.
    Injected,
    /// The machine is handed over (kexec, reboot, power-off).
    Handoff,
}

impl Mark {
    pub fn name(self) -> &'static str {
        match self {
            Mark::Pid1 => "pid1",
            Mark::Drivers => "drivers",
            Mark::Link => "link",
            Mark::Lease => "lease",
            Mark::Spec => "spec",
            Mark::FirstByte => "first-byte",
            Mark::LastByte => "last-byte",
            Mark::Verified => "verified",
            Mark::Injected => "injected",
            Mark::Handoff => "handoff",
        }
    }
}

/// The marks reached so far, each at most once (a retried run keeps the
/// first time a mark was reached, except for the deploy's own stages,
/// which the run that succeeds overwrites).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Timeline {
    marks: Vec<(Mark, Duration)>,
}

/// Time since the kernel started.
pub fn since_boot() -> Duration {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or(0),
        u32::try_from(now.tv_nsec).unwrap_or(0),
    )
}

impl Timeline {
    /// Records `mark` at `at` (since boot): a later record of the same mark
    /// replaces the earlier one.
    pub fn mark_at(&mut self, mark: Mark, at: Duration) {
        self.marks.retain(|(m, _)| *m != mark);
        self.marks.push((mark, at));
        self.marks.sort_by_key(|(m, _)| *m);
    }

    /// `IMPRINT-TIMELINE: kernel=0.00 pid1=1.21 …`, marks not reached left out.
    pub fn line(&self) -> String {
        let mut line = format!("{TIMELINE_PREFIX} kernel=0.00");
        for (mark, at) in &self.marks {
            let _ = write!(line, " {}={:.2}", mark.name(), at.as_secs_f64());
        }
        line
    }

    /// `{"kernel": 0.0, "pid1": 1.21, …}`, seconds since the kernel started.
    pub fn to_json(&self) -> Value {
        let mut object = serde_json::Map::new();
        object.insert("kernel".into(), 0.0.into());
        for (mark, at) in &self.marks {
            let seconds = (at.as_secs_f64() * 1000.0).round() / 1000.0;
            object.insert(mark.name().into(), seconds.into());
        }
        Value::Object(object)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_print_in_stage_order_whatever_order_they_came() {
        let mut t = Timeline::default();
        t.mark_at(Mark::Drivers, Duration::from_millis(2020));
        t.mark_at(Mark::Pid1, Duration::from_millis(1210));
        t.mark_at(Mark::FirstByte, Duration::from_millis(5500));
        assert_eq!(
            t.line(),
            "IMPRINT-TIMELINE: kernel=0.00 pid1=1.21 drivers=2.02 first-byte=5.50"
        );
        assert_eq!(
            t.to_json(),
            serde_json::json!({"kernel": 0.0, "pid1": 1.21, "drivers": 2.02, "first-byte": 5.5})
        );
    }

    #[test]
    fn a_later_run_replaces_a_mark() {
        let mut t = Timeline::default();
        t.mark_at(Mark::FirstByte, Duration::from_secs(5));
        t.mark_at(Mark::FirstByte, Duration::from_secs(30));
        assert_eq!(t.line(), "IMPRINT-TIMELINE: kernel=0.00 first-byte=30.00");
    }

    #[test]
    fn the_clock_counts_from_the_kernels_start() {
        let a = since_boot();
        let b = since_boot();
        assert!(a > Duration::ZERO && b >= a);
    }
}

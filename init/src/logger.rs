//! The `log` backend: one line per record on the console (stderr) and the
//! extra consoles named after `--` ([`crate::console`]), and in PID 1 also
//! into the kernel log so `dmesg` of a stuck machine shows it.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

use log::{Level, LevelFilter, Log, Metadata, Record};

#[derive(Debug)]
pub struct ConsoleLogger {
    kmsg: Option<Mutex<File>>,
    level: LevelFilter,
}

impl ConsoleLogger {
    /// Installs the logger; `kmsg` also copies every record to `/dev/kmsg`.
    pub fn install(level: LevelFilter, kmsg: bool) {
        let kmsg = kmsg
            .then(|| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open("/dev/kmsg")
                    .ok()
            })
            .flatten();
        let logger = ConsoleLogger {
            kmsg: kmsg.map(Mutex::new),
            level,
        };
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(level);
        }
    }
}

pub fn format_record(level: Level, message: &std::fmt::Arguments<'_>) -> String {
    match level {
        Level::Error => format!("imprint: error: {message}"),
        Level::Warn => format!("imprint: warning: {message}"),
        _ => format!("imprint: {message}"),
    }
}

impl Log for ConsoleLogger {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        // ureq's protocol layer logs raw requests, `Authorization: Bearer`
        // headers included, at debug and trace: never let those through,
        // whatever the level, so no token reaches the console or kmsg.
        if metadata.target().starts_with("ureq") && metadata.level() > Level::Info {
            return false;
        }
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let line = format_record(record.level(), record.args());
        let _ = writeln!(std::io::stderr().lock(), "{line}");
        crate::console::write_line(&line);
        if let Some(kmsg) = &self.kmsg
            && let Ok(mut kmsg) = kmsg.lock()
        {
            // Priority 7 (debug) keeps the kernel from echoing the line to the
            // console a second time: the default console loglevel prints only
            // priorities below 7. It still lands in the ring buffer.
            let _ = kmsg.write_all(format!("<7>{line}\n").as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ureq_protocol_traces_never_pass_even_at_trace_level() {
        let logger = ConsoleLogger {
            kmsg: None,
            level: LevelFilter::Trace,
        };
        let meta =
            |target: &'static str, level| Metadata::builder().target(target).level(level).build();
        assert!(!logger.enabled(&meta("ureq_proto::client", Level::Trace)));
        assert!(!logger.enabled(&meta("ureq::unversioned", Level::Debug)));
        assert!(logger.enabled(&meta("ureq", Level::Warn)));
        assert!(logger.enabled(&meta("imprint::net", Level::Trace)));
    }

    #[test]
    fn prefixes_by_level() {
        assert_eq!(
            format_record(Level::Info, &format_args!("net up")),
            "imprint: net up"
        );
        assert_eq!(
            format_record(Level::Warn, &format_args!("slow")),
            "imprint: warning: slow"
        );
        assert_eq!(
            format_record(Level::Error, &format_args!("boom")),
            "imprint: error: boom"
        );
    }
}

//! The serial console as seen by tests: a growing list of lines that threads can wait on.

use std::fs::File;
use std::io::{Read, Write};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// How many console lines a failed `expect` quotes.
const TAIL_LINES: usize = 40;

#[derive(Default)]
struct ConsoleState {
    lines: Vec<String>,
    /// Bytes after the last newline; matched only once the line is complete.
    partial: Vec<u8>,
    /// The writer is gone (QEMU exited or closed its stdout): nothing more will come.
    closed: bool,
}

/// Console lines shared between the reader thread and the test.
#[derive(Default)]
pub(crate) struct Console {
    state: Mutex<ConsoleState>,
    changed: Condvar,
}

impl Console {
    fn lock(&self) -> MutexGuard<'_, ConsoleState> {
        // A panicking test thread must not hide the console from the Drop that follows.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends raw console bytes, splitting them into lines.
    pub(crate) fn push(&self, bytes: &[u8]) {
        let mut state = self.lock();
        for &byte in bytes {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut state.partial);
                // The kernel writes CRLF to serial ports.
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                state
                    .lines
                    .push(String::from_utf8_lossy(&line).into_owned());
            } else {
                state.partial.push(byte);
            }
        }
        self.changed.notify_all();
    }

    /// Marks the end of output; an unterminated last line becomes a line.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        if !state.partial.is_empty() {
            let line = std::mem::take(&mut state.partial);
            state
                .lines
                .push(String::from_utf8_lossy(&line).into_owned());
        }
        state.closed = true;
        self.changed.notify_all();
    }

    /// Copies `source` into the console and `log` until end of file, then closes.
    pub(crate) fn pump(&self, mut source: impl Read, mut log: Option<File>) {
        let mut buffer = [0u8; 8192];
        loop {
            match source.read(&mut buffer) {
                Ok(0) => break,
                Ok(count) => {
                    if let Some(file) = log.as_mut() {
                        if let Err(error) = file.write_all(&buffer[..count]) {
                            log::warn!("writing console log: {error}");
                            log = None;
                        }
                    }
                    self.push(&buffer[..count]);
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => {
                    log::warn!("reading qemu console: {error}");
                    break;
                }
            }
        }
        self.close();
    }

    /// Everything received so far, newline-separated.
    pub(crate) fn text(&self) -> String {
        let state = self.lock();
        let mut text = state.lines.join("\n");
        if !state.lines.is_empty() {
            text.push('\n');
        }
        text.push_str(&String::from_utf8_lossy(&state.partial));
        text
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Waits until the console has closed, or `timeout` passes; returns whether it closed.
    pub(crate) fn wait_closed(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        while !state.closed {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            state = self
                .changed
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Waits for a line at or after `*cursor` that contains any of `patterns`; on success
    /// moves the cursor past it and returns the pattern's index and the whole line.
    pub(crate) fn expect_any(
        &self,
        cursor: &mut usize,
        patterns: &[&str],
        timeout: Duration,
    ) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            for (offset, line) in state.lines[*cursor..].iter().enumerate() {
                if let Some(index) = patterns.iter().position(|pattern| line.contains(pattern)) {
                    let found = (index, line.clone());
                    *cursor += offset + 1;
                    return Ok(found);
                }
            }
            *cursor = state.lines.len();
            let left = deadline.checked_duration_since(Instant::now());
            let why = match left {
                _ if state.closed => "the console closed (qemu exited) before".to_owned(),
                None => format!("not seen within {timeout:?}; until"),
                Some(left) => {
                    state = self
                        .changed
                        .wait_timeout(state, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                    continue;
                }
            };
            let start = state.lines.len().saturating_sub(TAIL_LINES);
            let mut tail = state.lines[start..].join("\n");
            if !state.partial.is_empty() {
                tail.push('\n');
                tail.push_str(&String::from_utf8_lossy(&state.partial));
            }
            bail!(
                "console pattern {patterns:?} {why} it appeared; last {} console lines:\n{tail}",
                state.lines.len() - start
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn expect_returns_whole_line_and_advances() {
        let console = Console::default();
        console.push(b"boot\r\nimprint: ready 1\nimprint: ready 2\n");
        let mut cursor = 0;
        let wait = Duration::from_millis(10);
        assert_eq!(
            console.expect_any(&mut cursor, &["ready"], wait).unwrap().1,
            "imprint: ready 1"
        );
        assert_eq!(
            console.expect_any(&mut cursor, &["ready"], wait).unwrap().1,
            "imprint: ready 2"
        );
        assert!(console.expect_any(&mut cursor, &["ready"], wait).is_err());
    }

    #[test]
    fn expect_any_reports_which_pattern_matched() {
        let console = Console::default();
        console.push(b"imprint: result=failure\n");
        let mut cursor = 0;
        let found = console.expect_any(&mut cursor, &["success", "failure"], Duration::ZERO);
        assert_eq!(found.unwrap().0, 1);
    }

    #[test]
    fn expect_wakes_up_on_new_output() {
        let console = Arc::new(Console::default());
        let writer = Arc::clone(&console);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            writer.push(b"partial ");
            writer.push(b"line done\n");
        });
        let mut cursor = 0;
        let line = console
            .expect_any(&mut cursor, &["done"], Duration::from_secs(10))
            .unwrap();
        assert_eq!(line.1, "partial line done");
        thread.join().unwrap();
    }

    #[test]
    fn timeout_error_names_pattern_timeout_and_tail() {
        let console = Console::default();
        for index in 0..100 {
            console.push(format!("line {index}\n").as_bytes());
        }
        let mut cursor = 0;
        let error = console
            .expect_any(&mut cursor, &["never"], Duration::from_millis(20))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("\"never\"") && error.contains("20ms"),
            "{error}"
        );
        assert!(
            error.contains("line 99") && error.contains("line 60"),
            "{error}"
        );
        assert!(!error.contains("line 59"), "{error}");
    }

    #[test]
    fn closed_console_fails_at_once_and_flushes_the_last_line() {
        let console = Console::default();
        console.push(b"Kernel panic - no newline");
        console.close();
        let mut cursor = 0;
        let started = Instant::now();
        let hour = Duration::from_secs(3600);
        assert!(
            console
                .expect_any(&mut cursor, &["Kernel panic"], hour)
                .is_ok()
        );
        let error = console
            .expect_any(&mut cursor, &["login"], hour)
            .unwrap_err();
        assert!(error.to_string().contains("closed"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(console.wait_closed(Duration::ZERO));
    }
}

//! The programs a root-filesystem deploy runs (mkfs, and inside the new
//! root `grub-install`, `update-initramfs`, …): each with a time limit,
//! its output logged line by line as it comes, and a failure that names
//! the command and ends with its last lines.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Lines of output an error quotes.
const LAST_LINES: usize = 12;

/// Where the end of each command is told, besides the log.
pub type Events<'a> = Option<&'a crate::status::Status>;

/// Runs `command` (shown as `shown`, e.g. `grub-install --target=i386-pc
/// /dev/vda`) to its end or until `limit`, when it is killed. Standard
/// input is empty; standard output and error go to the log, and its end
/// to `events` as a `command` event.
pub fn run(command: &mut Command, shown: &str, limit: Duration, events: Events<'_>) -> Result<()> {
    let started = Instant::now();
    let outcome = run_quietly(command, shown, limit);
    if let Some(status) = events {
        let (ok, output) = match &outcome {
            Ok(last) => (true, last.clone()),
            Err(e) => (false, vec![format!("{e:#}")]),
        };
        status.emit(crate::status::EventKind::Command {
            command: shown.to_owned(),
            ok,
            seconds: started.elapsed().as_secs_f64(),
            output,
        });
    }
    outcome.map(drop)
}

/// [`run`] without the event: Ok(the last lines of output).
fn run_quietly(command: &mut Command, shown: &str, limit: Duration) -> Result<Vec<String>> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .with_context(|| format!("starting {shown}"))?;
    let (tx, rx) = mpsc::channel::<String>();
    let readers: Vec<_> = [
        child
            .stdout
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|r| Box::new(r) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    .map(|pipe| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
    })
    .collect();
    drop(tx);
    let program = shown.split_whitespace().next().unwrap_or(shown).to_owned();
    let deadline = Instant::now() + limit;
    let mut last: VecDeque<String> = VecDeque::new();
    let mut keep = |line: String| {
        log::info!("{program}: {line}");
        if last.len() == LAST_LINES {
            last.pop_front();
        }
        last.push_back(line);
    };
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => keep(line),
            Err(mpsc::RecvTimeoutError::Disconnected) | Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(status) = child
            .try_wait()
            .with_context(|| format!("waiting for {shown}"))?
        {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
    };
    // The pipes close when the child and anything it left running are
    // gone; a grandchild that keeps them open is not waited for.
    let drain_until = Instant::now() + Duration::from_secs(2);
    while let Some(left) = drain_until.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => keep(line),
            Err(_) => break,
        }
    }
    drop(readers);
    let tail = if last.is_empty() {
        "no output".to_owned()
    } else {
        format!(
            "last lines: {}",
            last.iter().cloned().collect::<Vec<_>>().join(" | ")
        )
    };
    match status {
        None => bail!("{shown} did not finish within {limit:?} and was killed; {tail}"),
        Some(status) if !status.success() => bail!("{shown} failed ({status}); {tail}"),
        Some(_) => Ok(Vec::from(last)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn success_and_failure_name_the_command_and_its_last_lines() {
        run(
            Command::new("sh").args(["-c", "echo hello"]),
            "sh -c hello",
            Duration::from_secs(10),
            None,
        )
        .unwrap();
        let err = run(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            "grub-install --target=i386-pc /dev/vda",
            Duration::from_secs(10),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("grub-install --target=i386-pc /dev/vda failed (exit status: 3)"),
            "{err}"
        );
        assert!(err.contains("one") && err.contains("two"), "{err}");
    }

    #[test]
    fn each_command_ends_in_a_command_event() {
        let status = crate::status::Status::new(&crate::status::StatusOptions::default());
        run(
            Command::new("sh").args(["-c", "echo made"]),
            "mkfs.ext4 -F /dev/vda3",
            Duration::from_secs(10),
            Some(&status),
        )
        .unwrap();
        let _ = run(
            Command::new("sh").args(["-c", "echo broken; exit 1"]),
            "update-grub",
            Duration::from_secs(10),
            Some(&status),
        );
        let document = status.document();
        let events: Vec<&serde_json::Value> = document["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["event"] == "command")
            .collect();
        assert_eq!(events.len(), 2, "{document:#}");
        assert_eq!(events[0]["command"], "mkfs.ext4 -F /dev/vda3");
        assert_eq!(events[0]["ok"], true);
        assert_eq!(events[0]["output"], serde_json::json!(["made"]));
        assert_eq!(events[1]["ok"], false);
        let error = events[1]["output"][0].as_str().unwrap();
        assert!(
            error.starts_with("update-grub failed (exit status: 1)"),
            "{error}"
        );
    }

    #[test]
    fn a_command_past_its_limit_is_killed() {
        let started = Instant::now();
        let err = run(
            Command::new("sh").args(["-c", "echo waiting; exec sleep 30"]),
            "update-initramfs -u",
            Duration::from_millis(500),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            err.starts_with("update-initramfs -u did not finish within 500ms and was killed"),
            "{err}"
        );
        assert!(err.contains("waiting"), "{err}");
    }

    #[test]
    fn a_missing_program_is_named() {
        let err = run(
            &mut Command::new("/nonexistent/mkfs.ext4"),
            "mkfs.ext4 /dev/vda2",
            Duration::from_secs(1),
            None,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("starting mkfs.ext4 /dev/vda2: "),
            "{err:#}"
        );
    }
}

//! The consoles PID 1 writes to besides the kernel's.
//!
//! DRP's templates (stock and ours) put `kernel-console`, e.g.
//! `console=ttyS0,115200`, after `--`, where the kernel does not read it:
//! the kernel's console stays on the screen, and a serial-over-LAN operator
//! would see nothing of the deploy. PID 1 therefore reads `console=` on
//! both sides of `--` and also writes its log, timeline and result line to
//! every console named that the kernel does not already drive
//! (`/proc/consoles`), the last one named being the primary, as the
//! kernel's own rule is. The kexec'd kernel gets the console arguments as
//! before (see `boot::cmdline`).

use std::fs::File;
use std::io::Write;
use std::sync::{Mutex, OnceLock, PoisonError};

use anyhow::{Result, bail};

use crate::cmdline::KernelCmdline;

/// One `console=NAME[,OPTIONS]` argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleArg {
    /// The device under /dev: `ttyS0`, `tty0`, `hvc0`, `ttyAMA0`.
    pub name: String,
    /// The serial line's speed from the options (`115200n8` → 115200).
    pub baud: Option<u32>,
}

impl ConsoleArg {
    /// `ttyS0`, `ttyS0,115200`, `ttyS0,115200n8r`. The kernel's other forms
    /// (`uart8250,io,0x3f8`, `netconsole`, `null`, `lp0`) are not devices
    /// PID 1 can open and give `None`.
    pub fn parse(value: &str) -> Option<ConsoleArg> {
        let (name, options) = match value.split_once(',') {
            Some((name, options)) => (name, Some(options)),
            None => (value, None),
        };
        let is_tty = name.starts_with("tty") || name.starts_with("hvc");
        if !is_tty || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        let baud = options.and_then(|o| {
            let digits: String = o.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        });
        Some(ConsoleArg {
            name: name.to_owned(),
            baud,
        })
    }
}

/// The consoles named after `--` (and before it), minus those the kernel
/// already writes `/dev/console` to, in the order given: the last is the
/// primary. `kernel` lists the kernel's consoles (`/proc/consoles`).
pub fn extra_consoles(cmdline: &KernelCmdline, kernel: &[String]) -> Vec<ConsoleArg> {
    let before = cmdline
        .params
        .iter()
        .filter(|p| p.key == "console")
        .filter_map(|p| p.value.as_deref());
    let after = cmdline
        .init_args
        .iter()
        .filter_map(|word| word.strip_prefix("console="));
    let mut named: Vec<ConsoleArg> = Vec::new();
    for arg in before.chain(after).filter_map(ConsoleArg::parse) {
        // Named twice: the later place wins, as the kernel's rule for the
        // primary is "the last one".
        named.retain(|n| n.name != arg.name);
        named.push(arg);
    }
    named.retain(|n| !kernel.contains(&n.name));
    named
}

/// The device names in `/proc/consoles` (`tty0 -WU (EC p  ) 4:1`).
pub fn kernel_consoles(proc_consoles: &str) -> Vec<String> {
    proc_consoles
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The extra consoles opened for this process, written by [`write_line`].
static EXTRA: OnceLock<Mutex<Vec<File>>> = OnceLock::new();

/// Opens every console of [`extra_consoles`] for writing (serial lines set
/// to their speed), once per process. Each one that cannot be opened is
/// named in the error; the others are still used.
pub fn open_extra(cmdline: &KernelCmdline) -> Result<Vec<String>> {
    let kernel = kernel_consoles(&std::fs::read_to_string("/proc/consoles").unwrap_or_default());
    let mut opened = Vec::new();
    let mut files = Vec::new();
    let mut failed = Vec::new();
    for arg in extra_consoles(cmdline, &kernel) {
        let path = format!("/dev/{}", arg.name);
        match crate::sys::tty::open_console(std::path::Path::new(&path), arg.baud) {
            Ok(file) => {
                files.push(file);
                opened.push(arg.name);
            }
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    if EXTRA.set(Mutex::new(files)).is_err() {
        bail!("the extra consoles are already open");
    }
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(opened)
}

/// Writes `line` and a newline to every extra console. A console that
/// stops taking bytes (a hung-up serial line) is not waited on.
pub fn write_line(line: &str) {
    let Some(extra) = EXTRA.get() else {
        return;
    };
    let mut files = extra.lock().unwrap_or_else(PoisonError::into_inner);
    for file in files.iter_mut() {
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// Prints `line` on standard output (the kernel's console) and on every
/// extra console: the result line and the timeline go everywhere.
pub fn print_line(line: &str) {
    println!("{line}");
    write_line(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(consoles: &[ConsoleArg]) -> Vec<&str> {
        consoles.iter().map(|c| c.name.as_str()).collect()
    }

    #[test]
    fn console_arguments_after_the_dashes_count() {
        // What DRP's iPXE template renders: kernel-console after `--`.
        let cmdline = KernelCmdline::parse(
            "rs.uuid=x provisioner.web=http://d:8091 quiet -- console=ttyS0,115200 console=tty0",
        );
        let extra = extra_consoles(&cmdline, &["tty0".to_owned()]);
        assert_eq!(
            extra,
            [ConsoleArg {
                name: "ttyS0".to_owned(),
                baud: Some(115_200)
            }]
        );
    }

    #[test]
    fn the_last_named_is_the_primary_and_the_kernels_own_are_left_out() {
        let cmdline = KernelCmdline::parse(
            "console=ttyS1,9600n8 console=tty0 -- console=hvc0 console=ttyS1,115200",
        );
        let kernel = kernel_consoles("tty0                 -WU (EC p  )    4:1\n");
        assert_eq!(kernel, ["tty0"]);
        let extra = extra_consoles(&cmdline, &kernel);
        assert_eq!(names(&extra), ["hvc0", "ttyS1"]);
        assert_eq!(extra[1].baud, Some(115_200), "the later ttyS1 wins");
    }

    #[test]
    fn only_devices_pid1_can_open() {
        for value in [
            "uart8250,io,0x3f8,115200",
            "netcon0",
            "null",
            "lp0",
            "tty../x",
        ] {
            assert_eq!(ConsoleArg::parse(value), None, "{value}");
        }
        assert_eq!(
            ConsoleArg::parse("ttyAMA0"),
            Some(ConsoleArg {
                name: "ttyAMA0".to_owned(),
                baud: None
            })
        );
    }
}

//! Opening a console device for writing, with its serial line set up.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result};
use rustix::fs::{Mode, OFlags};
use rustix::termios::{self, ControlModes, OptionalActions, OutputModes};

/// Opens `path` (a console such as `/dev/ttyS0`) write-only, without making
/// it the controlling terminal and without blocking on a line that has no
/// carrier. A serial line gets `baud` (when given), 8 data bits, no parity,
/// no modem control, and newline to CR-LF translation, as the kernel's own
/// console driver sets it for `console=ttyS0,115200n8`.
pub fn open_console(path: &Path, baud: Option<u32>) -> Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::WRONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .with_context(|| format!("opening console {}", path.display()))?;
    // O_NONBLOCK only kept open() from waiting for carrier; the writes
    // block, so a busy serial line slows PID 1 down rather than losing
    // the result line.
    rustix::fs::fcntl_setfl(&fd, OFlags::WRONLY)
        .with_context(|| format!("console {}", path.display()))?;
    // Not a terminal (hvc on some hypervisors, a plain file in tests):
    // written as it is.
    if let Ok(mut settings) = termios::tcgetattr(&fd) {
        if let Some(baud) = baud {
            settings
                .set_speed(baud)
                .with_context(|| format!("console {}: speed {baud}", path.display()))?;
        }
        settings
            .control_modes
            .remove(ControlModes::CSIZE | ControlModes::PARENB);
        settings.control_modes |= ControlModes::CS8 | ControlModes::CLOCAL | ControlModes::CREAD;
        settings.output_modes |= OutputModes::OPOST | OutputModes::ONLCR;
        termios::tcsetattr(&fd, OptionalActions::Now, &settings)
            .with_context(|| format!("setting up console {}", path.display()))?;
    }
    Ok(File::from(fd))
}

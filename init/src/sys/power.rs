//! Ending PID 1's life: power off or reboot, after syncing every filesystem.

use rustix::system::RebootCommand;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Poweroff,
    Reboot,
}

/// Syncs and then powers off or reboots. Never returns: if the kernel
/// refuses (we are not PID 1, or lack CAP_SYS_BOOT), the process exits so
/// that, as PID 1, the kernel panics and `panic=` takes over.
pub fn power(action: PowerAction) -> ! {
    rustix::fs::sync();
    let cmd = match action {
        PowerAction::Poweroff => RebootCommand::PowerOff,
        PowerAction::Reboot => RebootCommand::Restart,
    };
    let err = rustix::system::reboot(cmd).err();
    eprintln!("imprint: error: reboot({action:?}) failed: {err:?}");
    #[allow(clippy::exit)] // deliberate: as PID 1 this hands over to the kernel's `panic=`
    std::process::exit(1)
}

//! The seam between PID 1's phases and the machine: everything PID 1 asks
//! of the kernel and the hardware goes through [`Platform`]. [`Machine`] is
//! the real one (sysfs, modules, the network, kexec); the tests drive the
//! same phases through a recording fake, so failure policies are host tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::disk::{self, DiskSelector};
use crate::erase::Erased;
use crate::handoff::{self, Staged};
use crate::hardware::{FirmwareFailure, HardwareReport};
use crate::net::{self, NetConfig};
use crate::session::{self, Done, Tracker};
use crate::spec::{EraseRequest, Resolved};
use crate::status::MachineInfo;
use crate::{modules, sys};

/// How long drivers get to make the target disk appear: disk probes
/// (NVMe namespaces, SCSI scans) finish asynchronously after the module
/// loads.
const DISK_WAIT: Duration = Duration::from_secs(15);
/// How long DHCP may take once a NIC has link.
const NET_TIMEOUT: Duration = Duration::from_secs(60);

/// What PID 1 needs from the machine it runs on.
pub trait Platform {
    /// Loads the drivers for the hardware present and reports what is left
    /// without one.
    fn load_drivers(&mut self) -> Result<HardwareReport>;
    /// Brings the network up as `config` says.
    fn bring_up_network(&mut self, config: &NetConfig) -> Result<net::Configured>;
    /// Firmware the kernel failed to load, as logged so far.
    fn firmware_failures(&mut self) -> Vec<FirmwareFailure>;
    /// What the `started` event says about the machine.
    fn machine_info(&mut self) -> MachineInfo;
    /// Waits (bounded) until `selector` picks exactly one disk, other than
    /// those `excluded`, and gives its device path.
    fn wait_for_disk(&mut self, selector: &DiskSelector, excluded: &[String]) -> Result<PathBuf>;
    /// Finds the installed kernel of a finished deploy and loads it for
    /// kexec. `init_args` are the words after `--` on imprint's own command
    /// line.
    fn stage_kexec(
        &mut self,
        deploy: &Resolved,
        done: &Done,
        init_args: &[String],
    ) -> Result<Staged>;
    /// Erases the disks `request` names ([`session::erase`]): `target` is
    /// the deploy's target disk, `source_disk` the disk the image is read
    /// from (never erased).
    fn erase(
        &mut self,
        request: &EraseRequest,
        target: Option<&Path>,
        source_disk: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Vec<Erased>>;
    /// Writes the UEFI boot entry for the disk at `target`, just deployed
    /// (`before`: its partition GUIDs before the deploy). `Ok(None)` when
    /// there is nothing to do (a BIOS machine, `boot-order=off`).
    fn register_boot_entry(
        &mut self,
        deploy: &Resolved,
        target: &Path,
        done: &Done,
        before: &[crate::efi::Guid],
    ) -> Result<Option<crate::efi::Registered>>;
    /// Unmounts everything imprint mounted, before any handoff.
    fn unmount_everything(&mut self);
    /// Prints a line for whoever watches the console (the result line, the
    /// timeline).
    fn console(&mut self, line: &str);
    /// Waits between runs of `on-failure=retry:N`.
    fn sleep(&mut self, pause: Duration);
}

/// The machine PID 1 really runs on.
#[derive(Debug)]
pub struct Machine {
    started: Instant,
}

impl Machine {
    pub fn new() -> Machine {
        Machine {
            started: Instant::now(),
        }
    }
}

impl Default for Machine {
    fn default() -> Self {
        Machine::new()
    }
}

impl Platform for Machine {
    fn load_drivers(&mut self) -> Result<HardwareReport> {
        let kver = sys::kmod::kernel_release();
        let report =
            modules::coldplug(&Path::new("/lib/modules").join(&kver)).context("loading drivers")?;
        log::info!(
            "drivers loaded after {:.2} s",
            self.started.elapsed().as_secs_f64()
        );
        // The second initrd of root-filesystem deploys, when the boot
        // loader concatenated it: say so, since nothing else shows it.
        let tools = crate::rootfs::tools::present(Path::new("/"));
        if !tools.is_empty() {
            log::info!("rootfs tools: {}", tools.join(" "));
        }
        Ok(report)
    }

    fn bring_up_network(&mut self, config: &NetConfig) -> Result<net::Configured> {
        let configured = net::bring_up(config, NET_TIMEOUT).context("bringing up the network")?;
        log::info!(
            "network up after {:.2} s",
            self.started.elapsed().as_secs_f64()
        );
        Ok(configured)
    }

    fn firmware_failures(&mut self) -> Vec<FirmwareFailure> {
        let log = crate::hardware::read_kmsg(Path::new("/dev/kmsg"));
        crate::hardware::firmware_failures(&log)
    }

    fn machine_info(&mut self) -> MachineInfo {
        MachineInfo::gather(Path::new("/sys"))
    }

    fn wait_for_disk(&mut self, selector: &DiskSelector, excluded: &[String]) -> Result<PathBuf> {
        disk::wait_for_disk(selector, excluded, DISK_WAIT)
    }

    fn erase(
        &mut self,
        request: &EraseRequest,
        target: Option<&Path>,
        source_disk: Option<&str>,
        tracker: &mut Tracker,
    ) -> Result<Vec<Erased>> {
        session::erase(request, target, source_disk, tracker)
    }

    fn register_boot_entry(
        &mut self,
        deploy: &Resolved,
        target: &Path,
        done: &Done,
        before: &[crate::efi::Guid],
    ) -> Result<Option<crate::efi::Registered>> {
        let label = match &done.injected {
            crate::inject::deployed::Injected::Root { root, .. } => {
                root.os_release().ok().flatten().map(|os| os.pretty_name)
            }
            crate::inject::deployed::Injected::Skipped(_) => None,
        };
        crate::efi::apply::register_for_disk(
            &deploy.boot_entry,
            target,
            before,
            label.as_deref().unwrap_or("Linux"),
        )
    }

    fn stage_kexec(
        &mut self,
        deploy: &Resolved,
        done: &Done,
        init_args: &[String],
    ) -> Result<Staged> {
        match &done.injected {
            crate::inject::deployed::Injected::Root { root, .. } => {
                handoff::stage_kexec(root, &deploy.kexec, init_args)
            }
            crate::inject::deployed::Injected::Skipped(why) => {
                Err(anyhow::anyhow!("no installed root to boot: {why}"))
            }
        }
    }

    fn unmount_everything(&mut self) {
        handoff::unmount_everything();
    }

    fn console(&mut self, line: &str) {
        crate::console::print_line(line);
    }

    fn sleep(&mut self, pause: Duration) {
        std::thread::sleep(pause);
    }
}

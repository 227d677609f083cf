//! The seam between PID 1's phases and the machine: everything PID 1 asks
//! of the kernel and the hardware goes through [`Platform`]. [`Machine`] is
//! the real one (sysfs, modules, the network, kexec); the tests drive the
//! same phases through a recording fake, so failure policies are host tests.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::disk::{self, DiskSelector};
use crate::handoff::{self, Staged};
use crate::hardware::{FirmwareFailure, HardwareReport};
use crate::net::{self, NetConfig};
use crate::session::Done;
use crate::source::url::SourceUrl;
use crate::spec::Resolved;
use crate::status::MachineInfo;
use crate::{modules, sys};

/// How long drivers get to make the target disk appear: disk probes
/// (NVMe namespaces, SCSI scans) finish asynchronously after the module
/// loads.
const DISK_WAIT: Duration = Duration::from_secs(15);
const DISK_SETTLE: Duration = Duration::from_secs(1);
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
    /// The whole disk holding a local image source (`vdb` for
    /// `file://LABEL=…` found on `vdb1`, found and mounted read-only), so
    /// that target selection leaves it out.
    fn source_disk(&mut self, image: &SourceUrl) -> Result<Option<String>>;
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
        let report = coldplug(&Path::new("/lib/modules").join(&kver)).context("loading drivers")?;
        log::info!(
            "drivers loaded after {:.2} s",
            self.started.elapsed().as_secs_f64()
        );
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

    fn source_disk(&mut self, image: &SourceUrl) -> Result<Option<String>> {
        crate::source::source_disk(image.as_str())
    }

    fn wait_for_disk(&mut self, selector: &DiskSelector, excluded: &[String]) -> Result<PathBuf> {
        wait_for_disk(selector, excluded, DISK_WAIT)
    }

    fn stage_kexec(
        &mut self,
        deploy: &Resolved,
        done: &Done,
        init_args: &[String],
    ) -> Result<Staged> {
        match &done.injected {
            crate::inject::deployed::Injected::Root {
                partitions, root, ..
            } => handoff::stage_kexec(
                &handoff::Installed {
                    partitions,
                    root: *root,
                },
                &deploy.kexec,
                init_args,
            ),
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

/// Waits (bounded) until the selector picks exactly one disk. Hints are
/// matched again after a quiet second: disks probe asynchronously, and a
/// second matching disk that shows up late must make the choice ambiguous
/// rather than lose the race.
fn wait_for_disk(
    selector: &DiskSelector,
    excluded: &[String],
    timeout: Duration,
) -> Result<PathBuf> {
    let deadline = Instant::now() + timeout;
    let pick = || -> Result<disk::DiskInfo> {
        let disks = disk::list_disks(Path::new("/sys/block"))?;
        disk::select_disk(selector, &disks, excluded).cloned()
    };
    loop {
        match pick() {
            Ok(found) if selector.is_explicit() => return Ok(announce(found)),
            Ok(found) => {
                std::thread::sleep(DISK_SETTLE);
                let again = pick()?;
                if again == found {
                    return Ok(announce(found));
                }
            }
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

fn announce(disk: disk::DiskInfo) -> PathBuf {
    log::info!("target disk: {}", disk.describe());
    disk.dev_path()
}

/// Every `modalias` file under `root` (normally `/sys/devices`). Symlinks are
/// not followed: sysfs is full of links back up the tree.
pub fn collect_modaliases(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && entry.file_name() == "modalias"
                && let Ok(alias) = std::fs::read_to_string(entry.path())
                && !alias.trim().is_empty()
            {
                found.push(alias.trim().to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Loads the drivers for the hardware present, repeating until no new
/// device shows up: loading a bus driver (virtio_pci) creates the devices
/// (virtio0, virtio1) whose drivers (virtio_blk, virtio_net) come next.
/// Then warns about every network or storage device left without a driver
/// and every firmware file a driver could not load ([`crate::hardware`]),
/// and returns that report.
pub fn coldplug(module_dir: &Path) -> Result<HardwareReport> {
    let index = modules::ModuleIndex::load(module_dir)?;
    let mut loaded = std::collections::BTreeSet::new();
    for _round in 0..8 {
        let aliases = collect_modaliases(Path::new("/sys/devices"));
        let plan = modules::coldplug_plan(&index, &aliases, &[]);
        for alias in &plan.unmatched_modaliases {
            log::debug!("no driver for device {alias}");
        }
        let fresh: Vec<_> = plan
            .modules
            .into_iter()
            .filter(|m| !loaded.contains(&m.name))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for module in fresh {
            match sys::kmod::load_module(&module_dir.join(&module.path)) {
                Ok(_) => log::info!("loaded {}", module.name),
                // One driver failing (hardware it dislikes) must not stop the
                // deploy; a missing disk or NIC is reported later by name.
                Err(e) => log::warn!("{e:#}"),
            }
            loaded.insert(module.name);
        }
    }
    let report = HardwareReport::gather(Path::new("/sys"), Path::new("/dev/kmsg"));
    report.log();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_modaliases_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::fs::write(dev.join("virtio0/other"), "x").unwrap();
        std::os::unix::fs::symlink(root.path(), dev.join("virtio0/loop")).unwrap();
        assert_eq!(
            collect_modaliases(root.path()),
            vec![
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "virtio:d00000001v00001AF4"
            ]
        );
    }
}

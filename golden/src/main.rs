//! `golden-init`: PID 1 of the golden test OS's initrd.
//!
//! It boots like a distribution's initramfs (early mounts, drivers for the
//! hardware present, wait for `root=`, mount it read-only) but instead of
//! switching root it prints what the root holds, one `GOLDEN-OS:` line per
//! fact, and powers off. Every path ends in a power-off: an error prints
//! `GOLDEN-OS: error …` first, a panic likewise.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use imprint::disk::probe::FsInfo;
use imprint::pid1::{EARLY_BOOT, apply_early_step};
use imprint::sys;
use imprint::sys::power::{PowerAction, power};
use imprint_golden::facts;
use imprint_golden::root::{RootSpec, pick_root};
use rustix::mount::MountFlags;

/// How long the root device gets to appear after the drivers load, as
/// imprint waits for its target disk.
const ROOT_WAIT: Duration = Duration::from_secs(15);
const SYSROOT: &str = "/sysroot";

fn main() {
    if std::process::id() != 1 {
        eprintln!(
            "golden-init is PID 1 of the golden OS's initrd (scripts/golden-os); it powers the machine off, so it does not run as a command"
        );
        #[allow(clippy::exit)] // a refusal, before anything is touched
        std::process::exit(2);
    }
    std::panic::set_hook(Box::new(|info| {
        println!(
            "{}",
            facts::error_line(&anyhow::anyhow!("golden-init panicked: {info}"))
        );
        power(PowerAction::Poweroff)
    }));
    for step in EARLY_BOOT {
        if let Err(e) = apply_early_step(step) {
            eprintln!("golden-init: early: {step} failed: {e:#}");
        }
    }
    imprint::logger::ConsoleLogger::install(log::LevelFilter::Info, false);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    println!("{}", facts::booted_line(&cmdline));
    match run(&cmdline) {
        Ok(()) => println!("{}", facts::end_line()),
        Err(error) => {
            quiet_kernel_console();
            println!("{}", facts::error_line(&error));
        }
    }
    power(PowerAction::Poweroff)
}

fn run(cmdline: &str) -> Result<()> {
    let spec = RootSpec::from_cmdline(cmdline)?;
    let module_dir = Path::new("/lib/modules").join(sys::kmod::kernel_release());
    imprint::modules::coldplug(&module_dir).context("loading drivers")?;
    let (device, fs) = wait_for_root(&spec, ROOT_WAIT)?;
    let fs = fs.with_context(|| {
        format!(
            "{} ({spec}) holds no filesystem golden-init recognises",
            device.display()
        )
    })?;
    load_fs_modules(&module_dir, fs.kernel_module())?;
    let sysroot = Path::new(SYSROOT);
    sys::mount::mkdir_all(sysroot, 0o755)?;
    let flags = MountFlags::RDONLY | MountFlags::NODEV | MountFlags::NOSUID | MountFlags::NOEXEC;
    sys::mount::mount(
        &device.to_string_lossy(),
        sysroot,
        fs.mount_type(),
        flags,
        None,
    )
    .with_context(|| format!("mounting the root {} ({})", device.display(), fs.describe()))?;
    // From here on every line must reach the console whole; a late driver
    // message printed in the middle would split a fact.
    quiet_kernel_console();
    println!(
        "{}",
        facts::root_line(&device, fs.fstype, fs.uuid.as_deref().unwrap_or("none"))
    );
    for line in facts::tree_lines(sysroot) {
        println!("{line}");
    }
    sys::mount::unmount(sysroot)
}

/// Waits (bounded) until exactly one block device matches `spec`.
fn wait_for_root(spec: &RootSpec, timeout: Duration) -> Result<(PathBuf, Option<FsInfo>)> {
    let deadline = Instant::now() + timeout;
    loop {
        let candidates = block_devices();
        if let Some(found) = pick_root(spec, &candidates)? {
            return Ok(found.clone());
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = candidates
                .iter()
                .map(|(device, fs)| match fs {
                    Some(fs) => format!("{} {}", device.display(), fs.describe()),
                    None => device.display().to_string(),
                })
                .collect();
            anyhow::bail!(
                "no block device matches {spec} after {} s (found: {})",
                timeout.as_secs(),
                if seen.is_empty() {
                    "none".to_owned()
                } else {
                    seen.join(", ")
                }
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every block device with a size, and the filesystem it holds if any.
/// A device that cannot be read (an empty CD drive) holds nothing.
fn block_devices() -> Vec<(PathBuf, Option<FsInfo>)> {
    let Ok(entries) = std::fs::read_dir("/sys/class/block") else {
        return Vec::new();
    };
    let mut devices: Vec<(PathBuf, Option<FsInfo>)> = entries
        .flatten()
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("size"))
                .ok()
                .and_then(|size| size.trim().parse::<u64>().ok())
                .is_some_and(|size| size > 0)
        })
        .map(|entry| {
            let device = Path::new("/dev").join(entry.file_name());
            let fs = imprint::disk::root::probe_device(&device).ok().flatten();
            (device, fs)
        })
        .collect();
    devices.sort_by(|a, b| a.0.cmp(&b.0));
    devices
}

/// Loads `module` and what it needs (ext4 needs `crc32c_generic` through a
/// softdep) from the initrd's module closure. One alternative failing is
/// not fatal, as in coldplug: if something needed is missing, the mount
/// says so.
fn load_fs_modules(module_dir: &Path, module: &str) -> Result<()> {
    let index = imprint::modules::ModuleIndex::load(module_dir)?;
    let closure = index
        .closure(&[module])
        .with_context(|| format!("the filesystem module {module}"))?;
    for entry in closure {
        if let Err(e) = sys::kmod::load_module(&module_dir.join(&entry.path)) {
            log::warn!("{e:#}");
        }
    }
    Ok(())
}

/// Keeps kernel messages off the console (they still reach the kernel log),
/// so the report lines are not interleaved with them.
fn quiet_kernel_console() {
    if let Err(e) = std::fs::write("/proc/sys/kernel/printk", "1") {
        log::warn!("quieting the kernel console via /proc/sys/kernel/printk: {e}");
    }
}

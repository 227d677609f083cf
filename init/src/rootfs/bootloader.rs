//! Making the new root bootable with what the image itself ships, as
//! curtin does: a chroot into the new root with `/dev`, `/proc`, `/sys` and
//! `/run` bound in, then
//!
//! ```text
//! initramfs:  update-initramfs -u|-c -k all   | dracut --regenerate-all -f
//! grub:       grub-install --target=i386-pc DISK             (BIOS boot partition)
//!             grub-install --target=x86_64-efi --efi-directory=ESP --no-nvram
//!             grub-install ... --removable                  (\EFI\BOOT\BOOTX64.EFI)
//!             update-grub | grub-mkconfig -o /boot/grub/grub.cfg | grub2-mkconfig ...
//! systemd-boot: bootctl install --esp-path=ESP --no-variables
//! ```
//!
//! UEFI boot entries are not written (`--no-nvram`): the removable path
//! is what firmware boots from a disk it has no entry for.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::command;
use crate::disk::root::read_os_release;
use crate::installed::RootDir;
use crate::sys;

/// Which bootloader a root-filesystem deploy installs (`imprint.bootloader=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bootloader {
    /// GRUB when the image has `grub-install`, else systemd-boot when it
    /// has `bootctl` and the layout an ESP.
    #[default]
    Auto,
    Grub,
    SystemdBoot,
    /// Nothing: the image boots some other way (or is not booted from
    /// this disk). The initramfs is still regenerated.
    None,
}

impl Bootloader {
    pub fn parse(text: &str) -> Result<Bootloader> {
        Ok(match text {
            "auto" | "" => Bootloader::Auto,
            "grub" => Bootloader::Grub,
            "systemd-boot" => Bootloader::SystemdBoot,
            "none" => Bootloader::None,
            other => bail!("must be auto, grub, systemd-boot or none, not {other:?}"),
        })
    }
}

/// Where the bootloader goes.
#[derive(Debug, Clone)]
pub struct BootTargets {
    /// The disk the root is on: `/dev/vda`.
    pub disk: String,
    /// The disk has a BIOS boot partition, so GRUB's i386-pc core fits.
    pub bios: bool,
    /// The ESP's mount point inside the new root (`/boot/efi`), if the
    /// layout mounts one.
    pub esp: Option<String>,
    /// `UUID=…` of the new root filesystem, for a kernel command line that
    /// the image leaves to the installer (systemd-boot's
    /// `/etc/kernel/cmdline`).
    pub root: Option<String>,
}

const GRUB_INSTALL_LIMIT: Duration = Duration::from_secs(300);
const MKCONFIG_LIMIT: Duration = Duration::from_secs(300);
/// Regenerating an initramfs compresses tens of MiB of modules.
const INITRAMFS_LIMIT: Duration = Duration::from_secs(900);

/// Chooses and installs the bootloader, and regenerates the initramfs for
/// this machine, inside the new root mounted at `root`.
pub fn install(
    root: &Path,
    choice: Bootloader,
    targets: &BootTargets,
    events: command::Events<'_>,
) -> Result<()> {
    let dir = RootDir::open(root)?;
    let has = |path: &str| -> Result<bool> { Ok(dir.metadata(path, true)?.is_some()) };
    let os = read_os_release(&mut |path| dir.read_text(path, 64 << 10))?;
    let os_id = os.as_ref().map_or("linux", |o| o.id.as_str()).to_owned();
    let grub_install = first_present(&has, &["/usr/sbin/grub-install", "/usr/sbin/grub2-install"])?;
    let bootctl = first_present(&has, &["/usr/bin/bootctl"])?;
    let chosen = match choice {
        Bootloader::Auto if grub_install.is_some() => Bootloader::Grub,
        Bootloader::Auto if bootctl.is_some() && targets.esp.is_some() => Bootloader::SystemdBoot,
        Bootloader::Auto => bail!(
            "the image has neither grub-install nor bootctl (with an ESP in the layout) to boot \
             it: install one in the image, or set imprint.bootloader=none if it boots otherwise"
        ),
        other => other,
    };
    log::info!(
        "bootloader: {} for {} ({})",
        match chosen {
            Bootloader::Grub => "GRUB",
            Bootloader::SystemdBoot => "systemd-boot",
            _ => "none",
        },
        os.as_ref()
            .map_or("an OS without os-release", |o| o.pretty_name.as_str()),
        targets.disk
    );
    let binds = Binds::mount(&dir)?;
    let chroot = Chroot { root, events };
    let kernels: Vec<String> = dir
        .list_dir("/boot")?
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.to_str()?.strip_prefix("vmlinuz-").map(str::to_owned))
        .collect();
    let regenerate_initramfs = || -> Result<()> {
        if has("/usr/sbin/update-initramfs")? {
            let names = dir.list_dir("/boot")?.unwrap_or_default();
            let has_initrd = names
                .iter()
                .any(|n| n.to_string_lossy().starts_with("initrd.img-"));
            let mode = if has_initrd { "-u" } else { "-c" };
            chroot.run(&["update-initramfs", mode, "-k", "all"], INITRAMFS_LIMIT)
        } else if has("/usr/bin/dracut")? || has("/usr/sbin/dracut")? {
            chroot.run(&["dracut", "--regenerate-all", "-f"], INITRAMFS_LIMIT)
        } else {
            log::warn!(
                "the image has neither update-initramfs nor dracut: its initramfs is kept as it is"
            );
            Ok(())
        }
    };
    // systemd-boot's kernel hooks copy kernels onto the ESP only once it
    // is installed there: bootctl first, then the initramfs.
    if chosen != Bootloader::SystemdBoot {
        regenerate_initramfs()?;
    }

    match chosen {
        Bootloader::Grub => {
            let Some(grub_install) = grub_install else {
                bail!("imprint.bootloader=grub, but the image has no grub-install");
            };
            let grub = if grub_install.ends_with("grub2-install") {
                "grub2"
            } else {
                "grub"
            };
            let mut installed = false;
            if targets.bios && has(&format!("/usr/lib/{grub}/i386-pc"))? {
                chroot.run(
                    &[&grub_install, "--target=i386-pc", &targets.disk],
                    GRUB_INSTALL_LIMIT,
                )?;
                installed = true;
            }
            if let Some(esp) = &targets.esp {
                if has(&format!("/usr/lib/{grub}/x86_64-efi"))? {
                    let efi_dir = format!("--efi-directory={esp}");
                    let id = format!("--bootloader-id={os_id}");
                    let base = [grub_install.as_str(), "--target=x86_64-efi", &efi_dir];
                    chroot.run(
                        &[&base[..], &[&id, "--no-nvram"]].concat(),
                        GRUB_INSTALL_LIMIT,
                    )?;
                    chroot.run(&[&base[..], &["--removable"]].concat(), GRUB_INSTALL_LIMIT)?;
                    installed = true;
                }
            }
            if !installed {
                bail!(
                    "the image's GRUB has no modules for this layout (i386-pc with a BIOS boot \
                     partition, or x86_64-efi with an ESP): install grub-pc-bin or \
                     grub-efi-amd64-bin in the image"
                );
            }
            if has("/usr/sbin/update-grub")? {
                chroot.run(&["update-grub"], MKCONFIG_LIMIT)?;
            } else if grub == "grub2" {
                chroot.run(
                    &["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
                    MKCONFIG_LIMIT,
                )?;
            } else {
                chroot.run(
                    &["grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
                    MKCONFIG_LIMIT,
                )?;
            }
        }
        Bootloader::SystemdBoot => {
            let Some(esp) = &targets.esp else {
                bail!("systemd-boot needs an ESP in the layout");
            };
            if bootctl.is_none() {
                bail!("imprint.bootloader=systemd-boot, but the image has no bootctl");
            }
            // kernel-install takes the command line from /etc/kernel/cmdline,
            // else from the running kernel's: imprint's own. The new root
            // goes in front of what the image says.
            let cmdline = dir
                .read_text("/etc/kernel/cmdline", 64 << 10)?
                .unwrap_or_default();
            if !cmdline.split_whitespace().any(|w| w.starts_with("root=")) {
                let Some(root) = &targets.root else {
                    bail!("systemd-boot needs the root filesystem's UUID for /etc/kernel/cmdline");
                };
                let line = format!("root={root} rw {}", cmdline.trim())
                    .trim()
                    .to_owned();
                log::info!("/etc/kernel/cmdline: {line}");
                dir.mkdir_all("/etc/kernel", 0o755, 0, 0)?;
                dir.write_file(
                    "/etc/kernel/cmdline",
                    format!("{line}\n").as_bytes(),
                    0o644,
                    0,
                    0,
                )?;
            }
            chroot.run(
                &[
                    "bootctl",
                    "install",
                    &format!("--esp-path={esp}"),
                    "--no-variables",
                ],
                GRUB_INSTALL_LIMIT,
            )?;
            regenerate_initramfs()?;
            // Each kernel gets its loader entry (and its copy on the ESP)
            // from kernel-install; the initramfs hooks do that on Debian,
            // but not every image has them.
            let entries = dir
                .list_dir(&format!("{esp}/loader/entries"))?
                .unwrap_or_default();
            if entries.is_empty() {
                for kver in &kernels {
                    let kernel = format!("/boot/vmlinuz-{kver}");
                    // Debian's name, then dracut's.
                    let initrd = [
                        format!("/boot/initrd.img-{kver}"),
                        format!("/boot/initramfs-{kver}.img"),
                    ]
                    .into_iter()
                    .find(|path| has(path).unwrap_or(false));
                    let mut argv = vec!["kernel-install", "add", kver.as_str(), kernel.as_str()];
                    if let Some(initrd) = &initrd {
                        argv.push(initrd);
                    }
                    chroot.run(&argv, MKCONFIG_LIMIT)?;
                }
            }
        }
        Bootloader::Auto | Bootloader::None => {}
    }
    binds.unmount()
}

fn first_present(has: &dyn Fn(&str) -> Result<bool>, paths: &[&str]) -> Result<Option<String>> {
    for path in paths {
        if has(path)? {
            return Ok(Some((*path).to_owned()));
        }
    }
    Ok(None)
}

/// Runs programs inside the new root.
struct Chroot<'a> {
    root: &'a Path,
    events: command::Events<'a>,
}

impl Chroot<'_> {
    fn run(&self, argv: &[&str], limit: Duration) -> Result<()> {
        let shown = argv.join(" ");
        log::info!("in the new root: {shown}");
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..])
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("HOME", "/root")
            .env("DEBIAN_FRONTEND", "noninteractive");
        sys::chroot::run_inside(&mut cmd, self.root)?;
        command::run(&mut cmd, &shown, limit, self.events)
    }
}

/// The host's `/dev`, `/proc`, `/sys` and `/run` bound into the new root.
struct Binds {
    points: Vec<PathBuf>,
}

impl Binds {
    fn mount(dir: &RootDir) -> Result<Binds> {
        let mut binds = Binds { points: Vec::new() };
        for name in ["dev", "proc", "sys", "run"] {
            let source = Path::new("/").join(name);
            if !source.is_dir() {
                continue;
            }
            dir.mkdir_all(&format!("/{name}"), 0o755, 0, 0)?;
            let at = dir.path().join(name);
            sys::chroot::bind_recursive(&source, &at)
                .with_context(|| format!("preparing the chroot into {}", dir.path().display()))?;
            binds.points.push(at);
        }
        Ok(binds)
    }

    fn unmount(mut self) -> Result<()> {
        self.unmount_all()
    }

    fn unmount_all(&mut self) -> Result<()> {
        let mut first_error = None;
        while let Some(point) = self.points.pop() {
            if let Err(e) = sys::chroot::unmount_detach(&point) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for Binds {
    fn drop(&mut self) {
        let _ = self.unmount_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootloader_names() {
        assert_eq!(Bootloader::parse("auto").unwrap(), Bootloader::Auto);
        assert_eq!(Bootloader::parse("grub").unwrap(), Bootloader::Grub);
        assert_eq!(
            Bootloader::parse("systemd-boot").unwrap(),
            Bootloader::SystemdBoot
        );
        assert_eq!(Bootloader::parse("none").unwrap(), Bootloader::None);
        assert_eq!(
            Bootloader::parse("lilo").unwrap_err().to_string(),
            "must be auto, grub, systemd-boot or none, not \"lilo\""
        );
    }
}

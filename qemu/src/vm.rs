//! Building a QEMU command line, running it, and talking to its serial console.

use std::ffi::OsString;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tempfile::TempPath;

use crate::console::Console;

/// Image file format of a [`Disk`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskFormat {
    /// A plain file, byte for byte the disk.
    Raw,
    /// A qcow2 image (see [`crate::create_qcow2_disk`]).
    Qcow2,
}

/// How a [`Disk`] is attached, which decides the guest driver that must load.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskInterface {
    /// `virtio-blk-pci` (`virtio_blk`, `/dev/vdX`).
    VirtioBlk,
    /// `nvme` controller with one namespace (`nvme`, `/dev/nvmeXn1`).
    Nvme,
    /// `ide-hd` on an `ich9-ahci` controller (`ahci`, `/dev/sdX`).
    Ahci,
    /// `scsi-hd` on a `virtio-scsi-pci` controller (`virtio_scsi`, `/dev/sdX`).
    VirtioScsi,
    /// `scsi-hd` on an LSI MegaRAID SAS 2108 (`megasas-gen2`, guest driver
    /// `megaraid_sas`): a hardware RAID HBA like those in many servers.
    ScsiHd,
}

/// A virtual disk backed by a host file.
#[derive(Clone, Debug)]
pub struct Disk {
    /// The image file on the host.
    pub path: PathBuf,
    /// Its format.
    pub format: DiskFormat,
    /// The controller it hangs off.
    pub interface: DiskInterface,
    /// Serial number the guest sees (`/dev/disk/by-id`); NVMe gets one made up if unset
    /// because QEMU requires it.
    pub serial: Option<String>,
    /// Logical sector size in bytes (512 when unset).
    pub logical_block_size: Option<u32>,
    /// Physical sector size in bytes (the logical size when unset).
    pub physical_block_size: Option<u32>,
    /// Passes the guest's discards to the file (`discard=unmap`): the
    /// discarded ranges become holes, which read back as zeros.
    pub discard: bool,
}

impl Disk {
    /// A raw image on virtio-blk; adjust the public fields or use the `with_*` helpers.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: DiskFormat::Raw,
            interface: DiskInterface::VirtioBlk,
            serial: None,
            logical_block_size: None,
            physical_block_size: None,
            discard: false,
        }
    }

    /// Passes discards through to the host file (`discard=unmap`).
    #[must_use]
    pub fn with_discard(mut self) -> Self {
        self.discard = true;
        self
    }

    /// Sets the image format.
    #[must_use]
    pub fn with_format(mut self, format: DiskFormat) -> Self {
        self.format = format;
        self
    }

    /// Sets the controller.
    #[must_use]
    pub fn with_interface(mut self, interface: DiskInterface) -> Self {
        self.interface = interface;
        self
    }

    /// Sets the serial number.
    #[must_use]
    pub fn with_serial(mut self, serial: impl Into<String>) -> Self {
        self.serial = Some(serial.into());
        self
    }

    /// Sets logical and physical sector sizes (e.g. 4096/4096 for a 4Kn disk).
    #[must_use]
    pub fn with_block_sizes(mut self, logical: u32, physical: u32) -> Self {
        self.logical_block_size = Some(logical);
        self.physical_block_size = Some(physical);
        self
    }
}

/// A NIC on QEMU's user-mode network (guest 10.0.2.15, DHCP, host loopback as 10.0.2.2).
#[derive(Clone, Debug)]
pub struct Nic {
    /// QEMU device model: `virtio-net-pci`, `e1000`, `e1000e`, `vmxnet3`, `rtl8139`, …
    pub model: String,
    /// MAC address `52:54:00:12:34:56`; QEMU picks one when unset.
    pub mac: Option<String>,
    /// Port forwards in `-netdev user` syntax, e.g. `tcp::2222-:22`.
    pub hostfwd: Vec<String>,
    /// Raw options appended to `-netdev user,…` (e.g. `restrict=on`, `dhcpstart=…`).
    pub netdev_options: Option<String>,
    /// Keep the NIC's option ROM (iPXE). Off by default: it is only needed to PXE boot;
    /// [`VmBuilder::boot_from_network`] turns it on.
    pub option_rom: bool,
}

impl Nic {
    /// A virtio-net NIC on user-mode networking.
    pub fn user() -> Self {
        Self::with_model("virtio-net-pci")
    }

    /// A NIC of another device model on user-mode networking.
    pub fn with_model(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            mac: None,
            hostfwd: Vec::new(),
            netdev_options: None,
            option_rom: false,
        }
    }

    /// Sets the MAC address.
    #[must_use]
    pub fn mac(mut self, mac: impl Into<String>) -> Self {
        self.mac = Some(mac.into());
        self
    }

    /// Adds a port forward (`tcp::HOSTPORT-:GUESTPORT`).
    #[must_use]
    pub fn hostfwd(mut self, rule: impl Into<String>) -> Self {
        self.hostfwd.push(rule.into());
        self
    }

    /// Appends raw `-netdev user` options.
    #[must_use]
    pub fn netdev_options(mut self, options: impl Into<String>) -> Self {
        self.netdev_options = Some(options.into());
        self
    }
}

/// OVMF's code (firmware) image from Debian's `ovmf` package, without Secure Boot.
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE.fd";
/// The pristine UEFI variable store that goes with [`OVMF_CODE`].
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS.fd";

/// UEFI firmware in two flash chips, as on real boards: the code read-only,
/// the variable store writable.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UefiFirmware {
    /// The firmware image (e.g. [`OVMF_CODE`]).
    code: PathBuf,
    /// The variable store the VM starts from (e.g. [`OVMF_VARS`]). QEMU runs
    /// it with `snapshot=on`, so what the guest writes is discarded and the
    /// file stays pristine for the next VM, with no copy to clean up.
    vars_template: PathBuf,
    /// Whether the guest's writes go to `vars_template` itself (a copy the
    /// test made), so boot entries outlive the VM.
    vars_writable: bool,
}

impl UefiFirmware {
    /// OVMF as the `ovmf` package installs it.
    fn ovmf() -> Self {
        Self {
            code: OVMF_CODE.into(),
            vars_template: OVMF_VARS.into(),
            vars_writable: false,
        }
    }
}

/// The accelerators a VM uses unless told otherwise: `IMPRINT_QEMU_ACCEL` split on
/// commas (e.g. `kvm,tcg`), else `tcg` alone.
///
/// Not `kvm,tcg`: on the development machines `/dev/kvm` exists and opens, so QEMU
/// never falls back, yet a guest under it hangs without output (or QEMU aborts on
/// `failed to set MSR 0x10a` with `-cpu host`). Opt in to KVM where it works.
pub fn default_accelerators() -> Vec<String> {
    let configured = std::env::var("IMPRINT_QEMU_ACCEL").unwrap_or_default();
    let accelerators: Vec<String> = configured
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    if accelerators.is_empty() {
        vec!["tcg".to_owned()]
    } else {
        accelerators
    }
}

/// Configuration of one VM; [`VmBuilder::start`] runs it.
#[derive(Clone, Debug)]
pub struct VmBuilder {
    qemu: OsString,
    accelerators: Vec<String>,
    machine: String,
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    append: Option<String>,
    memory_mib: u32,
    cpus: u32,
    disks: Vec<Disk>,
    nics: Vec<Nic>,
    network_boot: Option<(PathBuf, String)>,
    uefi: Option<UefiFirmware>,
    no_reboot: bool,
    console_log: Option<PathBuf>,
    monitor_socket: Option<PathBuf>,
    paused: bool,
    extra_args: Vec<OsString>,
}

impl Default for VmBuilder {
    fn default() -> Self {
        Self {
            qemu: "qemu-system-x86_64".into(),
            accelerators: default_accelerators(),
            machine: "q35".into(),
            kernel: None,
            initrd: None,
            append: None,
            memory_mib: 1024,
            cpus: 2,
            disks: Vec::new(),
            nics: Vec::new(),
            network_boot: None,
            uefi: None,
            no_reboot: true,
            console_log: None,
            monitor_socket: None,
            paused: false,
            extra_args: Vec::new(),
        }
    }
}

impl VmBuilder {
    /// A VM with 1024 MiB, 2 CPUs, q35, no disks, no NICs, `-no-reboot`.
    pub fn new() -> Self {
        Self::default()
    }

    /// The QEMU binary (default `qemu-system-x86_64` from `PATH`).
    #[must_use]
    pub fn qemu_binary(mut self, qemu: impl Into<OsString>) -> Self {
        self.qemu = qemu.into();
        self
    }

    /// Accelerators in order of preference, each passed as `-accel NAME`; QEMU takes
    /// the first that initialises. See [`default_accelerators`].
    #[must_use]
    pub fn accelerators<I, S>(mut self, accelerators: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.accelerators = accelerators.into_iter().map(Into::into).collect();
        self
    }

    /// The machine type (default `q35`).
    #[must_use]
    pub fn machine(mut self, machine: impl Into<String>) -> Self {
        self.machine = machine.into();
        self
    }

    /// Boots this kernel directly: a bzImage, or a PVH `vmlinux` from
    /// [`crate::fast_boot_kernel`].
    #[must_use]
    pub fn kernel(mut self, kernel: impl Into<PathBuf>) -> Self {
        self.kernel = Some(kernel.into());
        self
    }

    /// The initramfs.
    #[must_use]
    pub fn initrd(mut self, initrd: impl Into<PathBuf>) -> Self {
        self.initrd = Some(initrd.into());
        self
    }

    /// The kernel command line (include `console=ttyS0` to see the kernel).
    #[must_use]
    pub fn append(mut self, command_line: impl Into<String>) -> Self {
        self.append = Some(command_line.into());
        self
    }

    /// Guest memory in MiB (default 1024).
    #[must_use]
    pub fn memory_mib(mut self, memory_mib: u32) -> Self {
        self.memory_mib = memory_mib;
        self
    }

    /// Virtual CPUs (default 2).
    #[must_use]
    pub fn cpus(mut self, cpus: u32) -> Self {
        self.cpus = cpus;
        self
    }

    /// Attaches a disk; disks appear in the order added within each controller type.
    #[must_use]
    pub fn disk(mut self, disk: Disk) -> Self {
        self.disks.push(disk);
        self
    }

    /// Attaches a NIC.
    #[must_use]
    pub fn nic(mut self, nic: Nic) -> Self {
        self.nics.push(nic);
        self
    }

    /// PXE boot: the first NIC (a virtio-net one is added if there is none) keeps its
    /// iPXE ROM, user-mode networking serves `tftp_dir` over TFTP and offers `bootfile`
    /// via DHCP, and the firmware boots from the network. Do not also set a kernel.
    #[must_use]
    pub fn boot_from_network(mut self, tftp_dir: impl Into<PathBuf>, bootfile: &str) -> Self {
        self.network_boot = Some((tftp_dir.into(), bootfile.to_owned()));
        self
    }

    /// Boots UEFI firmware instead of SeaBIOS: OVMF as Debian's `ovmf`
    /// package installs it (`/usr/share/OVMF/OVMF_CODE.fd` and
    /// `OVMF_VARS.fd`). Without a [`kernel`](Self::kernel) the firmware boots
    /// from the disks alone, e.g. `\EFI\BOOT\BOOTX64.EFI` on an EFI system
    /// partition.
    #[must_use]
    pub fn uefi(mut self) -> Self {
        self.uefi = Some(UefiFirmware::ovmf());
        self
    }

    /// Boots this UEFI firmware instead of SeaBIOS: `code` in a read-only
    /// flash chip, the variable store `vars_template` in a second one with
    /// `snapshot=on`, so what the guest writes is discarded and the file
    /// stays pristine for the next VM, with no copy to clean up.
    #[must_use]
    pub fn uefi_firmware(
        mut self,
        code: impl Into<PathBuf>,
        vars_template: impl Into<PathBuf>,
    ) -> Self {
        self.uefi = Some(UefiFirmware {
            code: code.into(),
            vars_template: vars_template.into(),
            vars_writable: false,
        });
        self
    }

    /// OVMF with its variable store in `vars`, a copy the caller owns
    /// (made from [`OVMF_VARS`]): what the guest writes (boot entries,
    /// `BootOrder`) stays there for the next VM, as NVRAM does on a real
    /// machine.
    #[must_use]
    pub fn uefi_with_vars(mut self, vars: impl Into<PathBuf>) -> Self {
        self.uefi = Some(UefiFirmware {
            code: OVMF_CODE.into(),
            vars_template: vars.into(),
            vars_writable: true,
        });
        self
    }

    /// Whether a guest reboot ends QEMU (default `true`, so `panic=-1` ends the test).
    /// Turn off to follow a guest across a reboot.
    #[must_use]
    pub fn no_reboot(mut self, no_reboot: bool) -> Self {
        self.no_reboot = no_reboot;
        self
    }

    /// Where to append the console output (default: a temporary file, kept only when
    /// the VM is dropped during a panic, i.e. a failing test).
    #[must_use]
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
    }

    /// Serves the human monitor on the Unix socket `path` (instead of none), for
    /// [`Vm::monitor`]: e.g. `set_link net1 off` takes the second NIC's link down.
    #[must_use]
    pub fn monitor_socket(mut self, path: impl Into<PathBuf>) -> Self {
        self.monitor_socket = Some(path.into());
        self
    }

    /// Starts with the CPUs stopped (`-S`) until the monitor says `cont`, so a
    /// test can change devices before the guest sees them. Needs
    /// [`monitor_socket`](Self::monitor_socket).
    #[must_use]
    pub fn paused(mut self) -> Self {
        self.paused = true;
        self
    }

    /// Extra raw QEMU arguments, appended last.
    #[must_use]
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.extra_args.extend(args.into_iter().map(Into::into));
        self
    }

    /// The full QEMU argument list this configuration runs with.
    pub fn qemu_args(&self) -> Result<Vec<OsString>> {
        let mut args: Vec<OsString> = Vec::new();
        let mut push = |arg: &str| args.push(arg.into());
        for accelerator in &self.accelerators {
            push("-accel");
            push(accelerator);
        }
        push("-nodefaults");
        // Not -nographic: it claims stdio too and clashes with `-serial stdio`.
        let monitor = match &self.monitor_socket {
            Some(path) => format!(
                "unix:{},server=on,wait=off",
                path.to_str()
                    .with_context(|| format!("monitor socket {} is not UTF-8", path.display()))?
                    .replace(',', ",,")
            ),
            None => "none".to_owned(),
        };
        for arg in ["-display", "none", "-monitor", &monitor, "-serial", "stdio"] {
            push(arg);
        }
        if self.paused {
            if self.monitor_socket.is_none() {
                bail!("a paused VM needs a monitor socket to be continued");
            }
            push("-S");
        }
        push("-machine");
        push(&self.machine);
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        if self.no_reboot {
            push("-no-reboot");
        }
        if let Some(firmware) = &self.uefi {
            args.extend(Self::uefi_args(firmware)?);
        }
        if let Some(kernel) = &self.kernel {
            args.push("-kernel".into());
            args.push(kernel.into());
        }
        if let Some(initrd) = &self.initrd {
            args.push("-initrd".into());
            args.push(initrd.into());
        }
        if let Some(append) = &self.append {
            args.push("-append".into());
            args.push(append.into());
        }
        args.extend(self.disk_args()?);
        args.extend(self.nic_args()?);
        if self.network_boot.is_some() {
            args.push("-boot".into());
            args.push("n".into());
        }
        args.extend(self.extra_args.iter().cloned());
        Ok(args)
    }

    fn uefi_args(firmware: &UefiFirmware) -> Result<Vec<OsString>> {
        let mut args = Vec::new();
        let vars = if firmware.vars_writable {
            "readonly=off"
        } else {
            "snapshot=on"
        };
        for (unit, path, options) in [
            (0, &firmware.code, "readonly=on"),
            (1, &firmware.vars_template, vars),
        ] {
            let path = path
                .to_str()
                .with_context(|| format!("UEFI firmware path {} is not UTF-8", path.display()))?;
            args.push("-drive".into());
            args.push(
                format!(
                    "if=pflash,format=raw,unit={unit},{options},file={}",
                    path.replace(',', ",,")
                )
                .into(),
            );
        }
        Ok(args)
    }

    fn disk_args(&self) -> Result<Vec<OsString>> {
        let mut args = Vec::new();
        let mut controllers: Vec<&str> = Vec::new();
        for (index, disk) in self.disks.iter().enumerate() {
            let path = disk
                .path
                .to_str()
                .with_context(|| format!("disk path {} is not UTF-8", disk.path.display()))?;
            // QEMU splits -drive options on commas; a doubled comma is a literal one.
            let path = path.replace(',', ",,");
            let format = match disk.format {
                DiskFormat::Raw => "raw",
                DiskFormat::Qcow2 => "qcow2",
            };
            let drive = format!("disk{index}");
            args.push("-drive".into());
            let discard = if disk.discard { ",discard=unmap" } else { "" };
            args.push(format!("file={path},format={format},if=none,id={drive}{discard}").into());
            let (controller, mut device) = match disk.interface {
                DiskInterface::VirtioBlk => (None, format!("virtio-blk-pci,drive={drive}")),
                DiskInterface::Nvme => (None, format!("nvme,drive={drive}")),
                DiskInterface::Ahci => (
                    Some("ich9-ahci,id=ahci0"),
                    // Each AHCI port holds one disk.
                    format!(
                        "ide-hd,drive={drive},bus=ahci0.{}",
                        self.count_before(index)
                    ),
                ),
                DiskInterface::VirtioScsi => (
                    Some("virtio-scsi-pci,id=vscsi0"),
                    format!("scsi-hd,drive={drive},bus=vscsi0.0"),
                ),
                DiskInterface::ScsiHd => (
                    Some("megasas-gen2,id=megasas0"),
                    format!("scsi-hd,drive={drive},bus=megasas0.0"),
                ),
            };
            if let Some(controller) = controller {
                if !controllers.contains(&controller) {
                    controllers.push(controller);
                    args.push("-device".into());
                    args.push(controller.into());
                }
            }
            let serial = match (&disk.serial, disk.interface) {
                (Some(serial), _) => Some(serial.clone()),
                (None, DiskInterface::Nvme) => Some(format!("imprint-nvme{index}")),
                (None, _) => None,
            };
            if let Some(serial) = serial {
                device.push_str(&format!(",serial={}", serial.replace(',', ",,")));
            }
            if let Some(size) = disk.logical_block_size {
                device.push_str(&format!(",logical_block_size={size}"));
            }
            if let Some(size) = disk.physical_block_size {
                device.push_str(&format!(",physical_block_size={size}"));
            }
            args.push("-device".into());
            args.push(device.into());
        }
        let ahci_disks = self
            .disks
            .iter()
            .filter(|disk| disk.interface == DiskInterface::Ahci)
            .count();
        if ahci_disks > 6 {
            bail!("ich9-ahci has six ports; {ahci_disks} AHCI disks do not fit");
        }
        Ok(args)
    }

    /// How many disks on the same controller type precede disk `index`.
    fn count_before(&self, index: usize) -> usize {
        let interface = self.disks[index].interface;
        self.disks[..index]
            .iter()
            .filter(|disk| disk.interface == interface)
            .count()
    }

    fn nic_args(&self) -> Result<Vec<OsString>> {
        let mut nics = self.nics.clone();
        if self.network_boot.is_some() {
            if nics.is_empty() {
                nics.push(Nic::user());
            }
            nics[0].option_rom = true;
        }
        let mut args = Vec::new();
        for (index, nic) in nics.iter().enumerate() {
            let id = format!("net{index}");
            let mut netdev = format!("user,id={id}");
            for rule in &nic.hostfwd {
                netdev.push_str(&format!(",hostfwd={rule}"));
            }
            if let (0, Some((tftp_dir, bootfile))) = (index, &self.network_boot) {
                let tftp_dir = tftp_dir.to_str().with_context(|| {
                    format!("tftp directory {} is not UTF-8", tftp_dir.display())
                })?;
                netdev.push_str(&format!(
                    ",tftp={},bootfile={bootfile}",
                    tftp_dir.replace(',', ",,")
                ));
            }
            if let Some(options) = &nic.netdev_options {
                netdev.push(',');
                netdev.push_str(options);
            }
            let mut device = format!("{},netdev={id}", nic.model);
            if let Some(mac) = &nic.mac {
                device.push_str(&format!(",mac={mac}"));
            }
            if !nic.option_rom {
                // An empty romfile skips the iPXE ROM, which only matters for PXE.
                device.push_str(",romfile=");
            }
            args.extend([
                "-netdev".into(),
                netdev.into(),
                "-device".into(),
                device.into(),
            ]);
        }
        Ok(args)
    }

    /// Spawns QEMU and starts capturing its console.
    pub fn start(self) -> Result<Vm> {
        if let Some(firmware) = &self.uefi {
            for path in [&firmware.code, &firmware.vars_template] {
                if !path.is_file() {
                    bail!(
                        "UEFI firmware {} is missing: run scripts/setup (package ovmf)",
                        path.display()
                    );
                }
            }
        }
        let args = self.qemu_args()?;
        let (log_path, temporary_log) = match &self.console_log {
            Some(path) => (path.clone(), None),
            None => {
                let temporary = tempfile::Builder::new()
                    .prefix("imprint-console-")
                    .suffix(".log")
                    .tempfile()
                    .context("creating a temporary console log")?
                    .into_temp_path();
                (temporary.to_path_buf(), Some(temporary))
            }
        };
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening console log {}", log_path.display()))?;
        let qemu_name = self.qemu.to_string_lossy().into_owned();
        log::debug!("starting {qemu_name} {args:?}");
        let mut child = Command::new(&self.qemu)
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {qemu_name}"))?;
        let stdout = child.stdout.take().context("qemu stdout")?;
        let mut stderr_pipe = child.stderr.take().context("qemu stderr")?;
        let stdin = child.stdin.take();
        let console = Arc::new(Console::default());
        let stderr = Arc::new(Mutex::new(String::new()));
        let console_reader = Arc::clone(&console);
        let stdout_thread = std::thread::Builder::new()
            .name("qemu-console".into())
            .spawn(move || console_reader.pump(stdout, Some(log_file)))
            .context("spawning the console reader thread")?;
        let stderr_writer = Arc::clone(&stderr);
        let stderr_thread = std::thread::Builder::new()
            .name("qemu-stderr".into())
            .spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(count @ 1..) = stderr_pipe.read(&mut buffer) {
                    let text = String::from_utf8_lossy(&buffer[..count]);
                    stderr_writer
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&text);
                }
            })
            .context("spawning the stderr reader thread")?;
        Ok(Vm {
            child: Mutex::new(child),
            stdin: Mutex::new(stdin),
            console,
            cursor: Mutex::new(0),
            stderr,
            console_log: log_path,
            monitor_socket: self.monitor_socket.clone(),
            temporary_log,
            threads: vec![stdout_thread, stderr_thread],
        })
    }
}

/// A running QEMU. Killed when dropped.
pub struct Vm {
    child: Mutex<Child>,
    stdin: Mutex<Option<ChildStdin>>,
    console: Arc<Console>,
    cursor: Mutex<usize>,
    stderr: Arc<Mutex<String>>,
    console_log: PathBuf,
    monitor_socket: Option<PathBuf>,
    temporary_log: Option<TempPath>,
    threads: Vec<JoinHandle<()>>,
}

impl Vm {
    /// Same as [`VmBuilder::new`].
    pub fn builder() -> VmBuilder {
        VmBuilder::new()
    }

    /// Waits until a console line after the previous match contains `pattern`, and
    /// returns that line. Fails at once if QEMU exits first; on timeout the error quotes
    /// the pattern, the timeout, the last 40 console lines and QEMU's stderr.
    /// Only complete lines match (a prompt without newline does not).
    pub fn expect(&self, pattern: &str, timeout: Duration) -> Result<String> {
        self.expect_any(&[pattern], timeout).map(|(_, line)| line)
    }

    /// Like [`Vm::expect`] for several patterns (e.g. a success and a failure line);
    /// returns the index of the pattern that matched first and the line.
    pub fn expect_any(&self, patterns: &[&str], timeout: Duration) -> Result<(usize, String)> {
        let mut cursor = self.cursor.lock().unwrap_or_else(PoisonError::into_inner);
        self.console
            .expect_any(&mut cursor, patterns, timeout)
            .map_err(|error| {
                let stderr = self.stderr();
                let stderr = if stderr.is_empty() {
                    "(empty)".to_owned()
                } else {
                    stderr
                };
                error.context(format!(
                    "waiting on the qemu console (log {}); qemu stderr: {}",
                    self.console_log.display(),
                    stderr.trim_end()
                ))
            })
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.text()
    }

    /// QEMU's stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The file the console is appended to.
    pub fn console_log_path(&self) -> &Path {
        &self.console_log
    }

    /// Types `text` into the serial console.
    pub fn send(&self, text: &str) -> Result<()> {
        let mut stdin = self.stdin.lock().unwrap_or_else(PoisonError::into_inner);
        let stdin = stdin.as_mut().context("qemu stdin is closed")?;
        stdin
            .write_all(text.as_bytes())
            .context("writing to the qemu console")?;
        stdin.flush().context("writing to the qemu console")
    }

    /// Runs one human-monitor command (`set_link net1 off`, `cont`) and returns
    /// what the monitor printed for it. Needs [`VmBuilder::monitor_socket`].
    pub fn monitor(&self, command: &str) -> Result<String> {
        let path = self
            .monitor_socket
            .as_ref()
            .context("the VM has no monitor: use VmBuilder::monitor_socket")?;
        // QEMU creates the socket while starting: retry the connect briefly.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(error) if std::time::Instant::now() < deadline && !self.has_exited() => {
                    log::debug!("monitor {}: {error}", path.display());
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(error) => {
                    return Err(error)
                        .with_context(|| format!("connecting to the monitor {}", path.display()));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("setting the monitor timeout")?;
        read_to_prompt(&mut stream).context("reading the monitor banner")?;
        stream
            .write_all(format!("{command}\n").as_bytes())
            .with_context(|| format!("sending `{command}` to the monitor"))?;
        let answer = read_to_prompt(&mut stream)
            .with_context(|| format!("reading the monitor's answer to `{command}`"))?;
        // The monitor echoes the command (with terminal escapes) first.
        Ok(answer
            .lines()
            .skip(1)
            .collect::<Vec<_>>()
            .join("\n")
            .trim()
            .to_owned())
    }

    /// Waits for QEMU to exit (guest power-off, or reboot with `-no-reboot`).
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        // QEMU's exit closes its stdout, which the console reader reports; that wait
        // needs no polling, unlike `Child::try_wait`.
        if !self.console.wait_closed(timeout) {
            bail!("qemu still running after {timeout:?}");
        }
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.wait().context("waiting for qemu-system-x86_64")
    }

    /// Whether QEMU has exited (its console closed).
    pub fn has_exited(&self) -> bool {
        self.console.is_closed()
    }

    /// Kills QEMU and reaps it.
    pub fn kill(&self) -> Result<()> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        if child
            .try_wait()
            .context("checking qemu-system-x86_64")?
            .is_none()
        {
            child.kill().context("killing qemu-system-x86_64")?;
        }
        child.wait().context("waiting for qemu-system-x86_64")?;
        Ok(())
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Err(error) = self.kill() {
            log::warn!("{error:#}");
        }
        self.stdin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(temporary) = self.temporary_log.take() {
            if std::thread::panicking() {
                // A failing test: keep the console for the post-mortem.
                match temporary.keep() {
                    Ok(path) => eprintln!("qemu console log kept at {}", path.display()),
                    Err(error) => log::warn!("keeping console log: {error}"),
                }
            }
        }
    }
}

impl std::fmt::Debug for Vm {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Vm")
            .field("console_log", &self.console_log)
            .finish_non_exhaustive()
    }
}

/// Reads the monitor until its `(qemu) ` prompt; returns what came before.
fn read_to_prompt(stream: &mut UnixStream) -> Result<String> {
    const PROMPT: &str = "(qemu) ";
    let mut text = Vec::new();
    let mut buffer = [0u8; 1024];
    loop {
        let count = stream.read(&mut buffer)?;
        if count == 0 {
            bail!("the monitor closed the connection");
        }
        text.extend_from_slice(&buffer[..count]);
        let so_far = String::from_utf8_lossy(&text);
        if let Some(before) = so_far.strip_suffix(PROMPT) {
            return Ok(before.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(builder: &VmBuilder) -> String {
        let args = builder.qemu_args().unwrap();
        args.iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_paused_vm_serves_its_monitor_on_a_socket() {
        let line = joined(&VmBuilder::new().monitor_socket("/tmp/m.sock").paused());
        assert!(
            line.contains("-monitor unix:/tmp/m.sock,server=on,wait=off -serial stdio -S "),
            "{line}"
        );
        let err = VmBuilder::new().paused().qemu_args().unwrap_err();
        assert_eq!(
            err.to_string(),
            "a paused VM needs a monitor socket to be continued"
        );
    }

    #[test]
    fn default_command_line_captures_serial_and_exits_on_reboot() {
        let builder = VmBuilder::new().accelerators(["kvm", "tcg"]).kernel("/k");
        let line = joined(&builder.append("console=ttyS0 panic=-1"));
        assert!(
            line.starts_with("-accel kvm -accel tcg -nodefaults"),
            "{line}"
        );
        assert!(
            line.contains("-display none -monitor none -serial stdio"),
            "{line}"
        );
        assert!(
            line.contains("-m 1024 -smp 2 -no-reboot -kernel /k"),
            "{line}"
        );
        assert!(!line.contains("-nographic"));
        assert!(!joined(&VmBuilder::new().no_reboot(false)).contains("-no-reboot"));
    }

    #[test]
    fn append_is_one_argument() {
        let args = VmBuilder::new()
            .append("a=1 b=\"x y\"")
            .qemu_args()
            .unwrap();
        let position = args.iter().position(|arg| arg == "-append").unwrap();
        assert_eq!(args[position + 1], "a=1 b=\"x y\"");
    }

    #[test]
    fn disks_get_controllers_once_and_options() {
        let builder = VmBuilder::new()
            .disk(
                Disk::new("/a,b.img")
                    .with_serial("s1")
                    .with_block_sizes(4096, 4096),
            )
            .disk(
                Disk::new("/n.qcow2")
                    .with_format(DiskFormat::Qcow2)
                    .with_interface(DiskInterface::Nvme),
            )
            .disk(Disk::new("/s0").with_interface(DiskInterface::Ahci))
            .disk(Disk::new("/s1").with_interface(DiskInterface::Ahci))
            .disk(Disk::new("/v").with_interface(DiskInterface::VirtioScsi))
            .disk(Disk::new("/m").with_interface(DiskInterface::ScsiHd));
        let line = joined(&builder);
        assert!(
            line.contains("-drive file=/a,,b.img,format=raw,if=none,id=disk0"),
            "{line}"
        );
        assert!(line.contains(
            "virtio-blk-pci,drive=disk0,serial=s1,logical_block_size=4096,physical_block_size=4096"
        ));
        assert!(line.contains(
            "format=qcow2,if=none,id=disk1 -device nvme,drive=disk1,serial=imprint-nvme1"
        ));
        assert_eq!(line.matches("ich9-ahci,id=ahci0").count(), 1, "{line}");
        assert!(
            line.contains("ide-hd,drive=disk2,bus=ahci0.0")
                && line.contains("ide-hd,drive=disk3,bus=ahci0.1")
        );
        assert!(line.contains(
            "-device virtio-scsi-pci,id=vscsi0 -device scsi-hd,drive=disk4,bus=vscsi0.0"
        ));
        assert!(line.contains(
            "-device megasas-gen2,id=megasas0 -device scsi-hd,drive=disk5,bus=megasas0.0"
        ));
    }

    #[test]
    fn nics_skip_the_rom_unless_network_booting() {
        let line = joined(
            &VmBuilder::new()
                .nic(
                    Nic::user()
                        .mac("52:54:00:00:00:01")
                        .hostfwd("tcp::2222-:22"),
                )
                .nic(Nic::with_model("e1000e").netdev_options("restrict=on")),
        );
        assert!(line.contains("-netdev user,id=net0,hostfwd=tcp::2222-:22 -device virtio-net-pci,netdev=net0,mac=52:54:00:00:00:01,romfile="), "{line}");
        assert!(
            line.contains("-netdev user,id=net1,restrict=on -device e1000e,netdev=net1,romfile="),
            "{line}"
        );
        assert!(!line.contains("-boot"));

        let line = joined(&VmBuilder::new().boot_from_network("/srv/tftp", "boot.ipxe"));
        assert!(line.contains("-netdev user,id=net0,tftp=/srv/tftp,bootfile=boot.ipxe -device virtio-net-pci,netdev=net0 -boot n"), "{line}");
    }

    #[test]
    fn uefi_uses_two_flash_chips_and_leaves_the_template_alone() {
        let line = joined(&VmBuilder::new().uefi().disk(Disk::new("/golden.img")));
        assert!(
            line.contains(
                "-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd \
                 -drive if=pflash,format=raw,unit=1,snapshot=on,file=/usr/share/OVMF/OVMF_VARS.fd"
            ),
            "{line}"
        );
        assert!(!line.contains("-kernel"), "{line}");
        assert!(!line.contains("-bios"), "{line}");
        let line = joined(&VmBuilder::new().uefi_firmware("/fw/CODE,1.fd", "/fw/VARS.fd"));
        assert!(
            line.contains("unit=0,readonly=on,file=/fw/CODE,,1.fd"),
            "{line}"
        );
        assert!(!joined(&VmBuilder::new()).contains("pflash"));
    }

    #[test]
    fn uefi_with_missing_firmware_names_the_file_and_the_fix() {
        let error = VmBuilder::new()
            .uefi_firmware("/nonexistent/OVMF_CODE.fd", OVMF_VARS)
            .start()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "UEFI firmware /nonexistent/OVMF_CODE.fd is missing: run scripts/setup (package ovmf)"
        );
    }

    #[test]
    fn start_fails_with_the_binary_name() {
        let error = VmBuilder::new()
            .qemu_binary("/nonexistent/qemu")
            .start()
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("starting /nonexistent/qemu"),
            "{error:#}"
        );
    }
}

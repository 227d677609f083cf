//! Images on a local block device, for machines with no network to fetch
//! from: a USB stick, a second disk, a virtual CD.
//!
//! # URL forms
//!
//! | URL | the file |
//! |---|---|
//! | `file://LABEL=IMAGES/golden.raw.zst` | `golden.raw.zst` on the filesystem labelled `IMAGES` |
//! | `file://UUID=1A2B-3C4D/img/golden.raw` | on the filesystem with that UUID (as `blkid` prints it; case does not matter) |
//! | `file://DEV=vdb1/golden.raw` or `file://DEV=/dev/vdb1/golden.raw` | on the filesystem on block device `vdb1` |
//! | `file:///images/golden.raw` | a path in the running system (the initramfs; see `imprint-build --embed-image`) |
//!
//! The part up to the first `/` names the filesystem, the rest is the path
//! inside it. A label may contain `%XX` escapes (`LABEL=MY%20IMAGES`); the
//! kernel command line cannot carry a space otherwise. `DEV=` takes the
//! kernel name of a disk or partition (what `/sys/class/block` lists), so
//! the device ends at the next `/`: persistent names such as
//! `/dev/disk/by-id/…` would be ambiguous there and are refused; use
//! `LABEL=` or `UUID=`.
//!
//! Every disk and partition is probed for a filesystem ([`crate::disk::probe`]:
//! no udev in the initramfs); exactly one must match, or the error lists
//! what was found. The filesystem's module is loaded, and the filesystem
//! is mounted read-only (`nodev,nosuid,noexec`) on `/run/imprint/sources/<name>`.
//! It stays mounted until the machine is handed over: nothing writes to it,
//! so there is nothing to flush. The kernel still replays an unclean ext4 or
//! XFS journal on a read-only mount, as every OS mounting it would.
//!
//! The source's whole disk is reported in [`super::Source::device`], so
//! target selection never picks the disk the image is read from.

use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::disk::mount::{self as disk_mount, Access, mount_plan};
use crate::disk::probe::{self, FsInfo, PROBE_LEN};

/// Where source filesystems are mounted, one directory per device.
pub const MOUNT_ROOT: &str = "/run/imprint/sources";

/// How long to wait for a matching filesystem to appear: USB and SCSI
/// disks are probed asynchronously after their drivers load.
pub const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Which filesystem a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsSelector {
    Label(String),
    Uuid(String),
    /// A kernel name: `vdb1`, `sdb`, `nvme1n1p2`.
    Device(String),
}

impl FsSelector {
    fn matches(&self, found: &Probed) -> bool {
        match (self, &found.fs) {
            (FsSelector::Label(label), Some(fs)) => fs.label.as_deref() == Some(label.as_str()),
            (FsSelector::Uuid(uuid), Some(fs)) => fs
                .uuid
                .as_deref()
                .is_some_and(|have| have.eq_ignore_ascii_case(uuid)),
            (FsSelector::Device(name), _) => found.device.name == *name,
            _ => false,
        }
    }

    /// `filesystem labelled IMAGES`, for "no …" messages.
    fn describe(&self) -> String {
        match self {
            FsSelector::Label(label) => format!("filesystem labelled {label}"),
            FsSelector::Uuid(uuid) => format!("filesystem with UUID {uuid}"),
            FsSelector::Device(name) => format!("block device {name}"),
        }
    }
}

impl std::fmt::Display for FsSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsSelector::Label(label) => write!(f, "LABEL={label}"),
            FsSelector::Uuid(uuid) => write!(f, "UUID={uuid}"),
            FsSelector::Device(name) => write!(f, "DEV={name}"),
        }
    }
}

/// A `file://` URL that names a filesystem on a block device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceFileUrl {
    pub filesystem: FsSelector,
    /// Inside the filesystem, relative, without `.` or `..`.
    pub path: PathBuf,
}

impl DeviceFileUrl {
    /// `Ok(None)` for a plain `file:///path` (or anything that is not a
    /// `file://` URL), an error for a malformed device form.
    pub fn parse(url: &str) -> Result<Option<DeviceFileUrl>> {
        let Some(rest) = url.get(..7).filter(|s| s.eq_ignore_ascii_case("file://")) else {
            return Ok(None);
        };
        let rest = &url[rest.len()..];
        let Some((key, value)) = rest.split_once('=') else {
            return Ok(None);
        };
        if key.contains('/') {
            return Ok(None);
        }
        let (name, path) = match key.to_ascii_uppercase().as_str() {
            "LABEL" | "UUID" => value.split_once('/').unwrap_or((value, "")),
            "DEV" => {
                let value = value.strip_prefix("/dev/").unwrap_or(value);
                let (name, path) = value.split_once('/').unwrap_or((value, ""));
                if ["disk", "mapper", "md"].contains(&name) {
                    bail!(
                        "{url}: DEV= takes a kernel device name such as vdb1 or /dev/vdb1; \
                         for a persistent name use LABEL= or UUID="
                    );
                }
                (name, path)
            }
            _ => bail!("{url}: unknown filesystem selector {key}=; use LABEL=, UUID= or DEV="),
        };
        if name.is_empty() {
            bail!("{url}: {key}= needs a value, e.g. file://{key}=IMAGES/golden.raw.zst");
        }
        let filesystem = match key.to_ascii_uppercase().as_str() {
            "LABEL" => FsSelector::Label(percent_decode(name).with_context(|| url.to_owned())?),
            "UUID" => FsSelector::Uuid(name.to_owned()),
            _ => FsSelector::Device(name.to_owned()),
        };
        let path = relative_path(path).with_context(|| format!("the path in {url}"))?;
        Ok(Some(DeviceFileUrl { filesystem, path }))
    }
}

/// `%XX` escapes, as in any URL; a label is text, so the result must be UTF-8.
fn percent_decode(text: &str) -> Result<String> {
    // percent-encoding passes a malformed escape through unchanged; in a
    // label it is a typo, so it is refused rather than searched for.
    let malformed = text.match_indices('%').any(|(at, _)| {
        text.get(at + 1..at + 3)
            .is_none_or(|hex| !hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
    });
    if malformed {
        bail!("bad %-escape in {text:?}");
    }
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .with_context(|| format!("{text:?} is not UTF-8 once decoded"))?;
    Ok(decoded.into_owned())
}

/// A path that stays inside the mount point: no `..`, not empty.
fn relative_path(path: &str) -> Result<PathBuf> {
    let mut clean = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!("{path:?} leaves the filesystem (..)")
            }
        }
    }
    if clean.as_os_str().is_empty() {
        bail!("no file named after the filesystem, e.g. LABEL=IMAGES/golden.raw.zst");
    }
    Ok(clean)
}

/// A disk or partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name: `vdb1`.
    pub name: String,
    /// The whole disk it belongs to: `vdb` for `vdb1`, itself for a disk.
    pub disk: String,
}

impl BlockDevice {
    /// `/dev/<name>`; sysfs spells a `/` in a device name as `!` (`cciss!c0d0`).
    pub fn dev_path(&self) -> PathBuf {
        Path::new("/dev").join(self.name.replace('!', "/"))
    }
}

/// What the source code needs from the machine, so that choosing and
/// mounting is tested on the host with a fake.
pub trait LocalDevices {
    /// Disks and partitions present now.
    fn block_devices(&mut self) -> Result<Vec<BlockDevice>>;
    /// The first `len` bytes of a device (fewer if it is smaller).
    fn read_start(&mut self, device: &BlockDevice, len: usize) -> Result<Vec<u8>>;
    /// Makes the kernel able to mount `fstype`, loading `modules` (and
    /// their dependencies) where needed.
    fn load_fs_modules(&mut self, fstype: &str, modules: &[&str]) -> Result<()>;
    /// Mounts `device` read-only on `mount_point` (which exists). Mounting
    /// the same device on the same point again is a no-op.
    fn mount_read_only(
        &mut self,
        device: &BlockDevice,
        fstype: &str,
        data: Option<&str>,
        mount_point: &Path,
    ) -> Result<()>;
    /// Waits a moment for devices that are still being probed; false once
    /// the time allowed is up.
    fn wait_for_more(&mut self) -> bool;
}

/// A device and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub device: BlockDevice,
    pub fs: Option<FsInfo>,
}

impl Probed {
    fn describe(&self) -> String {
        match &self.fs {
            Some(fs) => format!("{} {}", self.device.name, fs.describe()),
            None => format!("{} (no filesystem recognised)", self.device.name),
        }
    }
}

/// Every device and its filesystem. A device that cannot be read (an empty
/// CD drive) is listed with none: it is not the source.
pub fn scan(devices: &mut dyn LocalDevices) -> Result<Vec<Probed>> {
    let mut found = Vec::new();
    for device in devices.block_devices()? {
        let fs = match devices.read_start(&device, PROBE_LEN) {
            Ok(bytes) => probe::probe(&bytes),
            Err(e) => {
                log::debug!("{e:#}");
                None
            }
        };
        found.push(Probed { device, fs });
    }
    Ok(found)
}

/// Outcome of looking once.
#[derive(Debug, PartialEq, Eq)]
pub enum Choice<'a> {
    One(&'a Probed),
    None,
    Several(Vec<&'a Probed>),
}

/// The devices `selector` names among `found`.
pub fn choose<'a>(selector: &FsSelector, found: &'a [Probed]) -> Choice<'a> {
    let mut matching: Vec<&Probed> = found.iter().filter(|p| selector.matches(p)).collect();
    match matching.len() {
        0 => Choice::None,
        1 => Choice::One(matching.remove(0)),
        _ => Choice::Several(matching),
    }
}

/// A file opened on a source filesystem.
#[derive(Debug)]
pub struct DeviceFile {
    pub file: File,
    /// Where it was opened: the mount point joined with the URL's path.
    pub path: PathBuf,
    pub device: BlockDevice,
    pub fs: FsInfo,
}

/// Finds the filesystem `url` names (waiting, bounded, for it to appear),
/// mounts it read-only under `mount_root` and opens the file.
pub fn open(
    url: &DeviceFileUrl,
    devices: &mut dyn LocalDevices,
    mount_root: &Path,
) -> Result<DeviceFile> {
    let selector = &url.filesystem;
    let chosen = loop {
        let found = scan(devices)?;
        match choose(selector, &found) {
            Choice::One(chosen) => break chosen.clone(),
            Choice::Several(matching) => bail!(
                "{} filesystems match {selector}: {}; name one by UUID= or DEV=",
                matching.len(),
                matching
                    .iter()
                    .map(|p| p.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Choice::None if devices.wait_for_more() => {}
            Choice::None => {
                let filesystems: Vec<String> = found
                    .iter()
                    .filter(|p| p.fs.is_some())
                    .map(Probed::describe)
                    .collect();
                bail!(
                    "no {}; filesystems found: {}",
                    selector.describe(),
                    if filesystems.is_empty() {
                        "none".to_owned()
                    } else {
                        filesystems.join(", ")
                    }
                )
            }
        }
    };
    let device = chosen.device;
    let dev_path = device.dev_path();
    let Some(fs) = chosen.fs else {
        bail!(
            "no filesystem recognised on {} (ext2/3/4, xfs, vfat, iso9660 and btrfs are)",
            dev_path.display()
        );
    };
    log::info!(
        "source {selector} is {} ({}, on disk {})",
        dev_path.display(),
        fs.describe(),
        device.disk
    );
    let mount_point = mount_root.join(&device.name);
    let mounting = || {
        format!(
            "mounting {selector} ({}) read-only on {}",
            dev_path.display(),
            mount_point.display()
        )
    };
    let plan = mount_plan(&fs);
    crate::sys::mount::mkdir_all(&mount_point, 0o755).with_context(mounting)?;
    devices
        .load_fs_modules(plan.fstype, &plan.modules)
        .with_context(mounting)?;
    devices
        .mount_read_only(&device, plan.fstype, plan.data, &mount_point)
        .with_context(mounting)?;
    let path = mount_point.join(&url.path);
    let file = File::open(&path).with_context(|| {
        format!(
            "opening {} on {selector} ({})",
            url.path.display(),
            dev_path.display()
        )
    })?;
    Ok(DeviceFile {
        file,
        path,
        device,
        fs,
    })
}

/// The machine itself: sysfs, `/dev`, the module index, `mount(2)`.
#[derive(Debug)]
pub struct SystemDevices {
    /// Normally `/sys/class/block`: disks and partitions side by side.
    pub sys_class_block: PathBuf,
    /// Normally `/dev`.
    pub dev: PathBuf,
    /// Normally `/lib/modules/<release>`.
    pub module_dir: PathBuf,
    pub deadline: Instant,
}

impl SystemDevices {
    pub fn new(wait: Duration) -> SystemDevices {
        SystemDevices {
            sys_class_block: PathBuf::from("/sys/class/block"),
            dev: PathBuf::from("/dev"),
            module_dir: disk_mount::module_dir(),
            deadline: Instant::now() + wait,
        }
    }
}

impl LocalDevices for SystemDevices {
    fn block_devices(&mut self) -> Result<Vec<BlockDevice>> {
        let dir = &self.sys_class_block;
        let entries =
            std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))?;
        let mut devices = Vec::new();
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let sys = entry.path();
            // Empty drives and unbound loop devices have size 0.
            let size = std::fs::read_to_string(sys.join("size")).unwrap_or_default();
            if size.trim().parse::<u64>().unwrap_or(0) == 0 {
                continue;
            }
            // /sys/class/block/vdb1 -> ../../devices/…/block/vdb/vdb1
            let disk = if sys.join("partition").exists() {
                std::fs::canonicalize(&sys)
                    .ok()
                    .and_then(|real| {
                        Some(real.parent()?.file_name()?.to_string_lossy().into_owned())
                    })
                    .unwrap_or_else(|| name.clone())
            } else {
                name.clone()
            };
            devices.push(BlockDevice { name, disk });
        }
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(devices)
    }

    fn read_start(&mut self, device: &BlockDevice, len: usize) -> Result<Vec<u8>> {
        let path = self.dev.join(device.name.replace('!', "/"));
        let mut bytes = Vec::with_capacity(len);
        File::open(&path)
            .and_then(|file| {
                file.take(u64::try_from(len).unwrap_or(u64::MAX))
                    .read_to_end(&mut bytes)
            })
            .with_context(|| format!("reading the start of {}", path.display()))?;
        Ok(bytes)
    }

    fn load_fs_modules(&mut self, fstype: &str, modules: &[&str]) -> Result<()> {
        disk_mount::load_fs_modules(&self.module_dir, fstype, modules)
    }

    fn mount_read_only(
        &mut self,
        device: &BlockDevice,
        fstype: &str,
        data: Option<&str>,
        mount_point: &Path,
    ) -> Result<()> {
        let source = self.dev.join(device.name.replace('!', "/"));
        disk_mount::mount_device(&source, mount_point, fstype, data, Access::ReadOnly)
    }

    fn wait_for_more(&mut self) -> bool {
        if Instant::now() >= self.deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(250));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Option<DeviceFileUrl> {
        DeviceFileUrl::parse(url).unwrap()
    }

    fn parse_error(url: &str) -> String {
        format!("{:#}", DeviceFileUrl::parse(url).unwrap_err())
    }

    #[test]
    fn parses_label_uuid_and_device_forms() {
        assert_eq!(
            parse("file://LABEL=IMAGES/golden.raw.zst"),
            Some(DeviceFileUrl {
                filesystem: FsSelector::Label("IMAGES".into()),
                path: "golden.raw.zst".into(),
            })
        );
        assert_eq!(
            parse("file://UUID=1A2B-3C4D/img/./golden.raw"),
            Some(DeviceFileUrl {
                filesystem: FsSelector::Uuid("1A2B-3C4D".into()),
                path: "img/golden.raw".into(),
            })
        );
        for url in [
            "file://DEV=vdb1/x.img",
            "file://DEV=/dev/vdb1/x.img",
            "FILE://dev=vdb1//x.img",
        ] {
            assert_eq!(
                parse(url),
                Some(DeviceFileUrl {
                    filesystem: FsSelector::Device("vdb1".into()),
                    path: "x.img".into(),
                }),
                "{url}"
            );
        }
        assert_eq!(
            parse("file://LABEL=MY%20IMAGES/x").unwrap().filesystem,
            FsSelector::Label("MY IMAGES".into())
        );
        // A label may hold '=' ; only the first one splits.
        assert_eq!(
            parse("file://LABEL=a=b/x").unwrap().filesystem,
            FsSelector::Label("a=b".into())
        );
    }

    #[test]
    fn plain_paths_are_not_device_urls() {
        assert_eq!(parse("file:///images/golden.raw"), None);
        assert_eq!(parse("file:///srv/a=b/golden.raw"), None);
        assert_eq!(parse("http://h/LABEL=x/y"), None);
        assert_eq!(parse("file:"), None);
    }

    #[test]
    fn malformed_device_urls_say_what_is_wrong() {
        assert!(parse_error("file://LABEL=IMAGES").contains("no file named"));
        assert!(parse_error("file://LABEL=IMAGES/").contains("no file named"));
        assert!(parse_error("file://LABEL=/x").contains("LABEL= needs a value"));
        assert!(parse_error("file://UUID=x/../etc/shadow").contains("leaves the filesystem"));
        assert!(
            parse_error("file://PARTUUID=x/y").contains("unknown filesystem selector PARTUUID=")
        );
        assert!(parse_error("file://DEV=/dev/disk/by-id/usb-x/y").contains("kernel device name"));
        assert!(parse_error("file://LABEL=a%2/y").contains("bad %-escape"));
        assert!(parse_error("file://LABEL=%ff/y").contains("not UTF-8"));
    }

    /// Bytes that `probe` reads as ext4 with this label and UUID.
    fn ext4(label: &str, uuid_byte: u8) -> Vec<u8> {
        let mut bytes = vec![0u8; 2048];
        bytes[1080..1082].copy_from_slice(&0xEF53u16.to_le_bytes());
        bytes[1024 + 96] = 0x40; // extents
        bytes[1024 + 104..1024 + 120].fill(uuid_byte);
        bytes[1024 + 120..1024 + 120 + label.len()].copy_from_slice(label.as_bytes());
        bytes
    }

    /// Bytes that `probe` reads as FAT16 with this label and serial.
    fn vfat(label: &str, serial: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 512];
        bytes[11..13].copy_from_slice(&512u16.to_le_bytes());
        bytes[13] = 4;
        bytes[14] = 1;
        bytes[16] = 2;
        bytes[22] = 32;
        bytes[38] = 0x29;
        bytes[39..43].copy_from_slice(&serial.to_le_bytes());
        bytes[43..54].fill(b' ');
        bytes[43..43 + label.len()].copy_from_slice(label.as_bytes());
        bytes[54..62].copy_from_slice(b"FAT16   ");
        bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
        bytes
    }

    #[derive(Default)]
    struct FakeDevices {
        /// (name, whole disk, first bytes or None for unreadable)
        present: Vec<(String, String, Option<Vec<u8>>)>,
        /// Devices that show up at the first wait.
        late: Vec<(String, String, Option<Vec<u8>>)>,
        waits_left: usize,
        waits: usize,
        modules: Vec<(String, Vec<String>)>,
        mounts: Vec<(String, String, Option<String>, PathBuf)>,
        /// Files that appear at the mount point when it is mounted.
        files: Vec<(&'static str, &'static [u8])>,
        mount_error: Option<&'static str>,
    }

    impl FakeDevices {
        fn with(present: &[(&str, &str, Option<Vec<u8>>)]) -> FakeDevices {
            FakeDevices {
                present: present
                    .iter()
                    .map(|(n, d, b)| ((*n).to_owned(), (*d).to_owned(), b.clone()))
                    .collect(),
                files: vec![("golden.raw", b"image bytes")],
                ..FakeDevices::default()
            }
        }
    }

    impl LocalDevices for FakeDevices {
        fn block_devices(&mut self) -> Result<Vec<BlockDevice>> {
            Ok(self
                .present
                .iter()
                .map(|(name, disk, _)| BlockDevice {
                    name: name.clone(),
                    disk: disk.clone(),
                })
                .collect())
        }
        fn read_start(&mut self, device: &BlockDevice, len: usize) -> Result<Vec<u8>> {
            let (_, _, bytes) = self
                .present
                .iter()
                .find(|(n, ..)| *n == device.name)
                .unwrap();
            let mut bytes = bytes.clone().context("no medium")?;
            bytes.truncate(len);
            Ok(bytes)
        }
        fn load_fs_modules(&mut self, fstype: &str, modules: &[&str]) -> Result<()> {
            let modules = modules.iter().map(|m| (*m).to_owned()).collect();
            self.modules.push((fstype.to_owned(), modules));
            Ok(())
        }
        fn mount_read_only(
            &mut self,
            device: &BlockDevice,
            fstype: &str,
            data: Option<&str>,
            mount_point: &Path,
        ) -> Result<()> {
            assert!(mount_point.is_dir(), "the mount point is made first");
            if let Some(error) = self.mount_error {
                bail!(error);
            }
            for (name, contents) in &self.files {
                std::fs::write(mount_point.join(name), contents).unwrap();
            }
            self.mounts.push((
                device.name.clone(),
                fstype.to_owned(),
                data.map(str::to_owned),
                mount_point.to_owned(),
            ));
            Ok(())
        }
        fn wait_for_more(&mut self) -> bool {
            self.waits += 1;
            self.present.append(&mut self.late);
            if self.waits_left == 0 {
                return false;
            }
            self.waits_left -= 1;
            true
        }
    }

    fn open_url(url: &str, devices: &mut FakeDevices) -> (Result<DeviceFile>, tempfile::TempDir) {
        let root = tempfile::tempdir().unwrap();
        let url = parse(url).unwrap();
        (open(&url, devices, root.path()), root)
    }

    #[test]
    fn label_finds_the_partition_mounts_it_and_names_its_disk() {
        let mut devices = FakeDevices::with(&[
            ("vda", "vda", Some(vec![0; 4096])),
            ("vdb", "vdb", Some(vec![0; 4096])),
            ("vdb1", "vdb", Some(ext4("IMAGES", 0x11))),
            ("vdb2", "vdb", Some(ext4("data", 0x22))),
            ("sr0", "sr0", None),
        ]);
        let (opened, root) = open_url("file://LABEL=IMAGES/golden.raw", &mut devices);
        let mut opened = opened.unwrap();
        let mut contents = String::new();
        opened.file.read_to_string(&mut contents).unwrap();
        assert_eq!(contents, "image bytes");
        assert_eq!(opened.device.name, "vdb1");
        assert_eq!(opened.device.disk, "vdb");
        assert_eq!(opened.device.dev_path(), Path::new("/dev/vdb1"));
        assert_eq!(opened.path, root.path().join("vdb1/golden.raw"));
        assert_eq!(opened.fs.fstype, "ext4");
        assert_eq!(
            devices.modules,
            [("ext4".to_owned(), vec!["ext4".to_owned()])]
        );
        assert_eq!(
            devices.mounts,
            [(
                "vdb1".to_owned(),
                "ext4".to_owned(),
                None,
                root.path().join("vdb1")
            )]
        );
        assert_eq!(devices.waits, 0);
    }

    #[test]
    fn uuid_matches_without_regard_to_case_and_finds_whole_disk_filesystems() {
        let mut devices = FakeDevices::with(&[
            ("vda", "vda", Some(vec![0; 4096])),
            ("vdb", "vdb", Some(vfat("STICK", 0x1a2b_3c4d))),
        ]);
        let (opened, _root) = open_url("file://UUID=1a2b-3c4d/golden.raw", &mut devices);
        let opened = opened.unwrap();
        assert_eq!(
            (opened.device.name.as_str(), opened.device.disk.as_str()),
            ("vdb", "vdb")
        );
        assert_eq!(devices.mounts[0].1, "vfat");
        assert_eq!(devices.mounts[0].2.as_deref(), Some("iocharset=utf8"));
        assert_eq!(devices.modules[0].1, ["vfat", "nls_cp437", "nls_utf8"]);
    }

    #[test]
    fn device_form_probes_for_the_type() {
        let mut devices = FakeDevices::with(&[("vdb1", "vdb", Some(vfat("", 1)))]);
        let (opened, _root) = open_url("file://DEV=/dev/vdb1/golden.raw", &mut devices);
        assert_eq!(opened.unwrap().fs.fstype, "vfat");

        let mut devices = FakeDevices::with(&[("vdb1", "vdb", Some(vec![0; 4096]))]);
        let (opened, _root) = open_url("file://DEV=vdb1/golden.raw", &mut devices);
        assert_eq!(
            format!("{:#}", opened.unwrap_err()),
            "no filesystem recognised on /dev/vdb1 (ext2/3/4, xfs, vfat, iso9660 and btrfs are)"
        );
        assert!(devices.mounts.is_empty());
    }

    #[test]
    fn waits_for_a_late_device() {
        let mut devices = FakeDevices::with(&[("vda", "vda", Some(vec![0; 4096]))]);
        devices.late = vec![("sdb1".into(), "sdb".into(), Some(ext4("IMAGES", 1)))];
        devices.waits_left = 3;
        let (opened, _root) = open_url("file://LABEL=IMAGES/golden.raw", &mut devices);
        assert_eq!(opened.unwrap().device.disk, "sdb");
        assert_eq!(devices.waits, 1);
    }

    #[test]
    fn no_match_lists_the_filesystems_found() {
        let mut devices = FakeDevices::with(&[
            ("vda", "vda", Some(vec![0; 4096])),
            ("vdb1", "vdb", Some(ext4("data", 0xab))),
            ("vdc", "vdc", Some(vfat("STICK", 0xdead_beef))),
        ]);
        devices.waits_left = 2;
        let (opened, _root) = open_url("file://LABEL=IMAGES/golden.raw", &mut devices);
        assert_eq!(
            format!("{:#}", opened.unwrap_err()),
            "no filesystem labelled IMAGES; filesystems found: \
             vdb1 ext4 LABEL=data UUID=abababab-abab-abab-abab-abababababab, \
             vdc vfat LABEL=STICK UUID=DEAD-BEEF"
        );
        assert_eq!(devices.waits, 3, "waited while allowed");
        assert!(devices.mounts.is_empty());

        let mut devices = FakeDevices::with(&[("vda", "vda", Some(vec![0; 4096]))]);
        let (opened, _root) = open_url("file://UUID=x/golden.raw", &mut devices);
        assert_eq!(
            format!("{:#}", opened.unwrap_err()),
            "no filesystem with UUID x; filesystems found: none"
        );
    }

    #[test]
    fn several_matches_are_an_error_listing_them() {
        let mut devices = FakeDevices::with(&[
            ("sdb1", "sdb", Some(ext4("IMAGES", 1))),
            ("sdc1", "sdc", Some(vfat("IMAGES", 2))),
        ]);
        devices.waits_left = 5;
        let (opened, _root) = open_url("file://LABEL=IMAGES/golden.raw", &mut devices);
        assert_eq!(
            format!("{:#}", opened.unwrap_err()),
            "2 filesystems match LABEL=IMAGES: \
             sdb1 ext4 LABEL=IMAGES UUID=01010101-0101-0101-0101-010101010101, \
             sdc1 vfat LABEL=IMAGES UUID=0000-0002; name one by UUID= or DEV="
        );
        assert_eq!(devices.waits, 0, "more devices cannot make it unambiguous");
        assert!(devices.mounts.is_empty());
    }

    #[test]
    fn mount_and_open_failures_name_the_source() {
        let mut devices = FakeDevices::with(&[("vdb1", "vdb", Some(ext4("IMAGES", 1)))]);
        devices.mount_error = Some("EINVAL");
        let (opened, root) = open_url("file://LABEL=IMAGES/golden.raw", &mut devices);
        assert_eq!(
            format!("{:#}", opened.unwrap_err()),
            format!(
                "mounting LABEL=IMAGES (/dev/vdb1) read-only on {}: EINVAL",
                root.path().join("vdb1").display()
            )
        );

        let mut devices = FakeDevices::with(&[("vdb1", "vdb", Some(ext4("IMAGES", 1)))]);
        let (opened, _root) = open_url("file://LABEL=IMAGES/img/missing.raw", &mut devices);
        let message = format!("{:#}", opened.unwrap_err());
        assert!(
            message.starts_with("opening img/missing.raw on LABEL=IMAGES (/dev/vdb1): "),
            "{message}"
        );
    }

    /// The real listing and reading, on a fake sysfs and `/dev` of plain files.
    #[test]
    fn system_devices_list_disks_and_partitions_from_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let devices_dir = root
            .path()
            .join("devices/pci0000:00/0000:00:05.0/virtio2/block");
        let class = root.path().join("class/block");
        let dev = root.path().join("dev");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(&dev).unwrap();
        for (path, size, partition) in [
            ("vdb", "2048", false),
            ("vdb/vdb1", "1024", true),
            ("sr0", "0", false),
        ] {
            let sys = devices_dir.join(path);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(sys.join("size"), format!("{size}\n")).unwrap();
            if partition {
                std::fs::write(sys.join("partition"), "1\n").unwrap();
            }
            let name = Path::new(path).file_name().unwrap();
            std::os::unix::fs::symlink(&sys, class.join(name)).unwrap();
        }
        std::fs::write(dev.join("vdb"), vec![0u8; 4096]).unwrap();
        std::fs::write(dev.join("vdb1"), ext4("IMAGES", 7)).unwrap();
        let mut system = SystemDevices {
            sys_class_block: class,
            dev,
            module_dir: root.path().join("modules"),
            deadline: Instant::now(),
        };
        let found = scan(&mut system).unwrap();
        assert_eq!(
            found
                .iter()
                .map(|p| (p.device.name.as_str(), p.device.disk.as_str()))
                .collect::<Vec<_>>(),
            [("vdb", "vdb"), ("vdb1", "vdb")],
            "the empty drive is skipped"
        );
        assert_eq!(
            found[1].fs.as_ref().unwrap().label.as_deref(),
            Some("IMAGES")
        );
        assert!(!system.wait_for_more(), "the deadline has passed");
    }
}

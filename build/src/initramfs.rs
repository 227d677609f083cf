//! Assembles the initramfs: `/init`, `/dev/console`, the bare directory
//! skeleton, the module closure of [`crate::drivers::BOOT_DRIVERS`] and a
//! filtered module index that PID 1 reads with the same parser, the firmware
//! those modules name ([`crate::firmware`]); optionally images to deploy
//! without a network and a CA bundle ([`InitramfsExtras`]).
//!
//! For a kernel with every boot driver built in (the purpose-built kernel,
//! `kernel-config/`), [`build_builtin`] assembles the same thing without a
//! single module: the index PID 1 reads says every driver is built in, and
//! the firmware is what the built-in drivers declare ([`crate::builtin`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use imprint::modules::{ModuleEntry, ModuleIndex};
use sha2::{Digest, Sha256};

use crate::builtin::BuiltinModinfo;
use crate::cpio::CpioArchive;
use crate::drivers::boot_driver_names;
use crate::firmware::{self, FirmwarePlan};

/// zstd level 19 is what the kernel's own build uses for `-19`-compressed
/// images; it is deterministic when single-threaded, which the `zstd` crate
/// is unless `multithread` is asked for.
const ZSTD_LEVEL: i32 = 19;
/// 8 MiB. The kernel's initramfs decompressor (lib/decompress_unzstd.c)
/// refuses windows above 128 MiB and allocates a workspace proportional to
/// the window, so it is pinned rather than left to the level's defaults.
const ZSTD_WINDOW_LOG: u32 = 23;

/// Directories PID 1 expects to exist before it mounts anything on them.
const SKELETON_DIRECTORIES: [(&str, u32); 8] = [
    ("dev", 0o755),
    ("proc", 0o555),
    ("sys", 0o555),
    ("run", 0o755),
    ("tmp", 0o1777),
    ("etc", 0o755),
    ("mnt", 0o755),
    ("lib/modules", 0o755),
];

/// What goes into an initramfs.
#[derive(Debug, Clone)]
pub struct InitramfsInputs {
    /// Root of the unpacked kernel package (holds `lib/modules/<kver>`).
    pub kernel_root: PathBuf,
    pub kernel_version: String,
    /// The static `imprint` binary that becomes `/init`.
    pub init_binary: PathBuf,
    /// Modules to carry beyond the built-in driver list.
    pub extra_modules: Vec<String>,
    /// The timestamp of every entry: 0, or `SOURCE_DATE_EPOCH`.
    pub mtime: u32,
    /// An unpacked firmware tree (`cache/firmware/root/lib/firmware`): the
    /// files the carried modules name are copied to `/lib/firmware`. None:
    /// no firmware, and drivers that need some fail to start their device.
    pub firmware_root: Option<PathBuf>,
}

/// Where an embedded image lands: `imprint.url=file:///images/<name>`.
pub const EMBEDDED_IMAGES_DIR: &str = "images";
/// Where a CA bundle lands; the HTTPS source reads it when `imprint.ca=`
/// is not given.
pub const CA_BUNDLE_PATH: &str = "etc/imprint/ca.pem";

/// Files an initramfs may carry beyond what PID 1 needs to boot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitramfsExtras {
    /// Images to put at `/images/<file name>` (mode 0644), for lab use and
    /// small golden images: the kernel unpacks them into RAM, so the machine
    /// needs memory for the image twice (compressed initramfs, unpacked file).
    pub embed_images: Vec<PathBuf>,
    /// A PEM bundle of trust roots for HTTPS, put at `/etc/imprint/ca.pem`.
    pub ca_bundle: Option<PathBuf>,
    /// Public keys that verify signed images, put under
    /// `/etc/imprint/trusted-keys/` (see `imprint::sign::trust`).
    pub trusted_keys: Vec<PathBuf>,
    /// Let unsigned images through although keys are baked in
    /// (`/etc/imprint/allow-unsigned`).
    pub allow_unsigned: bool,
}

impl InitramfsExtras {
    /// Adds the extras to `archive`. The archive orders entries by path,
    /// so the order of `embed_images` does not change the bytes.
    pub fn add_to(&self, archive: &mut CpioArchive) -> Result<()> {
        if !self.embed_images.is_empty() {
            archive.add_directory(EMBEDDED_IMAGES_DIR, 0o755)?;
        }
        for image in &self.embed_images {
            let name = image
                .file_name()
                .and_then(|name| name.to_str())
                .with_context(|| {
                    format!(
                        "embedding {}: the image needs a UTF-8 file name",
                        image.display()
                    )
                })?;
            let contents = std::fs::read(image)
                .with_context(|| format!("reading the image to embed {}", image.display()))?;
            archive
                .add_file(&format!("{EMBEDDED_IMAGES_DIR}/{name}"), 0o644, contents)
                .with_context(|| format!("embedding {}", image.display()))?;
        }
        if let Some(bundle) = &self.ca_bundle {
            let pem = std::fs::read(bundle)
                .with_context(|| format!("reading the CA bundle {}", bundle.display()))?;
            ensure!(
                pem.windows(CERTIFICATE_MARKER.len())
                    .any(|window| window == CERTIFICATE_MARKER),
                "the CA bundle {} holds no PEM certificate (no {})",
                bundle.display(),
                String::from_utf8_lossy(CERTIFICATE_MARKER)
            );
            archive.add_directory("etc/imprint", 0o755)?;
            archive.add_file(CA_BUNDLE_PATH, 0o644, pem)?;
        }
        self.add_trusted_keys(archive)
    }

    /// Each key is parsed here, so a file that is not a key (or two keys
    /// with one name) fails the build rather than the deploy; it lands as
    /// `<n>-<file name>`, in the order given.
    fn add_trusted_keys(&self, archive: &mut CpioArchive) -> Result<()> {
        ensure!(
            !self.allow_unsigned || !self.trusted_keys.is_empty(),
            "--allow-unsigned without --trusted-key: with no key baked in, nothing is refused anyway"
        );
        if self.trusted_keys.is_empty() {
            return Ok(());
        }
        archive.add_directory(TRUSTED_KEYS_DIR, 0o755)?;
        for (n, path) in self.trusted_keys.iter().enumerate() {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the trusted key {}", path.display()))?;
            imprint::sign::TrustedKey::parse(&bytes)
                .with_context(|| format!("trusted key {}", path.display()))?;
            let name = path
                .file_name()
                .and_then(|name| name.to_str())
                .with_context(|| format!("{}: the key needs a UTF-8 file name", path.display()))?;
            archive.add_file(&format!("{TRUSTED_KEYS_DIR}/{n:02}-{name}"), 0o644, bytes)?;
        }
        if self.allow_unsigned {
            archive.add_file(ALLOW_UNSIGNED_PATH, 0o644, Vec::new())?;
        }
        Ok(())
    }
}

/// Where baked keys land: `imprint::sign::trust::TRUSTED_KEYS_DIR`
/// without its leading `/`.
pub const TRUSTED_KEYS_DIR: &str = "etc/imprint/trusted-keys";
/// `imprint::sign::trust::ALLOW_UNSIGNED_PATH`, likewise.
pub const ALLOW_UNSIGNED_PATH: &str = "etc/imprint/allow-unsigned";

const CERTIFICATE_MARKER: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// The built initramfs and what went into it.
#[derive(Debug, Clone)]
pub struct Initramfs {
    pub cpio: Vec<u8>,
    pub compressed: Vec<u8>,
    /// In load order.
    pub modules: Vec<ModuleEntry>,
    /// Requested modules the kernel has built in.
    pub builtin: Vec<String>,
    /// The firmware carried and the names not found, when a firmware root
    /// was given.
    pub firmware: Option<FirmwarePlan>,
}

impl Initramfs {
    pub fn sha256_hex(&self) -> String {
        Sha256::digest(&self.compressed)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// `<root>/lib/modules/<kver>`, or `<root>/usr/lib/modules/<kver>` for
/// kernels packaged after the usr-merge.
pub fn modules_dir(kernel_root: &Path, kernel_version: &str) -> Result<PathBuf> {
    let candidates = [
        kernel_root.join("lib/modules").join(kernel_version),
        kernel_root.join("usr/lib/modules").join(kernel_version),
    ];
    candidates
        .iter()
        .find(|candidate| candidate.is_dir())
        .cloned()
        .with_context(|| {
            format!(
                "kernel {kernel_version} has no lib/modules/{kernel_version} in {} \
                 (run scripts/fetch-kernel)",
                kernel_root.display()
            )
        })
}

/// The directories, `/init` and `/dev/console`: what every initramfs holds.
fn skeleton(init_binary: &Path) -> Result<CpioArchive> {
    let mut archive = CpioArchive::new();
    for (directory, permissions) in SKELETON_DIRECTORIES {
        archive.add_directory(directory, permissions)?;
    }
    let init = std::fs::read(init_binary)
        .with_context(|| format!("reading the init binary {}", init_binary.display()))?;
    archive.add_file("init", 0o755, init)?;
    // The kernel opens /dev/console for PID 1's stdio before devtmpfs is
    // mounted; without this node PID 1 starts with no console at all.
    archive.add_char_device("dev/console", 0o600, 5, 1)?;
    Ok(archive)
}

/// The uncompressed cpio archive plus the module list.
pub fn assemble(inputs: &InitramfsInputs) -> Result<(CpioArchive, Vec<ModuleEntry>, Vec<String>)> {
    let kver = &inputs.kernel_version;
    let modules_dir = modules_dir(&inputs.kernel_root, kver)?;
    let index = ModuleIndex::load(&modules_dir)?.with_kernel_version(kver);
    let mut requested: Vec<&str> = boot_driver_names();
    requested.extend(inputs.extra_modules.iter().map(String::as_str));
    let closure = index
        .resolve(&requested)
        .with_context(|| format!("collecting the modules for the initramfs of kernel {kver}"))?;

    let mut archive = skeleton(&inputs.init_binary)?;
    let archive_modules_dir = format!("lib/modules/{kver}");
    archive.add_directory(&archive_modules_dir, 0o755)?;
    for module in &closure.modules {
        let source = modules_dir.join(&module.path);
        let contents = std::fs::read(&source)
            .with_context(|| format!("reading module {} at {}", module.name, source.display()))?;
        archive.add_file(
            &format!("{archive_modules_dir}/{}", module.path),
            0o644,
            contents,
        )?;
    }
    for (file_name, text) in index.restricted_to(&closure.modules).metadata_files() {
        archive.add_file(
            &format!("{archive_modules_dir}/{file_name}"),
            0o644,
            text.into_bytes(),
        )?;
    }
    Ok((archive, closure.modules, closure.builtin))
}

/// One zstd frame the kernel's initramfs decompressor accepts, the same
/// bytes every time for the same input.
pub fn compress(cpio: &[u8]) -> Result<Vec<u8>> {
    let compress = || -> std::io::Result<Vec<u8>> {
        let mut encoder = zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?;
        encoder.window_log(ZSTD_WINDOW_LOG)?;
        encoder.include_checksum(true)?;
        encoder.include_contentsize(true)?;
        encoder.set_pledged_src_size(Some(u64::try_from(cpio.len()).unwrap_or(u64::MAX)))?;
        std::io::Write::write_all(&mut encoder, cpio)?;
        encoder.finish()
    };
    compress().context("compressing the initramfs with zstd")
}

pub fn build(inputs: &InitramfsInputs) -> Result<Initramfs> {
    build_with(inputs, &InitramfsExtras::default())
}

/// [`build`], plus embedded images and a CA bundle.
pub fn build_with(inputs: &InitramfsInputs, extras: &InitramfsExtras) -> Result<Initramfs> {
    let (mut archive, modules, builtin) = assemble(inputs)?;
    let firmware = match &inputs.firmware_root {
        Some(root) => {
            let modules_dir = modules_dir(&inputs.kernel_root, &inputs.kernel_version)?;
            let plan = firmware::plan(&modules_dir, &modules, root)?;
            plan.add_to(&mut archive)?;
            Some(plan)
        }
        None => None,
    };
    extras.add_to(&mut archive)?;
    let cpio = archive.to_bytes(inputs.mtime)?;
    let compressed = compress(&cpio)?;
    ensure!(!compressed.is_empty(), "zstd produced no output");
    Ok(Initramfs {
        cpio,
        compressed,
        modules,
        builtin,
        firmware,
    })
}

/// What goes into the initramfs of a kernel with its drivers built in.
#[derive(Debug, Clone)]
pub struct BuiltinInputs {
    /// The kernel build's `modules.builtin.modinfo` (`scripts/build-kernel`
    /// installs it as `out/custom/modules.builtin.modinfo`).
    pub builtin_modinfo: PathBuf,
    /// The kernel's release (`uname -r`), where PID 1 looks for the index.
    pub kernel_version: String,
    /// The static `imprint` binary that becomes `/init`.
    pub init_binary: PathBuf,
    /// The timestamp of every entry: 0, or `SOURCE_DATE_EPOCH`.
    pub mtime: u32,
    /// As in [`InitramfsInputs::firmware_root`], for the firmware the
    /// built-in drivers declare.
    pub firmware_root: Option<PathBuf>,
}

/// An initramfs without modules, for a kernel that has every driver of
/// [`crate::drivers::BOOT_DRIVERS`] built in: the skeleton, `/init`, a
/// module index whose `modules.builtin` lists the kernel's built-in drivers
/// (so PID 1's coldplug finds nothing to load) and the firmware those
/// drivers declare. A boot driver the kernel lacks is an error naming it,
/// as it is for a kernel with modules.
pub fn build_builtin(inputs: &BuiltinInputs, extras: &InitramfsExtras) -> Result<Initramfs> {
    let kver = &inputs.kernel_version;
    let path = &inputs.builtin_modinfo;
    let bytes = std::fs::read(path)
        .with_context(|| format!("reading {} (run scripts/build-kernel)", path.display()))?;
    let modinfo =
        BuiltinModinfo::parse(&bytes).with_context(|| format!("parsing {}", path.display()))?;
    let index = ModuleIndex::parse("", "", "", &modinfo.modules_builtin_text())
        .with_context(|| format!("indexing the built-in modules of {}", path.display()))?
        .with_kernel_version(kver);
    let closure = index.resolve(&boot_driver_names()).with_context(|| {
        format!(
            "checking the built-in drivers of kernel {kver} ({})",
            path.display()
        )
    })?;
    ensure!(
        closure.modules.is_empty(),
        "kernel {kver} needs modules, which an initramfs for built-in drivers cannot carry"
    );

    let mut archive = skeleton(&inputs.init_binary)?;
    let archive_modules_dir = format!("lib/modules/{kver}");
    archive.add_directory(&archive_modules_dir, 0o755)?;
    for (file_name, text) in index.metadata_files() {
        archive.add_file(
            &format!("{archive_modules_dir}/{file_name}"),
            0o644,
            text.into_bytes(),
        )?;
    }
    let firmware = match &inputs.firmware_root {
        Some(root) => {
            let plan = firmware::plan_declared(&modinfo.firmware(), root)?;
            plan.add_to(&mut archive)?;
            Some(plan)
        }
        None => None,
    };
    extras.add_to(&mut archive)?;
    let cpio = archive.to_bytes(inputs.mtime)?;
    let compressed = compress(&cpio)?;
    ensure!(!compressed.is_empty(), "zstd produced no output");
    Ok(Initramfs {
        cpio,
        compressed,
        modules: Vec::new(),
        builtin: closure.builtin,
        firmware,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{EntryKind, read_archive};
    use crate::drivers::BOOT_DRIVERS;

    const KVER: &str = "6.1.0-test-amd64";

    /// A kernel tree with every boot driver as a tiny fake module, plus a
    /// few modules the initramfs must leave out. Dependencies and aliases
    /// mimic the real ones for the virtio and ext4 paths.
    fn fake_kernel_tree(root: &Path) {
        let modules_dir = root.join("lib/modules").join(KVER);
        let mut dep = String::new();
        let mut alias = String::from("# Aliases extracted from modules themselves.\n");
        let mut write_module = |path: &str, deps: &[&str]| {
            let file = modules_dir.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            let mut elf = firmware::tests::fake_module(&[]);
            elf.extend_from_slice(path.as_bytes());
            std::fs::write(&file, elf).unwrap();
            dep.push_str(path);
            dep.push(':');
            for dependency in deps {
                dep.push(' ');
                dep.push_str(dependency);
            }
            dep.push('\n');
        };
        write_module("kernel/drivers/virtio/virtio.ko", &[]);
        write_module("kernel/drivers/virtio/virtio_ring.ko", &[]);
        write_module(
            "kernel/drivers/virtio/virtio_pci.ko",
            &[
                "kernel/drivers/virtio/virtio.ko",
                "kernel/drivers/virtio/virtio_ring.ko",
            ],
        );
        write_module("kernel/fs/jbd2/jbd2.ko", &[]);
        write_module("kernel/fs/ext4/ext4.ko", &["kernel/fs/jbd2/jbd2.ko"]);
        write_module("kernel/arch/x86/crypto/crc32c-intel.ko", &[]);
        write_module("kernel/drivers/gpu/drm/nouveau/nouveau.ko", &[]);
        write_module("kernel/fs/nilfs2/nilfs2.ko", &[]);
        for group in BOOT_DRIVERS {
            for &module in group.modules {
                if ["virtio_pci", "ext4", "af_packet"].contains(&module) {
                    continue;
                }
                write_module(&format!("kernel/misc/{module}.ko"), &[]);
            }
        }
        alias.push_str("alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\n");
        alias.push_str("alias crypto-crc32c crc32c_intel\n");
        alias.push_str("alias crypto-crc32c crc32c_generic\n");
        alias.push_str("alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau\n");
        std::fs::write(modules_dir.join("modules.dep"), dep).unwrap();
        std::fs::write(modules_dir.join("modules.alias"), alias).unwrap();
        std::fs::write(
            modules_dir.join("modules.softdep"),
            "softdep ext4 pre: crypto-crc32c\nsoftdep nilfs2 pre: xxhash64\n",
        )
        .unwrap();
        std::fs::write(
            modules_dir.join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        std::fs::write(root.join("init"), b"\x7fELF fake static init").unwrap();
    }

    fn inputs(root: &Path) -> InitramfsInputs {
        InitramfsInputs {
            kernel_root: root.to_owned(),
            kernel_version: KVER.to_owned(),
            init_binary: root.join("init"),
            extra_modules: Vec::new(),
            mtime: 0,
            firmware_root: None,
        }
    }

    #[test]
    fn same_inputs_give_the_same_bytes() {
        let first_tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(first_tree.path());
        let second_tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(second_tree.path());
        let first = build(&inputs(first_tree.path())).unwrap();
        let second = build(&inputs(second_tree.path())).unwrap();
        assert_eq!(first.sha256_hex(), second.sha256_hex());
        assert_eq!(first.compressed, second.compressed);

        let mut changed_inputs = inputs(second_tree.path());
        std::fs::write(second_tree.path().join("init"), b"\x7fELF another init").unwrap();
        let changed = build(&changed_inputs).unwrap();
        assert_ne!(changed.sha256_hex(), first.sha256_hex());

        changed_inputs.mtime = 1_700_000_000;
        let later = build(&changed_inputs).unwrap();
        assert_ne!(later.sha256_hex(), changed.sha256_hex());
    }

    #[test]
    fn carries_exactly_the_closure_and_the_skeleton() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let initramfs = build(&inputs(tree.path())).unwrap();
        let cpio = zstd::decode_all(initramfs.compressed.as_slice()).unwrap();
        assert_eq!(cpio, initramfs.cpio);
        let members = read_archive(&cpio).unwrap();
        let prefix = format!("lib/modules/{KVER}/");
        let mut shipped_modules: Vec<&str> = members
            .iter()
            .filter(|m| m.name.ends_with(".ko"))
            .map(|m| m.name.strip_prefix(&prefix).unwrap())
            .collect();
        shipped_modules.sort_unstable();
        let mut closure_paths: Vec<&str> =
            initramfs.modules.iter().map(|m| m.path.as_str()).collect();
        closure_paths.sort_unstable();
        assert_eq!(shipped_modules, closure_paths);
        assert!(shipped_modules.contains(&"kernel/drivers/virtio/virtio_ring.ko"));
        assert!(shipped_modules.contains(&"kernel/arch/x86/crypto/crc32c-intel.ko"));
        assert!(
            !shipped_modules
                .iter()
                .any(|path| path.contains("nouveau") || path.contains("nilfs2"))
        );
        assert_eq!(initramfs.builtin, ["af_packet"]);

        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(member("init").mode, 0o100_755);
        assert_eq!(member("init").data, b"\x7fELF fake static init");
        assert_eq!(
            member("dev/console").to_entry().unwrap().kind,
            EntryKind::CharDevice { major: 5, minor: 1 }
        );
        for directory in ["dev", "proc", "sys", "run", "tmp", "etc", "mnt"] {
            assert_eq!(member(directory).mode & 0o170_000, 0o040_000, "{directory}");
        }

        // PID 1 parses the shipped index with the same code and gets the same order.
        let text = |file: &str| {
            String::from_utf8(member(&format!("{prefix}{file}")).data.clone()).unwrap()
        };
        let shipped_index = ModuleIndex::parse(
            &text("modules.dep"),
            &text("modules.alias"),
            &text("modules.softdep"),
            &text("modules.builtin"),
        )
        .unwrap();
        assert_eq!(shipped_index.len(), initramfs.modules.len());
        assert!(!text("modules.alias").contains("nouveau"));
        assert!(!text("modules.softdep").contains("nilfs2"));
        let requested = boot_driver_names();
        assert_eq!(
            shipped_index.closure(&requested).unwrap(),
            initramfs.modules
        );
    }

    #[test]
    fn extra_modules_are_added_and_missing_ones_named() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let mut with_extra = inputs(tree.path());
        with_extra.extra_modules = vec!["nilfs2".to_owned()];
        let initramfs = build(&with_extra).unwrap();
        assert!(initramfs.modules.iter().any(|m| m.name == "nilfs2"));

        with_extra.extra_modules = vec!["zfs".to_owned()];
        let error = build(&with_extra).unwrap_err();
        assert_eq!(
            format!("{error:#}"),
            format!(
                "collecting the modules for the initramfs of kernel {KVER}: \
                 module zfs not found in kernel {KVER}"
            )
        );
    }

    #[test]
    fn a_kernel_without_a_boot_driver_is_an_error_naming_it() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let dep_path = tree
            .path()
            .join("lib/modules")
            .join(KVER)
            .join("modules.dep");
        let dep = std::fs::read_to_string(&dep_path).unwrap();
        let without_ice: String = dep
            .lines()
            .filter(|l| !l.contains("/ice.ko"))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&dep_path, without_ice).unwrap();
        let error = build(&inputs(tree.path())).unwrap_err();
        assert!(
            format!("{error:#}").ends_with(&format!("module ice not found in kernel {KVER}")),
            "{error:#}"
        );
    }

    #[test]
    fn carries_the_firmware_its_modules_name() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        std::fs::write(
            tree.path()
                .join("lib/modules")
                .join(KVER)
                .join("kernel/misc/tg3.ko"),
            firmware::tests::fake_module(&["tigon/tg3.bin", "tigon/tg3_tso.bin"]),
        )
        .unwrap();
        let firmware = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(firmware.path().join("tigon")).unwrap();
        std::fs::write(firmware.path().join("tigon/tg3.bin"), b"tg3 firmware").unwrap();
        std::fs::write(firmware.path().join("tigon/unused.bin"), b"unused").unwrap();

        let mut with_firmware = inputs(tree.path());
        with_firmware.firmware_root = Some(firmware.path().to_owned());
        let built = build(&with_firmware).unwrap();
        let members = read_archive(&built.cpio).unwrap();
        let firmware_members: Vec<(&str, &[u8])> = members
            .iter()
            .filter(|m| m.name.starts_with("lib/firmware/") && m.mode & 0o170_000 == 0o100_000)
            .map(|m| (m.name.as_str(), m.data.as_slice()))
            .collect();
        assert_eq!(
            firmware_members,
            [("lib/firmware/tigon/tg3.bin", b"tg3 firmware".as_slice())]
        );
        let plan = built.firmware.as_ref().unwrap();
        assert_eq!(plan.missing.len(), 1);
        assert_eq!(plan.missing[0].name, "tigon/tg3_tso.bin");
        assert_eq!(plan.missing[0].module, "tg3");
        // Reproducible with firmware too, and different from the build without.
        assert_eq!(build(&with_firmware).unwrap().compressed, built.compressed);
        let without = build(&inputs(tree.path())).unwrap();
        assert!(without.firmware.is_none());
        assert!(
            !read_archive(&without.cpio)
                .unwrap()
                .iter()
                .any(|m| m.name.starts_with("lib/firmware"))
        );
    }

    /// A `modules.builtin.modinfo` with every boot driver built in except
    /// `leave_out`, tg3 naming two firmware files.
    fn builtin_modinfo(dir: &Path, leave_out: &str) -> PathBuf {
        let mut bytes = Vec::new();
        for name in boot_driver_names() {
            if name != leave_out {
                bytes.extend_from_slice(format!("{name}.file=drivers/x/{name}\0").as_bytes());
            }
        }
        bytes.extend_from_slice(b"tg3.firmware=tigon/tg3.bin\0tg3.firmware=tigon/tg3_tso.bin\0");
        let path = dir.join("modules.builtin.modinfo");
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn built_in_drivers_need_no_modules_but_their_firmware() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init"), b"\x7fELF init").unwrap();
        let firmware = dir.path().join("firmware");
        std::fs::create_dir_all(firmware.join("tigon")).unwrap();
        std::fs::write(firmware.join("tigon/tg3.bin"), b"tg3 firmware").unwrap();
        std::fs::write(firmware.join("tigon/unused.bin"), b"unused").unwrap();
        let inputs = BuiltinInputs {
            builtin_modinfo: builtin_modinfo(dir.path(), ""),
            kernel_version: "6.1.192-imprint".to_owned(),
            init_binary: dir.path().join("init"),
            mtime: 0,
            firmware_root: Some(firmware),
        };
        let built = build_builtin(&inputs, &InitramfsExtras::default()).unwrap();
        assert!(built.modules.is_empty());
        assert_eq!(built.builtin.len(), boot_driver_names().len());
        let members =
            read_archive(&zstd::decode_all(built.compressed.as_slice()).unwrap()).unwrap();
        assert!(!members.iter().any(|m| m.name.ends_with(".ko")));
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(member("init").data, b"\x7fELF init");
        assert_eq!(member("lib/firmware/tigon/tg3.bin").data, b"tg3 firmware");
        assert!(!members.iter().any(|m| m.name.contains("unused")));
        let plan = built.firmware.as_ref().unwrap();
        assert_eq!(plan.missing.len(), 1);
        assert_eq!(plan.missing[0].name, "tigon/tg3_tso.bin");

        // PID 1 loads the shipped index and finds every driver built in,
        // so its coldplug has nothing to load.
        let prefix = "lib/modules/6.1.192-imprint/";
        let text = |file: &str| {
            String::from_utf8(member(&format!("{prefix}{file}")).data.clone()).unwrap()
        };
        let index = ModuleIndex::parse(
            &text("modules.dep"),
            &text("modules.alias"),
            &text("modules.softdep"),
            &text("modules.builtin"),
        )
        .unwrap();
        assert!(index.is_empty());
        for name in boot_driver_names() {
            assert!(index.is_builtin(name), "{name}");
        }
        assert_eq!(
            build_builtin(&inputs, &InitramfsExtras::default())
                .unwrap()
                .compressed,
            built.compressed,
            "reproducible"
        );
    }

    #[test]
    fn a_boot_driver_not_built_in_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("init"), b"\x7fELF init").unwrap();
        let inputs = BuiltinInputs {
            builtin_modinfo: builtin_modinfo(dir.path(), "megaraid_sas"),
            kernel_version: "6.1.192-imprint".to_owned(),
            init_binary: dir.path().join("init"),
            mtime: 0,
            firmware_root: None,
        };
        let error = build_builtin(&inputs, &InitramfsExtras::default()).unwrap_err();
        assert!(
            format!("{error:#}")
                .ends_with("module megaraid_sas not found in kernel 6.1.192-imprint"),
            "{error:#}"
        );
        let absent = BuiltinInputs {
            builtin_modinfo: dir.path().join("nope"),
            ..inputs
        };
        let error = build_builtin(&absent, &InitramfsExtras::default()).unwrap_err();
        assert!(
            error.to_string().ends_with("(run scripts/build-kernel)"),
            "{error}"
        );
    }

    #[test]
    fn missing_kernel_tree_says_how_to_get_one() {
        let tree = tempfile::tempdir().unwrap();
        let error = build(&inputs(tree.path())).unwrap_err();
        assert!(
            error.to_string().contains("run scripts/fetch-kernel"),
            "{error}"
        );
    }

    #[test]
    fn the_zstd_frame_declares_its_size_and_a_bounded_window() {
        let data = vec![7u8; 3 << 20];
        let compressed = compress(&data).unwrap();
        // Frame header: magic, then the descriptor byte. Content size flag
        // (bits 7-6) set, checksum flag (bit 2) set.
        assert_eq!(&compressed[..4], &[0x28, 0xB5, 0x2F, 0xFD]);
        let descriptor = compressed[4];
        assert_ne!(descriptor >> 6, 0);
        assert_eq!(descriptor & 0b100, 0b100);
        // Single-segment frames (no window byte) use the content size as
        // the window; otherwise the window descriptor must be <= 2^23.
        if descriptor & 0b10_0000 == 0 {
            let window_descriptor = compressed[5];
            let exponent = u32::from(window_descriptor >> 3);
            assert!(
                10 + exponent <= ZSTD_WINDOW_LOG,
                "window 2^{}",
                10 + exponent
            );
        }
        assert_eq!(zstd::decode_all(compressed.as_slice()).unwrap(), data);
        assert_eq!(compress(&data).unwrap(), compressed);
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    #[test]
    fn embeds_images_and_the_ca_bundle_reproducibly() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let files = tempfile::tempdir().unwrap();
        let golden = files.path().join("golden.raw.zst");
        let other = files.path().join("other.img");
        let ca = files.path().join("lab-ca.crt");
        std::fs::write(&golden, b"\x28\xb5\x2f\xfd image").unwrap();
        std::fs::write(&other, b"second").unwrap();
        std::fs::write(&ca, PEM).unwrap();
        let extras = InitramfsExtras {
            embed_images: vec![golden.clone(), other.clone()],
            ca_bundle: Some(ca.clone()),
            trusted_keys: Vec::new(),
            allow_unsigned: false,
        };
        let built = build_with(&inputs(tree.path()), &extras).unwrap();
        let members = read_archive(&built.cpio).unwrap();
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        assert_eq!(member("images/golden.raw.zst").mode, 0o100_644);
        assert_eq!(
            member("images/golden.raw.zst").data,
            b"\x28\xb5\x2f\xfd image"
        );
        assert_eq!(member("images/other.img").data, b"second");
        assert_eq!(member("images").mode, 0o040_755);
        assert_eq!(member("etc/imprint/ca.pem").mode, 0o100_644);
        assert_eq!(member("etc/imprint/ca.pem").data, PEM.as_bytes());
        assert_eq!(member("etc/imprint").mode, 0o040_755);
        assert_eq!(member("init").data, b"\x7fELF fake static init");

        // The same files in another order give the same bytes.
        let reordered = InitramfsExtras {
            embed_images: vec![other, golden.clone()],
            ca_bundle: Some(ca),
            trusted_keys: Vec::new(),
            allow_unsigned: false,
        };
        let again = build_with(&inputs(tree.path()), &reordered).unwrap();
        assert_eq!(again.sha256_hex(), built.sha256_hex());
        // No extras: exactly the plain build.
        assert_eq!(
            build_with(&inputs(tree.path()), &InitramfsExtras::default())
                .unwrap()
                .compressed,
            build(&inputs(tree.path())).unwrap().compressed
        );
        let plain = read_archive(&build(&inputs(tree.path())).unwrap().cpio).unwrap();
        assert!(
            !plain
                .iter()
                .any(|m| m.name.starts_with("images") || m.name.contains("ca.pem"))
        );
    }

    #[test]
    fn bad_extras_are_errors_naming_the_file() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let files = tempfile::tempdir().unwrap();
        let error = |extras: InitramfsExtras| {
            format!(
                "{:#}",
                build_with(&inputs(tree.path()), &extras).unwrap_err()
            )
        };
        let missing = files.path().join("missing.raw");
        assert!(
            error(InitramfsExtras {
                embed_images: vec![missing.clone()],
                ca_bundle: None,
                trusted_keys: Vec::new(),
                allow_unsigned: false,
            })
            .starts_with(&format!(
                "reading the image to embed {}: ",
                missing.display()
            ))
        );
        let first = files.path().join("golden.raw");
        std::fs::create_dir(files.path().join("b")).unwrap();
        let second = files.path().join("b/golden.raw");
        std::fs::write(&first, b"1").unwrap();
        std::fs::write(&second, b"2").unwrap();
        assert_eq!(
            error(InitramfsExtras {
                embed_images: vec![first, second.clone()],
                ca_bundle: None,
                trusted_keys: Vec::new(),
                allow_unsigned: false,
            }),
            format!(
                "embedding {}: cpio entry images/golden.raw added twice",
                second.display()
            )
        );
        let not_pem = files.path().join("ca.der");
        std::fs::write(&not_pem, [0x30, 0x82, 0x01]).unwrap();
        assert_eq!(
            error(InitramfsExtras {
                embed_images: Vec::new(),
                ca_bundle: Some(not_pem.clone()),
                trusted_keys: Vec::new(),
                allow_unsigned: false,
            }),
            format!(
                "the CA bundle {} holds no PEM certificate (no -----BEGIN CERTIFICATE-----)",
                not_pem.display()
            )
        );
    }

    #[test]
    fn bakes_trusted_keys_checked_and_in_order() {
        let tree = tempfile::tempdir().unwrap();
        fake_kernel_tree(tree.path());
        let files = tempfile::tempdir().unwrap();
        // minisign-verify's test key; any key the deploy can parse.
        let minisign = files.path().join("release.pub");
        std::fs::write(
            &minisign,
            "untrusted comment: minisign public key E7620F1842B4E81F\n\
             RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3\n",
        )
        .unwrap();
        let extras = InitramfsExtras {
            trusted_keys: vec![minisign.clone()],
            allow_unsigned: true,
            ..InitramfsExtras::default()
        };
        let built = build_with(&inputs(tree.path()), &extras).unwrap();
        let members = read_archive(&built.cpio).unwrap();
        let member = |name: &str| {
            members
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("{name} missing"))
        };
        let key = member("etc/imprint/trusted-keys/00-release.pub");
        assert_eq!(key.mode, 0o100_644);
        assert_eq!(key.data, std::fs::read(&minisign).unwrap());
        assert_eq!(member("etc/imprint/trusted-keys").mode, 0o040_755);
        assert!(member("etc/imprint/allow-unsigned").data.is_empty());

        let error = |extras: InitramfsExtras| {
            format!(
                "{:#}",
                build_with(&inputs(tree.path()), &extras).unwrap_err()
            )
        };
        let not_a_key = files.path().join("ca.pem");
        std::fs::write(&not_a_key, PEM).unwrap();
        let message = error(InitramfsExtras {
            trusted_keys: vec![minisign, not_a_key.clone()],
            ..InitramfsExtras::default()
        });
        assert!(
            message.starts_with(&format!("trusted key {}: ", not_a_key.display())),
            "{message}"
        );
        assert_eq!(
            error(InitramfsExtras {
                allow_unsigned: true,
                ..InitramfsExtras::default()
            }),
            "--allow-unsigned without --trusted-key: with no key baked in, nothing is refused anyway"
        );
    }

    /// The real Debian kernel, when scripts/fetch-kernel has run: every
    /// boot driver must be there.
    #[test]
    fn real_kernel_when_fetched() {
        let current = Path::new(env!("CARGO_MANIFEST_DIR")).join("../cache/kernel/current");
        let Ok(kernel_root) = current.canonicalize() else {
            eprintln!("skipped: no {}", current.display());
            return;
        };
        let kernel_version = kernel_root
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let (_, modules, builtin) = assemble(&InitramfsInputs {
            kernel_root: kernel_root.clone(),
            kernel_version,
            init_binary: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"),
            extra_modules: Vec::new(),
            mtime: 0,
            firmware_root: None,
        })
        .unwrap();
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        for driver in boot_driver_names() {
            assert!(
                names.contains(&driver) || builtin.iter().any(|b| b == driver),
                "{driver}"
            );
        }
        assert!(names.contains(&"crc32c_generic"));
    }
}

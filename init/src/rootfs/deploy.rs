//! A root-filesystem deploy, from a tarball to a bootable disk:
//!
//! ```text
//! plan the layout on the selected disks -> print it
//! open the tarball: fetch -> decode (the disk-image pipeline's decoders) -> tar
//! -- nothing written before this line --
//! wipe + GPT + mkfs (apply.rs) -> mount under one directory
//! unpack (unpack.rs) -> read to the end, verify the served checksum
//! /etc/fstab from the layout -> initramfs + bootloader in a chroot (bootloader.rs)
//! unmount; on any failure after the first write: wipe every disk's GPT at both ends
//! ```
//!
//! Identity injection, status and the handoff then run as after a disk
//! image: the disk now holds a GPT with a root to find.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::apply;
use super::bootloader::{self, BootTargets};
use super::layout::{self, DiskFacts, Layout, PartType, Plan};
use super::stream::{self, Tarball};
use crate::deploy::DeployOptions;
use crate::disk::DiskSelector;
use crate::installed::RootDir;
use crate::pipeline::format::{self, Compression};
use crate::pipeline::ordered::{MIN_MEMORY, OrderedConfig};
use crate::pipeline::progress::Progress;
use crate::report::DeploySummary;
use crate::source::Source;
use crate::spec::{CheckedOverlay, Resolved};
use crate::sys;
use crate::text::human_size;

/// How long a layout's further disks may take to show up.
const MORE_DISKS: std::time::Duration = std::time::Duration::from_secs(30);

/// Deploys `spec`'s image, a root-filesystem tarball of type `declared`,
/// onto `target` (and the layout's further disks). `boot_mac` seeds the
/// new GUIDs and UUIDs with the clock; every program run is told to
/// `events`.
pub fn run(
    spec: &Resolved,
    source: Source,
    target: &Path,
    declared: &str,
    boot_mac: Option<[u8; 6]>,
    progress: &mut dyn Progress,
    events: super::command::Events<'_>,
) -> Result<DeploySummary> {
    let started = Instant::now();
    let layout = match &spec.layout {
        Some(layout) => layout.clone(),
        None => layout::preset("default")?,
    };
    let stats = source.stats.clone();
    let facts = disk_facts(&layout, target)?;
    let plan = layout::plan(&layout, &facts, seed(boot_mac))?;
    log::info!("layout:\n{}", plan.to_string().trim_end());
    apply::check_tools(&plan)?;
    let signing = crate::sign::deploy::plan(spec)?;
    if !signing.keys.is_empty() && !spec.overlays.is_empty() {
        bail!(
            "additional-tarballs cannot be signed, and keys are trusted here: \
             an unsigned tarball over a signed root would undo its signature"
        );
    }
    let image = Tarball {
        url: spec.image.as_str(),
        declared,
        expected: spec.expected.as_ref(),
        source_options: &spec.source,
        decode_memory: spec.decode_memory,
        signing: Some(&signing),
    };
    let stream = stream::open_tarball(&image, source, &DeployOptions::default())?;
    let root_dir = mount_dir();
    let outcome = (|| -> Result<_> {
        apply::partition_and_format(&plan, events).context("partitioning and formatting")?;
        let mounted = apply::mount_all(&plan, &root_dir)?;
        let (unpacked, served) = stream.unpack_into(mounted.root(), progress)?;
        log::info!("unpacked {unpacked}");
        for overlay in &spec.overlays {
            unpack_overlay(spec, overlay, mounted.root(), progress)?;
        }
        write_fstab(&plan, mounted.root()).context("writing /etc/fstab")?;
        bootloader::install(
            mounted.root(),
            spec.bootloader,
            &boot_targets(&plan),
            events,
        )
        .context("installing the bootloader")?;
        mounted.unmount().context("unmounting the new root")?;
        Ok(served)
    })();
    let served = match outcome {
        Ok(served) => served,
        Err(e) => {
            apply::fail_closed(&plan);
            return Err(e);
        }
    };
    let _ = std::fs::remove_dir(&root_dir);
    Ok(DeploySummary {
        bytes: served.bytes,
        sha256: served.sha256,
        elapsed: started.elapsed(),
        format: Some(declared.to_ascii_lowercase()),
        verified: served.verified,
        transfer: stats.snapshot(),
        restarts: 0,
        insecure: crate::http::tls::insecure_in_effect(&spec.source),
        erased: Vec::new(),
        boot_entry: None,
        signed_by: served.signed_by,
    })
}

/// Fetches, unpacks and verifies one of the deploy spec's
/// `additional-tarballs` over the new root.
fn unpack_overlay(
    spec: &Resolved,
    overlay: &CheckedOverlay,
    root: &Path,
    progress: &mut dyn Progress,
) -> Result<()> {
    let url = overlay.url.as_str();
    let context = || format!("unpacking the additional tarball {url}");
    let source = crate::source::open(url, &spec.source).with_context(context)?;
    let tarball = Tarball {
        url,
        declared: &overlay.format,
        expected: overlay.expected.as_ref(),
        source_options: &spec.source,
        decode_memory: spec.decode_memory,
        signing: None,
    };
    let (unpacked, _) = stream::open_tarball(&tarball, source, &DeployOptions::default())
        .with_context(context)?
        .unpack_into(root, progress)?;
    log::info!("unpacked {url} over the new root: {unpacked}");
    Ok(())
}

/// `imprint unpack`: fetches the tarball at `url` (of type `format`, else
/// sniffed) and unpacks it into the directory `dir` as a deploy does,
/// `checksum` (`sha256:HEX`) checked. Returns the summary line.
pub fn unpack_url(
    url: &str,
    format: Option<&str>,
    checksum: Option<&str>,
    dir: &Path,
) -> Result<String> {
    let started = Instant::now();
    let expected = checksum
        .map(crate::pipeline::checksum::Checksum::parse)
        .transpose()
        .context("--checksum")?
        .map(crate::spec::Expected::Digest);
    let options = crate::source::SourceOptions::default();
    let source = crate::source::open(url, &options)?;
    let (kind, source) = match format {
        Some(format) => (Some(format), source),
        None => sniff(source)?,
    };
    let Some(kind) = kind else {
        bail!("{url} is not a root-filesystem tarball (give --format if it is one)");
    };
    let tarball = Tarball {
        url,
        declared: kind,
        expected: expected.as_ref(),
        source_options: &options,
        decode_memory: None,
        signing: None,
    };
    let (unpacked, served) = stream::open_tarball(&tarball, source, &DeployOptions::default())?
        .unpack_into(dir, &mut crate::pipeline::progress::NoProgress)?;
    Ok(format!(
        "unpacked {url} into {}: {unpacked} from {} served (sha256 {}) in {:.2} s",
        dir.display(),
        human_size(served.bytes),
        crate::text::hex(&served.sha256),
        started.elapsed().as_secs_f64()
    ))
}

/// How much of an image `sniff` reads and decodes to see its first tar
/// member: more than the compressed size of any zstd frame or xz block
/// that is decoded whole under the smallest memory budget, and of any
/// bzip2 block.
const SNIFF_SERVED: usize = 5 << 20;
const SNIFF_DECODED: usize = 64 << 10;

/// With `imprint.format=auto`: whether `source` is a root-filesystem
/// tarball (a tar whose first member is a directory, a link or a file in
/// a directory, compressed or not), and its type name (`tgz`, `tar-zst`,
/// …) if so. The bytes read to find out (the first 5 MiB) are put back in
/// front of the source.
pub fn sniff(mut source: Source) -> Result<(Option<&'static str>, Source)> {
    use std::io::Read;
    // A read error is not this function's to report: it goes back into
    // the stream at the offset it happened, where the deploy's fetch stage
    // reports it (and restarts from byte 0 when the file changed).
    let mut prefix = vec![0u8; SNIFF_SERVED];
    let mut filled = 0;
    let mut error = None;
    while filled < prefix.len() {
        match source.reader.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    prefix.truncate(filled);
    let compression = format::sniff_compression(&prefix);
    let mut decoded = Vec::with_capacity(SNIFF_DECODED);
    let input = std::io::Cursor::new(prefix.clone());
    // The smallest budget: a zstd frame or xz block with more than a
    // quarter of it (4 MiB) of output is streamed, so its first bytes come
    // out of the prefix; a smaller one is wholly inside the prefix.
    let one = OrderedConfig::new(1, MIN_MEMORY);
    let decoder = crate::pipeline::decode::decoder_with(compression, input, one);
    // The prefix ends mid-stream: the decoder's error there is expected.
    let _ = decoder.take(SNIFF_DECODED as u64).read_to_end(&mut decoded);
    let kind = format::looks_like_rootfs_tar(&decoded).then_some(match compression {
        Compression::None => "tar",
        Compression::Gzip => "tgz",
        Compression::Xz => "txz",
        Compression::Bzip2 => "tbz",
        Compression::Zstd => "tar-zst",
    });
    let rest = std::mem::replace(&mut source.reader, Box::new(std::io::empty()));
    source.reader = Box::new(std::io::Cursor::new(prefix).chain(ErrorFirst { error, rest }));
    Ok((kind, source))
}

/// `rest`, after handing out `error` (the one a read already hit) once.
struct ErrorFirst<R> {
    error: Option<std::io::Error>,
    rest: R,
}

impl<R: std::io::Read> std::io::Read for ErrorFirst<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.error.take() {
            Some(error) => Err(error),
            None => self.rest.read(buf),
        }
    }
}

/// What the plan needs of each disk: the target first, then the layout's
/// further disks by their selectors.
fn disk_facts(layout: &Layout, target: &Path) -> Result<Vec<DiskFacts>> {
    let mut paths = vec![target.to_owned()];
    for disk in layout.disks.iter().skip(1) {
        let Some(text) = &disk.disk else {
            bail!("the layout's second and later disks need a \"disk\" selector");
        };
        let selector = DiskSelector::parse(text)?;
        let excluded: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        let path = crate::disk::wait_for_disk(&selector, &excluded, MORE_DISKS)
            .with_context(|| format!("the layout's disk {text:?}"))?;
        if paths.contains(&path) {
            bail!("the layout's disk {text:?} is {} again", path.display());
        }
        paths.push(path);
    }
    paths.iter().map(|path| facts_of(path)).collect()
}

fn facts_of(path: &Path) -> Result<DiskFacts> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !meta.file_type().is_block_device() {
        bail!(
            "{} is not a block device: a root-filesystem deploy makes partitions and filesystems \
             (attach a file with losetup -P and deploy to the loop device)",
            path.display()
        );
    }
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let io =
        |e| anyhow::Error::new(e).context(format!("reading the geometry of {}", path.display()));
    Ok(DiskFacts {
        name: path.display().to_string(),
        size_bytes: sys::block::size_bytes(&file).map_err(io)?,
        logical_block_size: sys::block::logical_block_size(&file).map_err(io)?,
        physical_block_size: sys::block::physical_block_size(&file).map_err(io)?,
    })
}

/// New IDs on every deploy, different between machines deployed in the
/// same nanosecond.
fn seed(boot_mac: Option<[u8; 6]>) -> u64 {
    let clock = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        u64::try_from(d.as_nanos() & u128::from(u64::MAX)).unwrap_or(0)
    });
    boot_mac.map_or(0, layout::seed_from_mac)
        ^ clock.rotate_left(17)
        ^ u64::from(std::process::id())
}

/// Where the new tree is mounted while it is made.
fn mount_dir() -> PathBuf {
    let base = if Path::new("/run").is_dir() {
        PathBuf::from("/run")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("imprint-newroot-{}", std::process::id()))
}

/// `/etc/fstab` from the plan; an existing one is kept as `fstab.orig`.
fn write_fstab(plan: &Plan, root: &Path) -> Result<()> {
    let dir = RootDir::open(root)?;
    dir.mkdir_all("/etc", 0o755, 0, 0)?;
    if let Some(old) = dir.read("/etc/fstab", 1 << 20)? {
        dir.write_file("/etc/fstab.orig", &old, 0o644, 0, 0)?;
    }
    dir.write_file("/etc/fstab", layout::fstab(plan).as_bytes(), 0o644, 0, 0)
}

/// The root's disk, whether it can boot under BIOS, and the ESP's mount.
fn boot_targets(plan: &Plan) -> BootTargets {
    let root_disk = plan
        .disks
        .iter()
        .find(|d| d.partitions.iter().any(|p| p.mount.as_deref() == Some("/")))
        .unwrap_or(&plan.disks[0]);
    let esp = plan
        .disks
        .iter()
        .flat_map(|d| &d.partitions)
        .find(|p| p.kind == PartType::Esp && p.mount.is_some())
        .and_then(|p| p.mount.clone());
    let root = root_disk
        .partitions
        .iter()
        .find(|p| p.mount.as_deref() == Some("/"))
        .map(|p| format!("UUID={}", p.fs_id));
    BootTargets {
        disk: root_disk.name.clone(),
        bios: root_disk
            .partitions
            .iter()
            .any(|p| p.kind == PartType::BiosBoot),
        esp,
        root,
    }
}

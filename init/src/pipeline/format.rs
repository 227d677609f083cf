//! Image formats: the names a user may declare, sniffing from magic bytes,
//! and the rule that a declared format must agree with the bytes.

use std::fmt;

use anyhow::{Result, bail};

/// How the image bytes are compressed on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    None,
    Gzip,
    Xz,
    Zstd,
    Bzip2,
}

impl Compression {
    /// The short name used in imprint's own format names (`raw.tar.gz`).
    pub fn suffix(self) -> Option<&'static str> {
        match self {
            Compression::None => None,
            Compression::Gzip => Some("gz"),
            Compression::Xz => Some("xz"),
            Compression::Zstd => Some("zst"),
            Compression::Bzip2 => Some("bz2"),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
        })
    }
}

/// What the served bytes are: a raw disk image, possibly compressed,
/// possibly wrapped in a tar archive that holds exactly that one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageFormat {
    pub compression: Compression,
    pub tar: bool,
}

impl ImageFormat {
    pub const RAW: ImageFormat = ImageFormat {
        compression: Compression::None,
        tar: false,
    };

    pub fn new(compression: Compression, tar: bool) -> Self {
        ImageFormat { compression, tar }
    }

    /// imprint's own name for the format, as accepted by `parse_declared`.
    pub fn name(&self) -> String {
        let base = if self.tar { "raw.tar" } else { "raw" };
        match (self.compression.suffix(), self.tar) {
            (None, _) => base.to_owned(),
            (Some(suffix), true) => format!("{base}.{suffix}"),
            (Some(suffix), false) => suffix.to_owned(),
        }
    }
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.tar {
            "tar of a raw image"
        } else {
            "raw image"
        };
        match self.compression {
            Compression::None => f.write_str(what),
            c => write!(f, "{c}-compressed {what}"),
        }
    }
}

/// The format a user asked for (`imprint.format=`, `--format`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredFormat {
    /// Trust the magic bytes.
    Auto,
    /// `name` is the user's spelling (`dd-xz`), kept for error messages.
    Image { name: String, format: ImageFormat },
    /// A DRP rootfs tarball type (`tgz`, `tar-zst`, ...): a filesystem tree,
    /// not a disk image.
    Rootfs(String),
    /// A qcow2 image (`qcow2`), read by `crate::qcow2`; the user's spelling.
    Qcow2(String),
}

/// Names that declare a qcow2 image.
const QCOW2_NAMES: &[&str] = &["qcow2", "dd-qcow2"];

/// Image format names: imprint's own first, then DRP's `image-deploy/image-type`
/// values for disk images.
const IMAGE_NAMES: &[(&str, Compression, bool)] = &[
    ("raw", Compression::None, false),
    ("gz", Compression::Gzip, false),
    ("gzip", Compression::Gzip, false),
    ("xz", Compression::Xz, false),
    ("zst", Compression::Zstd, false),
    ("zstd", Compression::Zstd, false),
    ("bz2", Compression::Bzip2, false),
    ("bzip2", Compression::Bzip2, false),
    ("raw.tar", Compression::None, true),
    ("raw.tar.gz", Compression::Gzip, true),
    ("raw.tar.xz", Compression::Xz, true),
    ("raw.tar.bz2", Compression::Bzip2, true),
    ("raw.tar.zst", Compression::Zstd, true),
    ("dd-raw", Compression::None, false),
    ("dd-gz", Compression::Gzip, false),
    ("dd-xz", Compression::Xz, false),
    ("dd-bz2", Compression::Bzip2, false),
    ("dd-zst", Compression::Zstd, false),
    ("dd-tar", Compression::None, true),
    ("dd-tgz", Compression::Gzip, true),
    ("dd-txz", Compression::Xz, true),
    ("dd-tbz", Compression::Bzip2, true),
];

/// Root-filesystem tarball types: DRP's and RackN's image types, then the
/// long forms. Parsed so the error can say what they are.
const ROOTFS_NAMES: &[&str] = &[
    "tgz",
    "txz",
    "tbz",
    "tar",
    "tar-zst",
    "rootfs.tar",
    "rootfs.tar.gz",
    "rootfs.tar.xz",
    "rootfs.tar.bz2",
    "rootfs.tar.zst",
];

/// The compression a root-filesystem tarball type names: `tgz` gzip,
/// `txz` xz, `tbz` bzip2, `tar-zst` zstd, `tar` none; the long forms by
/// their suffix. `None` for a name that is not a rootfs type.
pub fn rootfs_compression(name: &str) -> Option<Compression> {
    let lower = name.trim().to_ascii_lowercase();
    if !ROOTFS_NAMES.contains(&lower.as_str()) {
        return None;
    }
    Some(match lower.as_str() {
        "tgz" | "rootfs.tar.gz" => Compression::Gzip,
        "txz" | "rootfs.tar.xz" => Compression::Xz,
        "tbz" | "rootfs.tar.bz2" => Compression::Bzip2,
        "tar-zst" | "rootfs.tar.zst" => Compression::Zstd,
        _ => Compression::None,
    })
}

/// Parses a declared format name, case-insensitively. An empty value means
/// `auto`, because templating tools render an unset parameter as empty.
pub fn parse_declared(name: &str) -> Result<DeclaredFormat> {
    let trimmed = name.trim();
    let lower = trimmed.to_ascii_lowercase();
    if lower.is_empty() || lower == "auto" {
        return Ok(DeclaredFormat::Auto);
    }
    if let Some(&(_, compression, tar)) = IMAGE_NAMES.iter().find(|(n, _, _)| *n == lower) {
        return Ok(DeclaredFormat::Image {
            name: trimmed.to_owned(),
            format: ImageFormat { compression, tar },
        });
    }
    if ROOTFS_NAMES.contains(&lower.as_str()) {
        return Ok(DeclaredFormat::Rootfs(trimmed.to_owned()));
    }
    if QCOW2_NAMES.contains(&lower.as_str()) {
        return Ok(DeclaredFormat::Qcow2(trimmed.to_owned()));
    }
    let accepted: Vec<&str> = std::iter::once("auto")
        .chain(IMAGE_NAMES.iter().map(|(n, _, _)| *n))
        .chain(QCOW2_NAMES.iter().copied())
        .chain(ROOTFS_NAMES.iter().copied())
        .collect();
    bail!(
        "unknown image format {trimmed:?}; accepted: {}",
        accepted.join(", ")
    )
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const XZ_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A zstd skippable frame: magic 0x184D2A50..=0x184D2A5F, little-endian.
pub fn is_zstd_skippable_magic(bytes: &[u8]) -> bool {
    matches!(bytes, [b0, 0x2a, 0x4d, 0x18, ..] if b0 & 0xf0 == 0x50)
}

/// The compression of a stream that starts with `prefix`. A prefix shorter
/// than a format's magic cannot be that format, so it sniffs as `None`.
pub fn sniff_compression(prefix: &[u8]) -> Compression {
    if prefix.starts_with(&GZIP_MAGIC) {
        Compression::Gzip
    } else if prefix.starts_with(&XZ_MAGIC) {
        Compression::Xz
    } else if prefix.starts_with(&ZSTD_MAGIC) || is_zstd_skippable_magic(prefix) {
        Compression::Zstd
    } else if matches!(prefix, [b'B', b'Z', b'h', b'1'..=b'9', ..]) {
        Compression::Bzip2
    } else {
        Compression::None
    }
}

pub const TAR_BLOCK: usize = 512;

/// Whether a decoded stream starting with `prefix` is a tar archive: the
/// ustar or GNU magic at offset 257 and a header checksum that adds up, so
/// a disk image (whose first sector is an MBR) never passes by accident.
pub fn looks_like_tar(prefix: &[u8]) -> bool {
    let Some(header) = prefix.get(..TAR_BLOCK) else {
        return false;
    };
    let magic = &header[257..265];
    let ustar = magic.starts_with(b"ustar\0");
    let gnu = magic == b"ustar  \0";
    (ustar || gnu) && tar_checksum_ok(header)
}

/// Whether the decoded start of a tar archive is a root-filesystem tarball
/// rather than a tar-wrapped disk image: its first member (after pax and
/// GNU long-name headers) is a directory, a link, or a file inside a
/// directory. A disk image's tar holds one regular file at the top.
/// `false` when the prefix ends before the first member is known.
pub fn looks_like_rootfs_tar(prefix: &[u8]) -> bool {
    let mut at = 0;
    while let Some(header) = prefix.get(at..at + TAR_BLOCK) {
        if !looks_like_tar(header) {
            return false;
        }
        let kind = header[156];
        if matches!(kind, b'x' | b'g' | b'L' | b'K') {
            let Some(size) = parse_octal(&header[124..136]) else {
                return false;
            };
            let Ok(size) = usize::try_from(size) else {
                return false;
            };
            at += TAR_BLOCK + size.div_ceil(TAR_BLOCK) * TAR_BLOCK;
            continue;
        }
        let name_end = header[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&header[..name_end]);
        let name = name.trim_start_matches("./");
        return matches!(kind, b'1' | b'2' | b'5')
            || name.is_empty()
            || name.trim_end_matches('/').contains('/');
    }
    false
}

/// Checks a 512-byte tar header's checksum field (octal, at 148..156)
/// against the byte sum with that field read as spaces. Some old writers
/// summed signed bytes, so either sum is accepted, as GNU tar does.
pub fn tar_checksum_ok(header: &[u8]) -> bool {
    if header.len() != TAR_BLOCK {
        return false;
    }
    let Some(stored) = parse_octal(&header[148..156]) else {
        return false;
    };
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in header.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(i8::from_ne_bytes([b]));
    }
    stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed)
}

/// A tar numeric field in octal: optional leading spaces, digits, then NUL
/// or space terminators. `None` when empty or malformed.
pub fn parse_octal(field: &[u8]) -> Option<u64> {
    let start = field.iter().position(|&b| b != b' ')?;
    let digits = &field[start..];
    let end = digits
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(digits.len());
    if end == 0 || digits[end..].iter().any(|&b| b != 0 && b != b' ') {
        return None;
    }
    digits[..end].iter().try_fold(0u64, |acc, &b| match b {
        b'0'..=b'7' => acc.checked_mul(8)?.checked_add(u64::from(b - b'0')),
        _ => None,
    })
}

/// Checks a sniffed format against the declared one.
pub fn reconcile(declared: &DeclaredFormat, sniffed: ImageFormat) -> Result<ImageFormat> {
    match declared {
        DeclaredFormat::Auto => Ok(sniffed),
        DeclaredFormat::Image { format, .. } if *format == sniffed => Ok(sniffed),
        DeclaredFormat::Image { name, format } => {
            bail!("declared format {name} ({format}) but the image is a {sniffed}")
        }
        DeclaredFormat::Rootfs(name) => {
            bail!("{name:?} is a root-filesystem tarball type, not a disk image format")
        }
        DeclaredFormat::Qcow2(name) => {
            bail!("declared format {name} (qcow2 image) but the image is a {sniffed}")
        }
    }
}

/// Checks a served qcow2 image (sniffed by its `QFI\xfb` magic) against
/// what was declared: `format=qcow2`, or without a declaration a URL whose
/// file name says qcow2, `.img` (cloud images: Ubuntu's `.img` files are
/// qcow2), or nothing imprint knows.
pub fn check_declared_qcow2(declared: &DeclaredFormat, url: &str) -> Result<()> {
    match declared {
        DeclaredFormat::Auto | DeclaredFormat::Qcow2(_) => {}
        DeclaredFormat::Image { name, format } => {
            bail!("declared format {name} ({format}) but the image is a qcow2 image")
        }
        DeclaredFormat::Rootfs(name) => {
            bail!("{name:?} is a root-filesystem tarball type, but the image is a qcow2 image")
        }
    }
    if *declared != DeclaredFormat::Auto {
        return Ok(());
    }
    match url_suffix(url) {
        None | Some(UrlSuffix::Qcow2) => Ok(()),
        Some(UrlSuffix::Image { suffix: ".img", .. }) => Ok(()),
        Some(UrlSuffix::Image { suffix, .. } | UrlSuffix::Unsupported { suffix, .. }) => bail!(
            "the URL's file name ends in {suffix} but the image is a qcow2 image; set \
             imprint.format=qcow2 to deploy it anyway"
        ),
    }
}

/// What the file name at the end of an image URL says the bytes are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlSuffix {
    /// `.xz`, `.img`, `.tar.gz`...: the compression, and for the tar
    /// suffixes (`.tar*`, `.tgz`, `.txz`, `.tbz`) that a tar wraps the image.
    Image {
        suffix: &'static str,
        compression: Compression,
        tar: bool,
    },
    /// `.qcow2`: a qcow2 image.
    Qcow2,
    /// A format imprint does not decode, named for the error.
    Unsupported {
        suffix: &'static str,
        what: &'static str,
    },
}

/// File name suffixes that declare a format, longest first so `.tar.gz`
/// wins over `.gz`. `.raw.xz` and `.img.gz` are their last suffix.
const IMAGE_SUFFIXES: &[(&str, Compression, bool)] = &[
    (".tar.gz", Compression::Gzip, true),
    (".tar.xz", Compression::Xz, true),
    (".tar.bz2", Compression::Bzip2, true),
    (".tar.zst", Compression::Zstd, true),
    (".tgz", Compression::Gzip, true),
    (".txz", Compression::Xz, true),
    (".tbz", Compression::Bzip2, true),
    (".tbz2", Compression::Bzip2, true),
    (".tzst", Compression::Zstd, true),
    (".tar", Compression::None, true),
    (".gz", Compression::Gzip, false),
    (".xz", Compression::Xz, false),
    (".zst", Compression::Zstd, false),
    (".bz2", Compression::Bzip2, false),
    (".raw", Compression::None, false),
    (".img", Compression::None, false),
];

/// Suffixes of formats a user may reasonably serve but imprint does not
/// decode: refused by name rather than written to the disk as raw bytes.
const UNSUPPORTED_SUFFIXES: &[(&str, &str)] = &[
    (".lz", "lzip compression"),
    (".lzma", "LZMA_Alone (.lzma) compression"),
    (".lz4", "lz4 compression"),
];

/// Magic bytes of those formats: lzip (lzip manual, "File format"), the
/// lz4 frame (lz4 Frame format §"General structure"). qcow2 is sniffed
/// before these are checked (`crate::qcow2`).
const UNSUPPORTED_MAGICS: &[(&[u8], &str)] = &[
    (b"LZIP", "lzip compression"),
    (&[0x04, 0x22, 0x4d, 0x18], "lz4 compression"),
];

/// The format the last path segment of `url` declares, ignoring the query
/// (`?sig=...`) and fragment, case-insensitively. `None` when its name has
/// no suffix imprint knows.
pub fn url_suffix(url: &str) -> Option<UrlSuffix> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path).to_ascii_lowercase();
    if name.ends_with(".qcow2") {
        return Some(UrlSuffix::Qcow2);
    }
    if let Some(&(suffix, compression, tar)) =
        IMAGE_SUFFIXES.iter().find(|(s, _, _)| name.ends_with(s))
    {
        return Some(UrlSuffix::Image {
            suffix,
            compression,
            tar,
        });
    }
    UNSUPPORTED_SUFFIXES
        .iter()
        .find(|(s, _)| name.ends_with(s))
        .map(|&(suffix, what)| UrlSuffix::Unsupported { suffix, what })
}

/// Checks what the served bytes turned out to be (`sniffed`, from the
/// magic at the start of `served`) against what the user declared: an
/// explicit `imprint.format=` wins; without one, the URL's file name
/// suffix is a declaration too, so `disk.raw.xz` with a damaged magic is
/// an error rather than a raw image. A format imprint does not decode is
/// refused by name.
pub fn check_declared(
    declared: &DeclaredFormat,
    url: &str,
    served: &[u8],
    sniffed: ImageFormat,
) -> Result<ImageFormat> {
    if *declared != DeclaredFormat::Auto {
        return reconcile(declared, sniffed);
    }
    if sniffed.compression == Compression::None {
        if let Some((_, what)) = UNSUPPORTED_MAGICS
            .iter()
            .find(|(m, _)| served.starts_with(m))
        {
            bail!("the image uses {what}, which is not supported; recompress it with xz or zstd");
        }
    }
    match url_suffix(url) {
        None => Ok(sniffed),
        Some(UrlSuffix::Unsupported { suffix, what }) => bail!(
            "the URL's file name ends in {suffix}: {what} is not supported; \
             recompress the image with xz or zstd"
        ),
        Some(UrlSuffix::Qcow2) => bail!(
            "the URL's file name ends in .qcow2 (qcow2 image) but the image is a {sniffed}; \
             set imprint.format= to deploy it anyway"
        ),
        Some(UrlSuffix::Image {
            suffix,
            compression,
            tar,
        }) => {
            if compression == sniffed.compression && (!tar || sniffed.tar) {
                return Ok(sniffed);
            }
            let said = if tar {
                ImageFormat::new(compression, true).to_string()
            } else if compression == Compression::None {
                "uncompressed image".to_owned()
            } else {
                format!("{compression}-compressed image")
            };
            bail!(
                "the URL's file name ends in {suffix} ({said}) but the image is a {sniffed}; \
                 set imprint.format= to deploy it anyway"
            )
        }
    }
}

/// The smallest raw image imprint writes: one sector. A smaller file served
/// as raw is an error page, a truncated download or a compressed file whose
/// magic is damaged, never a disk.
pub const MIN_RAW_IMAGE: usize = 512;

/// Refuses an image with nothing to write, and a raw one smaller than a
/// sector. `image` is the start of the image as it will be written (up to
/// `MIN_RAW_IMAGE` bytes; fewer only when the image ends there).
pub fn check_image_size(format: ImageFormat, image: &[u8]) -> Result<()> {
    if image.is_empty() {
        bail!("the {format} is empty: nothing to write");
    }
    if format == ImageFormat::RAW && image.len() < MIN_RAW_IMAGE {
        bail!(
            "the raw image is {} bytes, smaller than one {MIN_RAW_IMAGE}-byte sector: \
             not a disk image",
            image.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn image(compression: Compression, tar: bool) -> ImageFormat {
        ImageFormat { compression, tar }
    }

    fn declared(name: &str) -> ImageFormat {
        match parse_declared(name).unwrap() {
            DeclaredFormat::Image { name: n, format } => {
                assert_eq!(n, name.trim());
                format
            }
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn every_drp_image_type_maps_to_its_format() {
        use Compression::*;
        let table = [
            ("dd-raw", image(None, false)),
            ("dd-gz", image(Gzip, false)),
            ("dd-xz", image(Xz, false)),
            ("dd-bz2", image(Bzip2, false)),
            ("dd-zst", image(Zstd, false)),
            ("dd-tar", image(None, true)),
            ("dd-tgz", image(Gzip, true)),
            ("dd-txz", image(Xz, true)),
            ("dd-tbz", image(Bzip2, true)),
        ];
        for (name, want) in table {
            assert_eq!(declared(name), want, "{name}");
        }
    }

    #[test]
    fn every_imprint_name_maps_to_its_format() {
        use Compression::*;
        let table = [
            ("raw", image(None, false)),
            ("gz", image(Gzip, false)),
            ("gzip", image(Gzip, false)),
            ("xz", image(Xz, false)),
            ("zst", image(Zstd, false)),
            ("zstd", image(Zstd, false)),
            ("bz2", image(Bzip2, false)),
            ("bzip2", image(Bzip2, false)),
            ("raw.tar", image(None, true)),
            ("raw.tar.gz", image(Gzip, true)),
            ("raw.tar.xz", image(Xz, true)),
            ("raw.tar.bz2", image(Bzip2, true)),
            ("raw.tar.zst", image(Zstd, true)),
            ("DD-XZ", image(Xz, false)),
            (" zstd ", image(Zstd, false)),
        ];
        for (name, want) in table {
            assert_eq!(declared(name), want, "{name}");
        }
        // Every format's canonical name parses back to it.
        for c in [None, Gzip, Xz, Zstd, Bzip2] {
            for tar in [false, true] {
                assert_eq!(declared(&image(c, tar).name()), image(c, tar));
            }
        }
    }

    #[test]
    fn auto_and_empty_mean_auto() {
        for name in ["auto", "AUTO", "", "  "] {
            assert_eq!(
                parse_declared(name).unwrap(),
                DeclaredFormat::Auto,
                "{name:?}"
            );
        }
    }

    #[test]
    fn rootfs_types_parse_and_are_not_disk_image_formats() {
        for &name in ROOTFS_NAMES {
            let d = parse_declared(name).unwrap();
            assert_eq!(d, DeclaredFormat::Rootfs(name.to_owned()));
            let err = reconcile(&d, ImageFormat::RAW).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("\"{name}\" is a root-filesystem tarball type, not a disk image format")
            );
        }
    }

    #[test]
    fn a_rootfs_tar_is_told_from_a_tar_wrapped_disk_image() {
        let dir = tempfile::tempdir().unwrap();
        let tar = |args: &[&str]| {
            let out = Command::new("tar")
                .current_dir(dir.path())
                .args(["-cf", "-"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success());
            out.stdout
        };
        std::fs::write(dir.path().join("disk.raw"), vec![1u8; 4096]).unwrap();
        std::fs::create_dir_all(dir.path().join("root/etc")).unwrap();
        std::fs::write(dir.path().join("root/etc/hostname"), "x\n").unwrap();
        let long = "d".repeat(120);
        std::fs::create_dir_all(dir.path().join(&long)).unwrap();
        // A disk image: one file at the top, in each tar format.
        for format in ["gnu", "pax", "ustar"] {
            let archive = tar(&["--format", format, "disk.raw"]);
            assert!(!looks_like_rootfs_tar(&archive), "{format}");
        }
        // Trees: `.` first, a directory first, a file in a directory, and a
        // directory behind a GNU long-name header.
        assert!(looks_like_rootfs_tar(&tar(&["-C", "root", "."])));
        assert!(looks_like_rootfs_tar(&tar(&["root"])));
        assert!(looks_like_rootfs_tar(&tar(&[
            "--format",
            "pax",
            "root/etc/hostname"
        ])));
        assert!(looks_like_rootfs_tar(&tar(&["--format", "gnu", &long])));
        // Not a tar, or cut before the first member.
        assert!(!looks_like_rootfs_tar(b"hello"));
        assert!(!looks_like_rootfs_tar(
            &tar(&["--format", "gnu", &long])[..512]
        ));
    }

    #[test]
    fn unknown_name_lists_accepted_names() {
        let err = parse_declared("dd-lz4").unwrap_err().to_string();
        assert!(
            err.starts_with("unknown image format \"dd-lz4\"; accepted: auto, raw, gz"),
            "{err}"
        );
        for name in ["dd-tbz", "raw.tar.zst", "tar-zst", "zstd"] {
            assert!(err.contains(name), "{err}");
        }
    }

    #[test]
    fn display_is_for_humans() {
        assert_eq!(image(Compression::None, false).to_string(), "raw image");
        assert_eq!(
            image(Compression::Zstd, false).to_string(),
            "zstd-compressed raw image"
        );
        assert_eq!(
            image(Compression::Gzip, true).to_string(),
            "gzip-compressed tar of a raw image"
        );
        assert_eq!(
            image(Compression::None, true).to_string(),
            "tar of a raw image"
        );
    }

    #[test]
    fn reconcile_accepts_agreement_and_names_both_on_mismatch() {
        let auto = DeclaredFormat::Auto;
        let zst = image(Compression::Zstd, false);
        assert_eq!(reconcile(&auto, zst).unwrap(), zst);
        assert_eq!(
            reconcile(&parse_declared("dd-zst").unwrap(), zst).unwrap(),
            zst
        );
        let err = reconcile(&parse_declared("dd-xz").unwrap(), zst).unwrap_err();
        assert_eq!(
            err.to_string(),
            "declared format dd-xz (xz-compressed raw image) but the image is a \
             zstd-compressed raw image"
        );
        // A tar declared but a bare image served (and vice versa) is a mismatch too.
        let err = reconcile(
            &parse_declared("dd-tgz").unwrap(),
            image(Compression::Gzip, false),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "declared format dd-tgz (gzip-compressed tar of a raw image) but the image is a \
             gzip-compressed raw image"
        );
        assert!(
            reconcile(
                &parse_declared("raw").unwrap(),
                image(Compression::None, true)
            )
            .is_err()
        );
    }

    #[test]
    fn sniffs_magic_bytes() {
        use Compression::*;
        let cases: [(&[u8], Compression); 12] = [
            (&[0x1f, 0x8b, 0x08, 0x00], Gzip),
            (&[0x1f, 0x8b], Gzip),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x00, 0x00, 0x04], Xz),
            (&[0x28, 0xb5, 0x2f, 0xfd, 0x24], Zstd),
            (&[0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0], Zstd),
            (&[0x5f, 0x2a, 0x4d, 0x18], Zstd),
            (b"BZh91AY&SY", Bzip2),
            (b"BZh1", Bzip2),
            (b"BZh0", None),
            (&[0x60, 0x2a, 0x4d, 0x18], None),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0x01], None),
            (&[0u8; 512], None),
        ];
        for (prefix, want) in cases {
            assert_eq!(sniff_compression(prefix), want, "{prefix:02x?}");
        }
    }

    #[test]
    fn too_short_prefixes_sniff_as_uncompressed() {
        let magics: [&[u8]; 5] = [
            &[0x1f, 0x8b],
            &[0xfd, b'7', b'z', b'X', b'Z', 0x00],
            &[0x28, 0xb5, 0x2f, 0xfd],
            &[0x50, 0x2a, 0x4d, 0x18],
            b"BZh9",
        ];
        for magic in magics {
            for len in 0..magic.len() {
                assert_eq!(
                    sniff_compression(&magic[..len]),
                    Compression::None,
                    "{:02x?}",
                    &magic[..len]
                );
            }
        }
    }

    fn make_tar(format: &str, name: &str, content: &[u8]) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(name), content).unwrap();
        let out = Command::new("tar")
            .arg(format!("--format={format}"))
            .arg("-C")
            .arg(dir.path())
            .args(["-cf", "-", name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn detects_tar_archives_made_by_gnu_tar() {
        for format in ["gnu", "ustar", "pax", "posix", "oldgnu"] {
            let tar = make_tar(format, "disk.raw", &[0xaa; 1000]);
            assert!(looks_like_tar(&tar), "{format}");
            assert!(looks_like_tar(&tar[..TAR_BLOCK]), "{format}");
            assert!(
                !looks_like_tar(&tar[..TAR_BLOCK - 1]),
                "{format}: short prefix"
            );
        }
    }

    #[test]
    fn tar_with_a_corrupt_header_is_not_a_tar() {
        let mut tar = make_tar("gnu", "disk.raw", b"x");
        tar[0] ^= 1;
        assert!(!looks_like_tar(&tar));
    }

    /// The first sector of a disk made by sfdisk-like tools: an MBR with a
    /// protective GPT entry, then the GPT header, plus deliberately hostile
    /// variants that carry the tar magic but not a valid checksum.
    #[test]
    fn disk_images_never_look_like_tar() {
        let mut mbr = vec![0u8; 1024];
        mbr[0..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
        mbr[446 + 4] = 0xee;
        mbr[446 + 8] = 1;
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr[512..520].copy_from_slice(b"EFI PART");
        assert!(!looks_like_tar(&mbr));
        assert!(!looks_like_tar(&[0u8; 4096]));
        let mut hostile = mbr.clone();
        hostile[257..265].copy_from_slice(b"ustar\x0000");
        assert!(!looks_like_tar(&hostile));
        hostile[148..156].copy_from_slice(b"0000000\0");
        assert!(!looks_like_tar(&hostile));
        // An all-zero block with only the magic and no checksum digits.
        let mut zeros = vec![0u8; 512];
        zeros[257..263].copy_from_slice(b"ustar\0");
        assert!(!looks_like_tar(&zeros));
    }

    #[test]
    fn detects_tar_in_a_real_ext4_image_only_when_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("disk.raw");
        let made = Command::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .arg("4M")
            .output();
        let Ok(made) = made else {
            eprintln!("mkfs.ext4 not available; skipping");
            return;
        };
        assert!(made.status.success());
        let bytes = std::fs::read(&img).unwrap();
        assert!(!looks_like_tar(&bytes[..TAR_BLOCK * 4]));
        assert_eq!(sniff_compression(&bytes[..64]), Compression::None);
        let tar = make_tar("gnu", "disk.raw", &bytes);
        assert!(looks_like_tar(&tar));
    }

    #[test]
    fn url_suffixes_declare_formats() {
        use Compression::*;
        let image = |suffix, compression, tar| {
            Some(UrlSuffix::Image {
                suffix,
                compression,
                tar,
            })
        };
        let table = [
            ("http://h/disk.raw.xz", image(".xz", Xz, false)),
            (
                "http://h/disk.img.gz?sig=abc.raw&x=1",
                image(".gz", Gzip, false),
            ),
            (
                "https://h/a/b/DISK.ZST#frag.img",
                image(".zst", Zstd, false),
            ),
            ("file:///srv/disk.tar.gz", image(".tar.gz", Gzip, true)),
            ("http://h/disk.tgz", image(".tgz", Gzip, true)),
            ("http://h/disk.txz", image(".txz", Xz, true)),
            ("http://h/disk.tbz", image(".tbz", Bzip2, true)),
            ("http://h/disk.tar.zst", image(".tar.zst", Zstd, true)),
            ("http://h/disk.tar", image(".tar", None, true)),
            ("http://h/disk.bz2", image(".bz2", Bzip2, false)),
            ("http://h/disk.raw", image(".raw", None, false)),
            ("http://h/disk.img", image(".img", None, false)),
            (
                "http://h/disk.lz",
                Some(UrlSuffix::Unsupported {
                    suffix: ".lz",
                    what: "lzip compression",
                }),
            ),
            ("http://h/download?file=disk.xz", Option::None),
            ("http://h/disk.xz/", Option::None),
            ("http://h/disk", Option::None),
            ("http://h/disk.iso", Option::None),
            ("http://h/disk.xzz", Option::None),
        ];
        for (url, want) in table {
            assert_eq!(url_suffix(url), want, "{url}");
        }
    }

    /// The error `check_declared` gives without an explicit format.
    fn auto_error(url: &str, served: &[u8], sniffed: ImageFormat) -> anyhow::Error {
        check_declared(&DeclaredFormat::Auto, url, served, sniffed).unwrap_err()
    }

    #[test]
    fn a_url_suffix_that_disagrees_with_the_bytes_names_both() {
        let xz_magic_damaged = [0xfd, b'7', b'z', b'X', b'Z', 0x01];
        let err = auto_error(
            "file:///c/bad-0-header_magic.xz",
            &xz_magic_damaged,
            ImageFormat::RAW,
        );
        assert_eq!(
            err.to_string(),
            "the URL's file name ends in .xz (xz-compressed image) but the image is a raw \
             image; set imprint.format= to deploy it anyway"
        );
        let err = auto_error(
            "http://h/disk.img",
            &ZSTD_MAGIC,
            image(Compression::Zstd, false),
        );
        assert!(
            err.to_string().contains(".img (uncompressed image)"),
            "{err}"
        );
        let err = auto_error(
            "http://h/disk.tgz?sig=1",
            &GZIP_MAGIC,
            image(Compression::Gzip, false),
        );
        assert!(
            err.to_string().contains(
                ".tgz (gzip-compressed tar of a raw image) but the image is a \
                 gzip-compressed raw image"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_url_suffix_that_agrees_passes_and_an_explicit_format_wins() {
        let xz = image(Compression::Xz, false);
        let ok = |declared: &DeclaredFormat, url, sniffed| {
            check_declared(declared, url, &[], sniffed).unwrap()
        };
        assert_eq!(ok(&DeclaredFormat::Auto, "http://h/disk.raw.xz", xz), xz);
        // A tar inside a plain `.xz` is still an xz file.
        let txz = image(Compression::Xz, true);
        assert_eq!(ok(&DeclaredFormat::Auto, "http://h/disk.xz", txz), txz);
        assert_eq!(ok(&DeclaredFormat::Auto, "http://h/disk.txz", txz), txz);
        assert_eq!(ok(&DeclaredFormat::Auto, "http://h/disk", xz), xz);
        let raw = parse_declared("raw").unwrap();
        assert_eq!(
            ok(&raw, "http://h/disk.xz", ImageFormat::RAW),
            ImageFormat::RAW
        );
        let err = check_declared(
            &parse_declared("dd-zst").unwrap(),
            "http://h/disk.xz",
            &[],
            xz,
        )
        .unwrap_err();
        assert!(
            err.to_string().starts_with("declared format dd-zst"),
            "{err}"
        );
    }

    #[test]
    fn formats_imprint_does_not_decode_are_refused_by_name() {
        let err = auto_error("http://h/disk", b"LZIP\x01\x0c\x00", ImageFormat::RAW);
        assert_eq!(
            err.to_string(),
            "the image uses lzip compression, which is not supported; recompress it with xz \
             or zstd"
        );
        let err = auto_error(
            "http://h/disk.lzma",
            &[0x5d, 0, 0, 0x80, 0],
            ImageFormat::RAW,
        );
        assert_eq!(
            err.to_string(),
            "the URL's file name ends in .lzma: LZMA_Alone (.lzma) compression is not \
             supported; recompress the image with xz or zstd"
        );
        let qcow = auto_error("http://h/vm.qcow2", b"QFI\xfb\0\0\0\x03", ImageFormat::RAW);
        assert!(qcow.to_string().contains("qcow2"), "{qcow}");
    }

    #[test]
    fn qcow2_is_declared_by_name_or_file_name_and_img_may_be_qcow2() {
        assert_eq!(
            parse_declared(" QCOW2 ").unwrap(),
            DeclaredFormat::Qcow2("QCOW2".to_owned())
        );
        let auto = DeclaredFormat::Auto;
        for url in [
            "http://h/vm.qcow2",
            "http://h/noble-server-cloudimg-amd64.img?x=1",
            "http://h/download",
        ] {
            check_declared_qcow2(&auto, url).unwrap();
        }
        let e = check_declared_qcow2(&auto, "http://h/disk.raw").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the URL's file name ends in .raw but the image is a qcow2 image; set \
             imprint.format=qcow2 to deploy it anyway"
        );
        let declared = parse_declared("qcow2").unwrap();
        check_declared_qcow2(&declared, "http://h/disk.raw").unwrap();
        let e = check_declared_qcow2(&parse_declared("dd-xz").unwrap(), "http://h/x").unwrap_err();
        assert!(e.to_string().contains("declared format dd-xz"), "{e}");
        // qcow2 declared, something else served.
        let e = reconcile(&declared, ImageFormat::RAW).unwrap_err();
        assert_eq!(
            e.to_string(),
            "declared format qcow2 (qcow2 image) but the image is a raw image"
        );
        let e =
            check_declared(&auto, "http://h/vm.qcow2", &[0; 512], ImageFormat::RAW).unwrap_err();
        assert!(
            e.to_string().contains("ends in .qcow2 (qcow2 image)"),
            "{e}"
        );
    }

    #[test]
    fn empty_images_and_raw_images_under_a_sector_are_refused() {
        assert_eq!(
            check_image_size(ImageFormat::RAW, &[0; 511])
                .unwrap_err()
                .to_string(),
            "the raw image is 511 bytes, smaller than one 512-byte sector: not a disk image"
        );
        check_image_size(ImageFormat::RAW, &[0; 512]).unwrap();
        let xz = image(Compression::Xz, false);
        assert_eq!(
            check_image_size(xz, &[]).unwrap_err().to_string(),
            "the xz-compressed raw image is empty: nothing to write"
        );
        // A compressed image says what it is: a small one is what was asked for.
        check_image_size(xz, b"Hello\nWorld!\n").unwrap();
    }

    #[test]
    fn parses_octal_fields() {
        assert_eq!(parse_octal(b"0000644\0"), Some(0o644));
        assert_eq!(parse_octal(b"   1750 \0"), Some(0o1750));
        assert_eq!(parse_octal(b"00000001750\0"), Some(0o1750));
        assert_eq!(parse_octal(b"77777777777\0"), Some(0o77777777777));
        assert_eq!(parse_octal(b"\0\0\0\0"), None);
        assert_eq!(parse_octal(b"0008\0"), None);
        assert_eq!(parse_octal(b"12 3\0"), None);
        assert_eq!(parse_octal(b""), None);
    }
}

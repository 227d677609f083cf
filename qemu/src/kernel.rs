//! The uncompressed, PVH-bootable `vmlinux` inside a bzImage.
//!
//! Under TCG a bzImage spends seconds decompressing itself in emulated code; QEMU can
//! instead load the ELF `vmlinux` directly and enter it through the PVH entry point
//! (CONFIG_PVH), which boots roughly twice as fast.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result, bail, ensure};
use lzma_rust2::XzReader;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the note QEMU looks for to boot an ELF kernel via PVH.
const PVH_NOTE_TYPE: u32 = 18;
const PT_NOTE: u32 = 4;
/// The start of an xz stream (xz-file-format.txt §2.1.1.1).
const XZ_MAGIC: [u8; 6] = [0xFD, b'7', b'z', b'X', b'Z', 0x00];

/// Returns the path of an uncompressed PVH `vmlinux` extracted from `bzimage`, cached
/// in `cache_dir` under a name keyed by the bzImage's name, size and mtime so repeated
/// test runs reuse it. Pass the result to [`crate::VmBuilder::kernel`].
///
/// Only xz payloads are supported (what Debian ships). The error says why extraction
/// failed so callers can fall back to booting the bzImage itself.
pub fn fast_boot_kernel(bzimage: &Path, cache_dir: &Path) -> Result<PathBuf> {
    let context = || format!("extracting vmlinux from {}", bzimage.display());
    let metadata = fs::metadata(bzimage).with_context(context)?;
    let mtime = metadata.modified().with_context(context)?;
    let mtime_nanos = mtime
        .duration_since(UNIX_EPOCH)
        .map(|age| age.as_nanos())
        .unwrap_or(0);
    let name = bzimage
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    let cached = cache_dir.join(format!("{name}.{}-{mtime_nanos}.vmlinux", metadata.len()));
    if cached.is_file() {
        return Ok(cached);
    }
    let image = fs::read(bzimage).with_context(context)?;
    let vmlinux = extract_vmlinux(&image).with_context(context)?;
    fs::create_dir_all(cache_dir)
        .with_context(|| format!("creating cache directory {}", cache_dir.display()))?;
    // Tests run in parallel: write a private temporary file, then rename it into place
    // so no reader ever sees a half-written kernel.
    let mut temporary = tempfile::NamedTempFile::new_in(cache_dir)
        .with_context(|| format!("creating a temporary file in {}", cache_dir.display()))?;
    temporary
        .write_all(&vmlinux)
        .with_context(|| format!("writing {}", cached.display()))?;
    temporary
        .persist(&cached)
        .with_context(|| format!("writing {}", cached.display()))?;
    Ok(cached)
}

/// Finds the compressed payload in a bzImage, decompresses it and checks that the
/// result is an ELF with a PVH entry note.
pub fn extract_vmlinux(bzimage: &[u8]) -> Result<Vec<u8>> {
    let payload = compressed_payload(bzimage);
    let Some(start) = find(payload, &XZ_MAGIC) else {
        bail!(
            "no xz stream in the kernel payload ({})",
            describe_payload(payload)
        );
    };
    let vmlinux = decode_first_xz_stream(&payload[start..])
        .with_context(|| format!("decoding the xz stream at payload byte {start}"))?;
    ensure!(
        vmlinux.starts_with(b"\x7fELF"),
        "the decompressed payload is not an ELF file"
    );
    ensure!(
        has_pvh_note(&vmlinux).context("reading the ELF program headers")?,
        "vmlinux has no PVH entry note (kernel built without CONFIG_PVH?)"
    );
    Ok(vmlinux)
}

/// Decodes the xz stream at the start of `input`. The kernel's payload is filtered
/// with x86 BCJ (`scripts/xz_wrap.sh`) and followed by its 4-byte decompressed size;
/// lzma-rust2's single-stream reader undoes the filter, verifies the block checks and
/// stops at the stream footer, so the bytes after it are never read.
fn decode_first_xz_stream(input: &[u8]) -> Result<Vec<u8>> {
    let mut output = Vec::new();
    XzReader::new(input, false).read_to_end(&mut output)?;
    Ok(output)
}

/// The payload as the boot protocol describes it (so a stray magic in the setup code
/// cannot match); the whole file when the header is absent or too old to say.
fn compressed_payload(bzimage: &[u8]) -> &[u8] {
    let read_u32 = |offset: usize| {
        let bytes = bzimage.get(offset..offset + 4)?;
        usize::try_from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])).ok()
    };
    let has_header = bzimage.get(0x202..0x206) == Some(b"HdrS");
    let version = bzimage
        .get(0x206..0x208)
        .map(|bytes| u16::from_le_bytes([bytes[0], bytes[1]]));
    if !has_header || version < Some(0x208) {
        return bzimage;
    }
    // Boot protocol: setup_sects == 0 means 4; protected-mode code follows the setup.
    let setup_sectors = match bzimage[0x1f1] {
        0 => 4,
        sectors => usize::from(sectors),
    };
    let protected_mode_start = (setup_sectors + 1) * 512;
    let (Some(offset), Some(length)) = (read_u32(0x248), read_u32(0x24c)) else {
        return bzimage;
    };
    let start = protected_mode_start + offset;
    bzimage.get(start..start + length).unwrap_or(bzimage)
}

fn describe_payload(payload: &[u8]) -> &'static str {
    const KNOWN: [(&[u8], &str); 6] = [
        (&[0x1F, 0x8B], "gzip payload, only xz is supported"),
        (
            &[0x28, 0xB5, 0x2F, 0xFD],
            "zstd payload, only xz is supported",
        ),
        (b"BZh", "bzip2 payload, only xz is supported"),
        (
            &[0x02, 0x21, 0x4C, 0x18],
            "lz4 payload, only xz is supported",
        ),
        (
            &[0x89, b'L', b'Z', b'O'],
            "lzo payload, only xz is supported",
        ),
        (&[0x5D, 0x00, 0x00], "lzma payload, only xz is supported"),
    ];
    KNOWN
        .iter()
        .find(|(magic, _)| payload.starts_with(magic))
        .map_or("unknown payload format", |(_, description)| description)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Walks the PT_NOTE segments of a little-endian ELF64 file for `Xen` note type 18.
fn has_pvh_note(elf: &[u8]) -> Result<bool> {
    let bytes = |offset: u64, length: u64| -> Result<&[u8]> {
        let start = usize::try_from(offset)?;
        let end = start
            .checked_add(usize::try_from(length)?)
            .context("offset overflow")?;
        elf.get(start..end)
            .with_context(|| format!("elf truncated at byte {start}"))
    };
    let u16_at =
        |offset: u64| -> Result<u16> { Ok(u16::from_le_bytes(bytes(offset, 2)?.try_into()?)) };
    let u32_at =
        |offset: u64| -> Result<u32> { Ok(u32::from_le_bytes(bytes(offset, 4)?.try_into()?)) };
    let u64_at =
        |offset: u64| -> Result<u64> { Ok(u64::from_le_bytes(bytes(offset, 8)?.try_into()?)) };
    ensure!(elf.get(4) == Some(&2), "not a 64-bit ELF file");
    ensure!(elf.get(5) == Some(&1), "not a little-endian ELF file");
    let program_headers = u64_at(0x20)?;
    let entry_size = u64::from(u16_at(0x36)?);
    let entry_count = u64::from(u16_at(0x38)?);
    for index in 0..entry_count {
        let header = program_headers + index * entry_size;
        if u32_at(header)? != PT_NOTE {
            continue;
        }
        let mut note = u64_at(header + 8)?;
        let end = note + u64_at(header + 0x20)?;
        while note + 12 <= end {
            let name_size = u64::from(u32_at(note)?);
            let description_size = u64::from(u32_at(note + 4)?);
            let note_type = u32_at(note + 8)?;
            let name = bytes(note + 12, name_size)?;
            if note_type == PVH_NOTE_TYPE && name == b"Xen\0" {
                return Ok(true);
            }
            note += 12 + name_size.next_multiple_of(4) + description_size.next_multiple_of(4);
        }
    }
    Ok(false)
}

#[cfg(test)]
pub(crate) mod tests {
    use lzma_rust2::{CheckType, FilterType, XzOptions, XzWriter};

    use super::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    pub(crate) fn fake_elf(notes: &[(&[u8], u32)]) -> Vec<u8> {
        let mut note_bytes = Vec::new();
        for (name, note_type) in notes {
            let name_size = u32::try_from(name.len()).unwrap();
            note_bytes.extend_from_slice(&name_size.to_le_bytes());
            note_bytes.extend_from_slice(&4u32.to_le_bytes());
            note_bytes.extend_from_slice(&note_type.to_le_bytes());
            note_bytes.extend_from_slice(name);
            note_bytes.resize(note_bytes.len().next_multiple_of(4), 0);
            note_bytes.extend_from_slice(&0x0100_0000u32.to_le_bytes());
        }
        let mut elf = vec![0u8; 64 + 56];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        elf[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        let program_header = &mut elf[64..];
        program_header[..4].copy_from_slice(&PT_NOTE.to_le_bytes());
        program_header[8..16].copy_from_slice(&120u64.to_le_bytes());
        let note_length = u64::try_from(note_bytes.len()).unwrap();
        program_header[0x20..0x28].copy_from_slice(&note_length.to_le_bytes());
        elf.extend_from_slice(&note_bytes);
        // Code-like filler so the image is not trivially small.
        elf.extend((0..20_000u32).map(|index| u8::try_from(index * 7 % 256).unwrap()));
        elf
    }

    /// `data` compressed as the kernel build does: x86 BCJ, then LZMA2, CRC-32 checks.
    fn kernel_xz(data: &[u8]) -> Vec<u8> {
        let mut options = XzOptions::with_preset(6);
        options.set_check_sum_type(CheckType::Crc32);
        options.prepend_pre_filter(FilterType::BcjX86, 0);
        let mut writer = XzWriter::new(Vec::new(), options).unwrap();
        writer.write_all(data).unwrap();
        writer.finish().unwrap()
    }

    fn fake_bzimage(vmlinux: &[u8]) -> Vec<u8> {
        let compressed = kernel_xz(vmlinux);
        let mut image = b"setup code, no boot header ".repeat(40);
        image.extend_from_slice(&compressed);
        // The kernel appends the decompressed size after the stream.
        image.extend_from_slice(&u32::try_from(vmlinux.len()).unwrap().to_le_bytes());
        image.extend_from_slice(b"trailing");
        image
    }

    #[test]
    fn extracts_vmlinux_with_pvh_note() {
        let vmlinux = fake_elf(&[(b"GNU\0", 3), (b"Xen\0", 6), (b"Xen\0", PVH_NOTE_TYPE)]);
        assert_eq!(extract_vmlinux(&fake_bzimage(&vmlinux)).unwrap(), vmlinux);
    }

    #[test]
    fn a_corrupt_stream_is_an_error_not_a_kernel() {
        let vmlinux = fake_elf(&[(b"Xen\0", PVH_NOTE_TYPE)]);
        let mut image = fake_bzimage(&vmlinux);
        let start = find(&image, &XZ_MAGIC).unwrap();
        // The block header's first field byte: its CRC-32 no longer matches.
        image[start + 13] ^= 0xFF;
        let error = extract_vmlinux(&image).unwrap_err();
        assert!(
            format!("{error:#}").contains("decoding the xz stream"),
            "{error:#}"
        );
    }

    #[test]
    fn rejects_vmlinux_without_pvh_note() {
        let vmlinux = fake_elf(&[(b"Xen\0", 6), (b"Linux\0", PVH_NOTE_TYPE)]);
        let error = extract_vmlinux(&fake_bzimage(&vmlinux)).unwrap_err();
        assert!(error.to_string().contains("PVH"), "{error:#}");
    }

    #[test]
    fn rejects_payload_that_is_not_elf() {
        let error = extract_vmlinux(&fake_bzimage(b"not an elf at all")).unwrap_err();
        assert!(error.to_string().contains("not an ELF"), "{error:#}");
    }

    #[test]
    fn names_the_payload_format_it_cannot_decode() {
        let error = extract_vmlinux(&[0x1F, 0x8B, 8, 0, 0, 0]).unwrap_err();
        assert!(error.to_string().contains("gzip payload"), "{error:#}");
    }

    #[test]
    fn uses_the_boot_header_payload_fields() {
        let vmlinux = fake_elf(&[(b"Xen\0", PVH_NOTE_TYPE)]);
        let compressed = kernel_xz(&vmlinux);
        let mut image = vec![0u8; 5 * 512];
        image[0x1f1] = 4;
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        // A decoy stream inside the setup code must not be picked.
        image[0x300..0x306].copy_from_slice(&XZ_MAGIC);
        image.extend_from_slice(&[0u8; 100]);
        image[0x248..0x24c].copy_from_slice(&100u32.to_le_bytes());
        let length = u32::try_from(compressed.len() + 4).unwrap();
        image[0x24c..0x250].copy_from_slice(&length.to_le_bytes());
        image.extend_from_slice(&compressed);
        image.extend_from_slice(&[0xAB; 4]);
        assert_eq!(extract_vmlinux(&image).unwrap(), vmlinux);
    }

    #[test]
    fn caches_by_size_and_mtime() {
        let directory = tempfile::tempdir().unwrap();
        let bzimage = directory.path().join("vmlinuz");
        let vmlinux = fake_elf(&[(b"Xen\0", PVH_NOTE_TYPE)]);
        fs::write(&bzimage, fake_bzimage(&vmlinux)).unwrap();
        let cache = directory.path().join("cache");
        let first = fast_boot_kernel(&bzimage, &cache).unwrap();
        assert_eq!(fs::read(&first).unwrap(), vmlinux);
        // A cache hit does not read the bzImage again: corrupt the cached copy to see.
        fs::write(&first, b"cached").unwrap();
        assert_eq!(fast_boot_kernel(&bzimage, &cache).unwrap(), first);
        assert_eq!(fs::read(&first).unwrap(), b"cached");
    }

    #[test]
    fn extraction_error_names_the_file() {
        let directory = tempfile::tempdir().unwrap();
        let bzimage = directory.path().join("vmlinuz");
        fs::write(&bzimage, b"no payload here").unwrap();
        let error = fast_boot_kernel(&bzimage, directory.path()).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("extracting vmlinux from") && message.contains("vmlinuz"));
        assert!(message.contains("no xz stream"), "{message}");
    }
}

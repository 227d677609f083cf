//! Which filesystem a block device holds, from its first bytes: blkid's job,
//! without udev or libblkid in the initramfs.
//!
//! Only the superblock fields that find a source filesystem are read: the
//! type (as the kernel's `mount` spells it), the UUID and the label, both
//! formatted the way `blkid` prints them, so that a `LABEL=`/`UUID=` copied
//! from `blkid` on another machine matches here. Known differences from
//! blkid: a FAT label is the one in the boot sector (blkid prefers the root
//! directory's volume entry, which only Windows' relabelling makes differ);
//! ISO 9660's Joliet label is not read; an NTFS label lives in the `$Volume`
//! MFT record, far beyond the first bytes, so NTFS has none here.

/// How many bytes of a device [`probe`] needs to see every superblock it
/// knows (btrfs keeps its own at 64 KiB).
pub const PROBE_LEN: usize = BTRFS_SUPER + 0x1000;

/// A recognised filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The type as `mount -t` and `/proc/filesystems` name it: `ext4`,
    /// `ext3`, `ext2`, `xfs`, `vfat`, `iso9660`, `btrfs`; `ntfs` as blkid
    /// names it (the kernel's driver is `ntfs3`).
    pub fstype: &'static str,
    /// As blkid prints it: `0b8e…-…` (ext, xfs, btrfs), `ABCD-1234` (FAT),
    /// `2024-01-31-12-00-00-00` (ISO 9660 creation time), `0123456789ABCDEF`
    /// (NTFS volume serial).
    pub uuid: Option<String>,
    pub label: Option<String>,
}

impl FsInfo {
    /// The type to mount it with: Debian (like most distributions) drives
    /// ext2 and ext3 with the ext4 driver and ships no ext2/ext3 module.
    pub fn mount_type(&self) -> &'static str {
        match self.fstype {
            "ext2" | "ext3" => "ext4",
            // The read-write driver since Linux 5.15; the old `ntfs` is gone.
            "ntfs" => "ntfs3",
            other => other,
        }
    }

    /// The kernel module that provides [`mount_type`](Self::mount_type).
    pub fn kernel_module(&self) -> &'static str {
        match self.mount_type() {
            "iso9660" => "isofs",
            other => other,
        }
    }

    /// `ext4 LABEL=IMAGES UUID=…`, for listing candidates in errors.
    pub fn describe(&self) -> String {
        let mut text = self.fstype.to_owned();
        if let Some(label) = &self.label {
            text += &format!(" LABEL={label}");
        }
        if let Some(uuid) = &self.uuid {
            text += &format!(" UUID={uuid}");
        }
        text
    }
}

/// Identifies the filesystem whose first bytes are `bytes` (ideally
/// [`PROBE_LEN`] of them; fewer only hide the types whose superblock lies
/// beyond). `None` when nothing is recognised, never a panic.
pub fn probe(bytes: &[u8]) -> Option<FsInfo> {
    // Superblocks at fixed, distinct offsets first; FAT's boot sector,
    // which an MBR resembles, last.
    probe_ext(bytes)
        .or_else(|| probe_xfs(bytes))
        .or_else(|| probe_btrfs(bytes))
        .or_else(|| probe_iso9660(bytes))
        .or_else(|| probe_ntfs(bytes))
        .or_else(|| probe_vfat(bytes))
}

fn field<const N: usize>(bytes: &[u8], offset: usize) -> Option<[u8; N]> {
    bytes.get(offset..offset.checked_add(N)?)?.try_into().ok()
}

fn le16(bytes: &[u8], offset: usize) -> Option<u16> {
    field(bytes, offset).map(u16::from_le_bytes)
}

fn le32(bytes: &[u8], offset: usize) -> Option<u32> {
    field(bytes, offset).map(u32::from_le_bytes)
}

fn le64(bytes: &[u8], offset: usize) -> Option<u64> {
    field(bytes, offset).map(u64::from_le_bytes)
}

fn be16(bytes: &[u8], offset: usize) -> Option<u16> {
    field(bytes, offset).map(u16::from_be_bytes)
}

fn be32(bytes: &[u8], offset: usize) -> Option<u32> {
    field(bytes, offset).map(u32::from_be_bytes)
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`; an all-zero UUID means none.
fn uuid_text(raw: [u8; 16]) -> Option<String> {
    if raw.iter().all(|b| *b == 0) {
        return None;
    }
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A fixed-size label: cut at the first NUL, trailing padding (spaces for
/// FAT and ISO 9660) removed; empty means none.
fn label_text(raw: &[u8]) -> Option<String> {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    let text = String::from_utf8_lossy(&raw[..end]);
    let text = text.trim_end_matches(' ');
    (!text.is_empty()).then(|| text.to_owned())
}

// ext2/3/4: struct ext4_super_block, 1024 bytes into the device.
const EXT_SUPER: usize = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x4;
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x8;
/// What ext3 understands (filetype, recover, meta_bg); anything else in
/// these masks needs ext4, which is how blkid tells them apart.
const EXT3_INCOMPAT: u32 = 0x2 | 0x4 | 0x10;
const EXT3_RO_COMPAT: u32 = 0x1 | 0x2 | 0x4;

fn probe_ext(bytes: &[u8]) -> Option<FsInfo> {
    if le16(bytes, EXT_SUPER + 56)? != EXT_MAGIC {
        return None;
    }
    let compat = le32(bytes, EXT_SUPER + 92)?;
    let incompat = le32(bytes, EXT_SUPER + 96)?;
    let ro_compat = le32(bytes, EXT_SUPER + 100)?;
    if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
        // An external journal: it has the magic but nothing to mount.
        return None;
    }
    let fstype = if incompat & !EXT3_INCOMPAT != 0 || ro_compat & !EXT3_RO_COMPAT != 0 {
        "ext4"
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };
    Some(FsInfo {
        fstype,
        uuid: uuid_text(field(bytes, EXT_SUPER + 104)?),
        label: label_text(&field::<16>(bytes, EXT_SUPER + 120)?),
    })
}

// XFS: struct xfs_dsb at byte 0, big-endian.
fn probe_xfs(bytes: &[u8]) -> Option<FsInfo> {
    if field(bytes, 0)? != *b"XFSB" {
        return None;
    }
    let block_size = be32(bytes, 4)?;
    let sector_size = be16(bytes, 102)?;
    if !block_size.is_power_of_two()
        || !(512..=65536).contains(&block_size)
        || !sector_size.is_power_of_two()
        || sector_size < 512
    {
        return None;
    }
    Some(FsInfo {
        fstype: "xfs",
        uuid: uuid_text(field(bytes, 32)?),
        label: label_text(&field::<12>(bytes, 108)?),
    })
}

// btrfs: struct btrfs_super_block at 64 KiB.
const BTRFS_SUPER: usize = 0x10000;

fn probe_btrfs(bytes: &[u8]) -> Option<FsInfo> {
    if field(bytes, BTRFS_SUPER + 64)? != *b"_BHRfS_M" {
        return None;
    }
    Some(FsInfo {
        fstype: "btrfs",
        uuid: uuid_text(field(bytes, BTRFS_SUPER + 32)?),
        label: label_text(&field::<256>(bytes, BTRFS_SUPER + 299)?),
    })
}

// ISO 9660: the primary volume descriptor in sector 16 (of 2048 bytes).
const ISO_PVD: usize = 16 * 2048;

fn probe_iso9660(bytes: &[u8]) -> Option<FsInfo> {
    let pvd = bytes.get(ISO_PVD..ISO_PVD + 2048)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" || pvd[6] != 1 {
        return None;
    }
    Some(FsInfo {
        fstype: "iso9660",
        uuid: iso_creation_time(&pvd[813..830]),
        label: label_text(&pvd[40..72]),
    })
}

/// blkid's ISO 9660 "UUID": the volume creation time, `YYYY-MM-DD-HH-MM-SS-CC`
/// from the 16 digits of the descriptor's date (the time zone byte is left
/// out, as blkid does). Unset dates are all `'0'` or all zero bytes.
fn iso_creation_time(date: &[u8]) -> Option<String> {
    let digits = date.get(..16)?;
    if !digits.iter().all(u8::is_ascii_digit) || digits.iter().all(|d| *d == b'0') {
        return None;
    }
    let part = |range: std::ops::Range<usize>| String::from_utf8_lossy(&digits[range]).into_owned();
    Some(format!(
        "{}-{}-{}-{}-{}-{}-{}",
        part(0..4),
        part(4..6),
        part(6..8),
        part(8..10),
        part(10..12),
        part(12..14),
        part(14..16)
    ))
}

// NTFS boot sector (libblkid's `ntfs_super_block`): a BIOS parameter
// block whose FAT-only fields must be zero.
fn probe_ntfs(bytes: &[u8]) -> Option<FsInfo> {
    if field(bytes, 3)? != *b"NTFS    " {
        return None;
    }
    let bytes_per_sector = le16(bytes, 11)?;
    let reserved_sectors = le16(bytes, 14)?;
    let fat_count = *bytes.get(16)?;
    let root_entries = le16(bytes, 17)?;
    let sectors_per_fat = le16(bytes, 22)?;
    if !bytes_per_sector.is_power_of_two()
        || !(256..=4096).contains(&bytes_per_sector)
        || reserved_sectors != 0
        || fat_count != 0
        || root_entries != 0
        || sectors_per_fat != 0
    {
        return None;
    }
    // blkid prints the 64-bit volume serial as 16 upper-case hex digits.
    let serial = le64(bytes, 0x48)?;
    Some(FsInfo {
        fstype: "ntfs",
        uuid: (serial != 0).then(|| format!("{serial:016X}")),
        label: None,
    })
}

// FAT12/16/32 boot sector.
fn probe_vfat(bytes: &[u8]) -> Option<FsInfo> {
    if field(bytes, 510)? != [0x55, 0xAA] {
        return None;
    }
    let bytes_per_sector = le16(bytes, 11)?;
    let sectors_per_cluster = *bytes.get(13)?;
    let reserved_sectors = le16(bytes, 14)?;
    let fat_count = *bytes.get(16)?;
    let sectors_per_fat16 = le16(bytes, 22)?;
    if !bytes_per_sector.is_power_of_two()
        || !(512..=4096).contains(&bytes_per_sector)
        || !sectors_per_cluster.is_power_of_two()
        || reserved_sectors == 0
        || !(1..=2).contains(&fat_count)
    {
        return None;
    }
    // FAT32 has no 16-bit FAT size; its extended boot record sits 28 bytes
    // further on. Both carry the type name, which a partition table's boot
    // code (also ending in 55 AA) does not.
    let (ebr, type_name) = if sectors_per_fat16 == 0 {
        (64, &b"FAT32   "[..])
    } else {
        (36, &b"FAT"[..])
    };
    let name_at = ebr + 18;
    if bytes.get(name_at..name_at + type_name.len())? != type_name {
        return None;
    }
    // Serial number and label are only there with the extended signature.
    let (uuid, label) = if matches!(bytes.get(ebr + 2)?, 0x28 | 0x29) {
        let serial = le32(bytes, ebr + 3)?;
        let label = label_text(bytes.get(ebr + 7..ebr + 18)?).filter(|l| l != "NO NAME");
        let uuid = format!("{:04X}-{:04X}", serial >> 16, serial & 0xFFFF);
        (Some(uuid), label)
    } else {
        (None, None)
    };
    Some(FsInfo {
        fstype: "vfat",
        uuid,
        label,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Makes a filesystem on a sparse temp file with `program args… FILE`
    /// and returns the first [`PROBE_LEN`] bytes.
    fn made_with(program: &str, args: &[&str], size: u64) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("fs.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let out = Command::new(program)
            .args(args)
            .arg(&image)
            .output()
            .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut bytes = std::fs::read(&image).unwrap();
        bytes.truncate(PROBE_LEN);
        bytes
    }

    const UUID: &str = "0b8e7a4e-3c1d-4f2a-9b6e-5d4c3b2a1908";

    #[test]
    fn ext4_ext3_ext2_from_mke2fs() {
        for (fstype, flag) in [
            ("ext4", "-t ext4"),
            ("ext3", "-t ext3"),
            ("ext2", "-t ext2"),
        ] {
            let mut args: Vec<&str> = flag.split(' ').collect();
            args.extend(["-q", "-F", "-L", "IMAGES", "-U", UUID]);
            let bytes = made_with("mke2fs", &args, 8 << 20);
            assert_eq!(
                probe(&bytes),
                Some(FsInfo {
                    fstype,
                    uuid: Some(UUID.to_owned()),
                    label: Some("IMAGES".to_owned()),
                }),
                "{flag}"
            );
        }
        let bytes = made_with("mkfs.ext4", &["-q", "-F"], 8 << 20);
        let info = probe(&bytes).unwrap();
        assert_eq!(info.label, None);
        assert_eq!(info.mount_type(), "ext4");
        assert_eq!(info.uuid.unwrap().len(), 36);
    }

    #[test]
    fn ext3_mounts_with_the_ext4_driver() {
        let info = FsInfo {
            fstype: "ext3",
            uuid: None,
            label: None,
        };
        assert_eq!((info.mount_type(), info.kernel_module()), ("ext4", "ext4"));
    }

    #[test]
    fn xfs_from_mkfs_xfs() {
        // mkfs.xfs refuses filesystems under 300 MB; the file is sparse.
        let bytes = made_with(
            "mkfs.xfs",
            &["-q", "-f", "-L", "golden", "-m", &format!("uuid={UUID}")],
            300 << 20,
        );
        assert_eq!(
            probe(&bytes),
            Some(FsInfo {
                fstype: "xfs",
                uuid: Some(UUID.to_owned()),
                label: Some("golden".to_owned()),
            })
        );
    }

    #[test]
    fn fat12_fat16_fat32_from_mkfs_vfat() {
        for (bits, size) in [("12", 4u64 << 20), ("16", 32 << 20), ("32", 64 << 20)] {
            let bytes = made_with(
                "mkfs.vfat",
                &["-F", bits, "-n", "IMAGES", "-i", "1a2B3c4D"],
                size,
            );
            assert_eq!(
                probe(&bytes),
                Some(FsInfo {
                    fstype: "vfat",
                    uuid: Some("1A2B-3C4D".to_owned()),
                    label: Some("IMAGES".to_owned()),
                }),
                "FAT{bits}"
            );
        }
        let bytes = made_with("mkfs.vfat", &["-i", "00000001"], 8 << 20);
        let info = probe(&bytes).unwrap();
        assert_eq!(info.label, None, "NO NAME is no label");
        assert_eq!(info.uuid.as_deref(), Some("0000-0001"));
        assert_eq!(info.kernel_module(), "vfat");
    }

    fn iso_pvd(volume_id: &str, date: &[u8; 17]) -> Vec<u8> {
        let mut bytes = vec![0u8; ISO_PVD + 2048];
        let pvd = &mut bytes[ISO_PVD..];
        pvd[..7].copy_from_slice(b"\x01CD001\x01");
        pvd[40..72].fill(b' ');
        pvd[40..40 + volume_id.len()].copy_from_slice(volume_id.as_bytes());
        pvd[813..830].copy_from_slice(date);
        bytes
    }

    #[test]
    fn iso9660_volume_id_and_creation_time() {
        let bytes = iso_pvd("DEBIAN_12", b"2024013112000000\x00");
        let info = probe(&bytes).unwrap();
        assert_eq!(info.fstype, "iso9660");
        assert_eq!(info.label.as_deref(), Some("DEBIAN_12"));
        assert_eq!(info.uuid.as_deref(), Some("2024-01-31-12-00-00-00"));
        assert_eq!(info.kernel_module(), "isofs");
        let unset = probe(&iso_pvd("X", b"0000000000000000\x00")).unwrap();
        assert_eq!(unset.uuid, None);
        // A supplementary descriptor (type 2) first is not a PVD.
        let mut svd = iso_pvd("X", b"0000000000000000\x00");
        svd[ISO_PVD] = 2;
        assert_eq!(probe(&svd), None);
    }

    #[test]
    fn btrfs_superblock() {
        let mut bytes = vec![0u8; PROBE_LEN];
        let sb = &mut bytes[BTRFS_SUPER..];
        sb[32..48].copy_from_slice(&[0xab; 16]);
        sb[64..72].copy_from_slice(b"_BHRfS_M");
        sb[299..303].copy_from_slice(b"data");
        assert_eq!(
            probe(&bytes),
            Some(FsInfo {
                fstype: "btrfs",
                uuid: Some("abababab-abab-abab-abab-abababababab".to_owned()),
                label: Some("data".to_owned()),
            })
        );
    }

    #[test]
    fn garbage_zeros_and_truncation_are_none_never_a_panic() {
        assert_eq!(probe(&[]), None);
        assert_eq!(probe(&vec![0u8; PROBE_LEN]), None);
        assert_eq!(probe(&vec![0xffu8; PROBE_LEN]), None);
        // Every prefix of real superblocks: either the full answer or none.
        let ext4 = made_with("mkfs.ext4", &["-q", "-F", "-L", "IMAGES"], 8 << 20);
        let vfat = made_with("mkfs.vfat", &["-n", "IMAGES"], 8 << 20);
        for bytes in [&ext4, &vfat] {
            let full = probe(bytes).unwrap();
            for len in (0..4096).chain([PROBE_LEN - 1]) {
                let partial = probe(&bytes[..len]);
                assert!(
                    partial.is_none() || partial.as_ref() == Some(&full),
                    "{len}"
                );
            }
        }
        assert_eq!(probe(&ext4[..1024 + 56]), None);
        // A pseudo-random buffer with each magic planted still never panics.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut noise = vec![0u8; PROBE_LEN];
        for byte in &mut noise {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = state.to_le_bytes()[0];
        }
        noise[1080..1082].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        noise[510..512].copy_from_slice(&[0x55, 0xAA]);
        let _ = probe(&noise);
        noise[..4].copy_from_slice(b"XFSB");
        let _ = probe(&noise);
    }

    #[test]
    fn a_partition_table_is_not_a_fat_filesystem() {
        // An MBR: boot code, a partition entry and 55 AA, but no FAT type name.
        let mut mbr = vec![0u8; PROBE_LEN];
        mbr[11..13].copy_from_slice(&512u16.to_le_bytes());
        mbr[13] = 8;
        mbr[14] = 1;
        mbr[16] = 2;
        mbr[22] = 1;
        mbr[446..462].copy_from_slice(&[0x80, 0, 0, 0, 0x83, 0, 0, 0, 0, 8, 0, 0, 0, 0, 1, 0]);
        mbr[510..512].copy_from_slice(&[0x55, 0xAA]);
        assert_eq!(probe(&mbr), None);
        mbr[54..62].copy_from_slice(b"FAT16   ");
        mbr[38] = 0x29;
        assert_eq!(probe(&mbr).unwrap().fstype, "vfat");
    }

    /// The boot sector `mkntfs` writes (Windows' is the same but for the
    /// boot code): jump, OEM id, BPB with the FAT fields zero, serial.
    fn ntfs_boot_sector(serial: u64) -> Vec<u8> {
        let mut bytes = vec![0u8; 4096];
        bytes[..3].copy_from_slice(&[0xEB, 0x52, 0x90]);
        bytes[3..11].copy_from_slice(b"NTFS    ");
        bytes[11..13].copy_from_slice(&512u16.to_le_bytes());
        bytes[13] = 8;
        bytes[21] = 0xF8;
        bytes[0x28..0x30].copy_from_slice(&2_097_151u64.to_le_bytes());
        bytes[0x30..0x38].copy_from_slice(&786_432u64.to_le_bytes());
        bytes[0x40] = 0xF6;
        bytes[0x48..0x50].copy_from_slice(&serial.to_le_bytes());
        bytes[510..512].copy_from_slice(&[0x55, 0xAA]);
        bytes
    }

    #[test]
    fn ntfs_serial_as_blkid_prints_it() {
        let info = probe(&ntfs_boot_sector(0x01D9_4C2A_7E3B_9F10)).unwrap();
        assert_eq!(
            info,
            FsInfo {
                fstype: "ntfs",
                uuid: Some("01D94C2A7E3B9F10".to_owned()),
                label: None,
            }
        );
        assert_eq!(
            (info.mount_type(), info.kernel_module()),
            ("ntfs3", "ntfs3")
        );
        assert_eq!(probe(&ntfs_boot_sector(0)).unwrap().uuid, None);
        // The OEM id alone is not enough: FAT fields set mean it is not NTFS.
        let mut fat_like = ntfs_boot_sector(1);
        fat_like[16] = 2;
        assert_eq!(probe(&fat_like), None);
        let mut odd_sector = ntfs_boot_sector(1);
        odd_sector[11..13].copy_from_slice(&500u16.to_le_bytes());
        assert_eq!(probe(&odd_sector), None);
        for len in 0..0x50 {
            assert_eq!(probe(&ntfs_boot_sector(1)[..len]), None, "{len}");
        }
    }

    #[test]
    fn describe_lists_what_identifies_it() {
        let info = FsInfo {
            fstype: "ext4",
            uuid: Some(UUID.to_owned()),
            label: Some("data".to_owned()),
        };
        assert_eq!(info.describe(), format!("ext4 LABEL=data UUID={UUID}"));
    }
}

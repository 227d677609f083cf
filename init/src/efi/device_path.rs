//! UEFI device paths (UEFI 2.10, section 10.3): a list of nodes, each a
//! type, a subtype, a little-endian u16 length that counts the 4-byte
//! header, and data. The nodes a boot entry for an installed loader needs
//! are typed (the hard-drive and file-path media nodes, the end node); every
//! other node is kept as it was read, so decoding and encoding a firmware's
//! own entry gives back the same bytes.

use std::fmt;

use crate::disk::gpt::Guid;

/// Why a device path could not be decoded; decoding stops at the first bad
/// node, and the offset says where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DevicePathError {
    /// Fewer than the 4 header bytes remain.
    TruncatedHeader { offset: usize },
    /// The node's length is below 4 or runs past the end of the path.
    BadLength { offset: usize, length: u16 },
}

impl fmt::Display for DevicePathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DevicePathError::TruncatedHeader { offset } => write!(
                f,
                "device path node at byte {offset} is cut short: fewer than 4 header bytes remain"
            ),
            DevicePathError::BadLength { offset, length } => write!(
                f,
                "device path node at byte {offset} claims length {length}, \
                 below the 4-byte header or past the end of the path"
            ),
        }
    }
}

impl std::error::Error for DevicePathError {}

// Node types and subtypes, UEFI 2.10 section 10.3.1 and onwards.
const TYPE_MESSAGING: u8 = 0x03;
const TYPE_MEDIA: u8 = 0x04;
const TYPE_BBS: u8 = 0x05;
const TYPE_END: u8 = 0x7f;
const SUBTYPE_HARD_DRIVE: u8 = 0x01;
const SUBTYPE_FILE_PATH: u8 = 0x04;
const SUBTYPE_END_ENTIRE: u8 = 0xff;
const SUBTYPE_MAC: u8 = 11;
const SUBTYPE_IPV4: u8 = 12;
const SUBTYPE_IPV6: u8 = 13;
const SUBTYPE_URI: u8 = 24;
/// BBS device types (BIOS Boot Specification 1.01, appendix A) that
/// CSM firmware uses for network boot: an embedded NIC, and a BEV (the
/// bootstrap entry vector option ROMs such as PXE install).
const BBS_EMBEDDED_NETWORK: u16 = 0x06;
const BBS_BEV: u16 = 0x80;

/// The hard-drive media node's data: 38 bytes after the header, 42 in all
/// (UEFI 2.10 section 10.3.5.1).
const HARD_DRIVE_DATA_LEN: usize = 38;
/// `MBRType`: 1 = legacy MBR, 2 = GPT.
pub const MBR_TYPE_GPT: u8 = 2;
/// `SignatureType`: 1 = the MBR's 32-bit signature, 2 = a GUID.
pub const SIGNATURE_TYPE_GUID: u8 = 2;

/// The hard-drive media node: which partition of which disk. For GPT the
/// signature is the partition's unique GUID (its PARTUUID), stored in the
/// same mixed-endian order as in the GPT entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HardDrive {
    /// 1-based, as the partition table numbers it.
    pub partition: u32,
    /// First LBA of the partition.
    pub start: u64,
    /// Size in LBAs.
    pub size: u64,
    pub signature: [u8; 16],
    pub mbr_type: u8,
    pub signature_type: u8,
}

impl HardDrive {
    /// A GPT partition, as efibootmgr and firmware make them.
    pub fn gpt(partition: u32, start: u64, size: u64, partuuid: Guid) -> HardDrive {
        HardDrive {
            partition,
            start,
            size,
            signature: partuuid.0,
            mbr_type: MBR_TYPE_GPT,
            signature_type: SIGNATURE_TYPE_GUID,
        }
    }

    /// The partition's GUID, when the signature is one.
    pub fn guid(&self) -> Option<Guid> {
        (self.signature_type == SIGNATURE_TYPE_GUID).then_some(Guid(self.signature))
    }

    fn decode(data: &[u8]) -> Option<HardDrive> {
        let data: &[u8; HARD_DRIVE_DATA_LEN] = data.try_into().ok()?;
        let (partition, rest) = data.split_at(4);
        let (start, rest) = rest.split_at(8);
        let (size, rest) = rest.split_at(8);
        let (signature, rest) = rest.split_at(16);
        Some(HardDrive {
            partition: u32::from_le_bytes(partition.try_into().ok()?),
            start: u64::from_le_bytes(start.try_into().ok()?),
            size: u64::from_le_bytes(size.try_into().ok()?),
            signature: signature.try_into().ok()?,
            mbr_type: rest[0],
            signature_type: rest[1],
        })
    }

    fn encode_data(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.partition.to_le_bytes());
        out.extend_from_slice(&self.start.to_le_bytes());
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.signature);
        out.push(self.mbr_type);
        out.push(self.signature_type);
    }
}

/// One node of a device path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    HardDrive(HardDrive),
    /// The file-path media node: a path on the partition, backslashes, as
    /// UCS-2 with a terminating NUL on disk.
    FilePath(String),
    /// End of the entire device path.
    End,
    /// Any other node, kept byte for byte.
    Other {
        kind: u8,
        subtype: u8,
        data: Vec<u8>,
    },
}

impl Node {
    /// Whether this node means the entry boots from the network: the
    /// messaging MAC, IPv4, IPv6 and URI nodes (UEFI 2.10 sections
    /// 10.3.4.11-10.3.4.14 and 10.3.4.23, the PXE and HTTP boot entries
    /// firmware makes per NIC), or a legacy BBS entry for an embedded NIC or
    /// a BEV option ROM (CSM firmware's PXE entries).
    pub fn is_network(&self) -> bool {
        match self {
            Node::Other {
                kind: TYPE_MESSAGING,
                subtype,
                ..
            } => matches!(
                *subtype,
                SUBTYPE_MAC | SUBTYPE_IPV4 | SUBTYPE_IPV6 | SUBTYPE_URI
            ),
            Node::Other {
                kind: TYPE_BBS,
                subtype: 1,
                data,
            } => {
                let device_type = data.get(..2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                matches!(device_type, Some(BBS_EMBEDDED_NETWORK | BBS_BEV))
            }
            _ => false,
        }
    }

    fn header(&self) -> (u8, u8) {
        match self {
            Node::HardDrive(_) => (TYPE_MEDIA, SUBTYPE_HARD_DRIVE),
            Node::FilePath(_) => (TYPE_MEDIA, SUBTYPE_FILE_PATH),
            Node::End => (TYPE_END, SUBTYPE_END_ENTIRE),
            Node::Other { kind, subtype, .. } => (*kind, *subtype),
        }
    }

    /// A typed node only when encoding it gives back exactly `data`; any
    /// surprise (a hard-drive node of another length, a path without its
    /// NUL or with bytes after it) stays opaque, so it still round-trips.
    fn decode(kind: u8, subtype: u8, data: &[u8]) -> Node {
        let typed = match (kind, subtype) {
            (TYPE_MEDIA, SUBTYPE_HARD_DRIVE) => HardDrive::decode(data).map(Node::HardDrive),
            (TYPE_MEDIA, SUBTYPE_FILE_PATH) => decode_ucs2_nul(data)
                .and_then(|(path, used)| (used == data.len()).then_some(Node::FilePath(path))),
            (TYPE_END, SUBTYPE_END_ENTIRE) if data.is_empty() => Some(Node::End),
            _ => None,
        };
        typed.unwrap_or_else(|| Node::Other {
            kind,
            subtype,
            data: data.to_vec(),
        })
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let (kind, subtype) = self.header();
        let start = out.len();
        out.extend_from_slice(&[kind, subtype, 0, 0]);
        match self {
            Node::HardDrive(hd) => hd.encode_data(out),
            Node::FilePath(path) => encode_ucs2_nul(path, out),
            Node::End => {}
            Node::Other { data, .. } => out.extend_from_slice(data),
        }
        // A node longer than u16::MAX cannot be stored; only a path string
        // of 32 Ki characters could get there, and the length saturates so
        // that a decoder stops at it rather than misreading what follows.
        let len = u16::try_from(out.len() - start).unwrap_or(u16::MAX);
        out[start + 2..start + 4].copy_from_slice(&len.to_le_bytes());
    }
}

/// UCS-2 (as UTF-16) little-endian up to and including a NUL: the string
/// and the bytes used, or `None` without a NUL or with an unpaired
/// surrogate.
pub(crate) fn decode_ucs2_nul(bytes: &[u8]) -> Option<(String, usize)> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    let used = (units.len() + 1) * 2;
    if used > bytes.len() {
        return None;
    }
    String::from_utf16(&units).ok().map(|s| (s, used))
}

pub(crate) fn encode_ucs2_nul(text: &str, out: &mut Vec<u8>) {
    for unit in text.encode_utf16().chain([0]) {
        out.extend_from_slice(&unit.to_le_bytes());
    }
}

/// A device path as stored in a load option's `FilePathList`: the nodes in
/// order, end nodes included (a list may hold several instances).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePath(pub Vec<Node>);

impl DevicePath {
    /// `HD(...)/File(loader)/End`: the abbreviated form efibootmgr writes,
    /// which firmware expands by finding the partition by its GUID.
    pub fn hard_drive_file(hd: HardDrive, loader: &str) -> DevicePath {
        DevicePath(vec![
            Node::HardDrive(hd),
            Node::FilePath(loader.to_owned()),
            Node::End,
        ])
    }

    pub fn decode(mut bytes: &[u8]) -> Result<DevicePath, DevicePathError> {
        let mut nodes = Vec::new();
        let mut offset = 0;
        while !bytes.is_empty() {
            let [kind, subtype, l0, l1, ..] = *bytes else {
                return Err(DevicePathError::TruncatedHeader { offset });
            };
            let length = u16::from_le_bytes([l0, l1]);
            let len = usize::from(length);
            if len < 4 || len > bytes.len() {
                return Err(DevicePathError::BadLength { offset, length });
            }
            nodes.push(Node::decode(kind, subtype, &bytes[4..len]));
            bytes = &bytes[len..];
            offset += len;
        }
        Ok(DevicePath(nodes))
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for node in &self.0 {
            node.encode(&mut out);
        }
        out
    }

    /// The hard-drive nodes, in every instance.
    pub fn hard_drives(&self) -> impl Iterator<Item = &HardDrive> {
        self.0.iter().filter_map(|n| match n {
            Node::HardDrive(hd) => Some(hd),
            _ => None,
        })
    }

    /// The file path of the first instance: consecutive file-path nodes
    /// concatenate (UEFI 2.10 section 10.3.5.4 allows a path split over
    /// several), and the first end node closes the instance.
    pub fn file_path(&self) -> Option<String> {
        let mut path: Option<String> = None;
        for node in &self.0 {
            match node {
                Node::FilePath(part) => path.get_or_insert_with(String::new).push_str(part),
                Node::End => break,
                Node::Other { kind: TYPE_END, .. } => break,
                _ if path.is_some() => break,
                _ => {}
            }
        }
        path
    }

    pub fn is_network(&self) -> bool {
        self.0.iter().any(Node::is_network)
    }
}

/// The text form efibootmgr and the UEFI shell print, for the nodes this
/// module knows; other nodes print as `Path(type,subtype,hex)`, and the
/// final end node is left out.
impl fmt::Display for DevicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for node in &self.0 {
            if *node == Node::End {
                continue;
            }
            if !first {
                f.write_str("/")?;
            }
            first = false;
            match node {
                Node::HardDrive(hd) => {
                    let table = match hd.mbr_type {
                        MBR_TYPE_GPT => "GPT".to_owned(),
                        1 => "MBR".to_owned(),
                        other => other.to_string(),
                    };
                    let signature = match hd.guid() {
                        Some(guid) => guid.to_string(),
                        None if hd.signature_type == 1 => format!(
                            "{:08x}",
                            u32::from_le_bytes([
                                hd.signature[0],
                                hd.signature[1],
                                hd.signature[2],
                                hd.signature[3]
                            ])
                        ),
                        None => hex(&hd.signature),
                    };
                    write!(
                        f,
                        "HD({},{table},{signature},{:#x},{:#x})",
                        hd.partition, hd.start, hd.size
                    )?;
                }
                Node::FilePath(path) => write!(f, "File({path})")?,
                Node::End => {}
                Node::Other {
                    kind,
                    subtype,
                    data,
                } => write!(f, "Path({kind},{subtype},{})", hex(data))?,
            }
        }
        Ok(())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTUUID: &str = "8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab";

    /// HD(1,GPT,8c3f2d1e-...,0x800,0x10000)/File(\EFI\a.efi)/End, laid out
    /// by hand from UEFI 2.10 tables 10-45 (hard drive) and 10-50 (file).
    fn hand_made() -> Vec<u8> {
        let mut b = vec![4, 1, 42, 0];
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&0x800u64.to_le_bytes());
        b.extend_from_slice(&0x10000u64.to_le_bytes());
        // The first three GUID fields byte-swapped, the rest as written.
        b.extend_from_slice(&[
            0x1e, 0x2d, 0x3f, 0x8c, 0x4b, 0x5a, 0x3d, 0x4c, 0x9e, 0x8f, 0x01, 0x23, 0x45, 0x67,
            0x89, 0xab,
        ]);
        b.extend_from_slice(&[2, 2]);
        let path = "\\EFI\\a.efi";
        b.extend_from_slice(&[4, 4, u8::try_from(4 + (path.len() + 1) * 2).unwrap(), 0]);
        for c in path.bytes().chain([0]) {
            b.extend_from_slice(&[c, 0]);
        }
        b.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        b
    }

    #[test]
    fn hard_drive_and_file_path_decode_and_encode_as_the_spec_lays_them_out() {
        let bytes = hand_made();
        let path = DevicePath::decode(&bytes).unwrap();
        let guid = Guid::parse(PARTUUID).unwrap();
        assert_eq!(
            path,
            DevicePath::hard_drive_file(HardDrive::gpt(1, 0x800, 0x10000, guid), "\\EFI\\a.efi")
        );
        assert_eq!(path.encode(), bytes);
        assert_eq!(path.file_path().as_deref(), Some("\\EFI\\a.efi"));
        assert_eq!(path.hard_drives().next().unwrap().guid(), Some(guid));
        assert_eq!(
            path.to_string(),
            format!("HD(1,GPT,{PARTUUID},0x800,0x10000)/File(\\EFI\\a.efi)")
        );
        assert!(!path.is_network());
    }

    #[test]
    fn unknown_and_odd_nodes_round_trip_as_opaque() {
        let mut bytes = vec![
            2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0, // PciRoot(0)
            1, 1, 6, 0, 0, 3, // Pci(3,0)
            4, 1, 8, 0, 1, 2, 3, 4, // a hard-drive node of the wrong length
            4, 4, 8, 0, b'a', 0, b'b', 0, // a file path without its NUL
            0x7f, 0x01, 4, 0, // end of this instance
        ];
        bytes.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let path = DevicePath::decode(&bytes).unwrap();
        assert_eq!(path.0.len(), 6);
        assert!(matches!(
            path.0[2],
            Node::Other {
                kind: 4,
                subtype: 1,
                ..
            }
        ));
        assert!(matches!(
            path.0[3],
            Node::Other {
                kind: 4,
                subtype: 4,
                ..
            }
        ));
        assert_eq!(path.encode(), bytes);
        assert_eq!(path.hard_drives().count(), 0);
        assert_eq!(path.file_path(), None);
    }

    #[test]
    fn malformed_lengths_are_named_errors() {
        assert_eq!(
            DevicePath::decode(&[4, 4, 2]),
            Err(DevicePathError::TruncatedHeader { offset: 0 })
        );
        assert_eq!(
            DevicePath::decode(&[0x7f, 0xff, 4, 0, 4, 4, 3, 0]),
            Err(DevicePathError::BadLength {
                offset: 4,
                length: 3
            })
        );
        assert_eq!(
            DevicePath::decode(&[4, 4, 40, 0, 0, 0]),
            Err(DevicePathError::BadLength {
                offset: 0,
                length: 40
            })
        );
        assert_eq!(DevicePath::decode(&[]), Ok(DevicePath::default()));
    }

    #[test]
    fn network_nodes_are_recognised() {
        let mac = DevicePath::decode(&[3, 11, 8, 0, 0x52, 0x54, 0, 0x12]).unwrap();
        assert!(mac.is_network());
        for subtype in [12, 13, 24] {
            let path = DevicePath(vec![Node::Other {
                kind: 3,
                subtype,
                data: vec![],
            }]);
            assert!(path.is_network(), "subtype {subtype}");
        }
        // USB (messaging 5) and SATA (18) are not.
        for subtype in [5, 18] {
            let path = DevicePath(vec![Node::Other {
                kind: 3,
                subtype,
                data: vec![],
            }]);
            assert!(!path.is_network(), "subtype {subtype}");
        }
        let bbs = |device_type: u16| {
            let mut data = device_type.to_le_bytes().to_vec();
            data.extend_from_slice(&[0, 0, b'P', 0]);
            DevicePath(vec![Node::Other {
                kind: 5,
                subtype: 1,
                data,
            }])
        };
        assert!(bbs(0x06).is_network());
        assert!(bbs(0x80).is_network());
        assert!(!bbs(0x02).is_network());
    }

    #[test]
    fn file_paths_beyond_ascii_round_trip() {
        let path = DevicePath(vec![
            Node::FilePath("\\EFI\\zürich\\𝄞.efi".into()),
            Node::End,
        ]);
        let bytes = path.encode();
        assert_eq!(DevicePath::decode(&bytes).unwrap(), path);
        // An unpaired surrogate is not a string; the node stays opaque.
        let odd = [4, 4, 8, 0, 0x00, 0xd8, 0, 0];
        assert!(matches!(
            DevicePath::decode(&odd).unwrap().0[0],
            Node::Other { .. }
        ));
    }
}

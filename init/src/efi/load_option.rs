//! `EFI_LOAD_OPTION` (UEFI 2.10 section 3.1.3), the contents of a
//! `Boot####` variable: attributes, the length of the device path list, a
//! NUL-terminated UCS-2 description, the device path list, and optional
//! data the loader receives.

use std::fmt;

use super::device_path::{
    DevicePath, DevicePathError, HardDrive, decode_ucs2_nul, encode_ucs2_nul,
};
use crate::disk::gpt::Guid;

/// The firmware tries this entry when it walks BootOrder.
pub const LOAD_OPTION_ACTIVE: u32 = 0x0000_0001;

/// Why a load option could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoadOptionError {
    /// Shorter than the 6 bytes of attributes and `FilePathListLength`.
    TooShort {
        len: usize,
    },
    /// The description has no NUL, or is not UTF-16.
    BadDescription,
    /// `FilePathListLength` runs past the end of the option.
    FilePathListTooLong {
        declared: u16,
        left: usize,
    },
    DevicePath(DevicePathError),
}

impl fmt::Display for LoadOptionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoadOptionError::TooShort { len } => write!(
                f,
                "load option is {len} bytes, shorter than its 6-byte header"
            ),
            LoadOptionError::BadDescription => {
                f.write_str("load option description has no terminating NUL or is not valid UCS-2")
            }
            LoadOptionError::FilePathListTooLong { declared, left } => write!(
                f,
                "load option declares a {declared}-byte device path list \
                 but only {left} bytes follow the description"
            ),
            LoadOptionError::DevicePath(e) => write!(f, "load option device path: {e}"),
        }
    }
}

impl std::error::Error for LoadOptionError {}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    /// `LOAD_OPTION_ACTIVE` and the rest (hidden, category, ...), kept as read.
    pub attributes: u32,
    pub description: String,
    pub file_path: DevicePath,
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    /// An active entry for a loader on a GPT partition, in the shape
    /// `efibootmgr -c` gives it: `HD(...)/File(...)/End` and no optional
    /// data. `loader` is in UEFI form (`\EFI\debian\shimx64.efi`).
    pub fn for_loader(description: &str, hd: HardDrive, loader: &str) -> LoadOption {
        LoadOption {
            attributes: LOAD_OPTION_ACTIVE,
            description: description.to_owned(),
            file_path: DevicePath::hard_drive_file(hd, loader),
            optional_data: Vec::new(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<LoadOption, LoadOptionError> {
        let [a0, a1, a2, a3, l0, l1, ref rest @ ..] = *bytes else {
            return Err(LoadOptionError::TooShort { len: bytes.len() });
        };
        let attributes = u32::from_le_bytes([a0, a1, a2, a3]);
        let declared = u16::from_le_bytes([l0, l1]);
        let (description, used) = decode_ucs2_nul(rest).ok_or(LoadOptionError::BadDescription)?;
        let rest = &rest[used..];
        let list_len = usize::from(declared);
        if list_len > rest.len() {
            return Err(LoadOptionError::FilePathListTooLong {
                declared,
                left: rest.len(),
            });
        }
        let (list, optional) = rest.split_at(list_len);
        let file_path = DevicePath::decode(list).map_err(LoadOptionError::DevicePath)?;
        Ok(LoadOption {
            attributes,
            description,
            file_path,
            optional_data: optional.to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let list = self.file_path.encode();
        let mut out = Vec::with_capacity(6 + list.len() + self.optional_data.len() + 64);
        out.extend_from_slice(&self.attributes.to_le_bytes());
        // A device path list longer than 64 KiB is not something this
        // module builds (one HD node and one path); saturating keeps a
        // decoder of the result within bounds.
        let len = u16::try_from(list.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        encode_ucs2_nul(&self.description, &mut out);
        out.extend_from_slice(&list);
        out.extend_from_slice(&self.optional_data);
        out
    }

    pub fn is_active(&self) -> bool {
        self.attributes & LOAD_OPTION_ACTIVE != 0
    }

    /// The GUIDs of the GPT partitions this option's device paths name.
    pub fn partition_guids(&self) -> Vec<Guid> {
        self.file_path
            .hard_drives()
            .filter_map(HardDrive::guid)
            .collect()
    }

    /// The loader's path on its partition (`\EFI\debian\shimx64.efi`).
    pub fn loader_path(&self) -> Option<String> {
        self.file_path.file_path()
    }

    /// A network boot entry: a MAC, IP or URI node in its path, or, for
    /// firmware that builds PXE entries from vendor-defined nodes this
    /// module cannot read, a description that says PXE.
    pub fn is_network(&self) -> bool {
        self.file_path.is_network() || self.description.to_ascii_uppercase().contains("PXE")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efi::device_path::Node;

    fn sample() -> LoadOption {
        let guid = Guid::parse("8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab").unwrap();
        LoadOption::for_loader(
            "Debian",
            HardDrive::gpt(2, 2048, 1 << 20, guid),
            "\\EFI\\debian\\shimx64.efi",
        )
    }

    #[test]
    fn encodes_the_spec_layout_and_decodes_back() {
        let option = sample();
        let bytes = option.encode();
        assert_eq!(bytes[..4], [1, 0, 0, 0]);
        let list_len = 42 + 4 + ("\\EFI\\debian\\shimx64.efi".len() + 1) * 2 + 4;
        assert_eq!(
            usize::from(u16::from_le_bytes([bytes[4], bytes[5]])),
            list_len
        );
        assert_eq!(bytes[6..20], *b"D\0e\0b\0i\0a\0n\0\0\0");
        assert_eq!(bytes.len(), 6 + 14 + list_len);
        let back = LoadOption::decode(&bytes).unwrap();
        assert_eq!(back, option);
        assert!(back.is_active());
        assert_eq!(
            back.loader_path().as_deref(),
            Some("\\EFI\\debian\\shimx64.efi")
        );
        assert_eq!(back.partition_guids(), option.partition_guids());
        assert_eq!(back.partition_guids().len(), 1);
    }

    #[test]
    fn optional_data_and_other_attributes_are_kept() {
        let mut option = sample();
        option.attributes = 0x0000_0109; // active, hidden, category app
        option.optional_data = b"RC\x00\x01".to_vec();
        let bytes = option.encode();
        assert_eq!(LoadOption::decode(&bytes).unwrap(), option);
        assert!(bytes.ends_with(b"RC\x00\x01"));
    }

    #[test]
    fn every_truncation_is_an_error_or_a_shorter_option_never_a_panic() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            // Cutting into the optional data is impossible here (there is
            // none), so every prefix must fail.
            assert!(LoadOption::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(
            LoadOption::decode(&[1, 0, 0]),
            Err(LoadOptionError::TooShort { len: 3 })
        );
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 0, 0, b'a', 0]),
            Err(LoadOptionError::BadDescription)
        );
        assert_eq!(
            LoadOption::decode(&[1, 0, 0, 0, 9, 0, b'a', 0, 0, 0, 0x7f, 0xff, 4, 0]),
            Err(LoadOptionError::FilePathListTooLong {
                declared: 9,
                left: 4
            })
        );
        // Garbage of every length below 64 bytes, from a fixed pattern.
        let noise: Vec<u8> = (0u16..64).map(|i| (i * 37 % 251) as u8).collect();
        for len in 0..noise.len() {
            let _ = LoadOption::decode(&noise[..len]);
        }
    }

    #[test]
    fn network_entries_by_node_or_by_description() {
        let mut option = sample();
        assert!(!option.is_network());
        option.file_path = DevicePath(vec![
            Node::Other {
                kind: 3,
                subtype: 11,
                data: vec![0; 33],
            },
            Node::End,
        ]);
        assert!(option.is_network());
        let vendor = LoadOption {
            description: "Onboard NIC (IPv4) pxe".into(),
            file_path: DevicePath(vec![Node::Other {
                kind: 1,
                subtype: 4,
                data: vec![0; 16],
            }]),
            ..sample()
        };
        assert!(vendor.is_network());
    }
}

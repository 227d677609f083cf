//! Bytes made by real firmware and a real efibootmgr, decoded and encoded
//! here. `testdata/capture.sh` made them: OVMF (Debian bookworm's
//! `ovmf` 2022.11-6+deb12u2, OVMF_CODE_4M.fd with a fresh OVMF_VARS_4M.fd)
//! under QEMU 7.2 TCG, one virtio disk with a GPT made by sgdisk (partition 1 an ESP,
//! unique GUID 8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab, LBAs 2048 + 65536) and
//! one virtio NIC (MAC 52:54:00:12:34:56). The first boot, firmware only,
//! let OVMF write its own entries (`before/`: UiApp, DVD, the disk, PXE and
//! HTTP v4/v6, the shell); the second booted Debian's 6.1 kernel into a
//! busybox initramfs that ran efibootmgr 17 (libefivar 37):
//! `efibootmgr -c -d /dev/vda -p 1 -L "Golden Test" -l '\EFI\golden\grubx64.efi'`,
//! and dumped every Boot* variable from efivarfs (`after/`). The .bin
//! files hold the data without efivarfs' 4-byte attributes (all 7, NV|BS|RT,
//! per attrs.txt); efibootmgr-v.txt is what `efibootmgr -v` printed.

use super::device_path::Node;
use super::vars::{BOOT_ORDER, decode_boot_order};
use super::*;

const PARTUUID: &str = "8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab";
const LOADER: &str = "\\EFI\\golden\\grubx64.efi";

macro_rules! vars {
    ($dir:literal: $($name:literal),* $(,)?) => {
        [$(($name, {
            let bytes: &[u8] = include_bytes!(concat!("testdata/", $dir, "/", $name, ".bin"));
            bytes
        })),*]
    };
}

const BEFORE: [(&str, &[u8]); 10] = vars!("before":
    "Boot0000", "Boot0001", "Boot0002", "Boot0003", "Boot0004", "Boot0005", "Boot0006",
    "Boot0007", "Boot0008", "BootOrder",
);
const AFTER: [(&str, &[u8]); 11] = vars!("after":
    "Boot0000", "Boot0001", "Boot0002", "Boot0003", "Boot0004", "Boot0005", "Boot0006",
    "Boot0007", "Boot0008", "Boot0009", "BootOrder",
);

fn var(set: &[(&str, &'static [u8])], name: &str) -> &'static [u8] {
    set.iter().find(|(n, _)| *n == name).unwrap().1
}

fn golden_entry() -> NewEntry {
    NewEntry {
        label: "Golden Test".into(),
        partition: 1,
        start: 2048,
        size: 65536,
        partuuid: Guid::parse(PARTUUID).unwrap(),
        loader: LOADER.into(),
    }
}

#[test]
fn every_captured_entry_round_trips_byte_for_byte() {
    for (name, bytes) in BEFORE.iter().chain(&AFTER) {
        if *name == BOOT_ORDER {
            continue;
        }
        let option = LoadOption::decode(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(option.encode(), *bytes, "{name}");
        assert!(option.is_active(), "{name}");
    }
    // The firmware's entries did not change under efibootmgr.
    for (name, bytes) in &BEFORE[..9] {
        assert_eq!(var(&AFTER, name), *bytes, "{name}");
    }
}

#[test]
fn efibootmgrs_entry_decodes_to_what_it_was_given() {
    let option = LoadOption::decode(var(&AFTER, "Boot0009")).unwrap();
    assert_eq!(option.description, "Golden Test");
    assert_eq!(option.attributes, load_option::LOAD_OPTION_ACTIVE);
    assert_eq!(option.loader_path().as_deref(), Some(LOADER));
    assert_eq!(option.partition_guids(), [Guid::parse(PARTUUID).unwrap()]);
    let hd = option.file_path.hard_drives().next().unwrap();
    assert_eq!((hd.partition, hd.start, hd.size), (1, 2048, 65536));
    assert!(option.optional_data.is_empty());
    assert!(!option.is_network());
    // As `efibootmgr -v` printed it.
    assert_eq!(
        option.file_path.to_string(),
        format!("HD(1,GPT,{PARTUUID},0x800,0x10000)/File({LOADER})")
    );
}

#[test]
fn our_encoder_makes_efibootmgrs_bytes() {
    assert_eq!(
        golden_entry().load_option().encode(),
        var(&AFTER, "Boot0009")
    );
}

#[test]
fn ovmfs_entries_are_classified() {
    let network = |name| LoadOption::decode(var(&BEFORE, name)).unwrap().is_network();
    for name in ["Boot0003", "Boot0004", "Boot0005", "Boot0006", "Boot0007"] {
        assert!(network(name), "{name}");
    }
    for name in ["Boot0000", "Boot0001", "Boot0002", "Boot0008"] {
        assert!(!network(name), "{name}");
    }
    let pxe = LoadOption::decode(var(&BEFORE, "Boot0004")).unwrap();
    assert_eq!(pxe.description, "UEFI PXEv4 (MAC:525400123456) 2");
    // PciRoot/Pci/MAC/IPv4/End; the MAC node carries the NIC's address.
    let kinds: Vec<(u8, u8)> = pxe
        .file_path
        .0
        .iter()
        .map(|n| match n {
            Node::Other { kind, subtype, .. } => (*kind, *subtype),
            Node::End => (0x7f, 0xff),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(kinds, [(2, 1), (1, 1), (3, 11), (3, 12), (0x7f, 0xff)]);
    let Node::Other { data, .. } = &pxe.file_path.0[2] else {
        unreachable!()
    };
    assert_eq!(data[..6], [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    // OVMF tags its own entries with optional data (a GUID marker) that
    // must survive a rewrite.
    assert_eq!(pxe.optional_data.len(), 16);
    assert_eq!(
        decode_boot_order(var(&BEFORE, BOOT_ORDER)),
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
    );
}

fn before_store() -> MemoryVars {
    let mut store = MemoryVars::default();
    for (name, bytes) in BEFORE {
        store.vars.insert(name.into(), bytes.to_vec());
    }
    store
}

#[test]
fn register_on_ovmfs_variables_does_what_efibootmgr_did() {
    // efibootmgr -c takes the lowest free number and puts it first in
    // BootOrder: DiskFirst.
    let mut store = before_store();
    let done = register(
        &mut store,
        golden_entry(),
        &[],
        BootOrderPolicy::DiskFirst,
        false,
    )
    .unwrap();
    assert_eq!(done.number, 9);
    for (name, bytes) in AFTER {
        assert_eq!(store.vars[name], bytes, "{name}");
    }
    assert_eq!(store.vars.len(), AFTER.len());
}

#[test]
fn network_first_on_ovmfs_variables_keeps_pxe_and_http_ahead() {
    let mut store = before_store();
    let done = register(
        &mut store,
        golden_entry(),
        &[],
        BootOrderPolicy::NetworkFirst,
        true,
    )
    .unwrap();
    assert_eq!(done.boot_order, [3, 4, 5, 6, 7, 9, 0, 1, 2, 8]);
    assert_eq!(done.boot_next, Some(9));
    // A second deploy to the same disk, with a new ESP GUID: efibootmgr's
    // entry is this disk's old install, so it is replaced in place.
    let mut store = MemoryVars::default();
    for (name, bytes) in AFTER {
        store.vars.insert(name.into(), bytes.to_vec());
    }
    let mut entry = golden_entry();
    entry.partuuid = Guid::parse("0d1e2f3a-0000-4000-8000-000000000001").unwrap();
    let done = register(
        &mut store,
        entry,
        &[Guid::parse(PARTUUID).unwrap()],
        BootOrderPolicy::Keep,
        false,
    )
    .unwrap();
    assert_eq!(done.number, 9);
    assert!(done.deleted.is_empty());
    assert_eq!(store.vars[BOOT_ORDER], var(&AFTER, BOOT_ORDER));
    assert_ne!(store.vars["Boot0009"], var(&AFTER, "Boot0009"));
}

#[test]
fn efivarfs_store_reads_the_captured_files() {
    // The files as efivarfs lays them out: attributes, then data.
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in AFTER {
        let mut file = 7u32.to_le_bytes().to_vec();
        file.extend_from_slice(bytes);
        std::fs::write(
            dir.path()
                .join(vars::efivarfs_file_name(name, vars::EFI_GLOBAL_VARIABLE)),
            file,
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join(vars::efivarfs_file_name(
            "BootOptionSupport",
            vars::EFI_GLOBAL_VARIABLE,
        )),
        include_bytes!("testdata/after/BootOptionSupport.bin"),
    )
    .unwrap();
    let store = Efivarfs::new(dir.path());
    assert_eq!(
        store.list_boot_entries().unwrap(),
        (0..=9).collect::<Vec<u16>>()
    );
    assert_eq!(
        store.read("Boot0009").unwrap().unwrap(),
        var(&AFTER, "Boot0009")
    );
}

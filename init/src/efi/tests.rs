//! `register` against the in-memory store: what is written, in which order,
//! and what an interruption leaves behind.

use super::vars::{BOOT_NEXT, BOOT_ORDER, VarOp, boot_entry_name, encode_boot_order};
use super::*;

fn guid(text: &str) -> Guid {
    Guid::parse(text).unwrap()
}

const ESP: &str = "8c3f2d1e-5a4b-4c3d-9e8f-0123456789ab";
const OLD_ESP: &str = "11111111-2222-3333-4444-555555555555";
const OTHER_DISK: &str = "99999999-2222-3333-4444-555555555555";

fn entry() -> NewEntry {
    NewEntry {
        label: "Debian GNU/Linux 12".into(),
        partition: 2,
        start: 0x800,
        size: 0x100000,
        partuuid: guid(ESP),
        loader: "\\EFI\\debian\\shimx64.efi".into(),
    }
}

fn option_on(partuuid: &str, loader: &str) -> Vec<u8> {
    LoadOption::for_loader("x", HardDrive::gpt(1, 34, 100, guid(partuuid)), loader).encode()
}

fn pxe() -> Vec<u8> {
    LoadOption {
        attributes: 1,
        description: "UEFI PXEv4".into(),
        file_path: DevicePath(vec![
            device_path::Node::Other {
                kind: 3,
                subtype: 11,
                data: vec![0; 33],
            },
            device_path::Node::End,
        ]),
        optional_data: vec![],
    }
    .encode()
}

/// Boot0000 PXE, Boot0001 another disk's OS, Boot0004 this disk's previous
/// install; order 0004,0000,0001.
fn machine() -> MemoryVars {
    let mut store = MemoryVars::default();
    store.vars.insert("Boot0000".into(), pxe());
    store.vars.insert(
        "Boot0001".into(),
        option_on(OTHER_DISK, "\\EFI\\x\\grubx64.efi"),
    );
    store.vars.insert(
        "Boot0004".into(),
        option_on(OLD_ESP, "\\EFI\\old\\grubx64.efi"),
    );
    store
        .vars
        .insert(BOOT_ORDER.into(), encode_boot_order(&[4, 0, 1]));
    store
}

#[test]
fn registers_in_a_safe_order_and_says_what_it_did() {
    let mut store = machine();
    store.vars.insert("Boot0003".into(), vec![1, 2, 3]); // undecodable, kept
    let done = register(
        &mut store,
        entry(),
        &[guid(OLD_ESP)],
        BootOrderPolicy::NetworkFirst,
        true,
    )
    .unwrap();
    assert_eq!(done.number, 4, "this disk's old entry is reused");
    assert_eq!(
        store.ops,
        [
            VarOp::Write("Boot0004".into()),
            VarOp::Write(BOOT_ORDER.into()),
            VarOp::Write(BOOT_NEXT.into()),
        ]
    );
    assert_eq!(store.vars["Boot0004"], entry().load_option().encode());
    assert_eq!(store.vars[BOOT_ORDER], encode_boot_order(&[0, 4, 1]));
    assert_eq!(store.vars[BOOT_NEXT], [4, 0]);
    assert_eq!(store.vars["Boot0003"], [1, 2, 3]);
    assert_eq!(
        done.to_string(),
        format!(
            "Boot0004 \"Debian GNU/Linux 12\" HD(2,GPT,{ESP},0x800,0x100000)/\
             File(\\EFI\\debian\\shimx64.efi); BootOrder 0000,0004,0001; BootNext 0004"
        )
    );
}

#[test]
fn a_new_number_when_no_entry_is_ours_and_stale_ones_go_last() {
    let mut store = machine();
    // Two installs on this disk, neither with our loader: the one first in
    // BootOrder is reused, the other deleted after everything else.
    store.vars.insert(
        "Boot0002".into(),
        option_on(ESP, "\\EFI\\old2\\grubx64.efi"),
    );
    store
        .vars
        .insert(BOOT_ORDER.into(), encode_boot_order(&[4, 0, 2, 1]));
    let done = register(
        &mut store,
        entry(),
        &[guid(OLD_ESP)],
        BootOrderPolicy::Keep,
        false,
    )
    .unwrap();
    assert_eq!(done.number, 4);
    assert_eq!(done.deleted, [2]);
    assert_eq!(
        store.ops,
        [
            VarOp::Write("Boot0004".into()),
            VarOp::Write(BOOT_ORDER.into()),
            VarOp::Delete("Boot0002".into()),
        ]
    );
    assert_eq!(store.vars[BOOT_ORDER], encode_boot_order(&[4, 0, 1]));
    assert!(!store.vars.contains_key("Boot0002"));
    assert!(
        done.to_string()
            .ends_with("; BootOrder 0004,0000,0001; removed Boot0002")
    );

    // A fresh machine: the lowest free number, DiskFirst, no BootOrder yet.
    let mut store = MemoryVars::default();
    store.vars.insert("Boot0000".into(), pxe());
    let done = register(&mut store, entry(), &[], BootOrderPolicy::DiskFirst, false).unwrap();
    assert_eq!(done.number, 1);
    assert_eq!(store.vars[BOOT_ORDER], encode_boot_order(&[1]));
}

#[test]
fn a_second_run_changes_nothing() {
    let mut store = machine();
    register(
        &mut store,
        entry(),
        &[guid(OLD_ESP)],
        BootOrderPolicy::Keep,
        false,
    )
    .unwrap();
    store.ops.clear();
    let done = register(
        &mut store,
        entry(),
        &[guid(OLD_ESP)],
        BootOrderPolicy::Keep,
        false,
    )
    .unwrap();
    assert!(store.ops.is_empty(), "{:?}", store.ops);
    assert!(!done.written);
    assert!(done.to_string().contains("(unchanged)"));
}

#[test]
fn an_interrupted_run_leaves_a_way_to_boot() {
    // BootOrder cannot be written (firmware out of space): the new entry
    // exists, the old order still names bootable entries, nothing was
    // deleted, and the error says what failed.
    let mut store = machine();
    store.vars.insert(
        "Boot0002".into(),
        option_on(ESP, "\\EFI\\old2\\grubx64.efi"),
    );
    store
        .vars
        .insert(BOOT_ORDER.into(), encode_boot_order(&[0, 4, 1]));
    store.fail_on = Some(VarOp::Write(BOOT_ORDER.into()));
    let err = register(
        &mut store,
        entry(),
        &[guid(OLD_ESP)],
        BootOrderPolicy::DiskFirst,
        false,
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("writing BootOrder"), "{err:#}");
    assert_eq!(store.vars["Boot0004"], entry().load_option().encode());
    assert!(store.vars.contains_key("Boot0002"));
    assert_eq!(store.vars[BOOT_ORDER], encode_boot_order(&[0, 4, 1]));
}

#[test]
fn efi_is_available_when_the_efivars_directory_exists() {
    let dir = tempfile::tempdir().unwrap();
    assert!(efi_available(dir.path()));
    assert!(!efi_available(&dir.path().join("efivars")));
}

#[test]
fn register_over_an_efivarfs_directory() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Efivarfs::new(dir.path());
    store.write("Boot0000", &pxe()).unwrap();
    store.write(BOOT_ORDER, &encode_boot_order(&[0])).unwrap();
    let done = register(
        &mut store,
        entry(),
        &[],
        BootOrderPolicy::NetworkFirst,
        false,
    )
    .unwrap();
    assert_eq!(done.number, 1);
    assert_eq!(store.list_boot_entries().unwrap(), [0, 1]);
    let raw = std::fs::read(dir.path().join(format!(
        "{}-8be4df61-93ca-11d2-aa0d-00e098032b8c",
        boot_entry_name(1)
    )))
    .unwrap();
    assert_eq!(raw[..4], [7, 0, 0, 0]);
    assert_eq!(
        LoadOption::decode(&raw[4..]).unwrap(),
        entry().load_option()
    );
    assert_eq!(
        store.read(BOOT_ORDER).unwrap().unwrap(),
        encode_boot_order(&[0, 1])
    );
}

/// The real thing: `register` on a live efivarfs, which only a VM under
/// OVMF should offer (`IMPRINT_TEST_EFIVARS=/sys/firmware/efi/efivars`;
/// never on a machine that matters). It reads back through a fresh store
/// and leaves the entry for `efibootmgr -v` to show.
#[test]
#[ignore = "needs a live efivarfs in a throwaway VM"]
fn register_on_a_live_efivarfs() {
    let Ok(dir) = std::env::var("IMPRINT_TEST_EFIVARS") else {
        panic!("set IMPRINT_TEST_EFIVARS to a throwaway VM's efivarfs");
    };
    let mut store = Efivarfs::new(&dir);
    let old = guid(ESP);
    let mut new = entry();
    new.partuuid = guid("0d1e2f3a-0000-4000-8000-000000000001");
    let done = register(
        &mut store,
        new.clone(),
        &[old],
        BootOrderPolicy::NetworkFirst,
        true,
    )
    .unwrap();
    println!("registered: {done}");
    let fresh = Efivarfs::new(&dir);
    let name = boot_entry_name(done.number);
    assert_eq!(
        LoadOption::decode(&fresh.read(&name).unwrap().unwrap()).unwrap(),
        new.load_option()
    );
    let order = vars::decode_boot_order(&fresh.read(BOOT_ORDER).unwrap().unwrap());
    assert_eq!(order, done.boot_order);
    assert_eq!(
        fresh.read(BOOT_NEXT).unwrap().unwrap(),
        done.number.to_le_bytes()
    );
    for stale in &done.deleted {
        assert_eq!(fresh.read(&boot_entry_name(*stale)).unwrap(), None);
    }
    // A second run finds everything in place.
    let again = register(
        &mut store,
        new,
        &[old],
        BootOrderPolicy::NetworkFirst,
        false,
    )
    .unwrap();
    assert!(!again.written);
    assert_eq!(again.number, done.number);
}

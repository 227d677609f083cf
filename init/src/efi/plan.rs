//! What to change in the boot variables after a deploy, decided without
//! touching them: which `Boot####` number the new entry takes, which stale
//! entries for this disk go, the new `BootOrder`, and `BootNext`.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use anyhow::{Result, bail};

use super::load_option::LoadOption;
use crate::disk::gpt::Guid;

/// Where the new entry goes in `BootOrder`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BootOrderPolicy {
    /// The order as it was: the new entry takes the place of the one it
    /// replaces (the first of them in the order), or goes last when it
    /// replaces none.
    #[default]
    Keep,
    /// Network entries first, in their order, then ours, then the rest:
    /// a provisioning system that boots machines over PXE (Digital Rebar)
    /// keeps control of the next boot, and the disk is the fallback.
    NetworkFirst,
    /// Ours first, then the rest in their order.
    DiskFirst,
}

impl fmt::Display for BootOrderPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootOrderPolicy::Keep => "keep",
            BootOrderPolicy::NetworkFirst => "network-first",
            BootOrderPolicy::DiskFirst => "disk-first",
        })
    }
}

/// The variables as read. An entry that exists but did not decode is
/// `None`: it is someone else's, stays in the order and is never reused or
/// deleted.
#[derive(Debug, Clone, Default)]
pub struct CurrentVars {
    pub entries: BTreeMap<u16, Option<LoadOption>>,
    /// `None` when the machine has no `BootOrder` variable.
    pub boot_order: Option<Vec<u16>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub number: u16,
    /// False when the entry already holds exactly the new option, so the
    /// firmware's flash is not written for nothing.
    pub write_entry: bool,
    /// Stale entries for this disk, ascending.
    pub delete: Vec<u16>,
    pub boot_order: Vec<u16>,
    /// False when `BootOrder` exists and already is `boot_order`.
    pub write_boot_order: bool,
    pub boot_next: Option<u16>,
}

/// Plans the change. `this_disk` holds the GUIDs of every partition of the
/// disk deployed to, from before the deploy and after: an entry that names
/// one of them points at an install this deploy replaced.
pub fn plan(
    current: &CurrentVars,
    new_entry: &LoadOption,
    this_disk: &[Guid],
    policy: BootOrderPolicy,
    boot_next: bool,
) -> Result<BootPlan> {
    let ours: HashSet<Guid> = this_disk.iter().copied().collect();
    let on_this_disk: Vec<(u16, &LoadOption)> = current
        .entries
        .iter()
        .filter_map(|(&n, option)| option.as_ref().map(|o| (n, o)))
        .filter(|(_, o)| o.partition_guids().iter().any(|g| ours.contains(g)))
        .collect();
    let order = current.boot_order.as_deref().unwrap_or(&[]);
    let position = |n: u16| order.iter().position(|&m| m == n).unwrap_or(usize::MAX);
    let new_loader = new_entry.loader_path().map(|p| p.to_ascii_lowercase());
    // Reuse an entry of this disk: one for the same loader (FAT compares
    // names without case) before any other, then the one the firmware
    // tries first, then the lowest number.
    let reused = on_this_disk
        .iter()
        .min_by_key(|(n, o)| {
            let same_loader = o.loader_path().map(|p| p.to_ascii_lowercase()) == new_loader;
            (!same_loader, position(*n), *n)
        })
        .map(|(n, _)| *n);
    let number = match reused {
        Some(n) => n,
        None => match (0..=u16::MAX).find(|n| !current.entries.contains_key(n)) {
            Some(n) => n,
            None => bail!(
                "all 65536 Boot#### variables exist and none points at this disk; \
                 delete unused entries (efibootmgr -b XXXX -B) and deploy again"
            ),
        },
    };
    let write_entry = !matches!(current.entries.get(&number), Some(Some(o)) if o == new_entry);
    let delete: Vec<u16> = on_this_disk
        .iter()
        .map(|(n, _)| *n)
        .filter(|&n| n != number)
        .collect();

    let boot_order = new_order(current, number, &delete, policy);
    let write_boot_order = current.boot_order.as_ref() != Some(&boot_order);
    Ok(BootPlan {
        number,
        write_entry,
        delete,
        boot_order,
        write_boot_order,
        boot_next: boot_next.then_some(number),
    })
}

fn new_order(
    current: &CurrentVars,
    number: u16,
    delete: &[u16],
    policy: BootOrderPolicy,
) -> Vec<u16> {
    let order = current.boot_order.as_deref().unwrap_or(&[]);
    // Keep's walk: the first entry that is ours or replaced by ours becomes
    // ours; deleted entries, entries that no longer exist and repeats go.
    let mut seen = BTreeSet::new();
    let mut kept = Vec::with_capacity(order.len() + 1);
    for &n in order {
        // A number in the order whose entry is gone is dropped even when
        // it is the free number ours now takes: the firmware's old
        // reference says nothing about where a new entry belongs.
        let replaced = n == number && current.entries.contains_key(&n);
        let m = if replaced || delete.contains(&n) {
            number
        } else if current.entries.contains_key(&n) {
            n
        } else {
            continue;
        };
        if seen.insert(m) {
            kept.push(m);
        }
    }
    if seen.insert(number) {
        kept.push(number);
    }
    let others = kept.iter().copied().filter(|&n| n != number);
    match policy {
        BootOrderPolicy::Keep => kept,
        BootOrderPolicy::DiskFirst => std::iter::once(number).chain(others).collect(),
        BootOrderPolicy::NetworkFirst => {
            let is_network =
                |n: &u16| matches!(current.entries.get(n), Some(Some(o)) if o.is_network());
            let (network, rest): (Vec<u16>, Vec<u16>) = others.partition(is_network);
            network.into_iter().chain([number]).chain(rest).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::efi::device_path::{DevicePath, HardDrive, Node};

    fn guid(last: u8) -> Guid {
        let mut g = Guid::parse("8c3f2d1e-5a4b-4c3d-9e8f-012345678900").unwrap();
        g.0[15] = last;
        g
    }

    fn disk_entry(label: &str, part: Guid, loader: &str) -> LoadOption {
        LoadOption::for_loader(label, HardDrive::gpt(1, 2048, 1 << 20, part), loader)
    }

    fn pxe(label: &str) -> LoadOption {
        LoadOption {
            attributes: 1,
            description: label.into(),
            file_path: DevicePath(vec![
                Node::Other {
                    kind: 3,
                    subtype: 11,
                    data: vec![0; 33],
                },
                Node::Other {
                    kind: 3,
                    subtype: 12,
                    data: vec![0; 23],
                },
                Node::End,
            ]),
            optional_data: vec![],
        }
    }

    fn shell() -> LoadOption {
        LoadOption {
            attributes: 1,
            description: "EFI Internal Shell".into(),
            file_path: DevicePath(vec![
                Node::Other {
                    kind: 4,
                    subtype: 7,
                    data: vec![1; 16],
                },
                Node::End,
            ]),
            optional_data: vec![],
        }
    }

    const NEW_LOADER: &str = "\\EFI\\debian\\shimx64.efi";

    fn new_entry() -> LoadOption {
        disk_entry("Debian", guid(0xa1), NEW_LOADER)
    }

    /// Boot0000 shell, Boot0001 PXE, Boot0002 an old install on this disk
    /// (another partition GUID: the table was rewritten), Boot0003 an OS on
    /// another disk, Boot0004 PXE v6; order 2,0,1,3,4.
    fn machine() -> CurrentVars {
        CurrentVars {
            entries: BTreeMap::from([
                (0, Some(shell())),
                (1, Some(pxe("UEFI PXEv4"))),
                (
                    2,
                    Some(disk_entry("old", guid(0x01), "\\EFI\\old\\grubx64.efi")),
                ),
                (3, Some(disk_entry("other disk", guid(0xee), NEW_LOADER))),
                (4, Some(pxe("UEFI PXEv6"))),
            ]),
            boot_order: Some(vec![2, 0, 1, 3, 4]),
        }
    }

    fn this_disk() -> Vec<Guid> {
        vec![guid(0x01), guid(0x02), guid(0xa1)]
    }

    fn run(current: &CurrentVars, policy: BootOrderPolicy) -> BootPlan {
        plan(current, &new_entry(), &this_disk(), policy, false).unwrap()
    }

    #[test]
    fn keep_puts_the_new_entry_where_the_replaced_one_was() {
        let p = run(&machine(), BootOrderPolicy::Keep);
        // Boot0002 points at this disk: reused, not deleted, same place.
        assert_eq!(p.number, 2);
        assert!(p.write_entry);
        assert_eq!(p.delete, Vec::<u16>::new());
        assert_eq!(p.boot_order, [2, 0, 1, 3, 4]);
        assert!(!p.write_boot_order);
        assert_eq!(p.boot_next, None);
    }

    #[test]
    fn keep_appends_a_new_entry_when_nothing_was_replaced() {
        let mut m = machine();
        m.entries.remove(&2);
        let p = run(&m, BootOrderPolicy::Keep);
        assert_eq!(p.number, 2, "the lowest free number");
        // 2 was in the order but no longer exists: dropped, then ours last.
        assert_eq!(p.boot_order, [0, 1, 3, 4, 2]);
        assert!(p.write_boot_order);
    }

    #[test]
    fn network_first_keeps_pxe_ahead_of_the_disk() {
        let p = run(&machine(), BootOrderPolicy::NetworkFirst);
        assert_eq!(p.boot_order, [1, 4, 2, 0, 3]);
    }

    #[test]
    fn disk_first_puts_ours_first() {
        let p = run(&machine(), BootOrderPolicy::DiskFirst);
        assert_eq!(p.boot_order, [2, 0, 1, 3, 4]);
        let mut m = machine();
        m.boot_order = Some(vec![4, 3, 2, 1, 0]);
        let p = run(&m, BootOrderPolicy::DiskFirst);
        assert_eq!(p.boot_order, [2, 4, 3, 1, 0]);
    }

    #[test]
    fn stale_entries_for_this_disk_go_and_the_same_loader_is_reused() {
        let mut m = machine();
        // Two more installs on this disk: Boot0006 has our loader path
        // (in other case), Boot0005 does not, and sits earlier in the order.
        m.entries.insert(
            5,
            Some(disk_entry("older", guid(0x02), "\\EFI\\old\\grubx64.efi")),
        );
        m.entries.insert(
            6,
            Some(disk_entry(
                "Debian",
                guid(0x01),
                "\\EFI\\DEBIAN\\SHIMX64.EFI",
            )),
        );
        m.boot_order = Some(vec![5, 0, 2, 1, 6, 3, 4]);
        let p = plan(&m, &new_entry(), &this_disk(), BootOrderPolicy::Keep, true).unwrap();
        assert_eq!(p.number, 6);
        assert_eq!(p.delete, [2, 5]);
        // Keep: ours takes the first replaced place (5's); 2 and the old 6
        // vanish. The entry on the other disk with our path stays.
        assert_eq!(p.boot_order, [6, 0, 1, 3, 4]);
        assert_eq!(p.boot_next, Some(6));
    }

    #[test]
    fn an_identical_entry_is_not_rewritten() {
        let mut m = machine();
        m.entries.insert(2, Some(new_entry()));
        let p = run(&m, BootOrderPolicy::Keep);
        assert_eq!(p.number, 2);
        assert!(!p.write_entry);
        assert!(!p.write_boot_order);
    }

    #[test]
    fn a_machine_without_boot_order() {
        let mut m = machine();
        m.boot_order = None;
        m.entries.remove(&2);
        for policy in [
            BootOrderPolicy::Keep,
            BootOrderPolicy::NetworkFirst,
            BootOrderPolicy::DiskFirst,
        ] {
            let p = run(&m, policy);
            assert_eq!(p.number, 2);
            assert_eq!(p.boot_order, [2], "{policy}");
            assert!(p.write_boot_order);
        }
    }

    #[test]
    fn duplicates_and_undecodable_entries() {
        let mut m = machine();
        m.entries.insert(7, None);
        m.boot_order = Some(vec![7, 0, 0, 2, 9, 2, 1, 7]);
        let p = run(&m, BootOrderPolicy::NetworkFirst);
        // 7 is kept (someone else's, unreadable, not network), 9 is gone,
        // repeats are gone; 3 and 4 exist outside the order and stay out.
        assert_eq!(p.boot_order, [1, 2, 7, 0]);
        assert_eq!(p.delete, Vec::<u16>::new());
        // An undecodable entry's number is never taken.
        let mut m = CurrentVars::default();
        m.entries.insert(0, None);
        assert_eq!(run(&m, BootOrderPolicy::Keep).number, 1);
    }

    #[test]
    fn every_number_taken_is_an_error() {
        let mut m = CurrentVars::default();
        for n in 0..=u16::MAX {
            m.entries.insert(n, None);
        }
        let err = plan(&m, &new_entry(), &this_disk(), BootOrderPolicy::Keep, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("65536"), "{err}");
        // One of them on this disk is reused even so.
        m.entries
            .insert(0xfffe, Some(disk_entry("old", guid(0x02), "\\x.efi")));
        let p = plan(&m, &new_entry(), &this_disk(), BootOrderPolicy::Keep, false).unwrap();
        assert_eq!(p.number, 0xfffe);
    }
}

//! Picking the one target disk for a [`DiskSelector`]: a pure function over
//! the disks [`list_disks`](super::list_disks) found.

use anyhow::{Result, bail};

use super::{DiskInfo, DiskSelector, Transport, find_named};

/// Chooses the disk `selector` names. Exactly one disk must match; otherwise
/// the error lists every disk and why it did or did not match.
/// `excluded_names` are disks hints must never choose, e.g. the USB stick
/// the image is read from (`sdb` or `/dev/sdb`).
pub fn select_disk<'a>(
    selector: &DiskSelector,
    disks: &'a [DiskInfo],
    excluded_names: &[String],
) -> Result<&'a DiskInfo> {
    let (wanted, names): (&str, fn(&DiskInfo) -> &[String]) = match selector {
        DiskSelector::Name(name) => return find_named(name, disks),
        DiskSelector::ById(id) => (id, |d| &d.by_id),
        DiskSelector::ByPath(path) => (path, |d| &d.by_path),
        DiskSelector::Hints { text, hints } => {
            return select_by_hints(text, hints, selector.is_explicit(), disks, excluded_names);
        }
    };
    match disks.iter().find(|d| names(d).iter().any(|n| n == wanted)) {
        Some(disk) if disk.read_only => bail!("disk {selector} is read-only: {}", disk.describe()),
        Some(disk) => Ok(disk),
        None => {
            let kind = if matches!(selector, DiskSelector::ById(_)) {
                "by-id"
            } else {
                "by-path"
            };
            let present = if disks.is_empty() {
                "none".to_owned()
            } else {
                disks
                    .iter()
                    .map(|d| format!("{}, {kind} {})", d.describe_open(), list(names(d))))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            bail!("disk {selector} not found; disks present: {present}")
        }
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(" ")
    }
}

fn select_by_hints<'a>(
    text: &str,
    hints: &[super::Hint],
    explicit: bool,
    disks: &'a [DiskInfo],
    excluded_names: &[String],
) -> Result<&'a DiskInfo> {
    let excluded = |disk: &DiskInfo| {
        excluded_names
            .iter()
            .any(|e| e.strip_prefix("/dev/").unwrap_or(e) == disk.name)
    };
    let verdicts: Vec<(&DiskInfo, Vec<String>)> = disks
        .iter()
        .map(|disk| {
            let mut reasons: Vec<String> = hints.iter().filter_map(|h| h.mismatch(disk)).collect();
            if disk.read_only {
                reasons.push("read-only".to_owned());
            }
            if !explicit {
                // Each of these could be the wrong disk to wipe, so only a
                // hint that names one disk reaches them.
                if disk.removable {
                    reasons.push("removable (name it to choose it)".to_owned());
                } else if disk.transport == Transport::Usb {
                    reasons.push("on USB (name it to choose it)".to_owned());
                }
                if excluded(disk) {
                    reasons.push("holds the image source (name it to choose it)".to_owned());
                }
                if disk.transport == Transport::Virtual {
                    reasons.push("virtual device (name it to choose it)".to_owned());
                }
            }
            (disk, reasons)
        })
        .collect();
    let (matching, other): (Vec<_>, Vec<_>) = verdicts
        .into_iter()
        .partition(|(_, reasons)| reasons.is_empty());
    let other_list = other
        .iter()
        .map(|(disk, reasons)| format!("{}: {})", disk.describe_open(), reasons.join(", ")))
        .collect::<Vec<_>>()
        .join("; ");
    match matching.as_slice() {
        [(disk, _)] => Ok(disk),
        [] if disks.is_empty() => bail!("no disk matches {text:?}: no disks present"),
        [] => bail!("no disk matches {text:?}: {other_list}"),
        several => {
            let chosen: Vec<&DiskInfo> = several.iter().map(|(d, _)| *d).collect();
            let listed = chosen
                .iter()
                .map(|d| d.describe())
                .collect::<Vec<_>>()
                .join(", ");
            let not_matching = if other.is_empty() {
                String::new()
            } else {
                format!("; not matching: {other_list}")
            };
            bail!(
                "{} disks match {text:?}: {listed}{not_matching}; add a hint such as {} to choose one",
                chosen.len(),
                distinguishing_hint(&chosen)
            )
        }
    }
}

/// A hint key whose values differ between all of `disks`, to suggest.
fn distinguishing_hint(disks: &[&DiskInfo]) -> &'static str {
    fn all_distinct<T: PartialEq>(values: &[Option<T>]) -> bool {
        values.iter().all(Option::is_some)
            && values
                .iter()
                .enumerate()
                .all(|(i, v)| !values[..i].contains(v))
    }
    let serials: Vec<_> = disks.iter().map(|d| d.serial.as_ref()).collect();
    let paths: Vec<_> = disks.iter().map(|d| d.by_path.first()).collect();
    if all_distinct(&serials) {
        "serial="
    } else if all_distinct(&paths) {
        "by-path="
    } else {
        "name="
    }
}

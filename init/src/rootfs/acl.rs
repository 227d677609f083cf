//! POSIX ACLs from GNU tar's text form (`SCHILY.acl.access`,
//! `SCHILY.acl.default`) to the kernel's `system.posix_acl_*` xattr value.
//!
//! GNU tar writes `acl_to_text(3)`'s long form, one entry a line, with user
//! and group *names* where the archiving machine knew them (even with
//! `--numeric-owner`). Names are looked up by the caller, in the new root's
//! `/etc/passwd` and `/etc/group`: those are the names the archive means.
//! The binary form is the kernel's `posix_acl_xattr_header` (version 2)
//! then `posix_acl_xattr_entry`s `{ tag: u16, perm: u16, id: u32 }`,
//! little-endian, sorted by tag then id (`include/uapi/linux/posix_acl_xattr.h`,
//! `posix_acl_valid` in `fs/posix_acl.c`).

/// `ACL_USER_OBJ` and friends (`include/uapi/linux/posix_acl.h`).
const USER_OBJ: u16 = 0x01;
const USER: u16 = 0x02;
const GROUP_OBJ: u16 = 0x04;
const GROUP: u16 = 0x08;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED_ID: u32 = u32::MAX;
const XATTR_VERSION: u32 = 2;

/// Which database a name in an entry is looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    User,
    Group,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    tag: u16,
    id: u32,
    perm: u16,
}

/// Converts an ACL in text form to the kernel's xattr value. `lookup`
/// turns a user or group name into its id.
pub fn acl_to_xattr(
    text: &str,
    lookup: &mut dyn FnMut(IdKind, &str) -> Option<u32>,
) -> Result<Vec<u8>, String> {
    let mut entries = Vec::new();
    for raw in text.split([',', '\n']) {
        // `#effective:r-x` comments, and blanks around entries.
        let entry = raw.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        entries.push(parse_entry(entry, lookup)?);
    }
    entries.sort();
    validate(&entries)?;
    let mut out = Vec::with_capacity(4 + 8 * entries.len());
    out.extend_from_slice(&XATTR_VERSION.to_le_bytes());
    for e in &entries {
        out.extend_from_slice(&e.tag.to_le_bytes());
        out.extend_from_slice(&e.perm.to_le_bytes());
        out.extend_from_slice(&e.id.to_le_bytes());
    }
    Ok(out)
}

fn parse_entry(
    entry: &str,
    lookup: &mut dyn FnMut(IdKind, &str) -> Option<u32>,
) -> Result<Entry, String> {
    let bad = |why: &str| format!("ACL entry {entry:?}: {why}");
    let body = entry
        .strip_prefix("default:")
        .or_else(|| entry.strip_prefix("d:"))
        .unwrap_or(entry);
    let fields: Vec<&str> = body.split(':').map(str::trim).collect();
    let (tag_name, qualifier, perms, numeric) = match fields.as_slice() {
        [tag, perms] => (*tag, "", *perms, None),
        [tag, qualifier, perms] => (*tag, *qualifier, *perms, None),
        // Some writers append the numeric id after the permissions.
        [tag, qualifier, perms, id] => (*tag, *qualifier, *perms, Some(*id)),
        _ => return Err(bad("not tag:qualifier:permissions")),
    };
    let kind = match tag_name {
        "user" | "u" => Some(IdKind::User),
        "group" | "g" => Some(IdKind::Group),
        "mask" | "m" | "other" | "o" => None,
        _ => return Err(bad("unknown tag")),
    };
    let perm = parse_perms(perms).ok_or_else(|| bad("bad permissions"))?;
    let (tag, id) = match (kind, qualifier) {
        (Some(IdKind::User), "") => (USER_OBJ, UNDEFINED_ID),
        (Some(IdKind::Group), "") => (GROUP_OBJ, UNDEFINED_ID),
        (Some(kind), name) => {
            let id = match numeric.and_then(|n| n.parse().ok()) {
                Some(id) => id,
                None => resolve(kind, name, lookup)
                    .ok_or_else(|| bad(&format!("no such {}", describe(kind))))?,
            };
            let tag = if kind == IdKind::User { USER } else { GROUP };
            (tag, id)
        }
        (None, "") => {
            let tag = if tag_name.starts_with('m') {
                MASK
            } else {
                OTHER
            };
            (tag, UNDEFINED_ID)
        }
        (None, _) => return Err(bad("mask and other take no qualifier")),
    };
    Ok(Entry { tag, id, perm })
}

fn describe(kind: IdKind) -> &'static str {
    match kind {
        IdKind::User => "user",
        IdKind::Group => "group",
    }
}

/// A numeric id, else the name looked up (libacl tries the name first; a
/// new root's names are unknown to imprint until its files exist, and a
/// rootfs's names are never all digits).
fn resolve(
    kind: IdKind,
    name: &str,
    lookup: &mut dyn FnMut(IdKind, &str) -> Option<u32>,
) -> Option<u32> {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
        return name.parse().ok();
    }
    lookup(kind, name)
}

/// `rwx`, `r-x`, `rx`, `---`: any order, `-` as a placeholder.
fn parse_perms(text: &str) -> Option<u16> {
    let mut perm = 0;
    for c in text.chars() {
        perm |= match c {
            'r' => 4,
            'w' => 2,
            'x' => 1,
            '-' => 0,
            _ => return None,
        };
    }
    Some(perm)
}

/// What the kernel's `posix_acl_valid` insists on, checked here for an
/// error that names the problem.
fn validate(entries: &[Entry]) -> Result<(), String> {
    let count = |tag| entries.iter().filter(|e| e.tag == tag).count();
    for (tag, name) in [
        (USER_OBJ, "user::"),
        (GROUP_OBJ, "group::"),
        (OTHER, "other::"),
    ] {
        if count(tag) != 1 {
            return Err(format!("an ACL needs exactly one {name} entry"));
        }
    }
    if count(MASK) > 1 {
        return Err("an ACL has at most one mask entry".to_owned());
    }
    if count(MASK) == 0 && (count(USER) > 0 || count(GROUP) > 0) {
        return Err("an ACL with named users or groups needs a mask entry".to_owned());
    }
    if entries
        .windows(2)
        .any(|w| w[0].tag == w[1].tag && w[0].id == w[1].id)
    {
        return Err("an ACL names the same user or group twice".to_owned());
    }
    Ok(())
}

/// Users or groups by name, from `passwd(5)` or `group(5)` text: the
/// third field of `name:x:id:...` lines.
pub fn id_from_db(db: &str, name: &str) -> Option<u32> {
    db.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        fields.nth(1)?.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_names(_: IdKind, _: &str) -> Option<u32> {
        None
    }

    fn entries(bytes: &[u8]) -> Vec<(u16, u16, u32)> {
        assert_eq!(bytes[..4], 2u32.to_le_bytes());
        bytes[4..]
            .chunks_exact(8)
            .map(|e| {
                (
                    u16::from_le_bytes([e[0], e[1]]),
                    u16::from_le_bytes([e[2], e[3]]),
                    u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                )
            })
            .collect()
    }

    #[test]
    fn gnu_tar_text_with_numeric_ids_sorted_as_the_kernel_wants() {
        let text =
            "user::rwx\ngroup::r-x\nother::r-x\nmask::r-x\nuser:1000:r-x\ngroup:50:rw-\nuser:7:---";
        let bytes = acl_to_xattr(text, &mut no_names).unwrap();
        assert_eq!(
            entries(&bytes),
            vec![
                (USER_OBJ, 7, UNDEFINED_ID),
                (USER, 0, 7),
                (USER, 5, 1000),
                (GROUP_OBJ, 5, UNDEFINED_ID),
                (GROUP, 6, 50),
                (MASK, 5, UNDEFINED_ID),
                (OTHER, 5, UNDEFINED_ID),
            ]
        );
    }

    #[test]
    fn short_forms_commas_comments_and_names() {
        let text = "u::rw,u:alice:rx,g::r #effective:r--,m::rx, o::-,d:g:staff:r";
        let mut lookup = |kind: IdKind, name: &str| match (kind, name) {
            (IdKind::User, "alice") => Some(1001),
            (IdKind::Group, "staff") => Some(50),
            _ => None,
        };
        let bytes = acl_to_xattr(text, &mut lookup).unwrap();
        assert_eq!(
            entries(&bytes),
            vec![
                (USER_OBJ, 6, UNDEFINED_ID),
                (USER, 5, 1001),
                (GROUP_OBJ, 4, UNDEFINED_ID),
                (GROUP, 4, 50),
                (MASK, 5, UNDEFINED_ID),
                (OTHER, 0, UNDEFINED_ID),
            ]
        );
    }

    #[test]
    fn a_trailing_numeric_id_wins_over_the_name() {
        let text = "user::rwx,user:nobody-here:r-x:4321,group::r-x,mask::r-x,other::---";
        let bytes = acl_to_xattr(text, &mut no_names).unwrap();
        assert!(entries(&bytes).contains(&(USER, 5, 4321)));
    }

    #[test]
    fn malformed_acls_are_refused_with_the_reason() {
        let cases = [
            ("user::rwx,group::r-x", "other::"),
            ("user::rwx,user:5:r,group::r,other::r", "mask"),
            (
                "user::rwx,user:bob:r,group::r,mask::r,other::r",
                "no such user",
            ),
            ("user::rwz,group::r,other::r", "bad permissions"),
            ("wheel::rwx,group::r,other::r", "unknown tag"),
            ("user::rwx,group::r,other::r,mask:3:r", "no qualifier"),
            (
                "user::r,user:5:r,user:5:w,group::r,mask::r,other::r",
                "twice",
            ),
            ("user::r,user::r,group::r,other::r", "exactly one user::"),
        ];
        for (text, why) in cases {
            let err = acl_to_xattr(text, &mut no_names).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn ids_from_passwd_and_group_text() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1001:1001::/home/alice:/bin/sh\n";
        assert_eq!(id_from_db(passwd, "alice"), Some(1001));
        assert_eq!(id_from_db(passwd, "root"), Some(0));
        assert_eq!(id_from_db(passwd, "bob"), None);
        assert_eq!(id_from_db("staff:x:50:\n", "staff"), Some(50));
    }
}

//! The image's `/etc/passwd` and `/etc/group`: owners are the image's, not
//! the deploy environment's (there is no user database in the initramfs).

use anyhow::{Context, Result, bail};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
}

/// `name:password:uid:gid:gecos:home:shell`. Lines that do not fit (comments,
/// NIS `+` entries, damage) are skipped: one odd line must not stop a deploy
/// that never needed it.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 7 || fields[0].is_empty() || fields[0].starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: fields[0].to_owned(),
                uid: fields[2].parse().ok()?,
                gid: fields[3].parse().ok()?,
                home: fields[5].to_owned(),
            })
        })
        .collect()
}

/// `name:password:gid:members`.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            if fields.len() < 4 || fields[0].is_empty() || fields[0].starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: fields[0].to_owned(),
                gid: fields[2].parse().ok()?,
            })
        })
        .collect()
}

/// The image's users and groups, read once per plan.
#[derive(Debug, Default)]
pub(crate) struct Accounts {
    pub users: Vec<PasswdEntry>,
    pub groups: Vec<GroupEntry>,
}

impl Accounts {
    pub fn user(&self, name: &str) -> Result<&PasswdEntry> {
        self.users
            .iter()
            .find(|u| u.name == name)
            .with_context(|| format!("user {name:?} not found in the image's /etc/passwd"))
    }

    /// `user[:group]`, names or numbers. A user alone gets its primary group.
    pub fn owner(&self, spec: &str) -> Result<(u32, u32)> {
        let (user, group) = match spec.split_once(':') {
            Some((user, group)) => (user, Some(group)),
            None => (spec, None),
        };
        let (uid, primary_gid) = match user.parse::<u32>() {
            Ok(uid) => (uid, self.users.iter().find(|u| u.uid == uid).map(|u| u.gid)),
            Err(_) => {
                let entry = self.user(user).with_context(|| format!("owner {spec:?}"))?;
                (entry.uid, Some(entry.gid))
            }
        };
        let gid = match group {
            None => match primary_gid {
                Some(gid) => gid,
                None => {
                    bail!("owner {spec:?}: uid {uid} has no entry in /etc/passwd; name a group")
                }
            },
            Some(group) => match group.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => self
                    .groups
                    .iter()
                    .find(|g| g.name == group)
                    .map(|g| g.gid)
                    .with_context(|| {
                        format!("owner {spec:?}: group {group:?} not found in /etc/group")
                    })?,
            },
        };
        Ok((uid, gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
                          # comment\n\
                          +nis::::::\n\
                          broken:x:zz:1:::\n\
                          ubuntu:x:1000:1000:Ubuntu:/home/ubuntu:/bin/bash\n\
                          svc:x:998:4:svc:/var/lib/svc:/usr/sbin/nologin\n";
    const GROUP: &str = "root:x:0:\nadm:x:4:syslog,ubuntu\nubuntu:x:1000:\nwww:x:33:\n";

    fn accounts() -> Accounts {
        Accounts {
            users: parse_passwd(PASSWD),
            groups: parse_group(GROUP),
        }
    }

    #[test]
    fn passwd_parsing_skips_odd_lines() {
        let users = parse_passwd(PASSWD);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "ubuntu", "svc"]);
        assert_eq!(
            users[1],
            PasswdEntry {
                name: "ubuntu".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/ubuntu".into()
            }
        );
        assert_eq!(
            parse_group(GROUP)[1],
            GroupEntry {
                name: "adm".into(),
                gid: 4
            }
        );
        assert!(parse_passwd("").is_empty());
        assert!(parse_group("a:b\n::1:\n").is_empty());
    }

    #[test]
    fn owners_resolve_names_numbers_and_primary_groups() {
        let accounts = accounts();
        assert_eq!(accounts.owner("ubuntu").unwrap(), (1000, 1000));
        assert_eq!(accounts.owner("svc").unwrap(), (998, 4));
        assert_eq!(accounts.owner("ubuntu:www").unwrap(), (1000, 33));
        assert_eq!(accounts.owner("1000:4").unwrap(), (1000, 4));
        assert_eq!(accounts.owner("0").unwrap(), (0, 0));
        let err = accounts.owner("bob").unwrap_err();
        assert!(format!("{err:#}").contains("\"bob\" not found"), "{err:#}");
        let err = accounts.owner("ubuntu:nogroup").unwrap_err();
        assert!(
            format!("{err:#}").contains("\"nogroup\" not found"),
            "{err:#}"
        );
        let err = accounts.owner("4242").unwrap_err();
        assert!(format!("{err:#}").contains("uid 4242"), "{err:#}");
    }
}

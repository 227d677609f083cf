//! From an identity and what the image holds to a list of file operations.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{GeneralPurpose, general_purpose};

use super::passwd::{Accounts, parse_group, parse_passwd};
use super::{FileOp, FileSpec, Identity, ImageView, InjectContext, cloud_init, drp, network};

/// The file operations that give the image this identity, in the order they
/// must be applied. Reads the image through `ctx.image` only; writes nothing.
/// Order: hostname, SSH keys, network, cloud-init, DRP agent, the spec's
/// files (last, so they can override anything above), machine-id.
pub fn plan(identity: &Identity, ctx: &InjectContext<'_>) -> Result<Vec<FileOp>> {
    let image = ctx.image;
    let accounts = Accounts {
        users: parse_passwd(&read_text(image, "/etc/passwd")?.unwrap_or_default()),
        groups: parse_group(&read_text(image, "/etc/group")?.unwrap_or_default()),
    };
    let hostname = identity.hostname.as_deref().or(ctx.machine_name.as_deref());
    let mut ops = Vec::new();
    if let Some(hostname) = hostname {
        check_hostname(hostname)?;
        ops.extend(plan_hostname(hostname, image)?);
    }
    let keys = ssh_keys(identity)?;
    ops.extend(plan_ssh_keys(
        &keys,
        identity.ssh_user.as_deref(),
        &accounts,
        image,
    )?);
    let network = match &identity.network {
        Some(spec) => Some(network::resolve(spec, ctx.boot_mac).context("network")?),
        None => None,
    };
    if let Some(interfaces) = &network {
        let flavour = network::choose_flavour(ctx.os_family, image)?;
        ops.extend(network::plan(flavour, interfaces)?);
    }
    if identity.cloud_init.is_some() || image.exists("/etc/cloud") {
        let default = super::CloudInit::default();
        let seed = cloud_init::Seed {
            config: identity.cloud_init.as_ref().unwrap_or(&default),
            instance_id: ctx.instance_id.as_deref(),
            hostname,
            keys: &keys,
            network: network.as_deref(),
        };
        ops.extend(cloud_init::plan(&seed));
    }
    if let Some(agent) = &identity.drp {
        ops.extend(drp::plan(agent)?);
    }
    for (i, file) in identity.files.iter().enumerate() {
        ops.extend(
            plan_file(file, &accounts).with_context(|| format!("files[{i}] {:?}", file.path))?,
        );
    }
    if identity.reset_machine_id && image.exists("/etc/machine-id") {
        ops.push(FileOp::Truncate {
            path: "/etc/machine-id".into(),
        });
    }
    Ok(ops)
}

fn read_text(image: &dyn ImageView, path: &str) -> Result<Option<String>> {
    Ok(image
        .read(path)?
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned()))
}

/// RFC 1123: dot-separated labels of letters, digits and inner hyphens. The
/// name lands in shell-parsed files (`/etc/hosts`, ifcfg), so nothing else
/// gets through.
pub(crate) fn check_hostname(name: &str) -> Result<()> {
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(valid_label) {
        bail!("hostname {name:?} is not a valid host name (RFC 1123)");
    }
    Ok(())
}

fn plan_hostname(hostname: &str, image: &dyn ImageView) -> Result<Vec<FileOp>> {
    let hosts = read_text(image, "/etc/hosts")?;
    Ok(vec![
        write("/etc/hostname", format!("{hostname}\n"), 0o644),
        write("/etc/hosts", edit_hosts(hosts.as_deref(), hostname), 0o644),
    ])
}

/// Debian's convention: the host's own name on `127.0.1.1`, so it resolves
/// without DNS. The first such line is replaced, later ones dropped, every
/// other line kept; with none, the line goes after the `127.0.0.1` one.
pub(crate) fn edit_hosts(current: Option<&str>, hostname: &str) -> String {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let ours = if short == hostname {
        format!("127.0.1.1\t{hostname}")
    } else {
        format!("127.0.1.1\t{hostname} {short}")
    };
    let Some(current) = current else {
        return format!(
            "127.0.0.1\tlocalhost\n{ours}\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    };
    let mut lines: Vec<String> = Vec::new();
    let mut placed = false;
    for line in current.lines() {
        if line.split_whitespace().next() == Some("127.0.1.1") {
            if !placed {
                lines.push(ours.clone());
                placed = true;
            }
            continue;
        }
        lines.push(line.to_owned());
    }
    if !placed {
        let at = lines
            .iter()
            .position(|l| l.split_whitespace().next() == Some("127.0.0.1"))
            .map_or(lines.len(), |i| i + 1);
        lines.insert(at, ours);
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Root's keys: `ssh-keys` then `access-keys` values, deduplicated by key
/// material, order kept. A newline inside a key would smuggle in a second
/// authorized_keys line (with options such as `command=`): refused.
pub(crate) fn ssh_keys(identity: &Identity) -> Result<Vec<String>> {
    let mut keys: Vec<String> = Vec::new();
    let named = identity.ssh_keys.iter().map(|k| ("ssh-keys", k.as_str()));
    let access = identity
        .access_keys
        .iter()
        .map(|(name, k)| (name.as_str(), k.as_str()));
    for (origin, key) in named.chain(access) {
        let key = key.trim();
        if key.is_empty() {
            continue;
        }
        if key.contains(['\n', '\r', '\0']) {
            bail!("ssh key from {origin:?} spans several lines");
        }
        if !keys.iter().any(|k| key_material(k) == key_material(key)) {
            keys.push(key.to_owned());
        }
    }
    Ok(keys)
}

/// What identifies a key whatever its options and comment: the base64 blob,
/// which always starts `AAAA` (the length prefix of the key type name).
fn key_material(line: &str) -> &str {
    line.split_whitespace()
        .find(|field| field.starts_with("AAAA"))
        .unwrap_or(line.trim())
}

fn plan_ssh_keys(
    keys: &[String],
    user: Option<&str>,
    accounts: &Accounts,
    image: &dyn ImageView,
) -> Result<Vec<FileOp>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let mut ops = Vec::new();
    let root_home = accounts
        .users
        .iter()
        .find(|u| u.uid == 0 && u.name == "root")
        .map_or("/root", |u| u.home.as_str());
    let mut targets = vec![(usable_home(root_home, "root"), 0, 0)];
    if let Some(user) = user {
        let entry = accounts.user(user).context("ssh-user")?;
        targets.push((usable_home(&entry.home, user), entry.uid, entry.gid));
    }
    for (home, uid, gid) in targets {
        let dir = format!("{home}/.ssh");
        let path = format!("{dir}/authorized_keys");
        let existing = read_text(image, &path)?;
        // An existing home is left as it is; a missing one (cloud images
        // often create users on first boot) must belong to its user, or sshd's
        // StrictModes ignores the keys.
        ops.push(FileOp::Mkdir {
            path: home.clone(),
            mode: 0o700,
            uid,
            gid,
        });
        ops.push(FileOp::Mkdir {
            path: dir,
            mode: 0o700,
            uid,
            gid,
        });
        ops.push(FileOp::Write {
            path,
            contents: merge_authorized_keys(existing.as_deref(), keys).into_bytes(),
            mode: 0o600,
            uid,
            gid,
        });
    }
    Ok(ops)
}

/// A home from passwd, or `/home/<user>` when it is empty or relative
/// (`/` or `/nonexistent` are used as given: the user's sshd looks there).
fn usable_home(home: &str, user: &str) -> String {
    if home.starts_with('/') && !home.split('/').any(|part| part == "..") {
        home.trim_end_matches('/').to_owned()
    } else {
        format!("/home/{user}")
    }
}

/// Existing lines kept as they are; new keys appended unless their key
/// material is already there.
pub(crate) fn merge_authorized_keys(existing: Option<&str>, keys: &[String]) -> String {
    let mut text = existing.unwrap_or_default().to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    let present: Vec<String> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| key_material(l).to_owned())
        .collect();
    for key in keys {
        if !present.iter().any(|p| p == key_material(key)) {
            text.push_str(key);
            text.push('\n');
        }
    }
    text
}

fn plan_file(file: &FileSpec, accounts: &Accounts) -> Result<Vec<FileOp>> {
    let path = file.path.as_str();
    if !path.starts_with('/') || path.ends_with('/') || path.split('/').any(|p| p == "..") {
        bail!("path must be absolute, name a file and have no '..'");
    }
    let (uid, gid) = match &file.owner {
        Some(owner) => accounts.owner(owner)?,
        None => (0, 0),
    };
    let mode = file.mode.map_or(0o644, |m| m.0);
    let parent = match path.rsplit_once('/') {
        Some(("", _)) | None => None,
        Some((parent, _)) => Some(parent.to_owned()),
    };
    let mut ops = Vec::new();
    if let Some(parent) = parent {
        ops.push(FileOp::Mkdir {
            path: parent,
            mode: 0o755,
            uid: 0,
            gid: 0,
        });
    }
    let path = path.to_owned();
    ops.push(match (&file.content, &file.base64, &file.url) {
        (Some(text), None, None) => FileOp::Write {
            path,
            contents: text.clone().into_bytes(),
            mode,
            uid,
            gid,
        },
        (None, Some(encoded), None) => FileOp::Write {
            path,
            contents: decode_base64(encoded).context("base64")?,
            mode,
            uid,
            gid,
        },
        (None, None, Some(url)) => FileOp::Fetch {
            path,
            url: url.clone(),
            mode,
            uid,
            gid,
        },
        _ => bail!("give exactly one of content, base64, url"),
    });
    Ok(ops)
}

/// Standard alphabet, padding optional, whitespace ignored (PEM-style line
/// breaks are common in hand-written specs), trailing bits not checked.
fn decode_base64(text: &str) -> Result<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &alphabet::STANDARD,
        general_purpose::PAD_INDIFFERENT.with_decode_allow_trailing_bits(true),
    );
    let compact: Vec<u8> = text
        .bytes()
        .filter(|byte| !matches!(byte, b' ' | b'\t' | b'\r' | b'\n'))
        .collect();
    Ok(LENIENT.decode(compact)?)
}

fn write(path: &str, contents: String, mode: u32) -> FileOp {
    FileOp::Write {
        path: path.to_owned(),
        contents: contents.into_bytes(),
        mode,
        uid: 0,
        gid: 0,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::{FileMode, MemoryImage, OsFamilyHint};
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1001::/home/ubuntu:/bin/sh\n";

    fn ctx(image: &MemoryImage) -> InjectContext<'_> {
        InjectContext {
            boot_mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            os_family: OsFamilyHint::Debian,
            machine_name: None,
            instance_id: None,
            image,
        }
    }

    fn text(op: &FileOp) -> &str {
        match op {
            FileOp::Write { contents, .. } => std::str::from_utf8(contents).unwrap(),
            other => panic!("not a write: {other}"),
        }
    }

    fn lines(ops: &[FileOp]) -> Vec<String> {
        ops.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_empty_identity_on_a_bare_image_does_nothing() {
        let image = MemoryImage::default();
        assert!(plan(&Identity::default(), &ctx(&image)).unwrap().is_empty());
    }

    #[test]
    fn hostname_writes_hostname_and_hosts() {
        let image = MemoryImage::default().with_file(
            "/etc/hosts",
            "127.0.0.1 localhost\n127.0.1.1 old old.example\n# keep me\n::1 ip6-localhost\n127.0.1.1 dup\n",
        );
        let identity = Identity {
            hostname: Some("web1.example.com".into()),
            ..Identity::default()
        };
        let ops = plan(&identity, &ctx(&image)).unwrap();
        assert_eq!(
            lines(&ops),
            [
                "write /etc/hostname (0644 0:0, 17 bytes)",
                "write /etc/hosts (0644 0:0, 80 bytes)"
            ]
        );
        assert_eq!(text(&ops[0]), "web1.example.com\n");
        assert_eq!(
            text(&ops[1]),
            "127.0.0.1 localhost\n127.0.1.1\tweb1.example.com web1\n# keep me\n::1 ip6-localhost\n"
        );
    }

    #[test]
    fn hosts_line_is_added_after_localhost_or_created() {
        assert_eq!(
            edit_hosts(Some("# c\n127.0.0.1\tlocalhost\n10.0.0.1 gw"), "h"),
            "# c\n127.0.0.1\tlocalhost\n127.0.1.1\th\n10.0.0.1 gw\n"
        );
        assert_eq!(edit_hosts(Some(""), "h"), "127.0.1.1\th\n");
        assert_eq!(
            edit_hosts(None, "h"),
            "127.0.0.1\tlocalhost\n127.0.1.1\th\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
    }

    #[test]
    fn machine_name_is_the_fallback_hostname_and_bad_names_fail() {
        let image = MemoryImage::default();
        let mut context = ctx(&image);
        context.machine_name = Some("m1".into());
        let ops = plan(&Identity::default(), &context).unwrap();
        assert_eq!(text(&ops[0]), "m1\n");
        for bad in ["", "a b", "-a", "a-", "a..b", "x;rm -rf", &"a".repeat(64)] {
            let identity = Identity {
                hostname: Some(bad.into()),
                ..Identity::default()
            };
            let err = plan(&identity, &ctx(&image)).unwrap_err();
            assert!(
                err.to_string().contains("not a valid host name"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn ssh_keys_go_to_root_and_the_user_kept_and_deduplicated() {
        let image = MemoryImage::default()
            .with_file("/etc/passwd", PASSWD)
            .with_file(
                "/root/.ssh/authorized_keys",
                "# managed\nssh-rsa AAAAold old@host",
            )
            .with_file(
                "/home/ubuntu/.ssh/authorized_keys",
                "ssh-ed25519 AAAAk1 other-comment\n",
            );
        let identity = Identity {
            ssh_keys: vec![
                "ssh-ed25519 AAAAk1 a@b".into(),
                " ssh-ed25519 AAAAk1 dup ".into(),
                "ssh-rsa AAAAold again".into(),
            ],
            access_keys: BTreeMap::from([
                ("ops".into(), "ecdsa-sha2-nistp256 AAAAk2 ops".into()),
                ("same".into(), "ssh-ed25519 AAAAk1 z".into()),
            ]),
            ssh_user: Some("ubuntu".into()),
            ..Identity::default()
        };
        let ops = plan(&identity, &ctx(&image)).unwrap();
        assert_eq!(
            lines(&ops),
            [
                "mkdir /root (0700 0:0)",
                "mkdir /root/.ssh (0700 0:0)",
                "write /root/.ssh/authorized_keys (0600 0:0, 89 bytes)",
                "mkdir /home/ubuntu (0700 1000:1001)",
                "mkdir /home/ubuntu/.ssh (0700 1000:1001)",
                "write /home/ubuntu/.ssh/authorized_keys (0600 1000:1001, 86 bytes)",
            ]
        );
        assert_eq!(
            text(&ops[2]),
            "# managed\nssh-rsa AAAAold old@host\nssh-ed25519 AAAAk1 a@b\necdsa-sha2-nistp256 AAAAk2 ops\n"
        );
        assert_eq!(
            text(&ops[5]),
            "ssh-ed25519 AAAAk1 other-comment\nssh-rsa AAAAold again\necdsa-sha2-nistp256 AAAAk2 ops\n"
        );
    }

    #[test]
    fn an_unknown_ssh_user_is_named() {
        let image = MemoryImage::default().with_file("/etc/passwd", PASSWD);
        let identity = Identity {
            ssh_keys: vec!["ssh-ed25519 AAAAk".into()],
            ssh_user: Some("bob".into()),
            ..Identity::default()
        };
        let err = plan(&identity, &ctx(&image)).unwrap_err();
        assert!(
            format!("{err:#}").contains("user \"bob\" not found"),
            "{err:#}"
        );
        let identity = Identity {
            ssh_keys: vec!["a\ncommand=\"x\" AAAAk".into()],
            ..identity
        };
        assert!(
            plan(&identity, &ctx(&image))
                .unwrap_err()
                .to_string()
                .contains("several lines")
        );
    }

    #[test]
    fn files_resolve_owner_mode_and_source() {
        let image = MemoryImage::default()
            .with_file("/etc/passwd", PASSWD)
            .with_file("/etc/group", "root:x:0:\nadm:x:4:\n");
        let identity = Identity {
            files: vec![
                FileSpec {
                    path: "/etc/motd".into(),
                    content: Some("hi\n".into()),
                    ..FileSpec::default()
                },
                FileSpec {
                    path: "/opt/app/key".into(),
                    mode: Some(FileMode(0o400)),
                    owner: Some("ubuntu:adm".into()),
                    base64: Some("aGVs\nbG8=".into()),
                    ..FileSpec::default()
                },
                FileSpec {
                    path: "/bin-x".into(),
                    url: Some("http://h/x".into()),
                    mode: Some(FileMode(0o755)),
                    ..FileSpec::default()
                },
            ],
            ..Identity::default()
        };
        let ops = plan(&identity, &ctx(&image)).unwrap();
        assert_eq!(
            lines(&ops),
            [
                "mkdir /etc (0755 0:0)",
                "write /etc/motd (0644 0:0, 3 bytes)",
                "mkdir /opt/app (0755 0:0)",
                "write /opt/app/key (0400 1000:4, 5 bytes)",
                "fetch /bin-x from http://h/x (0755 0:0)",
            ]
        );
        assert_eq!(text(&ops[3]), "hello");
    }

    #[test]
    fn bad_files_are_named() {
        let image = MemoryImage::default();
        let cases = [
            (
                FileSpec {
                    path: "rel".into(),
                    content: Some(String::new()),
                    ..FileSpec::default()
                },
                "absolute",
            ),
            (
                FileSpec {
                    path: "/a/../b".into(),
                    content: Some(String::new()),
                    ..FileSpec::default()
                },
                "'..'",
            ),
            (
                FileSpec {
                    path: "/a".into(),
                    ..FileSpec::default()
                },
                "exactly one",
            ),
            (
                FileSpec {
                    path: "/a".into(),
                    content: Some(String::new()),
                    url: Some("u".into()),
                    ..FileSpec::default()
                },
                "exactly one",
            ),
            (
                FileSpec {
                    path: "/a".into(),
                    base64: Some("a$".into()),
                    ..FileSpec::default()
                },
                "Invalid symbol 36, offset 1",
            ),
            (
                FileSpec {
                    path: "/a".into(),
                    owner: Some("bob".into()),
                    content: Some(String::new()),
                    ..FileSpec::default()
                },
                "\"bob\" not found",
            ),
        ];
        for (file, expected) in cases {
            let identity = Identity {
                files: vec![file],
                ..Identity::default()
            };
            let err = format!("{:#}", plan(&identity, &ctx(&image)).unwrap_err());
            assert!(
                err.starts_with("files[0]") && err.contains(expected),
                "{err}"
            );
        }
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        assert_eq!(decode_base64("").unwrap(), b"");
        assert_eq!(decode_base64("Zg==").unwrap(), b"f");
        assert_eq!(decode_base64("Zm8").unwrap(), b"fo");
        assert_eq!(decode_base64("Zm9v").unwrap(), b"foo");
        assert_eq!(decode_base64("/+/+").unwrap(), [0xff, 0xef, 0xfe]);
        assert!(decode_base64("Z").is_err());
        assert!(decode_base64("Zg==Zg").is_err());
    }

    #[test]
    fn machine_id_is_emptied_unless_turned_off() {
        let image = MemoryImage::default().with_file("/etc/machine-id", "abc\n");
        let ops = plan(&Identity::default(), &ctx(&image)).unwrap();
        assert_eq!(lines(&ops), ["truncate /etc/machine-id"]);
        let identity = Identity {
            reset_machine_id: false,
            ..Identity::default()
        };
        assert!(plan(&identity, &ctx(&image)).unwrap().is_empty());
    }
}

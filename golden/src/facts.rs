//! The facts the golden OS reports about its root filesystem, one
//! `GOLDEN-OS: name=value` line each, read from the mounted root at `tree`.
//!
//! The paths are the ones imprint's injection writes (`init/src/inject/`):
//! each network flavour's directory, the NoCloud seed under `/curtin`, the
//! DRP agent's configuration. A value never holds a newline, so each fact is
//! exactly one console line.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::PREFIX;

/// Whether a file name in a network directory is a configuration file.
type NameFilter = fn(&str) -> bool;

/// Where each network flavour keeps its files, and which names count:
/// (directory inside the root, file name filter).
const NETWORK_DIRS: &[(&str, NameFilter)] = &[
    ("/etc/netplan", |name| name.ends_with(".yaml")),
    ("/etc/systemd/network", |name| {
        name.ends_with(".network") || name.ends_with(".link") || name.ends_with(".netdev")
    }),
    ("/etc/NetworkManager/system-connections", |_| true),
    ("/etc/sysconfig/network-scripts", |name| {
        name.starts_with("ifcfg-")
    }),
    ("/etc/network/interfaces.d", |_| true),
];

/// NoCloud seed directories: imprint's (and classic image-deploy's)
/// `/curtin`, and cloud-init's own seed locations.
const SEED_DIRS: &[&str] = &[
    "/curtin",
    "/var/lib/cloud/seed/nocloud",
    "/var/lib/cloud/seed/nocloud-net",
];

/// The DRP agent's configuration, which imprint writes with the token.
const DRP_AGENT_CFG: &str = "/var/lib/drp-agent/agent-cfg.yml";

/// `GOLDEN-OS: booted cmdline=…`, printed first, before the root is known.
pub fn booted_line(cmdline: &str) -> String {
    format!("{PREFIX} booted cmdline={}", one_line(cmdline.trim()))
}

/// `GOLDEN-OS: root=/dev/vda2 fstype=ext4 uuid=…`.
pub fn root_line(device: &Path, fstype: &str, uuid: &str) -> String {
    format!(
        "{PREFIX} root={} fstype={fstype} uuid={uuid}",
        device.display()
    )
}

/// `GOLDEN-OS: error <message>`: the last line before powering off when
/// something went wrong.
pub fn error_line(error: &anyhow::Error) -> String {
    format!("{PREFIX} error {}", one_line(&format!("{error:#}")))
}

/// The last line of a complete report.
pub fn end_line() -> String {
    format!("{PREFIX} end")
}

/// The facts read from the root mounted at `tree`, in the order the tests
/// expect: hostname, keys, machine-id, network, cloud-init, drp-agent.
pub fn tree_lines(tree: &Path) -> Vec<String> {
    vec![
        format!("{PREFIX} hostname={}", hostname(tree)),
        format!("{PREFIX} keys={}", authorized_keys_hash(tree)),
        format!("{PREFIX} machine-id={}", machine_id(tree)),
        format!("{PREFIX} network={}", or_none(network_files(tree))),
        format!("{PREFIX} cloud-init={}", or_none(seed_files(tree))),
        format!("{PREFIX} drp-agent={}", drp_agent(tree)),
    ]
}

/// The trimmed contents of `/etc/hostname`, or `none` when it is missing
/// or blank.
pub fn hostname(tree: &Path) -> String {
    match read(tree, "/etc/hostname") {
        Some(text) if !text.trim().is_empty() => one_line(text.trim()),
        _ => "none".to_owned(),
    }
}

/// The sha256 (hex) of root's `authorized_keys`, or `none` when there is
/// no such file. An empty file hashes like any other: it exists.
pub fn authorized_keys_hash(tree: &Path) -> String {
    match std::fs::read(inside(tree, "/root/.ssh/authorized_keys")) {
        Ok(bytes) => Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        Err(_) => "none".to_owned(),
    }
}

/// `set`, `empty` (blank or systemd's `uninitialized`, so the first boot
/// makes one) or `missing`.
pub fn machine_id(tree: &Path) -> &'static str {
    match read(tree, "/etc/machine-id") {
        None => "missing",
        Some(text) if text.trim().is_empty() || text.trim() == "uninitialized" => "empty",
        Some(_) => "set",
    }
}

/// Every network configuration file any flavour would read, as absolute
/// paths inside the root, sorted.
pub fn network_files(tree: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for (dir, wanted) in NETWORK_DIRS {
        found.extend(files_in(tree, dir).into_iter().filter(|path| {
            path.rsplit('/')
                .next()
                .is_some_and(|name| wanted(name) && !name.starts_with('.'))
        }));
    }
    found.sort();
    found
}

/// Every file in a NoCloud seed directory, as absolute paths, sorted.
pub fn seed_files(tree: &Path) -> Vec<String> {
    let mut found: Vec<String> = SEED_DIRS
        .iter()
        .flat_map(|dir| files_in(tree, dir))
        .collect();
    found.sort();
    found
}

/// `present` when the DRP agent's configuration exists, else `none`.
pub fn drp_agent(tree: &Path) -> &'static str {
    if inside(tree, DRP_AGENT_CFG).is_file() {
        "present"
    } else {
        "none"
    }
}

/// The regular files directly in `dir` (absolute inside the root).
fn files_in(tree: &Path, dir: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(inside(tree, dir)) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_file()))
        .map(|entry| format!("{dir}/{}", entry.file_name().to_string_lossy()))
        .collect()
}

fn inside(tree: &Path, path: &str) -> std::path::PathBuf {
    tree.join(path.trim_start_matches('/'))
}

fn read(tree: &Path, path: &str) -> Option<String> {
    std::fs::read(inside(tree, path))
        .ok()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
}

fn or_none(paths: Vec<String>) -> String {
    if paths.is_empty() {
        "none".to_owned()
    } else {
        paths.join(",")
    }
}

/// Newlines would split a fact over two console lines; they become spaces.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(tree: &Path, path: &str, contents: &str) {
        let path = inside(tree, path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, contents).unwrap();
    }

    #[test]
    fn lines_are_one_line_each() {
        assert_eq!(
            booted_line("root=UUID=u ro\n"),
            "GOLDEN-OS: booted cmdline=root=UUID=u ro"
        );
        assert_eq!(
            root_line(Path::new("/dev/vda2"), "ext4", "u"),
            "GOLDEN-OS: root=/dev/vda2 fstype=ext4 uuid=u"
        );
        let error = anyhow::anyhow!("line one\nline two").context("mounting /dev/vda2");
        assert_eq!(
            error_line(&error),
            "GOLDEN-OS: error mounting /dev/vda2: line one line two"
        );
        assert_eq!(end_line(), "GOLDEN-OS: end");
    }

    #[test]
    fn empty_authorized_keys_still_count() {
        let tree = tempfile::tempdir().unwrap();
        write(tree.path(), "/root/.ssh/authorized_keys", "");
        assert_eq!(
            authorized_keys_hash(tree.path()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        write(tree.path(), "/etc/machine-id", "uninitialized\n");
        assert_eq!(machine_id(tree.path()), "empty");
        assert_eq!(hostname(tree.path()), "none");
    }

    #[test]
    fn a_pristine_golden_root() {
        let tree = tempfile::tempdir().unwrap();
        let tree = tree.path();
        write(tree, "/etc/hostname", "golden\n");
        write(
            tree,
            "/etc/machine-id",
            "0123456789abcdef0123456789abcdef\n",
        );
        write(tree, "/etc/network/interfaces", "auto lo\n");
        std::fs::create_dir_all(tree.join("etc/network/interfaces.d")).unwrap();
        std::fs::create_dir_all(tree.join("root/.ssh")).unwrap();
        assert_eq!(
            tree_lines(tree),
            [
                "GOLDEN-OS: hostname=golden",
                "GOLDEN-OS: keys=none",
                "GOLDEN-OS: machine-id=set",
                "GOLDEN-OS: network=none",
                "GOLDEN-OS: cloud-init=none",
                "GOLDEN-OS: drp-agent=none",
            ]
        );
    }

    #[test]
    fn an_injected_root() {
        let tree = tempfile::tempdir().unwrap();
        let tree = tree.path();
        write(tree, "/etc/hostname", "  node-7 \n");
        write(tree, "/etc/machine-id", "");
        write(tree, "/root/.ssh/authorized_keys", "ssh-ed25519 AAAA k\n");
        write(tree, "/etc/netplan/50-imprint.yaml", "network: {}\n");
        write(tree, "/etc/netplan/README", "not a config\n");
        write(tree, "/etc/systemd/network/50-imprint-eth0.network", "");
        write(tree, "/etc/systemd/network/50-imprint-eth0.link", "");
        write(tree, "/etc/systemd/network/.hidden.network", "");
        write(
            tree,
            "/etc/NetworkManager/system-connections/a.nmconnection",
            "",
        );
        write(tree, "/etc/sysconfig/network-scripts/ifcfg-eth0", "");
        write(tree, "/etc/sysconfig/network-scripts/route-eth0", "");
        write(tree, "/etc/network/interfaces.d/50-imprint", "");
        write(tree, "/curtin/meta-data", "");
        write(tree, "/curtin/user-data", "");
        write(tree, "/var/lib/cloud/seed/nocloud/meta-data", "");
        write(tree, DRP_AGENT_CFG, "Token: x\n");
        assert_eq!(hostname(tree), "node-7");
        assert_eq!(
            authorized_keys_hash(tree),
            // printf 'ssh-ed25519 AAAA k\n' | sha256sum
            "393d791deee4862ebb7c1037fe2d0ac5a74fcaf734f3c694fd4ed37821a91b9b"
        );
        assert_eq!(machine_id(tree), "empty");
        assert_eq!(
            network_files(tree),
            [
                "/etc/NetworkManager/system-connections/a.nmconnection",
                "/etc/netplan/50-imprint.yaml",
                "/etc/network/interfaces.d/50-imprint",
                "/etc/sysconfig/network-scripts/ifcfg-eth0",
                "/etc/systemd/network/50-imprint-eth0.link",
                "/etc/systemd/network/50-imprint-eth0.network",
            ]
        );
        assert_eq!(
            seed_files(tree),
            [
                "/curtin/meta-data",
                "/curtin/user-data",
                "/var/lib/cloud/seed/nocloud/meta-data",
            ]
        );
        assert_eq!(drp_agent(tree), "present");
    }
}

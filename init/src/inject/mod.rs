//! Per-machine identity, injected into the freshly written image.
//!
//! One golden image serves a whole machine class; what makes a machine itself
//! (hostname, network, SSH keys, cloud-init seed, DRP agent, files) is written
//! after the image. [`plan`] turns an [`Identity`] and what the image holds
//! into a list of [`FileOp`]s, which the log prints one per line; [`apply`]
//! carries them out under the mounted root and refuses any path that would
//! leave it.
//!
//! The types here are part of the JSON deploy spec (kebab-case names,
//! unknown fields refused), so a typo in a field name is an error, not a
//! silently missing hostname.

mod apply;
mod cloud_init;
pub mod deployed;
mod drp;
mod network;
mod passwd;
mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Deserialize;

pub use apply::apply;
pub use network::NetworkFlavour;
pub use passwd::{GroupEntry, PasswdEntry, parse_group, parse_passwd};
pub use plan::plan;

/// Everything that makes one machine itself.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Identity {
    /// Written to `/etc/hostname` and the `127.0.1.1` line of `/etc/hosts`.
    pub hostname: Option<String>,
    /// Public keys for root (`imprint.ssh-key=`, repeatable).
    pub ssh_keys: Vec<String>,
    /// DRP's `access-keys` map (name -> public key), also for root.
    pub access_keys: BTreeMap<String, String>,
    /// A user who gets the same keys as root (uid/gid from the image's
    /// `/etc/passwd`).
    pub ssh_user: Option<String>,
    /// `None` leaves the image's network configuration alone; an empty
    /// [`NetworkSpec`] means DHCP on the boot NIC.
    pub network: Option<NetworkSpec>,
    /// A NoCloud seed. Also written when the image carries cloud-init
    /// (`/etc/cloud` exists), as classic image-deploy does.
    pub cloud_init: Option<CloudInit>,
    pub drp: Option<DrpAgent>,
    pub files: Vec<FileSpec>,
    /// Empty `/etc/machine-id` so clones do not share it (default true).
    pub reset_machine_id: bool,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            hostname: None,
            ssh_keys: Vec::new(),
            access_keys: BTreeMap::new(),
            ssh_user: None,
            network: None,
            cloud_init: None,
            drp: None,
            files: Vec::new(),
            reset_machine_id: true,
        }
    }
}

/// A string that must never reach a log: `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that writes it into a file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Network configuration for the installed OS. No interfaces: DHCP on the
/// boot NIC, matched by MAC (names differ between the deploy kernel and the
/// installed OS, MACs do not).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NetworkSpec {
    pub interfaces: Vec<InterfaceSpec>,
}

/// One interface. Matched by `mac`, else by `name`, else it is the boot NIC
/// (at most one interface may name neither). With no `addresses` it uses
/// DHCP whatever `dhcp` says.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct InterfaceSpec {
    pub mac: Option<String>,
    pub name: Option<String>,
    pub dhcp: bool,
    /// `10.0.0.5/24`, `2001:db8::5/64`.
    pub addresses: Vec<String>,
    pub gateway: Option<String>,
    pub dns: Vec<String>,
    /// The addresses go on a tagged VLAN on top of this NIC.
    pub vlan: Option<u16>,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CloudInit {
    /// Written verbatim to `/curtin/user-data`; absent: an empty
    /// `#cloud-config`.
    pub user_data: Option<String>,
    /// Absent: the context's instance id, then the hostname.
    pub instance_id: Option<String>,
}

/// The DRP agent bootstrap (`drpcli agent` as a systemd service).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct DrpAgent {
    /// The API URL, `https://drp:8092`.
    pub endpoint: String,
    pub token: Secret,
    pub machine_id: String,
    /// Where `files/drpcli.amd64.linux` is served (`provisioner.web=`).
    pub provisioner_web: String,
}

/// An arbitrary file; exactly one of `content`, `base64`, `url`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct FileSpec {
    pub path: String,
    /// Default 0644.
    pub mode: Option<FileMode>,
    /// `user[:group]`, names from the image or numbers; default root.
    pub owner: Option<String>,
    pub content: Option<String>,
    pub base64: Option<String>,
    pub url: Option<String>,
}

/// A permission mode. JSON strings are octal (`"0644"`, `"755"`); JSON
/// numbers are the value itself (`420` is 0644), as in Ignition, because
/// JSON has no octal literals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileMode(pub u32);

impl<'de> Deserialize<'de> for FileMode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let value = match Raw::deserialize(deserializer)? {
            Raw::Number(n) => u32::try_from(n).ok().filter(|n| *n <= 0o7777),
            Raw::Text(text) => parse_octal_mode(&text),
        };
        value.map(FileMode).ok_or_else(|| {
            serde::de::Error::custom("mode must be octal text like \"0644\" or a number <= 4095")
        })
    }
}

fn parse_octal_mode(text: &str) -> Option<u32> {
    let digits = text.trim().trim_start_matches("0o");
    if digits.is_empty() || digits.len() > 5 {
        return None;
    }
    u32::from_str_radix(digits, 8).ok().filter(|n| *n <= 0o7777)
}

/// The OS family, as far as choosing a network-config flavour cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OsFamilyHint {
    Debian,
    RedHat,
    Suse,
    #[default]
    Other,
}

/// What the image holds, as the planner may look at it: read-only, by
/// absolute path inside the image. [`RootDir`](crate::installed::RootDir)
/// reads a mounted root (never leaving it); [`MemoryImage`] stands in for one in tests.
pub trait ImageView {
    /// Whether `path` exists, as anything (symlinks followed inside the image).
    fn exists(&self, path: &str) -> bool;
    /// The file's bytes; `None` when it does not exist.
    fn read(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>>;
}

/// An image made of a few files and directories, for tests and dry runs.
#[derive(Debug, Clone, Default)]
pub struct MemoryImage {
    pub files: BTreeMap<String, Vec<u8>>,
    pub dirs: BTreeSet<String>,
}

impl MemoryImage {
    pub fn with_file(mut self, path: &str, contents: &str) -> Self {
        self.files
            .insert(path.to_owned(), contents.as_bytes().to_vec());
        self
    }

    pub fn with_dir(mut self, path: &str) -> Self {
        self.dirs.insert(path.to_owned());
        self
    }
}

impl ImageView for MemoryImage {
    fn exists(&self, path: &str) -> bool {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        self.files.contains_key(path)
            || self.dirs.contains(path)
            || self
                .files
                .keys()
                .chain(self.dirs.iter())
                .any(|p| p.starts_with(&prefix))
    }

    fn read(&self, path: &str) -> anyhow::Result<Option<Vec<u8>>> {
        Ok(self.files.get(path).cloned())
    }
}

/// What the planner knows besides the identity.
pub struct InjectContext<'a> {
    /// The NIC imprint booted from (`BOOTIF=`), for "DHCP on the boot NIC".
    pub boot_mac: Option<[u8; 6]>,
    pub os_family: OsFamilyHint,
    /// Fallback hostname (DRP's machine name) when the identity has none.
    pub machine_name: Option<String>,
    /// Fallback cloud-init instance id (DRP's machine UUID, `rs.uuid=`).
    pub instance_id: Option<String>,
    pub image: &'a dyn ImageView,
}

/// One change to the image. Paths are absolute inside the image.
#[derive(Clone, PartialEq, Eq)]
pub enum FileOp {
    /// `mkdir -p`: missing parents get 0755 root:root, the directory itself
    /// `mode` and `uid:gid`. An existing directory is left as it is.
    Mkdir {
        path: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Replace the file atomically (temp file in the same directory, rename).
    /// The parent directory must exist.
    Write {
        path: String,
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Like `Write`, with the contents downloaded by the applier.
    Fetch {
        path: String,
        url: String,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Create or replace a symlink; `target` is stored as given.
    Symlink { path: String, target: String },
    /// Remove a file or symlink if present.
    Remove { path: String },
    /// Empty an existing regular file, keeping its mode and owner.
    Truncate { path: String },
}

impl FileOp {
    pub fn path(&self) -> &str {
        match self {
            FileOp::Mkdir { path, .. }
            | FileOp::Write { path, .. }
            | FileOp::Fetch { path, .. }
            | FileOp::Symlink { path, .. }
            | FileOp::Remove { path }
            | FileOp::Truncate { path } => path,
        }
    }
}

/// One line per op, never the contents (they may hold a token or a
/// password), and URLs without query or credentials.
impl fmt::Display for FileOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileOp::Mkdir {
                path,
                mode,
                uid,
                gid,
            } => {
                write!(f, "mkdir {path} ({mode:04o} {uid}:{gid})")
            }
            FileOp::Write {
                path,
                contents,
                mode,
                uid,
                gid,
            } => write!(
                f,
                "write {path} ({mode:04o} {uid}:{gid}, {} bytes)",
                contents.len()
            ),
            FileOp::Fetch {
                path,
                url,
                mode,
                uid,
                gid,
            } => write!(
                f,
                "fetch {path} from {} ({mode:04o} {uid}:{gid})",
                redact_url(url)
            ),
            FileOp::Symlink { path, target } => write!(f, "symlink {path} -> {target}"),
            FileOp::Remove { path } => write!(f, "remove {path}"),
            FileOp::Truncate { path } => write!(f, "truncate {path}"),
        }
    }
}

/// `Debug` is `Display`: a derived one would dump file contents into logs.
impl fmt::Debug for FileOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Drops `user:pass@` and everything from `?`: signed URLs carry tokens there.
fn redact_url(url: &str) -> String {
    let without_query = url.split(['?', '#']).next().unwrap_or_default();
    let (scheme, rest) = match without_query.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, without_query),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let mut out = String::new();
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    if without_query.len() < url.len() {
        out.push_str("?…");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_json_uses_kebab_case_and_defaults() {
        let identity: Identity = serde_json::from_str(
            r#"{"hostname":"web1","ssh-keys":["ssh-ed25519 AAAA k"],
                "access-keys":{"ops":"ssh-rsa AAAB o"},"ssh-user":"ubuntu",
                "network":{"interfaces":[{"mac":"52:54:00:12:34:56","addresses":["10.0.0.5/24"],"vlan":7}]},
                "drp":{"endpoint":"https://drp:8092","token":"sekrit","machine-id":"m1","provisioner-web":"http://drp:8091"},
                "files":[{"path":"/etc/motd","mode":"0600","content":"hi"},{"path":"/x","mode":420,"url":"http://a/b"}]}"#,
        )
        .unwrap();
        assert_eq!(identity.hostname.as_deref(), Some("web1"));
        assert!(
            identity.reset_machine_id,
            "machine-id reset is on by default"
        );
        assert_eq!(identity.files[0].mode, Some(FileMode(0o600)));
        assert_eq!(identity.files[1].mode, Some(FileMode(0o644)));
        let iface = &identity.network.as_ref().unwrap().interfaces[0];
        assert_eq!(iface.vlan, Some(7));
        assert!(!iface.dhcp);
        assert_eq!(identity.drp.as_ref().unwrap().token.expose(), "sekrit");
    }

    #[test]
    fn identity_refuses_unknown_fields_and_bad_modes() {
        let err = serde_json::from_str::<Identity>(r#"{"hostnme":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("hostnme"), "{err}");
        let err = serde_json::from_str::<Identity>(r#"{"files":[{"path":"/a","mode":"0999"}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        let err = serde_json::from_str::<Identity>(r#"{"files":[{"path":"/a","mode":70000}]}"#)
            .unwrap_err();
        assert!(err.to_string().contains("mode"), "{err}");
        let err =
            serde_json::from_str::<Identity>(r#"{"network":{"interfaces":[{"vlan":70000}]}}"#)
                .unwrap_err();
        assert!(err.to_string().contains("70000"), "{err}");
    }

    #[test]
    fn secrets_never_print() {
        let identity: Identity = serde_json::from_str(
            r#"{"drp":{"endpoint":"e","token":"tok-12345","machine-id":"m","provisioner-web":"w"}}"#,
        )
        .unwrap();
        let shown = format!("{identity:?}");
        assert!(!shown.contains("tok-12345"), "{shown}");
        assert!(shown.contains("***"));
        assert_eq!(Secret::new("tok-12345").to_string(), "***");
    }

    #[test]
    fn op_lines_show_no_contents_and_no_url_secrets() {
        let write = FileOp::Write {
            path: "/etc/hostname".into(),
            contents: b"web1\n".to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        };
        assert_eq!(write.to_string(), "write /etc/hostname (0644 0:0, 5 bytes)");
        assert_eq!(format!("{write:?}"), write.to_string());
        let fetch = FileOp::Fetch {
            path: "/opt/x".into(),
            url: "https://u:pw@host:8/files/x?sig=abc".into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        assert_eq!(
            fetch.to_string(),
            "fetch /opt/x from https://host:8/files/x?… (0755 0:0)"
        );
        let mkdir = FileOp::Mkdir {
            path: "/root/.ssh".into(),
            mode: 0o700,
            uid: 0,
            gid: 0,
        };
        assert_eq!(mkdir.to_string(), "mkdir /root/.ssh (0700 0:0)");
    }

    /// An Ubuntu-like tree: plan through `RootDir`, apply, then check the
    /// files as the installed OS would see them.
    #[test]
    fn plan_then_apply_on_an_image_tree() {
        use std::fs;
        use std::os::unix::fs::{MetadataExt as _, symlink};

        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        if fs::metadata(root).unwrap().uid() != 0 {
            eprintln!("skipped: owners need root");
            return;
        }
        for d in ["etc/netplan", "etc/cloud", "root/.ssh", "home", "run"] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        let put = |path: &str, text: &str| fs::write(root.join(path), text).unwrap();
        put(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n",
        );
        put("etc/group", "root:x:0:\nubuntu:x:1000:\n");
        put(
            "etc/hosts",
            "127.0.0.1 localhost\n127.0.1.1 ubuntu-golden\n",
        );
        put("etc/machine-id", "5f2b1c0e9d8a7b6c5f2b1c0e9d8a7b6c\n");
        put("root/.ssh/authorized_keys", "ssh-rsa AAAAgolden golden\n");
        // Ubuntu's resolv.conf is an absolute symlink; injection must not
        // follow it to the deploy host's /run.
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        let identity: Identity = serde_json::from_str(
            r#"{"hostname":"node7","ssh-keys":["ssh-ed25519 AAAAnew new"],"ssh-user":"ubuntu",
                "network":{},"drp":{"endpoint":"https://drp:8092","token":"t0k3n",
                "machine-id":"m7","provisioner-web":"http://drp:8091"},
                "files":[{"path":"/etc/app.conf","owner":"ubuntu","mode":"0640","content":"a=1\n"}]}"#,
        )
        .unwrap();
        let view = crate::installed::RootDir::open(root).unwrap();
        let ctx = InjectContext {
            boot_mac: Some([0x52, 0x54, 0, 0, 0, 7]),
            os_family: OsFamilyHint::Debian,
            machine_name: None,
            instance_id: Some("uuid-7".into()),
            image: &view,
        };
        let ops = plan(&identity, &ctx).unwrap();
        apply(&ops, &view, &mut |_| Ok(b"drpcli".to_vec())).unwrap();

        let read = |p: &str| fs::read_to_string(root.join(p)).unwrap();
        let stat = |p: &str| {
            let m = fs::symlink_metadata(root.join(p)).unwrap();
            (m.mode() & 0o7777, m.uid(), m.gid())
        };
        assert_eq!(read("etc/hostname"), "node7\n");
        assert_eq!(read("etc/hosts"), "127.0.0.1 localhost\n127.0.1.1\tnode7\n");
        assert_eq!(
            read("root/.ssh/authorized_keys"),
            "ssh-rsa AAAAgolden golden\nssh-ed25519 AAAAnew new\n"
        );
        assert_eq!(
            read("home/ubuntu/.ssh/authorized_keys"),
            "ssh-ed25519 AAAAnew new\n"
        );
        assert_eq!(stat("home/ubuntu"), (0o700, 1000, 1000));
        assert_eq!(stat("home/ubuntu/.ssh"), (0o700, 1000, 1000));
        assert_eq!(
            stat("home/ubuntu/.ssh/authorized_keys"),
            (0o600, 1000, 1000)
        );
        assert_eq!(stat("etc/netplan/50-imprint.yaml"), (0o600, 0, 0));
        assert!(read("etc/netplan/50-imprint.yaml").contains("macaddress: \"52:54:00:00:00:07\""));
        assert!(read("curtin/meta-data").starts_with("instance-id: \"uuid-7\"\n"));
        assert_eq!(
            read("curtin/network-config"),
            read("etc/netplan/50-imprint.yaml")
        );
        assert!(read("var/lib/drp-agent/agent-cfg.yml").contains("Token: \"t0k3n\""));
        assert_eq!(stat("usr/local/bin/drpcli"), (0o755, 0, 0));
        assert_eq!(stat("etc/app.conf"), (0o640, 1000, 1000));
        assert_eq!(read("etc/machine-id"), "");
        assert!(!ops.iter().any(|op| op.to_string().contains("t0k3n")));
        assert_eq!(
            fs::read_link(root.join("etc/resolv.conf"))
                .unwrap()
                .to_str(),
            Some("/run/systemd/resolve/stub-resolv.conf")
        );
    }

    #[test]
    fn memory_image_sees_parents_of_files() {
        let image = MemoryImage::default().with_file("/etc/netplan/a.yaml", "x");
        assert!(image.exists("/etc/netplan"));
        assert!(image.exists("/etc"));
        assert!(!image.exists("/etc/net"));
    }
}

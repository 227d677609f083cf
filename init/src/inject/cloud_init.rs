//! The cloud-init NoCloud seed, laid out as classic image-deploy (curtin)
//! does: the seed in `/curtin/`, and a datasource config pointing there.
//!
//! Written when the spec asks for it, or whenever the image carries
//! cloud-init (`/etc/cloud`): an unseeded cloud-init on bare metal probes
//! metadata services for minutes, then runs without hostname or keys.

use super::network::{Interface, netplan};
use super::{CloudInit, FileOp};

pub(crate) const SEED_DIR: &str = "/curtin";
const DATASOURCE_CFG: &str = "/etc/cloud/cloud.cfg.d/95_datasource.cfg";

/// Absent user-data: an explicitly empty cloud-config, so cloud-init runs
/// its defaults (keys, hostname, growpart) without a "no user-data" warning.
pub(crate) const EMPTY_USER_DATA: &str = "#cloud-config\n{}\n";

/// Seeds `instance-id` when neither the spec nor the context gives one;
/// any value works on a fresh image (cloud-init has no state to compare).
const FALLBACK_INSTANCE_ID: &str = "iid-imprint";

pub(crate) struct Seed<'a> {
    pub config: &'a CloudInit,
    pub instance_id: Option<&'a str>,
    pub hostname: Option<&'a str>,
    pub keys: &'a [String],
    pub network: Option<&'a [Interface]>,
}

pub(crate) fn plan(seed: &Seed<'_>) -> Vec<FileOp> {
    let write = |path: &str, contents: String, mode: u32| FileOp::Write {
        path: path.to_owned(),
        contents: contents.into_bytes(),
        mode,
        uid: 0,
        gid: 0,
    };
    let user_data = seed
        .config
        .user_data
        .clone()
        .unwrap_or_else(|| EMPTY_USER_DATA.to_owned());
    let mut ops = vec![
        FileOp::Mkdir {
            path: SEED_DIR.into(),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        write("/curtin/meta-data", meta_data(seed), 0o644),
        // User-data often carries passwords: root only.
        write("/curtin/user-data", user_data, 0o600),
    ];
    if let Some(interfaces) = seed.network {
        // Network config v2 is the netplan format.
        ops.push(write("/curtin/network-config", netplan(interfaces), 0o600));
    }
    ops.push(FileOp::Mkdir {
        path: "/etc/cloud/cloud.cfg.d".into(),
        mode: 0o755,
        uid: 0,
        gid: 0,
    });
    ops.push(write(DATASOURCE_CFG, datasource_cfg(), 0o644));
    ops
}

/// A YAML double-quoted scalar: JSON string syntax is valid YAML, and it
/// keeps a `#` or `: ` in a key comment from changing the document.
fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| String::from("\"\""))
}

pub(crate) fn meta_data(seed: &Seed<'_>) -> String {
    let instance_id = seed
        .config
        .instance_id
        .as_deref()
        .or(seed.instance_id)
        .or(seed.hostname)
        .unwrap_or(FALLBACK_INSTANCE_ID);
    let mut text = format!("instance-id: {}\n", quoted(instance_id));
    if let Some(hostname) = seed.hostname {
        text.push_str(&format!("local-hostname: {}\n", quoted(hostname)));
    }
    if !seed.keys.is_empty() {
        text.push_str("public-keys:\n");
        for key in seed.keys {
            text.push_str(&format!("  - {}\n", quoted(key)));
        }
    }
    text
}

pub(crate) fn datasource_cfg() -> String {
    "datasource_list: [ NoCloud ]\ndatasource:\n  NoCloud:\n    seedfrom: file:///curtin/\n".into()
}

#[cfg(test)]
mod tests {
    use super::super::{Identity, InjectContext, MemoryImage, NetworkSpec, OsFamilyHint};
    use super::*;

    fn contents<'a>(ops: &'a [FileOp], path: &str) -> &'a str {
        ops.iter()
            .find_map(|op| match op {
                FileOp::Write {
                    path: p, contents, ..
                } if p == path => Some(std::str::from_utf8(contents).unwrap()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no write of {path}"))
    }

    #[test]
    fn seed_with_everything() {
        let image = MemoryImage::default().with_dir("/etc/netplan");
        let identity = Identity {
            hostname: Some("web1".into()),
            ssh_keys: vec!["ssh-ed25519 AAAAk a # b: c".into()],
            network: Some(NetworkSpec::default()),
            cloud_init: Some(CloudInit {
                user_data: Some("#cloud-config\npackages: [htop]\n".into()),
                instance_id: None,
            }),
            ..Identity::default()
        };
        let ctx = InjectContext {
            boot_mac: Some([2, 0, 0, 0, 0, 1]),
            os_family: OsFamilyHint::Debian,
            machine_name: None,
            instance_id: Some("0c1e9e1a-uuid".into()),
            image: &image,
        };
        let ops = super::super::plan(&identity, &ctx).unwrap();
        let lines: Vec<String> = ops.iter().map(ToString::to_string).collect();
        let seed_start = lines
            .iter()
            .position(|l| l.starts_with("mkdir /curtin"))
            .unwrap();
        assert_eq!(
            lines[seed_start..],
            [
                "mkdir /curtin (0755 0:0)",
                "write /curtin/meta-data (0644 0:0, 98 bytes)",
                "write /curtin/user-data (0600 0:0, 31 bytes)",
                "write /curtin/network-config (0600 0:0, 157 bytes)",
                "mkdir /etc/cloud/cloud.cfg.d (0755 0:0)",
                "write /etc/cloud/cloud.cfg.d/95_datasource.cfg (0644 0:0, 82 bytes)",
            ]
        );
        assert_eq!(
            contents(&ops, "/curtin/meta-data"),
            "instance-id: \"0c1e9e1a-uuid\"\nlocal-hostname: \"web1\"\npublic-keys:\n  - \"ssh-ed25519 AAAAk a # b: c\"\n"
        );
        assert_eq!(
            contents(&ops, "/curtin/user-data"),
            "#cloud-config\npackages: [htop]\n"
        );
        assert_eq!(
            contents(&ops, "/etc/cloud/cloud.cfg.d/95_datasource.cfg"),
            "datasource_list: [ NoCloud ]\ndatasource:\n  NoCloud:\n    seedfrom: file:///curtin/\n"
        );
        // The network-config is the same document as the netplan file.
        assert_eq!(
            contents(&ops, "/curtin/network-config"),
            contents(&ops, "/etc/netplan/50-imprint.yaml")
        );
    }

    #[test]
    fn seeded_for_images_with_cloud_init_even_unasked() {
        let image = MemoryImage::default().with_dir("/etc/cloud");
        let ctx = InjectContext {
            boot_mac: None,
            os_family: OsFamilyHint::Other,
            machine_name: None,
            instance_id: None,
            image: &image,
        };
        let ops = super::super::plan(&Identity::default(), &ctx).unwrap();
        assert_eq!(
            contents(&ops, "/curtin/meta-data"),
            "instance-id: \"iid-imprint\"\n"
        );
        assert_eq!(contents(&ops, "/curtin/user-data"), EMPTY_USER_DATA);
        assert!(!ops.iter().any(|op| op.path() == "/curtin/network-config"));
        // No cloud-init in the image and none asked for: no seed.
        let bare = MemoryImage::default();
        let ctx = InjectContext {
            image: &bare,
            ..ctx
        };
        assert!(
            super::super::plan(&Identity::default(), &ctx)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn instance_id_prefers_the_spec_then_context_then_hostname() {
        let config = CloudInit {
            user_data: None,
            instance_id: Some("spec-id".into()),
        };
        let seed = Seed {
            config: &config,
            instance_id: Some("ctx"),
            hostname: Some("h"),
            keys: &[],
            network: None,
        };
        assert!(meta_data(&seed).starts_with("instance-id: \"spec-id\"\n"));
        let empty = CloudInit::default();
        let seed = Seed {
            config: &empty,
            ..seed
        };
        assert!(meta_data(&seed).starts_with("instance-id: \"ctx\"\n"));
        let seed = Seed {
            instance_id: None,
            ..seed
        };
        assert_eq!(
            meta_data(&seed),
            "instance-id: \"h\"\nlocal-hostname: \"h\"\n"
        );
    }
}

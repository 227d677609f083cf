//! The DRP agent bootstrap: `drpcli agent` as a systemd service, with the
//! credentials it needs to find its machine. Its token never reaches a log:
//! it lives only in the contents of a `Write`, which `FileOp` never prints.

use anyhow::{Result, bail};

use super::{DrpAgent, FileOp};

const DRPCLI: &str = "/usr/local/bin/drpcli";
const AGENT_CFG: &str = "/var/lib/drp-agent/agent-cfg.yml";
const UNIT: &str = "/etc/systemd/system/drp-agent.service";
/// Absolute inside the image: resolved by the installed OS's systemd, and by
/// imprint's applier relative to the image root, never the deploy host's.
const UNIT_LINK: &str = "/etc/systemd/system/multi-user.target.wants/drp-agent.service";

pub(crate) const UNIT_TEXT: &str = "\
[Unit]
Description=Digital Rebar Provision agent
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/drpcli agent
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
";

pub(crate) fn plan(agent: &DrpAgent) -> Result<Vec<FileOp>> {
    for (field, value) in [
        ("endpoint", agent.endpoint.as_str()),
        ("machine-id", agent.machine_id.as_str()),
        ("provisioner-web", agent.provisioner_web.as_str()),
        ("token", agent.token.expose()),
    ] {
        if value.trim().is_empty() {
            bail!("drp: {field} is empty");
        }
        if value.contains(['\n', '\r']) {
            bail!("drp: {field} spans several lines");
        }
    }
    let web = agent.provisioner_web.trim_end_matches('/');
    let dir = |path: &str, mode: u32| FileOp::Mkdir {
        path: path.to_owned(),
        mode,
        uid: 0,
        gid: 0,
    };
    Ok(vec![
        dir("/usr/local/bin", 0o755),
        FileOp::Fetch {
            path: DRPCLI.into(),
            url: format!("{web}/files/drpcli.amd64.linux"),
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
        // The token grants access to the machine's DRP object: root only.
        dir("/var/lib/drp-agent", 0o700),
        FileOp::Write {
            path: AGENT_CFG.into(),
            contents: agent_cfg(agent).into_bytes(),
            mode: 0o600,
            uid: 0,
            gid: 0,
        },
        dir("/etc/systemd/system/multi-user.target.wants", 0o755),
        FileOp::Write {
            path: UNIT.into(),
            contents: UNIT_TEXT.as_bytes().to_vec(),
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        FileOp::Symlink {
            path: UNIT_LINK.into(),
            target: UNIT.into(),
        },
    ])
}

/// YAML read by drpcli; values double-quoted (JSON string syntax is valid
/// YAML) so a `#` or `: ` in a token cannot cut it short.
fn agent_cfg(agent: &DrpAgent) -> String {
    let quoted = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| String::from("\"\""));
    format!(
        "Endpoints: {}\nToken: {}\nMachineID: {}\nContext: ''\n",
        quoted(&agent.endpoint),
        quoted(agent.token.expose()),
        quoted(&agent.machine_id),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::super::{Identity, InjectContext, MemoryImage, OsFamilyHint, Secret, apply};
    use super::*;

    const TOKEN: &str = "eyJhbGciOi.secret-token.zz";

    fn agent() -> DrpAgent {
        DrpAgent {
            endpoint: "https://drp.example:8092".into(),
            token: Secret::new(TOKEN),
            machine_id: "3f6c8d1e-0000-4000-8000-000000000001".into(),
            provisioner_web: "http://drp.example:8091/".into(),
        }
    }

    #[test]
    fn agent_files_and_unit() {
        let ops = plan(&agent()).unwrap();
        let lines: Vec<String> = ops.iter().map(ToString::to_string).collect();
        assert_eq!(
            lines,
            [
                "mkdir /usr/local/bin (0755 0:0)",
                "fetch /usr/local/bin/drpcli from http://drp.example:8091/files/drpcli.amd64.linux (0755 0:0)",
                "mkdir /var/lib/drp-agent (0700 0:0)",
                "write /var/lib/drp-agent/agent-cfg.yml (0600 0:0, 136 bytes)",
                "mkdir /etc/systemd/system/multi-user.target.wants (0755 0:0)",
                "write /etc/systemd/system/drp-agent.service (0644 0:0, 221 bytes)",
                "symlink /etc/systemd/system/multi-user.target.wants/drp-agent.service -> /etc/systemd/system/drp-agent.service",
            ]
        );
        let FileOp::Write { contents, .. } = &ops[3] else {
            panic!("{}", ops[3])
        };
        assert_eq!(
            std::str::from_utf8(contents).unwrap(),
            format!(
                "Endpoints: \"https://drp.example:8092\"\nToken: \"{TOKEN}\"\nMachineID: \"3f6c8d1e-0000-4000-8000-000000000001\"\nContext: ''\n"
            )
        );
    }

    #[test]
    fn the_token_never_prints() {
        let identity = Identity {
            drp: Some(agent()),
            ..Identity::default()
        };
        let image = MemoryImage::default();
        let ctx = InjectContext {
            boot_mac: None,
            os_family: OsFamilyHint::Other,
            machine_name: None,
            instance_id: None,
            image: &image,
        };
        let ops = super::super::plan(&identity, &ctx).unwrap();
        for shown in [
            format!("{identity:?}"),
            format!("{ops:?}"),
            ops.iter().map(|o| format!("{o}\n")).collect(),
        ] {
            assert!(!shown.contains("secret-token"), "{shown}");
        }
    }

    #[test]
    fn empty_or_multiline_fields_are_refused() {
        let mut bad = agent();
        bad.token = Secret::new("");
        assert_eq!(plan(&bad).unwrap_err().to_string(), "drp: token is empty");
        let mut bad = agent();
        bad.endpoint = "https://a\nToken: x".into();
        assert_eq!(
            plan(&bad).unwrap_err().to_string(),
            "drp: endpoint spans several lines"
        );
    }

    #[test]
    fn applied_into_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let as_root = std::fs::metadata(root).unwrap().uid() == 0;
        if !as_root {
            eprintln!("skipped: owners 0:0 need root");
            return;
        }
        let mut urls = Vec::new();
        let dir = crate::installed::RootDir::open(root).unwrap();
        apply(&plan(&agent()).unwrap(), &dir, &mut |url| {
            urls.push(url.to_owned());
            Ok(b"\x7fELF".to_vec())
        })
        .unwrap();
        assert_eq!(urls, ["http://drp.example:8091/files/drpcli.amd64.linux"]);
        let mode = |p: &str| std::fs::metadata(root.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("usr/local/bin/drpcli"), 0o755);
        assert_eq!(mode("var/lib/drp-agent"), 0o700);
        assert_eq!(mode("var/lib/drp-agent/agent-cfg.yml"), 0o600);
        let link = root.join("etc/systemd/system/multi-user.target.wants/drp-agent.service");
        assert_eq!(std::fs::read_link(&link).unwrap().to_str(), Some(UNIT));
        assert_eq!(
            std::fs::read_to_string(root.join(&UNIT[1..])).unwrap(),
            UNIT_TEXT
        );
    }
}

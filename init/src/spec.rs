//! The deploy spec: what to deploy where, and what to do afterwards.
//!
//! Every source of settings (the kernel command line's `imprint.X=`, the
//! CLI's `--X`) goes through one table, [`PARAMS`], so the two can never
//! drift apart and the README documents exactly what the code accepts.

use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmdline::KernelCmdline;
use crate::disk::root::RootSelector;
use crate::inject::Identity;
use crate::pipeline::checksum::Checksum;
use crate::source::SourceOptions;

/// What to do once the image is written and verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessPolicy {
    Reboot,
    Poweroff,
}

/// What to do when the deploy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Keep the machine up and repeat the error on the console, so an
    /// operator walking up to it (or its BMC console) sees why.
    Halt,
    Reboot,
    Poweroff,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySpec {
    /// Where the image comes from (`http://…`, `file:///…`).
    pub url: Option<String>,
    /// The target disk as given (`/dev/vda`, `vda`, or a file for the CLI).
    pub disk: Option<String>,
    /// The declared image format (`auto` when absent: sniffed).
    pub format: Option<String>,
    /// The expected digest of the image as served.
    pub checksum: Option<Checksum>,
    /// Where to read the expected digest from (a `SHA256SUMS`-style list).
    pub checksum_url: Option<String>,
    /// Timeouts, retries and trust for fetching.
    pub source: SourceOptions,
    /// What makes this machine itself, injected after the write.
    pub identity: Identity,
    /// Which partition is the root (`imprint.root=`); discovered when absent.
    pub root: Option<RootSelector>,
    /// Grow the last partition to the end of the disk (`imprint.grow=1`).
    pub grow: bool,
    /// URL of a JSON deploy spec (`imprint.config=`).
    pub config: Option<String>,
    pub on_success: SuccessPolicy,
    pub on_failure: FailurePolicy,
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            url: None,
            disk: None,
            format: None,
            checksum: None,
            checksum_url: None,
            source: SourceOptions::default(),
            identity: Identity::default(),
            root: None,
            grow: false,
            config: None,
            on_success: SuccessPolicy::Reboot,
            on_failure: FailurePolicy::Halt,
        }
    }
}

/// One parameter: `imprint.<name>=` on the kernel command line and
/// `--<name>` on the CLI.
#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub values: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    apply: fn(&mut DeploySpec, &str) -> Result<()>,
}

pub const PARAMS: &[ParamDef] = &[
    ParamDef {
        name: "url",
        values: "http[s]://HOST[:PORT]/PATH | file://LABEL=L/PATH | file://UUID=U/PATH | file://DEV=NAME/PATH | file:///PATH",
        default: "(required)",
        help: "Where the disk image comes from: see Where the image comes from.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the image URL, e.g. imprint.url=http://server/image.raw");
            }
            spec.url = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "disk",
        values: "/dev/NAME | NAME | /dev/disk/by-id/ID | /dev/disk/by-path/PATH | HINT[,HINT]...",
        default: "(required)",
        help: "The disk the image is written to; everything on it is overwritten. Hints (`size>=100G,rotational=0,serial=…`) must match exactly one disk: see Choosing the disk.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; name the target disk, e.g. imprint.disk=/dev/sda");
            }
            if v.contains('=') {
                crate::disk::DiskSelector::parse(v)?;
            }
            spec.disk = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "format",
        values: "auto | raw | gz | xz | zst | bz2 | raw.tar[.gz|.xz|.bz2|.zst] | dd-raw dd-gz dd-xz dd-bz2 dd-zst dd-tar dd-tgz dd-txz dd-tbz",
        default: "auto",
        help: "The image's format. Sniffed from its first bytes either way; a declared format that disagrees with them is an error. DRP's image types are accepted as they are.",
        apply: |spec, v| {
            crate::pipeline::format::parse_declared(v)?;
            spec.format = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "checksum",
        values: "sha256:HEX | sha512:HEX",
        default: "(none)",
        help: "Digest of the image as served (compressed, if it is). Checked before the first MiB, which holds the partition table, is written.",
        apply: |spec, v| {
            spec.checksum = Some(Checksum::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "checksum-url",
        values: "URL of a SHA256SUMS-style list",
        default: "(none)",
        help: "Read the digest from a checksum list (GNU or BSD format, sha256 or sha512), by the image URL's file name.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL of a SHA256SUMS file");
            }
            spec.checksum_url = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "retries",
        values: "N",
        default: "8",
        help: "How often a failed request or a broken transfer is retried (with exponential backoff and jitter; `Retry-After` is honoured). A broken transfer resumes where it stopped, with an HTTP Range request.",
        apply: |spec, v| {
            spec.source.retries = v
                .parse()
                .with_context(|| format!("{v:?} is not a whole number"))?;
            Ok(())
        },
    },
    ParamDef {
        name: "retry-timeout",
        values: "DURATION (30s, 10m, 1h)",
        default: "10m",
        help: "The most time the retries of one transfer may take together.",
        apply: |spec, v| {
            spec.source.retry_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "connect-timeout",
        values: "DURATION",
        default: "15s",
        help: "How long connecting to the server may take before it counts as a failed attempt.",
        apply: |spec, v| {
            spec.source.connect_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "stall-timeout",
        values: "DURATION",
        default: "30s",
        help: "How long a transfer may deliver no bytes before it counts as a dropped connection (and is resumed).",
        apply: |spec, v| {
            spec.source.stall_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "ca",
        values: "URL | /PATH (PEM)",
        default: "(built in)",
        help: "Trust roots for HTTPS: a PEM bundle by URL or by path inside the initramfs (`imprint-build --ca FILE` puts one at /etc/imprint/ca.pem, used by default).",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL or path of a PEM CA bundle");
            }
            spec.source.ca = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "insecure",
        values: "0 | 1",
        default: "0",
        help: "Skip HTTPS certificate verification. Logged as a warning and reported in the result line; for labs only.",
        apply: |spec, v| {
            spec.source.insecure = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "config",
        values: "URL of a JSON deploy spec",
        default: "(none)",
        help: "Every setting as one JSON document (see The deploy spec); parameters on the command line override it.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL of a JSON deploy spec");
            }
            spec.config = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "hostname",
        values: "NAME",
        default: "(image's)",
        help: "Written to /etc/hostname and the 127.0.1.1 line of /etc/hosts.",
        apply: |spec, v| {
            if v.is_empty() || v.len() > 253 || v.contains(char::is_whitespace) {
                bail!("{v:?} is not a host name");
            }
            spec.identity.hostname = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "ssh-key",
        values: "\"ssh-ed25519 AAAA… comment\" (repeatable)",
        default: "(none)",
        help: "A public key for root's authorized_keys (and --ssh-user's). Quote it on the kernel command line: \"imprint.ssh-key=ssh-ed25519 AAAA… me\".",
        apply: |spec, v| {
            if v.split_whitespace().count() < 2 {
                bail!("{v:?} is not an SSH public key (TYPE BASE64 [COMMENT])");
            }
            spec.identity.ssh_keys.push(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "ssh-user",
        values: "USER",
        default: "(root only)",
        help: "Also install the keys for this user of the image (uid and gid from its /etc/passwd).",
        apply: |spec, v| {
            spec.identity.ssh_user = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "root",
        values: "N | LABEL=L | UUID=U | PARTLABEL=L | PARTUUID=U",
        default: "(discovered)",
        help: "The image's root partition. Otherwise: the root type GUID, then the first partition with /curtin, then the first with /etc/os-release.",
        apply: |spec, v| {
            spec.root = Some(RootSelector::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "grow",
        values: "0 | 1",
        default: "0",
        help: "Grow the last partition to the end of the disk (the filesystem is left to the OS's first boot, like cloud-init's growpart).",
        apply: |spec, v| {
            spec.grow = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "reset-machine-id",
        values: "0 | 1",
        default: "1",
        help: "Empty the image's /etc/machine-id so clones do not share it.",
        apply: |spec, v| {
            spec.identity.reset_machine_id = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "on-success",
        values: "reboot | poweroff",
        default: "reboot",
        help: "What the machine does after a successful deploy (PID 1 only; the CLI just exits).",
        apply: |spec, v| {
            spec.on_success = match v {
                "reboot" => SuccessPolicy::Reboot,
                "poweroff" => SuccessPolicy::Poweroff,
                _ => bail!("must be reboot or poweroff, not {v:?}"),
            };
            Ok(())
        },
    },
    ParamDef {
        name: "on-failure",
        values: "halt | reboot | poweroff",
        default: "halt",
        help: "What the machine does after a failed deploy: `halt` keeps it up and repeats the error on the console every minute.",
        apply: |spec, v| {
            spec.on_failure = parse_failure_policy(v)?;
            Ok(())
        },
    },
];

/// The JSON keys that are identity fields rather than parameters.
const IDENTITY_FIELDS: &[&str] = &[
    "hostname",
    "ssh-keys",
    "access-keys",
    "ssh-user",
    "network",
    "cloud-init",
    "drp",
    "files",
    "reset-machine-id",
];

/// `from_json` holds the document; `earlier` what was set before it (only
/// keys from the command line, which are applied again afterwards anyway,
/// or defaults). Lists add up.
fn merge_identity(from_json: Identity, earlier: Identity) -> Identity {
    let mut merged = from_json;
    for key in earlier.ssh_keys {
        if !merged.ssh_keys.contains(&key) {
            merged.ssh_keys.push(key);
        }
    }
    merged
}

/// `90`, `90s`, `500ms`, `10m`, `1h`: a bare number is seconds.
pub fn parse_duration(v: &str) -> Result<Duration> {
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: u64 = number
        .parse()
        .with_context(|| format!("{v:?} is not a duration such as 30s, 10m or 1h"))?;
    Ok(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        _ => bail!("{v:?} has an unknown unit {unit:?}; use ms, s, m or h"),
    })
}

fn parse_bool(v: &str) -> Result<bool> {
    match v {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => bail!("must be 1 or 0, not {v:?}"),
    }
}

fn parse_failure_policy(v: &str) -> Result<FailurePolicy> {
    Ok(match v {
        "halt" => FailurePolicy::Halt,
        "reboot" => FailurePolicy::Reboot,
        "poweroff" => FailurePolicy::Poweroff,
        _ => bail!("must be halt, reboot or poweroff, not {v:?}"),
    })
}

fn known_names() -> String {
    PARAMS.iter().map(|p| p.name).collect::<Vec<_>>().join(", ")
}

impl DeploySpec {
    /// Applies one `name=value` setting through the parameter table.
    /// `origin` is how the user spelled the prefix (`imprint.` or `--`), so
    /// errors quote the parameter exactly as it was written.
    pub fn set(&mut self, origin: &str, name: &str, value: Option<&str>) -> Result<()> {
        let def = PARAMS.iter().find(|p| p.name == name).with_context(|| {
            format!(
                "unknown parameter {origin}{name}; known parameters: {}",
                known_names()
            )
        })?;
        let value = value.with_context(|| format!("parameter {origin}{name} needs a value"))?;
        (def.apply)(self, value).with_context(|| format!("parameter {origin}{name}"))
    }

    /// Builds the spec from the kernel command line. Parameters outside the
    /// `imprint.` namespace belong to the kernel or to DRP and are ignored.
    pub fn from_cmdline(cmdline: &KernelCmdline) -> Result<DeploySpec> {
        let mut spec = DeploySpec::default();
        for (name, param) in cmdline.with_prefix("imprint.") {
            spec.set("imprint.", name, param.value.as_deref())?;
        }
        spec.validate("imprint.")?;
        Ok(spec)
    }

    /// The failure policy alone, read leniently: when the rest of the command
    /// line is bad, PID 1 must still honour what the operator asked for on
    /// failure.
    pub fn failure_policy_from_cmdline(cmdline: &KernelCmdline) -> FailurePolicy {
        cmdline
            .value("imprint.on-failure")
            .and_then(|v| parse_failure_policy(v).ok())
            .unwrap_or(DeploySpec::default().on_failure)
    }

    /// Applies a JSON deploy spec: an object whose keys are the parameter
    /// names (`url`, `disk`, `checksum`, …; strings, numbers or booleans)
    /// and the identity fields (`hostname`, `ssh-keys`, `access-keys`,
    /// `ssh-user`, `network`, `cloud-init`, `drp`, `files`,
    /// `reset-machine-id`). Errors name the field and the reason.
    pub fn apply_json(&mut self, text: &str) -> Result<()> {
        let value: serde_json::Value =
            serde_json::from_str(text).context("the deploy spec is not valid JSON")?;
        let serde_json::Value::Object(fields) = value else {
            bail!("the deploy spec must be a JSON object");
        };
        let mut identity = serde_json::Map::new();
        for (key, value) in fields {
            if IDENTITY_FIELDS.contains(&key.as_str()) {
                identity.insert(key, value);
                continue;
            }
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                serde_json::Value::Null => continue,
                _ => bail!("field {key:?}: expected a string, number or boolean"),
            };
            self.set("field ", &key, Some(&text))?;
        }
        if !identity.is_empty() {
            let parsed: Identity = serde_json::from_value(serde_json::Value::Object(identity))
                .context("the deploy spec's identity fields")?;
            self.identity = merge_identity(parsed, std::mem::take(&mut self.identity));
        }
        Ok(())
    }

    /// The spec from a JSON document with the command line applied over it.
    pub fn from_json_and_cmdline(json: &str, cmdline: &KernelCmdline) -> Result<DeploySpec> {
        let mut spec = DeploySpec::default();
        spec.apply_json(json)?;
        for (name, param) in cmdline.with_prefix("imprint.") {
            spec.set("imprint.", name, param.value.as_deref())?;
        }
        spec.validate("imprint.")?;
        Ok(spec)
    }

    /// Checks that hold across parameters; `origin` spells the prefix.
    pub fn validate(&self, origin: &str) -> Result<()> {
        if self.checksum.is_some() && self.checksum_url.is_some() {
            bail!("give {origin}checksum= or {origin}checksum-url=, not both");
        }
        Ok(())
    }

    pub fn require_url(&self) -> Result<&str> {
        self.url
            .as_deref()
            .context("no image given: set imprint.url= (or --url)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(line: &str) -> Result<DeploySpec> {
        DeploySpec::from_cmdline(&KernelCmdline::parse(line))
    }

    #[test]
    fn full_spec_from_cmdline() {
        let s = spec(
            "console=ttyS0 imprint.url=http://10.0.2.2:8000/a.img imprint.disk=/dev/vda \
             imprint.on-success=poweroff imprint.on-failure=reboot rs.uuid=abc",
        )
        .unwrap();
        assert_eq!(s.url.as_deref(), Some("http://10.0.2.2:8000/a.img"));
        assert_eq!(s.disk.as_deref(), Some("/dev/vda"));
        assert_eq!(s.on_success, SuccessPolicy::Poweroff);
        assert_eq!(s.on_failure, FailurePolicy::Reboot);
    }

    #[test]
    fn defaults() {
        let s = spec("quiet").unwrap();
        assert_eq!(s, DeploySpec::default());
        assert_eq!(s.on_success, SuccessPolicy::Reboot);
        assert_eq!(s.on_failure, FailurePolicy::Halt);
        assert!(
            s.require_url()
                .unwrap_err()
                .to_string()
                .contains("imprint.url=")
        );
    }

    #[test]
    fn unknown_imprint_key_is_an_error_naming_it() {
        let err = spec("imprint.url=http://x/ imprint.dsik=/dev/vda").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("unknown parameter imprint.dsik"), "{msg}");
        assert!(msg.contains("disk"), "lists the known ones: {msg}");
    }

    #[test]
    fn bad_policy_names_parameter_and_value() {
        let msg = format!("{:#}", spec("imprint.on-success=explode").unwrap_err());
        assert!(msg.contains("imprint.on-success"), "{msg}");
        assert!(msg.contains("\"explode\""), "{msg}");
    }

    #[test]
    fn unknown_format_is_refused_up_front() {
        let msg = format!("{:#}", spec("imprint.format=dd-rar").unwrap_err());
        assert!(msg.starts_with("parameter imprint.format: "), "{msg}");
        assert!(msg.contains("dd-rar"), "{msg}");
        assert_eq!(
            spec("imprint.format=dd-zst").unwrap().format.as_deref(),
            Some("dd-zst")
        );
    }

    #[test]
    fn source_options() {
        let s = spec(
            "imprint.retries=3 imprint.retry-timeout=2m imprint.connect-timeout=500ms \
             imprint.stall-timeout=45 imprint.insecure=1 imprint.ca=http://h/ca.pem",
        )
        .unwrap();
        assert_eq!(s.source.retries, 3);
        assert_eq!(s.source.retry_timeout, Duration::from_secs(120));
        assert_eq!(s.source.connect_timeout, Duration::from_millis(500));
        assert_eq!(s.source.stall_timeout, Duration::from_secs(45));
        assert!(s.source.insecure);
        assert_eq!(s.source.ca.as_deref(), Some("http://h/ca.pem"));
        let msg = format!("{:#}", spec("imprint.stall-timeout=5x").unwrap_err());
        assert!(msg.contains("unknown unit \"x\""), "{msg}");
        let msg = format!("{:#}", spec("imprint.insecure=maybe").unwrap_err());
        assert!(msg.contains("must be 1 or 0"), "{msg}");
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn json_spec_with_identity_and_parameters() {
        let mut s = DeploySpec::default();
        s.apply_json(
            r#"{"url": "http://h/golden.raw.zst", "disk": "/dev/sda", "retries": 3, "grow": true,
                "hostname": "web-01", "ssh-keys": ["ssh-ed25519 AAAA me"],
                "access-keys": {"ops": "ssh-rsa BBBB ops"},
                "drp": {"endpoint": "https://drp:8092", "token": "s3cret", "machine-id": "m1", "provisioner-web": "http://drp:8091"}}"#,
        )
        .unwrap();
        assert_eq!(s.url.as_deref(), Some("http://h/golden.raw.zst"));
        assert_eq!(s.source.retries, 3);
        assert!(s.grow);
        assert_eq!(s.identity.hostname.as_deref(), Some("web-01"));
        assert_eq!(s.identity.access_keys.len(), 1);
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "the token leaks into Debug"
        );
    }

    #[test]
    fn json_errors_name_the_field() {
        let mut s = DeploySpec::default();
        let msg = format!("{:#}", s.apply_json(r#"{"retries": "many"}"#).unwrap_err());
        assert!(msg.starts_with("parameter field retries"), "{msg}");
        let msg = format!("{:#}", s.apply_json(r#"{"hostnme": "x"}"#).unwrap_err());
        assert!(msg.contains("unknown parameter field hostnme"), "{msg}");
        let msg = format!(
            "{:#}",
            s.apply_json(r#"{"files": [{"path": "/x", "mode": "9z"}]}"#)
                .unwrap_err()
        );
        assert!(msg.contains("identity fields"), "{msg}");
        let msg = format!("{:#}", s.apply_json("[1]").unwrap_err());
        assert_eq!(msg, "the deploy spec must be a JSON object");
        let msg = format!("{:#}", s.apply_json("{").unwrap_err());
        assert!(
            msg.starts_with("the deploy spec is not valid JSON"),
            "{msg}"
        );
    }

    #[test]
    fn identity_parameters() {
        let s = spec(
            r#"imprint.hostname=web-02 "imprint.ssh-key=ssh-ed25519 AAAA a@b" imprint.ssh-key="ssh-rsa BBBB c" imprint.root=PARTLABEL=root imprint.reset-machine-id=0"#,
        )
        .unwrap();
        assert_eq!(s.identity.hostname.as_deref(), Some("web-02"));
        assert_eq!(
            s.identity.ssh_keys,
            vec!["ssh-ed25519 AAAA a@b", "ssh-rsa BBBB c"]
        );
        assert!(s.root.is_some());
        assert!(!s.identity.reset_machine_id);
        assert!(spec("imprint.ssh-key=nonsense").is_err());
    }

    #[test]
    fn flag_without_value_is_an_error() {
        let msg = format!("{:#}", spec("imprint.url").unwrap_err());
        assert!(msg.contains("imprint.url needs a value"), "{msg}");
    }

    #[test]
    fn empty_url_is_an_error() {
        let msg = format!("{:#}", spec("imprint.url=").unwrap_err());
        assert!(
            msg.contains("imprint.url") && msg.contains("empty"),
            "{msg}"
        );
    }

    #[test]
    fn failure_policy_survives_other_errors() {
        let c = KernelCmdline::parse("imprint.bogus=1 imprint.on-failure=poweroff");
        assert!(DeploySpec::from_cmdline(&c).is_err());
        assert_eq!(
            DeploySpec::failure_policy_from_cmdline(&c),
            FailurePolicy::Poweroff
        );
        let c = KernelCmdline::parse("imprint.on-failure=nonsense");
        assert_eq!(
            DeploySpec::failure_policy_from_cmdline(&c),
            FailurePolicy::Halt
        );
    }

    #[test]
    fn cli_origin_is_quoted_in_errors() {
        let mut s = DeploySpec::default();
        let msg = format!("{:#}", s.set("--", "nope", Some("1")).unwrap_err());
        assert!(msg.starts_with("unknown parameter --nope"), "{msg}");
    }
}

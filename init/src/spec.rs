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

/// What to do once the image is written, verified and injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SuccessPolicy {
    /// Boot the installed kernel with kexec. When that cannot work (no
    /// kernel found, lockdown refuses it), reboot instead unless `required`
    /// (`kexec!`), in which case the handoff fails.
    Kexec {
        required: bool,
    },
    Reboot,
    Poweroff,
    /// Stay up with the result on the console (and `/status`).
    None,
}

impl SuccessPolicy {
    pub fn parse(v: &str) -> Result<SuccessPolicy> {
        Ok(match v {
            "kexec" => SuccessPolicy::Kexec { required: false },
            "kexec!" => SuccessPolicy::Kexec { required: true },
            "reboot" => SuccessPolicy::Reboot,
            "poweroff" => SuccessPolicy::Poweroff,
            "none" => SuccessPolicy::None,
            _ => bail!("must be kexec, kexec!, reboot, poweroff or none, not {v:?}"),
        })
    }
}

/// What to do when the deploy failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Keep the machine up and repeat the error on the console, so an
    /// operator walking up to it (or its BMC console) sees why.
    Halt,
    Reboot,
    Poweroff,
    /// Run the whole deploy again, up to this many more times, with a
    /// growing pause between runs; then halt. Every failed run has already
    /// failed closed.
    Retry(u32),
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
    /// What to kexec, overriding discovery in the installed root.
    pub kexec: KexecOverride,
    /// Where JSON status events are POSTed (`imprint.report=`).
    pub report: Option<String>,
    /// The port of the read-only `/status` endpoint (`imprint.status-port=`).
    pub status_port: Option<u16>,
}

/// `imprint.kexec-kernel=`, `-initrd=`, `-cmdline=`: paths inside the
/// installed system and the command line to boot it with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KexecOverride {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
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
            on_success: SuccessPolicy::Kexec { required: false },
            on_failure: FailurePolicy::Halt,
            kexec: KexecOverride::default(),
            report: None,
            status_port: None,
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
        name: "link-timeout",
        values: "DURATION",
        default: "5s",
        help: "How long PID 1 waits for a NIC's carrier before leaving it out, at most 300s (read by the network bring-up, before any deploy spec).",
        apply: |_, v| {
            crate::net::params::parse_link_timeout(v)?;
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
        values: "kexec | kexec! | reboot | poweroff | none",
        default: "kexec",
        help: "What the machine does after a successful deploy (PID 1 only; the CLI just exits). `kexec` boots the installed kernel directly, skipping the firmware, and reboots when it cannot (see Handing over); `kexec!` fails instead; `none` stays up showing the result.",
        apply: |spec, v| {
            spec.on_success = SuccessPolicy::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "on-failure",
        values: "halt | reboot | poweroff | retry:N",
        default: "halt",
        help: "What the machine does after a failed deploy: `halt` keeps it up, repeats the error on the console every minute and keeps answering `/status`; `retry:N` runs the whole deploy again up to N times (pausing 10 s, 20 s, … up to 5 min), then halts.",
        apply: |spec, v| {
            spec.on_failure = parse_failure_policy(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-kernel",
        values: "/PATH in the installed system",
        default: "(discovered)",
        help: "The kernel to kexec, instead of the BLS entry, grub.cfg default or /vmlinuz found in the installed root.",
        apply: |spec, v| {
            spec.kexec.kernel = Some(absolute_path(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-initrd",
        values: "/PATH in the installed system",
        default: "(discovered)",
        help: "The initrd to kexec with; needs kexec-kernel.",
        apply: |spec, v| {
            spec.kexec.initrd = Some(absolute_path(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-cmdline",
        values: "\"ARGS\"",
        default: "(the entry's)",
        help: "The installed kernel's command line, instead of the boot entry's options. `root=` is added when missing; console arguments after `--` are kept.",
        apply: |spec, v| {
            spec.kexec.cmdline = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "report",
        values: "http[s]://URL",
        default: "(none)",
        help: "POST each status event as JSON to this URL (see Status events). Retried in the background; never delays or fails the deploy.",
        apply: |spec, v| {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                bail!("{v:?} is not an http:// or https:// URL");
            }
            spec.report = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "status-port",
        values: "PORT",
        default: "(off)",
        help: "Serve the status document read-only at `http://MACHINE:PORT/status` (see Status events).",
        apply: |spec, v| {
            let port: u16 = v
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{v:?} is not a TCP port (1-65535)"))?;
            spec.status_port = Some(port);
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
    if let Some(n) = v.strip_prefix("retry:") {
        let n: u32 = n
            .parse()
            .ok()
            .filter(|n| *n > 0)
            .with_context(|| format!("{v:?}: retry:N needs a count of at least 1"))?;
        return Ok(FailurePolicy::Retry(n));
    }
    Ok(match v {
        "halt" => FailurePolicy::Halt,
        "reboot" => FailurePolicy::Reboot,
        "poweroff" => FailurePolicy::Poweroff,
        _ => bail!("must be halt, reboot, poweroff or retry:N, not {v:?}"),
    })
}

/// Booted by a DRP bootenv (`provisioner.web=` and `rs.uuid=`, no
/// `imprint.url=`): the deploy spec is the machine's rendered
/// `imprint.json` template, `<provisioner.web>/machines/<uuid>/imprint.json`.
fn drp_spec_url(cmdline: &KernelCmdline) -> Result<Option<String>> {
    let given = |key: &str| cmdline.value(key).map(str::trim).filter(|v| !v.is_empty());
    let (Some(web), Some(uuid)) = (given("provisioner.web"), given("rs.uuid")) else {
        return Ok(None);
    };
    if !(web.starts_with("http://") || web.starts_with("https://")) {
        bail!("parameter provisioner.web={web} is not an http:// or https:// URL");
    }
    if uuid.is_empty() || !uuid.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("parameter rs.uuid={uuid} is not a machine UUID");
    }
    let web = web.trim_end_matches('/');
    Ok(Some(format!("{web}/machines/{uuid}/imprint.json")))
}

/// A path inside the installed system: absolute, no `..`.
fn absolute_path(v: &str) -> Result<String> {
    if !v.starts_with('/') || v.split('/').any(|c| c == "..") {
        bail!("{v:?} must be an absolute path inside the installed system, without ..");
    }
    Ok(v.to_owned())
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
        if spec.url.is_none() && spec.config.is_none() {
            spec.config = drp_spec_url(cmdline)?;
        }
        spec.validate("imprint.")?;
        Ok(spec)
    }

    /// The command line read leniently: every parameter that parses is
    /// applied, the others are skipped. When the command line is bad, PID 1
    /// must still honour what the operator asked for on failure, and still
    /// report and serve `/status`.
    pub fn lenient_from_cmdline(cmdline: &KernelCmdline) -> DeploySpec {
        let mut spec = DeploySpec::default();
        for (name, param) in cmdline.with_prefix("imprint.") {
            let _ = spec.set("imprint.", name, param.value.as_deref());
        }
        spec
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
        if self.kexec.kernel.is_none()
            && (self.kexec.initrd.is_some() || self.kexec.cmdline.is_some())
        {
            bail!(
                "{origin}kexec-initrd= and {origin}kexec-cmdline= need {origin}kexec-kernel= (the kernel they go with)"
            );
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
        assert_eq!(s.on_success, SuccessPolicy::Kexec { required: false });
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
        let c = KernelCmdline::parse(
            "imprint.bogus=1 imprint.on-failure=poweroff imprint.status-port=8080",
        );
        assert!(DeploySpec::from_cmdline(&c).is_err());
        let lenient = DeploySpec::lenient_from_cmdline(&c);
        assert_eq!(lenient.on_failure, FailurePolicy::Poweroff);
        assert_eq!(lenient.status_port, Some(8080));
        let c = KernelCmdline::parse("imprint.on-failure=nonsense");
        assert_eq!(
            DeploySpec::lenient_from_cmdline(&c).on_failure,
            FailurePolicy::Halt
        );
    }

    #[test]
    fn a_drp_bootenv_line_points_at_the_machines_rendered_spec() {
        let uuid = "3f2a1b4c-0000-4000-8000-000000000001";
        let s = spec(&format!(
            "rs.uuid={uuid} provisioner.web=http://10.0.0.1:8091/ console=ttyS0 -- console=ttyS0"
        ))
        .unwrap();
        assert_eq!(
            s.config.as_deref(),
            Some(format!("http://10.0.0.1:8091/machines/{uuid}/imprint.json").as_str())
        );
        // An explicit image or spec wins over DRP's convention.
        let s = spec(&format!(
            "rs.uuid={uuid} provisioner.web=http://10.0.0.1:8091 imprint.url=http://x/i.img"
        ))
        .unwrap();
        assert_eq!(s.config, None);
        // Half of the pair is not DRP.
        assert_eq!(spec(&format!("rs.uuid={uuid}")).unwrap().config, None);
        let msg = format!(
            "{:#}",
            spec("rs.uuid=../../etc provisioner.web=http://10.0.0.1:8091").unwrap_err()
        );
        assert!(msg.contains("rs.uuid="), "{msg}");
        let msg = format!(
            "{:#}",
            spec(&format!("rs.uuid={uuid} provisioner.web=10.0.0.1:8091")).unwrap_err()
        );
        assert!(msg.contains("provisioner.web="), "{msg}");
    }

    #[test]
    fn handoff_policies() {
        let on_success = |v: &str| spec(&format!("imprint.on-success={v}")).map(|s| s.on_success);
        assert_eq!(
            on_success("kexec").unwrap(),
            SuccessPolicy::Kexec { required: false }
        );
        assert_eq!(
            on_success("kexec!").unwrap(),
            SuccessPolicy::Kexec { required: true }
        );
        assert_eq!(on_success("none").unwrap(), SuccessPolicy::None);
        let on_failure = |v: &str| spec(&format!("imprint.on-failure={v}")).map(|s| s.on_failure);
        assert_eq!(on_failure("retry:3").unwrap(), FailurePolicy::Retry(3));
        for bad in ["retry:0", "retry:", "retry:x", "retry"] {
            let msg = format!("{:#}", on_failure(bad).unwrap_err());
            assert!(
                msg.contains("imprint.on-failure") && msg.contains(bad),
                "{msg}"
            );
        }
    }

    #[test]
    fn kexec_overrides_and_reporting() {
        let s = spec(
            "imprint.kexec-kernel=/boot/vmlinuz-6.1 imprint.kexec-initrd=/boot/initrd.img-6.1 \
             \"imprint.kexec-cmdline=root=/dev/sda2 ro quiet\" imprint.report=https://ops/events \
             imprint.status-port=8080",
        )
        .unwrap();
        assert_eq!(s.kexec.kernel.as_deref(), Some("/boot/vmlinuz-6.1"));
        assert_eq!(s.kexec.initrd.as_deref(), Some("/boot/initrd.img-6.1"));
        assert_eq!(s.kexec.cmdline.as_deref(), Some("root=/dev/sda2 ro quiet"));
        assert_eq!(s.report.as_deref(), Some("https://ops/events"));
        assert_eq!(s.status_port, Some(8080));

        let msg = format!(
            "{:#}",
            spec("imprint.kexec-initrd=/initrd.img").unwrap_err()
        );
        assert!(msg.contains("need imprint.kexec-kernel="), "{msg}");
        let msg = format!(
            "{:#}",
            spec("imprint.kexec-kernel=boot/vmlinuz").unwrap_err()
        );
        assert!(msg.contains("absolute path"), "{msg}");
        let msg = format!(
            "{:#}",
            spec("imprint.kexec-kernel=/boot/../../x").unwrap_err()
        );
        assert!(msg.contains("without .."), "{msg}");
        let msg = format!("{:#}", spec("imprint.status-port=0").unwrap_err());
        assert!(
            msg.contains("imprint.status-port") && msg.contains("TCP port"),
            "{msg}"
        );
        let msg = format!("{:#}", spec("imprint.report=ftp://x/").unwrap_err());
        assert!(msg.contains("imprint.report"), "{msg}");
    }

    #[test]
    fn cli_origin_is_quoted_in_errors() {
        let mut s = DeploySpec::default();
        let msg = format!("{:#}", s.set("--", "nope", Some("1")).unwrap_err());
        assert!(msg.starts_with("unknown parameter --nope"), "{msg}");
    }
}

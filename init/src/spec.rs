//! The deploy spec: what to deploy where, and what to do afterwards.
//!
//! Every source of settings (the kernel command line's `imprint.X=`, the
//! CLI's `--X`) goes through one table, [`PARAMS`], so the two can never
//! drift apart and the README documents exactly what the code accepts.

use anyhow::{Context, Result, bail};

use crate::cmdline::KernelCmdline;
use crate::pipeline::checksum::Checksum;

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
        values: "http://HOST[:PORT]/PATH | file:///PATH",
        default: "(required)",
        help: "Where the raw disk image is fetched from.",
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

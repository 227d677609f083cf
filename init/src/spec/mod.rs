//! The deploy spec: what to deploy where, and what to do afterwards.
//!
//! Every layer of settings (a JSON deploy spec, the kernel command line's
//! `imprint.X=`, the CLI's `--X`) goes through one table, [`PARAMS`], which
//! parses each value into its type once and notes which layer set it; the
//! layers can never drift apart and the README documents exactly what the
//! code accepts. [`DeploySpec::resolve`] then checks what is required and
//! hands the session a [`Resolved`] deploy with nothing left to parse.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmdline::KernelCmdline;
use crate::disk::DiskSelector;
use crate::disk::root::RootSelector;
use crate::efi::apply::BootEntryRequest;
use crate::erase::{EraseDisks, Mode as EraseMode};
pub use crate::handoff::KexecOverride;
use crate::inject::Identity;
use crate::net::NetConfig;
use crate::pipeline::checksum::Checksum;
use crate::pipeline::direct::DirectIo;
use crate::pipeline::format::DeclaredFormat;
use crate::rootfs::bootloader::Bootloader;
use crate::rootfs::layout::Layout;
use crate::sign::trust::SigningSpec;
use crate::source::SourceOptions;
use crate::source::url::SourceUrl;
use crate::status::StatusOptions;

mod params;

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

/// The settings as the layers gave them: every value already parsed into
/// its type by [`PARAMS`], and where it came from. [`DeploySpec::resolve`]
/// turns it into the [`Resolved`] deploy a session runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySpec {
    /// Where the image comes from (`http://…`, `file:///…`).
    pub url: Option<SourceUrl>,
    /// The target disk: a device, a by-id/by-path name or hints (the CLI
    /// also takes a regular file).
    pub disk: Option<DiskSelector>,
    /// The declared image format ([`DeclaredFormat::Auto`]: sniffed).
    pub format: DeclaredFormat,
    /// The expected digest of the image as served.
    pub checksum: Option<Checksum>,
    /// Where to read the expected digest from (a `SHA256SUMS`-style list).
    pub checksum_url: Option<SourceUrl>,
    /// Signatures of the image or its checksum list, and a trusted key.
    pub signing: SigningSpec,
    /// Timeouts, retries and trust for fetching.
    pub source: SourceOptions,
    /// What makes this machine itself, injected after the write.
    pub identity: Identity,
    /// Which partition is the root (`imprint.root=`); discovered when absent.
    pub root: Option<RootSelector>,
    /// Grow the last partition to the end of the disk (`imprint.grow=1`).
    pub grow: bool,
    /// A JSON deploy spec (`imprint.config=`).
    pub config: Option<SourceUrl>,
    pub on_success: SuccessPolicy,
    pub on_failure: FailurePolicy,
    /// What to kexec, overriding discovery in the installed root.
    pub kexec: KexecOverride,
    /// Where JSON status events are POSTed (`imprint.report=`).
    pub report: Option<String>,
    /// The port of the read-only `/status` endpoint (`imprint.status-port=`).
    pub status_port: Option<u16>,
    /// How long a NIC may take to get carrier (`imprint.link-timeout=`).
    pub link_timeout: Option<Duration>,
    /// The deploy spec's `boot-network`: the network imprint itself uses,
    /// over the command line's `BOOTIF=`/`provisioner.*` (only where the
    /// spec is read before the network is up).
    pub boot_network: Option<NetConfig>,
    /// Bytes of compressed and decoded data the parallel decoders may hold
    /// (`imprint.decode-memory=`); `pipeline::ordered`'s default if absent.
    pub decode_memory: Option<u64>,
    /// Whether the image is written past the page cache (`imprint.direct-io=`).
    pub direct_io: DirectIo,
    /// A root-filesystem deploy's partitions (`imprint.layout=` names a
    /// preset; the deploy spec's `layout` may also be a whole layout).
    pub layout: Option<Layout>,
    /// A root-filesystem deploy's bootloader (`imprint.bootloader=`).
    pub bootloader: Bootloader,
    /// Tarballs unpacked over a root-filesystem image, in order (the
    /// deploy spec's `additional-tarballs`).
    pub overlays: Vec<Overlay>,
    /// What this boot is for (`imprint.action=`).
    pub action: Action,
    /// How disks are erased before the deploy, or as the whole job
    /// (`imprint.erase=`).
    pub erase: Option<EraseMode>,
    /// Which disks the erase reaches (`imprint.erase-disks=`).
    pub erase_disks: EraseDisks,
    /// The UEFI boot entry written after the deploy (`imprint.boot-order=`,
    /// `imprint.boot-next=`, `imprint.boot-loader=`).
    pub boot_entry: BootEntryRequest,
    /// Which layer set each parameter, for messages.
    origins: BTreeMap<&'static str, Origin>,
}

/// What a boot of imprint is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Write the image (after an erase, when `imprint.erase=` asks).
    #[default]
    Deploy,
    /// Only erase disks; no image.
    Erase,
}

impl Action {
    pub fn parse(v: &str) -> Result<Action> {
        Ok(match v {
            "deploy" => Action::Deploy,
            "erase" => Action::Erase,
            _ => bail!("must be deploy or erase, not {v:?}"),
        })
    }
}

/// An erase, resolved: how, and which disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseRequest {
    pub mode: EraseMode,
    pub disks: EraseDisks,
}

/// A job that only erases (`imprint.action=erase`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EraseJob {
    pub request: EraseRequest,
    /// `imprint.disk=`, which `erase-disks=target` erases.
    pub target: Option<DiskSelector>,
    pub on_success: SuccessPolicy,
    pub on_failure: FailurePolicy,
}

/// A tarball unpacked over the root filesystem after the image, as DRP's
/// `image-deploy/additional-tarballs` entries are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overlay {
    /// Where it is.
    pub uri: String,
    /// Its type, as `imprint.format=` names rootfs tarballs: `tar`, `tgz`,
    /// `txz`, `tbz`, `tar-zst`.
    pub format: String,
    /// Overlays are unpacked by ascending index.
    #[serde(default)]
    pub index: i64,
    /// `sha256:HEX` or `sha512:HEX` of the tarball as served.
    #[serde(default)]
    pub checksum: Option<String>,
    /// DRP's flag: `uri` is relative to the DRP file server. The content
    /// pack's template makes it absolute; imprint only accepts `false`.
    #[serde(default)]
    pub drpserved: bool,
}

/// A layer of settings, in the order they are applied: later layers win.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A JSON deploy spec (`imprint.config=`, `--config`, DRP's `imprint.json`).
    Json,
    /// `imprint.X=` on the kernel command line.
    Cmdline,
    /// `--X` on the `imprint deploy` command line.
    Cli,
}

impl Origin {
    /// How the user wrote parameter `name` on this layer, as errors quote it:
    /// `imprint.disk= on the kernel command line`, `--disk`, `field "disk"
    /// of the deploy spec`.
    pub fn spelling(self, name: &str) -> String {
        match self {
            Origin::Cmdline => format!("imprint.{name}= on the kernel command line"),
            Origin::Cli => format!("--{name}"),
            Origin::Json => format!("field {name:?} of the deploy spec"),
        }
    }

    /// How to set `name` on this layer, for "no image given: set …".
    fn how_to_set(self, name: &str, example: &str) -> String {
        match self {
            Origin::Cmdline | Origin::Json => format!("set imprint.{name}={example}"),
            Origin::Cli => format!("pass --{name} {example}"),
        }
    }
}

/// The deploy a session runs: the settings resolved once, required values
/// present, every value typed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub image: SourceUrl,
    pub disk: DiskSelector,
    pub format: DeclaredFormat,
    pub expected: Option<Expected>,
    /// `imprint.signature=`, `imprint.checksum-signature=`, `imprint.trusted-key=`.
    pub signing: SigningSpec,
    pub source: SourceOptions,
    pub identity: Identity,
    pub root: Option<RootSelector>,
    pub grow: bool,
    pub on_success: SuccessPolicy,
    pub on_failure: FailurePolicy,
    pub kexec: KexecOverride,
    /// `imprint.decode-memory=`, when set.
    pub decode_memory: Option<u64>,
    /// `imprint.direct-io=`.
    pub direct_io: DirectIo,
    /// `imprint.layout=` or the deploy spec's `layout`; the `default`
    /// preset when absent.
    pub layout: Option<Layout>,
    /// `imprint.bootloader=`.
    pub bootloader: Bootloader,
    /// The deploy spec's `additional-tarballs`, by index, each checked.
    pub overlays: Vec<CheckedOverlay>,
    /// Disks erased before the image is written.
    pub erase: Option<EraseRequest>,
    /// The UEFI boot entry written after the deploy.
    pub boot_entry: BootEntryRequest,
    /// Which layer set each parameter, for messages.
    origins: BTreeMap<&'static str, Origin>,
}

/// An overlay with its URL, type and checksum parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedOverlay {
    pub url: SourceUrl,
    pub format: String,
    pub expected: Option<Expected>,
}

impl Overlay {
    fn check(&self, n: usize) -> Result<CheckedOverlay> {
        let field = |name: &str| format!("additional-tarballs[{n}].{name} of the deploy spec");
        if self.drpserved {
            bail!(
                "{}: is true, but the uri must be absolute here (the content pack's template \
                 prefixes DRP's file server)",
                field("drpserved")
            );
        }
        let url = SourceUrl::parse(&self.uri).with_context(|| field("uri"))?;
        if crate::pipeline::format::rootfs_compression(&self.format).is_none() {
            bail!(
                "{}: {:?} is not a tarball type (tar, tgz, txz, tbz or tar-zst)",
                field("format"),
                self.format
            );
        }
        let expected = self
            .checksum
            .as_deref()
            .map(Checksum::parse)
            .transpose()
            .with_context(|| field("checksum"))?
            .map(Expected::Digest);
        Ok(CheckedOverlay {
            url,
            format: self.format.to_ascii_lowercase(),
            expected,
        })
    }
}

/// How the image's digest is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    /// Given outright (`imprint.checksum=`).
    Digest(Checksum),
    /// Looked up by the image's file name in a checksum list.
    List(SourceUrl),
}

impl Resolved {
    /// Parameter `name` as the user wrote it: `imprint.disk= on the kernel
    /// command line`; `imprint.disk=` when no layer set it.
    pub fn spelling(&self, name: &str) -> String {
        match self.origins.get(name) {
            Some(origin) => origin.spelling(name),
            None => format!("imprint.{name}="),
        }
    }
}

impl Default for DeploySpec {
    fn default() -> Self {
        DeploySpec {
            url: None,
            disk: None,
            format: DeclaredFormat::Auto,
            checksum: None,
            checksum_url: None,
            signing: SigningSpec::default(),
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
            link_timeout: None,
            boot_network: None,
            decode_memory: None,
            direct_io: DirectIo::default(),
            layout: None,
            bootloader: Bootloader::default(),
            overlays: Vec::new(),
            action: Action::Deploy,
            erase: None,
            erase_disks: EraseDisks::Target,
            boot_entry: BootEntryRequest {
                policy: Some(crate::efi::BootOrderPolicy::Keep),
                boot_next: false,
                loader: None,
            },
            origins: BTreeMap::new(),
        }
    }
}

pub use params::{PARAMS, ParamDef};

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
fn drp_spec_url(cmdline: &KernelCmdline) -> Result<Option<SourceUrl>> {
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
    SourceUrl::parse(&format!("{web}/machines/{uuid}/imprint.json"))
        .context("parameter provisioner.web")
        .map(Some)
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
    /// Applies one `name=value` setting of layer `origin` through the
    /// parameter table. Errors quote the parameter as the user wrote it.
    pub fn set(&mut self, origin: Origin, name: &str, value: Option<&str>) -> Result<()> {
        let def = PARAMS.iter().find(|p| p.name == name).with_context(|| {
            let unknown = match origin {
                Origin::Cmdline => format!("unknown parameter imprint.{name}"),
                Origin::Cli => format!("unknown parameter --{name}"),
                Origin::Json => format!("unknown field {name:?} in the deploy spec"),
            };
            format!("{unknown}; known parameters: {}", known_names())
        })?;
        let spelling = origin.spelling(name);
        let value = value.with_context(|| format!("{spelling} needs a value"))?;
        (def.apply)(self, value).with_context(|| spelling.clone())?;
        self.origins.insert(def.name, origin);
        Ok(())
    }

    /// Applies every `imprint.X=` of the kernel command line. Parameters
    /// outside the `imprint.` namespace belong to the kernel or to DRP.
    fn apply_cmdline(&mut self, cmdline: &KernelCmdline) -> Result<()> {
        for (name, param) in cmdline.with_prefix("imprint.") {
            self.set(Origin::Cmdline, name, param.value.as_deref())?;
        }
        Ok(())
    }

    /// Builds the spec from the kernel command line. Booted by DRP with no
    /// image named, the spec is the machine's rendered `imprint.json`.
    pub fn from_cmdline(cmdline: &KernelCmdline) -> Result<DeploySpec> {
        let mut spec = DeploySpec::default();
        spec.apply_cmdline(cmdline)?;
        if spec.url.is_none() && spec.config.is_none() {
            spec.config = drp_spec_url(cmdline)?;
        }
        spec.validate(Origin::Cmdline)?;
        Ok(spec)
    }

    /// The command line read leniently: every parameter that parses is
    /// applied, the others are skipped. When the command line is bad, PID 1
    /// must still honour what the operator asked for on failure, and still
    /// report and serve `/status`.
    pub fn lenient_from_cmdline(cmdline: &KernelCmdline) -> DeploySpec {
        let mut spec = DeploySpec::default();
        for (name, param) in cmdline.with_prefix("imprint.") {
            let _ = spec.set(Origin::Cmdline, name, param.value.as_deref());
        }
        spec
    }

    /// Applies a JSON deploy spec: an object whose keys are the parameter
    /// names (`url`, `disk`, `checksum`, …; strings, numbers or booleans),
    /// `boot-network` ([`NetConfig::from_json`]) and the identity fields (`hostname`, `ssh-keys`, `access-keys`,
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
            if key == "boot-network" {
                let serde_json::Value::Object(object) = &value else {
                    bail!("field \"boot-network\" of the deploy spec must be an object");
                };
                self.boot_network = Some(NetConfig::from_json(object)?);
                continue;
            }
            if key == "additional-tarballs" {
                self.overlays = serde_json::from_value(value)
                    .context("field \"additional-tarballs\" of the deploy spec")?;
                continue;
            }
            if key == "curtin-storage" {
                // DRP's curtin/partitions; a "layout" (applied after it:
                // the keys come sorted) or imprint.layout= wins.
                if !self.origins.contains_key("layout") {
                    self.layout = Some(
                        crate::rootfs::curtin::layout_from_curtin(&value)
                            .context("field \"curtin-storage\" of the deploy spec")?,
                    );
                }
                continue;
            }
            if key == "layout" && (value.is_object() || value.is_array()) {
                self.layout = Some(
                    Layout::from_json_value(&value)
                        .context("field \"layout\" of the deploy spec")?,
                );
                self.origins.insert("layout", Origin::Json);
                continue;
            }
            if IDENTITY_FIELDS.contains(&key.as_str()) {
                identity.insert(key, value);
                continue;
            }
            let text = match &value {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                serde_json::Value::Null => continue,
                // The image's mirrors, in order (source::mirrors).
                serde_json::Value::Array(items) if key == "url" => items
                    .iter()
                    .map(|item| item.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .context("field \"url\" of the deploy spec: a list of mirrors holds strings")?
                    .join("|"),
                _ => bail!("field {key:?}: expected a string, number or boolean"),
            };
            self.set(Origin::Json, &key, Some(&text))?;
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
        spec.apply_cmdline(cmdline)?;
        spec.validate(Origin::Cmdline)?;
        Ok(spec)
    }

    /// Checks that hold across parameters.
    pub fn validate(&self, layer: Origin) -> Result<()> {
        let spell = |name: &str| match self.origins.get(name) {
            Some(origin) => origin.spelling(name),
            None => layer.spelling(name),
        };
        if self.checksum.is_some() && self.checksum_url.is_some() {
            bail!(
                "give {} or {}, not both",
                spell("checksum"),
                spell("checksum-url")
            );
        }
        if self.signing.checksum_signature.is_some() && self.checksum_url.is_none() {
            bail!(
                "{} signs a checksum list: give {} too",
                spell("checksum-signature"),
                spell("checksum-url")
            );
        }
        if self.kexec.kernel.is_none()
            && (self.kexec.initrd.is_some() || self.kexec.cmdline.is_some())
        {
            let given = if self.kexec.initrd.is_some() {
                spell("kexec-initrd")
            } else {
                spell("kexec-cmdline")
            };
            bail!(
                "{given} needs {} (the kernel it goes with)",
                layer.spelling("kexec-kernel")
            );
        }
        Ok(())
    }

    /// Where status goes: the report URL and the status port this spec
    /// names, with its fetch options for the webhook.
    pub fn status_options(&self) -> StatusOptions {
        StatusOptions {
            report_url: self.report.clone(),
            status_port: self.status_port,
            source: self.source.clone(),
            ..StatusOptions::default()
        }
    }

    /// Checks that what a deploy needs is there and hands over the typed
    /// deploy. `layer` is where the user is expected to set what is
    /// missing, for the message.
    /// An erase-only job (`imprint.action=erase`).
    pub fn resolve_erase(self, layer: Origin) -> Result<EraseJob> {
        self.validate(layer)?;
        let spell = |name: &str| match self.origins.get(name) {
            Some(origin) => origin.spelling(name),
            None => layer.spelling(name),
        };
        let Some(mode) = self.erase else {
            bail!(
                "{} needs {}: metadata, discard, zero, secure or auto",
                spell("action"),
                layer.spelling("erase")
            );
        };
        if self.url.is_some() {
            log::warn!("{} is ignored: this job only erases", spell("url"));
        }
        if self.erase_disks == EraseDisks::Target && self.disk.is_none() {
            bail!(
                "an erase job needs disks: {} (every fixed disk) or to hints, or {}",
                layer.how_to_set("erase-disks", "all"),
                layer.how_to_set("disk", "/dev/NAME")
            );
        }
        Ok(EraseJob {
            request: EraseRequest {
                mode,
                disks: self.erase_disks,
            },
            target: self.disk,
            on_success: self.on_success,
            on_failure: self.on_failure,
        })
    }

    pub fn resolve(self, layer: Origin) -> Result<Resolved> {
        self.validate(layer)?;
        let image = self.url.with_context(|| {
            format!(
                "no image given: {}",
                layer.how_to_set("url", "http://server/image.raw.zst")
            )
        })?;
        let disk = self.disk.with_context(|| match layer {
            Origin::Cli => "no target given: pass --disk /dev/NAME or --disk FILE".to_owned(),
            Origin::Cmdline | Origin::Json => "no target disk given: set imprint.disk=/dev/NAME \
                 or hints such as imprint.disk=size>=100G,rotational=0"
                .to_owned(),
        })?;
        let mut sorted = self.overlays.clone();
        sorted.sort_by_key(|o| o.index);
        let overlays = sorted
            .iter()
            .enumerate()
            .map(|(n, o)| o.check(n))
            .collect::<Result<Vec<_>>>()?;
        let expected = match (self.checksum, self.checksum_url) {
            (Some(digest), _) => Some(Expected::Digest(digest)),
            (None, Some(list)) => Some(Expected::List(list)),
            (None, None) => None,
        };
        Ok(Resolved {
            image,
            disk,
            format: self.format,
            expected,
            signing: self.signing,
            source: self.source,
            identity: self.identity,
            root: self.root,
            grow: self.grow,
            on_success: self.on_success,
            on_failure: self.on_failure,
            kexec: self.kexec,
            decode_memory: self.decode_memory,
            direct_io: self.direct_io,
            layout: self.layout,
            bootloader: self.bootloader,
            overlays,
            erase: self.erase.map(|mode| EraseRequest {
                mode,
                disks: self.erase_disks,
            }),
            boot_entry: self.boot_entry,
            origins: self.origins,
        })
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
        assert_eq!(
            s.url.as_ref().unwrap().as_str(),
            "http://10.0.2.2:8000/a.img"
        );
        assert_eq!(s.disk, Some(DiskSelector::Name("/dev/vda".to_owned())));
        assert_eq!(s.on_success, SuccessPolicy::Poweroff);
        assert_eq!(s.on_failure, FailurePolicy::Reboot);
    }

    #[test]
    fn mirrors_from_cmdline_and_json() {
        let s = spec(
            "imprint.url=http://cache/x.img|http://origin/x.img imprint.parallel=2 \
             imprint.manifest=http://origin/x.img.chunks imprint.decode-memory=64M",
        )
        .unwrap();
        assert_eq!(s.url.as_ref().unwrap().as_str(), "http://cache/x.img");
        assert_eq!(
            s.source.ranges.mirrors,
            ["http://cache/x.img", "http://origin/x.img"]
        );
        assert_eq!(s.source.ranges.parallel, 2);
        assert_eq!(
            s.source.ranges.manifest.as_deref(),
            Some("http://origin/x.img.chunks")
        );
        assert_eq!(s.source.ranges.memory, Some(64 << 20));
        let mut json = DeploySpec::default();
        json.apply_json(r#"{"url": ["http://a/x.img", "https://b/x.img?X-Amz-Signature=s"]}"#)
            .unwrap();
        assert_eq!(json.url.as_ref().unwrap().as_str(), "http://a/x.img");
        assert_eq!(json.source.ranges.mirrors.len(), 2);
        json.apply_json(r#"{"url": "http://c/x.img"}"#).unwrap();
        assert_eq!(json.source.ranges.mirrors, ["http://c/x.img"]);
        let msg = format!(
            "{:#}",
            DeploySpec::default()
                .apply_json(r#"{"url": ["http://a/x", 3]}"#)
                .unwrap_err()
        );
        assert!(msg.contains("a list of mirrors holds strings"), "{msg}");
        let msg = format!("{:#}", spec("imprint.parallel=0").unwrap_err());
        assert!(
            msg.contains("imprint.parallel= on the kernel command line"),
            "{msg}"
        );
        let msg = format!("{:#}", spec("imprint.chunk=1K").unwrap_err());
        assert!(msg.contains("64K minimum"), "{msg}");
    }

    #[test]
    fn defaults() {
        let s = spec("quiet").unwrap();
        assert_eq!(s, DeploySpec::default());
        assert_eq!(s.on_success, SuccessPolicy::Kexec { required: false });
        assert_eq!(s.on_failure, FailurePolicy::Halt);
        let msg = format!("{:#}", s.clone().resolve(Origin::Cmdline).unwrap_err());
        assert_eq!(
            msg,
            "no image given: set imprint.url=http://server/image.raw.zst"
        );
        let msg = format!("{:#}", s.resolve(Origin::Cli).unwrap_err());
        assert_eq!(
            msg,
            "no image given: pass --url http://server/image.raw.zst"
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
        assert!(
            msg.starts_with("imprint.format= on the kernel command line: "),
            "{msg}"
        );
        assert!(msg.contains("dd-rar"), "{msg}");
        assert!(matches!(
            spec("imprint.format=dd-zst").unwrap().format,
            DeclaredFormat::Image { name, .. } if name == "dd-zst"
        ));
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
        assert_eq!(s.url.as_ref().unwrap().as_str(), "http://h/golden.raw.zst");
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
        assert!(
            msg.starts_with("field \"retries\" of the deploy spec: "),
            "{msg}"
        );
        let msg = format!("{:#}", s.apply_json(r#"{"hostnme": "x"}"#).unwrap_err());
        assert!(
            msg.contains("unknown field \"hostnme\" in the deploy spec"),
            "{msg}"
        );
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
        assert_eq!(msg, "imprint.url= on the kernel command line needs a value");
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
            s.config.unwrap().as_str(),
            format!("http://10.0.0.1:8091/machines/{uuid}/imprint.json")
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
        assert_eq!(
            msg,
            "imprint.kexec-initrd= on the kernel command line needs imprint.kexec-kernel= on the kernel command line (the kernel it goes with)"
        );
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
        let msg = format!("{:#}", s.set(Origin::Cli, "nope", Some("1")).unwrap_err());
        assert!(msg.starts_with("unknown parameter --nope"), "{msg}");
        let msg = format!(
            "{:#}",
            s.set(Origin::Cli, "disk", Some("/dev/disk/x")).unwrap_err()
        );
        assert!(msg.starts_with("--disk: disk /dev/disk/x: "), "{msg}");
    }

    #[test]
    fn later_layers_win_and_errors_say_which_layer_set_a_value() {
        let cmdline = KernelCmdline::parse("imprint.disk=/dev/vdb imprint.checksum=sha256:00");
        let err = DeploySpec::from_json_and_cmdline(
            r#"{"url": "http://h/x.img", "disk": "/dev/vda", "checksum-url": "http://h/SUMS"}"#,
            &cmdline,
        )
        .unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            "imprint.checksum= on the kernel command line: digest has 2 hex digits, expected 64"
        );
        let cmdline = KernelCmdline::parse("imprint.disk=/dev/vdb imprint.link-timeout=2s");
        let spec = DeploySpec::from_json_and_cmdline(
            r#"{"url": "file:///srv/x.img", "disk": "/dev/vda", "link-timeout": "9s", "checksum-url": "http://h/SUMS"}"#,
            &cmdline,
        )
        .unwrap();
        assert_eq!(spec.link_timeout, Some(Duration::from_secs(2)));
        let deploy = spec.resolve(Origin::Cmdline).unwrap();
        assert_eq!(deploy.disk, DiskSelector::Name("/dev/vdb".to_owned()));
        assert_eq!(
            deploy.spelling("disk"),
            "imprint.disk= on the kernel command line"
        );
        assert_eq!(deploy.spelling("url"), "field \"url\" of the deploy spec");
        assert_eq!(deploy.spelling("grow"), "imprint.grow=");
        assert!(!deploy.image.needs_network());
        assert!(
            matches!(deploy.expected, Some(Expected::List(ref list)) if list.as_str() == "http://h/SUMS")
        );
    }

    #[test]
    fn root_filesystem_settings_from_the_spec_and_the_command_line() {
        let json = r#"{"url": "http://h/root.tgz", "disk": "/dev/vda",
            "layout": {"disks": [{"partitions": [
                {"size": "1M", "type": "bios-boot"},
                {"size": "rest", "type": "linux", "filesystem": "xfs", "mount": "/"}]}]},
            "additional-tarballs": [
                {"uri": "http://h/b.tar", "format": "tar", "index": 2},
                {"uri": "http://h/a.tgz", "format": "TGZ", "index": 1,
                 "checksum": "sha256:00000000000000000000000000000000000000000000000000000000000000ab"}]}"#;
        let spec = DeploySpec::from_json_and_cmdline(
            json,
            &KernelCmdline::parse("imprint.bootloader=none"),
        )
        .unwrap();
        let layout = spec.layout.clone().unwrap();
        assert_eq!(layout.disks[0].partitions.len(), 2);
        assert_eq!(spec.bootloader, Bootloader::None);
        let deploy = spec.resolve(Origin::Cmdline).unwrap();
        let overlays: Vec<(&str, &str, bool)> = deploy
            .overlays
            .iter()
            .map(|o| (o.url.as_str(), o.format.as_str(), o.expected.is_some()))
            .collect();
        assert_eq!(
            overlays,
            [
                ("http://h/a.tgz", "tgz", true),
                ("http://h/b.tar", "tar", false)
            ]
        );
        // A preset by parameter replaces the spec's layout.
        let spec = DeploySpec::from_json_and_cmdline(
            json,
            &KernelCmdline::parse("imprint.layout=xfs-root"),
        )
        .unwrap();
        assert_eq!(
            spec.layout,
            Some(crate::rootfs::layout::preset("xfs-root").unwrap())
        );
    }

    #[test]
    fn root_filesystem_settings_name_what_is_wrong() {
        let resolve = |json: &str| -> String {
            let json = format!(r#"{{"url": "http://h/r.tgz", "disk": "/dev/vda", {json}}}"#);
            match DeploySpec::from_json_and_cmdline(&json, &KernelCmdline::parse(""))
                .and_then(|s| s.resolve(Origin::Json))
            {
                Ok(_) => "accepted".to_owned(),
                Err(e) => format!("{e:#}"),
            }
        };
        assert_eq!(
            resolve(r#""additional-tarballs": [{"uri": "http://h/x", "format": "zip"}]"#),
            "additional-tarballs[0].format of the deploy spec: \"zip\" is not a tarball type \
             (tar, tgz, txz, tbz or tar-zst)"
        );
        assert_eq!(
            resolve(
                r#""additional-tarballs": [{"uri": "files/x.tar", "format": "tar", "drpserved": true}]"#
            ),
            "additional-tarballs[0].drpserved of the deploy spec: is true, but the uri must be \
             absolute here (the content pack's template prefixes DRP's file server)"
        );
        assert!(
            resolve(r#""additional-tarballs": [{"uri": "http://h/x", "format": "tar", "sha": 1}]"#)
                .starts_with(
                    "field \"additional-tarballs\" of the deploy spec: unknown field `sha`"
                ),
        );
        assert!(
            resolve(r#""layout": {"disks": [{"partitions": [{"size": "12X", "type": "linux"}]}]}"#)
                .starts_with(
                    "field \"layout\" of the deploy spec: layout.disks[0].partitions[0].size"
                ),
        );
        assert_eq!(
            resolve(r#""bootloader": "lilo""#),
            "field \"bootloader\" of the deploy spec: must be auto, grub, systemd-boot or none, not \"lilo\""
        );
    }
}

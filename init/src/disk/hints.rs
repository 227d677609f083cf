//! Parsing `imprint.disk=` into a [`DiskSelector`]; the grammar is in the
//! module docs of [`crate::disk`].

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, anyhow, bail};

use super::DiskInfo;
use crate::text::human_size;

const KNOWN_HINTS: &str = "size, model, vendor, serial, wwn, rotational, name, by-path, by-id";
const GIB: u64 = 1 << 30;

/// What `imprint.disk=` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSelector {
    /// `/dev/vda` or `vda`, as written.
    Name(String),
    /// A name under `/dev/disk/by-id/`, without that prefix.
    ById(String),
    /// A name under `/dev/disk/by-path/`, without that prefix.
    ByPath(String),
    /// Root-device hints; `text` is the value as written, for messages.
    Hints { text: String, hints: Vec<Hint> },
}

/// One root-device hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hint {
    /// `size<op><amount><unit>`. With `whole_units`, the disk size is first
    /// rounded down to whole units (Ironic's integer GiB, and `size=8G`);
    /// otherwise bytes are compared with `amount * unit`.
    Size {
        op: SizeOp,
        amount: u64,
        unit: u64,
        whole_units: bool,
    },
    Model(TextMatch),
    Vendor(TextMatch),
    Serial(TextMatch),
    Wwn(String),
    Rotational(bool),
    Name(String),
    ById(String),
    ByPath(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizeOp {
    Eq,
    Ge,
    Le,
    Gt,
    Lt,
}

impl SizeOp {
    fn holds(self, lhs: u64, rhs: u64) -> bool {
        match self {
            Self::Eq => lhs == rhs,
            Self::Ge => lhs >= rhs,
            Self::Le => lhs <= rhs,
            Self::Gt => lhs > rhs,
            Self::Lt => lhs < rhs,
        }
    }

    fn symbol(self) -> &'static str {
        match self {
            Self::Eq => "=",
            Self::Ge => ">=",
            Self::Le => "<=",
            Self::Gt => ">",
            Self::Lt => "<",
        }
    }

    /// What held instead, for "size 8.0 GiB < 100.0 GiB".
    fn negated_symbol(self) -> &'static str {
        match self {
            Self::Eq => "!=",
            Self::Ge => "<",
            Self::Le => ">",
            Self::Gt => "<=",
            Self::Lt => ">=",
        }
    }
}

/// A string hint: exact after trimming, or a prefix when written with a
/// trailing `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextMatch {
    Exact(String),
    Prefix(String),
}

impl TextMatch {
    fn parse(value: &str) -> Self {
        match value.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.trim().to_owned()),
            None => Self::Exact(value.to_owned()),
        }
    }

    pub fn matches(&self, actual: &str) -> bool {
        let actual = actual.trim();
        match self {
            Self::Exact(wanted) => actual == wanted,
            Self::Prefix(prefix) => actual.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TextMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(s) => write!(f, "{s:?}"),
            Self::Prefix(s) => write!(f, "\"{}*\"", s.escape_debug()),
        }
    }
}

impl DiskSelector {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text.is_empty() {
            bail!(
                "empty disk selector; give a device (/dev/sda), /dev/disk/by-id/…, /dev/disk/by-path/… or hints ({KNOWN_HINTS})"
            );
        }
        if let Some(id) = text.strip_prefix("/dev/disk/by-id/") {
            return Ok(Self::ById(non_empty(id, text)?));
        }
        if let Some(path) = text.strip_prefix("/dev/disk/by-path/") {
            return Ok(Self::ByPath(non_empty(path, text)?));
        }
        if text.starts_with("/dev/disk/") {
            bail!(
                "disk {text}: only /dev/disk/by-id/ and /dev/disk/by-path/ names can be resolved without udev"
            );
        }
        if text.contains(['=', '<', '>', ',']) {
            let hints = text
                .split(',')
                .map(|item| parse_hint(item, text))
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self::Hints {
                text: text.to_owned(),
                hints,
            });
        }
        if text.contains(char::is_whitespace) {
            bail!("disk {text:?}: a device name has no spaces; hints are written key=value");
        }
        Ok(Self::Name(text.to_owned()))
    }

    /// Whether the user named one disk, which lets removable disks and the
    /// image source be chosen.
    pub fn is_explicit(&self) -> bool {
        match self {
            Self::Name(_) | Self::ById(_) | Self::ByPath(_) => true,
            Self::Hints { hints, .. } => hints
                .iter()
                .any(|h| matches!(h, Hint::Name(_) | Hint::ById(_) | Hint::ByPath(_))),
        }
    }
}

impl FromStr for DiskSelector {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::parse(text)
    }
}

impl fmt::Display for DiskSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(name) => f.write_str(name),
            Self::ById(id) => write!(f, "/dev/disk/by-id/{id}"),
            Self::ByPath(path) => write!(f, "/dev/disk/by-path/{path}"),
            Self::Hints { text, .. } => f.write_str(text),
        }
    }
}

fn non_empty(value: &str, text: &str) -> Result<String> {
    if value.is_empty() || value.contains(char::is_whitespace) {
        bail!("disk selector {text:?} names no device");
    }
    Ok(value.to_owned())
}

fn parse_hint(item: &str, text: &str) -> Result<Hint> {
    let item = item.trim();
    if item.is_empty() {
        bail!("empty disk hint in {text:?}");
    }
    let at = item.find(['<', '>', '=']).ok_or_else(|| {
        anyhow!("disk hint {item:?} has no value; write key=value (known hints: {KNOWN_HINTS})")
    })?;
    let key = item[..at].trim().to_ascii_lowercase();
    let rest = &item[at..];
    let (op, value) = [
        (">=", SizeOp::Ge),
        ("<=", SizeOp::Le),
        ("==", SizeOp::Eq),
        (">", SizeOp::Gt),
        ("<", SizeOp::Lt),
        ("=", SizeOp::Eq),
    ]
    .iter()
    .find_map(|&(symbol, op)| rest.strip_prefix(symbol).map(|v| (op, v)))
    .ok_or_else(|| anyhow!("disk hint {item:?}: no operator"))?;
    let value = unquote(value.trim());
    if value.is_empty() {
        bail!("disk hint {key} has an empty value in {text:?}");
    }
    if key != "size" && op != SizeOp::Eq {
        if !is_known(&key) {
            bail!("unknown disk hint {key:?} in {text:?}; known hints: {KNOWN_HINTS}");
        }
        bail!("disk hint {key} takes =, not {}", op.symbol());
    }
    Ok(match key.as_str() {
        "size" => parse_size(op, value)?,
        "model" => Hint::Model(TextMatch::parse(value)),
        "vendor" => Hint::Vendor(TextMatch::parse(value)),
        "serial" => Hint::Serial(TextMatch::parse(value)),
        "wwn" => Hint::Wwn(value.to_owned()),
        "rotational" => Hint::Rotational(match value.to_ascii_lowercase().as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => bail!("disk hint rotational takes 0 or 1, not {value:?}"),
        }),
        "name" => Hint::Name(value.strip_prefix("/dev/").unwrap_or(value).to_owned()),
        "by-id" | "by_id" => Hint::ById(
            value
                .strip_prefix("/dev/disk/by-id/")
                .unwrap_or(value)
                .to_owned(),
        ),
        "by-path" | "by_path" => Hint::ByPath(
            value
                .strip_prefix("/dev/disk/by-path/")
                .unwrap_or(value)
                .to_owned(),
        ),
        _ => bail!("unknown disk hint {key:?} in {text:?}; known hints: {KNOWN_HINTS}"),
    })
}

fn is_known(key: &str) -> bool {
    KNOWN_HINTS.split(", ").any(|k| k == key) || matches!(key, "by_id" | "by_path")
}

fn unquote(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

fn parse_size(op: SizeOp, value: &str) -> Result<Hint> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let amount: u64 = number.parse().map_err(|_| {
        anyhow!(
            "disk hint size={value:?}: expected a whole number with an optional unit (K, M, G, T)"
        )
    })?;
    if unit.starts_with(['.', ',']) {
        bail!(
            "disk hint size={value}: sizes are whole numbers; use a smaller unit (1536G, not 1.5T)"
        );
    }
    let (unit, whole_units) = match unit.trim().to_ascii_lowercase().as_str() {
        // Ironic's size hint is whole GiB.
        "" => (GIB, true),
        "b" => (1, false),
        "k" | "kib" => (1 << 10, false),
        "m" | "mib" => (1 << 20, false),
        "g" | "gib" => (GIB, false),
        "t" | "tib" => (1 << 40, false),
        "p" | "pib" => (1 << 50, false),
        "kb" | "mb" | "gb" | "tb" | "pb" => bail!(
            "disk hint size={value}: sizes are binary; write {} ({}iB)",
            &unit[..1].to_ascii_uppercase(),
            &unit[..1].to_ascii_uppercase()
        ),
        _ => bail!("disk hint size={value}: unknown unit {unit:?}; use K, M, G or T (binary)"),
    };
    if amount.checked_mul(unit).is_none() {
        bail!("disk hint size={value} is too large");
    }
    Ok(Hint::Size {
        op,
        amount,
        unit,
        // `size=8G` means "an 8 GiB disk", which is never exactly 8 GiB.
        whole_units: whole_units || op == SizeOp::Eq,
    })
}

impl Hint {
    /// Why `disk` fails this hint, or `None` when it holds.
    pub(super) fn mismatch(&self, disk: &DiskInfo) -> Option<String> {
        match self {
            Self::Size {
                op,
                amount,
                unit,
                whole_units,
            } => {
                let holds = if *whole_units {
                    op.holds(disk.size_bytes / unit, *amount)
                } else {
                    op.holds(disk.size_bytes, amount.saturating_mul(*unit))
                };
                (!holds).then(|| {
                    format!(
                        "size {} {} {}",
                        human_size(disk.size_bytes),
                        op.negated_symbol(),
                        human_size(amount.saturating_mul(*unit))
                    )
                })
            }
            Self::Model(m) => text_mismatch("model", m, disk.model.as_deref()),
            Self::Vendor(m) => text_mismatch("vendor", m, disk.vendor.as_deref()),
            Self::Serial(m) => text_mismatch("serial", m, disk.serial.as_deref()),
            Self::Wwn(wanted) => {
                let wanted = normalize_wwn(wanted);
                let with_extension = disk.by_id.iter().filter_map(|n| n.strip_prefix("wwn-"));
                let found = disk
                    .wwn
                    .iter()
                    .map(String::as_str)
                    .chain(with_extension)
                    .any(|w| normalize_wwn(w) == wanted);
                match (&disk.wwn, found) {
                    (_, true) => None,
                    (None, false) => Some("no wwn".to_owned()),
                    (Some(_), false) => Some(format!("wwn is not {wanted:?}")),
                }
            }
            Self::Rotational(wanted) => (disk.rotational != *wanted)
                .then(|| format!("rotational={}", u8::from(disk.rotational))),
            Self::Name(name) => (disk.name != *name).then(|| format!("name is not {name}")),
            Self::ById(id) => (!disk.by_id.contains(id)).then(|| format!("not by-id/{id}")),
            Self::ByPath(path) => {
                (!disk.by_path.contains(path)).then(|| format!("not by-path/{path}"))
            }
        }
    }
}

fn text_mismatch(what: &str, wanted: &TextMatch, actual: Option<&str>) -> Option<String> {
    match actual {
        None => Some(format!("no {what}")),
        Some(actual) if wanted.matches(actual) => None,
        Some(_) => Some(format!("{what} is not {wanted}")),
    }
}

fn normalize_wwn(wwn: &str) -> String {
    let wwn = wwn.trim().to_ascii_lowercase();
    wwn.strip_prefix("0x")
        .or_else(|| wwn.strip_prefix("naa."))
        .map_or_else(|| wwn.clone(), str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hints(text: &str) -> Vec<Hint> {
        match DiskSelector::parse(text).unwrap() {
            DiskSelector::Hints { hints, .. } => hints,
            other => panic!("{text} parsed as {other:?}"),
        }
    }

    fn error(text: &str) -> String {
        format!("{:#}", DiskSelector::parse(text).unwrap_err())
    }

    #[test]
    fn devices_and_persistent_names() {
        assert_eq!(
            DiskSelector::parse("/dev/vda").unwrap(),
            DiskSelector::Name("/dev/vda".into())
        );
        assert_eq!(
            DiskSelector::parse(" nvme0n1 ").unwrap(),
            DiskSelector::Name("nvme0n1".into())
        );
        let by_id = DiskSelector::parse("/dev/disk/by-id/virtio-abc").unwrap();
        assert_eq!(by_id, DiskSelector::ById("virtio-abc".into()));
        assert_eq!(by_id.to_string(), "/dev/disk/by-id/virtio-abc");
        assert_eq!(
            DiskSelector::parse("/dev/disk/by-path/pci-0000:00:1f.2-ata-1").unwrap(),
            DiskSelector::ByPath("pci-0000:00:1f.2-ata-1".into())
        );
        assert!(by_id.is_explicit());
    }

    #[test]
    fn every_hint_key() {
        let parsed = hints(
            "size>=100G, size<=2T,size>1,size<5M,size=8G,size==512B,model=QEMU HARDDISK,\
             vendor=\"ATA\",serial=abc*,wwn=0x5000C500,rotational=0,name=/dev/sda,\
             by-path=/dev/disk/by-path/pci-0000:00:04.0,by_id=virtio-abc",
        );
        assert_eq!(
            parsed,
            [
                Hint::Size {
                    op: SizeOp::Ge,
                    amount: 100,
                    unit: GIB,
                    whole_units: false
                },
                Hint::Size {
                    op: SizeOp::Le,
                    amount: 2,
                    unit: 1 << 40,
                    whole_units: false
                },
                Hint::Size {
                    op: SizeOp::Gt,
                    amount: 1,
                    unit: GIB,
                    whole_units: true
                },
                Hint::Size {
                    op: SizeOp::Lt,
                    amount: 5,
                    unit: 1 << 20,
                    whole_units: false
                },
                Hint::Size {
                    op: SizeOp::Eq,
                    amount: 8,
                    unit: GIB,
                    whole_units: true
                },
                Hint::Size {
                    op: SizeOp::Eq,
                    amount: 512,
                    unit: 1,
                    whole_units: true
                },
                Hint::Model(TextMatch::Exact("QEMU HARDDISK".into())),
                Hint::Vendor(TextMatch::Exact("ATA".into())),
                Hint::Serial(TextMatch::Prefix("abc".into())),
                Hint::Wwn("0x5000C500".into()),
                Hint::Rotational(false),
                Hint::Name("sda".into()),
                Hint::ByPath("pci-0000:00:04.0".into()),
                Hint::ById("virtio-abc".into()),
            ]
        );
        assert!(
            !DiskSelector::parse("size>=1G,rotational=1")
                .unwrap()
                .is_explicit()
        );
        assert!(
            DiskSelector::parse("size>=1G,name=vdb")
                .unwrap()
                .is_explicit()
        );
    }

    #[test]
    fn parser_errors_name_the_problem() {
        assert_eq!(
            error("size>=1G,colour=blue"),
            "unknown disk hint \"colour\" in \"size>=1G,colour=blue\"; known hints: \
             size, model, vendor, serial, wwn, rotational, name, by-path, by-id"
        );
        assert_eq!(
            error("colour>blue"),
            "unknown disk hint \"colour\" in \"colour>blue\"; known hints: \
             size, model, vendor, serial, wwn, rotational, name, by-path, by-id"
        );
        assert_eq!(error("model>=x"), "disk hint model takes =, not >=");
        assert_eq!(
            error("size=10GB"),
            "disk hint size=10GB: sizes are binary; write G (GiB)"
        );
        assert_eq!(
            error("size=1.5T"),
            "disk hint size=1.5T: sizes are whole numbers; use a smaller unit (1536G, not 1.5T)"
        );
        assert!(error("size>=G").contains("expected a whole number"));
        assert_eq!(
            error("size>=10X"),
            "disk hint size=10X: unknown unit \"X\"; use K, M, G or T (binary)"
        );
        assert_eq!(
            error("size>=99999999999P"),
            "disk hint size=99999999999P is too large"
        );
        assert_eq!(
            error("rotational=maybe"),
            "disk hint rotational takes 0 or 1, not \"maybe\""
        );
        assert_eq!(
            error("serial="),
            "disk hint serial has an empty value in \"serial=\""
        );
        assert_eq!(error("size>=1G,"), "empty disk hint in \"size>=1G,\"");
        assert!(error("").starts_with("empty disk selector"));
        assert_eq!(
            error("/dev/disk/by-uuid/1234"),
            "disk /dev/disk/by-uuid/1234: only /dev/disk/by-id/ and /dev/disk/by-path/ \
             names can be resolved without udev"
        );
        assert_eq!(
            error("/dev/disk/by-id/"),
            "disk selector \"/dev/disk/by-id/\" names no device"
        );
        assert!(error("QEMU HARDDISK").contains("a device name has no spaces"));
    }

    #[test]
    fn text_matches() {
        assert!(TextMatch::parse("QEMU").matches(" QEMU  "));
        assert!(!TextMatch::parse("QEMU").matches("QEMU HARDDISK"));
        assert!(TextMatch::parse("QEMU*").matches("QEMU HARDDISK"));
        assert!(!TextMatch::parse("qemu*").matches("QEMU HARDDISK"));
        assert_eq!(normalize_wwn("0x5000C500"), "5000c500");
        assert_eq!(normalize_wwn("naa.5000c500"), "5000c500");
        assert_eq!(normalize_wwn("eui.00AB"), "eui.00ab");
    }
}

//! Which keys are trusted, and whether an image must be signed.
//!
//! - Keys baked into the initramfs (`imprint-build initramfs --trusted-key
//!   FILE`, under `/etc/imprint/trusted-keys/`) are the only trust anchors
//!   when there are any. A key given by parameter (`imprint.trusted-key=`,
//!   `--trusted-key`, the spec's `trusted-key`) arrives over the same
//!   channel as the image URL (DHCP, PXE, a provisioning server's plain
//!   HTTP): whoever can change the URL can change the key, so it cannot
//!   widen trust. One that is not also baked is refused, so the operator
//!   learns at once that it does nothing, rather than by a signature
//!   that unexpectedly fails.
//! - Baked keys make a signature mandatory, unless the initramfs was
//!   built with `--allow-unsigned` (`/etc/imprint/allow-unsigned`): then an
//!   unsigned image is written with a warning, and a given signature must
//!   still verify.
//! - No baked key: a key given by parameter is honoured (it protects
//!   against a tampered file server or USB stick, not against whoever
//!   sets the parameters), and any configured key makes a signature
//!   mandatory.
//!
//! The CLI reads the same directory on the host; `IMPRINT_TRUSTED_KEYS`
//! names another for a CLI run (never for PID 1, whose environment the
//! kernel command line can set).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::{
    Covered, ImageCheck, MAX_KEY_LEN, Matched, Signer, TrustedKey, fetch_and_match, fetch_bytes,
};
use crate::source::SourceOptions;
use crate::source::url::SourceUrl;

/// Where baked keys live, in the initramfs and on a host running the CLI.
pub const TRUSTED_KEYS_DIR: &str = "/etc/imprint/trusted-keys";
/// Present when the initramfs was built with `--allow-unsigned`.
pub const ALLOW_UNSIGNED_PATH: &str = "/etc/imprint/allow-unsigned";
/// The CLI's override of [`TRUSTED_KEYS_DIR`] (its parent holds
/// `allow-unsigned`).
pub const TRUSTED_KEYS_ENV: &str = "IMPRINT_TRUSTED_KEYS";

/// The signing parameters of a deploy, as the spec gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SigningSpec {
    /// `imprint.signature=`: a detached signature of the image as served.
    pub signature: Option<SourceUrl>,
    /// `imprint.checksum-signature=`: a detached signature of the
    /// `checksum-url` list.
    pub checksum_signature: Option<SourceUrl>,
    /// `imprint.trusted-key=`: a minisign key inline (`RW…`), or the URL
    /// or path of a key file.
    pub trusted_key: Option<KeyParam>,
}

/// A key given by parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyParam {
    /// A minisign public key's base64 line.
    Inline(String),
    /// Where a key file is: `http[s]://`, `file://`, or a path.
    Url(String),
}

impl KeyParam {
    pub fn parse(value: &str) -> Result<KeyParam> {
        let value = value.trim();
        if value.is_empty() {
            bail!("is empty; give a minisign key (RW…) or the URL of a key file");
        }
        // base64 has `/` in it, but no `://` and never a leading `/`.
        if value.starts_with("RW") && !value.contains("://") {
            super::MinisignKey::parse(value)?;
            return Ok(KeyParam::Inline(value.to_owned()));
        }
        if value.starts_with('/') {
            return Ok(KeyParam::Url(format!("file://{value}")));
        }
        SourceUrl::parse(value)?;
        Ok(KeyParam::Url(value.to_owned()))
    }

    fn load(&self, options: &SourceOptions) -> Result<TrustedKey> {
        match self {
            KeyParam::Inline(key) => TrustedKey::parse(key.as_bytes()),
            KeyParam::Url(url) => {
                let bytes = fetch_bytes(url, MAX_KEY_LEN, "a public key", options)?;
                TrustedKey::parse(&bytes).with_context(|| format!("key {url}"))
            }
        }
    }
}

/// The keys built in: `TRUSTED_KEYS_DIR`'s files, and whether unsigned
/// images may pass anyway.
#[derive(Debug, Clone, Default)]
pub struct Baked {
    pub keys: Vec<TrustedKey>,
    pub allow_unsigned: bool,
}

impl Baked {
    /// The directory PID 1 and the CLI read.
    pub fn dir() -> PathBuf {
        if std::process::id() != 1 {
            if let Some(dir) = std::env::var_os(TRUSTED_KEYS_ENV) {
                return PathBuf::from(dir);
            }
        }
        PathBuf::from(TRUSTED_KEYS_DIR)
    }

    /// Every file in `dir`, sorted by name; a file that is not a key is an
    /// error naming it (a broken trust store must not silently shrink).
    /// `allow-unsigned` beside the directory allows unsigned images.
    pub fn load(dir: &Path) -> Result<Baked> {
        let allow_unsigned = dir
            .parent()
            .is_some_and(|parent| parent.join("allow-unsigned").exists());
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Baked {
                    keys: Vec::new(),
                    allow_unsigned,
                });
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
        };
        let mut paths = entries
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<Vec<_>>>()
            .with_context(|| format!("reading {}", dir.display()))?;
        paths.sort();
        let keys = paths
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("reading trusted key {}", path.display()))?;
                TrustedKey::parse(&bytes).with_context(|| format!("trusted key {}", path.display()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Baked {
            keys,
            allow_unsigned,
        })
    }
}

/// The checks a deploy runs, decided before any of the image is read:
/// the image's signature (streamed) and the checksum list's.
#[derive(Default)]
pub struct Plan {
    pub image: Option<Matched>,
    pub checksum_list: Option<Matched>,
    pub keys: Vec<TrustedKey>,
}

impl Plan {
    pub fn image_check(&self) -> Result<Option<ImageCheck>> {
        self.image
            .as_ref()
            .map(|m| m.stream(Covered::Image, &self.keys))
            .transpose()
    }

    /// Checks the checksum list's bytes against its signature.
    pub fn verify_list(&self, list: &[u8]) -> Result<Option<Signer>> {
        self.checksum_list
            .as_ref()
            .map(|m| m.verify_bytes(list, Covered::ChecksumList, &self.keys))
            .transpose()
    }
}

/// Which keys are trusted for this deploy (see the module doc), as a pure
/// decision over what is baked and what the parameters give.
pub fn trusted_keys(
    baked: &Baked,
    param: Option<TrustedKey>,
    spelled: &str,
) -> Result<Vec<TrustedKey>> {
    match param {
        None => Ok(baked.keys.clone()),
        Some(key) if baked.keys.is_empty() => Ok(vec![key]),
        Some(key) => {
            let name = key.name();
            if baked.keys.iter().any(|b| b.name() == name) {
                return Ok(baked.keys.clone());
            }
            bail!(
                "{spelled} names key {name}, which is not baked into this initramfs: \
                 baked keys are the only ones trusted here, since a key given with the \
                 image's parameters cannot vouch for that image (bake it with \
                 imprint-build --trusted-key, or drop {spelled})"
            )
        }
    }
}

/// Decides and prepares the checks: loads the keys, fetches the
/// signatures, matches each to its key, and refuses an unsigned image
/// where keys are configured. Nothing of the image is read yet.
pub fn plan(
    spec: &SigningSpec,
    baked: &Baked,
    options: &SourceOptions,
    spell: &dyn Fn(&str) -> String,
) -> Result<Plan> {
    let param = spec
        .trusted_key
        .as_ref()
        .map(|k| k.load(options))
        .transpose()
        .with_context(|| spell("trusted-key"))?;
    let keys = trusted_keys(baked, param, &spell("trusted-key"))?;
    let given = spec.signature.is_some() || spec.checksum_signature.is_some();
    if keys.is_empty() {
        if given {
            let which = if spec.signature.is_some() {
                "signature"
            } else {
                "checksum-signature"
            };
            bail!(
                "{} is given but no key is trusted: bake one into the initramfs \
                 (imprint-build --trusted-key FILE) or give {}",
                spell(which),
                spell("trusted-key")
            );
        }
        return Ok(Plan::default());
    }
    if !given {
        if baked.allow_unsigned && spec.trusted_key.is_none() {
            log::warn!(
                "the image is not signed; written anyway (this initramfs was built with --allow-unsigned)"
            );
            return Ok(Plan {
                keys,
                ..Plan::default()
            });
        }
        let names: Vec<String> = keys.iter().map(TrustedKey::name).collect();
        bail!(
            "the image is not signed, but keys are trusted ({}): give {} (a signature of the image) \
             or {} (a signature of the checksum-url list)",
            names.join(", "),
            spell("signature"),
            spell("checksum-signature")
        );
    }
    let image = spec
        .signature
        .as_ref()
        .map(|url| fetch_and_match(url.as_str(), &keys, options))
        .transpose()?;
    let checksum_list = spec
        .checksum_signature
        .as_ref()
        .map(|url| fetch_and_match(url.as_str(), &keys, options))
        .transpose()?;
    for (what, matched) in [("the image", &image), ("the checksum list", &checksum_list)] {
        if let Some(matched) = matched {
            let by = match matched.format() {
                // A cosign signature does not name its key.
                super::Format::Cosign => "checked against each trusted cosign key".to_owned(),
                _ => format!("by trusted key {}", matched.key_name()),
            };
            log::info!(
                "{what} must match {}, a {} signature {by}",
                matched.url(),
                matched.format()
            );
        }
    }
    Ok(Plan {
        image,
        checksum_list,
        keys,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::KernelCmdline;
    use crate::spec::DeploySpec;

    const KEY_A: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const KEY_B: &str = "RWQCU48zjseAXe/bOWT0UO/rJ6ZTXmSvVL+CteZCyz61F6Q/Hl2FTpKG";

    fn key(text: &str) -> TrustedKey {
        TrustedKey::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn baked_keys_win_and_a_parameter_cannot_widen_them() {
        let baked = Baked {
            keys: vec![key(KEY_A)],
            allow_unsigned: false,
        };
        let names = |keys: Vec<TrustedKey>| keys.iter().map(TrustedKey::name).collect::<Vec<_>>();
        assert_eq!(
            names(trusted_keys(&baked, None, "imprint.trusted-key=").unwrap()),
            ["minisign:E7620F1842B4E81F"]
        );
        // The same key again is harmless.
        assert_eq!(
            names(trusted_keys(&baked, Some(key(KEY_A)), "imprint.trusted-key=").unwrap()),
            ["minisign:E7620F1842B4E81F"]
        );
        let error = trusted_keys(&baked, Some(key(KEY_B)), "imprint.trusted-key=")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with(
                "imprint.trusted-key= names key minisign:5D80C78E338F5302, which is not baked"
            ),
            "{error}"
        );
        // Nothing baked: the parameter's key is the one.
        assert_eq!(
            names(trusted_keys(&Baked::default(), Some(key(KEY_B)), "x").unwrap()),
            ["minisign:5D80C78E338F5302"]
        );
    }

    #[test]
    fn key_parameter_forms() {
        assert_eq!(
            KeyParam::parse(KEY_B).unwrap(),
            KeyParam::Inline(KEY_B.to_owned())
        );
        assert_eq!(
            KeyParam::parse("/etc/keys/release.asc").unwrap(),
            KeyParam::Url("file:///etc/keys/release.asc".to_owned())
        );
        assert_eq!(
            KeyParam::parse("https://h/cosign.pub").unwrap(),
            KeyParam::Url("https://h/cosign.pub".to_owned())
        );
        assert!(KeyParam::parse("RWQnotakey").is_err());
        assert!(KeyParam::parse("").is_err());
    }

    #[test]
    fn spec_layers_take_the_signing_params() {
        let spec = DeploySpec::from_json_and_cmdline(
            &format!(
                r#"{{"url": "http://h/x.img", "disk": "/dev/vda", "signature": "http://h/x.img.minisig",
                    "trusted-key": "{KEY_A}"}}"#
            ),
            &KernelCmdline::parse("imprint.checksum-url=http://h/SUMS imprint.checksum-signature=http://h/SUMS.asc"),
        )
        .unwrap();
        assert_eq!(
            spec.signing.signature.as_ref().unwrap().as_str(),
            "http://h/x.img.minisig"
        );
        assert_eq!(
            spec.signing.checksum_signature.as_ref().unwrap().as_str(),
            "http://h/SUMS.asc"
        );
        assert_eq!(
            spec.signing.trusted_key,
            Some(KeyParam::Inline(KEY_A.to_owned()))
        );

        let error = DeploySpec::from_cmdline(&KernelCmdline::parse(
            "imprint.url=http://h/x.img imprint.checksum-signature=http://h/SUMS.asc",
        ))
        .unwrap_err()
        .to_string();
        assert_eq!(
            error,
            "imprint.checksum-signature= on the kernel command line signs a checksum list: \
             give imprint.checksum-url= on the kernel command line too"
        );
    }

    #[test]
    fn a_broken_baked_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("trusted-keys");
        std::fs::create_dir(&keys).unwrap();
        std::fs::write(keys.join("a.pub"), KEY_A).unwrap();
        let baked = Baked::load(&keys).unwrap();
        assert_eq!(baked.keys.len(), 1);
        assert!(!baked.allow_unsigned);
        std::fs::write(keys.join("b.pub"), "not a key").unwrap();
        let error = format!("{:#}", Baked::load(&keys).unwrap_err());
        assert!(
            error.starts_with(&format!("trusted key {}", keys.join("b.pub").display())),
            "{error}"
        );
        std::fs::remove_file(keys.join("b.pub")).unwrap();
        std::fs::write(dir.path().join("allow-unsigned"), "").unwrap();
        assert!(Baked::load(&keys).unwrap().allow_unsigned);
        assert!(
            Baked::load(&dir.path().join("none"))
                .unwrap()
                .keys
                .is_empty()
        );
    }
}

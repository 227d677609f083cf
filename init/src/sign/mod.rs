//! Signed images: who made the bytes, not only whether they arrived
//! intact. A detached signature covers the image as served or the
//! checksum list that names its digest; it is checked against trusted
//! keys before the image's first MiB reaches the disk.
//!
//! - `minisign.rs`, `openpgp.rs`, `cosign.rs`: one format each (its keys,
//!   signatures, and the hash computed as the image streams).
//! - `trust.rs`: which keys are trusted (baked into the initramfs, or given
//!   by parameter) and whether a signature is required: the policy.
//! - here: a signature's format told from its bytes, matched to the one
//!   trusted key that can check it, and the check itself, streamed
//!   ([`ImageCheck`], fed by the fetch stage) or over bytes held whole (a
//!   checksum list).

mod cosign;
pub mod deploy;
mod minisign;
mod openpgp;
pub mod trust;

use std::fmt;

use anyhow::{Context, Result, anyhow, bail};

pub use cosign::{CosignKey, CosignSignature};
pub use minisign::{MinisignKey, MinisignSignature};
pub use openpgp::{OpenPgpKey, OpenPgpSignature};

use crate::source::SourceOptions;

/// A detached signature is a few hundred bytes; an armored OpenPGP one
/// with a large RSA key a few KiB.
const MAX_SIGNATURE_LEN: u64 = 64 << 10;
/// An OpenPGP certificate with many signatures on it can be large.
pub const MAX_KEY_LEN: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Minisign,
    OpenPgp,
    Cosign,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Minisign => "minisign",
            Format::OpenPgp => "openpgp",
            Format::Cosign => "cosign",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A trusted public key, of one of the three formats.
#[derive(Debug, Clone)]
pub enum TrustedKey {
    Minisign(MinisignKey),
    OpenPgp(OpenPgpKey),
    Cosign(CosignKey),
}

impl TrustedKey {
    /// A key file's bytes, its format told from them: an OpenPGP
    /// certificate (armored or binary), a PEM public key (cosign), or a
    /// minisign key (its file, or the bare `RW…` line).
    pub fn parse(bytes: &[u8]) -> Result<TrustedKey> {
        if openpgp::is_armored(bytes) || bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return OpenPgpKey::parse(bytes).map(TrustedKey::OpenPgp);
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|_| anyhow!("not a minisign, OpenPGP or PEM public key"))?;
        if text.trim_start().starts_with("-----BEGIN PUBLIC KEY-----") {
            return CosignKey::parse(text).map(TrustedKey::Cosign);
        }
        let first = text.trim_start();
        if first.starts_with("untrusted comment:") || first.starts_with("RW") {
            return MinisignKey::parse(text).map(TrustedKey::Minisign);
        }
        bail!(
            "not a minisign (RW…), OpenPGP (-----BEGIN PGP PUBLIC KEY BLOCK-----) \
             or PEM (-----BEGIN PUBLIC KEY-----) public key"
        )
    }

    pub fn format(&self) -> Format {
        match self {
            TrustedKey::Minisign(_) => Format::Minisign,
            TrustedKey::OpenPgp(_) => Format::OpenPgp,
            TrustedKey::Cosign(_) => Format::Cosign,
        }
    }

    /// minisign's key ID, the OpenPGP primary key's v4 fingerprint, or
    /// the SHA-256 of the cosign key's DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> String {
        match self {
            TrustedKey::Minisign(key) => key.fingerprint(),
            TrustedKey::OpenPgp(key) => key.fingerprint(),
            TrustedKey::Cosign(key) => key.fingerprint().to_owned(),
        }
    }

    /// `minisign:E7620F1842B4E81F`: the form logs and errors name a key by.
    pub fn name(&self) -> String {
        format!("{}:{}", self.format(), self.fingerprint())
    }
}

/// A detached signature, its format told from its bytes.
#[derive(Debug, Clone)]
pub enum DetachedSignature {
    Minisign(MinisignSignature),
    OpenPgp(OpenPgpSignature),
    Cosign(CosignSignature),
}

impl DetachedSignature {
    pub fn parse(bytes: &[u8]) -> Result<DetachedSignature> {
        let text = std::str::from_utf8(bytes).ok();
        if let Some(text) = text.filter(|t| t.starts_with("untrusted comment:")) {
            return MinisignSignature::parse(text)
                .map(DetachedSignature::Minisign)
                .context("a minisign signature");
        }
        if openpgp::is_armored(bytes) || bytes.first().is_some_and(|b| b & 0x80 != 0) {
            return OpenPgpSignature::parse(bytes)
                .map(DetachedSignature::OpenPgp)
                .context("an OpenPGP signature");
        }
        if cosign::looks_like(bytes) {
            return CosignSignature::parse(text.unwrap_or_default())
                .map(DetachedSignature::Cosign)
                .context("a cosign signature");
        }
        if bytes.is_empty() {
            bail!("empty");
        }
        bail!("not a minisign, OpenPGP or cosign signature")
    }

    pub fn format(&self) -> Format {
        match self {
            DetachedSignature::Minisign(_) => Format::Minisign,
            DetachedSignature::OpenPgp(_) => Format::OpenPgp,
            DetachedSignature::Cosign(_) => Format::Cosign,
        }
    }
}

/// Who verified what: the log line, the result line's `signed-by=`, the
/// `signed` status event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signer {
    pub format: Format,
    /// The key that signed: minisign key ID, OpenPGP v4 fingerprint of the
    /// primary key or signing subkey, SHA-256 of the cosign key's SPKI.
    pub fingerprint: String,
    /// An OpenPGP signing subkey made it (its fingerprint is the subkey's).
    pub subkey: bool,
    /// What the signature covers.
    pub covered: Covered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Covered {
    Image,
    ChecksumList,
}

impl Covered {
    /// The `signed` status event's `covered`.
    pub fn name(self) -> &'static str {
        match self {
            Covered::Image => "image",
            Covered::ChecksumList => "checksum-list",
        }
    }
}

impl Signer {
    /// `minisign:E7620F1842B4E81F`, the result line's `signed-by=` value.
    pub fn token(&self) -> String {
        format!("{}:{}", self.format, self.fingerprint)
    }

    pub fn describe(&self) -> String {
        let what = match self.covered {
            Covered::Image => "the image",
            Covered::ChecksumList => "the checksum list",
        };
        let subkey = if self.subkey { " (signing subkey)" } else { "" };
        format!(
            "{what} is signed by {} key {}{subkey}",
            self.format, self.fingerprint
        )
    }
}

/// A signature matched to the trusted key that can check it.
#[derive(Debug, Clone)]
pub struct Matched {
    url: String,
    signature: DetachedSignature,
    key: TrustedKey,
}

/// Fetches the signature at `url` and finds the trusted key that made it.
/// Errors name the URL and the keys.
pub fn fetch_and_match(url: &str, keys: &[TrustedKey], options: &SourceOptions) -> Result<Matched> {
    let bytes = fetch_bytes(url, MAX_SIGNATURE_LEN, "a signature", options)?;
    let signature = DetachedSignature::parse(&bytes).with_context(|| format!("signature {url}"))?;
    match_key(url, signature, keys)
}

fn match_key(url: &str, signature: DetachedSignature, keys: &[TrustedKey]) -> Result<Matched> {
    let format = signature.format();
    let candidates: Vec<&TrustedKey> = keys.iter().filter(|k| k.format() == format).collect();
    let trusted = || {
        keys.iter()
            .map(TrustedKey::name)
            .collect::<Vec<_>>()
            .join(", ")
    };
    if candidates.is_empty() {
        bail!(
            "signature {url} is a {format} signature, but no trusted key is a {format} key \
             (trusted: {})",
            trusted()
        );
    }
    let key = match &signature {
        DetachedSignature::Minisign(sig) => candidates
            .into_iter()
            .find(|k| matches!(k, TrustedKey::Minisign(key) if key.id == sig.key_id))
            .with_context(|| {
                format!(
                    "signature {url} is by minisign key {}, which is not trusted (trusted: {})",
                    minisign::key_id(sig.key_id),
                    trusted()
                )
            })?,
        DetachedSignature::OpenPgp(sig) => candidates
            .into_iter()
            .find(|k| matches!(k, TrustedKey::OpenPgp(key) if key.signer(&sig.signature).is_some()))
            .with_context(|| {
                format!(
                    "signature {url} is by OpenPGP key {}, which is not trusted \
                     (or not a signing key of a trusted certificate; trusted: {})",
                    sig.issuers(),
                    trusted()
                )
            })?,
        // A cosign signature does not name its key: each trusted one is
        // tried when the data is in (one, almost always).
        DetachedSignature::Cosign(_) => candidates[0],
    };
    Ok(Matched {
        url: url.to_owned(),
        signature,
        key: key.clone(),
    })
}

impl Matched {
    /// Checks the signature over `data`, held whole (a checksum list).
    pub fn verify_bytes(
        &self,
        data: &[u8],
        covered: Covered,
        keys: &[TrustedKey],
    ) -> Result<Signer> {
        match (&self.signature, &self.key) {
            // A text-mode OpenPGP signature normalises line endings: rPGP
            // checks whole data itself.
            (DetachedSignature::OpenPgp(sig), TrustedKey::OpenPgp(key)) => {
                let signer = key.signer(&sig.signature).expect("matched");
                sig.verify_bytes(&signer, data)
                    .with_context(|| format!("signature {} by {}", self.url, self.key.name()))?;
                Ok(Signer {
                    format: Format::OpenPgp,
                    fingerprint: signer.fingerprint,
                    subkey: signer.subkey,
                    covered,
                })
            }
            _ => {
                let mut check = self.stream(covered, keys)?;
                check.update(data);
                check.finish()
            }
        }
    }

    /// The streaming check for the image: fed every byte as served, then
    /// finished after the end.
    pub fn stream(&self, covered: Covered, keys: &[TrustedKey]) -> Result<ImageCheck> {
        let hasher = match &self.signature {
            DetachedSignature::Minisign(_) => Hasher::Blake2b(MinisignSignature::hasher()),
            DetachedSignature::OpenPgp(sig) => Hasher::OpenPgp(
                sig.stream_hasher()
                    .with_context(|| format!("signature {}", self.url))?,
            ),
            DetachedSignature::Cosign(_) => Hasher::Sha256(CosignSignature::hasher()),
        };
        let cosign_keys = keys
            .iter()
            .filter_map(|k| match k {
                TrustedKey::Cosign(key) => Some(key.clone()),
                _ => None,
            })
            .collect();
        Ok(ImageCheck {
            matched: self.clone(),
            hasher,
            covered,
            cosign_keys,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn format(&self) -> Format {
        self.signature.format()
    }

    /// The trusted key it was matched to (for cosign, whose signatures do
    /// not name their key, only the first trusted cosign key: each is tried).
    pub fn key_name(&self) -> String {
        self.key.name()
    }
}

enum Hasher {
    Blake2b(blake2::Blake2b512),
    OpenPgp(Box<dyn digest::DynDigest + Send>),
    Sha256(sha2::Sha256),
}

/// A signature check fed the signed bytes as they stream past.
pub struct ImageCheck {
    matched: Matched,
    hasher: Hasher,
    covered: Covered,
    cosign_keys: Vec<CosignKey>,
}

impl ImageCheck {
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.hasher {
            Hasher::Blake2b(h) => blake2::Digest::update(h, bytes),
            Hasher::OpenPgp(h) => h.update(bytes),
            Hasher::Sha256(h) => sha2::Digest::update(h, bytes),
        }
    }

    /// Checks the signature over everything fed: who signed, or why not.
    pub fn finish(self) -> Result<Signer> {
        let Matched {
            url,
            signature,
            key,
        } = self.matched;
        let context = || format!("signature {url} by {}", key.name());
        let signer = |fingerprint: String, subkey: bool, format: Format| Signer {
            format,
            fingerprint,
            subkey,
            covered: self.covered,
        };
        match (signature, &key, self.hasher) {
            (DetachedSignature::Minisign(sig), TrustedKey::Minisign(k), Hasher::Blake2b(h)) => {
                sig.verify(k, h).with_context(context)?;
                Ok(signer(k.fingerprint(), false, Format::Minisign))
            }
            (DetachedSignature::OpenPgp(sig), TrustedKey::OpenPgp(k), Hasher::OpenPgp(h)) => {
                let found = k
                    .signer(&sig.signature)
                    .expect("matched by the signature's issuer");
                sig.verify_streamed(&found, h).with_context(context)?;
                Ok(signer(found.fingerprint, found.subkey, Format::OpenPgp))
            }
            (DetachedSignature::Cosign(sig), _, Hasher::Sha256(h)) => {
                for k in &self.cosign_keys {
                    if sig.verify(k, h.clone()).is_ok() {
                        return Ok(signer(k.fingerprint().to_owned(), false, Format::Cosign));
                    }
                }
                let names: Vec<String> = self
                    .cosign_keys
                    .iter()
                    .map(|k| format!("cosign:{}", k.fingerprint()))
                    .collect();
                bail!(
                    "signature {url}: the signature does not match the data under any trusted cosign key ({})",
                    names.join(", ")
                )
            }
            _ => unreachable!("the hasher is made for the signature's format"),
        }
    }
}

/// Reads at most `max_len` bytes of `url`: a signature or a key.
pub(crate) use crate::source::fetch_bytes;

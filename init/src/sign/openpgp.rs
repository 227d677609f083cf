//! OpenPGP detached signatures (RFC 9580 §5.2, §10.3 "Detached
//! signatures"), what `gpg --detach-sign` writes and Fedora, CoreOS and
//! Debian publish. rPGP parses the packets and checks the keys'
//! self-signatures; the hash over the image is computed here as the bytes
//! stream past, as RFC 9580 §5.2.4 lays it out: the data, then the
//! signature's hashed part and its trailer, then the public-key check.

use anyhow::{Context, Result, anyhow, bail};
use digest::DynDigest;
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::crypto::hash::HashAlgorithm;
use pgp::packet::{KeyFlags, PublicKey, PublicSubkey, Signature, SignatureType, SignatureVersion};
use pgp::types::{KeyDetails, PublicKeyTrait};

#[derive(Debug, Clone)]
pub struct OpenPgpKey {
    key: Box<SignedPublicKey>,
}

/// Which key of a certificate made a signature.
pub struct Signer<'a> {
    key: SignerKey<'a>,
    /// Its v4 fingerprint, upper-case hex.
    pub fingerprint: String,
    /// A signing subkey rather than the primary key.
    pub subkey: bool,
}

enum SignerKey<'a> {
    Primary(&'a PublicKey),
    Subkey(&'a PublicSubkey),
}

impl OpenPgpKey {
    /// An ASCII-armored (`gpg --export --armor`) or binary (`gpg --export`)
    /// public key. Its self-signatures must verify and it must not be
    /// revoked. Expiry is not checked: the initramfs's clock is not to be
    /// trusted before the network sets it, if it ever does.
    pub fn parse(bytes: &[u8]) -> Result<OpenPgpKey> {
        let key = if is_armored(bytes) {
            SignedPublicKey::from_armor_single(bytes)
                .map(|(key, _)| key)
                .map_err(|e| anyhow!("{e}"))?
        } else {
            SignedPublicKey::from_bytes(bytes).map_err(|e| anyhow!("{e}"))?
        };
        key.verify()
            .map_err(|e| anyhow!("its self-signatures do not verify: {e}"))?;
        if !key.details.revocation_signatures.is_empty() {
            bail!("the key {:X} is revoked", key.fingerprint());
        }
        Ok(OpenPgpKey { key: Box::new(key) })
    }

    /// The primary key's fingerprint.
    pub fn fingerprint(&self) -> String {
        format!("{:X}", self.key.fingerprint())
    }

    /// The primary key or the signing subkey the signature names, if this
    /// certificate holds it.
    pub fn signer(&self, signature: &Signature) -> Option<Signer<'_>> {
        let named = |key: &dyn KeyDetails| {
            signature
                .issuer_fingerprint()
                .iter()
                .any(|f| **f == key.fingerprint())
                || signature.issuer().iter().any(|id| **id == key.key_id())
        };
        if named(&self.key.primary_key) && primary_may_sign(&self.key) {
            return Some(Signer {
                key: SignerKey::Primary(&self.key.primary_key),
                fingerprint: format!("{:X}", self.key.primary_key.fingerprint()),
                subkey: false,
            });
        }
        self.key
            .public_subkeys
            .iter()
            .filter(|sub| sub.signatures.iter().any(|s| s.key_flags().sign()))
            .find(|sub| named(&sub.key))
            .map(|sub| Signer {
                key: SignerKey::Subkey(&sub.key),
                fingerprint: format!("{:X}", sub.key.fingerprint()),
                subkey: true,
            })
    }
}

/// Whether the primary key's self-signatures allow it to sign data: a key
/// flags subpacket with the sign flag, or none at all (RFC 9580 §5.2.3.29:
/// without key flags, usage is not restricted). gpg's default primary key
/// is certify+sign; `gpg --quick-gen-key … cert` makes one that may not.
fn primary_may_sign(key: &SignedPublicKey) -> bool {
    let flags: Vec<KeyFlags> = key
        .details
        .direct_signatures
        .iter()
        .chain(key.details.users.iter().flat_map(|u| u.signatures.iter()))
        .map(Signature::key_flags)
        .filter(|flags| *flags != KeyFlags::default())
        .collect();
    flags.is_empty() || flags.iter().any(KeyFlags::sign)
}

pub(super) fn is_armored(bytes: &[u8]) -> bool {
    bytes.trim_ascii_start().starts_with(b"-----BEGIN PGP ")
}

/// A detached signature, armored or binary.
#[derive(Debug, Clone)]
pub struct OpenPgpSignature {
    pub(super) signature: Signature,
}

impl OpenPgpSignature {
    pub fn parse(bytes: &[u8]) -> Result<OpenPgpSignature> {
        let parsed = if is_armored(bytes) {
            DetachedSignature::from_armor_single(bytes).map(|(s, _)| s)
        } else {
            DetachedSignature::from_bytes(bytes)
        };
        let signature = parsed.map_err(|e| anyhow!("{e}"))?.signature;
        match signature.typ() {
            Some(SignatureType::Binary | SignatureType::Text) => {}
            other => bail!("not a signature over data (type {other:?})"),
        }
        let hash = signature.hash_alg().context("no hash algorithm")?;
        if matches!(
            hash,
            HashAlgorithm::Md5 | HashAlgorithm::Sha1 | HashAlgorithm::Ripemd160
        ) {
            bail!("made with {hash:?}, which is broken; sign again with SHA-256 or better");
        }
        Ok(OpenPgpSignature { signature })
    }

    /// Who the signature says made it: fingerprints, else key IDs.
    pub fn issuers(&self) -> String {
        let mut names: Vec<String> = self
            .signature
            .issuer_fingerprint()
            .iter()
            .map(|f| format!("{f:X}"))
            .collect();
        if names.is_empty() {
            names = self
                .signature
                .issuer()
                .iter()
                .map(|id| crate::text::hex(id.as_ref()).to_uppercase())
                .collect();
        }
        if names.is_empty() {
            "an unnamed key".to_owned()
        } else {
            names.join(", ")
        }
    }

    /// The hasher for the signed data, streamed: only binary v4
    /// signatures (a text signature normalises line endings, which only
    /// makes sense for a checksum list, checked whole by [`Self::verify_bytes`]).
    pub fn stream_hasher(&self) -> Result<Box<dyn DynDigest + Send>> {
        if self.signature.typ() != Some(SignatureType::Binary) {
            bail!(
                "a text-mode signature (gpg --textmode/--clearsign) cannot cover an image; sign it with gpg --detach-sign"
            );
        }
        if self.signature.version() != SignatureVersion::V4 {
            bail!(
                "only v4 signatures are verified over an image as it streams (this is {:?})",
                self.signature.version()
            );
        }
        let hash = self.signature.hash_alg().context("no hash algorithm")?;
        hash.new_hasher().map_err(|e| anyhow!("{e}"))
    }

    /// Finishes [`Self::stream_hasher`]'s hash and checks it against `signer`.
    pub fn verify_streamed(
        &self,
        signer: &Signer<'_>,
        mut hasher: Box<dyn DynDigest + Send>,
    ) -> Result<()> {
        let config = self
            .signature
            .config()
            .context("unknown signature version")?;
        let len = config
            .hash_signature_data(&mut hasher)
            .map_err(|e| anyhow!("{e}"))?;
        hasher.update(&config.trailer(len).map_err(|e| anyhow!("{e}"))?);
        let digest = hasher.finalize();
        if self.signature.signed_hash_value() != Some([digest[0], digest[1]]) {
            bail!("the signature does not match the data");
        }
        let bytes = self.signature.signature().context("no signature value")?;
        match signer.key {
            SignerKey::Primary(key) => key.verify_signature(config.hash_alg, &digest, bytes),
            SignerKey::Subkey(key) => key.verify_signature(config.hash_alg, &digest, bytes),
        }
        .map_err(|_| anyhow!("the signature does not match the data"))
    }

    /// Checks the signature over `data`, held whole (a checksum list).
    pub fn verify_bytes(&self, signer: &Signer<'_>, data: &[u8]) -> Result<()> {
        match signer.key {
            SignerKey::Primary(key) => self.signature.verify(key, data),
            SignerKey::Subkey(key) => self.signature.verify(key, data),
        }
        .map_err(|_| anyhow!("the signature does not match the data"))
    }
}

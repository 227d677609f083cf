//! minisign: Ed25519 over BLAKE2b-512 of the file (`ED`, the default since
//! minisign 0.8), or over the raw file (legacy `Ed`, `minisign -l`), plus a
//! second Ed25519 signature over the first and the trusted comment
//! (minisign's `src/minisign.c`, `verify`; the format is in its README,
//! "Signature format").
//!
//! Legacy signatures are refused: verifying one needs the whole file at
//! once, and imprint never holds an image in memory.

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use blake2::{Blake2b512, Digest};
use ed25519_dalek::{Signature as EdSignature, VerifyingKey};

/// `Ed`: the signature algorithm of every minisign key, and of legacy
/// (unhashed) signatures.
const LEGACY: [u8; 2] = *b"Ed";
/// `ED`: signatures over the BLAKE2b-512 of the file.
const PREHASHED: [u8; 2] = *b"ED";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MinisignKey {
    pub(super) id: [u8; 8],
    key: VerifyingKey,
}

impl MinisignKey {
    /// A key as `minisign -G` writes it (`untrusted comment:` line, then
    /// the base64 line) or its base64 line alone (`RWQ…`, as
    /// `minisign -P` takes it).
    pub fn parse(text: &str) -> Result<MinisignKey> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with("untrusted comment:"))
            .context("no key line")?;
        let bytes = STANDARD
            .decode(line)
            .context("the key line is not base64")?;
        let Ok(bytes) = <[u8; 42]>::try_from(bytes.as_slice()) else {
            bail!(
                "a minisign public key is 42 bytes, this one {}",
                bytes.len()
            );
        };
        if bytes[..2] != LEGACY {
            bail!("not an Ed25519 minisign key (algorithm {:?})", &bytes[..2]);
        }
        let key = VerifyingKey::from_bytes(bytes[10..].try_into().expect("32 bytes"))
            .context("not a valid Ed25519 public key")?;
        Ok(MinisignKey {
            id: bytes[2..10].try_into().expect("8 bytes"),
            key,
        })
    }

    /// The key ID as minisign prints it: the little-endian number in
    /// upper-case hex.
    pub fn fingerprint(&self) -> String {
        key_id(self.id)
    }
}

/// As minisign writes it in a key's comment (`%" PRIX64`, no padding:
/// `E6CC0C3D1A1591C` for an ID whose top nibble is zero).
pub(super) fn key_id(id: [u8; 8]) -> String {
    format!("{:X}", u64::from_le_bytes(id))
}

#[derive(Debug, Clone)]
pub struct MinisignSignature {
    pub(super) key_id: [u8; 8],
    signature: EdSignature,
    trusted_comment: String,
    global: EdSignature,
}

impl MinisignSignature {
    pub fn parse(text: &str) -> Result<MinisignSignature> {
        let mut lines = text.lines();
        let mut next = |what: &str| lines.next().with_context(|| format!("{what} line missing"));
        let _untrusted = next("untrusted comment")?;
        let first = STANDARD
            .decode(next("signature")?.trim())
            .context("the signature line is not base64")?;
        let trusted = next("trusted comment")?;
        let global = STANDARD
            .decode(next("global signature")?.trim())
            .context("the global signature line is not base64")?;
        let Some(trusted_comment) = trusted.strip_prefix("trusted comment: ") else {
            bail!("the third line is not a trusted comment");
        };
        let (Ok(first), Ok(global)) = (
            <[u8; 74]>::try_from(first.as_slice()),
            <[u8; 64]>::try_from(global.as_slice()),
        ) else {
            bail!("truncated: the signature lines are 74 and 64 bytes in base64");
        };
        match first[..2].try_into().expect("2 bytes") {
            PREHASHED => {}
            LEGACY => bail!(
                "a legacy minisign signature (minisign -l) signs the whole file at once, \
                 which imprint does not hold in memory; sign again without -l \
                 (minisign 0.8 and later prehash by default)"
            ),
            other => bail!("unknown minisign signature algorithm {other:?}"),
        }
        Ok(MinisignSignature {
            key_id: first[2..10].try_into().expect("8 bytes"),
            signature: EdSignature::from_bytes(first[10..].try_into().expect("64 bytes")),
            trusted_comment: trusted_comment.to_owned(),
            global: EdSignature::from_bytes(&global),
        })
    }

    /// The hasher [`Self::verify`] takes back.
    pub fn hasher() -> Blake2b512 {
        Blake2b512::new()
    }

    pub fn verify(&self, key: &MinisignKey, hashed: Blake2b512) -> Result<()> {
        if key.id != self.key_id {
            bail!(
                "signed by minisign key {}, not {}",
                key_id(self.key_id),
                key.fingerprint()
            );
        }
        let digest = hashed.finalize();
        key.key
            .verify_strict(&digest, &self.signature)
            .map_err(|_| anyhow::anyhow!("the signature does not match the data"))?;
        let mut global = self.signature.to_bytes().to_vec();
        global.extend_from_slice(self.trusted_comment.as_bytes());
        key.key
            .verify_strict(&global, &self.global)
            .map_err(|_| anyhow::anyhow!("the trusted comment's signature does not match"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// minisign-verify's test vector (its `src/lib.rs`, `verify`): the
    /// file `test`, signed by `minisign -Sm`.
    const KEY: &str = "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3";
    const SIG: &str = "untrusted comment: signature from minisign secret key
RWQf6LRCGA9i59SLOFxz6NxvASXDJeRtuZykwQepbDEGt87ig1BNpWaVWuNrm73YiIiJbq71Wi+dP9eKL8OC351vwIasSSbXxwA=
trusted comment: timestamp:1555779966\tfile:test
QtKMXWyYcwdpZAlPF7tE2ENJkRd1ujvKjlj1m9RtHTBnZPa5WKU5uWRs5GoP5M/VqE81QFuMKI5k/SfNQUaOAA==";

    #[test]
    fn legacy_reference_vector_is_refused_by_name() {
        // The reference vector is a legacy (`Ed`) signature.
        let key = MinisignKey::parse(KEY).unwrap();
        assert_eq!(key.fingerprint(), "E7620F1842B4E81F");
        let error = MinisignSignature::parse(SIG).unwrap_err().to_string();
        assert!(error.contains("legacy minisign signature"), "{error}");
    }

    #[test]
    fn truncated_signature_is_refused() {
        let cut = &SIG[..SIG.len() - 10];
        assert!(MinisignSignature::parse(cut).is_err());
        let two_lines: String = SIG.lines().take(2).collect::<Vec<_>>().join("\n");
        assert!(
            MinisignSignature::parse(&two_lines)
                .unwrap_err()
                .to_string()
                .contains("trusted comment line missing")
        );
    }
}

#[cfg(test)]
mod key_id_tests {
    #[test]
    fn key_id_is_unpadded_like_minisign() {
        let id = 0x0E6C_C0C3_D1A1_591C_u64.to_le_bytes();
        assert_eq!(super::key_id(id), "E6CC0C3D1A1591C");
    }
}

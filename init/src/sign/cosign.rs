//! cosign's key-based blob signatures (`cosign sign-blob --key`): the
//! base64 of an ASN.1 DER ECDSA P-256 signature over the SHA-256 of the
//! blob, verified against a PEM SubjectPublicKeyInfo (`cosign.pub`).
//! sigstore/cosign `pkg/signature` signs with `crypto/ecdsa` over the
//! SHA-256 digest; `openssl dgst -sha256 -sign` writes the same DER.

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::{DecodePublicKey, EncodePublicKey};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone)]
pub struct CosignKey {
    key: VerifyingKey,
    fingerprint: String,
}

impl CosignKey {
    /// `-----BEGIN PUBLIC KEY-----`, a P-256 key (what `cosign
    /// generate-key-pair` writes).
    pub fn parse(pem: &str) -> Result<CosignKey> {
        let key = VerifyingKey::from_public_key_pem(pem.trim())
            .map_err(|e| anyhow!("not a P-256 public key in PEM: {e}"))?;
        let der = key
            .to_public_key_der()
            .map_err(|e| anyhow!("encoding the key: {e}"))?;
        Ok(CosignKey {
            key,
            fingerprint: crate::text::hex(&Sha256::digest(der.as_bytes())),
        })
    }

    /// The SHA-256 of the key's DER SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

#[derive(Debug, Clone)]
pub struct CosignSignature {
    signature: Signature,
}

impl CosignSignature {
    /// The base64 text `cosign sign-blob --output-signature` writes.
    pub fn parse(text: &str) -> Result<CosignSignature> {
        let der = STANDARD.decode(text.trim()).context("not base64")?;
        Self::from_der(&der)
    }

    pub(super) fn from_der(der: &[u8]) -> Result<CosignSignature> {
        let signature = Signature::from_der(der)
            .map_err(|_| anyhow!("not a DER ECDSA signature (truncated?)"))?;
        Ok(CosignSignature { signature })
    }

    pub fn hasher() -> Sha256 {
        Sha256::new()
    }

    pub fn verify(&self, key: &CosignKey, hashed: Sha256) -> Result<()> {
        let digest = hashed.finalize();
        // Go's crypto/ecdsa does not normalise s; accept both halves, as
        // cosign's own verifier does.
        let signature = self.signature.normalize_s().unwrap_or(self.signature);
        if key.key.verify_prehash(&digest, &signature).is_err() {
            bail!("the signature does not match the data");
        }
        Ok(())
    }
}

/// Whether `text` looks like a cosign signature: base64 of a DER SEQUENCE.
pub(super) fn looks_like(text: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(text) else {
        return false;
    };
    STANDARD
        .decode(text.trim())
        .is_ok_and(|der| der.first() == Some(&0x30))
}

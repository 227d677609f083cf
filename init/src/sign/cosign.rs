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
        self.verify_digest(key, &hashed.finalize())
    }

    fn verify_digest(&self, key: &CosignKey, digest: &[u8]) -> Result<()> {
        // Go's crypto/ecdsa does not normalise s; accept both halves, as
        // cosign's own verifier does.
        let signature = self.signature.normalize_s().unwrap_or(self.signature);
        if key.key.verify_prehash(digest, &signature).is_err() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A signature cosign made, from sigstore/cosign's
    /// `pkg/cosign/verify_test.go` (`TestCompareSigs`, "sigs match"): its
    /// Rekor `hashedrekord` entry names the blob's SHA-256 and the key.
    const KEY: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEP+DGj/Yu1Nz01eyEhTwt6Oi1YjEc
IgQVpUR7Kf/BfiS3qT1Pl0vXpxZyKfIGK6zXB7iMekDSNwXfV8rIhfvvOg==
-----END PUBLIC KEY-----
";
    const SIG: &str = "MEQCIDO3XHbLovPWK+bk8ItCig2cwlr/8MXbLvz3UFzxMGIMAiA1lqdM9IqqUvCUqzOjufTq3sKU3qSn7R5tPqPz0ddNwQ==";
    const BLOB_SHA256: &str = "38152d1dd326af405f899dbcc2ce350b5f16d45df7f23c488f4850afa1cd86d1";

    fn digest(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn cosign_reference_vector_verifies() {
        let key = CosignKey::parse(KEY).unwrap();
        let sig = CosignSignature::parse(SIG).unwrap();
        sig.verify_digest(&key, &digest(BLOB_SHA256)).unwrap();
        let mut other = digest(BLOB_SHA256);
        other[0] ^= 1;
        assert_eq!(
            sig.verify_digest(&key, &other).unwrap_err().to_string(),
            "the signature does not match the data"
        );
        assert!(looks_like(SIG.as_bytes()));
        assert!(CosignSignature::parse(&SIG[..40]).is_err());
    }
}

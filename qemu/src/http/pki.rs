//! A throwaway certificate authority, so HTTPS tests need no files and no network.

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// The names a fixture server answers to: the host, and guests on QEMU user-mode
/// networking (which reach the host as 10.0.2.2).
pub const FIXTURE_NAMES: [&str; 3] = ["127.0.0.1", "10.0.2.2", "localhost"];

/// A CA made in memory for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

/// A server certificate chain and its private key, both PEM.
#[derive(Clone, Debug)]
pub struct ServerCert {
    /// The leaf, then the CA.
    pub chain_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new CA whose subject is `name` (shown by clients in errors).
    pub fn new(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("making CA certificate parameters")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("generating the CA key")?;
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A server certificate for `names` (IP addresses become IP SANs, the rest DNS
    /// names), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Result<ServerCert> {
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone())
            .with_context(|| format!("making server certificate parameters for {names:?}"))?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().context("generating the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing the server certificate")?;
        Ok(ServerCert {
            chain_pem: format!("{}{}", cert.pem(), self.cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A server certificate valid for every address of [`FIXTURE_NAMES`].
    pub fn issue_for_fixture(&self) -> Result<ServerCert> {
        self.issue(&FIXTURE_NAMES)
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("TestCa").finish_non_exhaustive()
    }
}

//! Trust for HTTPS sources.

use anyhow::Result;

use super::SourceOptions;

/// The TLS configuration for the HTTP agent.
pub fn tls_config(_options: &SourceOptions) -> Result<ureq::tls::TlsConfig> {
    Ok(ureq::tls::TlsConfig::default())
}

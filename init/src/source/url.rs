//! What an image (or spec, or checksum list) URL names, decided once.
//!
//! Every other module asks the parsed [`SourceUrl`] whether it needs the
//! network or which filesystem it lives on; nothing downstream looks at the
//! scheme again.

use std::fmt;

use anyhow::{Result, bail};

use super::local::DeviceFileUrl;

/// A URL imprint can read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceUrl {
    /// As the user wrote it, for messages and the HTTP client.
    text: String,
    kind: UrlKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UrlKind {
    /// `http://` or `https://`.
    Http,
    /// `file:///PATH`: a path in the running system.
    Path(String),
    /// `file://LABEL=…/PATH`, `UUID=`, `DEV=`: a file on a filesystem that
    /// is found and mounted read-only first.
    Device(DeviceFileUrl),
    /// `oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST]`: a disk image
    /// stored as an artifact in an OCI registry.
    Oci(super::oci::OciReference),
}

impl SourceUrl {
    /// Classifies `text`; a scheme imprint cannot read, a relative file
    /// path or a malformed filesystem selector is an error naming the URL.
    pub fn parse(text: &str) -> Result<SourceUrl> {
        let Some((scheme, rest)) = text.split_once("://") else {
            bail!("{text:?} is not a URL; use http://HOST/PATH or file:///PATH");
        };
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "http" | "https" => UrlKind::Http,
            "oci" => UrlKind::Oci(super::oci::OciReference::parse(text)?),
            "file" => match DeviceFileUrl::parse(text)? {
                Some(on_device) => UrlKind::Device(on_device),
                None if rest.starts_with('/') => UrlKind::Path(rest.to_owned()),
                None => bail!(
                    "{text}: a file URL needs an absolute path (file:///srv/images/golden.raw) \
                     or a filesystem (file://LABEL=IMAGES/golden.raw, UUID=…, DEV=vdb1)"
                ),
            },
            other => {
                bail!(
                    "unsupported URL scheme {other:?} in {text}; \
                     use http://, https://, oci:// or file://"
                )
            }
        };
        Ok(SourceUrl {
            text: text.to_owned(),
            kind,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn kind(&self) -> &UrlKind {
        &self.kind
    }

    /// Whether reading it needs the machine's network up.
    pub fn needs_network(&self) -> bool {
        matches!(self.kind, UrlKind::Http | UrlKind::Oci(_))
    }
}

impl fmt::Display for SourceUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_once() {
        let http = SourceUrl::parse("HTTPS://h/x.img").unwrap();
        assert_eq!(http.kind(), &UrlKind::Http);
        assert!(http.needs_network());
        let path = SourceUrl::parse("file:///srv/x.img").unwrap();
        assert_eq!(path.kind(), &UrlKind::Path("/srv/x.img".to_owned()));
        assert!(!path.needs_network());
        let device = SourceUrl::parse("file://LABEL=IMAGES/x.img").unwrap();
        assert!(matches!(device.kind(), UrlKind::Device(_)));
        assert_eq!(device.to_string(), "file://LABEL=IMAGES/x.img");
        let oci = SourceUrl::parse("oci://registry:5000/os/golden:v1").unwrap();
        assert!(matches!(oci.kind(), UrlKind::Oci(r) if r.repository == "os/golden"));
        assert!(oci.needs_network());
    }

    #[test]
    fn refusals_name_the_url() {
        for (bad, says) in [
            ("ftp://h/x", "unsupported URL scheme \"ftp\""),
            ("/srv/x.img", "is not a URL"),
            ("file://srv/x.img", "needs an absolute path"),
            ("file://LABEL=/x", "LABEL= needs a value"),
            ("oci://registry", "oci://registry: no repository"),
        ] {
            let msg = format!("{:#}", SourceUrl::parse(bad).unwrap_err());
            assert!(msg.contains(says), "{bad}: {msg}");
        }
    }
}

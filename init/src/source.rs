//! Where the image bytes come from: an HTTP(S) URL or a local file.
//!
//! A source is opened before anything touches the disk, so a 404 or an
//! unreachable server fails with the disk untouched.

use std::fs::File;
use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};

/// An opened image source: a byte stream and, when the server said so, its
/// length.
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
    /// The URL as the user gave it, for messages.
    pub url: String,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("url", &self.url)
            .field("length", &self.length)
            .finish()
    }
}

/// Timeouts for network sources.
#[derive(Debug, Clone, Copy)]
pub struct SourceOptions {
    pub connect_timeout: Duration,
    /// How long a read may wait for the next bytes before the transfer is
    /// declared stalled.
    pub read_timeout: Duration,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
        }
    }
}

pub fn open(url: &str, options: &SourceOptions) -> Result<Source> {
    match url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
    {
        Some(scheme) if scheme == "http" || scheme == "https" => open_http(url, options),
        Some(scheme) if scheme == "file" => open_file(url),
        Some(scheme) => {
            bail!("unsupported URL scheme {scheme:?} in {url}; use http://, https:// or file://")
        }
        None => bail!("{url:?} is not a URL; use http://HOST/PATH or file:///PATH"),
    }
}

fn open_http(url: &str, options: &SourceOptions) -> Result<Source> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(options.connect_timeout))
        .timeout_recv_response(Some(options.read_timeout))
        .timeout_recv_body(None)
        .timeout_per_read(Some(options.read_timeout))
        // Status codes are turned into errors below, with the URL in them.
        .http_status_as_error(false)
        .user_agent(concat!("imprint/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let response = agent
        .get(url)
        .call()
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        bail!(
            "GET {url}: HTTP {} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    let body = response.into_body();
    let length = body.content_length();
    // `into_reader` fails with an error (instead of a clean EOF) when the
    // connection closes before Content-Length bytes arrived.
    Ok(Source {
        reader: Box::new(body.into_reader()),
        length,
        url: url.to_owned(),
    })
}

fn open_file(url: &str) -> Result<Source> {
    let path = url.get("file://".len()..).unwrap_or_default();
    if !path.starts_with('/') {
        bail!("{url}: a file URL needs an absolute path, e.g. file:///srv/images/golden.raw");
    }
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    let length = file
        .metadata()
        .with_context(|| format!("reading metadata of {path}"))?
        .len();
    Ok(Source {
        reader: Box::new(file),
        length: Some(length),
        url: url.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn file_url_reads_file() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"hello").unwrap();
        let url = format!("file://{}", f.path().display());
        let mut src = open(&url, &SourceOptions::default()).unwrap();
        assert_eq!(src.length, Some(5));
        let mut s = String::new();
        src.reader.read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");
    }

    #[test]
    fn missing_file_names_path() {
        let msg = format!(
            "{:#}",
            open("file:///nonexistent/x.img", &SourceOptions::default()).unwrap_err()
        );
        assert!(msg.contains("opening /nonexistent/x.img"), "{msg}");
    }

    #[test]
    fn relative_file_url_is_rejected() {
        let msg = format!(
            "{:#}",
            open("file://x.img", &SourceOptions::default()).unwrap_err()
        );
        assert!(msg.contains("absolute path"), "{msg}");
    }

    #[test]
    fn unknown_scheme_and_non_url() {
        let msg = format!(
            "{:#}",
            open("ftp://h/x", &SourceOptions::default()).unwrap_err()
        );
        assert!(msg.contains("unsupported URL scheme \"ftp\""), "{msg}");
        let msg = format!(
            "{:#}",
            open("/srv/x.img", &SourceOptions::default()).unwrap_err()
        );
        assert!(msg.contains("is not a URL"), "{msg}");
    }

    #[test]
    fn http_404_names_url_and_status() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).unwrap();
            conn.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .unwrap();
        });
        let url = format!("http://127.0.0.1:{port}/missing.img");
        let msg = format!("{:#}", open(&url, &SourceOptions::default()).unwrap_err());
        assert_eq!(msg, format!("GET {url}: HTTP 404 Not Found"));
        server.join().unwrap();
    }
}

//! Where the image bytes come from: an HTTP(S) URL or a local file.
//!
//! A source is opened before anything touches the disk, so a 404 or an
//! unreachable server fails with the disk untouched.

use std::fs::File;
use std::io::Read;

use anyhow::{Context, Result, bail};

mod http;
pub(crate) mod local;
pub mod manifest;
pub(crate) mod mirrors;
pub(crate) mod oci;
mod ranged;
pub(crate) mod retry;
pub mod swarm;
pub(crate) mod url;

/// An opened image source: a byte stream and, when the server said so, its
/// length.
pub struct Source {
    pub reader: Box<dyn Read + Send>,
    pub length: Option<u64>,
    /// The URL as the user gave it, for messages.
    pub url: String,
    /// Retries, resumes and the final URL, updated while the reader runs.
    pub stats: std::sync::Arc<retry::SourceStats>,
    /// The whole disk holding a local source (`vdb` for `file://LABEL=…`
    /// found on `vdb1`): never a deploy target unless named.
    pub device: Option<String>,
    /// The file name that declares the image's format where the URL has
    /// none (an OCI layer's title, `golden.raw.zst`): read as an HTTP URL's
    /// last path segment is.
    pub name: Option<String>,
    /// The digest the source itself vouches for (an OCI blob's): the
    /// served bytes must match it before the first MiB is written.
    pub digest: Option<crate::pipeline::checksum::Checksum>,
    /// Random reads of the same bytes where they need more than the URL
    /// (an `oci://` blob: its location and the registry's token); `None`
    /// reads by the URL itself ([`fetch_range`]).
    pub ranges: Option<RangeAccess>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("url", &self.url)
            .field("length", &self.length)
            .field("device", &self.device)
            .finish()
    }
}

/// Timeouts, retries and TLS trust for network sources: the options of
/// every HTTP client of imprint ([`crate::http`]), named for their first user.
pub use crate::http::HttpOptions as SourceOptions;

pub fn open(url: &str, options: &SourceOptions) -> Result<Source> {
    match url
        .split_once("://")
        .map(|(scheme, _)| scheme.to_ascii_lowercase())
    {
        Some(scheme) if scheme == "http" || scheme == "https" => {
            if ranged::applies(url, options) {
                ranged::open(options)
            } else {
                http::open(url, options)
            }
        }
        Some(scheme) if scheme == "file" => open_file(url),
        Some(scheme) if scheme == "oci" => oci::open(url, options),
        Some(scheme) => {
            bail!(
                "unsupported URL scheme {scheme:?} in {url}; use http://, https://, oci:// or file://"
            )
        }
        None => bail!("{url:?} is not a URL; use http://HOST/PATH or file:///PATH"),
    }
}

/// The last `len` bytes of the resource, when the server can send just
/// those (HTTP Range; a file is seeked). `None` when it cannot: a server
/// that ignores Range is not made to send the whole image twice.
pub fn fetch_tail(url: &str, len: u64, options: &SourceOptions) -> Result<Option<Vec<u8>>> {
    use std::io::{Seek, SeekFrom};
    if url.starts_with("oci://") {
        // A hint only (the xz index): not worth resolving the manifest again.
        return Ok(None);
    }
    if url.starts_with("file://") {
        let (mut file, path, _) = open_file_url(url)?;
        let path = path.display();
        let size = file
            .seek(SeekFrom::End(0))
            .with_context(|| format!("seeking in {path}"))?;
        file.seek(SeekFrom::Start(size.saturating_sub(len)))
            .with_context(|| format!("seeking in {path}"))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)
            .with_context(|| format!("reading the end of {path}"))?;
        return Ok(Some(tail));
    }
    http::fetch_tail(url, len, options)
}

/// The `len` bytes at `offset` (fewer only where the resource ends), by an
/// HTTP Range request (retried like the image) or a seek in a file. For
/// formats that need random access (qcow2's tables): a server that ignores
/// Range is an error naming the fix.
pub fn fetch_range(url: &str, offset: u64, len: u64, options: &SourceOptions) -> Result<Vec<u8>> {
    use std::io::{Seek, SeekFrom};
    if len == 0 {
        return Ok(Vec::new());
    }
    if url.starts_with("file://") {
        let (mut file, path, _) = open_file_url(url)?;
        let path = path.display();
        file.seek(SeekFrom::Start(offset))
            .with_context(|| format!("seeking to byte {offset} in {path}"))?;
        let mut bytes = Vec::new();
        file.take(len)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {len} bytes at byte {offset} of {path}"))?;
        return Ok(bytes);
    }
    http::fetch_range(url, offset, len, options, None)
}

/// Random reads of an opened source's bytes (qcow2's tables): the URL its
/// body came from after redirects and, for a registry blob, the
/// registry's authorization, so that an `oci://` image reads its ranges
/// exactly as it streams.
#[derive(Clone)]
pub struct RangeAccess {
    url: String,
    auth: Option<std::sync::Arc<dyn http::Authorizer>>,
    options: SourceOptions,
}

impl RangeAccess {
    /// `len` bytes from `offset` (fewer at the end of the file).
    pub fn read_at(&self, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        http::fetch_range(&self.url, offset, len, &self.options, self.auth.clone())
    }
}

impl std::fmt::Debug for RangeAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeAccess")
            .field("url", &self.url)
            .field("authorized", &self.auth.is_some())
            .finish()
    }
}

/// A small document (a checksum list, a signature, a key, a chunk
/// manifest), at most `max_len` bytes; `what` names it in the error.
pub fn fetch_bytes(
    url: &str,
    max_len: u64,
    what: &str,
    options: &SourceOptions,
) -> Result<Vec<u8>> {
    let mut source = open(url, options)?;
    let mut bytes = Vec::new();
    source
        .reader
        .by_ref()
        .take(max_len + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {url}"))?;
    if bytes.len() as u64 > max_len {
        bail!("{url} is larger than {max_len} bytes; is it really {what}?");
    }
    Ok(bytes)
}

/// [`fetch_bytes`], as text.
pub fn fetch_text(url: &str, max_len: u64, what: &str, options: &SourceOptions) -> Result<String> {
    let bytes = fetch_bytes(url, max_len, what, options)?;
    String::from_utf8(bytes).with_context(|| format!("{url} is not text"))
}

fn file_path(url: &str) -> Result<&str> {
    let path = url.get("file://".len()..).unwrap_or_default();
    if !path.starts_with('/') {
        bail!(
            "{url}: a file URL needs an absolute path (file:///srv/images/golden.raw) \
             or a filesystem (file://LABEL=IMAGES/golden.raw, UUID=…, DEV=vdb1)"
        );
    }
    Ok(path)
}

/// Opens what a `file://` URL names: a path in the running system, or a
/// file on a filesystem found by label, UUID or device ([`local`]), which
/// is mounted read-only first. Also gives the path opened and, for the
/// latter, the whole disk holding it.
fn open_file_url(url: &str) -> Result<(File, std::path::PathBuf, Option<String>)> {
    if let Some(on_device) = local::DeviceFileUrl::parse(url)? {
        // Opened before (the image, then its qcow2 tables by range): the
        // filesystem is still mounted; mounting it again would stack mounts.
        if let Some((path, disk)) = opened_on_device(url, None)
            && let Ok(file) = File::open(&path)
        {
            return Ok((file, path, Some(disk)));
        }
        let mut devices = local::SystemDevices::new(local::DEVICE_WAIT);
        let opened = local::open(
            &on_device,
            &mut devices,
            std::path::Path::new(local::MOUNT_ROOT),
        )?;
        log::debug!(
            "{url}: {} on {} ({})",
            opened.path.display(),
            opened.device.dev_path().display(),
            opened.fs.fstype
        );
        opened_on_device(url, Some((opened.path.clone(), opened.device.disk.clone())));
        return Ok((opened.file, opened.path, Some(opened.device.disk)));
    }
    let path = file_path(url)?;
    let file = File::open(path).with_context(|| format!("opening {path}"))?;
    Ok((file, path.into(), None))
}

/// The path and disk a `file://LABEL=…` URL was opened at, remembered
/// (`Some`) or looked up (`None`).
fn opened_on_device(
    url: &str,
    remember: Option<(std::path::PathBuf, String)>,
) -> Option<(std::path::PathBuf, String)> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    type Opened = HashMap<String, (std::path::PathBuf, String)>;
    static OPENED: OnceLock<Mutex<Opened>> = OnceLock::new();
    let mut opened = OPENED
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match remember {
        Some(entry) => opened.insert(url.to_owned(), entry),
        None => opened.get(url).cloned(),
    }
}

fn open_file(url: &str) -> Result<Source> {
    let (file, path, device) = open_file_url(url)?;
    let length = file
        .metadata()
        .with_context(|| format!("reading metadata of {}", path.display()))?
        .len();
    Ok(Source {
        reader: Box::new(file),
        length: Some(length),
        url: url.to_owned(),
        stats: Default::default(),
        device,
        name: None,
        digest: None,
        ranges: None,
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
    fn malformed_device_file_urls_fail_before_any_device_is_probed() {
        let msg = format!(
            "{:#}",
            open("file://LABEL=IMAGES", &SourceOptions::default()).unwrap_err()
        );
        assert!(msg.contains("no file named after the filesystem"), "{msg}");
        let msg = format!(
            "{:#}",
            fetch_tail(
                "file://DEV=/dev/disk/by-id/x/y",
                10,
                &SourceOptions::default()
            )
            .unwrap_err()
        );
        assert!(msg.contains("DEV= takes a kernel device name"), "{msg}");
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
    fn tail_and_text_from_http_and_file() {
        let server = imprint_qemu::http::FixtureServer::start().unwrap();
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        server.add_file("img", data.clone());
        server.add_file("SHA256SUMS", b"abc  img\n".to_vec());
        let opts = SourceOptions::default();
        let tail = fetch_tail(&server.url("img"), 1000, &opts)
            .unwrap()
            .unwrap();
        assert_eq!(tail, data[data.len() - 1000..]);
        server.push_behaviors("img", [imprint_qemu::http::Behavior::IgnoreRange]);
        assert_eq!(fetch_tail(&server.url("img"), 1000, &opts).unwrap(), None);
        assert_eq!(
            fetch_text(&server.url("SHA256SUMS"), 100, "a checksum list", &opts).unwrap(),
            "abc  img\n"
        );
        let msg = format!(
            "{:#}",
            fetch_text(&server.url("img"), 100, "a checksum list", &opts).unwrap_err()
        );
        assert!(msg.contains("larger than 100 bytes"), "{msg}");

        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let url = format!("file://{}", f.path().display());
        assert_eq!(
            fetch_tail(&url, 10, &opts).unwrap().unwrap(),
            data[data.len() - 10..]
        );
        assert_eq!(fetch_tail(&url, 1 << 20, &opts).unwrap().unwrap(), data);
    }

    #[test]
    fn ranges_from_http_and_file() {
        let server = imprint_qemu::http::FixtureServer::start().unwrap();
        let data: Vec<u8> = (0..100_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        server.add_file("img", data.clone());
        let opts = SourceOptions::default();
        let url = server.url("img");
        assert_eq!(
            fetch_range(&url, 1000, 500, &opts).unwrap(),
            data[1000..1500]
        );
        // Cut short where the file ends.
        assert_eq!(
            fetch_range(&url, 99_990, 100, &opts).unwrap(),
            data[99_990..]
        );
        assert_eq!(fetch_range(&url, 5, 0, &opts).unwrap(), b"");
        server.push_behaviors("img", [imprint_qemu::http::Behavior::IgnoreRange]);
        let msg = format!("{:#}", fetch_range(&url, 0, 8, &opts).unwrap_err());
        assert!(
            msg.contains("(bytes 0-7): the server ignored the Range request (HTTP 200)"),
            "{msg}"
        );
        let requests = server.requests();
        assert!(
            requests
                .iter()
                .any(|r| r.range.as_deref() == Some("bytes=1000-1499")),
            "{requests:?}"
        );

        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let url = format!("file://{}", f.path().display());
        assert_eq!(fetch_range(&url, 7, 3, &opts).unwrap(), data[7..10]);
        assert_eq!(
            fetch_range(&url, 99_999, 10, &opts).unwrap(),
            data[99_999..]
        );
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

//! An HTTP/1.1 file server for tests, on 127.0.0.1 (and the same port on
//! `[::1]`), that can misbehave on request.
//!
//! Guests on QEMU user-mode networking reach it as `10.0.2.2`, or as
//! `[fec0::2]` over IPv6. Every response closes
//! the connection, so each request is one connection and one entry in the log.
//! `POST` and `PUT` to any path are accepted as a webhook would: the body is kept in
//! the log ([`RequestRecord::body`]) and answered `204 No Content`, unless a
//! [`Behavior::Status`] queued for the path says otherwise.
//! [`FixtureServer::start_tls`] serves the same over HTTPS (rustls), with a
//! certificate from [`TestCa`].

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustls::ServerConfig;

use crate::listener::{self, Listener, Request, Response, Serve};

mod pki;
pub use pki::{FIXTURE_NAMES, ServerCert, TestCa};

/// How the server answers one request for a path; queued per path with
/// [`FixtureServer::push_behaviors`] and consumed one per request (then `Normal`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behavior {
    /// Serve the file correctly.
    Normal,
    /// Answer with this status and an empty body (a `POST`/`PUT` too; its body is
    /// still read and logged).
    Status(u16),
    /// Send the headers and this many body bytes, then close the connection.
    DropAfter(u64),
    /// Send the headers and this many body bytes, pause this long, then send the rest.
    StallAfter(u64, Duration),
    /// Answer 200 with the whole file even when a Range was asked for.
    IgnoreRange,
    /// Declare this Content-Length but send the real body.
    WrongContentLength(u64),
    /// The file changes before this request: a new ETag and a later Last-Modified from
    /// now on (so an `If-Range` with the old validator gets the whole new file).
    ChangeEtag,
    /// Answer 200 with this many bytes of deterministic noise in place of the file.
    Garbage(u64),
}

/// One request as the server saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRecord {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request path, without query string.
    pub path: String,
    /// The `Range` header, verbatim.
    pub range: Option<String>,
    /// The status sent.
    pub status: u16,
    /// Body bytes actually written to the socket.
    pub bytes_sent: u64,
    /// The behavior this request consumed.
    pub behavior: Behavior,
    /// The request body (`POST`, `PUT`); empty for `GET` and `HEAD`.
    pub body: Vec<u8>,
    /// The `Authorization` header, verbatim: what a client sent a token
    /// service or a registry.
    pub authorization: Option<String>,
}

enum Content {
    Bytes(Arc<Vec<u8>>),
    /// Streamed from disk at request time, so images larger than RAM work.
    File(PathBuf),
}

struct Fixture {
    content: Content,
    generation: u64,
    /// Last-Modified of in-memory content, or a floor raised by `ChangeEtag`.
    modified: SystemTime,
}

#[derive(Default)]
struct Shared {
    fixtures: Mutex<HashMap<String, Fixture>>,
    behaviors: Mutex<HashMap<String, VecDeque<Behavior>>>,
    /// Answered requests with their arrival numbers, kept in arrival order:
    /// a request is logged once answered, and the client may already have
    /// sent the next one, on another connection and thread, by then.
    requests: Mutex<Vec<(u64, RequestRecord)>>,
    arrivals: AtomicU64,
    generations: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fixture server; stops accepting when dropped.
pub struct FixtureServer {
    /// Also on the same port on `[::1]`, for guests on IPv6, unless the host
    /// has no IPv6 loopback or the port is taken there.
    listener: Listener,
    shared: Arc<Shared>,
}

impl FixtureServer {
    /// Binds a random port on 127.0.0.1 and starts serving HTTP.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start) but HTTPS, presenting `cert_chain_pem` (leaf
    /// first) with the private key `key_pem`; behaviors and Range work the same.
    pub fn start_tls(cert_chain_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(Some(listener::server_config(cert_chain_pem, key_pem)?))
    }
}

impl FixtureServer {
    fn start_with(tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let shared = Arc::new(Shared::default());
        let server: Arc<dyn Serve> = Arc::clone(&shared) as Arc<dyn Serve>;
        let listener = Listener::start("fixture", true, tls, server)?;
        Ok(Self { listener, shared })
    }

    /// The URL of `path` for a guest on QEMU's IPv6 user network, which reaches
    /// the host's `[::1]` as `fec0::2`; `None` when the host has no `[::1]`.
    pub fn guest_url6(&self, path: &str) -> Option<String> {
        self.listener.address6()?;
        Some(format!(
            "{}://[fec0::2]:{}{}",
            self.scheme(),
            self.port(),
            normalize(path)
        ))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.listener.address().port()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.listener.scheme()
    }

    /// The URL of `path` for the host.
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}{}",
            self.scheme(),
            self.port(),
            normalize(path)
        )
    }

    /// The URL of `path` for a guest on QEMU user-mode networking.
    pub fn guest_url(&self, path: &str) -> String {
        format!(
            "{}://10.0.2.2:{}{}",
            self.scheme(),
            self.port(),
            normalize(path)
        )
    }

    /// Serves `bytes` at `url_path` (replacing any earlier file there).
    pub fn add_file(&self, url_path: &str, bytes: impl Into<Vec<u8>>) {
        self.insert(
            url_path,
            Content::Bytes(Arc::new(bytes.into())),
            SystemTime::now(),
        );
    }

    /// Serves the file at `path` on disk at `url_path`, streamed per request; its size
    /// and mtime at request time give Content-Length, ETag and Last-Modified.
    pub fn add_file_from_disk(&self, url_path: &str, path: &Path) -> Result<()> {
        let metadata =
            std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
        if !metadata.is_file() {
            bail!("{} is not a regular file", path.display());
        }
        self.insert(url_path, Content::File(path.to_owned()), UNIX_EPOCH);
        Ok(())
    }

    fn insert(&self, url_path: &str, content: Content, modified: SystemTime) {
        let generation = self.shared.generations.fetch_add(1, Ordering::Relaxed);
        let fixture = Fixture {
            content,
            generation,
            modified,
        };
        lock(&self.shared.fixtures).insert(normalize(url_path), fixture);
    }

    /// Stops serving `url_path` (requests get 404).
    pub fn remove_file(&self, url_path: &str) {
        lock(&self.shared.fixtures).remove(&normalize(url_path));
    }

    /// Queues behaviors for the next requests of `url_path`, one per request.
    pub fn push_behaviors(&self, url_path: &str, behaviors: impl IntoIterator<Item = Behavior>) {
        lock(&self.shared.behaviors)
            .entry(normalize(url_path))
            .or_default()
            .extend(behaviors);
    }

    /// Every request answered so far, oldest first. A request is logged before its
    /// connection closes, so a client that read to EOF finds it here.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests)
            .iter()
            .map(|(_, record)| record.clone())
            .collect()
    }

    /// [`requests`](Self::requests) once at least `count` are logged (or
    /// after `timeout`). A client that stops reading at Content-Length can
    /// be done before the server thread logged the request it answered.
    pub fn requests_at_least(&self, count: usize, timeout: Duration) -> Vec<RequestRecord> {
        let deadline = Instant::now() + timeout;
        loop {
            let requests = self.requests();
            if requests.len() >= count || Instant::now() >= deadline {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// TLS connections that ended before the handshake completed (a client that
    /// refused the certificate shows up here, not in [`requests`](Self::requests)).
    pub fn failed_handshakes(&self) -> u64 {
        self.listener.failed_handshakes()
    }

    /// Forgets the request log.
    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// Answers a `GET`/`HEAD` `request` that another server read, from this
    /// server's files and queued behaviors, exactly as this server would;
    /// it is not added to [`requests`](Self::requests). Returns the status sent.
    pub(crate) fn serve_file(&self, request: &Request, response: &mut Response) -> Result<u16> {
        let behavior = lock(&self.shared.behaviors)
            .get_mut(&request.path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Behavior::Normal);
        answer(request, &behavior, &self.shared, response)
    }
}

impl std::fmt::Debug for FixtureServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FixtureServer")
            .field("address", &self.listener.address())
            .field("scheme", &self.scheme())
            .finish()
    }
}

pub(crate) fn normalize(path: &str) -> String {
    if path.starts_with('/') {
        path.to_owned()
    } else {
        format!("/{path}")
    }
}

/// A single byte range, inclusive, already clamped to the content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RangeAnswer {
    Whole,
    Partial { first: u64, last: u64 },
    Unsatisfiable,
}

/// Interprets a `Range` header (RFC 9110 §14.1.2): syntax it does not understand, and
/// multiple ranges, are ignored, which the RFC allows.
fn parse_range(header: &str, length: u64) -> RangeAnswer {
    let Some(spec) = header.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Whole;
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeAnswer::Whole;
    };
    if spec.contains(',') {
        return RangeAnswer::Whole;
    }
    let parse = |text: &str| text.trim().parse::<u64>().ok();
    match (first.trim().is_empty(), last.trim().is_empty()) {
        (true, false) => match parse(last) {
            Some(0) => RangeAnswer::Unsatisfiable,
            Some(_) if length == 0 => RangeAnswer::Unsatisfiable,
            Some(suffix) => RangeAnswer::Partial {
                first: length.saturating_sub(suffix),
                last: length - 1,
            },
            None => RangeAnswer::Whole,
        },
        (false, true) => match parse(first) {
            Some(first) if first >= length => RangeAnswer::Unsatisfiable,
            Some(first) => RangeAnswer::Partial {
                first,
                last: length - 1,
            },
            None => RangeAnswer::Whole,
        },
        (false, false) => match (parse(first), parse(last)) {
            (Some(first), Some(last)) if first > last => RangeAnswer::Whole,
            (Some(first), Some(_)) if first >= length => RangeAnswer::Unsatisfiable,
            (Some(first), Some(last)) => RangeAnswer::Partial {
                first,
                last: last.min(length - 1),
            },
            _ => RangeAnswer::Whole,
        },
        (true, true) => RangeAnswer::Whole,
    }
}

/// What a fixture looks like at the moment of a request.
struct Snapshot {
    body: Box<dyn ReadSeek + Send>,
    length: u64,
    etag: String,
    last_modified: String,
}

trait ReadSeek: Read + Seek {}
impl<T: Read + Seek> ReadSeek for T {}

fn snapshot(shared: &Shared, path: &str, change_etag: bool) -> Result<Option<Snapshot>> {
    let mut fixtures = lock(&shared.fixtures);
    let Some(fixture) = fixtures.get_mut(path) else {
        return Ok(None);
    };
    let (body, length, content_modified): (Box<dyn ReadSeek + Send>, u64, SystemTime) =
        match &fixture.content {
            Content::Bytes(bytes) => {
                let length = u64::try_from(bytes.len())?;
                (
                    Box::new(Cursor::new(SharedBytes(Arc::clone(bytes)))),
                    length,
                    UNIX_EPOCH,
                )
            }
            Content::File(file_path) => {
                let file = File::open(file_path)
                    .with_context(|| format!("opening {}", file_path.display()))?;
                let metadata = file
                    .metadata()
                    .with_context(|| format!("reading {}", file_path.display()))?;
                (
                    Box::new(file),
                    metadata.len(),
                    metadata.modified().unwrap_or(UNIX_EPOCH),
                )
            }
        };
    let mut modified = content_modified.max(fixture.modified);
    if change_etag {
        fixture.generation = shared.generations.fetch_add(1, Ordering::Relaxed);
        // HTTP dates have one-second resolution: a change must move at least that far.
        modified = SystemTime::now().max(modified + Duration::from_secs(1));
        fixture.modified = modified;
    }
    let modified_nanos = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |age| age.as_nanos());
    let etag = format!("\"{length:x}-{modified_nanos:x}-{:x}\"", fixture.generation);
    Ok(Some(Snapshot {
        body,
        length,
        etag,
        // IMF-fixdate (RFC 9110 §5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
        last_modified: httpdate::fmt_http_date(modified),
    }))
}

struct SharedBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for SharedBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Serve for Shared {
    fn serve(&self, request: Request, response: &mut Response) -> Result<()> {
        let arrival = self.arrivals.fetch_add(1, Ordering::Relaxed);
        let behavior = lock(&self.behaviors)
            .get_mut(&request.path)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Behavior::Normal);
        let status = answer(&request, &behavior, self, response);
        let range = request.header("range").map(str::to_owned);
        let authorization = request.header("authorization").map(str::to_owned);
        if matches!(behavior, Behavior::DropAfter(_)) {
            response.cut();
        }
        // Logged before the connection closes, so a client that read to EOF
        // finds its request in the log.
        let record = RequestRecord {
            method: request.method,
            path: request.path,
            range,
            status: status.as_ref().map_or(0, |status| *status),
            bytes_sent: response.bytes_sent,
            behavior,
            body: request.body,
            authorization,
        };
        let mut requests = lock(&self.requests);
        let at = requests.partition_point(|(earlier, _)| *earlier < arrival);
        requests.insert(at, (arrival, record));
        status.map(|_| ())
    }
}

/// Writes the response; returns the status sent.
fn answer(
    request: &Request,
    behavior: &Behavior,
    shared: &Shared,
    response: &mut Response,
) -> Result<u16> {
    let is_head = request.method == "HEAD";
    let is_upload = request.method == "POST" || request.method == "PUT";
    if !is_head && !is_upload && request.method != "GET" {
        response.head(
            405,
            &[
                ("Allow", "GET, HEAD, POST, PUT".into()),
                ("Content-Length", "0".into()),
            ],
        )?;
        return Ok(405);
    }
    if let Behavior::Status(status) = behavior {
        response.head(*status, &[("Content-Length", "0".into())])?;
        return Ok(*status);
    }
    if is_upload {
        // Accepted and logged, whatever the path: a webhook receiver.
        response.head(204, &[])?;
        return Ok(204);
    }
    let change_etag = *behavior == Behavior::ChangeEtag;
    let Some(mut snapshot) = snapshot(shared, &request.path, change_etag)? else {
        response.head(404, &[("Content-Length", "0".into())])?;
        return Ok(404);
    };
    if let Behavior::Garbage(count) = behavior {
        response.head(200, &[("Content-Length", count.to_string())])?;
        if !is_head {
            response.body(&mut Noise(0x9E37_79B9_7F4A_7C15), *count, None)?;
        }
        return Ok(200);
    }
    let validators_match = request
        .header("if-range")
        .is_none_or(|validator| validator == snapshot.etag || validator == snapshot.last_modified);
    let range = match request.header("range") {
        Some(header) if validators_match && *behavior != Behavior::IgnoreRange => {
            parse_range(header, snapshot.length)
        }
        _ => RangeAnswer::Whole,
    };
    let mut headers = vec![
        ("Accept-Ranges", "bytes".to_owned()),
        ("ETag", snapshot.etag.clone()),
        ("Last-Modified", snapshot.last_modified.clone()),
        ("Content-Type", "application/octet-stream".to_owned()),
    ];
    let (status, first, length) = match range {
        RangeAnswer::Whole => (200, 0, snapshot.length),
        RangeAnswer::Partial { first, last } => {
            headers.push((
                "Content-Range",
                format!("bytes {first}-{last}/{}", snapshot.length),
            ));
            (206, first, last - first + 1)
        }
        RangeAnswer::Unsatisfiable => {
            headers.push(("Content-Range", format!("bytes */{}", snapshot.length)));
            headers.push(("Content-Length", "0".into()));
            response.head(416, &headers)?;
            return Ok(416);
        }
    };
    let declared = match behavior {
        Behavior::WrongContentLength(declared) => *declared,
        _ => length,
    };
    headers.push(("Content-Length", declared.to_string()));
    response.head(status, &headers)?;
    if is_head {
        return Ok(status);
    }
    snapshot
        .body
        .seek(SeekFrom::Start(first))
        .context("seeking fixture content")?;
    let limit = match behavior {
        Behavior::DropAfter(count) => Some((*count, None)),
        Behavior::StallAfter(count, pause) => Some((*count, Some(*pause))),
        _ => None,
    };
    // A client that hangs up early (as resume tests do) is not a server failure.
    if let Err(error) = response.body(&mut snapshot.body, length, limit) {
        log::debug!("fixture body for {}: {error:#}", request.path);
    }
    Ok(status)
}

/// xorshift64: reproducible noise, so a failing test fails the same way every run.
struct Noise(u64);

impl Read for Noise {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        for byte in buffer.iter_mut() {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *byte = self.0.to_le_bytes()[0];
        }
        Ok(buffer.len())
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

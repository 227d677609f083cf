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
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

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
    /// Set for an HTTPS server.
    tls: Option<Arc<ServerConfig>>,
    fixtures: Mutex<HashMap<String, Fixture>>,
    behaviors: Mutex<HashMap<String, VecDeque<Behavior>>>,
    requests: Mutex<Vec<RequestRecord>>,
    failed_handshakes: AtomicU64,
    generations: AtomicU64,
    stopping: AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A running fixture server; stops accepting when dropped.
pub struct FixtureServer {
    address: SocketAddr,
    /// The same port on `[::1]`, for guests on IPv6; `None` if the host has no
    /// IPv6 loopback or the port is taken there.
    address6: Option<SocketAddr>,
    shared: Arc<Shared>,
    accept_threads: Vec<JoinHandle<()>>,
}

impl FixtureServer {
    /// Binds a random port on 127.0.0.1 and starts serving HTTP.
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start) but HTTPS, presenting `cert_chain_pem` (leaf
    /// first) with the private key `key_pem`; behaviors and Range work the same.
    pub fn start_tls(cert_chain_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(Some(server_config(cert_chain_pem, key_pem)?))
    }
}

/// The rustls configuration that presents `cert_chain_pem` (leaf first) with
/// `key_pem`; shared with [`crate::drp::DrpStandIn`].
pub(crate) fn server_config(cert_chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("reading the server certificate chain")?;
    if chain.is_empty() {
        bail!("reading the server certificate chain: no certificates found");
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .context("reading the server private key")?;
    // The provider is named rather than taken from the process default, which
    // rustls cannot pick when the dependency graph enables two.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("loading the server certificate and key")?;
    Ok(Arc::new(config))
}

impl FixtureServer {
    fn start_with(tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let address = listener
            .local_addr()
            .context("reading the listener address")?;
        let shared = Arc::new(Shared {
            tls,
            ..Shared::default()
        });
        // QEMU's user network hands a guest's connection to its IPv6 host
        // address (fec0::2) to the host's [::1]: listen there on the same port.
        let listener6 = match TcpListener::bind(("::1", address.port())) {
            Ok(listener6) => Some(listener6),
            Err(error) => {
                log::debug!("fixture server: no [::1]:{}: {error}", address.port());
                None
            }
        };
        let address6 = listener6.as_ref().and_then(|l| l.local_addr().ok());
        let mut accept_threads = Vec::new();
        for listener in std::iter::once(listener).chain(listener6) {
            let accept_shared = Arc::clone(&shared);
            accept_threads.push(
                std::thread::Builder::new()
                    .name("fixture-accept".into())
                    .spawn(move || accept_loop(&listener, &accept_shared))
                    .context("spawning the fixture server thread")?,
            );
        }
        Ok(Self {
            address,
            address6,
            shared,
            accept_threads,
        })
    }

    /// The URL of `path` for a guest on QEMU's IPv6 user network, which reaches
    /// the host's `[::1]` as `fec0::2`; `None` when the host has no `[::1]`.
    pub fn guest_url6(&self, path: &str) -> Option<String> {
        self.address6?;
        Some(format!(
            "{}://[fec0::2]:{}{}",
            self.scheme(),
            self.port(),
            normalize(path)
        ))
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.address.port()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        if self.shared.tls.is_some() {
            "https"
        } else {
            "http"
        }
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
        lock(&self.shared.requests).clone()
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
        self.shared.failed_handshakes.load(Ordering::SeqCst)
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

impl Drop for FixtureServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        for address in std::iter::once(self.address).chain(self.address6) {
            let _ = TcpStream::connect(address);
        }
        for thread in self.accept_threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for FixtureServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("FixtureServer")
            .field("address", &self.address)
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

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // Connection threads are detached: a stalled response must not hold up Drop.
        let spawned = std::thread::Builder::new()
            .name("fixture-connection".into())
            .spawn(move || {
                if let Err(error) = serve_connection(stream, &shared) {
                    log::debug!("fixture server connection: {error:#}");
                }
            });
        if let Err(error) = spawned {
            log::warn!("spawning a fixture connection thread: {error}");
        }
    }
}

/// One parsed request (shared with [`crate::drp`]).
pub(crate) struct Request {
    pub(crate) method: String,
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// The largest request body the fixture keeps; webhook events are a few KiB.
const MAX_REQUEST_BODY: u64 = 16 << 20;

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

pub(crate) fn read_request(reader: &mut impl BufRead) -> Result<Request> {
    let mut request_line = String::new();
    reader
        .read_line(&mut request_line)
        .context("reading the request line")?;
    let mut parts = request_line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("malformed request line {request_line:?}");
    };
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader
            .read_line(&mut line)
            .context("reading request headers")?
            == 0
        {
            bail!("connection closed inside the request headers");
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
        if headers.len() > 100 {
            bail!("too many request headers");
        }
    }
    let mut request = Request {
        method: method.to_owned(),
        path,
        headers,
        body: Vec::new(),
    };
    request.body = read_body(reader, &request)?;
    Ok(request)
}

/// The body announced by `Content-Length` or `Transfer-Encoding: chunked`; none
/// without either (no request here relies on the connection closing to end it).
fn read_body(reader: &mut impl BufRead, request: &Request) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let chunked = request
        .header("transfer-encoding")
        .is_some_and(|value| value.to_ascii_lowercase().contains("chunked"));
    if chunked {
        loop {
            let mut size_line = String::new();
            reader
                .read_line(&mut size_line)
                .context("reading a chunk size")?;
            let size_text = size_line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_text, 16)
                .with_context(|| format!("malformed chunk size {size_line:?}"))?;
            if u64::try_from(body.len())? + size > MAX_REQUEST_BODY {
                bail!("request body larger than {MAX_REQUEST_BODY} bytes");
            }
            if size == 0 {
                // Trailers, up to the empty line that ends the request.
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).context("reading trailers")? == 0
                        || line.trim_end_matches(['\r', '\n']).is_empty()
                    {
                        return Ok(body);
                    }
                }
            }
            reader
                .by_ref()
                .take(size)
                .read_to_end(&mut body)
                .context("reading a chunk")?;
            let mut end = String::new();
            reader.read_line(&mut end).context("reading a chunk end")?;
        }
    }
    let Some(length) = request.header("content-length") else {
        return Ok(body);
    };
    let length: u64 = length
        .parse()
        .with_context(|| format!("malformed Content-Length {length:?}"))?;
    if length > MAX_REQUEST_BODY {
        bail!("request body of {length} bytes is larger than {MAX_REQUEST_BODY}");
    }
    reader
        .by_ref()
        .take(length)
        .read_to_end(&mut body)
        .context("reading the request body")?;
    if u64::try_from(body.len())? != length {
        bail!(
            "connection closed after {} of {length} request body bytes",
            body.len()
        );
    }
    Ok(body)
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

/// One client connection, plain or TLS; the TLS handshake happens on the first read.
pub(crate) enum Connection {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Connection {
    /// Ends the response. `clean` sends TLS close_notify first; without it a TLS
    /// client sees the connection cut, as a dropped plain connection would be.
    pub(crate) fn close(&mut self, clean: bool) {
        let socket = match self {
            Connection::Plain(socket) => socket,
            Connection::Tls(stream) => {
                if clean {
                    stream.conn.send_close_notify();
                    let _ = stream.flush();
                }
                &stream.sock
            }
        };
        let _ = socket.shutdown(Shutdown::Write);
    }
}

impl Read for Connection {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(socket) => socket.read(buffer),
            Connection::Tls(stream) => stream.read(buffer),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buffer: &[u8]) -> std::io::Result<usize> {
        match self {
            Connection::Plain(socket) => socket.write(buffer),
            Connection::Tls(stream) => stream.write(buffer),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Connection::Plain(socket) => socket.flush(),
            Connection::Tls(stream) => stream.flush(),
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) -> Result<()> {
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .context("setting a read timeout")?;
    let connection = match &shared.tls {
        None => Connection::Plain(stream),
        Some(config) => {
            let tls = ServerConnection::new(Arc::clone(config)).context("starting TLS")?;
            Connection::Tls(Box::new(StreamOwned::new(tls, stream)))
        }
    };
    // The request body was read through the reader, and every response closes the
    // connection, so nothing it buffered is lost by taking the stream back.
    let mut reader = BufReader::new(connection);
    let request = match read_request(&mut reader) {
        Ok(request) => request,
        Err(error) => {
            if let Connection::Tls(stream) = reader.get_ref() {
                if stream.conn.is_handshaking() {
                    shared.failed_handshakes.fetch_add(1, Ordering::SeqCst);
                }
            }
            return Err(error);
        }
    };
    let behavior = lock(&shared.behaviors)
        .get_mut(&request.path)
        .and_then(VecDeque::pop_front)
        .unwrap_or(Behavior::Normal);
    let mut response = Response {
        stream: reader.into_inner(),
        bytes_sent: 0,
    };
    let status = answer(&request, &behavior, shared, &mut response);
    let record = RequestRecord {
        method: request.method.clone(),
        path: request.path.clone(),
        range: request.header("range").map(str::to_owned),
        status: status.as_ref().map_or(0, |status| *status),
        bytes_sent: response.bytes_sent,
        behavior,
        body: request.body,
    };
    let dropped = matches!(record.behavior, Behavior::DropAfter(_));
    lock(&shared.requests).push(record);
    response.stream.close(!dropped);
    status.map(|_| ())
}

pub(crate) struct Response {
    pub(crate) stream: Connection,
    pub(crate) bytes_sent: u64,
}

impl Response {
    pub(crate) fn head(&mut self, status: u16, headers: &[(&str, String)]) -> Result<()> {
        let mut head = format!("HTTP/1.1 {status} {}\r\n", reason(status));
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        self.stream
            .write_all(head.as_bytes())
            .context("writing response headers")
    }

    /// Copies `length` bytes from `body`, stopping (or pausing) after `limit` of them.
    pub(crate) fn body(
        &mut self,
        body: &mut dyn Read,
        length: u64,
        limit: Option<(u64, Option<Duration>)>,
    ) -> Result<()> {
        let mut buffer = vec![0u8; 64 * 1024];
        let mut left = length;
        while left > 0 {
            let mut chunk = left.min(u64::try_from(buffer.len())?);
            if let Some((after, pause)) = limit {
                if self.bytes_sent == after {
                    match pause {
                        None => return Ok(()),
                        Some(pause) => std::thread::sleep(pause),
                    }
                } else if self.bytes_sent < after {
                    chunk = chunk.min(after - self.bytes_sent);
                }
            }
            let chunk = usize::try_from(chunk)?;
            body.read_exact(&mut buffer[..chunk])
                .context("reading fixture content")?;
            self.stream
                .write_all(&buffer[..chunk])
                .context("writing the response body")?;
            self.bytes_sent += u64::try_from(chunk)?;
            left -= u64::try_from(chunk)?;
        }
        self.stream.flush().context("writing the response body")
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

pub(crate) fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tls_tests;

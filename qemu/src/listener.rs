//! The TCP side both fixture servers ([`crate::http::FixtureServer`] and
//! [`crate::drp::DrpStandIn`]) are built on: bind, accept on a thread, one
//! thread per connection, optional TLS (rustls), reading one HTTP/1.1 request
//! (RFC 9112: request line, headers, a `Content-Length` or chunked body),
//! writing the response head and body, and closing the connection after it.
//! What each server answers is its [`Serve`] implementation; dropping the
//! [`Listener`] stops accepting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

/// The largest request body a fixture keeps; webhook events are a few KiB.
const MAX_REQUEST_BODY: u64 = 16 << 20;

/// What a fixture server does with each request.
pub(crate) trait Serve: Send + Sync + 'static {
    /// Answers `request` through `response`. The connection is closed after
    /// it returns (cleanly unless [`Response::cut`] was called); an error is
    /// only logged, as the client has its answer, or a broken one on purpose.
    fn serve(&self, request: Request, response: &mut Response) -> Result<()>;
}

/// A bound, accepting listener; stops accepting when dropped.
pub(crate) struct Listener {
    address: SocketAddr,
    /// The same port on `[::1]`, when asked for and the host has it.
    address6: Option<SocketAddr>,
    tls: bool,
    shared: Arc<ListenerShared>,
    accept_threads: Vec<JoinHandle<()>>,
}

struct ListenerShared {
    label: &'static str,
    tls: Option<Arc<ServerConfig>>,
    server: Arc<dyn Serve>,
    failed_handshakes: AtomicU64,
    stopping: AtomicBool,
}

impl Listener {
    /// Binds a random port on 127.0.0.1 (and, with `ipv6`, the same port on
    /// `[::1]` when it is free) and serves every connection with `server`,
    /// over TLS when `tls` is given. `label` names the threads and log lines.
    pub(crate) fn start(
        label: &'static str,
        ipv6: bool,
        tls: Option<Arc<ServerConfig>>,
        server: Arc<dyn Serve>,
    ) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
        let address = listener
            .local_addr()
            .context("reading the listener address")?;
        // QEMU's user network hands a guest's connection to its IPv6 host
        // address (fec0::2) to the host's [::1]: listen there on the same port.
        let listener6 = if ipv6 {
            match TcpListener::bind(("::1", address.port())) {
                Ok(listener6) => Some(listener6),
                Err(error) => {
                    log::debug!("{label}: no [::1]:{}: {error}", address.port());
                    None
                }
            }
        } else {
            None
        };
        let address6 = listener6.as_ref().and_then(|l| l.local_addr().ok());
        let shared = Arc::new(ListenerShared {
            label,
            tls: tls.clone(),
            server,
            failed_handshakes: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        });
        let mut started = Listener {
            address,
            address6,
            tls: tls.is_some(),
            shared,
            accept_threads: Vec::new(),
        };
        for listener in std::iter::once(listener).chain(listener6) {
            let accept_shared = Arc::clone(&started.shared);
            // On an error here, dropping `started` stops the threads already running.
            started.accept_threads.push(
                std::thread::Builder::new()
                    .name(format!("{label}-accept"))
                    .spawn(move || accept_loop(&listener, &accept_shared))
                    .with_context(|| format!("spawning the {label} accept thread"))?,
            );
        }
        Ok(started)
    }

    /// The address on 127.0.0.1.
    pub(crate) fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address on `[::1]`, if it listens there.
    pub(crate) fn address6(&self) -> Option<SocketAddr> {
        self.address6
    }

    /// `https` or `http`.
    pub(crate) fn scheme(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }

    /// TLS connections that ended before the handshake completed.
    pub(crate) fn failed_handshakes(&self) -> u64 {
        self.shared.failed_handshakes.load(Ordering::SeqCst)
    }
}

impl Drop for Listener {
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

fn accept_loop(listener: &TcpListener, shared: &Arc<ListenerShared>) {
    let label = shared.label;
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let shared = Arc::clone(shared);
        // Connection threads are detached: a stalled response must not hold up Drop.
        let spawned = std::thread::Builder::new()
            .name(format!("{label}-connection"))
            .spawn(move || {
                if let Err(error) = serve_connection(stream, &shared) {
                    log::debug!("{} connection: {error:#}", shared.label);
                }
            });
        if let Err(error) = spawned {
            log::warn!("spawning a {label} connection thread: {error}");
        }
    }
}

fn serve_connection(stream: TcpStream, shared: &ListenerShared) -> Result<()> {
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
    let mut response = Response {
        stream: reader.into_inner(),
        bytes_sent: 0,
        cut: false,
    };
    let result = shared.server.serve(request, &mut response);
    response.stream.close(!response.cut);
    result
}

/// The rustls configuration that presents `cert_chain_pem` (leaf first) with
/// `key_pem`.
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

/// One parsed request.
pub(crate) struct Request {
    pub(crate) method: String,
    /// The request target without its query string.
    pub(crate) path: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

impl Request {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

fn read_request(reader: &mut impl BufRead) -> Result<Request> {
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

/// One client connection, plain or TLS; the TLS handshake happens on the first read.
pub(crate) enum Connection {
    Plain(TcpStream),
    Tls(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Connection {
    /// Ends the response. `clean` sends TLS close_notify first; without it a TLS
    /// client sees the connection cut, as a dropped plain connection would be.
    fn close(&mut self, clean: bool) {
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

/// The response side of a connection: a head, then body bytes, counted.
pub(crate) struct Response {
    pub(crate) stream: Connection,
    /// Body bytes written so far.
    pub(crate) bytes_sent: u64,
    cut: bool,
}

impl Response {
    /// Ends the connection without TLS close_notify, as a server that died
    /// mid-response would.
    pub(crate) fn cut(&mut self) {
        self.cut = true;
    }

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

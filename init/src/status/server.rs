//! The read-only status endpoint (`imprint.status-port=`): `GET /status`
//! answers the status document as JSON, so an operator can
//! `curl http://<machine>:<port>/status` a machine that is stuck.
//!
//! `GET /` answers the same; `HEAD` gives the headers alone; any other
//! path is `404`, any other method `405` with `Allow: GET, HEAD`. Every
//! response closes its connection. A request head larger than
//! [`MAX_REQUEST_HEAD`] is refused (`431`), and a client that sends nothing
//! for [`CLIENT_TIMEOUT`] is dropped, so a stuck or hostile client cannot
//! wedge the server; at most [`MAX_CONNECTIONS`] are served at once.
//! Nothing the server is sent changes anything.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};

use super::SharedState;

/// The largest request head (request line and headers) read.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;

/// How long a client may take to send its request, or to take the answer.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections served at the same time; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 16;

/// A running status server; stops listening when dropped.
pub struct StatusServer {
    address: SocketAddr,
    stopping: Arc<AtomicBool>,
    accept_thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for StatusServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusServer")
            .field("address", &self.address)
            .finish()
    }
}

impl StatusServer {
    /// Listens on `0.0.0.0:port` (IPv4 only: the initramfs may have no
    /// IPv6) and serves `state`. Port 0 picks a free port; see
    /// [`local_addr`](Self::local_addr).
    pub fn start(port: u16, state: SharedState) -> Result<StatusServer> {
        let address = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
        let listener =
            TcpListener::bind(address).with_context(|| format!("binding status port {port}"))?;
        let address = listener
            .local_addr()
            .with_context(|| format!("reading the address of status port {port}"))?;
        let stopping = Arc::new(AtomicBool::new(false));
        let accept_stopping = Arc::clone(&stopping);
        let accept_thread = std::thread::Builder::new()
            .name("status-server".into())
            .spawn(move || accept_loop(&listener, &state, &accept_stopping))
            .context("starting the status server thread")?;
        Ok(StatusServer {
            address,
            stopping,
            accept_thread: Some(accept_thread),
        })
    }

    /// The address listened on (`0.0.0.0:<port>`).
    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wake the blocking accept so the thread sees the flag.
        let wake = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.address.port()));
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, state: &SharedState, stopping: &AtomicBool) {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stopping.load(Ordering::SeqCst) {
            break;
        }
        let Ok(stream) = stream else { continue };
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            continue;
        }
        let state = state.clone();
        let connection_active = Arc::clone(&active);
        let spawned = std::thread::Builder::new()
            .name("status-connection".into())
            .spawn(move || {
                if let Err(error) = serve(stream, &state) {
                    log::debug!("status server: {error:#}");
                }
                connection_active.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(error) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log::debug!("status server: starting a connection thread: {error}");
        }
    }
}

/// One answer: status line, extra headers, body (dropped for `HEAD`).
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    content_type: &'static str,
    allow: bool,
    body: Vec<u8>,
}

impl Answer {
    fn text(status: u16, text: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: format!("{text}\n").into_bytes(),
        }
    }
}

fn serve(mut stream: TcpStream, state: &SharedState) -> Result<()> {
    stream
        .set_read_timeout(Some(CLIENT_TIMEOUT))
        .context("setting a read timeout")?;
    stream
        .set_write_timeout(Some(CLIENT_TIMEOUT))
        .context("setting a write timeout")?;
    let head = read_head(&mut stream)?;
    let (answer, is_head) = match head {
        Head::Complete(head) => {
            let is_head = head.starts_with(b"HEAD ");
            (answer(&head, || state.document()), is_head)
        }
        Head::TooLarge => (Answer::text(431, "request head too large"), false),
    };
    let mut response = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nConnection: close\r\n",
        answer.status,
        reason(answer.status),
        answer.content_type,
        answer.body.len()
    )
    .into_bytes();
    if answer.allow {
        response.extend_from_slice(b"Allow: GET, HEAD\r\n");
    }
    response.extend_from_slice(b"\r\n");
    if !is_head {
        response.extend_from_slice(&answer.body);
    }
    stream
        .write_all(&response)
        .context("writing the status response")?;
    let _ = stream.shutdown(Shutdown::Write);
    // Closing with unread input (a body, an oversized head) would reset the
    // connection, and the client could lose the answer: read what is left,
    // a bounded amount for a bounded time, until the client closes.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = std::io::copy(&mut stream.take(1 << 16), &mut std::io::sink());
    Ok(())
}

enum Head {
    /// The bytes up to and including the blank line.
    Complete(Vec<u8>),
    TooLarge,
}

/// Reads until the blank line that ends the request head, at most
/// [`MAX_REQUEST_HEAD`] bytes; a body, if any, is ignored.
fn read_head(stream: &mut impl Read) -> Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut buffer = [0u8; 1024];
    loop {
        let count = stream.read(&mut buffer).context("reading the request")?;
        if count == 0 {
            anyhow::bail!("connection closed inside the request head");
        }
        head.extend_from_slice(&buffer[..count]);
        let end = head.windows(4).position(|window| window == b"\r\n\r\n");
        if end.map_or(head.len(), |end| end + 4) > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
        if let Some(end) = end {
            head.truncate(end + 4);
            return Ok(Head::Complete(head));
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Ok(Head::TooLarge);
        }
    }
}

/// What a request head gets; `document` is built only for a status request.
fn answer(head: &[u8], document: impl FnOnce() -> serde_json::Value) -> Answer {
    let line_end = head
        .windows(2)
        .position(|window| window == b"\r\n")
        .unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Answer::text(400, "malformed request line");
    };
    if !version.starts_with("HTTP/") || parts.next().is_some() {
        return Answer::text(400, "malformed request line");
    }
    if method != "GET" && method != "HEAD" {
        return Answer {
            allow: true,
            ..Answer::text(405, "read-only: only GET and HEAD")
        };
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/status" && path != "/" {
        return Answer::text(404, "not found; try GET /status");
    }
    let mut body = serde_json::to_vec_pretty(&document()).unwrap_or_default();
    body.push(b'\n');
    Answer {
        status: 200,
        content_type: "application/json",
        allow: false,
        body,
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{EventKind, Stage, Status, StatusOptions};
    use serde_json::json;

    fn request(server: &StatusServer, raw: &[u8]) -> (String, Vec<u8>) {
        let address = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            server.local_addr().port(),
        ));
        let mut stream = TcpStream::connect(address).unwrap();
        stream.write_all(raw).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        let split = reply
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("no end of the response head")
            + 4;
        (
            String::from_utf8(reply[..split].to_vec()).unwrap(),
            reply[split..].to_vec(),
        )
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().find_map(|line| {
            let (key, value) = line.split_once(": ")?;
            key.eq_ignore_ascii_case(name).then_some(value)
        })
    }

    #[test]
    fn answers_status_404_and_405_over_tcp() {
        let status = Status::new(&StatusOptions::default());
        status.emit(EventKind::Failed {
            stage: Stage::Write,
            error: "GET http://x/img: HTTP 404 Not Found".into(),
            offset: Some(0),
            attempt: None,
        });
        let server = StatusServer::start(0, status.shared_state()).unwrap();
        assert_ne!(server.local_addr().port(), 0);

        let (head, body) = request(&server, b"GET /status HTTP/1.1\r\nHost: m\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "content-type"), Some("application/json"));
        assert_eq!(header(&head, "connection"), Some("close"));
        assert_eq!(
            header(&head, "content-length"),
            Some(body.len().to_string().as_str())
        );
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(document, status.document());
        assert_eq!(document["state"], "failed");
        assert_eq!(
            document["error"]["error"],
            "GET http://x/img: HTTP 404 Not Found"
        );

        let (root_head, root_body) = request(&server, b"GET /?pretty HTTP/1.0\r\n\r\n");
        assert!(root_head.starts_with("HTTP/1.1 200 OK\r\n"), "{root_head}");
        assert_eq!(root_body, body);

        let (head_head, head_body) = request(&server, b"HEAD /status HTTP/1.1\r\n\r\n");
        assert!(head_head.starts_with("HTTP/1.1 200 OK\r\n"), "{head_head}");
        assert_eq!(
            header(&head_head, "content-length"),
            Some(body.len().to_string().as_str())
        );
        assert!(head_body.is_empty());

        let (missing, _) = request(&server, b"GET /metrics HTTP/1.1\r\n\r\n");
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let (post, _) = request(
            &server,
            b"POST /status HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}",
        );
        assert!(
            post.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"),
            "{post}"
        );
        assert_eq!(header(&post, "allow"), Some("GET, HEAD"));

        let (garbage, _) = request(&server, b"hello\r\n\r\n");
        assert!(
            garbage.starts_with("HTTP/1.1 400 Bad Request\r\n"),
            "{garbage}"
        );

        let mut huge = b"GET /status HTTP/1.1\r\nX-Pad: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_REQUEST_HEAD));
        huge.extend_from_slice(b"\r\n\r\n");
        let (too_large, _) = request(&server, &huge);
        assert!(too_large.starts_with("HTTP/1.1 431 "), "{too_large}");
    }

    #[test]
    fn a_silent_client_does_not_block_others() {
        let status = Status::new(&StatusOptions::default());
        let server = StatusServer::start(0, status.shared_state()).unwrap();
        let address = SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::LOCALHOST,
            server.local_addr().port(),
        ));
        // Connected, half a request line, then nothing.
        let mut silent = TcpStream::connect(address).unwrap();
        silent.write_all(b"GET /sta").unwrap();
        let (head, body) = request(&server, b"GET /status HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        let document: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(document["state"], json!("running"));
    }

    #[test]
    fn request_lines_are_parsed_strictly() {
        let doc = || json!({"x": 1});
        assert_eq!(answer(b"GET /status HTTP/1.1\r\n\r\n", doc).status, 200);
        assert_eq!(answer(b"GET /status?x=1 HTTP/1.1\r\n\r\n", doc).status, 200);
        assert_eq!(answer(b"GET /status/ HTTP/1.1\r\n\r\n", doc).status, 404);
        assert_eq!(answer(b"GET /status\r\n\r\n", doc).status, 400);
        assert_eq!(answer(b"GET /status HTTP/1.1 x\r\n\r\n", doc).status, 400);
        assert_eq!(answer(b"GET /status FTP/1\r\n\r\n", doc).status, 400);
        let delete = answer(b"DELETE /status HTTP/1.1\r\n\r\n", doc);
        assert_eq!((delete.status, delete.allow), (405, true));
        let ok = answer(b"GET / HTTP/1.1\r\n\r\n", doc);
        assert_eq!(ok.content_type, "application/json");
        assert_eq!(ok.body, b"{\n  \"x\": 1\n}\n");
    }
}

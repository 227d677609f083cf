use std::io::{Read, Write};
use std::net::TcpStream;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::*;

/// What a TLS client got: the raw response bytes, and how the stream ended.
struct Exchange {
    raw: Vec<u8>,
    /// `None` after close_notify, else the read error that ended the stream.
    end_error: Option<std::io::ErrorKind>,
}

impl Exchange {
    fn status(&self) -> u16 {
        let text = String::from_utf8_lossy(&self.raw);
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn body(&self) -> &[u8] {
        let split = self
            .raw
            .windows(4)
            .position(|window| window == b"\r\n\r\n")
            .expect("no header end");
        &self.raw[split + 4..]
    }
}

fn client_config(ca_pem: &str) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn tls_get(
    server: &FixtureServer,
    ca_pem: &str,
    path: &str,
    extra_headers: &[&str],
) -> std::io::Result<Exchange> {
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let connection = ClientConnection::new(client_config(ca_pem), name).unwrap();
    let socket = TcpStream::connect(("127.0.0.1", server.port()))?;
    let mut stream = StreamOwned::new(connection, socket);
    let mut text = format!("GET {path} HTTP/1.1\r\nHost: test\r\n");
    for header in extra_headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    stream.write_all(text.as_bytes())?;
    let mut raw = Vec::new();
    let mut buffer = [0u8; 16 * 1024];
    let end_error = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break None,
            Ok(count) => raw.extend_from_slice(&buffer[..count]),
            Err(error) if raw.is_empty() => return Err(error),
            Err(error) => break Some(error.kind()),
        }
    };
    Ok(Exchange { raw, end_error })
}

fn content(length: u32) -> Vec<u8> {
    (0..length)
        .map(|index| u8::try_from(index % 251).unwrap())
        .collect()
}

fn tls_server(ca: &TestCa) -> FixtureServer {
    let cert = ca.issue_for_fixture().unwrap();
    FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap()
}

#[test]
fn urls_say_https() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let server = tls_server(&ca);
    let port = server.port();
    assert_eq!(
        server.url("x.img"),
        format!("https://127.0.0.1:{port}/x.img")
    );
    assert_eq!(
        server.guest_url("/x.img"),
        format!("https://10.0.2.2:{port}/x.img")
    );
    let plain = FixtureServer::start().unwrap();
    assert!(plain.url("x").starts_with("http://127.0.0.1:"));
}

#[test]
fn serves_whole_file_and_ranges_over_tls() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let server = tls_server(&ca);
    // Larger than a TLS record, so the body spans many.
    let data = content(200_000);
    server.add_file("img", data.clone());

    let whole = tls_get(&server, ca.cert_pem(), "/img", &[]).unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.body(), data.as_slice());
    assert_eq!(
        whole.end_error, None,
        "a complete response ends with close_notify"
    );

    let part = tls_get(&server, ca.cert_pem(), "/img", &["Range: bytes=100000-"]).unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.body(), &data[100_000..]);

    let log = server.requests();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(log[1].bytes_sent, 100_000);
}

#[test]
fn drop_after_cuts_the_tls_stream_without_close_notify() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let server = tls_server(&ca);
    let data = content(100_000);
    server.add_file("img", data.clone());
    server.push_behaviors("img", [Behavior::DropAfter(30_000)]);
    let cut = tls_get(&server, ca.cert_pem(), "/img", &[]).unwrap();
    assert_eq!(cut.status(), 200);
    assert_eq!(cut.body(), &data[..30_000]);
    assert_eq!(cut.end_error, Some(std::io::ErrorKind::UnexpectedEof));
    let status = tls_get(&server, ca.cert_pem(), "/img", &[]).unwrap();
    assert_eq!(status.body(), data.as_slice());
    assert_eq!(server.failed_handshakes(), 0);
}

#[test]
fn client_trusting_another_ca_is_refused_before_any_request() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let other = TestCa::new("some other CA").unwrap();
    let server = tls_server(&ca);
    server.add_file("img", content(10));
    let error = tls_get(&server, other.cert_pem(), "/img", &[])
        .err()
        .expect("the handshake must fail");
    assert!(
        error.to_string().contains("UnknownIssuer"),
        "unexpected error: {error}"
    );
    assert!(server.requests().is_empty());
    wait_for_failed_handshakes(&server, 1);
}

/// The server notices a refused handshake on its own thread, a moment after the client.
fn wait_for_failed_handshakes(server: &FixtureServer, count: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.failed_handshakes() < count && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.failed_handshakes(), count);
}

#[test]
fn certificate_for_other_names_is_refused() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let cert = ca.issue(&["192.0.2.1"]).unwrap();
    let server = FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
    server.add_file("img", content(10));
    let error = tls_get(&server, ca.cert_pem(), "/img", &[])
        .err()
        .expect("the handshake must fail");
    assert!(
        error
            .to_string()
            .contains("not valid for name \"127.0.0.1\""),
        "{error}"
    );
}

#[test]
fn bad_pem_is_a_clear_error() {
    let ca = TestCa::new("imprint test CA").unwrap();
    let cert = ca.issue_for_fixture().unwrap();
    let message = format!(
        "{:#}",
        FixtureServer::start_tls("not a certificate", &cert.key_pem).unwrap_err()
    );
    assert_eq!(
        message,
        "reading the server certificate chain: no certificates found"
    );
    let message = format!(
        "{:#}",
        FixtureServer::start_tls(&cert.chain_pem, "no key").unwrap_err()
    );
    assert!(
        message.starts_with("reading the server private key"),
        "{message}"
    );
}

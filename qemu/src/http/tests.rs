use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use super::*;

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn request(server: &FixtureServer, method: &str, path: &str, extra_headers: &[&str]) -> Reply {
    request_with_body(server, method, path, extra_headers, b"")
}

/// Sends `body` verbatim after the headers (the caller frames it).
fn request_with_body(
    server: &FixtureServer,
    method: &str,
    path: &str,
    extra_headers: &[&str],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for header in extra_headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str("\r\n");
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("no header end");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .map(|line| {
            let (name, value) = line.split_once(": ").unwrap();
            (name.to_owned(), value.to_owned())
        })
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn get(server: &FixtureServer, path: &str, extra_headers: &[&str]) -> Reply {
    request(server, "GET", path, extra_headers)
}

fn content() -> Vec<u8> {
    (0..200_000u32)
        .map(|index| u8::try_from(index % 251).unwrap())
        .collect()
}

fn server_with_content() -> FixtureServer {
    let server = FixtureServer::start().unwrap();
    server.add_file("image.raw", content());
    server
}

#[test]
fn full_get_serves_content_with_validators() {
    let server = server_with_content();
    let reply = get(&server, "/image.raw", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, content());
    assert_eq!(reply.header("Content-Length"), Some("200000"));
    assert_eq!(reply.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(reply.header("ETag").unwrap().starts_with('"'));
    assert!(reply.header("Last-Modified").unwrap().ends_with(" GMT"));
    assert!(
        server
            .url("image.raw")
            .ends_with(&format!(":{}/image.raw", server.port()))
    );
    assert_eq!(
        server.guest_url("/image.raw"),
        format!("http://10.0.2.2:{}/image.raw", server.port())
    );
}

#[test]
fn head_sends_headers_only() {
    let server = server_with_content();
    let reply = request(&server, "HEAD", "/image.raw", &[]);
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("Content-Length"), Some("200000"));
    assert!(reply.body.is_empty());
    assert_eq!(server.requests()[0].bytes_sent, 0);
}

#[test]
fn range_forms() {
    let server = server_with_content();
    let reply = get(&server, "/image.raw", &["Range: bytes=10-19"]);
    assert_eq!(reply.status, 206);
    assert_eq!(reply.body, content()[10..20]);
    assert_eq!(reply.header("Content-Range"), Some("bytes 10-19/200000"));
    assert_eq!(reply.header("Content-Length"), Some("10"));

    let reply = get(&server, "/image.raw", &["Range: bytes=199990-"]);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (206, &content()[199_990..])
    );

    let reply = get(&server, "/image.raw", &["Range: bytes=-5"]);
    assert_eq!(reply.body, content()[199_995..]);
    assert_eq!(
        reply.header("Content-Range"),
        Some("bytes 199995-199999/200000")
    );

    // An end past the content is clamped, a suffix longer than it is the whole.
    let reply = get(&server, "/image.raw", &["Range: bytes=199999-300000"]);
    assert_eq!((reply.status, reply.body.len()), (206, 1));
    let reply = get(&server, "/image.raw", &["Range: bytes=-300000"]);
    assert_eq!((reply.status, reply.body.len()), (206, 200_000));

    // Multiple ranges and nonsense are ignored.
    assert_eq!(
        get(&server, "/image.raw", &["Range: bytes=0-1,5-6"]).status,
        200
    );
    assert_eq!(
        get(&server, "/image.raw", &["Range: bytes=9-3"]).status,
        200
    );
    assert_eq!(
        get(&server, "/image.raw", &["Range: pages=1-2"]).status,
        200
    );
}

#[test]
fn unsatisfiable_range_is_416() {
    let server = server_with_content();
    for range in [
        "Range: bytes=200000-",
        "Range: bytes=300000-300001",
        "Range: bytes=-0",
    ] {
        let reply = get(&server, "/image.raw", &[range]);
        assert_eq!(reply.status, 416, "{range}");
        assert_eq!(reply.header("Content-Range"), Some("bytes */200000"));
        assert!(reply.body.is_empty());
    }
}

#[test]
fn if_range_with_a_stale_validator_gets_everything() {
    let server = server_with_content();
    let etag = get(&server, "/image.raw", &[])
        .header("ETag")
        .unwrap()
        .to_owned();
    let fresh = get(
        &server,
        "/image.raw",
        &["Range: bytes=5-", &format!("If-Range: {etag}")],
    );
    assert_eq!(fresh.status, 206);
    let stale = get(
        &server,
        "/image.raw",
        &["Range: bytes=5-", "If-Range: \"old\""],
    );
    assert_eq!((stale.status, stale.body.len()), (200, 200_000));
}

#[test]
fn unknown_path_is_404_and_other_methods_405() {
    let server = server_with_content();
    assert_eq!(get(&server, "/missing", &[]).status, 404);
    let delete = request(&server, "DELETE", "/image.raw", &[]);
    assert_eq!(delete.status, 405);
    assert_eq!(delete.header("Allow"), Some("GET, HEAD, POST, PUT"));
    server.remove_file("/image.raw");
    assert_eq!(get(&server, "/image.raw", &[]).status, 404);
}

#[test]
fn serves_files_from_disk_with_query_strings_ignored() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("image");
    std::fs::write(&path, content()).unwrap();
    let server = FixtureServer::start().unwrap();
    server.add_file_from_disk("/disk/image", &path).unwrap();
    assert_eq!(get(&server, "/disk/image?x=1", &[]).body, content());
    let reply = get(&server, "/disk/image", &["Range: bytes=100000-100009"]);
    assert_eq!(reply.body, content()[100_000..100_010]);
    assert!(server.add_file_from_disk("/dir", directory.path()).is_err());
}

#[test]
fn request_log_records_each_request() {
    let server = server_with_content();
    get(&server, "/image.raw", &["Range: bytes=0-9"]);
    get(&server, "/nothing", &[]);
    let log = server.requests();
    assert_eq!(
        log[0],
        RequestRecord {
            method: "GET".into(),
            path: "/image.raw".into(),
            range: Some("bytes=0-9".into()),
            status: 206,
            bytes_sent: 10,
            behavior: Behavior::Normal,
            body: Vec::new(),
            authorization: None,
        }
    );
    assert_eq!(
        (log[1].path.as_str(), log[1].status, log[1].range.clone()),
        ("/nothing", 404, None)
    );
    server.clear_requests();
    assert!(server.requests().is_empty());
}

#[test]
fn posts_are_accepted_and_their_bodies_logged() {
    let server = FixtureServer::start().unwrap();
    let body = br#"{"event":"started"}"#;
    let length = format!("Content-Length: {}", body.len());
    let reply = request_with_body(&server, "POST", "/hook", &[length.as_str()], body);
    assert_eq!((reply.status, reply.body.len()), (204, 0));
    let chunked = request_with_body(
        &server,
        "PUT",
        "/hook?x=1",
        &["Transfer-Encoding: chunked"],
        b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    );
    assert_eq!(chunked.status, 204);
    let log = server.requests_at_least(2, Duration::from_secs(5));
    assert_eq!(
        (log[0].method.as_str(), log[0].path.as_str(), log[0].status),
        ("POST", "/hook", 204)
    );
    assert_eq!(log[0].body, body);
    assert_eq!(
        (log[1].method.as_str(), log[1].path.as_str()),
        ("PUT", "/hook")
    );
    assert_eq!(log[1].body, b"hello, world");
    // A GET's record has no body.
    server.add_file("f", "x");
    get(&server, "/f", &[]);
    assert!(
        server.requests_at_least(3, Duration::from_secs(5))[2]
            .body
            .is_empty()
    );
}

#[test]
fn queued_statuses_apply_to_posts() {
    let server = FixtureServer::start().unwrap();
    server.push_behaviors("hook", [Behavior::Status(500)]);
    let post = |body: &[u8]| {
        let length = format!("Content-Length: {}", body.len());
        request_with_body(&server, "POST", "/hook", &[length.as_str()], body).status
    };
    assert_eq!(post(b"first"), 500);
    assert_eq!(post(b"second"), 204);
    let log = server.requests_at_least(2, Duration::from_secs(5));
    assert_eq!(
        (log[0].status, log[0].body.as_slice()),
        (500, &b"first"[..])
    );
    assert_eq!(log[0].behavior, Behavior::Status(500));
    assert_eq!(
        (log[1].status, log[1].body.as_slice()),
        (204, &b"second"[..])
    );
}

#[test]
fn behaviors_are_consumed_one_per_request() {
    let server = server_with_content();
    server.push_behaviors("image.raw", [Behavior::Status(503), Behavior::Status(500)]);
    assert_eq!(get(&server, "/image.raw", &[]).status, 503);
    assert_eq!(get(&server, "/image.raw", &[]).status, 500);
    assert_eq!(get(&server, "/image.raw", &[]).status, 200);
    let behaviors: Vec<_> = server
        .requests()
        .into_iter()
        .map(|record| record.behavior)
        .collect();
    assert_eq!(
        behaviors,
        [
            Behavior::Status(503),
            Behavior::Status(500),
            Behavior::Normal
        ]
    );
}

#[test]
fn status_applies_even_to_unknown_paths() {
    let server = FixtureServer::start().unwrap();
    server.push_behaviors("/x", [Behavior::Status(401)]);
    assert_eq!(get(&server, "/x", &[]).status, 401);
}

#[test]
fn drop_after_truncates_the_body() {
    let server = server_with_content();
    server.push_behaviors("/image.raw", [Behavior::DropAfter(1000)]);
    let reply = get(&server, "/image.raw", &[]);
    assert_eq!(reply.header("Content-Length"), Some("200000"));
    assert_eq!(reply.body, content()[..1000]);
    assert_eq!(server.requests()[0].bytes_sent, 1000);
}

#[test]
fn drop_after_counts_from_the_range_start() {
    let server = server_with_content();
    server.push_behaviors("/image.raw", [Behavior::DropAfter(10)]);
    let reply = get(&server, "/image.raw", &["Range: bytes=500-"]);
    assert_eq!(
        (reply.status, reply.body.as_slice()),
        (206, &content()[500..510])
    );
}

#[test]
fn stall_after_pauses_then_completes() {
    let server = server_with_content();
    server.push_behaviors(
        "/image.raw",
        [Behavior::StallAfter(70_000, Duration::from_millis(300))],
    );
    let started = Instant::now();
    let reply = get(&server, "/image.raw", &[]);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.body, content());
}

#[test]
fn stall_is_visible_to_a_client_read_timeout() {
    let server = server_with_content();
    server.push_behaviors(
        "/image.raw",
        [Behavior::StallAfter(5, Duration::from_secs(3))],
    );
    let mut stream = TcpStream::connect(("127.0.0.1", server.port())).unwrap();
    stream
        .write_all(b"GET /image.raw HTTP/1.1\r\n\r\n")
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut received = Vec::new();
    let error = stream.read_to_end(&mut received).unwrap_err();
    assert!(matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
    assert!(
        received.ends_with(&content()[..5]),
        "headers and 5 bytes arrive before the stall"
    );
}

#[test]
fn ignore_range_sends_everything() {
    let server = server_with_content();
    server.push_behaviors("/image.raw", [Behavior::IgnoreRange]);
    let reply = get(&server, "/image.raw", &["Range: bytes=10-19"]);
    assert_eq!((reply.status, reply.body.len()), (200, 200_000));
    assert_eq!(reply.header("Content-Range"), None);
}

#[test]
fn wrong_content_length_is_declared_but_real_body_sent() {
    let server = server_with_content();
    server.push_behaviors("/image.raw", [Behavior::WrongContentLength(300_000)]);
    let reply = get(&server, "/image.raw", &[]);
    assert_eq!(reply.header("Content-Length"), Some("300000"));
    assert_eq!(reply.body, content());
}

#[test]
fn change_etag_changes_validators_for_good() {
    let server = server_with_content();
    let before = get(&server, "/image.raw", &[]);
    server.push_behaviors("/image.raw", [Behavior::ChangeEtag]);
    let changed = get(&server, "/image.raw", &[]);
    let after = get(&server, "/image.raw", &[]);
    assert_ne!(before.header("ETag"), changed.header("ETag"));
    assert_ne!(
        before.header("Last-Modified"),
        changed.header("Last-Modified")
    );
    assert_eq!(changed.header("ETag"), after.header("ETag"));
    let old_etag = before.header("ETag").unwrap();
    let resumed = get(
        &server,
        "/image.raw",
        &["Range: bytes=5-", &format!("If-Range: {old_etag}")],
    );
    assert_eq!(resumed.status, 200);
}

#[test]
fn garbage_replaces_the_content() {
    let server = server_with_content();
    server.push_behaviors(
        "/image.raw",
        [Behavior::Garbage(4096), Behavior::Garbage(4096)],
    );
    let first = get(&server, "/image.raw", &[]);
    assert_eq!((first.status, first.body.len()), (200, 4096));
    assert_eq!(first.header("Content-Length"), Some("4096"));
    assert_ne!(first.body, content()[..4096]);
    assert!(first.body.iter().any(|&byte| byte != first.body[0]));
    assert_eq!(
        get(&server, "/image.raw", &[]).body,
        first.body,
        "noise is reproducible"
    );
}

#[test]
fn content_can_be_replaced() {
    let server = server_with_content();
    let before = get(&server, "/image.raw", &[]);
    server.add_file("/image.raw", b"new".to_vec());
    let after = get(&server, "/image.raw", &[]);
    assert_eq!(after.body, b"new");
    assert_ne!(before.header("ETag"), after.header("ETag"));
}

#[test]
fn empty_file_serves_and_rejects_ranges() {
    let server = FixtureServer::start().unwrap();
    server.add_file("/empty", Vec::new());
    let reply = get(&server, "/empty", &[]);
    assert_eq!(
        (reply.status, reply.header("Content-Length")),
        (200, Some("0"))
    );
    assert_eq!(get(&server, "/empty", &["Range: bytes=0-"]).status, 416);
}

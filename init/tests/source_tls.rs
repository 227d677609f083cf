//! Host integration: `imprint deploy` from an HTTPS fixture server whose certificate
//! comes from a CA made in the test, so trust is explicit and nothing is public.

mod common;

use common::{image, imprint, result_line};
use std::path::{Path, PathBuf};
use std::process::Output;

use imprint_qemu::http::{FixtureServer, TestCa};

struct Setup {
    ca: TestCa,
    server: FixtureServer,
    data: Vec<u8>,
    dir: tempfile::TempDir,
    /// Holds `before` until a deploy succeeds.
    target: PathBuf,
    before: Vec<u8>,
}

/// An HTTPS server with a 3 MiB image, signed by a fresh CA, and a target file
/// holding other bytes.
fn setup() -> Setup {
    let ca = TestCa::new("imprint test CA").unwrap();
    let cert = ca.issue_for_fixture().unwrap();
    let server = FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
    let data = image(3 << 20 | 77, 1);
    server.add_file("golden.raw", data.clone());
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    let before = vec![0xA5; data.len()];
    std::fs::write(&target, &before).unwrap();
    Setup {
        ca,
        server,
        data,
        dir,
        target,
        before,
    }
}

impl Setup {
    fn write_pem(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    }

    fn deploy(&self, extra: &[&str]) -> Output {
        let url = self.server.url("golden.raw");
        let mut args = vec!["deploy", "--url", &url, "--disk", path_str(&self.target)];
        args.extend_from_slice(extra);
        imprint(&args)
    }

    fn assert_deployed(&self, out: &Output) {
        assert!(
            out.status.success(),
            "{}\n{}",
            result_line(out),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(result_line(out).starts_with("IMPRINT-RESULT: ok "));
        assert!(std::fs::read(&self.target).unwrap() == self.data);
    }

    fn assert_untouched(&self) {
        assert_eq!(std::fs::read(&self.target).unwrap(), self.before);
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Refused handshakes are counted on the server's connection thread, a moment
/// after the client gave up.
fn wait_for_failed_handshakes(server: &FixtureServer, at_least: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while server.failed_handshakes() < at_least && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    server.failed_handshakes()
}

#[test]
fn deploys_over_https_with_the_ca_given_by_path() {
    let setup = setup();
    let ca = setup.write_pem("ca.pem", setup.ca.cert_pem());
    let out = setup.deploy(&["--ca", path_str(&ca)]);
    setup.assert_deployed(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("verification is OFF"), "{stderr}");
}

#[test]
fn unknown_issuer_fails_clearly_without_touching_the_disk() {
    let setup = setup();
    let out = setup.deploy(&[]);
    assert_eq!(out.status.code(), Some(1));
    let line = result_line(&out);
    let url = setup.server.url("golden.raw");
    assert_eq!(
        line,
        format!(
            "IMPRINT-RESULT: error: GET {url}: invalid certificate: UnknownIssuer; \
             pass the CA with imprint.ca="
        )
    );
    setup.assert_untouched();
    assert!(setup.server.requests().is_empty());
    // A certificate that does not verify will not verify on a retry either.
    assert_eq!(wait_for_failed_handshakes(&setup.server, 1), 1);
}

#[test]
fn a_different_ca_is_refused() {
    let setup = setup();
    let other = TestCa::new("someone else's CA").unwrap();
    let wrong = setup.write_pem("other.pem", other.cert_pem());
    let out = setup.deploy(&["--ca", path_str(&wrong)]);
    assert_eq!(out.status.code(), Some(1));
    let url = setup.server.url("golden.raw");
    assert_eq!(
        result_line(&out),
        format!(
            "IMPRINT-RESULT: error: GET {url}: invalid certificate: UnknownIssuer; \
             not signed by {}",
            wrong.display()
        )
    );
    setup.assert_untouched();
}

#[test]
fn a_bundle_without_certificates_is_named() {
    let setup = setup();
    let empty = setup.write_pem("empty.pem", "not a certificate\n");
    let out = setup.deploy(&["--ca", path_str(&empty)]);
    assert_eq!(out.status.code(), Some(1));
    let line = result_line(&out);
    assert!(
        line.ends_with(&format!(
            "reading CA bundle {}: no certificates found",
            empty.display()
        )),
        "{line}"
    );
    setup.assert_untouched();
}

#[test]
fn insecure_deploys_and_warns() {
    let setup = setup();
    let out = setup.deploy(&["--insecure", "1"]);
    setup.assert_deployed(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "TLS certificate verification is OFF (imprint.insecure=1): \
             anyone on the network can substitute the image"
        ),
        "{stderr}"
    );
}

#[test]
fn ca_fetched_over_http() {
    let setup = setup();
    let plain = FixtureServer::start().unwrap();
    plain.add_file("ca.pem", setup.ca.cert_pem());
    let out = setup.deploy(&["--ca", &plain.url("ca.pem")]);
    setup.assert_deployed(&out);
    // Fetched once, however many connections the deploy made.
    let wait = std::time::Duration::from_millis(500);
    assert_eq!(plain.requests_at_least(2, wait).len(), 1);
    assert!(!setup.server.requests_at_least(1, wait).is_empty());
}

#[test]
fn ca_fetched_over_https_is_verified_by_the_default_roots() {
    // The bundle's own server is only trusted through the default roots, which do
    // not include the test CA: trust cannot bootstrap itself.
    let setup = setup();
    setup.server.add_file("ca.pem", setup.ca.cert_pem());
    let ca_url = setup.server.url("ca.pem");
    let out = setup.deploy(&["--ca", &ca_url]);
    assert_eq!(out.status.code(), Some(1));
    let line = result_line(&out);
    assert!(
        line.contains(&format!(
            "fetching the CA bundle (verified by the default roots): GET {ca_url}: \
             invalid certificate: UnknownIssuer"
        )),
        "{line}"
    );
    setup.assert_untouched();
}

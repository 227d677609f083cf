//! Host integration: `imprint deploy --url oci://…` against the real Docker
//! Distribution registry ([`imprint_qemu::registry`]: Debian's
//! `docker-registry`, distribution 2.8, with TLS from a CA made in the test
//! and htpasswd or token auth). The image is pushed through the registry's
//! own HTTP API as `oras push` stores a file, and deployed by tag and by
//! digest, through a relay that cuts the connection mid-blob, and with a
//! wrong digest, a missing tag and wrong credentials, which fail with the
//! target untouched.
//!
//! Skipped, loudly, only where `docker-registry`, `htpasswd` or `openssl`
//! is missing; `scripts/setup` installs them.

mod common;

use common::{hex, image, imprint, result_line};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use imprint_qemu::http::TestCa;
use imprint_qemu::registry::{
    Auth, PASSWORD, REPO, Registry, USER, basic, digest, sign_token, tools_present,
};

const MIB: usize = 1 << 20;

fn sha256(data: &[u8]) -> String {
    digest(data)
}

/// The registry with htpasswd auth, from a fresh CA.
fn htpasswd_registry() -> Registry {
    Registry::start(&TestCa::new("imprint OCI test CA").unwrap(), Auth::Htpasswd).unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("zstd")
        .args(["-c", "-q", "-3"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running zstd (scripts/setup installs it)");
    let mut stdin = child.stdin.take().unwrap();
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    writer.join().unwrap();
    assert!(child.wait().unwrap().success());
    out
}

/// A target file holding other bytes.
struct Target {
    path: PathBuf,
    before: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Target {
    fn new(len: usize) -> Target {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.img");
        let before = vec![0x5A; len];
        std::fs::write(&path, &before).unwrap();
        Target {
            path,
            before,
            _dir: dir,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn assert_untouched(&self) {
        assert!(self.bytes() == self.before, "the target was written");
    }
}

fn deploy(url: &str, ca: &Path, target: &Target, extra: &[&str]) -> Output {
    let mut args = vec![
        "deploy",
        "--url",
        url,
        "--disk",
        target.path.to_str().unwrap(),
        "--ca",
        ca.to_str().unwrap(),
        "--connect-timeout",
        "10s",
        "--stall-timeout",
        "10s",
        "--retry-timeout",
        "60s",
    ];
    args.extend_from_slice(extra);
    imprint(&args)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn assert_ok(output: &Output, data: &[u8], target: &Target) -> String {
    let line = result_line(output);
    assert!(
        output.status.success(),
        "{line}\nstderr: {}",
        stderr(output)
    );
    assert!(
        line.starts_with(&format!(
            "IMPRINT-RESULT: ok bytes={} sha256={} ",
            data.len(),
            hex(data)
        )),
        "{line}"
    );
    assert!(target.bytes()[..data.len()] == *data, "the target differs");
    line
}

fn assert_error(output: &Output) -> String {
    let line = result_line(output);
    assert_eq!(output.status.code(), Some(1), "{line}");
    line.strip_prefix("IMPRINT-RESULT: error: ")
        .unwrap_or_else(|| panic!("not an error: {line}"))
        .to_owned()
}

const CREDENTIALS: [&str; 4] = ["--oci-username", USER, "--oci-password", PASSWORD];

#[test]
fn deploys_an_oras_artifact_by_tag_and_by_digest_from_a_real_registry() {
    if !tools_present() {
        return;
    }
    let registry = htpasswd_registry();
    let data = image(6 * MIB + 4096, 7);
    let served = zstd(&data);
    let (manifest, layer) = registry
        .push_artifact("v1", "golden.raw.zst", &served)
        .unwrap();
    let by_tag = format!("oci://127.0.0.1:{}/{REPO}:v1", registry.port);
    let pinned = format!("oci://127.0.0.1:{}/{REPO}@{manifest}", registry.port);

    let target = Target::new(8 * MIB);
    let events = imprint_qemu::http::FixtureServer::start().unwrap();
    let report = events.url("events");
    let mut extra = CREDENTIALS.to_vec();
    extra.extend(["--report", &report]);
    let output = deploy(&by_tag, &registry.ca_path, &target, &extra);
    let line = assert_ok(&output, &data, &target);
    // The `verified` event pins the image too; no event holds the password.
    let posted: Vec<String> = events
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert!(
        posted
            .iter()
            .any(|body| body.contains(&format!("\"image_digest\":\"{pinned}\""))),
        "{posted:?}"
    );
    assert!(posted.iter().all(|body| !body.contains(PASSWORD)));
    // The layer digest was the image checksum, and the tag is pinned.
    assert!(line.contains(" format=zst "), "{line}");
    assert!(line.contains(" verified=sha256 "), "{line}");
    assert!(line.ends_with(&format!(" image-digest={pinned}")), "{line}");
    let log = stderr(&output);
    assert!(
        log.contains(&format!("{by_tag} resolved to {pinned} (layer {layer}")),
        "{log}"
    );
    assert!(!log.contains(PASSWORD), "the password was logged: {log}");

    let target = Target::new(8 * MIB);
    let output = deploy(&pinned, &registry.ca_path, &target, &CREDENTIALS);
    let line = assert_ok(&output, &data, &target);
    assert!(line.ends_with(&format!(" image-digest={pinned}")), "{line}");

    // A checksum given by the user must agree with the layer's digest.
    let target = Target::new(8 * MIB);
    let wrong = sha256(b"another image");
    let mut extra = CREDENTIALS.to_vec();
    extra.extend(["--checksum", &wrong]);
    let output = deploy(&by_tag, &registry.ca_path, &target, &extra);
    let error = assert_error(&output);
    assert!(
        error.contains(&format!("the registry's layer digest is {layer}")),
        "{error}"
    );
    target.assert_untouched();
}

#[test]
fn wrong_digests_missing_tags_and_credentials_fail_with_the_target_untouched() {
    if !tools_present() {
        return;
    }
    let registry = htpasswd_registry();
    let data = image(MIB, 3);
    registry.push_artifact("v1", "golden.raw", &data).unwrap();
    let base = format!("oci://127.0.0.1:{}/{REPO}", registry.port);

    let wrong = format!("{base}@{}", sha256(b"no such manifest"));
    let target = Target::new(2 * MIB);
    let error = assert_error(&deploy(&wrong, &registry.ca_path, &target, &CREDENTIALS));
    assert!(error.contains("/manifests/sha256:"), "{error}");
    assert!(error.contains("HTTP 404"), "{error}");
    assert!(error.contains("MANIFEST_UNKNOWN"), "{error}");
    target.assert_untouched();

    let missing = format!("{base}:nope");
    let target = Target::new(2 * MIB);
    let error = assert_error(&deploy(&missing, &registry.ca_path, &target, &CREDENTIALS));
    assert!(error.contains("/manifests/nope: HTTP 404"), "{error}");
    assert!(error.contains("MANIFEST_UNKNOWN"), "{error}");
    target.assert_untouched();

    let target = Target::new(2 * MIB);
    let output = deploy(
        &format!("{base}:v1"),
        &registry.ca_path,
        &target,
        &["--oci-username", USER, "--oci-password", "not-the-password"],
    );
    let error = assert_error(&output);
    assert!(
        error.contains("refused imprint.oci-username=deploy"),
        "{error}"
    );
    assert!(!stderr(&output).contains("not-the-password"));
    target.assert_untouched();

    let target = Target::new(2 * MIB);
    let error = assert_error(&deploy(
        &format!("{base}:v1"),
        &registry.ca_path,
        &target,
        &[],
    ));
    assert!(error.contains("HTTP 401"), "{error}");
    assert!(error.contains("set imprint.oci-username="), "{error}");
    target.assert_untouched();
}

/// Forwards connections to `upstream`, and cuts the first one that has
/// carried `cut_after` bytes from the server, once.
struct CuttingRelay {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl CuttingRelay {
    fn start(upstream: u16, cut_after: u64) -> CuttingRelay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let cut_flag = Arc::clone(&cut);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { return };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let cut = Arc::clone(&cut_flag);
                let (mut c_read, mut s_write) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c_read, &mut s_write);
                    let _ = s_write.shutdown(std::net::Shutdown::Write);
                });
                std::thread::spawn(move || {
                    let (mut server, mut client) = (server, client);
                    let mut sent = 0u64;
                    let mut buf = vec![0u8; 16 << 10];
                    while let Ok(n) = server.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        sent += n as u64;
                        if sent > cut_after && !cut.swap(true, Ordering::SeqCst) {
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            let _ = server.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        if client.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        CuttingRelay { port, cut }
    }
}

#[test]
fn a_connection_cut_mid_blob_resumes_against_the_real_registry() {
    if !tools_present() {
        return;
    }
    let registry = htpasswd_registry();
    let data = image(8 * MIB, 11);
    let served = zstd(&data);
    assert!(served.len() > 2 * MIB, "the blob is too small to cut");
    let (manifest, _) = registry
        .push_artifact("v2", "golden.raw.zst", &served)
        .unwrap();
    let relay = CuttingRelay::start(registry.port, MIB as u64);
    let url = format!("oci://127.0.0.1:{}/{REPO}:v2", relay.port);
    let target = Target::new(10 * MIB);
    let output = deploy(&url, &registry.ca_path, &target, &CREDENTIALS);
    let line = assert_ok(&output, &data, &target);
    assert!(relay.cut.load(Ordering::SeqCst), "the relay never cut");
    assert!(line.contains(" resumes=1 "), "{line}\n{}", stderr(&output));
    assert!(line.contains(" verified=sha256 "), "{line}");
    assert!(
        line.ends_with(&format!(
            " image-digest=oci://127.0.0.1:{}/{REPO}@{manifest}",
            relay.port
        )),
        "{line}"
    );
    // The resume was a Range request the registry answered with 206.
    let log = registry.log();
    assert!(
        log.contains("http.response.status=206"),
        "no 206 in the registry's log:\n{log}"
    );
}

/// distribution's token access controller: the registry answers with a
/// `Bearer` challenge, imprint asks the realm for a token with the Basic
/// credentials, and the registry checks the real signed token it gets.
/// The token service is the fixture server, serving a token signed here;
/// a token the registry cannot verify fails the deploy, named.
#[test]
fn a_bearer_challenge_gets_a_token_the_real_registry_verifies() {
    if !tools_present() {
        return;
    }
    let ca = TestCa::new("imprint OCI test CA").unwrap();
    let cert = ca.issue_for_fixture().unwrap();
    let tokens =
        imprint_qemu::http::FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
    let keys = tempfile::tempdir().unwrap();
    let bundle = sign_token(keys.path()).unwrap();
    let token = std::fs::read_to_string(keys.path().join("token.jwt")).unwrap();
    tokens.add_file("token", serde_json::json!({ "token": token }).to_string());
    let registry = Registry::start(
        &ca,
        Auth::Token {
            realm: tokens.url("token"),
            bundle,
        },
    )
    .unwrap();
    let data = image(2 * MIB, 5);
    let (manifest, _) = registry.push_artifact("v1", "golden.raw", &data).unwrap();
    let url = format!("oci://127.0.0.1:{}/{REPO}:v1", registry.port);

    let target = Target::new(3 * MIB);
    let output = deploy(&url, &registry.ca_path, &target, &CREDENTIALS);
    let line = assert_ok(&output, &data, &target);
    assert!(line.ends_with(&format!("@{manifest}")), "{line}");
    let asked: Vec<_> = tokens
        .requests()
        .into_iter()
        .filter(|r| r.path == "/token")
        .collect();
    assert!(!asked.is_empty(), "no token was asked for");
    for request in &asked {
        assert_eq!(request.authorization, Some(basic(USER, PASSWORD)));
    }
    assert!(!stderr(&output).contains(&token), "the token was logged");

    // A token the registry cannot verify: refused by name, nothing written.
    tokens.add_file("token", r#"{"token": "eyJhbGciOiJub25lIn0.e30.c2ln"}"#);
    let target = Target::new(3 * MIB);
    let error = assert_error(&deploy(&url, &registry.ca_path, &target, &CREDENTIALS));
    assert!(
        error.contains("HTTP 401") && error.contains("refused"),
        "{error}"
    );
    target.assert_untouched();

    // The token service refuses the credentials: the error names it and
    // the user.
    tokens.push_behaviors("token", [imprint_qemu::http::Behavior::Status(401)]);
    let target = Target::new(3 * MIB);
    let error = assert_error(&deploy(&url, &registry.ca_path, &target, &CREDENTIALS));
    assert!(
        error.contains(&format!(
            "getting a token for repository:{REPO}:pull as imprint.oci-username={USER}: \
             GET {}: HTTP 401 Unauthorized",
            tokens.url("token")
        )),
        "{error}"
    );
    target.assert_untouched();
}

/// An image index for two platforms, tagged the `oci2disk` way
/// (`os/golden:raw.gz`): the entry for this machine's architecture is
/// chosen, and its layer, with no title (oci2disk's media type), has its
/// compression declared by the tag's suffix.
#[test]
fn an_index_resolves_to_this_machines_platform_and_the_tag_declares_the_format() {
    if !tools_present() {
        return;
    }
    let registry = htpasswd_registry();
    let mine = match std::env::consts::ARCH {
        "x86_64" => ("amd64", "arm64"),
        "aarch64" => ("arm64", "amd64"),
        other => {
            eprintln!("SKIPPED: no index platform for {other}");
            return;
        }
    };
    let data = image(3 * MIB, 21);
    let other_data = image(3 * MIB, 22);
    let gzip = |data: &[u8]| {
        let mut child = Command::new("gzip")
            .args(["-c", "-n"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input).unwrap());
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        writer.join().unwrap();
        assert!(child.wait().unwrap().success());
        out
    };
    let empty = registry.push_blob(b"{}").unwrap();
    let mut entries = Vec::new();
    for (arch, blob) in [(mine.1, gzip(&other_data)), (mine.0, gzip(&data))] {
        let layer = registry.push_blob(&blob).unwrap();
        // oci2disk's layer: `oras push` of a file with no title kept.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer, "size": blob.len()}],
        })
        .to_string();
        let digest = registry
            .push_manifest(
                &format!("only-{arch}"),
                "application/vnd.oci.image.manifest.v1+json",
                &manifest,
            )
            .unwrap();
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": manifest.len(),
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let mine_digest = entries[1]["digest"].as_str().unwrap().to_owned();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    })
    .to_string();
    let index_digest = registry
        .push_manifest("raw.gz", "application/vnd.oci.image.index.v1+json", &index)
        .unwrap();

    let url = format!("oci://127.0.0.1:{}/{REPO}:raw.gz", registry.port);
    let target = Target::new(4 * MIB);
    let output = deploy(&url, &registry.ca_path, &target, &CREDENTIALS);
    let line = assert_ok(&output, &data, &target);
    assert!(line.contains(" format=gz "), "{line}");
    assert!(line.contains(" verified=sha256 "), "{line}");
    // The index is what the tag names, so it is what pins the deploy.
    assert!(line.ends_with(&format!("@{index_digest}")), "{line}");
    let log = stderr(&output);
    assert!(
        log.contains(&format!("linux/{} is manifest {mine_digest}", mine.0)),
        "{log}"
    );

    // The tag is a declaration: gzip bytes under `:raw.xz` are refused.
    registry
        .push_manifest("raw.xz", "application/vnd.oci.image.index.v1+json", &index)
        .unwrap();
    let url = format!("oci://127.0.0.1:{}/{REPO}:raw.xz", registry.port);
    let target = Target::new(4 * MIB);
    let error = assert_error(&deploy(&url, &registry.ca_path, &target, &CREDENTIALS));
    assert!(error.contains("ends in .xz"), "{error}");
    target.assert_untouched();
}

/// A blob that cannot be resumed (the server ignores Range, which the real
/// registry never does, hence the fixture server standing in for it,
/// serving the registry API's paths): the deploy starts again from byte 0
/// and reopens the image by the digest the tag resolved to, not by the tag,
/// which may have moved since.
#[test]
fn a_restart_from_byte_0_reopens_the_pinned_digest_not_the_tag() {
    use imprint_qemu::http::{Behavior, FixtureServer};
    let ca = TestCa::new("imprint OCI stand-in CA").unwrap();
    let cert = ca.issue_for_fixture().unwrap();
    let server = FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let data = image(3 * MIB, 31);
    let layer = sha256(&data);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer, "size": data.len(),
                    "annotations": {"org.opencontainers.image.title": "golden.raw"}}],
    })
    .to_string();
    let pinned = sha256(manifest.as_bytes());
    server.add_file(&format!("v2/{REPO}/manifests/v1"), manifest.clone());
    server.add_file(&format!("v2/{REPO}/manifests/{pinned}"), manifest);
    let blob = format!("v2/{REPO}/blobs/{layer}");
    server.add_file(&blob, data.clone());
    server.push_behaviors(
        &blob,
        [Behavior::DropAfter(MIB as u64), Behavior::IgnoreRange],
    );
    let url = format!("oci://127.0.0.1:{}/{REPO}:v1", server.port());
    let target = Target::new(4 * MIB);
    let output = deploy(&url, &ca_path, &target, &[]);
    let line = assert_ok(&output, &data, &target);
    assert!(line.contains(" restarts=1"), "{line}");
    let manifests: Vec<String> = server
        .requests()
        .into_iter()
        .map(|r| r.path)
        .filter(|path| path.contains("/manifests/"))
        .collect();
    assert_eq!(
        manifests,
        [
            format!("/v2/{REPO}/manifests/v1"),
            format!("/v2/{REPO}/manifests/{pinned}")
        ]
    );
}

/// An artifact holding two images: refused with the layers listed, until
/// `--oci-layer` names one.
#[test]
fn oci_layer_picks_one_of_several_images() {
    if !tools_present() {
        return;
    }
    let registry = htpasswd_registry();
    let (first, second) = (image(MIB, 41), image(MIB, 42));
    let empty = registry.push_blob(b"{}").unwrap();
    let layers: Vec<serde_json::Value> = [("first.raw", &first), ("second.raw", &second)]
        .into_iter()
        .map(|(title, data)| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar",
                "digest": registry.push_blob(data).unwrap(), "size": data.len(),
                "annotations": {"org.opencontainers.image.title": title},
            })
        })
        .collect();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.unknown.artifact.v1",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                   "digest": empty, "size": 2, "data": "e30="},
        "layers": layers,
    })
    .to_string();
    registry
        .push_manifest(
            "both",
            "application/vnd.oci.image.manifest.v1+json",
            &manifest,
        )
        .unwrap();
    let url = format!("oci://127.0.0.1:{}/{REPO}:both", registry.port);

    let target = Target::new(2 * MIB);
    let error = assert_error(&deploy(&url, &registry.ca_path, &target, &CREDENTIALS));
    assert!(error.contains("2 layers and 2 of them"), "{error}");
    assert!(
        error.contains("first.raw (") && error.contains("second.raw ("),
        "{error}"
    );
    target.assert_untouched();

    let target = Target::new(2 * MIB);
    let mut extra = CREDENTIALS.to_vec();
    extra.extend(["--oci-layer", "second.raw"]);
    let output = deploy(&url, &registry.ca_path, &target, &extra);
    assert_ok(&output, &second, &target);
}

/// A qcow2 pushed as an artifact: its L1 table is read by Range from the
/// blob with the registry's authorization (the same place and token the
/// stream uses), and the guest image is what `qemu-img convert -O raw`
/// makes of it.
#[test]
fn a_qcow2_artifact_reads_its_tables_from_the_blob_with_the_registrys_token() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("golden.raw");
    let data = image(5 * MIB + 65_536, 11);
    std::fs::write(&raw, &data).unwrap();
    let qcow2 = dir.path().join("golden.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-O", "qcow2"])
        .arg(&raw)
        .arg(&qcow2)
        .status()
        .expect("running qemu-img (scripts/setup installs qemu-utils)");
    assert!(status.success());
    let served = std::fs::read(&qcow2).unwrap();

    let registry = htpasswd_registry();
    registry
        .push_artifact("cloud", "golden.qcow2", &served)
        .unwrap();
    let url = format!("oci://127.0.0.1:{}/{REPO}:cloud", registry.port);
    let target = Target::new(8 * MIB);
    let output = deploy(&url, &registry.ca_path, &target, &CREDENTIALS);
    let line = assert_ok(&output, &data, &target);
    assert!(line.contains(" format=qcow2"), "{line}");
    assert!(line.contains(" verified=sha256 "), "{line}");

    // Without credentials the same Range read is refused by name, before
    // anything is written (the manifest already needs them).
    let target = Target::new(8 * MIB);
    let output = deploy(&url, &registry.ca_path, &target, &[]);
    let error = assert_error(&output);
    assert!(error.contains("401"), "{error}");
    target.assert_untouched();
}

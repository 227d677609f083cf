//! Host integration: `imprint deploy --url oci://…` against the real Docker
//! Distribution registry (Debian's `docker-registry`, distribution 2.8),
//! started here with TLS (a CA made in the test) and htpasswd auth. The
//! image is pushed through the registry's own HTTP API as `oras push`
//! stores a file (the OCI distribution spec's monolithic blob upload, then
//! the manifest), and deployed by tag and by digest, through a relay that
//! cuts the connection mid-blob, and with a wrong digest, a missing tag and
//! a wrong password, which fail with the target untouched.
//!
//! Skipped, loudly, only where `docker-registry` or `htpasswd` is missing;
//! `scripts/setup` installs both (packages `docker-registry`,
//! `apache2-utils`).

mod common;

use common::{hex, image, imprint, result_line};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use imprint_qemu::http::TestCa;

const USER: &str = "deploy";
const PASSWORD: &str = "pw-4f2a9c";
const REPO: &str = "os/golden";
const MIB: usize = 1 << 20;

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(data))
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// `None`, with a loud message, where the registry cannot run here.
fn tools_present() -> bool {
    for tool in ["docker-registry", "htpasswd"] {
        if !have(tool) {
            eprintln!(
                "\n\n*** SKIPPED: {tool} is not installed; run scripts/setup \
                 (it installs docker-registry and apache2-utils) ***\n\n"
            );
            return false;
        }
    }
    true
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the registry authenticates.
enum Auth {
    /// distribution's `htpasswd` access controller: `Basic` challenges.
    Htpasswd,
    /// distribution's `token` access controller: `Bearer` challenges naming
    /// `realm`, tokens checked against the certificates in `bundle`.
    Token { realm: String, bundle: PathBuf },
}

/// A running `docker-registry serve`, killed on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    ca_path: PathBuf,
    client: ureq::Agent,
    /// What the test's own pushes authenticate with.
    authorization: String,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// The registry on a free port with TLS from a fresh CA and one
    /// htpasswd user (bcrypt, `htpasswd -B`, the only hash distribution
    /// accepts).
    fn start() -> Registry {
        Registry::start_with(&TestCa::new("imprint OCI test CA").unwrap(), Auth::Htpasswd)
    }

    fn start_with(ca: &TestCa, auth: Auth) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let cert = ca.issue_for_fixture().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_path = write("ca.pem", ca.cert_pem());
        let cert_path = write("cert.pem", &cert.chain_pem);
        let key_path = write("key.pem", &cert.key_pem);
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(htpasswd.status.success(), "htpasswd -B failed");
        let htpasswd_path = dir.path().join("htpasswd");
        std::fs::write(&htpasswd_path, &htpasswd.stdout).unwrap();
        let port = free_port();
        let (auth_config, authorization) = match auth {
            Auth::Htpasswd => (
                format!(
                    "  htpasswd:\n    realm: imprint-test\n    path: {}\n",
                    htpasswd_path.display()
                ),
                basic(USER, PASSWORD),
            ),
            Auth::Token { realm, bundle } => (
                format!(
                    "  token:\n    realm: {realm}\n    service: {SERVICE}\n    \
                     issuer: {ISSUER}\n    rootcertbundle: {}\n",
                    bundle.display()
                ),
                format!(
                    "Bearer {}",
                    std::fs::read_to_string(bundle.with_extension("jwt")).unwrap()
                ),
            ),
        };
        let config = format!(
            "version: 0.1\n\
             log:\n  level: info\n\
             storage:\n  filesystem:\n    rootdirectory: {data}\n\
             http:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n\
             auth:\n{auth_config}",
            data = dir.path().join("data").display(),
            cert = cert_path.display(),
            key = key_path.display(),
        );
        let config_path = write("config.yml", &config);
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = client(ca.cert_pem());
        let registry = Registry {
            child,
            port,
            dir,
            ca_path,
            client,
            authorization,
        };
        registry.wait_until_up();
        registry
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_until_up(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client.get(format!("{}/v2/", self.base())).call() {
                assert_eq!(response.status(), 401, "GET /v2/ without credentials");
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the registry did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn basic(&self) -> String {
        self.authorization.clone()
    }

    /// A monolithic blob upload (distribution spec, "Pushing a blob
    /// monolithically": `POST` for a session, then `PUT ?digest=`).
    fn push_blob(&self, blob: &[u8]) -> String {
        let digest = sha256(blob);
        let response = self
            .client
            .post(format!("{}/v2/{REPO}/blobs/uploads/", self.base()))
            .header("Authorization", self.basic())
            .send_empty()
            .unwrap();
        assert_eq!(response.status(), 202, "starting an upload");
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base())
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = self
            .client
            .put(format!("{location}{separator}digest={digest}"))
            .header("Authorization", self.basic())
            .header("Content-Type", "application/octet-stream")
            .send(blob)
            .unwrap();
        assert_eq!(response.status(), 201, "finishing the upload of {digest}");
        digest
    }

    /// Pushes `blob` as `oras push REPO:TAG TITLE` stores it: an OCI
    /// manifest with `artifactType`, the empty config and one layer of
    /// media type `application/vnd.oci.image.layer.v1.tar` titled with the
    /// file name. Gives the manifest's digest and the layer's.
    fn push_artifact(&self, tag: &str, title: &str, blob: &[u8]) -> (String, String) {
        let empty = self.push_blob(b"{}");
        let layer = self.push_blob(blob);
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": "application/vnd.unknown.artifact.v1",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": empty, "size": 2, "data": "e30="},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer, "size": blob.len(),
                        "annotations": {"org.opencontainers.image.title": title}}],
        })
        .to_string();
        let response = self
            .client
            .put(format!("{}/v2/{REPO}/manifests/{tag}", self.base()))
            .header("Authorization", self.basic())
            .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            .send(manifest.as_bytes())
            .unwrap();
        assert_eq!(response.status(), 201, "pushing the manifest");
        let served = response.headers()["docker-content-digest"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(served, sha256(manifest.as_bytes()));
        (served, layer)
    }
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

const SERVICE: &str = "imprint-test-registry";
const ISSUER: &str = "imprint-test-issuer";

fn openssl(args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("running openssl (scripts/setup installs it)");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A token as distribution's token spec (`docs/spec/auth/jwt.md`) has a
/// token service issue it: a JWT signed RS256 by a key whose certificate
/// rides in the `x5c` header and is in the registry's `rootcertbundle`,
/// granting pull and push on [`REPO`] to [`SERVICE`]. Made with openssl;
/// the certificate goes to `dir/token.pem`, the token to `dir/token.jwt`.
fn sign_token(dir: &Path) -> PathBuf {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = dir.join("token-key.pem");
    let cert = dir.join("token.pem");
    let der = dir.join("token.der");
    let text = |p: &Path| p.to_str().unwrap().to_owned();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=imprint test token issuer",
        "-keyout",
        &text(&key),
        "-out",
        &text(&cert),
    ]);
    openssl(&[
        "x509",
        "-in",
        &text(&cert),
        "-outform",
        "DER",
        "-out",
        &text(&der),
    ]);
    let header = serde_json::json!({
        "alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der).unwrap())],
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": USER, "aud": SERVICE,
        "exp": now + 3600, "nbf": now - 10, "iat": now - 10, "jti": "imprint-test-1",
        "access": [{"type": "repository", "name": REPO, "actions": ["pull", "push"]}],
    });
    let signing_input = format!(
        "{}.{}",
        b64.encode(header.to_string()),
        b64.encode(claims.to_string())
    );
    let input = dir.join("token.input");
    let signature = dir.join("token.sig");
    std::fs::write(&input, &signing_input).unwrap();
    openssl(&[
        "dgst",
        "-sha256",
        "-sign",
        &text(&key),
        "-out",
        &text(&signature),
        &text(&input),
    ]);
    let token = format!(
        "{signing_input}.{}",
        b64.encode(std::fs::read(&signature).unwrap())
    );
    std::fs::write(dir.join("token.jwt"), token).unwrap();
    cert
}

/// A client trusting only the test's CA.
fn client(ca_pem: &str) -> ureq::Agent {
    let certs: Vec<_> = ureq::tls::parse_pem(ca_pem.as_bytes())
        .filter_map(|item| match item.unwrap() {
            ureq::tls::PemItem::Certificate(cert) => Some(cert),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into()
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
    let registry = Registry::start();
    let data = image(6 * MIB + 4096, 7);
    let served = zstd(&data);
    let (manifest, layer) = registry.push_artifact("v1", "golden.raw.zst", &served);
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
    let registry = Registry::start();
    let data = image(MIB, 3);
    registry.push_artifact("v1", "golden.raw", &data);
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
    let registry = Registry::start();
    let data = image(8 * MIB, 11);
    let served = zstd(&data);
    assert!(served.len() > 2 * MIB, "the blob is too small to cut");
    let (manifest, _) = registry.push_artifact("v2", "golden.raw.zst", &served);
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
    let bundle = sign_token(keys.path());
    let token = std::fs::read_to_string(keys.path().join("token.jwt")).unwrap();
    tokens.add_file("token", serde_json::json!({ "token": token }).to_string());
    let registry = Registry::start_with(
        &ca,
        Auth::Token {
            realm: tokens.url("token"),
            bundle,
        },
    );
    let data = image(2 * MIB, 5);
    let (manifest, _) = registry.push_artifact("v1", "golden.raw", &data);
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
}

//! The real Docker Distribution registry (Debian's `docker-registry`,
//! distribution 2.8) for tests: started on a free port of 127.0.0.1 (guests
//! reach it as `10.0.2.2`) with TLS from a [`TestCa`] and htpasswd or token
//! auth, and an image pushed through the registry's own HTTP API as `oras
//! push` stores a file. Nothing here stands in for the registry: it is the
//! real one, driven as a client would.
//!
//! [`tools_present`] says, loudly, when it cannot run here; `scripts/setup`
//! installs what it needs (`docker-registry`, `apache2-utils` for
//! `htpasswd -B`, `openssl` for signing tokens).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::http::TestCa;

/// The one user of htpasswd auth, and the subject of signed tokens.
pub const USER: &str = "deploy";
pub const PASSWORD: &str = "pw-4f2a9c";
/// The repository images are pushed to.
pub const REPO: &str = "os/golden";
/// The registry's `service` and the tokens' audience.
pub const SERVICE: &str = "imprint-test-registry";
/// The tokens' issuer.
pub const ISSUER: &str = "imprint-test-issuer";

/// How the registry authenticates.
pub enum Auth {
    /// distribution's `htpasswd` access controller: `Basic` challenges.
    Htpasswd,
    /// distribution's `token` access controller: `Bearer` challenges naming
    /// `realm`; tokens are checked against the certificate [`sign_token`]
    /// wrote to `bundle`, and the test's own pushes use the token it wrote
    /// beside it.
    Token { realm: String, bundle: PathBuf },
}

/// Whether the registry can run here; when not, says so loudly on stderr.
pub fn tools_present() -> bool {
    for tool in ["docker-registry", "htpasswd", "openssl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
        if !found {
            eprintln!(
                "\n\n*** SKIPPED: {tool} is not installed; run scripts/setup \
                 (it installs docker-registry, apache2-utils and openssl) ***\n\n"
            );
            return false;
        }
    }
    true
}

/// `sha256:<hex>` of `data`, as the registry names blobs and manifests.
pub fn digest(data: &[u8]) -> String {
    let hex: String = Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `Basic <base64(user:password)>`.
pub fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// A running `docker-registry serve`, killed on drop.
pub struct Registry {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    /// The CA's certificate, PEM: what a client must trust.
    pub ca_path: PathBuf,
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
    /// The registry with TLS from `ca` (a certificate for 127.0.0.1,
    /// 10.0.2.2 and localhost) and `auth`; htpasswd holds [`USER`] with
    /// [`PASSWORD`], bcrypt (`htpasswd -B`, the only hash distribution
    /// accepts).
    pub fn start(ca: &TestCa, auth: Auth) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let cert = ca.issue_for_fixture()?;
        let write = |name: &str, text: &str| -> Result<PathBuf> {
            let path = dir.path().join(name);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca_path = write("ca.pem", ca.cert_pem())?;
        let cert_path = write("cert.pem", &cert.chain_pem)?;
        let key_path = write("key.pem", &cert.key_pem)?;
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .context("running htpasswd")?;
        ensure!(htpasswd.status.success(), "htpasswd -B failed");
        let htpasswd_path = write("htpasswd", &String::from_utf8_lossy(&htpasswd.stdout))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
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
                    std::fs::read_to_string(bundle.with_extension("jwt"))
                        .context("reading the signed token")?
                ),
            ),
        };
        // The registry listens on the loopback only; QEMU's user network
        // forwards the guest's 10.0.2.2 there.
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
        let config_path = write("config.yml", &config)?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let registry = Registry {
            child,
            port,
            dir,
            ca_path,
            client: client(ca.cert_pem())?,
            authorization,
        };
        registry.wait_until_up()?;
        Ok(registry)
    }

    pub fn base(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Everything the registry logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn wait_until_up(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client.get(format!("{}/v2/", self.base())).call() {
                ensure!(
                    response.status() == 401,
                    "GET /v2/ without credentials: HTTP {}",
                    response.status()
                );
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the registry did not come up:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A monolithic blob upload (distribution spec, "Pushing a blob
    /// monolithically": `POST` for a session, then `PUT ?digest=`).
    pub fn push_blob(&self, blob: &[u8]) -> Result<String> {
        let digest = digest(blob);
        let response = self
            .client
            .post(format!("{}/v2/{REPO}/blobs/uploads/", self.base()))
            .header("Authorization", &self.authorization)
            .send_empty()?;
        ensure!(
            response.status() == 202,
            "starting an upload: HTTP {}",
            response.status()
        );
        let location = response
            .headers()
            .get("location")
            .and_then(|value| value.to_str().ok())
            .context("the upload session has no Location")?
            .to_owned();
        let location = if location.starts_with('/') {
            format!("{}{location}", self.base())
        } else {
            location
        };
        let separator = if location.contains('?') { '&' } else { '?' };
        let response = self
            .client
            .put(format!("{location}{separator}digest={digest}"))
            .header("Authorization", &self.authorization)
            .header("Content-Type", "application/octet-stream")
            .send(blob)?;
        ensure!(
            response.status() == 201,
            "finishing the upload of {digest}: HTTP {}",
            response.status()
        );
        Ok(digest)
    }

    /// Pushes `blob` to `REPO:tag` as `oras push REPO:TAG TITLE` stores a
    /// file (oras-go's PackManifest, image-spec 1.1): an OCI manifest with
    /// `artifactType`, the empty config and one layer of media type
    /// `application/vnd.oci.image.layer.v1.tar` titled with the file name.
    /// Gives the manifest's digest and the layer's.
    pub fn push_artifact(&self, tag: &str, title: &str, blob: &[u8]) -> Result<(String, String)> {
        let empty = self.push_blob(b"{}")?;
        let layer = self.push_blob(blob)?;
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
        let served =
            self.push_manifest(tag, "application/vnd.oci.image.manifest.v1+json", &manifest)?;
        Ok((served, layer))
    }

    /// Puts `manifest` (of `media_type`: a manifest or an index) at
    /// `REPO:reference` (a tag or its own digest); gives its digest.
    pub fn push_manifest(
        &self,
        reference: &str,
        media_type: &str,
        manifest: &str,
    ) -> Result<String> {
        let response = self
            .client
            .put(format!("{}/v2/{REPO}/manifests/{reference}", self.base()))
            .header("Authorization", &self.authorization)
            .header("Content-Type", media_type)
            .send(manifest.as_bytes())?;
        ensure!(
            response.status() == 201,
            "pushing the manifest {reference}: HTTP {}",
            response.status()
        );
        let served = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .context("no Docker-Content-Digest")?
            .to_owned();
        ensure!(
            served == digest(manifest.as_bytes()),
            "the registry says the manifest is {served}"
        );
        Ok(served)
    }
}

/// A client trusting only the test's CA, statuses handed back.
fn client(ca_pem: &str) -> Result<ureq::Agent> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(ca_pem.as_bytes()) {
        if let ureq::tls::PemItem::Certificate(cert) = item? {
            certs.push(cert);
        }
    }
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
        .build();
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into())
}

fn openssl(args: &[&str]) -> Result<()> {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl")?;
    ensure!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// A token as distribution's token spec (`docs/spec/auth/jwt.md`) has a
/// token service issue it, and as its `registry/auth/token` verifies it: a
/// JWT signed RS256 by a key whose certificate rides in the `x5c` header
/// and is the registry's `rootcertbundle`, for [`ISSUER`], audience
/// [`SERVICE`], granting pull and push on [`REPO`] for an hour. Made with
/// openssl; the certificate goes to `dir/token.pem` (returned), the token
/// to `dir/token.jwt`.
pub fn sign_token(dir: &Path) -> Result<PathBuf> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let (key, cert, der) = (path("token-key.pem"), path("token.pem"), path("token.der"));
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
        &key,
        "-out",
        &cert,
    ])?;
    openssl(&["x509", "-in", &cert, "-outform", "DER", "-out", &der])?;
    let header = serde_json::json!({
        "alg": "RS256", "typ": "JWT",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(std::fs::read(&der)?)],
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
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
    let (input, signature) = (path("token.input"), path("token.sig"));
    std::fs::write(&input, &signing_input)?;
    openssl(&["dgst", "-sha256", "-sign", &key, "-out", &signature, &input])?;
    let token = format!("{signing_input}.{}", b64.encode(std::fs::read(&signature)?));
    std::fs::write(dir.join("token.jwt"), token)?;
    Ok(PathBuf::from(cert))
}

//! `oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST]`: a disk image stored
//! as an artifact in an OCI registry, pulled through the registry HTTP API
//! (the OCI distribution spec, `/v2/<name>/manifests/<ref>` and
//! `/v2/<name>/blobs/<digest>`) over HTTPS.
//!
//! **Resolving.** The manifest is fetched with every manifest type in
//! `Accept` (OCI manifest and index, Docker schema 2 manifest and manifest
//! list). An index is resolved to the `linux/<arch>` entry for the running
//! machine (`x86_64` is `amd64`, `aarch64` is `arm64`, as Go's GOARCH names
//! them). Every manifest is checked against its digest: one fetched by
//! digest must hash to it, and a tag's is reported as the pinned reference
//! (`oci://reg/repo:tag resolved to oci://reg/repo@sha256:…`), so the deploy
//! can be repeated byte for byte.
//!
//! **The layer.** One layer is the image. Among several, the one whose
//! `org.opencontainers.image.title` annotation names a disk image
//! (`golden.raw.zst`, any suffix imprint reads from an HTTP URL) is; none
//! or more than one is an error listing them. The two conventions this
//! covers: `oras push REF golden.raw.zst` (one layer, media type
//! `application/vnd.oci.image.layer.v1.tar`, the file name in the title
//! annotation; the manifest's config `application/vnd.oci.empty.v1+json`),
//! and Tinkerbell's `oci2disk`, which pulls the same media type and takes
//! the compression from the reference (`debian:raw.gz`). So the title,
//! when present, declares the format as an HTTP URL's file name does;
//! without one, a `+zstd`/`+gzip` media type declares the compression, and
//! without that the reference itself is read as the file name (the
//! `oci2disk` way). The bytes are sniffed either way.
//!
//! **Auth.** Anonymous first. A `401` with `WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…` asks the realm for a token (with the Basic
//! credentials of `oci-username`/`oci-password` when given, per the
//! distribution token spec) and retries with `Authorization: Bearer`; `Basic`
//! sends the credentials. The blob reuses the resumable HTTP source
//! ([`super::http`]), its requests authorized only while they go to the
//! registry: the `307` to object storage a registry may answer a blob with
//! is followed without the header, and a resume goes straight to the
//! redirect's target, also without it. A `401` mid-blob (a token expired)
//! fetches a new token.
//!
//! **The digest.** The layer's digest is the image checksum: the served
//! bytes must match it before the first MiB is written
//! ([`Source::digest`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest, Sha256, Sha512};

use super::http::Authorizer;
use super::{Source, SourceOptions};
use crate::http::agent::{Exchange, agent};
use crate::http::classify::Failure;
use crate::http::retry::{Failed, Retrier, SystemClock, retry_after_of};
use crate::pipeline::checksum::Checksum;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// The annotation `oras push` puts the file name in.
pub const TITLE: &str = "org.opencontainers.image.title";
/// A manifest or token answer larger than this is not one.
const MAX_DOCUMENT_LEN: u64 = 4 << 20;

/// A parsed `oci://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciReference {
    /// `host[:port]`, as written.
    pub registry: String,
    /// `os/golden`.
    pub repository: String,
    pub reference: Reference,
}

/// A tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    Tag(String),
    /// `sha256:<hex>` (or `sha512:`), lowercase.
    Digest(String),
}

impl Reference {
    /// As it goes into `/v2/<name>/manifests/<reference>`.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(tag) | Reference::Digest(tag) => tag,
        }
    }
}

const USAGE: &str = "use oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST]";

impl OciReference {
    /// Parses `oci://REGISTRY[:PORT]/REPO[:TAG|@sha256:DIGEST]`; the tag is
    /// `latest` when neither is given, as `docker pull` does.
    pub fn parse(url: &str) -> Result<OciReference> {
        let rest = url
            .split_once("://")
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("oci"))
            .map(|(_, rest)| rest)
            .with_context(|| format!("{url}: not an oci:// URL; {USAGE}"))?;
        let Some((registry, path)) = rest.split_once('/') else {
            bail!("{url}: no repository; {USAGE}");
        };
        check_registry(registry).with_context(|| format!("{url}: registry {registry:?}"))?;
        let (name, reference) = match path.split_once('@') {
            Some((name, digest)) => {
                check_digest(digest).with_context(|| format!("{url}: digest {digest:?}"))?;
                (name, Reference::Digest(digest.to_owned()))
            }
            None => {
                let last = path.rfind('/').map_or(0, |slash| slash + 1);
                match path[last..].rfind(':') {
                    Some(colon) => {
                        let tag = &path[last + colon + 1..];
                        check_tag(tag).with_context(|| format!("{url}: tag {tag:?}"))?;
                        (&path[..last + colon], Reference::Tag(tag.to_owned()))
                    }
                    None => (path, Reference::Tag("latest".to_owned())),
                }
            }
        };
        check_repository(name).with_context(|| format!("{url}: repository {name:?}"))?;
        Ok(OciReference {
            registry: registry.to_owned(),
            repository: name.to_owned(),
            reference,
        })
    }

    /// `https://REGISTRY`.
    pub fn origin(&self) -> String {
        format!("https://{}", self.registry)
    }

    fn api(&self, kind: &str, reference: &str) -> String {
        format!(
            "{}/v2/{}/{kind}/{reference}",
            self.origin(),
            self.repository
        )
    }

    /// The same image pinned to `digest`.
    pub fn pinned(&self, digest: &str) -> String {
        format!("oci://{}/{}@{digest}", self.registry, self.repository)
    }
}

impl fmt::Display for OciReference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.reference {
            Reference::Tag(tag) => write!(f, "oci://{}/{}:{tag}", self.registry, self.repository),
            Reference::Digest(digest) => f.write_str(&self.pinned(digest)),
        }
    }
}

fn check_registry(registry: &str) -> Result<()> {
    if registry.contains('@') {
        bail!("holds credentials; set imprint.oci-username= and imprint.oci-password= instead");
    }
    // `[v6 address]:port`, `[v6 address]`, `host:port`, `host`.
    let (host, port) = match registry.rfind(']') {
        Some(end) => {
            let (host, rest) = registry.split_at(end + 1);
            match rest.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if rest.is_empty() => (host, None),
                None => bail!("is not a host name or address"),
            }
        }
        None => match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        },
    };
    let host_ok = !host.is_empty()
        && (host.starts_with('[') && host.ends_with(']')
            || host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    if !host_ok {
        bail!("is not a host name or address");
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .ok()
            .filter(|&port| port > 0)
            .with_context(|| format!("port {port:?} is not a port number"))?;
    }
    Ok(())
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*` per path component (OCI
/// distribution spec, "Pulling manifests"), simplified to: lowercase
/// letters, digits and `._-`, starting and ending with a letter or digit.
fn check_repository(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("is empty; {USAGE}");
    }
    for component in name.split('/') {
        let alnum =
            |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !alnum(component.chars().next())
            || !alnum(component.chars().last())
            || !component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
        {
            bail!(
                "component {component:?} is not lowercase letters, digits and ._- \
                 starting and ending with a letter or digit"
            );
        }
    }
    Ok(())
}

/// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` (OCI distribution spec).
fn check_tag(tag: &str) -> Result<()> {
    let first_ok = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !first_ok
        || tag.len() > 128
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        bail!("is not a tag: up to 128 letters, digits and ._-, not starting with . or -");
    }
    Ok(())
}

fn check_digest(digest: &str) -> Result<()> {
    let (algorithm, hex) = digest
        .split_once(':')
        .with_context(|| format!("is not sha256:HEX; {USAGE}"))?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        other => bail!("algorithm {other:?} is not supported; use sha256 or sha512"),
    };
    if hex.len() != len
        || !hex
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    {
        bail!("is not {algorithm}: followed by {len} lowercase hex digits");
    }
    Ok(())
}

/// The digest of `bytes` in the algorithm of `like` (`sha256:…`).
fn digest_of(like: &str, bytes: &[u8]) -> String {
    if like.starts_with("sha512:") {
        format!("sha512:{}", crate::text::hex(&Sha512::digest(bytes)))
    } else {
        format!("sha256:{}", crate::text::hex(&Sha256::digest(bytes)))
    }
}

// ---------------------------------------------------------------- auth

/// A `WWW-Authenticate` challenge (RFC 9110 §11.6.1; the Bearer parameters
/// of the distribution token spec, `docs/spec/auth/token.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// The first Bearer or Basic challenge in a `WWW-Authenticate` value.
pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim();
    let (scheme, params) = header
        .split_once(|c: char| c.is_ascii_whitespace())
        .unwrap_or((header, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = auth_params(params);
    Some(Challenge::Bearer {
        realm: params.get("realm")?.clone(),
        service: params.get("service").cloned(),
        scope: params.get("scope").cloned(),
    })
}

/// `key=value, key="quoted, with \"escapes\""` into a map, keys lowercase.
fn auth_params(text: &str) -> BTreeMap<String, String> {
    let mut params = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        let Some((key, after)) = rest.split_once('=') else {
            return params;
        };
        let key = key.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let mut value = String::new();
        if let Some(quoted) = after.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            rest = &quoted[end..];
        } else {
            let end = after.find(',').unwrap_or(after.len());
            value = after[..end].trim().to_owned();
            rest = &after[end..];
        }
        params.insert(key, value);
    }
}

/// `scheme://host[:port]` of `url`, lowercase, the default port dropped.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let authority = match scheme.as_str() {
        "https" => authority.strip_suffix(":443").unwrap_or(&authority),
        "http" => authority.strip_suffix(":80").unwrap_or(&authority),
        _ => &authority,
    }
    .to_owned();
    Some(format!("{scheme}://{authority}"))
}

/// The registry's credentials and the `Authorization` header they earned.
struct RegistryAuth {
    origin: String,
    /// `repository:<name>:pull`, when a challenge names no scope.
    default_scope: String,
    username: Option<String>,
    password: Option<crate::http::Password>,
    header: Mutex<Option<String>>,
    agent: ureq::Agent,
    options: SourceOptions,
}

impl RegistryAuth {
    fn basic(&self) -> Option<String> {
        let user = self.username.as_deref()?;
        let password = self.password.as_ref().map_or("", |p| p.expose());
        let pair = format!("{user}:{password}");
        Some(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair)
        ))
    }

    fn who(&self) -> String {
        match &self.username {
            Some(user) => format!("as imprint.oci-username={user}"),
            None => "anonymously".to_owned(),
        }
    }

    /// Asks the realm for a token (distribution's token spec: `GET
    /// realm?service=…&scope=…`, Basic credentials when given; the answer's
    /// `token`, or OAuth2's `access_token`).
    fn fetch_token(&self, realm: &str, service: Option<&str>, scope: &str) -> Result<String> {
        use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
        let mut url = realm.to_owned();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for (key, value) in [("service", service), ("scope", Some(scope))] {
            if let Some(value) = value {
                url += &format!(
                    "{sep}{key}={}",
                    utf8_percent_encode(value, NON_ALPHANUMERIC)
                );
                sep = '&';
            }
        }
        let basic = self.basic();
        if basic.is_some() && !realm.to_ascii_lowercase().starts_with("https://") {
            bail!("the token service {realm} is not HTTPS; imprint sends no credentials to it");
        }
        let (_, body) = get_document(
            &self.agent,
            &self.options,
            &url,
            &crate::http::redact_url(realm),
            None,
            &|_| basic.clone(),
        )
        .with_context(|| format!("getting a token for {scope} {}", self.who()))?;
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let answer: TokenAnswer = serde_json::from_slice(&body)
            .with_context(|| format!("the token service {realm} answered no JSON token"))?;
        answer
            .token
            .or(answer.access_token)
            .filter(|token| !token.is_empty())
            .with_context(|| format!("the token service {realm} answered no token"))
    }
}

impl Authorizer for RegistryAuth {
    fn header_for(&self, url: &str) -> Option<String> {
        if origin_of(url).as_deref() != Some(self.origin.as_str()) {
            return None;
        }
        Some(
            self.header
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone()
                .unwrap_or_default(),
        )
    }

    fn renew(&self, url: &str, challenge: Option<&str>) -> Result<bool> {
        let Some(challenge) = challenge.and_then(parse_challenge) else {
            bail!("the registry asks for credentials but sent no Bearer or Basic challenge");
        };
        let before = self
            .header
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let header = match challenge {
            Challenge::Basic => match self.basic() {
                // The same credentials, refused again: no point sending them.
                Some(basic) if before.as_deref() == Some(basic.as_str()) => bail!(
                    "{} refused imprint.oci-username={} and its password",
                    origin_of(url).unwrap_or_default(),
                    self.username.as_deref().unwrap_or_default()
                ),
                Some(basic) => basic,
                None => bail!(
                    "the registry needs credentials: set imprint.oci-username= and \
                     imprint.oci-password="
                ),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope.unwrap_or_else(|| self.default_scope.clone());
                let token = self.fetch_token(&realm, service.as_deref(), &scope)?;
                let header = format!("Bearer {token}");
                if before.as_deref() == Some(header.as_str()) {
                    bail!(
                        "the registry refused the token its token service issued for {scope} \
                         ({})",
                        self.who()
                    );
                }
                header
            }
        };
        *self.header.lock().unwrap_or_else(PoisonError::into_inner) = Some(header);
        Ok(true)
    }
}

/// `GET url` (with `accept`), authorized by `authorize(url)`, retried like
/// an image request; its `Content-Type` and body (at most
/// [`MAX_DOCUMENT_LEN`]). `what` names it in messages. On `401`, `renew`
/// gets new credentials once.
fn get_document(
    agent: &ureq::Agent,
    options: &SourceOptions,
    url: &str,
    what: &str,
    accept: Option<&str>,
    authorize: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, Vec<u8>)> {
    get_document_renewing(agent, options, url, what, accept, authorize, None)
}

/// Gets new credentials from a `WWW-Authenticate` challenge
/// ([`Authorizer::renew`]).
type Renew<'a> = &'a dyn Fn(Option<&str>) -> Result<bool>;

fn get_document_renewing(
    agent: &ureq::Agent,
    options: &SourceOptions,
    url: &str,
    what: &str,
    accept: Option<&str>,
    authorize: &dyn Fn(&str) -> Option<String>,
    renew: Option<Renew<'_>>,
) -> Result<(String, Vec<u8>)> {
    let request = format!("GET {what}");
    let send = || -> Result<ureq::http::Response<ureq::Body>, Failed> {
        let mut call = agent.get(url);
        if let Some(accept) = accept {
            call = call.header("Accept", accept);
        }
        if let Some(value) = authorize(url).filter(|value| !value.is_empty()) {
            call = call.header("Authorization", value);
        }
        call.call()
            .map_err(|error| Failed::request(&request, &error, options))
    };
    let attempt = || -> Result<(String, Vec<u8>), Failed> {
        let mut response = send()?;
        if response.status() == 401 {
            if let Some(renew) = renew {
                let challenge = response
                    .headers()
                    .get("www-authenticate")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_owned);
                let refused = |error: anyhow::Error| Failed {
                    failure: Failure::Fatal,
                    message: format!("{request}: HTTP 401 Unauthorized: {error:#}"),
                    retry_after: None,
                };
                if renew(challenge.as_deref()).map_err(refused)? {
                    response = send()?;
                    if response.status() == 401 {
                        // Refused with what it asked for: renewing again
                        // names what was refused (the same Basic
                        // credentials, the same token).
                        let challenge = response
                            .headers()
                            .get("www-authenticate")
                            .and_then(|value| value.to_str().ok())
                            .map(str::to_owned);
                        renew(challenge.as_deref()).map_err(refused)?;
                        return Err(refused(anyhow::anyhow!(
                            "the registry refused the credentials it asked for"
                        )));
                    }
                }
            }
        }
        let status = response.status();
        if !status.is_success() {
            let mut failed = Failed::status(&request, status, retry_after_of(&response));
            let body = response
                .body_mut()
                .with_config()
                .limit(64 << 10)
                .read_to_vec()
                .unwrap_or_default();
            if let Some(said) = registry_errors(&body) {
                failed.message += &format!(" ({said})");
            }
            return Err(failed);
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_DOCUMENT_LEN)
            .read_to_vec()
            .map_err(|error| Failed {
                failure: match &error {
                    ureq::Error::BodyExceedsLimit(_) => Failure::Fatal,
                    other => crate::http::classify::classify(other),
                },
                message: format!("{request}: reading the body: {error}"),
                retry_after: None,
            })?;
        Ok((content_type, body))
    };
    let mut retrier = Retrier::new(
        crate::http::backoff::RetryPolicy::transfer(options),
        Arc::new(SystemClock::new()),
    );
    retrier
        .run(attempt, Failed::log_retry)
        .map_err(|exhausted| exhausted.error.into_error(exhausted.give_up))
}

/// The codes and messages of a registry's error body (distribution spec,
/// "Error Codes"): `MANIFEST_UNKNOWN: manifest unknown`.
fn registry_errors(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(Deserialize)]
    struct ErrorEntry {
        code: String,
        #[serde(default)]
        message: String,
    }
    let errors: Errors = serde_json::from_slice(body).ok()?;
    let said: Vec<String> = errors
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.code, e.message))
        .collect();
    (!said.is_empty()).then(|| said.join("; "))
}

// ------------------------------------------------------------ manifests

/// A manifest or an index, the fields imprint reads (OCI image spec
/// `manifest.md`, `image-index.md`; Docker's schema 2 has the same names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    pub manifests: Option<Vec<Descriptor>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Descriptor {
    pub fn title(&self) -> Option<&str> {
        self.annotations.get(TITLE).map(String::as_str)
    }

    fn describe(&self) -> String {
        match self.title() {
            Some(title) => format!("{title} ({}, {} bytes)", self.media_type, self.size),
            None => format!("{} ({}, {} bytes)", self.digest, self.media_type, self.size),
        }
    }
}

/// What a fetched document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Index,
}

/// Parses a manifest or index served as `content_type`.
pub fn parse_document(content_type: &str, body: &[u8]) -> Result<(Kind, Document)> {
    let document: Document =
        serde_json::from_slice(body).context("the manifest is not a JSON manifest or index")?;
    let media_type = document
        .media_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| content_type.to_owned());
    let kind = match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST => Kind::Manifest,
        OCI_INDEX | DOCKER_LIST => Kind::Index,
        other if other.starts_with("application/vnd.docker.distribution.manifest.v1") => {
            bail!("the manifest is Docker's schema 1 ({other}), which imprint does not read")
        }
        _ if document.manifests.is_some() => Kind::Index,
        _ if document.layers.is_some() => Kind::Manifest,
        other => bail!("the manifest's media type {other:?} is neither a manifest nor an index"),
    };
    Ok((kind, document))
}

/// GOARCH's name for the machine's architecture (`uname -m`): the names
/// image indexes use.
pub fn oci_architecture(machine: &str) -> &str {
    match machine {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" | "i686" | "i586" => "386",
        "powerpc64" => "ppc64le",
        "riscv64" => "riscv64",
        other => other,
    }
}

/// The index entry for `linux/<architecture>`; an index of one entry
/// without a platform is that entry.
pub fn choose_platform<'a>(
    manifests: &'a [Descriptor],
    architecture: &str,
) -> Result<&'a Descriptor> {
    if let Some(entry) = manifests.iter().find(|entry| {
        entry
            .platform
            .as_ref()
            .is_some_and(|p| p.os == "linux" && p.architecture == architecture)
    }) {
        return Ok(entry);
    }
    if let [only] = manifests {
        if only.platform.is_none() {
            return Ok(only);
        }
    }
    let have: Vec<String> = manifests
        .iter()
        .map(|entry| match &entry.platform {
            Some(p) => format!("{}/{}", p.os, p.architecture),
            None => "no platform".to_owned(),
        })
        .collect();
    bail!(
        "the image index has no linux/{architecture} manifest (it has {})",
        if have.is_empty() {
            "none".to_owned()
        } else {
            have.join(", ")
        }
    )
}

/// The layer holding the disk image: the one titled `wanted` when given
/// (`imprint.oci-layer=`); else the only one, or the only one whose title
/// names an image file.
pub fn choose_layer<'a>(layers: &'a [Descriptor], wanted: Option<&str>) -> Result<&'a Descriptor> {
    if let Some(wanted) = wanted {
        return layers
            .iter()
            .find(|layer| layer.title() == Some(wanted))
            .with_context(|| {
                let titles: Vec<&str> = layers.iter().filter_map(Descriptor::title).collect();
                format!(
                    "imprint.oci-layer={wanted}: no layer has that title (the titles are: {})",
                    if titles.is_empty() {
                        "none".to_owned()
                    } else {
                        titles.join(", ")
                    }
                )
            });
    }
    if let [only] = layers {
        return Ok(only);
    }
    if layers.is_empty() {
        bail!("the manifest has no layers");
    }
    let images: Vec<&Descriptor> = layers
        .iter()
        .filter(|layer| {
            layer.title().is_some_and(|title| {
                matches!(
                    crate::pipeline::format::url_suffix(title),
                    Some(crate::pipeline::format::UrlSuffix::Image { .. })
                )
            })
        })
        .collect();
    if let [only] = images[..] {
        return Ok(only);
    }
    let listed: Vec<String> = layers.iter().map(Descriptor::describe).collect();
    bail!(
        "the manifest has {} layers and {} of them is titled as a disk image \
         (org.opencontainers.image.title ending in .raw, .img, .zst, .xz, …); \
         name one with imprint.oci-layer=TITLE: {}",
        layers.len(),
        if images.is_empty() {
            "none".to_owned()
        } else {
            images.len().to_string()
        },
        listed.join(", ")
    )
}

/// The file name that declares the layer's format: its title; else a
/// name with the compression its media type says (`+zstd`, `+gzip`);
/// else none, and the reference itself declares it (`debian:raw.gz`).
pub fn declared_name(layer: &Descriptor) -> Option<String> {
    if let Some(title) = layer.title() {
        return Some(title.to_owned());
    }
    let suffix = layer.media_type.rsplit_once('+').map(|(_, s)| s)?;
    match suffix {
        "zstd" => Some(format!("{}.zst", layer.digest)),
        "gzip" => Some(format!("{}.gz", layer.digest)),
        _ => None,
    }
}

/// What a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolution {
    /// The digest of the manifest (or index) the reference names.
    pub manifest_digest: String,
    pub layer: Descriptor,
}

/// The registry API for one repository.
struct Registry {
    reference: OciReference,
    auth: Arc<RegistryAuth>,
    agent: ureq::Agent,
    options: SourceOptions,
}

impl Registry {
    /// The manifest `reference` names, checked against its digest when it
    /// is one; its digest, kind and contents.
    fn manifest(&self, reference: &str) -> Result<(String, Kind, Document)> {
        let url = self.reference.api("manifests", reference);
        let accept = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(", ");
        let auth = Arc::clone(&self.auth);
        let renew_auth = Arc::clone(&self.auth);
        let renew_url = url.clone();
        let (content_type, body) = get_document_renewing(
            &self.agent,
            &self.options,
            &url,
            &url,
            Some(&accept),
            &move |url| auth.header_for(url),
            Some(&move |challenge| renew_auth.renew(&renew_url, challenge)),
        )?;
        let digest = digest_of(reference, &body);
        if reference.contains(':') && digest != reference {
            bail!("GET {url}: the registry served a manifest whose digest is {digest}");
        }
        let (kind, document) = parse_document(&content_type, &body)
            .with_context(|| format!("GET {url}: the manifest"))?;
        Ok((digest, kind, document))
    }

    fn resolve(&self, architecture: &str) -> Result<Resolution> {
        let (manifest_digest, kind, document) = self.manifest(self.reference.reference.as_str())?;
        let manifest = match kind {
            Kind::Manifest => document,
            Kind::Index => {
                let entry = choose_platform(
                    document.manifests.as_deref().unwrap_or_default(),
                    architecture,
                )
                .with_context(|| format!("{}", self.reference))?;
                let (_, kind, manifest) = self.manifest(&entry.digest)?;
                if kind != Kind::Manifest {
                    bail!(
                        "{}: the index's linux/{architecture} entry {} is another index",
                        self.reference,
                        entry.digest
                    );
                }
                log::info!(
                    "{}: linux/{architecture} is manifest {}",
                    self.reference,
                    entry.digest
                );
                manifest
            }
        };
        let layer = choose_layer(
            manifest.layers.as_deref().unwrap_or_default(),
            self.options.oci_layer.as_deref(),
        )
        .with_context(|| format!("{}", self.reference))?
        .clone();
        Checksum::parse(&layer.digest)
            .with_context(|| format!("{}: layer digest {:?}", self.reference, layer.digest))?;
        Ok(Resolution {
            manifest_digest,
            layer,
        })
    }
}

/// Opens `url` (`oci://…`): resolves it to a layer and streams that blob.
pub(super) fn open(url: &str, options: &SourceOptions) -> Result<Source> {
    let reference = OciReference::parse(url)?;
    let agent = agent(options, Exchange::Download)?;
    let auth = Arc::new(RegistryAuth {
        origin: origin_of(&reference.origin()).unwrap_or_default(),
        default_scope: format!("repository:{}:pull", reference.repository),
        username: options.oci_username.clone(),
        password: options.oci_password.clone(),
        header: Mutex::new(None),
        agent: agent.clone(),
        options: options.clone(),
    });
    let registry = Registry {
        reference: reference.clone(),
        auth: Arc::clone(&auth),
        agent,
        options: options.clone(),
    };
    let architecture = oci_architecture(std::env::consts::ARCH);
    let resolution = registry.resolve(architecture)?;
    let layer = &resolution.layer;
    let pinned = reference.pinned(&resolution.manifest_digest);
    let described = layer.describe();
    match &reference.reference {
        Reference::Tag(_) => log::info!(
            "{reference} resolved to {pinned} (layer {}: {described})",
            layer.digest
        ),
        Reference::Digest(_) => log::info!("{reference}: layer {}: {described}", layer.digest),
    }
    let blob_url = reference.api("blobs", &layer.digest);
    let mut source = super::http::open_authorized(&blob_url, options, auth)?;
    if let Some(length) = source.length {
        if length != layer.size {
            bail!(
                "GET {blob_url}: the registry serves {length} bytes, but the manifest says \
                 the layer has {}",
                layer.size
            );
        }
    }
    source.length = Some(layer.size);
    source.url = url.to_owned();
    source.name = declared_name(layer);
    source.digest = Some(Checksum::parse(&layer.digest)?);
    let _ = source.stats.image_digest.set(pinned);
    Ok(source)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(url: &str) -> OciReference {
        OciReference::parse(url).unwrap_or_else(|e| panic!("{url}: {e:#}"))
    }

    const DIGEST: &str = "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn references_parse() {
        let r = parsed("oci://registry.example:5000/os/golden:v1.2");
        assert_eq!(r.registry, "registry.example:5000");
        assert_eq!(r.repository, "os/golden");
        assert_eq!(r.reference, Reference::Tag("v1.2".into()));
        assert_eq!(r.to_string(), "oci://registry.example:5000/os/golden:v1.2");
        assert_eq!(
            r.api("manifests", "v1.2"),
            "https://registry.example:5000/v2/os/golden/manifests/v1.2"
        );
        let r = parsed(&format!("oci://ghcr.io/a/b/c@{DIGEST}"));
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.reference, Reference::Digest(DIGEST.into()));
        assert_eq!(r.pinned(DIGEST), format!("oci://ghcr.io/a/b/c@{DIGEST}"));
        let r = parsed("oci://127.0.0.1:5000/debian");
        assert_eq!(r.reference, Reference::Tag("latest".into()));
        // oci2disk's convention: the tag carries the compression.
        let r = parsed("oci://192.168.0.173/test/debian:raw.gz");
        assert_eq!(r.reference, Reference::Tag("raw.gz".into()));
        assert_eq!(r.repository, "test/debian");
        let r = parsed("OCI://[::1]:5000/x:y");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(parsed("oci://[fd00::5]/x").registry, "[fd00::5]");
    }

    #[test]
    fn bad_references_name_the_url_and_the_part() {
        for (bad, says) in [
            ("oci://registry", "oci://registry: no repository"),
            ("oci:///repo:tag", "registry \"\""),
            ("oci://u:p@reg/repo", "set imprint.oci-username="),
            ("oci://reg:99999/repo", "port \"99999\""),
            ("oci://reg:5000:1/repo", "port \"5000:1\""),
            ("oci://[::1]x/repo", "not a host name"),
            ("oci://reg/Repo:tag", "repository \"Repo\""),
            ("oci://reg/a//b", "component \"\""),
            ("oci://reg/repo:", "tag \"\""),
            ("oci://reg/repo:-x", "tag \"-x\""),
            ("oci://reg/repo@sha256:abc", "digest \"sha256:abc\""),
            ("oci://reg/repo@md5:abc", "algorithm \"md5\""),
            ("oci://reg/repo@", "is not sha256:HEX"),
        ] {
            let msg = format!("{:#}", OciReference::parse(bad).unwrap_err());
            assert!(msg.contains(says), "{bad}: {msg}");
            assert!(msg.starts_with(bad), "{bad}: {msg}");
        }
        let upper = DIGEST.to_uppercase().replace("SHA256", "sha256");
        assert!(OciReference::parse(&format!("oci://reg/r@{upper}")).is_err());
    }

    #[test]
    fn challenges_parse() {
        // The example in distribution's docs/spec/auth/token.md.
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer  Realm=https://t/x , scope="a\"b""#),
            Some(Challenge::Bearer {
                realm: "https://t/x".into(),
                service: None,
                scope: Some("a\"b".into()),
            })
        );
        // What distribution's htpasswd access controller sends.
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Bearer service=x"), None, "no realm");
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn origins_compare_without_default_ports() {
        assert_eq!(
            origin_of("https://Reg:443/v2/x").as_deref(),
            Some("https://reg")
        );
        assert_eq!(
            origin_of("https://reg:5000/v2/x?y").as_deref(),
            Some("https://reg:5000")
        );
        assert_ne!(origin_of("http://reg/x"), origin_of("https://reg/x"));
    }

    fn auth(origin: &str) -> RegistryAuth {
        let options = SourceOptions::default();
        RegistryAuth {
            origin: origin_of(origin).unwrap(),
            default_scope: "repository:os/golden:pull".into(),
            username: Some("deploy".into()),
            password: Some(crate::http::Password::new("s3cret")),
            header: Mutex::new(None),
            agent: agent(&options, Exchange::Download).unwrap(),
            options,
        }
    }

    #[test]
    fn the_header_stays_with_the_registry() {
        let auth = auth("https://reg:5000");
        assert!(
            auth.renew("https://reg:5000/v2/x", Some(r#"Basic realm="r""#))
                .unwrap()
        );
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("deploy:s3cret")
        );
        assert_eq!(
            auth.header_for("https://reg:5000/v2/os/golden/blobs/x"),
            Some(basic)
        );
        assert_eq!(auth.header_for("https://storage.example/bucket/x"), None);
        assert_eq!(auth.header_for("https://reg:5001/v2/x"), None);
        assert_eq!(auth.header_for("http://reg:5000/v2/x"), None);
        // Refused again with the same credentials: an error naming the user,
        // not a loop; the password is not in it.
        let msg = format!(
            "{:#}",
            auth.renew("https://reg:5000/v2/x", Some(r#"Basic realm="r""#))
                .unwrap_err()
        );
        assert!(msg.contains("refused imprint.oci-username=deploy"), "{msg}");
        assert!(!msg.contains("s3cret"), "{msg}");
        assert!(!format!("{:?}", auth.password).contains("s3cret"));
    }

    #[test]
    fn basic_without_credentials_says_which_params() {
        let mut auth = auth("https://reg");
        auth.username = None;
        let msg = format!(
            "{:#}",
            auth.renew("https://reg/v2/x", Some("Basic realm=x"))
                .unwrap_err()
        );
        assert!(msg.contains("set imprint.oci-username="), "{msg}");
        let msg = format!(
            "{:#}",
            auth.renew("https://reg/v2/x", Some("Digest x"))
                .unwrap_err()
        );
        assert!(msg.contains("no Bearer or Basic challenge"), "{msg}");
    }

    fn layer(media_type: &str, title: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: DIGEST.into(),
            size: 10,
            annotations: title
                .map(|t| BTreeMap::from([(TITLE.to_owned(), t.to_owned())]))
                .unwrap_or_default(),
            platform: None,
        }
    }

    /// What `oras push reg/os/golden:v1 golden.raw.zst` stores (oras-go's
    /// `oras.PackManifest` with PackManifestVersion1_1: artifactType, the
    /// empty config, the file's name in the title annotation).
    const ORAS_MANIFEST: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "artifactType": "application/vnd.unknown.artifact.v1",
      "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                 "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
                 "size": 2, "data": "e30="},
      "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                  "digest": "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                  "size": 4, "annotations": {"org.opencontainers.image.title": "golden.raw.zst"}}],
      "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"}
    }"#;

    #[test]
    fn an_oras_artifact_is_its_one_layer_declared_by_its_title() {
        let (kind, document) = parse_document("", ORAS_MANIFEST.as_bytes()).unwrap();
        assert_eq!(kind, Kind::Manifest);
        let layers = document.layers.unwrap();
        let chosen = choose_layer(&layers, None).unwrap();
        assert_eq!(chosen.title(), Some("golden.raw.zst"));
        assert_eq!(declared_name(chosen).as_deref(), Some("golden.raw.zst"));
    }

    #[test]
    fn layers_are_chosen_by_title_or_refused_with_a_list() {
        let config = layer("application/vnd.oci.image.layer.v1.tar", Some("README.md"));
        let disk = layer(
            "application/vnd.oci.image.layer.v1.tar",
            Some("disk.img.xz"),
        );
        let layers = [config.clone(), disk.clone()];
        assert_eq!(choose_layer(&layers, None).unwrap(), &disk);
        assert_eq!(choose_layer(&layers, Some("README.md")).unwrap(), &config);
        let msg = format!("{:#}", choose_layer(&layers, Some("x.raw")).unwrap_err());
        assert!(
            msg.contains(
                "imprint.oci-layer=x.raw: no layer has that title \
                 (the titles are: README.md, disk.img.xz)"
            ),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            choose_layer(&[config.clone(), config.clone()], None).unwrap_err()
        );
        assert!(msg.contains("2 layers and none of them"), "{msg}");
        assert!(
            msg.contains("name one with imprint.oci-layer=TITLE"),
            "{msg}"
        );
        assert!(
            msg.contains("README.md (application/vnd.oci.image.layer.v1.tar, 10 bytes)"),
            "{msg}"
        );
        let msg = format!(
            "{:#}",
            choose_layer(&[disk.clone(), disk], None).unwrap_err()
        );
        assert!(msg.contains("2 of them"), "{msg}");
        let msg = format!("{:#}", choose_layer(&[], None).unwrap_err());
        assert!(msg.contains("no layers"), "{msg}");
    }

    #[test]
    fn media_types_declare_compression_without_a_title() {
        let zstd = layer("application/vnd.oci.image.layer.v1.tar+zstd", None);
        assert_eq!(declared_name(&zstd), Some(format!("{DIGEST}.zst")));
        let gzip = layer("application/vnd.docker.image.rootfs.diff.tar.gzip", None);
        assert_eq!(declared_name(&gzip), None);
        let gzip = layer("application/vnd.oci.image.layer.v1.tar+gzip", None);
        assert_eq!(declared_name(&gzip), Some(format!("{DIGEST}.gz")));
        // oci2disk's layer: no title, no suffix; the reference declares it.
        assert_eq!(
            declared_name(&layer("application/vnd.oci.image.layer.v1.tar", None)),
            None
        );
    }

    /// The shape of a multi-platform index as `docker buildx` pushes it
    /// (an attestation manifest under `unknown/unknown`).
    const INDEX: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.index.v1+json",
      "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 100,
         "digest": "sha256:1111111111111111111111111111111111111111111111111111111111111111",
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 100,
         "digest": "sha256:2222222222222222222222222222222222222222222222222222222222222222",
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "size": 100,
         "digest": "sha256:3333333333333333333333333333333333333333333333333333333333333333",
         "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest"}}
      ]
    }"#;

    #[test]
    fn an_index_resolves_to_the_machines_architecture() {
        let (kind, document) = parse_document(OCI_INDEX, INDEX.as_bytes()).unwrap();
        assert_eq!(kind, Kind::Index);
        let manifests = document.manifests.unwrap();
        assert!(
            choose_platform(&manifests, oci_architecture("x86_64"))
                .unwrap()
                .digest
                .starts_with("sha256:2222")
        );
        assert!(
            choose_platform(&manifests, oci_architecture("aarch64"))
                .unwrap()
                .digest
                .starts_with("sha256:1111")
        );
        let msg = format!("{:#}", choose_platform(&manifests, "s390x").unwrap_err());
        assert!(
            msg.contains(
                "no linux/s390x manifest (it has linux/arm64, linux/amd64, unknown/unknown)"
            ),
            "{msg}"
        );
    }

    #[test]
    fn documents_are_told_apart() {
        // Docker's manifest list, typed only by Content-Type.
        let (kind, _) =
            parse_document(DOCKER_LIST, br#"{"schemaVersion":2,"manifests":[]}"#).unwrap();
        assert_eq!(kind, Kind::Index);
        let msg = format!(
            "{:#}",
            parse_document(
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
                b"{}"
            )
            .unwrap_err()
        );
        assert!(msg.contains("schema 1"), "{msg}");
        assert!(parse_document("", b"<html>").is_err());
    }

    #[test]
    fn registry_error_bodies_are_quoted() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(
            registry_errors(body).as_deref(),
            Some("MANIFEST_UNKNOWN: manifest unknown")
        );
        assert_eq!(registry_errors(b"not json"), None);
    }

    /// A registry stand-in over HTTPS: the fixture server serving the
    /// registry API's paths as files (distribution spec, "Pulling
    /// manifests" and "Pulling blobs").
    fn stand_in() -> (
        imprint_qemu::http::FixtureServer,
        SourceOptions,
        tempfile::TempDir,
    ) {
        let ca = imprint_qemu::http::TestCa::new("oci stand-in CA").unwrap();
        let cert = ca.issue_for_fixture().unwrap();
        let server =
            imprint_qemu::http::FixtureServer::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_path = dir.path().join("ca.pem");
        std::fs::write(&ca_path, ca.cert_pem()).unwrap();
        let options = SourceOptions {
            ca: Some(ca_path.to_str().unwrap().to_owned()),
            retries: 1,
            ..SourceOptions::default()
        };
        (server, options, dir)
    }

    #[test]
    fn a_tag_opens_the_titled_layer_with_its_digest_and_pinned_reference() {
        let (server, options, _dir) = stand_in();
        server.add_file(
            "v2/os/golden/manifests/v1",
            ORAS_MANIFEST.as_bytes().to_vec(),
        );
        // DIGEST is sha256("test"), the layer ORAS_MANIFEST names.
        server.add_file(&format!("v2/os/golden/blobs/{DIGEST}"), b"test".to_vec());
        let url = format!("oci://127.0.0.1:{}/os/golden:v1", server.port());
        let mut source = open(&url, &options).unwrap();
        assert_eq!(source.url, url);
        assert_eq!(source.length, Some(4));
        assert_eq!(source.name.as_deref(), Some("golden.raw.zst"));
        assert_eq!(source.digest, Some(Checksum::parse(DIGEST).unwrap()));
        let manifest = digest_of("sha256:", ORAS_MANIFEST.as_bytes());
        assert_eq!(
            source.stats.image_digest.get(),
            Some(&format!(
                "oci://127.0.0.1:{}/os/golden@{manifest}",
                server.port()
            ))
        );
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut source.reader, &mut read).unwrap();
        assert_eq!(read, b"test");
    }

    #[test]
    fn a_manifest_that_does_not_hash_to_its_digest_is_refused() {
        let (server, options, _dir) = stand_in();
        let claimed = format!("sha256:{}", "0".repeat(64));
        server.add_file(
            &format!("v2/os/golden/manifests/{claimed}"),
            ORAS_MANIFEST.as_bytes().to_vec(),
        );
        let url = format!("oci://127.0.0.1:{}/os/golden@{claimed}", server.port());
        let msg = format!("{:#}", open(&url, &options).err().unwrap());
        let served = digest_of("sha256:", ORAS_MANIFEST.as_bytes());
        assert!(
            msg.contains(&format!(
                "/manifests/{claimed}: the registry served a manifest whose digest is {served}"
            )),
            "{msg}"
        );
    }

    #[test]
    fn a_blob_of_another_length_than_the_manifest_says_is_refused() {
        let (server, options, _dir) = stand_in();
        server.add_file(
            "v2/os/golden/manifests/v1",
            ORAS_MANIFEST.as_bytes().to_vec(),
        );
        server.add_file(&format!("v2/os/golden/blobs/{DIGEST}"), b"tests".to_vec());
        let url = format!("oci://127.0.0.1:{}/os/golden:v1", server.port());
        let msg = format!("{:#}", open(&url, &options).err().unwrap());
        assert!(
            msg.contains("the registry serves 5 bytes, but the manifest says the layer has 4"),
            "{msg}"
        );
    }
}

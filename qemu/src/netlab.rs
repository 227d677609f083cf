//! A fleet in network namespaces: real nginx origins and slice caches,
//! clients behind `tc` rate caps, all on one host.
//!
//! Every node is a network namespace with one veth (`eth0`) into a switch
//! namespace that holds a bridge; nothing is added to the host's own
//! namespace. A [`Link`] caps what a node sends (a `tbf` qdisc on its `eth0`)
//! and what it receives (one on the switch's end of its veth). nginx runs as
//! a plain process inside a node with its own prefix, config and temp
//! directories (`daemon off; master_process off;`: one process, so killing it
//! leaves nothing behind); the Debian service and `/etc/nginx` are never used.
//!
//! Dropping the [`Lab`] kills its processes and deletes its namespaces, which
//! takes the veths and the bridge with them, on a panic too. A lab left behind
//! by a killed test process is deleted by the next [`Lab::new`].
//!
//! The nginx configs are the ones the README shows: [`slice_cache_location`]
//! is tested against it.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Every namespace of every lab starts with this, then the owning pid.
const PREFIX: &str = "imprint-lab-";

/// The subnet every lab uses inside its own switch (labs never share one).
const SUBNET: [u8; 3] = [10, 77, 0];

/// A rate in bits per second, as `tc` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate(pub u64);

impl Rate {
    pub const fn mbit(n: u64) -> Rate {
        Rate(n * 1_000_000)
    }
    pub const fn gbit(n: u64) -> Rate {
        Rate(n * 1_000_000_000)
    }
    /// Bytes per second.
    pub fn bytes_per_second(self) -> f64 {
        self.0 as f64 / 8.0
    }
}

/// A node's link to the switch: `None` is an uncapped veth.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    /// Caps what the node sends (an origin's uplink).
    pub send: Option<Rate>,
    /// Caps what the node receives (a client's downlink).
    pub receive: Option<Rate>,
}

impl Link {
    pub fn uncapped() -> Link {
        Link::default()
    }
    pub fn send(rate: Rate) -> Link {
        Link {
            send: Some(rate),
            receive: None,
        }
    }
    pub fn receive(rate: Rate) -> Link {
        Link {
            send: None,
            receive: Some(rate),
        }
    }
}

/// One namespace on the lab's switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
    /// Its veth's end in the switch namespace.
    pub port: String,
}

impl Node {
    /// `program` run inside this node's namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.netns]).arg(program);
        command
    }
}

/// Why a lab could not be built: the caller skips (loudly) only on `Refused`.
#[derive(Debug)]
pub enum LabError {
    /// `ip netns add` was refused (not root, no CAP_SYS_ADMIN, no netns support).
    Refused(String),
    Other(anyhow::Error),
}

impl std::fmt::Display for LabError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabError::Refused(why) => write!(f, "network namespaces refused: {why}"),
            LabError::Other(e) => write!(f, "{e:#}"),
        }
    }
}

/// A process the lab started; [`Lab::kill`] or the lab's drop ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId(usize);

/// A running nginx: where its files are.
#[derive(Clone, Debug)]
pub struct Nginx {
    pub proc: ProcId,
    pub node: Node,
    pub prefix: PathBuf,
}

impl Nginx {
    /// `http://IP` of this server.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.node.ip)
    }

    /// Its access log, one [`LoggedRequest`] a line.
    pub fn access_log(&self) -> Result<Vec<LoggedRequest>> {
        let path = self.prefix.join("access.log");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        text.lines().map(LoggedRequest::parse).collect()
    }

    /// Body bytes this server sent for `uri` (the path, without the query),
    /// over every request in its access log.
    pub fn body_bytes_sent(&self, uri: &str) -> Result<u64> {
        Ok(self
            .access_log()?
            .iter()
            .filter(|r| r.uri == uri)
            .map(|r| r.body_bytes_sent)
            .sum())
    }
}

/// One line of the access log ([`LOG_FORMAT`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    pub method: String,
    pub uri: String,
    pub status: u16,
    pub body_bytes_sent: u64,
    /// The request's Range header, `-` when it had none.
    pub range: String,
}

/// `log_format` of every nginx the lab starts: `$uri` is the path without the
/// query, `$body_bytes_sent` what the server sent of the body (for a request
/// the client abandoned too, so a killed cache's half-filled slice counts).
pub const LOG_FORMAT: &str = "$request_method $uri $status $body_bytes_sent $http_range";

impl LoggedRequest {
    fn parse(line: &str) -> Result<LoggedRequest> {
        let fields: Vec<&str> = line.split(' ').collect();
        let [method, uri, status, bytes, range] = fields[..] else {
            bail!("access log line {line:?} is not {LOG_FORMAT:?}");
        };
        Ok(LoggedRequest {
            method: method.to_owned(),
            uri: uri.to_owned(),
            status: status
                .parse()
                .with_context(|| format!("status in access log line {line:?}"))?,
            body_bytes_sent: bytes
                .parse()
                .with_context(|| format!("$body_bytes_sent in access log line {line:?}"))?,
            range: range.to_owned(),
        })
    }
}

/// The `location` block of a slice cache in front of `upstream` (`HOST[:PORT]`).
///
/// From nginx's own documentation of `ngx_http_slice_module` and
/// `ngx_http_proxy_module`: the slice module turns one request into
/// sequential subrequests of `slice` bytes, each cached under
/// `$uri$slice_range` (no `$args`, so every presigned URL of one object shares
/// the cache); `proxy_cache_lock` lets one request per slice fill it while the
/// others wait, and its timeout and age must outlast one slice's fill at the
/// origin's rate, or the waiters go to the origin themselves.
pub fn slice_cache_location(upstream: &str, slice: &str, lock: Duration) -> String {
    let lock = lock.as_secs();
    format!(
        "location / {{
    slice              {slice};
    proxy_cache        slices;
    proxy_cache_key    $uri$slice_range;
    proxy_set_header   Range $slice_range;
    proxy_http_version 1.1;
    proxy_set_header   Connection \"\";
    proxy_cache_valid  200 206 1h;
    proxy_cache_lock         on;
    proxy_cache_lock_timeout {lock}s;
    proxy_cache_lock_age     {lock}s;
    proxy_pass         http://{upstream};
}}
"
    )
}

/// The `proxy_cache_path` a slice cache's [`slice_cache_location`] uses.
pub fn slice_cache_path(dir: &Path) -> String {
    format!(
        "proxy_cache_path {} levels=1:2 keys_zone=slices:16m max_size=8g inactive=1d use_temp_path=off;\n",
        dir.display()
    )
}

/// An origin's `location /`: files under `root`, each connection capped at
/// `limit_rate` (nginx's own per-connection limit) when given.
pub fn origin_location(root: &Path, limit_rate: Option<&str>) -> String {
    let mut block = format!("location / {{\n    root {};\n", root.display());
    if let Some(rate) = limit_rate {
        let _ = writeln!(block, "    limit_rate {rate};");
    }
    block.push_str("}\n");
    block
}

/// A `location` that serves `root` only with a valid signature, as
/// `ngx_http_secure_link_module` documents it: `md5` is the base64url MD5 of
/// `EXPIRES URI SECRET` (no separators but the space before the secret),
/// `expires` a Unix time. A missing or wrong signature is 403, an expired
/// one 410.
pub fn secure_link_location(prefix: &str, root: &Path, secret: &str) -> String {
    format!(
        "location {prefix} {{
    root {root};
    secure_link     $arg_md5,$arg_expires;
    secure_link_md5 \"$secure_link_expires$uri {secret}\";
    if ($secure_link = \"\") {{ return 403; }}
    if ($secure_link = \"0\") {{ return 410; }}
}}
",
        root = root.display()
    )
}

/// The query that [`secure_link_location`] accepts for `uri` until `expires`.
pub fn presign(uri: &str, expires: u64, secret: &str) -> Result<String> {
    let mut openssl = Command::new("openssl")
        .args(["md5", "-binary"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running openssl md5")?;
    {
        use std::io::Write;
        let mut stdin = openssl.stdin.take().context("openssl's stdin")?;
        write!(stdin, "{expires}{uri} {secret}").context("writing to openssl md5")?;
    }
    let out = openssl.wait_with_output().context("waiting for openssl")?;
    if !out.status.success() || out.stdout.len() != 16 {
        bail!("openssl md5 failed: {}", out.status);
    }
    Ok(format!("md5={}&expires={expires}", base64url(&out.stdout)))
}

/// RFC 4648 section 5, without padding (what secure_link decodes).
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// The port opentracker listens on (its own default).
pub const TRACKER_PORT: u16 = 6969;
/// aria2's BitTorrent port in every node (each node has its own namespace).
pub const ARIA2_PORT: u16 = 6881;
/// How many peers the origin's seeder serves at once (aria2's
/// `--bt-max-peers`, 55 by default). Connected to every peer, the seeder
/// sends the same pieces to many of them before they can trade: eight
/// aria2 leechers of a 256 MiB image took 2.0 copies from a 500 Mbit/s
/// seeder in this lab, 1.38 to 1.48 with 4 peers, 1.18 with 2; eight
/// imprint clients 1.60 with 4 and 1.17 to 1.21 with 2, no slower. The
/// other peers get every piece from the swarm, as behind BEP 16's
/// super-seeding, which aria2 lacks.
pub const SEEDER_MAX_PEERS: u32 = 2;

/// An `aria2c` on this host's own network (no namespace) seeding a
/// torrent's file from a directory without checking it first
/// (`--bt-seed-unverified`), no DHT, local peer discovery or ratio limit;
/// killed on drop. The host tests' and the VM tests' seeder.
pub struct HostSeeder(Child);

impl HostSeeder {
    /// Seeds `torrent` from `dir`, listening on `port`; `extra` options
    /// come first.
    pub fn start(torrent: &Path, dir: &Path, port: u16, extra: &[&str]) -> Result<HostSeeder> {
        let child = Command::new("aria2c")
            .args(extra)
            .args([
                "--seed-ratio=0.0",
                "--bt-seed-unverified=true",
                "--enable-dht=false",
                "--enable-dht6=false",
                "--bt-enable-lpd=false",
                "--summary-interval=0",
                "--console-log-level=warn",
            ])
            .arg(format!("--listen-port={port}"))
            .arg(format!("--dir={}", dir.display()))
            .arg(torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting aria2c (scripts/setup installs it)")?;
        Ok(HostSeeder(child))
    }
}

impl Drop for HostSeeder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
/// The lab seeder's JSON-RPC port, on the origin's loopback only.
const ARIA2_RPC_PORT: u16 = 6800;

/// opentracker's config for a tracker on `listen` (`IP:PORT`) that answers
/// only for the info hashes in `ROOTDIR/whitelist.txt`.
///
/// From opentracker's sample config and `opentracker.c`: run as root, it
/// chroots to `tracker.rootdir` and then setuids to `tracker.user`, and
/// reads the whitelist *after* the chroot, so `access.whitelist` is a path
/// inside the root (Debian's sample, an absolute path outside it, leaves
/// the tracker refusing every hash). The file holds one hex info hash a line;
/// an announce for any other hash is answered with the failure reason
/// "Requested download is not authorized for use with this tracker."
/// `listen.tcp` alone keeps UDP off: BEP 15 announces are not tested here.
pub fn opentracker_config(listen: &str, rootdir: &Path) -> String {
    format!(
        "listen.tcp       {listen}
access.whitelist /whitelist.txt
tracker.rootdir  {}
tracker.user     _opentracker
",
        rootdir.display()
    )
}

/// A running opentracker.
#[derive(Clone, Debug)]
pub struct Tracker {
    pub proc: ProcId,
    pub node: Node,
    /// Its root: the config, the whitelist and its output.
    pub dir: PathBuf,
}

impl Tracker {
    /// The announce URL a torrent names for this tracker.
    pub fn announce_url(&self) -> String {
        format!("http://{}:{TRACKER_PORT}/announce", self.node.ip)
    }

    /// The tracker's answer to a scrape of `infohash` (hex), bencoded as it
    /// came: for a hash it tracks `d5:filesd20:HASHd8:completei1e…eee`.
    pub fn scrape(&self, infohash: &str) -> Result<Vec<u8>> {
        let url = format!(
            "http://{}:{TRACKER_PORT}/scrape?info_hash={}",
            self.node.ip,
            percent_encode_hex(infohash)?
        );
        curl_in(&self.node, &url)
    }

    /// The tracker's answer to an announce of `infohash` by a made-up peer
    /// (BEP 3's query, compact peers as BEP 23 has it).
    pub fn announce(&self, infohash: &str) -> Result<Vec<u8>> {
        let url = format!(
            "{}?info_hash={}&peer_id=-LAB000-000000000000&port=1&uploaded=0&downloaded=0&left=1&compact=1",
            self.announce_url(),
            percent_encode_hex(infohash)?
        );
        curl_in(&self.node, &url)
    }

    /// Seeders of `infohash` the tracker knows of: the scrape's `complete`,
    /// 0 while no peer has announced it (an empty `files` dictionary).
    pub fn seeders(&self, infohash: &str) -> Result<u64> {
        let answer = self.scrape(infohash)?;
        let text = String::from_utf8_lossy(&answer);
        if text == "d5:filesdee" {
            return Ok(0);
        }
        text.split_once("8:completei")
            .and_then(|(_, rest)| rest.split_once('e'))
            .and_then(|(n, _)| n.parse().ok())
            .with_context(|| format!("no complete count in the scrape of {infohash}: {text:?}"))
    }
}

/// A running `aria2c` seeding one torrent from a directory.
#[derive(Clone, Debug)]
pub struct Seeder {
    pub proc: ProcId,
    pub node: Node,
    pub log: PathBuf,
}

impl Seeder {
    /// `aria2.tellActive` over the seeder's JSON-RPC, for its one download.
    fn status(&self) -> Result<serde_json::Value> {
        let out = self
            .node
            .command("curl")
            .args(["-sS", "--max-time", "5", "-d"])
            .arg(r#"{"jsonrpc":"2.0","id":"lab","method":"aria2.tellActive"}"#)
            .arg(format!("http://127.0.0.1:{ARIA2_RPC_PORT}/jsonrpc"))
            .output()
            .context("running curl for aria2's RPC")?;
        if !out.status.success() {
            bail!(
                "aria2 RPC on {}: {}",
                self.node.name,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let answer: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing aria2's tellActive answer")?;
        answer["result"]
            .as_array()
            .and_then(|active| active.first())
            .cloned()
            .with_context(|| {
                format!(
                    "aria2 on {} has no active download: {answer}",
                    self.node.name
                )
            })
    }

    /// Whether it has checked every piece and seeds (aria2's `seeder`).
    pub fn seeding(&self) -> Result<bool> {
        Ok(self.status()?["seeder"] == "true")
    }

    /// Bytes of the torrent it has uploaded to peers (aria2's
    /// `uploadLength`: piece payload, no protocol overhead).
    pub fn uploaded(&self) -> Result<u64> {
        let status = self.status()?;
        status["uploadLength"]
            .as_str()
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("no uploadLength from aria2: {status}"))
    }
}

/// The arguments every lab `aria2c` gets: peers from the tracker only (no
/// DHT, no local peer discovery, no peer exchange), no preallocation, and a
/// log beside its output.
pub fn aria2_common_args(log: &Path) -> Vec<String> {
    vec![
        "--enable-dht=false".into(),
        "--enable-dht6=false".into(),
        "--bt-enable-lpd=false".into(),
        "--enable-peer-exchange=false".into(),
        format!("--listen-port={ARIA2_PORT}"),
        "--file-allocation=none".into(),
        "--summary-interval=0".into(),
        "--console-log-level=warn".into(),
        "--log-level=notice".into(),
        format!("--log={}", log.display()),
    ]
}

/// `%XX` for every byte of a hex string (a BEP 3 `info_hash` in a query).
fn percent_encode_hex(hex: &str) -> Result<String> {
    if hex.len() != 40 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("info hash {hex:?} is not 40 hex digits");
    }
    Ok(hex
        .as_bytes()
        .chunks(2)
        .map(|pair| format!("%{}", String::from_utf8_lossy(pair)))
        .collect())
}

/// `curl URL` run inside `node`: the body, whatever the status.
fn curl_in(node: &Node, url: &str) -> Result<Vec<u8>> {
    let out = node
        .command("curl")
        .args(["-sS", "--max-time", "5", url])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "curl {url} in {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// A network of namespaces on one switch, and the processes in them.
pub struct Lab {
    id: String,
    switch: String,
    nodes: Vec<Node>,
    procs: Vec<Option<Child>>,
    dir: tempfile::TempDir,
}

impl Lab {
    /// A switch namespace with a bridge, and nothing on it yet.
    pub fn new() -> std::result::Result<Lab, LabError> {
        static COUNT: AtomicU32 = AtomicU32::new(0);
        remove_stale_labs();
        let id = format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        );
        let switch = format!("{id}-switch");
        let out = Command::new("ip")
            .args(["netns", "add", &switch])
            .output()
            .map_err(|e| LabError::Refused(format!("running ip: {e}")))?;
        if !out.status.success() {
            return Err(LabError::Refused(format!(
                "ip netns add {switch}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let dir = tempfile::Builder::new()
            .prefix("imprint-lab")
            .tempdir()
            .map_err(|e| LabError::Other(anyhow::Error::new(e).context("making the lab dir")))?;
        let lab = Lab {
            id,
            switch,
            nodes: Vec::new(),
            procs: Vec::new(),
            dir,
        };
        lab.ip_in(&lab.switch, &["link", "set", "lo", "up"])
            .and_then(|()| lab.ip_in(&lab.switch, &["link", "add", "br0", "type", "bridge"]))
            .and_then(|()| lab.ip_in(&lab.switch, &["link", "set", "br0", "up"]))
            .map_err(LabError::Other)?;
        Ok(lab)
    }

    /// The lab's scratch directory (removed with the lab).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a namespace on the switch with the next address and `link`'s caps.
    pub fn node(&mut self, name: &str, link: Link) -> Result<Node> {
        let index = self.nodes.len() + 1;
        let host = u8::try_from(index + 1).context("too many nodes in one lab")?;
        let node = Node {
            name: name.to_owned(),
            netns: format!("{}-{name}", self.id),
            ip: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], host),
            port: format!("p{index}"),
        };
        run(Command::new("ip").args(["netns", "add", &node.netns]))?;
        self.nodes.push(node.clone());
        let port = node.port.clone();
        self.ip_in(
            &self.switch,
            &[
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &node.netns,
            ],
        )?;
        self.ip_in(&self.switch, &["link", "set", &port, "master", "br0"])?;
        self.ip_in(&self.switch, &["link", "set", &port, "up"])?;
        self.ip_in(&node.netns, &["link", "set", "lo", "up"])?;
        let cidr = format!("{}/24", node.ip);
        self.ip_in(&node.netns, &["addr", "add", &cidr, "dev", "eth0"])?;
        self.ip_in(&node.netns, &["link", "set", "eth0", "up"])?;
        if let Some(rate) = link.send {
            cap(&node.netns, "eth0", rate)?;
        }
        if let Some(rate) = link.receive {
            cap(&self.switch, &port, rate)?;
        }
        Ok(node)
    }

    /// Starts `command` (made by [`Node::command`]) as a lab process.
    pub fn spawn(&mut self, command: &mut Command) -> Result<ProcId> {
        let child = command
            .spawn()
            .with_context(|| format!("starting {command:?}"))?;
        self.procs.push(Some(child));
        Ok(ProcId(self.procs.len() - 1))
    }

    /// Kills a lab process (SIGKILL) and reaps it; a no-op when it is gone.
    pub fn kill(&mut self, proc: ProcId) {
        if let Some(mut child) = self.procs.get_mut(proc.0).and_then(Option::take) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether a lab process has exited, without waiting.
    pub fn try_wait(&mut self, proc: ProcId) -> Result<Option<std::process::ExitStatus>> {
        let child = self
            .procs
            .get_mut(proc.0)
            .and_then(Option::as_mut)
            .context("asking after a process already reaped")?;
        child.try_wait().context("checking on a lab process")
    }

    /// Waits for a lab process and returns what it printed (when its output
    /// was piped).
    pub fn wait(&mut self, proc: ProcId) -> Result<Output> {
        let child = self
            .procs
            .get_mut(proc.0)
            .and_then(Option::take)
            .context("waiting for a process twice")?;
        child
            .wait_with_output()
            .context("waiting for a lab process")
    }

    /// Starts nginx on `node` with `http` as the body of its `http {}` block
    /// (the lab adds logs, temp paths and types), and waits until it answers.
    pub fn nginx(&mut self, node: &Node, http: &str) -> Result<Nginx> {
        let prefix = self.dir.path().join(format!("nginx-{}", node.name));
        std::fs::create_dir_all(prefix.join("tmp"))
            .with_context(|| format!("making {}", prefix.display()))?;
        let p = prefix.display();
        let conf = format!(
            "daemon off;
master_process off;
pid {p}/nginx.pid;
error_log {p}/error.log info;
events {{ worker_connections 4096; }}
http {{
    log_format imprint '{LOG_FORMAT}';
    access_log {p}/access.log imprint;
    client_body_temp_path {p}/tmp/body;
    proxy_temp_path {p}/tmp/proxy;
    fastcgi_temp_path {p}/tmp/fastcgi;
    uwsgi_temp_path {p}/tmp/uwsgi;
    scgi_temp_path {p}/tmp/scgi;
    default_type application/octet-stream;
    sendfile on;
    keepalive_requests 100000;
{http}}}
"
        );
        let conf_path = prefix.join("nginx.conf");
        std::fs::write(&conf_path, conf)
            .with_context(|| format!("writing {}", conf_path.display()))?;
        let mut command = node.command("nginx");
        command
            .arg("-p")
            .arg(&prefix)
            .arg("-e")
            .arg(prefix.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null());
        let proc = self.spawn(&mut command)?;
        let nginx = Nginx {
            proc,
            node: node.clone(),
            prefix,
        };
        let log = nginx.prefix.join("error.log");
        self.wait_listening(nginx.proc, node, 80, "nginx", &log)?;
        Ok(nginx)
    }

    /// Polls `node`'s listening TCP sockets until `port` is there; `what`
    /// and its `log` name the server when it exits or never listens.
    fn wait_listening(
        &mut self,
        proc: ProcId,
        node: &Node,
        port: u16,
        what: &str,
        log: &Path,
    ) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(Some(child)) = self.procs.get_mut(proc.0)
                && let Some(status) = child
                    .try_wait()
                    .with_context(|| format!("checking on {what}"))?
            {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                bail!("{what} on {} exited ({status}): {log}", node.name);
            }
            let out = node
                .command("ss")
                .args(["-Htln", "sport", "=", &format!(":{port}")])
                .output()
                .context("running ss")?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{what} on {} is not listening on {port} after 10 s",
                    node.name
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts opentracker on `node` (see [`opentracker_config`]), tracking
    /// only the info hashes in `whitelist`, and waits until it listens.
    pub fn opentracker(&mut self, node: &Node, whitelist: &[&str]) -> Result<Tracker> {
        let dir = self.dir.path().join(format!("opentracker-{}", node.name));
        std::fs::create_dir_all(&dir).with_context(|| format!("making {}", dir.display()))?;
        // After its chroot opentracker is _opentracker, which must still
        // read the whitelist in its root.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("opening up {}", dir.display()))?;
        let mut list = String::new();
        for hash in whitelist {
            let _ = writeln!(list, "{hash}");
        }
        std::fs::write(dir.join("whitelist.txt"), list).context("writing the whitelist")?;
        let conf = dir.join("opentracker.conf");
        let listen = format!("{}:{TRACKER_PORT}", node.ip);
        std::fs::write(&conf, opentracker_config(&listen, &dir))
            .with_context(|| format!("writing {}", conf.display()))?;
        let log = dir.join("opentracker.log");
        let out =
            std::fs::File::create(&log).with_context(|| format!("making {}", log.display()))?;
        let err = out.try_clone().context("opentracker's log")?;
        let mut command = node.command("opentracker");
        command
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let proc = self.spawn(&mut command)?;
        self.wait_listening(proc, node, TRACKER_PORT, "opentracker", &log)?;
        Ok(Tracker {
            proc,
            node: node.clone(),
            dir,
        })
    }

    /// Starts `aria2c` on `node` seeding `torrent` from `dir` (which holds
    /// the torrent's file): every piece checked first (`-V`), then seeding
    /// with no ratio or time limit (`--seed-ratio=0.0`) to at most
    /// [`SEEDER_MAX_PEERS`] peers at once, JSON-RPC on the node's loopback
    /// for [`Seeder::uploaded`]. Waits until it seeds.
    pub fn aria2_seeder(&mut self, node: &Node, torrent: &Path, dir: &Path) -> Result<Seeder> {
        let log = self
            .dir
            .path()
            .join(format!("aria2-seeder-{}.log", node.name));
        let mut command = node.command("aria2c");
        command
            .args(aria2_common_args(&log))
            .arg(format!("--dir={}", dir.display()))
            .args([
                "--check-integrity=true",
                "--seed-ratio=0.0",
                &format!("--bt-max-peers={SEEDER_MAX_PEERS}"),
                "--enable-rpc=true",
                &format!("--rpc-listen-port={ARIA2_RPC_PORT}"),
            ])
            .arg(torrent)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let proc = self.spawn(&mut command)?;
        let seeder = Seeder {
            proc,
            node: node.clone(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.try_wait(proc)? {
                let log = std::fs::read_to_string(&seeder.log).unwrap_or_default();
                bail!("aria2c seeder on {} exited ({status}): {log}", node.name);
            }
            if seeder.seeding().unwrap_or(false) {
                return Ok(seeder);
            }
            if Instant::now() > deadline {
                bail!(
                    "aria2c on {} is not seeding {} after 30 s",
                    node.name,
                    torrent.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Bytes the switch has sent to `nodes` so far, frames and all: what
    /// they have received, read from the kernel's counters without touching
    /// the nodes.
    pub fn bytes_received(&self, nodes: &[Node]) -> Result<u64> {
        self.port_counter(nodes, "tx")
    }

    /// The sum of one counter (`tx` or `rx` bytes) of `nodes`' switch ports.
    fn port_counter(&self, nodes: &[Node], direction: &str) -> Result<u64> {
        let out = Command::new("ip")
            .args(["-n", &self.switch, "-s", "-j", "link", "show"])
            .output()
            .context("running ip -s link show")?;
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing ip -j link show")?;
        let mut total = 0;
        for node in nodes {
            let link = links
                .as_array()
                .and_then(|links| links.iter().find(|l| l["ifname"] == node.port.as_str()))
                .with_context(|| format!("no port {} on the switch", node.port))?;
            total += link["stats64"][direction]["bytes"]
                .as_u64()
                .with_context(|| format!("no {direction} bytes for port {}", node.port))?;
        }
        Ok(total)
    }

    /// Bytes `nodes` have sent into the switch so far, frames and all (the
    /// switch ports' receive counters): for an origin, everything that left
    /// it, HTTP bodies, BitTorrent pieces and every protocol's overhead.
    pub fn bytes_sent(&self, nodes: &[Node]) -> Result<u64> {
        self.port_counter(nodes, "rx")
    }

    fn ip_in(&self, netns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", netns]).args(args))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for index in 0..self.procs.len() {
            self.kill(ProcId(index));
        }
        // What the lab's processes started and left behind (a killed
        // imprint's aria2c) would keep its namespace alive, seeding.
        for node in &self.nodes {
            kill_left_in(&node.netns);
        }
        for netns in self
            .nodes
            .iter()
            .map(|n| n.netns.as_str())
            .chain([self.switch.as_str()])
        {
            if let Err(e) = run(Command::new("ip").args(["netns", "del", netns])) {
                eprintln!("netlab: {e:#}");
            }
        }
    }
}

/// A `tbf` qdisc on `dev`: its burst holds at least one 64 KiB GSO packet, or
/// a veth's large segments would never fit the bucket.
fn cap(netns: &str, dev: &str, rate: Rate) -> Result<()> {
    let burst = (rate.0 / 8 / 100).max(256 << 10);
    run(Command::new("ip").args([
        "netns",
        "exec",
        netns,
        "tc",
        "qdisc",
        "replace",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        &format!("{}bit", rate.0),
        "burst",
        &burst.to_string(),
        "latency",
        "100ms",
    ]))
}

/// SIGKILLs every process still in `netns` (`ip netns pids`).
fn kill_left_in(netns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if pid.parse::<u32>().is_ok() {
            let _ = Command::new("kill").args(["-KILL", pid]).output();
        }
    }
}

/// Deletes the namespaces of labs whose process is gone (killed before its drop ran).
fn remove_stale_labs() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            let _ = run(Command::new("ip").args(["netns", "del", name]));
        }
    }
}

fn run(command: &mut Command) -> Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        // RFC 4648 section 10, in the URL alphabet without padding.
        for (input, want) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(input.as_bytes()), want, "{input:?}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn info_hashes_are_percent_encoded_byte_by_byte_and_bad_ones_named() {
        let hex = "0123456789abcdef0123456789ABCDEF01234567";
        assert_eq!(
            percent_encode_hex(hex).unwrap(),
            "%01%23%45%67%89%ab%cd%ef%01%23%45%67%89%AB%CD%EF%01%23%45%67"
        );
        let e = percent_encode_hex("0123").unwrap_err();
        assert!(e.to_string().contains("\"0123\""), "{e}");
        assert!(percent_encode_hex(&"g".repeat(40)).is_err());
    }

    #[test]
    fn access_log_lines_parse_and_bad_ones_name_the_format() {
        let r = LoggedRequest::parse("GET /img.raw 206 16777216 bytes=0-16777215").unwrap();
        assert_eq!(r.uri, "/img.raw");
        assert_eq!(r.status, 206);
        assert_eq!(r.body_bytes_sent, 16 << 20);
        let e = LoggedRequest::parse("GET /img.raw 200").unwrap_err();
        assert!(e.to_string().contains("$body_bytes_sent"), "{e}");
    }
}

//! The P2P initrd is complete: unpacked into an empty directory, its
//! aria2c runs there (chroot, so only what the initrd holds can be
//! loaded, ICU's stub data library included) and downloads a torrent made
//! by `scripts/publish-image` from a real swarm: opentracker with the
//! torrent's infohash on its whitelist and the host's aria2c seeding.
//! Needs root for chroot, as CI has.

use std::io::Read as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use imprint_build::cpio::read_archive;
use imprint_build::{initramfs, p2p};

const S_IFMT: u32 = 0o170_000;
const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The initrd as `imprint-build p2p-initrd` writes it.
fn build_initrd() -> Vec<u8> {
    let archive = p2p::archive(Path::new(p2p::ARIA2C_PATH), Path::new("/"), None).unwrap();
    initramfs::compress(&archive.to_bytes(0).unwrap()).unwrap()
}

/// Unpacks the compressed initrd the way the kernel would into `dir`.
fn unpack(compressed: &[u8], dir: &Path) {
    let cpio = zstd::decode_all(compressed).unwrap();
    for member in read_archive(&cpio).unwrap() {
        let path = dir.join(&member.name);
        match member.mode & S_IFMT {
            S_IFDIR => std::fs::create_dir_all(&path).unwrap(),
            S_IFREG => {
                std::fs::write(&path, &member.data).unwrap();
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(member.mode & 0o7777),
                )
                .unwrap();
            }
            other => panic!("unexpected member type {other:o} for {}", member.name),
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process killed when the test ends, however it ends.
struct Running(Child, &'static str);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(what: &'static str, command: &mut Command) -> Running {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what} (scripts/setup installs it): {e}"));
    Running(child, what)
}

#[test]
fn aria2c_runs_from_the_initrd_alone() {
    let compressed = build_initrd();
    // 9.2 MB with ICU's data stubbed (18.0 MB without): a bound so growth
    // is noticed.
    assert!(compressed.len() < 12 << 20, "{} bytes", compressed.len());
    let dir = tempfile::tempdir().unwrap();
    unpack(&compressed, dir.path());
    let out = Command::new("chroot")
        .arg(dir.path())
        .args([p2p::ARIA2C_PATH, "--version"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "aria2c --version in the P2P initrd: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("aria2 version "), "{stdout}");
    let features = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Enabled Features: "))
        .unwrap_or_else(|| panic!("no feature list: {stdout}"));
    for feature in ["BitTorrent", "Message Digest"] {
        assert!(features.contains(feature), "{features}");
    }
}

#[test]
fn the_initrds_aria2c_downloads_a_published_torrent_from_a_real_swarm() {
    let work = tempfile::tempdir().unwrap();
    let work = work.path();
    // A published image: scripts/publish-image's .zst and private torrent.
    let raw = work.join("golden.raw");
    let image: Vec<u8> = (0..9u32 << 20)
        .map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()[1])
        .collect();
    std::fs::write(&raw, &image).unwrap();
    let tracker_port = free_port();
    let published = work.join("pub");
    let out = Command::new(repo_root().join("scripts/publish-image"))
        .arg(&raw)
        .arg(&published)
        .env(
            "TRACKER",
            format!("http://127.0.0.1:{tracker_port}/announce"),
        )
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "publish-image: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let infohash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("infohash "))
        .unwrap_or_else(|| panic!("no infohash: {stdout}"));
    let zst = std::fs::read(published.join("golden.raw.zst")).unwrap();

    // opentracker chroots into -d before it reads the whitelist, so the
    // whitelist's path is inside that directory.
    let tracker_dir = work.join("tracker");
    std::fs::create_dir_all(&tracker_dir).unwrap();
    std::fs::write(tracker_dir.join("whitelist"), format!("{infohash}\n")).unwrap();
    let port = tracker_port.to_string();
    let _tracker = spawn(
        "opentracker",
        Command::new("opentracker")
            .args(["-i", "127.0.0.1", "-p", &port, "-P", &port, "-u", "nobody"])
            .arg("-d")
            .arg(&tracker_dir)
            .args(["-w", "/whitelist"]),
    );
    // The seeder: the host's own aria2c, checking the published file and
    // seeding it for as long as the test runs.
    let swarm_flags = [
        "--enable-dht=false",
        "--bt-enable-lpd=false",
        "--enable-peer-exchange=true",
        "--file-allocation=none",
        "--console-log-level=warn",
        "--summary-interval=0",
    ];
    let _seeder = spawn(
        "aria2c (seeder)",
        Command::new("aria2c")
            .args(swarm_flags)
            .args(["--check-integrity=true", "--seed-ratio=0.0"])
            .arg(format!("--listen-port={}", free_port()))
            .arg("-d")
            .arg(&published)
            .arg(published.join("golden.raw.zst.torrent")),
    );

    // The leecher: aria2c from the initrd, in a chroot of only its files.
    let root = work.join("initrd");
    std::fs::create_dir_all(&root).unwrap();
    unpack(&build_initrd(), &root);
    std::fs::create_dir_all(root.join("swarm")).unwrap();
    std::fs::copy(
        published.join("golden.raw.zst.torrent"),
        root.join("swarm/golden.torrent"),
    )
    .unwrap();
    let mut leecher = spawn(
        "aria2c (leecher)",
        Command::new("chroot")
            .arg(&root)
            .arg(p2p::ARIA2C_PATH)
            .args(swarm_flags)
            .args(["--seed-time=0", "--bt-stop-timeout=60", "-d", "/swarm"])
            .arg(format!("--listen-port={}", free_port()))
            .arg("/swarm/golden.torrent"),
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = leecher.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the initrd's aria2c did not finish within 90 s"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = leecher.0.stderr.take() {
        pipe.read_to_string(&mut stderr).unwrap();
    }
    assert!(status.success(), "{} exited {status}: {stderr}", leecher.1);
    let fetched = std::fs::read(root.join("swarm/golden.raw.zst")).unwrap();
    assert!(
        fetched == zst,
        "the swarm's bytes differ from the published file"
    );
}

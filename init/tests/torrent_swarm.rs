//! Host integration: BitTorrent mode (`--torrent`) against real engines on
//! the loopback: Debian's `opentracker` with its info-hash whitelist, an
//! `aria2c` seeder holding the image, the torrent made by `mktorrent` with
//! 4 MiB pieces (as `scripts/publish-image` makes it), and the HTTP fixture
//! server as the mirror. The `imprint` CLI deploys to a file; every output
//! must be the image byte for byte, whichever way its bytes came.
//!
//! What the mirror served is counted from its request log, so "from the
//! swarm" is checked from outside imprint, not only from its `swarm=`.
//! The fleet-scale version (eight clients in network namespaces, rate
//! caps) is `tests/tests/fleet_lab.rs`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{image, result_line};
use imprint_qemu::http::FixtureServer;
use imprint_qemu::netlab::HostSeeder;

const MIB: usize = 1 << 20;
/// Six 4 MiB pieces and a short one; two 16 MiB chunks.
const IMAGE_LEN: usize = 26 * MIB + 12_345;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tools_or_skip(test: &str) -> bool {
    let missing: Vec<&str> = ["aria2c", "opentracker", "mktorrent"]
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |s| !s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    eprintln!(
        "SKIPPED {test}: {} not installed (scripts/setup installs them)",
        missing.join(", ")
    );
    false
}

/// A child killed when the test ends, pass or fail.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The image, its torrent (announcing to `tracker_port`) and the torrent's
/// info hash as aria2 itself reads it.
struct Published {
    dir: tempfile::TempDir,
    /// The disk image, as it must land on the target.
    image: Vec<u8>,
    /// What the mirror serves and the torrent holds: the image itself, or
    /// its seekable multi-frame zstd (`scripts/publish-image`).
    served: Vec<u8>,
    name: &'static str,
    torrent: Vec<u8>,
    info_hash: String,
}

impl Published {
    fn new(tracker_port: u16) -> Published {
        let (dir, image, seed) = seed_dir(41);
        let (torrent, info_hash) = mktorrent(&dir, &seed.join("golden.raw"), tracker_port, false);
        Published {
            torrent,
            dir,
            served: image.clone(),
            image,
            name: "golden.raw",
            info_hash,
        }
    }

    /// The image published by `scripts/publish-image` in 2 MiB frames:
    /// golden.raw.zst with its seek table, and its torrent.
    fn zstd(tracker_port: u16) -> Published {
        let (dir, image, seed) = seed_dir(43);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/publish-image");
        let made = Command::new(script)
            .arg(seed.join("golden.raw"))
            .env("FRAME_SIZE", "2M")
            .env(
                "TRACKER",
                format!("http://127.0.0.1:{tracker_port}/announce"),
            )
            .env("IMPRINT", env!("CARGO_BIN_EXE_imprint"))
            .output()
            .unwrap();
        assert!(made.status.success(), "publish-image: {made:?}");
        let info_hash = String::from_utf8_lossy(&made.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("infohash ").map(str::to_owned))
            .expect("publish-image prints the infohash");
        std::fs::rename(
            seed.join("golden.raw.zst.torrent"),
            dir.path().join("golden.raw.zst.torrent"),
        )
        .unwrap();
        std::fs::remove_file(seed.join("golden.raw")).unwrap();
        Published {
            torrent: std::fs::read(dir.path().join("golden.raw.zst.torrent")).unwrap(),
            served: std::fs::read(seed.join("golden.raw.zst")).unwrap(),
            dir,
            image,
            name: "golden.raw.zst",
            info_hash,
        }
    }

    /// The image as `xz -T2 --block-size=SIZE` writes it (one stream of
    /// blocks, each with its sizes in its header), and its torrent.
    fn xz(tracker_port: u16, block_size: &str) -> Published {
        let (dir, image, seed) = seed_dir(47);
        let xz = Command::new("xz")
            .args(["-T2", &format!("--block-size={block_size}"), "-0", "-k"])
            .arg(seed.join("golden.raw"))
            .output()
            .unwrap();
        assert!(xz.status.success(), "xz: {xz:?}");
        std::fs::remove_file(seed.join("golden.raw")).unwrap();
        let (torrent, info_hash) = mktorrent(&dir, &seed.join("golden.raw.xz"), tracker_port, true);
        Published {
            torrent,
            served: std::fs::read(seed.join("golden.raw.xz")).unwrap(),
            dir,
            image,
            name: "golden.raw.xz",
            info_hash,
        }
    }

    /// `image` as `gzip` writes it (it grows back to more than its
    /// compressed length, to a size only its end tells), and its torrent.
    fn gzip(tracker_port: u16, image: Vec<u8>) -> Published {
        let (dir, image, seed) = seed_dir_of(image);
        let gz = Command::new("gzip")
            .arg("-k")
            .arg(seed.join("golden.raw"))
            .output()
            .unwrap();
        assert!(gz.status.success(), "gzip: {gz:?}");
        std::fs::remove_file(seed.join("golden.raw")).unwrap();
        let (torrent, info_hash) =
            mktorrent(&dir, &seed.join("golden.raw.gz"), tracker_port, false);
        Published {
            torrent,
            served: std::fs::read(seed.join("golden.raw.gz")).unwrap(),
            dir,
            image,
            name: "golden.raw.gz",
            info_hash,
        }
    }

    /// Deploys with the swarm up: the tracker listing this torrent and
    /// the seeder, both stopped when the deploy is done.
    fn deploy_from_swarm(
        &self,
        server: &FixtureServer,
        tracker_port: u16,
        extra: &[&str],
    ) -> (std::process::Output, PathBuf) {
        let _tracker = self.tracker(tracker_port, &[&self.info_hash]);
        let _seeder = self.seeder();
        self.deploy(server, extra)
    }

    fn torrent_path(&self) -> PathBuf {
        self.dir.path().join(format!("{}.torrent", self.name))
    }

    /// opentracker on `port`, admitting only `whitelist`.
    fn tracker(&self, port: u16, whitelist: &[&str]) -> Killed {
        let conf = self.dir.path().join("opentracker.conf");
        let list = self.dir.path().join("whitelist.txt");
        std::fs::write(&list, whitelist.join("\n") + "\n").unwrap();
        std::fs::write(
            &conf,
            format!(
                "listen.tcp 127.0.0.1:{port}\nlisten.udp 127.0.0.1:{port}\naccess.whitelist {}\n",
                list.display()
            ),
        )
        .unwrap();
        let child = Command::new("opentracker")
            .arg("-f")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let up = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                up.elapsed() < Duration::from_secs(10),
                "opentracker did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Killed(child)
    }

    /// An aria2c seeding the image from `seed/`.
    fn seeder(&self) -> HostSeeder {
        self.seeder_with(&[])
    }

    /// An aria2c seeding the image from `seed/`, with `extra` options.
    fn seeder_with(&self, extra: &[&str]) -> HostSeeder {
        HostSeeder::start(
            &self.torrent_path(),
            &self.dir.path().join("seed"),
            free_port(),
            extra,
        )
        .unwrap()
    }

    /// `imprint deploy` of the image with its torrent, into a file.
    fn deploy(&self, server: &FixtureServer, extra: &[&str]) -> (std::process::Output, PathBuf) {
        // Scratch for the pieces, removed with the test's directory.
        self.deploy_to(server, extra, IMAGE_LEN + 4 * MIB, self.dir.path())
    }

    /// `imprint deploy` into a file of `target_len` bytes, with the
    /// scratch for the pieces under `tmpdir`.
    fn deploy_to(
        &self,
        server: &FixtureServer,
        extra: &[&str],
        target_len: usize,
        tmpdir: &Path,
    ) -> (std::process::Output, PathBuf) {
        let torrent = format!("{}.torrent", self.name);
        server.add_file(self.name, self.served.clone());
        server.add_file(&torrent, self.torrent.clone());
        let target = self.dir.path().join("disk.img");
        // Not zeros: a wipe on failure must show.
        std::fs::write(&target, vec![0xA5u8; target_len]).unwrap();
        let output = Command::new(env!("CARGO_BIN_EXE_imprint"))
            .args(["deploy", "--url", &server.url(self.name), "--torrent"])
            .arg(server.url(&torrent))
            .arg("--disk")
            .arg(&target)
            .args(extra)
            .env("TMPDIR", tmpdir)
            .output()
            .unwrap();
        (output, target)
    }

    /// Deploys with the swarm up, into a file of `target_len` bytes, with
    /// `$TMPDIR` on a tmpfs too small for the pieces.
    /// `seeder` has the seeder's extra options.
    fn deploy_with_small_tmpdir(
        &self,
        server: &FixtureServer,
        (tracker_port, seeder): (u16, &[&str]),
        extra: &[&str],
        target_len: usize,
    ) -> Option<(std::process::Output, PathBuf)> {
        let small = SmallTmpfs::mount(self.dir.path().join("small"))?;
        let _tracker = self.tracker(tracker_port, &[&self.info_hash]);
        let _seeder = self.seeder_with(seeder);
        Some(self.deploy_to(server, extra, target_len, &small.0))
    }
}

/// A 256 KiB tmpfs: room for aria2's torrent and log, not for pieces.
struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    /// `None` (the test skips) where mounting is not allowed.
    fn mount(path: PathBuf) -> Option<SmallTmpfs> {
        std::fs::create_dir_all(&path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
            .arg(&path)
            .output()
            .unwrap();
        if !mounted.status.success() {
            eprintln!(
                "SKIPPED: mounting a small tmpfs needs root: {}",
                String::from_utf8_lossy(&mounted.stderr).trim()
            );
            return None;
        }
        Some(SmallTmpfs(path))
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// Loop devices whose backing file is `path` (`/sys/block/loopN/loop/`).
fn loops_over(path: &Path) -> Vec<String> {
    std::fs::read_dir("/sys/block")
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            std::fs::read_to_string(e.path().join("loop/backing_file"))
                .is_ok_and(|b| Path::new(b.trim()) == path)
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The region the log names: "the pieces go to bytes START..END of".
fn scratch_region(log: &str) -> Option<(usize, usize)> {
    let rest = log.split("the pieces go to bytes ").nth(1)?;
    let (range, _) = rest.split_once(' ')?;
    let (start, end) = range.split_once("..")?;
    Some((start.parse().ok()?, end.parse().ok()?))
}

/// A directory with `seed/golden.raw`, an image made from `seed`.
fn seed_dir(seed: u32) -> (tempfile::TempDir, Vec<u8>, PathBuf) {
    seed_dir_of(image(IMAGE_LEN, seed))
}

/// A directory with `seed/golden.raw` holding `image`.
fn seed_dir_of(image: Vec<u8>) -> (tempfile::TempDir, Vec<u8>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed");
    std::fs::create_dir(&seed).unwrap();
    std::fs::write(seed.join("golden.raw"), &image).unwrap();
    (dir, image, seed)
}

/// `mktorrent` of `file` (4 MiB pieces, announcing to the tracker's port)
/// into `dir`; its bytes and its info hash as `aria2c -S` reads it.
fn mktorrent(
    dir: &tempfile::TempDir,
    file: &Path,
    tracker_port: u16,
    private: bool,
) -> (Vec<u8>, String) {
    let name = file.file_name().unwrap().to_string_lossy();
    let torrent_path = dir.path().join(format!("{name}.torrent"));
    let made = Command::new("mktorrent")
        .args(["-l", "22"])
        .args(private.then_some("-p"))
        .arg("-a")
        .arg(format!("http://127.0.0.1:{tracker_port}/announce"))
        .arg("-o")
        .arg(&torrent_path)
        .arg(file)
        .output()
        .unwrap();
    assert!(made.status.success(), "mktorrent: {made:?}");
    let shown = Command::new("aria2c")
        .arg("-S")
        .arg(&torrent_path)
        .output()
        .unwrap();
    let info_hash = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Info Hash: ").map(str::to_owned))
        .expect("aria2c -S names the info hash");
    (std::fs::read(&torrent_path).unwrap(), info_hash)
}

fn written(target: &Path, len: usize) -> Vec<u8> {
    let mut bytes = std::fs::read(target).unwrap();
    bytes.truncate(len);
    bytes
}

/// Bytes of `name` the mirror sent (the torrent file excluded).
fn mirror_bytes(server: &FixtureServer, name: &str) -> u64 {
    server
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/{name}")))
        .map(|r| r.bytes_sent)
        .sum()
}

/// The result line and the log of a deploy that must have succeeded.
fn ok_deploy(output: &std::process::Output) -> (String, String) {
    let line = result_line(output);
    let log = stderr(output);
    assert!(line.starts_with("IMPRINT-RESULT: ok"), "{line}\n{log}");
    (line, log)
}

fn field(line: &str, name: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|t| t.strip_prefix(&format!("{name}=")).map(str::to_owned))
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn the_image_comes_from_the_swarm_and_the_mirror_sends_one_byte() {
    if !tools_or_skip("the_image_comes_from_the_swarm_and_the_mirror_sends_one_byte") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy_from_swarm(&server, tracker_port, &["--seed-time", "2s"]);
    let (line, log) = ok_deploy(&output);
    assert_eq!(
        field(&line, "swarm").as_deref(),
        Some(IMAGE_LEN.to_string().as_str()),
        "every byte from the swarm: {line}\n{}",
        stderr(&output)
    );
    assert!(
        written(&target, IMAGE_LEN) == published.image,
        "the output is not the image"
    );
    // The probe's one byte: length and validators, nothing of the image.
    assert_eq!(
        mirror_bytes(&server, "golden.raw"),
        1,
        "{:?}",
        server.requests()
    );
    assert!(log.contains("torrent: aria2c started"), "{log}");
    assert!(log.contains("torrent: seeding for 2.0 s"), "{log}");
    assert!(log.contains("torrent: aria2c stopped"), "{log}");
    // The scratch is gone with aria2.
    let left: Vec<_> = std::fs::read_dir(published.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("imprint-swarm-")
        })
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

#[test]
fn with_the_tracker_down_every_chunk_comes_from_the_mirror() {
    if !tools_or_skip("with_the_tracker_down_every_chunk_comes_from_the_mirror") {
        return;
    }
    // Nothing listens on the tracker's port.
    let published = Published::new(free_port());
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy(&server, &["--torrent-timeout", "2s", "--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}");
    assert!(written(&target, IMAGE_LEN) == published.image);
    assert_eq!(mirror_bytes(&server, "golden.raw"), IMAGE_LEN as u64 + 1);
    assert!(
        log.contains("no progress from the swarm for 2.0 s"),
        "{log}"
    );
}

#[test]
fn a_torrent_the_tracker_does_not_list_is_deployed_over_http() {
    if !tools_or_skip("a_torrent_the_tracker_does_not_list_is_deployed_over_http") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    // Another image's hash only: opentracker refuses this torrent's announces.
    let _tracker = published.tracker(tracker_port, &["0123456789abcdef0123456789abcdef01234567"]);
    let _seeder = published.seeder();
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy(&server, &["--torrent-timeout", "2s", "--seed-time", "0"]);
    let (line, _) = ok_deploy(&output);
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}");
    assert!(written(&target, IMAGE_LEN) == published.image);
}

#[test]
fn a_torrent_of_another_length_is_a_warning_and_an_http_deploy() {
    if !tools_or_skip("a_torrent_of_another_length_is_a_warning_and_an_http_deploy") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    let server = FixtureServer::start().unwrap();
    let mut shorter = published.image.clone();
    shorter.truncate(IMAGE_LEN - 1);
    let other = Published {
        dir: tempfile::tempdir().unwrap(),
        served: shorter.clone(),
        image: shorter,
        name: "golden.raw",
        torrent: published.torrent.clone(),
        info_hash: published.info_hash.clone(),
    };
    let (output, target) = other.deploy(&server, &["--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}");
    assert!(written(&target, IMAGE_LEN - 1) == other.image);
    assert!(
        log.contains(&format!(
            "is a torrent of {IMAGE_LEN} bytes, but the mirrors serve {}",
            IMAGE_LEN - 1
        )),
        "{log}"
    );
}

/// The seek table's length, from the served file's last bytes.
fn frames_end(served: &[u8]) -> u64 {
    let footer = &served[served.len() - 9..];
    let frames = u64::from(u32::from_le_bytes(footer[..4].try_into().unwrap()));
    served.len() as u64 - (frames * 8 + 17)
}

#[test]
fn seekable_zstd_frames_are_decoded_as_the_swarm_completes_them() {
    if !tools_or_skip("seekable_zstd_frames_are_decoded_as_the_swarm_completes_them") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::zstd(tracker_port);
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy_from_swarm(&server, tracker_port, &["--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert!(
        written(&target, IMAGE_LEN) == published.image,
        "the output is not the image"
    );
    assert!(
        log.contains("frames decoded as the swarm completes them"),
        "not the out-of-order path: {log}"
    );
    assert!(
        log.contains("14 frames written in the order their pieces arrived"),
        "{log}"
    );
    assert!(log.contains("0 from the mirrors"), "{log}");
    // Every frame from the swarm; the mirror sent the probe's byte and
    // the seek table (its footer, then the whole table).
    let frames = frames_end(&published.served);
    assert_eq!(field(&line, "swarm"), Some(frames.to_string()), "{line}");
    let table = published.served.len() as u64 - frames;
    assert_eq!(mirror_bytes(&server, "golden.raw.zst"), 1 + 9 + table);
    // The image's SHA-256 read back from the target.
    assert_eq!(
        field(&line, "sha256"),
        Some(common::hex(&published.image)),
        "{line}"
    );
}

#[test]
fn seekable_zstd_frames_come_from_the_mirror_when_the_tracker_is_down() {
    if !tools_or_skip("seekable_zstd_frames_come_from_the_mirror_when_the_tracker_is_down") {
        return;
    }
    let published = Published::zstd(free_port());
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy(&server, &["--torrent-timeout", "1s", "--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert!(written(&target, IMAGE_LEN) == published.image);
    assert!(log.contains("14 from the mirrors"), "{log}");
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}");
}

#[test]
fn a_wrong_checksum_on_the_out_of_order_path_wipes_both_ends() {
    if !tools_or_skip("a_wrong_checksum_on_the_out_of_order_path_wipes_both_ends") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::zstd(tracker_port);
    let server = FixtureServer::start().unwrap();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (output, target) = published.deploy_from_swarm(
        &server,
        tracker_port,
        &["--checksum", &wrong, "--seed-time", "0"],
    );
    let line = result_line(&output);
    let log = stderr(&output);
    assert!(line.starts_with("IMPRINT-RESULT: error"), "{line}\n{log}");
    assert!(line.contains("checksum mismatch"), "{line}");
    assert!(
        log.contains("frames decoded as the swarm completes them"),
        "{log}"
    );
    let disk = std::fs::read(&target).unwrap();
    assert!(
        disk[..MIB].iter().all(|&b| b == 0),
        "the first MiB is not wiped"
    );
    assert!(
        disk[disk.len() - MIB..].iter().all(|&b| b == 0),
        "the last MiB is not wiped"
    );
}

/// Processes whose command line mentions `needle`, from /proc.
fn processes_with(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

#[test]
fn a_killed_imprint_takes_its_aria2c_with_it() {
    if !tools_or_skip("a_killed_imprint_takes_its_aria2c_with_it") {
        return;
    }
    // The tracker is down and the timeout long: imprint waits on the swarm.
    let published = Published::new(free_port());
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw", published.served.clone());
    server.add_file("golden.raw.torrent", published.torrent.clone());
    let target = published.dir.path().join("disk.img");
    std::fs::write(&target, vec![0u8; IMAGE_LEN]).unwrap();
    let mut imprint = Killed(
        Command::new(env!("CARGO_BIN_EXE_imprint"))
            .args(["deploy", "--url", &server.url("golden.raw"), "--torrent"])
            .arg(server.url("golden.raw.torrent"))
            .arg("--disk")
            .arg(&target)
            .args(["--torrent-timeout", "120s"])
            .env("TMPDIR", published.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let scratch = format!("imprint-swarm-{}", imprint.0.id());
    let began = Instant::now();
    while processes_with(&scratch).is_empty() {
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "aria2c never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // SIGKILL: no Drop runs in imprint.
    imprint.0.kill().unwrap();
    imprint.0.wait().unwrap();
    let killed = Instant::now();
    while !processes_with(&scratch).is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "aria2c outlived imprint by 10 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn xz_blocks_are_decoded_as_the_swarm_completes_them() {
    if !tools_or_skip("xz_blocks_are_decoded_as_the_swarm_completes_them") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::xz(tracker_port, "2MiB");
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy_from_swarm(&server, tracker_port, &["--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert!(
        written(&target, IMAGE_LEN) == published.image,
        "the output is not the image"
    );
    assert!(
        log.contains("14 blocks, 26.0 MiB of image"),
        "not the out-of-order path: {log}"
    );
    assert!(
        log.contains("14 blocks written in the order their pieces arrived"),
        "{log}"
    );
    assert!(log.contains("0 from the mirrors"), "{log}");
    assert_eq!(field(&line, "format").as_deref(), Some("xz"), "{line}");
    assert_eq!(
        field(&line, "sha256"),
        Some(common::hex(&published.image)),
        "{line}"
    );
}

#[test]
fn xz_blocks_off_the_disk_blocks_decode_in_order() {
    if !tools_or_skip("xz_blocks_off_the_disk_blocks_decode_in_order") {
        return;
    }
    let tracker_port = free_port();
    // 1,000,000-byte blocks: the second starts inside a 4 KiB block.
    let published = Published::xz(tracker_port, "1000000");
    let server = FixtureServer::start().unwrap();
    let (output, target) =
        published.deploy_from_swarm(&server, tracker_port, &["--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    assert!(
        log.contains("not on a 4 KiB boundary; blocks decode in order"),
        "{log}"
    );
    assert!(written(&target, IMAGE_LEN) == published.image);
    assert_eq!(
        field(&line, "swarm"),
        Some(published.served.len().to_string()),
        "{line}"
    );
}

#[test]
fn with_no_room_in_tmpdir_the_pieces_go_to_the_targets_tail() {
    if !tools_or_skip("with_no_room_in_tmpdir_the_pieces_go_to_the_targets_tail") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    let server = FixtureServer::start().unwrap();
    let target_len = 4 * IMAGE_LEN;
    let Some((output, target)) = published.deploy_with_small_tmpdir(
        &server,
        (tracker_port, &[]),
        &["--seed-time", "1s"],
        target_len,
    ) else {
        return;
    };
    let (line, log) = ok_deploy(&output);
    assert_eq!(
        field(&line, "swarm").as_deref(),
        Some(IMAGE_LEN.to_string().as_str()),
        "every byte from the swarm: {line}\n{log}"
    );
    assert_eq!(mirror_bytes(&server, "golden.raw"), 1, "{log}");
    let disk = std::fs::read(&target).unwrap();
    assert!(
        disk[..IMAGE_LEN] == published.image,
        "the output is not the image"
    );
    // aria2 wrote the pieces into the target's tail, after the image and
    // before the last MiB, which the deploy wiped.
    let (start, end) = scratch_region(&log).unwrap_or_else(|| panic!("no region named: {log}"));
    assert!(log.contains(&format!("of {}", target.display())), "{log}");
    assert!(
        start >= IMAGE_LEN && end <= target_len - MIB,
        "{start}..{end}"
    );
    assert!(
        disk[start..start + IMAGE_LEN] == published.served,
        "the pieces are not on the target's tail"
    );
    assert!(
        disk[IMAGE_LEN..start].iter().all(|&b| b == 0xA5),
        "bytes between image and scratch changed"
    );
    assert!(
        disk[target_len - MIB..].iter().all(|&b| b == 0),
        "the last MiB is not wiped"
    );
    assert!(log.contains("torrent: seeding for 1.0 s"), "{log}");
    // The loop device went with aria2.
    assert_eq!(loops_over(&target), Vec::<String>::new());
}

#[test]
fn a_target_too_small_for_image_and_pieces_is_deployed_over_http() {
    if !tools_or_skip("a_target_too_small_for_image_and_pieces_is_deployed_over_http") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    let server = FixtureServer::start().unwrap();
    let Some((output, target)) = published.deploy_with_small_tmpdir(
        &server,
        (tracker_port, &[]),
        &["--seed-time", "0"],
        IMAGE_LEN + 4 * MIB,
    ) else {
        return;
    };
    let (line, log) = ok_deploy(&output);
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}");
    assert!(
        log.contains("is too small for the image and its pieces"),
        "{log}"
    );
    assert!(written(&target, IMAGE_LEN) == published.image);
    assert_eq!(mirror_bytes(&server, "golden.raw"), IMAGE_LEN as u64 + 1);
}

#[test]
fn an_image_that_grows_into_the_pieces_stops_the_swarm_first() {
    if !tools_or_skip("an_image_that_grows_into_the_pieces_stops_the_swarm_first") {
        return;
    }
    // 128 MiB that gzip shrinks to about a quarter: one 64 KiB block in
    // four is noise.
    let image_len = 128 * MIB;
    let mut raw = vec![0u8; image_len];
    let noise = image(image_len, 59);
    for (n, block) in raw.chunks_mut(65_536).enumerate() {
        if n % 4 == 0 {
            block.copy_from_slice(&noise[n * 65_536..(n + 1) * 65_536]);
        }
    }
    let tracker_port = free_port();
    let published = Published::gzip(tracker_port, raw);
    let served = published.served.len();
    // A disk just larger than the image: the scratch (twice the .gz,
    // before the last MiB) starts well inside the image.
    let target_len = image_len + MIB;
    let half = served.next_multiple_of(MIB);
    let start = image_len - 2 * half;
    assert!(start >= served && served < image_len / 3, "{served}");
    // The seeder's copy is wrong from the fifth 4 MiB piece on: aria2
    // keeps fetching those pieces into the scratch, inside the image's
    // last part, and they keep failing their hash, so it still writes
    // there when the image arrives; the deploy takes them from the mirror
    // after two seconds without progress.
    let seed_copy = published.dir.path().join("seed/golden.raw.gz");
    let mut wrong = std::fs::read(&seed_copy).unwrap();
    for byte in &mut wrong[16 * MIB..] {
        *byte ^= 0x5A;
    }
    std::fs::write(&seed_copy, wrong).unwrap();
    let server = FixtureServer::start().unwrap();
    let Some((output, target)) = published.deploy_with_small_tmpdir(
        &server,
        (tracker_port, &[]),
        &["--seed-time", "5s", "--torrent-timeout", "2s"],
        target_len,
    ) else {
        return;
    };
    let (line, log) = ok_deploy(&output);
    // aria2, still fetching the wrong pieces into the image's last part,
    // was stopped before the image got there.
    assert!(
        written(&target, image_len) == published.image,
        "the output is not the image"
    );
    assert_eq!(
        scratch_region(&log),
        Some((start, start + 2 * half)),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "the image reaches the scratch on {} at byte {start}",
            target.display()
        )),
        "{log}"
    );
    // The wrong pieces came from the mirror; nothing was seeded.
    let from_swarm: usize = field(&line, "swarm").unwrap().parse().unwrap();
    assert!(from_swarm <= 16 * MIB, "{line}\n{log}");
    assert_eq!(
        mirror_bytes(&server, "golden.raw.gz"),
        (served - from_swarm + 1) as u64,
        "{line}"
    );
    assert!(!log.contains("torrent: seeding"), "{log}");
    assert_eq!(loops_over(&target), Vec::<String>::new());
}

/// Runs `command`, panicking with its output unless it succeeds; stdout.
fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(output.status.success(), "{command:?}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A loop device over a file, with an ext4 filesystem mounted from it;
/// unmounted and unbound on drop.
struct MountedDisk {
    device: String,
    mount_point: PathBuf,
}

impl Drop for MountedDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.mount_point).status();
        let _ = Command::new("losetup").args(["-d", &self.device]).status();
    }
}

#[test]
fn a_mounted_target_gets_no_pieces_on_its_tail() {
    if !tools_or_skip("a_mounted_target_gets_no_pieces_on_its_tail") {
        return;
    }
    let tracker_port = free_port();
    let published = Published::new(tracker_port);
    // A disk in use: a filesystem over all of it, mounted, whose last
    // part the scratch would take.
    let backing = published.dir.path().join("in-use.img");
    std::fs::write(&backing, vec![0u8; 4 * IMAGE_LEN]).unwrap();
    let Ok(bound) = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(&backing)
        .output()
    else {
        eprintln!("SKIPPED a_mounted_target_gets_no_pieces_on_its_tail: no losetup");
        return;
    };
    if !bound.status.success() {
        eprintln!(
            "SKIPPED a_mounted_target_gets_no_pieces_on_its_tail: losetup needs root: {}",
            String::from_utf8_lossy(&bound.stderr).trim()
        );
        return;
    }
    let mounted = MountedDisk {
        device: String::from_utf8_lossy(&bound.stdout).trim().to_owned(),
        mount_point: published.dir.path().join("mnt"),
    };
    run(Command::new("mkfs.ext4").args(["-q", "-F", &mounted.device]));
    std::fs::create_dir(&mounted.mount_point).unwrap();
    run(Command::new("mount")
        .arg(&mounted.device)
        .arg(&mounted.mount_point));
    let before = std::fs::read(&backing).unwrap();
    let Some(small) = SmallTmpfs::mount(published.dir.path().join("small")) else {
        return;
    };
    let server = FixtureServer::start().unwrap();
    server.add_file(published.name, published.served.clone());
    server.add_file("golden.raw.torrent", published.torrent.clone());
    let output = {
        let _tracker = published.tracker(tracker_port, &[&published.info_hash]);
        let _seeder = published.seeder();
        Command::new(env!("CARGO_BIN_EXE_imprint"))
            .args(["deploy", "--url", &server.url(published.name), "--torrent"])
            .arg(server.url("golden.raw.torrent"))
            .args(["--disk", &mounted.device, "--seed-time", "0"])
            .env("TMPDIR", &small.0)
            .output()
            .unwrap()
    };
    let log = stderr(&output);
    // The deploy refuses the disk; the swarm never wrote a piece into it.
    assert!(!output.status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "opening {} exclusively (is it mounted or in use?)",
            mounted.device
        )),
        "{log}"
    );
    assert!(!log.contains("the pieces go to bytes"), "{log}");
    assert!(!log.contains("aria2c started"), "{log}");
    drop(small);
    drop(mounted);
    // Where the pieces would have gone: the last 2 × 27 MiB before the
    // last MiB, free space of the filesystem, untouched by its unmount.
    let tail = before.len() - 55 * MIB;
    assert!(
        std::fs::read(&backing).unwrap()[tail..] == before[tail..],
        "the disk in use changed at its end"
    );
}

#[test]
fn a_torrents_web_seeds_are_left_out() {
    if !tools_or_skip("a_torrents_web_seeds_are_left_out") {
        return;
    }
    // Nothing listens on the tracker's port; the torrent's web seed is the
    // mirror itself, which aria2 would download the whole image from.
    let tracker_port = free_port();
    let mut published = Published::new(tracker_port);
    let server = FixtureServer::start().unwrap();
    let with_seed = published.dir.path().join("web-seeded.torrent");
    let made = Command::new("mktorrent")
        .args(["-l", "22", "-a"])
        .arg(format!("http://127.0.0.1:{tracker_port}/announce"))
        .arg("-w")
        .arg(server.url("golden.raw"))
        .arg("-o")
        .arg(&with_seed)
        .arg(published.dir.path().join("seed/golden.raw"))
        .output()
        .unwrap();
    assert!(made.status.success(), "mktorrent: {made:?}");
    published.torrent = std::fs::read(&with_seed).unwrap();
    let (output, target) =
        published.deploy(&server, &["--torrent-timeout", "2s", "--seed-time", "0"]);
    let (line, log) = ok_deploy(&output);
    // aria2 fetched nothing from the web seed: the mirror sent the image
    // once, to imprint's own ranges, after the swarm's timeout.
    assert_eq!(field(&line, "swarm").as_deref(), Some("0"), "{line}\n{log}");
    assert_eq!(mirror_bytes(&server, "golden.raw"), IMAGE_LEN as u64 + 1);
    assert!(written(&target, IMAGE_LEN) == published.image);
    assert!(
        log.contains("lists web seeds (url-list); left out"),
        "{log}"
    );
}

//! The fleet tests' side of the lab ([`imprint_qemu::netlab`]): the host
//! `imprint` CLI run in client namespaces, its results and its output files.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use imprint_qemu::netlab::{Lab, LabError, Node, ProcId, aria2_common_args};

use crate::{ResultLine, repo_root};

/// The fleet tests measure wall time and bytes: one lab at a time per test
/// process (`.config/nextest.toml` keeps nextest to one fleet test at a time too).
pub fn one_lab_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A new lab, or `None` (after saying so on stderr) where network namespaces
/// are refused: the fleet tests need root.
pub fn lab_or_skip(test: &str) -> Option<Lab> {
    match Lab::new() {
        Ok(lab) => Some(lab),
        Err(LabError::Refused(why)) => {
            eprintln!("SKIPPED {test}: {why} (the fleet tests need root for ip netns and tc)");
            None
        }
        Err(e @ LabError::Other(_)) => panic!("building the lab: {e}"),
    }
}

/// The `imprint` binary the clients run: `$IMPRINT_BIN`, else the static
/// `out/imprint` that `scripts/build` makes (the one inside the initramfs).
pub fn imprint_binary() -> PathBuf {
    let path = std::env::var_os("IMPRINT_BIN")
        .map_or_else(|| repo_root().join("out/imprint"), PathBuf::from);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build, or set IMPRINT_BIN",
        path.display()
    );
    path
}

/// Writes `len` bytes of deterministic noise at `path` and returns them.
/// Noise, not [`crate::test_image`]'s zero runs: a fleet moves bytes, and
/// noise keeps every byte on the wire.
pub fn write_image(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut image = vec![0u8; len];
    for chunk in image.chunks_mut(8) {
        // xorshift64*, as test_image.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let bytes = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
        chunk.copy_from_slice(&bytes[..chunk.len()]);
    }
    std::fs::create_dir_all(path.parent().expect("image has a parent")).expect("image dir");
    std::fs::write(path, &image).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    image
}

/// One `imprint deploy` running in a client namespace.
pub struct Client {
    pub node: Node,
    pub proc: ProcId,
    /// The file it deploys to.
    pub target: PathBuf,
    log: PathBuf,
    rss: PathBuf,
}

/// How one client's deploy ended.
#[derive(Debug)]
pub struct ClientRun {
    pub node: String,
    pub status: ExitStatus,
    /// stdout and stderr together.
    pub output: String,
    pub result: ResultLine,
    /// Peak resident set, from `/usr/bin/time -f %M`.
    pub peak_rss_bytes: u64,
    /// When it exited, from the start of the run.
    pub finished_after: Duration,
    /// When its `IMPRINT-RESULT` line first showed in its output, from the
    /// start of the run (polled): the deploy's end, before any seeding.
    pub result_after: Duration,
}

impl ClientRun {
    /// A field of the `IMPRINT-RESULT: ok` line (`mirrors`, `resumes`, …).
    pub fn field(&self, name: &str) -> Option<String> {
        let line = self
            .output
            .lines()
            .find(|l| l.contains("IMPRINT-RESULT: "))?;
        line.split(' ')
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .map(str::to_owned)
    }
}

/// Starts `imprint deploy ARGS --disk TARGET` in `node`, under
/// `/usr/bin/time` for its peak RSS; output goes to a file in the lab.
pub fn start_client(lab: &mut Lab, node: &Node, args: &[String]) -> Client {
    let target = lab.dir().join(format!("{}.disk", node.name));
    let log = lab.dir().join(format!("{}.log", node.name));
    let rss = lab.dir().join(format!("{}.rss", node.name));
    let out = File::create(&log).expect("client log");
    let err = out.try_clone().expect("client log");
    let mut command = node.command("/usr/bin/time");
    command
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .arg(imprint_binary())
        .arg("deploy")
        .args(args)
        .arg("--disk")
        .arg(&target)
        // Scratch (a torrent's pieces) stays in the lab and goes with it.
        .env("TMPDIR", lab.dir())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let proc = lab.spawn(&mut command).expect("starting imprint");
    Client {
        node: node.clone(),
        proc,
        target,
        log,
        rss,
    }
}

/// Waits for every client (at most `timeout` from `started`) and reads how
/// each ended. A client still running at the deadline fails the test.
pub fn wait_clients(
    lab: &mut Lab,
    clients: &[Client],
    started: Instant,
    timeout: Duration,
) -> Vec<ClientRun> {
    let mut finished: Vec<Option<(ExitStatus, Duration)>> = vec![None; clients.len()];
    let mut results: Vec<Option<Duration>> = vec![None; clients.len()];
    while finished.iter().any(Option::is_none) {
        for ((client, done), result) in clients.iter().zip(&mut finished).zip(&mut results) {
            if result.is_none()
                && std::fs::read_to_string(&client.log)
                    .is_ok_and(|log| log.contains("IMPRINT-RESULT: "))
            {
                *result = Some(started.elapsed());
            }
            if done.is_none()
                && let Some(status) = lab.try_wait(client.proc).expect("checking a client")
            {
                *done = Some((status, started.elapsed()));
            }
        }
        assert!(
            started.elapsed() < timeout,
            "clients still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    clients
        .iter()
        .zip(finished)
        .zip(results)
        .map(|((client, done), result)| {
            let (status, finished_after) = done.expect("every client finished");
            let output = std::fs::read_to_string(&client.log).expect("client log");
            let line = output
                .lines()
                .find(|l| l.contains("IMPRINT-RESULT: "))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: no IMPRINT-RESULT line ({status}):\n{output}",
                        client.node.name
                    )
                });
            let kib: u64 = std::fs::read_to_string(&client.rss)
                .ok()
                .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
                .unwrap_or(0);
            ClientRun {
                node: client.node.name.clone(),
                status,
                result: ResultLine::parse(line),
                output,
                peak_rss_bytes: kib * 1024,
                finished_after,
                // A line written just before the exit may be seen only after it.
                result_after: result.unwrap_or(finished_after),
            }
        })
        .collect()
}

/// Asserts the client succeeded and its target holds exactly `image`.
pub fn assert_deployed(client: &Client, run: &ClientRun, image: &[u8]) {
    assert!(
        run.status.success(),
        "{} failed ({}):\n{}",
        run.node,
        run.status,
        run.output
    );
    let ResultLine::Ok { bytes, sha256, .. } = &run.result else {
        panic!("{}: {:?}\n{}", run.node, run.result, run.output);
    };
    assert_eq!(*bytes, image.len() as u64, "{}", run.node);
    let written = std::fs::read(&client.target).expect("reading the client's target");
    assert!(
        written == image,
        "{}: {} differs from the image",
        run.node,
        client.target.display()
    );
    assert_eq!(*sha256, crate::sha256_hex(image), "{}", run.node);
}

/// One plain `aria2c` downloading a torrent in a client namespace: the
/// swarm lab's proof of its tracker and seeder before imprint joins.
pub struct Leecher {
    pub node: Node,
    pub proc: ProcId,
    /// Where aria2 writes the torrent's file.
    pub dir: PathBuf,
    /// Made by aria2's `--on-bt-download-complete` hook when every piece
    /// is in, before it seeds.
    complete: PathBuf,
}

/// Starts `aria2c TORRENT_URL` in `node`: it fetches the torrent over HTTP
/// (`--follow-torrent=mem`), takes peers from the tracker only, and seeds
/// for `seed_minutes` after its download (aria2's `--seed-time` is in
/// minutes; `--seed-ratio=0.0` makes the time the only limit).
pub fn start_leecher(lab: &mut Lab, node: &Node, torrent_url: &str, seed_minutes: f64) -> Leecher {
    let dir = lab.dir().join(format!("{}.aria2", node.name));
    std::fs::create_dir_all(&dir).expect("leecher dir");
    let complete = dir.join("complete");
    // aria2 runs the hook with GID, the number of files and the first
    // file's path (aria2c(1), "Event Hook").
    let hook = dir.join("on-complete.sh");
    std::fs::write(&hook, format!("#!/bin/sh\ntouch {}\n", complete.display()))
        .expect("writing the hook");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).expect("hook mode");
    let mut command = node.command("aria2c");
    command
        .args(aria2_common_args(&dir.join("aria2.log")))
        .arg(format!("--dir={}", dir.display()))
        .args(["--follow-torrent=mem", "--seed-ratio=0.0"])
        .arg(format!("--seed-time={seed_minutes}"))
        .arg(format!("--on-bt-download-complete={}", hook.display()))
        .arg(torrent_url)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let proc = lab.spawn(&mut command).expect("starting aria2c");
    Leecher {
        node: node.clone(),
        proc,
        dir,
        complete,
    }
}

/// Waits for every leecher to hold the whole torrent and then to exit (at
/// most `timeout` from `started`); returns when each completed.
pub fn wait_leechers(
    lab: &mut Lab,
    leechers: &[Leecher],
    started: Instant,
    timeout: Duration,
) -> Vec<Duration> {
    let mut complete: Vec<Option<Duration>> = vec![None; leechers.len()];
    let mut exited = vec![false; leechers.len()];
    while exited.iter().any(|e| !e) {
        for ((leecher, at), exited) in leechers.iter().zip(&mut complete).zip(&mut exited) {
            if at.is_none() && leecher.complete.exists() {
                *at = Some(started.elapsed());
            }
            if !*exited && let Some(status) = lab.try_wait(leecher.proc).expect("a leecher") {
                let log =
                    std::fs::read_to_string(leecher.dir.join("aria2.log")).unwrap_or_default();
                assert!(
                    status.success(),
                    "aria2c in {} failed ({status}):\n{log}",
                    leecher.node.name
                );
                *exited = true;
            }
        }
        assert!(
            started.elapsed() < timeout,
            "leechers still running after {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    leechers
        .iter()
        .zip(complete)
        .map(|(leecher, at)| {
            at.unwrap_or_else(|| panic!("{} exited without completing", leecher.node.name))
        })
        .collect()
}

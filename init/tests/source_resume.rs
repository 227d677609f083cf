//! Host integration: `imprint deploy` against a fixture server that drops,
//! stalls, refuses and lies, asserting the exact outcome: a byte-identical
//! target after retries and resumes, or the specific error.

mod common;

use common::{hex, image, imprint, result_line};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use imprint_qemu::http::{Behavior, FixtureServer, RequestRecord};

const MIB: usize = 1 << 20;

fn zstd(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image");
    std::fs::write(&path, data).unwrap();
    let output = Command::new("zstd")
        .args(["-c", "-q", path.to_str().unwrap()])
        .output()
        .unwrap_or_else(|e| panic!("running zstd (scripts/setup installs it): {e}"));
    assert!(output.status.success());
    output.stdout
}

/// One deploy of `served` at `/image` with `behaviors` queued, to a target
/// file that holds other bytes before.
struct Run {
    server: FixtureServer,
    url: String,
    output: Output,
    before: Vec<u8>,
    after: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn deploy(served: Vec<u8>, behaviors: Vec<Behavior>, extra: &[&str]) -> Run {
    let server = FixtureServer::start().unwrap();
    server.add_file("image", served);
    server.push_behaviors("image", behaviors);
    let dir = tempfile::tempdir().unwrap();
    let target: PathBuf = dir.path().join("disk.img");
    let before = vec![0x5A; 8 * MIB];
    std::fs::write(&target, &before).unwrap();
    let url = server.url("image");
    // No scenario here waits on these (the stall tests set their own), so
    // they are generous: on a loaded machine a 2 s stall timeout fired
    // before the first byte and turned a cut into a fresh start.
    let mut args = vec![
        "deploy",
        "--url",
        &url,
        "--disk",
        target.to_str().unwrap(),
        "--connect-timeout",
        "10s",
        "--stall-timeout",
        "10s",
        // These scenarios are the single streaming GET's resume and restart
        // (today's path, `imprint.parallel=1`); source/ranged.rs's tests
        // cover the same failures for ranges.
        "--parallel",
        "1",
    ];
    args.extend_from_slice(extra);
    let output = imprint(&args);
    let after = std::fs::read(&target).unwrap();
    Run {
        server,
        url,
        output,
        before,
        after,
        _dir: dir,
    }
}

impl Run {
    fn line(&self) -> String {
        result_line(&self.output)
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn assert_deployed(&self, data: &[u8]) {
        let line = self.line();
        assert!(
            self.output.status.success(),
            "{line}\nstderr: {}",
            self.stderr()
        );
        assert!(
            line.starts_with(&format!(
                "IMPRINT-RESULT: ok bytes={} sha256={} ",
                data.len(),
                hex(data)
            )),
            "{line}"
        );
        assert!(self.after[..data.len()] == *data, "the target differs");
    }

    fn assert_failed(&self) -> String {
        assert_eq!(self.output.status.code(), Some(1), "{}", self.line());
        let line = self.line();
        line.strip_prefix("IMPRINT-RESULT: error: ")
            .unwrap_or_else(|| panic!("not an error: {line}"))
            .to_owned()
    }

    fn assert_untouched(&self) {
        assert!(self.after == self.before, "the target was written");
    }

    /// The request log once it holds `count` requests: a request is logged
    /// after its response went out, so imprint may be done before the log.
    fn requests(&self, count: usize) -> Vec<RequestRecord> {
        for _ in 0..1000 {
            let requests = self.server.requests();
            if requests.len() >= count {
                return requests;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.server.requests()
    }

    /// The Range header of the first `count` requests, in the order they
    /// were answered.
    fn ranges(&self, count: usize) -> Vec<Option<String>> {
        self.requests(count)
            .into_iter()
            .map(|request| request.range)
            .collect()
    }
}

fn range_from(offset: usize) -> Option<String> {
    Some(format!("bytes={offset}-"))
}

#[test]
fn a_dropped_connection_is_resumed_at_the_next_byte() {
    let data = image(4 * MIB + 4321, 1);
    let cut = 3 * MIB / 2 + 7;
    let run = deploy(
        data.clone(),
        vec![Behavior::DropAfter(u64::try_from(cut).unwrap())],
        &[],
    );
    run.assert_deployed(&data);
    assert_eq!(run.ranges(2), [None, range_from(cut)]);
    assert!(
        run.stderr().contains(&format!(
            "GET {}: the transfer broke off at byte {cut} (",
            run.url
        )),
        "{}",
        run.stderr()
    );
}

#[test]
fn three_drops_in_a_zstd_image_are_resumed() {
    let data = image(6 * MIB + 99, 2);
    let served = zstd(&data);
    let cuts = [MIB / 2, MIB + 3, 10];
    let run = deploy(
        served.clone(),
        cuts.iter()
            .map(|&cut| Behavior::DropAfter(u64::try_from(cut).unwrap()))
            .collect(),
        &[
            "--retries",
            "3",
            "--checksum",
            &format!("sha256:{}", hex(&served)),
        ],
    );
    run.assert_deployed(&data);
    let mut offset = 0;
    let mut expected = vec![None];
    for cut in cuts {
        offset += cut;
        expected.push(range_from(offset));
    }
    assert_eq!(run.ranges(expected.len()), expected);
}

#[test]
fn a_stalled_transfer_is_resumed_after_the_stall_timeout() {
    let data = image(3 * MIB, 3);
    let run = deploy(
        data.clone(),
        vec![Behavior::StallAfter(
            u64::try_from(MIB).unwrap(),
            Duration::from_secs(6),
        )],
        &["--stall-timeout", "1s"],
    );
    run.assert_deployed(&data);
    // The stalled request is logged only when its pause is over, so it may
    // be missing; the resume is there.
    assert!(
        run.ranges(1).contains(&range_from(MIB)),
        "{:?}",
        run.ranges(1)
    );
}

#[test]
fn service_unavailable_is_retried() {
    let data = image(2 * MIB, 4);
    let run = deploy(
        data.clone(),
        vec![Behavior::Status(503), Behavior::Status(503)],
        &["--retries", "2"],
    );
    run.assert_deployed(&data);
    assert_eq!(run.ranges(3), [None, None, None]);
    let stderr = run.stderr();
    for retry in ["retry 1/2 in ", "retry 2/2 in "] {
        assert!(
            stderr.contains(&format!(
                "GET {}: HTTP 503 Service Unavailable; {retry}",
                run.url
            )),
            "{stderr}"
        );
    }
}

#[test]
fn more_failures_than_retries_is_the_last_error() {
    let run = deploy(
        image(MIB, 5),
        vec![
            Behavior::Status(503),
            Behavior::Status(502),
            Behavior::Status(503),
        ],
        &["--retries", "2"],
    );
    assert_eq!(
        run.assert_failed(),
        format!(
            "GET {}: HTTP 503 Service Unavailable (gave up after 2 retries)",
            run.url
        )
    );
    assert_eq!(run.requests(3).len(), 3);
    run.assert_untouched();
}

#[test]
fn not_found_fails_at_once() {
    let run = deploy(image(MIB, 6), vec![Behavior::Status(404)], &[]);
    assert_eq!(
        run.assert_failed(),
        format!("GET {}: HTTP 404 Not Found", run.url)
    );
    assert_eq!(run.requests(1).len(), 1);
    assert!(!run.stderr().contains("retry"), "{}", run.stderr());
    run.assert_untouched();
}

// The next two go through the restart path: the reader refuses to splice.
// Each scenario is queued twice, so the outcome is an error whether or not
// the deploy restarts once.

#[test]
fn a_server_that_ignores_range_is_not_spliced() {
    let data = image(3 * MIB, 7);
    let round = [
        Behavior::DropAfter(u64::try_from(MIB).unwrap()),
        Behavior::IgnoreRange,
    ];
    let run = deploy(data, [round.clone(), round].concat(), &[]);
    let error = run.assert_failed();
    assert!(
        error.contains("the server ignored the Range request (HTTP 200)"),
        "{error}"
    );
    assert_eq!(run.ranges(2)[..2], [None, range_from(MIB)]);
}

/// Once: the deploy fails closed and starts over from byte 0, and says so.
#[test]
fn an_unsafe_resume_restarts_the_deploy_once() {
    let data = image(3 * MIB, 17);
    let round = vec![
        Behavior::DropAfter(u64::try_from(MIB).unwrap()),
        Behavior::IgnoreRange,
    ];
    let run = deploy(data.clone(), round, &[]);
    run.assert_deployed(&data);
    assert!(run.line().contains(" restarts=1"), "{}", run.line());
    assert!(
        run.stderr().contains(
            "the server ignored the Range request (HTTP 200); starting the deploy again from byte 0"
        ),
        "{}",
        run.stderr()
    );
    // The first attempt's request, its Range request, and the restart's.
    assert_eq!(run.ranges(3)[..3], [None, range_from(MIB), None]);
}

#[test]
fn a_file_changed_between_requests_is_not_spliced() {
    let data = image(3 * MIB, 8);
    let round = [
        Behavior::DropAfter(u64::try_from(MIB).unwrap()),
        Behavior::ChangeEtag,
    ];
    let run = deploy(data, [round.clone(), round].concat(), &[]);
    let error = run.assert_failed();
    assert!(
        error.contains("the file changed on the server (ETag \""),
        "{error}"
    );
}

#[test]
fn a_content_length_longer_than_the_body_is_never_success() {
    let data = image(MIB, 9);
    let declared = u64::try_from(2 * MIB).unwrap();
    let run = deploy(data, vec![Behavior::WrongContentLength(declared); 4], &[]);
    let error = run.assert_failed();
    // The resume finds the file shorter than announced.
    assert!(
        error.contains(&format!("(length {declared} -> {MIB} bytes)")),
        "{error}"
    );
}

#[test]
fn a_content_length_shorter_than_the_body_is_never_success() {
    let served = zstd(&image(3 * MIB, 10));
    let declared = u64::try_from(served.len() / 2).unwrap();
    let run = deploy(served, vec![Behavior::WrongContentLength(declared); 4], &[]);
    let error = run.assert_failed();
    assert!(
        error.contains("zstd") || error.contains("truncated"),
        "{error}"
    );
}

#[test]
fn garbage_fails_the_decoder_or_the_checksum() {
    let served = zstd(&image(2 * MIB, 11));
    let garbage = vec![Behavior::Garbage(u64::try_from(2 * MIB).unwrap())];
    let run = deploy(served.clone(), garbage.clone(), &["--format", "dd-zst"]);
    let error = run.assert_failed();
    assert!(error.contains("zst"), "{error}");
    run.assert_untouched();

    let raw = image(2 * MIB, 12);
    let checksum = format!("sha256:{}", hex(&raw));
    let run = deploy(
        raw,
        garbage,
        &["--checksum", &checksum, "--format", "dd-raw"],
    );
    let error = run.assert_failed();
    assert!(error.starts_with("checksum mismatch"), "{error}");
}

#[test]
fn an_unreachable_server_is_retried_then_named() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("disk.img");
    std::fs::write(&target, b"before").unwrap();
    let url = format!("http://127.0.0.1:{port}/image");
    let output = imprint(&[
        "deploy",
        "--url",
        &url,
        "--disk",
        target.to_str().unwrap(),
        "--retries",
        "1",
    ]);
    let line = result_line(&output);
    assert!(
        line.starts_with(&format!("IMPRINT-RESULT: error: GET {url}: "))
            && line.ends_with("(gave up after 1 retry)"),
        "{line}"
    );
    assert_eq!(std::fs::read(Path::new(&target)).unwrap(), b"before");
}

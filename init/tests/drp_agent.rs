//! Host integration: imprint's DRP reporter against the DRP stand-in of the
//! test harness: what it asks DRP, in which order, and that DRP failing in
//! any way never holds up the deploy or leaks the token.

use std::sync::{Mutex, Once, PoisonError};
use std::time::Duration;

use imprint::drp::{DrpClient, DrpOptions, DrpReporter, LAST_DEPLOY_PARAM, LastDeploy};
use imprint::inject::Secret;
use imprint::source::SourceOptions;
use imprint_qemu::drp::{ApiCall, DrpStandIn};
use serde_json::{Value, json};

const MACHINE: &str = "6c2d3f4e-aaaa-4bbb-8ccc-0123456789ab";

/// Every log line of this test process (all tests, all threads).
static LOGGED: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // Lines from imprint are kept with their level; the HTTP client's
        // (down to debug) only for the token check.
        let line = if record.target().starts_with("imprint") {
            format!("{} {}", record.level(), record.args())
        } else {
            format!("[{}] {} {}", record.target(), record.level(), record.args())
        };
        LOGGED
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn flush(&self) {}
}

fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        log::set_logger(&CaptureLogger).unwrap();
        // Debug, not trace: at trace ureq-proto dumps raw requests, the
        // Authorization header included, so no logger may enable trace for
        // `ureq_proto` (imprint's ConsoleLogger stops at info).
        log::set_max_level(log::LevelFilter::Debug);
    });
}

/// Lines imprint logged that contain `needle`.
fn logged(needle: &str) -> Vec<String> {
    LOGGED
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter(|line| !line.starts_with('[') && line.contains(needle))
        .cloned()
        .collect()
}

fn fast() -> DrpOptions {
    DrpOptions {
        attempts: 4,
        first_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
        timeout: Duration::from_secs(5),
        queue_lines: 64,
        batch_bytes: 64 << 10,
    }
}

fn start_reporter(
    url: &str,
    token: &str,
    source: &SourceOptions,
    options: DrpOptions,
) -> DrpReporter {
    capture_logs();
    let client = DrpClient::new(url, &Secret::new(token), MACHINE, source).unwrap();
    DrpReporter::start(client, options).unwrap()
}

fn ok_result() -> LastDeploy {
    LastDeploy {
        image: "http://files/golden.raw.zst".into(),
        sha256: Some("5e".repeat(32)),
        seconds: 42.04,
        error: None,
    }
}

fn summary(calls: &[ApiCall]) -> Vec<(String, String, u16)> {
    calls
        .iter()
        .map(|c| (c.method.clone(), c.path.clone(), c.status))
        .collect()
}

/// Checks every captured line, the HTTP client's debug output included.
fn assert_token_never_logged(token: &str) {
    let all = LOGGED.lock().unwrap_or_else(PoisonError::into_inner);
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|line| !line.contains(token)),
        "the token reached the log"
    );
}

#[test]
fn happy_path_reports_like_an_agent() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let token = drp.token();
    let reporter = start_reporter(
        &drp.url("/api/v3"),
        &token,
        &SourceOptions::default(),
        fast(),
    );
    for n in 1..=3 {
        reporter.log_line(format!("progress {n}"));
    }
    assert!(reporter.flush(Duration::from_secs(20)));
    reporter.log_line("IMPRINT-RESULT: ok".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    let jobs = drp.jobs();
    assert_eq!(jobs.len(), 1);
    let id = jobs[0]["Uuid"].as_str().unwrap().to_owned();
    assert_eq!(
        (&jobs[0]["State"], &jobs[0]["ExitState"]),
        (&json!("finished"), &json!("complete"))
    );
    assert_eq!(
        String::from_utf8(drp.job_log(&id)).unwrap(),
        "progress 1\nprogress 2\nprogress 3\nIMPRINT-RESULT: ok\n"
    );
    assert_eq!(
        drp.machine_param(MACHINE, LAST_DEPLOY_PARAM),
        Some(json!({
            "image": "http://files/golden.raw.zst",
            "sha256": "5e".repeat(32),
            "seconds": 42.0,
            "result": "ok",
        }))
    );

    let calls = drp.calls();
    assert!(calls.iter().all(|call| call.authorized), "{calls:?}");
    let job_path = format!("/api/v3/jobs/{id}");
    let log_path = format!("{job_path}/log");
    let seen = summary(&calls);
    let (first, rest) = seen.split_at(3);
    let (middle, last) = rest.split_at(rest.len() - 3);
    assert_eq!(
        first,
        [
            // A runnable machine with no current job: nothing to fix first.
            ("GET".into(), format!("/api/v3/machines/{MACHINE}"), 200),
            ("POST".into(), "/api/v3/jobs".into(), 201),
            ("PATCH".into(), job_path.clone(), 200),
        ]
    );
    // The lines go in one or more appends, depending on when they were queued.
    assert!(!middle.is_empty());
    assert!(
        middle
            .iter()
            .all(|c| *c == ("PUT".into(), log_path.clone(), 204)),
        "{middle:?}"
    );
    assert_eq!(
        last,
        [
            ("PATCH".into(), job_path.clone(), 200),
            (
                "POST".into(),
                format!("/api/v3/machines/{MACHINE}/params/{LAST_DEPLOY_PARAM}"),
                200
            ),
            // Asking for the next job moves the workflow on: nothing left.
            ("POST".into(), "/api/v3/jobs".into(), 204),
        ]
    );
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
    assert_eq!(calls[1].json(), json!({"Machine": MACHINE}));
    assert_eq!(
        calls[2].json(),
        json!([
            {"op": "test", "path": "/State", "value": "created"},
            {"op": "replace", "path": "/State", "value": "running"},
        ])
    );
    assert_eq!(calls[calls.len() - 3].json()[0]["value"], "running");
    let puts = &calls[3..calls.len() - 3];
    assert!(
        puts.iter()
            .all(|c| c.content_type.as_deref() == Some("application/octet-stream"))
    );

    let stats = reporter.stats();
    assert_eq!(stats.job.as_deref(), Some(id.as_str()));
    assert_eq!(stats.state.as_deref(), Some("finished"));
    assert_eq!((stats.lines_sent, stats.lines_dropped), (4, 0));
    assert!(stats.param_set);
    assert_eq!(stats.failures, 0);
    assert_eq!(stats.advanced, Some(None));
    assert_token_never_logged(&token);
}

#[test]
fn a_further_task_is_left_incomplete_for_the_installed_systems_agent() {
    let drp = DrpStandIn::start().unwrap();
    drp.set_tasks(MACHINE, &["imprint-deploy", "post-install-check"]);
    let token = drp.token();
    let reporter = start_reporter(
        &drp.url("/api/v3"),
        &token,
        &SourceOptions::default(),
        fast(),
    );
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    let jobs = drp.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:#?}");
    assert_eq!(jobs[0]["State"], "finished");
    assert_eq!(jobs[1]["Task"], "post-install-check");
    assert_eq!(
        (&jobs[1]["State"], &jobs[1]["ExitState"]),
        (&json!("incomplete"), &json!("reboot"))
    );
    assert_eq!(
        reporter.stats().advanced,
        Some(Some("post-install-check".to_owned()))
    );
    // The workflow is not done: the BootEnv stays, and the next agent that
    // asks (the installed system's) gets that job back to run.
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("imprint"));
    let again = ureq::post(drp.url("/api/v3/jobs"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(json!({"Machine": MACHINE}).to_string())
        .unwrap();
    assert_eq!(again.status(), 202);
}

#[test]
fn a_failed_deploy_does_not_move_the_workflow_on() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let token = drp.token();
    let reporter = start_reporter(
        &drp.url("/api/v3"),
        &token,
        &SourceOptions::default(),
        fast(),
    );
    let mut failed = ok_result();
    failed.error = Some("GET http://files/golden.raw.zst: HTTP 404".into());
    reporter.finish(failed);
    assert!(reporter.flush(Duration::from_secs(20)));
    let posts = drp
        .calls()
        .iter()
        .filter(|c| c.method == "POST" && c.path == "/api/v3/jobs")
        .count();
    assert_eq!(posts, 1, "no request for a next job after a failure");
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("imprint"));
    assert_eq!(reporter.stats().advanced, None);
}

#[test]
fn a_failed_deploy_fails_the_job_and_says_why() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let reporter = start_reporter(
        &drp.url(""),
        &drp.token(),
        &SourceOptions::default(),
        fast(),
    );
    reporter.finish(LastDeploy {
        sha256: None,
        error: Some("wrong sha256 for golden.raw.zst".into()),
        ..ok_result()
    });
    assert!(reporter.flush(Duration::from_secs(20)));
    let job = &drp.jobs()[0];
    assert_eq!(
        (&job["State"], &job["ExitState"]),
        (&json!("failed"), &json!("failed"))
    );
    let param = drp.machine_param(MACHINE, LAST_DEPLOY_PARAM).unwrap();
    assert_eq!(
        (&param["result"], &param["error"], &param["sha256"]),
        (
            &json!("failed"),
            &json!("wrong sha256 for golden.raw.zst"),
            &Value::Null
        )
    );
    assert_eq!(reporter.stats().state.as_deref(), Some("failed"));
}

#[test]
fn a_wrong_token_is_logged_once_per_request_and_never_retried() {
    let drp = DrpStandIn::start().unwrap().with_token("the-right-token");
    drp.add_machine(MACHINE);
    let wrong = "wrong-token-7f3a";
    let reporter = start_reporter(&drp.url(""), wrong, &SourceOptions::default(), fast());
    reporter.log_line("progress 1".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    let seen = summary(&drp.calls());
    assert_eq!(
        seen,
        [
            ("GET".into(), format!("/api/v3/machines/{MACHINE}"), 401),
            ("POST".into(), "/api/v3/jobs".into(), 401),
            (
                "POST".into(),
                format!("/api/v3/machines/{MACHINE}/params/{LAST_DEPLOY_PARAM}"),
                401
            ),
        ]
    );
    assert!(drp.jobs().is_empty());
    let stats = reporter.stats();
    assert_eq!(
        (stats.job, stats.param_set, stats.failures),
        (None, false, 3)
    );
    assert_eq!(stats.lines_dropped, 1);
    let endpoint = format!("127.0.0.1:{}", drp.port());
    let warnings = logged(&endpoint);
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0].starts_with("WARN DRP: reading the machine: GET http://127.0.0.1:"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].starts_with("WARN DRP: creating a job: POST http://127.0.0.1:")
            && warnings[1].contains("/api/v3/jobs: HTTP 401 Unauthorized: Unauthorized"),
        "{warnings:?}"
    );
    assert_token_never_logged(wrong);
    assert_token_never_logged("the-right-token");
}

#[test]
fn a_job_changed_under_us_is_left_alone() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let reporter = start_reporter(
        &drp.url(""),
        &drp.token(),
        &SourceOptions::default(),
        fast(),
    );
    assert!(reporter.flush(Duration::from_secs(20)));
    let id = reporter.stats().job.unwrap();
    assert_eq!(reporter.stats().state.as_deref(), Some("running"));
    // An operator fails the job while the image is written.
    assert!(drp.set_job_state(&id, "failed"));
    reporter.log_line("still writing".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    assert_eq!(drp.jobs()[0]["State"], "failed");
    let patches: Vec<u16> = drp
        .calls()
        .iter()
        .filter(|call| call.method == "PATCH")
        .map(|call| call.status)
        .collect();
    assert_eq!(patches, [200, 409], "a 409 is final: no retry");
    assert_eq!(drp.job_log(&id), b"still writing\n");
    assert!(drp.machine_param(MACHINE, LAST_DEPLOY_PARAM).is_some());
    let stats = reporter.stats();
    assert_eq!(
        (stats.state.as_deref(), stats.failures),
        (Some("running"), 1)
    );
    let conflict = logged(&format!("ending job {id}"));
    assert_eq!(conflict.len(), 1, "{conflict:?}");
    assert!(
        conflict[0].contains("HTTP 409 Conflict: Patch error at line 0: Test op failed."),
        "{conflict:?}"
    );
}

#[test]
fn no_task_to_run_means_no_job_but_the_param_is_set() {
    let drp = DrpStandIn::start().unwrap();
    drp.set_task(MACHINE, None);
    let reporter = start_reporter(
        &drp.url(""),
        &drp.token(),
        &SourceOptions::default(),
        fast(),
    );
    reporter.log_line("progress".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));
    let seen = summary(&drp.calls());
    assert_eq!(
        seen,
        [
            ("GET".into(), format!("/api/v3/machines/{MACHINE}"), 200),
            ("POST".into(), "/api/v3/jobs".into(), 204),
            (
                "POST".into(),
                format!("/api/v3/machines/{MACHINE}/params/{LAST_DEPLOY_PARAM}"),
                200
            ),
        ]
    );
    let stats = reporter.stats();
    assert_eq!(
        (stats.job, stats.lines_dropped, stats.failures),
        (None, 1, 0)
    );
    assert!(stats.param_set);
}

#[test]
fn server_errors_are_retried_until_they_pass() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    drp.push_statuses("POST", "/api/v3/jobs", [503, 503]);
    let param_path = format!("/api/v3/machines/{MACHINE}/params/{LAST_DEPLOY_PARAM}");
    drp.push_statuses("POST", &param_path, [429]);
    let reporter = start_reporter(
        &drp.url(""),
        &drp.token(),
        &SourceOptions::default(),
        fast(),
    );
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));
    let statuses: Vec<u16> = drp.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [200, 503, 503, 201, 200, 200, 429, 200, 204]);
    assert_eq!(drp.jobs()[0]["State"], "finished");
    let stats = reporter.stats();
    assert!(stats.param_set);
    assert_eq!(stats.failures, 0);
    let endpoint = format!("127.0.0.1:{}", drp.port());
    let lines = logged(&endpoint);
    assert!(
        lines[0].contains("HTTP 503 Service Unavailable"),
        "{lines:?}"
    );
    assert!(lines[0].contains("retrying in the background"), "{lines:?}");
    assert!(
        lines.iter().any(|line| line.contains("reachable again")),
        "{lines:?}"
    );
}

#[test]
fn an_unreachable_endpoint_never_blocks() {
    // A port nothing listens on: bound, then closed.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let options = DrpOptions {
        first_backoff: Duration::from_secs(3600),
        max_backoff: Duration::from_secs(3600),
        queue_lines: 4,
        ..fast()
    };
    let token = "unreachable-token-19c2";
    let reporter = start_reporter(
        &format!("http://127.0.0.1:{port}"),
        token,
        &SourceOptions::default(),
        options,
    );
    for n in 0..100 {
        reporter.log_line(format!("line {n}"));
    }
    reporter.finish(ok_result());
    // The worker sits in an hour of backoff: only a bounded wait ends.
    assert!(!reporter.flush(Duration::from_millis(300)));
    let stats = reporter.stats();
    assert_eq!((stats.job, stats.lines_sent), (None, 0));
    assert_eq!(stats.lines_dropped, 96, "100 lines, 4 queued");
    // Dropping it ends the backoff rather than waiting it out.
    drop(reporter);
    let lines: Vec<String> = logged(&format!("127.0.0.1:{port}"))
        .into_iter()
        .filter(|line| line.starts_with("WARN"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "one warning for the whole streak: {lines:?}"
    );
    assert!(
        lines[0].starts_with("WARN DRP: reading the machine: GET"),
        "{lines:?}"
    );
    assert_token_never_logged(token);
}

/// Issue 13, item 4: DRP's API is HTTPS with a certificate it generated
/// for itself, self-signed, for an IP address. imprint reaches it as drpcli
/// does (not verified, said once), the token never shows, and downloads
/// still verify. Before the fix the API was verified against the Mozilla
/// roots and the deploy had no job at all.
#[test]
fn a_self_signed_api_is_reached_like_drpcli_and_downloads_stay_strict() {
    let drp = DrpStandIn::start_self_signed().unwrap();
    drp.add_machine(MACHINE);
    let token = drp.token();
    for _ in 0..2 {
        let reporter = start_reporter(&drp.url(""), &token, &SourceOptions::default(), fast());
        reporter.log_line("IMPRINT-RESULT: ok".into());
        reporter.finish(ok_result());
        assert!(reporter.flush(Duration::from_secs(20)));
        assert_eq!(reporter.stats().failures, 0);
    }
    assert_eq!(drp.jobs()[0]["State"], "finished");
    let said = logged("certificate not verified, as drpcli does");
    assert_eq!(said.len(), 1, "once per process: {said:?}");
    assert!(
        said[0].starts_with("WARN DRP API https://127.0.0.1:"),
        "{said:?}"
    );

    // An image server with a certificate nobody trusts (the same one) is
    // still refused.
    drp.add_file("images/golden.raw", vec![0u8; 512]);
    let refused = imprint::source::open(
        &drp.url("/files/images/golden.raw"),
        &SourceOptions::default(),
    )
    .err()
    .map(|error| format!("{error:#}"))
    .unwrap_or_default();
    assert!(
        refused.contains("invalid certificate: UnknownIssuer; pass the CA with imprint.ca="),
        "{refused}"
    );
    assert_token_never_logged(&token);
}

/// With `imprint.ca=`, the API is verified against that CA like everything
/// else, and a certificate it did not sign is a final failure.
#[test]
fn https_with_imprint_ca_verifies_the_api() {
    let ca = imprint_qemu::http::TestCa::new("drp test CA").unwrap();
    let cert = ca.issue_for_fixture().unwrap();
    let drp = DrpStandIn::start_tls(&cert.chain_pem, &cert.key_pem).unwrap();
    drp.add_machine(MACHINE);
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca.cert_pem()).unwrap();
    let trusted = SourceOptions {
        ca: Some(ca_path.display().to_string()),
        ..SourceOptions::default()
    };
    let reporter = start_reporter(&drp.url(""), &drp.token(), &trusted, fast());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));
    assert_eq!(drp.jobs()[0]["State"], "finished");

    // The API's own self-signed certificate is not signed by that CA.
    let other = DrpStandIn::start_self_signed().unwrap();
    other.add_machine(MACHINE);
    let untrusted = start_reporter(&other.url(""), &other.token(), &trusted, fast());
    untrusted.finish(ok_result());
    assert!(untrusted.flush(Duration::from_secs(20)));
    let stats = untrusted.stats();
    assert_eq!(stats.job, None);
    assert!(other.jobs().is_empty());
    let ca_name = ca_path.display().to_string();
    let lines = logged(&format!(
        "invalid certificate: UnknownIssuer; not signed by {ca_name}"
    ));
    assert!(
        lines
            .iter()
            .any(|line| line.contains(&format!("127.0.0.1:{}", other.port()))),
        "{lines:?}"
    );
    assert!(
        other.calls().is_empty(),
        "no request got through: {:?}",
        other.calls()
    );
}

/// The stand-in's calls from `start` on, `(method, path, status)`, with the
/// job ids replaced by their index in `drp.jobs()` (`JOB0`, `JOB1`, …) and
/// the machine's UUID by `M`.
fn named_calls(drp: &DrpStandIn, calls: &[ApiCall]) -> Vec<String> {
    let ids: Vec<String> = drp
        .jobs()
        .iter()
        .map(|job| job["Uuid"].as_str().unwrap().to_owned())
        .collect();
    summary(calls)
        .into_iter()
        .map(|(method, mut path, status)| {
            for (index, id) in ids.iter().enumerate() {
                path = path.replace(id, &format!("JOB{index}"));
            }
            format!("{method} {} {status}", path.replace(MACHINE, "M"))
        })
        .collect()
}

/// Issue 13, items 1 and 2: a machine put in the imprint workflow (a
/// BootEnv change: not runnable) after a power loss mid-deploy (its job
/// still `running`). Like `drpcli agent` (`init()` and `Run()` in
/// agent/agent.go), imprint fails the stale job, marks the machine runnable
/// with the JSON patch drpcli's `PatchTo` sends, and then gets its job.
/// Before the fix, `POST /jobs` got 409 and the deploy had no job, and the
/// workflow never moved on.
#[test]
fn a_stale_job_and_a_not_runnable_machine_are_dealt_with_like_drpcli_agent() {
    let drp = DrpStandIn::start().unwrap();
    drp.assign_imprint_workflow(MACHINE);
    let stale = drp.add_stale_job(MACHINE, "running");
    assert_eq!(drp.machine_runnable(MACHINE), Some(false));
    let token = drp.token();
    let reporter = start_reporter(&drp.url(""), &token, &SourceOptions::default(), fast());
    reporter.log_line("progress".into());
    reporter.log_line("IMPRINT-RESULT: ok".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    let jobs = drp.jobs();
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    assert_eq!(jobs[0]["Uuid"], json!(stale));
    assert_eq!(jobs[0]["State"], "failed");
    assert_eq!(
        (&jobs[1]["State"], &jobs[1]["ExitState"], &jobs[1]["Task"]),
        (
            &json!("finished"),
            &json!("complete"),
            &json!("imprint-deploy")
        )
    );
    let id = jobs[1]["Uuid"].as_str().unwrap();
    assert_eq!(
        String::from_utf8(drp.job_log(id)).unwrap(),
        "progress\nIMPRINT-RESULT: ok\n"
    );
    assert_eq!(drp.machine_stage(MACHINE).as_deref(), Some("complete"));
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
    assert!(drp.machine_param(MACHINE, LAST_DEPLOY_PARAM).is_some());

    let calls = drp.calls();
    let named = named_calls(&drp, &calls);
    assert_eq!(
        named[..6],
        [
            "GET /api/v3/machines/M 200",
            "GET /api/v3/jobs/JOB0 200",
            "PATCH /api/v3/jobs/JOB0 200",
            "GET /api/v3/machines/M 200",
            "PATCH /api/v3/machines/M 200",
            "POST /api/v3/jobs 201",
        ],
        "{named:#?}"
    );
    assert_eq!(
        calls[2].json(),
        json!([
            {"op": "test", "path": "/State", "value": "running"},
            {"op": "replace", "path": "/State", "value": "failed"},
        ])
    );
    assert_eq!(
        calls[4].json(),
        json!([
            {"op": "test", "path": "/Runnable", "value": false},
            {"op": "replace", "path": "/Runnable", "value": true},
        ])
    );
    assert_eq!(named.last().unwrap(), "POST /api/v3/jobs 204");
    assert_eq!(logged(&format!("job {stale}")).len(), 1, "said once");
    assert_token_never_logged(&token);
}

/// Issue 13, item 3: `on-failure=retry:2`, the first run failing. The
/// failed job leaves the machine not runnable; the second run marks it
/// runnable again (as drpcli agent does whenever it starts), gets a job for
/// the same task, finishes it, and the workflow moves on. Before the fix the
/// second run's `POST /jobs` got 409, so no job was finished and the
/// workflow never advanced.
#[test]
fn a_retry_after_a_failed_run_gets_its_own_job_and_advances_the_workflow() {
    let drp = DrpStandIn::start().unwrap();
    drp.assign_imprint_workflow(MACHINE);
    let reporter = start_reporter(
        &drp.url(""),
        &drp.token(),
        &SourceOptions::default(),
        fast(),
    );
    reporter.log_line("IMPRINT-RESULT: error 1".into());
    let mut failed = ok_result();
    failed.error = Some("GET http://files/golden.raw.zst: HTTP 404".into());
    reporter.finish(failed);
    assert!(reporter.flush(Duration::from_secs(20)));
    assert_eq!(drp.machine_runnable(MACHINE), Some(false));
    reporter.log_line("IMPRINT-RESULT: ok".into());
    reporter.finish(ok_result());
    assert!(reporter.flush(Duration::from_secs(20)));

    let states: Vec<(Value, Value)> = drp
        .jobs()
        .iter()
        .map(|job| (job["State"].clone(), job["Task"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (json!("failed"), json!("imprint-deploy")),
            (json!("finished"), json!("imprint-deploy")),
        ]
    );
    let second = drp.jobs()[1]["Uuid"].as_str().unwrap().to_owned();
    assert_eq!(drp.job_log(&second), b"IMPRINT-RESULT: ok\n");
    assert_eq!(drp.machine_stage(MACHINE).as_deref(), Some("complete"));
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
    assert_eq!(reporter.stats().advanced, Some(None));
    assert_eq!(reporter.stats().failures, 0);
}

use std::io::{Read, Write};
use std::net::TcpStream;

use super::*;

const MACHINE: &str = "3f0c6a3e-1111-4222-8333-444455556666";

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// One request; `token` adds `Authorization: Bearer`, `body` a Content-Length.
fn send(
    drp: &DrpStandIn,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[&str],
    body: &[u8],
) -> Reply {
    let mut stream = TcpStream::connect(("127.0.0.1", drp.port())).unwrap();
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    if let Some(token) = token {
        text.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    for header in headers {
        text.push_str(header);
        text.push_str("\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

fn api(drp: &DrpStandIn, method: &str, path: &str, body: &str) -> Reply {
    let token = drp.token();
    send(
        drp,
        method,
        path,
        Some(&token),
        &["Content-Type: application/json"],
        body.as_bytes(),
    )
}

fn patch(drp: &DrpStandIn, id: &str, operations: Value) -> Reply {
    api(
        drp,
        "PATCH",
        &format!("/api/v3/jobs/{id}"),
        &operations.to_string(),
    )
}

fn state_patch(from: &str, to: &str) -> Value {
    json!([
        {"op": "test", "path": "/State", "value": from},
        {"op": "replace", "path": "/State", "value": to},
    ])
}

fn create(drp: &DrpStandIn) -> Reply {
    api(
        drp,
        "POST",
        "/api/v3/jobs",
        &json!({"Machine": MACHINE}).to_string(),
    )
}

#[test]
fn files_have_range_and_machine_files_need_no_token() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_file("images/golden.raw", (0u8..100).collect::<Vec<_>>());
    drp.set_machine_file(MACHINE, "imprint.json", r#"{"url":"x"}"#);

    let whole = send(&drp, "GET", "/files/images/golden.raw", None, &[], b"");
    assert_eq!((whole.status, whole.body.len()), (200, 100));
    let part = send(
        &drp,
        "GET",
        "/files/images/golden.raw",
        None,
        &["Range: bytes=10-19"],
        b"",
    );
    assert_eq!(part.status, 206);
    assert_eq!(part.body, (10u8..20).collect::<Vec<_>>());
    assert_eq!(part.header("content-range"), Some("bytes 10-19/100"));

    let spec = send(
        &drp,
        "GET",
        &format!("/machines/{MACHINE}/imprint.json"),
        None,
        &[],
        b"",
    );
    assert_eq!(
        (spec.status, spec.body.as_slice()),
        (200, &br#"{"url":"x"}"#[..])
    );
    assert_eq!(
        send(&drp, "GET", "/files/missing", None, &[], b"").status,
        404
    );
    assert_eq!(send(&drp, "GET", "/elsewhere", None, &[], b"").status, 404);

    let calls = drp.calls();
    assert_eq!(calls.len(), 5);
    assert_eq!(calls[1].path, "/files/images/golden.raw");
    assert_eq!(calls[1].status, 206);
    assert_eq!(calls[2].path, format!("/machines/{MACHINE}/imprint.json"));
    assert_eq!(
        drp.url("files/x"),
        format!("http://127.0.0.1:{}/files/x", drp.port())
    );
    assert_eq!(
        drp.guest_url("/files/x"),
        format!("http://10.0.2.2:{}/files/x", drp.port())
    );
    assert_eq!(drp.url(""), format!("http://127.0.0.1:{}", drp.port()));
}

#[test]
fn wrong_or_missing_token_is_401_with_drps_error_body() {
    let drp = DrpStandIn::start().unwrap().with_token("right");
    drp.add_machine(MACHINE);
    assert_eq!(drp.token(), "right");
    for token in [Some("wrong"), None] {
        let body = json!({"Machine": MACHINE}).to_string();
        let reply = send(&drp, "POST", "/api/v3/jobs", token, &[], body.as_bytes());
        assert_eq!(reply.status, 401);
        let error = reply.json();
        assert_eq!(error["Code"], 401);
        assert_eq!(error["Messages"], json!(["Unauthorized"]));
        for field in ["Type", "Key", "Model"] {
            assert!(error[field].is_string(), "{field} missing in {error}");
        }
    }
    assert!(drp.jobs().is_empty());
    let calls = drp.calls();
    assert_eq!(calls.len(), 2);
    assert!(
        calls
            .iter()
            .all(|call| !call.authorized && call.status == 401)
    );
    assert_eq!(create(&drp).status, 201);
    assert!(drp.calls()[2].authorized);
}

#[test]
fn job_lifecycle_follows_drp() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let created = create(&drp);
    assert_eq!(created.status, 201);
    let job = created.json();
    let id = job["Uuid"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(
        (&job["State"], &job["Machine"], &job["Task"]),
        (&json!("created"), &json!(MACHINE), &json!(DEFAULT_TASK))
    );
    // One created or running job per machine.
    let busy = create(&drp);
    assert_eq!(busy.status, 409);
    assert_eq!(busy.json()["Type"], "Conflict");

    let running = patch(&drp, &id, state_patch("created", "running"));
    assert_eq!(
        (running.status, &running.json()["State"]),
        (200, &json!("running"))
    );
    // The same transition again: its test fails, nothing changes.
    let stale = patch(&drp, &id, state_patch("created", "failed"));
    assert_eq!(stale.status, 409);
    assert_eq!(stale.json()["Code"], 409);
    assert_eq!(drp.jobs()[0]["State"], "running");

    assert_eq!(
        api(&drp, "PATCH", &format!("/api/v3/jobs/{id}"), "{\"op\":1}").status,
        400
    );
    assert_eq!(
        api(&drp, "PATCH", &format!("/api/v3/jobs/{id}"), "not json").status,
        400
    );
    let missing = json!([{"op": "replace", "path": "/Nope", "value": 1}]);
    assert_eq!(patch(&drp, &id, missing).status, 422);
    assert_eq!(
        patch(&drp, "no-such-job", state_patch("running", "failed")).status,
        404
    );

    let finished = json!([
        {"op": "test", "path": "/State", "value": "running"},
        {"op": "replace", "path": "/State", "value": "finished"},
        {"op": "replace", "path": "/ExitState", "value": "complete"},
    ]);
    assert_eq!(patch(&drp, &id, finished).status, 200);
    let job = &drp.jobs()[0];
    assert_eq!(
        (&job["State"], &job["ExitState"]),
        (&json!("finished"), &json!("complete"))
    );

    // The task list is done: asking again completes the workflow.
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("imprint"));
    let done = create(&drp);
    assert_eq!((done.status, done.body.len()), (204, 0));
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
    assert_eq!(drp.jobs().len(), 1);
}

#[test]
fn tasks_run_once_each_in_order_and_chain_their_jobs() {
    let drp = DrpStandIn::start().unwrap();
    drp.set_tasks(MACHINE, &["imprint-deploy", "check"]);
    let first = create(&drp);
    assert_eq!(first.status, 201);
    let id = first.json()["Uuid"].as_str().unwrap().to_owned();
    assert_eq!(first.json()["Task"], "imprint-deploy");
    for (from, to) in [("created", "running"), ("running", "finished")] {
        let ops = json!([
            {"op": "test", "path": "/State", "value": from},
            {"op": "replace", "path": "/State", "value": to},
        ]);
        assert_eq!(patch(&drp, &id, ops).status, 200);
    }
    let next = create(&drp);
    assert_eq!(next.status, 201);
    assert_eq!(next.json()["Task"], "check");
    assert_eq!(next.json()["Previous"], json!(id));
    assert_eq!(drp.jobs().len(), 2);
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("imprint"));
}

#[test]
fn no_task_is_204_and_incomplete_job_is_202() {
    let drp = DrpStandIn::start().unwrap();
    assert_eq!(create(&drp).status, 422, "unknown machine");
    drp.set_task(MACHINE, None);
    let none = create(&drp);
    assert_eq!((none.status, none.body.len()), (204, 0));
    assert!(drp.jobs().is_empty());
    // The move to BootEnv `local` left it not runnable; an agent marks it.
    assert_eq!(drp.machine_runnable(MACHINE), Some(false));
    drp.set_runnable(MACHINE, true);

    drp.set_task(MACHINE, Some("other-task"));
    let job = create(&drp).json();
    assert_eq!(job["Task"], "other-task");
    let id = job["Uuid"].as_str().unwrap();
    assert!(drp.set_job_state(id, "incomplete"));
    let again = create(&drp);
    assert_eq!(again.status, 202);
    assert_eq!(again.json()["Uuid"], job["Uuid"]);
    assert!(!drp.set_job_state("nope", "failed"));
    let no_machine = api(&drp, "POST", "/api/v3/jobs", "{}");
    assert_eq!(no_machine.status, 400);
}

#[test]
fn job_log_appends_octet_streams_only() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let id = create(&drp).json()["Uuid"].as_str().unwrap().to_owned();
    let path = format!("/api/v3/jobs/{id}/log");
    let token = drp.token();
    let octets = ["Content-Type: application/octet-stream"];
    assert_eq!(
        send(&drp, "PUT", &path, Some(&token), &octets, b"one\n").status,
        204
    );
    assert_eq!(
        send(&drp, "PUT", &path, Some(&token), &octets, b"two\n").status,
        204
    );
    let json_log = api(&drp, "PUT", &path, "\"three\"");
    assert_eq!(json_log.status, 415);
    assert_eq!(drp.job_log(&id), b"one\ntwo\n");
    assert_eq!(api(&drp, "GET", &path, "").json(), json!("one\ntwo\n"));
    let missing = send(
        &drp,
        "PUT",
        "/api/v3/jobs/nope/log",
        Some(&token),
        &octets,
        b"x",
    );
    assert_eq!(missing.status, 404);
    let calls = drp.calls();
    let content_types: Vec<Option<String>> = calls
        .iter()
        .filter(|call| call.method == "PUT")
        .map(|call| call.content_type.clone())
        .collect();
    assert_eq!(content_types.len(), 4);
    assert_eq!(
        content_types[0].as_deref(),
        Some("application/octet-stream")
    );
}

#[test]
fn machine_params_take_json_and_keys_with_slashes() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    let path = format!("/api/v3/machines/{MACHINE}/params/imprint/last-deploy");
    let value = json!({"image": "golden.raw", "result": "ok", "seconds": 12});
    let set = api(&drp, "POST", &path, &value.to_string());
    assert_eq!((set.status, set.json()), (200, value.clone()));
    assert_eq!(
        drp.machine_param(MACHINE, "imprint/last-deploy"),
        Some(value.clone())
    );
    assert_eq!(api(&drp, "GET", &path, "").json(), value);
    let all = api(
        &drp,
        "GET",
        &format!("/api/v3/machines/{MACHINE}/params"),
        "",
    );
    assert_eq!(all.json(), json!({"imprint/last-deploy": value}));
    assert_eq!(api(&drp, "POST", &path, "not json").status, 400);
    assert_eq!(drp.calls().last().unwrap().json(), Value::Null);
    let unknown = api(&drp, "POST", "/api/v3/machines/nope/params/a", "1");
    assert_eq!(unknown.status, 404);
    assert_eq!(drp.machine_param(MACHINE, "missing"), None);
}

#[test]
fn scripted_statuses_come_first_then_normal_handling() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    drp.push_statuses("POST", "api/v3/jobs", [503, 500]);
    assert_eq!(create(&drp).status, 503);
    let second = create(&drp);
    assert_eq!((second.status, &second.json()["Code"]), (500, &json!(500)));
    assert_eq!(create(&drp).status, 201);
    let statuses: Vec<u16> = drp.calls().iter().map(|call| call.status).collect();
    assert_eq!(statuses, [503, 500, 201]);
    assert_eq!(drp.calls()[0].json(), json!({"Machine": MACHINE}));
}

#[test]
fn json_patch_is_all_or_nothing() {
    let document = json!({"State": "created", "Meta": {"a/b": 1, "t~": 2}, "List": [1, 2]});
    // A failing test after a replace leaves the document as it was.
    let failing = json!([
        {"op": "replace", "path": "/State", "value": "running"},
        {"op": "test", "path": "/State", "value": "created"},
    ]);
    assert_eq!(
        apply_patch(&document, &failing),
        Err(PatchError::TestFailed(1))
    );

    let patched = apply_patch(
        &document,
        &json!([
            {"op": "test", "path": "/Meta/a~1b", "value": 1},
            {"op": "test", "path": "/Meta/t~0", "value": 2},
            {"op": "add", "path": "/Meta/new", "value": true},
            {"op": "add", "path": "/List/-", "value": 3},
            {"op": "add", "path": "/List/0", "value": 0},
            {"op": "remove", "path": "/Meta/a~1b"},
        ]),
    )
    .unwrap();
    assert_eq!(
        patched,
        json!({"State": "created", "Meta": {"t~": 2, "new": true}, "List": [0, 1, 2, 3]})
    );
    let invalid = |patch: Value| match apply_patch(&document, &patch) {
        Err(PatchError::Invalid(line, _)) => line,
        other => panic!("{patch}: {other:?}"),
    };
    assert_eq!(
        invalid(json!([{"op": "move", "path": "/State", "from": "/x"}])),
        0
    );
    assert_eq!(invalid(json!([{"op": "test", "path": "/State"}])), 0);
    assert_eq!(
        invalid(json!([{"op": "add", "path": "/Nope/x", "value": 1}])),
        0
    );
    assert_eq!(invalid(json!([{"op": "remove", "path": "/List/9"}])), 0);
    assert_eq!(
        invalid(json!([{"op": "add", "path": "/List/9", "value": 1}])),
        0
    );
    assert_eq!(
        invalid(json!([{"op": "replace", "path": "State", "value": 1}])),
        0
    );
    assert_eq!(
        invalid(json!([{"op": "test", "path": "/State", "value": "created"}, {"path": "/x"}])),
        1
    );
}

fn runnable_patch(from: bool, to: bool) -> String {
    json!([
        {"op": "test", "path": "/Runnable", "value": from},
        {"op": "replace", "path": "/Runnable", "value": to},
    ])
    .to_string()
}

#[test]
fn a_workflow_leaves_the_machine_not_runnable_until_an_agent_marks_it() {
    let drp = DrpStandIn::start().unwrap();
    drp.assign_imprint_workflow(MACHINE);
    assert_eq!(drp.machine_runnable(MACHINE), Some(false));
    let machine_path = format!("/api/v3/machines/{MACHINE}");
    let shown = api(&drp, "GET", &machine_path, "").json();
    assert_eq!(
        (&shown["Runnable"], &shown["BootEnv"], &shown["Workflow"]),
        (
            &json!(false),
            &json!("imprint"),
            &json!("imprint-image-deploy")
        )
    );
    let refused = create(&drp);
    assert_eq!(refused.status, 409);
    assert_eq!(
        refused.json()["Messages"],
        json!([format!("Machine {MACHINE} is not runnable")])
    );
    assert!(drp.jobs().is_empty());

    // What `drpcli agent`'s Run() sends (PatchTo: a test op, then the change).
    let stale = api(&drp, "PATCH", &machine_path, &runnable_patch(true, true));
    assert_eq!(stale.status, 409, "the test op sees Runnable false");
    let marked = api(&drp, "PATCH", &machine_path, &runnable_patch(false, true));
    assert_eq!(
        (marked.status, &marked.json()["Runnable"]),
        (200, &json!(true))
    );
    assert_eq!(create(&drp).status, 201);

    // A BootEnv change through the API makes it not runnable again.
    let ops = json!([{"op": "replace", "path": "/BootEnv", "value": "sledgehammer"}]);
    let moved = api(&drp, "PATCH", &machine_path, &ops.to_string());
    assert_eq!(moved.json()["Runnable"], false);
}

#[test]
fn a_stale_running_job_conflicts_until_it_is_failed() {
    let drp = DrpStandIn::start().unwrap();
    let stale = drp.add_stale_job(MACHINE, "running");
    assert_eq!(
        drp.machine(MACHINE).unwrap()["CurrentJob"],
        json!(stale.clone())
    );
    let refused = create(&drp);
    assert_eq!(refused.status, 409);
    assert_eq!(
        refused.json()["Messages"],
        json!([format!(
            "Machine {MACHINE} already has running or created job"
        )])
    );
    let job = api(&drp, "GET", &format!("/api/v3/jobs/{stale}"), "").json();
    assert_eq!(
        (&job["State"], &job["Context"]),
        (&json!("running"), &json!(""))
    );
    // agent init(): the stale job is failed; which leaves the machine not
    // runnable, until it is marked runnable (Run()).
    assert_eq!(
        patch(&drp, &stale, state_patch("running", "failed")).status,
        200
    );
    assert_eq!(create(&drp).status, 409);
    drp.set_runnable(MACHINE, true);
    let retried = create(&drp);
    assert_eq!(retried.status, 201);
    assert_eq!(retried.json()["Task"], DEFAULT_TASK);
    assert_eq!(retried.json()["Previous"], json!(stale));
}

/// Runs job `id` as an agent does: `created` → `running` → `end`.
fn run_job(drp: &DrpStandIn, id: &str, end: &str) {
    for (from, to) in [("created", "running"), ("running", end)] {
        assert_eq!(
            patch(drp, id, state_patch(from, to)).status,
            200,
            "{from} → {to}"
        );
    }
}

#[test]
fn a_failed_job_is_retried_for_the_same_task_and_a_finished_one_advances() {
    let drp = DrpStandIn::start().unwrap();
    drp.set_tasks(MACHINE, &["imprint-deploy"]);
    let first = create(&drp).json();
    run_job(&drp, first["Uuid"].as_str().unwrap(), "failed");
    assert_eq!(drp.machine_runnable(MACHINE), Some(false));
    assert_eq!(create(&drp).status, 409, "not runnable after a failed job");
    drp.set_runnable(MACHINE, true);
    let second = create(&drp);
    assert_eq!(second.status, 201);
    assert_eq!(second.json()["Task"], "imprint-deploy");
    run_job(&drp, second.json()["Uuid"].as_str().unwrap(), "finished");
    assert_eq!(drp.machine_runnable(MACHINE), Some(true));
    assert_eq!(create(&drp).status, 204);
    assert_eq!(drp.machine_stage(MACHINE).as_deref(), Some("complete"));
    assert_eq!(drp.machine_bootenv(MACHINE).as_deref(), Some("local"));
}

#[test]
fn the_api_can_be_https_with_a_fresh_self_signed_certificate() {
    let drp = DrpStandIn::start_self_signed().unwrap();
    assert_eq!(drp.scheme(), "https");
    assert!(drp.url("").starts_with("https://127.0.0.1:"));
    let pem = drp.certificate_pem().unwrap();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 1, "{pem}");
    let other = DrpStandIn::start_self_signed().unwrap();
    assert_ne!(other.certificate_pem(), Some(pem), "generated per stand-in");
    // Plain HTTP gets no HTTP answer: the port speaks TLS only.
    let mut stream = TcpStream::connect(("127.0.0.1", drp.port())).unwrap();
    stream
        .write_all(b"GET /api/v3/machines HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    assert!(!raw.starts_with(b"HTTP/1.1 "), "{raw:?}");
}

/// `drpcli machines set UUID param image-deploy/image-type to '"dd-zst"'`
/// with image-deploy installed: refused, the machine unchanged
/// (drp/params.rs cites the sources).
#[test]
fn a_value_outside_a_defined_params_enum_is_refused() {
    let drp = DrpStandIn::start().unwrap();
    drp.add_machine(MACHINE);
    drp.define_params(&params::image_deploy_params());
    let path = format!("/api/v3/machines/{MACHINE}/params/image-deploy/image-type");
    let refused = api(&drp, "POST", &path, "\"dd-zst\"");
    assert_eq!(refused.status, 409);
    let body = refused.json();
    assert_eq!(body["Model"], "machines");
    assert_eq!(body["Key"], MACHINE);
    assert_eq!(body["Type"], "POST");
    let message = body["Messages"][0].as_str().unwrap();
    assert!(
        message.starts_with(
            "Key 'image-deploy/image-type': invalid val 'dd-zst': (root): (root) must be one of the following: \"tgz\", \"dd-tgz\""
        ),
        "{message}"
    );
    assert_eq!(drp.machine_param(MACHINE, "image-deploy/image-type"), None);
    // A listed value, a wrong type, and a param nobody defined.
    assert_eq!(api(&drp, "POST", &path, "\"dd-raw\"").status, 200);
    let typed = api(&drp, "POST", &path, "3");
    assert_eq!(typed.status, 409);
    assert!(
        typed.json()["Messages"][0]
            .as_str()
            .unwrap()
            .ends_with("invalid val '3': (root): Invalid type. Expected: string")
    );
    let free = format!("/api/v3/machines/{MACHINE}/params/imprint/format");
    assert_eq!(api(&drp, "POST", &free, "\"dd-zst\"").status, 200);
}

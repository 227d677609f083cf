//! A stand-in for Digital Rebar Provision (DRP) in tests: its static file
//! server, the per-machine rendered templates, and the part of its API
//! (`/api/v3`) a machine agent uses.
//!
//! It follows DRP's documented behaviour where imprint depends on it:
//!
//! - `GET`/`HEAD /files/<path>`: static files with Range, ETag and the
//!   scripted misbehaviour of [`FixtureServer`] (whose file handling it reuses).
//! - `GET /machines/<uuid>/<name>`: rendered templates such as `imprint.json`,
//!   unauthenticated as on DRP's file server.
//! - Everything under `/api/v3/` wants `Authorization: Bearer <token>`; anything
//!   else gets `401` with DRP's error body `{"Type","Messages","Code","Key","Model"}`.
//! - `POST /api/v3/jobs {"Machine":uuid}`: `409` "is not runnable" unless the
//!   machine is `Runnable`; `409` "already has running or created job" while
//!   its current job is `created` or `running`; `202` with the current job
//!   when that is `incomplete` (it is run again); `201` with a new job
//!   (server-assigned `Uuid`, `State: "created"`) for the next task of the
//!   machine's task list after a `finished` job, for the same task after a
//!   `failed` one; `204` and no body when the list is done, which also moves
//!   the machine to stage `complete` and BootEnv `local`, as DRP's `complete`
//!   stage at the end of a workflow does; `422` for an unknown machine; `400`
//!   without `Machine`. The machine model and its sources are in
//!   [`machine`](self::machine): a BootEnv change (setting a workflow) and a
//!   failed job leave a machine not runnable.
//! - `GET`/`PATCH /api/v3/machines/<uuid>`: the machine (`Runnable`,
//!   `BootEnv`, `Stage`, `Workflow`, `CurrentJob`), patched like a job.
//! - `GET`/`PATCH /api/v3/jobs/<id>`: the PATCH body is an RFC 6902 JSON Patch
//!   (all six operations, by the json-patch crate), applied all or nothing: `409` when a
//!   `test` fails (someone changed the job), `422` when an operation cannot be
//!   applied, `400` when the body is not a patch.
//! - `PUT /api/v3/jobs/<id>/log` (`application/octet-stream`, else `415`) appends;
//!   `GET` reads the log.
//! - `GET /api/v3/machines/<uuid>/params`, `GET`/`POST
//!   /api/v3/machines/<uuid>/params/<key>` (the key may contain `/`, e.g.
//!   `imprint/last-deploy`; the POST body is the JSON value). A value that
//!   fails the schema of a param defined with [`DrpStandIn::define_params`]
//!   is refused as DRP refuses it ([`params`]).
//!
//! [`DrpStandIn::start_self_signed`] serves it all over HTTPS with a
//! certificate generated on the spot, self-signed, for IP addresses, as
//! `dr-provision` does at install.
//!
//! Every request is recorded ([`DrpStandIn::calls`]) with whether its token was
//! right, the status sent and the body, so tests assert on what an agent did.
//! [`DrpStandIn::push_statuses`] makes the next API calls of a path fail on
//! purpose. Like [`FixtureServer`], each response closes its connection.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rustls::ServerConfig;
use serde_json::{Value, json};

use crate::http::{self, FixtureServer};
use crate::listener::{self, Listener, Request, Response, Serve};
use machine::Machine;

/// The task a machine's jobs run unless [`DrpStandIn::set_task`] says otherwise.
pub const DEFAULT_TASK: &str = "imprint-deploy";

/// One request as the stand-in saw and answered it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiCall {
    /// `GET`, `POST`, `PATCH`, …
    pub method: String,
    /// The path, without query string.
    pub path: String,
    /// The request carried `Authorization: Bearer <the token>`.
    pub authorized: bool,
    /// The request's `Content-Type`, verbatim.
    pub content_type: Option<String>,
    /// The status sent.
    pub status: u16,
    /// The request body.
    pub body: Vec<u8>,
}

impl ApiCall {
    /// The request body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

#[derive(Default)]
struct State {
    token: String,
    machines: BTreeMap<String, Machine>,
    /// Jobs by `Uuid`, in creation order.
    jobs: Vec<Value>,
    logs: HashMap<String, Vec<u8>>,
    /// Statuses to answer the next API requests of a `(method, path)` with.
    scripted: HashMap<(String, String), VecDeque<u16>>,
    calls: Vec<ApiCall>,
    next_id: u64,
    /// Defined params' schemas by name ([`DrpStandIn::define_params`]).
    param_schemas: BTreeMap<String, Value>,
}

struct Shared {
    files: FixtureServer,
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running DRP stand-in on 127.0.0.1; stops accepting when dropped.
pub struct DrpStandIn {
    listener: Listener,
    shared: Arc<Shared>,
    certificate_pem: Option<String>,
}

impl std::fmt::Debug for DrpStandIn {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DrpStandIn")
            .field("address", &self.listener.address())
            .field("scheme", &self.scheme())
            .finish()
    }
}

static TOKENS: AtomicU64 = AtomicU64::new(0);

impl DrpStandIn {
    /// Binds a random port on 127.0.0.1 and serves plain HTTP, with a fresh
    /// token ([`token`](Self::token)).
    pub fn start() -> Result<Self> {
        Self::start_with(None)
    }

    /// Like [`start`](Self::start) but HTTPS, as DRP's API (port 8092) is.
    pub fn start_tls(cert_chain_pem: &str, key_pem: &str) -> Result<Self> {
        Self::start_with(Some(listener::server_config(cert_chain_pem, key_pem)?))
    }

    /// Like [`start_tls`](Self::start_tls) with the certificate DRP makes
    /// for itself at install (`server/cert.go` in `hartsock/provision`):
    /// generated now, self-signed, not a CA, for IP addresses (127.0.0.1
    /// for the host, 10.0.2.2 for a guest) and no DNS name, signed by no
    /// CA any client trusts. Its PEM is [`certificate_pem`](Self::certificate_pem).
    pub fn start_self_signed() -> Result<Self> {
        let (cert_pem, key_pem) = self_signed_certificate(&["127.0.0.1", "10.0.2.2"])?;
        let mut drp = Self::start_tls(&cert_pem, &key_pem)?;
        drp.certificate_pem = Some(cert_pem);
        Ok(drp)
    }

    /// The certificate of a [`start_self_signed`](Self::start_self_signed)
    /// stand-in.
    pub fn certificate_pem(&self) -> Option<&str> {
        self.certificate_pem.as_deref()
    }

    fn start_with(tls: Option<Arc<ServerConfig>>) -> Result<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |age| age.as_nanos());
        let token = format!(
            "drp-token-{nanos:x}-{}",
            TOKENS.fetch_add(1, Ordering::Relaxed)
        );
        let shared = Arc::new(Shared {
            files: FixtureServer::start()?,
            state: Mutex::new(State {
                token,
                ..State::default()
            }),
        });
        let server: Arc<dyn Serve> = Arc::clone(&shared) as Arc<dyn Serve>;
        let listener = Listener::start("drp", false, tls, server)?;
        Ok(Self {
            listener,
            shared,
            certificate_pem: None,
        })
    }

    /// Accepts `token` (and no other) from now on.
    pub fn with_token(self, token: &str) -> Self {
        self.shared.lock().token = token.to_owned();
        self
    }

    /// The bearer token the API accepts.
    pub fn token(&self) -> String {
        self.shared.lock().token.clone()
    }

    /// The port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.listener.address().port()
    }

    /// `https` or `http`.
    pub fn scheme(&self) -> &'static str {
        self.listener.scheme()
    }

    /// The URL of `path` for the host (`url("")` is the API endpoint's base).
    pub fn url(&self, path: &str) -> String {
        format!(
            "{}://127.0.0.1:{}{}",
            self.scheme(),
            self.port(),
            tail(path)
        )
    }

    /// The URL of `path` for a guest on QEMU user-mode networking.
    pub fn guest_url(&self, path: &str) -> String {
        format!("{}://10.0.2.2:{}{}", self.scheme(), self.port(), tail(path))
    }

    /// Serves `bytes` at `/files/<path>`, with Range.
    pub fn add_file(&self, path: &str, bytes: impl Into<Vec<u8>>) {
        self.shared.files.add_file(&files_path(path), bytes.into());
    }

    /// The [`FixtureServer`] behind `/files/` and `/machines/`, to queue
    /// misbehaviour with [`FixtureServer::push_behaviors`] (under the full
    /// path, e.g. `/files/images/golden.raw`). Its own port is not used.
    pub fn files(&self) -> &FixtureServer {
        &self.shared.files
    }

    /// Defines params as content does (`{name: {"Schema": …}}`, e.g.
    /// [`params::image_deploy_params`] or a content pack's `params`
    /// section): values set on a machine are checked against them.
    pub fn define_params(&self, definitions: &Value) {
        let mut state = self.shared.lock();
        for (name, definition) in definitions.as_object().into_iter().flatten() {
            state
                .param_schemas
                .insert(name.clone(), definition["Schema"].clone());
        }
    }

    /// Registers a machine (idempotent), runnable, as `POST /machines`
    /// makes it; its jobs run [`DEFAULT_TASK`].
    pub fn add_machine(&self, uuid: &str) {
        self.shared
            .lock()
            .machines
            .entry(uuid.to_owned())
            .or_insert_with(|| Machine::new(uuid, DEFAULT_TASK));
    }

    /// The task the machine's next job runs; `None`: it has nothing to run,
    /// so `POST /jobs` answers `204 No Content`. Registers the machine.
    pub fn set_task(&self, uuid: &str, task: Option<&str>) {
        let tasks: Vec<&str> = task.into_iter().collect();
        self.set_tasks(uuid, &tasks);
    }

    /// The machine's task list from now on (its workflow's remaining
    /// tasks), started over.
    pub fn set_tasks(&self, uuid: &str, tasks: &[&str]) {
        self.with_machine(uuid, |machine| {
            machine.tasks = tasks.iter().map(|t| (*t).to_owned()).collect();
            machine.current_task = -1;
        });
    }

    /// What `drpcli machines workflow <uuid> <workflow>` does to a machine
    /// that was elsewhere (Sledgehammer, after discovery): its task list
    /// starts over at `tasks`, its stage becomes `stage` and its BootEnv
    /// `bootenv`, and the BootEnv change leaves it **not runnable**
    /// (`backend/machines.go`), until an agent marks it runnable. Registers
    /// the machine, as discovery would have, in BootEnv `sledgehammer`.
    pub fn set_workflow(
        &self,
        uuid: &str,
        workflow: &str,
        stage: &str,
        bootenv: &str,
        tasks: &[&str],
    ) {
        self.with_machine(uuid, |machine| {
            if machine.current_job.is_none() {
                machine.bootenv = "sledgehammer".to_owned();
            }
            machine.set_workflow(workflow, stage, bootenv, tasks);
        });
    }

    /// [`set_workflow`](Self::set_workflow) with the README's workflow,
    /// `imprint-image-deploy`: stage `imprint-deploy`, BootEnv `imprint`,
    /// one task, [`DEFAULT_TASK`]. The machine is then not runnable.
    pub fn assign_imprint_workflow(&self, uuid: &str) {
        self.set_workflow(
            uuid,
            "imprint-image-deploy",
            "imprint-deploy",
            "imprint",
            &[DEFAULT_TASK],
        );
    }

    /// Leaves the machine with a current job in `state` (`running` or
    /// `created`) for its current task, as a power loss in the middle of a
    /// deploy does: until an agent fails it (`init()` in `agent/agent.go`),
    /// every `POST /jobs` is `409`. Returns the job's id.
    pub fn add_stale_job(&self, uuid: &str, state: &str) -> String {
        self.add_machine(uuid);
        let mut guard = self.shared.lock();
        guard.next_id += 1;
        let id = job_uuid(guard.next_id);
        let Some(machine) = guard.machines.get_mut(uuid) else {
            return id;
        };
        machine.current_task = machine.current_task.max(0);
        let index = machine.current_task;
        let task = machine.tasks.first().cloned().unwrap_or_default();
        let previous = machine.current_job.replace(id.clone()).unwrap_or_default();
        let job = machine::new_job(&id, uuid, &task, &previous, index, state);
        guard.jobs.push(job);
        id
    }

    /// The machine as `GET /api/v3/machines/<uuid>` shows it (`Runnable`,
    /// `BootEnv`, `Stage`, `Workflow`, `CurrentJob`, …).
    pub fn machine(&self, uuid: &str) -> Option<Value> {
        self.shared.lock().machines.get(uuid).map(Machine::view)
    }

    /// Whether `POST /jobs` may make a job for the machine.
    pub fn machine_runnable(&self, uuid: &str) -> Option<bool> {
        self.shared.lock().machines.get(uuid).map(|m| m.runnable)
    }

    /// Marks the machine runnable or not behind the agent's back (as
    /// Sledgehammer's agent does before it reboots the machine,
    /// `markNotRunnable` in `agent/agent.go`). Registers the machine.
    pub fn set_runnable(&self, uuid: &str, runnable: bool) {
        self.with_machine(uuid, |machine| machine.runnable = runnable);
    }

    /// The machine's BootEnv: `imprint` until a `POST /jobs` finds its task
    /// list done, then `local`.
    pub fn machine_bootenv(&self, uuid: &str) -> Option<String> {
        self.shared
            .lock()
            .machines
            .get(uuid)
            .map(|m| m.bootenv.clone())
    }

    /// The machine's stage: `complete` once a `POST /jobs` found its task
    /// list done.
    pub fn machine_stage(&self, uuid: &str) -> Option<String> {
        self.shared
            .lock()
            .machines
            .get(uuid)
            .map(|m| m.stage.clone())
    }

    fn with_machine(&self, uuid: &str, change: impl FnOnce(&mut Machine)) {
        self.add_machine(uuid);
        if let Some(machine) = self.shared.lock().machines.get_mut(uuid) {
            change(machine);
        }
    }

    /// Serves `bytes` unauthenticated at `/machines/<uuid>/<name>`, as DRP
    /// serves a bootenv template rendered to `{{.Machine.Path}}/<name>`.
    /// Registers the machine.
    pub fn set_machine_file(&self, uuid: &str, name: &str, bytes: impl Into<Vec<u8>>) {
        self.add_machine(uuid);
        self.shared
            .files
            .add_file(&format!("/machines/{uuid}/{name}"), bytes.into());
    }

    /// Answers the next API requests `method path` with these statuses (and
    /// DRP's error body) instead of handling them, one per request.
    pub fn push_statuses(&self, method: &str, path: &str, statuses: impl IntoIterator<Item = u16>) {
        self.shared
            .lock()
            .scripted
            .entry((method.to_owned(), http::normalize(path)))
            .or_default()
            .extend(statuses);
    }

    /// Sets a job's `State` behind the agent's back, as an operator would.
    /// `false` when there is no such job.
    pub fn set_job_state(&self, id: &str, state: &str) -> bool {
        let mut guard = self.shared.lock();
        match guard.jobs.iter_mut().find(|job| job["Uuid"] == id) {
            Some(job) => {
                job["State"] = json!(state);
                true
            }
            None => false,
        }
    }

    /// Every request answered so far, oldest first.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.shared.lock().calls.clone()
    }

    /// [`calls`](Self::calls) once at least `count` are recorded (or after `timeout`).
    pub fn calls_at_least(&self, count: usize, timeout: Duration) -> Vec<ApiCall> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if calls.len() >= count || Instant::now() >= deadline {
                return calls;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every job, in creation order.
    pub fn jobs(&self) -> Vec<Value> {
        self.shared.lock().jobs.clone()
    }

    /// The log of job `id` (empty when nothing was appended).
    pub fn job_log(&self, id: &str) -> Vec<u8> {
        self.shared.lock().logs.get(id).cloned().unwrap_or_default()
    }

    /// What `drpcli machines set UUID param KEY to VALUE` does: `value` is
    /// checked against the param's schema when one was defined
    /// ([`define_params`](Self::define_params)), then set. The error is
    /// DRP's message. Registers the machine.
    pub fn set_machine_param(&self, uuid: &str, key: &str, value: &Value) -> Result<(), String> {
        self.add_machine(uuid);
        let mut state = self.shared.lock();
        let answer = machine_params(
            &mut state,
            "POST",
            uuid,
            Some(key),
            value.to_string().as_bytes(),
        );
        match answer.status {
            200 => Ok(()),
            _ => Err(answer
                .body
                .map(|body| body["Messages"].to_string())
                .unwrap_or_default()),
        }
    }

    /// The value of the machine's param `key`, when set.
    pub fn machine_param(&self, uuid: &str, key: &str) -> Option<Value> {
        self.shared
            .lock()
            .machines
            .get(uuid)
            .and_then(|machine| machine.params.get(key).cloned())
    }
}

/// A self-signed server certificate for `addresses` and its key, PEM, made
/// as `dr-provision` makes its own (`server/cert.go`): key encipherment and
/// digital signature, server and client auth, no CA.
fn self_signed_certificate(addresses: &[&str]) -> Result<(String, String)> {
    use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
    let names: Vec<String> = addresses.iter().map(|name| (*name).to_owned()).collect();
    let mut params = CertificateParams::new(names)
        .context("making the DRP stand-in's certificate parameters")?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Acme Co");
    params.key_usages = vec![
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().context("generating the DRP stand-in's key")?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the DRP stand-in's certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn tail(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        http::normalize(path)
    }
}

fn files_path(path: &str) -> String {
    format!("/files/{}", path.trim_start_matches('/'))
}

impl Serve for Shared {
    fn serve(&self, request: Request, response: &mut Response) -> Result<()> {
        let record = |status: u16, authorized: bool| ApiCall {
            method: request.method.clone(),
            path: request.path.clone(),
            authorized,
            content_type: request.header("content-type").map(str::to_owned),
            status,
            body: request.body.clone(),
        };
        let is_file = request.path.starts_with("/files/") || request.path.starts_with("/machines/");
        if is_file && matches!(request.method.as_str(), "GET" | "HEAD") {
            let status = self.files.serve_file(&request, response);
            let call = record(status.as_ref().map_or(0, |status| *status), true);
            self.lock().calls.push(call);
            return status.map(|_| ());
        }
        let answer = if request.path == "/api/v3" || request.path.starts_with("/api/v3/") {
            api(self, &request)
        } else {
            let message = format!("{} not found", request.path);
            let mut answer = Answer::error(404, "API_ERROR", "", "", &message);
            answer.authorized = false;
            answer
        };
        // Recorded before the answer leaves, so a client that has its answer
        // finds its call in `calls()`.
        let call = record(answer.status, answer.authorized);
        self.lock().calls.push(call);
        send_json(response, answer.status, answer.body.as_ref())
    }
}

fn send_json(response: &mut Response, status: u16, body: Option<&Value>) -> Result<()> {
    let bytes = body.map(Value::to_string).unwrap_or_default().into_bytes();
    let mut headers = vec![("Content-Length", bytes.len().to_string())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json".to_owned()));
    }
    response.head(status, &headers)?;
    response
        .stream
        .write_all(&bytes)
        .context("writing the response body")?;
    response.bytes_sent = u64::try_from(bytes.len())?;
    response.stream.flush().context("writing the response body")
}

/// DRP's error body (`models.Error`).
fn error_body(kind: &str, code: u16, model: &str, key: &str, message: &str) -> Value {
    json!({"Model": model, "Key": key, "Type": kind, "Messages": [message], "Code": code})
}

struct Answer {
    status: u16,
    body: Option<Value>,
    authorized: bool,
}

impl Answer {
    fn json(status: u16, body: Value) -> Answer {
        Answer {
            status,
            body: Some(body),
            authorized: true,
        }
    }

    fn empty(status: u16) -> Answer {
        Answer {
            status,
            body: None,
            authorized: true,
        }
    }

    fn error(status: u16, kind: &str, model: &str, key: &str, message: &str) -> Answer {
        Answer::json(status, error_body(kind, status, model, key, message))
    }
}

fn api(shared: &Shared, request: &Request) -> Answer {
    let mut state = shared.lock();
    let expected = format!("Bearer {}", state.token);
    if request.header("authorization") != Some(expected.as_str()) {
        let mut answer = Answer::error(401, "API_ERROR", "", "", "Unauthorized");
        answer.authorized = false;
        return answer;
    }
    let scripted = state
        .scripted
        .get_mut(&(request.method.clone(), request.path.clone()))
        .and_then(VecDeque::pop_front);
    if let Some(status) = scripted {
        let reason = listener::reason(status);
        return Answer::error(status, "API_ERROR", "", "", &format!("scripted {reason}"));
    }
    let rest = request.path.trim_start_matches("/api/v3");
    let parts: Vec<&str> = rest.trim_start_matches('/').splitn(3, '/').collect();
    let method = request.method.as_str();
    match (method, parts.as_slice()) {
        ("GET", ["jobs"]) => Answer::json(200, Value::Array(state.jobs.clone())),
        ("POST", ["jobs"]) => machine::create_job(&mut state, &request.body),
        ("GET", ["jobs", id]) => match find_job(&state, id) {
            Some(job) => Answer::json(200, job.clone()),
            None => job_not_found(id),
        },
        ("PATCH", ["jobs", id]) => patch_job(&mut state, id, &request.body),
        ("GET", ["jobs", id, "log"]) => match find_job(&state, id) {
            Some(_) => {
                let log = state.logs.get(*id).cloned().unwrap_or_default();
                Answer::json(
                    200,
                    Value::String(String::from_utf8_lossy(&log).into_owned()),
                )
            }
            None => job_not_found(id),
        },
        ("PUT", ["jobs", id, "log"]) => {
            if request.header("content-type") != Some("application/octet-stream") {
                return Answer::error(
                    415,
                    "API ERROR",
                    "jobs",
                    id,
                    "job log put must have content-type application/octet-stream",
                );
            }
            if find_job(&state, id).is_none() {
                return job_not_found(id);
            }
            state
                .logs
                .entry((*id).to_owned())
                .or_default()
                .extend_from_slice(&request.body);
            Answer::empty(204)
        }
        ("GET" | "PATCH", ["machines", uuid]) => {
            machine::machine(&mut state, method, uuid, &request.body)
        }
        (_, ["machines", uuid, params]) if *params == "params" || params.starts_with("params/") => {
            machine_params(
                &mut state,
                method,
                uuid,
                params.strip_prefix("params/"),
                &request.body,
            )
        }
        _ => Answer::error(
            404,
            "API_ERROR",
            "",
            "",
            &format!("{method} {}: no such route in the stand-in", request.path),
        ),
    }
}

fn find_job<'a>(state: &'a State, id: &str) -> Option<&'a Value> {
    state.jobs.iter().find(|job| job["Uuid"] == id)
}

fn job_not_found(id: &str) -> Answer {
    Answer::error(
        404,
        "ValidationError",
        "jobs",
        id,
        &format!("Job {id} does not exist"),
    )
}

/// A version-4-shaped UUID, unique per stand-in and `serial`.
fn job_uuid(serial: u64) -> String {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |age| {
            u64::from(age.subsec_nanos()) ^ age.as_secs().rotate_left(32)
        });
    let mut bits = seed ^ serial.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        bits ^= bits << 13;
        bits ^= bits >> 7;
        bits ^= bits << 17;
        bits
    };
    let (high, low) = (next(), next());
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        high >> 32,
        (high >> 16) & 0xffff,
        high & 0xfff,
        0x8000 | (low >> 48) & 0x3fff,
        low & 0xffff_ffff_ffff
    )
}

fn patch_job(state: &mut State, id: &str, body: &[u8]) -> Answer {
    let Some(index) = state.jobs.iter().position(|job| job["Uuid"] == id) else {
        return job_not_found(id);
    };
    let patch = match machine::parse_patch(body) {
        Ok(patch) => patch,
        Err(message) => return Answer::error(400, "API_ERROR", "jobs", id, &message),
    };
    match apply_patch(&state.jobs[index], &patch) {
        Ok(patched) => {
            let old = std::mem::replace(&mut state.jobs[index], patched.clone());
            machine::job_changed(state, &old, &patched);
            Answer::json(200, patched)
        }
        Err(error) => error.answer("jobs", id),
    }
}

/// Why a JSON Patch was not applied; the number is the operation's index.
#[derive(Debug, PartialEq, Eq)]
enum PatchError {
    TestFailed(usize),
    Invalid(usize, String),
}

impl PatchError {
    /// DRP's answer to a patch of `model` `key` that failed: `409` when a
    /// `test` failed (someone changed the object), `422` otherwise.
    fn answer(self, model: &str, key: &str) -> Answer {
        match self {
            PatchError::TestFailed(line) => Answer::error(
                409,
                "PATCH",
                model,
                key,
                &format!("Patch error at line {line}: Test op failed."),
            ),
            PatchError::Invalid(line, why) => Answer::error(
                422,
                "PATCH",
                model,
                key,
                &format!("Patch error at line {line}: {why}"),
            ),
        }
    }
}

/// `document` with the RFC 6902 `patch` (an array) applied, or the first
/// operation that failed; json-patch undoes the operations before it, so
/// nothing is applied then.
fn apply_patch(document: &Value, patch: &Value) -> Result<Value, PatchError> {
    let operations = patch.as_array().map(Vec::as_slice).unwrap_or_default();
    // Decoded one by one, so a malformed operation is named by its index.
    let operations = operations
        .iter()
        .enumerate()
        .map(|(line, operation)| {
            serde_json::from_value(operation.clone())
                .map_err(|error| PatchError::Invalid(line, error.to_string()))
        })
        .collect::<Result<Vec<json_patch::PatchOperation>, _>>()?;
    let mut result = document.clone();
    json_patch::patch(&mut result, &operations).map_err(|error| match error.kind {
        json_patch::PatchErrorKind::TestFailed => PatchError::TestFailed(error.operation),
        kind => PatchError::Invalid(error.operation, kind.to_string()),
    })?;
    Ok(result)
}

fn machine_params(
    state: &mut State,
    method: &str,
    uuid: &str,
    key: Option<&str>,
    body: &[u8],
) -> Answer {
    let Some(machine) = state.machines.get_mut(uuid) else {
        return Answer::error(
            404,
            "API_ERROR",
            "machines",
            uuid,
            &format!("machines GET: {uuid}: Not Found"),
        );
    };
    match (method, key) {
        ("GET", None) => Answer::json(200, Value::Object(machine.params.clone())),
        ("GET", Some(key)) => {
            Answer::json(200, machine.params.get(key).cloned().unwrap_or_default())
        }
        ("POST", Some(key)) if !key.is_empty() => match serde_json::from_slice::<Value>(body) {
            Ok(value) => {
                if let Some(schema) = state.param_schemas.get(key)
                    && let Err(why) = params::check(schema, &value)
                {
                    let (status, body) = params::refusal(method, uuid, key, &value, &why);
                    return Answer::json(status, body);
                }
                machine.params.insert(key.to_owned(), value.clone());
                Answer::json(200, value)
            }
            Err(error) => Answer::error(
                400,
                "API_ERROR",
                "machines",
                uuid,
                &format!("param {key}: the body is not JSON: {error}"),
            ),
        },
        _ => Answer::error(
            405,
            "API_ERROR",
            "machines",
            uuid,
            &format!("{method} is not allowed on machine params"),
        ),
    }
}

mod machine;
pub mod params;

#[cfg(test)]
mod tests;

//! One request at a time to DRP's agent API, and the retry policy around them.
//!
//! Every operation is a single HTTP exchange that ends in the value, or in a
//! [`DrpError`] that says whether another attempt could succeed
//! ([`DrpError::retryable`], by [`crate::http::classify`]): connection
//! errors, timeouts, 408, 429 and most 5xx could; other 4xx (a wrong token,
//! a job changed under us, a malformed request) and certificate failures
//! could not. The reporter repeats an operation through
//! [`crate::http::retry`] while that holds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use crate::http::agent::{Exchange, agent_with_tls};
use crate::http::backoff::{Backoff, RetryPolicy};
use crate::http::classify::{self, Failure};
use crate::http::retry::{Retryable, retry_after_of};
use crate::http::{redact_url, tls};
use crate::inject::Secret;
use crate::source::SourceOptions;

/// How hard the DRP client tries, per operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrpOptions {
    /// Attempts of one operation before it is given up.
    pub attempts: u32,
    /// The wait after the first failure; doubled after each further one
    /// (with jitter, [`crate::http::backoff`]).
    pub first_backoff: Duration,
    /// The longest wait between two attempts (a `Retry-After` may ask for
    /// longer).
    pub max_backoff: Duration,
    /// The time one request may take, connecting included.
    pub timeout: Duration,
    /// Log lines waiting to be sent before the oldest are dropped.
    pub queue_lines: usize,
    /// The most log bytes appended in one request.
    pub batch_bytes: usize,
}

impl Default for DrpOptions {
    fn default() -> Self {
        DrpOptions {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
            timeout: Duration::from_secs(10),
            queue_lines: 1024,
            batch_bytes: 64 << 10,
        }
    }
}

impl DrpOptions {
    /// The retries of one operation.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy::attempts(
            self.attempts,
            Backoff {
                first: self.first_backoff,
                cap: self.max_backoff,
            },
        )
    }
}

/// A DRP job, as far as an agent needs it (DRP sends more fields).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Job {
    #[serde(deserialize_with = "null_as_empty")]
    pub uuid: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub machine: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub task: String,
    /// `created`, `running`, `incomplete`, `finished` or `failed`.
    #[serde(deserialize_with = "null_as_empty")]
    pub state: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub stage: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub workflow: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub exit_state: String,
    /// The agent context that created the job; `""` for a machine agent
    /// (drpcli agent, imprint), a name for context runners.
    #[serde(deserialize_with = "null_as_empty")]
    pub context: String,
}

/// A DRP machine, as far as an agent needs it (`models/machine.go` has more).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Machine {
    #[serde(deserialize_with = "null_as_empty")]
    pub uuid: String,
    /// Whether DRP will make a job for it (`POST /jobs` answers 409 "is not
    /// runnable" otherwise).
    pub runnable: bool,
    /// The job it ran last or runs now; `""` when none.
    #[serde(deserialize_with = "null_as_empty")]
    pub current_job: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub context: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub boot_env: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub stage: String,
    #[serde(deserialize_with = "null_as_empty")]
    pub workflow: String,
}

fn null_as_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    Ok(Option::<String>::deserialize(deserializer)?.unwrap_or_default())
}

/// DRP's error body (`models.Error`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ErrorBody {
    messages: Vec<String>,
}

/// A failed API request: which one, how, and whether to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrpError {
    /// `PATCH https://drp:8092/api/v3/jobs/<id>`, without user info or query.
    pub request: String,
    /// The HTTP status, when there was an answer.
    pub status: Option<u16>,
    /// What went wrong: `HTTP 401 Unauthorized: <DRP's Messages>`, or the
    /// connection error.
    pub message: String,
    failure: Failure,
    retry_after: Option<String>,
}

impl DrpError {
    /// Whether another attempt could succeed.
    pub fn retryable(&self) -> bool {
        classify::is_retryable(self.failure)
    }
}

impl Retryable for DrpError {
    fn failure(&self) -> Failure {
        self.failure
    }
    fn retry_after(&self) -> Option<&str> {
        self.retry_after.as_deref()
    }
}

impl std::fmt::Display for DrpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.request, self.message)
    }
}

impl std::error::Error for DrpError {}

/// A client of DRP's agent API for one machine, authenticated by a bearer
/// token. HTTPS is trusted as [`crate::http::tls::drp_api_trust`] says: like
/// drpcli (DRP's certificate is self-signed) unless `imprint.ca=` is given. The
/// HTTP agent is built on first use, so [`new`](Self::new) never touches the
/// network (an `imprint.ca=` bundle may have to be fetched).
pub struct DrpClient {
    /// `https://drp:8092`, no trailing `/`, no `/api/v3`.
    endpoint: String,
    token: Secret,
    machine: String,
    source: SourceOptions,
    timeout: Duration,
    agent: Option<ureq::Agent>,
}

impl std::fmt::Debug for DrpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrpClient")
            .field("endpoint", &redact_url(&self.endpoint))
            .field("token", &self.token)
            .field("machine", &self.machine)
            .finish()
    }
}

impl DrpClient {
    /// A client of the API at `endpoint` (`https://drp:8092`; a trailing
    /// `/api/v3` is accepted) acting for machine `machine_uuid`.
    pub fn new(
        endpoint: &str,
        token: &Secret,
        machine_uuid: &str,
        source: &SourceOptions,
    ) -> anyhow::Result<DrpClient> {
        let scheme = endpoint
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("http" | "https")) {
            anyhow::bail!(
                "DRP endpoint {} is not http:// or https://",
                redact_url(endpoint)
            );
        }
        if machine_uuid.is_empty() || machine_uuid.contains(['/', '?', '#', ' ']) {
            anyhow::bail!("DRP machine id {machine_uuid:?} is not a machine UUID");
        }
        let trimmed = endpoint.trim_end_matches('/');
        let endpoint = trimmed.strip_suffix("/api/v3").unwrap_or(trimmed);
        Ok(DrpClient {
            endpoint: endpoint.to_owned(),
            token: token.clone(),
            machine: machine_uuid.to_owned(),
            source: source.clone(),
            timeout: DrpOptions::default().timeout,
            agent: None,
        })
    }

    /// Gives each request at most `timeout`, connecting included.
    pub fn with_timeout(mut self, timeout: Duration) -> DrpClient {
        self.timeout = timeout;
        self.agent = None;
        self
    }

    /// The machine this client acts for.
    pub fn machine(&self) -> &str {
        &self.machine
    }

    /// The endpoint, for messages (no user info, no query).
    pub fn endpoint(&self) -> String {
        redact_url(&self.endpoint)
    }

    /// `POST /jobs {"Machine": uuid}`: the job DRP made for the machine's
    /// current task (`created`), or the `incomplete` one to run again; `None`
    /// when DRP has nothing for it to run (`204 No Content`, like `drpcli
    /// agent`, which then has no job to report to).
    pub fn create_job(&mut self) -> Result<Option<Job>, DrpError> {
        let body = json!({ "Machine": self.machine }).to_string();
        let (status, answer) = self.send("POST", "/jobs", "application/json", body.as_bytes())?;
        if status == 204 || answer.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        let job: Job = self.parse("POST", "/jobs", &answer)?;
        if job.uuid.is_empty() || !matches!(job.state.as_str(), "created" | "incomplete") {
            return Err(DrpError {
                request: self.request_name("POST", "/jobs"),
                status: Some(status),
                message: format!(
                    "DRP answered a job {:?} in state {:?}; expected created or incomplete",
                    job.uuid, job.state
                ),
                failure: Failure::Fatal,
                retry_after: None,
            });
        }
        Ok(Some(job))
    }

    /// Moves job `id` from state `from` to `to` with a JSON Patch that tests
    /// `/State` first, so a job someone else changed meanwhile is left alone
    /// (DRP answers 409). `exit_state` (`complete`, `failed`) is replaced too
    /// when given, as `drpcli agent` does at the end of a task.
    pub fn set_job_state(
        &mut self,
        id: &str,
        from: &str,
        to: &str,
        exit_state: Option<&str>,
    ) -> Result<Job, DrpError> {
        let patch = state_patch(from, to, exit_state).to_string();
        let path = format!("/jobs/{id}");
        let (_, answer) = self.send("PATCH", &path, "application/json", patch.as_bytes())?;
        self.parse("PATCH", &path, &answer)
    }

    /// `GET /machines/{uuid}`: the machine this client acts for.
    pub fn machine_state(&mut self) -> Result<Machine, DrpError> {
        let path = format!("/machines/{}", self.machine);
        let (_, answer) = self.send("GET", &path, "", b"")?;
        self.parse("GET", &path, &answer)
    }

    /// `GET /jobs/{id}`.
    pub fn job(&mut self, id: &str) -> Result<Job, DrpError> {
        let path = format!("/jobs/{id}");
        let (_, answer) = self.send("GET", &path, "", b"")?;
        self.parse("GET", &path, &answer)
    }

    /// Marks the machine runnable, with the patch `drpcli agent`'s `Run()`
    /// sends (agent/agent.go: `PatchTo` a clone with `Runnable = true`,
    /// which tests the old value first, api/client.go `GenPatch`).
    pub fn mark_runnable(&mut self) -> Result<Machine, DrpError> {
        let path = format!("/machines/{}", self.machine);
        let patch = json!([
            {"op": "test", "path": "/Runnable", "value": false},
            {"op": "replace", "path": "/Runnable", "value": true},
        ])
        .to_string();
        let (_, answer) = self.send("PATCH", &path, "application/json", patch.as_bytes())?;
        self.parse("PATCH", &path, &answer)
    }

    /// `PUT /jobs/{id}/log`: appends `bytes` to the job's log.
    pub fn append_log(&mut self, id: &str, bytes: &[u8]) -> Result<(), DrpError> {
        let path = format!("/jobs/{id}/log");
        self.send("PUT", &path, "application/octet-stream", bytes)
            .map(|_| ())
    }

    /// `POST /machines/{uuid}/params/{key}` with `value` as the JSON body.
    pub fn set_param(&mut self, key: &str, value: &Value) -> Result<(), DrpError> {
        let path = format!("/machines/{}/params/{key}", self.machine);
        let body = value.to_string();
        self.send("POST", &path, "application/json", body.as_bytes())
            .map(|_| ())
    }

    fn request_name(&self, method: &str, path: &str) -> String {
        format!("{method} {}/api/v3{path}", redact_url(&self.endpoint))
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        answer: &[u8],
    ) -> Result<T, DrpError> {
        serde_json::from_slice(answer).map_err(|error| DrpError {
            request: self.request_name(method, path),
            status: None,
            message: format!("the answer is not the JSON expected: {error}"),
            failure: Failure::Fatal,
            retry_after: None,
        })
    }

    /// One request; a 2xx gives its status and body, anything else a [`DrpError`].
    fn send(
        &mut self,
        method: &str,
        path: &str,
        content_type: &str,
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), DrpError> {
        let request = self.request_name(method, path);
        let fail = |failure, message: String| DrpError {
            request: request.clone(),
            status: match failure {
                Failure::Status(code) => Some(code),
                _ => None,
            },
            message,
            failure,
            retry_after: None,
        };
        if self.agent.is_none() {
            let tls = tls::drp_api_tls_config(&self.source, &redact_url(&self.endpoint))
                // A CA bundle that cannot be read or fetched now may be
                // later: counted as a connection failure, which is retried.
                .map_err(|error| fail(Failure::Connection, format!("{error:#}")))?;
            let exchange = Exchange::Api {
                timeout: self.timeout,
            };
            self.agent = Some(agent_with_tls(&self.source, exchange, tls));
        }
        let Some(agent) = &self.agent else {
            return Err(fail(Failure::Fatal, "no HTTP agent".into()));
        };
        let url = format!("{}/api/v3{path}", self.endpoint);
        let authorization = format!("Bearer {}", self.token.expose());
        let result = match method {
            "GET" => agent
                .get(&url)
                .header("Authorization", &authorization)
                .header("Accept", "application/json")
                .call(),
            "POST" | "PUT" | "PATCH" => {
                let builder = match method {
                    "POST" => agent.post(&url),
                    "PUT" => agent.put(&url),
                    _ => agent.patch(&url),
                };
                builder
                    .header("Authorization", &authorization)
                    .header("Content-Type", content_type)
                    .header("Accept", "application/json")
                    .send(body)
            }
            other => return Err(fail(Failure::Fatal, format!("unsupported method {other}"))),
        };
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                let message = tls::certificate_failure(&error, &self.source)
                    .unwrap_or_else(|| error.to_string());
                return Err(fail(classify::classify(&error), message));
            }
        };
        let status = response.status();
        let code = status.as_u16();
        let retry_after = retry_after_of(&response);
        // Answers are small JSON documents; the cap guards against a wrong URL
        // that serves something large.
        let answer = response
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec();
        if (200..300).contains(&code) {
            return answer
                .map(|answer| (code, answer))
                .map_err(|error| DrpError {
                    status: Some(code),
                    ..fail(Failure::BrokenBody, format!("reading the answer: {error}"))
                });
        }
        let reason = status.canonical_reason().unwrap_or_default();
        let detail = answer
            .ok()
            .and_then(|bytes| serde_json::from_slice::<ErrorBody>(&bytes).ok())
            .map(|body| body.messages.join("; "))
            .filter(|messages| !messages.is_empty())
            .map_or_else(String::new, |messages| format!(": {messages}"));
        Err(DrpError {
            retry_after,
            ..fail(
                Failure::Status(code),
                format!("HTTP {code} {reason}{detail}"),
            )
        })
    }
}

/// The JSON Patch that moves a job from `from` to `to` (see
/// [`DrpClient::set_job_state`]).
pub fn state_patch(from: &str, to: &str, exit_state: Option<&str>) -> Value {
    let mut operations = vec![
        json!({"op": "test", "path": "/State", "value": from}),
        json!({"op": "replace", "path": "/State", "value": to}),
    ];
    if let Some(exit_state) = exit_state {
        operations.push(json!({"op": "replace", "path": "/ExitState", "value": exit_state}));
    }
    Value::Array(operations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_retried_by_the_shared_table() {
        let error = |failure| DrpError {
            request: "POST x".into(),
            status: None,
            message: "m".into(),
            failure,
            retry_after: None,
        };
        assert!(error(Failure::Status(503)).retryable());
        assert!(error(Failure::Connection).retryable());
        assert!(!error(Failure::Status(401)).retryable());
        assert!(!error(Failure::Status(409)).retryable());
        assert!(!error(Failure::Fatal).retryable());
        let policy = DrpOptions::default().retry_policy();
        assert_eq!(policy.retries, 4, "5 attempts");
        assert_eq!(policy.retry_timeout, Duration::MAX);
    }

    #[test]
    fn state_patch_tests_before_it_replaces() {
        assert_eq!(
            state_patch("created", "running", None),
            json!([
                {"op": "test", "path": "/State", "value": "created"},
                {"op": "replace", "path": "/State", "value": "running"},
            ])
        );
        assert_eq!(
            state_patch("running", "failed", Some("failed"))[2],
            json!({"op": "replace", "path": "/ExitState", "value": "failed"})
        );
    }

    #[test]
    fn endpoint_and_machine_are_checked_and_the_token_never_shows() {
        let token = Secret::new("tok-SECRET");
        let source = SourceOptions::default();
        let client =
            DrpClient::new("https://u:pw@drp:8092/api/v3/", &token, "m-1", &source).unwrap();
        assert_eq!(client.endpoint(), "https://drp:8092");
        assert_eq!(
            client.request_name("PUT", "/jobs/j/log"),
            "PUT https://drp:8092/api/v3/jobs/j/log"
        );
        let debug = format!("{client:?}");
        assert!(
            !debug.contains("tok-SECRET") && !debug.contains("pw"),
            "{debug}"
        );
        let bad = DrpClient::new("drp:8092", &token, "m-1", &source).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "DRP endpoint drp:8092 is not http:// or https://"
        );
        let bad = DrpClient::new("https://drp", &token, "a/b", &source).unwrap_err();
        assert_eq!(
            bad.to_string(),
            "DRP machine id \"a/b\" is not a machine UUID"
        );
    }

    #[test]
    fn jobs_tolerate_nulls_and_extra_fields() {
        let job: Job = serde_json::from_value(json!({
            "Uuid": "j", "State": "created", "Workflow": null, "Task": "t", "Meta": {}
        }))
        .unwrap();
        assert_eq!(
            (
                job.uuid.as_str(),
                job.state.as_str(),
                job.workflow.as_str(),
                job.task.as_str()
            ),
            ("j", "created", "", "t")
        );
    }
}

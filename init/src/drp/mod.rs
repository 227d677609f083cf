//! imprint as a Digital Rebar Provision (DRP) machine agent: with the API
//! URL and token from the spec, the deploy is reported the way `drpcli agent`
//! reports a task.
//!
//! 1. `POST /api/v3/jobs {"Machine": uuid}` creates the job for the machine's
//!    current task (`201`, `State: "created"`), or hands back an `incomplete`
//!    one to run again (`202`). `204 No Content` means DRP has nothing for the
//!    machine to run: like `drpcli agent`, imprint then has no job, drops its
//!    log lines, and still records the result param.
//! 2. `PATCH /api/v3/jobs/{id}` moves the job `created` → `running`, later
//!    `running` → `finished` or `failed` (with `ExitState`), each with a JSON
//!    Patch that `test`s `/State` first: a job someone changed meanwhile
//!    (DRP answers `409`) is left alone.
//! 3. `PUT /api/v3/jobs/{id}/log` (`application/octet-stream`) appends the
//!    deploy's progress and result lines, batched.
//! 4. `POST /api/v3/machines/{uuid}/params/imprint/last-deploy` records
//!    [`LastDeploy`] as JSON.
//!
//! [`DrpClient`] does one request at a time; [`DrpReporter`] runs them on its
//! own thread behind a bounded queue, so an unreachable or erroring DRP never
//! blocks or fails the deploy: failures are retried with backoff (connection
//! errors, 408, 429, 5xx), other answers are final and logged with DRP's
//! `Messages`. The token only ever goes into the `Authorization` header;
//! messages name the endpoint without user info or query.
//!
//! The worker thread logs through `log` (target `imprint::drp`); a logger
//! that forwards lines to [`DrpReporter::log_line`] should leave that target
//! out, or DRP's failures would be queued for DRP.

use serde_json::{Value, json};

use crate::status::webhook::redact_url;

mod client;
mod reporter;

pub use client::{DrpClient, DrpError, DrpOptions, Job, state_patch, with_retries};
pub use reporter::{DrpReporter, DrpStats};

/// The machine param that holds the last deploy's result.
pub const LAST_DEPLOY_PARAM: &str = "imprint/last-deploy";

/// What the last deploy did, for the `imprint/last-deploy` machine param.
#[derive(Debug, Clone, PartialEq)]
pub struct LastDeploy {
    /// The image URL (recorded without user info and query, where tokens hide).
    pub image: String,
    /// SHA-256 of what was written, when the deploy got that far.
    pub sha256: Option<String>,
    /// How long the deploy took.
    pub seconds: f64,
    /// Why it failed; `None` when it succeeded.
    pub error: Option<String>,
}

impl LastDeploy {
    /// Whether the deploy succeeded.
    pub fn succeeded(&self) -> bool {
        self.error.is_none()
    }

    /// The param's value: `{"image","sha256","seconds","result"}`, `result`
    /// being `ok` or `failed`, plus `error` when it failed.
    pub fn to_json(&self) -> Value {
        let mut value = json!({
            "image": redact_url(&self.image),
            "sha256": self.sha256,
            "seconds": (self.seconds * 10.0).round() / 10.0,
            "result": if self.succeeded() { "ok" } else { "failed" },
        });
        if let (Some(error), Some(map)) = (&self.error, value.as_object_mut()) {
            map.insert("error".into(), json!(error));
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_deploy_json() {
        let ok = LastDeploy {
            image: "https://user:pw@files/golden.raw.zst?sig=abc".into(),
            sha256: Some("ab".repeat(32)),
            seconds: 12.345,
            error: None,
        };
        assert_eq!(
            ok.to_json(),
            json!({
                "image": "https://files/golden.raw.zst",
                "sha256": "ab".repeat(32),
                "seconds": 12.3,
                "result": "ok",
            })
        );
        let failed = LastDeploy {
            sha256: None,
            error: Some("wrong sha256".into()),
            ..ok
        };
        assert!(!failed.succeeded());
        let value = failed.to_json();
        assert_eq!(
            (&value["result"], &value["error"], &value["sha256"]),
            (&json!("failed"), &json!("wrong sha256"), &Value::Null)
        );
    }
}

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
//! [`DrpClient`] does one request at a time; [`DrpReporter`] runs them on the
//! shared background worker ([`crate::status::worker`]) behind a bounded
//! queue, so an unreachable or erroring DRP never blocks or fails the
//! deploy: failures that [`crate::http::classify`] calls retryable
//! (connection errors, 408, 429, most 5xx) are retried with its backoff,
//! other answers are final and logged with DRP's `Messages`. The reporter is
//! a [status sink](crate::status::Sink): PID 1 attaches it with
//! [`report_to`], and it ends its job when told the run's result. The token only ever goes into the `Authorization` header;
//! messages name the endpoint without user info or query.
//!
//! The worker thread logs through `log` (target `imprint::drp`); a logger
//! that forwards lines to [`DrpReporter::log_line`] should leave that target
//! out, or DRP's failures would be queued for DRP.

mod client;
mod reporter;

pub use crate::status::LastDeploy;
pub use client::{DrpClient, DrpError, DrpOptions, Job, Machine, state_patch};
pub use reporter::{DrpReporter, DrpStats, UNREPORTED_FAILURE, is_reporting, report_to};

/// The machine param that holds the last deploy's result.
pub const LAST_DEPLOY_PARAM: &str = "imprint/last-deploy";

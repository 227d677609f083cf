//! The stand-in's machines and how DRP decides which job a machine gets:
//! `Runnable`, the task list and its index, the current job, and the
//! transitions between them. Each behaviour names the DRP source it models
//! (STYLE habit 14): `digitalrebar/provision` v4.8.0 for the agent side
//! (`agent/agent.go`, `agent/taskRunner.go`) and the last open server code,
//! the July 2019 fork `hartsock/provision`, for the server side
//! (`frontend/job_create.go`, `backend/machines.go`, `backend/jobs.go`).
//!
//! Simplified on purpose: a workflow's task list holds only the tasks an
//! agent runs; the `stage:`/`bootenv:` entries DRP adds (each a server-side
//! job that is created `finished`) are not modelled, except the last one: a
//! machine whose list is done has reached the `complete` stage, BootEnv
//! `local`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::{Answer, State, apply_patch, find_job};

/// One machine as the stand-in keeps it.
#[derive(Debug, Clone)]
pub(super) struct Machine {
    pub(super) uuid: String,
    /// The workflow's tasks, in order.
    pub(super) tasks: Vec<String>,
    /// The index of the task the current job runs; `-1` after the list
    /// was (re)set, as `backend/machines.go` does on create and on a new
    /// task list.
    pub(super) current_task: i64,
    pub(super) bootenv: String,
    pub(super) stage: String,
    pub(super) workflow: String,
    /// Whether `POST /jobs` may make a job for it.
    pub(super) runnable: bool,
    pub(super) current_job: Option<String>,
    pub(super) params: Map<String, Value>,
}

impl Machine {
    /// A machine as `POST /machines` makes it: `Runnable` (`OnCreate` in
    /// `backend/machines.go`), at the start of its task list.
    pub(super) fn new(uuid: &str, task: &str) -> Machine {
        Machine {
            uuid: uuid.to_owned(),
            tasks: vec![task.to_owned()],
            current_task: -1,
            bootenv: "imprint".to_owned(),
            stage: "imprint".to_owned(),
            workflow: String::new(),
            runnable: true,
            current_job: None,
            params: Map::new(),
        }
    }

    /// The machine as `GET /machines/{uuid}` shows it (the fields an agent
    /// reads; `models/machine.go` has more).
    pub(super) fn view(&self) -> Value {
        json!({
            "Uuid": self.uuid,
            "Name": self.uuid,
            "Runnable": self.runnable,
            "Available": true,
            "Context": "",
            "BootEnv": self.bootenv,
            "Stage": self.stage,
            "Workflow": self.workflow,
            "Tasks": self.tasks,
            "CurrentTask": self.current_task,
            "CurrentJob": self.current_job.clone().unwrap_or_default(),
        })
    }

    /// Moves to `bootenv`: a change makes the machine not runnable
    /// (`Validate` in `backend/machines.go`: `n.oldBootEnv != n.BootEnv`
    /// sets `n.Runnable = false`), until its agent marks it runnable again.
    pub(super) fn set_bootenv(&mut self, bootenv: &str) {
        if self.bootenv != bootenv {
            self.bootenv = bootenv.to_owned();
            self.runnable = false;
        }
    }

    /// Sets a workflow, as `drpcli machines workflow <uuid> <name>` does:
    /// the task list starts over (`CurrentTask = -1`), the first stage's
    /// BootEnv is set, and through [`set_bootenv`](Self::set_bootenv) the
    /// machine is no longer runnable.
    pub(super) fn set_workflow(
        &mut self,
        workflow: &str,
        stage: &str,
        bootenv: &str,
        tasks: &[&str],
    ) {
        self.workflow = workflow.to_owned();
        self.stage = stage.to_owned();
        self.tasks = tasks.iter().map(|task| (*task).to_owned()).collect();
        self.current_task = -1;
        self.set_bootenv(bootenv);
    }
}

/// `GET`/`PATCH /machines/{uuid}`. A PATCH is an RFC 6902 patch of the
/// machine's view, all or nothing, like a job's; `Runnable`, `BootEnv`,
/// `Stage` and `Workflow` are taken from the result, the rest is read-only
/// here.
pub(super) fn machine(state: &mut State, method: &str, uuid: &str, body: &[u8]) -> Answer {
    let Some(machine) = state.machines.get_mut(uuid) else {
        return Answer::error(
            404,
            "ValidationError",
            "machines",
            uuid,
            &format!("Machine {uuid} does not exist"),
        );
    };
    if method == "GET" {
        return Answer::json(200, machine.view());
    }
    if method != "PATCH" {
        return Answer::error(
            405,
            "API_ERROR",
            "machines",
            uuid,
            &format!("{method} is not allowed on a machine in the stand-in"),
        );
    }
    let patched = match parse_patch(body) {
        Ok(patch) => apply_patch(&machine.view(), &patch),
        Err(message) => return Answer::error(400, "API_ERROR", "machines", uuid, &message),
    };
    match patched {
        Ok(new) => {
            let text = |key: &str| new[key].as_str().unwrap_or_default().to_owned();
            machine.runnable = new["Runnable"].as_bool().unwrap_or(machine.runnable);
            machine.workflow = text("Workflow");
            machine.stage = text("Stage");
            machine.set_bootenv(&text("BootEnv"));
            Answer::json(200, machine.view())
        }
        Err(error) => error.answer("machines", uuid),
    }
}

/// A JSON Patch body, or why it is not one.
pub(super) fn parse_patch(body: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice(body) {
        Ok(value @ Value::Array(_)) => Ok(value),
        Ok(_) => Err("a JSON Patch is an array".to_owned()),
        Err(error) => Err(format!("decoding the patch: {error}")),
    }
}

/// What a job's change does to its machine: a job that turns `failed`
/// leaves the machine not runnable. drpcli's runner does this itself
/// (`agent/taskRunner.go`: on a failed, reboot, stop, poweroff or incomplete
/// task it PATCHes `Runnable` to false); the stand-in does it whoever fails
/// the job, so a retry that does not mark the machine runnable again gets
/// the 409 it would get behind a real agent.
pub(super) fn job_changed(state: &mut State, old: &Value, new: &Value) {
    if old["State"] != "failed" && new["State"] == "failed" {
        let uuid = new["Machine"].as_str().unwrap_or_default();
        if let Some(machine) = state.machines.get_mut(uuid) {
            machine.runnable = false;
        }
    }
}

/// What DRP's `POST /jobs` does (`realCreateJob` in
/// `frontend/job_create.go`; the states in `backend/jobs.go`'s comment).
pub(super) fn create_job(state: &mut State, body: &[u8]) -> Answer {
    let request: Value = match serde_json::from_slice(body) {
        Ok(value) => value,
        Err(error) => {
            return Answer::error(
                400,
                "API_ERROR",
                "jobs",
                "",
                &format!("decoding the job: {error}"),
            );
        }
    };
    let Some(uuid) = request["Machine"].as_str().map(str::to_owned) else {
        return Answer::error(
            400,
            "API_ERROR",
            "jobs",
            "",
            "Create request must have Machine field",
        );
    };
    let Some(machine) = state.machines.get(&uuid) else {
        return Answer::error(
            422,
            "ValidationError",
            "jobs",
            "",
            &format!("Machine {uuid} does not exist"),
        );
    };
    if !machine.runnable {
        return Answer::error(
            409,
            "Conflict",
            "jobs",
            "",
            &format!("Machine {uuid} is not runnable"),
        );
    }
    // A current job that no longer exists counts as failed.
    let current = machine
        .current_job
        .as_deref()
        .and_then(|id| find_job(state, id));
    let current_state = current
        .and_then(|job| job["State"].as_str())
        .unwrap_or("failed");
    let current_index = current.and_then(|job| job["CurrentIndex"].as_i64());
    let mut task_to_run = machine.current_task;
    if current_index == Some(machine.current_task) {
        match current_state {
            // Run again, as it is.
            "incomplete" => {
                if let Some(job) = current {
                    return Answer::json(202, job.clone());
                }
            }
            "finished" => task_to_run += 1,
            // Retried: a new job for the same task.
            "failed" => {}
            _ => {
                return Answer::error(
                    409,
                    "Conflict",
                    "jobs",
                    "",
                    &format!("Machine {uuid} already has running or created job"),
                );
            }
        }
    }
    // The task list was reset; the job that was running is failed (not
    // modelled: the stand-in's lists are reset only between jobs).
    let task_to_run = task_to_run.max(0);
    let index = usize::try_from(task_to_run).unwrap_or(usize::MAX);
    let Some(task) = machine.tasks.get(index).cloned() else {
        // Past the end: the workflow is done. Its last stage, `complete`,
        // boots the machine from its disk.
        if let Some(machine) = state.machines.get_mut(&uuid) {
            machine.current_task = i64::try_from(machine.tasks.len()).unwrap_or(i64::MAX);
            machine.stage = "complete".to_owned();
            machine.set_bootenv("local");
        }
        return Answer::empty(204);
    };
    let previous = machine.current_job.clone().unwrap_or_default();
    let (stage, bootenv, workflow) = (
        machine.stage.clone(),
        machine.bootenv.clone(),
        machine.workflow.clone(),
    );
    state.next_id += 1;
    let id = super::job_uuid(state.next_id);
    let job = new_job(&id, &uuid, &task, &previous, task_to_run, "created");
    let job = with(
        job,
        &[
            ("Stage", &stage),
            ("BootEnv", &bootenv),
            ("Workflow", &workflow),
        ],
    );
    state.jobs.push(job.clone());
    if let Some(machine) = state.machines.get_mut(&uuid) {
        machine.current_task = task_to_run;
        machine.current_job = Some(id);
    }
    Answer::json(201, job)
}

/// A job as DRP stores it (`models/job.go`).
pub(super) fn new_job(
    id: &str,
    machine: &str,
    task: &str,
    previous: &str,
    index: i64,
    state: &str,
) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |age| age.as_secs());
    json!({
        "Uuid": id,
        "Machine": machine,
        "Task": task,
        "State": state,
        "ExitState": "",
        "Context": "",
        "Stage": "imprint",
        "BootEnv": "imprint",
        "Workflow": "",
        "Previous": previous,
        "CurrentIndex": index,
        "NextIndex": index + 1,
        "Current": true,
        "Archived": false,
        "Available": true,
        "Validated": true,
        "ReadOnly": false,
        "Errors": [],
        "Meta": {},
        "StartTime": now,
    })
}

fn with(mut job: Value, fields: &[(&str, &str)]) -> Value {
    for (key, value) in fields {
        job[*key] = json!(value);
    }
    job
}

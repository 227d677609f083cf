//! The status events: what happened, as the JSON objects the report webhook
//! receives and `/status` lists.
//!
//! Every event is one flat JSON object: the envelope
//! `{"event":"<kind>","seq":N,"time":<unix seconds>,"uptime":<seconds since boot>,"imprint":"<version>"}`
//! plus the fields of its kind ([`EventKind`]). `seq` counts from 1 in the
//! order the events happened, so a receiver can sort and spot gaps (a dropped
//! `progress` event leaves one).
//!
//! Events carry only the fields their caller passes. Callers must never pass
//! a secret (a token, a password, a URL with credentials): events leave the
//! machine and are served to anyone who can reach `/status`.

use serde::Serialize;
use serde_json::Value;

use super::machine::MachineInfo;

/// The version every event carries.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The phases of a deploy, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Loading kernel modules for the hardware.
    Drivers,
    /// Bringing up the network (DHCP or static).
    Network,
    /// Learning what to deploy (command line, `imprint.config=`, DRP).
    Spec,
    /// Choosing and opening the target disk.
    Disk,
    /// Erasing disks (`imprint.erase=`).
    Erase,
    /// Streaming the image onto the disk.
    Write,
    /// Checking the image's checksum and writing the first MiB.
    Verify,
    /// Injecting the machine's identity into the written root filesystem.
    Inject,
    /// kexec, reboot or power off.
    Handoff,
}

/// How the machine is handed over after the deploy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HandoffHow {
    Kexec,
    Reboot,
    Poweroff,
    /// Nothing: the CLI exits, or PID 1 halts and keeps answering `/status`.
    None,
}

/// What happened; serialized flat, tagged by `event` (`"started"`, `"progress"`, …).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum EventKind {
    /// PID 1 (or the CLI) is up: which machine this is.
    Started { machine: MachineInfo },
    /// Bytes of `stage` done so far, of `total` when known; `rate` is bytes
    /// per second over the time since the previous progress event.
    Progress {
        stage: Stage,
        bytes: u64,
        total: Option<u64>,
        rate: u64,
    },
    /// The image is on the disk and matched its checksum: `sha256` (hex) of
    /// the bytes written, `algorithm` of the checksum the served bytes
    /// matched (`sha256`, `sha512`; null when none was given);
    /// `image_digest`, for an image from an OCI registry, the image pinned
    /// by its manifest digest (left out otherwise).
    Verified {
        sha256: String,
        algorithm: Option<String>,
        bytes: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        image_digest: Option<String>,
    },
    /// A signature verified, before the first MiB was written: `format`
    /// (`minisign`, `openpgp`, `cosign`), `key` (the result line's
    /// fingerprint; an OpenPGP signing subkey's when `subkey`), and what it
    /// `covered` (`image` or `checksum-list`).
    Signed {
        format: String,
        key: String,
        subkey: bool,
        covered: String,
    },
    /// Identity injected into the root partition `root` (a device, e.g.
    /// `/dev/vda2`): `changes` file operations; `skipped` says why nothing
    /// was injected when that was the case.
    Injected {
        root: Option<String>,
        changes: usize,
        skipped: Option<String>,
    },
    /// The machine is being handed over: `how`, into which `kernel` with
    /// which `cmdline` (kexec), and a free-text `detail`.
    Handoff {
        how: HandoffHow,
        kernel: Option<String>,
        cmdline: Option<String>,
        detail: Option<String>,
    },
    /// The deploy failed in `stage` with `error` (one line); `offset` is the
    /// image byte it failed at, when it failed while streaming; `attempt`
    /// counts from 1 when `on-failure` retries.
    Failed {
        stage: Stage,
        error: String,
        offset: Option<u64>,
        attempt: Option<u32>,
    },
    /// The deploy starts again: attempt `attempt` of `of`, after
    /// `delay_seconds`.
    Retrying {
        attempt: u32,
        of: u32,
        delay_seconds: f64,
    },
    /// A program a root-filesystem deploy ran (mkfs, and in the new root
    /// `update-initramfs`, `grub-install`, …) ended: `command` as run,
    /// `ok`, `seconds`, and its `output`'s last lines (on failure, the
    /// error, which names the command and quotes them).
    Command {
        command: String,
        ok: bool,
        seconds: f64,
        output: Vec<String>,
    },
    /// The UEFI boot entry for the installed OS was written: `entry` as
    /// `Boot0003 "Debian GNU/Linux 12" HD(…)/File(…); BootOrder …`.
    BootEntry { entry: String },
    /// What an erase is about to do, before it starts: each `disks` entry
    /// is one disk with its mode.
    ErasePlan { disks: Vec<String> },
    /// One disk erased: the `method` used, `seconds` taken, whether the
    /// read-back `verified` all it could, and what it checked (`detail`).
    Erased {
        disk: String,
        method: String,
        seconds: f64,
        verified: bool,
        detail: String,
    },
    /// The image's ranges come from several mirrors (`imprint.url=A|B`):
    /// `to` (`host[:port]`) took over from `from`, or, with both null, the
    /// transfer ended; `served` is each mirror's bytes so far, in order.
    Mirrors {
        from: Option<String>,
        to: Option<String>,
        served: Vec<MirrorServed>,
    },
}

/// One mirror's bytes, for the `mirrors` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorServed {
    pub host: String,
    pub bytes: u64,
}

impl MirrorServed {
    /// From `SourceStats`' `(host, bytes)` pairs.
    pub fn list(served: &[(String, u64)]) -> Vec<MirrorServed> {
        served
            .iter()
            .map(|(host, bytes)| MirrorServed {
                host: host.clone(),
                bytes: *bytes,
            })
            .collect()
    }
}

impl EventKind {
    /// The `event` tag: `started`, `progress`, ….
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started { .. } => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Verified { .. } => "verified",
            EventKind::Signed { .. } => "signed",
            EventKind::Injected { .. } => "injected",
            EventKind::Handoff { .. } => "handoff",
            EventKind::Failed { .. } => "failed",
            EventKind::Retrying { .. } => "retrying",
            EventKind::Command { .. } => "command",
            EventKind::ErasePlan { .. } => "erase-plan",
            EventKind::BootEntry { .. } => "boot-entry",
            EventKind::Erased { .. } => "erased",
            EventKind::Mirrors { .. } => "mirrors",
        }
    }

    /// The stage this event says the deploy is in, if it says one.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            EventKind::Progress { stage, .. } | EventKind::Failed { stage, .. } => Some(*stage),
            EventKind::Verified { .. } | EventKind::Signed { .. } => Some(Stage::Verify),
            EventKind::Injected { .. } => Some(Stage::Inject),
            EventKind::Handoff { .. } => Some(Stage::Handoff),
            EventKind::ErasePlan { .. } | EventKind::Erased { .. } => Some(Stage::Erase),
            EventKind::BootEntry { .. } => Some(Stage::Handoff),
            EventKind::Started { .. }
            | EventKind::Retrying { .. }
            | EventKind::Command { .. }
            | EventKind::Mirrors { .. } => None,
        }
    }

    /// Whether a newer event of the same kind makes this one worthless:
    /// progress events may be coalesced and dropped, others never.
    pub fn is_progress(&self) -> bool {
        matches!(self, EventKind::Progress { .. })
    }
}

/// One event with its envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// 1, 2, 3, … in the order the events happened.
    pub seq: u64,
    /// Wall-clock time, Unix seconds.
    pub time: u64,
    /// Seconds since the machine booted (`CLOCK_BOOTTIME`).
    pub uptime: f64,
    pub kind: EventKind,
}

impl Event {
    /// The flat JSON object that is posted and listed.
    pub fn to_json(&self) -> Value {
        let mut value = serde_json::to_value(&self.kind).unwrap_or_else(|error| {
            // Only maps with non-string keys fail to serialize; there are none.
            serde_json::json!({ "event": self.kind.name(), "error": error.to_string() })
        });
        if let Value::Object(object) = &mut value {
            object.insert("seq".into(), self.seq.into());
            object.insert("time".into(), self.time.into());
            object.insert("uptime".into(), round_millis(self.uptime).into());
            object.insert("imprint".into(), VERSION.into());
        }
        value
    }
}

impl Event {
    /// One line for a human log (DRP's job log): `[12.3 s] verified:
    /// {"algorithm":…}`: the event's own fields, without the envelope.
    pub fn log_line(&self) -> String {
        let mut fields = self.to_json();
        if let Value::Object(object) = &mut fields {
            for key in ["event", "seq", "time", "uptime", "imprint", "machine"] {
                object.remove(key);
            }
        }
        format!("[{:.1} s] {}: {fields}", self.uptime, self.kind.name())
    }
}

/// Seconds to the millisecond: more digits say nothing to an operator.
fn round_millis(seconds: f64) -> f64 {
    (seconds * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::machine::{Dmi, MachineDisk, Nic};
    use serde_json::json;

    fn event(kind: EventKind) -> Value {
        Event {
            seq: 7,
            time: 1_700_000_000,
            uptime: 12.345_678,
            kind,
        }
        .to_json()
    }

    #[test]
    fn progress_is_flat_with_envelope() {
        let value = event(EventKind::Progress {
            stage: Stage::Write,
            bytes: 1 << 20,
            total: None,
            rate: 5_000_000,
        });
        assert_eq!(
            value,
            json!({
                "event": "progress", "seq": 7, "time": 1_700_000_000_u64, "uptime": 12.346,
                "imprint": VERSION, "stage": "write", "bytes": 1_048_576, "total": null,
                "rate": 5_000_000,
            })
        );
    }

    #[test]
    fn every_kind_has_its_fields() {
        let machine = MachineInfo {
            nics: vec![Nic {
                name: "eth0".into(),
                mac: "52:54:00:12:34:56".into(),
            }],
            dmi: Dmi {
                serial: Some("S123".into()),
                product: None,
                uuid: None,
                vendor: Some("QEMU".into()),
            },
            disks: vec![MachineDisk {
                name: "vda".into(),
                size_bytes: 512,
                model: None,
                serial: None,
            }],
        };
        let started = event(EventKind::Started { machine });
        assert_eq!(started["event"], "started");
        assert_eq!(
            started["machine"],
            json!({
                "nics": [{"name": "eth0", "mac": "52:54:00:12:34:56"}],
                "dmi": {"serial": "S123", "product": null, "uuid": null, "vendor": "QEMU"},
                "disks": [{"name": "vda", "size_bytes": 512, "model": null, "serial": null}],
            })
        );

        let verified = event(EventKind::Verified {
            sha256: "ab".repeat(32),
            algorithm: Some("sha512".into()),
            bytes: 9,
            image_digest: Some("oci://reg/os/golden@sha256:12".into()),
        });
        assert_eq!(
            (
                &verified["event"],
                &verified["algorithm"],
                &verified["bytes"]
            ),
            (&json!("verified"), &json!("sha512"), &json!(9))
        );
        assert_eq!(verified["sha256"], "ab".repeat(32));
        assert_eq!(verified["image_digest"], "oci://reg/os/golden@sha256:12");

        let signed = event(EventKind::Signed {
            format: "openpgp".into(),
            key: "9F65F1A01C10E0B42D60394BDC13037631BB4C2A".into(),
            subkey: true,
            covered: "checksum-list".into(),
        });
        assert_eq!(
            (
                &signed["event"],
                &signed["format"],
                &signed["subkey"],
                &signed["covered"]
            ),
            (
                &json!("signed"),
                &json!("openpgp"),
                &json!(true),
                &json!("checksum-list")
            )
        );
        assert_eq!(signed["key"], "9F65F1A01C10E0B42D60394BDC13037631BB4C2A");

        let injected = event(EventKind::Injected {
            root: Some("/dev/vda2".into()),
            changes: 4,
            skipped: None,
        });
        assert_eq!(
            (&injected["event"], &injected["root"], &injected["changes"]),
            (&json!("injected"), &json!("/dev/vda2"), &json!(4))
        );
        assert!(injected["skipped"].is_null());

        let handoff = event(EventKind::Handoff {
            how: HandoffHow::Kexec,
            kernel: Some("/boot/vmlinuz".into()),
            cmdline: Some("root=/dev/vda2".into()),
            detail: None,
        });
        assert_eq!(
            (&handoff["event"], &handoff["how"], &handoff["kernel"]),
            (&json!("handoff"), &json!("kexec"), &json!("/boot/vmlinuz"))
        );
        assert_eq!(handoff["cmdline"], "root=/dev/vda2");
        let none = event(EventKind::Handoff {
            how: HandoffHow::None,
            kernel: None,
            cmdline: None,
            detail: Some("halted".into()),
        });
        assert_eq!(
            (&none["how"], &none["detail"]),
            (&json!("none"), &json!("halted"))
        );

        let failed = event(EventKind::Failed {
            stage: Stage::Write,
            error: "GET http://x/y: HTTP 404 Not Found".into(),
            offset: Some(4096),
            attempt: None,
        });
        assert_eq!(
            (&failed["event"], &failed["stage"], &failed["offset"]),
            (&json!("failed"), &json!("write"), &json!(4096))
        );
        assert_eq!(failed["error"], "GET http://x/y: HTTP 404 Not Found");
        assert!(failed["attempt"].is_null());

        let retrying = event(EventKind::Retrying {
            attempt: 2,
            of: 3,
            delay_seconds: 30.0,
        });
        assert_eq!(
            (&retrying["event"], &retrying["attempt"], &retrying["of"]),
            (&json!("retrying"), &json!(2), &json!(3))
        );
        assert_eq!(retrying["delay_seconds"], 30.0);
    }

    #[test]
    fn stages_are_kebab_case_and_names_match_tags() {
        let stages = [
            (Stage::Drivers, "drivers"),
            (Stage::Network, "network"),
            (Stage::Spec, "spec"),
            (Stage::Disk, "disk"),
            (Stage::Write, "write"),
            (Stage::Verify, "verify"),
            (Stage::Inject, "inject"),
            (Stage::Handoff, "handoff"),
        ];
        for (stage, name) in stages {
            assert_eq!(serde_json::to_value(stage).unwrap(), name);
            let failed = EventKind::Failed {
                stage,
                error: String::new(),
                offset: None,
                attempt: None,
            };
            assert_eq!(failed.stage(), Some(stage));
            assert_eq!(event(failed.clone())["event"], failed.name());
        }
        let handoff = EventKind::Handoff {
            how: HandoffHow::Poweroff,
            kernel: None,
            cmdline: None,
            detail: None,
        };
        assert_eq!(event(handoff.clone())["event"], handoff.name());
        assert_eq!(event(handoff)["how"], "poweroff");
    }
}

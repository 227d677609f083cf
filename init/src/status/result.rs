//! How a run of the deploy ended, for the sinks that close something per
//! run (DRP's job) rather than per event.

use serde_json::{Value, json};

use crate::http::redact_url;

/// The end of one run, as [`Status::set_result`](super::Status::set_result)
/// takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The `IMPRINT-RESULT:` line, as printed.
    pub line: String,
    /// What the run did.
    pub deploy: LastDeploy,
}

/// What a run of the deploy did; as JSON, DRP's `imprint/last-deploy`
/// machine param.
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

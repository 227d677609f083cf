//! The machine-readable result line that harnesses and operators wait for.

use std::time::Duration;

use crate::source::retry::SourceStatsSnapshot;

/// What a successful deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeploySummary {
    pub bytes: u64,
    /// SHA-256 of the bytes written to the disk.
    pub sha256: [u8; 32],
    pub elapsed: Duration,
    /// imprint's name of the image format (`zst`, `raw.tar.gz`, …).
    pub format: Option<String>,
    /// The algorithm of the checksum the served bytes matched, if one was given.
    pub verified: Option<&'static str>,
    /// Resumes, retries and re-fetched bytes of the transfer.
    pub transfer: SourceStatsSnapshot,
    /// Whole-deploy restarts from byte 0 (a resume was not safe).
    pub restarts: u32,
    /// TLS verification was off.
    pub insecure: bool,
    /// Disks erased before the write ([`Erased::token`](crate::erase::Erased::token)).
    pub erased: Vec<String>,
    /// The UEFI boot entry written for the installed OS (`Boot0003`).
    pub boot_entry: Option<String>,
    /// The keys whose signatures verified, and what each covered.
    pub signed_by: Vec<crate::sign::Signer>,
}

pub const RESULT_PREFIX: &str = "IMPRINT-RESULT:";

/// `IMPRINT-RESULT: ok bytes=… sha256=… seconds=…`, then `format=…` and
/// `verified=…` when known, `resumes=… refetched=… retries=…`, and
/// `restarts=1` / `insecure=1` when they happened, `signed-by=FORMAT:KEY[,…]`
/// when signatures verified. New fields only ever go at the end.
pub fn ok_line(summary: &DeploySummary) -> String {
    let mut line = format!(
        "{RESULT_PREFIX} ok bytes={} sha256={} seconds={:.2}",
        summary.bytes,
        crate::text::hex(&summary.sha256),
        summary.elapsed.as_secs_f64()
    );
    if let Some(format) = &summary.format {
        line += &format!(" format={format}");
    }
    if let Some(algorithm) = summary.verified {
        line += &format!(" verified={algorithm}");
    }
    let t = &summary.transfer;
    line += &format!(
        " resumes={} refetched={} retries={}",
        t.resumes, t.refetched_bytes, t.retries
    );
    if summary.restarts > 0 {
        line += &format!(" restarts={}", summary.restarts);
    }
    if summary.insecure {
        line += " insecure=1";
    }
    if !summary.erased.is_empty() {
        line += &format!(" erased={}", summary.erased.join(","));
    }
    if let Some(entry) = &summary.boot_entry {
        line += &format!(" boot-entry={entry}");
    }
    if !summary.signed_by.is_empty() {
        let tokens: Vec<String> = summary
            .signed_by
            .iter()
            .map(crate::sign::Signer::token)
            .collect();
        line += &format!(" signed-by={}", tokens.join(","));
    }
    if let Some(digest) = &summary.transfer.image_digest {
        line += &format!(" image-digest={digest}");
    }
    if !summary.transfer.mirrors.is_empty() {
        let served: Vec<String> = summary
            .transfer
            .mirrors
            .iter()
            .map(|(host, bytes)| format!("{host}:{bytes}"))
            .collect();
        line += &format!(" mirrors={}", served.join(","));
    }
    if let Some(bytes) = summary.transfer.swarm {
        line += &format!(" swarm={bytes}");
    }
    line
}

/// `IMPRINT-RESULT: ok action=erase seconds=… erased=vda:zero:12.30s:verified,…`
/// for an erase-only job: each disk with the method used, its seconds and
/// whether the read-back verified it all.
pub fn erased_line(erased: &[crate::erase::Erased], elapsed: Duration) -> String {
    let tokens: Vec<String> = erased.iter().map(crate::erase::Erased::token).collect();
    format!(
        "{RESULT_PREFIX} ok action=erase seconds={:.2} erased={}",
        elapsed.as_secs_f64(),
        tokens.join(",")
    )
}

/// One line whatever the error: the anyhow chain joined with `: `, any
/// embedded newline flattened, so a harness can match it with one regex.
pub fn error_line(error: &anyhow::Error) -> String {
    let cause = format!("{error:#}").replace(['\r', '\n'], " ");
    format!("{RESULT_PREFIX} error: {cause}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn ok_line_format() {
        let line = ok_line(&DeploySummary {
            bytes: 67_108_864,
            sha256: [0xab; 32],
            elapsed: Duration::from_millis(12_345),
            format: None,
            verified: None,
            transfer: SourceStatsSnapshot::default(),
            restarts: 0,
            insecure: false,
            erased: Vec::new(),
            boot_entry: None,
            signed_by: Vec::new(),
        });
        assert_eq!(
            line,
            format!(
                "IMPRINT-RESULT: ok bytes=67108864 sha256={} seconds=12.35 resumes=0 refetched=0 retries=0",
                "ab".repeat(32)
            )
        );
    }

    #[test]
    fn ok_line_appends_format_and_verification() {
        let line = ok_line(&DeploySummary {
            bytes: 1,
            sha256: [0; 32],
            elapsed: Duration::ZERO,
            format: Some("raw.tar.zst".into()),
            verified: Some("sha512"),
            transfer: SourceStatsSnapshot {
                resumes: 3,
                refetched_bytes: 7,
                retries: 4,
                final_url: None,
                image_digest: None,
                mirrors: vec![("cache:8080".into(), 5), ("origin".into(), 9)],
                swarm: Some(11),
            },
            restarts: 1,
            insecure: true,
            erased: Vec::new(),
            boot_entry: None,
            signed_by: Vec::new(),
        });
        assert!(
            line.ends_with(
                " seconds=0.00 format=raw.tar.zst verified=sha512 resumes=3 refetched=7 retries=4 restarts=1 insecure=1 mirrors=cache:8080:5,origin:9 swarm=11"
            ),
            "{line}"
        );
    }

    #[test]
    fn ok_line_ends_with_the_signers() {
        use crate::sign::{Covered, Format, Signer};
        let line = ok_line(&DeploySummary {
            bytes: 1,
            sha256: [0; 32],
            elapsed: Duration::ZERO,
            format: None,
            verified: Some("sha256"),
            transfer: SourceStatsSnapshot::default(),
            restarts: 0,
            insecure: false,
            erased: Vec::new(),
            boot_entry: Some("Boot0003".into()),
            signed_by: vec![
                Signer {
                    format: Format::OpenPgp,
                    fingerprint: "9F65F1A01C10E0B42D60394BDC13037631BB4C2A".into(),
                    subkey: false,
                    covered: Covered::ChecksumList,
                },
                Signer {
                    format: Format::Minisign,
                    fingerprint: "E7620F1842B4E81F".into(),
                    subkey: false,
                    covered: Covered::Image,
                },
            ],
        });
        assert!(
            line.ends_with(
                " boot-entry=Boot0003 signed-by=openpgp:9F65F1A01C10E0B42D60394BDC13037631BB4C2A,minisign:E7620F1842B4E81F"
            ),
            "{line}"
        );
    }

    #[test]
    fn error_line_is_one_line_with_chain() {
        let err = Err::<(), _>(anyhow::anyhow!("HTTP 404\nNot Found"))
            .context("fetching http://x/y")
            .unwrap_err();
        assert_eq!(
            error_line(&err),
            "IMPRINT-RESULT: error: fetching http://x/y: HTTP 404 Not Found"
        );
    }

    #[test]
    fn hex_lowercase() {}
}

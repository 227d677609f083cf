//! One deploy, from spec to summary: shared by PID 1 and the CLI.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::pipeline::{self, progress::Progress};
use crate::report::DeploySummary;
use crate::source::{self, SourceOptions};
use crate::spec::DeploySpec;

/// Streams the spec's image onto `target` and syncs it.
///
/// The source is opened first: a failure there (bad URL, 404, server down)
/// returns before the target is even opened, so the disk stays untouched.
pub fn deploy_to(
    spec: &DeploySpec,
    target: &Path,
    progress: &mut dyn Progress,
) -> Result<DeploySummary> {
    let started = Instant::now();
    let url = spec.require_url()?;
    let mut source = source::open(url, &SourceOptions::default())?;
    let (file, kind) = crate::disk::open_target(target)?;
    log::info!(
        "deploying {url} ({}) to {} ({kind:?})",
        source
            .length
            .map_or_else(|| "size unknown".to_owned(), crate::disk::human_size),
        target.display()
    );
    let what = || format!("deploying {url} to {}", target.display());
    let (file, bytes, sha256) =
        pipeline::copy_hashed(&mut source.reader, file, source.length, progress)
            .with_context(what)?;
    if let Some(expected) = source.length
        && expected != bytes
    {
        bail!("{}: image ended at byte {bytes} of {expected}", what());
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", target.display()))?;
    Ok(DeploySummary {
        bytes,
        sha256,
        elapsed: started.elapsed(),
    })
}

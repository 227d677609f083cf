//! The two places a deploy meets signatures: before any of the image is read
//! (keys loaded, signatures fetched and matched, an unsigned
//! image refused), and after its end, before the first MiB (who signed).

use anyhow::Result;

use super::Signer;
use super::trust::{self, Baked, Plan};
use crate::spec::Resolved;

/// The checks this deploy runs, with the keys baked into this initramfs
/// (or the CLI's host).
pub fn plan(spec: &Resolved) -> Result<Plan> {
    let baked = Baked::load(&Baked::dir())?;
    trust::plan(&spec.signing, &baked, &spec.source, &|name| {
        spec.spelling(name)
    })
}

/// The keys that vouched for this image, each logged with what it
/// covered; the image signature's failure, if it failed.
pub fn signers(list: Option<Signer>, image: Option<Result<Signer>>) -> Result<Vec<Signer>> {
    let mut signers: Vec<Signer> = list.into_iter().collect();
    if let Some(image) = image {
        signers.push(image?);
    }
    for signer in &signers {
        log::info!("verified signature: {}", signer.describe());
    }
    Ok(signers)
}

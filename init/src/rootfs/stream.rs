//! A root-filesystem tarball being fetched and decoded for the unpacker:
//! the disk-image pipeline's fetch stage and decoders, read by the caller
//! instead of a disk writer.

use std::io::{self, Read};
use std::sync::mpsc::sync_channel;
use std::thread::JoinHandle;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::deploy::{DeployOptions, agree_with_source, expected_checksum_signed};
use crate::pipeline::checksum::Checksum;
use crate::pipeline::decode;
use crate::pipeline::fetch::{
    FETCH_CHUNK, FetchError, Fetched, Pool, QUEUE_DEPTH, QueueReader, ServedHashers, fetch_stage,
    join, spawn,
};
use crate::pipeline::format::{self, Compression};
use crate::pipeline::ordered::{DEFAULT_MEMORY, OrderedConfig};
use crate::pipeline::peek::PeekReader;
use crate::source::{Source, SourceOptions};
use crate::spec::Expected;
use crate::text::human_size;

/// A root-filesystem tarball being fetched: its decoded bytes, read by the
/// caller (the unpacker), and the fetcher behind them.
pub struct TarballStream {
    /// The uncompressed tar archive.
    pub archive: Box<dyn Read + Send>,
    url: String,
    expected: Option<Checksum>,
    /// Who signed the checksum list, when a signature covers it.
    list_signer: Option<crate::sign::Signer>,
    fetch: JoinHandle<Result<Fetched, FetchError>>,
}

/// What was served for a tarball, once it is read to the end and verified.
#[derive(Debug, Clone)]
pub struct ServedTarball {
    pub bytes: u64,
    /// SHA-256 of the bytes as served.
    pub sha256: [u8; 32],
    /// The algorithm of the checksum they matched, if one was given.
    pub verified: Option<&'static str>,
    /// The keys whose signatures verified.
    pub signed_by: Vec<crate::sign::Signer>,
}

/// A root-filesystem tarball to fetch: the image or an overlay.
pub struct Tarball<'a> {
    pub url: &'a str,
    /// Its type: `tgz`, `tar-zst`, …
    pub declared: &'a str,
    pub expected: Option<&'a Expected>,
    pub source_options: &'a SourceOptions,
    pub decode_memory: Option<u64>,
    /// The signature checks of a deploy's image (`None` for overlays and
    /// `imprint unpack`).
    pub signing: Option<&'a crate::sign::trust::Plan>,
}

/// Starts fetching and decoding `tarball` from `source`. Everything that
/// can be checked before the disk is touched is: the checksum list
/// answers, the compression is the declared one, the decoded stream starts
/// with a tar header.
pub fn open_tarball(
    tarball: &Tarball<'_>,
    source: Source,
    options: &DeployOptions,
) -> Result<TarballStream> {
    let url = tarball.url.to_owned();
    let declared = tarball.declared;
    let declared_compression = format::rootfs_compression(declared)
        .with_context(|| format!("{declared:?} is not a root-filesystem tarball type"))?;
    let named = source.name.clone().unwrap_or_else(|| url.clone());
    let no_signing = crate::sign::trust::Plan::default();
    let signing = tarball.signing.unwrap_or(&no_signing);
    let (expected, list_signer) =
        expected_checksum_signed(tarball.expected, &named, tarball.source_options, signing)?;
    let expected = agree_with_source(expected, source.digest.as_ref(), &url)?;
    log::info!(
        "fetching root-filesystem tarball {url} ({})",
        source
            .length
            .map_or_else(|| "size not given".to_owned(), human_size),
    );
    let pool = Pool::new(FETCH_CHUNK);
    let (served_tx, served_rx) = sync_channel(QUEUE_DEPTH);
    let fetch = spawn("imprint-fetch", {
        let url = url.clone();
        let hashers = ServedHashers {
            expected: expected.as_ref().map(Checksum::hasher),
            sha256: Some(Sha256::new()),
            signature: signing.image_check()?,
        };
        let pool = pool.clone();
        move || fetch_stage(source.reader, &url, hashers, &served_tx, &pool)
    })?;
    let mut input = PeekReader::new(QueueReader::new(served_rx, pool));
    let prefix = input
        .peek(512)
        .with_context(|| format!("reading the start of {url}"))?
        .to_vec();
    if prefix.is_empty() {
        bail!("{url} is empty");
    }
    let compression = format::sniff_compression(&prefix);
    if compression != declared_compression {
        bail!(
            "{url} is {} but its declared type {declared} means {}; declare the type the file is",
            describe_compression(compression),
            describe_compression(declared_compression)
        );
    }
    let decoders = OrderedConfig::new(
        options.threads,
        tarball.decode_memory.unwrap_or(DEFAULT_MEMORY),
    );
    let mut archive = PeekReader::new(decode::decoder_with(compression, input, decoders));
    let start = archive
        .peek(512)
        .with_context(|| format!("decoding {url} ({})", describe_compression(compression)))?;
    if !format::looks_like_tar(start) {
        bail!(
            "{url} is not a tar archive once decompressed; a {declared} image is a root-filesystem tarball"
        );
    }
    Ok(TarballStream {
        archive: Box::new(archive),
        url,
        expected,
        list_signer,
        fetch,
    })
}

fn describe_compression(compression: Compression) -> String {
    match compression {
        Compression::None => "uncompressed".to_owned(),
        other => format!("{other}-compressed"),
    }
}

impl TarballStream {
    /// Unpacks the archive into `root` ([`super::unpack`]; its errors say
    /// `unpacking URL: …`), then [`finish`](Self::finish)es: the tarball is
    /// only good once it was read to its end and matched its checksum.
    pub fn unpack_into(
        mut self,
        root: &std::path::Path,
        progress: &mut dyn crate::pipeline::progress::Progress,
    ) -> Result<(super::UnpackSummary, ServedTarball)> {
        let unpacked = super::unpack(&mut self.archive, root, progress)
            .with_context(|| format!("unpacking {}", self.url))?;
        let served = self.finish()?;
        Ok((unpacked, served))
    }

    /// Reads what the unpacker left (the archive's zero padding) to the
    /// end, waits for the fetcher and checks the served bytes against the
    /// expected checksum.
    pub fn finish(mut self) -> Result<ServedTarball> {
        let drained = io::copy(&mut self.archive, &mut io::sink());
        drop(self.archive);
        let fetched = join(self.fetch, "fetcher");
        let fetched = match (fetched, drained) {
            (Err(FetchError::Read(e)), _) => return Err(e),
            (_, Err(e)) => {
                return Err(anyhow::Error::new(e).context(format!("decoding {}", self.url)));
            }
            (Err(FetchError::Abandoned), Ok(_)) => bail!("the fetcher of {} stopped", self.url),
            (Ok(fetched), Ok(_)) => fetched,
        };
        if let (Some(expected), Some(actual)) = (&self.expected, &fetched.digest) {
            if expected != actual {
                bail!(
                    "checksum mismatch for {} ({} bytes): expected {expected}, got {actual}",
                    self.url,
                    fetched.bytes
                );
            }
            log::info!("verified {actual}");
        }
        let signed_by = crate::sign::deploy::signers(self.list_signer, fetched.signed)?;
        Ok(ServedTarball {
            bytes: fetched.bytes,
            sha256: fetched.sha256.unwrap_or_default(),
            verified: self.expected.map(|c| c.algorithm()),
            signed_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::trust::{Baked, SigningSpec, plan};
    use crate::sign::{Format, TrustedKey};
    use crate::source::url::SourceUrl;
    use std::process::Command;

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A root-filesystem tarball signed by `minisign` (the real tool): its
    /// signature is checked when the stream finishes, as its checksum is.
    #[test]
    fn a_tarball_signature_is_checked_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("tree/etc")).unwrap();
        std::fs::write(d.join("tree/etc/hostname"), "signed\n").unwrap();
        run(Command::new("tar")
            .arg("-czf")
            .arg(d.join("root.tgz"))
            .arg("-C")
            .arg(d.join("tree"))
            .arg("."));
        run(Command::new("minisign")
            .args(["-G", "-W", "-f", "-p"])
            .arg(d.join("k.pub"))
            .arg("-s")
            .arg(d.join("k.sec")));
        run(Command::new("minisign")
            .args(["-S", "-s"])
            .arg(d.join("k.sec"))
            .arg("-m")
            .arg(d.join("root.tgz")));
        let key = TrustedKey::parse(&std::fs::read(d.join("k.pub")).unwrap()).unwrap();
        let url = format!("file://{}", d.join("root.tgz").display());
        let spec = SigningSpec {
            signature: Some(SourceUrl::parse(&format!("{url}.minisig")).unwrap()),
            ..SigningSpec::default()
        };
        let baked = Baked {
            keys: vec![key.clone()],
            allow_unsigned: false,
        };
        let options = SourceOptions::default();
        let deploy = |bytes: &[u8]| {
            std::fs::write(d.join("served.tgz"), bytes).unwrap();
            let served = format!("file://{}", d.join("served.tgz").display());
            let signing = plan(&spec, &baked, &options, &|n| format!("imprint.{n}=")).unwrap();
            let tarball = Tarball {
                url: &served,
                declared: "tgz",
                expected: None,
                source_options: &options,
                decode_memory: None,
                signing: Some(&signing),
            };
            let source = crate::source::open(&served, &options).unwrap();
            open_tarball(&tarball, source, &DeployOptions::default())?.finish()
        };
        let good = std::fs::read(d.join("root.tgz")).unwrap();
        let served = deploy(&good).unwrap();
        assert_eq!(served.signed_by.len(), 1);
        assert_eq!(served.signed_by[0].format, Format::Minisign);
        assert_eq!(served.signed_by[0].fingerprint, key.fingerprint());

        // The signature of another file in its place: the tarball is read
        // to its end, then refused.
        std::fs::write(d.join("other"), "another file").unwrap();
        run(Command::new("minisign")
            .args(["-S", "-s"])
            .arg(d.join("k.sec"))
            .arg("-m")
            .arg(d.join("other")));
        std::fs::copy(d.join("other.minisig"), d.join("root.tgz.minisig")).unwrap();
        let error = format!("{:#}", deploy(&good).unwrap_err());
        assert!(error.contains("does not match the data"), "{error}");
    }
}

//! The chunk manifest: the SHA-256 of every chunk of an image, so ranges
//! from different mirrors (or peers) can be checked one by one as they
//! arrive and mixed safely (`imprint manifest IMAGE > IMAGE.chunks`,
//! `imprint.manifest=URL`).
//!
//! The format is line-oriented text, every line ending in `\n`:
//!
//! ```text
//! imprint-chunks v1 chunk=<BYTES> length=<BYTES> sha256=<HEX64>
//! <HEX64>            one line per chunk, in order: ceil(length / chunk) lines
//! ```
//!
//! The first line's `sha256=` is the whole file's; chunk `k` is bytes
//! `k*chunk` to `min((k+1)*chunk, length) - 1`, so the last one may be
//! short. An empty image has no chunk lines. Hex is lowercase on output and
//! accepted in either case.

use std::io::Read;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// The header's first words.
const MAGIC: &str = "imprint-chunks v1";
/// The smallest chunk `imprint.chunk=` and a manifest accept.
pub const MIN_CHUNK: u64 = 64 << 10;

/// A parsed (or computed) chunk manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    pub chunk: u64,
    pub length: u64,
    pub sha256: [u8; 32],
    pub chunks: Vec<[u8; 32]>,
}

impl Manifest {
    /// Hashes `reader` in chunks of `chunk` bytes.
    pub fn compute(mut reader: impl Read, chunk: u64) -> Result<Manifest> {
        if chunk < MIN_CHUNK {
            bail!("a chunk of {chunk} bytes is smaller than the 64 KiB minimum");
        }
        let mut whole = Sha256::new();
        let mut chunks = Vec::new();
        let mut length = 0u64;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let mut part = Sha256::new();
            let mut filled = 0u64;
            while filled < chunk {
                let want = usize::try_from((chunk - filled).min(buffer.len() as u64))
                    .unwrap_or(buffer.len());
                let read = match reader.read(&mut buffer[..want]) {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading the image"),
                };
                part.update(&buffer[..read]);
                whole.update(&buffer[..read]);
                filled += read as u64;
            }
            if filled == 0 {
                break;
            }
            length += filled;
            chunks.push(part.finalize().into());
            if filled < chunk {
                break;
            }
        }
        Ok(Manifest {
            chunk,
            length,
            sha256: whole.finalize().into(),
            chunks,
        })
    }

    /// The manifest as text, in the module's grammar.
    pub fn render(&self) -> String {
        let mut text = format!(
            "{MAGIC} chunk={} length={} sha256={}\n",
            self.chunk,
            self.length,
            crate::text::hex(&self.sha256)
        );
        for digest in &self.chunks {
            text += &crate::text::hex(digest);
            text.push('\n');
        }
        text
    }

    /// Parses the text; `url` names it in errors.
    pub fn parse(text: &str, url: &str) -> Result<Manifest> {
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let Some(fields) = header.strip_prefix(MAGIC) else {
            bail!("{url}: not a chunk manifest (its first line must start with {MAGIC:?})");
        };
        let (mut chunk, mut length, mut sha256) = (None, None, None);
        for field in fields.split_whitespace() {
            match field.split_once('=') {
                Some(("chunk", v)) => chunk = v.parse::<u64>().ok(),
                Some(("length", v)) => length = v.parse::<u64>().ok(),
                Some(("sha256", v)) => sha256 = parse_hex32(v),
                _ => bail!("{url}: unknown field {field:?} on the first line"),
            }
        }
        let (Some(chunk), Some(length), Some(sha256)) = (chunk, length, sha256) else {
            bail!("{url}: the first line needs chunk=BYTES length=BYTES sha256=HEX");
        };
        if chunk < MIN_CHUNK {
            bail!("{url}: chunk={chunk} is smaller than the 64 KiB minimum");
        }
        let expected = length.div_ceil(chunk);
        let mut chunks = Vec::new();
        for (n, line) in lines.enumerate() {
            let digest = parse_hex32(line.trim())
                .with_context(|| format!("{url}: line {} is not a SHA-256 in hex", n + 2))?;
            chunks.push(digest);
        }
        if chunks.len() as u64 != expected {
            bail!(
                "{url}: {} chunk lines, but length={length} in chunks of {chunk} needs {expected}",
                chunks.len()
            );
        }
        Ok(Manifest {
            chunk,
            length,
            sha256,
            chunks,
        })
    }

    /// Whether `bytes` are chunk `index`.
    pub fn matches(&self, index: u64, bytes: &[u8]) -> bool {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.chunks.get(i))
            .is_some_and(|digest| <[u8; 32]>::from(Sha256::digest(bytes)) == *digest)
    }
}

fn parse_hex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Parses `imprint.chunk=`: bytes with an optional binary unit (K, M, G),
/// at least 64 KiB.
pub fn parse_chunk(value: &str) -> Result<u64> {
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = value.split_at(digits);
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KIB" => 10,
        "M" | "MIB" => 20,
        "G" | "GIB" => 30,
        _ => bail!("{value:?} is not a size: use a whole number with K, M or G (binary)"),
    };
    let bytes = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .with_context(|| {
            format!("{value:?} is not a size: use a whole number with K, M or G (binary)")
        })?;
    if bytes < MIN_CHUNK {
        bail!("{value} is less than the 64K minimum");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 7 % 253).unwrap())
            .collect()
    }

    #[test]
    fn round_trip_and_short_last_chunk() {
        let image = data(3 * 65536 + 100);
        let manifest = Manifest::compute(&image[..], 65536).unwrap();
        assert_eq!(manifest.length, image.len() as u64);
        assert_eq!(manifest.chunks.len(), 4);
        assert!(manifest.matches(3, &image[3 * 65536..]));
        assert!(!manifest.matches(2, &image[3 * 65536..]));
        assert!(!manifest.matches(4, &image[3 * 65536..]));
        let text = manifest.render();
        assert!(text.starts_with("imprint-chunks v1 chunk=65536 length=196708 sha256="));
        assert_eq!(Manifest::parse(&text, "m").unwrap(), manifest);
        let empty = Manifest::compute(&[][..], 65536).unwrap();
        assert!(empty.chunks.is_empty());
        assert_eq!(Manifest::parse(&empty.render(), "m").unwrap(), empty);
    }

    #[test]
    fn the_cli_matches_split_and_sha256sum() {
        // The real tools: split -b cuts the chunks, sha256sum hashes them.
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, data(5 * 65536 + 4321)).unwrap();
        let manifest = Manifest::compute(std::fs::File::open(&image).unwrap(), 65536).unwrap();
        let split = std::process::Command::new("split")
            .args(["-b", "65536", "-d", "-a", "4"])
            .arg(&image)
            .arg(dir.path().join("part."))
            .status()
            .unwrap();
        assert!(split.success());
        let mut parts: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("part.")
            })
            .collect();
        parts.sort();
        let sums = std::process::Command::new("sha256sum")
            .args(&parts)
            .arg(&image)
            .output()
            .unwrap();
        let sums = String::from_utf8(sums.stdout).unwrap();
        let hexes: Vec<&str> = sums.lines().map(|l| &l[..64]).collect();
        let text = manifest.render();
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert_eq!(
            header,
            format!(
                "imprint-chunks v1 chunk=65536 length={} sha256={}",
                5 * 65536 + 4321,
                hexes.last().unwrap()
            )
        );
        assert_eq!(lines.collect::<Vec<_>>(), hexes[..hexes.len() - 1]);
    }

    #[test]
    fn bad_manifests_are_named() {
        let good = Manifest::compute(&data(70000)[..], 65536).unwrap().render();
        for (bad, says) in [
            ("hello\n".to_owned(), "not a chunk manifest"),
            (
                "imprint-chunks v1 chunk=65536\n".to_owned(),
                "needs chunk=BYTES",
            ),
            (
                "imprint-chunks v1 chunk=1024 length=0 sha256=".to_owned() + &"0".repeat(64),
                "smaller than the 64 KiB",
            ),
            (
                good.lines().take(2).collect::<Vec<_>>().join("\n"),
                "1 chunk lines",
            ),
            (
                good.replace("\n", "\nzz\n").replacen("\nzz\n", "\n", 1),
                "line 3 is not a SHA-256",
            ),
        ] {
            let msg = format!(
                "{:#}",
                Manifest::parse(&bad, "http://h/x.chunks").unwrap_err()
            );
            assert!(msg.contains(says), "{bad:?}: {msg}");
            assert!(msg.starts_with("http://h/x.chunks"), "{msg}");
        }
    }

    #[test]
    fn chunk_sizes() {
        assert_eq!(parse_chunk("16M").unwrap(), 16 << 20);
        assert_eq!(parse_chunk("64K").unwrap(), 65536);
        assert_eq!(parse_chunk("1G").unwrap(), 1 << 30);
        assert!(format!("{:#}", parse_chunk("4K").unwrap_err()).contains("64K minimum"));
        assert!(format!("{:#}", parse_chunk("lots").unwrap_err()).contains("not a size"));
    }
}

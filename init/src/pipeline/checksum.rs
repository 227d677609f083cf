//! Checksums of the image as served: what the user expects, how to read it
//! from a `SHA256SUMS`-style file, and the running digest to compare.

use std::fmt;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256, Sha512};

/// An expected digest of the bytes as served (compressed, if the image is).
#[derive(Clone, PartialEq, Eq)]
pub enum Checksum {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

impl fmt::Debug for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), crate::text::hex(self.bytes()))
    }
}

impl Checksum {
    /// `sha256:<64 hex digits>` or `sha512:<128 hex digits>`.
    pub fn parse(text: &str) -> Result<Checksum> {
        let (algorithm, digest) = text
            .split_once(':')
            .with_context(|| format!("{text:?} is not ALGORITHM:HEX, e.g. sha256:9f86d081…"))?;
        match algorithm.to_ascii_lowercase().as_str() {
            "sha256" => Ok(Checksum::Sha256(parse_hex(digest)?)),
            "sha512" => Ok(Checksum::Sha512(parse_hex(digest)?)),
            other => bail!("unsupported checksum algorithm {other:?}; use sha256 or sha512"),
        }
    }

    /// A bare digest, its algorithm told by its length (as in SHA256SUMS
    /// and SHA512SUMS files).
    pub fn from_bare_hex(digest: &str) -> Result<Checksum> {
        match digest.len() {
            64 => Ok(Checksum::Sha256(parse_hex(digest)?)),
            128 => Ok(Checksum::Sha512(parse_hex(digest)?)),
            n => bail!("a digest of {n} hex digits is neither sha256 (64) nor sha512 (128)"),
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Checksum::Sha256(_) => "sha256",
            Checksum::Sha512(_) => "sha512",
        }
    }

    pub fn bytes(&self) -> &[u8] {
        match self {
            Checksum::Sha256(b) => b,
            Checksum::Sha512(b) => b,
        }
    }

    /// A running digest of the same algorithm.
    pub fn hasher(&self) -> ServedHasher {
        match self {
            Checksum::Sha256(_) => ServedHasher::Sha256(Sha256::new()),
            Checksum::Sha512(_) => ServedHasher::Sha512(Sha512::new()),
        }
    }
}

fn parse_hex<const N: usize>(digest: &str) -> Result<[u8; N]> {
    let digest = digest.trim();
    if digest.len() != N * 2 {
        bail!("digest has {} hex digits, expected {}", digest.len(), N * 2);
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        let pair = digest
            .get(i * 2..i * 2 + 2)
            .context("digest is not ASCII hex")?;
        *byte = u8::from_str_radix(pair, 16)
            .with_context(|| format!("{pair:?} in the digest is not hex"))?;
    }
    Ok(out)
}

/// Hashes the served bytes as they stream past.
#[derive(Debug, Clone)]
pub enum ServedHasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl ServedHasher {
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            ServedHasher::Sha256(h) => h.update(bytes),
            ServedHasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Checksum {
        match self {
            ServedHasher::Sha256(h) => Checksum::Sha256(h.finalize().into()),
            ServedHasher::Sha512(h) => Checksum::Sha512(h.finalize().into()),
        }
    }
}

/// Finds the digest for `file_name` in a checksum list: GNU coreutils style
/// (`<hex>  name`, `<hex> *name` for binary mode) or BSD style
/// (`SHA256 (name) = <hex>`). Lists often name paths (`images/x.raw.zst`,
/// `./x.raw.zst`); an entry matches when its last path component equals
/// `file_name`. Two different digests for the name are an error.
pub fn find_in_sums(sums: &str, file_name: &str) -> Result<Checksum> {
    let mut found: Option<Checksum> = None;
    for (number, line) in sums.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((name, digest)) = parse_sums_line(line) else {
            continue;
        };
        let base = name.rsplit('/').next().unwrap_or(name);
        if base != file_name {
            continue;
        }
        let checksum =
            Checksum::from_bare_hex(digest).with_context(|| format!("line {}", number + 1))?;
        match &found {
            Some(previous) if *previous != checksum => {
                bail!("the list has two different digests for {file_name}")
            }
            _ => found = Some(checksum),
        }
    }
    found.with_context(|| format!("no entry for {file_name} in the checksum list"))
}

fn parse_sums_line(line: &str) -> Option<(&str, &str)> {
    if let Some(rest) = line
        .strip_prefix("SHA256 (")
        .or_else(|| line.strip_prefix("SHA512 ("))
    {
        let (name, digest) = rest.rsplit_once(") = ")?;
        return Some((name, digest.trim()));
    }
    let (digest, name) = line.split_once(char::is_whitespace)?;
    let name = name.trim_start();
    let name = name.strip_prefix('*').unwrap_or(name);
    Some((name, digest))
}

/// The last path component of a URL, without query or fragment: what a
/// checksum list calls the file.
pub fn url_file_name(url: &str) -> &str {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_prefixed_digests() {
        let c = Checksum::parse(&format!("sha256:{EMPTY_SHA256}")).unwrap();
        assert_eq!(c.to_string(), format!("sha256:{EMPTY_SHA256}"));
        let upper = Checksum::parse(&format!("SHA256:{}", EMPTY_SHA256.to_uppercase())).unwrap();
        assert_eq!(c, upper);
        let c512 = Checksum::parse(&format!("sha512:{}", "ab".repeat(64))).unwrap();
        assert_eq!(c512.algorithm(), "sha512");
    }

    #[test]
    fn rejects_bad_digests_with_reasons() {
        let msg = |s: &str| format!("{:#}", Checksum::parse(s).unwrap_err());
        assert!(msg("md5:abc").contains("unsupported checksum algorithm \"md5\""));
        assert!(msg("sha256:abcd").contains("4 hex digits, expected 64"));
        assert!(msg(&format!("sha256:{}", "zz".repeat(32))).contains("not hex"));
        assert!(msg("deadbeef").contains("not ALGORITHM:HEX"));
    }

    #[test]
    fn hasher_matches_known_digest() {
        let c = Checksum::parse(&format!("sha256:{EMPTY_SHA256}")).unwrap();
        assert_eq!(c.hasher().finish(), c);
        let mut h = c.hasher();
        h.update(b"abc");
        assert_ne!(h.finish(), c);
    }

    #[test]
    fn finds_entries_in_gnu_and_bsd_lists() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        let list = format!(
            "# generated\n{a}  other.raw\n{b} *images/golden.raw.zst\n\nSHA512 (golden.raw.xz) = {}\n",
            "c".repeat(128)
        );
        assert_eq!(
            find_in_sums(&list, "golden.raw.zst").unwrap().to_string(),
            format!("sha256:{b}")
        );
        assert_eq!(
            find_in_sums(&list, "other.raw").unwrap().to_string(),
            format!("sha256:{a}")
        );
        assert_eq!(
            find_in_sums(&list, "golden.raw.xz").unwrap().algorithm(),
            "sha512"
        );
        let msg = format!("{:#}", find_in_sums(&list, "missing.raw").unwrap_err());
        assert_eq!(msg, "no entry for missing.raw in the checksum list");
    }

    #[test]
    fn conflicting_entries_are_an_error_and_duplicates_are_fine() {
        let a = "a".repeat(64);
        let b = "b".repeat(64);
        assert!(find_in_sums(&format!("{a}  x.raw\n{a}  ./x.raw\n"), "x.raw").is_ok());
        let msg = format!(
            "{:#}",
            find_in_sums(&format!("{a}  x.raw\n{b}  dir/x.raw\n"), "x.raw").unwrap_err()
        );
        assert!(msg.contains("two different digests"), "{msg}");
    }

    #[test]
    fn url_file_names() {
        assert_eq!(
            url_file_name("http://h/a/b/golden.raw.zst"),
            "golden.raw.zst"
        );
        assert_eq!(url_file_name("http://h/golden.raw?token=1#x"), "golden.raw");
        assert_eq!(url_file_name("file:///srv/x.img"), "x.img");
    }
}

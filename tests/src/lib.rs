//! Shared helpers for the VM tests: where the boot artifacts are, test
//! images, and the parsed `IMPRINT-RESULT:` line.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// The boot artifacts `scripts/build` put in `out/`.
#[derive(Debug)]
pub struct Artifacts {
    /// The kernel QEMU boots: the PVH `vmlinux` extracted from `out/vmlinuz`
    /// (about 3 s to PID 1 under TCG instead of 7), or the bzImage itself
    /// when extraction fails.
    pub kernel: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    pub out_dir: PathBuf,
    logs: PathBuf,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Artifacts {
    /// Finds the artifacts once per test binary. Missing artifacts fail the
    /// test: the VM tests must never pass by not running.
    pub fn get() -> &'static Artifacts {
        static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
        ARTIFACTS.get_or_init(|| {
            let root = repo_root();
            let out_dir = root.join("out");
            let bzimage = out_dir.join("vmlinuz");
            let initramfs = out_dir.join("initramfs.img");
            for path in [&bzimage, &initramfs] {
                assert!(
                    path.exists(),
                    "{} is missing: run scripts/build first",
                    path.display()
                );
            }
            let cache = root.join("target/vm-cache");
            let kernel = match imprint_qemu::fast_boot_kernel(&bzimage, &cache) {
                Ok(vmlinux) => vmlinux,
                Err(e) => {
                    eprintln!("booting the bzImage (slower): no PVH vmlinux: {e:#}");
                    bzimage.clone()
                }
            };
            let logs = root.join("target/vm-logs");
            std::fs::create_dir_all(&logs).expect("creating target/vm-logs");
            Artifacts {
                kernel,
                bzimage,
                initramfs,
                out_dir,
                logs,
            }
        })
    }

    /// Where a test's serial console is kept, for reading after a failure.
    pub fn log_path(&self, test: &str) -> PathBuf {
        self.logs.join(format!("{test}.log"))
    }
}

/// The parsed result line.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultLine {
    Ok {
        bytes: u64,
        sha256: String,
        seconds: f64,
    },
    Error(String),
}

impl ResultLine {
    /// Parses `IMPRINT-RESULT: ok bytes=… sha256=… seconds=…` or
    /// `IMPRINT-RESULT: error: …` anywhere in `line`; panics on anything else.
    pub fn parse(line: &str) -> ResultLine {
        let (_, rest) = line
            .split_once("IMPRINT-RESULT: ")
            .unwrap_or_else(|| panic!("not a result line: {line}"));
        let rest = rest.trim_end();
        if let Some(message) = rest.strip_prefix("error: ") {
            return ResultLine::Error(message.to_owned());
        }
        let fields = rest
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("malformed result line: {line}"));
        let field = |name: &str| {
            fields
                .split(' ')
                .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
                .unwrap_or_else(|| panic!("result line lacks {name}=: {line}"))
                .to_owned()
        };
        ResultLine::Ok {
            bytes: field("bytes").parse().expect("bytes= is a number"),
            sha256: field("sha256"),
            seconds: field("seconds").parse().expect("seconds= is a number"),
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deterministic test image of `len` bytes: pseudo-random runs separated
/// by long zero runs, like a real disk image with free space.
pub fn test_image(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: fast, good enough, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut image = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let data_run = usize::try_from(next() % (3 << 20)).unwrap_or(0) + 1;
        let zero_run = usize::try_from(next() % (2 << 20)).unwrap_or(0);
        let end = (pos + data_run).min(len);
        for chunk in image[pos..end].chunks_mut(8) {
            let bytes = next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        pos = end + zero_run;
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_error_lines() {
        assert_eq!(
            ResultLine::parse("[  5.1] IMPRINT-RESULT: ok bytes=12 sha256=ab seconds=1.50\r"),
            ResultLine::Ok {
                bytes: 12,
                sha256: "ab".into(),
                seconds: 1.5
            }
        );
        assert_eq!(
            ResultLine::parse("IMPRINT-RESULT: error: GET x: HTTP 404 Not Found"),
            ResultLine::Error("GET x: HTTP 404 Not Found".into())
        );
    }

    #[test]
    fn test_image_is_deterministic_with_zero_runs() {
        let a = test_image(8 << 20, 7);
        assert_eq!(a, test_image(8 << 20, 7));
        assert_ne!(a, test_image(8 << 20, 8));
        let zero_blocks = a.chunks(4096).filter(|c| c.iter().all(|b| *b == 0)).count();
        assert!(
            zero_blocks > 100 && zero_blocks < 2048 - 100,
            "{zero_blocks} zero blocks"
        );
    }
}

//! Helpers shared by the host integration tests: run the real `imprint`
//! binary, read its result line, make test images.
#![allow(dead_code)] // each test file uses its own subset

use std::process::{Command, Output};

use sha2::{Digest, Sha256};

/// Runs the `imprint` binary built for these tests.
pub fn imprint(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imprint"))
        .args(args)
        .output()
        .expect("running imprint")
}

/// The last `IMPRINT-RESULT:` line on stdout; panics with both streams
/// when there is none.
pub fn result_line(output: &Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout
        .lines()
        .rfind(|l| l.starts_with("IMPRINT-RESULT:"))
        .unwrap_or_else(|| {
            panic!(
                "no result line; stdout: {stdout}\nstderr: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })
        .to_owned()
}

/// Pseudo-random bytes with a zero run every third 64 KiB, like a disk image.
pub fn image(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut out = vec![0u8; len];
    for (i, byte) in out.iter_mut().enumerate() {
        if (i / 65_536) % 3 == 1 {
            continue;
        }
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        *byte = state.to_le_bytes()[0];
    }
    out
}

pub fn hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

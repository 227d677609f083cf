//! The deploy stream: source bytes -> hash -> disk.
//!
//! One stage per file, each generic over `Read`/`Write`. This walking
//! skeleton copies raw bytes; decoders, the hold-back of the first MiB and
//! the fail-closed wipe slot in between the same two ends.

pub mod checksum;
pub mod hash;
pub mod progress;
pub mod format;
pub mod peek;
pub mod decode;
pub mod tar;
pub mod zstd_frames;
pub mod size_hint;
pub mod target;
pub mod image_writer;

use std::io::{ErrorKind, Read, Write};

use anyhow::{Context, Result};

use hash::HashingWriter;
use progress::Progress;

/// Large enough that a write is a handful of block-layer requests, small
/// enough that a few of them in flight stay well within PID 1's memory.
pub const CHUNK_SIZE: usize = 4 << 20;

/// Copies `source` to `target` in `CHUNK_SIZE` writes; returns the byte count
/// and the SHA-256 of what was written. Errors say which side failed and at
/// which byte offset.
pub fn copy_hashed<R: Read + ?Sized, W: Write>(
    source: &mut R,
    target: W,
    total: Option<u64>,
    progress: &mut dyn Progress,
) -> Result<(W, u64, [u8; 32])> {
    let mut target = HashingWriter::new(target);
    let mut buf = vec![0u8; CHUNK_SIZE];
    loop {
        let offset = target.bytes();
        let filled = read_full(source, &mut buf)
            .with_context(|| format!("reading image at byte {offset}"))?;
        if filled == 0 {
            break;
        }
        target
            .write_all(&buf[..filled])
            .with_context(|| format!("writing disk at byte {offset}"))?;
        progress.update(target.bytes(), total);
        if filled < buf.len() {
            break;
        }
    }
    let offset = target.bytes();
    target
        .flush()
        .with_context(|| format!("flushing disk at byte {offset}"))?;
    Ok(target.into_inner())
}

/// Reads until `buf` is full or the source ends, so every write is a full
/// chunk except the last.
fn read_full<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use progress::NoProgress;
    use sha2::{Digest, Sha256};
    use std::io::{self, Cursor};

    /// Returns at most 3 bytes per read and `Interrupted` every other call.
    struct Dribble<R>(R, usize);
    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 2 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(3);
            self.0.read(&mut buf[..n])
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| u8::try_from(i * 7 % 256).unwrap())
            .collect()
    }

    #[test]
    fn copies_empty_input() {
        let (out, n, digest) =
            copy_hashed(&mut Cursor::new(vec![]), Vec::new(), None, &mut NoProgress).unwrap();
        assert!(out.is_empty());
        assert_eq!(n, 0);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn copies_exactly_one_chunk_and_one_more_byte() {
        for len in [CHUNK_SIZE, CHUNK_SIZE + 1, 2 * CHUNK_SIZE - 1] {
            let input = data(len);
            let (out, n, digest) = copy_hashed(
                &mut Cursor::new(input.clone()),
                Vec::new(),
                None,
                &mut NoProgress,
            )
            .unwrap();
            assert_eq!(n, len as u64);
            assert!(out == input);
            assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&input)));
        }
    }

    #[test]
    fn short_reads_and_interrupts() {
        let input = data(10_001);
        let (out, _, _) = copy_hashed(
            &mut Dribble(Cursor::new(input.clone()), 0),
            Vec::new(),
            None,
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(out, input);
    }

    #[test]
    fn read_error_names_offset() {
        let mut failing = Cursor::new(data(CHUNK_SIZE)).chain(FailingReader);
        let err = copy_hashed(&mut failing, Vec::new(), None, &mut NoProgress).unwrap_err();
        assert_eq!(
            format!("{err:#}"),
            format!("reading image at byte {CHUNK_SIZE}: connection reset")
        );
    }

    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(
                ErrorKind::ConnectionReset,
                "connection reset",
            ))
        }
    }

    #[test]
    fn write_error_names_offset() {
        let mut target = [0u8; 10];
        let err = copy_hashed(
            &mut Cursor::new(data(100)),
            &mut target[..],
            None,
            &mut NoProgress,
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").starts_with("writing disk at byte 0: "),
            "{err:#}"
        );
    }

    #[test]
    fn progress_sees_every_chunk() {
        struct Count(Vec<u64>);
        impl Progress for Count {
            fn update(&mut self, done: u64, _: Option<u64>) {
                self.0.push(done);
            }
        }
        let mut p = Count(vec![]);
        copy_hashed(
            &mut Cursor::new(data(CHUNK_SIZE + 5)),
            Vec::new(),
            Some(5),
            &mut p,
        )
        .unwrap();
        assert_eq!(p.0, vec![CHUNK_SIZE as u64, CHUNK_SIZE as u64 + 5]);
    }
}

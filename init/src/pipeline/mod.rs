//! The deploy stream's stages, one per file, each generic over `Read` or
//! `Write` (or a small trait, for the disk) and tested on its own.
//! `crate::deploy` runs them on threads joined by bounded queues:
//!
//! - [`checksum`]: the expected digest of the bytes as served, and its check;
//! - [`peek`], [`format`]: sniff the magic bytes, reconcile the declared format;
//! - [`decode`], [`zstd_split`] and [`zstd_decoder`], [`xz_blocks`], [`tar`]: strict streaming decoders;
//! - [`ordered`]: the engine that decodes zstd frames and xz blocks on every core;
//! - [`size_hint`]: the image size from compressed headers, before writing;
//! - [`image_writer`], [`target`], [`direct`]: hold back the first MiB, zero runs, fail closed,
//!   bulk writes past the page cache;
//! - [`progress`]: the trait progress is reported through.

pub mod checksum;
pub mod decode;
pub mod direct;
pub(crate) mod fetch;
pub mod format;
pub mod image_writer;
pub mod ordered;
pub mod peek;
pub mod progress;
pub mod scatter;
pub mod size_hint;
pub mod tar;
pub mod target;
pub mod xz_blocks;
pub mod zstd_decoder;
pub mod zstd_split;

use std::io::{ErrorKind, Read};

/// Reads until `buf` is full or the source ends, so every write is a full
/// chunk except the last.
pub fn read_full<R: Read + ?Sized>(source: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
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

    #[test]
    fn fills_across_short_reads_and_interrupts() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut source = Dribble(Cursor::new(data.clone()), 0);
        let mut buf = [0u8; 64];
        assert_eq!(read_full(&mut source, &mut buf).unwrap(), 64);
        assert_eq!(buf[..], data[..64]);
        assert_eq!(read_full(&mut source, &mut buf).unwrap(), 36);
        assert_eq!(buf[..36], data[64..]);
        assert_eq!(read_full(&mut source, &mut buf).unwrap(), 0);
    }

    #[test]
    fn errors_pass_through() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::new(ErrorKind::ConnectionReset, "reset"))
            }
        }
        let mut buf = [0u8; 8];
        assert_eq!(
            read_full(&mut Failing, &mut buf).unwrap_err().kind(),
            ErrorKind::ConnectionReset
        );
    }
}

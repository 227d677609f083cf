//! A writer that hashes and counts every byte that passes through it.

use std::io::{self, Write};

use sha2::{Digest, Sha256};

/// Forwards writes to `inner`, hashing exactly the bytes `inner` accepted
/// (a short write hashes only its prefix), so the digest always describes
/// what reached the disk.
#[derive(Debug)]
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The writer, the byte count and the SHA-256 of everything written.
    pub fn into_inner(self) -> (W, u64, [u8; 32]) {
        (self.inner, self.bytes, self.hasher.finalize().into())
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        let accepted = buf
            .get(..n)
            .ok_or_else(|| io::Error::other("writer claimed more bytes than given"))?;
        self.hasher.update(accepted);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    /// Accepts at most `max` bytes per call and fails with `Interrupted` on
    /// every other call, to exercise `write_all`'s retry path.
    struct Choppy {
        out: Vec<u8>,
        max: usize,
        calls: usize,
    }

    impl Write for Choppy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.calls += 1;
            if self.calls % 2 == 0 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.max);
            self.out.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn empty_input_hashes_empty_string() {
        let (_, n, digest) = HashingWriter::new(Vec::new()).into_inner();
        assert_eq!(n, 0);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(b"")));
    }

    #[test]
    fn short_writes_and_interrupts_hash_only_accepted_bytes() {
        let data: Vec<u8> = (0..10_000u32)
            .map(|i| u8::try_from(i % 251).unwrap())
            .collect();
        let mut w = HashingWriter::new(Choppy {
            out: Vec::new(),
            max: 7,
            calls: 0,
        });
        w.write_all(&data).unwrap();
        let (inner, n, digest) = w.into_inner();
        assert_eq!(inner.out, data);
        assert_eq!(n, 10_000);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }

    #[test]
    fn failed_write_is_not_hashed() {
        struct Broken;
        impl Write for Broken {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = HashingWriter::new(Broken);
        assert!(w.write(b"abc").is_err());
        assert_eq!(w.bytes(), 0);
    }
}

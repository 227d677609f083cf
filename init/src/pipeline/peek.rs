//! A reader that can look ahead without consuming, so a format can be sniffed
//! from its first bytes and the same bytes still reach the decoder.

use std::io::{self, ErrorKind, Read};

/// Buffers peeked bytes and replays them before reading `inner` again.
#[derive(Debug)]
pub struct PeekReader<R> {
    inner: R,
    buf: Vec<u8>,
    pos: usize,
}

impl<R: Read> PeekReader<R> {
    pub fn new(inner: R) -> Self {
        PeekReader {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }

    /// Returns the next `n` bytes without consuming them; fewer only when the
    /// input ends first. Keeps every peeked byte, so peeking is for prefixes.
    pub fn peek(&mut self, n: usize) -> io::Result<&[u8]> {
        if self.pos > 0 && self.buf.len() - self.pos < n {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let want = self.pos + n;
        while self.buf.len() < want {
            let old = self.buf.len();
            self.buf.resize(want, 0);
            match self.inner.read(&mut self.buf[old..]) {
                Ok(0) => {
                    self.buf.truncate(old);
                    break;
                }
                Ok(got) => self.buf.truncate(old + got.min(want - old)),
                Err(e) if e.kind() == ErrorKind::Interrupted => self.buf.truncate(old),
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(e);
                }
            }
        }
        let end = want.min(self.buf.len());
        Ok(&self.buf[self.pos..end])
    }

    /// The reader and the peeked bytes not yet read, which come before
    /// whatever `inner` yields next.
    pub fn into_parts(mut self) -> (Vec<u8>, R) {
        self.buf.drain(..self.pos);
        (self.buf, self.inner)
    }

    /// The reader alone; peeked bytes not yet read are lost, so call this only
    /// after reading past them (or use `into_parts`).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for PeekReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos < self.buf.len() {
            let n = out.len().min(self.buf.len() - self.pos);
            out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
            if self.pos == self.buf.len() {
                // Release the sniffing buffer once replayed: a long stream
                // should not carry it to the end.
                self.buf = Vec::new();
                self.pos = 0;
            }
            return Ok(n);
        }
        self.inner.read(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// At most 2 bytes per read and `Interrupted` on every other call.
    struct Dribble<R>(R, usize);
    impl<R: Read> Read for Dribble<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1 % 2 == 0 {
                return Err(ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(2);
            self.0.read(&mut buf[..n])
        }
    }

    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| u8::try_from(i % 251).unwrap()).collect()
    }

    fn read_all<R: Read>(r: &mut R) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 3];
        loop {
            match r.read(&mut buf) {
                Ok(0) => return out,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("{e}"),
            }
        }
    }

    #[test]
    fn peek_of_empty_input_is_empty() {
        let mut r = PeekReader::new(Cursor::new(Vec::<u8>::new()));
        assert_eq!(r.peek(10).unwrap(), b"");
        assert_eq!(read_all(&mut r), b"");
    }

    #[test]
    fn peek_then_read_yields_everything_once() {
        let input = data(1000);
        let mut r = PeekReader::new(Cursor::new(input.clone()));
        assert_eq!(r.peek(10).unwrap(), &input[..10]);
        // A second, longer peek still starts at the same place.
        assert_eq!(r.peek(600).unwrap(), &input[..600]);
        assert_eq!(r.peek(0).unwrap(), b"");
        assert_eq!(read_all(&mut r), input);
    }

    #[test]
    fn peek_collects_short_reads_and_retries_interrupts() {
        let input = data(100);
        let mut r = PeekReader::new(Dribble(Cursor::new(input.clone()), 0));
        assert_eq!(r.peek(77).unwrap(), &input[..77]);
        assert_eq!(read_all(&mut r), input);
    }

    #[test]
    fn peek_past_eof_returns_what_there_is() {
        let input = data(5);
        let mut r = PeekReader::new(Cursor::new(input.clone()));
        assert_eq!(r.peek(5).unwrap(), &input[..]);
        assert_eq!(r.peek(6).unwrap(), &input[..]);
        assert_eq!(r.peek(512).unwrap(), &input[..]);
        assert_eq!(read_all(&mut r), input);
    }

    #[test]
    fn peek_after_partial_read_starts_at_the_read_position() {
        let input = data(50);
        let mut r = PeekReader::new(Cursor::new(input.clone()));
        r.peek(10).unwrap();
        let mut four = [0u8; 4];
        r.read_exact(&mut four).unwrap();
        assert_eq!(four, input[..4]);
        assert_eq!(r.peek(20).unwrap(), &input[4..24]);
        assert_eq!(read_all(&mut r), &input[4..]);
    }

    #[test]
    fn into_parts_keeps_unread_peeked_bytes() {
        let input = data(30);
        let mut r = PeekReader::new(Cursor::new(input.clone()));
        r.peek(10).unwrap();
        let mut two = [0u8; 2];
        r.read_exact(&mut two).unwrap();
        let (pending, mut rest) = r.into_parts();
        assert_eq!(pending, &input[2..10]);
        assert_eq!(read_all(&mut rest), &input[10..]);
    }

    #[test]
    fn peek_error_is_reported_and_keeps_earlier_bytes() {
        struct FailAfter(Cursor<Vec<u8>>);
        impl Read for FailAfter {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                match self.0.read(buf)? {
                    0 => Err(io::Error::new(ErrorKind::ConnectionReset, "reset")),
                    n => Ok(n),
                }
            }
        }
        let mut r = PeekReader::new(FailAfter(Cursor::new(data(4))));
        assert_eq!(r.peek(8).unwrap_err().kind(), ErrorKind::ConnectionReset);
        assert_eq!(r.peek(4).unwrap(), &data(4)[..]);
    }
}

//! The fetch stage both kinds of deploy start with (a disk image in
//! `deploy.rs`, a root-filesystem tarball in `rootfs/stream.rs`): the
//! source read in 1 MiB chunks on its own thread, counted and hashed as
//! served, queued to whoever decodes, with spent buffers recycled through
//! a [`Pool`].

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, anyhow};
use sha2::{Digest, Sha256};

use super::checksum::{Checksum, ServedHasher};
use super::read_full;
use crate::sign::{ImageCheck, Signer};
use crate::source::retry::restart_required;

/// Network reads: small enough to keep the decoder fed early.
pub(crate) const FETCH_CHUNK: usize = 1 << 20;
/// Buffers in flight per queue. With the deploy's chunk sizes this bounds
/// the queues at 4 MiB (served) + 16 MiB (decoded), whatever the image size.
pub(crate) const QUEUE_DEPTH: usize = 4;

pub(crate) fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>> {
    thread::Builder::new()
        .name(name.to_owned())
        .spawn(f)
        .with_context(|| format!("starting the {name} thread"))
}

pub(crate) fn join<T, E: From<anyhow::Error>>(
    handle: JoinHandle<Result<T, E>>,
    what: &str,
) -> Result<T, E> {
    handle
        .join()
        .map_err(|_| E::from(anyhow!("the {what} thread panicked")))?
}

/// Why the fetcher stopped early.
#[derive(Debug)]
pub(crate) enum FetchError {
    /// Reading the source failed: the root cause of whatever follows.
    Read(anyhow::Error),
    /// The decoder stopped taking bytes; its own error says why.
    Abandoned,
}

impl From<anyhow::Error> for FetchError {
    fn from(e: anyhow::Error) -> Self {
        FetchError::Read(e)
    }
}

/// Reads the source, hashing and counting the bytes as served, and queues
/// them. A read error is queued too, so the decoder reports it in order.
pub(crate) fn fetch_stage(
    mut reader: Box<dyn Read + Send>,
    url: &str,
    mut hashers: ServedHashers,
    queue: &SyncSender<io::Result<Vec<u8>>>,
    pool: &Pool,
) -> Result<Fetched, FetchError> {
    let mut offset = 0u64;
    loop {
        let mut buf = pool.take();
        buf.resize(FETCH_CHUNK, 0);
        let filled = match read_full(&mut reader, &mut buf) {
            Ok(n) => n,
            Err(e) => {
                let message = format!("reading {url} at byte {offset}");
                let _ = queue.send(Err(io::Error::new(e.kind(), format!("{message}: {e}"))));
                // Keep the typed cause: a RestartRequired makes deploy_to
                // start over instead of failing.
                let cause = match restart_required(&e) {
                    Some(restart) => anyhow::Error::new(restart.clone()),
                    None => anyhow::Error::new(e),
                };
                return Err(FetchError::Read(cause.context(message)));
            }
        };
        buf.truncate(filled);
        hashers.update(&buf);
        offset += filled as u64;
        let last = filled < FETCH_CHUNK;
        if filled > 0 && queue.send(Ok(buf)).is_err() {
            return Err(FetchError::Abandoned);
        }
        if last {
            return Ok(hashers.finish(offset));
        }
    }
}

/// What the fetcher computes over the bytes as served: the expected
/// checksum's algorithm, (for root-filesystem tarballs, whose result
/// line reports the served bytes) their SHA-256, and the hash a detached
/// signature of the image signs.
pub(crate) struct ServedHashers {
    pub(crate) expected: Option<ServedHasher>,
    pub(crate) sha256: Option<Sha256>,
    pub(crate) signature: Option<ImageCheck>,
}

impl ServedHashers {
    pub(crate) fn update(&mut self, bytes: &[u8]) {
        if let Some(hasher) = &mut self.expected {
            hasher.update(bytes);
        }
        if let Some(sha256) = &mut self.sha256 {
            sha256.update(bytes);
        }
        if let Some(check) = &mut self.signature {
            check.update(bytes);
        }
    }

    pub(crate) fn finish(self, bytes: u64) -> Fetched {
        Fetched {
            bytes,
            digest: self.expected.map(ServedHasher::finish),
            sha256: self.sha256.map(|s| s.finalize().into()),
            signed: self.signature.map(ImageCheck::finish),
        }
    }
}

/// The source read to its end.
pub(crate) struct Fetched {
    pub(crate) bytes: u64,
    pub(crate) digest: Option<Checksum>,
    pub(crate) sha256: Option<[u8; 32]>,
    /// Who signed the image, or why its signature failed; the caller
    /// decides, after the checksum, before the first MiB.
    pub(crate) signed: Option<Result<Signer>>,
}

/// `Read` over the fetch queue; spent chunks go back to the fetcher's pool.
pub(crate) struct QueueReader {
    queue: Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    position: usize,
    pool: Pool,
}

impl QueueReader {
    pub(crate) fn new(queue: Receiver<io::Result<Vec<u8>>>, pool: Pool) -> Self {
        QueueReader {
            queue,
            current: Vec::new(),
            position: 0,
            pool,
        }
    }

    /// The rest of the current chunk, then the queue's chunks as they are:
    /// a raw image needs no copy.
    pub(crate) fn into_chunks(mut self) -> impl Iterator<Item = io::Result<Vec<u8>>> {
        self.current.drain(..self.position);
        let first = (!self.current.is_empty()).then_some(Ok(self.current));
        first.into_iter().chain(self.queue)
    }
}

impl Read for QueueReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.position == self.current.len() {
            match self.queue.recv() {
                Ok(chunk) => {
                    let spent = std::mem::replace(&mut self.current, chunk?);
                    self.pool.put(spent);
                    self.position = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.position);
        buf[..n].copy_from_slice(&self.current[self.position..self.position + n]);
        self.position += n;
        Ok(n)
    }
}

/// Spent buffers of one size, for reuse; see the module doc for the bound.
#[derive(Clone)]
pub(crate) struct Pool {
    capacity: usize,
    spare: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Pool {
    pub(crate) fn new(capacity: usize) -> Self {
        Pool {
            capacity,
            spare: Arc::default(),
        }
    }

    /// A buffer with room for `capacity` bytes. A reused one keeps its
    /// stale bytes: callers resize and overwrite, and zeroing 4 MiB again
    /// for every chunk would cost a memset per byte of the image.
    pub(crate) fn take(&self) -> Vec<u8> {
        let reused = self.spare.lock().ok().and_then(|mut spare| spare.pop());
        let mut buf = reused.unwrap_or_default();
        buf.reserve_exact(self.capacity.saturating_sub(buf.len()));
        buf
    }

    /// Keeps `buf` if it is big enough; a full pool means the stages hold
    /// fewer buffers now than before, so the extra one is freed.
    pub(crate) fn put(&self, buf: Vec<u8>) {
        if buf.capacity() < self.capacity {
            return;
        }
        if let Ok(mut spare) = self.spare.lock() {
            if spare.len() < POOL_LIMIT {
                spare.push(buf);
            }
        }
    }
}

/// More spare buffers than any stage set can hold in flight: a queue's
/// `QUEUE_DEPTH`, the disk-image writer's two waiting for the hash thread,
/// one being filled and one being read.
const POOL_LIMIT: usize = QUEUE_DEPTH + 4;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::sync_channel;

    #[test]
    fn queue_reader_yields_chunks_then_the_error() {
        let (tx, rx) = sync_channel(4);
        tx.send(Ok(b"abc".to_vec())).unwrap();
        tx.send(Ok(b"de".to_vec())).unwrap();
        tx.send(Err(io::Error::other("cut"))).unwrap();
        drop(tx);
        let mut reader = QueueReader::new(rx, Pool::new(1));
        let mut buf = [0u8; 4];
        assert_eq!(reader.read(&mut buf).unwrap(), 3);
        assert_eq!(reader.read(&mut buf).unwrap(), 2);
        assert_eq!(&buf[..2], b"de");
        assert_eq!(reader.read(&mut buf).unwrap_err().to_string(), "cut");
        assert_eq!(reader.read(&mut buf).unwrap(), 0);
    }
}

//! A reproducible ustar writer for the boot tarball DRP unpacks
//! (`drpcli isos upload`): entries in the order given, one fixed mtime,
//! owner root:root, modes 0755/0644. Nothing from the host's file metadata
//! leaks in, so the same kernel and initramfs give the same bytes and the
//! same `Sha256` in the bootenv.

use std::io::{self, Read, Write};

use anyhow::{Context, Result, ensure};

const BLOCK: usize = 512;
/// ustar stores the size as 11 octal digits.
const MAX_SIZE: u64 = 0o77_777_777_777;

/// One entry of the archive.
pub enum TarEntry<'a> {
    Directory {
        path: &'a str,
    },
    File {
        path: &'a str,
        size: u64,
        contents: &'a mut dyn Read,
    },
}

/// Writes ustar headers and data; [`TarWriter::finish`] adds the two zero
/// blocks that end the archive.
pub struct TarWriter<W: Write> {
    inner: W,
    mtime: u64,
}

impl<W: Write> TarWriter<W> {
    pub fn new(inner: W, mtime: u64) -> Self {
        TarWriter { inner, mtime }
    }

    pub fn append(&mut self, entry: TarEntry<'_>) -> Result<()> {
        match entry {
            TarEntry::Directory { path } => {
                let name = format!("{}/", path.trim_end_matches('/'));
                let header = header(&name, 0o755, 0, self.mtime, b'5')?;
                self.inner
                    .write_all(&header)
                    .context("writing a tar header")?;
            }
            TarEntry::File {
                path,
                size,
                contents,
            } => {
                let header = header(path, 0o644, size, self.mtime, b'0')?;
                self.inner
                    .write_all(&header)
                    .context("writing a tar header")?;
                let copied = io::copy(&mut contents.take(size), &mut self.inner)
                    .with_context(|| format!("copying {path} into the tar"))?;
                ensure!(
                    copied == size,
                    "{path} changed while it was archived: {copied} bytes instead of {size}"
                );
                let padding = padding(size);
                self.inner
                    .write_all(&[0; BLOCK][..padding])
                    .context("padding a tar entry")?;
            }
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<W> {
        self.inner
            .write_all(&[0; 2 * BLOCK])
            .context("ending the tar")?;
        self.inner.flush().context("flushing the tar")?;
        Ok(self.inner)
    }
}

fn padding(size: u64) -> usize {
    let rest = usize::try_from(size % BLOCK as u64).unwrap_or(0);
    (BLOCK - rest) % BLOCK
}

fn octal(field: &mut [u8], value: u64) {
    // Digits, zero padded, then a NUL terminator.
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

fn header(path: &str, mode: u64, size: u64, mtime: u64, kind: u8) -> Result<[u8; BLOCK]> {
    ensure!(
        !path.is_empty() && path.len() <= 100 && path.is_ascii(),
        "tar entry name {path:?} must be 1-100 ASCII characters"
    );
    ensure!(size <= MAX_SIZE, "{path} is too large for a ustar entry");
    let mut block = [0u8; BLOCK];
    block[..path.len()].copy_from_slice(path.as_bytes());
    octal(&mut block[100..108], mode);
    octal(&mut block[108..116], 0);
    octal(&mut block[116..124], 0);
    octal(&mut block[124..136], size);
    octal(&mut block[136..148], mtime);
    block[156] = kind;
    block[257..263].copy_from_slice(b"ustar\0");
    block[263..265].copy_from_slice(b"00");
    block[265..269].copy_from_slice(b"root");
    block[297..301].copy_from_slice(b"root");
    // The checksum is computed with its own field as eight spaces.
    block[148..156].copy_from_slice(b"        ");
    let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
    let text = format!("{sum:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
    Ok(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive(entries: &mut [(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut tar = TarWriter::new(Vec::new(), 1_700_000_000);
        for (path, data) in entries.iter_mut() {
            match data {
                None => tar.append(TarEntry::Directory { path }).unwrap(),
                Some(bytes) => tar
                    .append(TarEntry::File {
                        path,
                        size: bytes.len() as u64,
                        contents: &mut &bytes[..],
                    })
                    .unwrap(),
            }
        }
        tar.finish().unwrap()
    }

    #[test]
    fn layout_padding_and_end_blocks() {
        let bytes = archive(&mut [("d", None), ("d/f", Some(b"hello"))]);
        // dir header, file header, one data block, two end blocks.
        assert_eq!(bytes.len(), 5 * BLOCK);
        assert_eq!(&bytes[..2], b"d/");
        assert_eq!(bytes[156], b'5');
        assert_eq!(&bytes[BLOCK..BLOCK + 3], b"d/f");
        assert_eq!(&bytes[BLOCK + 124..BLOCK + 136], b"00000000005\0");
        assert_eq!(&bytes[2 * BLOCK..2 * BLOCK + 5], b"hello");
        assert!(bytes[2 * BLOCK + 5..].iter().all(|b| *b == 0));
    }

    #[test]
    fn checksum_matches_the_header() {
        let bytes = archive(&mut [("a", Some(b"x"))]);
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(&bytes[..BLOCK]);
        let stored = std::str::from_utf8(&block[148..154]).unwrap().to_owned();
        block[148..156].copy_from_slice(b"        ");
        let sum: u64 = block.iter().map(|b| u64::from(*b)).sum();
        assert_eq!(u64::from_str_radix(&stored, 8).unwrap(), sum);
    }

    #[test]
    fn a_block_sized_file_gets_no_padding() {
        let data = vec![7u8; BLOCK];
        let bytes = archive(&mut [("a", Some(&data))]);
        assert_eq!(bytes.len(), 4 * BLOCK);
    }

    #[test]
    fn short_input_is_an_error_naming_the_entry() {
        let mut tar = TarWriter::new(Vec::new(), 0);
        let err = tar
            .append(TarEntry::File {
                path: "v/vmlinuz",
                size: 10,
                contents: &mut &b"abc"[..],
            })
            .unwrap_err();
        assert!(err.to_string().contains("v/vmlinuz changed"), "{err}");
    }

    #[test]
    fn long_names_are_refused() {
        let name = "x".repeat(101);
        let mut tar = TarWriter::new(Vec::new(), 0);
        assert!(tar.append(TarEntry::Directory { path: &name }).is_err());
    }
}

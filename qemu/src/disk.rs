//! Host-side disk image helpers.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Creates (or truncates) a sparse raw image of `size_bytes`, all zeros.
pub fn create_raw_disk(path: &Path, size_bytes: u64) -> Result<()> {
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    file.set_len(size_bytes)
        .with_context(|| format!("sizing {} to {size_bytes} bytes", path.display()))
}

/// Creates an empty qcow2 image of `size_bytes` with `qemu-img create`.
pub fn create_qcow2_disk(path: &Path, size_bytes: u64) -> Result<()> {
    let output = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(path)
        .arg(size_bytes.to_string())
        .output()
        .with_context(|| format!("running qemu-img create for {}", path.display()))?;
    ensure!(
        output.status.success(),
        "qemu-img create {} failed: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Writes `bytes` at `offset` of an existing raw image (e.g. a stale partition table
/// that a deploy must replace).
pub fn write_disk_at(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let context = || {
        format!(
            "writing {} bytes at {offset} of {}",
            bytes.len(),
            path.display()
        )
    };
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(context)?;
    file.seek(SeekFrom::Start(offset)).with_context(context)?;
    file.write_all(bytes).with_context(context)
}

/// Fills `length` bytes at `offset` of a raw image with `byte`, without loading it all.
pub fn fill_disk(path: &Path, offset: u64, length: u64, byte: u8) -> Result<()> {
    let context = || format!("filling {length} bytes at {offset} of {}", path.display());
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .with_context(context)?;
    file.seek(SeekFrom::Start(offset)).with_context(context)?;
    let chunk = vec![byte; 1 << 20];
    let mut left = length;
    while left > 0 {
        let count = usize::try_from(left.min(1 << 20))?;
        file.write_all(&chunk[..count]).with_context(context)?;
        left -= u64::try_from(count)?;
    }
    Ok(())
}

/// Reads `length` bytes at `offset` of a raw image (to assert on what the guest wrote).
pub fn read_disk_at(path: &Path, offset: u64, length: usize) -> Result<Vec<u8>> {
    let context = || format!("reading {length} bytes at {offset} of {}", path.display());
    let mut file = File::open(path).with_context(context)?;
    file.seek(SeekFrom::Start(offset)).with_context(context)?;
    let mut bytes = vec![0; length];
    file.read_exact(&mut bytes).with_context(context)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_disk_is_sparse_and_sized() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk.img");
        create_raw_disk(&path, 1 << 30).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1 << 30);
        fill_disk(&path, 512, 3 << 20, 0xAB).unwrap();
        write_disk_at(&path, 510, &[0x55, 0xAA]).unwrap();
        let start = read_disk_at(&path, 0, 1024).unwrap();
        assert_eq!(&start[..510], &[0u8; 510][..]);
        assert_eq!(&start[510..514], &[0x55, 0xAA, 0xAB, 0xAB]);
        assert_eq!(read_disk_at(&path, 512 + (3 << 20), 1).unwrap(), [0]);
        assert!(read_disk_at(&path, (1 << 30) - 1, 2).is_err());
    }

    #[test]
    fn qcow2_disk_is_created() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("disk.qcow2");
        create_qcow2_disk(&path, 1 << 30).unwrap();
        let header = read_disk_at(&path, 0, 4).unwrap();
        assert_eq!(header, b"QFI\xfb");
    }
}

//! Unpacks a root-filesystem tarball (DRP's `tgz`, `txz`, `tar-zst`
//! images, once decompressed by the pipeline) into a freshly made
//! filesystem, as `tar --numeric-owner --xattrs --xattrs-include='*'
//! --acls -xpf` run as root would: every entry type, owners, modes with
//! setuid and sticky bits, nanosecond mtimes, xattrs (file capabilities,
//! SELinux labels), POSIX ACLs, sparse files with their holes.
//!
//! The archive is untrusted: every member lands inside the root, through
//! the installed system's one path resolver (`installed/`), whatever
//! symlinks earlier members made.
//!
//! ```text
//! Read (uncompressed tar) -> archive.rs (headers -> typed Member, bounded data reads)
//!                         -> unpack.rs (create by name in the resolved parent, then metadata)
//! header.rs: one header block, pax records, sparse maps (pure)   acl.rs: ACL text -> xattr
//! ```

mod acl;
mod archive;
#[cfg(test)]
mod gnu_tar_tests;
mod header;
#[cfg(test)]
mod tests;
mod unpack;

use std::io::Read;
use std::path::Path;

use anyhow::Result;

use crate::installed::RootDir;
use crate::pipeline::progress::Progress;

/// What an unpack created.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackSummary {
    /// Regular files (sparse ones included).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub hard_links: u64,
    /// Device nodes and FIFOs.
    pub special: u64,
    /// File data written (a sparse file's regions only).
    pub bytes: u64,
}

/// Extracts the uncompressed tar stream `archive` into the directory
/// `root` (the new root filesystem, mounted), `progress` told the bytes
/// of file data written so far.
pub fn unpack(
    archive: impl Read,
    root: &Path,
    progress: &mut dyn Progress,
) -> Result<UnpackSummary> {
    let root = RootDir::open(root)?;
    unpack::unpack_into(archive, &root, progress)
}

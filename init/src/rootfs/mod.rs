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
//!
//! Where it differs from GNU tar, on purpose:
//! - `..` anywhere in a member name or hard-link target is an error (GNU
//!   tar strips the name up to its last `..` and warns). A leading `/` is
//!   stripped with a warning, as GNU tar does; `./` is dropped.
//! - A member below an earlier symlink resolves inside the root, as the
//!   booted system would see it (GNU tar instead delays absolute and `..`
//!   symlinks behind placeholder files, so such members fail there).
//! - Anything but zeros after the end-of-archive blocks, or a header after
//!   a single zero block, is an error; GNU tar stops reading at the end.
//! - Names in a text-only ACL (`user:alice:r-x`) are looked up in the new
//!   root's `/etc/passwd` and `/etc/group`, not the deploy environment's;
//!   an ACL archived both as text and as its raw `system.posix_acl_*`
//!   xattr (`--xattrs-include='*'`) is set from the raw one.
//! - Directories missing from the archive are made 0755 root:root; their
//!   mtime is the time of extraction, as with GNU tar.
//! - `V` (volume label), `M` (multi-volume), `D` (dump directory) and
//!   other entry types GNU tar knows but a rootfs never holds are errors.

mod acl;
pub mod apply;
mod archive;
pub mod bootloader;
pub mod command;
pub mod curtin;
pub mod deploy;
#[cfg(test)]
mod gnu_tar_tests;
mod header;
pub mod layout;
pub mod stream;
#[cfg(test)]
mod tests;
pub mod tools;
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

/// `14015 files, 2114 directories, 1399 symlinks, 2 hard links, 8 special
/// files, 728.0 MiB of data`.
impl std::fmt::Display for UnpackSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} files, {} directories, {} symlinks, {} hard links, {} special files, {} of data",
            self.files,
            self.dirs,
            self.symlinks,
            self.hard_links,
            self.special,
            crate::text::human_size(self.bytes)
        )
    }
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

//! The optional P2P initrd (issue 18, BitTorrent mode): `aria2c` with the
//! loader and every library it links, nothing else. imprint's PID 1 runs
//! it as the swarm engine when `imprint.torrent=` asks for one; the base
//! initramfs (one static binary and modules) does not grow, and only
//! machines that deploy from a swarm fetch this. The boot loader
//! concatenates it after the base (`initrd initramfs.img` then `initrd
//! imprint-p2p.img` in iPXE; the DRP templates add it when
//! `imprint/torrent` is set), and the kernel unpacks both into one root, so
//! `/usr/bin/aria2c` appears in PID 1's root. Without it imprint warns and
//! reads over HTTP.
//!
//! The binary is the build machine's Debian `aria2` (`scripts/setup`
//! installs it); its libraries come from [`crate::elf::library_closure`],
//! which reads `PT_INTERP` and `DT_NEEDED` instead of running `ldd`:
//! nothing from the build machine runs, and the archive holds exactly what
//! the loader maps. Debian's aria2c links what it could use (libxml2 for
//! Metalink and XML-RPC, GnuTLS for HTTPS, libssh2 for SFTP, SQLite for
//! Firefox cookies, c-ares), and the loader refuses to start it without any
//! `DT_NEEDED` library, so the closure cannot be trimmed file by file; its
//! size is what a second initrd fetched only by swarm machines costs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cpio::CpioArchive;
use crate::elf::library_closure;

/// Where aria2c lands in the initrd: where imprint looks for it when it is
/// not on `PATH`.
pub const ARIA2C_PATH: &str = "/usr/bin/aria2c";

/// The initrd's file name beside `initramfs.img` (iPXE, the DRP tarball).
pub const P2P_INITRD_NAME: &str = "imprint-p2p.img";

/// Every file of the P2P initrd by its path in the image: `aria2c` (read
/// from `aria2c` on the build machine, stored at [`ARIA2C_PATH`]) and the
/// closure of its libraries and loader under `root`.
pub fn collect(aria2c: &Path, root: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let bytes = std::fs::read(aria2c).with_context(|| {
        format!(
            "reading {} (the aria2 package; scripts/setup installs it)",
            aria2c.display()
        )
    })?;
    let executables = BTreeMap::from([(ARIA2C_PATH.to_owned(), bytes)]);
    let mut files = library_closure(root, &executables)
        .with_context(|| format!("finding the libraries of {}", aria2c.display()))?;
    files.extend(executables);
    Ok(files)
}

/// The P2P initrd as a cpio archive: every file of [`collect`], all 0755
/// (libraries and the loader are mapped executable); the archive adds each
/// file's directories (0755) before it.
pub fn archive(aria2c: &Path, root: &Path) -> Result<CpioArchive> {
    let files = collect(aria2c, root)?;
    let mut archive = CpioArchive::new();
    for (path, bytes) in files {
        archive.add_file(path.trim_start_matches('/'), 0o755, bytes)?;
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_archive;

    #[test]
    fn holds_aria2c_its_loader_and_libraries_and_nothing_else() {
        let files = collect(Path::new("/usr/bin/aria2c"), Path::new("/")).unwrap();
        for path in [
            ARIA2C_PATH,
            "/lib64/ld-linux-x86-64.so.2",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib/x86_64-linux-gnu/libaria2.so.0",
            // A library of a library: libaria2 needs GnuTLS, which needs nettle.
            "/lib/x86_64-linux-gnu/libnettle.so.8",
        ] {
            assert!(files.contains_key(path), "{path} in {:?}", files.keys());
        }
        for path in files.keys() {
            assert!(
                path == ARIA2C_PATH
                    || path == "/lib64/ld-linux-x86-64.so.2"
                    || path.starts_with("/lib/x86_64-linux-gnu/")
                    || path.starts_with("/usr/lib/x86_64-linux-gnu/"),
                "{path} is neither aria2c nor a library"
            );
        }
    }

    #[test]
    fn is_reproducible_and_names_a_missing_aria2c() {
        let aria2c = Path::new("/usr/bin/aria2c");
        let first = archive(aria2c, Path::new("/"))
            .unwrap()
            .to_bytes(0)
            .unwrap();
        let second = archive(aria2c, Path::new("/"))
            .unwrap()
            .to_bytes(0)
            .unwrap();
        assert!(first == second, "two builds differ");
        let members = read_archive(&first).unwrap();
        // Directories come before what is in them.
        let position = |name: &str| members.iter().position(|m| m.name == name).unwrap();
        assert!(position("usr/bin") < position("usr/bin/aria2c"));
        assert!(position("lib64") < position("lib64/ld-linux-x86-64.so.2"));
        let err = format!(
            "{:#}",
            collect(Path::new("/nonexistent/aria2c"), Path::new("/")).unwrap_err()
        );
        assert!(
            err.contains("/nonexistent/aria2c") && err.contains("scripts/setup"),
            "{err}"
        );
        // aria2c without its libraries: the error names one and who needs it.
        let empty = tempfile::tempdir().unwrap();
        let err = format!("{:#}", collect(aria2c, empty.path()).unwrap_err());
        assert!(err.contains("/usr/bin/aria2c needs lib"), "{err}");
    }
}

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
//! `DT_NEEDED` library, so no file can simply be left out. One can be
//! replaced: libxml2 links ICU, whose data library (`libicudata.so.72`,
//! 31 MB, over half the initrd) holds only conversion tables and locale
//! data, which libxml2 consults for documents in encodings it does not know
//! itself. imprint drives aria2c over JSON-RPC with a `.torrent`, never
//! XML, so the initrd carries ICU's own stub data library in its place
//! (see [`icu_stub_source`]), built by the C compiler Rust already links
//! with: 18.0 MB compressed becomes 9.2 MB, 58 MB unpacked 27 MB.
//!
//! With `--kernel-root` and `--kver` it also carries the kernel's loop
//! driver ([`loop_module`], some 40 KB), for the scratch on the disk's tail
//! imprint uses when RAM has no room for the pieces.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result, bail, ensure};

use crate::cpio::CpioArchive;
use crate::elf::library_closure;

/// Where aria2c lands in the initrd: where imprint looks for it when it is
/// not on `PATH` (one constant, imprint's).
pub const ARIA2C_PATH: &str = imprint::source::swarm::ARIA2C_DEFAULT;

/// Where imprint loads the loop driver from, under
/// `/lib/modules/<release>/` (one constant, imprint's).
pub const LOOP_MODULE: &str = imprint::source::swarm::LOOP_MODULE;

/// The initrd's file name beside `initramfs.img` (iPXE, the DRP tarball).
pub const P2P_INITRD_NAME: &str = "imprint-p2p.img";

/// ICU's stub data library for ICU major version `major`, as C: ICU's
/// own `stubdata` (icu4c/source/stubdata/stubdata.cpp and stubdata.h),
/// "a valid, but empty ICU data library": the common-data header
/// (`headerSize` 32, magic `0xda 0x27`), a `UDataInfo` for a little-endian
/// ASCII-family build with 2-byte `UChar`s and the `ToCP` (table of
/// contents) format 1, and a table of no entries, exported under the
/// symbol `libicuuc` links against (`icudt72_dat` for ICU 72, the
/// `U_ICUDATA_ENTRY_POINT`). ICU then finds no built-in data and reports
/// `U_FILE_ACCESS_ERROR` to whoever asks for a converter or a locale; none
/// of aria2c's JSON-RPC or BitTorrent work asks.
pub fn icu_stub_source(major: u32) -> String {
    format!(
        r#"/* ICU {major}'s stub data library (icu4c/source/stubdata): a valid, empty ICU data library. */
#include <stdint.h>
struct data_info {{
    uint16_t size, reserved;
    uint8_t is_big_endian, charset_family, sizeof_uchar, reserved_byte;
    uint8_t data_format[4], format_version[4], data_version[4];
}};
struct icu_data_header {{
    uint16_t header_size;
    uint8_t magic1, magic2;
    struct data_info info;
    char padding[8];
    uint32_t count, reserved;
    int fake_name_and_data[4];
}};
__attribute__((visibility("default"), aligned(16)))
const struct icu_data_header icudt{major}_dat = {{
    32, 0xda, 0x27,
    {{sizeof(struct data_info), 0, 0, 0, 2, 0, {{0x54, 0x6f, 0x43, 0x50}}, {{1, 0, 0, 0}}, {{0, 0, 0, 0}}}},
    {{'s', 't', 'u', 'b', 'd', 'a', 't', 'a'}},
    0, 0,
    {{0, 0, 0, 0}},
}};
"#
    )
}

/// The ICU major version of a data library's path
/// (`/lib/x86_64-linux-gnu/libicudata.so.72` is 72).
fn icu_data_major(path: &str) -> Option<u32> {
    path.rsplit('/')
        .next()?
        .strip_prefix("libicudata.so.")?
        .parse()
        .ok()
}

/// Builds [`icu_stub_source`] into a shared library named `soname` with
/// `cc` (`$CC` if set): no libc, no build ID, the source from stdin so no
/// path of the build machine lands in the file.
fn build_icu_stub(major: u32, soname: &str) -> Result<Vec<u8>> {
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".to_owned());
    // Unique per call: tests build it from several threads at once.
    static CALLS: AtomicU32 = AtomicU32::new(0);
    let out = std::env::temp_dir().join(format!(
        "imprint-icu-stub-{}-{}.so",
        std::process::id(),
        CALLS.fetch_add(1, Ordering::Relaxed)
    ));
    let mut child = Command::new(&compiler)
        .args([
            "-shared",
            "-fPIC",
            "-nostdlib",
            "-O2",
            "-Wl,--build-id=none",
        ])
        .arg(format!("-Wl,-soname,{soname}"))
        .args(["-x", "c", "-", "-o"])
        .arg(&out)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {compiler} to build ICU's stub data library"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(icu_stub_source(major).as_bytes())
            .with_context(|| format!("writing the stub's source to {compiler}"))?;
    }
    let output = child
        .wait_with_output()
        .with_context(|| format!("waiting for {compiler}"))?;
    let bytes = std::fs::read(&out);
    let _ = std::fs::remove_file(&out);
    if !output.status.success() {
        bail!(
            "{compiler} failed to build ICU's stub data library: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    bytes.with_context(|| format!("reading {}", out.display()))
}

/// Every file of the P2P initrd by its path in the image: `aria2c` (read
/// from `aria2c` on the build machine, stored at [`ARIA2C_PATH`]) and the
/// closure of its libraries and loader under `root`, ICU's data library
/// replaced by its stub.
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
    for (path, bytes) in files.iter_mut() {
        if let Some(major) = icu_data_major(path) {
            let soname = path.rsplit('/').next().unwrap_or(path);
            let stub = build_icu_stub(major, soname)?;
            ensure!(
                crate::elf::elf_needs(&stub)?.needed.is_empty(),
                "the ICU stub built for {path} links libraries"
            );
            *bytes = stub;
        }
    }
    files.extend(executables);
    Ok(files)
}

/// The kernel whose loop driver the P2P initrd carries: imprint keeps a
/// swarm's pieces on the target's tail through a loop device when RAM has
/// no room for them (`source::swarm`), and Debian builds the driver as a
/// module, which the base initramfs does not carry.
pub struct LoopDriver<'a> {
    /// The unpacked kernel package (`lib/modules/<kver>/` inside).
    pub kernel_root: &'a Path,
    pub kver: &'a str,
}

/// The loop driver's file for `kernel`, at its path in the initrd (where
/// PID 1 loads it from), or `None` when the kernel has it built in.
pub fn loop_module(kernel: &LoopDriver) -> Result<Option<(String, Vec<u8>)>> {
    let dir = kernel.kernel_root.join("lib/modules").join(kernel.kver);
    let module = dir.join(LOOP_MODULE);
    match std::fs::read(&module) {
        Ok(bytes) => Ok(Some((
            format!("/lib/modules/{}/{LOOP_MODULE}", kernel.kver),
            bytes,
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
            ensure!(
                builtin.lines().any(|line| line.trim() == LOOP_MODULE),
                "kernel {} has no loop driver: neither {} nor {LOOP_MODULE} in modules.builtin \
                 (a compressed module is not supported; the P2P initrd needs the plain .ko)",
                kernel.kver,
                module.display()
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", module.display())),
    }
}

/// The P2P initrd as a cpio archive: every file of [`collect`], all 0755
/// (libraries and the loader are mapped executable), and the loop driver
/// of `kernel` when given; the archive adds each file's directories (0755)
/// before it.
pub fn archive(aria2c: &Path, root: &Path, kernel: Option<&LoopDriver>) -> Result<CpioArchive> {
    let mut files = collect(aria2c, root)?;
    if let Some(kernel) = kernel {
        files.extend(loop_module(kernel)?);
    }
    let mut archive = CpioArchive::new();
    for (path, bytes) in files {
        let mode = if path.ends_with(".ko") { 0o644 } else { 0o755 };
        archive.add_file(path.trim_start_matches('/'), mode, bytes)?;
    }
    Ok(archive)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::read_archive;

    #[test]
    fn carries_the_loop_driver_unless_the_kernel_has_it_built_in() {
        let root = tempfile::tempdir().unwrap();
        let kver = "6.1.0-57-amd64";
        let dir = root.path().join("lib/modules").join(kver);
        std::fs::create_dir_all(dir.join("kernel/drivers/block")).unwrap();
        let kernel = LoopDriver {
            kernel_root: root.path(),
            kver,
        };
        let error = loop_module(&kernel).unwrap_err().to_string();
        assert!(error.contains("has no loop driver"), "{error}");
        std::fs::write(
            dir.join("modules.builtin"),
            "kernel/drivers/block/loop.ko\n",
        )
        .unwrap();
        assert!(loop_module(&kernel).unwrap().is_none());
        std::fs::write(dir.join(LOOP_MODULE), b"\x7fELF module").unwrap();
        let (path, bytes) = loop_module(&kernel).unwrap().unwrap();
        assert_eq!(
            path,
            format!("/lib/modules/{kver}/kernel/drivers/block/loop.ko")
        );
        assert_eq!(bytes, b"\x7fELF module");
        // Mode 0644 in the archive, beside aria2c's files.
        let archive = archive(Path::new(ARIA2C_PATH), Path::new("/"), Some(&kernel)).unwrap();
        let cpio = archive.to_bytes(0).unwrap();
        let member = read_archive(&cpio)
            .unwrap()
            .into_iter()
            .find(|m| m.name == path.trim_start_matches('/'))
            .expect("the module is in the archive");
        assert_eq!(member.mode & 0o777, 0o644);
    }

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
    fn icu_data_is_the_stub_exporting_the_symbol_libicuuc_needs() {
        assert_eq!(
            icu_data_major("/lib/x86_64-linux-gnu/libicudata.so.72"),
            Some(72)
        );
        assert_eq!(icu_data_major("/lib/x86_64-linux-gnu/libicuuc.so.72"), None);
        let files = collect(Path::new("/usr/bin/aria2c"), Path::new("/")).unwrap();
        let (path, stub) = files
            .iter()
            .find(|(path, _)| icu_data_major(path).is_some())
            .expect("Debian's aria2c links ICU through libxml2");
        let real = std::fs::read(path).unwrap();
        assert!(
            stub.len() < 64 << 10 && real.len() > 10 << 20,
            "{path}: stub {} bytes, real {}",
            stub.len(),
            real.len()
        );
        // The stub exports what the real one does: icudt<major>_dat.
        let symbol = format!("icudt{}_dat", icu_data_major(path).unwrap());
        let exported = |bytes: &[u8]| bytes.windows(symbol.len()).any(|w| w == symbol.as_bytes());
        assert!(exported(&real) && exported(stub), "{symbol}");
        // ICU's stubdata header: size 32, magic 0xda 0x27, "ToCP", no entries.
        let source = icu_stub_source(72);
        for needle in ["icudt72_dat", "32, 0xda, 0x27", "{0x54, 0x6f, 0x43, 0x50}"] {
            assert!(source.contains(needle), "{needle}");
        }
    }

    #[test]
    fn is_reproducible_and_names_a_missing_aria2c() {
        let aria2c = Path::new("/usr/bin/aria2c");
        let first = archive(aria2c, Path::new("/"), None)
            .unwrap()
            .to_bytes(0)
            .unwrap();
        let second = archive(aria2c, Path::new("/"), None)
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

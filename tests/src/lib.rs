//! Shared helpers for the VM tests: where the boot artifacts are, test
//! images, the parsed `IMPRINT-RESULT:` line, and the golden test OS
//! (`scripts/golden-os`) with its parsed `GOLDEN-OS:` report; [`drp`]: a
//! Digital Rebar stand-in set up for a PXE boot; [`fleet`]: the `imprint`
//! CLI run as clients in the network-namespace fleet lab.
#![forbid(unsafe_code)]

pub mod drp;
pub mod fleet;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use imprint_qemu::{Disk, Nic, Vm};

use sha2::{Digest, Sha256};

/// The boot artifacts `scripts/build` put in `out/`.
#[derive(Debug)]
pub struct Artifacts {
    /// The kernel QEMU boots: the PVH `vmlinux` extracted from `out/vmlinuz`
    /// (about 3 s to PID 1 under TCG instead of 7), or the bzImage itself
    /// when extraction fails.
    pub kernel: PathBuf,
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
    pub out_dir: PathBuf,
    logs: PathBuf,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

impl Artifacts {
    /// Finds the artifacts once per test binary. Missing artifacts fail the
    /// test: the VM tests must never pass by not running.
    pub fn get() -> &'static Artifacts {
        static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
        ARTIFACTS.get_or_init(|| {
            let root = repo_root();
            let out_dir = root.join("out");
            let bzimage = out_dir.join("vmlinuz");
            let initramfs = out_dir.join("initramfs.img");
            for path in [&bzimage, &initramfs] {
                assert!(
                    path.exists(),
                    "{} is missing: run scripts/build first",
                    path.display()
                );
            }
            let cache = root.join("target/vm-cache");
            let kernel = match imprint_qemu::fast_boot_kernel(&bzimage, &cache) {
                Ok(vmlinux) => vmlinux,
                Err(e) => {
                    eprintln!("booting the bzImage (slower): no PVH vmlinux: {e:#}");
                    bzimage.clone()
                }
            };
            let logs = root.join("target/vm-logs");
            std::fs::create_dir_all(&logs).expect("creating target/vm-logs");
            Artifacts {
                kernel,
                bzimage,
                initramfs,
                out_dir,
                logs,
            }
        })
    }

    /// Where a test's serial console is kept, for reading after a failure.
    pub fn log_path(&self, test: &str) -> PathBuf {
        self.logs.join(format!("{test}.log"))
    }
}

/// The golden test OS's files in `out/golden/` (made by `scripts/golden-os`,
/// which `scripts/build` runs). A missing file fails the test, as
/// [`Artifacts::get`] does.
fn golden_file(name: &str) -> PathBuf {
    let path = repo_root().join("out/golden").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build (or scripts/golden-os) first",
        path.display()
    );
    path
}

/// The golden test OS disk image, `out/golden/disk.img`: GPT, an ESP whose
/// `\EFI\BOOT\BOOTX64.EFI` is a UKI, an ext4 root with a Debian-like tree.
/// Boot a copy: it is shared by every test.
pub fn golden_image() -> PathBuf {
    golden_file("disk.img")
}

/// The golden OS's initrd (the one inside the UKI and under `/boot`), for
/// booting its kernel directly as a kexec would.
pub fn golden_initrd() -> PathBuf {
    golden_file("initrd.img")
}

/// The UUID of the golden image's root filesystem (fixed by the script).
pub fn golden_root_uuid() -> String {
    let path = golden_file("root-uuid");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
        .trim()
        .to_owned()
}

/// What the golden OS reported about the root it booted, parsed from its
/// `GOLDEN-OS:` console lines (golden/src/facts.rs prints them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GoldenReport {
    /// `/proc/cmdline`, trimmed.
    pub cmdline: String,
    /// `/etc/hostname`, trimmed, or `none`.
    pub hostname: String,
    /// sha256 hex of `/root/.ssh/authorized_keys`, or `none`.
    pub keys: String,
    /// `set`, `empty` or `missing`.
    pub machine_id: String,
    /// Comma-separated network configuration files, or `none`.
    pub network: String,
    /// Comma-separated NoCloud seed files, or `none`.
    pub cloud_init: String,
    /// `present` or `none`.
    pub drp_agent: String,
    /// The UUID of the filesystem mounted as the root.
    pub root_uuid: String,
}

impl GoldenReport {
    /// The last complete report on `console`: from a `GOLDEN-OS: booted`
    /// line to `GOLDEN-OS: end` with every fact in between. `None` until the
    /// `end` line is there (or when a fact is missing). Kernel timestamps
    /// or carriage returns around the lines do not matter; a console that
    /// shows several boots gives the latest.
    pub fn from_console(console: &str) -> Option<GoldenReport> {
        let mut complete = None;
        let mut current: Option<Vec<(String, String)>> = None;
        for line in console.lines() {
            let Some((_, rest)) = line.split_once("GOLDEN-OS: ") else {
                continue;
            };
            let rest = rest.trim_end();
            if let Some(cmdline) = rest.strip_prefix("booted cmdline=") {
                current = Some(vec![("cmdline".to_owned(), cmdline.to_owned())]);
            } else if rest == "end" {
                if let Some(facts) = current.take() {
                    complete = GoldenReport::from_facts(&facts);
                }
            } else if rest.starts_with("error") {
                current = None;
            } else if let Some(facts) = current.as_mut() {
                if let Some(root) = rest.strip_prefix("root=") {
                    // root=<device> fstype=<fs> uuid=<uuid>
                    let uuid = root.split(' ').find_map(|f| f.strip_prefix("uuid="));
                    facts.push(("uuid".to_owned(), uuid.unwrap_or_default().to_owned()));
                } else if let Some((name, value)) = rest.split_once('=') {
                    facts.push((name.to_owned(), value.to_owned()));
                }
            }
        }
        complete
    }

    fn from_facts(facts: &[(String, String)]) -> Option<GoldenReport> {
        let get = |name: &str| {
            facts
                .iter()
                .rev()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        };
        Some(GoldenReport {
            cmdline: get("cmdline")?,
            hostname: get("hostname")?,
            keys: get("keys")?,
            machine_id: get("machine-id")?,
            network: get("network")?,
            cloud_init: get("cloud-init")?,
            drp_agent: get("drp-agent")?,
            root_uuid: get("uuid")?,
        })
    }
}

/// Waits for the golden OS's report on `vm`'s console, like [`Vm::expect`].
/// Panics on `GOLDEN-OS: error …`, on timeout and on an incomplete report,
/// quoting the console log's path.
pub fn wait_golden(vm: &Vm, timeout: Duration) -> GoldenReport {
    let (which, line) = vm
        .expect_any(&["GOLDEN-OS: end", "GOLDEN-OS: error"], timeout)
        .unwrap_or_else(|e| panic!("waiting for the golden OS's report: {e:#}"));
    assert_eq!(
        which,
        0,
        "the golden OS failed: {} (console {})",
        line.trim_end(),
        vm.console_log_path().display()
    );
    GoldenReport::from_console(&vm.console()).unwrap_or_else(|| {
        panic!(
            "the golden OS's report is incomplete (console {})",
            vm.console_log_path().display()
        )
    })
}

/// Boot to result under TCG takes ~10 s; transfers through QEMU's user
/// network add a few more. Generous, for a loaded CI machine.
pub const DEPLOY_TIMEOUT: Duration = Duration::from_secs(240);

/// Boots imprint with `params` on its command line (plus a serial console,
/// `panic=-1` and power-off on success and failure, so every run ends).
pub fn boot_imprint(name: &str, params: &str, disks: Vec<Disk>) -> Vm {
    boot_imprint_with_initrd(name, params, disks, &Artifacts::get().initramfs)
}

/// [`boot_imprint`] with another initrd: the base initramfs with a second
/// one concatenated, as a boot loader given two `initrd` lines does.
pub fn boot_imprint_with_initrd(name: &str, params: &str, disks: Vec<Disk>, initrd: &Path) -> Vm {
    let artifacts = Artifacts::get();
    let mut builder = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(initrd)
        .append(format!(
            "console=ttyS0 panic=-1 imprint.on-success=poweroff imprint.on-failure=poweroff {params}"
        ))
        .memory_mib(1024)
        .nic(Nic::user())
        .console_log(artifacts.log_path(name));
    for disk in disks {
        builder = builder.disk(disk);
    }
    builder.start().expect("starting qemu")
}

/// A port on the host's loopback that was free a moment ago (for QEMU's
/// `hostfwd`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .expect("its address")
        .port()
}

/// `GET /status` of a guest's status endpoint through a host forward on
/// `host_port`, retried until PID 1 answers; the whole HTTP response.
pub fn get_status(host_port: u16, timeout: Duration) -> String {
    use std::io::Read as _;
    let deadline = std::time::Instant::now() + timeout;
    let mut last = String::new();
    while std::time::Instant::now() < deadline {
        let attempt = (|| -> std::io::Result<String> {
            let mut stream = std::net::TcpStream::connect(("127.0.0.1", host_port))?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(b"GET /status HTTP/1.0\r\nHost: machine\r\n\r\n")?;
            let mut response = String::new();
            stream.read_to_string(&mut response)?;
            Ok(response)
        })();
        match attempt {
            Ok(response) if response.starts_with("HTTP/1.") => return response,
            Ok(response) => last = format!("answer {response:?}"),
            Err(e) => last = e.to_string(),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("no answer from /status through 127.0.0.1:{host_port}: {last}");
}

/// Waits for the result line and for the VM to power off.
pub fn finish(vm: &Vm) -> ResultLine {
    let line = vm
        .expect("IMPRINT-RESULT:", DEPLOY_TIMEOUT)
        .expect("a result line");
    vm.wait_exit(Duration::from_secs(60))
        .expect("the VM powers off after the result");
    ResultLine::parse(&line)
}

/// Runs `program args` with `input` on stdin and returns its stdout.
pub fn filter(program: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {program} (scripts/setup installs it): {e}"));
    let mut stdin = child.stdin.take().expect("piped stdin");
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("waiting for the filter");
    feeder
        .join()
        .expect("feeder thread")
        .expect("writing to the filter");
    assert!(out.status.success(), "{program} {args:?} failed");
    out.stdout
}

/// A real GPT disk image of `size` bytes: one Linux partition from 1 MiB to
/// the end holding an ext4 filesystem made from `files` (name, contents).
/// Made without root: `sfdisk` writes the table, `mkfs.ext4 -d -E offset=`
/// writes the filesystem inside the image file.
pub fn gpt_ext4_image(size: u64, files: &[(&str, &[u8])]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).expect("root dir");
    write_tree(&root, files);
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)
        .and_then(|f| f.set_len(size))
        .expect("image file");
    let table = "label: gpt\nstart=2048, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n";
    sfdisk(&image, table);
    // The backup GPT takes the last 33 sectors; leave them out of the filesystem.
    let fs_kib = (size - (1 << 20) - (64 << 10)) / 1024;
    let out = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "golden",
            "-E",
            "offset=1048576,root_owner=0:0",
            "-d",
        ])
        .arg(&root)
        .arg(&image)
        .arg(format!("{fs_kib}k"))
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .output()
        .expect("running mkfs.ext4 (e2fsprogs)");
    assert!(
        out.status.success(),
        "mkfs.ext4: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&image).expect("reading the image")
}

/// A filesystem for [`gpt_image`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fs {
    Ext4,
    Vfat,
    /// mkfs.xfs wants at least 300 MiB.
    Xfs,
}

/// One partition of [`gpt_image`].
#[derive(Debug, Clone, Copy)]
pub struct Part<'a> {
    pub name: &'a str,
    /// GPT type GUID, e.g. [`ESP_TYPE`] or [`LINUX_ROOT_X86_64`].
    pub type_guid: &'a str,
    pub size_mib: u64,
    pub fs: Fs,
    pub label: &'a str,
    /// (path inside the filesystem, contents)
    pub files: &'a [(&'a str, &'a [u8])],
}

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const LINUX_DATA: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
/// The Discoverable Partitions Specification's root type for x86-64.
pub const LINUX_ROOT_X86_64: &str = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709";

/// A GPT disk image with the given partitions (1 MiB aligned, in order),
/// each holding a real filesystem with `files`, made without root:
/// `sfdisk` for the table, `mkfs.ext4 -d`, `mkfs.vfat` + `mcopy`, or
/// `mkfs.xfs -p` (a protofile) for the filesystems, copied in at their offsets.
pub fn gpt_image(parts: &[Part<'_>]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let total_mib = 2 + parts.iter().map(|p| p.size_mib).sum::<u64>();
    let mut table = String::from("label: gpt\n");
    let mut start_mib = 1;
    let mut image = vec![0u8; usize::try_from(total_mib << 20).expect("fits")];
    for (i, part) in parts.iter().enumerate() {
        table += &format!(
            "start={}, size={}, type={}, name={}\n",
            start_mib * 2048,
            part.size_mib * 2048,
            part.type_guid,
            part.name
        );
        let fs = make_fs(dir.path(), i, part);
        let offset = usize::try_from(start_mib << 20).expect("fits");
        image[offset..offset + fs.len()].copy_from_slice(&fs);
        start_mib += part.size_mib;
    }
    let path = dir.path().join("disk.img");
    std::fs::write(&path, &image).expect("image file");
    sfdisk(&path, &table);
    std::fs::read(&path).expect("reading the image")
}

fn make_fs(dir: &Path, index: usize, part: &Part<'_>) -> Vec<u8> {
    let root = dir.join(format!("root{index}"));
    std::fs::create_dir_all(&root).expect("root dir");
    write_tree(&root, part.files);
    let file = dir.join(format!("fs{index}.img"));
    std::fs::File::create(&file)
        .and_then(|f| f.set_len(part.size_mib << 20))
        .expect("fs file");
    let run = |cmd: &mut Command| {
        let out = cmd.output().expect("running mkfs");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    match part.fs {
        Fs::Ext4 => run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", part.label, "-E", "root_owner=0:0", "-d"])
            .arg(&root)
            .arg(&file)
            .env("E2FSPROGS_FAKE_TIME", "1700000000")),
        Fs::Vfat => {
            run(Command::new("mkfs.vfat")
                .args(["-n", part.label])
                .arg(&file));
            for entry in std::fs::read_dir(&root).expect("root dir") {
                let entry = entry.expect("entry");
                run(Command::new("mcopy")
                    .args(["-s", "-i"])
                    .arg(&file)
                    .arg(entry.path())
                    .arg("::/"));
            }
        }
        Fs::Xfs => {
            let proto = dir.join(format!("proto{index}"));
            std::fs::write(&proto, xfs_protofile(&root)).expect("protofile");
            run(Command::new("mkfs.xfs")
                .args(["-q", "-f", "-L", part.label, "-p"])
                .arg(&proto)
                .arg(&file));
        }
    }
    std::fs::read(&file).expect("reading the filesystem")
}

/// mkfs.xfs's protofile for the tree at `dir` (root-owned, 0755 dirs, 0644 files).
fn xfs_protofile(dir: &Path) -> String {
    fn entries(dir: &Path, out: &mut String) {
        let mut list: Vec<_> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .collect();
        list.sort();
        for path in list {
            let name = path
                .file_name()
                .expect("name")
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                *out += &format!("{name} d--755 0 0\n");
                entries(&path, out);
                *out += "$\n";
            } else {
                *out += &format!("{name} ---644 0 0 {}\n", path.display());
            }
        }
    }
    let mut out = String::from("/dev/null\n0 0\nd--755 0 0\n");
    entries(dir, &mut out);
    out + "$\n"
}

/// Writes `sfdisk`'s script `table` onto the image file at `path`.
fn sfdisk(path: &Path, table: &str) {
    let out = Command::new("sfdisk")
        .arg("--quiet")
        .arg(path)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(table.as_bytes())?;
            child.wait()
        })
        .expect("running sfdisk (util-linux)");
    assert!(out.success(), "sfdisk failed on {table}");
}

/// Creates `files` (path inside, contents) under `root`.
fn write_tree(root: &Path, files: &[(&str, &[u8])]) {
    for (name, contents) in files {
        let path = root.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
        std::fs::write(path, contents).expect("file");
    }
}

/// `sfdisk --dump` of a disk image: Some(table) when it has a partition table.
pub fn partition_table(path: &Path) -> Option<String> {
    let out = Command::new("sfdisk")
        .arg("--dump")
        .arg(path)
        .output()
        .expect("running sfdisk");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The parsed result line.
#[derive(Debug, Clone, PartialEq)]
pub enum ResultLine {
    Ok {
        bytes: u64,
        sha256: String,
        seconds: f64,
    },
    Error(String),
}

impl ResultLine {
    /// Parses `IMPRINT-RESULT: ok bytes=… sha256=… seconds=…` or
    /// `IMPRINT-RESULT: error: …` anywhere in `line`; panics on anything else.
    pub fn parse(line: &str) -> ResultLine {
        let (_, rest) = line
            .split_once("IMPRINT-RESULT: ")
            .unwrap_or_else(|| panic!("not a result line: {line}"));
        let rest = rest.trim_end();
        if let Some(message) = rest.strip_prefix("error: ") {
            return ResultLine::Error(message.to_owned());
        }
        let fields = rest
            .strip_prefix("ok ")
            .unwrap_or_else(|| panic!("malformed result line: {line}"));
        let field = |name: &str| {
            fields
                .split(' ')
                .find_map(|f| f.strip_prefix(name).and_then(|f| f.strip_prefix('=')))
                .unwrap_or_else(|| panic!("result line lacks {name}=: {line}"))
                .to_owned()
        };
        ResultLine::Ok {
            bytes: field("bytes").parse().expect("bytes= is a number"),
            sha256: field("sha256"),
            seconds: field("seconds").parse().expect("seconds= is a number"),
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A deterministic test image of `len` bytes: pseudo-random runs separated
/// by long zero runs, like a real disk image with free space.
pub fn test_image(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        // xorshift64*: fast, good enough, no dependency.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut image = vec![0u8; len];
    let mut pos = 0;
    while pos < len {
        let data_run = usize::try_from(next() % (3 << 20)).unwrap_or(0) + 1;
        let zero_run = usize::try_from(next() % (2 << 20)).unwrap_or(0);
        let end = (pos + data_run).min(len);
        for chunk in image[pos..end].chunks_mut(8) {
            let bytes = next().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
        pos = end + zero_run;
    }
    image
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ok_and_error_lines() {
        assert_eq!(
            ResultLine::parse("[  5.1] IMPRINT-RESULT: ok bytes=12 sha256=ab seconds=1.50\r"),
            ResultLine::Ok {
                bytes: 12,
                sha256: "ab".into(),
                seconds: 1.5
            }
        );
        assert_eq!(
            ResultLine::parse("IMPRINT-RESULT: error: GET x: HTTP 404 Not Found"),
            ResultLine::Error("GET x: HTTP 404 Not Found".into())
        );
    }

    const GOLDEN_BOOT: &str = "\
[    3.2] EXT4-fs (vda2): mounted filesystem
GOLDEN-OS: booted cmdline=root=UUID=u-1 ro golden.entry=uki\r
imprint: loaded virtio_blk
GOLDEN-OS: root=/dev/vda2 fstype=ext4 uuid=u-1\r
GOLDEN-OS: hostname=golden
GOLDEN-OS: keys=none
GOLDEN-OS: machine-id=set
GOLDEN-OS: network=/etc/network/interfaces.d/50-imprint,/etc/systemd/network/a.link
GOLDEN-OS: cloud-init=none
GOLDEN-OS: drp-agent=present
";

    #[test]
    fn golden_report_needs_the_end_line() {
        assert_eq!(GoldenReport::from_console(GOLDEN_BOOT), None);
        let report =
            GoldenReport::from_console(&format!("{GOLDEN_BOOT}GOLDEN-OS: end\r\n")).unwrap();
        assert_eq!(
            report,
            GoldenReport {
                cmdline: "root=UUID=u-1 ro golden.entry=uki".into(),
                hostname: "golden".into(),
                keys: "none".into(),
                machine_id: "set".into(),
                network: "/etc/network/interfaces.d/50-imprint,/etc/systemd/network/a.link".into(),
                cloud_init: "none".into(),
                drp_agent: "present".into(),
                root_uuid: "u-1".into(),
            }
        );
    }

    #[test]
    fn golden_report_is_the_latest_complete_one() {
        let second = GOLDEN_BOOT
            .replace("hostname=golden", "hostname=node-7")
            .replace("golden.entry=uki", "golden.entry=bls");
        let console = format!("{GOLDEN_BOOT}GOLDEN-OS: end\n{second}GOLDEN-OS: end\n");
        let report = GoldenReport::from_console(&console).unwrap();
        assert_eq!(report.hostname, "node-7");
        assert_eq!(report.cmdline, "root=UUID=u-1 ro golden.entry=bls");
        // A second boot that has not finished yet does not hide the first.
        let console = format!("{GOLDEN_BOOT}GOLDEN-OS: end\n{second}");
        assert_eq!(
            GoldenReport::from_console(&console).unwrap().hostname,
            "golden"
        );
        // An error ends a boot without a report.
        let failed = "GOLDEN-OS: booted cmdline=x\nGOLDEN-OS: error no root=\nGOLDEN-OS: end\n";
        assert_eq!(GoldenReport::from_console(failed), None);
    }

    #[test]
    fn gpt_image_has_a_table_and_a_filesystem() {
        let image = gpt_ext4_image(16 << 20, &[("etc/hostname", b"golden\n")]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, &image).unwrap();
        let table = partition_table(&path).expect("a partition table");
        assert!(table.contains("label: gpt"), "{table}");
        assert!(table.contains("name=\"root\""), "{table}");
        std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
        assert_eq!(partition_table(&path), None);
    }

    #[test]
    fn gpt_image_with_esp_and_roots() {
        let image = gpt_image(&[
            Part {
                name: "esp",
                type_guid: ESP_TYPE,
                size_mib: 8,
                fs: Fs::Vfat,
                label: "ESP",
                files: &[("EFI/BOOT/x.txt", b"x")],
            },
            Part {
                name: "root",
                type_guid: LINUX_ROOT_X86_64,
                size_mib: 16,
                fs: Fs::Ext4,
                label: "root",
                files: &[("etc/os-release", b"ID=test\n")],
            },
        ]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.img");
        std::fs::write(&path, &image).unwrap();
        let table = partition_table(&path).expect("a partition table");
        assert!(
            table.contains("name=\"esp\"") && table.contains("name=\"root\""),
            "{table}"
        );
        assert_eq!(
            &image[(9 << 20) + 1080..(9 << 20) + 1082],
            &[0x53, 0xef],
            "ext4 magic at the root partition"
        );
    }

    #[test]
    fn test_image_is_deterministic_with_zero_runs() {
        let a = test_image(8 << 20, 7);
        assert_eq!(a, test_image(8 << 20, 7));
        assert_ne!(a, test_image(8 << 20, 8));
        let zero_blocks = a.chunks(4096).filter(|c| c.iter().all(|b| *b == 0)).count();
        assert!(
            zero_blocks > 100 && zero_blocks < 2048 - 100,
            "{zero_blocks} zero blocks"
        );
    }
}

#[cfg(test)]
mod xfs_tests {
    use super::*;

    #[test]
    fn gpt_image_with_an_xfs_root() {
        let image = gpt_image(&[Part {
            name: "root",
            type_guid: LINUX_DATA,
            size_mib: 300,
            fs: Fs::Xfs,
            label: "xroot",
            files: &[
                ("etc/os-release", b"ID=test\n"),
                ("etc/hostname", b"golden\n"),
            ],
        }]);
        assert_eq!(&image[1 << 20..(1 << 20) + 4], b"XFSB");
    }
}

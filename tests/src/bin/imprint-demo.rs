//! `scripts/demo`: make a sample golden image (a real ext4 filesystem),
//! serve it over HTTP, boot imprint in a VM that deploys it onto a virtual
//! disk, and show the result with timings. Exits non-zero if anything fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{Artifacts, ResultLine, repo_root, sha256_hex};

const IMAGE_SIZE: &str = "256M";
const DISK_SIZE: u64 = 1 << 30;

fn main() {
    if let Err(e) = run() {
        eprintln!("demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let work = repo_root().join("target/demo");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let image = make_golden_image(&work)?;
    let image_bytes =
        std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    println!(
        "demo: golden image {} ({} MiB ext4, sha256 {})",
        image.display(),
        image_bytes.len() >> 20,
        sha256_hex(&image_bytes)
    );

    let server = FixtureServer::start()?;
    server.add_file_from_disk("golden.raw", &image)?;
    let disk = work.join("disk.raw");
    let _ = std::fs::remove_file(&disk);
    imprint_qemu::create_raw_disk(&disk, DISK_SIZE)?;

    let artifacts = Artifacts::get();
    let append = format!(
        "console=ttyS0 panic=-1 imprint.url={} imprint.disk=/dev/vda imprint.on-success=poweroff imprint.on-failure=poweroff",
        server.guest_url("golden.raw")
    );
    println!(
        "demo: booting {} + {}",
        artifacts.kernel.display(),
        artifacts.initramfs.display()
    );
    println!("demo: kernel command line: {append}");
    let started = Instant::now();
    let vm = Vm::builder()
        .kernel(&artifacts.kernel)
        .initrd(&artifacts.initramfs)
        .append(append)
        .memory_mib(1024)
        .disk(Disk::new(&disk))
        .nic(Nic::user())
        .console_log(work.join("console.log"))
        .start()?;

    let line = follow_console(&vm, Duration::from_secs(300))?;
    let boot_to_result = started.elapsed();
    vm.wait_exit(Duration::from_secs(60))?;

    let ResultLine::Ok {
        bytes,
        sha256,
        seconds,
    } = ResultLine::parse(&line)
    else {
        bail!(
            "the deploy failed: {line} (console: {})",
            vm.console_log_path().display()
        );
    };
    let written = read_prefix(&disk, bytes)?;
    ensure!(
        sha256 == sha256_hex(&image_bytes),
        "reported sha256 {sha256} is not the image's"
    );
    ensure!(written == image_bytes, "the disk does not hold the image");
    println!(
        "demo: ok: {} MiB streamed in {seconds:.2} s; VM start to result {:.1} s (QEMU without KVM)",
        bytes >> 20,
        boot_to_result.as_secs_f64()
    );
    println!("demo: the disk holds the image byte for byte (sha256 {sha256})");
    if let Ok(out) = Command::new("debugfs")
        .args(["-R", "cat /etc/os-release"])
        .arg(&disk)
        .output()
    {
        println!("demo: /etc/os-release on the deployed disk, read with debugfs:");
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    Ok(())
}

/// Prints imprint's own console lines as they come, until the result line.
fn follow_console(vm: &Vm, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    let mut shown = 0;
    loop {
        let console = vm.console();
        let complete = console.rfind('\n').map_or(0, |i| i + 1);
        for line in console[shown..complete].lines() {
            let line = line.trim_end();
            if line.starts_with("imprint:") || line.contains("IMPRINT-RESULT:") {
                println!("  | {line}");
            }
            if line.contains("IMPRINT-RESULT:") {
                return Ok(line.to_owned());
            }
        }
        shown = complete;
        if vm.has_exited() {
            bail!(
                "the VM stopped without a result line (console: {})",
                vm.console_log_path().display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "no result line after {timeout:?} (console: {})",
                vm.console_log_path().display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn read_prefix(path: &Path, len: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut data = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(len).read_to_end(&mut data))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(data)
}

/// A real filesystem made without root: `mkfs.ext4 -d` copies a directory
/// tree into the new filesystem. The free space is zeros, like a real image.
fn make_golden_image(work: &Path) -> Result<PathBuf> {
    let root = work.join("golden-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("etc"))?;
    std::fs::write(
        root.join("etc/os-release"),
        "PRETTY_NAME=\"imprint demo golden image\"\nID=imprint-demo\nVERSION_ID=1\n",
    )?;
    std::fs::write(root.join("etc/hostname"), "golden\n")?;
    // Some real content: the boot artifacts themselves and the docs.
    std::fs::create_dir_all(root.join("opt/imprint"))?;
    let repo = repo_root();
    for file in [
        "out/imprint",
        "out/initramfs.img",
        "out/vmlinuz",
        "README.md",
    ] {
        let from = repo.join(file);
        let name = from.file_name().context("artifact has a file name")?;
        std::fs::copy(&from, root.join("opt/imprint").join(name))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    let image = work.join("golden.raw");
    let _ = std::fs::remove_file(&image);
    let status = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "golden", "-E", "root_owner=0:0", "-d"])
        .arg(&root)
        .arg(&image)
        .arg(IMAGE_SIZE)
        .env("E2FSPROGS_FAKE_TIME", "1700000000")
        .status()
        .context("running mkfs.ext4 (e2fsprogs)")?;
    ensure!(
        status.success(),
        "mkfs.ext4 failed to build {}",
        image.display()
    );
    Ok(image)
}

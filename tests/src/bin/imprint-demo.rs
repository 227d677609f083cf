//! `scripts/demo`: serve the golden test OS image (`out/golden/disk.img`,
//! made by `scripts/golden-os`) zstd-compressed over HTTP, boot imprint in a
//! VM that deploys it onto a virtual disk with a hostname of its own, then
//! boot that disk under UEFI firmware and show what the deployed machine
//! reports about itself, with timings. Exits non-zero if anything fails.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use imprint_qemu::http::FixtureServer;
use imprint_qemu::{Disk, Nic, Vm};
use imprint_vm_tests::{
    Artifacts, GoldenReport, ResultLine, filter, golden_image, repo_root, sha256_hex,
};

const DISK_SIZE: u64 = 1 << 30;
const HOSTNAME: &str = "demo-01";

fn main() {
    if let Err(e) = run() {
        eprintln!("demo: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let work = repo_root().join("target/demo");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let image = golden_image();
    let image_bytes =
        std::fs::read(&image).with_context(|| format!("reading {}", image.display()))?;
    let compressed = filter("zstd", &["-q", "-c"], &image_bytes);
    println!(
        "demo: golden image {} ({} MiB GPT disk: ESP with a UKI, ext4 Debian-like root; sha256 {}), served as {} KiB of zstd",
        image.display(),
        image_bytes.len() >> 20,
        sha256_hex(&image_bytes),
        compressed.len() >> 10
    );

    let server = FixtureServer::start()?;
    server.add_file("golden.img.zst", compressed);
    let disk = work.join("disk.raw");
    let _ = std::fs::remove_file(&disk);
    imprint_qemu::create_raw_disk(&disk, DISK_SIZE)?;

    let artifacts = Artifacts::get();
    let append = format!(
        "console=ttyS0 panic=-1 imprint.url={} imprint.disk=/dev/vda imprint.hostname={HOSTNAME} imprint.on-success=poweroff imprint.on-failure=poweroff",
        server.guest_url("golden.img.zst")
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
    ensure!(
        sha256 == sha256_hex(&image_bytes),
        "reported sha256 {sha256} is not the image's"
    );
    // The first MiB holds the GPT, which imprint moved to fit the larger
    // disk, and the root partition got the hostname; the ESP is untouched.
    let esp: std::ops::Range<usize> = 1 << 20..33 << 20;
    let written = read_prefix(&disk, 33 << 20)?;
    ensure!(
        written[esp.clone()] == image_bytes[esp],
        "the deployed ESP differs from the image's"
    );
    println!(
        "demo: ok: {} MiB streamed in {seconds:.2} s; VM start to result {:.1} s (QEMU without KVM)",
        bytes >> 20,
        boot_to_result.as_secs_f64()
    );
    println!(
        "demo: the disk got the image as served (sha256 {sha256}); the ESP is byte for byte the image's"
    );

    println!("demo: booting the deployed disk under UEFI firmware (OVMF), no kernel given");
    let started = Instant::now();
    let vm = Vm::builder()
        .uefi()
        .disk(Disk::new(&disk))
        .console_log(work.join("console-deployed.log"))
        .start()?;
    let report = imprint_vm_tests::wait_golden(&vm, Duration::from_secs(300));
    vm.wait_exit(Duration::from_secs(60))?;
    for line in vm.console().lines().filter(|l| l.contains("GOLDEN-OS:")) {
        println!("  | {}", line.trim_end());
    }
    show_deployed(&report, started.elapsed())
}

/// The deployed machine booted and found the identity imprint gave it.
fn show_deployed(report: &GoldenReport, elapsed: Duration) -> Result<()> {
    ensure!(
        report.hostname == HOSTNAME,
        "the deployed OS has hostname {:?}, not {HOSTNAME:?}",
        report.hostname
    );
    println!(
        "demo: ok: the deployed machine booted its own kernel in {:.1} s and calls itself {}",
        elapsed.as_secs_f64(),
        report.hostname
    );
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

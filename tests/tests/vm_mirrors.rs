//! Mirrors and parallel ranges in the real initramfs: PID 1 reads
//! `imprint.url=A|B` from the kernel command line, fetches chunk-aligned
//! ranges from two servers on the host, fails over when the first breaks
//! mid-deploy, and reports the bytes each served.

use std::path::Path;

use imprint_qemu::Disk;
use imprint_qemu::http::{Behavior, FixtureServer};
use imprint_vm_tests::{ResultLine, boot_imprint, finish, sha256_hex, test_image};

#[test]
fn pid1_fails_over_between_mirrors_and_counts_their_bytes() {
    let image = test_image(48 << 20, 5);
    let cache = FixtureServer::start().unwrap();
    let origin = FixtureServer::start().unwrap();
    cache.add_file("golden.raw", image.clone());
    origin.add_file("golden.raw", image.clone());
    // The probe, one range, then the cache breaks: a reset mid-range and 503s.
    cache.push_behaviors(
        "golden.raw",
        [
            Behavior::Normal,
            Behavior::Normal,
            Behavior::DropAfter(100_000),
            Behavior::Status(503),
            Behavior::Status(503),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::write(&disk, []).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();

    let vm = boot_imprint(
        "mirrors",
        &format!(
            "imprint.url={}|{}?X-Amz-Signature=feedface imprint.chunk=4M imprint.parallel=4 \
             imprint.disk=/dev/vda",
            cache.guest_url("golden.raw"),
            origin.guest_url("golden.raw")
        ),
        vec![Disk::new(Path::new(&disk))],
    );
    let result = finish(&vm);
    let console = vm.console();
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{console}");
    };
    assert_eq!(bytes, image.len() as u64);
    assert_eq!(sha256, sha256_hex(&image));
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the disk differs from the image"
    );
    let line = console
        .lines()
        .find(|line| line.contains("IMPRINT-RESULT: ok"))
        .unwrap();
    let served: Vec<u64> = line
        .split_once(" mirrors=")
        .unwrap_or_else(|| panic!("no mirrors= in {line}"))
        .1
        .split_whitespace()
        .next()
        .unwrap()
        .split(',')
        .map(|mirror| mirror.rsplit_once(':').unwrap().1.parse().unwrap())
        .collect();
    assert_eq!(served.len(), 2, "{line}");
    assert_eq!(served.iter().sum::<u64>(), image.len() as u64, "{line}");
    assert!(served[0] >= 8 << 20 && served[1] > 0, "{line}");
    // The kernel echoes its command line; nothing of imprint's may.
    let leaks: Vec<&str> = console
        .lines()
        .filter(|line| line.contains("feedface") && !line.contains("ommand line:"))
        .collect();
    assert!(leaks.is_empty(), "the query leaked: {leaks:#?}");
    assert!(console.contains("golden.raw?…"), "{console}");
}

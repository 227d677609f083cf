//! A flaky network: the connection is cut three times during a 128 MiB
//! zstd image, and the deploy resumes each time with a Range request,
//! feeding the same decoder and hash, and ends with a byte-identical disk.

use imprint_qemu::Disk;
use imprint_qemu::http::{Behavior, FixtureServer};
use imprint_vm_tests::{ResultLine, boot_imprint, filter, finish, sha256_hex, test_image};

#[test]
fn three_cuts_during_a_128_mib_zstd_image() {
    let image = test_image(128 << 20, 42);
    let body = filter("zstd", &["-c", "-q", "-T2"], &image);
    let server = FixtureServer::start().unwrap();
    server.add_file("golden.raw.zst", body.clone());
    let cut = u64::try_from(body.len() / 5).unwrap();
    server.push_behaviors(
        "golden.raw.zst",
        [
            Behavior::DropAfter(cut),
            Behavior::DropAfter(cut),
            Behavior::DropAfter(cut),
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(256 << 20)
        .unwrap();

    let vm = boot_imprint(
        "resume_three_cuts",
        &format!(
            // The single streaming GET's resume (parallel ranges have
            // their own failover: vm_mirrors.rs).
            "imprint.url={} imprint.parallel=1 imprint.disk=/dev/vda imprint.checksum=sha256:{}",
            server.guest_url("golden.raw.zst"),
            sha256_hex(&body)
        ),
        vec![Disk::new(&disk)],
    );
    let result = finish(&vm);

    let ResultLine::Ok { bytes, sha256, .. } = &result else {
        panic!("deploy failed: {result:?}");
    };
    assert_eq!(*bytes, image.len() as u64);
    assert_eq!(*sha256, sha256_hex(&image));
    let line = vm
        .console()
        .lines()
        .find(|l| l.contains("IMPRINT-RESULT:"))
        .unwrap()
        .to_owned();
    assert!(line.contains(" resumes=3"), "{line}");
    let written = std::fs::read(&disk).unwrap();
    assert!(
        written[..image.len()] == image[..],
        "the disk does not hold the image"
    );

    // The server saw one full request and three Range requests, each
    // starting where the previous response was cut.
    let requests = server.requests();
    let ranges: Vec<Option<String>> = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("golden.raw.zst"))
        .map(|r| r.range.clone())
        .collect();
    assert_eq!(ranges.len(), 4, "{requests:?}");
    assert_eq!(ranges[0], None);
    for (i, range) in ranges[1..].iter().enumerate() {
        let start = cut * (u64::try_from(i).unwrap() + 1);
        assert_eq!(
            range.as_deref(),
            Some(format!("bytes={start}-").as_str()),
            "{requests:?}"
        );
    }
}

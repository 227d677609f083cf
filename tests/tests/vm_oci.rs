//! PID 1 pulls its image from the real Docker Distribution registry
//! ([`imprint_qemu::registry`]: TLS from a CA made here, htpasswd auth):
//! `imprint.url=oci://10.0.2.2:PORT/os/golden:v1` on the kernel command
//! line, the CA by `imprint.ca=`, the credentials by `imprint.oci-username=`
//! and `imprint.oci-password=`. The guest resolves the tag, logs it pinned,
//! verifies the layer digest and writes the image.

use std::path::{Path, PathBuf};

use imprint_qemu::Disk;
use imprint_qemu::http::{FixtureServer, TestCa};
use imprint_qemu::registry::{Auth, PASSWORD, REPO, Registry, USER, tools_present};
use imprint_vm_tests::{ResultLine, boot_imprint, filter, finish, sha256_hex, test_image};

fn disk_file(dir: &Path, size: u64) -> PathBuf {
    let path = dir.join("disk.raw");
    std::fs::write(&path, vec![0xa5; 40 << 20]).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(size)
        .unwrap();
    path
}

#[test]
fn pid1_deploys_an_oras_artifact_from_a_real_registry() {
    if !tools_present() {
        return;
    }
    let ca = TestCa::new("imprint OCI VM test CA").unwrap();
    let registry = Registry::start(&ca, Auth::Htpasswd).unwrap();
    let image = test_image(32 << 20, 4);
    let served = filter("zstd", &["-c", "-q"], &image);
    let (manifest, layer) = registry
        .push_artifact("v1", "golden.raw.zst", &served)
        .unwrap();
    let files = FixtureServer::start().unwrap();
    files.add_file("ca.pem", ca.cert_pem().as_bytes().to_vec());
    let dir = tempfile::tempdir().unwrap();
    let disk = disk_file(dir.path(), 128 << 20);
    let by_tag = format!("oci://10.0.2.2:{}/{REPO}:v1", registry.port);

    let vm = boot_imprint(
        "oci_registry",
        &format!(
            "imprint.url={by_tag} imprint.disk=/dev/vda imprint.ca={} \
             imprint.oci-username={USER} imprint.oci-password={PASSWORD}",
            files.guest_url("ca.pem")
        ),
        vec![Disk::new(&disk)],
    );
    let result = finish(&vm);
    let ResultLine::Ok { bytes, sha256, .. } = result else {
        panic!("deploy failed: {result:?}\n{}", vm.console());
    };
    assert_eq!(bytes, image.len() as u64);
    assert_eq!(sha256, sha256_hex(&image));
    let written = std::fs::read(&disk).unwrap();
    assert!(written[..image.len()] == image[..], "the disk differs");
    let console = vm.console();
    let pinned = format!("oci://10.0.2.2:{}/{REPO}@{manifest}", registry.port);
    assert!(
        console.contains(&format!("{by_tag} resolved to {pinned} (layer {layer}")),
        "{console}"
    );
    assert!(console.contains(" verified=sha256 "), "{console}");
    assert!(
        console.contains(&format!(" image-digest={pinned}")),
        "{console}"
    );
    // Only the kernel echoes its own command line; imprint never logs the
    // password.
    for line in console.lines().filter(|line| line.contains(PASSWORD)) {
        assert!(
            line.contains("ommand line: "),
            "the password leaked: {line}"
        );
    }
}

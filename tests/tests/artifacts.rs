//! The boot artifacts `scripts/build` made: reproducible, static, complete.

use std::path::PathBuf;
use std::process::Command;

use imprint_build::initramfs::{InitramfsInputs, build};
use imprint_vm_tests::{repo_root, sha256_hex};

fn out(file: &str) -> PathBuf {
    let path = repo_root().join("out").join(file);
    assert!(
        path.exists(),
        "{} is missing: run scripts/build first",
        path.display()
    );
    path
}

/// Rebuilding the initramfs from the same inputs (kernel package, binary)
/// twice gives the same bytes, and the same bytes as the shipped
/// `out/initramfs.img`.
#[test]
fn initramfs_is_reproducible() {
    let current = repo_root().join("cache/kernel/current");
    let kernel_root = std::fs::canonicalize(&current)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/build first", current.display()));
    let kernel_version = kernel_root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let inputs = InitramfsInputs {
        kernel_root,
        kernel_version,
        init_binary: out("imprint"),
        extra_modules: Vec::new(),
        mtime: 0,
        // As scripts/build passes it (scripts/fetch-firmware fills it).
        firmware_root: Some(repo_root().join(imprint_build::firmware::CACHE_FIRMWARE_ROOT)),
    };
    let first = build(&inputs).unwrap();
    let second = build(&inputs).unwrap();
    assert_eq!(first.sha256_hex(), second.sha256_hex());
    let shipped = std::fs::read(out("initramfs.img")).unwrap();
    assert_eq!(
        first.sha256_hex(),
        sha256_hex(&shipped),
        "out/initramfs.img differs from a rebuild"
    );
    assert!(first.modules.iter().any(|m| m.name == "virtio_blk"));
    assert!(
        first.modules.iter().any(|m| m.name == "crc32c_generic"),
        "ext4's softdep is carried"
    );
}

/// `out/imprint` is one static binary: no ELF interpreter, runs on the host.
#[test]
fn imprint_binary_is_static_and_runs_as_cli() {
    let path = out("imprint");
    let elf = std::fs::read(&path).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]);
    let phoff = usize::try_from(u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap())).unwrap();
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let p_type = u32::from_le_bytes(elf[phoff + i * phentsize..][..4].try_into().unwrap());
        assert_ne!(p_type, PT_INTERP, "out/imprint asks for a dynamic loader");
    }
    let output = Command::new(&path).arg("version").output().unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("imprint "));
}

#[test]
fn ipxe_script_loads_kernel_and_initramfs_relative_to_itself() {
    let script = std::fs::read_to_string(out("boot.ipxe")).unwrap();
    assert!(script.starts_with("#!ipxe\n"));
    assert!(
        script.contains("\nkernel vmlinuz initrd=initramfs.img "),
        "{script}"
    );
    assert!(script.contains("\ninitrd initramfs.img\n"), "{script}");
    assert!(script.contains("console=ttyS0"), "{script}");
    assert!(script.trim_end().ends_with("boot"));
}

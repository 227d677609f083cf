//! QEMU harness for imprint's VM tests and demo.
//!
//! - [`VmBuilder`] / [`Vm`]: run `qemu-system-x86_64` (TCG when KVM is missing) with
//!   disks and user-mode NICs, and wait for lines on its serial console.
//! - [`fast_boot_kernel`]: the PVH `vmlinux` inside a bzImage, which boots about twice
//!   as fast under TCG.
//! - [`create_raw_disk`], [`create_qcow2_disk`] and friends: disk images on the host.
//! - [`drp::DrpStandIn`]: a stand-in for DRP (files, rendered machine templates, the
//!   agent API) that records every call.
//! - [`netlab::Lab`]: network namespaces on one switch with `tc` caps, and real
//!   nginx origins and slice caches in them, for the fleet tests.
//! - [`http::FixtureServer`]: an HTTP server the guest reaches at 10.0.2.2, with
//!   scripted misbehaviour.
//! - [`registry::Registry`]: the real Docker Distribution registry, with TLS and
//!   htpasswd or token auth, and images pushed to it as `oras push` stores them.
#![forbid(unsafe_code)]

mod console;
mod disk;
pub mod drp;
pub mod http;
mod kernel;
mod listener;
pub mod netlab;
pub mod registry;
mod vm;

pub use disk::{create_qcow2_disk, create_raw_disk, fill_disk, read_disk_at, write_disk_at};
pub use kernel::{extract_vmlinux, fast_boot_kernel};
pub use vm::{
    Disk, DiskFormat, DiskInterface, Nic, OVMF_VARS, Vm, VmBuilder, default_accelerators,
};

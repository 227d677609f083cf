//! imprint-build: assembles imprint's boot artifacts on the host.
//!
//! The binary in `main.rs` only parses arguments; everything it does is
//! here so that tests can call it.
#![forbid(unsafe_code)]

pub mod builtin;
pub mod cpio;
pub mod drivers;
pub mod drp;
pub mod elf;
pub mod firmware;
pub mod hardware;
pub mod initramfs;
pub mod ipxe;
pub mod p2p;
pub mod tools;

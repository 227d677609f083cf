//! QEMU harness.
#![forbid(unsafe_code)]

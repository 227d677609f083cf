//! The golden test OS's PID 1, as a library: which device is the root
//! (`root=` on the kernel command line) and what the root holds that a
//! deploy is meant to have changed.
//!
//! The VM tests boot the golden disk image (made by `scripts/golden-os`)
//! before and after imprint deploys it and read the facts off the serial
//! console, one `GOLDEN-OS:` line each, so that "the deployed machine
//! boots, and boots with its identity" is checked by the machine itself.
//! Everything here is pure or reads a directory tree, so it is tested on the
//! host; `main.rs` does the mounting and powering off.
#![forbid(unsafe_code)]

pub mod facts;
pub mod root;

/// The prefix of every line the golden OS prints for the tests to parse.
pub const PREFIX: &str = "GOLDEN-OS:";

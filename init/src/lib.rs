//! imprint: stream a golden disk image onto bare metal.
//!
//! The library holds every decision as a pure function that returns a plan;
//! [`sys`] is the only module that talks to the kernel, and the only one
//! allowed to use `unsafe`. Everything else is testable on the host without
//! root.
#![deny(unsafe_code)]

pub(crate) mod boot;
pub mod cli;
pub mod cmdline;
pub(crate) mod console;
pub(crate) mod deploy;
pub mod disk;
pub mod drp;
pub mod efi;
pub mod erase;
pub(crate) mod handoff;
pub(crate) mod hardware;
pub(crate) mod http;
pub mod inject;
pub(crate) mod installed;
pub mod logger;
pub mod modules;
pub mod net;
pub mod pid1;
pub mod pipeline;
pub mod qcow2;
pub(crate) mod report;
pub mod rootfs;
pub(crate) mod session;
pub mod sign;
pub mod source;
pub mod spec;
pub(crate) mod status;
#[allow(unsafe_code)]
pub mod sys;
pub(crate) mod text;
pub(crate) mod timeline;

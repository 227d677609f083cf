//! Every syscall and every `unsafe` block lives here.
pub mod kmod;
pub mod mount;
pub mod power;
pub mod net;

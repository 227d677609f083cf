//! Every syscall and every `unsafe` block lives here.
pub mod block;
pub mod chroot;
pub mod efivars;
pub mod kexec;
pub mod kmod;
pub mod loopdev;
pub mod mount;
pub mod net;
pub mod passthru;
pub mod power;
pub mod tty;
pub mod zstd;

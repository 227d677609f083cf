//! UEFI boot entries: `EFI_LOAD_OPTION`s and device paths encoded and
//! decoded in pure Rust, the boot-order policy as a plan, and the loader
//! found on the installed ESP. `sys::efivars` reads and writes the
//! variables.

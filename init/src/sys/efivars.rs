//! efivarfs: UEFI variables as files, and the immutable flag the kernel
//! sets on them.

//! Erasing disks before a machine changes hands: signatures (`metadata`),
//! `discard`, `zero`, and the device's own erase (`secure`: NVMe Sanitize or
//! Format NVM, ATA Security Erase, SCSI SANITIZE), chosen per disk by a pure
//! plan and verified by sampled reads.

pub mod ata;
pub mod method;
pub mod nvme;
pub mod scsi;
pub mod secure;

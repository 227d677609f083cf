//! Pass-through ioctls for device erase: NVMe admin commands, SCSI SG_IO
//! (ATA PASS-THROUGH and SANITIZE), BLKDISCARD and BLKSECDISCARD.

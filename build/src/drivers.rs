//! The drivers the initramfs carries: THE list, in one place.
//!
//! To support more hardware, add the module name to the right group. Names
//! are module names as in `modules.dep` (`-` and `_` are the same). A name
//! the kernel has built in is fine (nothing is copied); a name the kernel
//! lacks fails the build with the module and kernel version named.

/// A set of modules that serve one purpose.
#[derive(Debug, Clone, Copy)]
pub struct DriverGroup {
    pub purpose: &'static str,
    pub modules: &'static [&'static str],
}

pub const BOOT_DRIVERS: &[DriverGroup] = &[
    // QEMU and most clouds: the PCI transport first, then the devices on it.
    // virtio_scsi disks show up as SCSI disks, hence sd_mod.
    DriverGroup {
        purpose: "virtio (QEMU, KVM clouds)",
        modules: &[
            "virtio_pci",
            "virtio_blk",
            "virtio_net",
            "virtio_scsi",
            "sd_mod",
        ],
    },
    // Local disks on bare metal: NVMe, SATA through AHCI, and the RAID/SAS
    // HBAs in rack servers: Broadcom/LSI MegaRAID (megaraid_sas) and SAS3
    // HBAs (mpt3sas), Microchip/Adaptec SmartRAID (smartpqi) and older
    // Adaptec (aacraid), HPE Smart Array (hpsa). Every SCSI-presented disk
    // (AHCI, SAS, RAID volumes, virtio-scsi) needs sd_mod.
    DriverGroup {
        purpose: "disk controllers",
        modules: &[
            "nvme",
            "ahci",
            "megaraid_sas",
            "mpt3sas",
            "smartpqi",
            "hpsa",
            "aacraid",
            "sd_mod",
        ],
    },
    // The server NICs seen in practice: Intel 1G/10G/40G/100G and the
    // virtual function driver (iavf) for SR-IOV setups; Mellanox ConnectX-3
    // (mlx4_en) and ConnectX-4 and later (mlx5_core); Broadcom NetXtreme II
    // (bnx2, bnx2x), NetXtreme-C/E (bnxt_en) and the tg3 LOMs; QLogic/Marvell
    // FastLinQ (qede), Chelsio T4-T6 (cxgb4), Cisco UCS VIC (enic),
    // Solarflare/AMD (sfc); Realtek on small boxes; e1000 as QEMU's default
    // NIC, vmxnet3 for VMware, and the cloud bare-metal NICs: AWS ENA (ena)
    // and Google gVNIC (gve). bnx2, bnx2x, tg3, ice, qede and cxgb4 load
    // firmware from /lib/firmware (see crate::firmware).
    DriverGroup {
        purpose: "network cards",
        modules: &[
            "e1000",
            "e1000e",
            "igb",
            "ixgbe",
            "i40e",
            "ice",
            "iavf",
            "mlx4_en",
            "mlx5_core",
            "bnx2",
            "bnx2x",
            "bnxt_en",
            "tg3",
            "qede",
            "cxgb4",
            "enic",
            "sfc",
            "r8169",
            "vmxnet3",
            "ena",
            "gve",
        ],
    },
    // DHCP runs over a raw packet socket before the interface has an address.
    // Debian builds af_packet in; other kernels may ship it as a module.
    DriverGroup {
        purpose: "raw sockets for DHCP",
        modules: &["af_packet"],
    },
    // Provisioning networks are often tagged (provisioner.vlan=).
    DriverGroup {
        purpose: "VLAN tagging",
        modules: &["8021q"],
    },
    // UEFI variables as files: the boot entry for the installed OS is
    // written through them (Debian builds efivarfs as a module).
    DriverGroup {
        purpose: "UEFI variables",
        modules: &["efivarfs"],
    },
    // Filesystems PID 1 mounts to inject files into the written image. ext4
    // refuses to mount without a crc32c implementation, and crc32c_intel
    // fails on CPUs without SSE4.2, so the generic one must be there too.
    // btrfs for images whose root is btrfs (Fedora, openSUSE).
    // The EFI system partition is vfat with codepage 437 and iso8859-1 names
    // by default; utf8 for images built with iocharset=utf8.
    DriverGroup {
        purpose: "filesystems",
        modules: &[
            "ext4",
            "crc32c_generic",
            "xfs",
            "btrfs",
            "vfat",
            "nls_cp437",
            "nls_iso8859_1",
            "nls_utf8",
        ],
    },
];

/// Every module in [`BOOT_DRIVERS`], in list order, each once.
pub fn boot_driver_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for group in BOOT_DRIVERS {
        for &module in group.modules {
            if !names.contains(&module) {
                names.push(module);
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_use_the_canonical_spelling() {
        let names = boot_driver_names();
        assert!(names.contains(&"virtio_pci"));
        assert!(names.contains(&"crc32c_generic"));
        assert_eq!(names.iter().filter(|&&name| name == "sd_mod").count(), 1);
        // The list: a name dropped by accident fails here.
        for wanted in [
            "e1000e",
            "igb",
            "ixgbe",
            "i40e",
            "ice",
            "iavf",
            "mlx4_en",
            "mlx5_core",
            "bnx2",
            "bnx2x",
            "bnxt_en",
            "tg3",
            "qede",
            "cxgb4",
            "enic",
            "sfc",
            "r8169",
            "virtio_net",
            "vmxnet3",
            "ena",
            "gve",
            "nvme",
            "ahci",
            "megaraid_sas",
            "mpt3sas",
            "smartpqi",
            "hpsa",
            "aacraid",
            "virtio_blk",
            "virtio_scsi",
            "sd_mod",
            "ext4",
            "xfs",
            "btrfs",
            "vfat",
        ] {
            assert!(names.contains(&wanted), "{wanted} is not in BOOT_DRIVERS");
        }
        for name in names {
            assert_eq!(name, imprint::modules::normalize_module_name(name));
        }
    }
}

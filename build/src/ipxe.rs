//! The iPXE script that boots imprint.
//!
//! By default the kernel and initramfs are named relative to the script:
//! iPXE resolves relative URIs against the URI of the script it is running,
//! so the same script works wherever `vmlinuz`, `initramfs.img` and it are
//! served side by side.

use anyhow::{Result, ensure};

/// Always on the command line: VGA and serial consoles (kernel messages go
/// to both). The last one named becomes /dev/console, where PID 1 prints its
/// progress and result line: the serial port, which is what a BMC's
/// serial-over-LAN, DRP and the test harness read. `panic=-1` reboots at once
/// if PID 1 dies instead of hanging forever.
pub const BASE_KERNEL_ARGS: &str = "console=tty0 console=ttyS0,115200 panic=-1";

pub const KERNEL_NAME: &str = "vmlinuz";
pub const INITRAMFS_NAME: &str = "initramfs.img";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpxeOptions {
    /// Where `vmlinuz` and `initramfs.img` live; relative to the script if unset.
    pub base_url: Option<String>,
    /// Extra kernel arguments, typically `imprint.*`, editable in the script.
    pub append: String,
    /// Also load `rootfs-tools.img` after the initramfs, for
    /// root-filesystem images.
    pub rootfs_tools: bool,
    /// Also load `imprint-p2p.img` (aria2c, for `imprint.torrent=`) after
    /// the initramfs.
    pub p2p: bool,
}

pub const TOOLS_NAME: &str = "rootfs-tools.img";
pub use crate::p2p::P2P_INITRD_NAME;

/// Rejects what would break the script's line structure. `${...}` is left
/// alone on purpose: iPXE expands it, so `imprint.mac=${net0/mac}` works.
fn check_script_value(what: &str, value: &str) -> Result<()> {
    ensure!(
        !value.contains(['\n', '\r']),
        "{what} for the ipxe script contains a line break"
    );
    Ok(())
}

pub fn render_script(options: &IpxeOptions) -> Result<String> {
    check_script_value("the append argument", &options.append)?;
    let mut script = String::from("#!ipxe\n");
    script.push_str("# imprint: stream a disk image onto this machine.\n");
    let location = match &options.base_url {
        Some(base_url) => {
            check_script_value("the base url", base_url)?;
            ensure!(
                !base_url.contains(char::is_whitespace),
                "the base url {base_url} contains whitespace"
            );
            script.push_str("# Where vmlinuz and initramfs.img are served from.\n");
            script.push_str(&format!(
                "set base-url {}\n",
                base_url.trim_end_matches('/')
            ));
            "${base-url}/"
        }
        None => {
            script.push_str("# vmlinuz and initramfs.img are fetched relative to this script.\n");
            ""
        }
    };
    script.push_str("# imprint.* arguments, e.g. imprint.url=http://... imprint.disk=/dev/sda\n");
    script.push_str(&format!("set imprint-args {}\n", options.append.trim()));
    // initrd= names the image for the EFI stub, which looks the initrd up
    // by name when iPXE boots the kernel as an EFI application.
    let extra = [
        (options.rootfs_tools, TOOLS_NAME),
        (options.p2p, P2P_INITRD_NAME),
    ];
    let extra_args: String = extra
        .iter()
        .filter(|(wanted, _)| *wanted)
        .map(|(_, name)| format!(" initrd={name}"))
        .collect();
    script.push_str(&format!(
        "kernel {location}{KERNEL_NAME} initrd={INITRAMFS_NAME}{extra_args} {BASE_KERNEL_ARGS} ${{imprint-args}}\n"
    ));
    script.push_str(&format!("initrd {location}{INITRAMFS_NAME}\n"));
    if options.rootfs_tools {
        script.push_str(
            "# The mkfs tools for root-filesystem images, unpacked over the initramfs.\n",
        );
        script.push_str(&format!("initrd {location}{TOOLS_NAME}\n"));
    }
    if options.p2p {
        script.push_str(
            "# aria2c for imprint.torrent= (BitTorrent mode); without it imprint reads over HTTP.\n",
        );
        script.push_str(&format!("initrd {location}{P2P_INITRD_NAME}\n"));
    }
    script.push_str("boot\n");
    Ok(script)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_script_uses_names_relative_to_itself() {
        let script = render_script(&IpxeOptions::default()).unwrap();
        assert_eq!(
            script,
            "#!ipxe\n\
             # imprint: stream a disk image onto this machine.\n\
             # vmlinuz and initramfs.img are fetched relative to this script.\n\
             # imprint.* arguments, e.g. imprint.url=http://... imprint.disk=/dev/sda\n\
             set imprint-args \n\
             kernel vmlinuz initrd=initramfs.img console=tty0 console=ttyS0,115200 panic=-1 ${imprint-args}\n\
             initrd initramfs.img\n\
             boot\n"
        );
    }

    #[test]
    fn base_url_and_append_are_settings_the_user_can_edit() {
        let script = render_script(&IpxeOptions {
            base_url: Some("http://10.0.2.2:8080/imprint/".to_owned()),
            append: "imprint.url=http://10.0.2.2:8080/disk.raw.zst imprint.disk=/dev/vda"
                .to_owned(),
            rootfs_tools: false,
            p2p: false,
        })
        .unwrap();
        assert!(script.contains("\nset base-url http://10.0.2.2:8080/imprint\n"));
        assert!(script.contains(
            "\nset imprint-args imprint.url=http://10.0.2.2:8080/disk.raw.zst imprint.disk=/dev/vda\n"
        ));
        assert!(script.contains("\nkernel ${base-url}/vmlinuz initrd=initramfs.img "));
        assert!(script.contains("\ninitrd ${base-url}/initramfs.img\nboot\n"));
    }

    #[test]
    fn the_rootfs_script_loads_the_tools_after_the_initramfs() {
        let script = render_script(&IpxeOptions {
            rootfs_tools: true,
            ..IpxeOptions::default()
        })
        .unwrap();
        assert!(script.contains(
            "\nkernel vmlinuz initrd=initramfs.img initrd=rootfs-tools.img console=tty0 "
        ));
        assert!(script.ends_with(
            "initrd initramfs.img\n\
             # The mkfs tools for root-filesystem images, unpacked over the initramfs.\n\
             initrd rootfs-tools.img\n\
             boot\n"
        ));
    }

    #[test]
    fn the_p2p_script_loads_aria2c_after_the_initramfs_and_the_tools() {
        let script = render_script(&IpxeOptions {
            base_url: Some("http://boot/imprint".to_owned()),
            p2p: true,
            ..IpxeOptions::default()
        })
        .unwrap();
        assert!(script.contains(
            "\nkernel ${base-url}/vmlinuz initrd=initramfs.img initrd=imprint-p2p.img console=tty0 "
        ));
        assert!(script.ends_with(
            "initrd ${base-url}/initramfs.img\n\
             # aria2c for imprint.torrent= (BitTorrent mode); without it imprint reads over HTTP.\n\
             initrd ${base-url}/imprint-p2p.img\n\
             boot\n"
        ));
        let both = render_script(&IpxeOptions {
            rootfs_tools: true,
            p2p: true,
            ..IpxeOptions::default()
        })
        .unwrap();
        let lines: Vec<&str> = both.lines().filter(|l| l.starts_with("initrd ")).collect();
        assert_eq!(
            lines,
            [
                "initrd initramfs.img",
                "initrd rootfs-tools.img",
                "initrd imprint-p2p.img"
            ]
        );
        assert!(both.contains(
            " initrd=initramfs.img initrd=rootfs-tools.img initrd=imprint-p2p.img console="
        ));
    }

    #[test]
    fn values_that_would_break_the_script_are_rejected() {
        let append = IpxeOptions {
            append: "a\nboot".to_owned(),
            ..IpxeOptions::default()
        };
        assert!(render_script(&append).is_err());
        let expanding = IpxeOptions {
            append: "imprint.mac=${net0/mac}".to_owned(),
            ..IpxeOptions::default()
        };
        assert!(
            render_script(&expanding)
                .unwrap()
                .contains("\nset imprint-args imprint.mac=${net0/mac}\n")
        );
        let spaced = IpxeOptions {
            base_url: Some("http://a b".to_owned()),
            ..IpxeOptions::default()
        };
        assert!(render_script(&spaced).is_err());
    }
}

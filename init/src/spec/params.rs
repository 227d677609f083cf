//! The parameter table: every setting imprint takes, its name on each
//! layer (`imprint.X=`, `--X`, the deploy spec's `"X"`), its documentation
//! and the function that parses it into [`DeploySpec`]'s typed fields.

use anyhow::{Context, Result, bail};

use super::{DeploySpec, SuccessPolicy, absolute_path, parse_bool, parse_failure_policy};
use crate::disk::DiskSelector;
use crate::disk::root::RootSelector;
use crate::pipeline::checksum::Checksum;
use crate::source::url::SourceUrl;
use crate::text::parse_duration;

/// One parameter: `imprint.<name>=` on the kernel command line and
/// `--<name>` on the CLI.
#[derive(Debug)]
pub struct ParamDef {
    pub name: &'static str,
    pub values: &'static str,
    pub default: &'static str,
    pub help: &'static str,
    pub(super) apply: fn(&mut DeploySpec, &str) -> Result<()>,
}

pub const PARAMS: &[ParamDef] = &[
    ParamDef {
        name: "url",
        values: "http[s]://HOST[:PORT]/PATH[|http[s]://MIRROR/PATH]... | oci://REGISTRY[:PORT]/REPO[:TAG or @sha256:DIGEST] | file://LABEL=L/PATH | file://UUID=U/PATH | file://DEV=NAME/PATH | file:///PATH",
        default: "(required)",
        help: "Where the disk image comes from: see Where the image comes from. Several http(s) mirrors of one image are separated by `|` (`--url` repeated, a JSON array), in order of preference: see Mirrors and parallel ranges.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the image URL, e.g. imprint.url=http://server/image.raw");
            }
            let mirrors = crate::source::mirrors::parse(v)?;
            spec.source.ranges.mirrors = match mirrors[0].kind() {
                crate::source::url::UrlKind::Http => {
                    mirrors.iter().map(|url| url.as_str().to_owned()).collect()
                }
                _ => Vec::new(),
            };
            spec.url = mirrors.into_iter().next();
            Ok(())
        },
    },
    ParamDef {
        name: "disk",
        values: "/dev/NAME | NAME | /dev/disk/by-id/ID | /dev/disk/by-path/PATH | HINT[,HINT]...",
        default: "(required)",
        help: "The disk the image is written to; everything on it is overwritten. Hints (`size>=100G,rotational=0,serial=…`) must match exactly one disk: see Choosing the disk.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; name the target disk, e.g. imprint.disk=/dev/sda");
            }
            spec.disk = Some(DiskSelector::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "format",
        values: "auto | raw | gz | xz | zst | bz2 | raw.tar[.gz|.xz|.bz2|.zst] | qcow2 | dd-raw dd-gz dd-xz dd-bz2 dd-zst dd-tar dd-tgz dd-txz dd-tbz",
        default: "auto",
        help: "The image's format. Sniffed from its first bytes either way; a declared format that disagrees with them is an error. Without it, the URL's file name declares one (`.xz`, `.raw.zst`, `.tgz`, `.qcow2`, …; the query is ignored). qcow2 images (also when named `.img`, as cloud images are) are streamed without staging (README, \"qcow2 images\"). DRP's image types are accepted as they are.",
        apply: |spec, v| {
            spec.format = crate::pipeline::format::parse_declared(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "checksum",
        values: "sha256:HEX | sha512:HEX",
        default: "(none)",
        help: "Digest of the image as served (compressed, if it is). Checked before the first MiB, which holds the partition table, is written.",
        apply: |spec, v| {
            spec.checksum = Some(Checksum::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "checksum-url",
        values: "URL of a SHA256SUMS-style list",
        default: "(none)",
        help: "Read the digest from a checksum list (GNU or BSD format, sha256 or sha512), by the image URL's file name.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL of a SHA256SUMS file");
            }
            spec.checksum_url = Some(SourceUrl::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "signature",
        values: "URL of a detached signature of the image (minisign .minisig, OpenPGP .asc/.sig, cosign .sig)",
        default: "(none)",
        help: "A signature of the image as served, checked against the trusted keys before the first MiB is written: see Signed images.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!(
                    "is empty; give the URL of the image's signature, e.g. http://server/image.raw.zst.minisig"
                );
            }
            spec.signing.signature = Some(SourceUrl::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "checksum-signature",
        values: "URL of a detached signature of the checksum-url list",
        default: "(none)",
        help: "A signature of the checksum list (`SHA256SUMS.minisig`, `.asc`, `.sig`): the list is verified over its exact bytes, then names the image's digest.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!(
                    "is empty; give the URL of the checksum list's signature, e.g. http://server/SHA256SUMS.asc"
                );
            }
            spec.signing.checksum_signature = Some(SourceUrl::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "trusted-key",
        values: "RW… (a minisign key) | URL or /PATH of a key file (minisign, OpenPGP, PEM)",
        default: "(keys baked into the initramfs)",
        help: "A public key to verify signatures with, where no key is baked into the initramfs; where keys are baked, it must be one of them. Any trusted key makes a signature mandatory.",
        apply: |spec, v| {
            spec.signing.trusted_key = Some(crate::sign::trust::KeyParam::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "retries",
        values: "N",
        default: "8",
        help: "How often a failed request or a broken transfer is retried (with exponential backoff and jitter; `Retry-After` is honoured). A broken transfer resumes where it stopped, with an HTTP Range request.",
        apply: |spec, v| {
            spec.source.retries = v
                .parse()
                .with_context(|| format!("{v:?} is not a whole number"))?;
            Ok(())
        },
    },
    ParamDef {
        name: "retry-timeout",
        values: "DURATION (30s, 10m, 1h)",
        default: "10m",
        help: "The most time the retries of one transfer may take together.",
        apply: |spec, v| {
            spec.source.retry_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "connect-timeout",
        values: "DURATION",
        default: "15s",
        help: "How long connecting to the server may take before it counts as a failed attempt.",
        apply: |spec, v| {
            spec.source.connect_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "stall-timeout",
        values: "DURATION",
        default: "30s",
        help: "How long a transfer may deliver no bytes before it counts as a dropped connection (and is resumed).",
        apply: |spec, v| {
            spec.source.stall_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "ca",
        values: "URL | /PATH (PEM)",
        default: "(built in)",
        help: "Trust roots for HTTPS: a PEM bundle by URL or by path inside the initramfs (`imprint-build --ca FILE` puts one at /etc/imprint/ca.pem, used by default).",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL or path of a PEM CA bundle");
            }
            spec.source.ca = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "insecure",
        values: "0 | 1",
        default: "0",
        help: "Skip HTTPS certificate verification. Logged as a warning and reported in the result line; for labs only.",
        apply: |spec, v| {
            spec.source.insecure = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "oci-username",
        values: "NAME",
        default: "(anonymous)",
        help: "The user name for an oci:// image's registry: sent as Basic credentials, or to the registry's token service. See Images in an OCI registry.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the registry user name, or leave it out for anonymous pulls");
            }
            spec.source.oci_username = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "oci-password",
        values: "PASSWORD | TOKEN",
        default: "(none)",
        help: "The password (or access token) that goes with oci-username. Never logged or reported; on the kernel command line it is readable in /proc/cmdline, so prefer the deploy spec.",
        apply: |spec, v| {
            spec.source.oci_password = Some(crate::http::Password::new(v));
            Ok(())
        },
    },
    ParamDef {
        name: "oci-layer",
        values: "TITLE",
        default: "(the only layer, or the only one titled as a disk image)",
        help: "Which layer of an oci:// artifact is the image, by its org.opencontainers.image.title (the file name oras push records), when it has several.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give a layer's title, e.g. golden.raw.zst");
            }
            spec.source.oci_layer = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "parallel",
        values: "N",
        default: "8",
        help: "HTTP(S) ranges fetched at once (1 to 64), each a chunk (`imprint.chunk=`) from the first healthy mirror; 1 with a single URL reads the image with one streaming GET. Lowered to what half of `imprint.decode-memory=` holds in chunks. See Mirrors and parallel ranges.",
        apply: |spec, v| {
            let n: usize = v
                .parse()
                .ok()
                .filter(|n| (1..=crate::http::agent::MAX_PARALLEL).contains(n))
                .with_context(|| format!("{v:?} is not a whole number from 1 to 64"))?;
            spec.source.ranges.parallel = n;
            Ok(())
        },
    },
    ParamDef {
        name: "chunk",
        values: "SIZE (16M, 4M; binary units, at least 64K)",
        default: "16M",
        help: "The size and alignment of HTTP(S) ranges: match nginx's `slice` or the store's part size. A chunk manifest's own size wins.",
        apply: |spec, v| {
            spec.source.ranges.chunk = crate::source::manifest::parse_chunk(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "manifest",
        values: "URL of a chunk manifest (`imprint manifest IMAGE`)",
        default: "(none)",
        help: "Every range is checked against this list of per-chunk SHA-256 as it arrives, and fetched again from the next mirror when it does not match. See Mirrors and parallel ranges for its format.",
        apply: |spec, v| {
            let url = SourceUrl::parse(v)?;
            spec.source.ranges.manifest = Some(url.as_str().to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "torrent",
        values: "URL of the image's .torrent (`scripts/publish-image`)",
        default: "(none)",
        help: "BitTorrent mode: chunks come from a swarm through `aria2c` (the P2P initrd), each from the mirrors of `imprint.url=` when the swarm has not delivered it in time; the pieces in RAM, else on the target disk's tail; without aria2c or room for the pieces, an HTTP deploy with a warning. See BitTorrent mode.",
        apply: |spec, v| {
            let url = SourceUrl::parse(v)?;
            if !matches!(url.kind(), crate::source::url::UrlKind::Http) {
                bail!("{v:?} is not an http(s) URL; the torrent file is fetched over HTTP");
            }
            spec.source.ranges.torrent = Some(url.as_str().to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "seed-time",
        values: "DURATION",
        default: "30s",
        help: "BitTorrent mode: how long a machine seeds after a good deploy (before the handoff; the CLI after its result line). 0 stops at once.",
        apply: |spec, v| {
            spec.source.ranges.seed_time = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "torrent-timeout",
        values: "DURATION",
        default: "10s",
        help: "BitTorrent mode: how long the swarm may deliver nothing before chunks come from the mirrors instead.",
        apply: |spec, v| {
            spec.source.ranges.torrent_timeout = parse_duration(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "link-timeout",
        values: "DURATION",
        default: "5s",
        help: "How long PID 1 waits for a NIC's carrier before leaving it out, at most 300s. From a deploy spec it counts only where the spec is read before the network is up (a file:// spec).",
        apply: |spec, v| {
            spec.link_timeout = Some(crate::net::params::parse_link_timeout(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "decode-memory",
        values: "SIZE (256M, 1G; binary units)",
        default: "256M",
        help: "Memory for compressed and decoded data in flight while zstd frames and xz blocks are decoded on every core, whatever the core count. Frames and blocks too large to fit a quarter of it are decoded one at a time; raise it for images with frames over 64 MiB.",
        apply: |spec, v| {
            spec.decode_memory = Some(crate::pipeline::ordered::parse_memory(v)?);
            spec.source.ranges.memory = spec.decode_memory;
            Ok(())
        },
    },
    ParamDef {
        name: "direct-io",
        values: "auto | off",
        default: "auto",
        help: "auto writes the image's whole blocks past the page cache (O_DIRECT) where the disk or file takes it, which saves the copy into the page cache and the writeback threads' CPU; off writes everything through the page cache.",
        apply: |spec, v| {
            spec.direct_io = crate::pipeline::direct::DirectIo::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "layout",
        values: "default | with-swap | xfs-root",
        default: "default",
        help: "A root-filesystem deploy's partitions, by preset: `default` is a 512 MiB ESP, a 1 MiB BIOS boot partition and an ext4 root on the rest; `with-swap` adds 4 GiB of swap before the root; `xfs-root` makes the root xfs. The deploy spec's `layout` may instead be a whole layout: see Root-filesystem images.",
        apply: |spec, v| {
            spec.layout = Some(crate::rootfs::layout::preset(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "bootloader",
        values: "auto | grub | systemd-boot | none",
        default: "auto",
        help: "What a root-filesystem deploy installs, from the image itself in a chroot: GRUB when the image has grub-install, else systemd-boot when it has bootctl; `none` only regenerates the initramfs.",
        apply: |spec, v| {
            spec.bootloader = crate::rootfs::bootloader::Bootloader::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "action",
        values: "deploy | erase",
        default: "deploy",
        help: "What this boot is for: `erase` only erases disks (`imprint.erase=`, `imprint.erase-disks=`) and needs no image; after it, `on-success` applies (`kexec` means reboot: nothing was installed). See Erasing disks.",
        apply: |spec, v| {
            spec.action = super::Action::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "erase",
        values: "metadata | discard | zero | secure | auto",
        default: "(none)",
        help: "Erase disks before the deploy (or alone, with `imprint.action=erase`): `metadata` zeroes every signature at both ends of the disk and of each partition, `discard` unmaps the whole device, `zero` writes zeros everywhere, `secure` runs the device's own erase (NVMe Sanitize or Format NVM, ATA Security Erase or Sanitize, SCSI SANITIZE) or fails, `auto` takes the fastest that really erases. Read back where the method promises zeros. See Erasing disks.",
        apply: |spec, v| {
            spec.erase = Some(crate::erase::Mode::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "erase-disks",
        values: "target | all | /dev/NAME | HINT[,HINT]...",
        default: "target",
        help: "Which disks `imprint.erase=` reaches: the target disk, `all` fixed disks (not removable, USB, virtual or read-only), or every disk the hints match. Never the disk the image is read from, nor a boot medium.",
        apply: |spec, v| {
            spec.erase_disks = crate::erase::EraseDisks::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "boot-order",
        values: "keep | network-first | disk-first | off",
        default: "keep",
        help: "On a UEFI machine, after the deploy: one `Boot####` entry for the installed loader (found on the disk's ESP), old entries for this disk removed, and `BootOrder` as asked: `keep` puts the entry where the one it replaces was (else last), `network-first` keeps PXE/HTTP entries first then the disk (what DRP wants), `disk-first` puts the disk first; `off` leaves the firmware's variables alone. A no-op on BIOS machines. See UEFI boot entries.",
        apply: |spec, v| {
            spec.boot_entry.policy = match v {
                "keep" => Some(crate::efi::BootOrderPolicy::Keep),
                "network-first" => Some(crate::efi::BootOrderPolicy::NetworkFirst),
                "disk-first" => Some(crate::efi::BootOrderPolicy::DiskFirst),
                "off" => None,
                _ => bail!("must be keep, network-first, disk-first or off, not {v:?}"),
            };
            Ok(())
        },
    },
    ParamDef {
        name: "boot-next",
        values: "0 | 1",
        default: "0",
        help: "Also set UEFI `BootNext` to the new entry: the next boot (only) goes to the installed OS whatever `BootOrder` says.",
        apply: |spec, v| {
            spec.boot_entry.boot_next = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "boot-loader",
        values: "\\EFI\\VENDOR\\FILE.efi",
        default: "(found)",
        help: "The loader the UEFI boot entry starts, on the deployed disk's ESP; found when absent: shim, then GRUB, then systemd-boot, then `\\EFI\\BOOT\\BOOTX64.EFI`.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give a path on the ESP, e.g. \\EFI\\debian\\shimx64.efi");
            }
            spec.boot_entry.loader = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "config",
        values: "URL of a JSON deploy spec",
        default: "(none)",
        help: "Every setting as one JSON document (see The deploy spec); parameters on the command line override it.",
        apply: |spec, v| {
            if v.is_empty() {
                bail!("is empty; give the URL of a JSON deploy spec");
            }
            spec.config = Some(SourceUrl::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "hostname",
        values: "NAME",
        default: "(image's)",
        help: "Written to /etc/hostname and the 127.0.1.1 line of /etc/hosts.",
        apply: |spec, v| {
            if v.is_empty() || v.len() > 253 || v.contains(char::is_whitespace) {
                bail!("{v:?} is not a host name");
            }
            spec.identity.hostname = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "ssh-key",
        values: "\"ssh-ed25519 AAAA… comment\" (repeatable)",
        default: "(none)",
        help: "A public key for root's authorized_keys (and --ssh-user's). Quote it on the kernel command line: \"imprint.ssh-key=ssh-ed25519 AAAA… me\".",
        apply: |spec, v| {
            if v.split_whitespace().count() < 2 {
                bail!("{v:?} is not an SSH public key (TYPE BASE64 [COMMENT])");
            }
            spec.identity.ssh_keys.push(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "ssh-user",
        values: "USER",
        default: "(root only)",
        help: "Also install the keys for this user of the image (uid and gid from its /etc/passwd).",
        apply: |spec, v| {
            spec.identity.ssh_user = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "root",
        values: "N | LABEL=L | UUID=U | PARTLABEL=L | PARTUUID=U",
        default: "(discovered)",
        help: "The image's root partition. Otherwise: the root type GUID, then the first partition with /curtin, then the first with /etc/os-release.",
        apply: |spec, v| {
            spec.root = Some(RootSelector::parse(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "grow",
        values: "0 | 1",
        default: "0",
        help: "Grow the last partition to the end of the disk (the filesystem is left to the OS's first boot, like cloud-init's growpart).",
        apply: |spec, v| {
            spec.grow = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "reset-machine-id",
        values: "0 | 1",
        default: "1",
        help: "Empty the image's /etc/machine-id so clones do not share it.",
        apply: |spec, v| {
            spec.identity.reset_machine_id = parse_bool(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "on-success",
        values: "kexec | kexec! | reboot | poweroff | none",
        default: "kexec",
        help: "What the machine does after a successful deploy (PID 1 only; the CLI just exits). `kexec` boots the installed kernel directly, skipping the firmware, and reboots when it cannot (see Handing over); `kexec!` fails instead; `none` stays up showing the result.",
        apply: |spec, v| {
            spec.on_success = SuccessPolicy::parse(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "on-failure",
        values: "halt | reboot | poweroff | retry:N",
        default: "halt",
        help: "What the machine does after a failed deploy: `halt` keeps it up, repeats the error on the console every minute and keeps answering `/status`; `retry:N` runs the whole deploy again up to N times (pausing 10 s, 20 s, … up to 5 min), then halts.",
        apply: |spec, v| {
            spec.on_failure = parse_failure_policy(v)?;
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-kernel",
        values: "/PATH in the installed system",
        default: "(discovered)",
        help: "The kernel to kexec, instead of the BLS entry, grub.cfg default or /vmlinuz found in the installed root.",
        apply: |spec, v| {
            spec.kexec.kernel = Some(absolute_path(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-initrd",
        values: "/PATH in the installed system",
        default: "(discovered)",
        help: "The initrd to kexec with; needs kexec-kernel.",
        apply: |spec, v| {
            spec.kexec.initrd = Some(absolute_path(v)?);
            Ok(())
        },
    },
    ParamDef {
        name: "kexec-cmdline",
        values: "\"ARGS\"",
        default: "(the entry's)",
        help: "The installed kernel's command line, instead of the boot entry's options. `root=` is added when missing; console arguments after `--` are kept.",
        apply: |spec, v| {
            spec.kexec.cmdline = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "report",
        values: "http[s]://URL",
        default: "(none)",
        help: "POST each status event as JSON to this URL (see Status events). Retried in the background; never delays or fails the deploy.",
        apply: |spec, v| {
            if !(v.starts_with("http://") || v.starts_with("https://")) {
                bail!("{v:?} is not an http:// or https:// URL");
            }
            spec.report = Some(v.to_owned());
            Ok(())
        },
    },
    ParamDef {
        name: "status-port",
        values: "PORT",
        default: "(off)",
        help: "Serve the status document read-only at `http://MACHINE:PORT/status` (see Status events).",
        apply: |spec, v| {
            let port: u16 = v
                .parse()
                .ok()
                .filter(|p| *p > 0)
                .with_context(|| format!("{v:?} is not a TCP port (1-65535)"))?;
            spec.status_port = Some(port);
            Ok(())
        },
    },
];

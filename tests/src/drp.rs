//! A Digital Rebar lab for the PXE VM tests: the content pack that
//! `imprint-build drp` writes, rendered for one machine by DRP's template
//! engine (`imprint_build::drp::render`), and served by a [`DrpStandIn`] the
//! way DRP serves it, so that QEMU's own iPXE ROM can boot the machine.
//!
//! DRP answers on two ports: its static file server (8091, the
//! `ProvisionerURL`, plain HTTP: the bootenv's kernel and initrds under
//! `<OS.Name>/<version>/`, `files/`, the rendered `machines/<uuid>/…`) and its
//! API (8092, the `ApiURL`), HTTPS only, with the self-signed certificate DRP
//! generated at install ([`DrpStandIn::start_self_signed`]). The stand-in does the same: its API port is the
//! `ApiURL`, and the [`FixtureServer`] behind its `/files/` and `/machines/`
//! is, on its own port, the `ProvisionerURL` — the only server of the two
//! that serves a path such as `/imprint/<version>/vmlinuz`. Requests to it
//! are in [`DrpLab::file_requests`], API calls in [`DrpStandIn::calls`].

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use imprint_build::drp;
use imprint_qemu::drp::DrpStandIn;
use imprint_qemu::http::{FixtureServer, RequestRecord};
use imprint_qemu::{Disk, DiskInterface, Nic, Vm};
use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{Artifacts, filter, golden_image, sha256_hex};

/// The `image-deploy/image-file` param: the golden image's path on the
/// file server, which (like DRP's) keeps uploaded files under `files/`.
pub const IMAGE_FILE: &str = "files/images/golden.raw.zst";
/// The `image-deploy/install-disk` param, as the README sets it: the
/// machine's disk is attached on AHCI ([`DrpLab::pxe_boot`]) so that it is
/// `/dev/sda`.
pub const INSTALL_DISK: &str = "/dev/sda";
/// What `/files/drpcli.amd64.linux` holds: imprint's agent injection only
/// copies it into the installed OS, so a marker is enough.
pub const DRPCLI: &[u8] = b"#!/bin/sh\necho drpcli stand-in\n";

/// The boot file DHCP names. Like DRP's own `default.ipxe` it only chains
/// to the machine's loader; by the address the firmware was given, so a
/// lease other than `DrpMachine::address` fails the boot.
pub const DEFAULT_IPXE: &str = "default.ipxe";
const CHAIN_BY_ADDRESS: &str = "#!ipxe\nchain ${netX/ip}.ipxe\n";

/// The machine DRP knows: what its templates are rendered for.
#[derive(Debug, Clone)]
pub struct DrpMachine {
    pub uuid: String,
    /// `.Machine.Name`: the hostname imprint injects.
    pub name: String,
    /// The boot NIC's MAC, colon form.
    pub mac: String,
    /// `.Machine.Address`: the address the firmware's DHCP gives it, which
    /// names the `ipxe` loader template (`<address>.ipxe`).
    pub address: String,
}

/// The golden image zstd-compressed and the sha256 of what a deploy writes
/// (the uncompressed image), made once per test binary.
fn compressed_golden() -> &'static (Vec<u8>, String) {
    static GOLDEN: OnceLock<(Vec<u8>, String)> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let image = std::fs::read(golden_image()).expect("reading the golden image");
        let compressed = filter("zstd", &["-q", "-c", "-3"], &image);
        (compressed, sha256_hex(&image))
    })
}

/// `<target>` of the running test binary (`<target>/<profile>/deps/<exe>`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.ancestors()
        .nth(3)
        .expect("the test binary is in <target>/<profile>/deps")
        .to_path_buf()
}

/// One machine set up in DRP for an `imprint` bootenv PXE boot: see the
/// module docs and [`DrpLab::start`].
#[derive(Debug)]
pub struct DrpLab {
    pub drp: DrpStandIn,
    pub machine: DrpMachine,
    /// The renderer's output for the machine: `bootparams` and `templates`.
    pub rendered: Value,
    /// The params the machine's templates were rendered with.
    pub params: Value,
    /// sha256 of the uncompressed golden image: what imprint writes.
    pub image_sha256: String,
    /// The TFTP root QEMU's user network serves: [`DEFAULT_IPXE`] and the
    /// rendered `ipxe` loader.
    tftp: TempDir,
    /// The rendered `ipxe` loader's path (`<address>.ipxe`).
    ipxe_path: String,
    /// The DRP content written for this lab (bundle, tarball), and the
    /// boot NIC's packet capture.
    work: TempDir,
    /// The job a power loss mid-deploy left `running`
    /// ([`with_stale_job`](Self::with_stale_job)).
    pub stale_job: Option<String>,
}

impl DrpLab {
    /// Sets up `machine` in a fresh stand-in:
    ///
    /// 1. writes the DRP content from `out/vmlinuz` and `out/initramfs.img`
    ///    (`imprint_build::drp::write_all`) and renders it for the machine,
    ///    with the guest's view of the stand-in as `ProvisionerURL`
    ///    (the file server's port) and `ApiURL` (the API port), the params
    ///    the README's `drpcli machines set` lines set (the golden image under
    ///    `files/`, `imprint/format` `dd-zst`, `/dev/sda`, the access key
    ///    `key` named `ops`; each checked against image-deploy's schemas),
    ///    cloud-init user-data, a serial console for imprint and, after
    ///    `--`, for the installed OS, and `extra_params` on top;
    /// 2. serves the kernel and initramfs (and the tools and P2P initrds,
    ///    when the script names them) at the URLs the rendered iPXE
    ///    script loads, the compressed image, a `drpcli` stand-in, and the
    ///    rendered `imprint.json` at `/machines/<uuid>/imprint.json`;
    /// 3. does what the README's `drpcli machines workflow UUID
    ///    imprint-image-deploy` does: the machine's workflow starts over at
    ///    the `imprint-deploy` stage and task, in BootEnv `imprint`, and the
    ///    BootEnv change leaves it **not runnable** (DRP's behaviour,
    ///    `qemu/src/drp/machine.rs`), as a real endpoint would;
    /// 4. writes the rendered `ipxe` loader into a TFTP root, beside the
    ///    [`DEFAULT_IPXE`] that DHCP hands the firmware.
    pub fn start(machine: DrpMachine, key: &str, extra_params: Value) -> DrpLab {
        let artifacts = Artifacts::get();
        let content = tempfile::tempdir().expect("temp dir for the DRP content");
        let tools = artifacts.out_dir.join(drp::TOOLS_NAME);
        let p2p = artifacts.out_dir.join(drp::P2P_INITRD_NAME);
        let files = drp::BootFiles {
            kernel: &artifacts.bzimage,
            initramfs: &artifacts.initramfs,
            tools: Some(&tools),
            p2p: Some(&p2p),
        };
        let out = drp::write_all(&files, &content.path().join("drp"), 0)
            .unwrap_or_else(|e| panic!("writing the DRP content: {e:#}"));

        let drp = DrpStandIn::start_self_signed().expect("starting the DRP stand-in");
        let provisioner_url = drp.files().guest_url("");
        let provisioner_url = provisioner_url.trim_end_matches('/').to_owned();
        // DRP's ApiURL is the API's origin; clients add `/api/v3`.
        let api_url = drp.guest_url("");

        // The README's `drpcli machines set` lines, verbatim, checked by
        // the stand-in against image-deploy's param schemas as DRP with
        // RackN's image-deploy plugin installed checks them.
        drp.define_params(&imprint_qemu::drp::params::image_deploy_params());
        let readme = json!({
            "image-deploy/image-file": IMAGE_FILE,
            "imprint/format": "dd-zst",
            "image-deploy/install-disk": INSTALL_DISK,
            "access-keys": {"ops": key},
        });
        let mut params = json!({
            "cloud-init/user-data": "#cloud-config\nruncmd: [\"echo hello from drp\"]\n",
            "kernel-console": "console=ttyS0,115200",
            // imprint's own console; panic=-1 so a PID 1 panic ends the VM.
            "kernel-options": "console=ttyS0 panic=-1",
        });
        for (name, value) in readme.as_object().into_iter().flatten() {
            drp.set_machine_param(&machine.uuid, name, value)
                .unwrap_or_else(|e| panic!("drpcli machines set … param {name}: {e}"));
            params[name] = value.clone();
        }
        for (name, value) in extra_params
            .as_object()
            .expect("extra params are an object")
        {
            params[name] = value.clone();
        }
        let context = json!({
            "machine": {
                "uuid": machine.uuid,
                "name": machine.name,
                "address": machine.address,
                "mac": machine.mac,
            },
            "provisioner_url": provisioner_url,
            "api_url": api_url,
            "token": drp.token(),
            "params": params,
        });
        let renderer = drp::render::renderer(&target_dir())
            .unwrap_or_else(|e| panic!("building the DRP renderer: {e:#}"));
        let rendered = drp::render::render(&renderer, &out.bundle, &context)
            .unwrap_or_else(|e| panic!("rendering the pack for {}: {e:#}", machine.name));

        let template = |name: &str| -> (String, String) {
            let (path, contents) =
                drp::render::template(&rendered, name).unwrap_or_else(|e| panic!("{e:#}"));
            (path.to_owned(), contents.to_owned())
        };
        let (ipxe_path, ipxe) = template("ipxe");
        // The bootenv's files, each where the rendered script's `kernel`
        // and `initrd` lines fetch it (the base initramfs, then the tools).
        let mut wanted = vec![
            ("kernel ", &artifacts.bzimage, 0),
            ("initrd ", &artifacts.initramfs, 0),
            ("initrd ", &tools, 1),
        ];
        // The P2P initrd, which the templates add only for a machine with
        // `imprint/torrent` set.
        if ipxe.contains(drp::P2P_INITRD_NAME) {
            wanted.push(("initrd ", &p2p, 2));
        }
        for (line, file, nth) in wanted {
            let url = ipxe
                .lines()
                .filter_map(|l| l.strip_prefix(line))
                .nth(nth)
                .and_then(|rest| rest.split(' ').next())
                .unwrap_or_else(|| {
                    panic!("the rendered iPXE script lacks {line}line {nth}:\n{ipxe}")
                });
            let path = url.strip_prefix(&provisioner_url).unwrap_or_else(|| {
                panic!("{url} in the iPXE script is not on the provisioner {provisioner_url}")
            });
            drp.files()
                .add_file_from_disk(path, file)
                .unwrap_or_else(|e| panic!("serving {}: {e:#}", file.display()));
        }

        let (compressed, image_sha256) = compressed_golden();
        drp.files()
            .add_file(&format!("/{IMAGE_FILE}"), compressed.clone());
        drp.add_file("drpcli.amd64.linux", DRPCLI);
        let (spec_path, spec) = template("imprint.json");
        let spec_name = spec_path
            .strip_prefix(&format!("machines/{}/", machine.uuid))
            .unwrap_or_else(|| panic!("imprint.json renders to {spec_path}"));
        drp.set_machine_file(&machine.uuid, spec_name, spec);
        drp.set_workflow(
            &machine.uuid,
            drp::WORKFLOW,
            drp::STAGE,
            drp::BOOTENV,
            &[drp::TASK],
        );

        let tftp = tempfile::tempdir().expect("temp dir for TFTP");
        std::fs::write(tftp.path().join(&ipxe_path), &ipxe).expect("writing the iPXE script");
        std::fs::write(tftp.path().join(DEFAULT_IPXE), CHAIN_BY_ADDRESS)
            .expect("writing default.ipxe");
        DrpLab {
            drp,
            machine,
            rendered,
            params,
            image_sha256: image_sha256.clone(),
            tftp,
            ipxe_path,
            work: content,
            stale_job: None,
        }
    }

    /// The machine lost power in the middle of an earlier deploy: its job
    /// is still `running`, and DRP refuses new jobs until an agent fails it.
    pub fn with_stale_job(mut self) -> DrpLab {
        self.stale_job = Some(self.drp.add_stale_job(&self.machine.uuid, "running"));
        self
    }

    /// The jobs PID 1 made (all but [`stale_job`](Self::stale_job)), in order.
    pub fn deploy_jobs(&self) -> Vec<Value> {
        self.drp
            .jobs()
            .into_iter()
            .filter(|job| self.stale_job.as_deref() != job["Uuid"].as_str())
            .collect()
    }

    /// The bootenv's rendered `BootParams`.
    pub fn bootparams(&self) -> &str {
        self.rendered["bootparams"]
            .as_str()
            .expect("the renderer prints bootparams")
    }

    /// The rendered iPXE script the firmware runs.
    pub fn ipxe_script(&self) -> String {
        std::fs::read_to_string(self.tftp.path().join(&self.ipxe_path))
            .expect("reading the iPXE script back")
    }

    /// Requests to the provisioner's file server (kernel, initramfs,
    /// `imprint.json`, the image, `drpcli`), oldest first.
    pub fn file_requests(&self) -> Vec<RequestRecord> {
        self.file_server().requests()
    }

    fn file_server(&self) -> &FixtureServer {
        self.drp.files()
    }

    fn pcap_path(&self) -> PathBuf {
        self.work.path().join("net0.pcap")
    }

    /// The DHCP messages the machine sent on its boot NIC so far (from
    /// QEMU's packet capture of it), as their vendor class identifiers:
    /// iPXE sends `PXEClient:Arch:…`, imprint none (`""`).
    pub fn dhcp_vendor_classes(&self) -> Vec<String> {
        let path = self.pcap_path();
        let pcap = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("reading the capture {}: {e}", path.display()));
        dhcp_vendor_classes(&pcap)
            .unwrap_or_else(|e| panic!("reading the capture {}: {e}", path.display()))
    }

    /// Powers on the machine with one blank `disk`: SeaBIOS runs the NIC's
    /// iPXE ROM (`-boot n`), which gets an address by DHCP from QEMU's user
    /// network, loads [`DEFAULT_IPXE`] and the rendered script over TFTP,
    /// and from it the kernel and initramfs over HTTP from the provisioner. `nic` is the boot NIC
    /// (its MAC must be the machine's); QEMU captures its packets (see
    /// [`dhcp_vendor_classes`](Self::dhcp_vendor_classes)). The VM exits
    /// instead of rebooting.
    pub fn pxe_boot(&self, name: &str, disk: &Path, nic: Nic) -> Vm {
        assert_eq!(
            nic.mac.as_deref(),
            Some(self.machine.mac.as_str()),
            "the boot NIC has the machine's MAC"
        );
        let artifacts = Artifacts::get();
        Vm::builder()
            .nic(nic)
            .boot_from_network(self.tftp.path(), DEFAULT_IPXE)
            // AHCI, so the disk is the README's `/dev/sda`.
            .disk(Disk::new(disk).with_interface(DiskInterface::Ahci))
            .memory_mib(1024)
            .no_reboot(true)
            .console_log(artifacts.log_path(name))
            // The boot NIC's netdev is net0 (imprint_qemu's naming).
            .args([
                "-object".to_owned(),
                format!(
                    "filter-dump,id=dump0,netdev=net0,file={}",
                    self.pcap_path().display()
                ),
            ])
            .start()
            .expect("starting qemu")
    }
}

/// The vendor class identifier (DHCP option 60, `""` when absent) of every
/// DHCP client message (BOOTREQUEST to UDP port 67 over IPv4 on Ethernet)
/// in a pcap capture, in order; other packets are skipped.
pub fn dhcp_vendor_classes(pcap: &[u8]) -> Result<Vec<String>, String> {
    let u32_at = |bytes: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(pcap, 0) != Some(0xa1b2_c3d4) {
        return Err("not a little-endian pcap file".into());
    }
    if u32_at(pcap, 20) != Some(1) {
        return Err("the capture's link type is not Ethernet".into());
    }
    let mut classes = Vec::new();
    let mut at = 24;
    while at < pcap.len() {
        let length = u32_at(pcap, at + 8)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| format!("truncated record header at byte {at}"))?;
        let frame = pcap
            .get(at + 16..at + 16 + length)
            .ok_or_else(|| format!("truncated record at byte {at}"))?;
        at += 16 + length;
        if let Some(class) = dhcp_request_class(frame) {
            classes.push(class);
        }
    }
    Ok(classes)
}

/// Option 60 of `frame` when it is a DHCP client message.
fn dhcp_request_class(frame: &[u8]) -> Option<String> {
    if frame.get(12..14)? != [0x08, 0x00] {
        return None;
    }
    let ip = frame.get(14..)?;
    let header = usize::from(ip.first()? & 0x0f) * 4;
    if *ip.get(9)? != 17 {
        return None;
    }
    let udp = ip.get(header..)?;
    if udp.get(2..4)? != [0, 67] {
        return None;
    }
    let bootp = udp.get(8..)?;
    // BOOTREQUEST, then the magic cookie after the 236-byte fixed part.
    if *bootp.first()? != 1 || bootp.get(236..240)? != [99, 130, 83, 99] {
        return None;
    }
    let mut options = bootp.get(240..)?;
    let mut class = String::new();
    while let [code, rest @ ..] = options {
        match code {
            0 => options = rest,
            255 => break,
            _ => {
                let (&length, rest) = rest.split_first()?;
                let value = rest.get(..usize::from(length))?;
                if *code == 60 {
                    class = String::from_utf8_lossy(value).into_owned();
                }
                options = &rest[usize::from(length)..];
            }
        }
    }
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet/IPv4/UDP frame to `port` carrying a BOOTP `op` message
    /// with `options` after the magic cookie.
    fn frame(port: u16, op: u8, options: &[u8]) -> Vec<u8> {
        let mut bootp = vec![0u8; 236];
        bootp[0] = op;
        bootp.extend([99, 130, 83, 99]);
        bootp.extend(options);
        let mut udp = vec![0, 68];
        udp.extend(port.to_be_bytes());
        udp.extend([0, 0, 0, 0]);
        udp.extend(bootp);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17];
        ip.resize(20, 0);
        ip.extend(udp);
        let mut ethernet = vec![0xff; 6];
        ethernet.extend([0x52, 0x54, 0, 0x12, 0x34, 0x56, 0x08, 0x00]);
        ethernet.extend(ip);
        ethernet
    }

    fn pcap(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = 0xa1b2_c3d4_u32.to_le_bytes().to_vec();
        out.extend([2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        out.extend(1u32.to_le_bytes());
        for frame in frames {
            let length = u32::try_from(frame.len()).unwrap();
            out.extend([0; 8]);
            out.extend(length.to_le_bytes());
            out.extend(length.to_le_bytes());
            out.extend(frame);
        }
        out
    }

    #[test]
    fn dhcp_requests_are_told_apart_by_vendor_class() {
        let pxe = frame(67, 1, b"\x35\x01\x01\x00\x3c\x09PXEClient\xff");
        let plain = frame(67, 1, b"\x35\x01\x01\xff");
        let reply = frame(68, 2, b"\x35\x01\x02\xff");
        let mut arp = frame(67, 1, b"\xff");
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        let capture = pcap(&[pxe, reply, arp, plain]);
        assert_eq!(dhcp_vendor_classes(&capture).unwrap(), ["PXEClient", ""]);
        let err = dhcp_vendor_classes(&capture[..capture.len() - 1]).unwrap_err();
        assert!(err.starts_with("truncated record at byte"), "{err}");
        assert_eq!(
            dhcp_vendor_classes(b"not a capture at all, no").unwrap_err(),
            "not a little-endian pcap file"
        );
    }
}

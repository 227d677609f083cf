//! The Digital Rebar Provision content `imprint-build drp` emits.
//!
//! - `imprint-<version>.amd64.tar`: the kernel and initramfs under
//!   `<version>/`, for `drpcli isos upload`; DRP unpacks it below the
//!   bootenv's `OS.Name` and boots `Kernel`/`Initrds` from there.
//! - the content pack, as a directory (`._Name.meta` and the other meta
//!   files, `bootenvs/`, `templates/`, `params/`, `stages/`, `tasks/`,
//!   `workflows/`, the layout `drpcli contents bundle` reads) and bundled
//!   (`imprint-content.yaml`, `meta` + `sections`, what `drpcli contents
//!   upload` takes).
//!
//! The bootenv `imprint` boots imprint with Sledgehammer's command line
//! conventions (`rs.uuid=`, `provisioner.web=`, static `provisioner.ip=`…
//! from `network-data`, `kernel-options`, `--`, `kernel-console`) and renders
//! `machines/<uuid>/imprint.json`: the machine's deploy spec, filled from
//! image-deploy's params (as the plugin defines them) and the `imprint/*` params generated from
//! [`imprint::spec::PARAMS`] (see [`params`]). PID 1 fetches that file.

pub mod params;
pub mod render;
pub mod yaml;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

/// The bootenv's name. DRP treats a bootenv whose name ends in `-install`
/// as an OS installer (it switches the machine to `local` once the install
/// tasks finish), which imprint is not.
pub const BOOTENV: &str = "imprint";
/// The content pack's name, and the `OS.Name` the tarball unpacks under.
pub const PACK: &str = "imprint";
pub const STAGE: &str = "imprint-deploy";
pub const TASK: &str = "imprint-deploy";
pub const WORKFLOW: &str = "imprint-image-deploy";
/// The erase stage, task and workflow: the same bootenv, with the stage's
/// params making imprint's job an erase.
pub const ERASE_STAGE: &str = "imprint-erase";
pub const ERASE_TASK: &str = "imprint-erase";
pub const ERASE_WORKFLOW: &str = "imprint-erase";
/// The per-machine deploy spec's template and where DRP serves it.
pub const SPEC_TEMPLATE: &str = "imprint.json.tmpl";
pub const SPEC_PATH: &str = "{{.Machine.Path}}/imprint.json";
pub const IPXE_TEMPLATE: &str = "imprint-ipxe.tmpl";
pub const PXELINUX_TEMPLATE: &str = "imprint-pxelinux.tmpl";
pub const GRUB_TEMPLATE: &str = "imprint-grub.tmpl";
pub const KEXEC_TEMPLATE: &str = "imprint-kexec.tmpl";
pub const TASK_TEMPLATE: &str = "imprint-deploy-outside.sh.tmpl";
/// The file names inside the tarball's version directory.
pub const KERNEL_NAME: &str = crate::ipxe::KERNEL_NAME;
pub const INITRAMFS_NAME: &str = crate::ipxe::INITRAMFS_NAME;

/// The workspace version, which names the tarball and the content pack.
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

/// `imprint-<version>.amd64.tar`: the bootenv's `IsoFile`.
pub fn iso_file_name() -> String {
    format!("{PACK}-{}.amd64.tar", version())
}

/// What went into the content and where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrpOutput {
    pub tarball: PathBuf,
    /// Hex SHA-256 of the tarball, as the bootenv's `Sha256` carries it.
    pub tarball_sha256: String,
    pub content_dir: PathBuf,
    pub bundle: PathBuf,
}

/// The tarball as the bootenv describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoInfo {
    pub file: String,
    pub sha256: String,
    /// The tarball carries the rootfs tools initrd, and the bootenv loads
    /// it after the initramfs.
    pub tools: bool,
    /// The tarball carries the P2P initrd, and the loader templates add it
    /// for machines whose `imprint/torrent` is set.
    pub p2p: bool,
}

/// What the bootenv boots.
#[derive(Debug, Clone, Copy)]
pub struct BootFiles<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    /// `rootfs-tools.img` (`imprint-build tools-initrd`), for root-filesystem
    /// images: DRP's default image type is `tgz`, so the one bootenv loads
    /// it when it is given.
    pub tools: Option<&'a Path>,
    /// `imprint-p2p.img` (`imprint-build p2p-initrd`): aria2c for
    /// BitTorrent mode. In the tarball, not in the bootenv's `Initrds`:
    /// the loader templates add it only for machines with
    /// `imprint/torrent` set ([`P2P_PARAM`]).
    pub p2p: Option<&'a Path>,
}

/// The tools initrd's name in the tarball and the bootenv.
pub const TOOLS_NAME: &str = "rootfs-tools.img";
/// The P2P initrd's name in the tarball, beside the kernel.
pub const P2P_INITRD_NAME: &str = crate::p2p::P2P_INITRD_NAME;
/// The param whose value makes the loader templates add the P2P initrd:
/// imprint's `torrent` parameter as the pack generates it.
pub const P2P_PARAM: &str = "imprint/torrent";

/// Writes the tarball, the content directory and the bundle into `out`.
/// `mtime` is the one timestamp in the tarball (SOURCE_DATE_EPOCH).
pub fn write_all(files: &BootFiles<'_>, out: &Path, mtime: u32) -> Result<DrpOutput> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let tarball = out.join(iso_file_name());
    let sha256 = write_tarball(files, &tarball, mtime)?;
    let pack = content_pack(&IsoInfo {
        file: iso_file_name(),
        sha256: sha256.clone(),
        tools: files.tools.is_some(),
        p2p: files.p2p.is_some(),
    });
    let content_dir = out.join(format!("{PACK}-content"));
    write_content_dir(&pack, &content_dir)?;
    let bundle = out.join(format!("{PACK}-content.yaml"));
    write_replacing(&bundle, pack.bundle_yaml().as_bytes())?;
    Ok(DrpOutput {
        tarball,
        tarball_sha256: sha256,
        content_dir,
        bundle,
    })
}

/// A writer that hashes what passes through it.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hash.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `<version>/vmlinuz` and `<version>/initramfs.img` into a
/// deterministic tarball and returns its hex SHA-256.
///
/// DRP unpacks it (`drpcli isos upload`). Entries come in a fixed order with
/// one `mtime`, owner root:root and modes 0755/0644: nothing from the host's
/// file metadata leaks in, so the same kernel and initramfs give the same
/// bytes and the same `Sha256` in the bootenv.
pub fn write_tarball(files: &BootFiles<'_>, out: &Path, mtime: u32) -> Result<String> {
    let temporary = temporary_path(out);
    let file =
        File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    let mut tar = tar::Builder::new(HashingWriter {
        inner: BufWriter::new(file),
        hash: Sha256::new(),
    });
    let mut directory = tar_header(EntryType::Directory, 0o755, 0, mtime)?;
    tar.append_data(&mut directory, format!("{}/", version()), io::empty())
        .context("writing a tar header")?;
    let tools = files.tools.map(|path| (path, TOOLS_NAME));
    let p2p = files.p2p.map(|path| (path, P2P_INITRD_NAME));
    let all = [
        (files.kernel, KERNEL_NAME),
        (files.initramfs, INITRAMFS_NAME),
    ];
    for (source, name) in all.into_iter().chain(tools).chain(p2p) {
        let input = File::open(source).with_context(|| format!("opening {}", source.display()))?;
        let size = input
            .metadata()
            .with_context(|| format!("reading the size of {}", source.display()))?
            .len();
        ensure!(size > 0, "{} is empty", source.display());
        let path = format!("{}/{name}", version());
        let mut header = tar_header(EntryType::Regular, 0o644, size, mtime)?;
        // tar::Builder pads whatever it was given to the header's size: a
        // file that shrank meanwhile would leave a corrupt archive.
        tar.append_data(&mut header, &path, ExactSize::new(input, size))
            .with_context(|| format!("archiving {} as {path}", source.display()))?;
    }
    let HashingWriter { inner, hash } = tar.into_inner().context("ending the tar")?;
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("writing {}", temporary.display()))?;
    file.sync_all()
        .with_context(|| format!("syncing {}", temporary.display()))?;
    std::fs::rename(&temporary, out)
        .with_context(|| format!("renaming {} to {}", temporary.display(), out.display()))?;
    Ok(hex(&hash.finalize()))
}

/// A ustar header with every field but the name fixed: no host metadata.
fn tar_header(kind: EntryType, mode: u32, size: u64, mtime: u32) -> Result<Header> {
    let mut header = Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_mtime(u64::from(mtime));
    header.set_uid(0);
    header.set_gid(0);
    header
        .set_username("root")
        .and_then(|()| header.set_groupname("root"))
        .context("naming the tar entry's owner")?;
    Ok(header)
}

/// Reads exactly `size` bytes of `inner`: an early end is an error.
struct ExactSize<R> {
    inner: io::Take<R>,
}

impl<R: Read> ExactSize<R> {
    fn new(inner: R, size: u64) -> Self {
        ExactSize {
            inner: inner.take(size),
        }
    }
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        if read == 0 && !buf.is_empty() && self.inner.limit() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "the file changed while it was archived: {} bytes short",
                    self.inner.limit()
                ),
            ));
        }
        Ok(read)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn temporary_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".tmp");
    PathBuf::from(name)
}

fn write_replacing(path: &Path, contents: &[u8]) -> Result<()> {
    let temporary = temporary_path(path);
    std::fs::write(&temporary, contents)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// The content pack: its `meta` and its objects by section and name.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentPack {
    pub meta: Value,
    pub sections: BTreeMap<&'static str, BTreeMap<String, Value>>,
}

impl ContentPack {
    /// The bundled form `drpcli contents upload` takes.
    pub fn bundle_yaml(&self) -> String {
        let sections: serde_json::Map<String, Value> = self
            .sections
            .iter()
            .map(|(section, objects)| {
                let objects: serde_json::Map<String, Value> = objects
                    .iter()
                    .map(|(name, object)| (name.clone(), object.clone()))
                    .collect();
                ((*section).to_owned(), Value::Object(objects))
            })
            .collect();
        yaml::to_yaml(&json!({"meta": self.meta, "sections": sections}))
    }
}

/// Writes the directory layout `drpcli contents bundle` reads: one
/// `._<Field>.meta` file per meta field (the value as plain text), one
/// directory per section with one YAML file per object, templates as plain
/// files named by ID (api/content.go `BundleContent` and `FindOrFake`,
/// provision v4.8.0; provision-content's `content/._Name.meta`). There is
/// no `meta.yaml`: `bundle` would ignore it and name the pack
/// `Unspecified`.
/// Files from an earlier build that are no longer part of the pack are
/// removed, so the directory and the bundle always hold the same objects.
pub fn write_content_dir(pack: &ContentPack, dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if let Some(meta) = pack.meta.as_object() {
        for (field, value) in meta {
            let text = value.as_str().unwrap_or_default();
            // FindOrFake trims the file; an empty one is no field.
            if !text.trim().is_empty() {
                write_replacing(&dir.join(format!("._{field}.meta")), text.as_bytes())?;
            }
        }
    }
    for (section, objects) in &pack.sections {
        let section_dir = dir.join(section);
        std::fs::create_dir_all(&section_dir)
            .with_context(|| format!("creating {}", section_dir.display()))?;
        for (name, object) in objects {
            let (file, contents) = if *section == "templates" {
                let text = object["Contents"].as_str().unwrap_or_default();
                (name.clone(), text.to_owned())
            } else {
                (
                    format!("{}.yaml", name.replace('/', ".")),
                    yaml::to_yaml(object),
                )
            };
            write_replacing(&section_dir.join(file), contents.as_bytes())?;
        }
    }
    Ok(())
}

/// The kernel command line: Sledgehammer's (`provisioner.web=`, `rs.uuid=`,
/// `kernel-options`, `--`, `kernel-console`) plus the static address of
/// `network-data`'s `prov` network, the only one Sledgehammer configures
/// (provision-content v4.8.0 `content/bootenvs/sledgehammer.yml`,
/// `BootParams`), when it has an `address`: `provisioner.ip=ADDR/PREFIX` (a
/// `netmask` is turned into the prefix), `.gw=`, `.dns=` (the network's
/// `dns-servers`, else the `dns-servers` param), `.interface=` (as given: a
/// comma-separated list is a preference order), `.vlan=`, `.mtu=`. Other
/// networks (`prod`, `stor`, …) are the installed system's business. One
/// line: the loader templates put it on the iPXE `kernel` line.
pub fn boot_params() -> String {
    const NETWORK: &str = concat!(
        r#"{{- if .ParamExists "network-data" }}"#,
        r#"{{- $name := "prov" }}{{ $net := get (.Param "network-data") $name }}"#,
        r#"{{- if and $net (index $net "address") }}"#,
        r#"{{- with $net }}"#,
        r#"{{- $addr := index . "address" }}"#,
        r#"{{- if not (contains "/" $addr) }}"#,
        r#"{{- $mask := index . "netmask" }}"#,
        r#"{{- if not $mask }}{{ fail (printf "network-data %s: address %s needs a /prefix or a netmask" $name $addr) }}{{ end }}"#,
        r#"{{- $bits := dict "255" 8 "254" 7 "252" 6 "248" 5 "240" 4 "224" 3 "192" 2 "128" 1 "0" 0 }}{{ $prefix := 0 }}"#,
        r#"{{- range splitList "." $mask }}{{ if not (hasKey $bits .) }}{{ fail (printf "network-data %s: netmask %s is not a dotted IPv4 netmask" $name $mask) }}{{ end }}{{ $prefix = add $prefix (get $bits .) }}{{ end }}"#,
        r#"{{- $addr = printf "%s/%d" $addr $prefix }}"#,
        r#"{{- end }} provisioner.ip={{ $addr }}"#,
        r#"{{- with index . "gateway" }} provisioner.gw={{ . }}{{ end }}"#,
        r#"{{- $dns := index . "dns-servers" }}{{ if and (not $dns) ($.ParamExists "dns-servers") }}{{ $dns = $.Param "dns-servers" }}{{ end }}"#,
        r#"{{- with $dns }} provisioner.dns={{ join "," . }}{{ end }}"#,
        r#"{{- with index . "interface" }} provisioner.interface={{ . }}{{ end }}"#,
        r#"{{- with index . "vlan" }} provisioner.vlan={{ . }}{{ end }}"#,
        r#"{{- with index . "mtu" }} provisioner.mtu={{ . }}{{ end }}"#,
        r#"{{- end }}"#,
        r#"{{- end }}"#,
        r#"{{- end }}"#,
    );
    format!(
        "rs.uuid={{{{.Machine.UUID}}}} provisioner.web={{{{.ProvisionerURL}}}}{NETWORK}\
         {{{{ if .ParamExists \"kernel-options\" }}}} {{{{ .ParamExpand \"kernel-options\" }}}}{{{{ end }}}} --\
         {{{{ if .ParamExists \"kernel-console\" }}}} {{{{ .ParamExpand \"kernel-console\" }}}}{{{{ end }}}}"
    )
}

/// iPXE. `BOOTIF=` goes before the bootenv's parameters, not after them
/// as in DRP's stock template: the parameters end with `-- console…`, and
/// everything after `--` is init's argv, not a kernel parameter. No
/// `initrd=` here: for a template whose path ends in `.ipxe`, DRP's
/// `.BootParams` itself starts with `initrd=<first initrd's base name>`
/// (backend/renderData.go `BootParamsFor`, hartsock/provision), which the
/// EFI stub needs.
const IPXE: &str = r#"#!ipxe
# imprint ({{.Env.Name}}) for {{.Machine.Name}}
kernel {{.Env.PathFor "http" .Env.Kernel}} BOOTIF=01-${netX/mac:hexhyp} {{.BootParams}}
{{ range $initrd := .Env.Initrds -}}
initrd {{$.Env.PathFor "http" $initrd}}
{{ end -}}
boot
"#;

/// pxelinux. `IPAPPEND 2` is pxelinux's own way to add `BOOTIF=`; it lands
/// at the very end of the line.
const PXELINUX: &str = r#"DEFAULT imprint
PROMPT 0
TIMEOUT 10
LABEL imprint
  KERNEL {{.Env.PathFor "tftp" .Env.Kernel}}
  INITRD {{.Env.JoinInitrds "tftp"}}
  APPEND {{.BootParams}}
  IPAPPEND 2
"#;

/// GRUB (UEFI netboot), as stock's `default-grub.tmpl` (provision-content
/// v4.8.0): `(tftp)/` paths, `linuxefi`/`initrdefi` on x86 EFI (where
/// shim's GRUB wants them), `linux`/`initrd` elsewhere. GRUB knows the boot
/// NIC's MAC as `$net_default_mac` (colon form); `BOOTIF=` goes before the
/// `--`, as in the iPXE template.
const GRUB: &str = r#"set _kernel=linux
set _module=initrd
if [ "${grub_platform}" = "efi" -a "${grub_cpu}" != "arm64" ]; then
    set _kernel=linuxefi
    set _module=initrdefi
fi
function kernel { $_kernel "$@"; }
function module { $_module "$@"; }
kernel (tftp)/{{.Env.PathFor "tftp" .Env.Kernel}} BOOTIF=01-${net_default_mac} {{.BootParams}}
{{ range $initrd := .Env.Initrds -}}
module (tftp)/{{$.Env.PathFor "tftp" $initrd}}
{{ end -}}
boot
"#;

/// What a running `drpcli agent` reads from `machines/<uuid>/kexec` to
/// switch bootenvs without a firmware reboot when `kexec-ok` is true
/// (agent/agent.go `loadKexec`, provision v4.8.0; stock `kexec.tmpl`,
/// provision-content v4.8.0): `kernel URL`, one `initrd URL` (the agent
/// refuses more), `params LINE`. The agent appends the running kernel's
/// `BOOTIF=` to `params`, after the `--`; imprint reads it there too.
/// One initrd means the base initramfs only: a machine switched in by
/// kexec deploys disk images, and a root-filesystem image fails before
/// writing, naming the missing mkfs tool.
const KEXEC: &str = r#"kernel {{.Env.PathFor "http" .Env.Kernel}}
initrd {{.Env.PathFor "http" (index .Env.Initrds 0)}}
params {{.BootParams}}
"#;

/// The P2P initrd's path for `proto` (`http` or `tftp`), beside the
/// bootenv's kernel in the tarball's version directory. `.Env.PathFor`
/// takes any path inside the unpacked tarball, not only `Kernel` and
/// `Initrds` (backend/renderData.go `PathForArch`, hartsock/provision;
/// doc/arch/data.rst, provision v4.8.0); sprig's `dir` is in DRP's
/// template functions (models/templateInfo.go `DrpSafeFuncMap`).
fn p2p_path(proto: &str) -> String {
    format!(
        "{{{{ .Env.PathFor \"{proto}\" (printf \"%s/{P2P_INITRD_NAME}\" (dir .Env.Kernel)) }}}}"
    )
}

/// `text` between the opening and closing of "this machine asks for a
/// swarm": `imprint/torrent` set and not empty. Two nested `if`s, not
/// `and`: before Go 1.18 `and` evaluated every argument, and `.Param` of
/// an unset param fails the render.
fn if_p2p(text: &str) -> String {
    format!(
        "{{{{ if .ParamExists \"{P2P_PARAM}\" }}}}{{{{ if .Param \"{P2P_PARAM}\" }}}}{text}{{{{ end }}}}{{{{ end }}}}"
    )
}

/// Inserts `addition` before the last `anchor` in `template`.
fn insert_before(template: &str, anchor: &str, addition: &str) -> String {
    let at = template
        .rfind(anchor)
        .unwrap_or_else(|| panic!("the loader template lacks {anchor:?}"));
    format!("{}{addition}{}", &template[..at], &template[at..])
}

/// The loader templates (iPXE, pxelinux, GRUB), with the P2P initrd added
/// after the bootenv's `Initrds` for machines whose `imprint/torrent` is
/// set when the tarball carries it. The bootenv's `Initrds` cannot say
/// "only for some machines", so the templates do: a machine deploying over
/// HTTP fetches none of aria2c's megabytes. iPXE and GRUB get one more
/// `initrd`/`module` line; iPXE names no `initrd=` for it: under UEFI,
/// iPXE 1.21.1 and later hand the kernel every initrd through the
/// `LoadFile2` initrd device path, which Linux 5.8 and later's EFI stub
/// reads before any `initrd=`. pxelinux's `INITRD` takes a comma-separated
/// list (syslinux 3.71 and later). The `kexec` template keeps one initrd:
/// the agent refuses more, and a machine switched in by kexec reads over
/// HTTP with imprint's warning that aria2c is missing.
pub fn loader_templates(p2p: bool) -> [(&'static str, String); 3] {
    if !p2p {
        return [
            (IPXE_TEMPLATE, IPXE.to_owned()),
            (PXELINUX_TEMPLATE, PXELINUX.to_owned()),
            (GRUB_TEMPLATE, GRUB.to_owned()),
        ];
    }
    // Right after the `Initrds` loop's `{{ end -}}`: the line appears whole
    // or not at all, never as an empty line.
    let line = |keyword: &str, proto: &str, prefix: &str| {
        if_p2p(&format!("{keyword} {prefix}{}\n", p2p_path(proto)))
    };
    [
        (
            IPXE_TEMPLATE,
            insert_before(IPXE, "boot\n", &line("initrd", "http", "")),
        ),
        (
            PXELINUX_TEMPLATE,
            insert_before(
                PXELINUX,
                "\n  APPEND ",
                &if_p2p(&format!(",{}", p2p_path("tftp"))),
            ),
        ),
        (
            GRUB_TEMPLATE,
            insert_before(GRUB, "boot\n", &line("module", "tftp", "(tftp)/")),
        ),
    ]
}

/// Run by a DRP runner only if the machine did not boot into imprint:
/// inside imprint, PID 1 itself takes the job for this task and reports to
/// it, so a runner elsewhere must not mark it done.
const TASK_SCRIPT: &str = r#"#!/usr/bin/env sh
# imprint-deploy is carried out by imprint's PID 1, which claims this job
# through the DRP API. A runner only gets here when the machine did not
# PXE boot into the imprint bootenv, so nothing was deployed: fail loudly.
# The task's sane-exit-codes flag makes exit 1 "failed"; without it the
# runner would read 1 as "reboot" and finish the job.
echo "imprint-deploy: machine {{.Machine.UUID}} did not boot into the imprint bootenv; check that it PXE boots and that its BootEnv is imprint" >&2
exit 1
"#;

/// The per-machine deploy spec PID 1 fetches from
/// `<provisioner.web>/machines/<uuid>/imprint.json`. Every value goes
/// through `toJson` or `ParamAsJSON`; nothing is quoted by hand.
///
/// `image-deploy/image-url` and `image-deploy/image-file` go through
/// `.ParamExpand`, and the file is appended to `{{.ProvisionerURL}}/` as it
/// is, as image-deploy's `curtin-config.yaml.tmpl` does (provision-plugins
/// v4.8.0): an uploaded file is `files/<name>`, an ISO `isos/<name>`.
pub fn spec_template() -> String {
    let mut text = String::from(concat!(
        "{{- /* imprint's deploy spec for this machine; generated by imprint-build from imprint::spec::PARAMS. */ -}}\n",
        // An erase job (the imprint-erase stage's params) needs no image.
        "{{- $erase := false -}}\n",
        "{{- if .ParamExists \"imprint/action\" -}}{{- if eq (.ParamExpand \"imprint/action\") \"erase\" -}}{{- $erase = true -}}{{- end -}}{{- end -}}\n",
        "{{- $url := \"\" -}}\n",
        "{{- if .ParamExists \"image-deploy/image-url\" -}}\n",
        "{{- $url = .ParamExpand \"image-deploy/image-url\" -}}\n",
        "{{- else if .ParamExists \"image-deploy/image-file\" -}}\n",
        "{{- $url = printf \"%s/%s\" (trimSuffix \"/\" .ProvisionerURL) (trimPrefix \"/\" (.ParamExpand \"image-deploy/image-file\")) -}}\n",
        "{{- else if not $erase -}}\n",
        "{{- fail \"imprint.json: set image-deploy/image-url or image-deploy/image-file on the machine\" -}}\n",
        "{{- end -}}\n",
        "{{- if not (or $erase (.ParamExists \"image-deploy/install-disk\")) -}}\n",
        "{{- fail \"imprint.json: set image-deploy/install-disk on the machine (e.g. /dev/sda)\" -}}\n",
        "{{- end -}}\n",
        "{\n",
        "{{- if $url }}\n",
        "  \"url\": {{ toJson $url }},\n",
        "{{- end }}\n",
        "{{- if .ParamExists \"image-deploy/install-disk\" }}\n",
        "  \"disk\": {{ .ParamAsJSON \"image-deploy/install-disk\" }},\n",
        "{{- end }}\n",
        "  \"hostname\": {{ toJson .Machine.Name }},\n",
        "  \"drp\": {\n",
        "    \"endpoint\": {{ toJson .ApiURL }},\n",
        "    \"token\": {{ toJson .GenerateInfiniteToken }},\n",
        "    \"machine-id\": {{ toJson .Machine.UUID }},\n",
        "    \"provisioner-web\": {{ toJson .ProvisionerURL }}\n",
        "  }\n",
        "{{- if .ParamExists \"access-keys\" }},\n",
        "  \"access-keys\": {{ .ParamAsJSON \"access-keys\" }}\n",
        "{{- end }}\n",
        "{{- if .ParamExists \"cloud-init/user-data\" }},\n",
        "  \"cloud-init\": {\"user-data\": {{ .ParamAsJSON \"cloud-init/user-data\" }}}\n",
        "{{- end }}\n",
        // image-deploy's partition layout for rootfs images: curtin's
        // storage config (its `curtin-config.yaml.tmpl` copies the param's
        // `storage` into curtin's config; params/curtin.partitions.yaml,
        // provision-plugins v4.8.0), read by imprint as a layout.
        "{{- if .ParamExists \"curtin/partitions\" }},\n",
        "  \"curtin-storage\": {{ .ParamAsJSON \"curtin/partitions\" }}\n",
        "{{- end }}\n",
        // image-deploy's additional-tarballs (the shape of
        // params/image-deploy.additional-tarballs.yaml, provision-plugins
        // v4.8.0: index, format, uri, drpserved), with `drpserved` URIs made
        // absolute on the file server, as its curtin template does.
        "{{- if .ParamExists \"image-deploy/additional-tarballs\" }},\n",
        "  \"additional-tarballs\": [\n",
        "{{- range $i, $t := .Param \"image-deploy/additional-tarballs\" }}{{ if $i }},{{ end }}\n",
        "    {\"uri\": {{ if $t.drpserved }}{{ toJson (printf \"%s/%s\" (trimSuffix \"/\" $.ProvisionerURL) (trimPrefix \"/\" $t.uri)) }}{{ else }}{{ toJson $t.uri }}{{ end }}, ",
        "\"format\": {{ toJson $t.format }}, \"index\": {{ toJson $t.index }}}\n",
        "{{- end }}\n",
        "  ]\n",
        "{{- end }}\n",
    ));
    text.push_str(&params::spec_template_lines());
    text.push_str("}\n");
    text
}

/// The classic params `imprint.json` and the command line read.
pub const CLASSIC_PARAMS: &[&str] = &[
    "image-deploy/image-url",
    "image-deploy/image-file",
    "image-deploy/image-type",
    "image-deploy/additional-tarballs",
    "curtin/partitions",
    "access-keys",
    "cloud-init/user-data",
    "network-data",
    "dns-servers",
    "kernel-options",
    "kernel-console",
];

fn template_object(id: &str, description: &str, contents: &str) -> Value {
    json!({"ID": id, "Description": description, "Contents": contents})
}

/// Every object of the content pack, for a tarball described by `iso`.
pub fn content_pack(iso: &IsoInfo) -> ContentPack {
    let mut initrds = vec![format!("{}/{INITRAMFS_NAME}", version())];
    if iso.tools {
        initrds.push(format!("{}/{TOOLS_NAME}", version()));
    }
    let meta_color = json!({"icon": "hdd", "color": "blue", "title": "imprint"});
    let loader = |name: &str, id: &str, path: &str| json!({"Name": name, "ID": id, "Path": path});
    let mut optional: Vec<String> = CLASSIC_PARAMS.iter().map(|s| (*s).to_owned()).collect();
    optional.extend(params::imprint_params().map(params::drp_name));
    let bootenv = json!({
        "Name": BOOTENV,
        "Description": "Stream a golden disk image onto the machine with imprint",
        "Documentation": concat!(
            "Boots imprint's kernel and initramfs. Its PID 1 fetches the machine's deploy spec from\n",
            "`{{.ProvisionerURL}}/machines/<uuid>/imprint.json` (rendered from the `image-deploy/*`,\n",
            "`access-keys`, `cloud-init/user-data` and `imprint/*` params), streams the image onto\n",
            "`image-deploy/install-disk`, injects the machine's identity and hands over.\n",
        ),
        "Meta": meta_color,
        "OnlyUnknown": false,
        "OS": {
            "Name": PACK,
            "Family": "imprint",
            "Version": version(),
            "SupportedArchitectures": {
                "amd64": {
                    "IsoFile": iso.file,
                    "Sha256": iso.sha256,
                    "Kernel": format!("{}/{KERNEL_NAME}", version()),
                    "Initrds": initrds,
                    "BootParams": boot_params(),
                },
            },
        },
        "RequiredParams": ["image-deploy/install-disk"],
        "OptionalParams": optional,
        "Templates": [
            loader("pxelinux", PXELINUX_TEMPLATE, "pxelinux.cfg/{{.Machine.HexAddress}}"),
            loader("ipxe", IPXE_TEMPLATE, "{{.Machine.Address}}.ipxe"),
            loader("pxelinux-mac", PXELINUX_TEMPLATE, "pxelinux.cfg/{{.Machine.MacAddr \"pxelinux\"}}"),
            loader("ipxe-mac", IPXE_TEMPLATE, "{{.Machine.MacAddr \"ipxe\"}}.ipxe"),
            loader("grub", GRUB_TEMPLATE, "grub/{{.Machine.Address}}.cfg"),
            loader("grub-mac", GRUB_TEMPLATE, "grub/{{.Machine.MacAddr \"grub\"}}.cfg"),
            loader("kexec", KEXEC_TEMPLATE, "{{.Machine.Path}}/kexec"),
            loader("imprint.json", SPEC_TEMPLATE, SPEC_PATH),
        ],
    });
    let [(_, ipxe), (_, pxelinux), (_, grub)] = loader_templates(iso.p2p);
    let templates = [
        template_object(IPXE_TEMPLATE, "iPXE script that boots imprint", &ipxe),
        template_object(
            PXELINUX_TEMPLATE,
            "pxelinux config that boots imprint",
            &pxelinux,
        ),
        template_object(GRUB_TEMPLATE, "GRUB config that boots imprint", &grub),
        template_object(
            KEXEC_TEMPLATE,
            "What drpcli agent kexecs into imprint with (kexec-ok)",
            KEXEC,
        ),
        template_object(
            SPEC_TEMPLATE,
            "The machine's imprint deploy spec (JSON)",
            &spec_template(),
        ),
        template_object(
            TASK_TEMPLATE,
            "Fails the task when it runs outside imprint",
            TASK_SCRIPT,
        ),
    ];
    let stage = json!({
        "Name": STAGE,
        "Description": "Deploy the machine's image with imprint",
        "Documentation": "Switches the machine to the `imprint` bootenv; the runner reboots it into imprint, whose PID 1 runs the `imprint-deploy` task's job and reports to it.\n",
        "BootEnv": BOOTENV,
        "Tasks": [TASK],
        "Meta": meta_color,
    });
    let task = json!({
        "Name": TASK,
        "Description": "Stream the image onto the disk (carried out by imprint's PID 1)",
        "Documentation": "imprint's PID 1 claims this task's job, logs the deploy into it and finishes or fails it. Should a runner outside imprint get the job, its script fails, since nothing was deployed.\n",
        "RequiredParams": ["image-deploy/install-disk"],
        "OptionalParams": CLASSIC_PARAMS,
        "Templates": [{"Name": "imprint-deploy-outside", "Path": "", "ID": TASK_TEMPLATE}],
        // The runner's exit-code table: with this flag 0 is success and 1
        // failure; without it 1 means "reboot" and the job is finished
        // (agent/taskRunner.go `perform`, provision v4.8.0).
        "Meta": {"icon": "hdd", "color": "blue", "title": "imprint", "feature-flags": "sane-exit-codes"},
    });
    let workflow = json!({
        "Name": WORKFLOW,
        "Description": "Deploy an image with imprint, then boot from disk",
        "Documentation": "`imprint-deploy` writes the image; `complete` switches the machine to the `local` bootenv, so the next boot is from disk and not another deploy.\n",
        "Stages": [STAGE, "complete"],
        "Meta": meta_color,
    });
    // Stages carry Params, below a machine's own and its profiles' and
    // above the global profile (docs.rackn.io, arch/models/stage and
    // `drpcli params`' lookup order): a machine's `imprint/erase` chooses
    // the mode, the stage makes the job an erase.
    let erase_stage = json!({
        "Name": ERASE_STAGE,
        "Description": "Erase the machine's disks with imprint",
        "Documentation": "Switches the machine to the `imprint` bootenv with `imprint/action` = `erase`: imprint erases the disks `imprint/erase-disks` names (default here: every fixed disk) by `imprint/erase` (default here: `auto`), reads them back, logs each disk's method, seconds and verification into this stage's job, and powers the machine off.\n",
        "BootEnv": BOOTENV,
        "Tasks": [ERASE_TASK],
        "Params": {
            "imprint/action": "erase",
            "imprint/erase": "auto",
            "imprint/erase-disks": "all",
            "imprint/on-success": "poweroff",
        },
        "Meta": meta_color,
    });
    let erase_task = json!({
        "Name": ERASE_TASK,
        "Description": "Erase disks (carried out by imprint's PID 1)",
        "Documentation": "imprint's PID 1 claims this task's job, logs the erase plan and each disk's result into it and finishes or fails it. Should a runner outside imprint get the job, its script fails, since nothing was erased.\n",
        "OptionalParams": ["imprint/erase", "imprint/erase-disks"],
        "Templates": [{"Name": "imprint-deploy-outside", "Path": "", "ID": TASK_TEMPLATE}],
        "Meta": {"icon": "eraser", "color": "blue", "title": "imprint", "feature-flags": "sane-exit-codes"},
    });
    let erase_workflow = json!({
        "Name": ERASE_WORKFLOW,
        "Description": "Erase every fixed disk with imprint, then power off",
        "Documentation": "`imprint-erase` erases and powers the machine off; `complete` switches it to the `local` bootenv, so it does not erase again when it is next powered on. Assign a deploy workflow to bring it back into service.\n",
        "Stages": [ERASE_STAGE, "complete"],
        "Meta": meta_color,
    });
    let mut sections: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    sections.insert("bootenvs", BTreeMap::from([(BOOTENV.to_owned(), bootenv)]));
    sections.insert(
        "templates",
        templates
            .into_iter()
            .map(|t| (t["ID"].as_str().unwrap_or_default().to_owned(), t))
            .collect(),
    );
    sections.insert(
        "params",
        params::imprint_params()
            .map(|def| (params::drp_name(def), params::param_object(def)))
            .collect(),
    );
    sections.insert(
        "stages",
        BTreeMap::from([
            (STAGE.to_owned(), stage),
            (ERASE_STAGE.to_owned(), erase_stage),
        ]),
    );
    sections.insert(
        "tasks",
        BTreeMap::from([(TASK.to_owned(), task), (ERASE_TASK.to_owned(), erase_task)]),
    );
    sections.insert(
        "workflows",
        BTreeMap::from([
            (WORKFLOW.to_owned(), workflow),
            (ERASE_WORKFLOW.to_owned(), erase_workflow),
        ]),
    );
    let meta = json!({
        "Name": PACK,
        "Version": format!("v{}", version()),
        "Description": "imprint: stream golden disk images onto bare metal",
        "Documentation": concat!(
            "Boot environment, templates, params, stage, task and workflow to deploy images\n",
            "with imprint instead of Sledgehammer. Upload the boot tarball with\n",
            "`drpcli isos upload`, this pack with `drpcli contents upload`.\n",
        ),
        "License": "Apache-2.0",
        // The workflow's `complete` stage and the `local` bootenv
        // (provision-content v4.8.0 `content/`, `._Name.meta`).
        "Prerequisites": "drp-community-content",
        "Source": "imprint-build drp",
    });
    ContentPack { meta, sections }
}

#[cfg(test)]
mod tests {
    use super::*;
    use imprint::cmdline::KernelCmdline;

    fn pack() -> ContentPack {
        content_pack(&IsoInfo {
            file: iso_file_name(),
            sha256: "ab".repeat(32),
            tools: true,
            p2p: true,
        })
    }

    #[test]
    fn bootenv_names_the_tarball_and_its_files() {
        let pack = pack();
        let env = &pack.sections["bootenvs"][BOOTENV];
        assert!(!env["Name"].as_str().unwrap().ends_with("-install"));
        let amd64 = &env["OS"]["SupportedArchitectures"]["amd64"];
        assert_eq!(amd64["IsoFile"], format!("imprint-{}.amd64.tar", version()));
        assert_eq!(amd64["Sha256"], "ab".repeat(32));
        assert_eq!(amd64["Kernel"], format!("{}/vmlinuz", version()));
        assert_eq!(amd64["Initrds"][0], format!("{}/initramfs.img", version()));
        assert_eq!(
            amd64["Initrds"][1],
            format!("{}/rootfs-tools.img", version())
        );
        let without = content_pack(&IsoInfo {
            file: iso_file_name(),
            sha256: String::new(),
            tools: false,
            p2p: false,
        });
        let amd64 = &without.sections["bootenvs"][BOOTENV]["OS"]["SupportedArchitectures"]["amd64"];
        assert_eq!(amd64["Initrds"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn every_referenced_template_is_in_the_pack() {
        let pack = pack();
        let ids = &pack.sections["templates"];
        let env = &pack.sections["bootenvs"][BOOTENV];
        for template in env["Templates"].as_array().unwrap() {
            assert!(
                ids.contains_key(template["ID"].as_str().unwrap()),
                "{template}"
            );
        }
        let task = &pack.sections["tasks"][TASK];
        assert!(ids.contains_key(task["Templates"][0]["ID"].as_str().unwrap()));
    }

    #[test]
    fn boot_params_template_is_one_line() {
        let text = boot_params();
        assert!(!text.contains('\n'));
        // Without the templating, the skeleton is Sledgehammer's.
        let cmdline = KernelCmdline::parse(&text);
        assert_eq!(cmdline.params[0].key, "rs.uuid");
        assert_eq!(cmdline.params[1].key, "provisioner.web");
    }

    #[test]
    fn spec_template_has_a_line_per_generated_param() {
        let text = spec_template();
        for def in params::imprint_params() {
            assert!(
                text.contains(&format!("\"{}\": {{{{ .ParamAsJSON", def.name)),
                "{}",
                def.name
            );
        }
    }

    /// A kernel and an initramfs of `initramfs_len` bytes in `dir`.
    fn boot_files(dir: &Path, initramfs_len: usize) -> (PathBuf, PathBuf) {
        let kernel = dir.join("k");
        let initramfs = dir.join("i");
        std::fs::write(&kernel, b"kernel bytes").unwrap();
        std::fs::write(&initramfs, vec![1u8; initramfs_len]).unwrap();
        (kernel, initramfs)
    }

    fn files<'a>(kernel: &'a Path, initramfs: &'a Path) -> BootFiles<'a> {
        BootFiles {
            kernel,
            initramfs,
            tools: None,
            p2p: None,
        }
    }

    #[test]
    fn tarball_holds_the_boot_files_as_root_with_fixed_modes_and_mtime() {
        let dir = tempfile::tempdir().unwrap();
        // One whole block: no padding after it.
        let (kernel, initramfs) = boot_files(dir.path(), 512);
        let out = dir.path().join("a.tar");
        write_tarball(&files(&kernel, &initramfs), &out, 1_700_000_000).unwrap();
        // Three headers, two data blocks, two end blocks.
        assert_eq!(std::fs::metadata(&out).unwrap().len(), 7 * 512);
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        let entries: Vec<_> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                let header = entry.header();
                (
                    String::from_utf8(header.path_bytes().into_owned()).unwrap(),
                    header.entry_type(),
                    header.mode().unwrap(),
                    (header.uid().unwrap(), header.gid().unwrap()),
                    (
                        header.username().unwrap().map(str::to_owned),
                        header.groupname().unwrap().map(str::to_owned),
                    ),
                    header.mtime().unwrap(),
                    data,
                )
            })
            .collect();
        let entry = |path: String, kind, mode, data: Vec<u8>| {
            let owner = (Some("root".to_owned()), Some("root".to_owned()));
            (path, kind, mode, (0, 0), owner, 1_700_000_000, data)
        };
        let v = version();
        assert_eq!(
            entries,
            [
                entry(format!("{v}/"), EntryType::Directory, 0o755, Vec::new()),
                entry(
                    format!("{v}/{KERNEL_NAME}"),
                    EntryType::Regular,
                    0o644,
                    b"kernel bytes".to_vec()
                ),
                entry(
                    format!("{v}/{INITRAMFS_NAME}"),
                    EntryType::Regular,
                    0o644,
                    vec![1u8; 512]
                ),
            ]
        );
    }

    #[test]
    fn tarball_carries_the_optional_initrds_after_the_boot_files() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initramfs) = boot_files(dir.path(), 100);
        let (tools, p2p) = (dir.path().join("t"), dir.path().join("p"));
        std::fs::write(&tools, b"tools").unwrap();
        std::fs::write(&p2p, b"aria2c").unwrap();
        let out = dir.path().join("a.tar");
        let files = BootFiles {
            tools: Some(&tools),
            p2p: Some(&p2p),
            ..files(&kernel, &initramfs)
        };
        write_tarball(&files, &out, 0).unwrap();
        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        let names: Vec<(String, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                let path = String::from_utf8(entry.header().path_bytes().into_owned()).unwrap();
                (path, data)
            })
            .collect();
        let v = version();
        let paths: Vec<&str> = names.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            paths,
            [
                format!("{v}/"),
                format!("{v}/{KERNEL_NAME}"),
                format!("{v}/{INITRAMFS_NAME}"),
                format!("{v}/{TOOLS_NAME}"),
                format!("{v}/{P2P_INITRD_NAME}"),
            ]
        );
        assert_eq!(names[4].1, b"aria2c");
    }

    #[test]
    fn a_file_that_shrinks_while_archived_is_an_error() {
        let mut short = ExactSize::new(&b"abc"[..], 10);
        let error = io::copy(&mut short, &mut io::sink()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert!(error.to_string().contains("7 bytes short"), "{error}");
        let mut exact = ExactSize::new(&b"abcdef"[..], 3);
        assert_eq!(io::copy(&mut exact, &mut io::sink()).unwrap(), 3);
    }

    #[test]
    fn tarball_is_deterministic_and_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let (kernel, initramfs) = boot_files(dir.path(), 3000);
        let first = dir.path().join("a.tar");
        let second = dir.path().join("b.tar");
        let hash = write_tarball(&files(&kernel, &initramfs), &first, 0).unwrap();
        assert_eq!(
            write_tarball(&files(&kernel, &initramfs), &second, 0).unwrap(),
            hash
        );
        let bytes = std::fs::read(&first).unwrap();
        assert_eq!(bytes, std::fs::read(&second).unwrap());
        assert_eq!(hex(&Sha256::digest(&bytes)), hash);
        let other = write_tarball(&files(&kernel, &initramfs), &second, 1).unwrap();
        assert_ne!(other, hash, "the mtime is part of the archive");
        std::fs::write(&initramfs, b"").unwrap();
        let err = write_tarball(&files(&kernel, &initramfs), &first, 0).unwrap_err();
        assert!(format!("{err:#}").contains("is empty"), "{err:#}");
    }
}

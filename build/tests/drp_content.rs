//! The DRP content rendered by Go's text/template + sprig (DRP's own
//! engine) through `build/drp-render`, and its output read back by imprint
//! itself: `imprint.json` through `DeploySpec::apply_json`, the boot
//! parameters through `KernelCmdline::parse`.
//!
//! Go is required, not optional: `scripts/setup` installs `golang-go`,
//! `golang-github-masterminds-sprig-dev` and `golang-gopkg-yaml.v3-dev`.
#![recursion_limit = "256"]

use std::path::{Path, PathBuf};

use imprint::cmdline::KernelCmdline;
use imprint::pipeline::format::DeclaredFormat;
use imprint::spec::{DeploySpec, SuccessPolicy};
use imprint_build::drp;
use serde_json::{Value, json};

/// The renderer, built once per test run into the target directory.
fn renderer() -> PathBuf {
    // CARGO_TARGET_TMPDIR is <target>/tmp.
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target tmp dir has a parent");
    drp::render::renderer(target).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The content written by `imprint-build drp` from stand-in boot files.
struct Content {
    /// Holds the files `out` names.
    _dir: tempfile::TempDir,
    out: drp::DrpOutput,
}

fn content() -> Content {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("vmlinuz");
    let initramfs = dir.path().join("initramfs.img");
    std::fs::write(&kernel, vec![0x4d; 4096]).unwrap();
    let tools = dir.path().join("rootfs-tools.img");
    std::fs::write(&initramfs, vec![0x28; 10_000]).unwrap();
    std::fs::write(&tools, vec![0x29; 3_000]).unwrap();
    let files = drp::BootFiles {
        kernel: &kernel,
        initramfs: &initramfs,
        tools: Some(&tools),
    };
    let out = drp::write_all(&files, &dir.path().join("drp"), 0).unwrap();
    Content { _dir: dir, out }
}

/// Renders everything for one machine: Ok(output JSON) or Err(the message).
fn render(content: &Content, context: &Value) -> Result<Value, String> {
    drp::render::render(&renderer(), &content.out.bundle, context).map_err(|e| format!("{e:#}"))
}

/// Renders for a machine with an image URL and a disk, plus `params`.
fn render_deployable(content: &Content, params: Value) -> Result<Value, String> {
    let mut all = json!({
        "image-deploy/image-url": "http://h/a.img",
        "image-deploy/install-disk": "/dev/sda",
    });
    for (name, value) in params.as_object().expect("params are an object") {
        all[name] = value.clone();
    }
    render(content, &context(all))
}

fn validate(content: &Content) -> Result<(), String> {
    drp::render::validate(&renderer(), &content.out.bundle, &content.out.content_dir)
        .map_err(|e| format!("{e:#}"))
}

fn template<'a>(rendered: &'a Value, name: &str) -> (&'a str, &'a str) {
    drp::render::template(rendered, name).unwrap_or_else(|e| panic!("{e:#}"))
}

const UUID: &str = "3f2a1b4c-0000-4000-8000-000000000001";
const TOKEN: &str = "tok\"en<&>\\n";

fn context(params: Value) -> Value {
    json!({
        "machine": {"uuid": UUID, "name": "web-01.lab", "address": "10.0.2.15", "mac": "52:54:00:12:34:56"},
        "provisioner_url": "http://10.0.2.2:8091",
        "api_url": "https://10.0.2.2:8092",
        "token": TOKEN,
        "params": params,
    })
}

fn spec_from(rendered: &Value) -> DeploySpec {
    let (path, json) = template(rendered, "imprint.json");
    assert_eq!(path, format!("machines/{UUID}/imprint.json"));
    let mut spec = DeploySpec::default();
    spec.apply_json(json)
        .unwrap_or_else(|e| panic!("imprint refuses imprint.json: {e:#}\n{json}"));
    spec
}

fn check_drp_identity(spec: &DeploySpec) {
    let drp = spec.identity.drp.as_ref().expect("drp agent block");
    assert_eq!(drp.endpoint, "https://10.0.2.2:8092");
    assert_eq!(drp.token.expose(), TOKEN);
    assert_eq!(drp.machine_id, UUID);
    assert_eq!(drp.provisioner_web, "http://10.0.2.2:8091");
    assert_eq!(spec.identity.hostname.as_deref(), Some("web-01.lab"));
}

#[test]
fn the_pack_carries_what_drp_validates() {
    let content = content();
    validate(&content).unwrap();
    let bundle = std::fs::read_to_string(&content.out.bundle).unwrap();
    assert!(bundle.contains(&format!("Sha256: \"{}\"", content.out.tarball_sha256)));
}

#[test]
fn the_validator_catches_a_broken_pack() {
    let content = content();
    let bundle = std::fs::read_to_string(&content.out.bundle).unwrap();
    // A template entry with both ID and Contents, and a directory out of step.
    let broken = bundle.replacen(
        "        - ID: \"imprint-grub.tmpl\"\n",
        "        - Contents: \"x\"\n          ID: \"imprint-grub.tmpl\"\n",
        1,
    );
    assert_ne!(
        broken, bundle,
        "the bundle layout changed; update this test"
    );
    std::fs::write(&content.out.bundle, broken).unwrap();
    let err = validate(&content).unwrap_err();
    assert!(
        err.contains("template grub needs exactly one of ID and Contents"),
        "{err}"
    );
    assert!(err.contains("differs from the bundle"), "{err}");
}

#[test]
fn full_context_renders_a_spec_imprint_accepts_and_a_static_command_line() {
    let content = content();
    let rendered = render(
        &content,
        &context(json!({
            "image-deploy/image-file": "files/images/golden.raw.zst",
            "image-deploy/install-disk": "/dev/vda",
            "imprint/format": "dd-zst",
            "image-deploy/image-type": "dd-raw",
            "access-keys": {"ops": "ssh-ed25519 AAAA ops@x", "me": "ssh-rsa BBBB \"quoted\" me"},
            "cloud-init/user-data": "#cloud-config\nruncmd: [\"echo {{ hi }}\"]\n",
            "network-data": {
                "all": {"mtu": "9000"},
                "prov": {"address": "10.0.2.15", "netmask": "255.255.240.0", "gateway": "10.0.2.2",
                         "interface": "eth0,enp0s3", "vlan": "100", "mtu": "1500"}
            },
            "dns-servers": ["1.1.1.1", "8.8.8.8"],
            "kernel-options": "{{.Param \"kernel-console\"}} quiet",
            "kernel-console": "console=ttyS0,115200 console=tty0",
        })),
    )
    .unwrap();

    let spec = spec_from(&rendered);
    assert_eq!(
        spec.url.as_ref().map(|u| u.as_str()),
        Some("http://10.0.2.2:8091/files/images/golden.raw.zst")
    );
    assert!(
        matches!(&spec.format, DeclaredFormat::Image { name, .. } if name == "dd-zst"),
        "imprint/format wins over image-deploy/image-type"
    );
    assert_eq!(
        spec.disk.as_ref().map(ToString::to_string).as_deref(),
        Some("/dev/vda")
    );
    assert_eq!(spec.identity.access_keys.len(), 2);
    assert_eq!(
        spec.identity.access_keys["me"],
        "ssh-rsa BBBB \"quoted\" me"
    );
    let cloud_init = spec.identity.cloud_init.as_ref().unwrap();
    assert_eq!(
        cloud_init.user_data.as_deref(),
        Some("#cloud-config\nruncmd: [\"echo {{ hi }}\"]\n"),
        "user-data is passed through, not expanded"
    );
    check_drp_identity(&spec);

    let bootparams = rendered["bootparams"].as_str().unwrap();
    assert!(bootparams.len() < 2048, "{} bytes", bootparams.len());
    assert!(!bootparams.contains(['\n', '"']), "{bootparams}");
    let cmdline = KernelCmdline::parse(bootparams);
    assert_eq!(cmdline.value("rs.uuid"), Some(UUID));
    assert_eq!(
        cmdline.value("provisioner.web"),
        Some("http://10.0.2.2:8091")
    );
    assert_eq!(cmdline.value("provisioner.ip"), Some("10.0.2.15/20"));
    assert_eq!(cmdline.value("provisioner.gw"), Some("10.0.2.2"));
    assert_eq!(cmdline.value("provisioner.dns"), Some("1.1.1.1,8.8.8.8"));
    assert_eq!(cmdline.value("provisioner.interface"), Some("eth0,enp0s3"));
    assert_eq!(cmdline.value("provisioner.vlan"), Some("100"));
    assert_eq!(
        cmdline.value("provisioner.mtu"),
        Some("1500"),
        "the named network's, not all's"
    );
    assert_eq!(
        cmdline.value("console"),
        Some("tty0"),
        "kernel-options expanded"
    );
    assert!(cmdline.params.iter().any(|p| p.key == "quiet"));
    assert_eq!(
        cmdline.init_args,
        vec!["console=ttyS0,115200", "console=tty0"]
    );

    // The loaders carry the same parameters; iPXE's BOOTIF= stays a kernel
    // parameter, before the `--`.
    let (path, ipxe) = template(&rendered, "ipxe");
    assert_eq!(path, "10.0.2.15.ipxe");
    assert!(ipxe.starts_with("#!ipxe\n"));
    let kernel_line = ipxe.lines().find(|l| l.starts_with("kernel ")).unwrap();
    let kernel_line = kernel_line.strip_prefix("kernel ").unwrap();
    let (url, args) = kernel_line.split_once(' ').unwrap();
    assert_eq!(
        url,
        format!("http://10.0.2.2:8091/imprint/{}/vmlinuz", drp::version())
    );
    let ipxe_cmdline = KernelCmdline::parse(args);
    assert_eq!(ipxe_cmdline.value("BOOTIF"), Some("01-${netX/mac:hexhyp}"));
    // DRP's own `initrd=` prepend is the only one.
    assert_eq!(
        args.matches("initrd=").count(),
        1,
        "one initrd= on the iPXE kernel line: {args}"
    );
    assert_eq!(ipxe_cmdline.value("initrd"), Some("initramfs.img"));
    assert_eq!(ipxe_cmdline.value("rs.uuid"), Some(UUID));
    // The base initramfs, then the rootfs tools.
    assert!(ipxe.contains(&format!(
        "\ninitrd http://10.0.2.2:8091/imprint/{v}/initramfs.img\n\
         initrd http://10.0.2.2:8091/imprint/{v}/rootfs-tools.img\nboot\n",
        v = drp::version()
    )));
    let (path, pxelinux) = template(&rendered, "pxelinux");
    assert_eq!(path, "pxelinux.cfg/0A00020F");
    assert!(pxelinux.contains(&format!("  APPEND {bootparams}\n")));
    let (path, _) = template(&rendered, "pxelinux-mac");
    assert_eq!(path, "pxelinux.cfg/01-52-54-00-12-34-56");
    let (path, grub) = template(&rendered, "grub");
    assert_eq!(path, "grub/10.0.2.15.cfg");
    // Stock's default-grub.tmpl: linuxefi/initrdefi on x86 EFI, (tftp)/ paths.
    assert!(grub.contains("    set _kernel=linuxefi\n    set _module=initrdefi\n"));
    assert!(grub.contains(&format!(
        "kernel (tftp)/imprint/{}/vmlinuz BOOTIF=01-${{net_default_mac}} {bootparams}\n",
        drp::version()
    )));
    assert!(grub.contains(&format!(
        "\nmodule (tftp)/imprint/{v}/initramfs.img\nmodule (tftp)/imprint/{v}/rootfs-tools.img\nboot\n",
        v = drp::version()
    )));
    assert!(
        !bootparams.contains("initrd="),
        "only .ipxe paths get initrd="
    );
    let (_, task) = template(&rendered, "imprint-deploy-outside");
    assert!(task.contains(UUID) && task.contains("exit 1"));
}

#[test]
fn minimal_context_leaves_optional_fields_out() {
    let content = content();
    let rendered = render(
        &content,
        &context(json!({
            "image-deploy/image-url": "https://images.example/golden.raw.xz?sig=a&b=c",
            "image-deploy/install-disk": "size>=8G,rotational=0",
        })),
    )
    .unwrap();
    let spec = spec_from(&rendered);
    assert_eq!(
        spec.url.as_ref().map(|u| u.as_str()),
        Some("https://images.example/golden.raw.xz?sig=a&b=c")
    );
    assert_eq!(
        spec.disk.as_ref().map(ToString::to_string).as_deref(),
        Some("size>=8G,rotational=0")
    );
    assert_eq!(spec.format, DeclaredFormat::Auto);
    assert!(spec.identity.access_keys.is_empty());
    assert_eq!(spec.identity.cloud_init, None);
    assert_eq!(spec.on_success, SuccessPolicy::Kexec { required: false });
    check_drp_identity(&spec);
    let (_, json) = template(&rendered, "imprint.json");
    let fields: Value = serde_json::from_str(json).unwrap();
    let mut keys: Vec<&str> = fields
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["disk", "drp", "hostname", "url"]);

    let cmdline = KernelCmdline::parse(rendered["bootparams"].as_str().unwrap());
    assert_eq!(cmdline.value("rs.uuid"), Some(UUID));
    assert_eq!(cmdline.value("provisioner.ip"), None);
    assert!(cmdline.init_args.is_empty());
    assert_eq!(cmdline.params.len(), 2);
}

#[test]
fn a_prefix_address_and_the_networks_own_dns() {
    let content = content();
    let rendered = render_deployable(
        &content,
        json!({
            "dns-servers": ["9.9.9.9"],
            "network-data": {
                "a-mgmt": {"address": "172.16.0.9/24"},
                "prov": {"address": "192.168.10.5/16", "dns-servers": ["192.168.0.53"]},
                "prod": {"address": "10.2.3.15/24"}
            },
        }),
    )
    .unwrap();
    let cmdline = KernelCmdline::parse(rendered["bootparams"].as_str().unwrap());
    assert_eq!(cmdline.value("provisioner.ip"), Some("192.168.10.5/16"));
    assert_eq!(cmdline.value("provisioner.dns"), Some("192.168.0.53"));
    assert_eq!(cmdline.value("provisioner.gw"), None);
}

#[test]
fn missing_image_or_bad_network_fails_the_render_naming_the_param() {
    let content = content();
    let err = render(
        &content,
        &context(json!({"image-deploy/install-disk": "/dev/sda"})),
    )
    .unwrap_err();
    assert!(
        err.contains("set image-deploy/image-url or image-deploy/image-file"),
        "{err}"
    );
    let err = render(
        &content,
        &context(json!({"image-deploy/image-url": "http://h/a.img"})),
    )
    .unwrap_err();
    assert!(err.contains("set image-deploy/install-disk"), "{err}");
    let err = render_deployable(
        &content,
        json!({
            "network-data": {"prov": {"address": "10.0.0.5"}},
        }),
    )
    .unwrap_err();
    assert!(
        err.contains("network-data prov: address 10.0.0.5 needs a /prefix or a netmask"),
        "{err}"
    );
    let err = render_deployable(
        &content,
        json!({
            "network-data": {"prov": {"address": "10.0.0.5", "netmask": "255.255.0.1"}},
        }),
    )
    .unwrap_err();
    assert!(err.contains("netmask 255.255.0.1 is not"), "{err}");
}

/// A value for every generated `imprint/*` param. The key set must match
/// the pack's, so a new entry in `imprint::spec::PARAMS` fails here until
/// it is exercised.
fn every_imprint_param() -> Value {
    json!({
        "imprint/format": "dd-zst",
        "imprint/checksum": format!("sha256:{}", "ab".repeat(32)),
        "imprint/checksum-url": "http://h/SHA256SUMS",
        "imprint/signature": "http://h/golden.raw.zst.minisig",
        "imprint/checksum-signature": "http://h/SHA256SUMS.asc",
        "imprint/trusted-key": "RWQf6LRCGA9i53mlYecO4IzT51TGPpvWucNSCh1CBM0QTaLn73Y7GFO3",
        "imprint/retries": 5,
        "imprint/retry-timeout": "2m",
        "imprint/connect-timeout": "5s",
        "imprint/decode-memory": "512M",
        "imprint/direct-io": "off",
        "imprint/stall-timeout": "45s",
        "imprint/ca": "http://h/ca.pem",
        "imprint/insecure": true,
        "imprint/oci-username": "deploy",
        "imprint/oci-password": "s3cret",
        "imprint/oci-layer": "golden.raw.zst",
        "imprint/parallel": 4,
        "imprint/chunk": "4M",
        "imprint/manifest": "http://h/golden.raw.zst.chunks",
        "imprint/torrent": "http://h/golden.raw.zst.torrent",
        "imprint/seed-time": "45s",
        "imprint/torrent-timeout": "5s",
        "imprint/ssh-user": "admin",
        "imprint/root": "PARTLABEL=root",
        "imprint/grow": true,
        "imprint/reset-machine-id": false,
        "imprint/on-success": "kexec!",
        "imprint/on-failure": "retry:2",
        "imprint/kexec-kernel": "/boot/vmlinuz",
        "imprint/kexec-initrd": "/boot/initrd.img",
        "imprint/kexec-cmdline": "root=/dev/sda2 ro \"quiet\"",
        "imprint/report": "https://ops.example/events",
        "imprint/status-port": 8080,
        "imprint/layout": "with-swap",
        "imprint/bootloader": "grub",
        "imprint/action": "deploy",
        "imprint/erase": "metadata",
        "imprint/erase-disks": "target",
        "imprint/boot-order": "network-first",
        "imprint/boot-next": true,
        "imprint/boot-loader": "\\EFI\\debian\\shimx64.efi",
    })
}

fn matches_schema(value: &Value, schema: &Value) -> bool {
    let typed = match schema["type"].as_str().unwrap() {
        "boolean" => value.is_boolean(),
        "integer" => value.is_u64(),
        "string" => value.is_string(),
        other => panic!("unexpected schema type {other}"),
    };
    let in_enum = schema
        .get("enum")
        .is_none_or(|choices| choices.as_array().unwrap().contains(value));
    typed && in_enum
}

#[test]
fn every_imprint_param_renders_into_a_spec_imprint_accepts() {
    let content = content();
    let mut params = every_imprint_param();
    let pack = drp::content_pack(&drp::IsoInfo {
        file: drp::iso_file_name(),
        sha256: String::new(),
        tools: true,
    });
    let defined: Vec<&String> = pack.sections["params"].keys().collect();
    let mut sampled: Vec<&String> = params.as_object().unwrap().keys().collect();
    sampled.sort();
    assert_eq!(
        sampled, defined,
        "give every imprint/* param a sample value"
    );
    for (name, value) in params.as_object().unwrap() {
        let schema = &pack.sections["params"][name]["Schema"];
        assert!(
            matches_schema(value, schema),
            "{name}: {value} against {schema}"
        );
    }

    let object = params.as_object_mut().unwrap();
    object.insert("image-deploy/image-url".into(), json!("http://h/a.img"));
    object.insert("image-deploy/install-disk".into(), json!("/dev/sda"));
    let rendered = render(&content, &context(params)).unwrap();
    let spec = spec_from(&rendered);
    assert_eq!(spec.source.retries, 5);
    assert!(spec.source.insecure);
    assert_eq!(spec.source.oci_username.as_deref(), Some("deploy"));
    assert_eq!(spec.source.oci_layer.as_deref(), Some("golden.raw.zst"));
    assert_eq!(
        spec.source.oci_password.as_ref().map(|p| p.expose()),
        Some("s3cret")
    );
    assert!(spec.grow);
    assert!(!spec.identity.reset_machine_id);
    assert_eq!(spec.identity.ssh_user.as_deref(), Some("admin"));
    assert_eq!(spec.on_success, SuccessPolicy::Kexec { required: true });
    assert_eq!(
        spec.kexec.cmdline.as_deref(),
        Some("root=/dev/sda2 ro \"quiet\"")
    );
    assert_eq!(spec.status_port, Some(8080));
    assert_eq!(spec.report.as_deref(), Some("https://ops.example/events"));
    assert_eq!(
        spec.layout,
        Some(imprint::rootfs::layout::preset("with-swap").unwrap())
    );
    assert_eq!(
        spec.bootloader,
        imprint::rootfs::bootloader::Bootloader::Grub
    );
}

/// image-deploy's `additional-tarballs` (its param's documented example,
/// and one with a full URI) reach imprint.json: `drpserved` URIs on the
/// file server, in the shape imprint's deploy spec takes; its
/// `curtin/partitions` becomes the layout.
#[test]
fn rootfs_params_render_additional_tarballs_and_curtin_partitions() {
    let content = content();
    let rendered = render_deployable(
        &content,
        json!({
            "image-deploy/image-type": "tgz",
            "image-deploy/additional-tarballs": [
                {"drpserved": true, "format": "tar", "index": 1, "uri": "files/my-tarball.tar"},
                {"drpserved": false, "format": "tgz", "index": 0, "uri": "http://h/extra.tgz"},
            ],
            "curtin/partitions": {"storage": {"version": 1, "config": [
                {"type": "disk", "id": "disk0", "ptable": "gpt", "path": "/dev/sda"},
                {"type": "partition", "id": "p1", "device": "disk0", "size": "1M", "flag": "bios_grub"},
                {"type": "partition", "id": "p2", "device": "disk0", "size": "10G"},
                {"type": "format", "id": "f2", "volume": "p2", "fstype": "ext4"},
                {"type": "mount", "id": "m2", "device": "f2", "path": "/"},
            ]}},
        }),
    )
    .unwrap();
    let spec = spec_from(&rendered);
    let layout = spec
        .layout
        .as_ref()
        .expect("curtin/partitions became the layout");
    assert_eq!(layout.disks[0].partitions.len(), 2);
    assert_eq!(layout.disks[0].partitions[1].mount.as_deref(), Some("/"));
    assert_eq!(spec.format, DeclaredFormat::Rootfs("tgz".into()));
    let uris: Vec<(&str, &str, i64)> = spec
        .overlays
        .iter()
        .map(|o| (o.uri.as_str(), o.format.as_str(), o.index))
        .collect();
    assert_eq!(
        uris,
        [
            ("http://10.0.2.2:8091/files/my-tarball.tar", "tar", 1),
            ("http://h/extra.tgz", "tgz", 0),
        ]
    );
    assert!(spec.overlays.iter().all(|o| !o.drpserved));
    // Resolved, they come by index.
    let resolved = spec.resolve(imprint::spec::Origin::Json).unwrap();
    assert_eq!(resolved.overlays[0].url.as_str(), "http://h/extra.tgz");
}

#[test]
fn a_value_outside_the_schema_is_refused_by_imprint_too() {
    // The schema says on-success is one of five words: DRP refuses another
    // when it is set (the renderer checks as DRP does), and imprint agrees
    // should one get through (set before the pack defined the param).
    let content = content();
    let err = render_deployable(
        &content,
        json!({
            "imprint/on-success": "explode",
        }),
    )
    .unwrap_err();
    assert!(
        err.contains("Key 'imprint/on-success': invalid val 'explode'"),
        "{err}"
    );
    let json = r#"{"url": "http://h/a.img", "disk": "/dev/sda", "on-success": "explode"}"#;
    let err = DeploySpec::default().apply_json(json).unwrap_err();
    assert!(format!("{err:#}").contains("on-success"), "{err:#}");
}

#[test]
fn the_readme_maps_every_param() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let start = readme
        .find("## Using imprint with Digital Rebar")
        .expect("README section");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    for def in drp::params::imprint_params() {
        let row = format!("| `imprint/{0}` | `{0}` (`imprint.{0}=`) |", def.name);
        assert!(section.contains(&row), "README lacks {row}");
    }
    for (name, _) in drp::params::FROM_DRP {
        assert!(
            section.contains(&format!("`{name}`")),
            "README does not say where {name} comes from"
        );
    }
    assert!(section.contains(&format!("imprint-{}.amd64.tar", drp::version())));
}

/// What `drpcli agent`'s task runner makes of the exit code of a task's
/// last (here: only) script: the job's final `State` and `ExitState`.
/// agent/taskRunner.go, provision v4.8.0: `perform` maps the code (the
/// "sane" table when the task's `Meta` has `feature-flags: sane-exit-codes`,
/// else the legacy one; an unlisted code leaves `failed` set), `run`
/// derives the state, its deferred patch the exit state.
fn runner_outcome(code: u32, sane: bool) -> (&'static str, &'static str) {
    // (failed, incomplete, reboot, poweroff, stop)
    let (failed, mut incomplete, reboot, poweroff, stop) = match (sane, code) {
        (_, 0) => (false, false, false, false, false),
        (true, 16) => (false, false, false, false, true),
        (true, 32) => (false, false, false, true, false),
        (true, 64) => (false, false, true, false, false),
        (true, 128) => (false, true, false, false, false),
        (true, 144) => (false, true, false, false, true),
        (true, 160) => (false, true, false, true, false),
        (true, 192) => (false, true, true, false, false),
        (false, 1) => (false, false, true, false, false),
        (false, 2) => (false, true, false, false, false),
        (false, 3) => (false, true, true, false, false),
        _ => (true, false, false, false, false),
    };
    // The final action: reboot/poweroff/stop keep `incomplete` as it is.
    if failed {
        incomplete = false;
    }
    let state = match (failed, incomplete) {
        (true, _) => "failed",
        (false, true) => "incomplete",
        (false, false) => "finished",
    };
    let exit_state = if reboot {
        "reboot"
    } else if poweroff {
        "poweroff"
    } else if stop {
        "stop"
    } else if failed {
        "failed"
    } else {
        "complete"
    };
    (state, exit_state)
}

#[test]
fn the_runners_exit_code_tables() {
    assert_eq!(runner_outcome(0, false), ("finished", "complete"));
    assert_eq!(runner_outcome(1, false), ("finished", "reboot"));
    assert_eq!(runner_outcome(3, false), ("incomplete", "reboot"));
    assert_eq!(runner_outcome(4, false), ("failed", "failed"));
    assert_eq!(runner_outcome(1, true), ("failed", "failed"));
    assert_eq!(runner_outcome(64, true), ("finished", "reboot"));
    assert_eq!(runner_outcome(192, true), ("incomplete", "reboot"));
}

/// A runner outside imprint that gets the `imprint-deploy` job must fail
/// it: before the task carried `sane-exit-codes`, its `exit 1` was read as
/// "reboot" and the job finished, so the workflow went on to `complete`
/// with nothing deployed (issue 13).
#[test]
fn the_task_fails_its_job_when_a_runner_outside_imprint_runs_it() {
    let content = content();
    let pack = drp::content_pack(&drp::IsoInfo {
        file: drp::iso_file_name(),
        sha256: String::new(),
        tools: true,
    });
    let task = &pack.sections["tasks"][drp::TASK];
    let flags = task["Meta"]["feature-flags"].as_str().unwrap_or_default();
    let sane = flags
        .split(',')
        .any(|flag| flag.trim() == "sane-exit-codes");
    let rendered = render_deployable(&content, json!({})).unwrap();
    let (_, script) = template(&rendered, "imprint-deploy-outside");
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap();
    let code = u32::try_from(output.status.code().unwrap()).unwrap();
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("did not boot into the imprint bootenv")
    );
    assert_eq!(runner_outcome(code, sane), ("failed", "failed"));
}

/// The `kexec` file as `drpcli agent` reads it (agent/agent.go, provision
/// v4.8.0): a `kernel` URL, exactly one `initrd` URL, a `params` line.
#[test]
fn the_kexec_template_is_what_the_agent_reads() {
    let content = content();
    let rendered = render_deployable(
        &content,
        json!({
            "kernel-console": "console=ttyS0,115200",
        }),
    )
    .unwrap();
    let (path, kexec) = template(&rendered, "kexec");
    assert_eq!(path, format!("machines/{UUID}/kexec"));
    let lines: Vec<(&str, &str)> = kexec
        .lines()
        .filter_map(|line| line.split_once(' '))
        .collect();
    let base = format!("http://10.0.2.2:8091/imprint/{}", drp::version());
    let bootparams = rendered["bootparams"].as_str().unwrap();
    assert_eq!(
        lines,
        [
            ("kernel", format!("{base}/vmlinuz").as_str()),
            ("initrd", format!("{base}/initramfs.img").as_str()),
            ("params", bootparams),
        ]
    );
    // The agent appends the running kernel's BOOTIF= after the `--`.
    let cmdline = KernelCmdline::parse(&format!("{bootparams} BOOTIF=01-52-54-00-12-34-56"));
    assert_eq!(cmdline.value("rs.uuid"), Some(UUID));
    let net = imprint::net::NetConfig::from_cmdline(&cmdline).unwrap();
    assert_eq!(net.boot_mac, Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]));
}

/// `network-data`'s own documented example (provision-content v4.8.0
/// `content/params/network-data.yaml`): `prov` is DHCP, so the boot NIC
/// gets no static address; `prod`'s and `stor`'s are not the boot
/// network's, whatever their names sort as.
#[test]
fn network_data_follows_sledgehammer_only_prov_is_the_boot_network() {
    let content = content();
    let example = json!({
        "all": {"dns-servers": ["8.8.8.8", "8.8.4.4"]},
        "prov": {"name": "prov", "dhcp": "yes"},
        "prod": {"name": "prod", "dhcp": "no", "gateway": "10.2.3.1", "netmask": "255.255.255.0", "address": "10.2.3.15"},
        "stor": {"name": "stor", "dhcp": "no", "gateway": "10.3.3.1", "netmask": "255.255.255.0",
                 "address": "10.3.3.15", "vlan": "2335", "interface": "eth0,enp0s3"},
    });
    let rendered = render_deployable(
        &content,
        json!({
            "network-data": example,
        }),
    )
    .unwrap();
    let cmdline = KernelCmdline::parse(rendered["bootparams"].as_str().unwrap());
    assert_eq!(cmdline.value("provisioner.ip"), None);
    assert_eq!(cmdline.value("provisioner.interface"), None);
    assert_eq!(cmdline.value("provisioner.vlan"), None);
}

/// The README's DRP commands against an endpoint with RackN's image-deploy
/// plugin installed: its params' schemas check the values (as
/// `drpcli machines set` would) and its defaults apply.
#[test]
fn the_readme_params_with_image_deploy_installed() {
    let content = content();
    let with_plugin = |params: Value| {
        let mut context = context(params);
        context["param_defs"] = imprint_qemu::drp::params::image_deploy_params();
        render(&content, &context)
    };
    // The README's values, verbatim.
    let rendered = with_plugin(json!({
        "image-deploy/image-file": "files/images/golden.raw.zst",
        "imprint/format": "dd-zst",
        "access-keys": {"ops": "ssh-ed25519 AAAA ops@example"},
    }))
    .unwrap();
    let spec = spec_from(&rendered);
    assert_eq!(
        spec.url.as_ref().map(|u| u.as_str()),
        Some("http://10.0.2.2:8091/files/images/golden.raw.zst"),
        "uploaded files are served under files/"
    );
    assert_eq!(
        spec.disk.as_ref().map(ToString::to_string).as_deref(),
        Some("/dev/sda"),
        "image-deploy's default install-disk"
    );
    assert!(matches!(&spec.format, DeclaredFormat::Image { name, .. } if name == "dd-zst"));
    // The old README's type is refused by the plugin's enum.
    let err = with_plugin(json!({
        "image-deploy/image-file": "files/images/golden.raw.zst",
        "image-deploy/image-type": "dd-zst",
    }))
    .unwrap_err();
    assert!(
        err.contains("Key 'image-deploy/image-type': invalid val 'dd-zst': (root): (root) must be one of the following"),
        "{err}"
    );
    // A stock type still reaches imprint; the short disk name is a disk name.
    let rendered = with_plugin(json!({
        "image-deploy/image-url": "http://h/{{.Machine.Name}}.img.xz",
        "image-deploy/image-type": "dd-xz",
        "image-deploy/install-disk": "sda",
    }))
    .unwrap();
    let spec = spec_from(&rendered);
    assert_eq!(
        spec.url.as_ref().map(|u| u.as_str()),
        Some("http://h/web-01.lab.img.xz"),
        "image-url is expanded, as image-deploy does"
    );
    assert!(matches!(&spec.format, DeclaredFormat::Image { name, .. } if name == "dd-xz"));
    assert_eq!(
        spec.disk,
        Some(imprint::disk::DiskSelector::Name("sda".into()))
    );
}

/// `drpcli contents bundle` reads the pack's meta from `._<Field>.meta`
/// files (api/content.go `FindOrFake`, provision v4.8.0), not `meta.yaml`.
#[test]
fn the_content_directory_is_what_drpcli_contents_bundle_reads() {
    let content = content();
    let dir = &content.out.content_dir;
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    assert_eq!(read("._Name.meta"), "imprint");
    assert_eq!(read("._Version.meta"), format!("v{}", drp::version()));
    assert_eq!(read("._Prerequisites.meta"), "drp-community-content");
    assert!(!dir.join("meta.yaml").exists());
    assert!(dir.join("templates").join(drp::KEXEC_TEMPLATE).exists());
    assert!(dir.join("tasks/imprint-deploy.yaml").exists());
}

/// The erase stage's own params (which DRP resolves below the machine's
/// and its profiles') make imprint.json an erase job that needs no
/// image-deploy params: every fixed disk, `auto`, powered off after.
#[test]
fn the_erase_stage_renders_an_erase_job_without_an_image() {
    let content = content();
    let pack = drp::content_pack(&drp::IsoInfo {
        file: drp::iso_file_name(),
        sha256: String::new(),
        tools: true,
    });
    let stage = &pack.sections["stages"][drp::ERASE_STAGE];
    assert_eq!(stage["BootEnv"], drp::BOOTENV);
    assert_eq!(stage["Tasks"], json!([drp::ERASE_TASK]));
    let params = stage["Params"].clone();
    for (name, value) in params.as_object().unwrap() {
        let schema = &pack.sections["params"][name]["Schema"];
        assert!(
            matches_schema(value, schema),
            "{name}: {value} against {schema}"
        );
    }
    let workflow = &pack.sections["workflows"][drp::ERASE_WORKFLOW];
    assert_eq!(workflow["Stages"], json!([drp::ERASE_STAGE, "complete"]));

    let rendered = render(&content, &context(params)).unwrap();
    let job = spec_from(&rendered)
        .resolve_erase(imprint::spec::Origin::Json)
        .unwrap();
    assert_eq!(job.request.mode, imprint::erase::Mode::Auto);
    assert_eq!(job.request.disks, imprint::erase::EraseDisks::All);
    assert_eq!(job.on_success, SuccessPolicy::Poweroff);
}

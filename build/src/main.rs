//! `imprint-build`: the CLI behind `scripts/build`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use imprint_build::drp;
use imprint_build::hardware;
use imprint_build::initramfs::{self, BuiltinInputs, InitramfsExtras, InitramfsInputs};
use imprint_build::ipxe::{self, IpxeOptions};
use imprint_build::p2p;
use imprint_build::tools;

const USAGE: &str = "usage: imprint-build initramfs (--kernel-root DIR [--extra-module NAME]... | --builtin-modinfo FILE) --kver VER --init PATH --out FILE [--firmware-root DIR] [--embed-image FILE]... [--ca PEM-FILE] [--trusted-key FILE]... [--allow-unsigned yes] | imprint-build hardware --kernel-root DIR --kver VER [--extra-module NAME]... [--lspci FILE|-] | imprint-build ipxe --out FILE [--base-url URL] [--append ARGS] [--rootfs-tools] [--p2p] | imprint-build drp --kernel FILE --initramfs FILE [--tools-initrd FILE] [--p2p-initrd FILE] --out DIR | imprint-build tools-initrd --out FILE [--root DIR] | imprint-build p2p-initrd --out FILE [--aria2c FILE] [--root DIR] [--kernel-root DIR --kver VER]";

#[derive(Debug, PartialEq, Eq)]
enum Command {
    Initramfs {
        kernel_root: PathBuf,
        kernel_version: String,
        init_binary: PathBuf,
        out: PathBuf,
        extra_modules: Vec<String>,
        firmware_root: Option<PathBuf>,
        extras: InitramfsExtras,
    },
    /// `initramfs --builtin-modinfo`: for a kernel with its drivers built in.
    InitramfsBuiltin {
        builtin_modinfo: PathBuf,
        kernel_version: String,
        init_binary: PathBuf,
        out: PathBuf,
        firmware_root: Option<PathBuf>,
        extras: InitramfsExtras,
    },
    Hardware {
        kernel_root: PathBuf,
        kernel_version: String,
        extra_modules: Vec<String>,
        /// `lspci -n` output to check (`-` for stdin).
        lspci: Option<PathBuf>,
    },
    Ipxe {
        out: PathBuf,
        options: IpxeOptions,
    },
    Drp {
        kernel: PathBuf,
        initramfs: PathBuf,
        /// The rootfs tools initrd, put in the tarball and the bootenv.
        tools: Option<PathBuf>,
        /// The P2P initrd, put in the tarball; the templates load it when
        /// `imprint/torrent` is set.
        p2p: Option<PathBuf>,
        out: PathBuf,
    },
    /// The second initrd with the filesystem tools, read from `root`.
    ToolsInitrd {
        root: PathBuf,
        out: PathBuf,
    },
    /// The second initrd with aria2c for BitTorrent mode: `aria2c` read
    /// from the build machine, its libraries under `root`.
    P2pInitrd {
        aria2c: PathBuf,
        root: PathBuf,
        /// The kernel package and release whose loop driver it carries.
        kernel: Option<(PathBuf, String)>,
        out: PathBuf,
    },
}

/// `--flag VALUE` pairs after the subcommand; every flag takes a value.
fn parse_flags<'a>(args: &'a [String], allowed: &[&str]) -> Result<Vec<(&'a str, &'a str)>> {
    let mut flags = Vec::new();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        if !allowed.contains(&flag.as_str()) {
            bail!("unknown argument {flag}");
        }
        let Some(value) = rest.next() else {
            bail!("{flag} needs a value");
        };
        flags.push((flag.as_str(), value.as_str()));
    }
    Ok(flags)
}

fn single<'a>(flags: &[(&str, &'a str)], name: &str) -> Result<Option<&'a str>> {
    let mut values = flags.iter().filter(|(flag, _)| *flag == name);
    let first = values.next().map(|(_, value)| *value);
    if values.next().is_some() {
        bail!("{name} given twice");
    }
    Ok(first)
}

fn required<'a>(flags: &[(&str, &'a str)], name: &str) -> Result<&'a str> {
    single(flags, name)?.with_context(|| format!("{name} is required"))
}

fn parse_args(args: &[String]) -> Result<Command> {
    let Some((subcommand, rest)) = args.split_first() else {
        bail!("no command given");
    };
    match subcommand.as_str() {
        "initramfs" => {
            let flags = parse_flags(
                rest,
                &[
                    "--kernel-root",
                    "--kver",
                    "--init",
                    "--out",
                    "--extra-module",
                    "--embed-image",
                    "--ca",
                    "--trusted-key",
                    "--allow-unsigned",
                    "--firmware-root",
                    "--builtin-modinfo",
                ],
            )?;
            let all = |name: &str| {
                flags
                    .iter()
                    .filter(|(flag, _)| *flag == name)
                    .map(|(_, value)| *value)
                    .collect::<Vec<_>>()
            };
            let extras = InitramfsExtras {
                embed_images: all("--embed-image")
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                ca_bundle: single(&flags, "--ca")?.map(PathBuf::from),
                trusted_keys: all("--trusted-key")
                    .into_iter()
                    .map(PathBuf::from)
                    .collect(),
                allow_unsigned: match single(&flags, "--allow-unsigned")? {
                    None | Some("no") => false,
                    Some("yes") => true,
                    Some(other) => bail!("--allow-unsigned takes yes or no, not {other:?}"),
                },
            };
            if let Some(modinfo) = single(&flags, "--builtin-modinfo")? {
                if single(&flags, "--kernel-root")?.is_some() {
                    bail!("--builtin-modinfo and --kernel-root exclude each other");
                }
                if !all("--extra-module").is_empty() {
                    bail!(
                        "--extra-module needs a kernel with modules; --builtin-modinfo carries none"
                    );
                }
                return Ok(Command::InitramfsBuiltin {
                    builtin_modinfo: modinfo.into(),
                    kernel_version: required(&flags, "--kver")?.to_owned(),
                    init_binary: required(&flags, "--init")?.into(),
                    out: required(&flags, "--out")?.into(),
                    firmware_root: single(&flags, "--firmware-root")?.map(PathBuf::from),
                    extras,
                });
            }
            Ok(Command::Initramfs {
                kernel_root: required(&flags, "--kernel-root")?.into(),
                kernel_version: required(&flags, "--kver")?.to_owned(),
                init_binary: required(&flags, "--init")?.into(),
                out: required(&flags, "--out")?.into(),
                extra_modules: all("--extra-module")
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
                firmware_root: single(&flags, "--firmware-root")?.map(PathBuf::from),
                extras,
            })
        }
        "hardware" => {
            let flags = parse_flags(
                rest,
                &["--kernel-root", "--kver", "--extra-module", "--lspci"],
            )?;
            Ok(Command::Hardware {
                kernel_root: required(&flags, "--kernel-root")?.into(),
                kernel_version: required(&flags, "--kver")?.to_owned(),
                extra_modules: flags
                    .iter()
                    .filter(|(flag, _)| *flag == "--extra-module")
                    .map(|(_, value)| (*value).to_owned())
                    .collect(),
                lspci: single(&flags, "--lspci")?.map(PathBuf::from),
            })
        }
        "ipxe" => {
            let (switches, rest): (Vec<&str>, Vec<&str>) = rest
                .iter()
                .map(String::as_str)
                .partition(|arg| ["--rootfs-tools", "--p2p"].contains(arg));
            let rest: Vec<String> = rest.into_iter().map(str::to_owned).collect();
            let flags = parse_flags(&rest, &["--out", "--base-url", "--append"])?;
            Ok(Command::Ipxe {
                out: required(&flags, "--out")?.into(),
                options: IpxeOptions {
                    base_url: single(&flags, "--base-url")?.map(str::to_owned),
                    append: single(&flags, "--append")?.unwrap_or_default().to_owned(),
                    rootfs_tools: switches.contains(&"--rootfs-tools"),
                    p2p: switches.contains(&"--p2p"),
                },
            })
        }
        "drp" => {
            let flags = parse_flags(
                rest,
                &[
                    "--kernel",
                    "--initramfs",
                    "--tools-initrd",
                    "--p2p-initrd",
                    "--out",
                ],
            )?;
            Ok(Command::Drp {
                kernel: required(&flags, "--kernel")?.into(),
                initramfs: required(&flags, "--initramfs")?.into(),
                tools: single(&flags, "--tools-initrd")?.map(PathBuf::from),
                p2p: single(&flags, "--p2p-initrd")?.map(PathBuf::from),
                out: required(&flags, "--out")?.into(),
            })
        }
        "tools-initrd" => {
            let flags = parse_flags(rest, &["--out", "--root"])?;
            Ok(Command::ToolsInitrd {
                root: single(&flags, "--root")?.unwrap_or("/").into(),
                out: required(&flags, "--out")?.into(),
            })
        }
        "p2p-initrd" => {
            let flags = parse_flags(
                rest,
                &["--out", "--aria2c", "--root", "--kernel-root", "--kver"],
            )?;
            let kernel = match (single(&flags, "--kernel-root")?, single(&flags, "--kver")?) {
                (Some(root), Some(kver)) => Some((PathBuf::from(root), kver.to_owned())),
                (None, None) => None,
                _ => bail!("p2p-initrd: --kernel-root and --kver go together"),
            };
            Ok(Command::P2pInitrd {
                aria2c: single(&flags, "--aria2c")?
                    .unwrap_or(p2p::ARIA2C_PATH)
                    .into(),
                root: single(&flags, "--root")?.unwrap_or("/").into(),
                kernel,
                out: required(&flags, "--out")?.into(),
            })
        }
        other => bail!("unknown command {other}"),
    }
}

/// `SOURCE_DATE_EPOCH` (reproducible-builds.org) or 0.
fn archive_mtime() -> Result<u32> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(value) => value
            .trim()
            .parse::<u32>()
            .with_context(|| format!("SOURCE_DATE_EPOCH={value} is not a u32 timestamp")),
        Err(std::env::VarError::NotPresent) => Ok(0),
        Err(error) => Err(error).context("reading SOURCE_DATE_EPOCH"),
    }
}

/// Writes through a temporary file and a rename, so a failed build never
/// leaves a truncated artifact that a later boot would pick up.
fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, contents)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path)
        .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
}

/// Writes the initramfs and prints what went into it.
fn report_initramfs(
    out: &Path,
    built: &initramfs::Initramfs,
    extras: &InitramfsExtras,
) -> Result<()> {
    write_atomically(out, &built.compressed)?;
    println!("initramfs: {}", out.display());
    for image in &extras.embed_images {
        if let Some(name) = image.file_name() {
            println!(
                "embedded: imprint.url=file:///{}/{}",
                initramfs::EMBEDDED_IMAGES_DIR,
                name.to_string_lossy()
            );
        }
    }
    if extras.ca_bundle.is_some() {
        println!("CA bundle: /{}", initramfs::CA_BUNDLE_PATH);
    }
    for key in &extras.trusted_keys {
        println!(
            "trusted key: {} under /{}",
            key.display(),
            initramfs::TRUSTED_KEYS_DIR
        );
    }
    if extras.allow_unsigned {
        println!(
            "unsigned images allowed: /{}",
            initramfs::ALLOW_UNSIGNED_PATH
        );
    }
    println!("modules: {}", built.modules.len());
    if !built.builtin.is_empty() {
        println!("built in: {}", built.builtin.join(" "));
    }
    match &built.firmware {
        Some(plan) => {
            println!(
                "firmware: {} files, {} bytes ({} names declared)",
                plan.files.len(),
                plan.total_bytes(),
                plan.declared.len()
            );
            for missing in &plan.missing {
                println!(
                    "firmware missing: {} (module {})",
                    missing.name, missing.module
                );
            }
        }
        None => println!("firmware: none (no --firmware-root)"),
    }
    println!("uncompressed: {} bytes", built.cpio.len());
    println!("compressed: {} bytes", built.compressed.len());
    println!("sha256: {}", built.sha256_hex());
    Ok(())
}

fn run(command: Command) -> Result<()> {
    match command {
        Command::Initramfs {
            kernel_root,
            kernel_version,
            init_binary,
            out,
            extra_modules,
            firmware_root,
            extras,
        } => {
            let built = initramfs::build_with(
                &InitramfsInputs {
                    kernel_root,
                    kernel_version,
                    init_binary,
                    extra_modules,
                    mtime: archive_mtime()?,
                    firmware_root,
                },
                &extras,
            )?;
            report_initramfs(&out, &built, &extras)?;
        }
        Command::InitramfsBuiltin {
            builtin_modinfo,
            kernel_version,
            init_binary,
            out,
            firmware_root,
            extras,
        } => {
            let built = initramfs::build_builtin(
                &BuiltinInputs {
                    builtin_modinfo,
                    kernel_version,
                    init_binary,
                    mtime: archive_mtime()?,
                    firmware_root,
                },
                &extras,
            )?;
            report_initramfs(&out, &built, &extras)?;
        }
        Command::Hardware {
            kernel_root,
            kernel_version,
            extra_modules,
            lspci,
        } => {
            let matches =
                hardware::initramfs_pci_matches(&kernel_root, &kernel_version, &extra_modules)?;
            match lspci {
                None => {
                    for line in &matches {
                        println!("{line}");
                    }
                }
                Some(path) => {
                    let text = if path.as_os_str() == "-" {
                        std::io::read_to_string(std::io::stdin())
                            .context("reading lspci output from stdin")?
                    } else {
                        std::fs::read_to_string(&path)
                            .with_context(|| format!("reading lspci output {}", path.display()))?
                    };
                    let checks = hardware::check_lspci(&text, &matches);
                    if checks.is_empty() {
                        bail!(
                            "{} holds no network or storage device lines of lspci -n",
                            path.display()
                        );
                    }
                    for check in &checks {
                        println!("{check}");
                    }
                    let undriven = checks
                        .iter()
                        .filter(|c| c.drivers.is_empty() && c.maybe.is_empty())
                        .count();
                    if undriven > 0 {
                        bail!(
                            "{undriven} network or storage device(s) have no driver in this initramfs"
                        );
                    }
                }
            }
        }
        Command::Ipxe { out, options } => {
            let script = ipxe::render_script(&options)?;
            write_atomically(&out, script.as_bytes())?;
            println!("ipxe script: {}", out.display());
        }
        Command::Drp {
            kernel,
            initramfs,
            tools,
            p2p,
            out,
        } => {
            let files = drp::BootFiles {
                kernel: &kernel,
                initramfs: &initramfs,
                tools: tools.as_deref(),
                p2p: p2p.as_deref(),
            };
            let written = drp::write_all(&files, &out, archive_mtime()?)?;
            println!("drp tarball: {}", written.tarball.display());
            println!("sha256: {}", written.tarball_sha256);
            println!("content pack: {}", written.content_dir.display());
            println!("bundle: {}", written.bundle.display());
        }
        Command::ToolsInitrd { root, out } => {
            let archive = tools::archive(&root)?;
            let cpio = archive.to_bytes(archive_mtime()?)?;
            let compressed = initramfs::compress(&cpio)?;
            write_atomically(&out, &compressed)?;
            println!("tools initrd: {}", out.display());
            println!("uncompressed: {} bytes", cpio.len());
            println!("compressed: {} bytes", compressed.len());
        }
        Command::P2pInitrd {
            aria2c,
            root,
            kernel,
            out,
        } => {
            let driver = kernel
                .as_ref()
                .map(|(kernel_root, kver)| p2p::LoopDriver { kernel_root, kver });
            let archive = p2p::archive(&aria2c, &root, driver.as_ref())?;
            let cpio = archive.to_bytes(archive_mtime()?)?;
            let compressed = initramfs::compress(&cpio)?;
            write_atomically(&out, &compressed)?;
            println!("p2p initrd: {}", out.display());
            println!("files: {}", archive.entries().count());
            println!("uncompressed: {} bytes", cpio.len());
            println!("compressed: {} bytes", compressed.len());
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match parse_args(&args) {
        Ok(command) => command,
        Err(error) => {
            eprintln!("imprint-build: {error}; {USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("imprint-build: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn initramfs_arguments() {
        let command = parse_args(&args(
            "initramfs --kernel-root cache/kernel/current --kver 6.1.0-56-amd64 --init target/imprint --out out/initramfs.img --extra-module btrfs --extra-module zfs",
        ))
        .unwrap();
        assert_eq!(
            command,
            Command::Initramfs {
                kernel_root: "cache/kernel/current".into(),
                kernel_version: "6.1.0-56-amd64".to_owned(),
                init_binary: "target/imprint".into(),
                out: "out/initramfs.img".into(),
                extra_modules: vec!["btrfs".to_owned(), "zfs".to_owned()],
                firmware_root: None,
                extras: InitramfsExtras::default(),
            }
        );
    }

    #[test]
    fn initramfs_embeds_images_and_a_ca_bundle() {
        let Command::Initramfs { extras, .. } = parse_args(&args(
            "initramfs --kernel-root k --kver 1 --init i --out o --embed-image /srv/a.raw.zst --ca lab.pem --embed-image b.img",
        ))
        .unwrap() else {
            panic!("not initramfs");
        };
        assert_eq!(
            extras,
            InitramfsExtras {
                embed_images: vec!["/srv/a.raw.zst".into(), "b.img".into()],
                ca_bundle: Some("lab.pem".into()),
                trusted_keys: Vec::new(),
                allow_unsigned: false,
            }
        );
        let error = parse_args(&args(
            "initramfs --kernel-root k --kver 1 --init i --out o --ca a.pem --ca b.pem",
        ))
        .unwrap_err();
        assert_eq!(error.to_string(), "--ca given twice");
    }

    #[test]
    fn initramfs_bakes_trusted_keys() {
        let Command::Initramfs { extras, .. } = parse_args(&args(
            "initramfs --kernel-root k --kver 1 --init i --out o --trusted-key release.pub --trusted-key fedora.asc --allow-unsigned yes",
        ))
        .unwrap() else {
            panic!("not initramfs");
        };
        assert_eq!(
            extras.trusted_keys,
            [PathBuf::from("release.pub"), PathBuf::from("fedora.asc")]
        );
        assert!(extras.allow_unsigned);
        let error = parse_args(&args(
            "initramfs --kernel-root k --kver 1 --init i --out o --allow-unsigned 1",
        ))
        .unwrap_err();
        assert_eq!(
            error.to_string(),
            "--allow-unsigned takes yes or no, not \"1\""
        );
    }

    #[test]
    fn initramfs_for_built_in_drivers() {
        let command = parse_args(&args(
            "initramfs --builtin-modinfo out/custom/modules.builtin.modinfo --kver 6.1.192 --init out/imprint --out out/custom/initramfs.img --firmware-root cache/fw --ca lab.pem",
        ))
        .unwrap();
        assert_eq!(
            command,
            Command::InitramfsBuiltin {
                builtin_modinfo: "out/custom/modules.builtin.modinfo".into(),
                kernel_version: "6.1.192".to_owned(),
                init_binary: "out/imprint".into(),
                out: "out/custom/initramfs.img".into(),
                firmware_root: Some("cache/fw".into()),
                extras: InitramfsExtras {
                    embed_images: Vec::new(),
                    ca_bundle: Some("lab.pem".into()),
                    trusted_keys: Vec::new(),
                    allow_unsigned: false,
                },
            }
        );
        let error = |line: &str| parse_args(&args(line)).unwrap_err().to_string();
        assert_eq!(
            error("initramfs --builtin-modinfo m --kernel-root k --kver 1 --init i --out o"),
            "--builtin-modinfo and --kernel-root exclude each other"
        );
        assert_eq!(
            error("initramfs --builtin-modinfo m --extra-module zfs --kver 1 --init i --out o"),
            "--extra-module needs a kernel with modules; --builtin-modinfo carries none"
        );
        assert_eq!(
            error("initramfs --builtin-modinfo m --init i --out o"),
            "--kver is required"
        );
    }

    #[test]
    fn hardware_arguments() {
        let command = parse_args(&args(
            "hardware --kernel-root k --kver 6.1 --extra-module zfs --lspci lspci.txt",
        ))
        .unwrap();
        assert_eq!(
            command,
            Command::Hardware {
                kernel_root: "k".into(),
                kernel_version: "6.1".to_owned(),
                extra_modules: vec!["zfs".to_owned()],
                lspci: Some("lspci.txt".into()),
            }
        );
        let error = parse_args(&args("hardware --kernel-root k")).unwrap_err();
        assert_eq!(error.to_string(), "--kver is required");
        let Command::Initramfs { firmware_root, .. } = parse_args(&args(
            "initramfs --kernel-root k --kver 1 --init i --out o --firmware-root cache/fw",
        ))
        .unwrap() else {
            panic!("not initramfs");
        };
        assert_eq!(firmware_root, Some(PathBuf::from("cache/fw")));
    }

    #[test]
    fn ipxe_arguments() {
        let mut line = args("ipxe --out out/boot.ipxe --append");
        line.push("imprint.url=http://x/y imprint.disk=/dev/sda".to_owned());
        let Command::Ipxe { out, options } = parse_args(&line).unwrap() else {
            panic!("not ipxe");
        };
        assert_eq!(out, PathBuf::from("out/boot.ipxe"));
        assert_eq!(options.base_url, None);
        assert_eq!(
            options.append,
            "imprint.url=http://x/y imprint.disk=/dev/sda"
        );
    }

    #[test]
    fn drp_arguments() {
        let command = parse_args(&args(
            "drp --kernel out/vmlinuz --initramfs out/initramfs.img --out out/drp",
        ))
        .unwrap();
        assert_eq!(
            command,
            Command::Drp {
                kernel: "out/vmlinuz".into(),
                initramfs: "out/initramfs.img".into(),
                tools: None,
                p2p: None,
                out: "out/drp".into(),
            }
        );
        let Command::Drp { p2p, .. } = parse_args(&args(
            "drp --kernel k --initramfs i --p2p-initrd out/imprint-p2p.img --out o",
        ))
        .unwrap() else {
            panic!("not drp");
        };
        assert_eq!(p2p, Some(PathBuf::from("out/imprint-p2p.img")));
        let error = parse_args(&args("drp --kernel k --out o")).unwrap_err();
        assert_eq!(error.to_string(), "--initramfs is required");
    }

    #[test]
    fn p2p_initrd_arguments() {
        assert_eq!(
            parse_args(&args("p2p-initrd --out out/imprint-p2p.img")).unwrap(),
            Command::P2pInitrd {
                aria2c: "/usr/bin/aria2c".into(),
                root: "/".into(),
                kernel: None,
                out: "out/imprint-p2p.img".into(),
            }
        );
        assert_eq!(
            parse_args(&args(
                "p2p-initrd --aria2c /opt/aria2/bin/aria2c --root /srv/sysroot --out p.img"
            ))
            .unwrap(),
            Command::P2pInitrd {
                aria2c: "/opt/aria2/bin/aria2c".into(),
                root: "/srv/sysroot".into(),
                kernel: None,
                out: "p.img".into(),
            }
        );
        assert_eq!(
            parse_args(&args(
                "p2p-initrd --kernel-root cache/k --kver 6.1.0-57-amd64 --out p.img"
            ))
            .unwrap(),
            Command::P2pInitrd {
                aria2c: "/usr/bin/aria2c".into(),
                root: "/".into(),
                kernel: Some(("cache/k".into(), "6.1.0-57-amd64".to_owned())),
                out: "p.img".into(),
            }
        );
        let error = parse_args(&args("p2p-initrd --kver 6.1 --out p.img")).unwrap_err();
        assert_eq!(
            error.to_string(),
            "p2p-initrd: --kernel-root and --kver go together"
        );
        let error = parse_args(&args("p2p-initrd --aria2c a")).unwrap_err();
        assert_eq!(error.to_string(), "--out is required");
        let Command::Ipxe { options, .. } =
            parse_args(&args("ipxe --p2p --out b.ipxe --rootfs-tools")).unwrap()
        else {
            panic!("not ipxe");
        };
        assert!(options.p2p && options.rootfs_tools);
    }

    #[test]
    fn bad_arguments_are_one_line_errors() {
        let error = |line: &str| parse_args(&args(line)).unwrap_err().to_string();
        assert_eq!(error(""), "no command given");
        assert_eq!(error("kernel"), "unknown command kernel");
        assert_eq!(error("ipxe --out"), "--out needs a value");
        assert_eq!(
            error("ipxe --out a --verbose"),
            "unknown argument --verbose"
        );
        assert_eq!(error("ipxe --out a --out b"), "--out given twice");
        assert_eq!(
            error("initramfs --kver 1 --init i --out o"),
            "--kernel-root is required"
        );
    }
}

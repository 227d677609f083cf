//! `imprint` as an ordinary command on any Linux.
//!
//! Every kernel parameter `imprint.X=` is the option `--X` here, through the
//! same table ([`crate::spec::PARAMS`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::disk::DiskSelector;
use crate::logger::ConsoleLogger;
use crate::session::{self, Tracker};
use crate::spec::{Action, DeploySpec, Origin, PARAMS};
use crate::status::{EventKind, HandoffHow, MachineInfo, Stage, Status};

/// How long the last status events may take to reach `--report`.
const REPORT_FLUSH: Duration = Duration::from_secs(5);

const USAGE: &str = "usage: imprint deploy --url URL --disk DEVICE|FILE [--OPTION VALUE]...
       imprint erase --erase metadata|discard|zero --disk DEVICE|FILE | --erase-disks all|HINTS
       imprint unpack URL DIR [--format TYPE] [--checksum ALG:HEX]
       imprint manifest FILE [--chunk SIZE]   print FILE's chunk manifest (imprint.manifest=)
       imprint params     list every parameter (imprint.X= on the kernel command line, --X here)
       imprint version";

const UNPACK_USAGE: &str = "usage: imprint unpack URL DIR [--format TYPE] [--checksum ALG:HEX]

Fetches the root-filesystem tarball at URL (tar, tgz, txz, tbz, tar-zst:
--format, else sniffed) and unpacks it into the existing directory DIR
exactly as a root-filesystem deploy does (owners, modes, xattrs, ACLs,
sparse files; nothing escapes DIR), without partitions or a bootloader.
Run as root to keep owners and file capabilities.

Exit status: 0 unpacked, 1 it failed, 2 usage error.";

const MANIFEST_USAGE: &str = "usage: imprint manifest FILE [--chunk SIZE]

Prints the chunk manifest of the image FILE, as served, to stdout
(imprint manifest golden.raw.zst > golden.raw.zst.chunks): the chunk size
(--chunk, default 16M, at least 64K), the length, the whole file's SHA-256
and one SHA-256 per chunk. imprint.manifest=URL checks every range of a
deploy against it; the README's Mirrors and parallel ranges gives the format.

Exit status: 0 printed, 1 reading FILE failed, 2 usage error.";

const ERASE_USAGE: &str = "usage: imprint erase --erase metadata|discard|zero --disk DEVICE|FILE
       imprint erase --erase MODE --erase-disks all|/dev/NAME|HINT[,HINT]...

Erases disks as `imprint.action=erase` does at boot: prints the plan (each
disk and how) before touching anything, erases, reads back what the method
promises and prints one IMPRINT-RESULT line with each disk's method, seconds
and verification. `metadata` zeroes every signature at both ends of the
disk and of each partition; `discard` unmaps the device; `zero` writes
zeros everywhere. A mounted or busy disk is refused.

Exit status: 0 erased, 1 it failed, 2 usage error.";

const DEPLOY_USAGE: &str = "usage: imprint deploy --url URL --disk DEVICE|FILE [--OPTION VALUE]...

Writes the image at URL onto DEVICE (or a regular FILE standing in for one),
verifies it and injects the machine's identity, then prints one
IMPRINT-RESULT line. Every kernel parameter imprint.X= is the option --X
(--X VALUE or --X=VALUE); `imprint params` lists them all.

Exit status: 0 deployed, 1 the deploy failed, 2 usage error.";

/// Runs the CLI and returns the process exit status: 0 only on success,
/// 1 when the deploy failed, 2 for usage errors.
pub fn main(args: &[String]) -> i32 {
    let wants_help = args[1.min(args.len())..]
        .iter()
        .any(|a| a == "--help" || a == "-h");
    match args.first().map(String::as_str) {
        Some("deploy") if wants_help => {
            println!("{DEPLOY_USAGE}");
            0
        }
        Some("deploy") => deploy(&args[1..]),
        Some("erase") if wants_help => {
            println!("{ERASE_USAGE}");
            0
        }
        Some("erase") => {
            // `imprint erase …` is `imprint deploy --action erase …`.
            let mut with_action = vec!["--action".to_owned(), "erase".to_owned()];
            with_action.extend_from_slice(&args[1..]);
            deploy(&with_action)
        }
        Some("unpack") if wants_help => {
            println!("{UNPACK_USAGE}");
            0
        }
        Some("unpack") => unpack(&args[1..]),
        Some("manifest") if wants_help => {
            println!("{MANIFEST_USAGE}");
            0
        }
        Some("manifest") => manifest(&args[1..]),
        Some("params") if wants_help => {
            println!(
                "usage: imprint params\n\nPrints the parameter reference as a Markdown table."
            );
            0
        }
        Some("params") => {
            print!("{}", params_table());
            0
        }
        Some("version") if wants_help => {
            println!("usage: imprint version\n\nPrints imprint's version.");
            0
        }
        Some("version" | "--version") => {
            println!("imprint {}", env!("CARGO_PKG_VERSION"));
            0
        }
        Some("help" | "--help" | "-h") => {
            println!("{USAGE}");
            0
        }
        Some(other) => {
            eprintln!("imprint: unknown command {other:?}\n{USAGE}");
            2
        }
        None => {
            eprintln!("{USAGE}");
            2
        }
    }
}

/// `imprint manifest FILE [--chunk SIZE]`.
fn manifest(args: &[String]) -> i32 {
    let mut file = None;
    let mut chunk = crate::http::DEFAULT_CHUNK;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (name, value) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value)),
            _ => (arg.as_str(), None),
        };
        match name {
            "--chunk" => {
                let Some(value) = value.or_else(|| rest.next().map(String::as_str)) else {
                    eprintln!("imprint manifest: --chunk needs a size\n{MANIFEST_USAGE}");
                    return 2;
                };
                match crate::source::manifest::parse_chunk(value) {
                    Ok(size) => chunk = size,
                    Err(error) => {
                        eprintln!("imprint manifest: --chunk: {error:#}");
                        return 2;
                    }
                }
            }
            _ if name.starts_with("--") || file.is_some() => {
                eprintln!("imprint manifest: unexpected argument {arg:?}\n{MANIFEST_USAGE}");
                return 2;
            }
            _ => file = Some(arg.clone()),
        }
    }
    let Some(file) = file else {
        eprintln!("{MANIFEST_USAGE}");
        return 2;
    };
    let computed = std::fs::File::open(&file)
        .with_context(|| format!("opening {file}"))
        .and_then(|f| {
            crate::source::manifest::Manifest::compute(std::io::BufReader::new(f), chunk)
                .with_context(|| format!("reading {file}"))
        });
    match computed {
        Ok(manifest) => {
            print!("{}", manifest.render());
            0
        }
        Err(error) => {
            eprintln!("imprint manifest: {error:#}");
            1
        }
    }
}

fn unpack(args: &[String]) -> i32 {
    let mut positional = Vec::new();
    let mut format = None;
    let mut checksum = None;
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let slot = match flag {
            "--format" => &mut format,
            "--checksum" => &mut checksum,
            other if other.starts_with("--") => {
                eprintln!("imprint: unknown option {other}\n{UNPACK_USAGE}");
                return 2;
            }
            _ => {
                positional.push(arg.clone());
                continue;
            }
        };
        match inline.or_else(|| rest.next().cloned()) {
            Some(value) => *slot = Some(value),
            None => {
                eprintln!("imprint: {flag} needs a value\n{UNPACK_USAGE}");
                return 2;
            }
        }
    }
    let [url, dir] = positional.as_slice() else {
        eprintln!("imprint: unpack takes a URL and a directory\n{UNPACK_USAGE}");
        return 2;
    };
    ConsoleLogger::install(log::LevelFilter::Info, false);
    let outcome = crate::rootfs::deploy::unpack_url(
        url,
        format.as_deref(),
        checksum.as_deref(),
        Path::new(dir),
    );
    match outcome {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            println!("{}", crate::report::error_line(&e));
            1
        }
    }
}

fn deploy(args: &[String]) -> i32 {
    let spec = match parse_deploy_args(args) {
        Ok(spec) => spec,
        Err(e) => {
            eprintln!("imprint: {e:#}\n{USAGE}");
            return 2;
        }
    };
    ConsoleLogger::install(log::LevelFilter::Info, false);
    // --report and --status-port work here too: a fleet script can watch
    // CLI deploys the way it watches PID 1's.
    let mut tracker = Tracker::new(Status::new(&spec.status_options()));
    if spec.report.is_some() {
        tracker.status.emit(EventKind::Started {
            machine: MachineInfo::gather(Path::new("/sys")),
        });
    }
    let started = std::time::Instant::now();
    let mut outcome = with_config(spec, args).and_then(|spec| {
        if spec.action == Action::Erase {
            let job = spec.resolve_erase(Origin::Cli)?;
            tracker.enter(Stage::Disk);
            let target = match &job.target {
                Some(selector) => Some(resolve_target(selector).context("option --disk")?),
                None => None,
            };
            let erased = session::erase(&job.request, target.as_deref(), None, &mut tracker)?;
            return Ok((crate::report::erased_line(&erased, started.elapsed()), None));
        }
        let deploy = spec.resolve(Origin::Cli)?;
        let source = tracker.opening_source(&deploy)?;
        tracker.enter(Stage::Disk);
        let target = resolve_target(&deploy.disk).context("option --disk")?;
        let erased = match &deploy.erase {
            Some(request) => session::erase(
                request,
                Some(&target),
                source.device.as_deref(),
                &mut tracker,
            )?,
            None => Vec::new(),
        };
        let mut done = session::run(&deploy, source, &target, None, &mut tracker)?;
        done.summary.erased = erased.iter().map(crate::erase::Erased::token).collect();
        Ok((crate::report::ok_line(&done.summary), Some(done)))
    });
    match outcome {
        Ok((ref line, ref mut done)) => {
            println!("{line}");
            // Seeding comes after the result: whoever waits for it has it.
            if let Some(done) = done {
                use std::io::Write;
                let _ = std::io::stdout().flush();
                done.seed();
            }
        }
        Err(ref e) => println!("{}", crate::report::error_line(e)),
    }
    let code = match outcome {
        Ok(_) => {
            tracker.status.emit(EventKind::Handoff {
                how: HandoffHow::None,
                kernel: None,
                cmdline: None,
                detail: Some("the CLI exits".to_owned()),
            });
            0
        }
        Err(e) => {
            tracker.status.emit(EventKind::Failed {
                stage: tracker.status.stage(),
                error: format!("{e:#}"),
                offset: None,
                attempt: None,
            });
            1
        }
    };
    if !tracker.status.flush(REPORT_FLUSH) {
        log::warn!("not every status event reached the report URL");
    }
    code
}

/// `--config URL`: the JSON spec first, the options over it.
fn with_config(spec: DeploySpec, args: &[String]) -> Result<DeploySpec> {
    let Some(config) = &spec.config else {
        return Ok(spec);
    };
    let text = session::fetch_spec(config, &spec.source)?;
    let mut base = DeploySpec::default();
    base.apply_json(&text)
        .with_context(|| format!("deploy spec {config}"))?;
    parse_deploy_args_over(base, args)
}

/// A path is used as it is (a block device, or a regular file standing in
/// for one); hints (`size>=100G,rotational=0`) and udev names are resolved
/// against this machine's disks through sysfs, exactly as PID 1 does.
fn resolve_target(selector: &DiskSelector) -> Result<PathBuf> {
    match selector {
        DiskSelector::Name(path) => return Ok(PathBuf::from(path)),
        DiskSelector::ById(_) | DiskSelector::ByPath(_) => {
            let path = PathBuf::from(selector.to_string());
            if path.exists() {
                return Ok(path);
            }
        }
        DiskSelector::Hints { .. } => {}
    }
    let disks = crate::disk::list_disks(Path::new("/sys/block"))?;
    let disk = crate::disk::select_disk(selector, &disks, &[])?;
    log::info!("target disk: {}", disk.describe());
    Ok(disk.dev_path())
}

/// `--name value` or `--name=value`, each name from the parameter table.
pub fn parse_deploy_args(args: &[String]) -> Result<DeploySpec> {
    parse_deploy_args_over(DeploySpec::default(), args)
}

/// The options applied over `spec` (a JSON deploy spec's, for `--config`).
fn parse_deploy_args_over(mut spec: DeploySpec, args: &[String]) -> Result<DeploySpec> {
    let mut rest = args.iter();
    // `--url` repeated lists the image's mirrors, in order.
    let mut mirrors: Vec<&str> = Vec::new();
    while let Some(arg) = rest.next() {
        let Some(option) = arg.strip_prefix("--") else {
            bail!("unexpected argument {arg:?}; options look like --url URL");
        };
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, rest.next().map(String::as_str)),
        };
        if name == "url" {
            if let Some(value) = value {
                mirrors.push(value);
                spec.set(Origin::Cli, name, Some(&mirrors.join("|")))?;
                continue;
            }
        }
        spec.set(Origin::Cli, name, value)?;
    }
    spec.validate(Origin::Cli)?;
    Ok(spec)
}

/// The parameter reference as a Markdown table (the README embeds it).
pub fn params_table() -> String {
    let mut out = String::from(
        "| kernel parameter | CLI option | values | default | meaning |\n|---|---|---|---|---|\n",
    );
    for p in PARAMS {
        out += &format!(
            "| `imprint.{0}=` | `--{0}` | `{1}` | {2} | {3} |\n",
            p.name,
            p.values.replace('|', "\\|"),
            p.default,
            p.help
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::SuccessPolicy;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn both_option_spellings() {
        let spec = parse_deploy_args(&args(
            "--url http://h/x.img --disk=/tmp/d --on-success poweroff",
        ))
        .unwrap();
        assert_eq!(spec.url.unwrap().as_str(), "http://h/x.img");
        assert_eq!(spec.disk.unwrap().to_string(), "/tmp/d");
        assert_eq!(spec.on_success, SuccessPolicy::Poweroff);
    }

    #[test]
    fn errors_name_the_option() {
        let msg = format!(
            "{:#}",
            parse_deploy_args(&args("--dsik /dev/sda")).unwrap_err()
        );
        assert!(msg.starts_with("unknown parameter --dsik"), "{msg}");
        let msg = format!("{:#}", parse_deploy_args(&args("--url")).unwrap_err());
        assert_eq!(msg, "--url needs a value");
        let msg = format!("{:#}", parse_deploy_args(&args("http://x")).unwrap_err());
        assert!(msg.contains("unexpected argument"), "{msg}");
    }

    #[test]
    fn exit_codes() {
        assert_eq!(main(&args("frobnicate")), 2);
        assert_eq!(main(&[]), 2);
        assert_eq!(main(&args("version")), 0);
        assert_eq!(main(&args("deploy --bogus 1")), 2);
    }

    #[test]
    fn repeated_urls_are_mirrors_in_order() {
        let spec = parse_deploy_args(&args(
            "--url http://cache:8080/x.img --disk /dev/vda --url https://origin/x.img?sig=s --parallel 4 --chunk 4M",
        ))
        .unwrap();
        assert_eq!(
            spec.url.as_ref().unwrap().as_str(),
            "http://cache:8080/x.img"
        );
        assert_eq!(
            spec.source.ranges.mirrors,
            ["http://cache:8080/x.img", "https://origin/x.img?sig=s"]
        );
        assert_eq!(spec.source.ranges.parallel, 4);
        assert_eq!(spec.source.ranges.chunk, 4 << 20);
        let msg = format!(
            "{:#}",
            parse_deploy_args(&args("--url http://a/x --url oci://reg/os/g:v1")).unwrap_err()
        );
        assert!(
            msg.starts_with("--url: oci://reg/os/g:v1: only http://"),
            "{msg}"
        );
        let spec = parse_deploy_args(&args("--url oci://reg/os/g:v1")).unwrap();
        assert!(spec.source.ranges.mirrors.is_empty());
    }

    #[test]
    fn manifest_command_prints_the_manifest() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, &vec![7u8; 100_000]).unwrap();
        let path = file.path().display().to_string();
        assert_eq!(main(&args(&format!("manifest {path} --chunk 64K"))), 0);
        assert_eq!(main(&args(&format!("manifest {path} --chunk 1K"))), 2);
        assert_eq!(main(&args("manifest")), 2);
        assert_eq!(main(&args("manifest /nonexistent/image")), 1);
    }

    #[test]
    fn every_command_answers_help() {
        for command in [
            "deploy --help",
            "deploy -h",
            "deploy --url x --help",
            "params --help",
            "manifest --help",
            "version -h",
            "--help",
            "help",
        ] {
            assert_eq!(main(&args(command)), 0, "{command}");
        }
    }

    #[test]
    fn params_table_lists_every_parameter() {
        let table = params_table();
        for p in PARAMS {
            assert!(table.contains(&format!("`imprint.{}=`", p.name)));
        }
    }

    #[test]
    fn readme_documents_every_parameter() {
        let readme =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
        assert!(
            readme.contains(&params_table()),
            "README's parameter table is stale: replace it with the output of `imprint params`"
        );
    }
}

//! What to boot in the installed system, and with which command line.
//!
//! After injection, imprint hands the machine to the installed kernel
//! (kexec). This module decides which kernel, initrds and options, looking
//! where the installed boot loader would, in this order: the explicit
//! `imprint.kexec-kernel=`/`-initrd=`/`-cmdline=`; the newest BLS entry
//! (`loader/entries/*.conf`); the default entry of `grub.cfg`; the
//! `/vmlinuz` + `/initrd.img` links Debian and Ubuntu keep. It reads the
//! installed system through [`RootDir`] (with a separate `/boot` mounted on
//! its `/boot`, as there), so it never leaves it: a path with `..` is
//! refused, `..` in a symlink stops at the root, and an absolute symlink
//! means the installed system's `/`, not the host's.
//!
//! [`kexec_cmdline`] then turns the entry's options into the command line;
//! [`boot_mount_from_fstab`] tells the caller which filesystem to mount as
//! `/boot` first.

mod bls;
mod cmdline;
mod fstab;
mod grub;
mod version;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::installed::RootDir;

pub use cmdline::kexec_cmdline;
pub use fstab::{FsSource, FsSpec, boot_mount_from_fstab};
pub use version::compare_versions;

/// The installed system as mounted by the caller: its root, with a
/// separate `/boot` filesystem (if any) mounted on its `/boot`.
#[derive(Debug, Clone, Copy)]
pub struct BootFs<'a> {
    pub root: &'a RootDir,
    /// Whether `/boot` is a filesystem of its own: GRUB then names files
    /// relative to it.
    pub separate_boot: bool,
}

/// `imprint.kexec-kernel=` / `-initrd=` / `-cmdline=`: paths inside the
/// installed system, and the command line to use instead of the entry's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explicit {
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
}

/// Where a [`BootEntry`] came from, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryOrigin {
    /// `imprint.kexec-kernel=` and friends.
    Explicit,
    /// A BLS entry: its file relative to the boot filesystem
    /// (`loader/entries/x.conf`) and its `version`.
    Bls {
        file: PathBuf,
        version: Option<String>,
    },
    /// The default entry of a `grub.cfg` (path inside the installed system).
    Grub { config: PathBuf, title: String },
    /// `/vmlinuz` and `/initrd.img` (or under `/boot`).
    Symlinks,
}

/// The kernel to kexec, its initrds and its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// The kernel's path inside the installed system, symlinks resolved;
    /// it is a regular file.
    pub kernel: PathBuf,
    /// The initrds' paths inside the installed system, in order; each is a
    /// regular file. May be empty.
    pub initrds: Vec<PathBuf>,
    /// The entry's command line, variables resolved; `None` if it has none.
    pub options: Option<String>,
    pub origin: EntryOrigin,
}

impl fmt::Display for BootEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            EntryOrigin::Explicit => write!(f, "explicit imprint.kexec-kernel")?,
            EntryOrigin::Bls { file, version } => {
                write!(f, "BLS entry {}", file.display())?;
                if let Some(version) = version {
                    write!(f, " (version {version})")?;
                }
            }
            EntryOrigin::Grub { config, title } => {
                write!(f, "grub entry '{title}' of {}", config.display())?
            }
            EntryOrigin::Symlinks => write!(f, "kernel symlink")?,
        }
        write!(f, ": {}", self.kernel.display())?;
        match self.initrds.len() {
            0 => write!(f, ", no initrd"),
            1 => write!(f, " + 1 initrd"),
            n => write!(f, " + {n} initrds"),
        }
    }
}

/// Finds what to boot in the installed system: explicit parameters, else
/// the newest BLS entry, else grub.cfg's default entry, else the
/// `/vmlinuz` + `/initrd.img` links.
pub fn find_boot_entry(fs: &BootFs, explicit: &Explicit) -> Result<BootEntry> {
    let tree = Tree {
        root: fs.root,
        separate_boot: fs.separate_boot,
    };
    if explicit.kernel.is_some() || explicit.initrd.is_some() || explicit.cmdline.is_some() {
        return explicit_entry(&tree, explicit);
    }
    let grubenv = read_grubenv(&tree)?;
    let grub_cfg = read_grub_cfg(&tree)?;

    let bls_entries = read_bls_entries(&tree)?;
    if !bls_entries.is_empty()
        && let Some(entry) = choose_bls(&tree, bls_entries, &grubenv, grub_cfg.as_ref())?
    {
        return Ok(entry);
    }

    if let Some((config, text)) = &grub_cfg {
        if let Some(entry) = grub_entry(&tree, config, text, &grubenv)? {
            return Ok(entry);
        }
    }

    if let Some(entry) = symlink_entry(&tree)? {
        return Ok(entry);
    }
    bail!(
        "no kernel found in {}: looked for imprint.kexec-kernel=, BLS entries in \
         /boot/loader/entries, /boot/grub/grub.cfg, /boot/grub2/grub.cfg, \
         /vmlinuz and /boot/vmlinuz",
        fs.root.path().display()
    )
}

fn explicit_entry(tree: &Tree, explicit: &Explicit) -> Result<BootEntry> {
    let Some(kernel) = &explicit.kernel else {
        bail!(
            "imprint.kexec-initrd= or imprint.kexec-cmdline= given without imprint.kexec-kernel=: \
             add the kernel's path in the installed system"
        );
    };
    let kernel = tree.root.file_path(kernel)?.with_context(|| {
        format!("imprint.kexec-kernel={kernel}: no such file in the installed system")
    })?;
    let mut initrds = Vec::new();
    if let Some(initrd) = &explicit.initrd {
        let found = tree.root.file_path(initrd)?;
        initrds.push(found.with_context(|| {
            format!("imprint.kexec-initrd={initrd}: no such file in the installed system")
        })?);
    }
    Ok(BootEntry {
        kernel,
        initrds,
        options: explicit.cmdline.clone(),
        origin: EntryOrigin::Explicit,
    })
}

// --- BLS -------------------------------------------------------------------

const ENTRIES_DIR: &str = "/boot/loader/entries";

/// The most a boot loader configuration file may hold.
const CONFIG_LIMIT: u64 = 4 << 20;

fn read_bls_entries(tree: &Tree) -> Result<Vec<bls::BlsEntry>> {
    let Some(names) = tree.root.list_dir(ENTRIES_DIR)? else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for name in names {
        let Some(name) = name.to_str().filter(|n| n.ends_with(".conf")) else {
            continue;
        };
        let path = format!("{ENTRIES_DIR}/{name}");
        let Some(text) = tree
            .root
            .read_text(&path, CONFIG_LIMIT)
            .with_context(|| format!("reading {path}"))?
        else {
            continue;
        };
        entries.push(bls::BlsEntry::parse(name, &text));
    }
    Ok(entries)
}

/// The newest entry whose files exist. Entries with a missing kernel or
/// initrd are skipped (logged); `None` when none is left.
fn choose_bls(
    tree: &Tree,
    mut entries: Vec<bls::BlsEntry>,
    grubenv: &[(String, String)],
    grub_cfg: Option<&(PathBuf, String)>,
) -> Result<Option<BootEntry>> {
    entries.sort_by(bls::newest_first);
    // GRUB's blscfg expands variables from the environment grub.cfg built,
    // which loaded grubenv.
    let mut script = grub::Script::new(grubenv.to_vec());
    script.load_env();
    if let Some((config, text)) = grub_cfg {
        script
            .run(text)
            .with_context(|| format!("reading {}", config.display()))?;
    }
    let value = |name: &str| {
        script
            .var(name)
            .map(str::to_owned)
            .or_else(|| grub::EMPTY_UNLESS_SET.contains(&name).then(String::new))
    };

    for entry in &entries {
        let file = PathBuf::from("loader/entries").join(&entry.file_name);
        let Some(linux) = &entry.linux else {
            log::warn!("{}: no linux line, skipped", file.display());
            continue;
        };
        let mut unresolved = BTreeSet::new();
        let linux = bls::expand_variables(linux, value, &mut unresolved);
        let initrd_paths: Vec<String> = entry
            .initrds
            .iter()
            .flat_map(|line| {
                bls::expand_variables(line, value, &mut unresolved)
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect();
        let options = entry
            .options
            .as_deref()
            .map(|o| bls::expand_variables(o, value, &mut unresolved));
        if !unresolved.is_empty() {
            bail!(
                "{}: variables {} are set neither in grubenv nor in grub.cfg",
                file.display(),
                names(&unresolved)
            );
        }
        let Some(kernel) = tree.boot_loader_path(&linux)? else {
            log::warn!("{}: kernel {linux} does not exist, skipped", file.display());
            continue;
        };
        let mut initrds = Vec::new();
        for path in &initrd_paths {
            match tree.boot_loader_path(path)? {
                Some(host) => initrds.push(host),
                None => {
                    log::warn!("{}: initrd {path} does not exist, skipped", file.display());
                    break;
                }
            }
        }
        if initrds.len() != initrd_paths.len() {
            continue;
        }
        return Ok(Some(BootEntry {
            kernel,
            initrds,
            options,
            origin: EntryOrigin::Bls {
                file,
                version: entry.version.clone(),
            },
        }));
    }
    Ok(None)
}

// --- grub.cfg --------------------------------------------------------------

const GRUB_CONFIGS: &[&str] = &["/boot/grub/grub.cfg", "/boot/grub2/grub.cfg"];
const GRUBENVS: &[&str] = &["/boot/grub2/grubenv", "/boot/grub/grubenv"];

fn read_grub_cfg(tree: &Tree) -> Result<Option<(PathBuf, String)>> {
    for config in GRUB_CONFIGS {
        let text = tree
            .root
            .read_text(config, CONFIG_LIMIT)
            .with_context(|| format!("reading {config}"))?;
        if let Some(text) = text {
            return Ok(Some((PathBuf::from(config), text)));
        }
    }
    Ok(None)
}

fn read_grubenv(tree: &Tree) -> Result<Vec<(String, String)>> {
    for env in GRUBENVS {
        let text = tree
            .root
            .read_text(env, CONFIG_LIMIT)
            .with_context(|| format!("reading {env}"))?;
        if let Some(text) = text {
            return Ok(grub::parse_grubenv(&text));
        }
    }
    Ok(Vec::new())
}

fn grub_entry(
    tree: &Tree,
    config: &Path,
    text: &str,
    grubenv: &[(String, String)],
) -> Result<Option<BootEntry>> {
    let mut script = grub::Script::new(grubenv.to_vec());
    script
        .run(text)
        .with_context(|| format!("reading {}", config.display()))?;
    if script.entries.is_empty() {
        if script.uses_blscfg {
            bail!(
                "{} boots BLS entries (blscfg) but {ENTRIES_DIR} has none with an existing kernel",
                config.display()
            );
        }
        log::warn!("{}: no menuentry, ignored", config.display());
        return Ok(None);
    }
    let default = script.var("default").unwrap_or("0").to_owned();
    let entry = match grub::find_default(&script.entries, &default) {
        Some(entry) => entry,
        None => {
            // GRUB itself falls back to the first entry.
            log::warn!(
                "{}: default entry '{default}' not found, using the first entry",
                config.display()
            );
            grub::find_default(&script.entries, "0").context("grub.cfg has no entries")?
        }
    };
    let lines = script.boot_lines(entry).map_err(|unresolved| {
        anyhow::anyhow!(
            "{}: entry '{}' uses variables {} that grub.cfg and grubenv never set",
            config.display(),
            entry.title,
            names(&unresolved)
        )
    })?;
    let Some(linux) = lines.linux.filter(|l| !l.is_empty()) else {
        bail!(
            "{}: entry '{}' has no linux line",
            config.display(),
            entry.title
        );
    };
    let kernel = tree.boot_loader_path(&linux[0])?.with_context(|| {
        format!(
            "{}: entry '{}': kernel {} does not exist",
            config.display(),
            entry.title,
            linux[0]
        )
    })?;
    let mut initrds = Vec::new();
    for path in &lines.initrds {
        initrds.push(tree.boot_loader_path(path)?.with_context(|| {
            format!(
                "{}: entry '{}': initrd {path} does not exist",
                config.display(),
                entry.title
            )
        })?);
    }
    // GRUB quotes arguments holding spaces when it builds the command line.
    let options: Vec<String> = linux[1..]
        .iter()
        .map(|a| {
            if a.contains(char::is_whitespace) {
                format!("\"{a}\"")
            } else {
                a.clone()
            }
        })
        .collect();
    Ok(Some(BootEntry {
        kernel,
        initrds,
        options: (!options.is_empty()).then(|| options.join(" ")),
        origin: EntryOrigin::Grub {
            config: config.to_path_buf(),
            title: entry.title.clone(),
        },
    }))
}

// --- symlinks --------------------------------------------------------------

fn symlink_entry(tree: &Tree) -> Result<Option<BootEntry>> {
    for dir in ["", "/boot"] {
        if let Some(kernel) = tree.root.file_path(&format!("{dir}/vmlinuz"))? {
            let initrds = tree
                .root
                .file_path(&format!("{dir}/initrd.img"))?
                .into_iter()
                .collect();
            return Ok(Some(BootEntry {
                kernel,
                initrds,
                options: None,
                origin: EntryOrigin::Symlinks,
            }));
        }
    }
    Ok(None)
}

fn names(set: &BTreeSet<String>) -> String {
    set.iter()
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// --- paths -----------------------------------------------------------------

/// The installed system's namespace: `/` is `root`, a separate `/boot`
/// mounted on its `/boot`.
struct Tree<'a> {
    root: &'a RootDir,
    separate_boot: bool,
}

impl Tree<'_> {
    /// Resolves a path as GRUB or a BLS entry writes it: relative to the
    /// filesystem GRUB reads, which is the separate /boot when there is
    /// one. Fedora writes `/vmlinuz-x` even when /boot is on the root, and
    /// Ubuntu on btrfs writes `/@/boot/...`, so both readings are tried.
    fn boot_loader_path(&self, path: &str) -> Result<Option<PathBuf>> {
        // A GRUB device prefix such as `(hd0,gpt2)/vmlinuz`.
        let mut path = match path.strip_prefix('(').and_then(|p| p.split_once(')')) {
            Some((_, rest)) => rest,
            None => path,
        };
        if let Some(rest) = path.strip_prefix("/@/") {
            path = rest;
        }
        let path = path.trim_start_matches('/');
        let (first, second) = (format!("/{path}"), format!("/boot/{path}"));
        let candidates = if self.separate_boot {
            [second, first]
        } else {
            [first, second]
        };
        for candidate in &candidates {
            if let Some(found) = self.root.file_path(candidate)? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests;

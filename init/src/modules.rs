//! Kernel module metadata: which `.ko` files to load, and in which order.
//!
//! The same code serves two moments. At build time `imprint-build` reads the
//! full depmod output of a distribution kernel, computes the closure of the
//! drivers imprint ships and writes a filtered copy of the metadata into the
//! initramfs. At boot PID 1 parses that small copy and turns the modaliases
//! it finds under `/sys` into a [`ColdplugPlan`]. Everything here is pure:
//! reading `/sys` and calling `finit_module` belong to `sys`.
//!
//! The formats are depmod's text files: `modules.dep`, `modules.alias`,
//! `modules.softdep` and the kernel's own `modules.builtin`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::hardware::HardwareReport;

/// The metadata files, in the order they are written out.
pub const METADATA_FILES: [&str; 4] = [
    "modules.dep",
    "modules.alias",
    "modules.softdep",
    "modules.builtin",
];

/// One module to load: its name and its path relative to
/// `/lib/modules/<kver>/`, exactly as `modules.dep` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleEntry {
    pub name: String,
    pub path: String,
}

/// The load order for some requested modules, plus the requests that needed
/// nothing because the kernel has them built in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModuleClosure {
    pub modules: Vec<ModuleEntry>,
    pub builtin: Vec<String>,
}

/// What PID 1 should load for the devices it found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ColdplugPlan {
    /// In load order, each module once.
    pub modules: Vec<ModuleEntry>,
    /// Device modaliases that no module in the index claims (reported, so an
    /// unsupported NIC or disk controller shows up in the log).
    pub unmatched_modaliases: Vec<String>,
    /// Extra modules that the index does not know (e.g. a filesystem that was
    /// not put into this initramfs).
    pub unknown_modules: Vec<String>,
    /// Extra modules that are built into the kernel: nothing to load.
    pub builtin: Vec<String>,
}

#[derive(Debug, Clone)]
struct ModuleRecord {
    name: String,
    path: String,
    /// Names, in the order `modules.dep` lists them.
    dependencies: Vec<String>,
}

#[derive(Debug, Clone)]
struct AliasRecord {
    /// As written in `modules.alias`, for writing it back out.
    pattern: String,
    /// With `-` folded to `_` the way kmod folds aliases before matching.
    normalized_pattern: String,
    module: String,
}

#[derive(Debug, Clone, Default)]
struct Softdeps {
    /// Module names or aliases, as written.
    pre: Vec<String>,
    post: Vec<String>,
}

/// Parsed depmod metadata of one kernel (or of the subset in an initramfs).
#[derive(Debug, Clone, Default)]
pub struct ModuleIndex {
    /// Used in error messages: "module ice not found in kernel 6.1.0-56-amd64".
    kernel_version: Option<String>,
    /// In `modules.dep` order, which is the order depmod found them in.
    modules: Vec<ModuleRecord>,
    by_name: HashMap<String, usize>,
    aliases: Vec<AliasRecord>,
    softdeps: BTreeMap<String, Softdeps>,
    /// Paths as in `modules.builtin`, and the names derived from them.
    builtin_paths: Vec<String>,
    builtin: BTreeSet<String>,
}

/// Folds `-` to `_`: the kernel and kmod treat both spellings as one name.
pub fn normalize_module_name(name: &str) -> String {
    name.replace('-', "_")
}

/// `kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko` -> `e1000e`; also
/// handles compressed modules (`.ko.xz`, `.ko.zst`).
pub fn module_name_from_path(path: &str) -> String {
    let file_name = path.rsplit('/').next().unwrap_or(path);
    let stem = file_name
        .find(".ko")
        .map_or(file_name, |end| &file_name[..end]);
    normalize_module_name(stem)
}

/// kmod folds `-` to `_` in aliases except inside `[...]`, where `-` is a
/// range (`usb:v13FDp3940d0[0-2]*`).
fn normalize_alias(alias: &str) -> String {
    let mut normalized = String::with_capacity(alias.len());
    let mut in_brackets = false;
    for character in alias.chars() {
        match character {
            '[' => in_brackets = true,
            ']' => in_brackets = false,
            '-' if !in_brackets => {
                normalized.push('_');
                continue;
            }
            _ => {}
        }
        normalized.push(character);
    }
    normalized
}

/// fnmatch(3) without flags, as kmod uses it for modalias patterns: `*`, `?`,
/// and bracket expressions with ranges and `!`/`^` negation. A `[` without a
/// closing `]` matches itself.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern = pattern.as_bytes();
    let text = text.as_bytes();
    let (mut pattern_at, mut text_at) = (0, 0);
    // Where to resume after the most recent `*`: the pattern position after
    // it and the text position it has swallowed up to. One star of
    // backtracking suffices because a later star subsumes an earlier one.
    let mut resume: Option<(usize, usize)> = None;
    while text_at < text.len() {
        let step = match pattern.get(pattern_at) {
            Some(b'*') => {
                resume = Some((pattern_at + 1, text_at));
                pattern_at += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match match_bracket(&pattern[pattern_at..], text[text_at]) {
                Some((true, consumed)) => Some(consumed),
                Some((false, _)) => None,
                None => (text[text_at] == b'[').then_some(1),
            },
            Some(&literal) => (literal == text[text_at]).then_some(1),
            None => None,
        };
        match (step, resume) {
            (Some(consumed), _) => {
                pattern_at += consumed;
                text_at += 1;
            }
            (None, Some((star_pattern_at, star_text_at))) => {
                pattern_at = star_pattern_at;
                text_at = star_text_at + 1;
                resume = Some((star_pattern_at, star_text_at + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[pattern_at..].iter().all(|&byte| byte == b'*')
}

/// Matches one byte against the bracket expression at the start of
/// `pattern`. Returns whether it matched and how many pattern bytes the
/// expression spans, or `None` if the bracket is not closed.
fn match_bracket(pattern: &[u8], byte: u8) -> Option<(bool, usize)> {
    let mut at = 1;
    let negated = matches!(pattern.get(at), Some(b'!' | b'^'));
    if negated {
        at += 1;
    }
    let mut matched = false;
    let mut first = true;
    loop {
        let &start = pattern.get(at)?;
        // A `]` right after the opening bracket is a literal member.
        if start == b']' && !first {
            return Some((matched != negated, at + 1));
        }
        first = false;
        if pattern.get(at + 1) == Some(&b'-') && pattern.get(at + 2).is_some_and(|&end| end != b']')
        {
            let end = pattern[at + 2];
            matched |= start <= byte && byte <= end;
            at += 3;
        } else {
            matched |= start == byte;
            at += 1;
        }
    }
}

fn not_empty_or_comment(line: &str) -> Option<&str> {
    let line = line.trim();
    (!line.is_empty() && !line.starts_with('#')).then_some(line)
}

impl ModuleIndex {
    /// Parses the four metadata files from their text.
    pub fn parse(
        modules_dep: &str,
        modules_alias: &str,
        modules_softdep: &str,
        modules_builtin: &str,
    ) -> Result<Self> {
        let mut index = ModuleIndex::default();
        for (line_number, line) in modules_dep.lines().enumerate() {
            let Some(line) = not_empty_or_comment(line) else {
                continue;
            };
            let (path, dependencies) = line
                .split_once(':')
                .with_context(|| format!("modules.dep line {}: no ':'", line_number + 1))?;
            let path = path.trim().to_owned();
            let name = module_name_from_path(&path);
            let record = ModuleRecord {
                name: name.clone(),
                path,
                dependencies: dependencies
                    .split_whitespace()
                    .map(module_name_from_path)
                    .collect(),
            };
            // depmod never lists a name twice; if a hand-made file does, the
            // first one wins, as it does for modprobe.
            if !index.by_name.contains_key(&name) {
                index.by_name.insert(name, index.modules.len());
                index.modules.push(record);
            }
        }
        for (line_number, line) in modules_alias.lines().enumerate() {
            let Some(line) = not_empty_or_comment(line) else {
                continue;
            };
            let mut words = line.split_whitespace();
            let (Some("alias"), Some(pattern), Some(module), None) =
                (words.next(), words.next(), words.next(), words.next())
            else {
                bail!(
                    "modules.alias line {}: expected 'alias PATTERN MODULE'",
                    line_number + 1
                );
            };
            index.aliases.push(AliasRecord {
                pattern: pattern.to_owned(),
                normalized_pattern: normalize_alias(pattern),
                module: normalize_module_name(module),
            });
        }
        for (line_number, line) in modules_softdep.lines().enumerate() {
            let Some(line) = not_empty_or_comment(line) else {
                continue;
            };
            let mut words = line.split_whitespace();
            let (Some("softdep"), Some(module)) = (words.next(), words.next()) else {
                bail!(
                    "modules.softdep line {}: expected 'softdep MODULE pre: ... post: ...'",
                    line_number + 1
                );
            };
            let softdeps = index
                .softdeps
                .entry(normalize_module_name(module))
                .or_default();
            // Names before any `pre:`/`post:` are ignored, as kmod ignores
            // them (cifs declares `MODULE_SOFTDEP("gcm")` without a section).
            let mut section: Option<&mut Vec<String>> = None;
            for word in words {
                match word {
                    "pre:" => section = Some(&mut softdeps.pre),
                    "post:" => section = Some(&mut softdeps.post),
                    name => {
                        if let Some(names) = section.as_deref_mut() {
                            names.push(name.to_owned());
                        }
                    }
                }
            }
        }
        for line in modules_builtin.lines() {
            let Some(path) = not_empty_or_comment(line) else {
                continue;
            };
            index.builtin_paths.push(path.to_owned());
            index.builtin.insert(module_name_from_path(path));
        }
        Ok(index)
    }

    /// Reads the metadata from `/lib/modules/<kver>` (or any directory laid
    /// out like it); the directory name becomes the kernel version in errors.
    pub fn load(modules_dir: &Path) -> Result<Self> {
        let read = |file_name: &str| {
            let path = modules_dir.join(file_name);
            std::fs::read_to_string(&path)
                .with_context(|| format!("reading {file_name} in {}", modules_dir.display()))
        };
        let mut index = Self::parse(
            &read("modules.dep")?,
            &read("modules.alias")?,
            &read("modules.softdep")?,
            &read("modules.builtin")?,
        )
        .with_context(|| format!("parsing module metadata in {}", modules_dir.display()))?;
        index.kernel_version = modules_dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned());
        Ok(index)
    }

    /// Names the kernel in error messages.
    pub fn with_kernel_version(mut self, kernel_version: &str) -> Self {
        self.kernel_version = Some(kernel_version.to_owned());
        self
    }

    pub fn kernel_version(&self) -> Option<&str> {
        self.kernel_version.as_deref()
    }

    /// Number of loadable modules in the index.
    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// Every loadable module, in `modules.dep` order.
    pub fn entries(&self) -> impl Iterator<Item = ModuleEntry> + '_ {
        self.modules.iter().map(|record| ModuleEntry {
            name: record.name.clone(),
            path: record.path.clone(),
        })
    }

    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(&normalize_module_name(name))
    }

    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize_module_name(name))
    }

    /// The loadable modules that declare an alias matching `modalias`
    /// (e.g. `pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00`), in
    /// `modules.alias` order, each once. Also resolves plain aliases such as
    /// `crypto-crc32c` or `fs-vfat`.
    pub fn modules_for_modalias(&self, modalias: &str) -> Vec<String> {
        let modalias = normalize_alias(modalias);
        let mut found: Vec<String> = Vec::new();
        for alias in &self.aliases {
            if self.by_name.contains_key(&alias.module)
                && !found.contains(&alias.module)
                && glob_matches(&alias.normalized_pattern, &modalias)
            {
                found.push(alias.module.clone());
            }
        }
        found
    }

    fn kernel_description(&self) -> String {
        match &self.kernel_version {
            Some(version) => format!("kernel {version}"),
            None => "the module index".to_owned(),
        }
    }

    /// The modules to load for `names`, dependencies first, each softdep
    /// `pre:` before and `post:` after its module. A name may be a module or
    /// an alias. See [`ModuleIndex::resolve`] for the built-in ones.
    pub fn closure(&self, names: &[&str]) -> Result<Vec<ModuleEntry>> {
        Ok(self.resolve(names)?.modules)
    }

    /// Like [`ModuleIndex::closure`], but also says which requests the
    /// kernel has built in. An unknown name is an error naming it.
    pub fn resolve(&self, names: &[&str]) -> Result<ModuleClosure> {
        let mut walk = ClosureWalk::new(self);
        let mut builtin = Vec::new();
        for &name in names {
            match self.lookup(name) {
                Lookup::Modules(modules) => {
                    for module in modules {
                        walk.visit(&module)?;
                    }
                }
                Lookup::Builtin(name) => {
                    if !builtin.contains(&name) {
                        builtin.push(name);
                    }
                }
                Lookup::Unknown => {
                    bail!("module {name} not found in {}", self.kernel_description())
                }
            }
        }
        Ok(ModuleClosure {
            modules: walk.order,
            builtin,
        })
    }

    /// Module name first, then built-in, then alias: the order modprobe uses.
    fn lookup(&self, name: &str) -> Lookup {
        let normalized = normalize_module_name(name);
        if self.by_name.contains_key(&normalized) {
            return Lookup::Modules(vec![normalized]);
        }
        if self.builtin.contains(&normalized) {
            return Lookup::Builtin(normalized);
        }
        let modules = self.modules_for_modalias(name);
        if modules.is_empty() {
            Lookup::Unknown
        } else {
            Lookup::Modules(modules)
        }
    }

    /// The metadata of `modules` only (which should be a closure): their
    /// dependency lines, the aliases that point at them, and softdeps naming
    /// something that is still there. The built-in list is kept whole: it is
    /// small, and PID 1 needs it to know that e.g. `af_packet` needs no load.
    pub fn restricted_to(&self, modules: &[ModuleEntry]) -> ModuleIndex {
        let keep: BTreeSet<&str> = modules.iter().map(|entry| entry.name.as_str()).collect();
        let mut restricted = ModuleIndex {
            kernel_version: self.kernel_version.clone(),
            builtin_paths: self.builtin_paths.clone(),
            builtin: self.builtin.clone(),
            ..ModuleIndex::default()
        };
        for record in &self.modules {
            if keep.contains(record.name.as_str()) {
                restricted
                    .by_name
                    .insert(record.name.clone(), restricted.modules.len());
                restricted.modules.push(record.clone());
            }
        }
        restricted.aliases = self
            .aliases
            .iter()
            .filter(|alias| keep.contains(alias.module.as_str()))
            .cloned()
            .collect();
        let still_resolves = |name: &String| match restricted.lookup(name) {
            Lookup::Modules(_) | Lookup::Builtin(_) => true,
            Lookup::Unknown => false,
        };
        let softdeps: BTreeMap<String, Softdeps> = self
            .softdeps
            .iter()
            .filter(|(module, _)| keep.contains(module.as_str()))
            .map(|(module, softdeps)| {
                let kept = Softdeps {
                    pre: softdeps
                        .pre
                        .iter()
                        .filter(|name| still_resolves(name))
                        .cloned()
                        .collect(),
                    post: softdeps
                        .post
                        .iter()
                        .filter(|name| still_resolves(name))
                        .cloned()
                        .collect(),
                };
                (module.clone(), kept)
            })
            .filter(|(_, kept)| !kept.pre.is_empty() || !kept.post.is_empty())
            .collect();
        restricted.softdeps = softdeps;
        restricted
    }

    /// `modules.dep` text, in the format depmod writes.
    pub fn modules_dep_text(&self) -> String {
        let paths: HashMap<&str, &str> = self
            .modules
            .iter()
            .map(|record| (record.name.as_str(), record.path.as_str()))
            .collect();
        let mut text = String::new();
        for record in &self.modules {
            text.push_str(&record.path);
            text.push(':');
            for dependency in &record.dependencies {
                // A dependency outside the index cannot be written as a path;
                // restricted_to only drops them if the caller's set was not a
                // closure, and then the name still tells what is missing.
                let path = paths
                    .get(dependency.as_str())
                    .copied()
                    .unwrap_or(dependency);
                text.push(' ');
                text.push_str(path);
            }
            text.push('\n');
        }
        text
    }

    pub fn modules_alias_text(&self) -> String {
        let mut text = String::from("# Aliases extracted from modules themselves.\n");
        for alias in &self.aliases {
            let _ = writeln!(text, "alias {} {}", alias.pattern, alias.module);
        }
        text
    }

    pub fn modules_softdep_text(&self) -> String {
        let mut text = String::from("# Soft dependencies extracted from modules themselves.\n");
        for (module, softdeps) in &self.softdeps {
            text.push_str("softdep ");
            text.push_str(module);
            for (section, names) in [("pre:", &softdeps.pre), ("post:", &softdeps.post)] {
                if !names.is_empty() {
                    text.push(' ');
                    text.push_str(section);
                    for name in names {
                        text.push(' ');
                        text.push_str(name);
                    }
                }
            }
            text.push('\n');
        }
        text
    }

    pub fn modules_builtin_text(&self) -> String {
        let mut text = String::new();
        for path in &self.builtin_paths {
            text.push_str(path);
            text.push('\n');
        }
        text
    }

    /// The four files by name, in [`METADATA_FILES`] order.
    pub fn metadata_files(&self) -> [(&'static str, String); 4] {
        [
            (METADATA_FILES[0], self.modules_dep_text()),
            (METADATA_FILES[1], self.modules_alias_text()),
            (METADATA_FILES[2], self.modules_softdep_text()),
            (METADATA_FILES[3], self.modules_builtin_text()),
        ]
    }
}

enum Lookup {
    Modules(Vec<String>),
    Builtin(String),
    Unknown,
}

/// Depth-first walk that emits a module after its `pre:` softdeps and its
/// dependencies, and before its `post:` softdeps.
struct ClosureWalk<'index> {
    index: &'index ModuleIndex,
    /// Entered but not finished: meeting one again means a softdep cycle,
    /// which is cut there rather than followed forever.
    entered: BTreeSet<String>,
    order: Vec<ModuleEntry>,
}

impl<'index> ClosureWalk<'index> {
    fn new(index: &'index ModuleIndex) -> Self {
        Self {
            index,
            entered: BTreeSet::new(),
            order: Vec::new(),
        }
    }

    fn visit(&mut self, name: &str) -> Result<()> {
        if !self.entered.insert(name.to_owned()) {
            return Ok(());
        }
        let index = self.index;
        let Some(&position) = index.by_name.get(name) else {
            bail!("module {name} not found in {}", index.kernel_description());
        };
        let record = &index.modules[position];
        let softdeps = index.softdeps.get(name);
        if let Some(softdeps) = softdeps {
            self.visit_softdeps(&softdeps.pre)?;
        }
        for dependency in &record.dependencies {
            if !index.by_name.contains_key(dependency) {
                bail!(
                    "module {name} depends on {dependency}, which {} lacks",
                    index.kernel_description()
                );
            }
            self.visit(dependency)?;
        }
        self.order.push(ModuleEntry {
            name: record.name.clone(),
            path: record.path.clone(),
        });
        if let Some(softdeps) = softdeps {
            self.visit_softdeps(&softdeps.post)?;
        }
        Ok(())
    }

    /// Softdeps that resolve to nothing are skipped, as modprobe skips them:
    /// they are optional by definition (e.g. `ksmbd pre: nls`).
    fn visit_softdeps(&mut self, names: &[String]) -> Result<()> {
        for name in names {
            if let Lookup::Modules(modules) = self.index.lookup(name) {
                for module in modules {
                    self.visit(&module)?;
                }
            }
        }
        Ok(())
    }
}

/// Everything PID 1 should load: each module claiming one of the device
/// `modaliases` (from `/sys/**/modalias`) plus `extra` (e.g. filesystems),
/// closed over dependencies and softdeps, in load order, each once.
pub fn coldplug_plan(index: &ModuleIndex, modaliases: &[String], extra: &[&str]) -> ColdplugPlan {
    let mut plan = ColdplugPlan::default();
    let mut walk = ClosureWalk::new(index);
    let mut requested: Vec<String> = Vec::new();
    for modalias in modaliases {
        let modules = index.modules_for_modalias(modalias);
        if modules.is_empty() && !plan.unmatched_modaliases.contains(modalias) {
            plan.unmatched_modaliases.push(modalias.clone());
        }
        requested.extend(modules);
    }
    for &name in extra {
        match index.lookup(name) {
            Lookup::Modules(modules) => requested.extend(modules),
            Lookup::Builtin(name) => {
                if !plan.builtin.contains(&name) {
                    plan.builtin.push(name);
                }
            }
            Lookup::Unknown => {
                if !plan.unknown_modules.iter().any(|unknown| unknown == name) {
                    plan.unknown_modules.push(name.to_owned());
                }
            }
        }
    }
    for module in &requested {
        // Every name here came from the index itself, so only a broken
        // modules.dep (a dependency line naming a missing file) can fail; the
        // module is then reported as unknown instead of aborting coldplug.
        let before = walk.order.len();
        if walk.visit(module).is_err() {
            walk.order.truncate(before);
            if !plan.unknown_modules.contains(module) {
                plan.unknown_modules.push(module.clone());
            }
        }
    }
    plan.modules = walk.order;
    plan
}

/// Every `modalias` file under `root` (normally `/sys/devices`). Symlinks are
/// not followed: sysfs is full of links back up the tree.
pub fn collect_modaliases(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && entry.file_name() == "modalias"
                && let Ok(alias) = std::fs::read_to_string(entry.path())
                && !alias.trim().is_empty()
            {
                found.push(alias.trim().to_owned());
            }
        }
    }
    found.sort();
    found.dedup();
    found
}

/// Loads the drivers for the hardware present, repeating until no new
/// device shows up: loading a bus driver (virtio_pci) creates the devices
/// (virtio0, virtio1) whose drivers (virtio_blk, virtio_net) come next.
/// Then warns about every network or storage device left without a driver
/// and every firmware file a driver could not load ([`crate::hardware`]),
/// and returns that report.
pub fn coldplug(module_dir: &Path) -> Result<HardwareReport> {
    let index = ModuleIndex::load(module_dir)?;
    let mut loaded = BTreeSet::new();
    for _round in 0..8 {
        let aliases = collect_modaliases(Path::new("/sys/devices"));
        let plan = coldplug_plan(&index, &aliases, &[]);
        for alias in &plan.unmatched_modaliases {
            log::debug!("no driver for device {alias}");
        }
        let fresh: Vec<_> = plan
            .modules
            .into_iter()
            .filter(|m| !loaded.contains(&m.name))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for module in fresh {
            match crate::sys::kmod::load_module(&module_dir.join(&module.path)) {
                Ok(_) => log::info!("loaded {}", module.name),
                // One driver failing (hardware it dislikes) must not stop the
                // deploy; a missing disk or NIC is reported later by name.
                Err(e) => log::warn!("{e:#}"),
            }
            loaded.insert(module.name);
        }
    }
    let report = HardwareReport::gather(Path::new("/sys"), Path::new("/dev/kmsg"));
    report.log();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Lines copied from depmod's output for Debian's 6.1.0-56-amd64.
    const MODULES_DEP: &str = "\
kernel/arch/x86/events/intel/intel-uncore.ko:
kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko
kernel/fs/fat/fat.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko
kernel/net/core/failover.ko:
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/usb/storage/usb-storage.ko:
kernel/drivers/char/ipmi/ipmi_msghandler.ko:
kernel/drivers/char/ipmi/ipmi_devintf.ko: kernel/drivers/char/ipmi/ipmi_msghandler.ko
";

    const MODULES_ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias crypto-crc32c-intel crc32c_intel
alias crypto-crc32c crc32c_intel
alias crypto-crc32c-generic crc32c_generic
alias crypto-crc32c crc32c_generic
alias crc32c crc32c_generic
alias fs-vfat vfat
alias fs-ext4 ext4
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in* usb_storage
alias cpu:type:x86,ven*fam*mod*:feature:*0094* crc32c_intel
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
";

    const MODULES_SOFTDEP: &str = "\
# Soft dependencies extracted from modules themselves.
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep cifs gcm
softdep ipmi_msghandler post: ipmi_devintf
softdep virtio_net pre: no_such_module
";

    const MODULES_BUILTIN: &str = "\
kernel/net/packet/af_packet.ko
kernel/drivers/usb/host/xhci-hcd.ko
";

    fn index() -> ModuleIndex {
        ModuleIndex::parse(MODULES_DEP, MODULES_ALIAS, MODULES_SOFTDEP, MODULES_BUILTIN)
            .unwrap()
            .with_kernel_version("6.1.0-56-amd64")
    }

    fn names(entries: &[ModuleEntry]) -> Vec<&str> {
        entries.iter().map(|entry| entry.name.as_str()).collect()
    }

    fn position(entries: &[ModuleEntry], name: &str) -> usize {
        entries
            .iter()
            .position(|entry| entry.name == name)
            .unwrap_or_else(|| panic!("{name} missing from {:?}", names(entries)))
    }

    #[test]
    fn names_fold_hyphens_and_drop_the_extension() {
        assert_eq!(
            module_name_from_path("kernel/arch/x86/events/intel/intel-uncore.ko"),
            "intel_uncore"
        );
        assert_eq!(module_name_from_path("kernel/fs/xfs/xfs.ko.xz"), "xfs");
        let index = index();
        assert!(index.contains("intel-uncore"));
        assert!(index.contains("usb_storage"));
        assert!(index.is_builtin("xhci_hcd"));
    }

    #[test]
    fn closure_puts_dependencies_and_pre_softdeps_first() {
        let closure = index().closure(&["ext4"]).unwrap();
        assert_eq!(
            names(&closure),
            [
                "crc32c_intel",
                "crc32c_generic",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4"
            ]
        );
        assert_eq!(closure[5].path, "kernel/fs/ext4/ext4.ko");
    }

    #[test]
    fn closure_lists_each_module_once() {
        let closure = index()
            .closure(&["virtio_net", "virtio_pci", "virtio_blk", "virtio_net"])
            .unwrap();
        let mut sorted = names(&closure);
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), closure.len());
        assert!(position(&closure, "virtio") < position(&closure, "virtio_net"));
        assert!(position(&closure, "failover") < position(&closure, "net_failover"));
        assert!(position(&closure, "net_failover") < position(&closure, "virtio_net"));
        assert!(position(&closure, "virtio_ring") < position(&closure, "virtio_pci"));
    }

    #[test]
    fn post_softdeps_come_after_their_module() {
        let closure = index().closure(&["ipmi_msghandler"]).unwrap();
        assert_eq!(names(&closure), ["ipmi_msghandler", "ipmi_devintf"]);
    }

    #[test]
    fn softdeps_without_section_and_unresolvable_ones_are_skipped() {
        let closure = index().closure(&["virtio_net"]).unwrap();
        assert!(!names(&closure).contains(&"no_such_module"));
        assert_eq!(index().softdeps.get("cifs").map(|s| s.pre.len()), Some(0));
    }

    #[test]
    fn unknown_module_is_an_error_naming_it_and_the_kernel() {
        let error = index().closure(&["virtio_net", "ice"]).unwrap_err();
        assert_eq!(
            error.to_string(),
            "module ice not found in kernel 6.1.0-56-amd64"
        );
    }

    #[test]
    fn builtin_requests_need_nothing_and_are_reported() {
        let closure = index()
            .resolve(&["af_packet", "vfat", "af-packet"])
            .unwrap();
        assert_eq!(names(&closure.modules), ["fat", "vfat"]);
        assert_eq!(closure.builtin, ["af_packet"]);
    }

    #[test]
    fn aliases_resolve_to_every_module_declaring_them() {
        let closure = index().closure(&["fs-vfat", "crypto-crc32c"]).unwrap();
        assert_eq!(
            names(&closure),
            ["fat", "vfat", "crc32c_intel", "crc32c_generic"]
        );
    }

    #[test]
    fn softdep_cycles_terminate() {
        let dep = "a.ko:\nb.ko:\nc.ko: a.ko\n";
        let softdep = "softdep a pre: b\nsoftdep b pre: c post: a\nsoftdep c post: b\n";
        let index = ModuleIndex::parse(dep, "", softdep, "").unwrap();
        let closure = index.closure(&["a"]).unwrap();
        let mut sorted = names(&closure);
        sorted.sort_unstable();
        assert_eq!(sorted, ["a", "b", "c"]);
        let closure = index.closure(&["c", "b", "a"]).unwrap();
        assert_eq!(closure.len(), 3);
    }

    #[test]
    fn glob_star_question_mark_and_literals() {
        assert!(glob_matches(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(!glob_matches(
            "pci:v00001AF4d*sv*sd*bc*sc*i*",
            "pci:v00008086d00001000sv00001AF4sd00000001bc02sc00i00"
        ));
        assert!(glob_matches("a?c", "abc"));
        assert!(!glob_matches("a?c", "ac"));
        assert!(glob_matches("*", ""));
        assert!(glob_matches("**", "x"));
        assert!(!glob_matches("", "x"));
        assert!(glob_matches("", ""));
        assert!(glob_matches("*abc", "ababc"));
        assert!(glob_matches("a*b*c", "axxbyyc"));
        assert!(!glob_matches("a*b*c", "axxbyy"));
        assert!(glob_matches(
            "cpu:type:x86,ven*fam*mod*:feature:*0094*",
            "cpu:type:x86,ven0000fam0006mod003A:feature:,0000,0001,0094,00F0"
        ));
        assert!(!glob_matches(
            "virtio:d00000001v*",
            "virtio:d00000002v00001AF4"
        ));
    }

    #[test]
    fn glob_brackets() {
        let usb = "usb:v13FDp3940d0[0-2]*dc*dsc*dp*ic*isc*ip*in*";
        assert!(glob_matches(
            usb,
            "usb:v13FDp3940d0100dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(!glob_matches(
            usb,
            "usb:v13FDp3940d0300dc00dsc00dp00ic08isc06ip50in00"
        ));
        assert!(glob_matches("x[!0-2]", "x3"));
        assert!(!glob_matches("x[!0-2]", "x1"));
        assert!(glob_matches("x[^a]", "xb"));
        assert!(glob_matches("x[]]", "x]"));
        assert!(glob_matches("x[a-]", "x-"));
        assert!(glob_matches("x[abc]y", "xby"));
        // An unclosed bracket is a literal `[`, as in fnmatch.
        assert!(glob_matches("x[ab", "x[ab"));
        assert!(!glob_matches("x[ab", "xa"));
        assert!(glob_matches("*[0-9]", "abc7"));
    }

    #[test]
    fn modalias_lookup_matches_device_strings() {
        let index = index();
        assert_eq!(
            index.modules_for_modalias("pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"),
            ["virtio_pci"]
        );
        assert_eq!(
            index.modules_for_modalias("virtio:d00000001v00001AF4"),
            ["virtio_net"]
        );
        assert!(
            index
                .modules_for_modalias("pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00")
                .is_empty()
        );
        // kmod folds '-' to '_' on both sides before matching.
        assert_eq!(
            index.modules_for_modalias("crypto_crc32c"),
            ["crc32c_intel", "crc32c_generic"]
        );
    }

    #[test]
    fn coldplug_plan_loads_matches_and_extras_and_reports_the_rest() {
        let modaliases = [
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
            "virtio:d00000001v00001AF4",
            "virtio:d00000002v00001AF4",
            "pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00",
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
        ]
        .map(String::from);
        let plan = coldplug_plan(&index(), &modaliases, &["ext4", "af_packet", "xfs"]);
        assert_eq!(
            names(&plan.modules),
            [
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio",
                "virtio_ring",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
                "virtio_blk",
                "crc32c_intel",
                "crc32c_generic",
                "crc16",
                "mbcache",
                "jbd2",
                "ext4",
            ]
        );
        assert_eq!(
            plan.unmatched_modaliases,
            ["pci:v00001234d00001111sv00001AF4sd00001100bc03sc00i00"]
        );
        assert_eq!(plan.unknown_modules, ["xfs"]);
        assert_eq!(plan.builtin, ["af_packet"]);
    }

    #[test]
    fn restricted_index_round_trips_and_keeps_what_the_closure_needs() {
        let full = index();
        let closure = full.closure(&["ext4", "virtio_net", "virtio_pci"]).unwrap();
        let small = full.restricted_to(&closure);
        let [dep, alias, softdep, builtin] = small.metadata_files().map(|(_, text)| text);
        assert!(dep.contains("kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n"));
        assert!(!dep.contains("vfat"));
        assert!(alias.contains("alias crypto-crc32c crc32c_generic\n"));
        assert!(!alias.contains("e1000e"));
        assert!(softdep.contains("softdep ext4 pre: crypto-crc32c\n"));
        // The only softdep of virtio_net names nothing that exists.
        assert!(!softdep.contains("virtio_net"));
        assert!(!softdep.contains("ipmi"));
        assert_eq!(builtin, MODULES_BUILTIN);

        let reparsed = ModuleIndex::parse(&dep, &alias, &softdep, &builtin).unwrap();
        assert_eq!(reparsed.len(), closure.len());
        assert_eq!(
            reparsed
                .closure(&["ext4", "virtio_net", "virtio_pci"])
                .unwrap(),
            closure
        );
        assert!(reparsed.is_builtin("af_packet"));
        assert!(reparsed.closure(&["vfat"]).is_err());
    }

    #[test]
    fn load_reads_a_directory_and_names_it_in_errors() {
        let root = tempfile::tempdir().unwrap();
        let modules_dir = root.path().join("6.1.0-56-amd64");
        std::fs::create_dir(&modules_dir).unwrap();
        for (file_name, text) in index().metadata_files() {
            std::fs::write(modules_dir.join(file_name), text).unwrap();
        }
        let loaded = ModuleIndex::load(&modules_dir).unwrap();
        assert_eq!(loaded.kernel_version(), Some("6.1.0-56-amd64"));
        assert_eq!(loaded.len(), index().len());
        std::fs::remove_file(modules_dir.join("modules.softdep")).unwrap();
        let error = ModuleIndex::load(&modules_dir).unwrap_err();
        assert!(
            format!("{error}").starts_with("reading modules.softdep in "),
            "{error}"
        );
    }

    #[test]
    fn malformed_lines_are_errors_with_line_numbers() {
        let error = ModuleIndex::parse("a.ko\n", "", "", "").unwrap_err();
        assert_eq!(error.to_string(), "modules.dep line 1: no ':'");
        let error = ModuleIndex::parse("", "# c\nalias only-two\n", "", "").unwrap_err();
        assert!(error.to_string().starts_with("modules.alias line 2"));
    }

    #[test]
    fn collects_modaliases_without_following_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("pci0000:00/0000:00:03.0");
        std::fs::create_dir_all(dev.join("virtio0")).unwrap();
        std::fs::write(
            dev.join("modalias"),
            "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00\n",
        )
        .unwrap();
        std::fs::write(dev.join("virtio0/modalias"), "virtio:d00000001v00001AF4\n").unwrap();
        std::fs::write(dev.join("virtio0/other"), "x").unwrap();
        std::os::unix::fs::symlink(root.path(), dev.join("virtio0/loop")).unwrap();
        assert_eq!(
            collect_modaliases(root.path()),
            vec![
                "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00",
                "virtio:d00000001v00001AF4"
            ]
        );
    }
}

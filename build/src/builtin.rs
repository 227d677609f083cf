//! A kernel with its drivers built in: what they declare, from the kernel
//! build's `modules.builtin.modinfo`.
//!
//! The purpose-built kernel (`scripts/build-kernel`, `kernel-config/`) has
//! no modules, so there is no `.ko` to read `firmware=` names from. Kbuild
//! collects the `.modinfo` of every driver it links into `vmlinux` in
//! `modules.builtin.modinfo` instead: NUL-separated `module.key=value`
//! records (`tg3.firmware=tigon/tg3.bin`, `tg3.file=drivers/net/ethernet/
//! broadcom/tg3`). From it come the firmware the initramfs must carry (the
//! drivers request it at probe or open time, from the initramfs's
//! `/lib/firmware`) and `modules.builtin`, derived exactly as kbuild derives
//! it, so PID 1's module index knows the drivers are there.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, Result, bail};
use imprint::modules::ModuleEntry;

/// One `module.key=value` record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    module: String,
    key: String,
    value: String,
}

/// The parsed `modules.builtin.modinfo` of one kernel build.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BuiltinModinfo {
    records: Vec<Record>,
}

impl BuiltinModinfo {
    /// Parses the file's bytes. A record without `.` before its `=` is an
    /// error naming it (the file is not a `modules.builtin.modinfo`).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut records = Vec::new();
        for raw in bytes.split(|&b| b == 0).filter(|raw| !raw.is_empty()) {
            let text = String::from_utf8_lossy(raw);
            let Some((name, value)) = text.split_once('=') else {
                bail!("modules.builtin.modinfo record {text:?} has no '='");
            };
            let Some((module, key)) = name.split_once('.') else {
                bail!(
                    "modules.builtin.modinfo record {text:?} names no module (no '.' before '=')"
                );
            };
            records.push(Record {
                module: module.to_owned(),
                key: key.to_owned(),
                value: value.to_owned(),
            });
        }
        Ok(Self { records })
    }

    fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |record| record.key == key)
    }

    /// Every `(module, firmware name)` the built-in drivers declare with
    /// `MODULE_FIRMWARE()`, in file order, each pair once.
    pub fn firmware(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for record in self.values("firmware") {
            let pair = (record.module.clone(), record.value.clone());
            if !record.value.is_empty() && !pairs.contains(&pair) {
                pairs.push(pair);
            }
        }
        pairs
    }

    /// The names of the built-in modules (those with a `file=` record).
    pub fn module_names(&self) -> BTreeSet<String> {
        self.values("file")
            .map(|record| record.module.replace('-', "_"))
            .collect()
    }

    /// `modules.builtin` as kbuild writes it from this file: every `file=`
    /// value as `kernel/<value>.ko`, consecutive duplicates dropped
    /// (`sed -n 's/^[[:alnum:]:_]*\.file=//p' | tr ' ' '\n' | uniq`).
    pub fn modules_builtin_text(&self) -> String {
        let mut text = String::new();
        let mut previous: Option<&str> = None;
        for path in self
            .values("file")
            .flat_map(|record| record.value.split(' '))
            .filter(|path| !path.is_empty())
        {
            if previous != Some(path) {
                text.push_str("kernel/");
                text.push_str(path);
                text.push_str(".ko\n");
            }
            previous = Some(path);
        }
        text
    }
}

/// The `modules.builtin.modinfo` a kernel with `modules` (paths relative to
/// `modules_dir`, as in `modules.dep`) built in would have: their `file=`
/// and `firmware=` records. It predicts the purpose-built kernel's firmware
/// set from a distribution kernel's modules, without building a kernel
/// (the size-budget test uses it when `out/custom/` has not been built).
pub fn modinfo_for_modules(modules_dir: &Path, modules: &[ModuleEntry]) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    for module in modules {
        let file = module
            .path
            .strip_prefix("kernel/")
            .unwrap_or(&module.path)
            .split(".ko")
            .next()
            .unwrap_or_default();
        bytes.extend_from_slice(format!("{}.file={file}\0", module.name).as_bytes());
        let path = modules_dir.join(&module.path);
        let elf = std::fs::read(&path)
            .with_context(|| format!("reading module {} at {}", module.name, path.display()))?;
        let names = crate::firmware::module_firmware(&elf).with_context(|| {
            format!(
                "reading the .modinfo of module {} at {}",
                module.name,
                path.display()
            )
        })?;
        for name in names {
            bytes.extend_from_slice(format!("{}.firmware={name}\0", module.name).as_bytes());
        }
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shape of a real file: records of several modules, some repeated
    /// (`file=` appears once per object of a multi-object module).
    const MODINFO: &[u8] = b"tg3.file=drivers/net/ethernet/broadcom/tg3\0tg3.license=GPL\0\
tg3.firmware=tigon/tg3.bin\0tg3.firmware=tigon/tg3_tso.bin\0\
bnx2x.file=drivers/net/ethernet/broadcom/bnx2x/bnx2x\0\
bnx2x.firmware=bnx2x/bnx2x-e2-7.13.21.0.fw\0\
bnx2x.file=drivers/net/ethernet/broadcom/bnx2x/bnx2x\0\
af_packet.file=net/packet/af_packet\0af_packet.alias=net-pf-17\0\
tg3.firmware=tigon/tg3.bin\0\0";

    #[test]
    fn firmware_pairs_in_order_each_once() {
        let modinfo = BuiltinModinfo::parse(MODINFO).unwrap();
        assert_eq!(
            modinfo.firmware(),
            [
                ("tg3".to_owned(), "tigon/tg3.bin".to_owned()),
                ("tg3".to_owned(), "tigon/tg3_tso.bin".to_owned()),
                ("bnx2x".to_owned(), "bnx2x/bnx2x-e2-7.13.21.0.fw".to_owned()),
            ]
        );
    }

    #[test]
    fn modules_builtin_as_kbuild_writes_it() {
        let modinfo = BuiltinModinfo::parse(MODINFO).unwrap();
        assert_eq!(
            modinfo.modules_builtin_text(),
            "kernel/drivers/net/ethernet/broadcom/tg3.ko\n\
             kernel/drivers/net/ethernet/broadcom/bnx2x/bnx2x.ko\n\
             kernel/net/packet/af_packet.ko\n"
        );
        let names: Vec<String> = modinfo.module_names().into_iter().collect();
        assert_eq!(names, ["af_packet", "bnx2x", "tg3"]);
        // PID 1's parser reads it back: the drivers count as built in.
        let index =
            imprint::modules::ModuleIndex::parse("", "", "", &modinfo.modules_builtin_text())
                .unwrap();
        assert!(index.is_builtin("af_packet") && index.is_builtin("bnx2x"));
        assert!(!index.is_builtin("ice"));
    }

    #[test]
    fn modinfo_for_modules_reads_their_firmware() {
        let dir = tempfile::tempdir().unwrap();
        let tg3 = dir.path().join("kernel/drivers/net/tg3.ko");
        std::fs::create_dir_all(tg3.parent().unwrap()).unwrap();
        std::fs::write(
            &tg3,
            crate::firmware::tests::fake_module(&["tigon/tg3.bin"]),
        )
        .unwrap();
        let modules = [ModuleEntry {
            name: "tg3".to_owned(),
            path: "kernel/drivers/net/tg3.ko".to_owned(),
        }];
        let bytes = modinfo_for_modules(dir.path(), &modules).unwrap();
        let modinfo = BuiltinModinfo::parse(&bytes).unwrap();
        assert_eq!(
            modinfo.firmware(),
            [("tg3".to_owned(), "tigon/tg3.bin".to_owned())]
        );
        assert_eq!(
            modinfo.modules_builtin_text(),
            "kernel/drivers/net/tg3.ko\n"
        );
        let missing = [ModuleEntry {
            name: "ice".to_owned(),
            path: "kernel/ice.ko".to_owned(),
        }];
        let error = modinfo_for_modules(dir.path(), &missing).unwrap_err();
        assert!(
            error.to_string().starts_with("reading module ice at "),
            "{error}"
        );
    }

    #[test]
    fn malformed_records_are_errors_naming_them() {
        assert_eq!(
            BuiltinModinfo::parse(b"tg3.license=GPL\0garbage\0")
                .unwrap_err()
                .to_string(),
            "modules.builtin.modinfo record \"garbage\" has no '='"
        );
        assert_eq!(
            BuiltinModinfo::parse(b"license=GPL\0")
                .unwrap_err()
                .to_string(),
            "modules.builtin.modinfo record \"license=GPL\" names no module (no '.' before '=')"
        );
        assert!(
            BuiltinModinfo::parse(b"").unwrap().firmware().is_empty(),
            "an empty file declares nothing"
        );
    }
}

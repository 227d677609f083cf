//! Boot Loader Specification type #1 entries (`loader/entries/*.conf`), as
//! written by kernel-install (Fedora, RHEL/Alma 8+, recent SUSE).
//!
//! An entry is `key value` lines. `linux` names the kernel, `initrd` may
//! repeat (order kept) and `options` may repeat (joined with spaces). GRUB's
//! `blscfg` expands `$variables` in them from its environment: RHEL 8
//! writes `options $kernelopts $tuned_params` and `initrd ... $tuned_initrd`,
//! with `kernelopts` kept in grubenv.

use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::version::compare_versions;

/// One parsed entry file, values as written (variables not yet expanded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BlsEntry {
    /// The file name, e.g. `6a9b...-5.14.0-427.13.1.el9_4.x86_64.conf`.
    pub file_name: String,
    pub title: Option<String>,
    pub version: Option<String>,
    pub machine_id: Option<String>,
    pub sort_key: Option<String>,
    pub linux: Option<String>,
    pub initrds: Vec<String>,
    pub options: Option<String>,
}

impl BlsEntry {
    /// Parses an entry file. Unknown keys (`architecture`, `devicetree`,
    /// GRUB's `grub_users`/`grub_arg`/`grub_class`, `id`) are ignored.
    pub fn parse(file_name: &str, text: &str) -> Self {
        let mut entry = BlsEntry {
            file_name: file_name.to_owned(),
            ..BlsEntry::default()
        };
        let mut options: Vec<&str> = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = match line.split_once(|c: char| c.is_whitespace()) {
                Some((key, value)) => (key, value.trim()),
                None => (line, ""),
            };
            let value_owned = || Some(value.to_owned());
            match key {
                "title" => entry.title = value_owned(),
                "version" => entry.version = value_owned(),
                "machine-id" => entry.machine_id = value_owned(),
                "sort-key" => entry.sort_key = value_owned(),
                "linux" => entry.linux = value_owned(),
                // GRUB's blscfg splits an initrd line on spaces, so one line
                // may name several files.
                "initrd" => entry.initrds.push(value.to_owned()),
                "options" => options.push(value),
                _ => {}
            }
        }
        if !options.is_empty() {
            entry.options = Some(options.join(" "));
        }
        entry
    }

    /// The name this entry is ordered by: its version, or its file name
    /// without `.conf` when it has none.
    pub fn order_name(&self) -> &str {
        self.version
            .as_deref()
            .unwrap_or_else(|| self.file_name.trim_end_matches(".conf"))
    }
}

/// Orders entries newest first: by version, then by file name so the order
/// never depends on the directory listing.
pub fn newest_first(a: &BlsEntry, b: &BlsEntry) -> Ordering {
    compare_versions(b.order_name(), a.order_name())
        .then_with(|| compare_versions(&b.file_name, &a.file_name))
}

/// Replaces `$name` and `${name}` with `value(name)`; names for which it
/// returns `None` are collected into `unresolved` and expand to nothing.
pub fn expand_variables(
    text: &str,
    value: impl Fn(&str) -> Option<String>,
    unresolved: &mut BTreeSet<String>,
) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at + 1..];
        let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => (&braced[..end], &braced[end + 1..]),
                None => {
                    out.push('$');
                    continue;
                }
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        };
        if name.is_empty() {
            out.push('$');
            continue;
        }
        match value(name) {
            Some(v) => out.push_str(&v),
            None => {
                unresolved.insert(name.to_owned());
            }
        }
        rest = after;
    }
    out.push_str(rest);
    // Expanding an empty variable leaves doubled or trailing spaces.
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_keys_keep_order_and_join_options() {
        let entry = BlsEntry::parse(
            "x.conf",
            "# comment\ntitle Fedora Linux (6.5.6-300.fc39.x86_64) 39\n\
             version 6.5.6-300.fc39.x86_64\nlinux /vmlinuz-6.5.6-300.fc39.x86_64\n\
             initrd /intel-ucode.img\ninitrd /initramfs-6.5.6-300.fc39.x86_64.img\n\
             options root=UUID=1 ro\noptions  rhgb quiet\narchitecture x64\ngrub_class fedora\n",
        );
        assert_eq!(entry.version.as_deref(), Some("6.5.6-300.fc39.x86_64"));
        assert_eq!(
            entry.initrds,
            vec!["/intel-ucode.img", "/initramfs-6.5.6-300.fc39.x86_64.img"]
        );
        assert_eq!(entry.options.as_deref(), Some("root=UUID=1 ro rhgb quiet"));
    }

    #[test]
    fn variables_are_expanded_and_unknown_ones_collected() {
        let entry = BlsEntry::parse(
            "x.conf",
            "linux /vmlinuz\noptions $kernelopts ${tuned_params}\noptions x $nope\n",
        );
        let mut unresolved = BTreeSet::new();
        let value = |n: &str| match n {
            "kernelopts" => Some("root=/dev/vda2 ro".to_string()),
            "tuned_params" => Some(String::new()),
            _ => None,
        };
        let text = expand_variables(entry.options.as_deref().unwrap(), value, &mut unresolved);
        assert_eq!(text, "root=/dev/vda2 ro x");
        assert_eq!(unresolved.into_iter().collect::<Vec<_>>(), vec!["nope"]);
    }

    #[test]
    fn newest_version_first_and_file_name_without_version() {
        let mut entries = [
            BlsEntry::parse("a.conf", "version 6.1.0-13\n"),
            BlsEntry::parse("b.conf", "version 6.10.0\n"),
            BlsEntry::parse("c.conf", "version 6.1.0-21\n"),
            BlsEntry::parse("6.2.0.conf", "linux /x\n"),
        ];
        entries.sort_by(newest_first);
        let names: Vec<&str> = entries.iter().map(|e| e.file_name.as_str()).collect();
        assert_eq!(names, vec!["b.conf", "6.2.0.conf", "c.conf", "a.conf"]);
    }
}

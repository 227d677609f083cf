//! The evaluator: runs `set`, `name=value`, `unset`, `load_env` and calls
//! to functions, decides the conditions it can, and collects menu entries
//! and the selected entry's `linux`/`initrd` lines.

use std::collections::{BTreeSet, HashMap};

use anyhow::Result;

use super::lexer::{Piece, Word};
use super::parser::{Stmt, parse};

/// Variables GRUB sets at run time from the firmware and the boot device:
/// a condition on one of them cannot be decided on the host.
const RUNTIME_VARIABLES: &[&str] = &[
    "root",
    "prefix",
    "cmdpath",
    "grub_platform",
    "grub_cpu",
    "config_directory",
    "config_file",
    "chosen",
    "net_default_server",
];

/// Variables distribution entries reference but only set when a feature is
/// on; GRUB expands them to nothing otherwise. `extra_cmdline` (openSUSE)
/// is set only by snapshot entries; `tuned_params`/`tuned_initrd` (RHEL 8)
/// only when a tuned profile with a bootloader section is active.
pub(crate) const EMPTY_UNLESS_SET: &[&str] = &["extra_cmdline", "tuned_params", "tuned_initrd"];

/// The result of expanding one word.
#[derive(Debug, Default)]
pub(super) struct Fields {
    pub(super) fields: Vec<String>,
    /// Names expanded that were never assigned (GRUB makes them empty).
    unset: BTreeSet<String>,
    /// A run-time variable was involved: the text is not what GRUB sees.
    unknown: bool,
}

/// A menu entry as GRUB would list it.
#[derive(Debug, Clone)]
pub(crate) struct MenuEntry {
    pub title: String,
    pub id: Option<String>,
    body: Vec<Stmt>,
    /// For a submenu: its entries.
    pub children: Option<Vec<MenuEntry>>,
}

/// What the selected entry's body asked GRUB to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinuxLines {
    /// The `linux` line: the kernel path then its arguments.
    pub linux: Option<Vec<String>>,
    /// Every path of every `initrd` line, in order.
    pub initrds: Vec<String>,
}

/// The interpreter state: variables, functions, and where menu entries go.
#[derive(Clone)]
pub(crate) struct Script {
    vars: HashMap<String, String>,
    functions: HashMap<String, Vec<Stmt>>,
    positional: Vec<String>,
    grubenv: Vec<(String, String)>,
    /// Top-level entries (or, while a submenu is read, its entries).
    pub entries: Vec<MenuEntry>,
    /// `blscfg` ran: the entries come from `loader/entries/`.
    pub uses_blscfg: bool,
    /// Set while a selected entry runs.
    lines: Option<LinuxLines>,
    /// Unassigned variables used in `linux`/`initrd` lines.
    unresolved: BTreeSet<String>,
}

impl Script {
    /// A fresh interpreter whose `load_env` reads `grubenv`.
    pub fn new(grubenv: Vec<(String, String)>) -> Self {
        Script {
            vars: HashMap::new(),
            functions: HashMap::new(),
            positional: Vec::new(),
            grubenv,
            entries: Vec::new(),
            uses_blscfg: false,
            lines: None,
            unresolved: BTreeSet::new(),
        }
    }

    /// Assigns the grubenv variables as if `load_env` had run.
    pub fn load_env(&mut self) {
        for (k, v) in self.grubenv.clone() {
            self.vars.insert(k, v);
        }
    }

    /// Runs a whole `grub.cfg`.
    pub fn run(&mut self, text: &str) -> Result<()> {
        let stmts = parse(text)?;
        self.exec(&stmts);
        Ok(())
    }

    /// The value of a variable, `None` if it was never assigned.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Runs a menu entry's body and returns its `linux`/`initrd` lines, or
    /// an error naming every variable those lines used but nothing set.
    pub fn boot_lines(&self, entry: &MenuEntry) -> Result<LinuxLines, BTreeSet<String>> {
        let mut run = self.clone();
        run.lines = Some(LinuxLines {
            linux: None,
            initrds: Vec::new(),
        });
        run.exec(&entry.body);
        if !run.unresolved.is_empty() {
            return Err(run.unresolved);
        }
        Ok(run.lines.unwrap_or(LinuxLines {
            linux: None,
            initrds: Vec::new(),
        }))
    }

    fn lookup(&self, name: &str, out: &mut Fields) -> String {
        if let Ok(n) = name.parse::<usize>() {
            return match n {
                0 => String::new(),
                n => self.positional.get(n - 1).cloned().unwrap_or_default(),
            };
        }
        match name {
            "#" => return self.positional.len().to_string(),
            "@" | "*" => return self.positional.join(" "),
            "?" => {
                out.unknown = true;
                return String::new();
            }
            _ => {}
        }
        if let Some(value) = self.vars.get(name) {
            return value.clone();
        }
        // GRUB advertises its features through `feature_*` variables.
        if name.starts_with("feature_") {
            return "y".into();
        }
        if RUNTIME_VARIABLES.contains(&name) {
            out.unknown = true;
        } else if !EMPTY_UNLESS_SET.contains(&name) {
            out.unset.insert(name.to_owned());
        }
        String::new()
    }

    fn expand(&self, word: &Word, out: &mut Fields) {
        let mut current = String::new();
        let mut have = word.quoted;
        for piece in &word.pieces {
            match piece {
                Piece::Lit(s) => {
                    current.push_str(s);
                    have = true;
                }
                Piece::Var { name, quoted: true } => current.push_str(&self.lookup(name, out)),
                Piece::Var {
                    name,
                    quoted: false,
                } => {
                    let value = self.lookup(name, out);
                    let mut parts = value.split_whitespace();
                    if value.starts_with(char::is_whitespace) && have {
                        out.fields.push(std::mem::take(&mut current));
                        have = false;
                    }
                    if let Some(first) = parts.next() {
                        current.push_str(first);
                        have = true;
                    }
                    for part in parts {
                        out.fields.push(std::mem::take(&mut current));
                        current.push_str(part);
                    }
                    if value.ends_with(char::is_whitespace) && have {
                        out.fields.push(std::mem::take(&mut current));
                        have = false;
                    }
                }
            }
        }
        if have {
            out.fields.push(current);
        }
    }

    pub(super) fn expand_all(&self, words: &[Word]) -> Fields {
        let mut out = Fields::default();
        for word in words {
            self.expand(word, &mut out);
        }
        out
    }

    fn exec(&mut self, stmts: &[Stmt]) {
        for stmt in stmts {
            match stmt {
                Stmt::Command(words) => self.command(words),
                Stmt::If {
                    branches,
                    otherwise,
                } => {
                    let mut decided = false;
                    for (cond, body) in branches {
                        match self.condition(cond) {
                            Some(true) => {
                                self.exec(body);
                                decided = true;
                                break;
                            }
                            Some(false) => {}
                            None => self.exec(body),
                        }
                    }
                    if !decided {
                        self.exec(otherwise);
                    }
                }
                Stmt::Function { name, body } => {
                    self.functions.insert(name.clone(), body.clone());
                }
                Stmt::Menu {
                    submenu,
                    args,
                    body,
                } => self.menu(*submenu, args, body),
            }
        }
    }

    fn menu(&mut self, submenu: bool, args: &[Word], body: &[Stmt]) {
        let args = self.expand_all(args).fields;
        let mut title = None;
        let mut id = None;
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--id" => id = args.next(),
                "--class" | "--users" | "--hotkey" | "--source" => {
                    args.next();
                }
                a if a.starts_with("--") => {}
                _ if title.is_none() => title = Some(arg),
                _ => {}
            }
        }
        let children = submenu.then(|| {
            // Read the submenu's entries without letting its assignments
            // leak into the top level.
            let mut inner = self.clone();
            inner.entries = Vec::new();
            inner.exec(body);
            inner.entries
        });
        self.entries.push(MenuEntry {
            title: title.unwrap_or_default(),
            id,
            body: body.to_vec(),
            children,
        });
    }

    fn command(&mut self, words: &[Word]) {
        let Some(first) = words.first() else { return };
        let name = first.literal();
        match name.as_deref() {
            Some("set") => {
                for arg in self.expand_all(&words[1..]).fields {
                    if let Some((k, v)) = arg.split_once('=') {
                        self.vars.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
            Some("unset") => {
                for arg in self.expand_all(&words[1..]).fields {
                    self.vars.remove(&arg);
                }
            }
            Some("load_env") => {
                // `load_env [-f file] [--skip-sig] [name ...]`: the file is
                // the grubenv found beside grub.cfg; names limit the load.
                let args = self.expand_all(&words[1..]).fields;
                let mut names = Vec::new();
                let mut args = args.iter();
                while let Some(arg) = args.next() {
                    match arg.as_str() {
                        "-f" | "--file" => {
                            args.next();
                        }
                        a if a.starts_with('-') => {}
                        a => names.push(a.to_owned()),
                    }
                }
                for (k, v) in self.grubenv.clone() {
                    if names.is_empty() || names.contains(&k) {
                        self.vars.insert(k, v);
                    }
                }
            }
            Some("blscfg") => self.uses_blscfg = true,
            Some("linux" | "linuxefi" | "linux16") if self.lines.is_some() => {
                let out = self.expand_all(&words[1..]);
                self.unresolved.extend(out.unset);
                if let Some(lines) = self.lines.as_mut() {
                    lines.linux = Some(out.fields);
                }
            }
            Some("initrd" | "initrdefi" | "initrd16") if self.lines.is_some() => {
                let out = self.expand_all(&words[1..]);
                self.unresolved.extend(out.unset);
                if let Some(lines) = self.lines.as_mut() {
                    lines.initrds.extend(out.fields);
                }
            }
            Some(name) if self.functions.contains_key(name) => {
                let body = self.functions[name].clone();
                let args = self.expand_all(&words[1..]).fields;
                let saved = std::mem::replace(&mut self.positional, args);
                self.exec(&body);
                self.positional = saved;
            }
            Some(assignment) if is_assignment(assignment) => {
                // `name=value` without `set`: the value may be quoted or
                // hold variables, so expand the whole word.
                let fields = self.expand_all(&words[..1]).fields;
                if let Some((k, v)) = fields.first().and_then(|f| f.split_once('=')) {
                    self.vars.insert(k.to_owned(), v.to_owned());
                }
            }
            _ => {
                if let Some(Piece::Lit(lit)) = first.pieces.first()
                    && is_assignment(lit)
                {
                    let fields = self.expand_all(&words[..1]).fields;
                    let joined = fields.join(" ");
                    if let Some((k, v)) = joined.split_once('=') {
                        self.vars.insert(k.to_owned(), v.to_owned());
                    }
                }
            }
        }
    }

    /// Evaluates an `if` condition: `Some` when it can be decided here.
    fn condition(&self, words: &[Word]) -> Option<bool> {
        let out = self.expand_all(words);
        if out.unknown {
            return None;
        }
        let mut args: Vec<&str> = out.fields.iter().map(String::as_str).collect();
        let mut negate = false;
        while args.first() == Some(&"!") {
            negate = !negate;
            args.remove(0);
        }
        let result = match args.first().copied() {
            Some("[") if args.last() == Some(&"]") => test(&args[1..args.len() - 1]),
            Some("test") => test(&args[1..]),
            Some("true") => Some(true),
            Some("false") => Some(false),
            _ => None,
        }?;
        Some(result != negate)
    }
}

/// `word` starts like `name=`: a variable assignment command.
fn is_assignment(word: &str) -> bool {
    match word.split_once('=') {
        Some((name, _)) => {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }
        None => false,
    }
}

/// GRUB's `test`/`[`, for the forms that do not touch files or devices.
fn test(args: &[&str]) -> Option<bool> {
    // `-o` binds loosest, then `-a`; an undecidable side only matters if
    // the other side does not decide.
    for (op, short_circuit) in [("-o", true), ("-a", false)] {
        if let Some(at) = args.iter().position(|a| *a == op) {
            let (left, right) = (test(&args[..at]), test(&args[at + 1..]));
            return match (left, right) {
                (Some(l), _) if l == short_circuit => Some(l),
                (_, Some(r)) if r == short_circuit => Some(r),
                (Some(_), Some(r)) => Some(r),
                _ => None,
            };
        }
    }
    if let Some(("!", rest)) = args.split_first().map(|(a, r)| (*a, r)) {
        return test(rest).map(|r| !r);
    }
    match args {
        [] => Some(false),
        [s] => Some(!s.is_empty()),
        ["-z", s] => Some(s.is_empty()),
        ["-n", s] => Some(!s.is_empty()),
        [a, "=" | "==", b] => Some(a == b),
        [a, "!=", b] => Some(a != b),
        [a, op @ ("-eq" | "-ne" | "-lt" | "-le" | "-gt" | "-ge"), b] => {
            let (a, b) = (a.parse::<i64>().ok()?, b.parse::<i64>().ok()?);
            Some(match *op {
                "-eq" => a == b,
                "-ne" => a != b,
                "-lt" => a < b,
                "-le" => a <= b,
                "-gt" => a > b,
                _ => a >= b,
            })
        }
        // File tests (-e -f -d -s) and anything else: not decidable here.
        _ => None,
    }
}

/// Finds the entry `default` names: an index, a title or an id, or a
/// `>`-separated path through submenus. `None` when nothing matches (GRUB
/// then boots the first entry).
pub(crate) fn find_default<'e>(entries: &'e [MenuEntry], default: &str) -> Option<&'e MenuEntry> {
    let mut level = entries;
    let mut found = None;
    for part in default.split('>') {
        let entry = match part.trim().parse::<usize>() {
            Ok(index) => level.get(index),
            Err(_) => level
                .iter()
                .find(|e| e.title == part || e.id.as_deref() == Some(part)),
        }?;
        level = entry.children.as_deref().unwrap_or(&[]);
        found = Some(entry);
    }
    // A submenu itself is not bootable: GRUB opens it; take its first entry.
    while let Some(children) = found.and_then(|e| e.children.as_ref()) {
        found = children.first();
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::grub::lexer::{Token, tokenize};

    #[test]
    fn unquoted_variables_split_and_quoted_ones_do_not() {
        let mut script = Script::new(Vec::new());
        script.run("set v=\"a  b\"\nset e=\"\"").unwrap();
        let words = |text: &str| {
            let tokens = tokenize(text).unwrap();
            let ws: Vec<Word> = tokens
                .into_iter()
                .filter_map(|t| match t {
                    Token::Word(w) => Some(w),
                    _ => None,
                })
                .collect();
            script.expand_all(&ws).fields
        };
        assert_eq!(words("x$v y"), vec!["xa", "b", "y"]);
        assert_eq!(words("\"x$v\" y"), vec!["xa  b", "y"]);
        assert_eq!(words("$e y"), vec!["y"]);
        assert_eq!(words("\"$e\" y"), vec!["", "y"]);
        assert_eq!(words("${v}z"), vec!["a", "bz"]);
    }

    #[test]
    fn conditions_on_known_strings_are_decided() {
        let mut script = Script::new(vec![("next_entry".into(), String::new())]);
        script
            .run(
                "load_env\n\
                 if [ \"${next_entry}\" ] ; then set default=\"${next_entry}\"; else set default=\"0\"; fi\n\
                 if [ x\"${feature_menuentry_id}\" = xy ]; then\n  menuentry_id_option=\"--id\"\nelse\n  menuentry_id_option=\"\"\nfi\n\
                 if [ -z \"${kernelopts}\" ]; then set kernelopts=\"fallback\"; fi\n\
                 if ! [ 3 -lt 2 ]; then set cmp=yes; fi",
            )
            .unwrap();
        assert_eq!(script.var("default"), Some("0"));
        assert_eq!(script.var("menuentry_id_option"), Some("--id"));
        assert_eq!(script.var("kernelopts"), Some("fallback"));
        assert_eq!(script.var("cmp"), Some("yes"));
        assert_eq!(test(&["-n", "", "-a", "-f", "/x"]), Some(false));
        assert_eq!(test(&["a", "=", "a", "-o", "-f", "/x"]), Some(true));
        assert_eq!(test(&["a", "=", "b", "-o", "-f", "/x"]), None);
        assert_eq!(test(&["a", "=", "a", "-a", "b", "!=", "c"]), Some(true));
    }

    #[test]
    fn grubenv_values_win_over_guarded_fallbacks() {
        let mut script = Script::new(vec![("kernelopts".into(), "root=/dev/sda1 ro".into())]);
        script
            .run("load_env\nif [ -z \"${kernelopts}\" ]; then\n  set kernelopts=\"stale\"\nfi\n")
            .unwrap();
        assert_eq!(script.var("kernelopts"), Some("root=/dev/sda1 ro"));
    }

    #[test]
    fn undecidable_conditions_run_every_branch_in_order() {
        let mut script = Script::new(Vec::new());
        script
            .run(
                "if [ -e ${prefix}/gfxblacklist.txt ]; then\n\
                   if [ ${grub_platform} != pc ]; then set mode=keep\n\
                   elif hwmatch ${prefix}/gfxblacklist.txt 3; then set mode=hw\n\
                   else set mode=text; fi\n\
                 else\n  set mode=keep2\nfi",
            )
            .unwrap();
        assert_eq!(script.var("mode"), Some("keep2"));
    }

    #[test]
    fn functions_get_positional_arguments() {
        let mut script = Script::new(Vec::new());
        script
            .run(
                "function gfxmode {\n\tset gfxpayload=\"${1}\"\n\tif [ \"${1}\" = \"keep\" ]; then\n\t\tset vt_handoff=vt.handoff=7\n\telse\n\t\tset vt_handoff=\n\tfi\n}\n\
                 gfxmode keep\n",
            )
            .unwrap();
        assert_eq!(script.var("vt_handoff"), Some("vt.handoff=7"));
        assert_eq!(script.var("gfxpayload"), Some("keep"));
        script.run("gfxmode text").unwrap();
        assert_eq!(script.var("vt_handoff"), Some(""));
    }

    #[test]
    fn loops_are_skipped_and_blscfg_is_noticed() {
        let mut script = Script::new(Vec::new());
        script
            .run("for f in a b; do set x=$f; done\ninsmod blscfg\nblscfg\n")
            .unwrap();
        assert_eq!(script.var("x"), None);
        assert!(script.uses_blscfg);
    }

    #[test]
    fn menu_tree_and_default_lookup() {
        let mut script = Script::new(Vec::new());
        script
            .run(
                "menuentry_id_option=\"--id\"\n\
                 menuentry 'A' --class os --id a-id { linux /a }\n\
                 submenu 'More' $menuentry_id_option more-id {\n\
                   menuentry 'B' --id b-id { linux /b }\n\
                   menuentry 'C' { linux /c }\n\
                 }\n",
            )
            .unwrap();
        let title = |d: &str| find_default(&script.entries, d).map(|e| e.title.clone());
        assert_eq!(title("0").as_deref(), Some("A"));
        assert_eq!(title("a-id").as_deref(), Some("A"));
        assert_eq!(title("1").as_deref(), Some("B"));
        assert_eq!(title("1>1").as_deref(), Some("C"));
        assert_eq!(title("More>C").as_deref(), Some("C"));
        assert_eq!(title("more-id>b-id").as_deref(), Some("B"));
        assert_eq!(title("2"), None);
        assert_eq!(title("Nope>C"), None);
    }

    #[test]
    fn boot_lines_name_unset_variables() {
        let mut script = Script::new(Vec::new());
        script
            .run("set known=ro\nmenuentry 'X' { linux /vmlinuz root=/dev/sda1 $known $missing ${also_missing}\ninitrd /initrd $extra_cmdline }\n")
            .unwrap();
        let unresolved = script.boot_lines(&script.entries[0]).unwrap_err();
        assert_eq!(
            unresolved.into_iter().collect::<Vec<_>>(),
            vec!["also_missing", "missing"]
        );
    }
}

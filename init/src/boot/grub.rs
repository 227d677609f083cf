//! Reading `grub.cfg` and `grubenv` the way GRUB itself would, far enough to
//! learn the default entry's `linux` and `initrd` lines.
//!
//! `grub.cfg` is a script: distributions compute variables in it
//! (`menuentry_id_option`, `linux_gfx_mode`, `vt_handoff`, `kernelopts`) and
//! pick the default from `grubenv`. So this is a small interpreter, not a
//! pattern match: a tokenizer (quotes, backslash, `#` comments, `{ }`, `;`),
//! a parser for commands, `if`/`elif`/`else`, `function`, `menuentry` and
//! `submenu` (loops are parsed and skipped), and an evaluator that runs
//! `set`, `name=value`, `unset`, `load_env` and calls to functions.
//!
//! Conditions are evaluated when they only involve strings we know
//! (`[ "${next_entry}" ]`, `[ x$feature_menuentry_id = xy ]`). A condition
//! that depends on the firmware or the disk (`[ -s $prefix/grubenv ]`,
//! `hwmatch`, `$grub_platform`) cannot be decided on the host: then every
//! branch runs in order, so the last assignment wins (generous, and what
//! the generated files intend: they assign the fallback last).

use std::collections::{BTreeSet, HashMap};

use anyhow::{Result, bail};

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

// --- grubenv ---------------------------------------------------------------

/// Parses a GRUB environment block (`grubenv`): a 1024-byte file of
/// `key=value` lines padded with `#`. GRUB escapes `\` and newline in values
/// with a backslash.
pub fn parse_grubenv(text: &str) -> Vec<(String, String)> {
    let mut vars = Vec::new();
    let mut line = String::new();
    let mut chars = text.chars();
    let mut lines = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    line.push(next);
                }
            }
            '\n' => lines.push(std::mem::take(&mut line)),
            c => line.push(c),
        }
    }
    lines.push(line);
    for line in lines {
        if line.starts_with('#') {
            continue;
        }
        if let Some((key, value)) = line.split_once('=') {
            vars.push((key.to_owned(), value.to_owned()));
        }
    }
    vars
}

// --- tokens ----------------------------------------------------------------

/// One piece of a word: literal text, or a variable to expand (`quoted`
/// when inside double quotes, where GRUB does not split the value).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Lit(String),
    Var { name: String, quoted: bool },
}

/// A word as written: its pieces, and whether any of it was quoted (so
/// `""` is an empty argument, not nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Word {
    pieces: Vec<Piece>,
    quoted: bool,
}

impl Word {
    /// The word's text if it is plain literal text (keywords must be).
    fn literal(&self) -> Option<String> {
        let mut text = String::new();
        for piece in &self.pieces {
            match piece {
                Piece::Lit(s) => text.push_str(s),
                Piece::Var { .. } => return None,
            }
        }
        Some(text)
    }

    fn push_lit(&mut self, c: char) {
        if let Some(Piece::Lit(s)) = self.pieces.last_mut() {
            s.push(c);
        } else {
            self.pieces.push(Piece::Lit(c.to_string()));
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Word(Word),
    /// A newline or `;`.
    End,
    Open,
    Close,
}

fn tokenize(text: &str) -> Result<Vec<Token>> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    let mut word: Option<Word> = None;
    let mut line = 1usize;

    fn finish(tokens: &mut Vec<Token>, word: &mut Option<Word>) {
        if let Some(w) = word.take() {
            tokens.push(Token::Word(w));
        }
    }

    while let Some(c) = chars.next() {
        match c {
            '\n' | ';' => {
                if c == '\n' {
                    line += 1;
                }
                finish(&mut tokens, &mut word);
                tokens.push(Token::End);
            }
            c if c.is_whitespace() => finish(&mut tokens, &mut word),
            '#' if word.is_none() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        tokens.push(Token::End);
                        break;
                    }
                }
            }
            '{' | '}' => {
                finish(&mut tokens, &mut word);
                tokens.push(if c == '{' { Token::Open } else { Token::Close });
            }
            '\\' => match chars.next() {
                Some('\n') => line += 1,
                Some(next) => word.get_or_insert_with(Word::default).push_lit(next),
                None => {}
            },
            '\'' => {
                let start = line;
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            w.push_lit(c);
                        }
                        None => bail!("unterminated ' quote opened at line {start}"),
                    }
                }
            }
            '"' => {
                let start = line;
                let w = word.get_or_insert_with(Word::default);
                w.quoted = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('$' | '"' | '\\')) => w.push_lit(c),
                            Some('\n') => line += 1,
                            Some(c) => {
                                w.push_lit('\\');
                                w.push_lit(c);
                            }
                            None => bail!("unterminated \" quote opened at line {start}"),
                        },
                        Some('$') => {
                            if let Some(name) = variable_name(&mut chars, line)? {
                                w.pieces.push(Piece::Var { name, quoted: true });
                            } else {
                                w.push_lit('$');
                            }
                        }
                        Some(c) => {
                            if c == '\n' {
                                line += 1;
                            }
                            w.push_lit(c);
                        }
                        None => bail!("unterminated \" quote opened at line {start}"),
                    }
                }
            }
            '$' => {
                let w = word.get_or_insert_with(Word::default);
                if let Some(name) = variable_name(&mut chars, line)? {
                    w.pieces.push(Piece::Var {
                        name,
                        quoted: false,
                    });
                } else {
                    w.push_lit('$');
                }
            }
            c => word.get_or_insert_with(Word::default).push_lit(c),
        }
    }
    finish(&mut tokens, &mut word);
    Ok(tokens)
}

/// Reads the name after a `$`: `${any}`, `$name`, `$1`, `$?`, `$#`, `$@`, `$*`.
fn variable_name(
    chars: &mut std::iter::Peekable<std::str::Chars>,
    line: usize,
) -> Result<Option<String>> {
    match chars.peek() {
        Some('{') => {
            chars.next();
            let mut name = String::new();
            for c in chars.by_ref() {
                if c == '}' {
                    return Ok(Some(name));
                }
                name.push(c);
            }
            bail!("unterminated ${{ at line {line}");
        }
        Some(&c @ ('?' | '#' | '@' | '*')) => {
            chars.next();
            Ok(Some(c.to_string()))
        }
        Some(c) if c.is_ascii_digit() => {
            let mut name = String::new();
            while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
                name.push(c);
                chars.next();
            }
            Ok(Some(name))
        }
        Some(c) if c.is_ascii_alphanumeric() || *c == '_' => {
            let mut name = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
                name.push(c);
                chars.next();
            }
            Ok(Some(name))
        }
        _ => Ok(None),
    }
}

// --- syntax ----------------------------------------------------------------

#[derive(Debug, Clone)]
enum Stmt {
    Command(Vec<Word>),
    If {
        branches: Vec<(Vec<Word>, Vec<Stmt>)>,
        otherwise: Vec<Stmt>,
    },
    Function {
        name: String,
        body: Vec<Stmt>,
    },
    Menu {
        submenu: bool,
        args: Vec<Word>,
        body: Vec<Stmt>,
    },
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

/// What ended a block: a closing keyword, `}`, or the end of the file.
#[derive(Debug, PartialEq, Eq)]
enum Terminator {
    Keyword(String),
    Close,
    Eof,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    /// Reads one command: the words up to `;`, newline, `{` or `}`.
    fn words(&mut self) -> Vec<Word> {
        let mut words = Vec::new();
        while let Some(Token::Word(w)) = self.peek() {
            words.push(w.clone());
            self.pos += 1;
        }
        words
    }

    fn skip_ends(&mut self) {
        while self.peek() == Some(&Token::End) {
            self.pos += 1;
        }
    }

    /// Parses statements until one of `stops` (keywords at a command's
    /// start), a `}` or the end.
    fn block(&mut self, stops: &[&str]) -> Result<(Vec<Stmt>, Terminator)> {
        let mut stmts = Vec::new();
        loop {
            self.skip_ends();
            match self.peek() {
                None => return Ok((stmts, Terminator::Eof)),
                Some(Token::Close) => {
                    self.pos += 1;
                    return Ok((stmts, Terminator::Close));
                }
                Some(Token::Open) => {
                    // A bare `{ ... }` group: run it inline.
                    self.pos += 1;
                    let (body, _) = self.block(&[])?;
                    stmts.extend(body);
                    continue;
                }
                Some(Token::End) => continue,
                Some(Token::Word(w)) => {
                    let keyword = w.literal().unwrap_or_default();
                    if stops.contains(&keyword.as_str()) {
                        self.pos += 1;
                        return Ok((stmts, Terminator::Keyword(keyword)));
                    }
                    match keyword.as_str() {
                        "if" => {
                            self.pos += 1;
                            stmts.push(self.if_statement()?);
                        }
                        "function" => {
                            self.pos += 1;
                            let name = self.words();
                            let name = match name.as_slice() {
                                [w] => w.literal().unwrap_or_default(),
                                _ => bail!("function without a name"),
                            };
                            let body = self.braced(&format!("function {name}"))?;
                            stmts.push(Stmt::Function { name, body });
                        }
                        "menuentry" | "submenu" => {
                            self.pos += 1;
                            let args = self.words();
                            let body = self.braced(&keyword)?;
                            stmts.push(Stmt::Menu {
                                submenu: keyword == "submenu",
                                args,
                                body,
                            });
                        }
                        "for" | "while" | "until" => {
                            // Loops are skipped: nothing a boot entry needs
                            // is computed in one.
                            self.pos += 1;
                            self.words();
                            self.skip_to_done()?;
                        }
                        _ => stmts.push(Stmt::Command(self.words())),
                    }
                }
            }
        }
    }

    /// Parses a `{ ... }` body following a menuentry/submenu/function header.
    fn braced(&mut self, what: &str) -> Result<Vec<Stmt>> {
        self.skip_ends();
        if self.peek() != Some(&Token::Open) {
            bail!("{what}: expected {{");
        }
        self.pos += 1;
        match self.block(&[])? {
            (body, Terminator::Close) => Ok(body),
            _ => bail!("{what}: missing }}"),
        }
    }

    fn condition(&mut self) -> Result<Vec<Word>> {
        // `if a; b; then`: the last command decides.
        let mut last = Vec::new();
        loop {
            self.skip_ends();
            match self.peek() {
                Some(Token::Word(w)) if w.literal().as_deref() == Some("then") => {
                    self.pos += 1;
                    return Ok(last);
                }
                Some(Token::Word(_)) => last = self.words(),
                _ => bail!("if without then"),
            }
        }
    }

    fn if_statement(&mut self) -> Result<Stmt> {
        let mut branches = Vec::new();
        let mut cond = self.condition()?;
        loop {
            let (body, end) = self.block(&["elif", "else", "fi"])?;
            branches.push((cond, body));
            match end {
                Terminator::Keyword(k) if k == "elif" => cond = self.condition()?,
                Terminator::Keyword(k) if k == "else" => {
                    let (otherwise, end) = self.block(&["fi"])?;
                    if end != Terminator::Keyword("fi".into()) {
                        bail!("if without fi");
                    }
                    return Ok(Stmt::If {
                        branches,
                        otherwise,
                    });
                }
                Terminator::Keyword(_) => {
                    return Ok(Stmt::If {
                        branches,
                        otherwise: Vec::new(),
                    });
                }
                _ => bail!("if without fi"),
            }
        }
    }

    fn skip_to_done(&mut self) -> Result<()> {
        let mut depth = 0usize;
        while let Some(token) = self.tokens.get(self.pos) {
            self.pos += 1;
            if let Token::Word(w) = token {
                match w.literal().as_deref() {
                    Some("for" | "while" | "until") => depth += 1,
                    Some("done") if depth == 0 => return Ok(()),
                    Some("done") => depth -= 1,
                    _ => {}
                }
            }
        }
        bail!("loop without done")
    }
}

fn parse(text: &str) -> Result<Vec<Stmt>> {
    let mut parser = Parser {
        tokens: tokenize(text)?,
        pos: 0,
    };
    match parser.block(&[])? {
        (stmts, Terminator::Eof) => Ok(stmts),
        (_, Terminator::Close) => bail!("unbalanced }}"),
        (_, Terminator::Keyword(k)) => bail!("unexpected {k}"),
    }
}

// --- evaluation ------------------------------------------------------------

/// The result of expanding one word.
#[derive(Debug, Default)]
struct Fields {
    fields: Vec<String>,
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

    fn expand_all(&self, words: &[Word]) -> Fields {
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

    fn lit_words(text: &str) -> Vec<Vec<String>> {
        let script = Script::new(Vec::new());
        let mut lines = vec![Vec::new()];
        for token in tokenize(text).unwrap() {
            match token {
                Token::Word(w) => lines
                    .last_mut()
                    .unwrap()
                    .extend(script.expand_all(&[w]).fields),
                Token::End => lines.push(Vec::new()),
                Token::Open => lines.last_mut().unwrap().push("{".into()),
                Token::Close => lines.last_mut().unwrap().push("}".into()),
            }
        }
        lines.retain(|l| !l.is_empty());
        lines
    }

    #[test]
    fn tokenizer_handles_quotes_escapes_comments_and_separators() {
        let lines = lit_words(
            "menuentry 'Debian GNU/Linux' --class debian {\n\
             # a comment with 'quotes\n\
             echo \"a \\\"b\\\" c\" x\\ y; echo 'it''s' \\\n  more\n}",
        );
        assert_eq!(
            lines,
            vec![
                vec!["menuentry", "Debian GNU/Linux", "--class", "debian", "{"],
                vec!["echo", "a \"b\" c", "x y"],
                vec!["echo", "its", "more"],
                vec!["}"],
            ]
        );
    }

    #[test]
    fn unterminated_quote_is_an_error_naming_the_line() {
        let err = parse("set a=1\nset b='x\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

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

    #[test]
    fn grubenv_block_is_parsed_with_escapes_and_padding() {
        let mut block = String::from(
            "# GRUB Environment Block\nsaved_entry=Advanced options>Ubuntu\nodd=a\\\\b\\\nc\n",
        );
        while block.len() < 1024 {
            block.push('#');
        }
        assert_eq!(
            parse_grubenv(&block),
            vec![
                (
                    "saved_entry".to_string(),
                    "Advanced options>Ubuntu".to_string()
                ),
                ("odd".to_string(), "a\\b\nc".to_string()),
            ]
        );
    }
}

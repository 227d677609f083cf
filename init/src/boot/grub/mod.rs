//! Reading `grub.cfg` and `grubenv` the way GRUB itself would, far enough to
//! learn the default entry's `linux` and `initrd` lines.
//!
//! `grub.cfg` is a script: distributions compute variables in it
//! (`menuentry_id_option`, `linux_gfx_mode`, `vt_handoff`, `kernelopts`) and
//! pick the default from `grubenv`. So this is a small interpreter, not a
//! pattern match: a tokenizer (`lexer`: quotes, backslash, `#` comments,
//! `{ }`, `;`), a parser (`parser`: commands, `if`/`elif`/`else`,
//! `function`, `menuentry` and `submenu`; loops are parsed and skipped), and
//! an evaluator (`eval`) that runs `set`, `name=value`, `unset`, `load_env`
//! and calls to functions.
//!
//! Conditions are evaluated when they only involve strings we know
//! (`[ "${next_entry}" ]`, `[ x$feature_menuentry_id = xy ]`). A condition
//! that depends on the firmware or the disk (`[ -s $prefix/grubenv ]`,
//! `hwmatch`, `$grub_platform`) cannot be decided on the host: then every
//! branch runs in order, so the last assignment wins (generous, and what
//! the generated files intend: they assign the fallback last).

mod eval;
mod lexer;
mod parser;

pub(crate) use eval::{EMPTY_UNLESS_SET, Script, find_default};

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

#[cfg(test)]
mod tests {
    use super::*;

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

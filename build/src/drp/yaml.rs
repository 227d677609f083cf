//! A YAML writer for the content pack, just big enough for JSON values.
//!
//! DRP reads its content with a YAML 1.1/1.2 parser; every JSON document is
//! valid YAML, so the safe floor is JSON's own escaping. What this adds is
//! readability: block mappings and sequences, and templates as literal
//! blocks (`|`) so a reviewer reads them as they will be rendered. A string
//! that a literal block cannot carry exactly (control characters, a first
//! line starting with a space, a carriage return) falls back to a
//! double-quoted JSON string, which YAML reads back byte for byte. Every
//! other scalar string is double-quoted too, so `yes`, `0644` or `1.0`
//! never turn into booleans or numbers.

use serde_json::Value;

/// The document for `value`, starting with `---`.
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::from("---\n");
    match value {
        Value::Object(map) if !map.is_empty() => write_mapping(&mut out, map, 0),
        Value::Array(items) if !items.is_empty() => write_sequence(&mut out, items, 0),
        scalar => {
            write_inline_scalar(&mut out, scalar, 0);
            out.push('\n');
        }
    }
    out
}

fn indent(out: &mut String, level: usize) {
    out.extend(std::iter::repeat_n(' ', level));
}

fn write_mapping(out: &mut String, map: &serde_json::Map<String, Value>, level: usize) {
    for (key, value) in map {
        indent(out, level);
        write_key(out, key);
        out.push(':');
        write_after_indicator(out, value, level);
    }
}

fn write_sequence(out: &mut String, items: &[Value], level: usize) {
    for item in items {
        indent(out, level);
        out.push('-');
        match item {
            // `- Name: x` then the other keys aligned under `Name`.
            Value::Object(map) if !map.is_empty() => {
                let mut first = true;
                for (key, value) in map {
                    if first {
                        out.push(' ');
                        first = false;
                    } else {
                        indent(out, level + 2);
                    }
                    write_key(out, key);
                    out.push(':');
                    write_after_indicator(out, value, level + 2);
                }
            }
            other => write_after_indicator(out, other, level),
        }
    }
}

/// What follows `key:` or `-`: a nested block on the next lines, or a
/// scalar on the same line.
fn write_after_indicator(out: &mut String, value: &Value, level: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_mapping(out, map, level + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_sequence(out, items, level + 2);
        }
        Value::String(text) if literal_block_fits(text) => {
            write_literal_block(out, text, level + 2);
        }
        scalar => {
            out.push(' ');
            write_inline_scalar(out, scalar, level);
            out.push('\n');
        }
    }
}

fn write_inline_scalar(out: &mut String, value: &Value, _level: usize) {
    match value {
        Value::Object(_) => out.push_str("{}"),
        Value::Array(_) => out.push_str("[]"),
        // JSON's null, booleans, numbers and strings are YAML's too.
        other => out.push_str(&other.to_string()),
    }
}

/// Keys made of these characters read back as the same string in YAML.
fn write_key(out: &mut String, key: &str) {
    let plain = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '/'))
        && !matches!(
            key.to_ascii_lowercase().as_str(),
            "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null"
        );
    if plain {
        out.push_str(key);
    } else {
        out.push_str(&Value::String(key.to_owned()).to_string());
    }
}

/// A literal block keeps every character of `text` only when it has more
/// than one line, no control characters but tab and newline, and its first
/// line does not start with a space (that would need an indentation
/// indicator). Trailing spaces and tabs inside are kept by a literal block.
fn literal_block_fits(text: &str) -> bool {
    text.contains('\n')
        && !text.starts_with([' ', '\t', '\n'])
        && !text
            .chars()
            .any(|c| (c.is_control() && c != '\n' && c != '\t') || c == '\u{feff}')
        // A line holding only spaces before a less indented one would be
        // read as indentation; keep such text quoted.
        && !text.lines().any(|line| !line.is_empty() && line.trim().is_empty())
}

fn write_literal_block(out: &mut String, text: &str, level: usize) {
    // `|-` strips the final newline, `|` keeps exactly one, `|+` keeps all.
    let chomping = if !text.ends_with('\n') {
        "-"
    } else if text.ends_with("\n\n") {
        "+"
    } else {
        ""
    };
    out.push_str(" |");
    out.push_str(chomping);
    out.push('\n');
    let body = text.strip_suffix('\n').unwrap_or(text);
    for line in body.split('\n') {
        if !line.is_empty() {
            indent(out, level);
            out.push_str(line);
        }
        out.push('\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_mappings_sequences_and_scalars() {
        let doc = json!({
            "Name": "imprint",
            "OS": {"SupportedArchitectures": {"amd64": {"Initrds": ["0.1.0/initramfs.img"]}}},
            "ReadOnly": false,
            "Count": 3,
            "Empty": [],
            "None": {},
            "Templates": [{"ID": "a.tmpl", "Name": "a"}, "plain"],
        });
        assert_eq!(
            to_yaml(&doc),
            "---\n\
             Count: 3\n\
             Empty: []\n\
             Name: \"imprint\"\n\
             None: {}\n\
             OS:\n  SupportedArchitectures:\n    amd64:\n      Initrds:\n        - \"0.1.0/initramfs.img\"\n\
             ReadOnly: false\n\
             Templates:\n  - ID: \"a.tmpl\"\n    Name: \"a\"\n  - \"plain\"\n"
        );
    }

    #[test]
    fn multi_line_strings_are_literal_blocks_with_the_right_chomping() {
        let doc = json!({"a": "x\n  y\n", "b": "x\ny", "c": "x\n\n", "d": "x\n\ny\n"});
        assert_eq!(
            to_yaml(&doc),
            "---\na: |\n  x\n    y\nb: |-\n  x\n  y\nc: |+\n  x\n\nd: |\n  x\n\n  y\n"
        );
    }

    #[test]
    fn strings_a_block_cannot_carry_are_quoted() {
        for text in [
            " leading\nspace",
            "cr\r\nlf",
            "bell\u{7}\n",
            "blank\n   \nline",
        ] {
            let yaml = to_yaml(&json!({"k": text}));
            assert_eq!(
                yaml,
                format!("---\nk: {}\n", Value::String(text.into())),
                "{text:?}"
            );
        }
    }

    #[test]
    fn keys_that_yaml_would_reinterpret_are_quoted() {
        assert_eq!(
            to_yaml(&json!({"yes": 1, "imprint/on-success": 2, "1x": 3, "a b": 4})),
            "---\n\"1x\": 3\n\"a b\": 4\nimprint/on-success: 2\n\"yes\": 1\n"
        );
    }
}

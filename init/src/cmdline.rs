//! Splitting the kernel command line (`/proc/cmdline`) into parameters.
//!
//! The kernel's own parser (`next_arg` in lib/cmdline.c) lets double quotes
//! group words anywhere in an argument, and `/proc/cmdline` shows them
//! verbatim: `"imprint.ssh-key=ssh-ed25519 AAAA… user"` and
//! `imprint.ssh-key="ssh-ed25519 AAAA… user"` both mean one parameter whose
//! value holds spaces. We follow the same rules and drop the quotes.

/// One `key` or `key=value` word of the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    pub value: Option<String>,
}

/// The command line split into the kernel's parameters and the words after
/// `--`, which the kernel hands to init as arguments (DRP puts console
/// settings there, and later issues keep them for the installed OS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCmdline {
    pub params: Vec<Param>,
    pub init_args: Vec<String>,
}

impl KernelCmdline {
    pub fn parse(text: &str) -> Self {
        let mut cmdline = KernelCmdline::default();
        let mut words = split_words(text).into_iter();
        for word in words.by_ref() {
            if word == "--" {
                break;
            }
            cmdline.params.push(match word.split_once('=') {
                Some((key, value)) => Param {
                    key: key.to_owned(),
                    value: Some(value.to_owned()),
                },
                None => Param {
                    key: word,
                    value: None,
                },
            });
        }
        cmdline.init_args = words.collect();
        cmdline
    }

    /// Parameters whose key starts with `prefix` (e.g. `imprint.`), in order,
    /// with the prefix removed.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a Param)> {
        self.params
            .iter()
            .filter_map(move |p| p.key.strip_prefix(prefix).map(|rest| (rest, p)))
    }

    /// The last value given for `key` (the kernel's rule: later wins).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|p| p.key == key)
            .and_then(|p| p.value.as_deref())
    }
}

/// The kernel's word splitting: whitespace separates, double quotes group
/// and are dropped.
pub fn split_words(text: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut in_word = false;
    let mut in_quotes = false;
    for c in text.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            c => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(key: &str, value: Option<&str>) -> Param {
        Param {
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn splits_keys_values_and_flags() {
        let c = KernelCmdline::parse(
            "BOOT_IMAGE=/vmlinuz ro quiet imprint.url=http://10.0.2.2:8080/a.img\n",
        );
        assert_eq!(
            c.params,
            vec![
                p("BOOT_IMAGE", Some("/vmlinuz")),
                p("ro", None),
                p("quiet", None),
                p("imprint.url", Some("http://10.0.2.2:8080/a.img")),
            ]
        );
        assert!(c.init_args.is_empty());
    }

    #[test]
    fn value_keeps_later_equals_signs() {
        let c = KernelCmdline::parse("imprint.url=http://h/x?a=b&c=d");
        assert_eq!(c.value("imprint.url"), Some("http://h/x?a=b&c=d"));
    }

    #[test]
    fn quotes_around_whole_parameter_group_spaces() {
        let c = KernelCmdline::parse(r#"a=1 "imprint.ssh-key=ssh-ed25519 AAAAC3Nz user@host" b"#);
        assert_eq!(
            c.value("imprint.ssh-key"),
            Some("ssh-ed25519 AAAAC3Nz user@host")
        );
        assert_eq!(c.params.len(), 3);
    }

    #[test]
    fn quotes_around_value_group_spaces() {
        let c = KernelCmdline::parse(r#"imprint.ssh-key="ssh-rsa AAAA x" console=ttyS0"#);
        assert_eq!(c.value("imprint.ssh-key"), Some("ssh-rsa AAAA x"));
        assert_eq!(c.value("console"), Some("ttyS0"));
    }

    #[test]
    fn unterminated_quote_runs_to_the_end() {
        let c = KernelCmdline::parse(r#"a="b c"#);
        assert_eq!(c.value("a"), Some("b c"));
    }

    #[test]
    fn words_after_double_dash_are_init_args() {
        let c = KernelCmdline::parse("ro imprint.disk=/dev/vda -- console=ttyS0,115200 single");
        assert_eq!(c.params.len(), 2);
        assert_eq!(c.init_args, vec!["console=ttyS0,115200", "single"]);
    }

    #[test]
    fn later_value_wins_and_prefix_filter() {
        let c = KernelCmdline::parse("imprint.disk=/dev/sda x.y=1 imprint.disk=/dev/vda");
        assert_eq!(c.value("imprint.disk"), Some("/dev/vda"));
        let keys: Vec<&str> = c.with_prefix("imprint.").map(|(k, _)| k).collect();
        assert_eq!(keys, vec!["disk", "disk"]);
    }

    #[test]
    fn empty_and_whitespace_only() {
        assert_eq!(KernelCmdline::parse(""), KernelCmdline::default());
        assert_eq!(KernelCmdline::parse(" \t\n"), KernelCmdline::default());
    }

    #[test]
    fn empty_value_is_some_empty() {
        let c = KernelCmdline::parse("imprint.url=");
        assert_eq!(c.params, vec![p("imprint.url", Some(""))]);
    }
}

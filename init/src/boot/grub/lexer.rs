//! The tokenizer: words (quotes, backslash, `$` variables), `#` comments,
//! `{ }`, and `;`/newline as command ends.

use anyhow::{Result, bail};

/// One piece of a word: literal text, or a variable to expand (`quoted`
/// when inside double quotes, where GRUB does not split the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Lit(String),
    Var { name: String, quoted: bool },
}

/// A word as written: its pieces, and whether any of it was quoted (so
/// `""` is an empty argument, not nothing).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(super) struct Word {
    pub(super) pieces: Vec<Piece>,
    pub(super) quoted: bool,
}

impl Word {
    /// The word's text if it is plain literal text (keywords must be).
    pub(super) fn literal(&self) -> Option<String> {
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
pub(super) enum Token {
    Word(Word),
    /// A newline or `;`.
    End,
    Open,
    Close,
}

pub(super) fn tokenize(text: &str) -> Result<Vec<Token>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::grub::eval::Script;

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
}

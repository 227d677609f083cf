//! The parser: commands, `if`/`elif`/`else`, `function`, `menuentry` and
//! `submenu` blocks; loops are parsed and skipped.

use anyhow::{Result, bail};

use super::lexer::{Token, Word, tokenize};

#[derive(Debug, Clone)]
pub(super) enum Stmt {
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

pub(super) fn parse(text: &str) -> Result<Vec<Stmt>> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unterminated_quote_is_an_error_naming_the_line() {
        let err = parse("set a=1\nset b='x\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }
}

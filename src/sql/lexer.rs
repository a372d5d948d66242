//! A small PostgreSQL lexer over bytes: enough to split a query string into statements and to read its words,
//! with comments, string literals (plain, `E''`, `U&''`, dollar-quoted) and quoted identifiers skipped exactly as
//! PostgreSQL's scanner skips them (assuming `standard_conforming_strings = on`, the default since 9.1). It never
//! fails: an unterminated literal or comment runs to the end of the text.

/// One token of a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok<'a> {
    /// An unquoted identifier or keyword, as written.
    Word(&'a [u8]),
    /// A double-quoted identifier, quotes included.
    Quoted(&'a [u8]),
    /// A string literal, quotes and any prefix (`E`, `U&`, `B`, `X`, `N`) or dollar tags included.
    Str(&'a [u8]),
    /// A number, or a `$n` parameter.
    Num(&'a [u8]),
    /// Any other single byte (operators, parentheses, commas, `;`).
    Punct(u8),
}

impl<'a> Tok<'a> {
    /// The token's text as written.
    pub fn text(&self) -> &'a [u8] {
        match self {
            Tok::Word(t) | Tok::Quoted(t) | Tok::Str(t) | Tok::Num(t) => t,
            Tok::Punct(b) => std::slice::from_ref(PUNCT.get(*b as usize).unwrap_or(&b'?')),
        }
    }

    /// Whether it is the unquoted word `w` (ASCII case-insensitive).
    pub fn is(&self, w: &str) -> bool {
        matches!(self, Tok::Word(t) if t.eq_ignore_ascii_case(w.as_bytes()))
    }
}

/// Every byte value, so that a punctuation token can lend out a one-byte slice of itself.
static PUNCT: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = i as u8;
        i += 1;
    }
    t
};

fn ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_' || c >= 0x80
}

fn ident_cont(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Iterates over the tokens of `sql`, skipping whitespace and comments.
pub struct Lexer<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Lexer<'a> {
    /// A lexer over `sql`.
    pub fn new(sql: &'a [u8]) -> Lexer<'a> {
        Lexer { b: sql, i: 0 }
    }

    fn at(&self, i: usize) -> u8 {
        self.b.get(i).copied().unwrap_or(0)
    }

    /// Skips whitespace and comments.
    fn skip_space(&mut self) {
        loop {
            while self.i < self.b.len() && self.at(self.i).is_ascii_whitespace() {
                self.i += 1;
            }
            if self.at(self.i) == b'-' && self.at(self.i + 1) == b'-' {
                // A line comment ends at a newline or carriage return, as in PostgreSQL's scanner.
                while self.i < self.b.len() && !matches!(self.at(self.i), b'\n' | b'\r') {
                    self.i += 1;
                }
            } else if self.at(self.i) == b'/' && self.at(self.i + 1) == b'*' {
                // An unclosed comment runs to the end.
                self.i = block_comment_end(self.b, self.i).unwrap_or(self.b.len());
            } else {
                return;
            }
        }
    }

    /// The end (exclusive) of a quoted run starting at `start` (the opening quote), with the quote doubled as
    /// its escape and, when `backslash`, backslash escapes too.
    fn quoted_end(&self, start: usize, quote: u8, backslash: bool) -> usize {
        let mut j = start + 1;
        while j < self.b.len() {
            let c = self.at(j);
            if backslash && c == b'\\' {
                j += 2;
            } else if c == quote {
                if self.at(j + 1) == quote {
                    j += 2;
                } else {
                    return j + 1;
                }
            } else {
                j += 1;
            }
        }
        self.b.len()
    }

    /// A dollar-quote tag (`$tag$` or `$$`) starting at `start`, or `None`.
    fn dollar_tag(&self, start: usize) -> Option<usize> {
        let mut j = start + 1;
        if self.at(j) == b'$' {
            return Some(j + 1);
        }
        if !ident_start(self.at(j)) {
            return None;
        }
        while ident_cont(self.at(j)) && self.at(j) != b'$' {
            j += 1;
        }
        (self.at(j) == b'$').then_some(j + 1)
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Tok<'a>;

    fn next(&mut self) -> Option<Tok<'a>> {
        self.skip_space();
        let start = self.i;
        let c = *self.b.get(start)?;
        let next = self.at(start + 1);
        let tok = match c {
            b'\'' => {
                self.i = self.quoted_end(start, b'\'', false);
                Tok::Str(&self.b[start..self.i])
            }
            b'"' => {
                self.i = self.quoted_end(start, b'"', false);
                Tok::Quoted(&self.b[start..self.i])
            }
            b'e' | b'E' if next == b'\'' => {
                self.i = self.quoted_end(start + 1, b'\'', true);
                Tok::Str(&self.b[start..self.i])
            }
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == b'\'' => {
                self.i = self.quoted_end(start + 1, b'\'', false);
                Tok::Str(&self.b[start..self.i])
            }
            b'u' | b'U' if next == b'&' && matches!(self.at(start + 2), b'\'' | b'"') => {
                let quote = self.at(start + 2);
                self.i = self.quoted_end(start + 2, quote, false);
                if quote == b'"' {
                    Tok::Quoted(&self.b[start..self.i])
                } else {
                    Tok::Str(&self.b[start..self.i])
                }
            }
            b'$' => match self.dollar_tag(start) {
                Some(tag_end) => {
                    let tag = &self.b[start..tag_end];
                    let body = &self.b[tag_end..];
                    self.i = body
                        .windows(tag.len())
                        .position(|w| w == tag)
                        .map_or(self.b.len(), |p| tag_end + p + tag.len());
                    Tok::Str(&self.b[start..self.i])
                }
                None => {
                    self.i = start + 1;
                    while self.at(self.i).is_ascii_digit() {
                        self.i += 1;
                    }
                    if self.i == start + 1 {
                        Tok::Punct(b'$')
                    } else {
                        Tok::Num(&self.b[start..self.i])
                    }
                }
            },
            c if ident_start(c) => {
                self.i = start + 1;
                while ident_cont(self.at(self.i)) {
                    self.i += 1;
                }
                Tok::Word(&self.b[start..self.i])
            }
            c if c.is_ascii_digit() || (c == b'.' && next.is_ascii_digit()) => {
                self.i = start + 1;
                loop {
                    let d = self.at(self.i);
                    let prev = self.at(self.i - 1);
                    if d.is_ascii_alphanumeric()
                        || d == b'_'
                        || d == b'.'
                        || (matches!(d, b'+' | b'-') && matches!(prev, b'e' | b'E'))
                    {
                        self.i += 1;
                    } else {
                        break;
                    }
                }
                Tok::Num(&self.b[start..self.i])
            }
            c => {
                self.i = start + 1;
                Tok::Punct(c)
            }
        };
        Some(tok)
    }
}

/// The end (exclusive) of the block comment starting at `start`; block comments nest, as in PostgreSQL. `None`
/// when it is not closed.
pub fn block_comment_end(b: &[u8], start: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = start;
    while i + 1 < b.len() {
        match (b[i], b[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth = depth.saturating_sub(1);
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// The statements of a query string, as token lists (empty statements dropped).
pub fn statements(sql: &[u8]) -> Vec<Vec<Tok<'_>>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    for t in Lexer::new(sql) {
        if t == Tok::Punct(b';') {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(t);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Tokens as SQL text, one space between tokens: comments and layout dropped, literals and quoted names kept
/// exactly as written.
pub fn join(tokens: &[Tok<'_>]) -> String {
    let mut s = String::new();
    for (i, t) in tokens.iter().enumerate() {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(&String::from_utf8_lossy(t.text()));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(sql: &str) -> Vec<String> {
        Lexer::new(sql.as_bytes())
            .map(|t| String::from_utf8_lossy(t.text()).into_owned())
            .collect()
    }

    #[test]
    fn comments_and_literals_are_single_tokens_or_skipped() {
        assert_eq!(
            words(
                "SELECT 'a;b', E'it\\'s', $q$ ; $q$, \"x\"\"y\" -- c ; d\n/* /* ; */ */ 1.5e-3 $1;"
            ),
            vec![
                "SELECT",
                "'a;b'",
                ",",
                "E'it\\'s'",
                ",",
                "$q$ ; $q$",
                ",",
                "\"x\"\"y\"",
                "1.5e-3",
                "$1",
                ";"
            ]
        );
    }

    #[test]
    fn statements_split_on_top_level_semicolons_only() {
        let s = statements(b"SELECT ';'; ; LISTEN x -- ;\n; SET a = $$;$$");
        assert_eq!(s.len(), 3);
        assert!(s[1][0].is("listen"));
        assert_eq!(join(&s[2]), "SET a = $$;$$");
    }

    #[test]
    fn unterminated_input_does_not_panic() {
        for sql in [
            "'abc", "E'\\", "$a$ x", "/* /*", "\"x", "U&", "$", "1e", "é'",
        ] {
            let _ = statements(sql.as_bytes());
        }
    }
}

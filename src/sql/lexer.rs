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
        self.i = skip_space(self.b, self.i, |_| {});
    }

    /// See [`quoted_end`]; an unterminated run ends with the text.
    fn quoted_end(&self, start: usize, quote: u8, backslash: bool) -> usize {
        quoted_end(self.b, start, quote, backslash).unwrap_or(self.b.len())
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
            b'$' => match dollar_tag_end(self.b, start) {
                Some(tag_end) => {
                    self.i = dollar_quote_end(self.b, start, tag_end).unwrap_or(self.b.len());
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

/// Where the whitespace and comments starting at `i` end: at the next token, or at the end of the text (an
/// unclosed block comment runs to the end, as does a line comment without a newline). `block_comment` sees each
/// closed block comment, delimiters included.
pub fn skip_space(b: &[u8], mut i: usize, mut block_comment: impl FnMut(&[u8])) -> usize {
    loop {
        while b.get(i).is_some_and(u8::is_ascii_whitespace) {
            i += 1;
        }
        match b.get(i..i + 2) {
            Some(b"--") => {
                // A line comment ends at a newline or carriage return, as in PostgreSQL's scanner.
                i = b[i..]
                    .iter()
                    .position(|&c| matches!(c, b'\n' | b'\r'))
                    .map_or(b.len(), |p| i + p);
            }
            Some(b"/*") => match block_comment_end(b, i) {
                Some(end) => {
                    block_comment(&b[i..end]);
                    i = end;
                }
                None => return b.len(),
            },
            _ => return i,
        }
    }
}

/// The end (exclusive) of a quoted run starting at `start` (the opening quote), with the quote doubled as its
/// escape and, when `backslash`, backslash escapes too; `None` when it does not close.
pub fn quoted_end(b: &[u8], start: usize, quote: u8, backslash: bool) -> Option<usize> {
    let mut j = start + 1;
    while j < b.len() {
        let c = b[j];
        if backslash && c == b'\\' {
            j += 2;
        } else if c == quote {
            if b.get(j + 1) == Some(&quote) {
                j += 2;
            } else {
                return Some(j + 1);
            }
        } else {
            j += 1;
        }
    }
    None
}

/// The end (exclusive) of a dollar-quote tag (`$tag$` or `$$`) starting at `start`, or `None` when the `$` there
/// opens no tag (a `$n` parameter, a lone `$`).
pub fn dollar_tag_end(b: &[u8], start: usize) -> Option<usize> {
    let at = |j: usize| b.get(j).copied().unwrap_or(0);
    let mut j = start + 1;
    if at(j) == b'$' {
        return Some(j + 1);
    }
    if !ident_start(at(j)) {
        return None;
    }
    while ident_cont(at(j)) && at(j) != b'$' {
        j += 1;
    }
    (at(j) == b'$').then_some(j + 1)
}

/// The end (exclusive) of the dollar-quoted string whose opening tag is `b[start..tag_end]`; `None` when the tag
/// does not come again.
pub fn dollar_quote_end(b: &[u8], start: usize, tag_end: usize) -> Option<usize> {
    let tag = &b[start..tag_end];
    b[tag_end..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map(|p| tag_end + p + tag.len())
}

/// Whether the first word of `sql` (after leading whitespace, comments not skipped) is `word`, ASCII
/// case-insensitively.
pub fn first_word_is(sql: &str, word: &str) -> bool {
    let t = sql.trim_start().as_bytes();
    t.get(..word.len())
        .is_some_and(|w| w.eq_ignore_ascii_case(word.as_bytes()))
        && t.get(word.len())
            .is_none_or(|b| !b.is_ascii_alphanumeric() && *b != b'_')
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
    fn space_and_comments_are_skipped_and_block_comments_seen() {
        let mut seen = Vec::new();
        let text = b" -- a\r\n/* b /* c */ */\t/*d*/x /* e */";
        let end = skip_space(text, 0, |c| {
            seen.push(String::from_utf8_lossy(c).into_owned())
        });
        assert_eq!(&text[end..end + 1], b"x");
        assert_eq!(seen, ["/* b /* c */ */", "/*d*/"]);
        assert_eq!(skip_space(b"  /* open", 0, |_| panic!("unclosed")), 9);
        assert_eq!(skip_space(b"-- only", 0, |_| {}), 7);
    }

    #[test]
    fn quoted_runs_and_dollar_quotes_end_where_postgres_ends_them() {
        assert_eq!(quoted_end(b"'a''b' x", 0, b'\'', false), Some(6));
        assert_eq!(quoted_end(b"E'a\\'b' x", 1, b'\'', true), Some(7));
        assert_eq!(quoted_end(b"'open", 0, b'\'', false), None);
        assert_eq!(dollar_tag_end(b"$q$ x $q$", 0), Some(3));
        assert_eq!(dollar_tag_end(b"$$", 0), Some(2));
        assert_eq!(dollar_tag_end(b"$1", 0), None);
        assert_eq!(dollar_quote_end(b"$q$ x $q$ y", 0, 3), Some(9));
        assert_eq!(dollar_quote_end(b"$q$ x $r$", 0, 3), None);
    }

    #[test]
    fn the_first_word_is_a_whole_word() {
        assert!(first_word_is("  set x = 1", "set"));
        assert!(first_word_is("SET", "set"));
        assert!(first_word_is("set;", "set"));
        assert!(!first_word_is("setting", "set"));
        assert!(!first_word_is("set_x", "set"));
        assert!(!first_word_is("/* c */ set", "set"));
        assert!(!first_word_is("se", "set"));
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

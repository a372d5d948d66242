//! A statement text with its literals blanked out, as the classifier's cache key.

use super::lexer::{block_comment_end, dollar_quote_end, dollar_tag_end, quoted_end};

/// `sql` with string and numeric literals replaced by `?` (comments, identifiers and `$n` parameters kept), for
/// use as a cache key; `None` when a literal, quoted identifier or comment does not close (no safe key).
pub fn normalize_literals(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let mut copied = 0; // b[copied..i] is still to be copied
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        let literal_end = match c {
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&x| x == b'\n' || x == b'\r')
                    .map_or(b.len(), |p| i + p);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = block_comment_end(b, i)?;
                continue;
            }
            b'"' => {
                i = quoted_end(b, i, b'"', false)?;
                continue;
            }
            b'\'' => {
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident(b[i - 2]));
                Some(quoted_end(b, i, b'\'', escapes)?)
            }
            // $n parameters stay; $tag$…$tag$ (tag letters may be non-ASCII) is a literal.
            b'$' if i == 0 || !ident(b[i - 1]) => match dollar_tag_end(b, i) {
                Some(tag_end) => Some(dollar_quote_end(b, i, tag_end)?),
                None => None,
            },
            b'0'..=b'9' if i == 0 || !ident(b[i - 1]) => {
                let mut j = i;
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'.' || b[j] == b'_')
                {
                    j += 1;
                }
                Some(j)
            }
            _ => None,
        };
        match literal_end {
            Some(end) => {
                out.push_str(&sql[copied..i]);
                out.push('?');
                i = end.max(i + 1);
                copied = i;
            }
            None => i += 1,
        }
    }
    out.push_str(sql.get(copied..)?);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_blanked_for_the_cache_key() {
        let n = |s: &str| normalize_literals(s).unwrap_or_else(|| "<none>".into());
        assert_eq!(
            n("SELECT * FROM t WHERE id = 17"),
            "SELECT * FROM t WHERE id = ?"
        );
        assert_eq!(
            n("SELECT * FROM t2 WHERE a = 'x''y' AND b = 1.5e3"),
            "SELECT * FROM t2 WHERE a = ? AND b = ?"
        );
        assert_eq!(
            n("SELECT $1, $$body$$, $q$x$q$ FROM \"t 1\""),
            "SELECT $1, ?, ? FROM \"t 1\""
        );
        assert_eq!(n("SELECT \"a\"\"b\", 'c'"), "SELECT \"a\"\"b\", ?");
        assert_eq!(n("SELECT E'a\\'b' -- 5\n, 6"), "SELECT E? -- 5\n, ?");
        assert_eq!(n("/* 'x */ SELECT 'é'"), "/* 'x */ SELECT ?");
        assert_eq!(
            n("/* a /* nested */ 'x' */ SELECT 1"),
            "/* a /* nested */ 'x' */ SELECT ?"
        );
        assert_eq!(n("SELECT $função$ x $função$"), "SELECT ?");
        assert_eq!(n("-- c\rSELECT 1"), "-- c\rSELECT ?");
        for unclosed in [
            "SELECT 'unterminated",
            "SELECT $$x",
            "SELECT \"x",
            "SELECT \"x\"\"",
            "/* /* */ SELECT 1",
        ] {
            assert_eq!(normalize_literals(unclosed), None, "{unclosed}");
        }
    }
}

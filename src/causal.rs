//! Read-your-writes vocabulary (issue 14): a WAL position ([`Lsn`]) as PostgreSQL prints and reads a `pg_lsn`,
//! and the read [`Consistency`] a session asks for. The bottom layer: it imports nothing of the crate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A WAL position (PostgreSQL's `pg_lsn`): ordered, so that "replayed at least this far" is a comparison.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The position before any WAL (`0/0`): no floor.
    pub const ZERO: Lsn = Lsn(0);

    /// Reads an LSN as PostgreSQL prints and accepts it: two hexadecimal halves of 1 to 8 digits each (any
    /// case) around a `/`, nothing else (no sign, no space), e.g. `16/B374D848`. `None` otherwise.
    pub fn parse(s: &str) -> Option<Lsn> {
        let (hi, lo) = s.split_once('/')?;
        Some(Lsn((u64::from(half(hi)?) << 32) | u64::from(half(lo)?)))
    }
}

/// One half of an LSN: 1 to 8 hex digits (`from_str_radix` alone would take a sign).
fn half(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(s, 16).ok()
}

impl fmt::Display for Lsn {
    /// As PostgreSQL prints a `pg_lsn`: `{high:X}/{low:X}`, e.g. `0/16B6C50`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl FromStr for Lsn {
    type Err = String;

    /// [`Lsn::parse`], with PostgreSQL's message when the text is not an LSN.
    fn from_str(s: &str) -> Result<Lsn, String> {
        Lsn::parse(s).ok_or_else(|| format!("invalid input syntax for type pg_lsn: \"{s}\""))
    }
}

/// What a read may miss (`[routing] consistency`, `SET pgsplit.consistency`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Read-your-writes: a read sees every write this session made (and every `pgsplit.min_lsn` it was given).
    #[default]
    Session,
    /// No floor: a read may run on any eligible replica, and may miss the session's latest writes.
    Eventual,
    /// A read sees every write committed, through any client, before it began.
    Strict,
}

impl Consistency {
    /// Every value, in the order the documentation lists them.
    pub const ALL: [Consistency; 3] = [
        Consistency::Session,
        Consistency::Eventual,
        Consistency::Strict,
    ];

    /// The value as the configuration and `SET pgsplit.consistency` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Session => "session",
            Consistency::Eventual => "eventual",
            Consistency::Strict => "strict",
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Consistency {
    type Err = String;

    /// `session`, `eventual` or `strict`, in any case (as PostgreSQL reads an enum setting).
    fn from_str(s: &str) -> Result<Consistency, String> {
        Consistency::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!(
                    "`{s}` is not a consistency; expected \"session\", \"eventual\" or \"strict\""
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_and_print_as_postgres_does() {
        assert_eq!(Lsn::parse("0/16B6C50"), Some(Lsn(0x16B_6C50)));
        assert_eq!(Lsn::parse("16/b374d848"), Some(Lsn(0x16_B374_D848)));
        assert_eq!(Lsn::parse("1/0"), Some(Lsn(1 << 32)));
        assert_eq!(
            Lsn::parse("FFFFFFFF/FFFFFFFF"),
            Some(Lsn(u64::MAX)),
            "the largest"
        );
        assert_eq!(Lsn::parse("00000000/00000001"), Some(Lsn(1)));
        for bad in [
            "",
            "/",
            "0/",
            "/0",
            "0",
            "bogus",
            "0/0/0",
            "+1/0",
            "0/-1",
            " 0/1",
            "0/1 ",
            "0 /1",
            "100000000/0",
            "0/100000000",
            "g/0",
            "0x1/0",
            "é/0",
            "0/1;",
        ] {
            assert_eq!(Lsn::parse(bad), None, "{bad:?}");
        }
        assert_eq!(Lsn(0x16B_6C50).to_string(), "0/16B6C50");
        assert_eq!(Lsn(0x16_B374_D848).to_string(), "16/B374D848");
        assert_eq!(Lsn::ZERO.to_string(), "0/0");
        assert_eq!(Lsn::default(), Lsn::ZERO);
        for lsn in [Lsn(0), Lsn(1), Lsn(u64::MAX), Lsn(0x1234_5678_9ABC)] {
            assert_eq!(Lsn::parse(&lsn.to_string()), Some(lsn));
        }
        assert!(Lsn(1 << 32) > Lsn(0xFFFF_FFFF), "ordered as positions");
        assert_eq!("0/1".parse::<Lsn>(), Ok(Lsn(1)));
        assert_eq!(
            "x".parse::<Lsn>(),
            Err("invalid input syntax for type pg_lsn: \"x\"".to_string())
        );
    }

    #[test]
    fn consistency_reads_any_case_and_writes_lower_case() {
        assert_eq!("session".parse(), Ok(Consistency::Session));
        assert_eq!("EVENTUAL".parse(), Ok(Consistency::Eventual));
        assert_eq!("Strict".parse(), Ok(Consistency::Strict));
        assert!("".parse::<Consistency>().is_err());
        assert!("causal".parse::<Consistency>().is_err());
        assert!(" session".parse::<Consistency>().is_err());
        for c in Consistency::ALL {
            assert_eq!(c.as_str().parse(), Ok(c));
            assert_eq!(c.to_string(), c.as_str());
        }
        assert_eq!(Consistency::default(), Consistency::Session);
        #[derive(Deserialize, Serialize)]
        struct T {
            c: Consistency,
        }
        let t: T = toml::from_str("c = \"strict\"").unwrap();
        assert_eq!(t.c, Consistency::Strict);
        assert_eq!(
            toml::to_string(&T {
                c: Consistency::Eventual
            })
            .unwrap()
            .trim(),
            "c = \"eventual\""
        );
    }
}

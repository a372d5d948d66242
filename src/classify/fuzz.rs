//! A fuzz test for the code that reads client input before any server does: the lexer, the session-effect
//! readers, pgsplit's own readers (hint comments, `SET`/`RESET`/`SHOW pgsplit.*`, startup parameters, LSNs),
//! the classifier and the decoders of Query, Parse, Bind, Describe/Close and startup packets, fed random
//! bytes and random SQL-shaped text with multi-byte and invalid UTF-8. It only asserts that nothing panics and
//! that classification is deterministic; it runs as an ordinary unit test (deterministic seed), so CI runs it.

use super::Classifier;
use crate::protocol::{messages, startup};
use crate::sql;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Pieces that make the lexer and the readers take every branch.
const PIECES: &[&[u8]] = &[
    b"SELECT",
    b"set",
    b"RESET",
    b"discard all",
    b"LISTEN",
    b"prepare",
    b"DECLARE c CURSOR WITH HOLD FOR",
    b"create temp table",
    b"into temporary",
    b"pg_temp.",
    b"BEGIN",
    b"ISOLATION LEVEL",
    b"READ WRITE",
    b"SAVEPOINT",
    b"ROLLBACK TO",
    b"release",
    b"set_config(",
    b"pg_advisory_lock(",
    b"SET ROLE",
    b"TO",
    b"=",
    b"'",
    b"''",
    b"E'\\'",
    b"$$",
    b"$a$",
    b"$1",
    b"\"",
    b"U&\"",
    b"--",
    b"\n",
    b"/*",
    b"*/",
    b";",
    b",",
    b"(",
    b")",
    b".",
    b"-",
    b"1e-",
    b" ",
    "€".as_bytes(),
    "é".as_bytes(),
    b"\xe2\x82",
    b"\xff",
    b"\x80",
    b"\x83\x5c",
    b"\0",
    b"pgsplit:primary",
    b"unlogged",
    b"nextval(",
    b"/* pgsplit:replica */",
    b"SHOW",
    b"LOCAL",
    b"SESSION",
    b"DEFAULT",
    b"pgsplit.",
    b"pgsplit.consistency",
    b"pgsplit.min_lsn",
    b"pgsplit.lsn",
    b"pgsplit.route",
    b"strict",
    b"'0/16B6C50'",
    b"0/16B6C50",
    b"FFFFFFFF/",
    b"/",
    b"pgsplit:",
    b"pgsplit:min_lsn=",
    b"pgsplit:max_lag=",
    b"200ms",
    b"1.5",
    b"min",
    b"U&'",
    b"B'",
];

fn input(rng: &mut Rng) -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..rng.below(24) {
        if rng.below(4) == 0 {
            v.push(rng.next() as u8);
        } else {
            v.extend_from_slice(PIECES[rng.below(PIECES.len())]);
        }
    }
    v
}

#[test]
fn random_client_input_never_panics_and_classifies_deterministically() {
    let classifier = Classifier::new(&[]);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for _ in 0..20_000 {
        let bytes = input(&mut rng);
        let text = String::from_utf8_lossy(&bytes);
        // SQL readers.
        let _ = sql::lexer::statements(&bytes);
        let _ = sql::effects(&bytes);
        let _ = sql::session_events(&bytes);
        let a = classifier.classify(&text);
        assert_eq!(a, classifier.classify(&text), "{text:?}");
        let _ = sql::is_plain_begin(&text);
        let _ = sql::transaction_end(&text);
        let _ = sql::route_setting(&text);
        let _ = sql::leading_hint(&text);
        let (hints, rest) = sql::leading_hints(&text);
        assert_eq!(sql::leading_hint(&text), (hints.route, rest), "{text:?}");
        let _ = sql::pgsplit_command(&text);
        let (name, value) = text.split_once('=').unwrap_or((&text, ""));
        let _ = sql::pgsplit_parameter(name, value);
        if let Some(lsn) = crate::causal::Lsn::parse(&text) {
            assert_eq!(crate::causal::Lsn::parse(&lsn.to_string()), Some(lsn));
        }
        let _ = text.parse::<crate::causal::Consistency>();
        let _ = sql::first_word_is(&text, "set");
        let _ = sql::normalize_literals(&text);
        let _ = sql::is_set_transaction_read_only(&text);
        // Message decoders, on the same bytes as a message body.
        let _ = messages::query_bytes(&bytes);
        let _ = messages::query_text(&bytes);
        let _ = crate::protocol::frontend::ParseView::decode(&bytes);
        let _ = crate::protocol::frontend::BindView::decode(&bytes);
        let _ = crate::protocol::frontend::target(&bytes);
        for tag in *b"QPBDECSHFdcfXp?" {
            let body = bytes::Bytes::copy_from_slice(&bytes);
            let _ =
                crate::protocol::frontend::Decoded::decode(crate::protocol::Frame { tag, body });
        }
        let _ = messages::parameter_status_view(&bytes);
        let _ = messages::error_field(&bytes, b'M');
        // Startup packets: `decode` takes what `check` accepted.
        let mut packet = ((bytes.len() + 8) as u32).to_be_bytes().to_vec();
        packet.extend_from_slice(&[0, 3, 0, 0]);
        packet.extend_from_slice(&bytes);
        if let Ok(Some(len)) = startup::check(&packet) {
            let _ = startup::decode(&packet[..len]);
        }
        let _ = startup::check(&bytes);
    }
}

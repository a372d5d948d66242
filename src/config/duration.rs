//! Durations as the configuration writes them: `"0"`, `"250ms"`, `"5s"`, `"1.5s"`, `"10m"`, `"1h"`, `"1h30m"`.

use std::time::Duration;

/// Parses a duration: `"0"`, `"250ms"`, `"5s"`, `"1.5s"`, `"10m"`, `"1h"`, or a sum such as `"1h30m"`.
/// Units: `ns`, `us`, `ms`, `s`, `m`, `h`. A number without a unit is only accepted when it is zero.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "ns, us, ms, s, m, h";
    let text = s.trim();
    if text.is_empty() {
        return Err(format!(
            "empty duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
        ));
    }
    if text.starts_with('-') {
        return Err(format!("`{text}`: a duration cannot be negative"));
    }
    let bytes = text.as_bytes();
    let mut pos = 0;
    let mut total: u128 = 0;
    while pos < bytes.len() {
        // Number: digits, optionally `.` and more digits.
        let start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_digit() {
            pos += 1;
        }
        let int_part = &text[start..pos];
        let mut frac_part = "";
        if pos < bytes.len() && bytes[pos] == b'.' {
            pos += 1;
            let frac_start = pos;
            while pos < bytes.len() && bytes[pos].is_ascii_digit() {
                pos += 1;
            }
            frac_part = &text[frac_start..pos];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(format!(
                "`{text}` is not a duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
            ));
        }
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        let unit_start = pos;
        while pos < bytes.len() && bytes[pos].is_ascii_alphabetic() {
            pos += 1;
        }
        let unit = &text[unit_start..pos];
        while pos < bytes.len() && bytes[pos] == b' ' {
            pos += 1;
        }
        let nanos_per_unit: u128 = match unit {
            "ns" => 1,
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" if pos < bytes.len() => {
                return Err(format!(
                    "`{text}` is not a duration; write e.g. \"5s\" or \"250ms\" (units: {UNITS})"
                ));
            }
            "" => {
                let is_zero = int_part.chars().chain(frac_part.chars()).all(|c| c == '0');
                if is_zero && start == 0 && pos == bytes.len() {
                    return Ok(Duration::ZERO);
                }
                return Err(format!(
                    "`{text}` has no unit; write e.g. \"{}s\" or \"{}ms\" (units: {UNITS})",
                    &text[start..unit_start].trim_end(),
                    &text[start..unit_start].trim_end()
                ));
            }
            other => return Err(format!("`{text}`: unknown unit `{other}` (units: {UNITS})")),
        };
        let too_large = || format!("`{text}` is too large");
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| too_large())?
        };
        let mut nanos = int.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
        if !frac_part.is_empty() {
            let digits = frac_part.trim_end_matches('0');
            if digits.len() > 30 {
                return Err(format!("`{text}` is more precise than a nanosecond"));
            }
            let frac: u128 = if digits.is_empty() {
                0
            } else {
                digits.parse().map_err(|_| too_large())?
            };
            let scale = 10u128.pow(digits.len() as u32);
            let scaled = frac.checked_mul(nanos_per_unit).ok_or_else(too_large)?;
            if !scaled.is_multiple_of(scale) {
                return Err(format!("`{text}` is more precise than a nanosecond"));
            }
            nanos = nanos.checked_add(scaled / scale).ok_or_else(too_large)?;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
    }
    let secs =
        u64::try_from(total / 1_000_000_000).map_err(|_| format!("`{text}` is too large"))?;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Formats a duration so that [`parse_duration`] reads it back exactly: `"0"`, `"250ms"`, `"90s"`, `"10m"`, `"1h"`.
/// Uses the largest unit that divides the duration exactly.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0".to_string();
    }
    const UNITS: [(&str, u128); 6] = [
        ("h", 3600 * 1_000_000_000),
        ("m", 60 * 1_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    for (unit, size) in UNITS {
        if nanos.is_multiple_of(size) {
            return format!("{}{unit}", nanos / size);
        }
    }
    format!("{nanos}ns")
}

/// Serde adapter: durations as strings.
pub(super) mod opt_duration_serde {
    use serde::{Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => super::duration_serde::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration_serde::deserialize(d).map(Some)
    }
}

pub(super) mod duration_serde {
    use std::time::Duration;

    use serde::{de, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct Visitor;
        impl de::Visitor<'_> for Visitor {
            type Value = Duration;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a duration string such as \"5s\", \"250ms\", \"10m\" or \"0\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                super::parse_duration(v).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                if v == 0 {
                    Ok(Duration::ZERO)
                } else {
                    Err(E::custom(format!(
                        "a duration needs a unit and quotes: write \"{v}s\" or \"{v}ms\""
                    )))
                }
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(i64::try_from(v).unwrap_or(i64::MAX))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_and_round_trip() {
        let cases = [
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("0.0", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
            ("5s", Duration::from_secs(5)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("2m 5s", Duration::from_secs(125)),
            (" 5 s ", Duration::from_secs(5)),
            ("7us", Duration::from_micros(7)),
            ("3ns", Duration::from_nanos(3)),
            ("0.001ms", Duration::from_micros(1)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text), Ok(want), "{text}");
        }
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_micros(1500),
            Duration::from_millis(250),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(600),
            Duration::from_secs(7200),
            Duration::new(3, 7),
            Duration::MAX,
        ] {
            let s = format_duration(d);
            assert_eq!(parse_duration(&s), Ok(d), "{s}");
        }
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(600)), "10m");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::ZERO), "0");
        for (bad, needle) in [
            ("", "empty"),
            ("-5s", "negative"),
            ("5", "no unit"),
            ("5x", "unknown unit `x`"),
            ("abc", "not a duration"),
            ("5s!", "not a duration"),
            ("1.5.2s", "not a duration"),
            ("s", "not a duration"),
            ("0.5ns", "more precise"),
            ("99999999999999999999999999h", "too large"),
            ("999999999999999999999999999999999999999999s", "too large"),
        ] {
            match parse_duration(bad) {
                Ok(d) => panic!("`{bad}` parsed as {d:?}"),
                Err(e) => assert!(e.contains(needle), "`{bad}`: `{e}` lacks `{needle}`"),
            }
        }
    }
}

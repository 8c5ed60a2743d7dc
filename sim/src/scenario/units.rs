//! Value types of scenario files that TOML has no native form for: durations
//! (`"250ms"`, `"12s"`, `"1m30s"`, `"30d"`), signed offsets (`"-2s"`) and
//! spreads (a fixed value, or `{ min = …, max = … }` drawn uniformly).
//!
//! Each deserializer reports what it expected and what it got, so a bad value
//! reads as `file:line:col: field: expected a duration like "250ms" …`.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

/// Units a duration may use, with their length in milliseconds. Ordered so
/// `ms` is tried before `m` when parsing.
const UNITS: [(&str, u64); 5] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)];

/// What a duration looks like, for error messages.
pub const DURATION_HELP: &str =
    "a duration like \"250ms\", \"12s\", \"2m\", \"1h\", \"30d\" or \"1m30s\" (units ms, s, m, h, d)";

/// A non-negative span of simulated time, in milliseconds, written as a
/// string such as `"12s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct DurationMs(pub u64);

/// A signed span of simulated time (a clock offset), written as `"-2s"`,
/// `"+500ms"` or `"3s"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize)]
#[serde(transparent)]
pub struct SignedDurationMs(pub i64);

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not follow the `<number><unit>…` grammar.
    #[error("expected {DURATION_HELP}, got {text:?}")]
    Syntax {
        /// The text given.
        text: String,
    },
    /// The value does not fit in 64 bits of milliseconds.
    #[error("duration {text:?} is too long (at most {max_ms} ms)")]
    TooLong {
        /// The text given.
        text: String,
        /// The largest representable value.
        max_ms: u64,
    },
}

/// Parses `"1m30s"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, DurationError> {
    let syntax = || DurationError::Syntax { text: text.to_owned() };
    let too_long = || DurationError::TooLong { text: text.to_owned(), max_ms: i64::MAX as u64 };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(syntax());
        }
        let (number, after) = rest.split_at(digits);
        let value: u64 = number.parse().map_err(|_| too_long())?;
        let Some((unit, scale)) = UNITS.iter().find(|(u, _)| after.starts_with(u)) else {
            return Err(syntax());
        };
        let part = value.checked_mul(*scale).ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        rest = &after[unit.len()..];
    }
    // Stay within i64 so a duration can always become a signed offset.
    if total > i64::MAX as u64 {
        return Err(too_long());
    }
    Ok(total)
}

/// Parses `"-2s"` / `"+2s"` / `"2s"` into signed milliseconds.
pub fn parse_signed_duration_ms(text: &str) -> Result<i64, DurationError> {
    let t = text.trim();
    let (negative, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let ms = parse_duration_ms(body)
        .map_err(|_| DurationError::Syntax { text: text.to_owned() })
        .and_then(|v| i64::try_from(v).map_err(|_| DurationError::TooLong { text: text.to_owned(), max_ms: v }))?;
    Ok(if negative { -ms } else { ms })
}

/// Formats milliseconds back into the shortest duration string.
pub fn format_duration_ms(ms: u64) -> String {
    if ms == 0 {
        return "0ms".to_owned();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (unit, scale) in UNITS.iter().rev() {
        if rest >= *scale {
            out += &format!("{}{unit}", rest / scale);
            rest %= scale;
        }
    }
    out
}

impl fmt::Display for DurationMs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration_ms(self.0))
    }
}

impl<'de> Deserialize<'de> for DurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationMs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(DURATION_HELP)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationMs, E> {
                parse_duration_ms(v).map(DurationMs).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<DurationMs, E> {
                Err(E::custom(format!("expected {DURATION_HELP}, got the bare number {v} (add a unit)")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<DurationMs, E> {
                Err(E::custom(format!("expected {DURATION_HELP}, got the bare number {v} (add a unit)")))
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for SignedDurationMs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = SignedDurationMs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a signed duration like \"-2s\" or \"+500ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SignedDurationMs, E> {
                parse_signed_duration_ms(v).map(SignedDurationMs).map_err(|_| {
                    E::custom(format!("expected a signed duration like \"-2s\", \"+500ms\" or \"3s\", got {v:?}"))
                })
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SignedDurationMs, E> {
                Err(E::custom(format!("expected a signed duration like \"-2s\", got the bare number {v} (add a unit)")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SignedDurationMs, E> {
                Err(E::custom(format!("expected a signed duration like \"-2s\", got the bare number {v} (add a unit)")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A value that is either fixed (`x = 5`) or drawn uniformly from an
/// inclusive range (`x = { min = 1, max = 9 }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Spread<T> {
    /// Smallest value.
    pub min: T,
    /// Largest value.
    pub max: T,
}

impl<T: Copy> Spread<T> {
    /// Always `v`.
    pub fn fixed(v: T) -> Self {
        Spread { min: v, max: v }
    }
}

impl<'de, T: Deserialize<'de> + Copy> Deserialize<'de> for Spread<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + Copy> Visitor<'de> for V<T> {
            type Value = Spread<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value, or a table { min = …, max = … }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Spread<T>, E> {
                T::deserialize(de::value::StrDeserializer::<E>::new(v)).map(Spread::fixed)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Spread<T>, E> {
                T::deserialize(de::value::U64Deserializer::<E>::new(v)).map(Spread::fixed)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Spread<T>, E> {
                T::deserialize(de::value::I64Deserializer::<E>::new(v)).map(Spread::fixed)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Spread<T>, E> {
                T::deserialize(de::value::F64Deserializer::<E>::new(v)).map(Spread::fixed)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Spread<T>, A::Error> {
                let mut min = None;
                let mut max = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "min" if min.is_none() => min = Some(map.next_value::<T>()?),
                        "max" if max.is_none() => max = Some(map.next_value::<T>()?),
                        "min" | "max" => return Err(de::Error::duplicate_field("min/max")),
                        other => return Err(de::Error::unknown_field(other, &["min", "max"])),
                    }
                }
                match (min, max) {
                    (Some(min), Some(max)) => Ok(Spread { min, max }),
                    (None, _) => Err(de::Error::missing_field("min")),
                    (_, None) => Err(de::Error::missing_field("max")),
                }
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_every_unit_and_compositions() {
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert_eq!(parse_duration_ms("12s"), Ok(12_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert_eq!(parse_duration_ms("30d"), Ok(30 * 86_400_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1m5ms"), Ok(60_005));
        assert_eq!(parse_duration_ms("0ms"), Ok(0));
    }

    #[test]
    fn durations_refuse_missing_units_signs_and_overflow() {
        for bad in ["", "12", "s", "12 s", "1.5s", "-1s", "12sec", "1y", "99999999999999999999ms"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(matches!(parse_duration_ms("200000000000000d"), Err(DurationError::TooLong { .. })));
    }

    #[test]
    fn signed_durations_take_a_sign() {
        assert_eq!(parse_signed_duration_ms("-2s"), Ok(-2_000));
        assert_eq!(parse_signed_duration_ms("+500ms"), Ok(500));
        assert_eq!(parse_signed_duration_ms("3s"), Ok(3_000));
        assert!(parse_signed_duration_ms("--3s").is_err());
    }

    #[test]
    fn formatting_round_trips() {
        for ms in [0, 1, 999, 1_000, 61_001, 90_000, 86_400_000 * 30 + 5] {
            assert_eq!(parse_duration_ms(&format_duration_ms(ms)), Ok(ms));
        }
        assert_eq!(format_duration_ms(90_000), "1m30s");
    }
}

//! Units written as text in the config and on the command line: byte sizes
//! (`"64MiB"`) and durations (`"250ms"`).

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A size in bytes, written as an integer or as text with a unit
/// (`B`, `KiB`, `MiB`, `GiB`; `K`/`KB` etc. mean the same binary units).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(ByteSize(n)),
            Raw::Text(t) => parse_bytes(&t)
                .map(ByteSize)
                .map_err(serde::de::Error::custom),
        }
    }
}

/// Parses a byte size such as `64MiB`, `512 KiB` or `1048576`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {text:?}: unknown unit {other:?} (use B, KiB, MiB or GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {text:?}: too large"))
}

/// The longest duration any setting accepts. Nothing in hookgate means
/// anything beyond it (retention and idempotency windows are days), and a
/// value far past it would overflow the clock arithmetic it feeds
/// (`Instant + deadline`), so it is refused as the typo it is. Ten years
/// as humantime counts them (365.25 days each): `"10years"` is accepted.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 31_557_600);

/// Parses a duration such as `250ms`, `2s` or `1h 30m`, at most
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration =
        humantime::parse_duration(text).map_err(|e| format!("invalid duration {text:?}: {e}"))?;
    if duration > MAX_DURATION {
        return Err(format!(
            "invalid duration {text:?}: longer than the {} any setting allows",
            humantime::format_duration(MAX_DURATION)
        ));
    }
    Ok(duration)
}

/// A duration setting, written as text (`"250ms"`): for
/// `#[serde(deserialize_with = "duration")]`.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Text;
    impl serde::de::Visitor<'_> for Text {
        type Value = Duration;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration such as \"250ms\", \"30s\" or \"1h 30m\"")
        }
        fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
    }
    d.deserialize_str(Text)
}

/// [`duration`] for an optional setting.
pub fn optional_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("2G"), Ok(2 << 30));
        assert!(parse_bytes("12 parsecs").is_err_and(|e| e.contains("\"parsecs\"")));
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("99999999999GiB").is_err_and(|e| e.contains("too large")));
    }

    #[test]
    fn durations_past_the_ceiling_are_refused_before_they_reach_a_clock() {
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10years"), Ok(MAX_DURATION));
        for typo in ["3653days", "500000000000years"] {
            let err = parse_duration(typo).expect_err(typo);
            assert!(err.contains(typo) && err.contains("10years"), "{err}");
        }
    }
}

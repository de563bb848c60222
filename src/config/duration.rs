//! Durations in config: `250ms`, `5s`, `1m`, or a bare number in the unit Kong uses for that key:
//! milliseconds for timeouts (`60000`, [`deserialize`]), seconds for leeways, TTLs and intervals
//! (`60`, `0.5`, [`deserialize_secs`]).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};

/// What every duration field accepts, quoted in every duration error.
const EXPECTED: &str = "a duration like `5s`, `250ms` or milliseconds as an integer";

/// A duration that is neither a humantime string nor an integer number of milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{0}`: expected {EXPECTED}")]
pub struct InvalidDuration(pub String);

/// Parses a config duration: a [`humantime`] string (`250ms`, `5s`, `1m`, `1h 30m`) or a string
/// of digits taken as milliseconds, as Kong writes its timeouts (`60000`).
///
/// ```
/// use std::time::Duration;
/// use portcullis::config::parse_duration;
///
/// assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
/// assert_eq!(parse_duration("60000").unwrap(), Duration::from_secs(60));
/// assert!(parse_duration("soon").is_err());
/// ```
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let trimmed = text.trim();
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| InvalidDuration(text.to_owned()));
    }
    humantime::parse_duration(trimmed).map_err(|_| InvalidDuration(text.to_owned()))
}

/// `deserialize_with` for a required (or defaulted) duration field.
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(DurationVisitor)
}

/// `deserialize_with` for an optional duration field; `~` (null) means unset.
pub(crate) fn deserialize_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_option(OptionalDurationVisitor)
}

/// `deserialize_with` for a duration whose bare numbers are seconds, as Kong writes `leeway`,
/// `maximum_expiration` and cache TTLs: `60`, `0.5`, `"60"`, or a duration (`60s`, `500ms`).
pub(crate) fn deserialize_secs<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    deserializer.deserialize_any(SecondsVisitor)
}

/// [`deserialize_secs`] for an optional field; `~` (null) means unset.
pub(crate) fn deserialize_secs_option<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserializer.deserialize_option(OptionalSecondsVisitor)
}

/// What every seconds-flavoured duration field accepts.
const EXPECTED_SECS: &str = "a duration like `60s`, `500ms` or seconds as a number";

/// A number of seconds, or a duration string, that is not a valid duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{0}`: expected {EXPECTED_SECS}")]
pub(crate) struct InvalidSeconds(pub(crate) String);

/// Parses a seconds-flavoured duration: a number of seconds (`60`, `0.5`) or a [`humantime`]
/// string (`60s`, `500ms`).
pub(crate) fn parse_secs(text: &str) -> Result<Duration, InvalidSeconds> {
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| InvalidSeconds(text.to_owned()));
    }
    humantime::parse_duration(trimmed).map_err(|_| InvalidSeconds(text.to_owned()))
}

struct SecondsVisitor;

impl<'de> Visitor<'de> for SecondsVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_SECS)
    }

    fn visit_u64<E: de::Error>(self, secs: u64) -> Result<Duration, E> {
        Ok(Duration::from_secs(secs))
    }

    fn visit_i64<E: de::Error>(self, secs: i64) -> Result<Duration, E> {
        u64::try_from(secs).map(Duration::from_secs).map_err(|_| E::custom(InvalidSeconds(secs.to_string())))
    }

    fn visit_f64<E: de::Error>(self, secs: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(secs).map_err(|_| E::custom(InvalidSeconds(format!("{secs:?}"))))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_secs(text).map_err(E::custom)
    }
}

struct OptionalSecondsVisitor;

impl<'de> Visitor<'de> for OptionalSecondsVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED_SECS)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserialize_secs(deserializer).map(Some)
    }
}

struct DurationVisitor;

impl<'de> Visitor<'de> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_u64<E: de::Error>(self, ms: u64) -> Result<Duration, E> {
        Ok(Duration::from_millis(ms))
    }

    fn visit_i64<E: de::Error>(self, ms: i64) -> Result<Duration, E> {
        u64::try_from(ms).map(Duration::from_millis).map_err(|_| E::custom(InvalidDuration(ms.to_string())))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        parse_duration(text).map_err(E::custom)
    }
}

struct OptionalDurationVisitor;

impl<'de> Visitor<'de> for OptionalDurationVisitor {
    type Value = Option<Duration>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECTED)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserialize(deserializer).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humantime_strings_and_millisecond_integers() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("1h 30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("60000").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn seconds_flavoured_numbers_and_durations() {
        for (text, expected) in [
            ("60", Duration::from_secs(60)),
            ("0.5", Duration::from_millis(500)),
            ("60s", Duration::from_secs(60)),
            ("500ms", Duration::from_millis(500)),
            ("1m", Duration::from_secs(60)),
        ] {
            assert_eq!(parse_secs(text), Ok(expected), "{text}");
        }
        for bad in ["", "soon", "-1", "NaN", "inf", "1e300", "-5s"] {
            let err = parse_secs(bad).unwrap_err().to_string();
            assert!(err.contains("expected a duration like `60s`, `500ms` or seconds as a number"), "{err}");
        }
    }

    #[test]
    fn garbage_names_the_expected_forms() {
        for bad in ["", "soon", "5 parsecs", "-5s", "1.5"] {
            let err = parse_duration(bad).unwrap_err().to_string();
            assert!(err.contains("expected a duration like `5s`, `250ms` or milliseconds"), "{err}");
        }
    }
}

//! Durations as the policy writes them: `250ms`, `30s`, `5m`, `1h`.
//!
//! Owns parsing and printing of duration strings. Never accepts a bare number:
//! a unit is always required so that `30` can't silently mean 30 ms.

use std::fmt;

/// A non-negative duration with millisecond resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Millis(pub u64);

impl Millis {
    pub const ZERO: Millis = Millis(0);

    pub fn as_ms(self) -> u64 {
        self.0
    }

    pub fn saturating_sub(self, other: Millis) -> Millis {
        Millis(self.0.saturating_sub(other.0))
    }
}

/// Why a duration string was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DurationError {
    Empty,
    MissingUnit(String),
    UnknownUnit(String),
    NotANumber(String),
    TooLarge(String),
}

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HINT: &str = "write a whole number followed by ms, s, m or h, e.g. \"30s\"";
        match self {
            DurationError::Empty => write!(f, "empty duration; {HINT}"),
            DurationError::MissingUnit(s) => write!(f, "duration \"{s}\" has no unit; {HINT}"),
            DurationError::UnknownUnit(s) => {
                write!(f, "duration \"{s}\" has an unknown unit; {HINT}")
            }
            DurationError::NotANumber(s) => write!(f, "duration \"{s}\" is not a number; {HINT}"),
            DurationError::TooLarge(s) => write!(f, "duration \"{s}\" is too large"),
        }
    }
}

impl std::error::Error for DurationError {}

/// Parses `250ms`, `30s`, `5m`, `1h` (whole numbers only).
pub fn parse_duration(text: &str) -> Result<Millis, DurationError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(DurationError::Empty);
    }
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| DurationError::MissingUnit(text.to_string()))?;
    let (digits, unit) = trimmed.split_at(split);
    if digits.is_empty() {
        return Err(DurationError::NotANumber(text.to_string()));
    }
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(DurationError::UnknownUnit(text.to_string())),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| DurationError::TooLarge(text.to_string()))?;
    value
        .checked_mul(factor)
        .map(Millis)
        .ok_or_else(|| DurationError::TooLarge(text.to_string()))
}

impl fmt::Display for Millis {
    /// Prints whole seconds as `65s`, anything else as `1500ms`: one unit, so
    /// values in one message compare at a glance.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0;
        if ms % 1_000 == 0 {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Millis(30_000)));
        assert_eq!(parse_duration("5m"), Ok(Millis(300_000)));
        assert_eq!(parse_duration("1h"), Ok(Millis(3_600_000)));
        assert_eq!(parse_duration("0s"), Ok(Millis(0)));
    }

    #[test]
    fn refuses_bare_numbers_and_unknown_units() {
        assert!(matches!(
            parse_duration("30"),
            Err(DurationError::MissingUnit(_))
        ));
        assert!(matches!(
            parse_duration("30sec"),
            Err(DurationError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_duration("1.5s"),
            Err(DurationError::UnknownUnit(_))
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(
            parse_duration("s"),
            Err(DurationError::NotANumber(_))
        ));
        assert!(matches!(parse_duration(""), Err(DurationError::Empty)));
    }

    #[test]
    fn refuses_overflow() {
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::TooLarge(_))
        ));
        assert!(matches!(
            parse_duration("18446744073709551615h"),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn error_message_says_how_to_fix() {
        let message = parse_duration("30").unwrap_err().to_string();
        assert!(message.contains("e.g. \"30s\""), "{message}");
    }

    #[test]
    fn displays_seconds_or_milliseconds() {
        assert_eq!(Millis(3_600_000).to_string(), "3600s");
        assert_eq!(Millis(65_000).to_string(), "65s");
        assert_eq!(Millis(1_500).to_string(), "1500ms");
        assert_eq!(Millis(0).to_string(), "0s");
    }
}

//! Times on the wire: RFC 3339 strings or epoch milliseconds in, RFC 3339 UTC out.

use chrono::{DateTime, SecondsFormat};

use crate::receipts::Millis;

/// Parses an RFC 3339 timestamp (any offset) to epoch milliseconds.
pub fn parse_time_str(s: &str) -> Option<Millis> {
    DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision.
pub fn format_millis(ms: Millis) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::Millis, true),
        // Out of chrono's range (about ±262,000 years): keep the number rather than fail.
        None => ms.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_with_offsets_and_fractions() {
        assert_eq!(parse_time_str("1970-01-01T00:00:01Z"), Some(1000));
        assert_eq!(parse_time_str("1970-01-01T01:00:01.5+01:00"), Some(1500));
        assert_eq!(parse_time_str("yesterday"), None);
        assert_eq!(format_millis(1500), "1970-01-01T00:00:01.500Z");
        assert_eq!(parse_time_str(&format_millis(1_764_300_000_123)), Some(1_764_300_000_123));
    }
}

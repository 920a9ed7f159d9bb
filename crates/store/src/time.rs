//! Time conversions between the integers stored in the database and wall-clock times; the
//! RFC 3339 formatting itself is `nubo_core::rfc3339`.

use std::time::{SystemTime, UNIX_EPOCH};

pub use nubo_core::rfc3339 as format_rfc3339;
pub(crate) use nubo_core::{from_millis, to_millis};

/// Signed microseconds since the Unix epoch.
pub(crate) fn to_micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Formats microseconds since the epoch as RFC 3339 with milliseconds.
pub(crate) fn format_micros(us: i64) -> String {
    nubo_core::rfc3339_millis(us.div_euclid(1000))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_truncate_to_millis() {
        assert_eq!(format_micros(1_999), "1970-01-01T00:00:00.001Z");
        assert_eq!(to_micros(from_millis(5)), 5_000);
        assert_eq!(to_millis(from_millis(-5)), -5);
    }
}

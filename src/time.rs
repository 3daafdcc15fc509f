//! Dates and times as text, in one place and on chrono (which DataFusion compiles in anyway): the
//! RFC 3339 / FHIR `instant` form of manifests, `transactionTime` and `meta.lastUpdated`
//! (`2024-01-31T12:00:00.000Z`, UTC, milliseconds), and for the demo its parsing and the
//! Synthea-style local dates of the generator. Times are milliseconds since the Unix epoch (UTC)
//! or [`SystemTime`]s.
//!
//! HTTP-dates (`Retry-After`, `Expires`) are the `httpdate` crate's job, not this module's.
//! Durations as people write them on a command line or in a config file: [`parse_duration`].

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, SecondsFormat, Utc};

/// A duration as people write it: a whole number with the unit `ms`, `s`, `m`, `h` or `d`, or
/// none for seconds (`250ms`, `90s`, `15m`, `1h`, `7d`, `30`); `None` for anything else.
///
/// ```
/// use std::time::Duration;
/// use fhirflight::time::parse_duration;
/// assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
/// assert_eq!(parse_duration(" 250MS "), Some(Duration::from_millis(250)));
/// assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
/// assert_eq!(parse_duration("1.5h"), None);
/// ```
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim().to_ascii_lowercase();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let millis: u64 = match unit {
        "" => 1000,
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    let n: u64 = number.parse().ok()?;
    Some(Duration::from_millis(n.checked_mul(millis)?))
}

/// The date-time `ms` milliseconds after the Unix epoch, clamped to what chrono can hold
/// (±262,000 years).
fn utc(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(if ms < 0 {
        DateTime::<Utc>::MIN_UTC
    } else {
        DateTime::<Utc>::MAX_UTC
    })
}

/// `ms` milliseconds after the Unix epoch as RFC 3339 in UTC with milliseconds
/// (`2024-05-06T07:08:09.010Z`).
pub(crate) fn format_instant(ms: i64) -> String {
    utc(ms).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `time` as RFC 3339 in UTC with milliseconds (`2024-01-31T12:00:00.000Z`); times before the
/// Unix epoch as the epoch.
pub fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    format_instant(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch, now.
#[cfg(feature = "demo")]
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Parses a FHIR `instant`: `YYYY-MM-DDThh:mm:ss[.fff]` followed by `Z` or `+hh:mm`/`-hh:mm`,
/// to milliseconds since the Unix epoch (digits of the fraction beyond milliseconds are
/// dropped; a leap second `:60` counts as the next second). `None` for anything else, including
/// a date the calendar does not have (`2023-02-29`).
#[cfg(feature = "demo")]
pub(crate) fn parse_instant(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = text.get(from..from + len)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (h, mi, s) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if b.get(i) == Some(&b'.') {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &text[i + 1..i + 1 + digits.min(3)];
        millis = frac.parse::<i64>().ok()? * 10_i64.pow(3 - frac.len() as u32);
        i += 1 + digits;
    }
    let offset_min = match &text[i..] {
        "Z" => 0,
        tz if tz.len() == 6 && (tz.starts_with('+') || tz.starts_with('-')) && &tz[3..4] == ":" => {
            let minutes = num(i + 1, 2)? * 60 + num(i + 4, 2)?;
            if tz.starts_with('-') {
                -minutes
            } else {
                minutes
            }
        }
        _ => return None,
    };
    let date = chrono::NaiveDate::from_ymd_opt(y as i32, mo as u32, d as u32)?;
    let midnight = date
        .and_time(chrono::NaiveTime::MIN)
        .and_utc()
        .timestamp_millis();
    Some(midnight + ((h * 60 + mi - offset_min) * 60 + s) * 1000 + millis)
}

/// `ms` milliseconds after the Unix epoch as a local date-time to the second, at
/// `offset_secs` east of UTC (`1985-06-18T17:30:49-05:00` for `-5 * 3600`).
#[cfg(feature = "demo")]
pub(crate) fn format_local_date_time(ms: i64, offset_secs: i32) -> String {
    utc(ms)
        .with_timezone(&offset(offset_secs))
        .format("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

/// The local date (`1985-06-18`) of `ms` milliseconds after the Unix epoch, at `offset_secs`
/// east of UTC.
#[cfg(feature = "demo")]
pub(crate) fn format_local_date(ms: i64, offset_secs: i32) -> String {
    utc(ms)
        .with_timezone(&offset(offset_secs))
        .format("%Y-%m-%d")
        .to_string()
}

/// The fixed offset `secs` east of UTC (UTC itself when out of range, a day or more).
#[cfg(feature = "demo")]
fn offset(secs: i32) -> chrono::FixedOffset {
    chrono::FixedOffset::east_opt(secs).unwrap_or_else(|| chrono::Offset::fix(&Utc))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789); // leap day 2024
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.789Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000Z"
        );
        assert_eq!(format_instant(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            format_instant(253_402_300_799_999),
            "9999-12-31T23:59:59.999Z"
        );
    }

    #[cfg(feature = "demo")]
    #[test]
    fn round_trip_and_offsets() {
        let ms = parse_instant("2024-02-29T23:59:58.5Z").unwrap();
        assert_eq!(format_instant(ms), "2024-02-29T23:59:58.500Z");
        assert_eq!(parse_instant("2024-03-01T01:59:58.500+02:00"), Some(ms));
        assert_eq!(parse_instant("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(format_instant(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            parse_instant("2016-12-31T23:59:60Z"),
            parse_instant("2017-01-01T00:00:00Z")
        );
        for bad in [
            "2024-01-01",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2023-02-29T00:00:00Z",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad}");
        }
    }

    /// The generator's local dates, before the epoch too (a patient born in 1930).
    #[cfg(feature = "demo")]
    #[test]
    fn local_dates_at_an_offset() {
        let ms = parse_instant("1985-06-18T22:30:49.999Z").unwrap();
        assert_eq!(
            format_local_date_time(ms, -5 * 3600),
            "1985-06-18T17:30:49-05:00"
        );
        assert_eq!(format_local_date(ms, -5 * 3600), "1985-06-18");
        let early = parse_instant("1930-01-01T03:00:00.500Z").unwrap();
        assert_eq!(
            format_local_date_time(early, -5 * 3600),
            "1929-12-31T22:00:00-05:00"
        );
        assert_eq!(format_local_date(early, -5 * 3600), "1929-12-31");
    }
}

//! Byte sizes as people write them on a command line or in a config file: [`parse_size`], and
//! as errors show them: [`display`], and as listings round them: [`display_rounded`].

/// The binary units, largest first: (power of two, name).
const UNITS: [(u32, &str); 4] = [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")];

/// Parses a size: a whole number of bytes with an optional unit `K`, `M`, `G` or `T` (powers
/// of 1024; `KiB`, `KB` and lower case mean the same) or `bytes`, spaces allowed before the
/// unit. `None`
/// for anything else or a size beyond `u64`.
///
/// ```
/// use fhirflight::size::parse_size;
/// assert_eq!(parse_size("512M"), Some(512 << 20));
/// assert_eq!(parse_size("64 MiB"), Some(64 << 20));
/// assert_eq!(parse_size("4096"), Some(4096));
/// assert_eq!(parse_size("2.5G"), None);
/// ```
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_uppercase();
    let number = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[number.len()..];
    let prefix = match unit {
        "BYTES" => "",
        _ => unit
            .strip_suffix("IB")
            .or_else(|| unit.strip_suffix('B'))
            .unwrap_or(unit),
    };
    let shift = match prefix {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return None,
    };
    let number = number.trim();
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    number.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `bytes` in the largest unit that divides it (`64 MiB`, `1500 bytes`), as [`parse_size`]
/// reads it back.
///
/// ```
/// assert_eq!(fhirflight::size::display(64 << 20), "64 MiB");
/// assert_eq!(fhirflight::size::display(1500), "1500 bytes");
/// ```
pub fn display(bytes: u64) -> String {
    UNITS
        .iter()
        .find(|(shift, _)| bytes != 0 && bytes.is_multiple_of(1 << shift))
        .map_or_else(
            || format!("{bytes} bytes"),
            |(shift, unit)| format!("{} {unit}", bytes >> shift),
        )
}

/// `bytes` rounded to one decimal in the largest binary unit not above it, for listings
/// (`1.5 KiB`, `12.0 MiB`, `900 bytes`).
///
/// ```
/// assert_eq!(fhirflight::size::display_rounded(1536), "1.5 KiB");
/// assert_eq!(fhirflight::size::display_rounded(900), "900 bytes");
/// ```
pub fn display_rounded(bytes: u64) -> String {
    match UNITS.iter().find(|(shift, _)| bytes >= 1 << shift) {
        Some((shift, unit)) => format!("{:.1} {unit}", bytes as f64 / (1u64 << shift) as f64),
        None => format!("{bytes} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print_back() {
        for (text, bytes) in [
            ("1k", Some(1024)),
            ("3KB", Some(3 << 10)),
            ("7 g", Some(7 << 30)),
            ("1T", Some(1 << 40)),
            ("0", Some(0)),
            ("", None),
            ("M", None),
            ("-1M", None),
            ("1 X", None),
            ("1MBB", None),
            ("99999999999999999999", None),
            ("16777216T", None),
        ] {
            assert_eq!(parse_size(text), bytes, "{text:?}");
        }
        for bytes in [0, 1, 1023, 1024, 5 << 20, (3 << 30) + 1] {
            assert_eq!(parse_size(&display(bytes)), Some(bytes));
        }
    }
}

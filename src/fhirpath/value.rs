//! FHIRPath's own value types: dates, dateTimes and times with partial precision, and Quantities
//! with the UCUM units common in clinical data.

use std::cmp::Ordering;
use std::fmt;

/// Which of FHIRPath's temporal types a [`Temporal`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemporalKind {
    /// `@2014-01-25`
    Date,
    /// `@2014-01-25T14:30:14.559+01:00`
    DateTime,
    /// `@T14:30`
    Time,
}

/// A date, dateTime or time, precise to some component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    /// The type.
    pub kind: TemporalKind,
    /// year, month, day, hour, minute, second, millisecond (unset components are 0, months and days 1).
    parts: [i32; 7],
    /// How many of `parts` are given: 1 (year) to 7 (milliseconds); for a time 4 (hour) to 7.
    precision: u8,
    /// The offset from UTC in minutes, when written.
    tz: Option<i32>,
}

const YEAR: u8 = 1;
const DAY: u8 = 3;
const HOUR: u8 = 4;
const SECOND: u8 = 6;
const MILLI: u8 = 7;

impl Temporal {
    /// Reads a date, dateTime (with `T`) or time (with `time` true, without the leading `T`).
    pub fn parse(text: &str, time: bool) -> Option<Temporal> {
        let mut parts = [0, 1, 1, 0, 0, 0, 0];
        let (mut precision, mut rest, kind) = if time {
            (HOUR - 1, text, TemporalKind::Time)
        } else {
            let (date, rest, kind) = match text.split_once('T') {
                Some((d, r)) => (d, r, TemporalKind::DateTime),
                None => (text, "", TemporalKind::Date),
            };
            let mut n = 0;
            for (i, field) in date.split('-').enumerate() {
                let width = if i == 0 { 4 } else { 2 };
                if i > 2 || field.len() != width || !field.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                parts[i] = field.parse().ok()?;
                n = i as u8 + 1;
            }
            (n, rest, kind)
        };
        if !(1..=12).contains(&parts[1]) || parts[2] < 1 || parts[2] > days_in(parts[0], parts[1]) {
            return None;
        }
        let mut tz = None;
        if !rest.is_empty() || (time && text.is_empty()) {
            if kind == TemporalKind::Date || precision < DAY && !time {
                return None;
            }
            if let Some(at) = rest.find(['Z', '+', '-']) {
                if time {
                    return None;
                }
                tz = Some(offset(&rest[at..])?);
                rest = &rest[..at];
            }
            let (hms, frac) = match rest.split_once('.') {
                Some((hms, frac)) => (hms, Some(frac)),
                None => (rest, None),
            };
            for (i, field) in hms.split(':').enumerate().filter(|_| !hms.is_empty()) {
                if i > 2 || field.len() != 2 || !field.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                parts[3 + i] = field.parse().ok()?;
                precision = HOUR + i as u8;
            }
            if let Some(frac) = frac {
                if precision != SECOND
                    || frac.is_empty()
                    || !frac.bytes().all(|b| b.is_ascii_digit())
                {
                    return None;
                }
                let ms: String = frac.chars().chain("00".chars()).take(3).collect();
                parts[6] = ms.parse().ok()?;
                precision = MILLI;
            }
            if parts[3] > 23 || parts[4] > 59 || parts[5] > 59 || (time && precision < HOUR) {
                return None;
            }
        }
        Some(Temporal {
            kind,
            parts,
            precision,
            tz,
        })
    }

    /// A dateTime from its components: `parts` year, month, day, hour, minute, second,
    /// millisecond; `precision` how many are given, 1 (year) to 7.
    pub fn date_time(parts: [i32; 7], precision: u8, tz: Option<i32>) -> Temporal {
        Temporal {
            kind: TemporalKind::DateTime,
            parts,
            precision,
            tz,
        }
    }

    /// The same value as another kind (a Date read as a DateTime, a DateTime cut to its date).
    pub fn with_kind(self, kind: TemporalKind) -> Temporal {
        let precision = match kind {
            TemporalKind::Date => self.precision.min(DAY),
            _ => self.precision,
        };
        Temporal {
            kind,
            precision,
            tz: if kind == TemporalKind::Date {
                None
            } else {
                self.tz
            },
            ..self
        }
    }

    /// The precision as a count of components (year 1 ... millisecond 7; a time's hour is 4).
    pub fn precision(&self) -> u8 {
        self.precision
    }

    /// The number of digits FHIRPath's `precision()` reports (`2014` 4, `2014-01` 6, `T10:30` 4).
    pub fn digits(&self) -> i64 {
        let date = [0, 4, 6, 8, 10, 12, 14, 17][usize::from(self.precision)];
        match self.kind {
            TemporalKind::Time => date - 8,
            _ => date,
        }
    }

    /// Milliseconds since 0000-01-01T00:00Z of the earliest instant of the value (UTC when an
    /// offset is written, else as written), for comparison and arithmetic.
    fn millis(&self) -> i64 {
        let [y, mo, d, h, mi, s, ms] = self.parts.map(i64::from);
        let days = match self.kind {
            TemporalKind::Time => 0,
            _ => days_from_civil(y, mo, d),
        };
        let tz = i64::from(self.tz.unwrap_or(0));
        (((days * 24 + h) * 60 + mi - tz) * 60 + s) * 1000 + ms
    }

    /// The values ordered, or `None` when the precisions differ and the common components are
    /// equal (FHIRPath: the result is then unknown). Seconds and milliseconds count as one precision.
    pub fn compare(&self, other: &Temporal) -> Option<Ordering> {
        let norm = |p: u8| if p == MILLI { SECOND } else { p };
        let common = norm(self.precision).min(norm(other.precision));
        if self.tz.is_some() != other.tz.is_some() && common > DAY {
            // One side without an offset: its instant is unknown.
            return None;
        }
        let (a, b) = (*self, *other);
        let cut = |t: &Temporal| -> i64 {
            if common >= SECOND {
                return t.millis();
            }
            let mut c = *t;
            if common > DAY {
                // Shift to UTC before truncating, so offsets compare as instants.
                let m = t.millis();
                c = Temporal::from_millis(m, t.kind, None, MILLI);
            }
            let p = usize::from(common);
            for (i, v) in c.parts.iter_mut().enumerate().skip(p) {
                *v = if i == 1 || i == 2 { 1 } else { 0 };
            }
            c.tz = None;
            c.millis()
        };
        match cut(&a).cmp(&cut(&b)) {
            Ordering::Equal if norm(self.precision) != norm(other.precision) => None,
            Ordering::Equal if self.precision != other.precision => {
                Some(a.millis().cmp(&b.millis()))
            }
            ord => Some(ord),
        }
    }

    fn strip_tz(self) -> Temporal {
        Temporal { tz: None, ..self }
    }

    /// Whether both have the same precision, seconds and milliseconds counting as one (`~`).
    pub fn same_precision(&self, other: &Temporal) -> bool {
        let norm = |p: u8| if p == MILLI { SECOND } else { p };
        norm(self.precision) == norm(other.precision)
    }

    fn from_millis(m: i64, kind: TemporalKind, tz: Option<i32>, precision: u8) -> Temporal {
        let m = m + i64::from(tz.unwrap_or(0)) * 60_000;
        let (days, rest) = (m.div_euclid(86_400_000), m.rem_euclid(86_400_000));
        let (y, mo, d) = civil_from_days(days);
        let parts = [
            y as i32,
            mo as i32,
            d as i32,
            (rest / 3_600_000) as i32,
            (rest / 60_000 % 60) as i32,
            (rest / 1000 % 60) as i32,
            (rest % 1000) as i32,
        ];
        Temporal {
            kind,
            parts,
            precision,
            tz,
        }
    }

    /// Adds `amount` of a calendar `unit` (`year` ... `millisecond`); years and months keep the day
    /// (clamped to the month's end). `None` when the unit is finer than a date can hold or the year
    /// leaves 1..=9999.
    pub fn add(&self, amount: f64, unit: CalendarUnit) -> Option<Temporal> {
        let mut t = *self;
        let whole = amount.trunc() as i64;
        match unit {
            CalendarUnit::Year | CalendarUnit::Month => {
                if self.kind == TemporalKind::Time {
                    return None;
                }
                let months = match unit {
                    CalendarUnit::Year => whole.checked_mul(12)?,
                    _ => whole,
                };
                let total =
                    (i64::from(t.parts[0]) * 12 + i64::from(t.parts[1] - 1)).checked_add(months)?;
                t.parts[0] = i32::try_from(total.div_euclid(12)).ok()?;
                t.parts[1] = total.rem_euclid(12) as i32 + 1;
                t.parts[2] = t.parts[2].min(days_in(t.parts[0], t.parts[1]));
            }
            _ => {
                let ms = unit.millis()?;
                // A value only as precise as `unit` moves by whole units of its own precision.
                let step = match self.precision {
                    p if p <= DAY && self.kind != TemporalKind::Time => 86_400_000,
                    HOUR => 3_600_000,
                    5 => 60_000,
                    SECOND => 1000,
                    _ => 1,
                };
                // Above seconds the decimal part of the amount is ignored (FHIRPath 6.6.1).
                let amount = if ms > 1000 { amount.trunc() } else { amount };
                let delta = (amount * ms as f64) as i64;
                let delta = delta / step * step;
                if self.kind != TemporalKind::Time && self.precision < DAY {
                    if self.precision == YEAR {
                        return t.add((delta / 86_400_000 / 365) as f64, CalendarUnit::Year);
                    }
                    return t.add((delta / 86_400_000 / 30) as f64, CalendarUnit::Month);
                }
                let m = self.strip_tz().millis().checked_add(delta)?;
                let m = match self.kind {
                    TemporalKind::Time => m.rem_euclid(86_400_000),
                    _ => m,
                };
                t = Temporal::from_millis(m, self.kind, None, self.precision);
                t.tz = self.tz;
            }
        }
        (1..=9999).contains(&t.parts[0]).then_some(t)
    }

    /// The earliest (`high` false) or latest value within the precision, to `precision` components
    /// (`lowBoundary`/`highBoundary`); an unwritten offset becomes +14:00 / -12:00 for a dateTime.
    pub fn boundary(&self, high: bool, precision: u8) -> Temporal {
        let mut t = *self;
        let fill = |i: usize, y: i32, m: i32| -> i32 {
            match (i, high) {
                (1, false) | (2, false) => 1,
                (1, true) => 12,
                (2, true) => days_in(y, m),
                (3, true) => 23,
                (4, true) | (5, true) => 59,
                (6, true) => 999,
                _ => 0,
            }
        };
        for i in usize::from(self.precision)..7 {
            t.parts[i] = fill(i, t.parts[0], t.parts[1]);
        }
        t.precision = precision;
        if self.kind == TemporalKind::DateTime && self.tz.is_none() && precision > DAY {
            t.tz = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        t
    }
}

impl fmt::Display for Temporal {
    /// The FHIRPath text without `@` (a time without `T`), to its precision, with its offset.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.precision;
        let [y, mo, d, h, mi, s, ms] = self.parts;
        if self.kind != TemporalKind::Time {
            write!(f, "{y:04}")?;
            if p >= 2 {
                write!(f, "-{mo:02}")?;
            }
            if p >= DAY {
                write!(f, "-{d:02}")?;
            }
            if self.kind == TemporalKind::Date {
                return Ok(());
            }
            if p > DAY {
                f.write_str("T")?;
            }
        }
        if p >= HOUR {
            write!(f, "{h:02}")?;
        }
        if p >= 5 {
            write!(f, ":{mi:02}")?;
        }
        if p >= SECOND {
            write!(f, ":{s:02}")?;
        }
        if p >= MILLI {
            write!(f, ".{ms:03}")?;
        }
        match self.tz {
            Some(0) => f.write_str("Z"),
            Some(tz) => {
                let sign = if tz < 0 { '-' } else { '+' };
                write!(f, "{sign}{:02}:{:02}", tz.abs() / 60, tz.abs() % 60)
            }
            None => Ok(()),
        }
    }
}

/// `Z`, `+hh:mm` or `-hh:mm` in minutes.
fn offset(text: &str) -> Option<i32> {
    if text == "Z" {
        return Some(0);
    }
    let sign = if text.starts_with('-') { -1 } else { 1 };
    let (h, m) = text[1..].split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 14 && m < 60).then_some(sign * (h * 60 + m))
}

fn days_in(year: i32, month: i32) -> i32 {
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// The calendar duration units of FHIRPath (`year` ... `millisecond`, singular or plural).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CalendarUnit {
    /// `year`, `years`
    Year,
    /// `month`, `months`
    Month,
    /// `week`, `weeks`
    Week,
    /// `day`, `days`
    Day,
    /// `hour`, `hours`
    Hour,
    /// `minute`, `minutes`
    Minute,
    /// `second`, `seconds`
    Second,
    /// `millisecond`, `milliseconds`
    Millisecond,
}

impl CalendarUnit {
    /// The calendar keyword `unit` names (singular or plural).
    pub fn from_keyword(unit: &str) -> Option<CalendarUnit> {
        Some(match unit.strip_suffix('s').unwrap_or(unit) {
            "year" => CalendarUnit::Year,
            "month" => CalendarUnit::Month,
            "week" => CalendarUnit::Week,
            "day" => CalendarUnit::Day,
            "hour" => CalendarUnit::Hour,
            "minute" => CalendarUnit::Minute,
            "second" => CalendarUnit::Second,
            "millisecond" => CalendarUnit::Millisecond,
            _ => return None,
        })
    }

    /// The calendar unit a quantity's unit means in date arithmetic: a keyword, or a UCUM definite
    /// duration (`wk`, `d`, `h`, `min`, `s`, `ms`; not `a` and `mo`, which are not calendar units).
    pub fn for_arithmetic(unit: &str) -> Option<CalendarUnit> {
        CalendarUnit::from_keyword(unit).or(match unit {
            "wk" => Some(CalendarUnit::Week),
            "d" => Some(CalendarUnit::Day),
            "h" => Some(CalendarUnit::Hour),
            "min" => Some(CalendarUnit::Minute),
            "s" => Some(CalendarUnit::Second),
            "ms" => Some(CalendarUnit::Millisecond),
            _ => None,
        })
    }

    fn millis(self) -> Option<i64> {
        Some(match self {
            CalendarUnit::Week => 604_800_000,
            CalendarUnit::Day => 86_400_000,
            CalendarUnit::Hour => 3_600_000,
            CalendarUnit::Minute => 60_000,
            CalendarUnit::Second => 1000,
            CalendarUnit::Millisecond => 1,
            CalendarUnit::Year | CalendarUnit::Month => return None,
        })
    }

    /// The UCUM code of the same definite duration (`day` is `d`); years and months have none.
    pub fn ucum(self) -> Option<&'static str> {
        Some(match self {
            CalendarUnit::Week => "wk",
            CalendarUnit::Day => "d",
            CalendarUnit::Hour => "h",
            CalendarUnit::Minute => "min",
            CalendarUnit::Second => "s",
            CalendarUnit::Millisecond => "ms",
            CalendarUnit::Year | CalendarUnit::Month => return None,
        })
    }
}

/// The UCUM units fhirflight converts between: a factor to the base unit and the base unit's
/// dimension. Other units compare only with the very same unit.
const UCUM: &[(&str, f64, &str)] = &[
    ("1", 1.0, "1"),
    ("%", 0.01, "1"),
    ("g", 1.0, "g"),
    ("mg", 1e-3, "g"),
    ("ug", 1e-6, "g"),
    ("kg", 1e3, "g"),
    ("[lb_av]", 453.592_37, "g"),
    ("m", 1.0, "m"),
    ("cm", 1e-2, "m"),
    ("mm", 1e-3, "m"),
    ("km", 1e3, "m"),
    ("[in_i]", 0.0254, "m"),
    ("[ft_i]", 0.3048, "m"),
    ("L", 1.0, "L"),
    ("l", 1.0, "L"),
    ("dL", 0.1, "L"),
    ("mL", 1e-3, "L"),
    ("ms", 1e-3, "s"),
    ("s", 1.0, "s"),
    ("min", 60.0, "s"),
    ("h", 3600.0, "s"),
    ("d", 86_400.0, "s"),
    ("wk", 604_800.0, "s"),
    ("mo", 2_629_800.0, "s"),
    ("a", 31_557_600.0, "s"),
    ("mmol/L", 1e-3, "mol/L"),
    ("mol/L", 1.0, "mol/L"),
    ("g/dL", 10.0, "g/L"),
    ("g/L", 1.0, "g/L"),
    ("mg/dL", 1e-2, "g/L"),
    ("kg/m2", 1.0, "kg/m2"),
    ("mm[Hg]", 1.0, "mm[Hg]"),
    ("/min", 1.0, "/min"),
    ("Cel", 1.0, "Cel"),
];

/// A FHIRPath Quantity: a value and a UCUM unit or calendar keyword.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    /// The value.
    pub value: f64,
    /// The UCUM code (`mg`, `'1'` is `1`) or calendar keyword (`year`, kept singular).
    pub unit: String,
}

impl Quantity {
    /// A quantity; a plural calendar keyword is kept singular (`2 years` is `2 year`).
    pub fn new(value: f64, unit: &str) -> Quantity {
        let unit = match CalendarUnit::from_keyword(unit) {
            Some(_) => unit.strip_suffix('s').unwrap_or(unit),
            None => unit,
        };
        Quantity {
            value,
            unit: unit.to_owned(),
        }
    }

    /// The value in the base unit of its dimension, with that base, for comparison. A calendar
    /// keyword counts as its UCUM definite duration (`day` is `d`); `year` and `month` compare
    /// with themselves only (FHIRPath: they are not `a` and `mo`) unless `equivalent`.
    fn base(&self, equivalent: bool) -> Option<(f64, &str)> {
        let unit = match CalendarUnit::from_keyword(&self.unit) {
            Some(CalendarUnit::Year) if equivalent => "a",
            Some(CalendarUnit::Month) if equivalent => "mo",
            Some(c) => c.ucum().unwrap_or(&self.unit),
            None => &self.unit,
        };
        match UCUM.iter().find(|(u, ..)| *u == unit) {
            Some((_, factor, base)) => Some((self.value * factor, base)),
            None => Some((self.value, unit)),
        }
    }

    /// Ordered when the units are comparable; `None` otherwise.
    pub fn compare(&self, other: &Quantity, equivalent: bool) -> Option<Ordering> {
        let (a, ua) = self.base(equivalent)?;
        let (b, ub) = other.base(equivalent)?;
        if ua != ub {
            return None;
        }
        // Conversion factors leave rounding noise: compare to 12 significant digits.
        let scale = a.abs().max(b.abs()).max(f64::MIN_POSITIVE);
        if ((a - b) / scale).abs() < 1e-12 {
            return Some(Ordering::Equal);
        }
        a.partial_cmp(&b)
    }

    /// `self * other` or `self / other`, with the units combined (`g` * `m` is `g.m`; a unit over
    /// itself is `1`).
    pub fn combine(&self, other: &Quantity, divide: bool) -> Quantity {
        let (a, ua) = self.base(false).unwrap_or((self.value, &self.unit));
        let (b, ub) = other.base(false).unwrap_or((other.value, &other.unit));
        let (value, unit) = match (divide, ua, ub) {
            (true, x, y) if x == y => (a / b, "1".to_owned()),
            (true, x, "1") => (a / b, x.to_owned()),
            (true, x, y) => (a / b, format!("{x}/{y}")),
            (false, "1", y) => (a * b, y.to_owned()),
            (false, x, "1") => (a * b, x.to_owned()),
            (false, x, y) if x == y => (a * b, format!("{x}2")),
            (false, x, y) => (a * b, format!("{x}.{y}")),
        };
        Quantity { value, unit }
    }

    /// The quantity in `unit`, when the two are convertible.
    pub fn convert(&self, unit: &str) -> Option<Quantity> {
        let (v, base) = self.base(false)?;
        let target = Quantity::new(1.0, unit);
        let (f, tbase) = target.base(false)?;
        (base == tbase).then(|| Quantity::new(v / f, unit))
    }
}

impl fmt::Display for Quantity {
    /// `4 'mg'`, `1 year`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = crate::fhirpath::format_decimal(self.value);
        match CalendarUnit::from_keyword(&self.unit) {
            Some(_) => write!(f, "{value} {}", self.unit),
            None => write!(f, "{value} '{}'", self.unit),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Temporal {
        Temporal::parse(s, false).unwrap()
    }

    #[test]
    fn parses_and_prints_every_precision() {
        for s in [
            "2014",
            "2014-01",
            "2014-01-25",
            "2014-01-25T14",
            "2014-01-25T14:30",
            "2014-01-25T14:30:14",
            "2014-01-25T14:30:14.559",
            "2014-01-25T14:30:14.559+01:00",
            "2014-01-25T14:30Z",
        ] {
            assert_eq!(t(s).to_string(), s);
        }
    }

    #[test]
    fn rejects_what_is_not_a_date() {
        for s in [
            "",
            "14",
            "2014-13",
            "2014-02-30",
            "2014-01-25T25:00",
            "2014T10",
        ] {
            assert!(Temporal::parse(s, false).is_none(), "{s}");
        }
        assert!(Temporal::parse("10:30Z", true).is_none());
        assert_eq!(Temporal::parse("10:30", true).unwrap().to_string(), "10:30");
    }

    #[test]
    fn compares_with_precision_and_offsets() {
        assert_eq!(t("2012-01").compare(&t("2012-01-01")), None);
        assert_eq!(t("2012").compare(&t("2013-01")), Some(Ordering::Less));
        assert_eq!(
            t("2017-11-05T01:30:00.0-04:00").compare(&t("2017-11-05T05:30:00.0Z")),
            Some(Ordering::Equal)
        );
        assert_eq!(
            t("2015-02-04T14:34:28").compare(&t("2015-02-04T14:34:28.000")),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn adds_calendar_durations() {
        let d = t("2014-01-31");
        assert_eq!(
            d.add(1.0, CalendarUnit::Month).unwrap().to_string(),
            "2014-02-28"
        );
        assert_eq!(
            d.add(-1.0, CalendarUnit::Year).unwrap().to_string(),
            "2013-01-31"
        );
        assert_eq!(
            d.add(7.0, CalendarUnit::Day).unwrap().to_string(),
            "2014-02-07"
        );
        let dt = t("2014-01-25T23:30:00+10:00");
        assert_eq!(
            dt.add(1.0, CalendarUnit::Hour).unwrap().to_string(),
            "2014-01-26T00:30:00+10:00"
        );
    }

    #[test]
    fn quantities_compare_across_units() {
        let q = |v, u| Quantity::new(v, u);
        assert_eq!(
            q(1.0, "g").compare(&q(1000.0, "mg"), false),
            Some(Ordering::Equal)
        );
        assert_eq!(
            q(1.0, "day").compare(&q(24.0, "h"), false),
            Some(Ordering::Equal)
        );
        assert_eq!(q(1.0, "year").compare(&q(1.0, "a"), false), None);
        assert_eq!(
            q(1.0, "year").compare(&q(1.0, "a"), true),
            Some(Ordering::Equal)
        );
        assert_eq!(q(1.0, "g").compare(&q(1.0, "m"), false), None);
        assert_eq!(q(2.0, "years").to_string(), "2 year");
    }
}

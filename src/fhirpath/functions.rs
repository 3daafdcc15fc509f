//! The function library of the FHIRPath specification (and SQL on FHIR's key functions).

use std::borrow::Cow;
use std::cmp::Ordering;

use base64::Engine;
use serde_json::Value;

use super::eval::{
    Comparison, Eval, Val, compare, equal, members, round_to, single_input, to_string, union,
    value_of,
};
use super::parser::{Expr, Func};
use super::value::{CalendarUnit, Quantity, Temporal, TemporalKind};
use super::{Collection, Item, format_decimal};
use crate::Result;

/// The longest regular expression accepted by `matches` and `replaceMatches`, and the size its
/// compiled form may take: patterns come from expressions, which anyone may write.
const MAX_REGEX_LEN: usize = 4096;
const MAX_REGEX_SIZE: usize = 1 << 20;

impl<'a> Eval<'_, 'a> {
    pub(super) fn call(
        &self,
        func: Func,
        args: &[Expr],
        input: &[Item<'a>],
        focus: &[Item<'a>],
    ) -> Result<Collection<'a>> {
        use Func::*;
        let name = func.name();
        let one = || single_input(self, input, name);
        let bools = |v: Option<bool>| v.map(Item::Bool).into_iter().collect::<Collection<'a>>();
        if matches!(func, Distinct | IsDistinct | Repeat) {
            self.charge_pairs(input.len(), input.len())?;
        }
        Ok(match func {
            // Existence.
            Empty => vec![Item::Bool(input.is_empty())],
            Exists => {
                let found = match args.first() {
                    Some(criteria) => !self.filter(criteria, input)?.is_empty(),
                    None => !input.is_empty(),
                };
                vec![Item::Bool(found)]
            }
            All => {
                let mut all = true;
                for (i, item) in input.iter().enumerate() {
                    let result = self.lambda(&args[0], item, i)?;
                    if self.boolean(&result)? != Some(true) {
                        all = false;
                        break;
                    }
                }
                vec![Item::Bool(all)]
            }
            AllTrue | AnyTrue | AllFalse | AnyFalse => {
                let mut values = Vec::with_capacity(input.len());
                for item in input {
                    values.push(item.as_bool().ok_or_else(|| {
                        self.error(format!(
                            "{name}() expects booleans, got {}",
                            item.type_name()
                        ))
                    })?);
                }
                let result = match func {
                    AllTrue => values.iter().all(|b| *b),
                    AnyTrue => values.iter().any(|b| *b),
                    AllFalse => values.iter().all(|b| !*b),
                    _ => values.iter().any(|b| !*b),
                };
                vec![Item::Bool(result)]
            }
            SubsetOf | SupersetOf => {
                let other = self.eval(&args[0], focus)?;
                self.charge_pairs(input.len(), other.len())?;
                let (small, big) = if func == SubsetOf {
                    (input, &other[..])
                } else {
                    (&other[..], input)
                };
                let within = small
                    .iter()
                    .all(|s| big.iter().any(|b| equal(s, b) == Some(true)));
                vec![Item::Bool(within)]
            }
            Count => vec![Item::Int(input.len() as i64)],
            Distinct => union(input.to_vec(), Vec::new()),
            IsDistinct => vec![Item::Bool(
                union(input.to_vec(), Vec::new()).len() == input.len(),
            )],

            // Filtering and projection.
            Where => self.filter(&args[0], input)?,
            Select => {
                let mut out = Vec::new();
                for (i, item) in input.iter().enumerate() {
                    out.extend(self.lambda(&args[0], item, i)?);
                }
                out
            }
            Repeat => {
                let mut out: Collection<'a> = Vec::new();
                let mut frontier = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for (i, item) in frontier.iter().enumerate() {
                        for found in self.lambda(&args[0], item, i)? {
                            self.charge_pairs(1, out.len())?;
                            if !out.iter().any(|o| equal(o, &found) == Some(true)) {
                                out.push(found.clone());
                                next.push(found);
                            }
                        }
                    }
                    self.charge(next.len() as u64)?;
                    frontier = next;
                }
                out
            }
            OfType => {
                let ty = type_arg(&args[0]);
                let mut out = Vec::new();
                for item in input {
                    if self.is_type(item, ty)? {
                        out.push(item.clone());
                    }
                }
                out
            }

            // Subsetting.
            Single => match input {
                [] | [_] => input.to_vec(),
                _ => return Err(self.error(format!("single() on {} items", input.len()))),
            },
            First => input.first().cloned().into_iter().collect(),
            Last => input.last().cloned().into_iter().collect(),
            Tail => input.iter().skip(1).cloned().collect(),
            Skip | Take => {
                let n = self.int_arg(&args[0], focus)?.unwrap_or(0).max(0) as usize;
                match func {
                    Skip => input.iter().skip(n).cloned().collect(),
                    _ => input.iter().take(n).cloned().collect(),
                }
            }
            Intersect => {
                let other = self.eval(&args[0], focus)?;
                self.charge_pairs(input.len(), other.len() + input.len())?;
                let common = input
                    .iter()
                    .filter(|i| other.iter().any(|o| equal(i, o) == Some(true)))
                    .cloned()
                    .collect();
                union(common, Vec::new())
            }
            Exclude => {
                let other = self.eval(&args[0], focus)?;
                self.charge_pairs(input.len(), other.len())?;
                input
                    .iter()
                    .filter(|i| !other.iter().any(|o| equal(i, o) == Some(true)))
                    .cloned()
                    .collect()
            }

            // Combining.
            Union => {
                let other = self.eval(&args[0], focus)?;
                let n = input.len() + other.len();
                self.charge_pairs(n, n)?;
                union(input.to_vec(), other)
            }
            Combine => {
                let mut out = input.to_vec();
                out.extend(self.eval(&args[0], focus)?);
                out
            }

            Iif => {
                if input.len() > 1 {
                    return Err(self.error("iif() on several items"));
                }
                let this = input
                    .first()
                    .cloned()
                    .into_iter()
                    .collect::<Collection<'a>>();
                let context = if input.is_empty() {
                    focus.to_vec()
                } else {
                    this
                };
                let criterion = self.eval(&args[0], &context)?;
                let chosen = match criterion.as_slice() {
                    [] => None,
                    [Item::Bool(b)] => Some(*b),
                    [item] => match item.as_bool() {
                        Some(b) => Some(b),
                        None => return Err(self.error("iif() criterion is not a boolean")),
                    },
                    _ => return Err(self.error("iif() criterion has several items")),
                };
                match (chosen, args.get(2)) {
                    (Some(true), _) => self.eval(&args[1], &context)?,
                    (_, Some(otherwise)) => self.eval(otherwise, &context)?,
                    _ => Vec::new(),
                }
            }

            // Conversion.
            ToBoolean | ConvertsToBoolean => {
                converted(one()?, func == ConvertsToBoolean, to_boolean, Item::Bool)
            }
            ToInteger | ConvertsToInteger => {
                converted(one()?, func == ConvertsToInteger, to_integer, Item::Int)
            }
            ToDecimal | ConvertsToDecimal => {
                converted(one()?, func == ConvertsToDecimal, to_decimal, Item::Dec)
            }
            ToStringFn => match one()?.and_then(to_string) {
                Some(s) => vec![self.string(s.into_owned())?],
                None => Vec::new(),
            },
            ConvertsToString => converted(
                one()?,
                true,
                |i| to_string(i).map(drop),
                |()| Item::Bool(true),
            ),
            ToDate | ToDateTime | ToTime | ConvertsToDate | ConvertsToDateTime | ConvertsToTime => {
                let kind = match func {
                    ToDate | ConvertsToDate => TemporalKind::Date,
                    ToDateTime | ConvertsToDateTime => TemporalKind::DateTime,
                    _ => TemporalKind::Time,
                };
                let test = matches!(func, ConvertsToDate | ConvertsToDateTime | ConvertsToTime);
                converted(one()?, test, |i| to_temporal(i, kind), Item::Temporal)
            }
            ToQuantity | ConvertsToQuantity => {
                let unit = match args.first() {
                    Some(arg) => self.string_arg(arg, focus)?,
                    None => None,
                };
                let Some(item) = one()? else {
                    return Ok(Vec::new());
                };
                let q = to_quantity(item).and_then(|q| match &unit {
                    Some(u) => q.convert(u),
                    None => Some(q),
                });
                match func {
                    ToQuantity => q.map(|q| Item::Quantity(Box::new(q))).into_iter().collect(),
                    _ => vec![Item::Bool(q.is_some())],
                }
            }

            // Strings.
            IndexOf | LastIndexOf | StartsWith | EndsWith | ContainsStr => {
                let (Some(s), Some(sub)) = (
                    self.input_string(one()?)?,
                    self.string_arg(&args[0], focus)?,
                ) else {
                    return Ok(Vec::new());
                };
                match func {
                    IndexOf | LastIndexOf => {
                        let at = match func {
                            IndexOf => s.find(&*sub),
                            _ => s.rfind(&*sub),
                        };
                        let chars = at.map_or(-1, |at| s[..at].chars().count() as i64);
                        vec![Item::Int(chars)]
                    }
                    StartsWith => vec![Item::Bool(s.starts_with(&*sub))],
                    EndsWith => vec![Item::Bool(s.ends_with(&*sub))],
                    _ => vec![Item::Bool(s.contains(&*sub))],
                }
            }
            Substring => {
                let Some(s) = self.input_string(one()?)? else {
                    return Ok(Vec::new());
                };
                let Some(start) = self.int_arg(&args[0], focus)? else {
                    return Ok(Vec::new());
                };
                let chars: Vec<char> = s.chars().collect();
                if start < 0 || start as usize >= chars.len() {
                    return Ok(Vec::new());
                }
                let len = match args.get(1) {
                    Some(arg) => self.int_arg(arg, focus)?.unwrap_or(i64::MAX).max(0) as usize,
                    None => usize::MAX,
                };
                let text: String = chars[start as usize..].iter().take(len).collect();
                vec![self.string(text)?]
            }
            Upper | Lower | Trim | Length | ToChars => {
                let Some(s) = self.input_string(one()?)? else {
                    return Ok(Vec::new());
                };
                match func {
                    Upper => vec![self.string(s.to_uppercase())?],
                    Lower => vec![self.string(s.to_lowercase())?],
                    Trim => vec![self.string(s.trim().to_owned())?],
                    Length => vec![Item::Int(s.chars().count() as i64)],
                    _ => {
                        let chars: Vec<Item<'a>> = s
                            .chars()
                            .map(|c| Item::Str(Cow::Owned(c.to_string())))
                            .collect();
                        self.charge(chars.len() as u64)?;
                        chars
                    }
                }
            }
            Replace => {
                let (Some(s), Some(pattern), Some(with)) = (
                    self.input_string(one()?)?,
                    self.string_arg(&args[0], focus)?,
                    self.string_arg(&args[1], focus)?,
                ) else {
                    return Ok(Vec::new());
                };
                let times = match pattern.is_empty() {
                    true => s.chars().count() + 1,
                    false => s.matches(&*pattern).count(),
                };
                self.check_len(s.len().saturating_add(times.saturating_mul(with.len())))?;
                let out = match pattern.is_empty() {
                    // An empty pattern goes between every character, and around them.
                    true => {
                        let mut out = with.clone();
                        for c in s.chars() {
                            out.push(c);
                            out.push_str(&with);
                        }
                        out
                    }
                    false => s.replace(&*pattern, &with),
                };
                vec![self.string(out)?]
            }
            Matches | MatchesFull | ReplaceMatches => {
                let (Some(s), Some(pattern)) = (
                    self.input_string(one()?)?,
                    self.string_arg(&args[0], focus)?,
                ) else {
                    return Ok(Vec::new());
                };
                let anchored = match func {
                    MatchesFull => format!("^(?:{pattern})$"),
                    _ => pattern.clone(),
                };
                let re = self.regex(&anchored)?;
                match func {
                    ReplaceMatches => {
                        let Some(with) = self.string_arg(&args[1], focus)? else {
                            return Ok(Vec::new());
                        };
                        let times = re.find_iter(&s).count();
                        self.check_len(s.len().saturating_add(times.saturating_mul(with.len())))?;
                        let out = match pattern.is_empty() {
                            true => s.to_string(),
                            false => re.replace_all(&s, with.as_str()).into_owned(),
                        };
                        vec![self.string(out)?]
                    }
                    _ => vec![Item::Bool(re.is_match(&s))],
                }
            }
            Split => {
                let (Some(s), Some(sep)) = (
                    self.input_string(one()?)?,
                    self.string_arg(&args[0], focus)?,
                ) else {
                    return Ok(Vec::new());
                };
                let parts: Collection<'a> = s
                    .split(&*sep)
                    .map(|p| Item::Str(Cow::Owned(p.to_owned())))
                    .collect();
                self.charge(parts.len() as u64)?;
                parts
            }
            Join => {
                let sep = match args.first() {
                    Some(arg) => self.string_arg(arg, focus)?.unwrap_or_default(),
                    None => String::new(),
                };
                let parts: Vec<Cow<'_, str>> = input.iter().filter_map(to_string).collect();
                let len = parts.iter().map(|p| p.len() + sep.len()).sum();
                self.check_len(len)?;
                vec![self.string(parts.join(&sep))?]
            }
            Encode | Decode | Escape | Unescape => {
                let (Some(s), Some(format)) = (
                    self.input_string(one()?)?,
                    self.string_arg(&args[0], focus)?,
                ) else {
                    return Ok(Vec::new());
                };
                match codec(func, &s, &format) {
                    Some(out) => vec![self.string(out)?],
                    None => Vec::new(),
                }
            }

            // Math.
            Abs | Ceiling | Exp | Floor | Ln | Sqrt | Truncate | Round | Log | Power => {
                let Some(item) = one()? else {
                    return Ok(Vec::new());
                };
                self.math(func, item, args, focus)?.into_iter().collect()
            }

            // Tree navigation.
            Children => {
                let mut out = Vec::new();
                for item in input {
                    children_of(item, &mut out);
                }
                out
            }
            Descendants => {
                let mut out = Vec::new();
                let mut frontier = input.to_vec();
                while !frontier.is_empty() {
                    let mut next = Vec::new();
                    for item in &frontier {
                        children_of(item, &mut next);
                    }
                    self.charge(next.len() as u64)?;
                    out.extend(next.iter().cloned());
                    frontier = next;
                }
                out
            }

            // Utility.
            Trace => {
                let label = self.string_arg(&args[0], focus)?.unwrap_or_default();
                tracing::debug!(label, items = input.len(), "FHIRPath trace()");
                input.to_vec()
            }
            Now | Today | TimeOfDay => {
                let now = chrono::Utc::now().naive_utc();
                let parts = {
                    use chrono::{Datelike, Timelike};
                    [
                        now.year(),
                        now.month() as i32,
                        now.day() as i32,
                        now.hour() as i32,
                        now.minute() as i32,
                        now.second() as i32,
                        (now.nanosecond() / 1_000_000).min(999) as i32,
                    ]
                };
                let t = Temporal::date_time(parts, 7, Some(0));
                vec![Item::Temporal(match func {
                    Now => t,
                    Today => t.with_kind(TemporalKind::Date),
                    _ => {
                        let text = t.to_string();
                        let time = &text[11..23];
                        Temporal::parse(time, true).unwrap_or(t)
                    }
                })]
            }
            Not => bools(self.boolean(input)?.map(|b| !b)),
            Aggregate => {
                let init = match args.get(1) {
                    Some(arg) => self.eval(arg, focus)?,
                    None => Vec::new(),
                };
                let saved = self.total.replace(Some(init));
                let mut result = Ok(());
                for (i, item) in input.iter().enumerate() {
                    match self.lambda(&args[0], item, i) {
                        Ok(total) => {
                            self.total.replace(Some(total));
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                let total = self.total.replace(saved);
                result?;
                total.unwrap_or_default()
            }
            DefineVariable => {
                let var = self
                    .string_arg(&args[0], focus)?
                    .ok_or_else(|| self.error("defineVariable() needs a name"))?;
                if super::eval::is_builtin_variable(&var)
                    || self.vars.borrow().iter().any(|(n, _)| **n == *var)
                {
                    return Err(self.error(format!("variable %{var} is already defined")));
                }
                let value = match args.get(1) {
                    Some(arg) => self.eval(arg, input)?,
                    None => input.to_vec(),
                };
                self.vars.borrow_mut().push((var.into(), value));
                input.to_vec()
            }
            IsFn => match one()? {
                None => Vec::new(),
                Some(item) => vec![Item::Bool(self.is_type(item, type_arg(&args[0]))?)],
            },
            AsFn => self.cast(input, type_arg(&args[0]))?,
            TypeFn => input
                .iter()
                .map(|item| match super::eval::type_of(item) {
                    (Some(_), name) => Item::Type("FHIR", name),
                    (None, name) => Item::Type("System", name),
                })
                .collect(),
            Sort => self.sort(input, args)?,

            // FHIR.
            Extension => {
                let Some(url) = self.string_arg(&args[0], focus)? else {
                    return Ok(Vec::new());
                };
                let mut out = Vec::new();
                for item in input {
                    let mut push = |e: Item<'a>| {
                        if e.as_json()
                            .and_then(|e| e.get("url"))
                            .and_then(Value::as_str)
                            == Some(url.as_str())
                        {
                            out.push(e);
                        }
                        std::ops::ControlFlow::Continue(())
                    };
                    let _ = members(item, "extension", &mut push);
                    if let Item::Node(n) = item
                        && let Some(ext) = n.ext
                    {
                        let _ = members(&Item::json(ext), "extension", &mut push);
                    }
                }
                out
            }
            HasValue => vec![Item::Bool(matches!(
                one()?,
                Some(item) if item.as_json().is_none_or(|v| !v.is_null() && !v.is_object() && !v.is_array())
            ))],
            GetValue => match one()? {
                Some(item @ Item::Node(n)) if !n.value.is_null() && !n.value.is_object() => {
                    vec![item.clone()]
                }
                _ => Vec::new(),
            },
            ConformsTo => {
                let url = self.string_arg(&args[0], focus)?.unwrap_or_default();
                let Some(ty) = url.strip_prefix("http://hl7.org/fhir/StructureDefinition/") else {
                    return Err(self.error(format!("conformsTo(): unknown profile {url}")));
                };
                if crate::r4::type_index(ty).is_none() {
                    return Err(self.error(format!("conformsTo(): unknown profile {url}")));
                }
                input
                    .iter()
                    .map(|i| self.is_type(i, ty).map(Item::Bool))
                    .collect::<Result<_>>()?
            }
            Comparable => {
                let other = self.eval(&args[0], focus)?;
                let (Some(a), Some(b)) = (one()?, self.single(&other)?) else {
                    return Ok(Vec::new());
                };
                match (value_of(a), value_of(b)) {
                    (Val::Quantity(x), Val::Quantity(y)) => {
                        vec![Item::Bool(x.compare(&y, false).is_some())]
                    }
                    _ => vec![Item::Bool(compare(a, b) != Comparison::Incompatible)],
                }
            }
            Precision => match one()?.map(|i| (i, value_of(i))) {
                None => Vec::new(),
                Some((_, Val::Temporal(t))) => vec![Item::Int(t.digits())],
                Some((item, Val::Dec(_) | Val::Int(_))) => {
                    let text = to_string(item).unwrap_or_default();
                    let places = text.split_once('.').map_or(0, |(_, f)| f.len());
                    vec![Item::Int(places as i64)]
                }
                Some(_) => Vec::new(),
            },
            LowBoundary | HighBoundary => {
                let precision = match args.first() {
                    Some(arg) => self.int_arg(arg, focus)?,
                    None => None,
                };
                let high = func == HighBoundary;
                let mut out = Vec::new();
                for item in input {
                    out.extend(boundary(item, high, precision));
                }
                out
            }
            ResourceKey => input
                .iter()
                .filter_map(|i| i.as_json()?.get("id")?.as_str())
                .map(|id| Item::Str(Cow::Borrowed(id)))
                .collect(),
            ReferenceKey => {
                let ty = args.first().map(type_arg);
                input
                    .iter()
                    .filter_map(|i| reference_key(i.as_json()?.get("reference")?.as_str()?, ty))
                    .map(|id| Item::Str(Cow::Borrowed(id)))
                    .collect()
            }
        })
    }

    /// Evaluates `expr` with `item` as `$this` and `index` as `$index`.
    fn lambda(&self, expr: &Expr, item: &Item<'a>, index: usize) -> Result<Collection<'a>> {
        let saved = self.index.replace(Some(index as i64));
        let vars = self.vars.borrow().len();
        let result = self.eval(expr, std::slice::from_ref(item));
        self.vars.borrow_mut().truncate(vars);
        self.index.set(saved);
        result
    }

    /// The items of `input` for which `criteria`, evaluated on each item alone, is true.
    fn filter(&self, criteria: &Expr, input: &[Item<'a>]) -> Result<Collection<'a>> {
        let mut out = Vec::new();
        for (i, item) in input.iter().enumerate() {
            let result = self.lambda(criteria, item, i)?;
            if self.boolean(&result)? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    /// A string argument: `None` when empty; anything but one string is an error.
    fn string_arg(&self, arg: &Expr, focus: &[Item<'a>]) -> Result<Option<String>> {
        match self.eval(arg, focus)?.as_slice() {
            [] => Ok(None),
            [item] => match value_of(item) {
                Val::Str(s) => Ok(Some(s.into_owned())),
                _ => Err(self.error(format!(
                    "expected a string argument, got {}",
                    item.type_name()
                ))),
            },
            _ => Err(self.error("expected a single string argument")),
        }
    }

    fn int_arg(&self, arg: &Expr, focus: &[Item<'a>]) -> Result<Option<i64>> {
        match self.eval(arg, focus)?.as_slice() {
            [] => Ok(None),
            [item] => match value_of(item) {
                Val::Int(i) => Ok(Some(i)),
                _ => Err(self.error(format!(
                    "expected an integer argument, got {}",
                    item.type_name()
                ))),
            },
            _ => Err(self.error("expected a single integer argument")),
        }
    }

    /// The input of a string function: a string, or nothing; another type is an error.
    fn input_string<'x>(&self, item: Option<&'x Item<'a>>) -> Result<Option<Cow<'x, str>>> {
        match item.map(|i| (i, value_of(i))) {
            None => Ok(None),
            Some((_, Val::Str(s))) => Ok(Some(s)),
            Some((item, _)) => {
                Err(self.error(format!("a string function applied to {}", item.type_name())))
            }
        }
    }

    fn regex(&self, pattern: &str) -> Result<regex::Regex> {
        if pattern.len() > MAX_REGEX_LEN {
            return Err(self.error(format!(
                "regular expression longer than {MAX_REGEX_LEN} bytes"
            )));
        }
        regex::RegexBuilder::new(pattern)
            .dot_matches_new_line(true)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .map_err(|e| self.error(format!("invalid regular expression: {e}")))
    }

    fn math(
        &self,
        func: Func,
        item: &Item<'a>,
        args: &[Expr],
        focus: &[Item<'a>],
    ) -> Result<Option<Item<'a>>> {
        use Func::*;
        let value = value_of(item);
        if let (Abs, Val::Quantity(q)) = (func, &value) {
            return Ok(Some(Item::Quantity(Box::new(Quantity::new(
                q.value.abs(),
                &q.unit,
            )))));
        }
        let x = match value {
            Val::Int(i) => Some(i as f64),
            Val::Dec(d) => Some(d),
            _ => None,
        }
        .ok_or_else(|| {
            self.error(format!(
                "{}() expects a number, got {}",
                func.name(),
                item.type_name()
            ))
        })?;
        let int = matches!(value, Val::Int(_));
        let finite = |d: f64| d.is_finite().then_some(Item::Dec(d));
        Ok(match func {
            Abs if int => Some(Item::Int(x.abs() as i64)),
            Abs => Some(Item::Dec(x.abs())),
            Ceiling => Some(Item::Int(x.ceil() as i64)),
            Floor => Some(Item::Int(x.floor() as i64)),
            Truncate => Some(Item::Int(x.trunc() as i64)),
            Exp => finite(x.exp()),
            Ln => finite(x.ln()),
            Sqrt => finite(x.sqrt()),
            Round => {
                let places = match args.first() {
                    Some(arg) => self.int_arg(arg, focus)?.unwrap_or(0),
                    None => 0,
                };
                if places < 0 {
                    return Err(self.error("round() precision must not be negative"));
                }
                Some(Item::Dec(round_to(x, places.min(15) as i32)))
            }
            Log => {
                let base = self.eval(&args[0], focus)?;
                match self.single(&base)?.map(value_of) {
                    Some(Val::Int(b)) => finite(x.ln() / (b as f64).ln()),
                    Some(Val::Dec(b)) => finite(x.ln() / b.ln()),
                    _ => None,
                }
            }
            _ => {
                let exponent = self.eval(&args[0], focus)?;
                match (int, self.single(&exponent)?.map(value_of)) {
                    (true, Some(Val::Int(e))) if e >= 0 => {
                        let e = u32::try_from(e).unwrap_or(u32::MAX);
                        (x as i64).checked_pow(e).map(Item::Int)
                    }
                    (_, Some(Val::Int(e))) => finite(x.powf(e as f64)),
                    (_, Some(Val::Dec(e))) => finite(x.powf(e)),
                    _ => None,
                }
            }
        })
    }

    /// `sort(keys)`: by each key in turn (a leading `-` sorts that key descending), stable.
    fn sort(&self, input: &[Item<'a>], args: &[Expr]) -> Result<Collection<'a>> {
        let mut keyed = Vec::with_capacity(input.len());
        for (i, item) in input.iter().enumerate() {
            let mut keys = Vec::with_capacity(args.len().max(1));
            if args.is_empty() {
                keys.push((vec![item.clone()], false));
            }
            for arg in args {
                let (expr, desc) = match arg {
                    Expr::Neg(inner) => (&**inner, true),
                    e => (e, false),
                };
                keys.push((self.lambda(expr, item, i)?, desc));
            }
            keyed.push((keys, item.clone()));
        }
        let mut incomparable = false;
        keyed.sort_by(|(a, _), (b, _)| {
            for ((x, desc), (y, _)) in a.iter().zip(b) {
                // An empty key sorts first either way.
                let ord = match (x.first(), y.first()) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(x), Some(y)) => match compare(x, y) {
                        Comparison::Ordered(o) if *desc => o.reverse(),
                        Comparison::Ordered(o) => o,
                        _ => {
                            incomparable = true;
                            Ordering::Equal
                        }
                    },
                };
                if ord.is_ne() {
                    return ord;
                }
            }
            Ordering::Equal
        });
        if incomparable {
            return Err(self.error("sort(): keys that do not compare"));
        }
        Ok(keyed.into_iter().map(|(_, item)| item).collect())
    }
}

/// The type name given to `ofType`, `is`, `as`, `getReferenceKey` (the parser made it one).
fn type_arg(arg: &Expr) -> &str {
    match arg {
        Expr::TypeName(name) => name,
        _ => "",
    }
}

/// What `toX()` (`test` false) or `convertsToX()` (`test` true) gives for `item` with the
/// conversion `convert`: the converted item (`into`), or whether there is one; empty on empty.
fn converted<'a, T>(
    item: Option<&Item<'a>>,
    test: bool,
    convert: impl Fn(&Item<'a>) -> Option<T>,
    into: impl Fn(T) -> Item<'a>,
) -> Collection<'a> {
    let Some(value) = item.map(convert) else {
        return Vec::new();
    };
    match test {
        true => vec![Item::Bool(value.is_some())],
        false => value.map(into).into_iter().collect(),
    }
}

fn to_boolean(item: &Item<'_>) -> Option<bool> {
    match value_of(item) {
        Val::Bool(b) => Some(b),
        Val::Int(1) => Some(true),
        Val::Int(0) => Some(false),
        Val::Dec(1.0) => Some(true),
        Val::Dec(0.0) => Some(false),
        Val::Str(s) => match s.to_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn to_integer(item: &Item<'_>) -> Option<i64> {
    match value_of(item) {
        Val::Int(i) => Some(i),
        Val::Bool(b) => Some(i64::from(b)),
        Val::Str(s) => {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(&s);
            (!digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
                .then(|| s.parse().ok())
                .flatten()
        }
        _ => None,
    }
}

fn to_decimal(item: &Item<'_>) -> Option<f64> {
    match value_of(item) {
        Val::Int(i) => Some(i as f64),
        Val::Dec(d) => Some(d),
        Val::Bool(b) => Some(if b { 1.0 } else { 0.0 }),
        Val::Str(s) => is_decimal_text(&s).then(|| s.parse().ok()).flatten(),
        _ => None,
    }
}

/// `(\+|-)?\d+(\.\d+)?`
fn is_decimal_text(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (int, frac) = s.split_once('.').unwrap_or((s, "1"));
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    digits(int) && digits(frac)
}

fn to_temporal(item: &Item<'_>, kind: TemporalKind) -> Option<Temporal> {
    match value_of(item) {
        Val::Temporal(t) => match (t.kind, kind) {
            (k, l) if k == l => Some(t),
            (TemporalKind::Time, _) | (_, TemporalKind::Time) => None,
            _ => Some(t.with_kind(kind)),
        },
        Val::Str(s) => match kind {
            TemporalKind::Time => Temporal::parse(s.strip_prefix('T').unwrap_or(&s), true),
            _ => {
                let t = Temporal::parse(&s, false)?;
                Some(t.with_kind(kind))
            }
        },
        _ => None,
    }
}

fn to_quantity(item: &Item<'_>) -> Option<Quantity> {
    match value_of(item) {
        Val::Quantity(q) => Some(q.into_owned()),
        Val::Int(i) => Some(Quantity::new(i as f64, "1")),
        Val::Dec(d) => Some(Quantity::new(d, "1")),
        Val::Bool(b) => Some(Quantity::new(if b { 1.0 } else { 0.0 }, "1")),
        Val::Str(s) => {
            let s = s.trim();
            let (number, unit) = match s.split_once(' ') {
                Some((n, u)) => (n, u.trim()),
                None => (s, "'1'"),
            };
            if !is_decimal_text(number) {
                return None;
            }
            let unit = match unit.strip_prefix('\'').and_then(|u| u.strip_suffix('\'')) {
                Some(u) => u,
                None => {
                    CalendarUnit::from_keyword(unit)?;
                    unit
                }
            };
            Some(Quantity::new(number.parse().ok()?, unit))
        }
        _ => None,
    }
}

/// `encode`/`decode` (`hex`, `base64`, `urlbase64`) and `escape`/`unescape` (`html`, `json`).
fn codec(func: Func, s: &str, format: &str) -> Option<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    match (func, format) {
        (Func::Encode, "hex") => Some(s.bytes().map(|b| format!("{b:02x}")).collect()),
        (Func::Encode, "base64") => Some(STANDARD.encode(s)),
        (Func::Encode, "urlbase64") => Some(URL_SAFE.encode(s)),
        (Func::Decode, "hex") => {
            let bytes: Option<Vec<u8>> = (0..s.len())
                .step_by(2)
                .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
                .collect();
            String::from_utf8(bytes?).ok()
        }
        (Func::Decode, "base64") => String::from_utf8(STANDARD.decode(s).ok()?).ok(),
        (Func::Decode, "urlbase64") => String::from_utf8(URL_SAFE.decode(s).ok()?).ok(),
        (Func::Escape, "html") => Some(
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
                .replace('"', "&quot;")
                .replace('\'', "&#39;"),
        ),
        (Func::Unescape, "html") => Some(
            s.replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&#39;", "'")
                .replace("&amp;", "&"),
        ),
        (Func::Escape, "json") => {
            let quoted = serde_json::to_string(s).ok()?;
            Some(quoted[1..quoted.len() - 1].to_owned())
        }
        (Func::Unescape, "json") => unescape_json(s),
        _ => None,
    }
}

/// The JSON string escapes of `s` undone (`\"`, `\n`, `\u00e9` ...); `None` for a bad one.
fn unescape_json(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            other => other,
        });
    }
    Some(out)
}

/// The children of a node: every element's items, in document order.
fn children_of<'a>(item: &Item<'a>, out: &mut Collection<'a>) {
    let Some(Value::Object(map)) = item.as_json() else {
        return;
    };
    for key in map.keys() {
        if key == "resourceType" || key.starts_with('_') {
            continue;
        }
        let _ = members(item, key, &mut |child| {
            out.push(child);
            std::ops::ControlFlow::Continue(())
        });
    }
}

/// The id a `reference` (`Type/id`, `Type/id/_history/v`, absolute URLs) points to, when its type is `ty`.
fn reference_key<'a>(reference: &'a str, ty: Option<&str>) -> Option<&'a str> {
    let path = reference
        .split_once("/_history/")
        .map_or(reference, |(p, _)| p);
    let (rtype, id) = path.rsplit_once('/')?;
    let rtype = rtype.rsplit('/').next().unwrap_or(rtype);
    (!id.is_empty() && ty.is_none_or(|t| t == rtype)).then_some(id)
}

/// `lowBoundary(precision)` / `highBoundary(precision)` of a decimal, quantity, date, dateTime
/// or time (a string that reads as one of them counts, as SQL on FHIR views pass them).
fn boundary<'a>(item: &Item<'a>, high: bool, precision: Option<i64>) -> Option<Item<'a>> {
    match value_of(item) {
        v @ (Val::Int(_) | Val::Dec(_)) => {
            let text = to_string(item)?;
            decimal_boundary(&text, v.number()?, high, precision).map(Item::Dec)
        }
        Val::Quantity(q) => {
            let text = format_decimal(q.value);
            let value = decimal_boundary(&text, q.value, high, precision)?;
            Some(Item::Quantity(Box::new(Quantity::new(value, &q.unit))))
        }
        Val::Temporal(t) => temporal_boundary(t, high, precision).map(Item::Temporal),
        Val::Str(s) => {
            let t = match s.contains(':') && !s.contains('-') {
                true => Temporal::parse(&s, true)?,
                false => Temporal::parse(&s, false)?,
            };
            let b = temporal_boundary(t, high, precision)?;
            Some(Item::Str(Cow::Owned(b.to_string())))
        }
        _ => None,
    }
}

fn temporal_boundary(t: Temporal, high: bool, precision: Option<i64>) -> Option<Temporal> {
    let digits = precision.unwrap_or(match t.kind {
        TemporalKind::Date => 8,
        TemporalKind::DateTime => 17,
        TemporalKind::Time => 9,
    });
    let parts: u8 = match (t.kind, digits) {
        (TemporalKind::Time, 2) => 4,
        (TemporalKind::Time, 4) => 5,
        (TemporalKind::Time, 6) => 6,
        (TemporalKind::Time, 9) => 7,
        (TemporalKind::Time, _) => return None,
        (_, 4) => 1,
        (_, 6) => 2,
        (_, 8) => 3,
        (TemporalKind::DateTime, 10) => 4,
        (TemporalKind::DateTime, 12) => 5,
        (TemporalKind::DateTime, 14) => 6,
        (TemporalKind::DateTime, 17) => 7,
        _ => return None,
    };
    Some(t.boundary(high, parts))
}

/// The boundary of a decimal written `text` (its precision is its number of decimal places), to
/// `precision` places (default 8); `None` past 28.
fn decimal_boundary(text: &str, value: f64, high: bool, precision: Option<i64>) -> Option<f64> {
    let places = text.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
    let target = precision.unwrap_or(8);
    if !(0..=28).contains(&target) {
        return None;
    }
    let half = 0.5 * 10f64.powi(-places);
    let edge = if high { value + half } else { value - half };
    let target = target as i32;
    if target > places {
        return Some(round_to(edge, places + 1));
    }
    // Coarser than the value: the boundary is where the range ends at that precision.
    let scale = 10f64.powi(target);
    Some(match high {
        true => (edge * scale).ceil() / scale,
        false => (edge * scale).floor() / scale,
    })
}

//! Evaluation of the AST over borrowed JSON.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::ops::ControlFlow;

use serde_json::Value;

use super::parser::{BinOp, Expr, Func};
use super::{Collection, EvalContext, Item};
use crate::{Error, Result};

/// Calls `f` on `expr` and every sub-expression.
pub(super) fn visit<'e>(expr: &'e Expr, f: &mut impl FnMut(&'e Expr)) {
    f(expr);
    match expr {
        Expr::Member(base, _) | Expr::Neg(base) => visit(base, f),
        Expr::Index(a, b) | Expr::Binary(_, a, b) => {
            visit(a, f);
            visit(b, f);
        }
        Expr::Call(base, _, args) => {
            visit(base, f);
            args.iter().for_each(|a| visit(a, f));
        }
        _ => {}
    }
}

pub(super) struct Eval<'c, 'a> {
    pub(super) ctx: &'c EvalContext<'a>,
    pub(super) source: &'c str,
}

impl<'a> Eval<'_, 'a> {
    fn error(&self, msg: impl Into<String>) -> Error {
        Error::FhirPath {
            expr: self.source.to_owned(),
            pos: None,
            msg: msg.into(),
        }
    }

    /// The input of a member or function: the focus itself for `$this`, without copying it.
    fn base<'f>(&self, base: &Expr, focus: &'f [Item<'a>]) -> Result<Cow<'f, [Item<'a>]>> {
        match base {
            Expr::This => Ok(Cow::Borrowed(focus)),
            e => self.eval(e, focus).map(Cow::Owned),
        }
    }

    pub(super) fn eval(&self, expr: &Expr, focus: &[Item<'a>]) -> Result<Collection<'a>> {
        Ok(match expr {
            Expr::This => focus.to_vec(),
            Expr::Empty => Vec::new(),
            Expr::Bool(b) => vec![Item::Bool(*b)],
            Expr::Int(i) => vec![Item::Int(*i)],
            Expr::Dec(d) => vec![Item::Dec(*d)],
            Expr::Str(s) => vec![Item::Str(Cow::Owned(s.to_string()))],
            Expr::RowIndex => vec![Item::Int(self.ctx.row_index)],
            Expr::Constant(name) => {
                let value = self.ctx.constants.and_then(|c| c.get(&**name));
                vec![Item::Json(value.ok_or_else(|| {
                    self.error(format!("unknown constant %{name}"))
                })?)]
            }
            Expr::Member(base, name) => collect_members(&self.base(base, focus)?, name),
            Expr::Index(base, index) => {
                if let (Expr::Int(i), Expr::Member(inner, name)) = (&**index, &**base) {
                    // `name[0]`: walk the children up to the one wanted, collect nothing else.
                    let mut skip = usize::try_from(*i).unwrap_or(usize::MAX);
                    let mut found = None;
                    for item in self.base(inner, focus)?.iter() {
                        let flow = members(item, name, &mut |child| match skip {
                            0 => {
                                found = Some(child);
                                ControlFlow::Break(())
                            }
                            _ => {
                                skip -= 1;
                                ControlFlow::Continue(())
                            }
                        });
                        if flow.is_break() {
                            break;
                        }
                    }
                    return Ok(found.into_iter().collect());
                }
                let input = self.base(base, focus)?;
                let i = match self.eval(index, focus)?.as_slice() {
                    [] => return Ok(Vec::new()),
                    [item] => item
                        .as_i64()
                        .ok_or_else(|| self.error("an index must be an integer"))?,
                    _ => return Err(self.error("an index must be a single integer")),
                };
                usize::try_from(i)
                    .ok()
                    .and_then(|i| input.get(i))
                    .cloned()
                    .into_iter()
                    .collect()
            }
            Expr::Call(base, func, args) => {
                let input = self.base(base, focus)?;
                self.call(func, args, &input, focus)?
            }
            Expr::Binary(op, lhs, rhs) => {
                let l = self.eval(lhs, focus)?;
                let r = self.eval(rhs, focus)?;
                self.binary(*op, l, r)?
            }
            Expr::Neg(inner) => {
                let v = self.eval(inner, focus)?;
                match self.number(&v)? {
                    None => Vec::new(),
                    Some(Num::Int(i)) => vec![Item::Int(-i)],
                    Some(Num::Dec(d)) => vec![Item::Dec(-d)],
                }
            }
        })
    }

    fn call(
        &self,
        func: &Func,
        args: &[Expr],
        input: &[Item<'a>],
        focus: &[Item<'a>],
    ) -> Result<Collection<'a>> {
        let keep =
            |pred: &dyn Fn(&Item<'a>) -> bool| input.iter().filter(|i| pred(i)).cloned().collect();
        Ok(match func {
            Func::Where => self.filter(&args[0], input)?,
            Func::Exists => {
                let found = match args.first() {
                    Some(criteria) => !self.filter(criteria, input)?.is_empty(),
                    None => !input.is_empty(),
                };
                vec![Item::Bool(found)]
            }
            Func::Empty => vec![Item::Bool(input.is_empty())],
            Func::First => input.first().cloned().into_iter().collect(),
            Func::Last => input.last().cloned().into_iter().collect(),
            Func::Count => vec![Item::Int(input.len() as i64)],
            Func::Not => self
                .boolean(input)?
                .map(|b| Item::Bool(!b))
                .into_iter()
                .collect(),
            Func::Join => {
                let sep = match args.first() {
                    Some(arg) => self.string_arg(arg, focus)?,
                    None => String::new(),
                };
                let parts: Vec<Cow<'_, str>> = input.iter().map(display).collect();
                vec![Item::Str(Cow::Owned(parts.join(&sep)))]
            }
            Func::OfType(ty) => keep(&|item| is_type(item, ty)),
            Func::Extension => {
                let url = self.string_arg(&args[0], focus)?;
                let mut out = collect_members(input, "extension");
                out.retain(|e| {
                    e.as_json()
                        .and_then(|e| e.get("url"))
                        .and_then(Value::as_str)
                        == Some(url.as_str())
                });
                out
            }
            Func::ResourceKey => input
                .iter()
                .filter_map(|i| i.as_json()?.get("id")?.as_str())
                .map(|id| Item::Str(Cow::Borrowed(id)))
                .collect(),
            Func::ReferenceKey(ty) => input
                .iter()
                .filter_map(|i| {
                    reference_key(i.as_json()?.get("reference")?.as_str()?, ty.as_deref())
                })
                .map(|id| Item::Str(Cow::Borrowed(id)))
                .collect(),
            Func::LowBoundary => input.iter().filter_map(|i| boundary(i, false)).collect(),
            Func::HighBoundary => input.iter().filter_map(|i| boundary(i, true)).collect(),
        })
    }

    /// The items of `input` for which `criteria`, evaluated on each item alone, is true.
    fn filter(&self, criteria: &Expr, input: &[Item<'a>]) -> Result<Collection<'a>> {
        let mut out = Vec::new();
        for item in input {
            let result = self.eval(criteria, std::slice::from_ref(item))?;
            if self.boolean(&result)? == Some(true) {
                out.push(item.clone());
            }
        }
        Ok(out)
    }

    fn string_arg(&self, arg: &Expr, focus: &[Item<'a>]) -> Result<String> {
        match self.eval(arg, focus)?.as_slice() {
            [item] => item
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| self.error("expected a string argument")),
            _ => Err(self.error("expected a single string argument")),
        }
    }

    /// Singleton evaluation as boolean: empty is unknown, a single non-boolean item is true.
    fn boolean(&self, c: &[Item<'a>]) -> Result<Option<bool>> {
        match c {
            [] => Ok(None),
            [item] => Ok(Some(item.as_bool().unwrap_or(true))),
            _ => Err(self.error("a boolean expression expects a single item, got several")),
        }
    }

    fn single<'x>(&self, c: &'x [Item<'a>]) -> Result<Option<&'x Item<'a>>> {
        match c {
            [] => Ok(None),
            [item] => Ok(Some(item)),
            _ => Err(self.error(format!("operator expects a single item, got {}", c.len()))),
        }
    }

    fn number(&self, c: &[Item<'a>]) -> Result<Option<Num>> {
        match self.single(c)? {
            None => Ok(None),
            Some(item) => Num::of(item)
                .map(Some)
                .ok_or_else(|| self.error("expected a number")),
        }
    }

    fn binary(&self, op: BinOp, l: Collection<'a>, r: Collection<'a>) -> Result<Collection<'a>> {
        use BinOp::*;
        let logic = |v: Option<bool>| v.map(Item::Bool).into_iter().collect();
        Ok(match op {
            And | Or | Xor | Implies => {
                let (a, b) = (self.boolean(&l)?, self.boolean(&r)?);
                logic(match op {
                    And => match (a, b) {
                        (Some(false), _) | (_, Some(false)) => Some(false),
                        (Some(true), Some(true)) => Some(true),
                        _ => None,
                    },
                    Or => match (a, b) {
                        (Some(true), _) | (_, Some(true)) => Some(true),
                        (Some(false), Some(false)) => Some(false),
                        _ => None,
                    },
                    Xor => a.zip(b).map(|(a, b)| a != b),
                    _ => match (a, b) {
                        (Some(false), _) | (_, Some(true)) => Some(true),
                        (Some(true), b) => b,
                        (None, _) => None,
                    },
                })
            }
            Eq | Ne => {
                if l.is_empty() || r.is_empty() {
                    return Ok(Vec::new());
                }
                let same = l.len() == r.len() && l.iter().zip(&r).all(|(a, b)| equal(a, b));
                vec![Item::Bool(same == (op == Eq))]
            }
            Lt | Le | Gt | Ge => {
                let (Some(a), Some(b)) = (self.single(&l)?, self.single(&r)?) else {
                    return Ok(Vec::new());
                };
                let ord = compare(a, b).ok_or_else(|| self.error("cannot compare these values"))?;
                let result = match op {
                    Lt => ord.is_lt(),
                    Le => ord.is_le(),
                    Gt => ord.is_gt(),
                    _ => ord.is_ge(),
                };
                vec![Item::Bool(result)]
            }
            Union => {
                let mut out: Collection<'a> = Vec::with_capacity(l.len() + r.len());
                for item in l.into_iter().chain(r) {
                    if !out.iter().any(|o| equal(o, &item)) {
                        out.push(item);
                    }
                }
                out
            }
            Concat => {
                let text = |c: &[Item<'a>]| {
                    self.single(c)
                        .map(|i| i.map(display).unwrap_or_default().into_owned())
                };
                vec![Item::Str(Cow::Owned(text(&l)? + &text(&r)?))]
            }
            Add | Sub | Mul | Div => {
                let (Some(a), Some(b)) = (self.single(&l)?, self.single(&r)?) else {
                    return Ok(Vec::new());
                };
                if let (Add, Some(a), Some(b)) = (op, a.as_str(), b.as_str()) {
                    return Ok(vec![Item::Str(Cow::Owned([a, b].concat()))]);
                }
                let (Some(x), Some(y)) = (Num::of(a), Num::of(b)) else {
                    return Err(self.error("arithmetic expects numbers"));
                };
                vec![match (op, x, y) {
                    (Div, _, _) if y.to_f64() == 0.0 => return Ok(Vec::new()),
                    (Div, _, _) => Item::Dec(x.to_f64() / y.to_f64()),
                    (Add, Num::Int(x), Num::Int(y)) => x
                        .checked_add(y)
                        .map_or(Item::Dec(x as f64 + y as f64), Item::Int),
                    (Sub, Num::Int(x), Num::Int(y)) => x
                        .checked_sub(y)
                        .map_or(Item::Dec(x as f64 - y as f64), Item::Int),
                    (Mul, Num::Int(x), Num::Int(y)) => x
                        .checked_mul(y)
                        .map_or(Item::Dec(x as f64 * y as f64), Item::Int),
                    (Add, x, y) => Item::Dec(x.to_f64() + y.to_f64()),
                    (Sub, x, y) => Item::Dec(x.to_f64() - y.to_f64()),
                    (_, x, y) => Item::Dec(x.to_f64() * y.to_f64()),
                }]
            }
        })
    }
}

/// Calls `f` on each child named `name` of `item`: array elements one by one, a choice element
/// (`valueQuantity` for `value`) tagged with its type, the item itself when `name` is its resource
/// type (`Patient.name`). Stops when `f` breaks.
fn members<'a>(
    item: &Item<'a>,
    name: &str,
    f: &mut impl FnMut(Item<'a>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let Some(Value::Object(map)) = item.as_json() else {
        return ControlFlow::Continue(());
    };
    if name.starts_with(|c: char| c.is_ascii_uppercase())
        && map.get("resourceType").and_then(Value::as_str) == Some(name)
    {
        return f(item.clone());
    }
    match map.get(name) {
        Some(Value::Array(items)) => {
            for v in items.iter().filter(|v| !v.is_null()) {
                f(Item::Json(v))?;
            }
        }
        Some(Value::Null) => {}
        Some(v) => f(Item::Json(v))?,
        None => {
            for (key, v) in map {
                let suffix = key.strip_prefix(name);
                if let Some(suffix) =
                    suffix.filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
                {
                    f(Item::Choice(suffix, v))?;
                }
            }
        }
    }
    ControlFlow::Continue(())
}

/// All children named `name` of the items of `input`.
fn collect_members<'a>(input: &[Item<'a>], name: &str) -> Collection<'a> {
    let mut out = Vec::with_capacity(input.len());
    for item in input {
        let _ = members(item, name, &mut |child| {
            out.push(child);
            ControlFlow::Continue(())
        });
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Num {
    Int(i64),
    Dec(f64),
}

impl Num {
    fn of(item: &Item<'_>) -> Option<Num> {
        match *item {
            Item::Int(i) => Some(Num::Int(i)),
            Item::Dec(d) => Some(Num::Dec(d)),
            Item::Json(Value::Number(n)) | Item::Choice(_, Value::Number(n)) => n
                .as_i64()
                .map(Num::Int)
                .or_else(|| n.as_f64().map(Num::Dec)),
            _ => None,
        }
    }

    fn to_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Dec(d) => d,
        }
    }
}

fn equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    if let (Some(x), Some(y)) = (Num::of(a), Num::of(b)) {
        return x.to_f64() == y.to_f64();
    }
    match (a.as_str(), b.as_str(), a.as_bool(), b.as_bool()) {
        (Some(x), Some(y), ..) => x == y,
        (_, _, Some(x), Some(y)) => x == y,
        _ => a.as_json().is_some() && a.as_json() == b.as_json(),
    }
}

fn compare(a: &Item<'_>, b: &Item<'_>) -> Option<Ordering> {
    match (Num::of(a), Num::of(b)) {
        (Some(x), Some(y)) => x.to_f64().partial_cmp(&y.to_f64()),
        _ => Some(a.as_str()?.cmp(b.as_str()?)),
    }
}

/// Text of an item for `join` and `&`.
fn display<'x>(item: &'x Item<'_>) -> Cow<'x, str> {
    match item.as_str() {
        Some(s) => Cow::Borrowed(s),
        None => Cow::Owned(match item {
            Item::Bool(b) => b.to_string(),
            Item::Int(i) => i.to_string(),
            Item::Dec(d) => d.to_string(),
            other => other.to_json().to_string(),
        }),
    }
}

/// `ofType(ty)`: choice elements by their suffix, other nodes by their JSON shape or `resourceType`.
fn is_type(item: &Item<'_>, ty: &str) -> bool {
    let mut chars = ty.chars();
    let primitive = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    match item {
        Item::Choice(suffix, _) => {
            let mut s = suffix.chars();
            s.next()
                .zip(ty.chars().next())
                .is_some_and(|(a, b)| a.eq_ignore_ascii_case(&b))
                && s.as_str() == chars.as_str()
        }
        Item::Bool(_) | Item::Json(Value::Bool(_)) => ty == "boolean",
        Item::Int(_) => matches!(ty, "integer" | "decimal"),
        Item::Dec(_) => ty == "decimal",
        Item::Json(Value::Number(n)) => match ty {
            "integer" | "positiveInt" | "unsignedInt" | "integer64" => n.is_i64() || n.is_u64(),
            _ => ty == "decimal",
        },
        Item::Str(_) | Item::Json(Value::String(_)) => {
            primitive && !matches!(ty, "boolean" | "integer" | "decimal")
        }
        Item::Json(Value::Object(map)) => match map.get("resourceType").and_then(Value::as_str) {
            Some(rt) => rt == ty,
            None => !primitive,
        },
        Item::Json(_) => false,
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

/// `lowBoundary()` / `highBoundary()` of a decimal, date, dateTime or time.
fn boundary<'a>(item: &Item<'a>, high: bool) -> Option<Item<'a>> {
    if let Some(num) = Num::of(item) {
        let text = match item.as_json() {
            Some(v) => v.to_string(),
            None => display(item).into_owned(),
        };
        let digits = text.split_once('.').map_or(0, |(_, f)| f.len()) as i32;
        let half = 0.5 * 10f64.powi(-digits);
        let scale = 10f64.powi(digits + 1);
        let v = if high {
            num.to_f64() + half
        } else {
            num.to_f64() - half
        };
        return Some(Item::Dec((v * scale).round() / scale));
    }
    let s = item.as_str()?;
    let kind = match item {
        Item::Choice(suffix, _) => *suffix,
        _ if s.contains('T') => "DateTime",
        _ if s.len() > 2 && s.as_bytes()[2] == b':' => "Time",
        _ => "Date",
    };
    let out = match kind {
        "Date" => date_boundary(s, high)?,
        "Time" => time_boundary(s, high)?,
        "DateTime" | "Instant" => {
            let (date, time) = s.split_once('T').unwrap_or((s, ""));
            let tz_at = time.find(['Z', '+', '-']).unwrap_or(time.len());
            let (time, tz) = time.split_at(tz_at);
            let tz = match (tz, high) {
                ("", false) => "+14:00",
                ("", true) => "-12:00",
                (tz, _) => tz,
            };
            let time = if time.is_empty() {
                if high {
                    "23:59:59.999".into()
                } else {
                    "00:00:00.000".into()
                }
            } else {
                time_boundary(time, high)?
            };
            format!("{}T{time}{tz}", date_boundary(date, high)?)
        }
        _ => return None,
    };
    Some(Item::Str(Cow::Owned(out)))
}

fn date_boundary(s: &str, high: bool) -> Option<String> {
    let mut parts = s.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let day: Option<u32> = parts.next().map(str::parse).transpose().ok()?;
    let month = month.unwrap_or(if high { 12 } else { 1 });
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let last = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    let day = day.unwrap_or(if high { last } else { 1 });
    Some(format!("{year:04}-{month:02}-{day:02}"))
}

fn time_boundary(s: &str, high: bool) -> Option<String> {
    let (hms, frac) = s.split_once('.').unwrap_or((s, ""));
    let mut parts = hms.split(':');
    let hour: u32 = parts.next()?.parse().ok()?;
    let fill = if high { 59 } else { 0 };
    let minute: u32 = parts.next().map_or(Some(fill), |m| m.parse().ok())?;
    let second: u32 = parts.next().map_or(Some(fill), |m| m.parse().ok())?;
    let pad = if high { '9' } else { '0' };
    let frac: String = frac.chars().chain(std::iter::repeat(pad)).take(3).collect();
    Some(format!("{hour:02}:{minute:02}:{second:02}.{frac}"))
}

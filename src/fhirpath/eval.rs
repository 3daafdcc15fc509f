//! Evaluation of the AST over borrowed JSON: navigation, variables, operators, and the rules of
//! equality, comparison and types the function library shares.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::ops::ControlFlow;

use serde_json::Value;

use super::parser::{BinOp, Expr};
use super::value::{CalendarUnit, Quantity, Temporal, TemporalKind};
use super::{Collection, EvalContext, Item, Node, format_decimal};
use crate::r4::{self, TYPES};
use crate::{Error, Result};

/// The work one evaluation may do: every node evaluated, item produced and 64 bytes of string
/// built costs one unit. Ordinary expressions over a resource use a few hundred; the bound stops
/// `repeat($this + 1)` or a product of nested `select`s long before time or memory run out.
const BUDGET: u64 = 4_000_000;

/// The longest string an evaluation builds.
const MAX_STRING_LEN: usize = 1 << 20;

/// Calls `f` on `expr` and every sub-expression.
pub(super) fn visit<'e>(expr: &'e Expr, f: &mut impl FnMut(&'e Expr)) {
    f(expr);
    match expr {
        Expr::Member(base, _) | Expr::Neg(base) | Expr::Is(base, _) | Expr::As(base, _) => {
            visit(base, f)
        }
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

/// Whether `%name` is a variable of the environment rather than a constant of the caller.
pub(super) fn is_builtin_variable(name: &str) -> bool {
    matches!(
        name,
        "resource" | "rootResource" | "context" | "rowIndex" | "ucum" | "sct" | "loinc"
    ) || name.starts_with("vs-")
        || name.starts_with("ext-")
}

pub(super) struct Eval<'c, 'a> {
    pub(super) ctx: &'c EvalContext<'a>,
    source: &'c str,
    /// `%resource`, `%context`: the input the evaluation started from.
    root: Collection<'a>,
    /// `defineVariable` names in scope.
    pub(super) vars: RefCell<Vec<(Box<str>, Collection<'a>)>>,
    /// `$index` and `$total` of the innermost function iterating.
    pub(super) index: Cell<Option<i64>>,
    pub(super) total: RefCell<Option<Collection<'a>>>,
    spent: Cell<u64>,
}

impl<'c, 'a> Eval<'c, 'a> {
    pub(super) fn new(ctx: &'c EvalContext<'a>, source: &'c str, focus: &[Item<'a>]) -> Self {
        Eval {
            ctx,
            source,
            root: focus.to_vec(),
            vars: RefCell::new(Vec::new()),
            index: Cell::new(None),
            total: RefCell::new(None),
            spent: Cell::new(0),
        }
    }

    pub(super) fn error(&self, msg: impl Into<String>) -> Error {
        Error::FhirPath {
            expr: self.source.to_owned(),
            pos: None,
            msg: msg.into(),
        }
    }

    /// Charges `units` of work, failing once the evaluation's [`BUDGET`] is spent.
    pub(super) fn charge(&self, units: u64) -> Result<()> {
        let spent = self.spent.get() + units;
        self.spent.set(spent);
        match spent > BUDGET {
            true => Err(self.error(format!(
                "evaluation stopped: more than {BUDGET} steps, items or 64-byte string blocks"
            ))),
            false => Ok(()),
        }
    }

    /// A computed string, charged by its size.
    pub(super) fn string(&self, s: String) -> Result<Item<'a>> {
        self.check_len(s.len())?;
        self.charge(s.len() as u64 / 64)?;
        Ok(Item::Str(Cow::Owned(s)))
    }

    /// Fails when a string of `len` bytes would be longer than [`MAX_STRING_LEN`]; functions that
    /// could build a large string check their estimate before building it.
    pub(super) fn check_len(&self, len: usize) -> Result<()> {
        match len > MAX_STRING_LEN {
            true => Err(self.error(format!(
                "a string of {len} bytes, more than the {MAX_STRING_LEN} allowed"
            ))),
            false => Ok(()),
        }
    }

    /// Charges the comparisons of every item of one collection with every item of another
    /// (`|`, `distinct()`, `intersect()`, ...).
    pub(super) fn charge_pairs(&self, n: usize, m: usize) -> Result<()> {
        self.charge((n as u64).saturating_mul(m as u64) / 64)
    }

    /// The input of a member or function: the focus itself for `$this`, without copying it.
    pub(super) fn base<'f>(
        &self,
        base: &Expr,
        focus: &'f [Item<'a>],
    ) -> Result<Cow<'f, [Item<'a>]>> {
        match base {
            Expr::This => Ok(Cow::Borrowed(focus)),
            e => self.eval(e, focus).map(Cow::Owned),
        }
    }

    /// Evaluates `expr` on `focus`. Every cycle of the evaluator's recursion passes here, so this
    /// is where the stack grows when a deep expression needs more than the thread has.
    #[recursive::recursive]
    pub(super) fn eval(&self, expr: &Expr, focus: &[Item<'a>]) -> Result<Collection<'a>> {
        self.charge(1)?;
        let out = match expr {
            Expr::This => focus.to_vec(),
            Expr::IndexVar => self.index.get().map(Item::Int).into_iter().collect(),
            Expr::Total => self.total.borrow().clone().unwrap_or_default(),
            Expr::Empty => Vec::new(),
            Expr::Bool(b) => vec![Item::Bool(*b)],
            Expr::Int(i) => vec![Item::Int(*i)],
            Expr::Dec(d) => vec![Item::Dec(*d)],
            Expr::Str(s) => vec![Item::Str(Cow::Owned(s.to_string()))],
            Expr::Temporal(t) => vec![Item::Temporal(*t)],
            Expr::Quantity(q) => vec![Item::Quantity(q.clone())],
            Expr::TypeName(name) => return Err(self.error(format!("unexpected type name {name}"))),
            Expr::Env(name) => self.variable(name)?,
            Expr::Member(base, name) => {
                let input = self.base(base, focus)?;
                let mut out = Vec::with_capacity(input.len());
                for item in input.iter() {
                    let _ = members(item, name, &mut |child| {
                        out.push(child);
                        ControlFlow::Continue(())
                    });
                }
                out
            }
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
                self.call(*func, args, &input, focus)?
            }
            Expr::Binary(op, lhs, rhs) => self.binary(*op, lhs, rhs, focus)?,
            Expr::Neg(inner) => {
                let v = self.eval(inner, focus)?;
                match self.single(&v)?.map(value_of) {
                    None => Vec::new(),
                    Some(Val::Int(i)) => vec![Item::Int(
                        i.checked_neg()
                            .ok_or_else(|| self.error("integer overflow"))?,
                    )],
                    Some(Val::Dec(d)) => vec![Item::Dec(-d)],
                    Some(Val::Quantity(q)) => vec![Item::Quantity(Box::new(Quantity {
                        value: -q.value,
                        unit: q.unit.clone(),
                    }))],
                    Some(_) => return Err(self.error("unary minus expects a number or quantity")),
                }
            }
            Expr::Is(base, ty) => {
                let input = self.eval(base, focus)?;
                match self.single(&input)? {
                    None => Vec::new(),
                    Some(item) => vec![Item::Bool(self.is_type(item, ty)?)],
                }
            }
            Expr::As(base, ty) => {
                let input = self.eval(base, focus)?;
                self.cast(&input, ty)?
            }
        };
        self.charge(out.len() as u64)?;
        Ok(out)
    }

    /// `%name`: the environment's variables, then `defineVariable` names, then constants.
    fn variable(&self, name: &str) -> Result<Collection<'a>> {
        let text = |s: String| Ok(vec![Item::Str(Cow::Owned(s))]);
        match name {
            "resource" | "rootResource" | "context" => return Ok(self.root.clone()),
            "rowIndex" => return Ok(vec![Item::Int(self.ctx.row_index)]),
            "ucum" => return text("http://unitsofmeasure.org".into()),
            "sct" => return text("http://snomed.info/sct".into()),
            "loinc" => return text("http://loinc.org".into()),
            _ => {}
        }
        if let Some((_, value)) = self.vars.borrow().iter().rev().find(|(n, _)| &**n == name) {
            return Ok(value.clone());
        }
        if let Some(value) = self.ctx.constants.and_then(|c| c.get(name)) {
            return Ok(vec![Item::json(value)]);
        }
        if let Some(vs) = name.strip_prefix("vs-") {
            return text(format!("http://hl7.org/fhir/ValueSet/{vs}"));
        }
        if let Some(ext) = name.strip_prefix("ext-") {
            return text(format!("http://hl7.org/fhir/StructureDefinition/{ext}"));
        }
        Err(self.error(format!("unknown constant %{name}")))
    }

    /// Singleton evaluation as boolean: empty is unknown, a single non-boolean item is true.
    pub(super) fn boolean(&self, c: &[Item<'a>]) -> Result<Option<bool>> {
        match c {
            [] => Ok(None),
            [item] => Ok(Some(item.as_bool().unwrap_or(true))),
            _ => Err(self.error("a boolean expression expects a single item, got several")),
        }
    }

    pub(super) fn single<'x>(&self, c: &'x [Item<'a>]) -> Result<Option<&'x Item<'a>>> {
        match c {
            [] => Ok(None),
            [item] => Ok(Some(item)),
            _ => Err(self.error(format!("expected a single item, got {}", c.len()))),
        }
    }

    fn binary(
        &self,
        op: BinOp,
        lhs: &Expr,
        rhs: &Expr,
        focus: &[Item<'a>],
    ) -> Result<Collection<'a>> {
        use BinOp::*;
        let l = self.eval(lhs, focus)?;
        // `and`, `or`, `implies` need not look right when the left decides.
        let decided = match (op, self.boolean_operand(op, &l)?) {
            (And, Some(false)) => Some(false),
            (Or, Some(true)) => Some(true),
            (Implies, Some(false)) => Some(true),
            _ => None,
        };
        if let Some(b) = decided {
            return Ok(vec![Item::Bool(b)]);
        }
        let r = self.eval(rhs, focus)?;
        let logic = |v: Option<bool>| v.map(Item::Bool).into_iter().collect();
        let known = |v: Option<bool>| v.map(Item::Bool).into_iter().collect::<Collection<'a>>();
        Ok(match op {
            And | Or | Xor | Implies => {
                let (a, b) = (self.boolean_operand(op, &l)?, self.boolean_operand(op, &r)?);
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
                let same = match l.len() == r.len() {
                    false => Some(false),
                    true => l
                        .iter()
                        .zip(&r)
                        .try_fold(true, |all, (a, b)| equal(a, b).map(|e| all && e)),
                };
                known(same.map(|s| s == (op == Eq)))
            }
            Equiv | NotEquiv => {
                self.charge_pairs(l.len(), r.len())?;
                let same = equivalent_collections(&l, &r);
                vec![Item::Bool(same == (op == Equiv))]
            }
            Lt | Le | Gt | Ge => {
                let (Some(a), Some(b)) = (self.single(&l)?, self.single(&r)?) else {
                    return Ok(Vec::new());
                };
                let ord = match compare(a, b) {
                    Comparison::Ordered(ord) => ord,
                    Comparison::Unknown => return Ok(Vec::new()),
                    Comparison::Incompatible => {
                        return Err(self.error(format!(
                            "cannot compare {} with {}",
                            a.type_name(),
                            b.type_name()
                        )));
                    }
                };
                vec![Item::Bool(match op {
                    Lt => ord.is_lt(),
                    Le => ord.is_le(),
                    Gt => ord.is_gt(),
                    _ => ord.is_ge(),
                })]
            }
            In | Contains => {
                let (item, collection) = if op == In { (&l, &r) } else { (&r, &l) };
                self.charge_pairs(1, collection.len())?;
                match self.single(item)? {
                    None => Vec::new(),
                    Some(item) => {
                        vec![Item::Bool(
                            collection.iter().any(|c| equal(c, item) == Some(true)),
                        )]
                    }
                }
            }
            Union => {
                self.charge_pairs(l.len() + r.len(), l.len() + r.len())?;
                union(l, r)
            }
            Concat => {
                let text = |c: &[Item<'a>]| -> Result<String> {
                    Ok(self
                        .single(c)?
                        .and_then(to_string)
                        .map(Cow::into_owned)
                        .unwrap_or_default())
                };
                vec![self.string(text(&l)? + &text(&r)?)?]
            }
            Add | Sub | Mul | Div | IntDiv | Mod => {
                let (Some(a), Some(b)) = (self.single(&l)?, self.single(&r)?) else {
                    return Ok(Vec::new());
                };
                self.arithmetic(op, a, b)?.into_iter().collect()
            }
        })
    }

    /// An operand of `and`/`or`/`xor`/`implies`: empty, or a single item read as a boolean.
    fn boolean_operand(&self, op: BinOp, c: &[Item<'a>]) -> Result<Option<bool>> {
        match op {
            BinOp::And | BinOp::Or | BinOp::Xor | BinOp::Implies => self.boolean(c),
            _ => Ok(None),
        }
    }

    fn arithmetic(&self, op: BinOp, a: &Item<'a>, b: &Item<'a>) -> Result<Option<Item<'a>>> {
        use BinOp::*;
        let (x, y) = (value_of(a), value_of(b));
        let mismatch = || {
            self.error(format!(
                "cannot apply {op:?} to {} and {}",
                a.type_name(),
                b.type_name()
            ))
        };
        Ok(Some(match (op, x, y) {
            (Add, Val::Str(x), Val::Str(y)) => self.string([x.as_ref(), y.as_ref()].concat())?,
            (Add | Sub, Val::Temporal(t), Val::Quantity(q)) => {
                let unit = CalendarUnit::for_arithmetic(&q.unit).ok_or_else(|| {
                    self.error(format!("cannot add '{}' to a date or time", q.unit))
                })?;
                let amount = if op == Sub { -q.value } else { q.value };
                match t.add(amount, unit) {
                    Some(t) => Item::Temporal(t),
                    None => return Err(self.error("date arithmetic out of range")),
                }
            }
            (Add | Sub, Val::Quantity(p), Val::Quantity(q)) => {
                let Some(q) = q.convert(&p.unit) else {
                    return Ok(None);
                };
                let value = if op == Add {
                    p.value + q.value
                } else {
                    p.value - q.value
                };
                Item::Quantity(Box::new(Quantity::new(value, &p.unit)))
            }
            (Mul | Div, Val::Quantity(p), Val::Quantity(q)) => {
                if op == Div && q.value == 0.0 {
                    return Ok(None);
                }
                Item::Quantity(Box::new(p.combine(&q, op == Div)))
            }
            (Mul | Div, Val::Quantity(p), n @ (Val::Int(_) | Val::Dec(_))) => {
                let n = n.number().unwrap_or(0.0);
                if op == Div && n == 0.0 {
                    return Ok(None);
                }
                let value = if op == Div { p.value / n } else { p.value * n };
                Item::Quantity(Box::new(Quantity::new(value, &p.unit)))
            }
            (Mul, n @ (Val::Int(_) | Val::Dec(_)), Val::Quantity(q)) => {
                let value = n.number().unwrap_or(0.0) * q.value;
                Item::Quantity(Box::new(Quantity::new(value, &q.unit)))
            }
            (op, Val::Int(x), Val::Int(y)) => match op {
                Add => x
                    .checked_add(y)
                    .map(Item::Int)
                    .ok_or_else(|| self.error("integer overflow"))?,
                Sub => x
                    .checked_sub(y)
                    .map(Item::Int)
                    .ok_or_else(|| self.error("integer overflow"))?,
                Mul => x
                    .checked_mul(y)
                    .map(Item::Int)
                    .ok_or_else(|| self.error("integer overflow"))?,
                _ if y == 0 => return Ok(None),
                Div => Item::Dec(x as f64 / y as f64),
                IntDiv => Item::Int(x.wrapping_div(y)),
                _ => Item::Int(x.wrapping_rem(y)),
            },
            (op, x @ (Val::Int(_) | Val::Dec(_)), y @ (Val::Int(_) | Val::Dec(_))) => {
                let (x, y) = (x.number().unwrap_or(0.0), y.number().unwrap_or(0.0));
                // Decimal sums and products have the places of their operands (`1.8 - 1.2` is
                // `0.6`, not the binary float's `0.6000000000000001`).
                let (dx, dy) = (decimals(x), decimals(y));
                match op {
                    Add => Item::Dec(round_to(x + y, dx.max(dy))),
                    Sub => Item::Dec(round_to(x - y, dx.max(dy))),
                    Mul => Item::Dec(round_to(x * y, (dx + dy).min(15))),
                    _ if y == 0.0 => return Ok(None),
                    Div => Item::Dec(x / y),
                    IntDiv => Item::Int((x / y).trunc() as i64),
                    _ => Item::Dec(round_to(x % y, 8)),
                }
            }
            _ => return Err(mismatch()),
        }))
    }

    /// `is`: whether `item` is of type `ty` or a type derived from it. An unknown type is an error.
    pub(super) fn is_type(&self, item: &Item<'a>, ty: &str) -> Result<bool> {
        let (ns, name) = match ty.split_once('.') {
            Some((ns @ ("FHIR" | "System"), name)) => (Some(ns), name),
            _ => (None, ty),
        };
        if !known_type(ns, name) {
            // `System.Patient` names nothing any value can be; a bare unknown name is a mistake.
            return match ns {
                Some(_) => Ok(false),
                None => Err(self.error(format!("unknown type {ty}"))),
            };
        }
        let (fhir, actual) = type_of(item);
        Ok(match fhir {
            Some(t) if ns != Some("System") => r4::derives_from(t, name),
            Some(_) => false,
            None => match item {
                // A node the model does not describe: judged by its JSON shape.
                Item::Node(n) if ns != Some("System") => shape_is(n.value, name),
                _ => ns != Some("FHIR") && actual == name,
            },
        })
    }

    /// `as`: the item when it is of type `ty`, else nothing; several items are an error.
    pub(super) fn cast(&self, input: &[Item<'a>], ty: &str) -> Result<Collection<'a>> {
        match self.single(input)? {
            Some(item) if self.is_type(item, ty)? => Ok(vec![item.clone()]),
            _ => Ok(Vec::new()),
        }
    }
}

/// Calls `f` on each child named `name` of `item`: array elements one by one, a choice element
/// (`valueQuantity` for `value`) with the type of its suffix, the item itself when `name` is its
/// resource type (`Patient.name`). Stops when `f` breaks.
pub(super) fn members<'a>(
    item: &Item<'a>,
    name: &str,
    f: &mut impl FnMut(Item<'a>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let node = match item {
        Item::Node(node) => node,
        Item::Type(ns, ty) => {
            return match name {
                "namespace" => f(Item::Str(Cow::Borrowed(ns))),
                "name" => f(Item::Str(Cow::Borrowed(ty))),
                _ => ControlFlow::Continue(()),
            };
        }
        _ => return ControlFlow::Continue(()),
    };
    let Value::Object(map) = node.value else {
        return ControlFlow::Continue(());
    };
    let resource_type = map.get("resourceType").and_then(Value::as_str);
    if name.starts_with(|c: char| c.is_ascii_uppercase()) && resource_type == Some(name) {
        return f(item.clone());
    }
    let owner = match (node.ty, resource_type) {
        (_, Some(rt)) => r4::type_index(rt),
        (ty, None) => ty,
    };
    let ty_of = |key: &str| owner.and_then(|o| r4::element_type(o, key));
    match map.get(name) {
        Some(value) => children(map, name, value, ty_of(name), f)?,
        None => {
            for (key, value) in map {
                let suffix = key
                    .strip_prefix(name)
                    .filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase()));
                if let Some(suffix) = suffix {
                    let ty = ty_of(key).or_else(|| choice_type(suffix));
                    children(map, key, value, ty, f)?;
                }
            }
            // A primitive with only extensions: `_name` without `name`.
            if let Some(ext) = shadow_of(map, name) {
                children(map, name, &Value::Null, ty_of(name), &mut |c| match ext {
                    Value::Array(exts) => {
                        for e in exts.iter().filter(|e| !e.is_null()) {
                            f(with_ext(&c, e))?;
                        }
                        ControlFlow::Continue(())
                    }
                    e => f(with_ext(&c, e)),
                })?;
            }
        }
    }
    ControlFlow::Continue(())
}

/// The `_key` sibling of element `key` (a primitive's id and extensions), found without
/// allocating: this runs for every primitive a path reaches.
fn shadow_of<'m>(map: &'m serde_json::Map<String, Value>, key: &str) -> Option<&'m Value> {
    let mut buf = [0u8; 64];
    match buf.get_mut(1..=key.len()) {
        Some(rest) => {
            rest.copy_from_slice(key.as_bytes());
            buf[0] = b'_';
            map.get(std::str::from_utf8(&buf[..=key.len()]).ok()?)
        }
        None => map.get(&format!("_{key}")),
    }
}

fn with_ext<'a>(item: &Item<'a>, ext: &'a Value) -> Item<'a> {
    match item {
        Item::Node(n) => Item::Node(Node {
            ext: Some(ext),
            ..*n
        }),
        other => other.clone(),
    }
}

/// The items of element `key` (value `value`) of `map`, with their `_key` extensions.
fn children<'a>(
    map: &'a serde_json::Map<String, Value>,
    key: &str,
    value: &'a Value,
    ty: Option<u16>,
    f: &mut impl FnMut(Item<'a>) -> ControlFlow<()>,
) -> ControlFlow<()> {
    let is_primitive = !matches!(value, Value::Object(_))
        && !matches!(value, Value::Array(items) if items.first().is_some_and(Value::is_object));
    let shadow = match is_primitive {
        true => shadow_of(map, key),
        false => None,
    };
    let node = |value: &'a Value, ext: Option<&'a Value>| {
        Item::Node(Node {
            value,
            ty,
            ext: ext.filter(|e| !e.is_null()),
        })
    };
    match value {
        Value::Array(items) => {
            let exts = shadow.and_then(Value::as_array);
            for (i, v) in items.iter().enumerate() {
                let ext = exts.and_then(|e| e.get(i));
                if !v.is_null() || ext.is_some_and(|e| !e.is_null()) {
                    f(node(v, ext))?;
                }
            }
        }
        Value::Null => {}
        v => f(node(v, shadow))?,
    }
    ControlFlow::Continue(())
}

/// The type a choice suffix names (`Quantity`, `String` for `string`), for data without a model.
fn choice_type(suffix: &str) -> Option<u16> {
    r4::type_index(suffix).or_else(|| {
        let mut chars = suffix.chars();
        let first = chars.next()?.to_ascii_lowercase();
        r4::type_index(&format!("{first}{}", chars.as_str()))
    })
}

/// Whether a type name exists in the namespace (`None`: either).
fn known_type(ns: Option<&str>, name: &str) -> bool {
    const SYSTEM: [&str; 8] = [
        "Boolean", "Integer", "Decimal", "String", "Date", "DateTime", "Time", "Quantity",
    ];
    let system = SYSTEM.contains(&name) || name == "Any";
    let fhir = r4::type_index(name).is_some();
    match ns {
        Some("System") => system,
        Some(_) => fhir,
        None => system || fhir,
    }
}

/// A node of unknown type against a FHIR type name, by its JSON shape.
fn shape_is(value: &Value, name: &str) -> bool {
    let primitive = name.starts_with(|c: char| c.is_ascii_lowercase());
    match value {
        Value::Bool(_) => name == "boolean",
        Value::Number(n) => match name {
            "integer" | "positiveInt" | "unsignedInt" | "integer64" => n.is_i64() || n.is_u64(),
            _ => name == "decimal",
        },
        Value::String(_) => primitive && !matches!(name, "boolean" | "integer" | "decimal"),
        Value::Object(map) => match map.get("resourceType").and_then(Value::as_str) {
            Some(rt) => rt == name || matches!(name, "Resource" | "DomainResource"),
            None => !primitive,
        },
        _ => false,
    }
}

/// The R4 type of an item (for a node the model describes) and the name `type_name` reports.
pub(super) fn type_of(item: &Item<'_>) -> (Option<u16>, &'static str) {
    let system = match item {
        Item::Node(n) => {
            let ty = n.ty.or_else(|| {
                let rt = n.value.get("resourceType")?.as_str()?;
                r4::type_index(rt)
            });
            if let Some(t) = ty {
                return (Some(t), TYPES[usize::from(t)].name);
            }
            match n.value {
                Value::Bool(_) => "Boolean",
                Value::Number(num) if num.is_i64() || num.is_u64() => "Integer",
                Value::Number(_) => "Decimal",
                Value::String(_) => "String",
                _ => "Any",
            }
        }
        Item::Bool(_) => "Boolean",
        Item::Int(_) => "Integer",
        Item::Dec(_) => "Decimal",
        Item::Str(_) => "String",
        Item::Temporal(t) => match t.kind {
            TemporalKind::Date => "Date",
            TemporalKind::DateTime => "DateTime",
            TemporalKind::Time => "Time",
        },
        Item::Quantity(_) => "Quantity",
        Item::Type(..) => "TypeInfo",
    };
    (None, system)
}

/// An item's value as FHIRPath operators see it.
#[derive(Debug, Clone)]
pub(crate) enum Val<'x> {
    Bool(bool),
    Int(i64),
    Dec(f64),
    Str(Cow<'x, str>),
    Temporal(Temporal),
    Quantity(Cow<'x, Quantity>),
    /// A complex node (compared as JSON) or a value-less primitive.
    Other,
}

impl Val<'_> {
    pub(super) fn number(&self) -> Option<f64> {
        match *self {
            Val::Int(i) => Some(i as f64),
            Val::Dec(d) => Some(d),
            _ => None,
        }
    }
}

/// The FHIR primitive types whose JSON string is a date, dateTime or time.
fn temporal_kind(ty: Option<u16>) -> Option<TemporalKind> {
    match TYPES[usize::from(ty?)].name {
        "date" | "System.Date" => Some(TemporalKind::Date),
        "dateTime" | "instant" | "System.DateTime" => Some(TemporalKind::DateTime),
        "time" | "System.Time" => Some(TemporalKind::Time),
        _ => None,
    }
}

pub(crate) fn value_of<'x>(item: &'x Item<'_>) -> Val<'x> {
    match item {
        Item::Bool(b) => Val::Bool(*b),
        Item::Int(i) => Val::Int(*i),
        Item::Dec(d) => Val::Dec(*d),
        Item::Str(s) => Val::Str(Cow::Borrowed(s)),
        Item::Temporal(t) => Val::Temporal(*t),
        Item::Quantity(q) => Val::Quantity(Cow::Borrowed(&**q)),
        Item::Type(..) => Val::Other,
        Item::Node(n) => match n.value {
            Value::Bool(b) => Val::Bool(*b),
            Value::Number(num) => {
                let decimal =
                    n.ty.is_some_and(|t| TYPES[usize::from(t)].name == "decimal");
                match num.as_i64() {
                    Some(i) if !decimal => Val::Int(i),
                    _ => Val::Dec(num.as_f64().unwrap_or(f64::NAN)),
                }
            }
            Value::String(s) => match temporal_kind(n.ty) {
                Some(kind) => {
                    match Temporal::parse(
                        s.strip_prefix('T').unwrap_or(s),
                        kind == TemporalKind::Time,
                    ) {
                        // A dateTime element may hold a bare date: it stays a DateTime.
                        Some(t) => Val::Temporal(t.with_kind(kind)),
                        None => Val::Str(Cow::Borrowed(s)),
                    }
                }
                None => Val::Str(Cow::Borrowed(s)),
            },
            Value::Object(map) if is_quantity(n) => {
                let value = map.get("value").and_then(Value::as_f64);
                let unit = map
                    .get("code")
                    .or_else(|| map.get("unit"))
                    .and_then(Value::as_str);
                match (value, unit) {
                    (Some(v), Some(u)) => Val::Quantity(Cow::Owned(Quantity::new(v, u))),
                    (Some(v), None) => Val::Quantity(Cow::Owned(Quantity::new(v, "1"))),
                    _ => Val::Other,
                }
            }
            _ => Val::Other,
        },
    }
}

fn is_quantity(n: &Node<'_>) -> bool {
    n.ty.is_some_and(|t| r4::derives_from(t, "Quantity"))
}

/// The string form of a primitive (`toString()`): `None` for a complex node.
pub(crate) fn to_string<'x>(item: &'x Item<'_>) -> Option<Cow<'x, str>> {
    Some(match value_of(item) {
        Val::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        Val::Int(i) => Cow::Owned(i.to_string()),
        Val::Dec(d) => Cow::Owned(match item.as_json() {
            Some(v) => v.to_string(),
            None => format_decimal(d),
        }),
        Val::Str(s) => s,
        Val::Temporal(t) => match item.as_str() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(t.to_string()),
        },
        Val::Quantity(q) => Cow::Owned(q.to_string()),
        Val::Other => return None,
    })
}

/// FHIRPath `=` on two items: `None` when the result is unknown (dates of different precision).
pub(crate) fn equal(a: &Item<'_>, b: &Item<'_>) -> Option<bool> {
    match (value_of(a), value_of(b)) {
        (Val::Other, Val::Other) => Some(json_equal(a, b)),
        (x, y) => match compare_values(&x, &y, false) {
            Comparison::Ordered(o) => Some(o.is_eq()),
            Comparison::Unknown => None,
            Comparison::Incompatible => Some(false),
        },
    }
}

fn json_equal(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (a.as_json(), b.as_json()) {
        (Some(x), Some(y)) => x == y && a.as_json().is_some_and(|v| !v.is_null()),
        _ => false,
    }
}

/// FHIRPath `~` on two items.
pub(crate) fn equivalent(a: &Item<'_>, b: &Item<'_>) -> bool {
    match (value_of(a), value_of(b)) {
        (Val::Other, Val::Other) => json_equal(a, b),
        (Val::Str(x), Val::Str(y)) => normalize(&x) == normalize(&y),
        (x @ (Val::Int(_) | Val::Dec(_)), y @ (Val::Int(_) | Val::Dec(_))) => {
            let (x, y) = (x.number().unwrap_or(0.0), y.number().unwrap_or(0.0));
            let places = decimals(x).min(decimals(y));
            round_to(x, places) == round_to(y, places)
        }
        (Val::Temporal(x), Val::Temporal(y)) => {
            x.same_precision(&y) && x.compare(&y) == Some(Ordering::Equal)
        }
        (x, y) => matches!(
            compare_values(&x, &y, true),
            Comparison::Ordered(Ordering::Equal)
        ),
    }
}

/// Whitespace collapsed and lower case, for `~` on strings.
fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

/// The number of decimal places of the shortest text of `x`.
fn decimals(x: f64) -> i32 {
    let s = format_decimal(x);
    s.split_once('.').map_or(0, |(_, f)| f.len() as i32)
}

pub(crate) fn round_to(x: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (x * scale).round() / scale
}

/// `~` on collections: same size, and every item of one equivalent to a distinct item of the other.
pub(crate) fn equivalent_collections(l: &[Item<'_>], r: &[Item<'_>]) -> bool {
    if l.len() != r.len() {
        return false;
    }
    let mut used = vec![false; r.len()];
    l.iter().all(|a| {
        let found = r
            .iter()
            .enumerate()
            .find(|(i, b)| !used[*i] && equivalent(a, b));
        found.map(|(i, _)| used[i] = true).is_some()
    })
}

/// The outcome of ordering two values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Comparison {
    Ordered(Ordering),
    /// Comparable types, but the answer is unknown (dates of different precision).
    Unknown,
    /// Types that do not compare.
    Incompatible,
}

pub(crate) fn compare(a: &Item<'_>, b: &Item<'_>) -> Comparison {
    compare_values(&value_of(a), &value_of(b), false)
}

fn compare_values(x: &Val<'_>, y: &Val<'_>, equivalent: bool) -> Comparison {
    let ordered = |o: Option<Ordering>| o.map_or(Comparison::Unknown, Comparison::Ordered);
    match (x, y) {
        (Val::Bool(a), Val::Bool(b)) => Comparison::Ordered(a.cmp(b)),
        (Val::Int(a), Val::Int(b)) => Comparison::Ordered(a.cmp(b)),
        (a @ (Val::Int(_) | Val::Dec(_)), b @ (Val::Int(_) | Val::Dec(_))) => {
            ordered(a.number().partial_cmp(&b.number()))
        }
        (Val::Str(a), Val::Str(b)) => Comparison::Ordered(a.cmp(b)),
        (Val::Temporal(a), Val::Temporal(b)) => {
            let dates = |k| k != TemporalKind::Time;
            match (a.kind, b.kind) {
                (k, l) if k == l || (dates(k) && dates(l)) => ordered(a.compare(b)),
                _ => Comparison::Incompatible,
            }
        }
        // A string against a date: read the string as one of the same kind.
        (Val::Temporal(a), Val::Str(s)) => match Temporal::parse(s, a.kind == TemporalKind::Time) {
            Some(b) => ordered(a.compare(&b)),
            None => Comparison::Incompatible,
        },
        (Val::Str(_), Val::Temporal(_)) => match compare_values(y, x, equivalent) {
            Comparison::Ordered(o) => Comparison::Ordered(o.reverse()),
            other => other,
        },
        (Val::Quantity(a), Val::Quantity(b)) => match a.compare(b, equivalent) {
            Some(o) => Comparison::Ordered(o),
            None => Comparison::Unknown,
        },
        _ => Comparison::Incompatible,
    }
}

/// `|`: both collections, duplicates removed.
pub(crate) fn union<'a>(l: Collection<'a>, r: Collection<'a>) -> Collection<'a> {
    let mut out: Collection<'a> = Vec::with_capacity(l.len() + r.len());
    for item in l.into_iter().chain(r) {
        if !out.iter().any(|o| equal(o, &item) == Some(true)) {
            out.push(item);
        }
    }
    out
}

/// Strict mode: the paths of `expr` against the model from `ty`, as a static checker sees them.
/// A path that starts with another resource type, an element the model does not have (after
/// `as` too), a choice element named with its type suffix, or an order-dependent function on
/// `children()`/`descendants()` (whose order is not defined) is an error.
pub(super) fn check_strict(expr: &Expr, ty: Option<u16>, source: &str) -> Result<()> {
    let mut failure = None;
    visit(expr, &mut |e| {
        if failure.is_some() {
            return;
        }
        match e {
            Expr::Member(base, name) => {
                let Some(owner) = strict_type(base, ty) else {
                    return;
                };
                let node = &TYPES[usize::from(owner)];
                if matches!(**base, Expr::This) && r4::is_resource_type(name) {
                    if node.key != &**name {
                        failure = Some(format!(
                            "{name} is not the type of the input ({})",
                            node.key
                        ));
                    }
                    return;
                }
                let known = node.elements.iter().any(|(e, _)| e == &&**name);
                let choice = node.elements.iter().any(|(e, _)| is_expansion(e, name));
                if !(known || choice) || is_choice_with_suffix(node, name) {
                    failure = Some(format!("{} has no element {name}", node.key));
                }
            }
            Expr::Call(base, func, _) if is_ordered(*func) && unordered(base) => {
                failure = Some(format!(
                    "{}() on a collection without a defined order",
                    func.name()
                ));
            }
            Expr::Index(base, _) if unordered(base) => {
                failure = Some("an indexer on a collection without a defined order".into());
            }
            _ => {}
        }
    });
    match failure {
        None => Ok(()),
        Some(msg) => Err(Error::FhirPath {
            expr: source.to_owned(),
            pos: None,
            msg,
        }),
    }
}

/// Whether `element` is `base` expanded with a type (`valueQuantity` of `value`).
fn is_expansion(element: &str, base: &str) -> bool {
    element
        .strip_prefix(base)
        .is_some_and(|s| s.starts_with(|c: char| c.is_ascii_uppercase()))
}

fn is_ordered(func: super::parser::Func) -> bool {
    use super::parser::Func::*;
    matches!(func, First | Last | Tail | Skip | Take | Single)
}

fn unordered(expr: &Expr) -> bool {
    use super::parser::Func::*;
    matches!(expr, Expr::Call(_, Children | Descendants, _))
}

/// Whether `name` is a choice element named with its type (`valueQuantity`): other expansions
/// of the same base exist.
fn is_choice_with_suffix(node: &r4::TypeNode, name: &str) -> bool {
    let Some(split) = name.find(|c: char| c.is_ascii_uppercase()) else {
        return false;
    };
    let base = &name[..split];
    node.elements
        .iter()
        .filter(|(e, _)| is_expansion(e, base))
        .count()
        > 1
}

/// The model type a path reaches from `ty`, when every step is known (`as` names its type).
fn strict_type(expr: &Expr, ty: Option<u16>) -> Option<u16> {
    match expr {
        Expr::This => ty,
        Expr::Member(base, name) => {
            let owner = strict_type(base, ty)?;
            if matches!(**base, Expr::This) && TYPES[usize::from(owner)].key == &**name {
                return Some(owner);
            }
            r4::element_type(owner, name)
        }
        Expr::As(_, name) => r4::type_index(name.strip_prefix("FHIR.").unwrap_or(name)),
        _ => None,
    }
}

/// The one item of `input`, for functions defined on a single item; several are an error.
pub(super) fn single_input<'x, 'a>(
    ev: &Eval<'_, 'a>,
    input: &'x [Item<'a>],
    func: &str,
) -> Result<Option<&'x Item<'a>>> {
    match input {
        [] => Ok(None),
        [item] => Ok(Some(item)),
        _ => Err(ev.error(format!(
            "{func}() expects a single item, got {}",
            input.len()
        ))),
    }
}

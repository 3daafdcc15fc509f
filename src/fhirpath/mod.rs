//! FHIRPath over `serde_json::Value`.
//!
//! An expression is parsed once into a small AST ([`FhirPath::compile`]) and evaluated against any
//! number of resources. Results are [`Collection`]s of [`Item`]s that borrow the resource's JSON nodes,
//! so navigation never copies the document; only computed values (booleans, arithmetic, `join`) own
//! data.
//!
//! The language of the FHIRPath specification (N1, with the 2.1 string functions) over FHIR R4:
//! member navigation typed by the R4 model shipped in [`crate::r4`] (choice elements: `value`
//! finds `valueQuantity` as a `Quantity`; primitives keep their FHIR type, so `gender` is a
//! `code`; `_name` siblings give primitives their extensions), indexers, `$this`, `$index`,
//! `$total`, `%constants` and the environment (`%resource`, `%context`, `%rootResource`,
//! `%ucum`, `%sct`, `%loinc`, `` %`vs-name` ``, `` %`ext-name` ``, `%rowIndex`), literals
//! (strings, numbers, booleans, `@` dates, dateTimes and times of any precision, quantities
//! `4 'mg'` and `1 year`, `{}`), comments, every operator with the specification's precedence,
//! empty-collection and conversion rules, and its function library, plus SQL on FHIR's
//! `getResourceKey` and `getReferenceKey`. See the README for what is not supported.
//!
//! Every evaluation runs on a budget of steps, items and string bytes, so no expression can
//! run for long or exhaust memory whatever its input.
//!
//! ```
//! use fhirflight::fhirpath::{EvalContext, FhirPath};
//! let patient = serde_json::json!({"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "M"}]}});
//! let path = FhirPath::compile("maritalStatus.coding[0].code")?;
//! let result = path.evaluate(&patient, &EvalContext::default())?;
//! assert_eq!(result[0].as_str(), Some("M"));
//! # Ok::<(), fhirflight::Error>(())
//! ```

mod eval;
mod functions;
mod parser;
mod reach;
mod value;

use std::borrow::Cow;

use serde_json::{Map, Value};

use crate::Result;
use crate::r4;
use parser::{BinOp, Expr, Func};
pub(crate) use reach::Reach;
pub use value::{Quantity, Temporal, TemporalKind};

/// The result of an evaluation: an ordered collection of items.
pub type Collection<'a> = Vec<Item<'a>>;

/// A node of a resource (or of a constant), borrowed, with what the R4 model says of it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Node<'a> {
    /// The JSON value; `null` for a primitive that has only an id or extensions.
    pub(crate) value: &'a Value,
    /// The index in [`r4::TYPES`] of its type, when known (`None` for constants and data the
    /// model does not describe; a resource's type is read from its `resourceType`).
    pub(crate) ty: Option<u16>,
    /// For a primitive, its `_name` sibling holding `id` and `extension`.
    pub(crate) ext: Option<&'a Value>,
}

/// One item of a [`Collection`].
#[derive(Debug, Clone, PartialEq)]
pub enum Item<'a> {
    /// A node of the resource (or of a constant), borrowed.
    Node(Node<'a>),
    /// A computed boolean.
    Bool(bool),
    /// A computed integer.
    Int(i64),
    /// A computed decimal.
    Dec(f64),
    /// A computed string (borrowed when it is a slice of the resource, as `getReferenceKey` returns).
    Str(Cow<'a, str>),
    /// A date, dateTime or time (literal or computed).
    Temporal(Temporal),
    /// A quantity (literal or computed).
    Quantity(Box<Quantity>),
    /// The result of `type()`: a namespace (`System`, `FHIR`) and a type name, which expose
    /// `namespace` and `name` as members.
    Type(&'static str, &'static str),
}

impl<'a> Item<'a> {
    /// A JSON node; its R4 type is read from `resourceType` when it is a resource.
    pub fn json(value: &'a Value) -> Self {
        Item::Node(Node {
            value,
            ty: None,
            ext: None,
        })
    }

    /// The JSON node, for items read from the resource.
    pub fn as_json(&self) -> Option<&'a Value> {
        match *self {
            Item::Node(n) => Some(n.value),
            _ => None,
        }
    }

    /// The item as a string slice, when it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Item::Str(s) => Some(s),
            _ => self.as_json().and_then(Value::as_str),
        }
    }

    /// The item as a boolean, when it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Item::Bool(b) => Some(b),
            _ => self.as_json().and_then(Value::as_bool),
        }
    }

    /// The item as an integer, when it is one (a JSON number without fraction).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Item::Int(i) => Some(i),
            _ => self.as_json().and_then(Value::as_i64),
        }
    }

    /// The item as a decimal, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Item::Int(i) => Some(i as f64),
            Item::Dec(d) => Some(d),
            _ => self.as_json().and_then(Value::as_f64),
        }
    }

    /// The item as a value and a unit, when it is a Quantity (a literal, or a node of type
    /// `Quantity` or one derived from it: its `value` and `code`, else `unit`).
    pub fn as_quantity(&self) -> Option<(f64, Cow<'_, str>)> {
        match eval::value_of(self) {
            eval::Val::Quantity(q) => Some((q.value, Cow::Owned(q.unit.clone()))),
            _ => None,
        }
    }

    /// The FHIRPath type of the item: a FHIR type for a node the R4 model describes (`code`,
    /// `HumanName`, `Patient`; `BackboneElement` for a backbone element), else a System type
    /// (`Boolean`, `Integer`, `Decimal`, `String`, `Date`, `DateTime`, `Time`, `Quantity`).
    pub fn type_name(&self) -> &'static str {
        eval::type_of(self).1
    }

    /// The item as text: what `toString()` gives for a primitive (`2 'mg'` for a quantity,
    /// `2014-01-25` for a date), JSON for anything else.
    pub fn to_text(&self) -> String {
        match eval::to_string(self) {
            Some(text) => text.into_owned(),
            None => self.to_json().to_string(),
        }
    }

    /// The item as owned JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Item::Node(n) => n.value.clone(),
            Item::Bool(b) => Value::Bool(*b),
            Item::Int(i) => Value::from(*i),
            Item::Dec(d) => Value::from(*d),
            Item::Str(s) => Value::String(s.to_string()),
            Item::Temporal(t) => Value::String(t.to_string()),
            Item::Quantity(q) => Value::String(q.to_string()),
            Item::Type(ns, name) => serde_json::json!({"namespace": ns, "name": name}),
        }
    }
}

/// A decimal as FHIRPath writes it: no exponent, no trailing `.0` (`1.5`, `3`, `0.0001`).
pub(crate) fn format_decimal(d: f64) -> String {
    if d.is_finite() && d == d.trunc() && d.abs() < 1e15 {
        return format!("{}", d as i64);
    }
    let s = format!("{d}");
    if !s.contains('e') {
        return s;
    }
    let s = format!("{d:.15}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// What an expression may refer to besides the resource: `%constants` and `%rowIndex`.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalContext<'a> {
    constants: Option<&'a Map<String, Value>>,
    row_index: i64,
}

impl<'a> EvalContext<'a> {
    /// A context without constants, `%rowIndex` 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// Values for `%name` (JSON: strings, numbers, booleans).
    pub fn with_constants(self, constants: &'a Map<String, Value>) -> Self {
        Self {
            constants: Some(constants),
            ..self
        }
    }

    /// The value of `%rowIndex`.
    pub fn with_row_index(self, row_index: i64) -> Self {
        Self { row_index, ..self }
    }
}

/// A compiled FHIRPath expression.
#[derive(Debug, Clone)]
pub struct FhirPath {
    source: String,
    expr: Expr,
}

impl FhirPath {
    /// Parses `expr`. Syntax errors and unknown functions are [`crate::Error::FhirPath`] with the byte
    /// position in the expression; an expression longer than 64 KiB or nested deeper than 256
    /// levels is refused before its tree is built.
    pub fn compile(expr: &str) -> Result<Self> {
        Ok(Self {
            source: expr.to_owned(),
            expr: parser::parse(expr)?,
        })
    }

    /// The expression text.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The names of the `%constants` the expression uses (not the environment's own variables
    /// such as `%resource`, `%rowIndex` or `%ucum`), to validate them early.
    pub fn constants(&self) -> Vec<&str> {
        let mut names = Vec::new();
        eval::visit(&self.expr, &mut |e| {
            if let Expr::Env(name) = e
                && !eval::is_builtin_variable(name)
            {
                names.push(&**name);
            }
        });
        names
    }

    /// The FHIR type the expression evidently returns (`exists()` is `boolean`, `count()` is
    /// `integer`), when its outermost form says so.
    pub fn result_type(&self) -> Option<&'static str> {
        use BinOp::*;
        match &self.expr {
            Expr::Bool(_)
            | Expr::Is(..)
            | Expr::Binary(
                And | Or | Xor | Implies | Eq | Ne | Equiv | NotEquiv | Lt | Le | Gt | Ge | In
                | Contains,
                ..,
            ) => Some("boolean"),
            Expr::Call(_, func, _) => match func {
                Func::Exists
                | Func::Empty
                | Func::Not
                | Func::All
                | Func::AllTrue
                | Func::AnyTrue
                | Func::AllFalse
                | Func::AnyFalse
                | Func::IsDistinct
                | Func::SubsetOf
                | Func::SupersetOf
                | Func::StartsWith
                | Func::EndsWith
                | Func::ContainsStr
                | Func::Matches
                | Func::MatchesFull
                | Func::HasValue
                | Func::IsFn => Some("boolean"),
                Func::Count | Func::Length | Func::IndexOf | Func::LastIndexOf => Some("integer"),
                Func::Join
                | Func::ResourceKey
                | Func::ReferenceKey
                | Func::ToStringFn
                | Func::Upper
                | Func::Lower
                | Func::Substring
                | Func::Replace
                | Func::Trim => Some("string"),
                _ => None,
            },
            Expr::Int(_) => Some("integer"),
            Expr::Env(name) if &**name == "rowIndex" => Some("integer"),
            Expr::Dec(_) => Some("decimal"),
            Expr::Str(_) | Expr::Binary(Concat, ..) => Some("string"),
            _ => None,
        }
    }

    /// Evaluates the expression with `resource` as the focus (and `%resource`).
    pub fn evaluate<'a>(
        &self,
        resource: &'a Value,
        ctx: &EvalContext<'a>,
    ) -> Result<Collection<'a>> {
        self.evaluate_on(&[Item::json(resource)], ctx)
    }

    /// Evaluates the expression with `focus` as the input collection (a `forEach` element, say).
    pub fn evaluate_on<'a>(
        &self,
        focus: &[Item<'a>],
        ctx: &EvalContext<'a>,
    ) -> Result<Collection<'a>> {
        eval::Eval::new(ctx, &self.source, focus).eval(&self.expr, focus)
    }

    /// Checks the expression against the R4 model for `resource`'s type, as a strict engine does
    /// before evaluating: a path must start at that type (or a member of it) and name only
    /// elements the model has; a choice element must be named without its type suffix.
    pub fn check_strict(&self, resource: Option<&Value>) -> Result<()> {
        let ty = resource
            .and_then(|r| r.get("resourceType"))
            .and_then(Value::as_str)
            .and_then(r4::type_index);
        eval::check_strict(&self.expr, ty, &self.source)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(expr: &str, resource: &Value) -> Vec<Value> {
        let constants = json!({"use": "official", "two": 2})
            .as_object()
            .unwrap()
            .clone();
        let ctx = EvalContext::new()
            .with_constants(&constants)
            .with_row_index(7);
        FhirPath::compile(expr)
            .unwrap()
            .evaluate(resource, &ctx)
            .unwrap()
            .iter()
            .map(Item::to_json)
            .collect()
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient", "id": "p1", "active": true, "gender": "female", "birthDate": "1970-06",
            "name": [{"use": "official", "family": "Smith", "given": ["Ann", "Bea"]}, {"family": "Jones", "given": ["Cy"]}],
            "deceasedBoolean": false,
            "extension": [{"url": "http://x/race", "extension": [{"url": "ombCategory", "valueCoding": {"code": "2106-3"}}]}],
            "link": [{"other": {"reference": "Patient/p1"}}, {"other": {"reference": "Group/g1/_history/2"}}]
        })
    }

    #[test]
    fn navigation_and_indexers() {
        let p = patient();
        assert_eq!(
            eval("name.given", &p),
            vec![json!("Ann"), json!("Bea"), json!("Cy")]
        );
        assert_eq!(eval("Patient.name[1].family", &p), vec![json!("Jones")]);
        assert_eq!(eval("name[%two].family", &p), Vec::<Value>::new());
        assert_eq!(eval("name.first().given.last()", &p), vec![json!("Bea")]);
        assert_eq!(eval("name.given.count()", &p), vec![json!(3)]);
        assert_eq!(eval("%rowIndex + 1", &p), vec![json!(8)]);
    }

    #[test]
    fn filters_and_logic() {
        let p = patient();
        assert_eq!(
            eval("name.where(use = %use).family", &p),
            vec![json!("Smith")]
        );
        assert_eq!(
            eval("name.where(use = 'x').exists()", &p),
            vec![json!(false)]
        );
        assert_eq!(eval("name.exists(family = 'Jones')", &p), vec![json!(true)]);
        assert_eq!(eval("active and gender = 'male'", &p), vec![json!(false)]);
        assert_eq!(eval("missing or true", &p), vec![json!(true)]);
        assert_eq!(eval("missing and true", &p), Vec::<Value>::new());
        assert_eq!(eval("(gender = 'male').not()", &p), vec![json!(true)]);
        assert_eq!(eval("missing.empty()", &p), vec![json!(true)]);
        assert_eq!(eval("name.family = 'Smith'", &p), vec![json!(false)]);
        assert_eq!(eval("missing = 'Smith'", &p), Vec::<Value>::new());
    }

    #[test]
    fn choice_types_and_extensions() {
        let p = patient();
        assert_eq!(eval("deceased.ofType(boolean)", &p), vec![json!(false)]);
        assert_eq!(eval("deceased.ofType(dateTime)", &p), Vec::<Value>::new());
        let url = "extension('http://x/race').extension('ombCategory').value.ofType(Coding).code";
        assert_eq!(eval(url, &p), vec![json!("2106-3")]);
        let obs = json!({"resourceType": "Observation", "valueQuantity": {"value": 1.0}});
        assert_eq!(eval("value.ofType(Quantity).value", &obs), vec![json!(1.0)]);
        assert_eq!(eval("value.ofType(string)", &obs), Vec::<Value>::new());
    }

    #[test]
    fn strings_arithmetic_and_comparison() {
        let p = patient();
        assert_eq!(
            eval("name.given.join(', ')", &p),
            vec![json!("Ann, Bea, Cy")]
        );
        assert_eq!(eval("name.given.join()", &p), vec![json!("AnnBeaCy")]);
        assert_eq!(eval("3 / 2", &p), vec![json!(1.5)]);
        assert_eq!(eval("2 * 3 - 1", &p), vec![json!(5)]);
        assert_eq!(eval("1.5 + 1", &p), vec![json!(2.5)]);
        assert_eq!(eval("'a' + 'b' & {}", &p), vec![json!("ab")]);
        assert_eq!(eval("birthDate < '1980-01-01'", &p), vec![json!(true)]);
        assert_eq!(eval("2 >= 2.0", &p), vec![json!(true)]);
        assert_eq!(eval("(1 | 2 | 1).count()", &p), vec![json!(2)]);
    }

    #[test]
    fn resource_and_reference_keys() {
        let p = patient();
        assert_eq!(eval("getResourceKey()", &p), vec![json!("p1")]);
        assert_eq!(
            eval("link.other.getReferenceKey()", &p),
            vec![json!("p1"), json!("g1")]
        );
        assert_eq!(
            eval("link.other.getReferenceKey(Group)", &p),
            vec![json!("g1")]
        );
        assert_eq!(
            eval("getResourceKey() = link.other.getReferenceKey(Patient)", &p),
            vec![json!(true)]
        );
    }

    #[test]
    fn boundaries() {
        let p = patient();
        assert_eq!(
            eval("birthDate.lowBoundary()", &p),
            vec![json!("1970-06-01")]
        );
        assert_eq!(
            eval("birthDate.highBoundary()", &p),
            vec![json!("1970-06-30")]
        );
        assert_eq!(
            eval("'2024-02'.highBoundary()", &p),
            vec![json!("2024-02-29")]
        );
        let obs = json!({"valueDateTime": "2010-10-10", "valueTime": "12:34", "n": 1.0, "i": 3});
        assert_eq!(
            eval("value.ofType(dateTime).lowBoundary()", &obs),
            vec![json!("2010-10-10T00:00:00.000+14:00")]
        );
        assert_eq!(
            eval("value.ofType(dateTime).highBoundary()", &obs),
            vec![json!("2010-10-10T23:59:59.999-12:00")]
        );
        assert_eq!(
            eval("'2010-10-10T10:20Z'.lowBoundary()", &obs),
            vec![json!("2010-10-10T10:20:00.000Z")]
        );
        assert_eq!(
            eval("value.ofType(time).highBoundary()", &obs),
            vec![json!("12:34:59.999")]
        );
        assert_eq!(eval("n.lowBoundary()", &obs), vec![json!(0.95)]);
        assert_eq!(eval("n.highBoundary()", &obs), vec![json!(1.05)]);
        assert_eq!(eval("i.highBoundary()", &obs), vec![json!(3.5)]);
    }

    #[test]
    fn evaluation_errors() {
        let p = patient();
        let err = |expr: &str| {
            FhirPath::compile(expr)
                .unwrap()
                .evaluate(&p, &EvalContext::new())
                .unwrap_err()
                .to_string()
        };
        assert!(
            err("%nope").contains("unknown constant %nope"),
            "{}",
            err("%nope")
        );
        assert!(
            err("name.given + 1").contains("expected a single item"),
            "{}",
            err("name.given + 1")
        );
        assert!(err("name['a']").contains("index"), "{}", err("name['a']"));
        let path = FhirPath::compile("name.where(use = %a).family | %b").unwrap();
        assert_eq!(path.constants(), vec!["a", "b"]);
    }

    #[test]
    fn the_functions_notebook_users_reach_for() {
        let p = patient();
        assert_eq!(eval("iif(active, 'yes', 'no')", &p), vec![json!("yes")]);
        assert_eq!(
            eval("name[0].family.substring(1, 3)", &p),
            vec![json!("mit")]
        );
        assert_eq!(
            eval("name.suffix.startsWith('Sm')", &p),
            Vec::<Value>::new()
        );
        assert_eq!(
            eval("name[1].family.startsWith('Jo')", &p),
            vec![json!(true)]
        );
        assert_eq!(
            eval("(name.use | 'x' | 'x').distinct().count()", &p),
            vec![json!(2)]
        );
        assert_eq!(eval("name.given.distinct().count()", &p), vec![json!(3)]);
        assert_eq!(
            eval("active.toString() & gender.upper()", &p),
            vec![json!("trueFEMALE")]
        );
        assert_eq!(
            eval("name.select(family.lower())", &p),
            vec![json!("smith"), json!("jones")]
        );
        assert_eq!(eval("gender.replace('fe', '')", &p), vec![json!("male")]);
        assert_eq!(eval("birthDate.toDate() < @1971", &p), vec![json!(true)]);
        assert_eq!(
            eval("(birthDate.toDate() + 1 month).toString()", &p),
            vec![json!("1970-07")]
        );
        assert_eq!(eval("deceased is boolean", &p), vec![json!(true)]);
        assert_eq!(eval("gender.type().name", &p), vec![json!("code")]);
        assert_eq!(
            eval("5 'mg' < 1 'g' and 2 days = 48 'h'", &p),
            vec![json!(true)]
        );
        assert_eq!(
            eval("(1 | 2 | 3).aggregate($total + $this, 0)", &p),
            vec![json!(6)]
        );
        assert_eq!(eval("7 div 2 + 7 mod 2 // a comment", &p), vec![json!(4)]);
    }

    #[test]
    fn the_deepest_expressions_evaluate_on_a_default_thread_stack() {
        let p = patient();
        let nest = |open: &str, inner: &str, k: usize| {
            format!("{}{inner}{}", open.repeat(k), ")".repeat(k))
        };
        let shapes: [&dyn Fn(usize) -> String; 7] = [
            &|k| nest("name.where(", "true", k),
            &|k| nest("(1 + ", "1", k),
            &|k| vec!["1"; k].join(" + "),
            &|k| nest("iif(true, ", "1", k),
            &|k| nest("(1).select(", "$this", k),
            &|k| nest("name.exists(", "given", k),
            &|k| nest("-(", "1", k),
        ];
        // The deepest tree the parser accepts of each shape evaluates on a test thread's 2 MiB of
        // stack, as on spawned threads and tokio's workers.
        for shape in shapes {
            let path = (1..=parser::MAX_DEPTH)
                .rev()
                .find_map(|k| FhirPath::compile(&shape(k)).ok())
                .unwrap();
            path.evaluate(&p, &EvalContext::new()).unwrap();
        }
    }
}

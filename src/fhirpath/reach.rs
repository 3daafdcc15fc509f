//! What of a resource a set of expressions can reach, found from the expressions alone, and a
//! JSON parse that builds only that: a view over Patients that reads four elements need not
//! allocate the names, addresses and extensions it never looks at.
//!
//! The analysis follows the evaluator: it runs an expression over *positions* (nodes of a
//! [`Reach`] tree, each standing for every element at one path) instead of items. A position
//! marked whole keeps its entire subtree; the value of an expression that is used other than by
//! navigation (compared, printed, converted, handed to an unknown function) is marked whole, so
//! the evaluator sees exactly what it would see in the full resource. What the analysis cannot
//! bound (`$total`, `defineVariable`) keeps the whole resource.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::FhirPath;
use super::parser::{BinOp, Expr, Func};

/// A position in a [`Reach`]: an index into its nodes.
pub(crate) type Position = usize;

/// The parts of a resource some expressions reach: a tree of element names from the resource's
/// root ([`Reach::ROOT`]), whose nodes are kept whole or only for their named children.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    nodes: Vec<ReachNode>,
}

#[derive(Debug, Clone, Default)]
struct ReachNode {
    whole: bool,
    /// A member name and its node; it stands for the JSON keys `name`, `_name` (a primitive's
    /// extensions) and `nameType` (a choice element) alike.
    children: Vec<(Box<str>, Position)>,
}

impl Reach {
    /// The resource itself.
    pub(crate) const ROOT: Position = 0;

    /// Nothing reached yet but the root (and the `resourceType` of every object, always kept).
    pub(crate) fn new() -> Self {
        Self {
            nodes: vec![ReachNode::default()],
        }
    }

    /// Keeps `at`'s subtree whole.
    pub(crate) fn whole(&mut self, at: &[Position]) {
        for &p in at {
            self.nodes[p].whole = true;
        }
    }

    /// The position of member `name` under `at` (`at` itself when kept whole).
    fn child(&mut self, at: Position, name: &str) -> Position {
        let node = &self.nodes[at];
        if node.whole {
            return at;
        }
        if let Some(&(_, p)) = node.children.iter().find(|(n, _)| &**n == name) {
            return p;
        }
        let p = self.nodes.len();
        self.nodes.push(ReachNode::default());
        self.nodes[at].children.push((name.into(), p));
        p
    }

    /// Where JSON key `key` of an object at `at` leads: kept whole, kept in part, or skipped.
    fn key(&self, at: Position, key: &str) -> Keep {
        let names = |key: &str, name: &str| {
            key.strip_prefix(name).is_some_and(|rest| {
                rest.is_empty() || rest.starts_with(|c: char| c.is_ascii_uppercase())
            })
        };
        let shadowed = key.strip_prefix('_');
        let mut found = self.nodes[at]
            .children
            .iter()
            .filter(|(n, _)| names(key, n) || shadowed.is_some_and(|key| names(key, n)));
        match (found.next(), found.next()) {
            // Two names reach the key (`value` and `valueQuantity`): keep it all.
            (Some(_), Some(_)) => Keep::Whole,
            (Some(&(_, p)), None) if self.nodes[p].whole => Keep::Whole,
            (Some(&(_, p)), None) => Keep::Part(p),
            (None, _) if key == "resourceType" => Keep::Whole,
            (None, _) => Keep::Skip,
        }
    }

    /// Parses one JSON resource, building only what this reach keeps; anything else is checked
    /// as JSON and skipped. Errors as [`serde_json::from_str`].
    pub(crate) fn parse(&self, json: &str) -> serde_json::Result<Value> {
        let mut de = serde_json::Deserializer::from_str(json);
        let value = Pruned {
            reach: self,
            at: Self::ROOT,
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }
}

enum Keep {
    Whole,
    Part(Position),
    Skip,
}

impl FhirPath {
    /// Adds to `reach` what this expression reaches when evaluated on `focus` (which is also its
    /// `%resource` and `%context`, with the resource's root), and returns the positions of its
    /// result, not yet kept whole; `None` when the expression's reach cannot be bounded.
    pub(crate) fn reach(&self, focus: &[Position], reach: &mut Reach) -> Option<Vec<Position>> {
        Analysis {
            reach,
            start: focus,
        }
        .expr(&self.expr, focus)
    }
}

struct Analysis<'r, 's> {
    reach: &'r mut Reach,
    /// The evaluation's starting focus: `%resource`, `%context`.
    start: &'s [Position],
}

impl Analysis<'_, '_> {
    /// The positions of `expr`'s result, on `this`. Recursion follows the parsed tree, whose
    /// depth the parser bounds, on a stack grown as the evaluator's is.
    #[recursive::recursive]
    fn expr(&mut self, expr: &Expr, this: &[Position]) -> Option<Vec<Position>> {
        Some(match expr {
            Expr::This => this.to_vec(),
            Expr::Total => return None,
            Expr::IndexVar
            | Expr::Empty
            | Expr::Bool(_)
            | Expr::Int(_)
            | Expr::Dec(_)
            | Expr::Str(_)
            | Expr::Temporal(_)
            | Expr::Quantity(_)
            | Expr::TypeName(_) => Vec::new(),
            Expr::Env(name) => match &**name {
                "resource" | "rootResource" | "context" => union(self.start, &[Reach::ROOT]),
                // The environment's strings, or the view's constants: never the resource (a
                // `defineVariable` name is refused at its definition).
                _ => Vec::new(),
            },
            Expr::Member(base, name) => {
                let mut out = Vec::new();
                for p in self.expr(base, this)? {
                    if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                        // `Patient.name`: the resource type names the item itself.
                        out.push(p);
                    }
                    out.push(self.reach.child(p, name));
                }
                out
            }
            Expr::Index(base, index) => {
                self.used(index, this)?;
                self.expr(base, this)?
            }
            Expr::Call(base, func, args) => {
                let input = self.expr(base, this)?;
                self.call(*func, args, input, this)?
            }
            Expr::Binary(op, lhs, rhs) => {
                let (l, r) = (self.used(lhs, this)?, self.used(rhs, this)?);
                match op {
                    BinOp::Union => union(&l, &r),
                    _ => Vec::new(),
                }
            }
            Expr::Neg(inner) => {
                self.used(inner, this)?;
                Vec::new()
            }
            Expr::Is(base, _) => {
                self.used(base, this)?;
                Vec::new()
            }
            Expr::As(base, _) => self.used(base, this)?,
        })
    }

    /// The positions of `expr`'s result, kept whole: a value looked at, not only navigated.
    fn used(&mut self, expr: &Expr, this: &[Position]) -> Option<Vec<Position>> {
        let out = self.expr(expr, this)?;
        self.reach.whole(&out);
        Some(out)
    }

    fn call(
        &mut self,
        func: Func,
        args: &[Expr],
        input: Vec<Position>,
        this: &[Position],
    ) -> Option<Vec<Position>> {
        use Func::*;
        Some(match (func, args) {
            (Aggregate | DefineVariable, _) => return None,
            // The input's items counted or tested for presence, not looked into.
            (Empty | Count | Exists, []) => Vec::new(),
            (Exists | All, [criteria]) => {
                self.used(criteria, &input)?;
                Vec::new()
            }
            (Where, [criteria]) => {
                self.used(criteria, &input)?;
                input
            }
            (Select, [projection]) => self.expr(projection, &input)?,
            (First | Last | Tail | Single, []) => input,
            (Skip | Take, [n]) => {
                self.used(n, &union(&input, this))?;
                input
            }
            (Extension, [url]) => {
                self.used(url, &union(&input, this))?;
                let mut out = Vec::new();
                for p in input {
                    let ext = self.reach.child(p, "extension");
                    let url = self.reach.child(ext, "url");
                    self.reach.whole(&[url]);
                    out.push(ext);
                }
                out
            }
            // Only the item count of the input matters; the branches are results.
            (Iif, [criterion, branches @ ..]) => {
                let scope = union(&input, this);
                self.used(criterion, &scope)?;
                let mut out = Vec::new();
                for branch in branches {
                    out = union(&out, &self.expr(branch, &scope)?);
                }
                out
            }
            (Now | Today | TimeOfDay, _) => Vec::new(),
            (ResourceKey | ReferenceKey, _) => {
                let key = if func == ResourceKey {
                    "id"
                } else {
                    "reference"
                };
                for p in input {
                    let at = self.reach.child(p, key);
                    self.reach.whole(&[at]);
                }
                Vec::new()
            }
            // Any other function may look at all of its input and arguments (evaluated on the
            // input or on the focus) and return any part of them.
            _ => {
                self.reach.whole(&input);
                let scope = union(&input, this);
                let mut out = input;
                for arg in args {
                    out = union(&out, &self.used(arg, &scope)?);
                }
                out
            }
        })
    }
}

fn union(a: &[Position], b: &[Position]) -> Vec<Position> {
    let mut out = a.to_vec();
    out.extend(b.iter().filter(|p| !a.contains(p)));
    out
}

/// A [`DeserializeSeed`] building the part of a JSON value that a position of a [`Reach`] keeps.
struct Pruned<'r> {
    reach: &'r Reach,
    at: Position,
}

impl<'de> DeserializeSeed<'de> for Pruned<'_> {
    type Value = Value;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        match self.reach.nodes[self.at].whole {
            true => Value::deserialize(d),
            false => d.deserialize_any(self),
        }
    }
}

impl<'de> Visitor<'de> for Pruned<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Pruned { ..self })? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            match self.reach.key(self.at, &key) {
                Keep::Whole => {
                    out.insert(key.into_owned(), map.next_value()?);
                }
                Keep::Part(at) => {
                    let value = map.next_value_seed(Pruned {
                        reach: self.reach,
                        at,
                    })?;
                    out.insert(key.into_owned(), value);
                }
                Keep::Skip => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }
}

/// An object's key, borrowed from the input when it has no escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn reach(exprs: &[&str]) -> Option<Reach> {
        let mut reach = Reach::new();
        for expr in exprs {
            let out = FhirPath::compile(expr)
                .unwrap()
                .reach(&[Reach::ROOT], &mut reach)?;
            reach.whole(&out);
        }
        Some(reach)
    }

    #[test]
    fn a_parse_builds_only_what_the_expressions_reach() {
        let line = json!({
            "resourceType": "Patient", "id": "p", "gender": "male",
            "_gender": {"id": "g", "extension": [{"url": "u", "valueCode": "x", "id": "e"}]},
            "name": [{"family": "F", "given": ["A"], "use": "official"}, {"family": "G"}],
            "maritalStatus": {"coding": [{"system": "s", "code": "M"}], "text": "Married"},
            "deceasedBoolean": false, "address": [{"line": ["1 Main St"], "city": "C"}],
            "contained": [{"resourceType": "Organization", "name": "o"}]
        })
        .to_string();
        let reach = reach(&[
            "maritalStatus.coding[0].code",
            "name.where(given.exists()).family",
            "gender.extension('u').value",
            "deceased",
        ])
        .unwrap();
        let expected = json!({
            "resourceType": "Patient", "gender": "male",
            "_gender": {"extension": [{"url": "u", "valueCode": "x"}]},
            "name": [{"family": "F", "given": ["A"]}, {"family": "G"}],
            "maritalStatus": {"coding": [{"code": "M"}]}, "deceasedBoolean": false
        });
        assert_eq!(reach.parse(&line).unwrap(), expected);
        // What is skipped is still checked as JSON.
        assert!(reach.parse(r#"{"address": [1,]}"#).is_err());
        assert!(reach.parse(r#"{"id": "p"} x"#).is_err());
        // But not as values: a number out of range or a deep nesting there is not built, so
        // not refused.
        let deep = format!(r#"{{"id": {}1e400{}}}"#, "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert_eq!(reach.parse(&deep).unwrap(), json!({}));
    }

    #[test]
    fn what_cannot_be_bounded_keeps_everything() {
        assert!(reach(&["name.aggregate($total + 1, 0)"]).is_none());
        assert!(reach(&["defineVariable('n', name).select(%n.family)"]).is_none());
        let all = reach(&["name.given", "descendants().count()"]).unwrap();
        let line =
            r#"{"resourceType":"Patient","address":[{"city":"C"}],"name":[{"given":["A"]}]}"#;
        assert_eq!(
            all.parse(line).unwrap(),
            serde_json::from_str::<Value>(line).unwrap()
        );
    }
}

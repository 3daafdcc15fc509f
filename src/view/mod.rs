//! SQL on FHIR v2 ViewDefinition runner.
//!
//! A [`ViewDefinition`] is parsed and validated once ([`ViewDefinition::from_json`]): its FHIRPath
//! expressions are compiled, constants checked, `unionAll` branches matched, and its Arrow schema is
//! known from the definition alone. A [`ViewRunner`] then turns resources, pushed one at a time, into
//! typed record batches.
//!
//! Column types map to Arrow as `boolean` -> Boolean, `integer`/`positiveInt`/`unsignedInt`/
//! `integer64` -> Int64, `decimal` -> Float64, everything else (strings, codes, dates, times) ->
//! Utf8; `collection: true` columns are Lists of that type. A column without a `type` takes the type
//! its expression evidently returns (`exists()` is boolean) or Utf8.
//!
//! ```
//! use std::sync::Arc;
//! use fhirflight::view::{ViewDefinition, ViewRunner};
//! let view = ViewDefinition::from_paths("Patient", &[("id", "id"), ("marital_status", "maritalStatus.coding[0].code")])?;
//! let mut runner = ViewRunner::new(Arc::new(view), 1024);
//! runner.push(&serde_json::json!({"resourceType": "Patient", "id": "p1"}))?;
//! let batch = runner.flush()?.expect("one row");
//! assert_eq!((batch.num_rows(), batch.num_columns()), (1, 2));
//! # Ok::<(), fhirflight::Error>(())
//! ```

#[cfg(test)]
mod fuzz;
mod parallel;
mod runner;

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde_json::{Map, Value};

use crate::fhirpath::{FhirPath, Reach};
use crate::{Error, Result};

pub use parallel::{run_reader, run_readers};
pub use runner::ViewRunner;

/// A validated, compiled SQL on FHIR ViewDefinition.
#[derive(Debug)]
pub struct ViewDefinition {
    /// The JSON the view was read from (see [`ViewDefinition::definition`]).
    definition: Value,
    name: Option<String>,
    resource: String,
    constants: Map<String, Value>,
    filters: Vec<FhirPath>,
    root: Select,
    columns: Vec<ColumnType>,
    schema: SchemaRef,
    /// What of a resource the view's expressions can reach, which is all a line's parse needs to
    /// build; `None` when that cannot be bounded.
    reach: Option<Reach>,
}

/// One `select` element: how it iterates and what it produces, in output column order.
#[derive(Debug)]
struct Select {
    iterate: Iterate,
    columns: Vec<Column>,
    selects: Vec<Select>,
    union_all: Vec<Select>,
    /// Number of output columns of this select and its descendants.
    width: usize,
}

#[derive(Debug)]
enum Iterate {
    Once,
    ForEach(FhirPath),
    ForEachOrNull(FhirPath),
    Repeat(Vec<FhirPath>),
}

#[derive(Debug)]
struct Column {
    path: FhirPath,
    /// Index into [`ViewDefinition::columns`] (and the schema).
    index: usize,
}

/// Per output column: the value type and how many values a row may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ColumnType {
    kind: Kind,
    cardinality: Cardinality,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bool,
    Int,
    Dec,
    Str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cardinality {
    /// At most one value, more is an error.
    Single,
    /// A List column.
    Collection,
    /// The first value, the rest dropped (the notebook's shorthand).
    First,
}

impl Kind {
    fn of_fhir_type(ty: &str) -> Kind {
        match ty {
            "boolean" => Kind::Bool,
            "integer" | "positiveInt" | "unsignedInt" | "integer64" => Kind::Int,
            "decimal" => Kind::Dec,
            _ => Kind::Str,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Bool => DataType::Boolean,
            Kind::Int => DataType::Int64,
            Kind::Dec => DataType::Float64,
            Kind::Str => DataType::Utf8,
        }
    }
}

/// Collects columns while the select tree is read, in the specification's order.
struct Builder {
    view: String,
    constants: Map<String, Value>,
    fields: Vec<Field>,
    columns: Vec<ColumnType>,
}

impl Builder {
    fn error(&self, at: &str, msg: impl std::fmt::Display) -> Error {
        Error::View {
            view: self.view.clone(),
            msg: format!("{at}: {msg}"),
            source: None,
        }
    }

    fn path(&self, at: &str, value: Option<&Value>) -> Result<FhirPath> {
        let text = value
            .and_then(Value::as_str)
            .ok_or_else(|| self.error(at, "expected a FHIRPath string"))?;
        let path = FhirPath::compile(text)?;
        if let Some(missing) = path
            .constants()
            .into_iter()
            .find(|c| !self.constants.contains_key(*c))
        {
            return Err(self.error(at, format!("undefined constant %{missing}")));
        }
        Ok(path)
    }

    fn select(&mut self, at: &str, value: &Value) -> Result<Select> {
        let obj = value
            .as_object()
            .ok_or_else(|| self.error(at, "a select must be an object"))?;
        let start = self.fields.len();
        let iterate = match (
            obj.get("forEach"),
            obj.get("forEachOrNull"),
            obj.get("repeat"),
        ) {
            (None, None, None) => Iterate::Once,
            (Some(p), None, None) => {
                Iterate::ForEach(self.path(&format!("{at}.forEach"), Some(p))?)
            }
            (None, Some(p), None) => {
                Iterate::ForEachOrNull(self.path(&format!("{at}.forEachOrNull"), Some(p))?)
            }
            (None, None, Some(Value::Array(paths))) if !paths.is_empty() => Iterate::Repeat(
                paths
                    .iter()
                    .enumerate()
                    .map(|(i, p)| self.path(&format!("{at}.repeat[{i}]"), Some(p)))
                    .collect::<Result<_>>()?,
            ),
            (None, None, Some(_)) => {
                return Err(self.error(at, "repeat must be a non-empty array of FHIRPath strings"));
            }
            _ => {
                return Err(self.error(
                    at,
                    "only one of forEach, forEachOrNull and repeat may be given",
                ));
            }
        };
        let mut columns = Vec::new();
        for (i, col) in array(obj.get("column")).enumerate() {
            columns.push(self.column(&format!("{at}.column[{i}]"), col)?);
        }
        let mut selects = Vec::new();
        for (i, sel) in array(obj.get("select")).enumerate() {
            selects.push(self.select(&format!("{at}.select[{i}]"), sel)?);
        }
        let mut union_all = Vec::new();
        let union_start = self.fields.len();
        for (i, sel) in array(obj.get("unionAll")).enumerate() {
            let before = self.fields.len();
            union_all.push(self.select(&format!("{at}.unionAll[{i}]"), sel)?);
            if i > 0 {
                // Every branch yields the same columns; keep only the first branch's.
                let branch: Vec<Field> = self.fields.drain(before..).collect();
                self.columns.truncate(before);
                if branch != self.fields[union_start..] {
                    let names = |f: &[Field]| {
                        f.iter()
                            .map(|f| f.name().as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    };
                    let msg = format!(
                        "columns [{}] differ from the first branch's [{}]",
                        names(&branch),
                        names(&self.fields[union_start..])
                    );
                    return Err(self.error(&format!("{at}.unionAll[{i}]"), msg));
                }
                renumber(
                    union_all.last_mut().expect("just pushed"),
                    before,
                    union_start,
                );
            }
        }
        Ok(Select {
            iterate,
            columns,
            selects,
            union_all,
            width: self.fields.len() - start,
        })
    }

    fn column(&mut self, at: &str, value: &Value) -> Result<Column> {
        let name = value
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| self.error(at, "a column needs a name"))?;
        if !is_name(name) {
            return Err(self.error(
                at,
                format!("column name {name:?} must match [A-Za-z][A-Za-z0-9_]*"),
            ));
        }
        let path = self.path(&format!("{at}.path"), value.get("path"))?;
        let collection = match value.get("collection") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(self.error(at, "collection must be a boolean")),
        };
        let ty = match value.get("type") {
            None | Some(Value::Null) => path.result_type().unwrap_or("string"),
            Some(Value::String(ty)) => ty,
            Some(_) => return Err(self.error(at, "type must be a string")),
        };
        let cardinality = if collection {
            Cardinality::Collection
        } else {
            Cardinality::Single
        };
        Ok(self.add(
            name,
            path,
            ColumnType {
                kind: Kind::of_fhir_type(ty),
                cardinality,
            },
        ))
    }

    fn add(&mut self, name: &str, path: FhirPath, ty: ColumnType) -> Column {
        let data_type = match ty.cardinality {
            Cardinality::Collection => DataType::new_list(ty.kind.data_type(), true),
            _ => ty.kind.data_type(),
        };
        self.fields.push(Field::new(name, data_type, true));
        self.columns.push(ty);
        Column {
            path,
            index: self.columns.len() - 1,
        }
    }

    fn finish(
        self,
        definition: Value,
        name: Option<String>,
        resource: String,
        filters: Vec<FhirPath>,
        root: Select,
    ) -> Result<ViewDefinition> {
        if self.fields.is_empty() {
            return Err(self.error("select", "a view needs at least one column"));
        }
        for (i, field) in self.fields.iter().enumerate() {
            if self.fields[..i].iter().any(|f| f.name() == field.name()) {
                return Err(self.error(
                    "select",
                    format!("duplicate column name {:?}", field.name()),
                ));
            }
        }
        let schema = Arc::new(Schema::new(self.fields));
        let reach = view_reach(&filters, &root);
        Ok(ViewDefinition {
            definition,
            name,
            resource,
            constants: self.constants,
            filters,
            root,
            columns: self.columns,
            schema,
            reach,
        })
    }
}

/// What the view's `where` filters and columns reach of a resource: each expression's result is
/// looked at, so kept whole; `forEach` and `forEachOrNull` only navigate.
fn view_reach(filters: &[FhirPath], root: &Select) -> Option<Reach> {
    fn select(sel: &Select, focus: &[usize], reach: &mut Reach) -> Option<()> {
        let foci = match &sel.iterate {
            Iterate::Once => focus.to_vec(),
            Iterate::ForEach(path) | Iterate::ForEachOrNull(path) => path.reach(focus, reach)?,
            Iterate::Repeat(_) => {
                reach.whole(focus);
                focus.to_vec()
            }
        };
        for col in &sel.columns {
            let out = col.path.reach(&foci, reach)?;
            reach.whole(&out);
        }
        for sel in sel.selects.iter().chain(&sel.union_all) {
            select(sel, &foci, reach)?;
        }
        Some(())
    }
    let mut reach = Reach::new();
    for filter in filters {
        let out = filter.reach(&[Reach::ROOT], &mut reach)?;
        reach.whole(&out);
    }
    select(root, &[Reach::ROOT], &mut reach)?;
    Some(reach)
}

/// Points the columns of a later `unionAll` branch at the first branch's output columns.
fn renumber(select: &mut Select, from: usize, to: usize) {
    for col in &mut select.columns {
        col.index = col.index - from + to;
    }
    for sel in select.selects.iter_mut().chain(&mut select.union_all) {
        renumber(sel, from, to);
    }
}

/// Whether `name` is a valid view or column name: `[A-Za-z][A-Za-z0-9_]*`.
pub(crate) fn is_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn array(value: Option<&Value>) -> impl Iterator<Item = &Value> {
    value.and_then(Value::as_array).into_iter().flatten()
}

impl ViewDefinition {
    /// Parses and validates a ViewDefinition resource: `resource`, `constant`, `where`, `select` (with
    /// `column`, `select`, `forEach`, `forEachOrNull`, `repeat`, `unionAll`). Malformed views, FHIRPath
    /// syntax errors, undefined constants, mismatched `unionAll` branches and duplicate column names
    /// are errors.
    pub fn from_json(value: &Value) -> Result<Self> {
        let obj = value.as_object().ok_or_else(|| Error::View {
            view: "?".into(),
            msg: "a ViewDefinition must be a JSON object".into(),
            source: None,
        })?;
        let name = obj.get("name").and_then(Value::as_str).map(str::to_owned);
        let label = name.clone().unwrap_or_else(|| "?".into());
        let resource = match obj.get("resource").and_then(Value::as_str) {
            Some(r) if !r.is_empty() => r.to_owned(),
            _ => {
                return Err(Error::View {
                    view: label,
                    msg: "resource: expected a resource type".into(),
                    source: None,
                });
            }
        };
        let label = name.clone().unwrap_or_else(|| resource.clone());
        let view_error = |msg: String| Error::View {
            view: label.clone(),
            msg,
            source: None,
        };

        let mut constants = Map::new();
        for (i, c) in array(obj.get("constant")).enumerate() {
            let cname = c
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| view_error(format!("constant[{i}]: missing name")))?;
            let mut values = c
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.starts_with("value"));
            match (values.next(), values.next()) {
                (Some((_, v)), None) => constants.insert(cname.to_owned(), v.clone()),
                _ => {
                    return Err(view_error(format!(
                        "constant[{i}] {cname}: expected exactly one value[x]"
                    )));
                }
            };
        }

        let selects = match obj.get("select") {
            Some(Value::Array(s)) if !s.is_empty() => s,
            _ => return Err(view_error("select: expected a non-empty array".into())),
        };
        let mut builder = Builder {
            view: label.clone(),
            constants,
            fields: Vec::new(),
            columns: Vec::new(),
        };
        let filters = array(obj.get("where"))
            .enumerate()
            .map(|(i, w)| builder.path(&format!("where[{i}].path"), w.get("path")))
            .collect::<Result<Vec<_>>>()?;
        let root = builder.select("view", &serde_json::json!({ "select": selects }))?;
        builder.finish(value.clone(), name, resource, filters, root)
    }

    /// The notebook's shorthand: one column per `(name, FHIRPath)` pair, each holding the first value
    /// of its expression (Utf8 unless the expression evidently returns a boolean or number).
    pub fn from_paths(resource: &str, columns: &[(&str, &str)]) -> Result<Self> {
        let mut builder = Builder {
            view: resource.to_owned(),
            constants: Map::new(),
            fields: Vec::new(),
            columns: Vec::new(),
        };
        let mut cols = Vec::new();
        for (name, expr) in columns {
            let path = FhirPath::compile(expr)?;
            let kind = Kind::of_fhir_type(path.result_type().unwrap_or("string"));
            cols.push(builder.add(
                name,
                path,
                ColumnType {
                    kind,
                    cardinality: Cardinality::First,
                },
            ));
        }
        let root = Select {
            iterate: Iterate::Once,
            width: cols.len(),
            columns: cols,
            selects: Vec::new(),
            union_all: Vec::new(),
        };
        let definition = serde_json::json!({ "resource": resource, "paths": columns });
        builder.finish(definition, None, resource.to_owned(), Vec::new(), root)
    }

    /// The view with `name` (a shorthand view gets its table name this way).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        if let Some(obj) = self.definition.as_object_mut() {
            obj.insert("name".into(), Value::String(name.clone()));
        }
        Self {
            name: Some(name),
            ..self
        }
    }

    /// The JSON the view was read from, with its name; for a shorthand view (see
    /// [`ViewDefinition::from_paths`]) `{"resource": ..., "paths": [[name, path], ...], "name": ...}`.
    /// Equal definitions make equal views (a cache of a view's rows is keyed on it).
    pub fn definition(&self) -> &Value {
        &self.definition
    }

    /// The view's `name`, when it has one.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The resource type the view reads.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The output schema, known without data.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn error(view: Value) -> String {
        ViewDefinition::from_json(&view).unwrap_err().to_string()
    }

    #[test]
    fn schema_follows_column_order_and_types() {
        let view = ViewDefinition::from_json(&json!({
            "resource": "Patient", "name": "pt",
            "select": [
                {"column": [{"name": "id", "path": "id", "type": "id"}],
                 "select": [{"forEach": "name", "column": [{"name": "given", "path": "given", "type": "string", "collection": true}]}]},
                {"unionAll": [
                    {"column": [{"name": "n", "path": "1", "type": "integer"}, {"name": "ok", "path": "active.exists()"}]},
                    {"forEach": "contact", "column": [{"name": "n", "path": "2", "type": "integer"}, {"name": "ok", "path": "true"}]}
                ]},
                {"column": [{"name": "v", "path": "value", "type": "decimal"}]}
            ]
        }))
        .unwrap();
        assert_eq!((view.name(), view.resource()), (Some("pt"), "Patient"));
        let schema = view.schema();
        let fields: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| (f.name().as_str(), f.data_type().clone()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id", DataType::Utf8),
                ("given", DataType::new_list(DataType::Utf8, true)),
                ("n", DataType::Int64),
                ("ok", DataType::Boolean),
                ("v", DataType::Float64),
            ]
        );
    }

    #[test]
    fn malformed_views_are_rejected() {
        assert!(error(json!({})).contains("resource"));
        assert!(error(json!({"resource": "Patient"})).contains("select"));
        let col = |path: Value| json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": path}]}]});
        assert!(error(col(json!("@@"))).contains("position 0"));
        assert!(error(col(json!(1))).contains("expected a FHIRPath string"));
        assert!(error(col(json!("%x"))).contains("undefined constant %x"));
        let for_each = json!({"resource": "Patient", "select": [{"forEach": 1, "column": [{"name": "a", "path": "id"}]}]});
        assert!(error(for_each).contains("view.select[0].forEach"));
        let dup = json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}, {"name": "a", "path": "id"}]}]});
        assert!(error(dup).contains("duplicate column name"));
        let bad_name =
            json!({"resource": "Patient", "select": [{"column": [{"name": "1a", "path": "id"}]}]});
        assert!(error(bad_name).contains("must match"));
        let constant = json!({"resource": "Patient", "constant": [{"name": "c"}], "select": [{"column": [{"name": "a", "path": "id"}]}]});
        assert!(error(constant).contains("exactly one value[x]"));
        let union = json!({"resource": "Patient", "select": [{"unionAll": [
            {"column": [{"name": "a", "path": "id"}, {"name": "b", "path": "id"}]},
            {"column": [{"name": "b", "path": "id"}, {"name": "a", "path": "id"}]}]}]});
        assert!(error(union).contains("differ from the first branch's [a, b]"));
    }

    #[test]
    fn definitions_name_their_views() {
        let json =
            json!({"resource": "Patient", "select": [{"column": [{"name": "a", "path": "id"}]}]});
        let view = ViewDefinition::from_json(&json).unwrap();
        assert_eq!(view.definition(), &json);
        let named = view.with_name("pt");
        assert_eq!(named.definition()["name"], "pt");
        let shorthand = ViewDefinition::from_paths("Patient", &[("a", "id")])
            .unwrap()
            .with_name("pt");
        assert_eq!(
            shorthand.definition(),
            &json!({"resource": "Patient", "paths": [["a", "id"]], "name": "pt"})
        );
    }

    #[test]
    fn shorthand_infers_obvious_types() {
        let view = ViewDefinition::from_paths(
            "Patient",
            &[
                ("id", "id"),
                ("has_name", "name.exists()"),
                ("n", "name.count()"),
            ],
        )
        .unwrap()
        .with_name("patient_flat");
        assert_eq!(view.name(), Some("patient_flat"));
        let types: Vec<_> = view
            .schema()
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        assert_eq!(
            types,
            vec![DataType::Utf8, DataType::Boolean, DataType::Int64]
        );
        assert!(
            ViewDefinition::from_paths("Patient", &[("x", "name.nope()")])
                .unwrap_err()
                .to_string()
                .contains("unknown function")
        );
    }
}

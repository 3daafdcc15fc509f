//! Nested mode: one Arrow field per top-level element, Struct and List as the JSON nests.
//!
//! Lines are parsed into `serde_json::Value`s (the nested mode is not the hot path), checked
//! against the schema before anything is appended, then appended to a tree of builders.

use std::sync::Arc;

use arrow::array::builder::NullBufferBuilder;
use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListArray, StringBuilder, StructArray,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef};
use arrow::record_batch::{RecordBatch, RecordBatchOptions};
use serde_json::{Map, Value};

use super::{DecodeErrorKind, LineError, ResourceTypeCheck};

/// The merged shape of the values seen at one place.
#[derive(Debug, Clone, PartialEq)]
enum Shape {
    Null,
    Bool,
    Int,
    Float,
    Str,
    /// Conflicting kinds: Utf8 holding the JSON text of non-strings.
    Json,
    List(Box<Shape>),
    Object(Vec<(String, Shape)>),
}

impl Shape {
    /// Widens `self` so that `v` fits.
    fn absorb(&mut self, v: &Value) {
        match (&mut *self, v) {
            (_, Value::Null) | (Shape::Json, _) => {}
            (Shape::Null, _) => {
                *self = match v {
                    Value::Array(_) => Shape::List(Box::new(Shape::Null)),
                    Value::Object(_) => Shape::Object(Vec::new()),
                    _ => scalar(v),
                };
                self.absorb(v);
            }
            (Shape::List(item), Value::Array(values)) => values.iter().for_each(|v| item.absorb(v)),
            (Shape::Object(fields), Value::Object(map)) => {
                for (key, v) in map {
                    match fields.iter_mut().find(|(k, _)| k == key) {
                        Some((_, shape)) => shape.absorb(v),
                        None => {
                            let mut shape = Shape::Null;
                            shape.absorb(v);
                            fields.push((key.clone(), shape));
                        }
                    }
                }
            }
            (shape, v) => {
                let other = match v {
                    Value::Array(_) | Value::Object(_) => Shape::Json,
                    _ => scalar(v),
                };
                shape.merge(&other);
            }
        }
    }

    /// Widens `self` so that whatever fits `other` fits.
    fn merge(&mut self, other: &Shape) {
        match (&mut *self, other) {
            (_, Shape::Null) | (Shape::Json, _) => {}
            (Shape::Null, _) => *self = other.clone(),
            (Shape::Int, Shape::Float) => *self = Shape::Float,
            (Shape::Float, Shape::Int) => {}
            (Shape::List(a), Shape::List(b)) => a.merge(b),
            (Shape::Object(a), Shape::Object(b)) => {
                for (key, shape) in b {
                    match a.iter_mut().find(|(k, _)| k == key) {
                        Some((_, mine)) => mine.merge(shape),
                        None => a.push((key.clone(), shape.clone())),
                    }
                }
            }
            (a, b) if *a == *b => {}
            _ => *self = Shape::Json,
        }
    }

    fn data_type(&self) -> DataType {
        match self {
            Shape::Bool => DataType::Boolean,
            Shape::Int => DataType::Int64,
            Shape::Float => DataType::Float64,
            Shape::List(item) => {
                DataType::List(Arc::new(Field::new_list_field(item.data_type(), true)))
            }
            Shape::Object(fields) if !fields.is_empty() => DataType::Struct(to_fields(fields)),
            // Only nulls, `{}` (Parquet has no empty groups) or conflicting kinds.
            Shape::Null | Shape::Str | Shape::Json | Shape::Object(_) => DataType::Utf8,
        }
    }
}

fn scalar(v: &Value) -> Shape {
    match v {
        Value::Bool(_) => Shape::Bool,
        Value::Number(n) if n.is_i64() => Shape::Int,
        // Floats, and integers beyond Int64 (as in the flattened mode).
        Value::Number(_) => Shape::Float,
        Value::String(_) => Shape::Str,
        _ => Shape::Json,
    }
}

fn to_fields(fields: &[(String, Shape)]) -> Fields {
    fields
        .iter()
        .map(|(name, shape)| Field::new(name, shape.data_type(), true))
        .collect()
}

/// Schema inference for the nested mode: the shape of the resources merged field by field.
#[derive(Debug)]
pub(crate) struct NestedInference {
    root: Shape,
    resource_type: ResourceTypeCheck,
}

impl NestedInference {
    pub(crate) fn new(resource_type: Option<String>) -> Self {
        NestedInference {
            root: Shape::Object(Vec::new()),
            resource_type: ResourceTypeCheck::new(resource_type),
        }
    }

    pub(crate) fn line(&mut self, line: &[u8]) -> Result<(), LineError> {
        let object = parse(line, &mut self.resource_type)?;
        self.root.absorb(&Value::Object(object));
        Ok(())
    }

    pub(crate) fn merge(&mut self, other: &NestedInference) {
        self.root.merge(&other.root);
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        let Shape::Object(fields) = &self.root else {
            unreachable!("the root is an object")
        };
        Arc::new(Schema::new(to_fields(fields)))
    }
}

/// The start of the error a [`Unique`] gives for a key met twice in one object.
const DUPLICATE: &str = "duplicate key ";

/// A JSON value read as serde_json reads it, except that a key met twice in one object is an
/// error (serde_json keeps the last).
struct Unique(Value);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor).map(Unique)
    }
}

struct UniqueVisitor;

impl<'de> serde::de::Visitor<'de> for UniqueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
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
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
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

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(value) = map.next_value()?;
            if object.contains_key(&key) {
                // Quoted, and cut: the key comes from the data.
                let shown: String = key.chars().take(64).collect();
                return Err(serde::de::Error::custom(format!("{DUPLICATE}{shown:?}")));
            }
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// Parses one line into an object with the expected resourceType.
fn parse(
    line: &[u8],
    resource_type: &mut ResourceTypeCheck,
) -> Result<Map<String, Value>, LineError> {
    if let Err(e) = std::str::from_utf8(line) {
        let message = format!("invalid UTF-8 at byte {}", e.valid_up_to() + 1);
        return Err(LineError::new(DecodeErrorKind::InvalidUtf8, message));
    }
    let value = match serde_json::from_slice::<Unique>(line) {
        Ok(Unique(value)) => value,
        Err(e) => {
            let text = e.to_string();
            return Err(match text.strip_prefix(DUPLICATE) {
                // One rule in both modes: the flattened one cannot keep both values either.
                Some(key) => LineError::new(
                    DecodeErrorKind::DuplicateKey,
                    format!(
                        "duplicate key: {}",
                        key.split(" at line").next().unwrap_or(key)
                    ),
                ),
                None => LineError::new(
                    DecodeErrorKind::InvalidJson,
                    format!("invalid JSON at byte {}: {e}", e.column()),
                ),
            });
        }
    };
    let Value::Object(object) = value else {
        return Err(LineError::new(
            DecodeErrorKind::NotAnObject,
            "not a JSON object",
        ));
    };
    resource_type.start_line();
    if let Some(rt) = object.get("resourceType") {
        let leaf = match rt {
            Value::String(s) => super::walker::Leaf::Str(s.as_str()),
            _ => super::walker::Leaf::Null,
        };
        resource_type.check(&leaf)?;
    }
    resource_type.end_line()?;
    Ok(object)
}

/// Decoding against a known nested schema.
#[derive(Debug)]
pub(crate) struct NestedDecoder {
    schema: SchemaRef,
    columns: Vec<Builder>,
    rows: usize,
    resource_type: ResourceTypeCheck,
}

impl NestedDecoder {
    pub(crate) fn new(schema: SchemaRef, resource_type: Option<String>) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .map(Builder::new)
            .collect::<Result<_, _>>()?;
        Ok(NestedDecoder {
            schema,
            columns,
            rows: 0,
            resource_type: ResourceTypeCheck::new(resource_type),
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn line(&mut self, line: &[u8]) -> Result<(), LineError> {
        let object = parse(line, &mut self.resource_type)?;
        fits_object(self.schema.fields(), &object)?;
        for (field, column) in self.schema.fields().iter().zip(&mut self.columns) {
            column.append(object.get(field.name()));
        }
        self.rows += 1;
        Ok(())
    }

    pub(crate) fn flush(&mut self) -> arrow::error::Result<RecordBatch> {
        let rows = std::mem::take(&mut self.rows);
        let arrays = self.columns.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)
    }
}

fn misfit(path: &str, message: impl std::fmt::Display) -> LineError {
    LineError::new(
        DecodeErrorKind::DoesNotFitSchema,
        format!("field {path}: {message}"),
    )
}

fn fits_object(fields: &Fields, object: &Map<String, Value>) -> Result<(), LineError> {
    for (key, v) in object {
        let Some((_, field)) = fields.find(key) else {
            return Err(misfit(key, "not in the schema"));
        };
        fits(field.data_type(), v).map_err(|e| misfit(key, e.0.message))?;
    }
    Ok(())
}

fn fits(data_type: &DataType, v: &Value) -> Result<(), LineError> {
    let ok = match (data_type, v) {
        (_, Value::Null) | (DataType::Utf8, _) | (DataType::Boolean, Value::Bool(_)) => true,
        (DataType::Int64, Value::Number(n)) => n.is_i64(),
        (DataType::Float64, Value::Number(_)) => true,
        (DataType::List(item), Value::Array(values)) => {
            return values.iter().try_for_each(|v| fits(item.data_type(), v));
        }
        (DataType::Struct(fields), Value::Object(object)) => return fits_object(fields, object),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(LineError::new(
            DecodeErrorKind::DoesNotFitSchema,
            format!("{v} is not {data_type}"),
        ))
    }
}

/// Appends values already checked by [`fits`].
#[derive(Debug)]
enum Builder {
    Bool(BooleanBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Str(StringBuilder),
    List {
        field: FieldRef,
        offsets: Vec<i32>,
        nulls: NullBufferBuilder,
        item: Box<Builder>,
    },
    Struct {
        fields: Fields,
        children: Vec<Builder>,
        nulls: NullBufferBuilder,
    },
}

impl Builder {
    fn new(field: &FieldRef) -> Result<Self, String> {
        Ok(match field.data_type() {
            DataType::Boolean => Builder::Bool(BooleanBuilder::new()),
            DataType::Int64 => Builder::Int(Int64Builder::new()),
            DataType::Float64 => Builder::Float(Float64Builder::new()),
            DataType::Utf8 => Builder::Str(StringBuilder::new()),
            DataType::List(item) => Builder::List {
                field: Arc::clone(item),
                offsets: vec![0],
                nulls: NullBufferBuilder::new(0),
                item: Box::new(Builder::new(item)?),
            },
            DataType::Struct(fields) => Builder::Struct {
                fields: fields.clone(),
                children: fields.iter().map(Builder::new).collect::<Result<_, _>>()?,
                nulls: NullBufferBuilder::new(0),
            },
            other => return Err(format!("nested field {} cannot be {other}", field.name())),
        })
    }

    fn append(&mut self, v: Option<&Value>) {
        let v = v.filter(|v| !v.is_null());
        match self {
            Builder::Bool(b) => b.append_option(v.and_then(Value::as_bool)),
            Builder::Int(b) => b.append_option(v.and_then(Value::as_i64)),
            Builder::Float(b) => b.append_option(v.and_then(Value::as_f64)),
            Builder::Str(b) => match v {
                Some(Value::String(s)) => b.append_value(s),
                Some(other) => b.append_value(other.to_string()),
                None => b.append_null(),
            },
            Builder::List {
                offsets,
                nulls,
                item,
                ..
            } => {
                if let Some(Value::Array(values)) = v {
                    values.iter().for_each(|v| item.append(Some(v)));
                    nulls.append_non_null();
                } else {
                    nulls.append_null();
                }
                offsets.push(
                    offsets.last().copied().unwrap_or(0)
                        + v.and_then(Value::as_array).map_or(0, Vec::len) as i32,
                );
            }
            Builder::Struct {
                fields,
                children,
                nulls,
            } => {
                let object = v.and_then(Value::as_object);
                for (field, child) in fields.iter().zip(children) {
                    child.append(object.and_then(|o| o.get(field.name())));
                }
                nulls.append(object.is_some());
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Bool(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Str(b) => Arc::new(b.finish()),
            Builder::List {
                field,
                offsets,
                nulls,
                item,
            } => {
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, vec![0])));
                Arc::new(ListArray::new(
                    Arc::clone(field),
                    offsets,
                    item.finish(),
                    nulls.finish(),
                ))
            }
            Builder::Struct {
                fields,
                children,
                nulls,
            } => {
                let arrays = children.iter_mut().map(Builder::finish).collect();
                Arc::new(StructArray::new(fields.clone(), arrays, nulls.finish()))
            }
        }
    }
}

//! Push-style evaluation of a view: resources in, record batches out.

use std::sync::Arc;

use arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder, make_builder,
};
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::{Cardinality, ColumnType, Iterate, Kind, Select, ViewDefinition};
use crate::error::BoxError;
use crate::fhirpath::{Collection, EvalContext, Item};
use crate::{Error, Result};

/// One output row under construction: the values of a select's columns, in output order.
type Row<'a> = Vec<Collection<'a>>;

/// Runs a [`ViewDefinition`] over resources pushed one at a time (as the snapshot's NDJSON is read),
/// buffering rows in Arrow builders until [`ViewRunner::flush`].
///
/// Resources of other types than the view's are skipped, so a runner may be fed a mixed stream.
pub struct ViewRunner {
    view: Arc<ViewDefinition>,
    batch_size: usize,
    builders: Vec<Box<dyn ArrayBuilder>>,
    rows: usize,
    /// Where [`ViewRunner::push_ndjson`]'s lines come from, and the number of the next one.
    source: String,
    line: u64,
    max_line_bytes: usize,
}

impl std::fmt::Debug for ViewRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewRunner")
            .field("view", &self.view.resource)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

impl ViewRunner {
    /// A runner for `view` whose buffers are sized for `batch_size` rows.
    pub fn new(view: Arc<ViewDefinition>, batch_size: usize) -> Self {
        let builders = Self::builders(&view, batch_size);
        Self {
            view,
            batch_size,
            builders,
            rows: 0,
            source: String::new(),
            line: 1,
            max_line_bytes: crate::ndjson::DEFAULT_MAX_LINE_BYTES,
        }
    }

    /// The longest line [`ViewRunner::push_ndjson`] reads, in bytes without its newline (default
    /// [`DEFAULT_MAX_LINE_BYTES`](crate::ndjson::DEFAULT_MAX_LINE_BYTES)); a longer one is an
    /// error, as in the decoder ([`DecodeOptions::with_max_line_bytes`](crate::ndjson::DecodeOptions::with_max_line_bytes)).
    pub fn with_max_line_bytes(self, max: usize) -> Self {
        Self {
            max_line_bytes: max,
            ..self
        }
    }

    /// Names where the lines given to [`ViewRunner::push_ndjson`] come from (a file) and the number
    /// of the first one, for its errors (default: no name, line 1).
    pub fn with_source(self, source: impl Into<String>, first_line: u64) -> Self {
        Self {
            source: source.into(),
            line: first_line,
            ..self
        }
    }

    fn builders(view: &ViewDefinition, capacity: usize) -> Vec<Box<dyn ArrayBuilder>> {
        view.schema
            .fields()
            .iter()
            .map(|f| make_builder(f.data_type(), capacity))
            .collect()
    }

    /// Evaluates the view on one resource and buffers its rows. A `where` that yields something other
    /// than a boolean, or several values in a column that is not a collection, is an error.
    pub fn push(&mut self, resource: &Value) -> Result<()> {
        let view = &*self.view;
        if resource.get("resourceType").and_then(Value::as_str) != Some(view.resource.as_str()) {
            return Ok(());
        }
        let ctx = EvalContext::new().with_constants(&view.constants);
        for filter in &view.filters {
            match filter.evaluate(resource, &ctx)?.as_slice() {
                [] => return Ok(()),
                [item] => match item.as_bool() {
                    Some(true) => {}
                    Some(false) => return Ok(()),
                    None => {
                        return Err(view.error(
                            format!("where `{}` returned a non-boolean value", filter.source()),
                            None,
                        ));
                    }
                },
                _ => {
                    return Err(view.error(
                        format!("where `{}` returned several values", filter.source()),
                        None,
                    ));
                }
            }
        }
        let rows = view.root.rows(view, &Item::json(resource), ctx)?;
        for row in rows {
            for (index, (builder, values)) in self.builders.iter_mut().zip(row).enumerate() {
                append(builder.as_mut(), view.columns[index], &values).map_err(|msg| {
                    let name = view.schema.field(index).name();
                    view.error(format!("column {name}: {msg}"), None)
                })?;
            }
            self.rows += 1;
        }
        Ok(())
    }

    /// Evaluates the view on the NDJSON lines at the start of `ndjson` until the runner
    /// [is full](Self::is_full) or the bytes end, and returns the number of bytes consumed: then
    /// [`flush`](Self::flush) and push the rest. `ndjson` holds whole lines (the last one may lack its
    /// newline); blank lines are skipped. A line is built only as far as the view's expressions
    /// reach (see the README's FHIRPath section). A line that is not JSON, longer than
    /// [`ViewRunner::with_max_line_bytes`], or whose resource breaks the view, is an error naming
    /// the source and line number.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use fhirflight::view::{ViewDefinition, ViewRunner};
    /// let view = Arc::new(ViewDefinition::from_paths("Patient", &[("gender", "gender")])?);
    /// let mut runner = ViewRunner::new(view, 8192);
    /// let mut ndjson: &[u8] = b"{\"resourceType\":\"Patient\",\"gender\":\"male\"}\n\n{\"resourceType\":\"Patient\"}";
    /// while !ndjson.is_empty() {
    ///     let n = runner.push_ndjson(ndjson)?;
    ///     ndjson = &ndjson[n..];
    ///     if runner.is_full() {
    ///         runner.flush()?; // hand the batch on
    ///     }
    /// }
    /// assert_eq!(runner.flush()?.map(|b| b.num_rows()), Some(2));
    /// # Ok::<(), fhirflight::Error>(())
    /// ```
    pub fn push_ndjson(&mut self, ndjson: &[u8]) -> Result<usize> {
        let mut pos = 0;
        while pos < ndjson.len() && !self.is_full() {
            let (end, next) = memchr::memchr(b'\n', &ndjson[pos..])
                .map_or((ndjson.len(), ndjson.len()), |i| (pos + i, pos + i + 1));
            let line = &ndjson[pos..end];
            pos = next;
            self.line += 1;
            if line.len() > self.max_line_bytes {
                let max = self.max_line_bytes;
                return Err(self.line_error(&format!("line of more than {max} bytes"), None));
            }
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            // std's UTF-8 check, then serde_json's `str` reader, is faster than its byte reader.
            let not_json = |e: BoxError| self.line_error("not a JSON resource", Some(e));
            let text = std::str::from_utf8(line).map_err(|e| not_json(e.into()))?;
            let resource = match &self.view.reach {
                Some(reach) => reach.parse(text),
                None => serde_json::from_str(text),
            };
            let resource = resource.map_err(|e| not_json(e.into()))?;
            self.push(&resource).map_err(|e| match e {
                Error::View { msg, source, .. } => self.line_error(&msg, source),
                other => self.line_error("", Some(other.into())),
            })?;
        }
        Ok(pos)
    }

    /// An error about the line just read: `msg` (may be empty), caused by `source`.
    fn line_error(&self, msg: &str, source: Option<BoxError>) -> Error {
        let at = match self.source.as_str() {
            "" => String::new(),
            source => format!("{source} "),
        };
        let line = self.line - 1;
        let msg = match msg {
            "" => format!("{at}line {line}"),
            msg => format!("{at}line {line}: {msg}"),
        };
        self.view.error(msg, source)
    }

    /// Number of rows buffered.
    pub fn buffered_rows(&self) -> usize {
        self.rows
    }

    /// Whether at least `batch_size` rows are buffered (time to [`ViewRunner::flush`]).
    pub fn is_full(&self) -> bool {
        self.rows >= self.batch_size
    }

    /// The buffered rows as one record batch (`None` when there are none); the runner starts afresh.
    pub fn flush(&mut self) -> Result<Option<RecordBatch>> {
        if self.rows == 0 {
            return Ok(None);
        }
        self.rows = 0;
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(|b| b.finish()).collect();
        let batch = RecordBatch::try_new(self.view.schema(), columns).map_err(|e| {
            self.view
                .error("cannot build the record batch".into(), Some(e.into()))
        })?;
        Ok(Some(batch))
    }
}

impl ViewDefinition {
    fn error(&self, msg: String, source: Option<BoxError>) -> Error {
        Error::View {
            view: self.name.clone().unwrap_or_else(|| self.resource.clone()),
            msg,
            source,
        }
    }
}

impl Select {
    /// The rows of this select for one focus item, per the specification's processing algorithm:
    /// iterate, then combine own columns, nested selects and the `unionAll` branches as a product.
    fn rows<'a>(
        &self,
        view: &ViewDefinition,
        focus: &Item<'a>,
        ctx: EvalContext<'a>,
    ) -> Result<Vec<Row<'a>>> {
        let single = std::slice::from_ref(focus);
        let foci: Collection<'a> = match &self.iterate {
            Iterate::Once => return self.rows_for(view, focus, ctx),
            Iterate::ForEach(path) => path.evaluate_on(single, &ctx)?,
            Iterate::ForEachOrNull(path) => {
                let foci = path.evaluate_on(single, &ctx)?;
                if foci.is_empty() {
                    return self
                        .null_row(view, ctx.with_row_index(0))
                        .map(|row| vec![row]);
                }
                foci
            }
            Iterate::Repeat(paths) => {
                let mut out = Vec::new();
                repeat(paths, focus, &ctx, &mut out)?;
                out
            }
        };
        let mut rows = Vec::new();
        for (i, f) in foci.iter().enumerate() {
            rows.extend(self.rows_for(view, f, ctx.with_row_index(i as i64))?);
        }
        Ok(rows)
    }

    fn rows_for<'a>(
        &self,
        view: &ViewDefinition,
        focus: &Item<'a>,
        ctx: EvalContext<'a>,
    ) -> Result<Vec<Row<'a>>> {
        let mut rows = vec![self.columns(view, std::slice::from_ref(focus), ctx)?];
        for sel in &self.selects {
            rows = product(rows, sel.rows(view, focus, ctx)?);
        }
        if !self.union_all.is_empty() {
            let mut union = Vec::new();
            for sel in &self.union_all {
                union.extend(sel.rows(view, focus, ctx)?);
            }
            rows = product(rows, union);
        }
        Ok(rows)
    }

    /// The row of a `forEachOrNull` that found nothing: own columns evaluated on an empty focus (so
    /// `%rowIndex` still reads 0), every nested column null.
    fn null_row<'a>(&self, view: &ViewDefinition, ctx: EvalContext<'a>) -> Result<Row<'a>> {
        let mut row = self.columns(view, &[], ctx)?;
        row.resize(self.width, Vec::new());
        Ok(row)
    }

    /// The values of this select's own columns.
    fn columns<'a>(
        &self,
        view: &ViewDefinition,
        focus: &[Item<'a>],
        ctx: EvalContext<'a>,
    ) -> Result<Row<'a>> {
        let mut own = Vec::with_capacity(self.width);
        for col in &self.columns {
            let mut values = col.path.evaluate_on(focus, &ctx)?;
            match view.columns[col.index].cardinality {
                Cardinality::Single if values.len() > 1 => {
                    let name = view.schema.field(col.index).name();
                    return Err(view.error(format!(
                        "column {name}: `{}` returned {} values but the column is not a collection",
                        col.path.source(),
                        values.len()
                    ), None));
                }
                Cardinality::First => values.truncate(1),
                _ => {}
            }
            own.push(values);
        }
        Ok(own)
    }
}

/// Every row of `left` joined with every row of `right`.
fn product<'a>(left: Vec<Row<'a>>, right: Vec<Row<'a>>) -> Vec<Row<'a>> {
    if let [_] = right.as_slice() {
        let extra = right.into_iter().next().expect("one row");
        return left
            .into_iter()
            .map(|mut l| {
                l.extend(extra.iter().cloned());
                l
            })
            .collect();
    }
    left.iter()
        .flat_map(|l| {
            right
                .iter()
                .map(move |r| l.iter().chain(r).cloned().collect())
        })
        .collect()
}

/// `repeat`: the items reached by applying `paths` recursively, depth first, parents before children.
fn repeat<'a>(
    paths: &[crate::fhirpath::FhirPath],
    focus: &Item<'a>,
    ctx: &EvalContext<'a>,
    out: &mut Collection<'a>,
) -> Result<()> {
    for path in paths {
        for item in path.evaluate_on(std::slice::from_ref(focus), ctx)? {
            out.push(item.clone());
            repeat(paths, &item, ctx, out)?;
        }
    }
    Ok(())
}

/// Appends one cell; the message says what did not fit.
fn append(
    builder: &mut dyn ArrayBuilder,
    ty: ColumnType,
    values: &[Item<'_>],
) -> Result<(), String> {
    if ty.cardinality == Cardinality::Collection {
        let list = builder
            .as_any_mut()
            .downcast_mut::<ListBuilder<Box<dyn ArrayBuilder>>>()
            .expect("list column");
        for value in values {
            append_scalar(list.values().as_mut(), ty.kind, Some(value))?;
        }
        list.append(true);
        return Ok(());
    }
    append_scalar(builder, ty.kind, values.first())
}

fn append_scalar(
    builder: &mut dyn ArrayBuilder,
    kind: Kind,
    value: Option<&Item<'_>>,
) -> Result<(), String> {
    let any = builder.as_any_mut();
    let mismatch = |v: &Item<'_>, ty: &str| format!("expected {ty}, got {}", v.to_json());
    match kind {
        Kind::Bool => {
            let v = value
                .map(|v| v.as_bool().ok_or_else(|| mismatch(v, "a boolean")))
                .transpose()?;
            any.downcast_mut::<BooleanBuilder>()
                .expect("boolean column")
                .append_option(v);
        }
        Kind::Int => {
            let int = |v: &Item<'_>| {
                v.as_i64()
                    .or_else(|| v.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
            };
            let v = value
                .map(|v| int(v).ok_or_else(|| mismatch(v, "an integer")))
                .transpose()?;
            any.downcast_mut::<Int64Builder>()
                .expect("integer column")
                .append_option(v);
        }
        Kind::Dec => {
            let v = value
                .map(|v| v.as_f64().ok_or_else(|| mismatch(v, "a decimal")))
                .transpose()?;
            any.downcast_mut::<Float64Builder>()
                .expect("decimal column")
                .append_option(v);
        }
        Kind::Str => {
            let b = any.downcast_mut::<StringBuilder>().expect("string column");
            match value {
                None => b.append_null(),
                Some(v) => match v.as_str() {
                    Some(s) => b.append_value(s),
                    None => b.append_value(v.to_text()),
                },
            }
        }
    }
    Ok(())
}

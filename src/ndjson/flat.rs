//! Flattened mode: one column per flattened path, as `flatten_json.flatten` + `pandas.json_normalize`.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::buffer::{BooleanBuffer, Buffer, MutableBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowNativeType, DataType, Field, Schema, SchemaRef};

use super::trie::{NO_COLUMN, RESOURCE_TYPE, Trie};
use super::walker::{Leaf, Sink, Walker};
use super::{DecodeErrorKind, FlattenOptions, LineError, OVERFLOW_COLUMN, ResourceTypeCheck};

const NULL: u8 = 1;
const BOOL: u8 = 2;
const INT: u8 = 4;
const FLOAT: u8 = 8;
/// Strings, empty lists and list tails: anything only Utf8 can hold.
const TEXT: u8 = 16;

/// The columns a flattened inference found, in first-seen order with the JSON kinds seen in each
/// (a set of bits of this file's kinds), and whether paths went beyond the width bound: what
/// one process's inference hands another to merge ([`SchemaInference::columns`]).
///
/// [`SchemaInference::columns`]: super::SchemaInference::columns
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub(crate) struct InferredColumns {
    columns: Vec<(String, u8)>,
    overflow: bool,
}

/// Schema inference for the flattened mode: columns in first-seen order with the JSON kinds seen.
#[derive(Debug)]
pub(crate) struct FlatInference {
    trie: Trie,
    kinds: Kinds,
    max_list_items: Option<usize>,
    /// The columns before this one are in parts taken ([`FlatInference::take_part`]).
    taken: usize,
}

#[derive(Debug)]
struct Kinds {
    columns: Vec<(String, u8)>,
    /// The kinds the current line changed, as they were before (most lines change none): put
    /// back if the line turns out bad.
    undo: Vec<(u32, u8)>,
    /// Nodes whose column the current line created, forgotten again if the line is bad.
    new_nodes: Vec<u32>,
    /// Columns whose kinds good lines widened since the last part was taken.
    widened: Vec<u32>,
    resource_type: ResourceTypeCheck,
    /// Columns at most ([`FlattenOptions::max_columns`]).
    max_columns: usize,
    /// Whether the current line has paths beyond the bound.
    line_overflows: bool,
    /// Whether a good line had paths beyond the bound (since the last part was taken): the
    /// schema then has the overflow column.
    overflow: bool,
}

impl Sink for Kinds {
    #[inline]
    fn leaf(&mut self, trie: &mut Trie, node: u32, leaf: Leaf<'_>) -> Result<(), LineError> {
        if node == RESOURCE_TYPE {
            self.resource_type.check(&leaf)?;
        }
        let mut column = trie.column(node);
        if column == NO_COLUMN {
            let Some(new) = self.new_column(trie, node) else {
                self.line_overflows = true;
                return Ok(());
            };
            column = new;
        }
        let kind = match leaf {
            Leaf::Null => NULL,
            Leaf::Bool(_) => BOOL,
            Leaf::Int(text) if text.len() <= 18 || text.parse::<i64>().is_ok() => INT,
            // An integer beyond Int64 is read as a decimal (Float64), as a JSON decimal would be.
            Leaf::Int(_) | Leaf::Float(_) => FLOAT,
            Leaf::Str(_) | Leaf::EmptyList | Leaf::ListTail(_) => TEXT,
        };
        let kinds = &mut self.columns[column as usize].1;
        if *kinds | kind != *kinds {
            self.undo.push((column, *kinds));
            *kinds |= kind;
        }
        Ok(())
    }
}

impl Kinds {
    /// The column of `node`, which has none yet: a known name's, or a new one while there is
    /// room, or none (the path goes to the overflow column, as does a path named like it).
    #[cold]
    fn new_column(&mut self, trie: &mut Trie, node: u32) -> Option<u32> {
        if trie.name(node) == OVERFLOW_COLUMN {
            return None;
        }
        let room = self.columns.len() < self.max_columns;
        let next = room.then_some(self.columns.len() as u32);
        let (column, new) = trie.column_or_insert(node, next)?;
        if new {
            self.columns.push((trie.name(node).to_owned(), 0));
            self.new_nodes.push(node);
        }
        Some(column)
    }
}

impl FlatInference {
    pub(crate) fn new(options: &FlattenOptions, resource_type: Option<String>) -> Self {
        let kinds = Kinds {
            columns: Vec::new(),
            undo: Vec::new(),
            new_nodes: Vec::new(),
            widened: Vec::new(),
            resource_type: ResourceTypeCheck::new(resource_type),
            max_columns: options.max_columns,
            line_overflows: false,
            overflow: false,
        };
        FlatInference {
            trie: Trie::with_columns([]),
            kinds,
            max_list_items: options.max_list_items,
            taken: 0,
        }
    }

    /// What was inferred since the last part was taken, as an inference to [`merge`] into
    /// another in stream order: the columns new since then in first-seen order, then the older
    /// ones whose kinds widened. The paths stay: a wide type has a thousand and more, and
    /// building them again for every chunk cost a tenth of its conversion.
    ///
    /// [`merge`]: FlatInference::merge
    pub(crate) fn take_part(&mut self) -> FlatInference {
        let k = &mut self.kinds;
        let mut columns = k.columns[self.taken..].to_vec();
        k.widened.sort_unstable();
        k.widened.dedup();
        let older = k.widened.drain(..).filter(|&c| (c as usize) < self.taken);
        columns.extend(older.map(|c| k.columns[c as usize].clone()));
        self.taken = k.columns.len();
        let options = FlattenOptions {
            max_list_items: self.max_list_items,
            max_columns: k.max_columns,
        };
        let mut part = FlatInference::new(&options, None);
        part.kinds.columns = columns;
        part.kinds.overflow = std::mem::take(&mut k.overflow);
        part
    }

    /// Merges the columns and kinds of the line that `line` starts with ([`Walker`]); a bad line
    /// leaves no trace. Returns where the line ends.
    pub(crate) fn line(&mut self, line: &[u8], scratch: &mut Vec<u8>) -> Result<usize, LineError> {
        let k = &mut self.kinds;
        k.resource_type.start_line();
        k.line_overflows = false;
        let result = Walker::new(line, scratch, self.max_list_items)
            .walk(&mut self.trie, k)
            .and_then(|end| k.resource_type.end_line().map(|()| end));
        if result.is_err() {
            for &(column, kinds) in k.undo.iter().rev() {
                k.columns[column as usize].1 = kinds;
            }
            k.columns.truncate(k.columns.len() - k.new_nodes.len());
            for &node in &k.new_nodes {
                self.trie.forget_column(node);
            }
        } else {
            k.widened.extend(k.undo.iter().map(|&(column, _)| column));
            k.overflow |= k.line_overflows;
        }
        k.undo.clear();
        k.new_nodes.clear();
        result
    }

    /// Adds `other`'s columns: known names merge their kinds, new names go last in `other`'s order
    /// while there is room, and to the overflow column beyond.
    ///
    /// Parts merged in stream order give the columns of one inference over the whole stream: a
    /// worker meets a path with fewer columns before it than the stream has before its first
    /// place, so it runs out of room no sooner.
    pub(crate) fn merge(&mut self, other: &FlatInference) {
        self.merge_columns(&other.columns());
    }

    /// The columns found so far with the JSON kinds seen in each: what another process merges.
    pub(crate) fn columns(&self) -> InferredColumns {
        InferredColumns {
            columns: self.kinds.columns.clone(),
            overflow: self.kinds.overflow,
        }
    }

    /// Adds the columns another inference found (after ours, as [`FlatInference::merge`]).
    pub(crate) fn merge_columns(&mut self, other: &InferredColumns) {
        let k = &mut self.kinds;
        for (name, kinds) in &other.columns {
            let next = k.columns.len() as u32;
            let room = k.columns.len() < k.max_columns;
            let Some(column) = self.trie.column_by_name(name, room.then_some(next)) else {
                k.overflow = true;
                continue;
            };
            if column == next {
                k.columns.push((name.clone(), 0));
            }
            k.columns[column as usize].1 |= kinds;
        }
        k.overflow |= other.overflow;
    }

    /// The columns that held only nulls so far (typed `Utf8` until a value comes).
    pub(crate) fn null_only(&self) -> Vec<usize> {
        let columns = self.kinds.columns.iter().enumerate();
        columns
            .filter(|(_, (_, kinds))| kinds & !NULL == 0)
            .map(|(n, _)| n)
            .collect()
    }

    /// Whether paths went beyond the width bound: the schema has the overflow column.
    pub(crate) fn overflows(&self) -> bool {
        self.kinds.overflow
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        let k = &self.kinds;
        let overflow = k.overflow.then(|| (OVERFLOW_COLUMN.to_owned(), TEXT));
        let fields = k
            .columns
            .iter()
            .chain(&overflow)
            .map(|(name, kinds)| Field::new(name, data_type(*kinds), true));
        Arc::new(Schema::new(fields.collect::<Vec<_>>()))
    }
}

/// The Arrow type of a column from the JSON kinds seen in it.
fn data_type(kinds: u8) -> DataType {
    let kinds = kinds & !NULL;
    if kinds == BOOL {
        DataType::Boolean
    } else if kinds == INT {
        DataType::Int64
    } else if kinds != 0 && kinds & !(INT | FLOAT) == 0 {
        DataType::Float64
    } else {
        // Text, only nulls, or conflicting kinds: Utf8 with the JSON text of non-strings.
        DataType::Utf8
    }
}

/// Decoding against a known flattened schema.
#[derive(Debug)]
pub(crate) struct FlatDecoder {
    trie: Trie,
    columns: Columns,
    max_list_items: Option<usize>,
    /// Rows with values in the overflow column, decoded so far.
    pub(crate) overflowed: u64,
}

#[derive(Debug)]
struct Columns {
    schema: SchemaRef,
    columns: Vec<Column>,
    rows: usize,
    resource_type: ResourceTypeCheck,
    /// The schema's [`OVERFLOW_COLUMN`], if it has one (boxed: rarely used, it stays out of the
    /// way of the columns).
    overflow: Option<Box<Overflow>>,
}

/// The paths of the current line that the schema has no column for, bound for the overflow column.
#[derive(Debug)]
struct Overflow {
    column: usize,
    /// The members of a JSON object so far: `{"name":value,"name":value` (empty if none).
    text: Vec<u8>,
    /// Their names: two keys flattening to one name are a duplicate key here as in columns.
    names: HashSet<String>,
}

#[derive(Debug)]
struct Column {
    values: Values,
    /// Rows written (values and nulls).
    len: usize,
    /// A bit per row written, set for values (not nulls).
    valid: Vec<u64>,
    /// A column of a guessed schema that held only nulls (`Utf8` for now): a value does not fit,
    /// since its kind would decide the type.
    null_only: bool,
}

#[derive(Debug)]
enum Values {
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    Utf8 { offsets: Vec<i32>, data: Vec<u8> },
}

impl FlatDecoder {
    /// Fails with the name of a field whose type the flattened mode does not produce. The
    /// columns `null_only` (in order) take nulls only (a guessed schema's, see
    /// [`FlatInference::null_only`]).
    pub(crate) fn new(
        schema: SchemaRef,
        max_list_items: Option<usize>,
        resource_type: Option<String>,
        null_only: &[usize],
    ) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(n, f)| {
                let values = match f.data_type() {
                    DataType::Boolean => Values::Bool(Vec::new()),
                    DataType::Int64 => Values::Int(Vec::new()),
                    DataType::Float64 => Values::Float(Vec::new()),
                    DataType::Utf8 => Values::Utf8 {
                        offsets: vec![0],
                        data: Vec::new(),
                    },
                    other => {
                        return Err(format!("flattened column {} cannot be {other}", f.name()));
                    }
                };
                Ok(Column {
                    values,
                    len: 0,
                    valid: Vec::new(),
                    null_only: null_only.binary_search(&n).is_ok(),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut trie = Trie::with_columns(schema.fields().iter().map(|f| f.name().as_str()));
        let overflow = schema.index_of(OVERFLOW_COLUMN).ok().map(|column| {
            trie.forget_name(OVERFLOW_COLUMN);
            Box::new(Overflow {
                column,
                text: Vec::new(),
                names: HashSet::new(),
            })
        });
        if overflow
            .as_ref()
            .is_some_and(|o| schema.field(o.column).data_type() != &DataType::Utf8)
        {
            return Err(format!("flattened column {OVERFLOW_COLUMN} must be Utf8"));
        }
        let columns = Columns {
            schema,
            columns,
            rows: 0,
            resource_type: ResourceTypeCheck::new(resource_type),
            overflow,
        };
        Ok(FlatDecoder {
            trie,
            columns,
            max_list_items,
            overflowed: 0,
        })
    }

    pub(crate) fn rows(&self) -> usize {
        self.columns.rows
    }

    /// Appends the line that `line` starts with ([`Walker`]) as a row, or leaves the buffers as
    /// they were and says why not. Returns where the line ends.
    pub(crate) fn line(&mut self, line: &[u8], scratch: &mut Vec<u8>) -> Result<usize, LineError> {
        let c = &mut self.columns;
        c.resource_type.start_line();
        let result = Walker::new(line, scratch, self.max_list_items)
            .walk(&mut self.trie, c)
            .and_then(|end| c.resource_type.end_line().map(|()| end));
        let result = match &mut c.overflow {
            Some(o) if !o.text.is_empty() => result.and_then(|end| {
                o.finish(&mut c.columns[o.column], c.rows)?;
                self.overflowed += 1;
                Ok(end)
            }),
            _ => result,
        };
        let rows = c.rows;
        match result {
            Ok(_) => c.rows += 1,
            // Bad lines are rare: finding the columns the line wrote costs less than keeping
            // track of them for every line.
            Err(_) => {
                for column in c.columns.iter_mut().filter(|c| c.len > rows) {
                    column.truncate(rows);
                }
                if let Some(o) = &mut c.overflow {
                    o.text.clear();
                    o.names.clear();
                }
            }
        }
        result
    }

    /// The buffered rows as a batch (possibly of zero rows); the buffers start over, sized for
    /// as many rows again.
    pub(crate) fn flush(&mut self) -> arrow::error::Result<arrow::record_batch::RecordBatch> {
        let c = &mut self.columns;
        let rows = std::mem::take(&mut c.rows);
        let mut zeros = None;
        let arrays = c
            .columns
            .iter_mut()
            .map(|column| column.finish(rows, &mut zeros))
            .collect();
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        arrow::record_batch::RecordBatch::try_new_with_options(
            Arc::clone(&c.schema),
            arrays,
            &options,
        )
    }
}

impl Sink for Columns {
    #[inline]
    fn leaf(&mut self, trie: &mut Trie, node: u32, leaf: Leaf<'_>) -> Result<(), LineError> {
        if node == RESOURCE_TYPE {
            self.resource_type.check(&leaf)?;
        }
        // A node without a column (`NO_COLUMN`) has no index.
        let Some(column) = self.columns.get_mut(trie.column(node) as usize) else {
            return match &mut self.overflow {
                Some(overflow) => overflow.add(trie.name(node), leaf),
                None => Err(misfit(trie, node, "is not in the schema".into())),
            };
        };
        if column.len > self.rows {
            // Python's json.loads would keep the last of duplicate keys: refuse to guess.
            let message = format!("duplicate key: column {} given twice", trie.name(node));
            return Err(LineError::new(DecodeErrorKind::DuplicateKey, message));
        }
        if column.len < self.rows {
            column.push_nulls(self.rows - column.len);
        }
        column.push(leaf).map_err(|found| misfit(trie, node, found))
    }
}

impl Overflow {
    /// Adds a path without a column and its value to the line's object.
    #[cold]
    fn add(&mut self, name: &str, leaf: Leaf<'_>) -> Result<(), LineError> {
        if !self.names.insert(name.to_owned()) {
            let message = format!("duplicate key: {name} given twice");
            return Err(LineError::new(DecodeErrorKind::DuplicateKey, message));
        }
        let text = &mut self.text;
        text.push(if text.is_empty() { b'{' } else { b',' });
        let json = |text: &mut Vec<u8>, s: &str| {
            serde_json::to_writer(text, s).expect("writing to a Vec never fails");
        };
        json(text, name);
        text.push(b':');
        match leaf {
            Leaf::Null => text.extend_from_slice(b"null"),
            Leaf::Bool(b) => text.extend_from_slice(if b { b"true" } else { b"false" }),
            Leaf::Int(s) | Leaf::Float(s) => text.extend_from_slice(s.as_bytes()),
            Leaf::Str(s) => json(text, s),
            Leaf::EmptyList => text.extend_from_slice(b"[]"),
            Leaf::ListTail(s) => {
                text.push(b'[');
                text.extend_from_slice(s.as_bytes());
                text.push(b']');
            }
        }
        Ok(())
    }

    /// Writes the line's object as row `row` of the overflow `column`, and starts over.
    #[cold]
    fn finish(&mut self, column: &mut Column, row: usize) -> Result<(), LineError> {
        self.text.push(b'}');
        self.names.clear();
        let text = std::str::from_utf8(&self.text).expect("JSON text made of strs");
        column.push_nulls(row - column.len);
        let result = column.push(Leaf::Str(text));
        self.text.clear();
        result.map_err(|what| {
            let message = format!("column {OVERFLOW_COLUMN}: {what}");
            LineError::new(DecodeErrorKind::DoesNotFitSchema, message)
        })
    }
}

#[cold]
fn misfit(trie: &Trie, node: u32, what: String) -> LineError {
    let message = format!("column {} {what}", trie.name(node));
    LineError::new(DecodeErrorKind::DoesNotFitSchema, message)
}

impl Column {
    fn push_nulls(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.len += n;
        match &mut self.values {
            Values::Bool(v) => v.resize(v.len() + n, false),
            Values::Int(v) => v.resize(v.len() + n, 0),
            Values::Float(v) => v.resize(v.len() + n, 0.0),
            Values::Utf8 { offsets, data } => offsets.resize(offsets.len() + n, data.len() as i32),
        }
    }

    #[inline]
    fn push(&mut self, leaf: Leaf<'_>) -> Result<(), String> {
        if leaf == Leaf::Null {
            self.push_nulls(1);
            return Ok(());
        }
        match (&mut self.values, leaf) {
            (Values::Utf8 { .. }, leaf) if self.null_only => {
                return Err(format!(": {} where only nulls were seen", describe(&leaf)));
            }
            (Values::Utf8 { offsets, data }, leaf) => {
                match leaf {
                    Leaf::Str(s) | Leaf::Int(s) | Leaf::Float(s) => append(data, s.as_bytes()),
                    Leaf::Bool(b) => data.extend_from_slice(if b { b"true" } else { b"false" }),
                    Leaf::EmptyList => data.extend_from_slice(b"[]"),
                    Leaf::ListTail(s) => {
                        data.push(b'[');
                        data.extend_from_slice(s.as_bytes());
                        data.push(b']');
                    }
                    Leaf::Null => unreachable!("handled above"),
                }
                let end = i32::try_from(data.len())
                    .map_err(|_| "more than 2 GiB of text in one batch")?;
                offsets.push(end);
            }
            (Values::Int(v), Leaf::Int(s)) => {
                v.push(
                    s.parse()
                        .map_err(|_| format!(": {s} is too large for Int64"))?,
                );
            }
            (Values::Float(v), Leaf::Int(s) | Leaf::Float(s)) => {
                v.push(s.parse().map_err(|_| format!(": {s} is not a Float64"))?);
            }
            (Values::Bool(v), Leaf::Bool(b)) => v.push(b),
            (values, leaf) => {
                let want = match values {
                    Values::Bool(_) => "Boolean",
                    Values::Int(_) => "Int64",
                    _ => "Float64",
                };
                return Err(format!(": expected {want}, found {}", describe(&leaf)));
            }
        }
        let (word, bit) = (self.len / 64, self.len % 64);
        if word >= self.valid.len() {
            self.valid.resize(word + 1, 0);
        }
        self.valid[word] |= 1 << bit;
        self.len += 1;
        Ok(())
    }

    fn truncate(&mut self, len: usize) {
        self.len = len;
        self.valid.truncate(len.div_ceil(64));
        if let Some(last) = self.valid.last_mut()
            && !len.is_multiple_of(64)
        {
            *last &= (1 << (len % 64)) - 1;
        }
        match &mut self.values {
            Values::Bool(v) => v.truncate(len),
            Values::Int(v) => v.truncate(len),
            Values::Float(v) => v.truncate(len),
            Values::Utf8 { offsets, data } => {
                offsets.truncate(len + 1);
                data.truncate(offsets[len] as usize);
            }
        }
    }

    /// The column's `rows` values as an array; the buffers start over with room for as many.
    ///
    /// A column without values in the batch (most columns of a wide type such as
    /// ExplanationOfBenefit, in most batches) keeps its buffers and is made of `zeros`, one
    /// zeroed buffer shared by all such columns of the batch: a batch's cost then grows with
    /// the values in it rather than with the width of the schema.
    fn finish(&mut self, rows: usize, zeros: &mut Option<Buffer>) -> ArrayRef {
        if self.valid.is_empty() {
            self.truncate(0);
            // Room for the widest use: `rows + 1` offsets or `rows` 8-byte values.
            let zeros =
                zeros.get_or_insert_with(|| MutableBuffer::from_len_zeroed((rows + 1) * 8).into());
            return self.values.nulls(rows, zeros);
        }
        self.push_nulls(rows - self.len);
        self.len = 0;
        let mut valid = std::mem::replace(&mut self.valid, Vec::with_capacity(rows.div_ceil(64)));
        valid.resize(rows.div_ceil(64), 0);
        let nulls = NullBuffer::new(BooleanBuffer::new(valid.into(), 0, rows));
        let nulls = (nulls.null_count() > 0).then_some(nulls);
        fn take<T>(v: &mut Vec<T>, rows: usize) -> Vec<T> {
            std::mem::replace(v, Vec::with_capacity(rows))
        }
        match &mut self.values {
            Values::Bool(v) => Arc::new(BooleanArray::new(take(v, rows).into(), nulls)),
            Values::Int(v) => Arc::new(Int64Array::new(take(v, rows).into(), nulls)),
            Values::Float(v) => Arc::new(Float64Array::new(take(v, rows).into(), nulls)),
            Values::Utf8 { offsets, data } => {
                let mut next = Vec::with_capacity(rows + 1);
                next.push(0);
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(offsets, next)));
                let data = std::mem::replace(data, Vec::with_capacity(data.len()));
                // SAFETY: the offsets start at 0 and never decrease, the last is the length of
                // the data, and the data between two offsets is one `&str` (or ASCII JSON text)
                // appended whole. Validating it again cost a twentieth of the decoding time.
                Arc::new(unsafe {
                    StringArray::new_unchecked(offsets, Buffer::from_vec(data), nulls)
                })
            }
        }
    }
}

impl Values {
    /// An array of `rows` nulls of this type, whose buffers are slices of `zeros`.
    fn nulls(&self, rows: usize, zeros: &Buffer) -> ArrayRef {
        let bits = || BooleanBuffer::new(zeros.clone(), 0, rows);
        let nulls = Some(NullBuffer::new(bits()));
        fn scalars<T: ArrowNativeType>(zeros: &Buffer, len: usize) -> ScalarBuffer<T> {
            ScalarBuffer::new(zeros.clone(), 0, len)
        }
        match self {
            Values::Bool(_) => Arc::new(BooleanArray::new(bits(), nulls)),
            Values::Int(_) => Arc::new(Int64Array::new(scalars(zeros, rows), nulls)),
            Values::Float(_) => Arc::new(Float64Array::new(scalars(zeros, rows), nulls)),
            Values::Utf8 { .. } => Arc::new(StringArray::new(
                OffsetBuffer::new(scalars(zeros, rows + 1)),
                Buffer::from_vec(Vec::<u8>::new()),
                nulls,
            )),
        }
    }
}

/// `data.extend_from_slice(bytes)`, without a call into `memcpy` for the short strings that most
/// values are (codes, dates, ids, references): two overlapping moves of 4, 8, 16 or 32 bytes.
#[inline]
fn append(data: &mut Vec<u8>, bytes: &[u8]) {
    let n = bytes.len();
    if !(4..=64).contains(&n) {
        return data.extend_from_slice(bytes);
    }
    data.reserve(n);
    // SAFETY: `reserve` made room for `n` bytes after the length. Each pair of moves reads the
    // first and the last `W` bytes of `bytes` (`W <= n`, so both are inside it) and writes them
    // at the same places in that room; together they cover all `n` bytes.
    unsafe {
        let (src, dst) = (bytes.as_ptr(), data.as_mut_ptr().add(data.len()));
        macro_rules! two_moves {
            ($w:ty) => {{
                let w = size_of::<$w>();
                let (first, last) = (
                    src.cast::<$w>().read_unaligned(),
                    src.add(n - w).cast::<$w>().read_unaligned(),
                );
                dst.cast::<$w>().write_unaligned(first);
                dst.add(n - w).cast::<$w>().write_unaligned(last);
            }};
        }
        match n {
            ..8 => two_moves!(u32),
            8..16 => two_moves!(u64),
            16..32 => two_moves!(u128),
            _ => two_moves!([u128; 2]),
        }
        data.set_len(data.len() + n);
    }
}

/// A leaf as an error message shows it.
pub(crate) fn describe(leaf: &Leaf<'_>) -> String {
    match leaf {
        Leaf::Null => "null".into(),
        Leaf::Bool(b) => b.to_string(),
        Leaf::Int(s) | Leaf::Float(s) => format!("number {s}"),
        Leaf::Str(s) => format!("string {s:?}"),
        Leaf::EmptyList => "[]".into(),
        Leaf::ListTail(_) => "a list".into(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn append_copies_every_length() {
        let text: Vec<u8> = (0..70u8).map(|i| b'a' + i % 26).collect();
        let mut data = b"x".to_vec();
        let mut want = data.clone();
        for n in 0..=text.len() {
            super::append(&mut data, &text[..n]);
            want.extend_from_slice(&text[..n]);
        }
        assert_eq!(data, want);
    }
}

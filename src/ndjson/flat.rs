//! Flattened mode: one column per flattened path, as `flatten_json.flatten` + `pandas.json_normalize`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, StringArray};
use arrow::buffer::{BooleanBuffer, Buffer, MutableBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{ArrowNativeType, DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::trie::{NO_COLUMN, RESOURCE_TYPE, Trie};
use super::walker::{Leaf, Sink, Walker};
use super::{DecodeErrorKind, FlattenOptions, LineError, OVERFLOW_COLUMN, ResourceTypeCheck};

const NULL: u8 = 1;
const BOOL: u8 = 2;
const INT: u8 = 4;
const FLOAT: u8 = 8;
/// Strings, empty lists and list tails: anything only Utf8 can hold.
const TEXT: u8 = 16;

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
        let k = &mut self.kinds;
        for (name, kinds) in &other.kinds.columns {
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
        k.overflow |= other.kinds.overflow;
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

/// Whether a column of `kinds` is Utf8 for values that are not all text: their JSON text as
/// written, which a column decoded with another type before no longer has.
fn conflicting(kinds: u8) -> bool {
    data_type(kinds) == DataType::Utf8 && kinds & (BOOL | INT | FLOAT) != 0
}

/// The columns of the batches of growing decoders ([`FlatDecoder::growing`]) added in stream
/// order: those of an inference over the same lines, in the same order and of the same types.
#[derive(Debug)]
pub(crate) struct GrownColumns {
    index: HashMap<String, usize>,
    columns: Vec<(String, u8)>,
    max_columns: usize,
}

impl GrownColumns {
    pub(crate) fn new(options: &FlattenOptions) -> Self {
        GrownColumns {
            index: HashMap::new(),
            columns: Vec::new(),
            max_columns: options.max_columns,
        }
    }

    /// Adds the columns of `batch` and the kinds of their values (a column of nulls only has
    /// none). False on a conflict: values of kinds that only Utf8 holds together (decoded as
    /// other types, so not as written), or more columns than the bound.
    pub(crate) fn add(&mut self, batch: &RecordBatch) -> bool {
        let schema = batch.schema_ref();
        for (field, array) in schema.fields().iter().zip(batch.columns()) {
            let kind = match field.data_type() {
                _ if array.null_count() == array.len() => NULL,
                DataType::Boolean => BOOL,
                DataType::Int64 => INT,
                DataType::Float64 => FLOAT,
                _ => TEXT,
            };
            let column = match self.index.get(field.name()) {
                Some(&column) => column,
                None => {
                    let name = field.name().clone();
                    self.index.insert(name.clone(), self.columns.len());
                    self.columns.push((name, 0));
                    self.columns.len() - 1
                }
            };
            let kinds = &mut self.columns[column].1;
            *kinds |= kind;
            if conflicting(*kinds) {
                return false;
            }
        }
        self.columns.len() <= self.max_columns
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.columns.is_empty()
    }

    pub(crate) fn schema(&self) -> SchemaRef {
        let fields = self.columns.iter();
        let fields = fields.map(|(name, kinds)| Field::new(name, data_type(*kinds), true));
        Arc::new(Schema::new(fields.collect::<Vec<_>>()))
    }
}

/// Batches of growing decoders in the layout of one `schema` (a [`GrownColumns::schema`]).
#[derive(Debug)]
pub(crate) struct Fitting {
    schema: SchemaRef,
    index: HashMap<String, usize>,
    /// The place in `schema` of each column of recent batch schemas (a schema per worker).
    places: Vec<(SchemaRef, Vec<Option<usize>>)>,
}

impl Fitting {
    pub(crate) fn new(schema: SchemaRef) -> Self {
        let names = schema.fields().iter().enumerate();
        let index = names.map(|(i, f)| (f.name().clone(), i)).collect();
        Fitting {
            schema,
            index,
            places: Vec::new(),
        }
    }

    /// `batch` with the columns of the schema, those it lacks or has only nulls in as nulls, its
    /// Int64 columns cast to Float64 where the schema has that (exactly: each integer is the
    /// decimal it would be decoded as); `None` when the schema lacks a column it has values in or
    /// has another type for them.
    pub(crate) fn fit(&mut self, batch: &RecordBatch) -> Option<RecordBatch> {
        let from = batch.schema();
        let known = self.places.iter().position(|(s, _)| Arc::ptr_eq(s, &from));
        let at = match known {
            Some(at) => at,
            None => {
                let places = from.fields().iter();
                let places = places.map(|f| self.index.get(f.name()).copied()).collect();
                // Batch schemas change rarely, and one per worker is in use at a time.
                if self.places.len() == 16 {
                    self.places.remove(0);
                }
                self.places.push((Arc::clone(&from), places));
                self.places.len() - 1
            }
        };
        let rows = batch.num_rows();
        let mut columns: Vec<Option<ArrayRef>> = vec![None; self.schema.fields().len()];
        for (array, &place) in batch.columns().iter().zip(&self.places[at].1) {
            if array.null_count() == array.len() {
                continue;
            }
            let want = self.schema.field(place?).data_type();
            columns[place?] = Some(match (array.data_type(), want) {
                (have, want) if have == want => Arc::clone(array),
                (DataType::Int64, DataType::Float64) => {
                    arrow::compute::cast(array, want).expect("Int64 casts to Float64")
                }
                _ => return None,
            });
        }
        let mut zeros = None;
        let arrays = columns.into_iter().zip(self.schema.fields());
        let arrays = arrays.map(|(array, field)| {
            array.unwrap_or_else(|| {
                let zeros = zeros
                    .get_or_insert_with(|| MutableBuffer::from_len_zeroed((rows + 1) * 8).into());
                nulls(field.data_type(), rows, zeros)
            })
        });
        let options = arrow::record_batch::RecordBatchOptions::new().with_row_count(Some(rows));
        let arrays = arrays.collect();
        let fitted = RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options);
        Some(fitted.expect("columns made for the schema"))
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
    /// Set for a growing decoder ([`FlatDecoder::growing`]; boxed: it is out of the way too).
    growth: Option<Box<Growth>>,
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
}

#[derive(Debug)]
enum Values {
    /// Only nulls so far: a column a growing decoder made, typed by its first value (Utf8 if
    /// none comes, as inference types it).
    Null,
    Bool(Vec<bool>),
    Int(Vec<i64>),
    Float(Vec<f64>),
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
    },
}

impl FlatDecoder {
    /// Fails with the name of a field whose type the flattened mode does not produce.
    pub(crate) fn new(
        schema: SchemaRef,
        max_list_items: Option<usize>,
        resource_type: Option<String>,
    ) -> Result<Self, String> {
        let columns = schema
            .fields()
            .iter()
            .map(|f| {
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
            growth: None,
        };
        Ok(FlatDecoder {
            trie,
            columns,
            max_list_items,
            overflowed: 0,
        })
    }

    /// A decoder without a schema that makes its columns as it meets their paths, typed as
    /// inference types them (see [`Growth`]): one walk of the lines instead of an inference and a
    /// decode. Its batches' schemas grow; [`GrownColumns`] merges them in stream order.
    pub(crate) fn growing(options: &FlattenOptions, resource_type: Option<String>) -> Self {
        let mut decoder = Self::new(Arc::new(Schema::empty()), None, resource_type)
            .expect("an empty schema fits");
        decoder.max_list_items = options.max_list_items;
        decoder.columns.growth = Some(Box::new(Growth {
            names: Vec::new(),
            max_columns: options.max_columns,
            new_nodes: Vec::new(),
            widened: false,
            changed: false,
            conflict: false,
        }));
        decoder
    }

    /// Whether this growing decoder met values its batches cannot hold as a decode against the
    /// inferred schema would ([`Growth::conflict`]).
    pub(crate) fn conflicted(&self) -> bool {
        self.columns.growth.as_ref().is_some_and(|g| g.conflict)
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
                if let Some(g) = &mut c.growth {
                    // The columns the line made are the last ones.
                    c.columns.truncate(c.columns.len() - g.new_nodes.len());
                    g.names.truncate(c.columns.len());
                    for &node in &g.new_nodes {
                        self.trie.forget_column(node);
                    }
                    // A type it changed stays changed, which inference would not do.
                    g.conflict |= g.widened;
                }
                for column in c.columns.iter_mut().filter(|c| c.len > rows) {
                    column.truncate(rows);
                }
                if let Some(o) = &mut c.overflow {
                    o.text.clear();
                    o.names.clear();
                }
            }
        }
        if let Some(g) = &mut c.growth {
            g.new_nodes.clear();
            g.widened = false;
        }
        result
    }

    /// The buffered rows as a batch (possibly of zero rows); the buffers start over, sized for
    /// as many rows again.
    pub(crate) fn flush(&mut self) -> arrow::error::Result<arrow::record_batch::RecordBatch> {
        let c = &mut self.columns;
        if let Some(g) = &mut c.growth
            && std::mem::take(&mut g.changed)
        {
            let fields = g.names.iter().zip(&c.columns);
            c.schema = Arc::new(Schema::new(
                fields
                    .map(|(name, column)| Field::new(name, column.values.data_type(), true))
                    .collect::<Vec<_>>(),
            ));
        }
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
        let mut index = trie.column(node) as usize;
        if index >= self.columns.len() {
            index = match (&mut self.overflow, &mut self.growth) {
                (_, Some(growth)) => match growth.add_column(trie, node, &mut self.columns) {
                    Some(index) => index,
                    None => return Ok(()),
                },
                (Some(overflow), None) => return overflow.add(trie.name(node), leaf),
                (None, None) => return Err(misfit(trie, node, "is not in the schema".into())),
            };
        }
        let column = &mut self.columns[index];
        if column.len > self.rows {
            // Python's json.loads would keep the last of duplicate keys: refuse to guess.
            let message = format!("duplicate key: column {} given twice", trie.name(node));
            return Err(LineError::new(DecodeErrorKind::DuplicateKey, message));
        }
        if column.len < self.rows {
            column.push_nulls(self.rows - column.len);
        }
        column.push(leaf).or_else(|found| match &mut self.growth {
            Some(growth) => {
                growth.widen(index, column, leaf);
                Ok(())
            }
            None => Err(misfit(trie, node, found)),
        })
    }
}

/// What a growing decoder ([`FlatDecoder::growing`]) keeps besides its columns.
#[derive(Debug)]
struct Growth {
    /// The names of the columns, in order.
    names: Vec<String>,
    /// Columns at most ([`FlattenOptions::max_columns`]).
    max_columns: usize,
    /// The nodes of the columns the current line made, forgotten again if the line is bad.
    new_nodes: Vec<u32>,
    /// Whether the current line changed the type of a column it did not make.
    widened: bool,
    /// Whether the schema changed since the last batch.
    changed: bool,
    /// Set once the batches differ from those of a decoder of the inferred schema: values of
    /// kinds that only Utf8 holds together (a number and a string; inference makes the column
    /// Utf8 with the JSON text as written, which the numbers decoded before no longer have),
    /// more columns than the bound (the inferred schema has the overflow column), or a type
    /// changed by a bad line. The caller then decodes against the inferred schema instead.
    conflict: bool,
}

impl Growth {
    /// A new column for `node`, which has none: its index, or `None` beyond the bound (a
    /// conflict; the value is dropped).
    #[cold]
    fn add_column(
        &mut self,
        trie: &mut Trie,
        node: u32,
        columns: &mut Vec<Column>,
    ) -> Option<usize> {
        let room = columns.len() < self.max_columns && trie.name(node) != OVERFLOW_COLUMN;
        let Some((index, new)) = trie.column_or_insert(node, room.then_some(columns.len() as u32))
        else {
            self.conflict = true;
            return None;
        };
        if new {
            self.names.push(trie.name(node).to_owned());
            self.new_nodes.push(node);
            self.changed = true;
            columns.push(Column {
                values: Values::Null,
                len: 0,
                valid: Vec::new(),
            });
        }
        Some(index as usize)
    }

    /// Pushes `leaf` into `column` (number `index`), whose type does not hold it, after
    /// widening the type as inference would: a first value types a column of nulls, an integer
    /// or a decimal makes an Int64 column Float64 (each integer read as the decimal it is). Any
    /// other change is a [conflict](Growth::conflict): a null is pushed instead.
    #[cold]
    fn widen(&mut self, index: usize, column: &mut Column, leaf: Leaf<'_>) {
        let n = column.len;
        let fits_int = |s: &str| s.len() <= 18 || s.parse::<i64>().is_ok();
        let values = match (&column.values, leaf) {
            (Values::Null, Leaf::Bool(_)) => Values::Bool(vec![false; n]),
            (Values::Null, Leaf::Int(s)) if fits_int(s) => Values::Int(vec![0; n]),
            (Values::Null, Leaf::Int(_) | Leaf::Float(_)) => Values::Float(vec![0.0; n]),
            (Values::Null, _) => Values::Utf8 {
                offsets: vec![0; n + 1],
                data: Vec::new(),
            },
            (Values::Int(v), Leaf::Int(_) | Leaf::Float(_)) => {
                Values::Float(v.iter().map(|&i| i as f64).collect())
            }
            _ => {
                self.conflict = true;
                column.push_nulls(1);
                return;
            }
        };
        column.values = values;
        self.changed = true;
        // The columns the line made are the last ones: they go with it if it is bad.
        self.widened |= index < self.names.len() - self.new_nodes.len();
        if column.push(leaf).is_err() {
            // Only an integer beyond Int64 fails a new Int64 column: not possible, see fits_int.
            self.conflict = true;
            column.push_nulls(1);
        }
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
            Values::Null => {}
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
                    Values::Null => "null",
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
            Values::Null => {}
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
            Values::Null => unreachable!("a column of nulls has no valid bits"),
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
        nulls(&self.data_type(), rows, zeros)
    }

    fn data_type(&self) -> DataType {
        match self {
            Values::Bool(_) => DataType::Boolean,
            Values::Int(_) => DataType::Int64,
            Values::Float(_) => DataType::Float64,
            Values::Null | Values::Utf8 { .. } => DataType::Utf8,
        }
    }
}

/// An array of `rows` nulls of a flattened column's `data_type` (Utf8 for any other), whose
/// buffers are slices of `zeros`, a zeroed buffer of at least `(rows + 1) * 8` bytes.
fn nulls(data_type: &DataType, rows: usize, zeros: &Buffer) -> ArrayRef {
    let bits = || BooleanBuffer::new(zeros.clone(), 0, rows);
    let nulls = Some(NullBuffer::new(bits()));
    fn scalars<T: ArrowNativeType>(zeros: &Buffer, len: usize) -> ScalarBuffer<T> {
        ScalarBuffer::new(zeros.clone(), 0, len)
    }
    match data_type {
        DataType::Boolean => Arc::new(BooleanArray::new(bits(), nulls)),
        DataType::Int64 => Arc::new(Int64Array::new(scalars(zeros, rows), nulls)),
        DataType::Float64 => Arc::new(Float64Array::new(scalars(zeros, rows), nulls)),
        _ => Arc::new(StringArray::new(
            OffsetBuffer::new(scalars(zeros, rows + 1)),
            Buffer::from_vec(Vec::<u8>::new()),
            nulls,
        )),
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

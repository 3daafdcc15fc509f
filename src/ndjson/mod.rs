//! Push decoder: NDJSON bytes to Arrow record batches (flattened or nested), schema inference.
//!
//! FHIR Bulk Data files hold one resource per line. Turning them into a table takes two steps:
//!
//! 1. [`SchemaInference`] reads the bytes (as they arrive, in chunks of any size, over one or more
//!    files) and yields the table's schema.
//! 2. A [`Decoder`] with that schema turns the same bytes into [`RecordBatch`]es of at most
//!    [`DecodeOptions::batch_size`] rows.
//!
//! Both are push-style and do no I/O: the caller owns the bytes (a file, an HTTP body, a gzip
//! stream) and may split them anywhere, inside a line or inside a UTF-8 sequence. Memory is bounded
//! by the batch size, the schema and the line bound ([`DecodeOptions::with_max_line_bytes`]), never
//! by the size of the file or of a line.
//! [`infer_reader`] and [`decode_reader`] run both steps over a whole [`Read`](std::io::Read) on
//! all cores; [`infer_readers`] and [`decode_readers`] over many files as one run (an export is
//! often cut into many small files).
//!
//! # Table modes
//!
//! [`TableMode::Flattened`] (the default) gives the columns and values of the notebook this project
//! replaces: Python's `flatten_json.flatten` followed by `pandas.json_normalize`.
//! - Keys are joined with `_`, list positions are numbers: `name_0_given_0`,
//!   `code_coding_0_code`, `_birthDate_extension_0_url` (primitive extensions keep their `_`).
//! - Columns are the union over all resources in first-seen order; a resource without a column
//!   has null there.
//! - Types: a column of booleans is `Boolean`, of integers `Int64`, of numbers with at least one
//!   decimal (or an integer beyond Int64) `Float64`, anything else `Utf8`. When kinds conflict
//!   (a string and a number, a boolean and a number, `[]` and a string) the column is `Utf8` and
//!   holds the JSON text of the non-strings as written (`1.50`, `true`, `[]`). A column that only
//!   ever holds `null` is `Utf8`.
//! - Differences from pandas, by design: an integer column with missing values stays `Int64`
//!   with nulls (pandas turns it into float64 with NaN); a boolean column with missing values is
//!   `Boolean` with nulls (pandas: object).
//! - `[]` is kept as the value `[]` (flatten_json keeps empty lists); `{}` yields no column and no
//!   value (flatten_json keeps it, json_normalize drops it).
//! - [`FlattenOptions::with_max_list_items`] bounds the width: list positions from N on are not
//!   flattened but kept, as JSON text of a list, in one column `<list>_more`.
//! - [`FlattenOptions::with_max_columns`] bounds the width of the table (default
//!   [`DEFAULT_MAX_COLUMNS`], far above the 6,249 columns of the widest real types): columns are
//!   made in first-seen order up to the bound, and the paths of a resource that have none are kept
//!   in one more Utf8 column, [`OVERFLOW_COLUMN`] (`_overflow`), as the JSON text of an object of
//!   flattened names and values, `{"code_coding_7_code":"x","code_coding_7_system":"y"}`, in the
//!   order of the resource (null for a resource without such paths). A key `_overflow` in a
//!   resource is never a column: it goes there too. A decoder whose schema has that column puts
//!   every path the schema lacks there instead of failing the line, and counts the resources it
//!   did it for ([`Decoder::overflowed_count`]).
//!
//! [`TableMode::Nested`] gives one field per top-level element, `Struct` and `List` as the JSON
//! nests, merged over all resources (choice types such as `valueQuantity` and
//! `valueCodeableConcept` are separate fields; integers and decimals merge to `Float64`; other
//! conflicts and `{}` become `Utf8` JSON text).
//!
//! # Bad input
//!
//! | input | outcome |
//! | --- | --- |
//! | empty or blank line | skipped, not an error (the notebook skipped them too) |
//! | UTF-8 byte order mark at the start of a stream | skipped |
//! | CRLF line ends | accepted |
//! | last line without a newline | decoded by [`Decoder::finish`] / [`SchemaInference::end_stream`] |
//! | invalid UTF-8 in a string (outside strings the line is not JSON) | [`DecodeErrorKind::InvalidUtf8`] |
//! | not JSON (also `NaN`, lone surrogates `\ud800`, control characters in strings) | [`DecodeErrorKind::InvalidJson`] |
//! | JSON that is not an object | [`DecodeErrorKind::NotAnObject`] |
//! | `resourceType` other than [`DecodeOptions::with_resource_type`], or missing | [`DecodeErrorKind::WrongResourceType`] |
//! | the same key twice in one object | [`DecodeErrorKind::DuplicateKey`] (both modes: flattening cannot keep both values, and nested keeps to the same rule) |
//! | two keys flattening to one name (`a_b` and `a.b`) | [`DecodeErrorKind::DuplicateKey`] (flattened mode) |
//! | a value the schema has no place for (unknown column, number too large for an `Int64` column, a string in a `Float64` column) | [`DecodeErrorKind::DoesNotFitSchema`] (an unknown column goes to [`OVERFLOW_COLUMN`] when the schema has it) |
//! | a line of more than [`DecodeOptions::max_line_bytes`] (default [`DEFAULT_MAX_LINE_BYTES`], 128 MiB, without its newline; blank or not) | [`DecodeErrorKind::LineTooLong`]: never held whole, its bytes are dropped up to the next newline |
//!
//! An integer too large for Int64 is a decimal to schema inference, so its column is `Float64`.
//! With [`Strictness::Strict`] (the default) the first bad line fails the decode with a
//! [`DecodeError`] naming the source and line; with [`Strictness::Lenient`] bad lines are skipped
//! and counted ([`Decoder::skipped_count`], [`Decoder::skipped`]).
//!
//! # Example
//!
//! ```
//! use fhirflight::ndjson::{Decoder, DecodeOptions, SchemaInference, TableMode};
//!
//! let ndjson = b"{\"resourceType\":\"Patient\",\"id\":\"a\",\"name\":[{\"given\":[\"Ann\"]}]}\n\
//!                {\"resourceType\":\"Patient\",\"id\":\"b\",\"multipleBirthInteger\":2}\n";
//! let mode = TableMode::default();
//! let mut inference = SchemaInference::new(&mode);
//! inference.push(&ndjson[..10])?; // any split will do
//! inference.push(&ndjson[10..])?;
//! inference.end_stream()?;
//! let schema = inference.schema();
//! assert_eq!(
//!     schema.fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>(),
//!     ["resourceType", "id", "name_0_given_0", "multipleBirthInteger"]
//! );
//!
//! let options = DecodeOptions::default().with_resource_type("Patient").with_source("Patient.ndjson");
//! let mut decoder = Decoder::new(schema, &mode, options)?;
//! assert_eq!(decoder.decode(ndjson)?, ndjson.len());
//! let batch = decoder.finish()?.expect("two rows");
//! assert_eq!(batch.num_rows(), 2);
//! # Ok::<(), fhirflight::ndjson::DecodeError>(())
//! ```
//!
//! # Errors
//!
//! The module has its own errors and knows nothing of the crate's [`Error`](crate::Error) (which
//! converts from them): the push API fails with a [`DecodeError`]; [`infer_reader`] with a
//! [`ReadError`] (a bad line, or a [`SourceError`] reading the file); the runs over several
//! readers with the caller's error type, the one its sources and its batch handler fail with,
//! built from a [`DecodeError`] or a [`SourceError`].

mod flat;
mod nested;
mod parallel;
mod trie;
mod walker;

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;

pub use crate::chunks::SourceError;
pub use parallel::{
    DecodeSummary, ReadError, decode_reader, decode_readers, infer_reader, infer_readers,
};
pub(crate) use parallel::{Unforeseen, decode_chunks, decode_guessing, infer_chunks, infer_first};

#[cfg(feature = "cluster")]
pub(crate) use flat::InferredColumns;
use flat::{FlatDecoder, FlatInference};
use nested::{NestedDecoder, NestedInference};
use walker::Leaf;

/// How resources become columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableMode {
    /// One column per flattened path, as the notebook's `flatten_json` + `pandas.json_normalize`.
    Flattened(FlattenOptions),
    /// One field per top-level element, `Struct` and `List` as the JSON nests.
    Nested,
}

impl Default for TableMode {
    fn default() -> Self {
        TableMode::Flattened(FlattenOptions::default())
    }
}

/// The longest line read unless configured ([`DecodeOptions::with_max_line_bytes`]): 128 MiB.
pub const DEFAULT_MAX_LINE_BYTES: usize = 128 << 20;

/// The most flattened columns unless configured ([`FlattenOptions::with_max_columns`]): far above
/// the 6,249 that the widest real types reach, so real data never meets it.
pub const DEFAULT_MAX_COLUMNS: usize = 50_000;

/// The flattened column of the paths beyond [`FlattenOptions::max_columns`]: a resource's values
/// there as the JSON text of one object, `{"<flattened name>": <value>, ...}`.
///
/// No path is ever named so: FHIR names start with a letter, or with `_` and a letter for the
/// extensions of a primitive element `x` (`_x`), and R4 has no element `overflow`; a resource
/// that has a key `_overflow` all the same has its value put in this column, under that name.
pub const OVERFLOW_COLUMN: &str = "_overflow";

/// Options of the flattened mode. The default is faithful to the notebook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlattenOptions {
    max_list_items: Option<usize>,
    max_columns: usize,
}

impl Default for FlattenOptions {
    fn default() -> Self {
        FlattenOptions {
            max_list_items: None,
            max_columns: DEFAULT_MAX_COLUMNS,
        }
    }
}

impl FlattenOptions {
    /// Bounds the width: list elements from position `max` on are not flattened but kept together
    /// as JSON text (`[...]`) in one column named `<list>_more` (`item_more`). `None` (the
    /// default) flattens every position, as the notebook did.
    pub fn with_max_list_items(self, max: Option<usize>) -> Self {
        FlattenOptions {
            max_list_items: max,
            ..self
        }
    }

    /// The bound set by [`FlattenOptions::with_max_list_items`].
    pub fn max_list_items(&self) -> Option<usize> {
        self.max_list_items
    }

    /// Bounds the columns of a table (default [`DEFAULT_MAX_COLUMNS`]): the first `max` paths
    /// met are columns, and a resource's paths beyond them go, as one JSON object, into one more
    /// column [`OVERFLOW_COLUMN`] (see the [module docs](self)). One resource with a list of
    /// 200,000 elements would otherwise make 200,000 columns.
    ///
    /// ```
    /// use fhirflight::ndjson::{FlattenOptions, SchemaInference, TableMode};
    ///
    /// let mode = TableMode::Flattened(FlattenOptions::default().with_max_columns(2));
    /// let mut inference = SchemaInference::new(&mode);
    /// inference.push(b"{\"resourceType\":\"Basic\",\"id\":\"a\",\"code\":{\"text\":\"t\"}}\n")?;
    /// let names: Vec<String> = inference.schema().fields().iter().map(|f| f.name().clone()).collect();
    /// assert_eq!(names, ["resourceType", "id", "_overflow"]); // _overflow: {"code_text":"t"}
    /// # Ok::<(), fhirflight::ndjson::DecodeError>(())
    /// ```
    pub fn with_max_columns(self, max: usize) -> Self {
        FlattenOptions {
            max_columns: max,
            ..self
        }
    }

    /// The bound set by [`FlattenOptions::with_max_columns`].
    pub fn max_columns(&self) -> usize {
        self.max_columns
    }
}

/// What a bad line does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Strictness {
    /// Fail on the first bad line.
    #[default]
    Strict,
    /// Skip bad lines and count them.
    Lenient,
}

/// Options of a [`Decoder`] (and of a [`SchemaInference`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeOptions {
    batch_size: usize,
    strictness: Strictness,
    resource_type: Option<String>,
    source: String,
    max_line_bytes: usize,
    /// The bytes continue a stream (a chunk of a file decoded in parallel): its first line has no
    /// BOM. Lines are numbered from 1 all the same; the chunk runner renumbers their errors.
    mid_stream: bool,
    /// The schema is a [`Guess`]: the columns of it that held only nulls. A line it has no place
    /// for is an error whatever the strictness.
    guessed: Option<Arc<[usize]>>,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            batch_size: 8192,
            strictness: Strictness::default(),
            resource_type: None,
            source: "<stream>".to_owned(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            mid_stream: false,
            guessed: None,
        }
    }
}

impl DecodeOptions {
    /// Rows per record batch at most (default 8192; 0 is taken as 1).
    pub fn with_batch_size(self, batch_size: usize) -> Self {
        DecodeOptions {
            batch_size: batch_size.max(1),
            ..self
        }
    }

    /// What a bad line does (default [`Strictness::Strict`]).
    pub fn with_strictness(self, strictness: Strictness) -> Self {
        DecodeOptions { strictness, ..self }
    }

    /// The `resourceType` every line must have (default: any).
    pub fn with_resource_type(self, resource_type: impl Into<String>) -> Self {
        DecodeOptions {
            resource_type: Some(resource_type.into()),
            ..self
        }
    }

    /// The file or stream name that errors show (default `<stream>`).
    pub fn with_source(self, source: impl Into<String>) -> Self {
        DecodeOptions {
            source: source.into(),
            ..self
        }
    }

    /// The longest line read, in bytes without its newline (default [`DEFAULT_MAX_LINE_BYTES`]).
    /// A longer line is a bad line ([`DecodeErrorKind::LineTooLong`]) that is never held whole:
    /// its bytes are dropped up to the next newline, so memory stays bounded by this, not by the
    /// line (a 1.5 GB line would otherwise cost 1.5 GB).
    pub fn with_max_line_bytes(self, max: usize) -> Self {
        DecodeOptions {
            max_line_bytes: max,
            ..self
        }
    }

    /// The longest line read.
    pub fn max_line_bytes(&self) -> usize {
        self.max_line_bytes
    }

    /// Rows per record batch at most.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// What a bad line does.
    pub fn strictness(&self) -> Strictness {
        self.strictness
    }

    /// The `resourceType` every line must have, if any.
    pub fn resource_type(&self) -> Option<&str> {
        self.resource_type.as_deref()
    }

    /// The file or stream name that errors show.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Decoding against `guess` (its schema is the decoder's): a line it has no place for is an
    /// error, [`DecodeErrorKind::DoesNotFitSchema`], in lenient mode too.
    pub(crate) fn guessing(self, guess: &Guess) -> Self {
        DecodeOptions {
            guessed: Some(Arc::clone(&guess.null_only)),
            ..self
        }
    }
}

/// A bad line: where it is and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// The file or stream ([`DecodeOptions::with_source`]).
    pub source_name: String,
    /// Line number, from 1.
    pub line: u64,
    /// What kind of problem.
    pub kind: DecodeErrorKind,
    /// What exactly, with the byte position in the line where it helps.
    pub message: String,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} line {}: {}",
            self.source_name, self.line, self.message
        )
    }
}

impl std::error::Error for DecodeError {}

/// The kinds of bad lines (see the table in the [module docs](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// The line is not UTF-8.
    InvalidUtf8,
    /// The line is not JSON.
    InvalidJson,
    /// The line is JSON but not an object.
    NotAnObject,
    /// The `resourceType` is missing or not the expected one.
    WrongResourceType,
    /// A key appears twice in one object.
    DuplicateKey,
    /// A value has no place in the decoder's schema.
    DoesNotFitSchema,
    /// The schema given to [`Decoder::new`] has a type the mode does not produce.
    UnsupportedSchema,
    /// The line is longer than [`DecodeOptions::max_line_bytes`].
    LineTooLong,
}

/// What is wrong with one line, before the decoder adds where it is.
///
/// Boxed: every level of the JSON walk returns it, and a one-word `Result` keeps the walk's good
/// path in registers.
#[derive(Debug)]
pub(crate) struct LineError(Box<LineErrorParts>);

#[derive(Debug)]
struct LineErrorParts {
    kind: DecodeErrorKind,
    message: String,
}

impl LineError {
    #[cold]
    fn new(kind: DecodeErrorKind, message: impl Into<String>) -> Self {
        LineError(Box::new(LineErrorParts {
            kind,
            message: message.into(),
        }))
    }
}

/// Checks the root `resourceType` of each line against the expected one.
#[derive(Debug)]
struct ResourceTypeCheck {
    expected: Option<String>,
    seen: bool,
}

impl ResourceTypeCheck {
    fn new(expected: Option<String>) -> Self {
        ResourceTypeCheck {
            expected,
            seen: false,
        }
    }

    fn start_line(&mut self) {
        self.seen = false;
    }

    fn check(&mut self, leaf: &Leaf<'_>) -> Result<(), LineError> {
        self.seen = true;
        match &self.expected {
            Some(expected) if *leaf != Leaf::Str(expected) => Err(LineError::new(
                DecodeErrorKind::WrongResourceType,
                format!(
                    "resourceType {} where {expected} was expected",
                    flat::describe(leaf)
                ),
            )),
            _ => Ok(()),
        }
    }

    fn end_line(&self) -> Result<(), LineError> {
        match &self.expected {
            Some(expected) if !self.seen => Err(LineError::new(
                DecodeErrorKind::WrongResourceType,
                format!("no resourceType where {expected} was expected"),
            )),
            _ => Ok(()),
        }
    }
}

/// Cuts pushed bytes into lines and counts them; handles BOM, CRLF, blank lines and bad lines.
#[derive(Debug)]
struct Lines {
    options: DecodeOptions,
    /// The start of a line whose end has not arrived yet.
    pending: Vec<u8>,
    /// The line whose end has not arrived yet is longer than the bound: its bytes are dropped.
    overlong: bool,
    /// Lines seen so far in this stream.
    seen: u64,
    scratch: Vec<u8>,
    skipped_count: u64,
    skipped: Vec<DecodeError>,
}

/// Bad lines whose errors [`Decoder::skipped`] keeps (all are counted).
const KEEP_SKIPPED: usize = 100;

impl Lines {
    fn new(options: DecodeOptions) -> Self {
        Lines {
            options,
            pending: Vec::new(),
            overlong: false,
            seen: 0,
            scratch: Vec::new(),
            skipped_count: 0,
            skipped: Vec::new(),
        }
    }

    /// Starts over, after the end of a stream, on a piece of file `source` (the chunk runner),
    /// `mid_stream` unless it is the start ([`DecodeOptions::mid_stream`]).
    fn restart(&mut self, source: &str, mid_stream: bool) {
        debug_assert!(self.pending.is_empty());
        self.options.source.replace_range(.., source);
        self.options.mid_stream = mid_stream;
        self.seen = 0;
    }

    /// Hands complete lines of `bytes` to `line` while `more()` holds; returns the bytes consumed.
    ///
    /// `line` gets a line's bytes and returns where the line ends. With `in_place`, it may be
    /// given bytes that hold more lines after it (see [`walker::Walker`]), so that finding the end
    /// of a line is left to the walk that reads it; lines it fails on are cut and given again.
    /// A line longer than the bound is not given at all ([`Lines::too_long`]).
    fn push(
        &mut self,
        bytes: &[u8],
        mut more: impl FnMut() -> bool,
        in_place: bool,
        mut line: impl FnMut(&[u8], &mut Vec<u8>) -> Result<usize, LineError>,
    ) -> Result<usize, DecodeError> {
        let max = self.options.max_line_bytes;
        let mut consumed = 0;
        if self.overlong {
            let Some(end) = memchr::memchr(b'\n', bytes) else {
                return Ok(bytes.len());
            };
            self.overlong = false;
            consumed = end + 1;
            self.too_long()?;
        }
        let whole = match in_place && self.pending.is_empty() {
            true => memchr::memrchr(b'\n', bytes).map_or(0, |i| i + 1),
            false => 0,
        };
        // Lines walked in place end within `max` bytes, as the bound wants: from here on the
        // bytes left before `whole` are too few for a longer one.
        let in_place_from = whole.saturating_sub(max.saturating_add(1));
        while consumed < bytes.len() && more() {
            // A line opening with '{' has no BOM and is not blank: `line` takes it as it is.
            if consumed < whole
                && consumed >= in_place_from
                && bytes[consumed] == b'{'
                && let Ok(end) = line(&bytes[consumed..whole], &mut self.scratch)
            {
                self.seen += 1;
                consumed += end + 1;
                continue;
            }
            let rest = &bytes[consumed..];
            let Some(end) = memchr::memchr(b'\n', rest) else {
                if self.pending.len() + rest.len() > max {
                    self.pending.clear();
                    self.overlong = true;
                } else {
                    self.pending.extend_from_slice(rest);
                }
                return Ok(bytes.len());
            };
            consumed += end + 1;
            if self.pending.len() + end > max {
                self.pending.clear();
                self.too_long()?;
            } else if self.pending.is_empty() {
                self.one(&rest[..end], &mut line)?;
            } else {
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend_from_slice(&rest[..end]);
                let result = self.one(&pending, &mut line);
                pending.clear();
                self.pending = pending;
                result?;
            }
        }
        Ok(consumed)
    }

    /// The last line if it had no newline; then the next bytes start a new stream.
    fn end(
        &mut self,
        mut line: impl FnMut(&[u8], &mut Vec<u8>) -> Result<usize, LineError>,
    ) -> Result<(), DecodeError> {
        let pending = std::mem::take(&mut self.pending);
        let result = if std::mem::take(&mut self.overlong) {
            self.too_long()
        } else if pending.is_empty() {
            Ok(())
        } else {
            self.one(&pending, &mut line)
        };
        self.seen = 0;
        result
    }

    fn one(
        &mut self,
        mut bytes: &[u8],
        line: &mut impl FnMut(&[u8], &mut Vec<u8>) -> Result<usize, LineError>,
    ) -> Result<(), DecodeError> {
        self.seen += 1;
        if self.seen == 1 && !self.options.mid_stream {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        if bytes.iter().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
            return Ok(());
        }
        match line(bytes, &mut self.scratch) {
            Ok(_) => Ok(()),
            Err(e) => self.bad(e),
        }
    }

    /// The next line, which is longer than the bound: a bad line whose bytes were dropped.
    #[cold]
    fn too_long(&mut self) -> Result<(), DecodeError> {
        self.seen += 1;
        let message = format!("line of more than {} bytes", self.options.max_line_bytes);
        self.bad(LineError::new(DecodeErrorKind::LineTooLong, message))
    }

    /// Line `seen` is bad: an error in strict mode, skipped and counted in lenient mode; a line
    /// a guessed schema has no place for is an error in both.
    fn bad(&mut self, LineError(parts): LineError) -> Result<(), DecodeError> {
        let LineErrorParts { kind, message } = *parts;
        let error = DecodeError {
            source_name: self.options.source.clone(),
            line: self.seen,
            kind,
            message,
        };
        let unforeseen =
            self.options.guessed.is_some() && kind == DecodeErrorKind::DoesNotFitSchema;
        match self.options.strictness {
            Strictness::Strict => Err(error),
            Strictness::Lenient if unforeseen => Err(error),
            Strictness::Lenient => {
                self.skipped_count += 1;
                if self.skipped.len() < KEEP_SKIPPED {
                    self.skipped.push(error);
                }
                Ok(())
            }
        }
    }
}

/// Infers the schema of NDJSON pushed in chunks of any size, over one or more files.
///
/// Bad lines follow the [`DecodeOptions`] (strict by default) and leave no trace in the schema.
#[derive(Debug)]
pub struct SchemaInference {
    mode: TableMode,
    inner: Inference,
    lines: Lines,
}

#[derive(Debug)]
enum Inference {
    /// Boxed: the flattened state is large, and one pointer per line costs nothing.
    Flat(Box<FlatInference>),
    Nested(NestedInference),
}

impl SchemaInference {
    /// Inference for `mode`, with default options.
    pub fn new(mode: &TableMode) -> Self {
        Self::with_options(mode, DecodeOptions::default())
    }

    /// Inference for `mode`; strictness, expected `resourceType` and source name from `options`.
    pub fn with_options(mode: &TableMode, options: DecodeOptions) -> Self {
        let resource_type = options.resource_type.clone();
        let inner = match mode {
            TableMode::Flattened(f) => {
                Inference::Flat(Box::new(FlatInference::new(f, resource_type)))
            }
            TableMode::Nested => Inference::Nested(NestedInference::new(resource_type)),
        };
        SchemaInference {
            mode: mode.clone(),
            inner,
            lines: Lines::new(options),
        }
    }

    /// Reads `bytes`, the next piece of the current file.
    pub fn push(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        let inner = &mut self.inner;
        let in_place = matches!(inner, Inference::Flat(_));
        self.lines.push(
            bytes,
            || true,
            in_place,
            |line, scratch| inner.line(line, scratch),
        )?;
        Ok(())
    }

    /// Ends the current file (reads a last line without newline); later bytes start a new file.
    pub fn end_stream(&mut self) -> Result<(), DecodeError> {
        let inner = &mut self.inner;
        self.lines.end(|line, scratch| inner.line(line, scratch))
    }

    /// The schema of everything read so far.
    pub fn schema(&self) -> SchemaRef {
        match &self.inner {
            Inference::Flat(f) => f.schema(),
            Inference::Nested(n) => n.schema(),
        }
    }

    /// Bad lines skipped so far (lenient mode).
    pub fn skipped_count(&self) -> u64 {
        self.lines.skipped_count
    }

    /// The first bad lines skipped so far (at most 100; lenient mode).
    pub fn skipped(&self) -> &[DecodeError] {
        &self.lines.skipped
    }

    /// The schema so far as a [`Guess`] for the rest of the stream; none in the nested mode or
    /// past the width bound (the decoder puts what it lacks in the overflow column then).
    pub(crate) fn guess(&self) -> Option<Guess> {
        match &self.inner {
            Inference::Flat(f) if !f.overflows() => Some(Guess {
                schema: f.schema(),
                null_only: f.null_only().into(),
            }),
            _ => None,
        }
    }

    /// What was read since the last part was taken (a chunk), as an inference to [`merge`] into
    /// another in stream order, with the lines it skipped. The flattened mode keeps its paths for
    /// the next chunk (see `FlatInference::take_part`); the nested mode starts afresh.
    ///
    /// [`merge`]: SchemaInference::merge
    fn take_part(&mut self) -> SchemaInference {
        let options = &self.lines.options;
        let inner = match &mut self.inner {
            Inference::Flat(f) => Inference::Flat(Box::new(f.take_part())),
            Inference::Nested(n) => Inference::Nested(std::mem::replace(
                n,
                NestedInference::new(options.resource_type.clone()),
            )),
        };
        let mut lines = Lines::new(options.clone());
        lines.skipped_count = std::mem::take(&mut self.lines.skipped_count);
        lines.skipped = std::mem::take(&mut self.lines.skipped);
        SchemaInference {
            mode: self.mode.clone(),
            inner,
            lines,
        }
    }

    /// The columns of a flattened inference with the JSON kinds seen in each, for
    /// [`merge_columns`](Self::merge_columns) in another process; none in the nested mode.
    #[cfg(feature = "cluster")]
    pub(crate) fn columns(&self) -> Option<InferredColumns> {
        match &self.inner {
            Inference::Flat(f) => Some(f.columns()),
            Inference::Nested(_) => None,
        }
    }

    /// Adds the columns another process's flattened inference found
    /// ([`columns`](Self::columns)), as [`merge`](Self::merge) does; nothing in the nested mode.
    #[cfg(feature = "cluster")]
    pub(crate) fn merge_columns(&mut self, columns: &InferredColumns) {
        if let Inference::Flat(f) = &mut self.inner {
            f.merge_columns(columns);
        }
    }

    /// Adds what `other` (same mode) inferred from later bytes: new columns go after ours.
    pub(crate) fn merge(&mut self, other: &SchemaInference) {
        match (&mut self.inner, &other.inner) {
            (Inference::Flat(a), Inference::Flat(b)) => a.merge(b),
            (Inference::Nested(a), Inference::Nested(b)) => a.merge(b),
            _ => unreachable!("merged inferences share the mode"),
        }
        self.lines.skipped_count += other.lines.skipped_count;
        let room = KEEP_SKIPPED.saturating_sub(self.lines.skipped.len());
        self.lines
            .skipped
            .extend(other.lines.skipped.iter().take(room).cloned());
    }
}

impl Inference {
    fn line(&mut self, line: &[u8], scratch: &mut Vec<u8>) -> Result<usize, LineError> {
        match self {
            Inference::Flat(f) => f.line(line, scratch),
            Inference::Nested(n) => n.line(line).map(|()| line.len()),
        }
    }
}

/// A flattened schema inferred from a stream's first lines, to decode the rest against without
/// inferring it first (see `TableParts::add`): the decoder stops at a line it has no place for
/// (a path it lacks, a value its column's type cannot hold, a value in a column that held only
/// nulls so far, whose type the value would decide) instead of skipping it, even when lenient
/// ([`DecodeOptions::guessing`]). A decode that ends without such a line gave what an inference
/// over the stream would have: every line's paths are columns of the guess in its order, and
/// every value has the type the inference would give its column.
#[derive(Debug, Clone)]
pub(crate) struct Guess {
    pub(crate) schema: SchemaRef,
    /// The columns that held only nulls, typed `Utf8` for now.
    null_only: Arc<[usize]>,
}

/// Decodes NDJSON pushed in chunks of any size into record batches of a known schema.
///
/// Like arrow-json's decoder: [`decode`](Decoder::decode) consumes bytes until a batch is full
/// and returns how many it consumed; [`flush`](Decoder::flush) takes the rows buffered so far;
/// [`finish`](Decoder::finish) ends the stream.
#[derive(Debug)]
pub struct Decoder {
    inner: Decoding,
    lines: Lines,
}

#[derive(Debug)]
enum Decoding {
    Flat(FlatDecoder),
    Nested(NestedDecoder),
}

impl Decoding {
    fn rows(&self) -> usize {
        match self {
            Decoding::Flat(f) => f.rows(),
            Decoding::Nested(n) => n.rows(),
        }
    }

    fn line(&mut self, line: &[u8], scratch: &mut Vec<u8>) -> Result<usize, LineError> {
        match self {
            Decoding::Flat(f) => f.line(line, scratch),
            Decoding::Nested(n) => n.line(line).map(|()| line.len()),
        }
    }
}

impl Decoder {
    /// A decoder of `mode` into `schema` (normally from a [`SchemaInference`] of the same mode).
    ///
    /// Fails if the schema has a type that `mode` does not produce.
    pub fn new(
        schema: SchemaRef,
        mode: &TableMode,
        options: DecodeOptions,
    ) -> Result<Self, DecodeError> {
        let resource_type = options.resource_type.clone();
        let inner = match mode {
            TableMode::Flattened(f) => {
                let null_only = options.guessed.as_deref().unwrap_or_default();
                FlatDecoder::new(schema, f.max_list_items, resource_type, null_only)
                    .map(Decoding::Flat)
            }
            TableMode::Nested => NestedDecoder::new(schema, resource_type).map(Decoding::Nested),
        }
        .map_err(|message| DecodeError {
            source_name: options.source.clone(),
            line: 0,
            kind: DecodeErrorKind::UnsupportedSchema,
            message,
        })?;
        Ok(Decoder {
            inner,
            lines: Lines::new(options),
        })
    }

    /// Decodes complete lines of `bytes` (keeping a trailing partial line for the next call) until
    /// a batch is full. Returns the bytes consumed: fewer than given when a batch is full, then
    /// [`flush`](Decoder::flush) and call again with the rest.
    pub fn decode(&mut self, bytes: &[u8]) -> Result<usize, DecodeError> {
        let batch_size = self.lines.options.batch_size;
        let inner = &mut self.inner;
        let rows = std::cell::Cell::new(inner.rows());
        let in_place = matches!(inner, Decoding::Flat(_));
        self.lines.push(
            bytes,
            || rows.get() < batch_size,
            in_place,
            |line, scratch| {
                let end = inner.line(line, scratch)?;
                rows.set(rows.get() + 1);
                Ok(end)
            },
        )
    }

    /// The rows decoded so far as a batch, or `None` if there are none.
    pub fn flush(&mut self) -> Result<Option<RecordBatch>, DecodeError> {
        if self.inner.rows() == 0 {
            return Ok(None);
        }
        let batch = match &mut self.inner {
            Decoding::Flat(f) => f.flush(),
            Decoding::Nested(n) => n.flush(),
        };
        // The columns are built from the schema, so assembling them cannot fail.
        Ok(Some(batch.expect("columns match the schema")))
    }

    /// Ends the stream: decodes a last line without newline and flushes.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>, DecodeError> {
        let inner = &mut self.inner;
        self.lines.end(|line, scratch| inner.line(line, scratch))?;
        self.flush()
    }

    /// Bad lines skipped so far (lenient mode).
    pub fn skipped_count(&self) -> u64 {
        self.lines.skipped_count
    }

    /// The first bad lines skipped so far (at most 100; lenient mode).
    pub fn skipped(&self) -> &[DecodeError] {
        &self.lines.skipped
    }

    /// Resources decoded so far with paths the schema has no column for, put in its
    /// [`OVERFLOW_COLUMN`] (flattened mode).
    pub fn overflowed_count(&self) -> u64 {
        match &self.inner {
            Decoding::Flat(f) => f.overflowed,
            Decoding::Nested(_) => 0,
        }
    }
}

#[cfg(test)]
mod tests;

//! The walker: a small JSON tokenizer that walks one NDJSON line and reports leaves by flattened
//! path.
//!
//! No `serde_json::Value` is built: the walk resolves every object key and list position to a node
//! of a [`Trie`] (one node per flattened column name) and hands scalar leaves to a [`Sink`], which
//! writes them straight into column buffers (decoding) or merges their kinds (schema inference).
//! The grammar is strict RFC 8259 JSON, as Python's `json.loads` (no `NaN`/`Infinity`, no control
//! characters in strings); UTF-8 is checked in strings, the only place where valid JSON can have
//! non-ASCII bytes.

use super::trie::{Key, ROOT, Trie};
use super::{DecodeErrorKind, LineError};

/// Deepest nesting accepted (FHIR resources nest about 10 levels).
const MAX_DEPTH: u32 = 128;

/// A scalar (or empty list) met at a flattened path.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Leaf<'a> {
    Null,
    Bool(bool),
    /// An integer literal (no fraction, no exponent), as written.
    Int(&'a str),
    /// Any other number literal, as written.
    Float(&'a str),
    /// A string, unescaped.
    Str(&'a str),
    /// `[]`: flatten_json keeps an empty list as a value, pandas shows it as `[]`.
    EmptyList,
    /// List elements beyond [`crate::ndjson::FlattenOptions::max_list_items`], as JSON text
    /// without the enclosing brackets.
    ListTail(&'a str),
}

/// Receives the leaves of one line.
pub(crate) trait Sink {
    fn leaf(&mut self, trie: &mut Trie, node: u32, leaf: Leaf<'_>) -> Result<(), LineError>;
}

/// Walks one line (UTF-8, possibly with surrounding JSON whitespace) that must hold one object.
///
/// A line ends at the end of the bytes or at a `'\n'`, which is never whitespace here: a line
/// can then be walked in place, in bytes that hold more lines after it.
pub(crate) struct Walker<'a, 's> {
    buf: &'a [u8],
    pos: usize,
    scratch: &'s mut Vec<u8>,
    max_list_items: usize,
}

type WalkError = LineError;

impl<'a, 's> Walker<'a, 's> {
    pub(crate) fn new(
        buf: &'a [u8],
        scratch: &'s mut Vec<u8>,
        max_list_items: Option<usize>,
    ) -> Self {
        Walker {
            buf,
            pos: 0,
            scratch,
            max_list_items: max_list_items.unwrap_or(usize::MAX),
        }
    }

    /// Walks the line's object, calling `sink` for every leaf. Returns where the line ends (the
    /// length of the bytes, or the place of the `'\n'` that ends it).
    pub(crate) fn walk<S: Sink>(
        mut self,
        trie: &mut Trie,
        sink: &mut S,
    ) -> Result<usize, WalkError> {
        self.skip_ws();
        if self.peek() != Some(b'{') {
            return Err(match self.peek() {
                Some(b'[' | b'"' | b't' | b'f' | b'n' | b'-' | b'0'..=b'9') => {
                    // Valid JSON that is not an object, or garbage: tell which.
                    match self.skip_value(0) {
                        Ok(()) => LineError::new(DecodeErrorKind::NotAnObject, "not a JSON object"),
                        Err(e) => e,
                    }
                }
                _ => self.error("expected '{'"),
            });
        }
        self.value(trie, ROOT, sink, 0)?;
        self.skip_ws();
        if self.peek().is_some_and(|c| c != b'\n') {
            return Err(self.error("trailing characters after the object"));
        }
        Ok(self.pos)
    }

    fn error(&self, what: &str) -> WalkError {
        LineError::new(
            DecodeErrorKind::InvalidJson,
            format!("invalid JSON at byte {}: {what}", self.pos + 1),
        )
    }

    #[inline]
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    /// Skips whitespace, of which NDJSON written by servers has little or none: one test inline.
    #[inline(always)]
    fn skip_ws(&mut self) {
        if let Some(b' ' | b'\t' | b'\r') = self.peek() {
            self.skip_more_ws();
        }
    }

    #[cold]
    #[inline(never)]
    fn skip_more_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    #[inline]
    fn expect(&mut self, byte: u8, what: &str) -> Result<(), WalkError> {
        self.skip_ws();
        if self.peek() == Some(byte) {
            self.pos += 1;
            Ok(())
        } else {
            Err(self.error(what))
        }
    }

    /// A value at `node`. Scalars are read here, inlined into the caller's loop; objects and
    /// lists are calls of their own (the recursion), so that a leaf costs no call: the calls'
    /// saving and restoring of registers took a sixth of the walk when every value was one.
    #[inline(always)]
    fn value<S: Sink>(
        &mut self,
        trie: &mut Trie,
        node: u32,
        sink: &mut S,
        depth: u32,
    ) -> Result<(), WalkError> {
        self.skip_ws();
        let at = self.pos;
        let leaf = match self.peek() {
            Some(b'{') => return self.object(trie, node, sink, depth),
            Some(b'[') => return self.array(trie, node, sink, depth),
            Some(b'"') => {
                self.pos += 1;
                let s = self.string()?;
                return sink
                    .leaf(trie, node, Leaf::Str(s))
                    .map_err(|e| at_byte(at, e));
            }
            Some(b't') => self.literal(b"true", Leaf::Bool(true))?,
            Some(b'f') => self.literal(b"false", Leaf::Bool(false))?,
            Some(b'n') => self.literal(b"null", Leaf::Null)?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            _ => return Err(self.error("expected a value")),
        };
        sink.leaf(trie, node, leaf).map_err(|e| at_byte(at, e))
    }

    #[inline(never)]
    fn object<S: Sink>(
        &mut self,
        trie: &mut Trie,
        node: u32,
        sink: &mut S,
        depth: u32,
    ) -> Result<(), WalkError> {
        self.check_depth(depth)?;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            // flatten_json keeps `{}` as a value, json_normalize then drops it: no column.
            self.pos += 1;
            return Ok(());
        }
        loop {
            self.expect(b'"', "expected a key")?;
            let child = match trie.predicted_key(node, self.buf, self.pos) {
                Some((child, len)) => {
                    self.pos += len + 1;
                    child
                }
                None => {
                    let line = self.buf;
                    let key = self.string()?;
                    trie.child_key(node, key, Key::head_of(key, line))
                }
            };
            self.expect(b':', "expected ':'")?;
            self.value(trie, child, sink, depth + 1)?;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(());
                }
                _ => return Err(self.error("expected ',' or '}'")),
            }
        }
    }

    #[inline(never)]
    fn array<S: Sink>(
        &mut self,
        trie: &mut Trie,
        node: u32,
        sink: &mut S,
        depth: u32,
    ) -> Result<(), WalkError> {
        self.check_depth(depth)?;
        let at = self.pos;
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return sink
                .leaf(trie, node, Leaf::EmptyList)
                .map_err(|e| at_byte(at, e));
        }
        let mut index = 0;
        let mut tail = None;
        loop {
            if index < self.max_list_items {
                let child = trie.child_index(node, index);
                self.value(trie, child, sink, depth + 1)?;
            } else {
                self.skip_ws();
                tail.get_or_insert(self.pos);
                self.skip_value(depth + 1)?;
            }
            index += 1;
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => break,
                _ => return Err(self.error("expected ',' or ']'")),
            }
        }
        let end = self.pos;
        self.pos += 1;
        if let Some(start) = tail {
            let text = std::str::from_utf8(&self.buf[start..end])
                .map_err(|_| self.error("invalid UTF-8"))?;
            let child = trie.child_key(node, "more", Key::head(b"more"));
            sink.leaf(trie, child, Leaf::ListTail(text.trim_end()))
                .map_err(|e| at_byte(at, e))?;
        }
        Ok(())
    }

    #[inline]
    fn check_depth(&self, depth: u32) -> Result<(), WalkError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        Ok(())
    }

    /// Validates one value without reporting leaves (list elements beyond the width bound).
    fn skip_value(&mut self, depth: u32) -> Result<(), WalkError> {
        struct Ignore;
        impl Sink for Ignore {
            fn leaf(&mut self, _: &mut Trie, _: u32, _: Leaf<'_>) -> Result<(), LineError> {
                Ok(())
            }
        }
        // A throwaway trie keeps the walk simple; skipped values are rare.
        let mut trie = Trie::with_columns([]);
        let max = std::mem::replace(&mut self.max_list_items, usize::MAX);
        let result = self.value(&mut trie, ROOT, &mut Ignore, depth);
        self.max_list_items = max;
        result
    }

    fn literal(&mut self, word: &'static [u8], leaf: Leaf<'static>) -> Result<Leaf<'a>, WalkError> {
        if self.buf[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(leaf)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn number(&mut self) -> Result<Leaf<'a>, WalkError> {
        let start = self.pos;
        let b = self.buf;
        let digits = |pos: &mut usize| {
            let s = *pos;
            while *pos < b.len() && b[*pos].is_ascii_digit() {
                *pos += 1;
            }
            *pos - s
        };
        let mut pos = self.pos;
        if b[pos] == b'-' {
            pos += 1;
        }
        let int_start = pos;
        let n = digits(&mut pos);
        if n == 0 || (n > 1 && b[int_start] == b'0') {
            self.pos = pos;
            return Err(self.error("invalid number"));
        }
        let mut float = false;
        if pos < b.len() && b[pos] == b'.' {
            pos += 1;
            float = true;
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        }
        if pos < b.len() && (b[pos] | 0x20) == b'e' {
            pos += 1;
            float = true;
            if pos < b.len() && (b[pos] == b'+' || b[pos] == b'-') {
                pos += 1;
            }
            if digits(&mut pos) == 0 {
                self.pos = pos;
                return Err(self.error("invalid number"));
            }
        }
        self.pos = pos;
        // SAFETY: the bytes matched above are ASCII digits, signs, '.', 'e' and 'E'.
        let text = unsafe { std::str::from_utf8_unchecked(&b[start..pos]) };
        Ok(if float {
            Leaf::Float(text)
        } else {
            Leaf::Int(text)
        })
    }

    /// A string after its opening quote: borrowed from the line, or unescaped into the scratch.
    /// Only strings can hold non-ASCII bytes in valid JSON, so UTF-8 is checked here, and only
    /// for strings that have such bytes.
    #[inline]
    fn string(&mut self) -> Result<&str, WalkError> {
        let b = self.buf;
        let start = self.pos;
        // Most strings of a resource (keys, codes, dates) end within 32 bytes: one well
        // predicted branch for them, no loop.
        if let Some(block) = b.get(start..start + 32) {
            let (lo, lo_high) = scan16(block[..16].try_into().expect("16 bytes"));
            let (hi, hi_high) = scan16(block[16..].try_into().expect("16 bytes"));
            let (special, high) = (lo | hi << 16, lo_high | hi_high << 16);
            if special == 0 {
                // Longer (ids, references, URLs): go on after these 32 bytes.
                return self.long_string(start, start + 32, high != 0);
            }
            let len = special.trailing_zeros();
            if block[len as usize] == b'"' {
                let non_ascii = high & ((1 << len) - 1) != 0;
                self.pos = start + len as usize + 1;
                return utf8(&block[..len as usize], non_ascii, start);
            }
        }
        self.long_string(start, start, false)
    }

    /// [`Walker::string`] of a string longer than 31 bytes or with escapes or errors, whose bytes
    /// before `pos` are plain (no quote, backslash or control character), `non_ascii` if any of
    /// them is.
    #[inline(never)]
    fn long_string(
        &mut self,
        start: usize,
        mut pos: usize,
        mut non_ascii: bool,
    ) -> Result<&str, WalkError> {
        let b = self.buf;
        // Fast scan over 16 bytes at a time for '"', '\\' or a control character.
        while let Some(block) = b.get(pos..pos + 16) {
            let (special, high) = scan16(block.try_into().expect("16 bytes"));
            if special != 0 {
                let first = special.trailing_zeros();
                non_ascii |= high & ((1 << first) - 1) != 0;
                pos += first as usize;
                break;
            }
            non_ascii |= high != 0;
            pos += 16;
        }
        loop {
            match b.get(pos) {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return utf8(&b[start..pos], non_ascii, start);
                }
                Some(b'\\') => break,
                Some(c) if *c < 0x20 => {
                    self.pos = pos;
                    return Err(self.error("control character in string"));
                }
                Some(&c) => {
                    non_ascii |= c >= 0x80;
                    pos += 1;
                }
                None => {
                    self.pos = pos;
                    return Err(self.error("unterminated string"));
                }
            }
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&b[start..pos]);
        loop {
            match b.get(pos) {
                Some(b'"') => {
                    self.pos = pos + 1;
                    return utf8(self.scratch, true, start);
                }
                Some(b'\\') => {
                    pos += 1;
                    let c = match b.get(pos) {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'/') => b'/',
                        Some(b'b') => 8,
                        Some(b'f') => 12,
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(b'u') => {
                            self.pos = pos + 1;
                            let ch = self.unicode_escape()?;
                            pos = self.pos;
                            let mut utf8 = [0; 4];
                            self.scratch
                                .extend_from_slice(ch.encode_utf8(&mut utf8).as_bytes());
                            continue;
                        }
                        _ => {
                            self.pos = pos;
                            return Err(self.error("invalid escape"));
                        }
                    };
                    self.scratch.push(c);
                    pos += 1;
                }
                Some(c) if *c < 0x20 => {
                    self.pos = pos;
                    return Err(self.error("control character in string"));
                }
                Some(&c) => {
                    self.scratch.push(c);
                    pos += 1;
                }
                None => {
                    self.pos = pos;
                    return Err(self.error("unterminated string"));
                }
            }
        }
    }

    /// `\uXXXX` (after the `u`), with surrogate pairs. A lone surrogate is an error: Python would
    /// accept it, but no UTF-8 string (nor Arrow) can hold it.
    fn unicode_escape(&mut self) -> Result<char, WalkError> {
        let first = self.hex4()?;
        let code = if (0xD800..0xDC00).contains(&first) {
            if !self.buf[self.pos..].starts_with(b"\\u") {
                return Err(self.error("lone surrogate in \\u escape"));
            }
            self.pos += 2;
            let second = self.hex4()?;
            if !(0xDC00..0xE000).contains(&second) {
                return Err(self.error("lone surrogate in \\u escape"));
            }
            0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
        } else {
            first
        };
        char::from_u32(code).ok_or_else(|| self.error("lone surrogate in \\u escape"))
    }

    fn hex4(&mut self) -> Result<u32, WalkError> {
        let digits = self
            .buf
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("invalid \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("invalid \\u escape"))?;
        let code = u32::from_str_radix(text, 16).map_err(|_| self.error("invalid \\u escape"))?;
        if text.starts_with('+') {
            return Err(self.error("invalid \\u escape"));
        }
        self.pos += 4;
        Ok(code)
    }
}

/// `bytes` as a string, checked unless they are known to be ASCII.
#[inline]
fn utf8(bytes: &[u8], non_ascii: bool, start: usize) -> Result<&str, WalkError> {
    if !non_ascii {
        // SAFETY: every byte is below 0x80, and ASCII is UTF-8. (Most strings of a resource are
        // ASCII; checking them again cost a tenth of the decoding time.)
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|e| {
        LineError::new(
            DecodeErrorKind::InvalidUtf8,
            format!("invalid UTF-8 at byte {}", start + e.valid_up_to() + 1),
        )
    })
}

fn at_byte(at: usize, mut e: LineError) -> WalkError {
    e.0.message = format!("{} (byte {})", e.0.message, at + 1);
    e
}

/// For 16 bytes: a bit per byte that is '"', '\\' or a control character (the lowest set bit is
/// the first), and a bit per non-ASCII byte. SSE2 (every x86_64 has it) does it in seven
/// instructions; the compiler does not find them in the portable loop.
#[cfg(target_arch = "x86_64")]
#[inline]
fn scan16(block: &[u8; 16]) -> (u32, u32) {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: the load reads the 16 bytes of `block` (unaligned loads are allowed); SSE2 is
    // part of the x86_64 baseline.
    unsafe {
        let v = _mm_loadu_si128(block.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
        // max(c, 0x1f) == 0x1f: c is at most 0x1f (unsigned).
        let control = _mm_cmpeq_epi8(_mm_max_epu8(v, _mm_set1_epi8(0x1f)), _mm_set1_epi8(0x1f));
        let special = _mm_or_si128(_mm_or_si128(quote, backslash), control);
        (
            _mm_movemask_epi8(special) as u32,
            _mm_movemask_epi8(v) as u32,
        )
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
fn scan16(block: &[u8; 16]) -> (u32, u32) {
    let (mut special, mut high) = (0, 0);
    for (i, &c) in block.iter().enumerate() {
        special |= u32::from(c == b'"' || c == b'\\' || c < 0x20) << i;
        high |= u32::from(c >= 0x80) << i;
    }
    (special, high)
}

#[cfg(test)]
mod properties;

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `name=leaf` for every leaf.
    #[derive(Default)]
    struct Record(Vec<String>);
    impl Sink for Record {
        fn leaf(&mut self, trie: &mut Trie, node: u32, leaf: Leaf<'_>) -> Result<(), LineError> {
            self.0.push(format!("{}={leaf:?}", trie.name(node)));
            Ok(())
        }
    }

    fn walk(line: &str, max: Option<usize>) -> Result<Vec<String>, String> {
        let mut trie = Trie::with_columns([]);
        let mut sink = Record::default();
        let mut scratch = Vec::new();
        Walker::new(line.as_bytes(), &mut scratch, max)
            .walk(&mut trie, &mut sink)
            .map_err(|e| e.0.message)?;
        Ok(sink.0)
    }

    #[test]
    fn flattens_keys_and_positions() {
        let got = walk(
            r#" {"a":{"b":[1,{"c":"x\u00e9\ud83d\ude00\n"}],"e":{}},"_d":[],"f":-1.5e3,"g":null,"h":true} "#,
            None,
        );
        assert_eq!(
            got.unwrap(),
            [
                "a_b_0=Int(\"1\")",
                "a_b_1_c=Str(\"xé😀\\n\")",
                "_d=EmptyList",
                "f=Float(\"-1.5e3\")",
                "g=Null",
                "h=Bool(true)"
            ]
        );
    }

    /// The leaves of each line, walked one after the other with one trie (as a decoder does).
    fn walk_lines(lines: &[&str]) -> Vec<Vec<String>> {
        let mut trie = Trie::with_columns([]);
        let mut scratch = Vec::new();
        lines
            .iter()
            .map(|line| {
                let mut sink = Record::default();
                Walker::new(line.as_bytes(), &mut scratch, None)
                    .walk(&mut trie, &mut sink)
                    .unwrap();
                sink.0
            })
            .collect()
    }

    /// The trie's guess of the next node (`Hot::next`) never stands in for another key, parent or
    /// position.
    #[test]
    fn guessed_nodes_are_the_right_ones() {
        let lines = [
            r#"{"a":{"x":1},"b":{"x":2},"abcdefghijklmnopq1":[1,2,3]}"#,
            r#"{"b":{"x":3},"a":{"x":4},"abcdefghijklmnopq2":[5]}"#,
            r#"{"a":{"y":5,"x":6},"abcdefghijklmnopq1":[[7]],"abcdefghijklmnopq2":[8,9]}"#,
            r#"{"a":{"x":1},"b":{"x":2},"abcdefghijklmnopq1":[1,2,3]}"#,
        ];
        assert_eq!(
            walk_lines(&lines),
            [
                vec![
                    "a_x=Int(\"1\")",
                    "b_x=Int(\"2\")",
                    "abcdefghijklmnopq1_0=Int(\"1\")",
                    "abcdefghijklmnopq1_1=Int(\"2\")",
                    "abcdefghijklmnopq1_2=Int(\"3\")"
                ],
                vec![
                    "b_x=Int(\"3\")",
                    "a_x=Int(\"4\")",
                    "abcdefghijklmnopq2_0=Int(\"5\")"
                ],
                vec![
                    "a_y=Int(\"5\")",
                    "a_x=Int(\"6\")",
                    "abcdefghijklmnopq1_0_0=Int(\"7\")",
                    "abcdefghijklmnopq2_0=Int(\"8\")",
                    "abcdefghijklmnopq2_1=Int(\"9\")"
                ],
                vec![
                    "a_x=Int(\"1\")",
                    "b_x=Int(\"2\")",
                    "abcdefghijklmnopq1_0=Int(\"1\")",
                    "abcdefghijklmnopq1_1=Int(\"2\")",
                    "abcdefghijklmnopq1_2=Int(\"3\")"
                ],
            ]
        );
    }

    /// A key that was unescaped is never taken for raw bytes that spell it differently.
    #[test]
    fn escaped_keys_are_not_predicted() {
        let lines = [
            r#"{"a\"b":1,"c":2}"#,
            r#"{"a\"b":3,"c":4}"#,
            r#"{"a\u0062":5,"c":6}"#,
            r#"{"ab":7,"c":8}"#,
        ];
        assert_eq!(
            walk_lines(&lines).concat(),
            [
                "a\"b=Int(\"1\")",
                "c=Int(\"2\")",
                "a\"b=Int(\"3\")",
                "c=Int(\"4\")",
                "ab=Int(\"5\")",
                "c=Int(\"6\")",
                "ab=Int(\"7\")",
                "c=Int(\"8\")"
            ]
        );
    }

    #[test]
    fn bounds_list_width() {
        let got = walk(r#"{"l":[1,2, {"x":[3]} ,4 ]}"#, Some(1)).unwrap();
        assert_eq!(
            got,
            [
                "l_0=Int(\"1\")",
                "l_more=ListTail(\"2, {\\\"x\\\":[3]} ,4\")"
            ]
        );
    }

    #[test]
    fn rejects_bad_json() {
        for (line, want) in [
            ("[1]", "not a JSON object"),
            ("\"s\"", "not a JSON object"),
            ("{\"a\":1", "expected ',' or '}'"),
            ("{\"a\":01}", "invalid number"),
            ("{\"a\":1.}", "invalid number"),
            ("{\"a\":NaN}", "expected a value"),
            ("{\"a\":\"x\ty\"}", "control character"),
            ("{\"a\":\"\\ud800\"}", "lone surrogate"),
            ("{\"a\":\"\\q\"}", "invalid escape"),
            ("{\"a\":1} x", "trailing characters"),
            ("{a:1}", "expected a key"),
            ("nope", "expected a value"),
        ] {
            let err = walk(line, None).unwrap_err();
            assert!(err.contains(want), "{line}: {err}");
        }
    }

    /// A walk stops at the '\n' that ends its line, whatever follows; no value crosses it.
    #[test]
    fn lines_are_walked_in_place() {
        let end = |bytes: &[u8]| {
            let mut scratch = Vec::new();
            Walker::new(bytes, &mut scratch, None)
                .walk(&mut Trie::with_columns([]), &mut Record::default())
                .map_err(|e| e.0.message)
        };
        assert_eq!(end(b"{\"a\":1} \r\n{\"b\":2}\n"), Ok(9));
        assert_eq!(end(b"{\"a\":[1]}"), Ok(9));
        for bad in [
            &b"{\"a\":\"x\ny\"}\n"[..],
            b"{\"a\":\n1}\n",
            b"{\"a\":1\n}\n",
        ] {
            assert!(end(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        assert!(walk(&deep(MAX_DEPTH as usize - 1), None).is_ok());
        let err = walk(&deep(100_000), None).unwrap_err();
        assert!(err.contains("nested too deeply"), "{err}");
    }

    #[test]
    fn scan16_finds_each_byte() {
        for (i, b) in [b'"', b'\\', 0u8, 0x1f].into_iter().enumerate() {
            let mut block = *b"abcdefghijklmnop";
            block[i * 4 + 1] = b;
            block[15] = b'"';
            assert_eq!(scan16(&block).0, 1 << (i * 4 + 1) | 1 << 15);
        }
        assert_eq!(
            scan16(b" ~\x7f\xc3\xa9z!#abcdefg\xff"),
            (0, 1 << 3 | 1 << 4 | 1 << 15)
        );
    }
}

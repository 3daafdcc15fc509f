//! The path trie: every flattened column name a walk meets (an object key or list position under
//! its parent) is a node, with the sink's column for it and a guess of the node looked up next.

use std::collections::HashMap;

/// Flattened paths: node 0 is the resource itself, every other node one flattened name.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    /// What a lookup reads, 32 bytes per node (the rest is in `nodes`, same index).
    hot: Vec<Hot>,
    nodes: Vec<Node>,
    /// The node last looked up.
    last: u32,
    /// Its [`Hot::next`], the guess for the next lookup, read when `last` is set: checking the
    /// guess then waits for one load fewer.
    predicted: u32,
    /// The sink's column per flattened name, shared by nodes whose names collide
    /// (`{"a_b": 1}` and `{"a": {"b": 1}}` are the same column, as in flatten_json).
    columns: HashMap<String, u32>,
}

/// A node as a lookup sees it.
///
/// Resources of one type walk nearly the same paths in the same order, so the node looked up after
/// a node is, most of the time, the one looked up after it the time before: checking that guess
/// reads one `Hot` (and, nodes being numbered in first-seen order, mostly the next one in memory).
#[derive(Debug)]
struct Hot {
    /// The key's [`Key::head`], or the list position.
    head: u128,
    /// The key's length in bytes, [`POSITION`] for a list position; with [`ESCAPED`] set for a
    /// key that its raw JSON text cannot spell (see [`Trie::predicted_key`]).
    len: u32,
    parent: u32,
    /// The node looked up after this one the last time, [`NO_NODE`] if none yet.
    next: u32,
    /// Column index in the sink, [`NO_COLUMN`] if none yet (or not in the schema).
    column: u32,
}

const NO_NODE: u32 = u32::MAX;
/// [`Hot::len`] of a list position.
const POSITION: u32 = u32::MAX;
/// Set in [`Hot::len`] of a key holding '"', '\\' or a control character (it was unescaped).
const ESCAPED: u32 = 1 << 31;

#[derive(Debug)]
struct Node {
    name: String,
    keys: Vec<Key>,
    /// Where the next key lookup starts.
    next_key: usize,
    /// Position in `keys` of each key, for keys met out of the usual order.
    positions: HashMap<Box<str>, usize>,
    items: Vec<u32>,
}

pub(crate) const NO_COLUMN: u32 = u32::MAX;
pub(crate) const ROOT: u32 = 0;
/// The root's `resourceType` child, created first so that its id is fixed.
pub(crate) const RESOURCE_TYPE: u32 = 1;

impl Trie {
    /// A trie whose columns are `names`, in that order (decoding against a known schema).
    pub(crate) fn with_columns<'a>(names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut trie = Trie::default();
        for (i, name) in names.into_iter().enumerate() {
            trie.columns.insert(name.to_owned(), i as u32);
        }
        trie.nodes.push(Node::new(String::new()));
        trie.hot.push(Hot {
            head: 0,
            len: 0,
            parent: NO_NODE,
            next: NO_NODE,
            column: NO_COLUMN,
        });
        trie.predicted = NO_NODE;
        let rt = trie.child_key(ROOT, "resourceType", Key::head("resourceType".as_bytes()));
        debug_assert_eq!(rt, RESOURCE_TYPE);
        trie
    }

    /// The column of `name`, else `next` (merging inference states), else none.
    pub(crate) fn column_by_name(&mut self, name: &str, next: Option<u32>) -> Option<u32> {
        match self.columns.get(name) {
            Some(&column) => Some(column),
            None => Some(*self.columns.entry(name.to_owned()).or_insert(next?)),
        }
    }

    /// Makes `name` no column's: its nodes have none (the overflow column, which no path fills).
    pub(crate) fn forget_name(&mut self, name: &str) {
        self.columns.remove(name);
    }

    /// Forgets the column of `node` (assigned by a line that turned out bad).
    pub(crate) fn forget_column(&mut self, node: u32) {
        self.columns.remove(&self.nodes[node as usize].name);
        self.hot[node as usize].column = NO_COLUMN;
    }

    /// The flattened name of `node`.
    pub(crate) fn name(&self, node: u32) -> &str {
        &self.nodes[node as usize].name
    }

    /// The column of `node`, [`NO_COLUMN`] if none.
    #[inline]
    pub(crate) fn column(&self, node: u32) -> u32 {
        self.hot[node as usize].column
    }

    /// The column of `node`, which has none yet ([`Trie::column`]): that of another node of the
    /// same name, else `next` (the sink's next new column, if it has room), else none. Returns
    /// the column and whether it is new.
    pub(crate) fn column_or_insert(&mut self, node: u32, next: Option<u32>) -> Option<(u32, bool)> {
        let hot = &mut self.hot[node as usize];
        debug_assert_eq!(hot.column, NO_COLUMN);
        let name = &self.nodes[node as usize].name;
        let column = match self.columns.get(name) {
            Some(&column) => (column, false),
            None => {
                let next = next?;
                self.columns.insert(name.clone(), next);
                (next, true)
            }
        };
        hot.column = column.0;
        Some(column)
    }

    /// `child`, found by a lookup: the guess for the lookup after the last one.
    #[inline]
    fn found(&mut self, child: u32) -> u32 {
        self.hot[self.last as usize].next = child;
        self.went_to(child);
        child
    }

    /// Makes `node` the last lookup.
    #[inline]
    fn went_to(&mut self, node: u32) {
        self.last = node;
        self.predicted = self.hot[node as usize].next;
    }

    /// The guessed next lookup ([`Hot`]) if it is the child of `node` at `head`/`len`.
    #[inline]
    fn guess(&self, node: u32, head: u128, len: u32) -> Option<u32> {
        let guess = self.predicted;
        let hot = self.hot.get(guess as usize)?;
        (hot.parent == node && hot.head == head && hot.len == len).then_some(guess)
    }

    /// The guessed next node if it is the child of `node` at the key whose raw text starts at
    /// `start` of `line` (after its opening quote), with the key's length.
    ///
    /// Resources of one type mostly repeat their keys in the same order, so comparing the guess
    /// with the raw bytes (one 16-byte load and the closing quote) usually stands in for scanning
    /// and hashing the key. The raw bytes spell the guess exactly when they equal its unescaped
    /// name and a quote follows: a key with a quote, backslash or control character is
    /// [`ESCAPED`] and never guessed here.
    #[inline(always)]
    pub(super) fn predicted_key(
        &mut self,
        node: u32,
        line: &[u8],
        start: usize,
    ) -> Option<(u32, usize)> {
        let guess = self.predicted;
        let hot = self.hot.get(guess as usize)?;
        let len = hot.len as usize;
        if hot.parent != node || hot.len & ESCAPED != 0 || line.get(start + len) != Some(&b'"') {
            return None;
        }
        let head = Key::head_in(line, start, len.min(16));
        if head != hot.head
            || (len > 16
                && !self.nodes[guess as usize]
                    .name
                    .as_bytes()
                    .ends_with(&line[start + 16..start + len]))
        {
            return None;
        }
        self.went_to(guess);
        Some((guess, len))
    }

    /// The child of `node` at object key `key`, whose first 16 bytes are `head` ([`Key::head`]).
    #[inline]
    pub(super) fn child_key(&mut self, node: u32, key: &str, head: u128) -> u32 {
        if let Some(guess) = self.guess(node, head, key.len() as u32)
            // A key longer than 16 bytes ends the guessed node's name.
            && (key.len() <= 16 || self.nodes[guess as usize].name.ends_with(key))
        {
            self.went_to(guess);
            return guess;
        }
        let child = self.child_key_slow(node, key, head);
        self.found(child)
    }

    fn child_key_slow(&mut self, node: u32, key: &str, head: u128) -> u32 {
        let n = &mut self.nodes[node as usize];
        // Resources of one type mostly list their keys in the same order, some of them left out:
        // the key is usually at, or a few places after, the one after the last key found (the
        // first, after the last key of the previous object).
        let probe = Key::new(key, head);
        let len = n.keys.len();
        let mut i = n.next_key;
        for _ in 0..len.min(4) {
            if i == len {
                i = 0;
            }
            if n.keys[i].matches(&probe, key) {
                n.next_key = i + 1;
                return n.keys[i].id;
            }
            i += 1;
        }
        if let Some(&i) = n.positions.get(key) {
            n.next_key = i + 1;
            return n.keys[i].id;
        }
        let name = join(&n.name, key);
        let plain = !key.bytes().any(|c| c == b'"' || c == b'\\' || c < 0x20);
        let len = key.len() as u32 | if plain { 0 } else { ESCAPED };
        self.add_child(node, name, head, len, |n, id| {
            n.positions.insert(key.into(), n.keys.len());
            let tail = key.get(16..).unwrap_or_default().into();
            n.keys.push(Key { id, tail, ..probe });
            n.next_key = n.keys.len();
        })
    }

    #[inline]
    pub(super) fn child_index(&mut self, node: u32, index: usize) -> u32 {
        if let Some(guess) = self.guess(node, index as u128, POSITION) {
            self.went_to(guess);
            return guess;
        }
        let child = match self.nodes[node as usize].items.get(index) {
            Some(&id) => id,
            None => {
                // Lists are walked in order, so `index` is the next position.
                let name = join(&self.nodes[node as usize].name, &index.to_string());
                self.add_child(node, name, index as u128, POSITION, |n, id| {
                    n.items.push(id)
                })
            }
        };
        self.found(child)
    }

    fn add_child(
        &mut self,
        parent: u32,
        name: String,
        head: u128,
        len: u32,
        link: impl FnOnce(&mut Node, u32),
    ) -> u32 {
        let id = self.nodes.len() as u32;
        let column = self.columns.get(&name).copied().unwrap_or(NO_COLUMN);
        self.nodes.push(Node::new(name));
        self.hot.push(Hot {
            head,
            len,
            parent,
            next: NO_NODE,
            column,
        });
        link(&mut self.nodes[parent as usize], id);
        id
    }
}

impl Node {
    fn new(name: String) -> Self {
        Node {
            name,
            keys: Vec::new(),
            next_key: 0,
            positions: HashMap::new(),
            items: Vec::new(),
        }
    }
}

/// An object key as a trie node keeps it: the first 16 bytes inline, so that comparing keys
/// (most FHIR keys have 2 to 16 bytes) touches no other memory.
#[derive(Debug)]
pub(super) struct Key {
    head: u128,
    /// The bytes after the first 16 (empty for most keys).
    tail: Box<str>,
    len: u32,
    id: u32,
}

impl Key {
    #[inline]
    fn new(key: &str, head: u128) -> Self {
        Key {
            head,
            tail: Box::default(),
            len: key.len() as u32,
            id: 0,
        }
    }

    /// The first 16 bytes of a key (zero-padded), as a little-endian number.
    pub(super) fn head(key: &[u8]) -> u128 {
        key.iter()
            .take(16)
            .rev()
            .fold(0, |head, &b| head << 8 | u128::from(b))
    }

    /// [`Key::head`] of `key`, which is a piece of `line` unless it was unescaped.
    #[inline]
    pub(super) fn head_of(key: &str, line: &[u8]) -> u128 {
        let at = (key.as_ptr() as usize).wrapping_sub(line.as_ptr() as usize);
        if at < line.len() {
            Key::head_in(line, at, key.len())
        } else {
            Key::head(key.as_bytes())
        }
    }

    /// [`Key::head`] of the `len` bytes at `start` of `line`: one 16-byte load where the line
    /// has 16 bytes from there (copying the key into a buffer first stalled on the store).
    #[inline]
    fn head_in(line: &[u8], start: usize, len: usize) -> u128 {
        match line.get(start..start + 16) {
            Some(bytes) => {
                let all = u128::from_le_bytes(bytes.try_into().expect("16 bytes"));
                if len >= 16 {
                    all
                } else {
                    all & ((1 << (len * 8)) - 1)
                }
            }
            None => Key::head(&line[start..start + len]),
        }
    }

    /// Whether this is `key`, whose [`Key::new`] is `probe`.
    #[inline]
    fn matches(&self, probe: &Key, key: &str) -> bool {
        self.head == probe.head
            && self.len == probe.len
            && (key.len() <= 16 || *self.tail == key[16..])
    }
}

/// flatten_json's `_construct_key`: `parent_key` unless the parent is the (unnamed) root.
fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_owned()
    } else {
        format!("{parent}_{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_only_themselves() {
        let keys = [
            "",
            "a",
            "abc",
            "abcd",
            "abcdefg",
            "abcdefgh",
            "abcdefghijklmnop",
            "abcdefghijklmnopq",
        ];
        let mut variants: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
        variants.extend([
            "abcdefghijklmnopr".into(),
            "bbcdefghijklmnopq".into(),
            "abcdefgi".into(),
        ]);
        for a in &variants {
            let mut stored = Key::new(a, Key::head(a.as_bytes()));
            stored.tail = a.get(16..).unwrap_or_default().into();
            for b in &variants {
                // Keys inside a longer line, and at its very end.
                for line in [format!("\"{b}\":0123456789abcdef"), format!("\"{b}")] {
                    let head = Key::head_in(line.as_bytes(), 1, b.len());
                    assert_eq!(head, Key::head(b.as_bytes()), "{b}");
                    assert_eq!(stored.matches(&Key::new(b, head), b), a == b, "{a} {b}");
                }
            }
        }
    }
}

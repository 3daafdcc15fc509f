//! The walker against serde_json as the reference, on random and mutated lines: it never
//! panics, it accepts exactly the lines serde_json reads as one JSON object, and its scratch
//! memory stays within a small multiple of the line.
//!
//! Deterministic (seeded) and time-boxed: `FHIRFLIGHT_PROPERTY_CASES` (default 20,000 lines,
//! about a second in a debug build) and `FHIRFLIGHT_PROPERTY_SEED` run it longer or elsewhere.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value};

use super::*;

/// Accepts every leaf.
struct Ignore;
impl Sink for Ignore {
    fn leaf(&mut self, _: &mut Trie, _: u32, _: Leaf<'_>) -> Result<(), LineError> {
        Ok(())
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Bytes a mutation inserts: JSON's own, and some that are not (no `\n`: it ends a line).
const ALPHABET: &[u8] = b"{}[]\":,\\ -+.eE0123456789tfnulrsa/\tbx\x01\x7f\xc3\xa9\xff\xed\xa0\x80";

fn random_string(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..8);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => '"',
            1 => '\\',
            2 => char::from_u32(rng.random_range(0..0x20)).unwrap_or(' '),
            3 => 'é',
            4 => '😀',
            _ => char::from(rng.random_range(b'a'..=b'z')),
        })
        .filter(|&c| c != '\n')
        .collect()
}

fn random_value(rng: &mut StdRng, depth: u32) -> Value {
    let leaf = depth >= 5 || rng.random_bool(0.5);
    match (leaf, rng.random_range(0..6)) {
        (true, 0) => Value::Null,
        (true, 1) => Value::Bool(rng.random()),
        (true, 2) => Value::from(rng.random::<i64>() >> rng.random_range(0..63)),
        (true, 3) => Value::from(rng.random::<f64>() * 10f64.powi(rng.random_range(-30..30))),
        (true, _) => Value::String(random_string(rng)),
        (false, 0..=2) => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        (false, _) => random_object(rng, depth + 1),
    }
}

fn random_object(rng: &mut StdRng, depth: u32) -> Value {
    let mut map = Map::new();
    for _ in 0..rng.random_range(0..5) {
        map.insert(random_string(rng), random_value(rng, depth));
    }
    Value::Object(map)
}

fn mutate(rng: &mut StdRng, line: &mut Vec<u8>) {
    for _ in 0..rng.random_range(1..4) {
        let at = rng.random_range(0..=line.len());
        let byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
        match rng.random_range(0..4) {
            0 if at < line.len() => {
                line.remove(at);
            }
            1 if at < line.len() => line[at] = byte,
            2 => line.truncate(at),
            _ => line.insert(at, byte),
        }
    }
}

#[test]
fn the_walker_agrees_with_serde_json() {
    let cases = env_number("FHIRFLIGHT_PROPERTY_CASES", 20_000);
    let seed = env_number("FHIRFLIGHT_PROPERTY_SEED", 7);
    let mut rng = StdRng::seed_from_u64(seed);
    let mut trie = Trie::with_columns([]);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..cases {
        let value = match rng.random_range(0..10) {
            0 => random_value(&mut rng, 0),
            _ => random_object(&mut rng, 0),
        };
        let mut line = serde_json::to_vec(&value).unwrap();
        if rng.random_bool(0.7) {
            mutate(&mut rng, &mut line);
        }
        let reference = serde_json::from_slice::<Value>(&line);
        if reference
            .as_ref()
            .is_err_and(|e| e.to_string().contains("number out of range"))
        {
            // Valid JSON whose number does not fit an f64: kept as text by the walker.
            continue;
        }
        let expected = matches!(reference, Ok(Value::Object(_)));
        let mut scratch = Vec::new();
        let walked = Walker::new(&line, &mut scratch, None).walk(&mut trie, &mut Ignore);
        let text = String::from_utf8_lossy(&line);
        assert_eq!(
            walked.is_ok(),
            expected,
            "case {case} (seed {seed}): {text}\n walker: {walked:?}\n serde_json: {reference:?}"
        );
        assert!(
            scratch.capacity() <= 4 * line.len() + 64,
            "case {case}: {} bytes of scratch for a line of {}",
            scratch.capacity(),
            line.len()
        );
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    // Both sides of the property were exercised.
    assert!(
        accepted > cases / 5 && rejected > cases / 5,
        "{accepted} accepted, {rejected} rejected"
    );
}

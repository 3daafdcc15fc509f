//! Fuzz tests: random and mutated FHIRPath expressions and ViewDefinitions (from a seeded
//! generator, so that a failure reproduces), fed to the parser, the evaluator and the view runner. Whatever the input, each call returns (a value or an error):
//! no panic, no stack overflow, and bounded work, since parsing is bounded by length and depth
//! and every evaluation by its budget of steps, items and string bytes.

use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use super::{ViewDefinition, ViewRunner};
use crate::Result;
use crate::fhirpath::{EvalContext, FhirPath};

/// Pieces of the language, valid and not, that random expressions are built from.
const TOKENS: &[&str] = &[
    "name",
    "given",
    "family",
    "telecom",
    "value",
    "birthDate",
    "extension",
    "Patient",
    "id",
    "$this",
    "$index",
    "$total",
    "%resource",
    "%ucum",
    "%unknown",
    "%`vs-x`",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ".",
    ",",
    "=",
    "!=",
    "~",
    "!~",
    "<",
    "<=",
    ">",
    ">=",
    "+",
    "-",
    "*",
    "/",
    "&",
    "|",
    "and",
    "or",
    "xor",
    "implies",
    "div",
    "mod",
    "in",
    "contains",
    "is",
    "as",
    "0",
    "1",
    "-1",
    "2.5",
    "9223372036854775807",
    "'a'",
    "'\\u00e9'",
    "''",
    "true",
    "false",
    "@2014",
    "@2014-01-25",
    "@2014-01-25T10:30:00Z",
    "@T10:30",
    "@2014-13",
    "4 'mg'",
    "1 year",
    "where(",
    "select(",
    "repeat(",
    "all(",
    "exists(",
    "iif(",
    "aggregate(",
    "defineVariable(",
    "ofType(",
    "as(",
    "is(",
    "first()",
    "last()",
    "tail()",
    "skip(",
    "take(",
    "count()",
    "distinct()",
    "single()",
    "children()",
    "descendants()",
    "toString()",
    "toInteger()",
    "toDate()",
    "toQuantity(",
    "substring(",
    "replace(",
    "matches(",
    "replaceMatches(",
    "split(",
    "join(",
    "toChars()",
    "upper()",
    "lower()",
    "encode(",
    "decode(",
    "power(",
    "sqrt()",
    "ln()",
    "round(",
    "sort(",
    "lowBoundary(",
    "highBoundary(",
    "precision()",
    "type()",
    "union(",
    "combine(",
    "Quantity",
    "FHIR.string",
    "System.Integer",
    "//",
    "/*",
    "*/",
    "`",
    "'",
    "@",
    "%",
];

/// Valid expressions whose mutations stay close to the language.
const SEEDS: &[&str] = &[
    "name.where(use = 'official').given.first()",
    "telecom.where(system = 'phone').value.join(', ')",
    "birthDate + 1 year < @2020-01-01",
    "(1 | 2 | 3).aggregate($this + $total, 0)",
    "name.select(given.substring(0, 2).upper()).distinct()",
    "extension('http://x').value.ofType(Coding).code",
    "iif(gender = 'male', 'M', 'F') & '-' & id",
    "4 'mg' = 0.004 'g' and 1 day ~ 24 'h'",
    "'abc'.replaceMatches('(b)', '[$1]').matches('^a')",
    "(1).repeat($this + 1)",
    "name.given.toChars().count() > 3 implies active",
    "descendants().ofType(FHIR.string).count()",
    "@2014-01-25T10:30:00.000+10:00.lowBoundary(8).toString()",
    "name.sort(-family, given.first()).first().use",
    "'x'.repeat($this & $this).count()",
];

fn patient() -> Value {
    json!({
        "resourceType": "Patient", "id": "p1", "active": true, "gender": "male",
        "birthDate": "1974-12-25", "_birthDate": {"extension": [{"url": "http://x", "valueString": "t"}]},
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
                 {"use": "usual", "given": ["Jim"]}],
        "telecom": [{"system": "phone", "value": "555"}, {"system": "email", "value": "a@b"}],
        "extension": [{"url": "http://x", "valueCoding": {"code": "c"}}],
        "contact": [{"name": {"family": "du Marché"}}]
    })
}

/// Parses and evaluates `expr` on the patient; either outcome is fine, a panic is not.
fn exercise(expr: &str, resource: &Value) {
    if let Ok(path) = FhirPath::compile(expr) {
        let _ = path.evaluate(resource, &EvalContext::new());
        let _ = path.check_strict(Some(resource));
        let _ = path.result_type();
    }
}

/// A random sequence of [`TOKENS`], some followed by a space.
fn expression(rng: &mut StdRng) -> String {
    let len = rng.random_range(0..40);
    (0..len)
        .map(|_| {
            let token = TOKENS[rng.random_range(0..TOKENS.len())];
            match rng.random_bool(0.5) {
                true => format!("{token} "),
                false => token.to_owned(),
            }
        })
        .collect()
}

/// A seed with characters deleted, inserted or replaced at random places.
fn mutated(rng: &mut StdRng) -> String {
    let mut chars: Vec<char> = SEEDS[rng.random_range(0..SEEDS.len())].chars().collect();
    for _ in 0..rng.random_range(1..6) {
        let at = rng.random_range(0..=chars.len());
        // Any char, ASCII most of the time.
        let c = match rng.random_bool(0.8) {
            true => char::from(rng.random_range(0x20u8..0x7f)),
            false => rng.random(),
        };
        match rng.random_range(0..3) {
            0 if at < chars.len() => {
                chars.remove(at);
            }
            1 => chars.insert(at, c),
            _ if at < chars.len() => chars[at] = c,
            _ => chars.push(c),
        }
    }
    chars.into_iter().collect()
}

fn path(rng: &mut StdRng) -> String {
    match rng.random_range(0..3) {
        0 => expression(rng),
        1 => mutated(rng),
        _ => SEEDS[rng.random_range(0..SEEDS.len())].to_owned(),
    }
}

/// A random select: columns, maybe an iteration, nested selects and `unionAll` branches.
fn select(rng: &mut StdRng, depth: u32) -> Value {
    let columns: Vec<Value> = (0..rng.random_range(0..3))
        .map(|_| {
            let name = ["c1", "c2", "c3", ""][rng.random_range(0..4)];
            json!({"path": path(rng), "name": name, "collection": rng.random_bool(0.3)})
        })
        .collect();
    let mut out = json!({ "column": columns });
    match rng.random_range(0..4) {
        0 => out["forEach"] = json!(path(rng)),
        1 => out["forEachOrNull"] = json!(path(rng)),
        2 => out["repeat"] = json!([path(rng)]),
        _ => {}
    }
    if depth > 0 {
        for key in ["select", "unionAll"] {
            let n = rng.random_range(0..3);
            out[key] = Value::Array((0..n).map(|_| select(rng, depth - 1)).collect());
        }
    }
    out
}

/// A random ViewDefinition over Patient, with a constant and maybe a `where`.
fn view(rng: &mut StdRng) -> Value {
    let selects: Vec<Value> = (0..rng.random_range(1..3))
        .map(|_| select(rng, 2))
        .collect();
    let mut view = json!({
        "resourceType": "ViewDefinition", "resource": "Patient", "status": "active",
        "select": selects, "constant": [{"name": "x", "valueString": "official"}]
    });
    if rng.random_bool(0.5) {
        view["where"] = json!([{ "path": path(rng) }]);
    }
    view
}

/// Cases per property; the seed is fixed so that a failure reproduces, and printed with it.
const CASES: u64 = 600;

#[test]
fn random_expressions_return_a_value_or_an_error() {
    let patient = patient();
    let mut rng = StdRng::seed_from_u64(17);
    for _ in 0..CASES {
        exercise(&expression(&mut rng), &patient);
    }
}

#[test]
fn mutated_expressions_return_a_value_or_an_error() {
    let patient = patient();
    let mut rng = StdRng::seed_from_u64(18);
    for _ in 0..CASES {
        exercise(&mutated(&mut rng), &patient);
    }
}

#[test]
fn random_views_return_rows_or_an_error() {
    let patient = patient();
    let mut rng = StdRng::seed_from_u64(19);
    for _ in 0..CASES / 4 {
        let Ok(view) = ViewDefinition::from_json(&view(&mut rng)) else {
            continue;
        };
        let mut runner = ViewRunner::new(Arc::new(view), 16);
        if runner.push(&patient).is_ok() {
            let _ = runner.flush();
        }
    }
}

/// Runs `view` over `resources` pushed whole and as NDJSON lines, which the runner parses to what
/// the view reaches: the rows must be the same, or both runs fail.
fn same_rows_from_lines(view: ViewDefinition, resources: &[Value]) {
    let view = Arc::new(view);
    let whole = || -> Result<Option<RecordBatch>> {
        let mut runner = ViewRunner::new(Arc::clone(&view), 1024);
        resources.iter().try_for_each(|r| runner.push(r))?;
        runner.flush()
    };
    let lines: String = resources.iter().map(|r| format!("{r}\n")).collect();
    let from_lines = || -> Result<Option<RecordBatch>> {
        let mut runner = ViewRunner::new(Arc::clone(&view), 1024);
        assert_eq!(runner.push_ndjson(lines.as_bytes())?, lines.len());
        runner.flush()
    };
    let definition = view.definition();
    match (whole(), from_lines()) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{definition}"),
        (Err(_), Err(_)) => {}
        (a, b) => panic!("{definition}: whole {a:?}, from lines {b:?}"),
    }
}

#[test]
fn random_views_see_the_same_rows_in_pruned_lines() {
    let patient = patient();
    let mut rng = StdRng::seed_from_u64(20);
    for _ in 0..CASES / 2 {
        if let Ok(view) = ViewDefinition::from_json(&view(&mut rng)) {
            same_rows_from_lines(view, std::slice::from_ref(&patient));
        }
    }
    for expr in SEEDS.iter().chain(&[
        "birthDate.extension.value",
        "_birthDate.extension.url",
        "extension.value.code | extension.valueCoding.code",
        "contact.name.family.first() & %resource.id",
        "telecom.where(system = 'email').value",
        "name.exists()",
        "name.count() + telecom.value.count()",
        "Patient.name[1].given",
        "name.given[0]",
        "getResourceKey() & contact.getReferenceKey()",
        "%context.gender",
        "children().count()",
        "name.select(%resource.telecom.first()).value",
        "name.where($this.use = 'usual').given",
        "iif(name.count() > 1, name[1], name[0]).given",
        "telecom.value.ofType(string)",
        "(name | contact.name).family",
        "name.given.combine(contact.name.family)",
        "contact.name.family.substring(3)",
        "name.defineVariable('n', given).select(%n)",
    ]) {
        let view = ViewDefinition::from_paths("Patient", &[("c", expr)]).unwrap();
        same_rows_from_lines(view, std::slice::from_ref(&patient));
    }
}

/// The views of the SQL on FHIR suite, over its resources: in `FHIRFLIGHT_SHARED` (set by
/// `scripts/test.sh` when `../shared` is present), else in `../shared` when there.
#[test]
fn the_sql_on_fhir_suite_sees_the_same_rows_in_pruned_lines() {
    let shared = match std::env::var("FHIRFLIGHT_SHARED") {
        Ok(dir) => dir,
        Err(_) => concat!(env!("CARGO_MANIFEST_DIR"), "/../shared").to_owned(),
    };
    let suite = std::path::Path::new(&shared).join("sql-on-fhir-tests");
    if std::env::var_os("FHIRFLIGHT_SHARED").is_none() && !suite.is_dir() {
        eprintln!(
            "note: {} not found, as scripts/test.sh notes",
            suite.display()
        );
        return;
    }
    let files = std::fs::read_dir(&suite).unwrap_or_else(|e| panic!("{}: {e}", suite.display()));
    let mut views = 0;
    for file in files {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|x| x != "json") || path.ends_with("tests.schema.json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let suite: Value = serde_json::from_str(&text).unwrap();
        let resources = suite["resources"].as_array().unwrap();
        for case in suite["tests"].as_array().unwrap() {
            if let Ok(view) = ViewDefinition::from_json(&case["view"]) {
                same_rows_from_lines(view, resources);
                views += 1;
            }
        }
    }
    assert!(views > 100, "{views} views in {}", suite.display());
}

#[test]
fn runaway_expressions_stop_at_the_budget() {
    let p = patient();
    for expr in [
        "(1).repeat($this + 1)",
        "'ab'.repeat($this & $this)",
        "(1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10)\
         .select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10).select((1|2|3|4|5|6|7|8|9|10)\
         .select($this))))))",
        "'abcdefghij'.replace('', 'abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij')\
         .replace('', 'abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij')\
         .replace('', 'abcdefghijabcdefghijabcdefghijabcdefghijabcdefghij')",
    ] {
        let err = FhirPath::compile(expr)
            .unwrap()
            .evaluate(&p, &EvalContext::new())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("evaluation stopped") || err.contains("more than the 1048576 allowed"),
            "{expr}: {err}"
        );
    }
}

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use arrow::util::pretty::pretty_format_batches;

use super::*;

fn flat() -> TableMode {
    TableMode::default()
}

fn infer(mode: &TableMode, input: &[u8]) -> SchemaRef {
    let mut inference = SchemaInference::new(mode);
    inference.push(input).unwrap();
    inference.end_stream().unwrap();
    inference.schema()
}

/// Decodes `input` pushed in pieces cut at `cuts`, flushing whenever the decoder asks.
fn decode_cut(
    schema: SchemaRef,
    mode: &TableMode,
    options: DecodeOptions,
    input: &[u8],
    cuts: &[usize],
) -> Result<(Vec<RecordBatch>, Decoder), DecodeError> {
    let mut decoder = Decoder::new(schema, mode, options)?;
    let mut batches = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([input.len()].iter()) {
        let mut piece = &input[start..end];
        while !piece.is_empty() {
            let n = decoder.decode(piece)?;
            piece = &piece[n..];
            batches.extend(decoder.flush()?);
        }
        start = end;
    }
    batches.extend(decoder.finish()?);
    Ok((batches, decoder))
}

fn decode(
    mode: &TableMode,
    options: DecodeOptions,
    input: &[u8],
) -> Result<(Vec<RecordBatch>, Decoder), DecodeError> {
    decode_cut(infer(mode, input), mode, options, input, &[])
}

fn table(batches: &[RecordBatch]) -> String {
    pretty_format_batches(batches).unwrap().to_string()
}

fn fields(schema: &Schema) -> Vec<String> {
    schema
        .fields()
        .iter()
        .map(|f| format!("{}:{}", f.name(), f.data_type()))
        .collect()
}

fn decode_error<E: Into<ReadError>>(result: Result<impl std::fmt::Debug, E>) -> DecodeError {
    match result.map_err(Into::into) {
        Err(ReadError::Decode(e)) => e,
        other => panic!("expected a decode error, got {other:?}"),
    }
}

const PATIENTS: &str = concat!(
    r#"{"resourceType":"Patient","id":"p1","active":true,"name":[{"family":"Émile","given":["Ann","Bo"]}],"_birthDate":{"extension":[{"url":"u","valueInteger":3}]},"birthDate":"2000-01-01"}"#,
    "\n",
    r#"{"resourceType":"Patient","id":"p2","multipleBirthInteger":2,"name":[{"given":["Cé😀"]}],"extension":[],"contact":{},"weight":1}"#,
    "\n",
    r#"{"resourceType":"Patient","id":"p3","multipleBirthInteger":null,"weight":1.25,"deceased":"no","active":false}"#,
    "\n",
    r#"{"resourceType":"Patient","id":"p4","deceased":true,"weight":7}"#,
    "\n",
);

#[test]
fn flattened_columns_types_and_values_follow_the_notebook() {
    let mode = flat();
    let schema = infer(&mode, PATIENTS.as_bytes());
    assert_eq!(
        fields(&schema),
        [
            "resourceType:Utf8",
            "id:Utf8",
            "active:Boolean",
            "name_0_family:Utf8",
            "name_0_given_0:Utf8",
            "name_0_given_1:Utf8",
            "_birthDate_extension_0_url:Utf8",
            "_birthDate_extension_0_valueInteger:Int64",
            "birthDate:Utf8",
            "multipleBirthInteger:Int64",
            // `[]` is a value, `{}` is nothing.
            "extension:Utf8",
            // Integers and a decimal: Float64.
            "weight:Float64",
            // A string and a boolean: Utf8 with the JSON text of the boolean.
            "deceased:Utf8",
        ]
    );
    let (batches, _) = decode(&mode, DecodeOptions::default(), PATIENTS.as_bytes()).unwrap();
    let b = &batches[0];
    assert_eq!(b.num_rows(), 4);
    let col = |name: &str| Arc::clone(b.column_by_name(name).unwrap());
    assert_eq!(col("name_0_given_0").as_string::<i32>().value(1), "Cé😀");
    assert_eq!(col("extension").as_string::<i32>().value(1), "[]");
    assert_eq!(
        col("deceased")
            .as_string::<i32>()
            .iter()
            .collect::<Vec<_>>(),
        [None, None, Some("no"), Some("true")]
    );
    assert_eq!(
        col("weight")
            .as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        [None, Some(1.0), Some(1.25), Some(7.0)]
    );
    assert_eq!(
        col("multipleBirthInteger")
            .as_primitive::<Int64Type>()
            .iter()
            .collect::<Vec<_>>(),
        [None, Some(2), None, None]
    );
    assert_eq!(
        col("active").as_boolean().iter().collect::<Vec<_>>(),
        [Some(true), None, Some(false), None]
    );
    assert_eq!(
        col("_birthDate_extension_0_valueInteger")
            .as_primitive::<Int64Type>()
            .value(0),
        3
    );
}

#[test]
fn any_split_gives_the_same_batches() {
    // Multi-byte characters (é, 😀), CRLF and a BOM, cut at every byte position.
    let input = format!("\u{feff}{}", PATIENTS.replace('\n', "\r\n"));
    let input = input.as_bytes();
    let mode = flat();
    let schema = infer(&mode, PATIENTS.as_bytes());
    let whole = table(
        &decode_cut(
            Arc::clone(&schema),
            &mode,
            DecodeOptions::default(),
            PATIENTS.as_bytes(),
            &[],
        )
        .unwrap()
        .0,
    );
    for cut in 0..=input.len() {
        let (batches, _) = decode_cut(
            Arc::clone(&schema),
            &mode,
            DecodeOptions::default(),
            input,
            &[cut],
        )
        .unwrap();
        assert_eq!(table(&batches), whole, "cut at {cut}");
        let mut inference = SchemaInference::new(&mode);
        inference.push(&input[..cut]).unwrap();
        inference.push(&input[cut..]).unwrap();
        inference.end_stream().unwrap();
        assert_eq!(inference.schema(), schema, "cut at {cut}");
    }
    // One byte at a time.
    let cuts: Vec<usize> = (1..input.len()).collect();
    let (batches, _) = decode_cut(
        Arc::clone(&schema),
        &mode,
        DecodeOptions::default(),
        input,
        &cuts,
    )
    .unwrap();
    assert_eq!(table(&batches), whole);
}

#[test]
fn batches_are_cut_at_batch_size() {
    let mode = flat();
    let options = DecodeOptions::default().with_batch_size(3);
    let schema = infer(&mode, PATIENTS.as_bytes());
    let mut decoder = Decoder::new(schema, &mode, options).unwrap();
    let input = PATIENTS.as_bytes();
    let n = decoder.decode(input).unwrap();
    // Stopped after three lines, before the fourth.
    assert_eq!(n, input.len() - PATIENTS.lines().last().unwrap().len() - 1);
    assert_eq!(decoder.flush().unwrap().unwrap().num_rows(), 3);
    assert_eq!(decoder.decode(&input[n..]).unwrap(), input.len() - n);
    assert_eq!(decoder.finish().unwrap().unwrap().num_rows(), 1);
    assert!(decoder.finish().unwrap().is_none());
}

#[test]
fn blank_lines_are_skipped_and_last_line_needs_no_newline() {
    let input = b"\n  \r\n{\"id\":\"a\"}\n\n{\"id\":\"b\"}";
    let (batches, decoder) = decode(&flat(), DecodeOptions::default(), input).unwrap();
    assert_eq!(
        table(&batches),
        "+----+\n| id |\n+----+\n| a  |\n| b  |\n+----+"
    );
    assert_eq!(decoder.skipped_count(), 0);
}

/// Every bad line: its kind and message in strict mode, and skipped in lenient mode.
#[test]
fn bad_lines_are_named_by_source_and_line() {
    let good = r#"{"resourceType":"Observation","id":"o1","valueInteger":1}"#;
    let cases: [(&[u8], DecodeErrorKind, &str); 11] = [
        // Invalid UTF-8 outside a string can only be bad JSON.
        (
            b"{\"resourceType\":\"Observation\",\xff}",
            DecodeErrorKind::InvalidJson,
            "expected a key",
        ),
        // A byte order mark is skipped at the start of a stream only.
        (
            b"\xEF\xBB\xBF{\"resourceType\":\"Observation\"}",
            DecodeErrorKind::InvalidJson,
            "expected '{'",
        ),
        (
            b"{\"resourceType\":\"Observation\",",
            DecodeErrorKind::InvalidJson,
            "expected a key",
        ),
        (
            b"not json",
            DecodeErrorKind::InvalidJson,
            "expected a value",
        ),
        (b"[1,2]", DecodeErrorKind::NotAnObject, "not a JSON object"),
        (
            b"{\"resourceType\":\"Patient\",\"id\":\"p\"}",
            DecodeErrorKind::WrongResourceType,
            "resourceType string \"Patient\" where Observation was expected",
        ),
        (
            b"{\"id\":\"x\"}",
            DecodeErrorKind::WrongResourceType,
            "no resourceType",
        ),
        (
            b"{\"resourceType\":\"Observation\",\"id\":\"\xff\"}",
            DecodeErrorKind::InvalidUtf8,
            "invalid UTF-8 at byte 37",
        ),
        (
            b"{\"resourceType\":\"Observation\",\"id\":\"a\",\"id\":\"b\"}",
            DecodeErrorKind::DuplicateKey,
            "column id given twice",
        ),
        (
            b"{\"resourceType\":\"Observation\",\"status\":\"final\"}",
            DecodeErrorKind::DoesNotFitSchema,
            "column status is not in the schema",
        ),
        (
            b"{\"resourceType\":\"Observation\",\"valueInteger\":9223372036854775808}",
            DecodeErrorKind::DoesNotFitSchema,
            "9223372036854775808 is too large for Int64",
        ),
    ];
    let mode = flat();
    let schema = infer(&mode, good.as_bytes());
    for (bad, kind, message) in cases {
        let mut input = format!("{good}\n\n").into_bytes();
        input.extend_from_slice(bad);
        input.extend_from_slice(format!("\r\n{good}\n").as_bytes());
        let options = DecodeOptions::default()
            .with_resource_type("Observation")
            .with_source("Observation.ndjson");
        let err = decode_error(decode_cut(
            Arc::clone(&schema),
            &mode,
            options.clone(),
            &input,
            &[],
        ));
        assert_eq!(
            (err.kind, err.line, err.source_name.as_str()),
            (kind, 3, "Observation.ndjson"),
            "{err}"
        );
        assert!(err.message.contains(message), "{err}");
        assert!(
            err.to_string().starts_with("Observation.ndjson line 3: "),
            "{err}"
        );

        let lenient = options.with_strictness(Strictness::Lenient);
        let (batches, decoder) =
            decode_cut(Arc::clone(&schema), &mode, lenient, &input, &[]).unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            2,
            "{err}"
        );
        // The bad line left nothing behind: both rows are the good one.
        let ids = batches[0].column_by_name("id").unwrap().as_string::<i32>();
        assert_eq!(ids.iter().collect::<Vec<_>>(), [Some("o1"), Some("o1")]);
        assert_eq!(decoder.skipped_count(), 1);
        assert_eq!(decoder.skipped(), [err]);
    }
}

/// Bad lines among good ones, lenient, cut at every byte: the same rows and the same skipped lines.
#[test]
fn bad_lines_split_anywhere_are_skipped_alike() {
    let good = r#"{"resourceType":"Observation","id":"é😀","valueInteger":1}"#;
    let bad: [&[u8]; 5] = [
        b"{\"resourceType\":\"Observation\",\"id\":\"\xc3\xa9\xff\"}",
        b"[1]",
        b"{\"resourceType\":\"Patient\"}",
        b"{\"resourceType\":\"Observation\",\"valueInteger\":99999999999999999999}",
        b"{\"resourceType\":\"Observation\",\"id\":\"a\",\"id\":\"b\"}",
    ];
    let mut input = b"\xEF\xBB\xBF".to_vec();
    for (i, line) in bad.iter().enumerate() {
        input.extend_from_slice(good.as_bytes());
        input.extend_from_slice(if i % 2 == 0 { b"\r\n" } else { b"\n" });
        input.extend_from_slice(line);
        input.push(b'\n');
    }
    let mode = flat();
    let schema = infer(&mode, format!("{good}\n").as_bytes());
    let options = DecodeOptions::default()
        .with_resource_type("Observation")
        .with_strictness(Strictness::Lenient);
    let (whole, decoder) =
        decode_cut(Arc::clone(&schema), &mode, options.clone(), &input, &[]).unwrap();
    assert_eq!(whole.iter().map(RecordBatch::num_rows).sum::<usize>(), 5);
    assert_eq!(
        decoder
            .skipped()
            .iter()
            .map(|e| (e.line, e.kind))
            .collect::<Vec<_>>(),
        [
            (2, DecodeErrorKind::InvalidUtf8),
            (4, DecodeErrorKind::NotAnObject),
            (6, DecodeErrorKind::WrongResourceType),
            (8, DecodeErrorKind::DoesNotFitSchema),
            (10, DecodeErrorKind::DuplicateKey),
        ]
    );
    for cut in 0..=input.len() {
        let (batches, split) =
            decode_cut(Arc::clone(&schema), &mode, options.clone(), &input, &[cut]).unwrap();
        assert_eq!(table(&batches), table(&whole), "cut at {cut}");
        assert_eq!(split.skipped(), decoder.skipped(), "cut at {cut}");
    }
}

#[test]
fn integer_beyond_int64_makes_a_float_column() {
    let input = b"{\"n\":1}\n{\"n\":123456789012345678901234}\n{\"n\":-9223372036854775808}\n";
    let mode = flat();
    assert_eq!(fields(&infer(&mode, input)), ["n:Float64"]);
    let (batches, _) = decode(&mode, DecodeOptions::default(), input).unwrap();
    let n = batches[0].column(0).as_primitive::<Float64Type>();
    assert_eq!(
        n.values().to_vec(),
        [1.0, 1.2345678901234568e23, -9.223372036854776e18]
    );
    assert_eq!(
        fields(&infer(&mode, b"{\"n\":-9223372036854775808}")),
        ["n:Int64"]
    );
}

#[test]
fn conflicting_kinds_become_json_text() {
    let input =
        b"{\"a\":1.50}\n{\"a\":\"x\"}\n{\"a\":[]}\n{\"a\":false}\n{\"a\":null}\n{\"b\":null}\n";
    let mode = flat();
    assert_eq!(fields(&infer(&mode, input)), ["a:Utf8", "b:Utf8"]);
    let (batches, _) = decode(&mode, DecodeOptions::default(), input).unwrap();
    let a = batches[0].column(0).as_string::<i32>();
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        [
            Some("1.50"),
            Some("x"),
            Some("[]"),
            Some("false"),
            None,
            None
        ]
    );
    assert_eq!(batches[0].column(1).null_count(), 6);
}

#[test]
fn lenient_inference_leaves_no_trace_of_bad_lines() {
    let input = b"{\"a\":1}\n{\"b\":2,\"a\":\"x\",oops}\n{\"resourceType\":\"Patient\",\"c\":1}\n{\"c\":true}\n";
    let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
    let mut inference =
        SchemaInference::with_options(&flat(), options.with_resource_type("Observation"));
    inference.push(input).unwrap();
    inference.end_stream().unwrap();
    assert_eq!(fields(&inference.schema()), Vec::<String>::new());
    assert_eq!(inference.skipped_count(), 4);

    let mut inference = SchemaInference::with_options(
        &flat(),
        DecodeOptions::default().with_strictness(Strictness::Lenient),
    );
    inference.push(input).unwrap();
    inference.end_stream().unwrap();
    assert_eq!(
        fields(&inference.schema()),
        ["a:Int64", "resourceType:Utf8", "c:Utf8"]
    );
    assert_eq!(lines(inference.skipped()), [2]);

    let mut strict = SchemaInference::new(&flat());
    let err = decode_error(strict.push(input));
    assert_eq!((err.line, err.kind), (2, DecodeErrorKind::InvalidJson));
}

#[test]
fn inference_merges_files_in_first_seen_order() {
    let mut inference = SchemaInference::new(&flat());
    inference.push(b"{\"a\":1,\"b\":\"x\"}\n{\"c\":1}").unwrap();
    inference.end_stream().unwrap();
    inference.push(b"{\"d\":1}\n{\"a\":2.5}").unwrap();
    inference.end_stream().unwrap();
    assert_eq!(
        fields(&inference.schema()),
        ["a:Float64", "b:Utf8", "c:Int64", "d:Int64"]
    );
}

#[test]
fn max_list_items_bounds_the_width() {
    let mode = TableMode::Flattened(FlattenOptions::default().with_max_list_items(Some(2)));
    let input = b"{\"l\":[{\"x\":1},{\"x\":2},{\"x\":3,\"y\":[]},4]}\n{\"l\":[{\"x\":5}]}\n";
    assert_eq!(
        fields(&infer(&mode, input)),
        ["l_0_x:Int64", "l_1_x:Int64", "l_more:Utf8"]
    );
    let (batches, _) = decode(&mode, DecodeOptions::default(), input).unwrap();
    let more = batches[0].column(2).as_string::<i32>();
    assert_eq!(
        more.iter().collect::<Vec<_>>(),
        [Some(r#"[{"x":3,"y":[]},4]"#), None]
    );
}

#[test]
fn schema_types_the_mode_cannot_fill_are_refused() {
    let schema = Arc::new(Schema::new(vec![Field::new("a", DataType::Int32, true)]));
    let err = decode_error(Decoder::new(schema, &flat(), DecodeOptions::default()));
    assert_eq!(err.kind, DecodeErrorKind::UnsupportedSchema);
    assert!(
        err.message.contains("flattened column a cannot be Int32"),
        "{err}"
    );
}

#[test]
fn nested_mode_merges_structs_lists_and_numbers() {
    let input = concat!(
        r#"{"resourceType":"Observation","id":"o1","code":{"coding":[{"code":"a"}]},"valueQuantity":{"value":1,"unit":"mg"}}"#,
        "\n",
        r#"{"resourceType":"Observation","id":"o2","code":{"coding":[{"code":"b","system":"s"}],"text":"t"},"valueQuantity":{"value":2.5},"component":[]}"#,
        "\n",
        r#"{"resourceType":"Observation","id":"o3","valueCodeableConcept":{"text":"x"},"note":{}}"#,
        "\n",
    )
    .as_bytes();
    let mode = TableMode::Nested;
    let schema = infer(&mode, input);
    assert_eq!(
        fields(&schema),
        [
            "resourceType:Utf8",
            "id:Utf8",
            r#"code:Struct("coding": List(Struct("code": Utf8, "system": Utf8)), "text": Utf8)"#,
            r#"valueQuantity:Struct("value": Float64, "unit": Utf8)"#,
            "component:List(Utf8)",
            r#"valueCodeableConcept:Struct("text": Utf8)"#,
            "note:Utf8",
        ]
    );
    let (batches, _) = decode(
        &mode,
        DecodeOptions::default().with_resource_type("Observation"),
        input,
    )
    .unwrap();
    let b = &batches[0];
    let code = b.column_by_name("code").unwrap().as_struct();
    assert!(code.is_null(2));
    let coding = code.column_by_name("coding").unwrap().as_list::<i32>();
    let first = coding.value(1);
    assert_eq!(
        first
            .as_struct()
            .column_by_name("system")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "s"
    );
    let value = b
        .column_by_name("valueQuantity")
        .unwrap()
        .as_struct()
        .column_by_name("value")
        .unwrap();
    assert_eq!(
        value
            .as_primitive::<Float64Type>()
            .iter()
            .collect::<Vec<_>>(),
        [Some(1.0), Some(2.5), None]
    );
    let component = b.column_by_name("component").unwrap().as_list::<i32>();
    assert_eq!((component.is_null(0), component.value_length(1)), (true, 0));
    assert_eq!(
        b.column_by_name("note")
            .unwrap()
            .as_string::<i32>()
            .value(2),
        "{}"
    );

    // A value the nested schema has no place for is a bad line, nothing is appended.
    let bad = b"{\"resourceType\":\"Observation\",\"valueQuantity\":{\"value\":\"high\"}}\n{\"id\":\"x\"}\n";
    let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
    let (batches, decoder) = decode_cut(Arc::clone(&schema), &mode, options, bad, &[]).unwrap();
    assert_eq!(batches[0].num_rows(), 1);
    assert_eq!(decoder.skipped()[0].kind, DecodeErrorKind::DoesNotFitSchema);
    assert!(
        decoder.skipped()[0].message.contains("field valueQuantity"),
        "{:?}",
        decoder.skipped()
    );
}

/// Many lines, in chunks far smaller than the input: same batches, same order, same errors.
#[test]
fn parallel_decode_matches_the_sequential_decoder() {
    let mut input = String::new();
    for i in 0..2000 {
        input.push_str(&format!(
            "{{\"resourceType\":\"Observation\",\"id\":\"o{i}\",\"v\":{}}}\n",
            i % 7
        ));
        if i % 500 == 499 {
            input.push_str(&format!("{{\"id\":{i}, bad\n"));
        }
    }
    let mode = flat();
    let options = DecodeOptions::default()
        .with_strictness(Strictness::Lenient)
        .with_batch_size(300);
    let mut inference = SchemaInference::with_options(&mode, options.clone());
    parallel::infer_chunks(one(&input), &mut inference, 1000).unwrap();
    assert_eq!(
        inference.schema(),
        infer(
            &mode,
            input
                .lines()
                .filter(|l| !l.contains("bad"))
                .collect::<Vec<_>>()
                .join("\n")
                .as_bytes()
        )
    );
    assert_eq!(inference.skipped_count(), 4);
    assert_eq!(lines(inference.skipped()), [501, 1002, 1503, 2004]);

    let (sequential, decoder) = decode_cut(
        Arc::clone(&inference.schema()),
        &mode,
        options.clone(),
        input.as_bytes(),
        &[],
    )
    .unwrap();
    let mut batches = Vec::new();
    let summary = parallel::decode_chunks(
        one(&input),
        inference.schema(),
        &mode,
        options,
        |b| {
            batches.push(b);
            Ok(())
        },
        1000,
    )
    .unwrap();
    assert!(batches.len() > 20 && batches.iter().all(|b| b.num_rows() <= 300));
    assert_eq!(
        arrow::compute::concat_batches(&inference.schema(), &batches).unwrap(),
        arrow::compute::concat_batches(&inference.schema(), &sequential).unwrap()
    );
    assert_eq!((summary.rows, summary.skipped_count), (2000, 4));
    assert_eq!(summary.skipped, decoder.skipped());
    assert_eq!(lines(&summary.skipped), [501, 1002, 1503, 2004]);

    // Strict: the first bad line in file order is the error.
    let err = decode_error(parallel::decode_chunks(
        one(&input),
        inference.schema(),
        &mode,
        DecodeOptions::default(),
        |_| Ok(()),
        1000,
    ));
    assert_eq!(err.line, 501);
}

/// The line numbers of `errors`.
fn lines(errors: &[DecodeError]) -> Vec<u64> {
    errors.iter().map(|e| e.line).collect()
}

/// `text` as the one source of a chunk runner.
fn one(text: &str) -> [Result<(String, &[u8]), ReadError>; 1] {
    [Ok(("<stream>".to_owned(), text.as_bytes()))]
}

/// Many small files run as one pipeline: the same batches as each file decoded alone, a BOM
/// opening any file, errors naming each file and its own line numbers, and each file's
/// resources (blank lines not, bad ones too; an empty file's none).
#[test]
fn many_files_decode_as_one_run_with_their_own_names_and_lines() {
    let files: Vec<(String, String)> = (0..7)
        .map(|f| {
            let mut text = String::from("\u{feff}");
            for i in 0..120 {
                text.push_str(&format!(
                    "{{\"resourceType\":\"Observation\",\"id\":\"f{f}-{i}\",\"v{}\":{i}}}\n",
                    f % 3
                ));
                if i == 40 + f {
                    text.push_str("{oops\n");
                }
                if i == 100 {
                    text.push_str(" \r\n\n");
                }
            }
            (format!("file{f}.ndjson"), text)
        })
        .chain([("empty.ndjson".to_owned(), String::new())])
        .collect();
    let sources = || {
        files
            .iter()
            .map(|(n, t)| Ok::<_, ReadError>((n.clone(), t.as_bytes())))
    };
    let mode = flat();
    let options = DecodeOptions::default()
        .with_strictness(Strictness::Lenient)
        .with_batch_size(50);
    let mut inference = SchemaInference::with_options(&mode, options.clone());
    parallel::infer_chunks(sources(), &mut inference, 1000).unwrap();
    let schema = inference.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["resourceType", "id", "v0", "v1", "v2"]);
    let skipped = |errors: &[DecodeError]| -> Vec<String> {
        errors
            .iter()
            .map(|e| format!("{}:{}", e.source_name, e.line))
            .collect()
    };
    let want: Vec<String> = (0..7)
        .map(|f| format!("file{f}.ndjson:{}", 42 + f))
        .collect();
    assert_eq!(skipped(inference.skipped()), want);

    let mut batches = Vec::new();
    let summary = parallel::decode_chunks(
        sources(),
        Arc::clone(&schema),
        &mode,
        options.clone(),
        |b| {
            batches.push(b);
            Ok(())
        },
        1000,
    )
    .unwrap();
    assert_eq!((summary.rows, summary.skipped_count), (7 * 120, 7));
    assert_eq!(skipped(&summary.skipped), want);
    assert_eq!(
        summary.resources_per_source,
        [121, 121, 121, 121, 121, 121, 121, 0]
    );
    let mut alone = Vec::new();
    for (name, text) in &files {
        let (batches, _) = decode_cut(
            Arc::clone(&schema),
            &mode,
            options.clone().with_source(name),
            text.as_bytes(),
            &[],
        )
        .unwrap();
        alone.extend(batches);
    }
    assert_eq!(
        arrow::compute::concat_batches(&schema, &batches).unwrap(),
        arrow::compute::concat_batches(&schema, &alone).unwrap()
    );
}

#[test]
fn a_duplicate_key_is_one_rule_in_both_modes() {
    let input = b"{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\",\"gender\":\"x\",\"gender\":\"y\"}\n";
    for mode in [flat(), TableMode::Nested] {
        let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
        let mut inference = SchemaInference::with_options(&mode, options.clone());
        inference.push(input).unwrap();
        inference.end_stream().unwrap();
        let (batches, decoder) =
            decode_cut(inference.schema(), &mode, options, input, &[]).unwrap();
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let skipped = decoder.skipped();
        assert_eq!((rows, skipped.len()), (1, 1), "{mode:?}");
        assert_eq!(skipped[0].kind, DecodeErrorKind::DuplicateKey, "{mode:?}");
        assert!(skipped[0].to_string().contains("gender"), "{}", skipped[0]);
    }
}

/// Good lines around a 10 MB line (a valid resource but for its length) and a bad line after it.
fn with_long_line() -> String {
    let good = |i: usize| format!("{{\"resourceType\":\"Basic\",\"id\":\"b{i}\"}}\n");
    let long = format!(
        "{{\"resourceType\":\"Basic\",\"id\":\"long\",\"note\":\"{}\"}}\n",
        "x".repeat(10_000_000)
    );
    format!("{}{long}{}{{oops\n{}", good(1), good(3), good(5))
}

const BOUND: usize = 1024;

#[test]
fn a_line_beyond_the_bound_is_a_bad_line_wherever_it_is_split() {
    let input = with_long_line();
    let long_start = input.find("\n").unwrap() + 1;
    let long_end = long_start + input[long_start..].find('\n').unwrap();
    let mode = flat();
    let options = DecodeOptions::default()
        .with_strictness(Strictness::Lenient)
        .with_max_line_bytes(BOUND);
    let schema = infer(&mode, b"{\"resourceType\":\"Basic\",\"id\":\"b\"}");
    let splits: [&[usize]; 5] = [
        &[],
        &[long_start + 10],
        &[long_start + BOUND, long_start + BOUND + 1, long_end - 1],
        &[long_end, long_end + 1],
        &[
            7,
            long_start + 3_000_000,
            long_start + 6_000_000,
            long_end + 5,
        ],
    ];
    for cuts in splits {
        let mut decoder = Decoder::new(Arc::clone(&schema), &mode, options.clone()).unwrap();
        let mut ids = Vec::new();
        let mut start = 0;
        for &end in cuts.iter().chain([input.len()].iter()) {
            let mut piece = &input.as_bytes()[start..end];
            while !piece.is_empty() {
                let n = decoder.decode(piece).unwrap();
                piece = &piece[n..];
                // Never more than the bound of the long line is kept.
                assert!(decoder.lines.pending.capacity() <= 4 * BOUND, "{cuts:?}");
            }
            start = end;
        }
        let batch = decoder.finish().unwrap().unwrap();
        ids.extend(batch.column(1).as_string::<i32>().iter().flatten());
        assert_eq!(ids, ["b1", "b3", "b5"], "{cuts:?}");
        let skipped: Vec<_> = decoder
            .skipped()
            .iter()
            .map(|e| (e.line, e.kind, e.message.as_str()))
            .collect();
        assert_eq!(
            skipped[0],
            (
                2,
                DecodeErrorKind::LineTooLong,
                "line of more than 1024 bytes"
            ),
            "{cuts:?}"
        );
        assert_eq!(lines(decoder.skipped()), [2, 4], "{cuts:?}");
    }

    // Strict: an error naming the line; a last line without newline too.
    let strict = DecodeOptions::default().with_max_line_bytes(BOUND);
    let err = decode_cut(
        Arc::clone(&schema),
        &mode,
        strict.clone(),
        input.as_bytes(),
        &[],
    )
    .unwrap_err();
    assert_eq!((err.line, err.kind), (2, DecodeErrorKind::LineTooLong));
    assert_eq!(
        err.to_string(),
        "<stream> line 2: line of more than 1024 bytes"
    );
    let last = &input.as_bytes()[..long_end];
    let err = decode_cut(Arc::clone(&schema), &mode, strict.clone(), last, &[10]).unwrap_err();
    assert_eq!((err.line, err.kind), (2, DecodeErrorKind::LineTooLong));

    // A line of exactly the bound is read, in place or not; the nested mode keeps the bound too.
    let exact = format!(
        "{{\"resourceType\":\"Basic\",\"id\":\"{}\"}}",
        "y".repeat(BOUND - 32)
    );
    assert_eq!(exact.len(), BOUND);
    let text = format!("{exact}\n{exact}\n");
    let (batches, _) =
        decode_cut(Arc::clone(&schema), &mode, strict, text.as_bytes(), &[]).unwrap();
    assert_eq!(batches[0].num_rows(), 2);
    let nested = TableMode::Nested;
    let mut inference = SchemaInference::with_options(&nested, options.clone());
    inference.push(input.as_bytes()).unwrap();
    inference.end_stream().unwrap();
    assert_eq!(lines(inference.skipped()), [2, 4]);
    assert_eq!(
        fields(&inference.schema()),
        ["resourceType:Utf8", "id:Utf8"]
    );
}

#[test]
fn a_line_beyond_the_bound_is_never_a_whole_chunk() {
    let input = with_long_line();
    let mode = flat();
    let options = DecodeOptions::default()
        .with_strictness(Strictness::Lenient)
        .with_max_line_bytes(BOUND);
    for chunk in [100, 4096, 1 << 20] {
        let mut inference = SchemaInference::with_options(&mode, options.clone());
        parallel::infer_chunks(one(&input), &mut inference, chunk).unwrap();
        assert_eq!(
            fields(&inference.schema()),
            ["resourceType:Utf8", "id:Utf8"]
        );
        assert_eq!(lines(inference.skipped()), [2, 4], "chunk {chunk}");
        let mut rows = 0;
        let summary = parallel::decode_chunks(
            one(&input),
            inference.schema(),
            &mode,
            options.clone(),
            |b| {
                rows += b.num_rows();
                Ok(())
            },
            chunk,
        )
        .unwrap();
        assert_eq!((rows, summary.skipped_count), (3, 2), "chunk {chunk}");
        assert_eq!(summary.skipped[0].kind, DecodeErrorKind::LineTooLong);
        assert_eq!(lines(&summary.skipped), [2, 4], "chunk {chunk}");
        let err = decode_error(parallel::decode_chunks(
            one(&input),
            inference.schema(),
            &mode,
            options.clone().with_strictness(Strictness::Strict),
            |_| Ok(()),
            chunk,
        ));
        assert_eq!((err.line, err.kind), (2, DecodeErrorKind::LineTooLong));
    }
}

/// Resources whose paths number more than the width bound, in the decoder's flattened names.
const WIDE: &str = concat!(
    r#"{"resourceType":"Basic","id":"a","code":{"text":"t"}}"#,
    "\n",
    r#"{"resourceType":"Basic","id":"b","item":[1,"x\"y",true,null,[],{"z":1.5}],"_overflow":"mine"}"#,
    "\n",
    r#"{"resourceType":"Basic","id":"c","code":{"text":"u"},"item":[2]}"#,
    "\n",
);

#[test]
fn paths_beyond_max_columns_go_to_the_overflow_column() {
    let mode = TableMode::Flattened(FlattenOptions::default().with_max_columns(3));
    let schema = infer(&mode, WIDE.as_bytes());
    assert_eq!(
        fields(&schema),
        [
            "resourceType:Utf8",
            "id:Utf8",
            "code_text:Utf8",
            "_overflow:Utf8"
        ]
    );
    let (batches, decoder) = decode(&mode, DecodeOptions::default(), WIDE.as_bytes()).unwrap();
    assert_eq!(decoder.overflowed_count(), 2);
    let overflow: Vec<Option<&str>> = batches[0].column(3).as_string::<i32>().iter().collect();
    assert_eq!(
        overflow,
        [
            None,
            Some(
                r#"{"item_0":1,"item_1":"x\"y","item_2":true,"item_3":null,"item_4":[],"item_5_z":1.5,"_overflow":"mine"}"#
            ),
            Some(r#"{"item_0":2}"#),
        ]
    );
    // Every value is JSON.
    for text in overflow.into_iter().flatten() {
        serde_json::from_str::<serde_json::Value>(text).unwrap();
    }

    // In parallel, the merged schema is the same, whichever worker met a path first.
    let many: String = (0..200).map(|_| WIDE).collect();
    let mut inference = SchemaInference::new(&mode);
    parallel::infer_chunks(one(&many), &mut inference, 64).unwrap();
    assert_eq!(inference.schema(), schema);
    let (sequential, _) = decode_cut(
        Arc::clone(&schema),
        &mode,
        DecodeOptions::default(),
        many.as_bytes(),
        &[],
    )
    .unwrap();
    let mut batches = Vec::new();
    let summary = parallel::decode_chunks(
        one(&many),
        Arc::clone(&schema),
        &mode,
        DecodeOptions::default(),
        |b| {
            batches.push(b);
            Ok(())
        },
        64,
    )
    .unwrap();
    assert_eq!(summary.overflowed, 400);
    assert_eq!(
        arrow::compute::concat_batches(&schema, &batches).unwrap(),
        arrow::compute::concat_batches(&schema, &sequential).unwrap()
    );

    // The overflow keeps the duplicate-key rule; a bad line leaves nothing in it.
    let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
    let input = concat!(
        r#"{"resourceType":"Basic","id":"d","item_0":1,"item":[2]}"#,
        "\n",
        r#"{"resourceType":"Basic","id":"e","item":[3],"x":bad}"#,
        "\n",
        r#"{"resourceType":"Basic","id":"f"}"#,
        "\n",
    );
    let (batches, decoder) =
        decode_cut(Arc::clone(&schema), &mode, options, input.as_bytes(), &[]).unwrap();
    let kinds: Vec<_> = decoder.skipped().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        [DecodeErrorKind::DuplicateKey, DecodeErrorKind::InvalidJson]
    );
    assert_eq!(table(&batches).matches("item").count(), 0);
    assert_eq!(decoder.overflowed_count(), 0);

    // Without the overflow column, an unknown path is still a misfit.
    let bare = Arc::new(Schema::new(schema.fields()[..3].to_vec()));
    let err = decode_cut(bare, &mode, DecodeOptions::default(), WIDE.as_bytes(), &[]).unwrap_err();
    assert_eq!((err.line, err.kind), (2, DecodeErrorKind::DoesNotFitSchema));
}

#[test]
fn the_default_width_bound_leaves_narrower_tables_alone() {
    let unbounded = TableMode::Flattened(FlattenOptions::default().with_max_columns(usize::MAX));
    assert_eq!(
        infer(&flat(), WIDE.as_bytes()),
        infer(&unbounded, WIDE.as_bytes())
    );
    assert_eq!(
        FlattenOptions::default().max_columns(),
        super::DEFAULT_MAX_COLUMNS
    );
}

//! Hostile data through a catalog over a local folder: a resource with a list of 200,000
//! elements (the width bound and its `_overflow` column) and a line far beyond the line bound;
//! and the real Synthea sample, which the default bounds leave as it was.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, Freshness, LocalFolder};
use fhirflight::ndjson::{
    DecodeOptions, FlattenOptions, OVERFLOW_COLUMN, SchemaInference, TableMode, infer_reader,
};
use fhirflight::warning::{Warning, WarningKind};

/// A catalog named `src` over the NDJSON files of `data`.
async fn session(data: &Path, options: CatalogOptions) -> (SessionContext, FhirCatalog) {
    let folder = Arc::new(LocalFolder::try_new(data).unwrap());
    let options = options.with_freshness(Freshness::Never);
    let fhir = FhirCatalog::try_new(folder, options).await.unwrap();
    let ctx = SessionContext::new();
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    (ctx, fhir)
}

/// The warnings kept with the current snapshot of `resource_type`.
fn warnings(fhir: &FhirCatalog, resource_type: &str) -> Vec<Warning> {
    let snapshot = fhir.store().current(resource_type).unwrap().unwrap();
    snapshot.manifest().warnings.clone()
}

#[tokio::test]
async fn a_resource_with_a_200000_element_list_spills_into_one_column() {
    let (data, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // 400 KB: the list alone would be 200,000 columns.
    let list = vec!["1"; 200_000].join(",");
    let text = format!(
        "{{\"resourceType\":\"Basic\",\"id\":\"narrow\",\"code\":{{\"text\":\"n\"}}}}\n\
         {{\"resourceType\":\"Basic\",\"id\":\"wide\",\"note\":[{list}]}}\n"
    );
    std::fs::write(data.path().join("Basic.ndjson"), text).unwrap();
    let max = 1000;
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_max_columns(max);
    let (ctx, fhir) = session(data.path(), options).await;

    let batches = catalog::sql(&ctx, "SELECT * FROM src.fhir.basic ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let schema = batches[0].schema();
    assert_eq!(schema.fields().len(), max + 1);
    assert_eq!(schema.field(max).name(), OVERFLOW_COLUMN);
    // The columns in first-seen order up to the bound: the narrow resource's, then the list's.
    assert_eq!(schema.field(2).name(), "code_text");
    assert_eq!(schema.field(max - 1).name(), "note_996");
    let overflow = batches[0].column(max).as_string::<i32>();
    assert!(
        overflow.is_null(0),
        "the narrow resource has nothing beyond"
    );
    let beyond: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(overflow.value(1)).unwrap();
    assert_eq!(beyond.len(), 200_000 - 997);
    assert_eq!(beyond.keys().next().unwrap(), "note_997");
    assert_eq!(beyond["note_199999"], 1);

    let wide = warnings(&fhir, "Basic")
        .into_iter()
        .find(|w| w.kind == WarningKind::WideResources)
        .expect("a wide-resources warning");
    // The export reports it too (the CLI prints it, Flight's ListExports lists it).
    assert!(fhir.exports()[0].warnings.contains(&wide));
    assert_eq!(wide.count, 1);
    assert_eq!(
        wide.to_string(),
        "Basic: wide-resources: 1 resource has more paths than the 1000 columns the table may \
         have: those beyond are in column _overflow, as JSON text"
    );

    // The overflow is queried as any text column.
    let sql = "SELECT id FROM src.fhir.basic WHERE _overflow LIKE '%\"note_199999\":1}'";
    let found = catalog::sql(&ctx, sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ids: Vec<String> = found.iter().flat_map(crate::row_strings).collect();
    assert_eq!(ids, ["wide"]);
}

#[tokio::test]
async fn a_line_beyond_the_bound_is_skipped_or_fails_strict_naming_its_line() {
    let data = tempfile::tempdir().unwrap();
    let patient = |id: &str| format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\"}}\n");
    let huge = format!(
        "{{\"resourceType\":\"Patient\",\"id\":\"huge\",\"text\":{{\"div\":\"{}\"}}}}\n",
        "x".repeat(10_000_000)
    );
    let text = format!("{}{huge}{}", patient("a"), patient("b"));
    std::fs::write(data.path().join("Patient.ndjson"), text).unwrap();
    let max = 64 << 10;

    let cache = tempfile::tempdir().unwrap();
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_max_line_bytes(max);
    let (ctx, fhir) = session(data.path(), options.clone()).await;
    let sql = "SELECT id FROM src.fhir.patient ORDER BY id";
    let batches = catalog::sql(&ctx, sql)
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let ids: Vec<String> = batches.iter().flat_map(crate::row_strings).collect();
    assert_eq!(ids, ["a", "b"]);
    let skipped = warnings(&fhir, "Patient")
        .into_iter()
        .find(|w| w.kind == WarningKind::SkippedLines)
        .expect("a skipped-lines warning");
    assert_eq!(skipped.count, 1);
    assert_eq!(
        skipped.message,
        "1 line skipped: raw/Patient.000.ndjson line 2: line of more than 65536 bytes"
    );

    let cache = tempfile::tempdir().unwrap();
    let strict = options.with_cache_dir(cache.path()).with_strict(true);
    let (ctx, _) = session(data.path(), strict).await;
    let err = match catalog::sql(&ctx, sql).await {
        Ok(frame) => frame.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("raw/Patient.000.ndjson line 2: line of more than 65536 bytes"),
        "{err}"
    );
}

/// Real types reach thousands of flattened columns: with the default bound they keep every one,
/// exactly as without a bound, and have no overflow column.
#[test]
fn real_data_keeps_its_columns_under_the_default_bounds() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-100");
    if !data.is_dir() {
        eprintln!("SKIPPED: {} is absent", data.display());
        return;
    }
    let infer = |path: &Path, mode: &TableMode| {
        let file = flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap());
        let mut inference = SchemaInference::with_options(mode, DecodeOptions::default());
        infer_reader(file, &mut inference).unwrap();
        inference.schema()
    };
    let unbounded = TableMode::Flattened(FlattenOptions::default().with_max_columns(usize::MAX));
    let (mut types, mut widest) = (0, 0);
    for entry in std::fs::read_dir(&data).unwrap() {
        let path = entry.unwrap().path();
        if !path.to_string_lossy().ends_with(".ndjson.gz") {
            continue;
        }
        let schema = infer(&path, &TableMode::default());
        assert_eq!(schema, infer(&path, &unbounded), "{}", path.display());
        assert!(schema.index_of(OVERFLOW_COLUMN).is_err());
        widest = widest.max(schema.fields().len());
        types += 1;
    }
    assert_eq!(types, 17);
    // 1,031 here; larger exports of real data reach 6,249.
    assert!(widest > 1000, "the widest type has {widest} columns");
}

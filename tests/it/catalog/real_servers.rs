//! The catalog against the faults of real servers (issue 14): exports at the patient and group
//! levels kept apart from system ones, every exported type a table though the
//! CapabilityStatement omits it, no request when fresh snapshots answer, empty and filtered
//! exports that do not poison a table, pushdown that cannot change an answer, and folders of
//! real exports read as they are.

use super::*;
use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel};
use fhirflight::catalog::{BulkSource, LocalFolder, PushdownMode};
use fhirflight::demo::{DemoConfig, DemoServer, Faults};
use fhirflight::warning::WarningKind;
use std::time::Duration;

/// An open demo server (its client makes no request when built).
async fn open_server() -> DemoServer {
    let config = DemoConfig::default()
        .with_seed(11)
        .with_patients(20)
        .with_require_auth(false);
    DemoServer::start(config).await.unwrap()
}

async fn client(server: &DemoServer) -> BulkClient {
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20));
    BulkClient::try_new(server.base_url(), None, options)
        .await
        .unwrap()
}

/// A session whose catalog `src` reads `source` with `options` (cache, freshness set by caller).
async fn session(source: BulkSource, options: CatalogOptions) -> (SessionContext, FhirCatalog) {
    let fhir = FhirCatalog::try_new(Arc::new(source), options.clone())
        .await
        .unwrap();
    let ctx = SessionContext::new_with_config(
        datafusion::prelude::SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("src", "fhir"),
    );
    ctx.register_catalog("src", Arc::new(fhir.clone()));
    catalog::register_functions(&ctx, options);
    (ctx, fhir)
}

/// The session of [`session`] over the whole of `server`, with [`options`].
async fn server_session(server: &DemoServer, cache: &Path) -> (SessionContext, FhirCatalog) {
    session(BulkSource::new(client(server).await), options(cache)).await
}

fn options(cache: &Path) -> CatalogOptions {
    CatalogOptions::default()
        .with_cache_dir(cache)
        .with_freshness(Freshness::Never)
}

async fn error(ctx: &SessionContext, sql: &str) -> String {
    match catalog::sql(ctx, sql).await {
        Ok(df) => df.collect().await.unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}

/// The `_typeFilter` parameters of every kick-off so far.
fn type_filters(server: &DemoServer) -> Vec<String> {
    let kickoffs = server.stats().kickoffs;
    let params = kickoffs.iter().flat_map(|k| k.params.iter());
    params
        .filter(|(k, _)| k == "_typeFilter")
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test]
async fn group_and_patient_level_exports_are_sources_of_their_own() {
    let cache = tempfile::tempdir().unwrap();
    let server = open_server().await;
    let (system, _) = server_session(&server, cache.path()).await;
    let seniors = rows(
        &system,
        "SELECT quantity FROM \"Group\" WHERE id = 'seniors'",
    )
    .await;
    let all = rows(&system, "SELECT count(*) FROM patient").await;

    let group =
        BulkSource::new(client(&server).await).with_level(ExportLevel::Group("seniors".into()));
    assert_eq!(
        group.location(),
        format!("{} [group:seniors]", server.base_url())
    );
    let (grouped, fhir) = session(group, options(cache.path())).await;
    let members = rows(&grouped, "SELECT count(*) FROM patient").await;
    assert_eq!(members, seniors, "the group's patients, {all:?} in all");
    assert_ne!(members, all);
    let kickoff = server.stats().kickoffs.last().cloned().unwrap();
    assert_eq!(
        kickoff.level,
        fhirflight::demo::KickoffLevel::Group("seniors".into())
    );
    assert!(fhir.store().dir().starts_with(cache.path()));

    // The system snapshots are untouched: no export, the same count.
    let kickoffs = server.stats().kickoffs.len();
    assert_eq!(rows(&system, "SELECT count(*) FROM patient").await, all);
    assert_eq!(server.stats().kickoffs.len(), kickoffs);

    // A patient list is a source of its own too, sent as POST Parameters.
    let first = rows(&grouped, "SELECT id FROM patient ORDER BY id LIMIT 1").await;
    let one = BulkSource::new(client(&server).await)
        .with_level(ExportLevel::Group("seniors".into()))
        .with_patients([format!("Patient/{}", first[0])]);
    let (one, _) = session(one, options(cache.path())).await;
    assert_eq!(rows(&one, "SELECT id FROM patient").await.len(), 1);
    let kickoff = server.stats().kickoffs.last().cloned().unwrap();
    assert_eq!(kickoff.method, "POST");
    assert_eq!(
        rows(&grouped, "SELECT count(*) FROM patient").await,
        members
    );
}

#[tokio::test]
async fn every_exported_type_is_a_table_though_the_capability_statement_omits_it() {
    let cache = tempfile::tempdir().unwrap();
    let server = open_server().await;
    server.set_faults(Faults {
        capability_omits: vec!["Condition".into()],
        ..Faults::default()
    });
    let (ctx, fhir) = server_session(&server, cache.path()).await;
    let tables = |ctx: SessionContext| async move {
        rows(
            &ctx,
            "SELECT table_name FROM information_schema.tables WHERE table_catalog = 'src' \
             AND table_schema = 'fhir'",
        )
        .await
    };
    let listed = tables(ctx.clone()).await;
    assert!(listed.contains(&"Patient".to_owned()), "{listed:?}");
    assert!(!listed.contains(&"Condition".to_owned()), "{listed:?}");

    let conditions = rows(&ctx, "SELECT count(*) FROM condition").await;
    assert_ne!(conditions, ["0"]);
    // Browsing lists what was exported besides what is declared.
    let listed = tables(ctx.clone()).await;
    assert!(listed.contains(&"Condition".to_owned()), "{listed:?}");
    assert!(
        fhir.resource_types()
            .await
            .contains(&"Condition".to_owned())
    );

    // Not a resource type: no table, and no export.
    let kickoffs = server.stats().kickoffs.len();
    let err = error(&ctx, "SELECT * FROM condtion").await;
    assert!(err.contains("not found"), "{err}");
    assert_eq!(server.stats().kickoffs.len(), kickoffs);

    // A type the server cannot export: its OperationOutcome is the error.
    server.set_faults(Faults {
        refused_types: vec!["Basic".into()],
        ..Faults::default()
    });
    let err = error(&ctx, "SELECT * FROM basic").await;
    assert!(
        err.contains("HTTP 400")
            && err.contains("(not-supported): this server cannot export Basic"),
        "{err}"
    );

    // Pinned types are the only tables.
    let pinned = options(cache.path()).with_resource_types(vec!["Patient".into()]);
    let (ctx, _) = session(BulkSource::new(client(&server).await), pinned).await;
    assert_eq!(tables(ctx.clone()).await, ["Patient"]);
    let err = error(&ctx, "SELECT count(*) FROM condition").await;
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn fresh_snapshots_answer_without_the_server() {
    let cache = tempfile::tempdir().unwrap();
    let server = open_server().await;
    let base = server.base_url();
    let (ctx, _) = server_session(&server, cache.path()).await;
    let patients = rows(
        &ctx,
        "SELECT id, gender FROM patient WHERE gender = 'female'",
    )
    .await;
    assert!(!patients.is_empty());
    server.shutdown().await;

    // The server is gone: making the catalog, a query and browsing need none of it.
    let client = BulkClient::try_new(base, None, ClientOptions::default())
        .await
        .unwrap();
    let (ctx, _) = session(BulkSource::new(client), options(cache.path())).await;
    let again = rows(
        &ctx,
        "SELECT id, gender FROM patient WHERE gender = 'female'",
    )
    .await;
    assert_eq!(again, patients);
    let tables = rows(&ctx, "SHOW TABLES").await;
    assert!(tables.iter().any(|t| t.contains("Patient")), "{tables:?}");
}

#[tokio::test]
async fn an_empty_or_filtered_export_never_poisons_a_table() {
    let cache = tempfile::tempdir().unwrap();
    let server = open_server().await;
    let (ctx, _) = server_session(&server, cache.path()).await;

    // Pushed down (`_id` is declared), the export is empty: no rows, not an error.
    let none = rows(
        &ctx,
        "SELECT id, gender, \"birthDate\" FROM patient WHERE id = 'nope'",
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    assert_eq!(type_filters(&server), ["Patient?_id=nope"]);
    let err = error(&ctx, "SELECT id, gendr FROM patient WHERE id = 'nope'").await;
    assert!(err.contains("gendr"), "{err}");
    let err = error(&ctx, "SELECT id, status FROM patient WHERE id = 'nope'").await;
    assert!(err.contains("status"), "{err}");

    // The full snapshot afterwards, and a filtered one again, have every column.
    let all = rows(&ctx, "SELECT count(*) FROM patient").await;
    assert_ne!(all, ["0"]);
    let one = rows(&ctx, "SELECT id FROM patient ORDER BY id LIMIT 1").await;
    let found = rows(
        &ctx,
        &format!(
            "SELECT id, gender IS NOT NULL FROM patient WHERE id = '{}'",
            one[0]
        ),
    )
    .await;
    assert_eq!(found, [format!("{}|true", one[0])]);
}

#[tokio::test]
async fn an_empty_type_has_its_r4_columns_and_keeps_later_ones() {
    let cache = tempfile::tempdir().unwrap();
    let source = seeded();
    let (ctx, _) = context(Arc::clone(&source) as _, cache.path(), Freshness::Always).await;
    // No Observation at all: its R4 elements read as null, a misspelt one is an error.
    let none = rows(
        &ctx,
        "SELECT id, status, \"valueQuantity_value\" FROM src.fhir.observation WHERE status = 'final'",
    )
    .await;
    assert!(none.is_empty(), "{none:?}");
    let err = error(&ctx, "SELECT stauts FROM src.fhir.observation").await;
    assert!(err.contains("stauts"), "{err}");

    // Once an export had a column, the type keeps it, even over an export without it.
    source.upsert(
        json!({"resourceType": "Observation", "id": "o1", "status": "final",
        "valueQuantity": {"value": 7}}),
    );
    let seen = rows(
        &ctx,
        "SELECT id, \"valueQuantity_value\" FROM src.fhir.observation",
    )
    .await;
    assert_eq!(seen, ["o1|7"]);
    source.upsert(json!({"resourceType": "Observation", "id": "o1", "status": "final"}));
    let options = CatalogOptions::default()
        .with_cache_dir(cache.path())
        .with_freshness(Freshness::Always)
        .with_incremental(false);
    let fhir = FhirCatalog::try_new(source as _, options).await.unwrap();
    let ctx = SessionContext::new();
    ctx.register_catalog("src", Arc::new(fhir));
    let kept = rows(
        &ctx,
        "SELECT id, \"valueQuantity_value\" FROM src.fhir.observation",
    )
    .await;
    assert_eq!(kept, ["o1|"]);
}

/// The answer of `sql` over a full export of a fresh cache (pushdown off).
async fn full_answer(server: &DemoServer, sql: &str) -> Vec<String> {
    let cache = tempfile::tempdir().unwrap();
    let off = options(cache.path()).with_pushdown(PushdownMode::Off);
    let (ctx, _) = session(BulkSource::new(client(server).await), off).await;
    rows(&ctx, sql).await
}

#[tokio::test]
async fn an_over_filtering_server_gets_no_filter_it_does_not_declare() {
    let server = open_server().await;
    let sql = "SELECT id FROM patient WHERE gender = 'female'";
    let full = full_answer(&server, sql).await;
    assert!(!full.is_empty());
    server.set_faults(Faults {
        filters_overfilter: true,
        ..Faults::default()
    });

    let cache = tempfile::tempdir().unwrap();
    let (ctx, _) = server_session(&server, cache.path()).await;
    assert_eq!(rows(&ctx, sql).await, full);
    assert!(type_filters(&server).is_empty());

    // Pushed anyway (`on`), the server's wrong answer would be the query's.
    let cache = tempfile::tempdir().unwrap();
    let on = options(cache.path()).with_pushdown(PushdownMode::On);
    let (ctx, _) = session(BulkSource::new(client(&server).await), on).await;
    assert!(rows(&ctx, sql).await.is_empty());
    assert_eq!(type_filters(&server), ["Patient?gender=female"]);
}

#[tokio::test]
async fn a_server_that_ignores_filters_gives_the_same_answer() {
    let server = open_server().await;
    let sql = "SELECT id FROM patient WHERE gender = 'male'";
    let full = full_answer(&server, sql).await;
    server.set_faults(Faults {
        filters_ignored: true,
        ..Faults::default()
    });
    let cache = tempfile::tempdir().unwrap();
    let (ctx, _) = server_session(&server, cache.path()).await;
    assert_eq!(rows(&ctx, sql).await, full);
    assert_eq!(type_filters(&server), ["Patient?gender=male"]);
}

/// Writes `lines` to `dir/name`, gzip-compressed when the name ends in `.gz`.
fn write_file(dir: &Path, name: &str, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let path = dir.join(name);
    if name.ends_with(".gz") {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(text.as_bytes()).unwrap();
        std::fs::write(path, gz.finish().unwrap()).unwrap();
    } else {
        std::fs::write(path, text).unwrap();
    }
}

/// The skipped-file warnings of the catalog's exports, sorted.
fn skipped(fhir: &FhirCatalog) -> Vec<String> {
    let mut warnings: Vec<String> = fhir
        .exports()
        .iter()
        .flat_map(|e| e.warnings.iter())
        .filter(|w| w.kind == WarningKind::SkippedFile)
        .map(|w| w.message.clone())
        .collect();
    warnings.sort();
    warnings.dedup();
    warnings
}

#[tokio::test]
async fn a_folder_of_a_real_export_is_read_as_it_is() {
    let (data, cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    write_file(data.path(), "1.Patient.ndjson", &[patient("a", "female")]);
    write_file(
        data.path(),
        "job7-0.patient.ndjson.gz",
        &[patient("b", "male")],
    );
    write_file(
        data.path(),
        "2.Condition.ndjson",
        &[condition("c", "a", "1")],
    );
    std::fs::write(data.path().join("empty.ndjson"), "\n").unwrap();
    std::fs::write(data.path().join("notes.txt"), "hello").unwrap();
    let source = Arc::new(LocalFolder::try_new(data.path()).unwrap());
    let (ctx, fhir) = context(source, cache.path(), Freshness::Never).await;
    assert_eq!(
        rows(&ctx, "SELECT id, gender FROM src.fhir.patient").await,
        ["a|female", "b|male"]
    );
    assert_eq!(
        skipped(&fhir),
        [
            "\"empty.ndjson\": no resource (empty)",
            "\"notes.txt\": not NDJSON (.ndjson or .ndjson.gz)"
        ]
    );

    // With a manifest, its output entries, by file name within the folder only.
    let manifest = json!({
        "transactionTime": "2024-01-01T00:00:00Z",
        "output": [
            {"type": "Patient", "url": "https://ehr.example/files/1.Patient.ndjson?sig=x"},
            {"type": "Patient", "url": "../../outside/1.Patient.ndjson"},
            {"type": "Patient", "url": "https://ehr.example/files/"},
            {"type": "Observation", "url": "3.Observation.ndjson"},
            {"type": "../x", "url": "2.Condition.ndjson"},
        ],
        "error": [{"type": "OperationOutcome", "url": "https://ehr.example/files/empty.ndjson"}],
    });
    std::fs::write(data.path().join("manifest.json"), manifest.to_string()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let source = Arc::new(LocalFolder::try_new(data.path()).unwrap());
    let (ctx, fhir) = context(source, cache.path(), Freshness::Never).await;
    assert_eq!(rows(&ctx, "SELECT id FROM src.fhir.patient").await, ["a"]);
    let warnings = skipped(&fhir);
    for expected in [
        "\"1.Patient.ndjson\": listed more than once in manifest.json: read once",
        "\"3.Observation.ndjson\": listed in manifest.json but not in the folder",
        "\"2.Condition.ndjson\": manifest.json: configuration: \"../x\" is not a resource type name (a capital letter, then at most 63 letters)",
        "\"https://ehr.example/files/\": manifest.json names no plain file name of the folder",
        "\"empty.ndjson\": an error file of manifest.json, not resources",
        "\"job7-0.patient.ndjson.gz\": not listed in manifest.json",
        "\"notes.txt\": not listed in manifest.json",
    ] {
        assert!(
            warnings.contains(&expected.to_owned()),
            "{expected}: {warnings:#?}"
        );
    }
}

#[tokio::test]
async fn what_an_export_finished_despite_reaches_every_reporter() {
    let cache = tempfile::tempdir().unwrap();
    let server = open_server().await;
    server.set_faults(Faults {
        failed_type: Some("Patient".into()),
        malformed_line: true,
        ..Faults::default()
    });
    let (ctx, fhir) = server_session(&server, cache.path()).await;
    // Condition succeeds though Patient failed on the server.
    let joined = rows(&ctx, "SELECT count(*) FROM patient, condition").await;
    assert_eq!(joined, ["0"], "no Patient was exported");
    assert_ne!(rows(&ctx, "SELECT count(*) FROM condition").await, ["0"]);
    let export = &fhir.exports()[0];
    let kinds: Vec<(WarningKind, Option<&str>)> = export
        .warnings
        .iter()
        .map(|w| (w.kind, w.resource_type.as_deref()))
        .collect();
    assert!(
        kinds.contains(&(WarningKind::ServerError, Some("Patient"))),
        "{:?}",
        export.warnings
    );
    let skipped = export
        .warnings
        .iter()
        .find(|w| w.kind == WarningKind::SkippedLines)
        .unwrap_or_else(|| panic!("the broken line is a warning: {:?}", export.warnings));
    assert_eq!(skipped.count, 1);
    assert!(
        skipped
            .message
            .starts_with("1 line skipped: raw/Condition.000.ndjson line 1: invalid JSON"),
        "{skipped}"
    );
    // The snapshot keeps its type's warnings, and fhir_refresh returns them.
    let condition = fhir.store().current("Condition").unwrap().unwrap();
    let kept = &condition.manifest().warnings;
    assert!(
        kept.iter().all(|w| w.concerns("Condition"))
            && kept.iter().any(|w| w.kind == WarningKind::SkippedLines),
        "{kept:?}"
    );
    let refreshed = rows(
        &ctx,
        "SELECT resource_type, array_length(warnings) FROM fhir_refresh('src', 'Patient')",
    )
    .await;
    assert_eq!(refreshed.len(), 1);
    assert_eq!(
        refreshed,
        ["Patient|1"],
        "the server's error for Patient is listed"
    );
}

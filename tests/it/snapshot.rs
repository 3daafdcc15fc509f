//! The snapshot store: atomic commits, crash leftovers, concurrent writers.

use std::path::PathBuf;

use fhirflight::ndjson::{DecodeOptions, Strictness, TableMode};
use fhirflight::snapshot::{SnapshotManifest, SnapshotStore};

fn ndjson(dir: &std::path::Path, name: &str, ids: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let text: String = ids
        .iter()
        .map(|id| format!("{{\"resourceType\":\"Patient\",\"id\":\"{id}\",\"active\":true}}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    path
}

/// Writes and commits a snapshot of Patient holding `ids`.
fn commit(
    store: &SnapshotStore,
    input: PathBuf,
    transaction_time: &str,
) -> fhirflight::snapshot::Snapshot {
    let writer = store.begin("Patient").unwrap();
    let raw = writer.copy_raw(0, &input).unwrap();
    let manifest = SnapshotManifest {
        source: "test".into(),
        transaction_time: transaction_time.into(),
        raw: vec![raw],
        ..SnapshotManifest::default()
    };
    writer
        .commit(
            manifest,
            &[TableMode::default()],
            &DecodeOptions::default()
                .with_batch_size(1024)
                .with_strictness(Strictness::Lenient),
            &|_| {},
        )
        .unwrap()
}

#[test]
fn commit_makes_a_snapshot_visible_only_when_complete() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(cache.path(), "http://example.org/fhir").unwrap();
    assert!(store.current("Patient").unwrap().is_none());

    // A writer that never commits (a crash) leaves nothing visible.
    let abandoned = store.begin("Patient").unwrap();
    std::fs::write(abandoned.dir().join("raw/partial.ndjson.gz"), b"garbage").unwrap();
    assert!(store.current("Patient").unwrap().is_none());

    let first = commit(&store, ndjson(data.path(), "a.ndjson", &["1", "2"]), "t1");
    let current = store.current("Patient").unwrap().unwrap();
    assert_eq!(current.manifest().snapshot, first.manifest().snapshot);
    assert_eq!(current.manifest().resources(), 2);
    assert_eq!(current.table("flattened").unwrap().rows, 2);
    assert!(
        current
            .schema("flattened")
            .unwrap()
            .field_with_name("id")
            .is_ok()
    );
    assert_eq!(store.resource_types().unwrap(), ["Patient"]);

    // The manifest on disk is what other engines read.
    let text = std::fs::read_to_string(
        cache
            .path()
            .join(store.dir().file_name().unwrap())
            .join("Patient/manifest.json"),
    )
    .unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["transactionTime"], "t1");
    // Paths in the Delta table `Patient/flattened/`, as its log names them.
    let id = current.manifest().snapshot.clone();
    let flattened = &json["tables"]["flattened"];
    assert_eq!(
        flattened["files"][0]["path"],
        format!("{id}/part-0.parquet")
    );
    assert_eq!(flattened["delta_version"], 0);
    assert_eq!(json["format"], 2);

    // A newer commit replaces it; a folder goes once nobody holds its snapshot.
    let second = commit(&store, ndjson(data.path(), "b.ndjson", &["3"]), "t2");
    assert!(first.dir().exists(), "still read");
    let first_dir = first.dir().to_owned();
    drop((first, current));
    let third = commit(
        &store,
        ndjson(data.path(), "c.ndjson", &["4", "5", "6"]),
        "t3",
    );
    assert_eq!(
        store
            .current("Patient")
            .unwrap()
            .unwrap()
            .manifest()
            .transaction_time,
        "t3"
    );
    assert!(!first_dir.exists());
    assert!(second.dir().exists() && third.dir().exists());
    let second_dir = second.dir().to_owned();
    drop(second);
    let second_table = second_dir
        .parent()
        .unwrap()
        .join("flattened")
        .join(second_dir.file_name().unwrap());
    assert!(second_table.is_dir());
    let removed = store.clean(std::time::Duration::from_secs(3600)).unwrap();
    assert_eq!(removed.len(), 2, "its table and its folder: {removed:?}");
    assert!(!second_dir.exists() && !second_table.exists() && third.dir().exists());
}

#[test]
fn concurrent_commits_leave_one_complete_snapshot() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let inputs: Vec<PathBuf> = (0..4)
        .map(|i| ndjson(data.path(), &format!("{i}.ndjson"), &["x"; 3][..=i % 3]))
        .collect();
    std::thread::scope(|s| {
        for (i, input) in inputs.iter().enumerate() {
            let cache = cache.path();
            s.spawn(move || {
                // Each thread opens the store itself, as another process would.
                let store = SnapshotStore::open(cache, "folder").unwrap();
                commit(&store, input.clone(), &format!("t{i}"));
            });
        }
    });
    let store = SnapshotStore::open(cache.path(), "folder").unwrap();
    let current = store.current("Patient").unwrap().unwrap();
    let expected = current.manifest().resources();
    assert_eq!(current.table("flattened").unwrap().rows, expected);
    assert!(current.raw_paths().iter().all(|p| p.exists()));
}

#[test]
fn a_failed_conversion_leaves_the_committed_snapshot_which_owns_its_raw_copy() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(cache.path(), "folder").unwrap();
    let input = ndjson(data.path(), "a.ndjson", &["1", "2"]);
    let first = commit(&store, input.clone(), "t1");
    let raw = &first.raw_paths()[0];
    assert_eq!(std::fs::read(raw).unwrap(), std::fs::read(&input).unwrap());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(raw).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "patient data: the owner's only");
    }
    // The user's file changes: the snapshot's copy does not.
    std::fs::write(&input, "{\"resourceType\":\"Patient\",\"id\":\"9\"}\n").unwrap();
    assert_eq!(first.manifest().resources(), 2);
    assert!(
        std::fs::read_to_string(raw)
            .unwrap()
            .contains("\"id\":\"2\"")
    );

    // A conversion that fails (a bad line, strictly decoded) commits nothing and leaves no
    // folder behind: the old snapshot stays current.
    let bad = data.path().join("bad.ndjson");
    std::fs::write(
        &bad,
        "{\"resourceType\":\"Patient\",\"id\":\"3\"}\n{not json\n",
    )
    .unwrap();
    let writer = store.begin("Patient").unwrap();
    let tmp = writer.dir().to_owned();
    let raw = writer.copy_raw(0, &bad).unwrap();
    let failed = writer.commit(
        SnapshotManifest {
            raw: vec![raw],
            ..SnapshotManifest::default()
        },
        &[TableMode::default()],
        &DecodeOptions::default().with_strictness(Strictness::Strict),
        &|_| {},
    );
    assert!(failed.unwrap_err().to_string().contains("line 2"));
    assert!(!tmp.exists());
    let current = store.current("Patient").unwrap().unwrap();
    assert_eq!(current.manifest().snapshot, first.manifest().snapshot);
    assert_eq!(current.table("flattened").unwrap().rows, 2);
}

/// The `SELECT *` of `snapshot`'s flattened table, ordered by id, as text.
async fn table_text(snapshot: fhirflight::snapshot::Snapshot) -> String {
    let table = fhirflight::catalog::FhirTable::try_new(snapshot, &TableMode::default()).unwrap();
    let ctx = datafusion::prelude::SessionContext::new();
    ctx.register_table("t", std::sync::Arc::new(table)).unwrap();
    let batches = ctx
        .sql("SELECT * FROM t ORDER BY id")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn parts_converted_as_files_come_make_the_table_one_conversion_makes() {
    use arrow::datatypes::DataType;
    use datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // The third file widens a column (integer, then decimal), the second has only a null in it
    // (text, for want of a value) and adds a column, the fourth adds one more.
    let files = [
        (
            "a.ndjson",
            r#"{"resourceType":"Observation","id":"a","valueQuantity":{"value":1}}"#,
        ),
        (
            "b.ndjson",
            r#"{"resourceType":"Observation","id":"b","status":"final","valueQuantity":{"value":null}}"#,
        ),
        (
            "c.ndjson",
            r#"{"resourceType":"Observation","id":"c","valueQuantity":{"value":1.5}}"#,
        ),
        (
            "d.ndjson",
            r#"{"resourceType":"Observation","id":"d","issued":"2020-01-01"}"#,
        ),
    ]
    .map(|(name, line)| {
        let path = data.path().join(name);
        std::fs::write(&path, format!("{line}\n")).unwrap();
        path
    });
    let options = DecodeOptions::default();
    let mode = [TableMode::default()];
    let snapshot = |name: &str, parts: &[&[PathBuf]]| {
        let store = SnapshotStore::open(&cache.path().join(name), "test").unwrap();
        let mut writer = store.begin("Observation").unwrap();
        let mut manifest = SnapshotManifest::default();
        for part in parts {
            let from = manifest.raw.len();
            for file in *part {
                manifest
                    .raw
                    .push(writer.copy_raw(manifest.raw.len(), file).unwrap());
            }
            let raw = manifest.raw[from..].to_vec();
            writer.convert_part(&raw, &mode, &options, &|_| {}).unwrap();
        }
        writer.commit(manifest, &mode, &options, &|_| {}).unwrap()
    };
    let whole = snapshot("whole", &[&files]);
    let parted = snapshot(
        "parted",
        &[&files[..1], &files[1..2], &files[2..3], &files[3..]],
    );
    let paths = |s: &fhirflight::snapshot::Snapshot| -> Vec<(String, u64)> {
        let table = s.table("flattened").unwrap();
        table
            .files
            .iter()
            .map(|f| (f.path.clone(), f.rows))
            .collect()
    };
    let id = whole.manifest().snapshot.clone();
    assert_eq!(paths(&whole), [(format!("{id}/part-0.parquet"), 4)]);
    // A first file with no rows and every column (the third part lacks the fourth's), then the
    // parts.
    let id = parted.manifest().snapshot.clone();
    let expected = [(0, 0), (1, 1), (2, 1), (3, 1), (4, 1)]
        .map(|(n, rows)| (format!("{id}/part-{n}.parquet"), rows));
    assert_eq!(paths(&parted), expected);
    assert_eq!(
        whole.schema("flattened").unwrap(),
        parted.schema("flattened").unwrap()
    );
    // Those parts were decoded again as decimals: a Delta table's files have its types (an
    // engine such as Spark casts no integer file to a decimal column).
    for part in 1..=3 {
        let path = parted
            .table_dir("flattened")
            .join(format!("part-{part}.parquet"));
        let footer = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap());
        let footer = footer.unwrap();
        let value = footer.schema().field_with_name("valueQuantity_value");
        assert_eq!(
            value.unwrap().data_type(),
            &DataType::Float64,
            "part {part}"
        );
    }
    let text = table_text(parted).await;
    assert_eq!(text, table_text(whole).await);
    assert!(text.contains("| 1.0 "), "{text}");
}

/// Patients `from..to`, one a line, each about 200 bytes.
fn patients(from: usize, to: usize) -> String {
    (from..to)
        .map(|i| {
            format!(
                "{{\"resourceType\":\"Patient\",\"id\":\"patient-{i:08}\",\"birthDate\":\"19{:02}-01-01\",\"name\":[{{\"use\":\"official\",\"family\":\"Family{i}\",\"given\":[\"Given{i}\",\"Middle{}\"]}}],\"gender\":\"unknown\",\"active\":{}}}\n",
                i % 100,
                i % 7,
                i % 2 == 0
            )
        })
        .collect()
}

#[tokio::test]
async fn files_converted_as_they_are_copied_make_the_snapshot_a_copy_then_a_conversion_makes() {
    use std::io::Write;
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    // Over several of the copy's 8 MiB steps, a gzip file, a small one and an empty one: the
    // conversion reads each copy as it grows. Past the guess's 16 MiB a line brings a path the
    // guess lacks (the file is decoded in two parts), and blank, bad and unended lines come
    // along: the conversion counts each file's resources as the copy's reader would.
    let large = patients(0, 100_000)
        + "\r\n  \n{\"resourceType\":\"Patient\",\"id\":\"new-path\",\"deceasedBoolean\":true}\n"
        + "{not json\n"
        + &patients(200_000, 200_100);
    assert!(large.len() > 2 * (8 << 20));
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gzip.write_all(patients(100_000, 110_000).as_bytes())
        .unwrap();
    let small = "\n".to_owned()
        + &patients(110_000, 110_010)
        + "\t\r\n{\"resourceType\":\"Patient\",\"id\":\"unended\"}";
    let files: Vec<PathBuf> = [
        ("large.ndjson", large.into_bytes()),
        ("b.ndjson.gz", gzip.finish().unwrap()),
        ("c.ndjson", small.into_bytes()),
        ("d.ndjson", Vec::new()),
    ]
    .into_iter()
    .map(|(name, bytes)| {
        let path = data.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    })
    .collect();
    let options = DecodeOptions::default().with_strictness(Strictness::Lenient);
    let mode = [TableMode::default()];
    let store = |name: &str| SnapshotStore::open(&cache.path().join(name), "test").unwrap();

    let copied = store("copied");
    let writer = copied.begin("Patient").unwrap();
    let raw = files
        .iter()
        .enumerate()
        .map(|(n, file)| writer.copy_raw(n, file).unwrap())
        .collect();
    let manifest = SnapshotManifest {
        raw,
        ..SnapshotManifest::default()
    };
    let copied = writer.commit(manifest, &mode, &options, &|_| {}).unwrap();

    let converting = store("converting");
    let mut writer = converting.begin("Patient").unwrap();
    let raw = writer
        .copy_converting(0, &files, &mode, &options, &|_| {})
        .unwrap();
    let manifest = SnapshotManifest {
        raw,
        ..SnapshotManifest::default()
    };
    let converting = writer.commit(manifest, &mode, &options, &|_| {}).unwrap();

    let raw = |s: &fhirflight::snapshot::Snapshot| -> Vec<(String, u64, u64)> {
        let raw = s.manifest().raw.iter();
        raw.map(|r| (r.path.clone(), r.resources, r.bytes))
            .collect()
    };
    assert_eq!(raw(&copied), raw(&converting));
    // The bad line is a resource the table skipped.
    assert_eq!(converting.manifest().resources(), 110_113);
    for (raw, file) in converting.raw_paths().iter().zip(&files) {
        assert_eq!(std::fs::read(raw).unwrap(), std::fs::read(file).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(raw).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "patient data: the owner's only");
        }
    }
    assert_eq!(
        copied.schema("flattened").unwrap(),
        converting.schema("flattened").unwrap()
    );
    let table = converting.table("flattened").unwrap();
    assert_eq!((table.rows, table.skipped_lines), (110_112, 1));
    assert!(
        table.files.len() > 1,
        "the path the guess lacked starts a part"
    );
    assert_eq!(table_text(copied).await, table_text(converting).await);
}

#[test]
fn a_bad_line_converted_as_it_is_copied_fails_naming_its_line_and_leaves_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let store = SnapshotStore::open(cache.path(), "test").unwrap();
    // Past the copy's first step.
    let input = data.path().join("bad.ndjson");
    std::fs::write(
        &input,
        patients(0, 60_000) + "{not json\n" + &patients(60_000, 70_000),
    )
    .unwrap();
    let mut writer = store.begin("Patient").unwrap();
    let tmp = writer.dir().to_owned();
    let options = DecodeOptions::default().with_strictness(Strictness::Strict);
    let failed = writer.copy_converting(0, &[input], &[TableMode::default()], &options, &|_| {});
    let message = failed.unwrap_err().to_string();
    assert!(
        message.contains("raw/Patient.000.ndjson line 60001"),
        "{message}"
    );
    drop(writer);
    assert!(!tmp.exists());
    assert!(store.current("Patient").unwrap().is_none());
}

//! Local folders of NDJSON as sources (`CREATE EXTERNAL TABLE ... STORED AS FHIR` too), and the
//! shared Synthea sample giving the notebook's counts.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use datafusion::prelude::SessionContext;
use fhirflight::catalog::{self, CatalogOptions, FhirSource, Freshness, LocalFolder};
use serde_json::Value;

use super::{condition, context, patient, rows};

fn write_folder(dir: &Path, files: &[(&str, &[Value])]) {
    for (name, resources) in files {
        let text: String = resources.iter().map(|r| format!("{r}\n")).collect();
        if name.ends_with(".gz") {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(dir.join(name)).unwrap(),
                flate2::Compression::fast(),
            );
            gz.write_all(text.as_bytes()).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
}

#[tokio::test]
async fn local_folder_and_create_external_table_stored_as_fhir() {
    let data = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    write_folder(
        data.path(),
        &[
            ("Patient.1.ndjson", &[patient("a", "female")]),
            (
                "Patient.2.ndjson.gz",
                &[patient("b", "male"), patient("c", "male")],
            ),
            ("Condition.ndjson", &[condition("x", "a", "1")]),
            ("notes.txt", &[]),
        ],
    );
    let folder = Arc::new(LocalFolder::try_new(data.path()).unwrap());
    assert_eq!(
        folder.capabilities().await.unwrap().resource_types,
        ["Condition", "Patient"]
    );

    let ctx = SessionContext::new();
    catalog::register_functions(&ctx, CatalogOptions::default().with_cache_dir(cache.path()));
    let location = data.path().display();
    catalog::sql(&ctx, &format!("CREATE EXTERNAL TABLE people STORED AS FHIR LOCATION '{location}' OPTIONS ('type' 'Patient')"))
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    assert_eq!(
        rows(&ctx, "SELECT gender, count(*) FROM people GROUP BY gender").await,
        ["female|1", "male|2"]
    );
    let err = catalog::sql(
        &ctx,
        &format!(
            "CREATE EXTERNAL TABLE x STORED AS FHIR LOCATION '{location}' OPTIONS ('colour' 'red')"
        ),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("unknown FHIR table option"),
        "{err}"
    );
}

fn synthea() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/synthea-100");
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("skipped: {} is absent", dir.display());
        None
    }
}

#[tokio::test]
async fn synthea_folder_gives_the_notebook_counts() {
    let Some(dir) = synthea() else { return };
    let cache = tempfile::tempdir().unwrap();
    let (ctx, fhir) = context(
        Arc::new(LocalFolder::try_new(&dir).unwrap()),
        cache.path(),
        Freshness::Never,
    )
    .await;
    assert_eq!(fhir.resource_types().await.len(), 17);
    let patients = catalog::sql(
        &ctx,
        "SELECT id, gender, \"birthDate\" FROM src.fhir.patient",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    assert_eq!(patients.iter().map(|b| b.num_rows()).sum::<usize>(), 100);
    let per_gender = rows(
        &ctx,
        "SELECT gender, count(*) FROM src.fhir.patient GROUP BY gender",
    )
    .await;
    assert_eq!(per_gender.len(), 2, "{per_gender:?}");
    let conditions = catalog::sql(
        &ctx,
        "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM src.fhir.condition",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    let n = conditions[0].column(0).as_primitive::<Int64Type>().value(0);
    let ids = conditions[0].column(1).as_primitive::<Int64Type>().value(0);
    assert_eq!((n, ids), (639, 639));
    assert!(conditions[0].column(0).null_count() == 0);

    // The notebook's Patient columns (id, gender, birthDate, maritalStatus.coding[0].code): the
    // rows it printed, and the counts of its data.
    let picked = rows(
        &ctx,
        "SELECT id, gender, \"birthDate\", \"maritalStatus_coding_0_code\" FROM src.fhir.patient \
         WHERE id IN ('6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2', 'c536dee9-9ef6-4807-ae20-9f1045c9c7d6', \
         '5efb1ac1-d29b-40a5-a3d1-2d682f10bfa7')",
    )
    .await;
    assert_eq!(
        picked,
        [
            "5efb1ac1-d29b-40a5-a3d1-2d682f10bfa7|male|1995-10-19|S",
            "6c5d9ca9-54d7-42f5-bfae-a7c19cd217f2|male|1965-01-13|M",
            "c536dee9-9ef6-4807-ae20-9f1045c9c7d6|male|1990-11-18|S",
        ]
    );
    assert_eq!(per_gender, ["female|40", "male|60"]);
    assert_eq!(
        rows(
            &ctx,
            "SELECT \"maritalStatus_coding_0_code\", count(*) FROM src.fhir.patient GROUP BY 1"
        )
        .await,
        ["M|48", "S|52"]
    );
    // Conditions per code: the notebook's first rows, the most frequent codes, the statuses.
    assert_eq!(
        rows(
            &ctx,
            "SELECT code_coding_0_code, code_text FROM src.fhir.condition \
             WHERE id = 'a5a38601-b6fe-46b4-a67e-cde9d5957dde'"
        )
        .await,
        ["40055000|Chronic sinusitis (disorder)"]
    );
    assert_eq!(
        rows(
            &ctx,
            "SELECT code_coding_0_code, count(*) AS n FROM src.fhir.condition \
             GROUP BY 1 ORDER BY n DESC LIMIT 3"
        )
        .await,
        ["10509002|47", "195662009|69", "444814009|106"]
    );
    assert_eq!(
        rows(
            &ctx,
            "SELECT \"clinicalStatus_coding_0_code\", count(*) FROM src.fhir.condition GROUP BY 1"
        )
        .await,
        ["active|258", "resolved|381"]
    );
}

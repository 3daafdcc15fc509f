//! Remote and user strings that try to become paths: a hostile server (the demo server's
//! `hostile_type_names` fault lists `../../../victim` as a resource type and puts it in its
//! manifests), and path-like types in a folder, the configuration and SQL. Nothing may be
//! written, nor removed, outside the cache (or the export folder).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::bulk::{BulkClient, ClientOptions, ExportLevel, ExportProgress, ExportRequest};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog, LocalFolder};
use fhirflight::demo::{DemoConfig, DemoServer, Faults, HOSTILE_TYPES};
use tokio::sync::watch;

const PATIENTS: usize = 5;

/// A home folder as the default cache sees it: the cache in `<home>/.cache/fhirflight`, whose
/// store folder `../../../victim` would reach `<home>/victim`, a folder with a subfolder and
/// files that must stay as they are.
struct Home {
    dir: tempfile::TempDir,
}

impl Home {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::create_dir_all(victim.join("photos")).unwrap();
        std::fs::write(victim.join("photos").join("cat.jpg"), "meow").unwrap();
        std::fs::write(victim.join("notes.txt"), "do not delete").unwrap();
        Self { dir }
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join(".cache").join("fhirflight")
    }

    /// Every file and folder of the home outside `inside` (the cache, an export folder) with
    /// its contents, to compare before and after.
    fn outside(&self, inside: &Path) -> BTreeMap<PathBuf, String> {
        fn walk(dir: &Path, inside: &Path, found: &mut BTreeMap<PathBuf, String>) {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                if path == inside {
                    continue;
                }
                if path.is_dir() {
                    // A folder above `inside` changes with it: only its other entries count.
                    if !inside.starts_with(&path) {
                        found.insert(path.clone(), "<folder>".into());
                    }
                    walk(&path, inside, found);
                } else {
                    found.insert(path.clone(), std::fs::read_to_string(&path).unwrap());
                }
            }
        }
        let mut found = BTreeMap::new();
        walk(self.dir.path(), inside, &mut found);
        found
    }

    fn assert_victim_intact(&self) {
        let victim = self.dir.path().join("victim");
        assert_eq!(
            std::fs::read_to_string(victim.join("photos").join("cat.jpg")).unwrap(),
            "meow"
        );
        assert_eq!(
            std::fs::read_to_string(victim.join("notes.txt")).unwrap(),
            "do not delete"
        );
        let entries = std::fs::read_dir(&victim).unwrap().count();
        assert_eq!(entries, 2, "nothing added to the victim folder");
    }
}

async fn hostile_server() -> DemoServer {
    let server = DemoServer::start(
        DemoConfig::default()
            .with_seed(3)
            .with_patients(PATIENTS)
            .with_require_auth(false),
    )
    .await
    .unwrap();
    server.set_faults(Faults {
        hostile_type_names: true,
        ..Faults::default()
    });
    server
}

async fn client(server: &DemoServer) -> BulkClient {
    let options = ClientOptions::default()
        .with_retry_after_bounds(Duration::from_millis(1), Duration::from_millis(20));
    BulkClient::try_new(server.base_url(), None, options)
        .await
        .unwrap()
}

async fn query(ctx: &SessionContext, sql: &str) -> datafusion::error::Result<Vec<String>> {
    let batches = catalog::sql(ctx, sql).await?.collect().await?;
    Ok(batches.iter().flat_map(crate::row_strings).collect())
}

#[tokio::test]
async fn a_hostile_server_gets_no_table_and_no_path_outside_the_cache() {
    let home = Home::new();
    let server = hostile_server().await;
    let client = client(&server).await;
    let options = CatalogOptions::default().with_cache_dir(home.cache());
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options)
        .await
        .unwrap();
    let before = home.outside(&home.cache());

    // The CapabilityStatement's path-like types are dropped, the others kept.
    let types = fhir.resource_types().await;
    assert!(types.contains(&"Patient".to_owned()));
    for hostile in HOSTILE_TYPES {
        assert!(!types.contains(&hostile.to_owned()));
    }
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_default_catalog_and_schema("fhir", "fhir");
    let ctx = SessionContext::new_with_config(config);
    ctx.register_catalog("fhir", Arc::new(fhir));
    let tables = query(&ctx, "SHOW TABLES").await.unwrap();
    assert!(tables.iter().any(|t| t.contains("|Patient|")), "{tables:?}");
    assert!(!tables.iter().any(|t| t.contains("victim")), "{tables:?}");

    // A path as a table name is just not found.
    for hostile in HOSTILE_TYPES {
        let err = query(&ctx, &format!("SELECT * FROM \"{hostile}\""))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not found"), "{err}");
    }

    // The manifest names an output file `../../../victim`: the export is refused, naming it.
    let err = query(&ctx, "SELECT count(*) FROM Patient")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"has the type "../../../victim", which is not a resource type name"#),
        "{err}"
    );
    assert_eq!(home.outside(&home.cache()), before);
    home.assert_victim_intact();

    // Once the server behaves, the same catalog works.
    server.set_faults(Faults::default());
    let count = query(&ctx, "SELECT count(*) FROM Patient").await.unwrap();
    assert_eq!(count, [PATIENTS.to_string()]);
    assert_eq!(home.outside(&home.cache()), before);
    home.assert_victim_intact();
}

#[tokio::test]
async fn an_export_to_a_folder_refuses_a_manifest_with_a_path_like_type() {
    let home = Home::new();
    let server = hostile_server().await;
    let client = client(&server).await;
    let types = client.resource_types().await.unwrap();
    assert!(types.contains(&"Patient".to_owned()), "{types:?}");
    assert!(!types.iter().any(|t| t.contains('/')), "{types:?}");

    // `fhirflight export --out` runs exactly this.
    let out = home.dir.path().join("a").join("b").join("export");
    let before = home.outside(&out);
    let (progress, _) = watch::channel(ExportProgress::default());
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let err = client
        .export_to_dir(&request, &out, &progress)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(r#"manifest output[1] ("#)
            && err.contains(r#"has the type "../../../victim", which is not a resource type name: export refused"#),
        "{err}"
    );
    assert_eq!(home.outside(&out), before);
    home.assert_victim_intact();
    let written: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        written.iter().all(|n| !n.ends_with(".ndjson")),
        "nothing downloaded: {written:?}"
    );
}

#[tokio::test]
async fn path_like_types_from_a_folder_the_configuration_or_sql_are_refused() {
    let home = Home::new();
    let folder = home.dir.path().join("data");
    std::fs::create_dir_all(&folder).unwrap();
    let patient = r#"{"resourceType":"Patient","id":"p1"}"#;
    for name in [
        "Patient.ndjson",
        "Pat1ent.ndjson",
        "patient.ndjson",
        "..ndjson",
    ] {
        std::fs::write(folder.join(name), patient).unwrap();
    }
    let source = Arc::new(LocalFolder::try_new(&folder).unwrap());
    let options = CatalogOptions::default().with_cache_dir(home.cache());
    let fhir = FhirCatalog::try_new(Arc::clone(&source) as _, options.clone())
        .await
        .unwrap();
    assert_eq!(fhir.resource_types().await, ["Patient"]);

    let configured = options
        .clone()
        .with_resource_types(vec!["Patient".into(), "../../../victim".into()]);
    let err = FhirCatalog::try_new(source, configured).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "configuration: \"../../../victim\" is not a resource type name \
         (a capital letter, then at most 63 letters)"
    );

    let ctx = SessionContext::new();
    catalog::register_functions(&ctx, options);
    let create = format!(
        "CREATE EXTERNAL TABLE v STORED AS FHIR LOCATION '{}' OPTIONS ('type' '../../../victim')",
        folder.display()
    );
    let err = ctx.sql(&create).await.unwrap_err().to_string();
    assert!(err.contains("is not a resource type name"), "{err}");
    home.assert_victim_intact();
}

//! SQL over a FHIR Bulk Data server in your own DataFusion `SessionContext`.
//!
//! Starts the embedded demo server (a real server: SMART Backend Services auth, `$export`), then
//! registers it as the catalog `ehr` next to whatever else the session holds. The first query
//! runs one export for `Patient` and `Condition`; later ones read the local snapshot.
//!
//! ```sh
//! cargo run --example embed
//! ```

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::prelude::SessionContext;
use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::catalog::{self, BulkSource, CatalogOptions, FhirCatalog};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::smart::{SigningKey, SmartConfig};

/// Conditions per patient gender, over the FHIR server at `server`.
pub async fn conditions_per_gender(
    server: &DemoServer,
    cache_dir: &std::path::Path,
) -> fhirflight::Result<Vec<RecordBatch>> {
    // A SMART Backend Services client: client id and private key registered with the server.
    let creds = server.credentials();
    let key = SigningKey::from_jwk(creds.rs384().private_jwk(), None)?;
    let auth = SmartConfig::new(creds.client_id(), key);
    let client =
        BulkClient::try_new(server.base_url(), Some(auth), ClientOptions::default()).await?;

    // Every resource type of the server becomes a table of `ehr.fhir`.
    let options = CatalogOptions::default().with_cache_dir(cache_dir);
    let fhir = FhirCatalog::try_new(Arc::new(BulkSource::new(client)), options).await?;
    let ctx = SessionContext::new();
    ctx.register_catalog("ehr", Arc::new(fhir));

    // `catalog::sql` is `ctx.sql` plus ONE export for all the FHIR tables of the statement.
    let df = catalog::sql(
        &ctx,
        "SELECT p.gender, count(*) AS conditions
         FROM ehr.fhir.Patient p
         JOIN ehr.fhir.Condition c ON c.subject_reference = concat('Patient/', p.id)
         GROUP BY p.gender ORDER BY p.gender",
    )
    .await?;
    Ok(df.collect().await?)
}

#[tokio::main]
async fn main() -> fhirflight::Result<()> {
    let server = DemoServer::start(DemoConfig::default().with_patients(20)).await?;
    let cache = std::env::temp_dir().join("fhirflight-embed-example");
    let batches = conditions_per_gender(&server, &cache).await?;
    println!(
        "{}",
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)?
    );
    Ok(())
}

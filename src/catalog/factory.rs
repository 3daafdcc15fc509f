//! `CREATE EXTERNAL TABLE ... STORED AS FHIR LOCATION '<base url or folder>' OPTIONS (...)`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider, TableProviderFactory};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::CreateExternalTable;

use super::{
    BulkSource, CatalogOptions, FhirCatalog, FhirSource, Freshness, LocalFolder, to_datafusion,
};
use crate::Error;
use crate::bulk::{BulkClient, ClientOptions};
use crate::ndjson::TableMode;
use crate::r4::check_type_name;

/// Creates FHIR tables from SQL: `CREATE EXTERNAL TABLE obs STORED AS FHIR LOCATION
/// '../data/synthea-100' OPTIONS ('type' 'Observation', 'mode' 'nested', 'freshness' '1h',
/// 'cache_dir' '/tmp/cache')`.
///
/// Options (all optional): `type` (default: the table name, matched case-insensitively),
/// `mode` (`flattened` or `nested`), `freshness` (`always`, `never`, `15m`...), `cache_dir`.
/// Tables of the same location and options share one catalog, so its exports and snapshots.
/// The table reads the snapshot that was fresh when it was created; `fhir_refresh` and creating
/// it again bring a newer one.
#[derive(Debug)]
pub struct FhirTableFactory {
    defaults: CatalogOptions,
    catalogs: Mutex<HashMap<String, FhirCatalog>>,
}

impl FhirTableFactory {
    /// A factory whose tables use `defaults` for options not given in SQL.
    pub fn new(defaults: CatalogOptions) -> Self {
        Self {
            defaults,
            catalogs: Mutex::default(),
        }
    }

    async fn catalog(&self, location: &str, options: CatalogOptions) -> crate::Result<FhirCatalog> {
        let key = format!("{location}|{options:?}");
        if let Some(c) = self
            .catalogs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(c.clone());
        }
        // A server without SMART auth; an authenticated one is registered as a catalog.
        let source: Arc<dyn FhirSource> =
            if location.starts_with("http://") || location.starts_with("https://") {
                let url = url::Url::parse(location).map_err(|e| Error::config_with(location, e))?;
                Arc::new(BulkSource::new(
                    BulkClient::try_new(url, None, ClientOptions::default()).await?,
                ))
            } else {
                Arc::new(LocalFolder::try_new(location)?)
            };
        let catalog = FhirCatalog::try_new(source, options).await?;
        let mut catalogs = self.catalogs.lock().unwrap_or_else(|e| e.into_inner());
        Ok(catalogs.entry(key).or_insert(catalog).clone())
    }
}

#[async_trait]
impl TableProviderFactory for FhirTableFactory {
    async fn create(
        &self,
        _state: &dyn Session,
        cmd: &CreateExternalTable,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let mut options = self.defaults.clone();
        let mut resource_type = cmd.name.table().to_owned();
        for (key, value) in &cmd.options {
            match key.rsplit('.').next().unwrap_or(key) {
                "type" => resource_type = value.clone(),
                "mode" => match value.as_str() {
                    "flattened" => options = options.with_mode(TableMode::default()),
                    "nested" => options = options.with_mode(TableMode::Nested),
                    _ => {
                        return Err(to_datafusion(Error::config(format!(
                            "mode {value:?}: expected flattened or nested"
                        ))));
                    }
                },
                "freshness" => {
                    options =
                        options.with_freshness(value.parse::<Freshness>().map_err(to_datafusion)?)
                }
                "cache_dir" => options = options.with_cache_dir(value),
                _ => {
                    return Err(to_datafusion(Error::config(format!(
                        "unknown FHIR table option {key:?}"
                    ))));
                }
            }
        }
        check_type_name(&resource_type).map_err(to_datafusion)?;
        let location = cmd
            .locations
            .first()
            .ok_or_else(|| to_datafusion(Error::config("STORED AS FHIR needs a LOCATION")))?;
        let catalog = self
            .catalog(location, options)
            .await
            .map_err(to_datafusion)?;
        Ok(Arc::new(
            catalog.table(&resource_type).await.map_err(to_datafusion)?,
        ))
    }
}

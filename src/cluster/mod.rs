//! Statements run on an Apache DataFusion Ballista cluster.
//!
//! fhirflight stays the coordinator: a statement is planned in the session that holds the FHIR
//! catalogs (table resolution, the ONE export per statement, pushdown into the export, the
//! snapshot's commit), and DataFusion's rules shape its physical plan as in one process. Then
//! [`Cluster`]'s last rule hands the whole plan to the cluster's scheduler as one
//! [`ClusterExec`]: Ballista splits it into stages at its exchanges, the executors run the
//! stages' tasks (the scans of the snapshots' Parquet files, joins, aggregates, views' Parquet)
//! and the rows of the last stage stream back to the caller (the Flight SQL client, the CLI).
//!
//! - **What travels.** The physical plan, with DataFusion's own nodes as datafusion-proto writes
//!   them and fhirflight's [`FhirScanExec`](crate::catalog::FhirScanExec) through [`FhirCodec`],
//!   which the scheduler and executors of [`serve_scheduler`] and [`serve_executor`] know.
//! - **Where the files are.** A snapshot, and a view's Parquet copy, published at the tables'
//!   location (`--cache-dir s3://...`) are read there by the executors; other files (no
//!   location, filtered snapshots) are read at their path in the coordinator's cache folder,
//!   which the executors must then see at the same path (the coordinator's machine, a mount).
//! - **What stays here.** Plans that cannot travel run in this process as before: effects
//!   (`fhir_refresh`, `fhir_add_view`), `information_schema`, and statements that read no file.
//! - **Failures.** A task that fails, or whose executor dies, runs again elsewhere (Ballista
//!   retries a task 4 times and a stage 4 times); past that the statement fails with the
//!   cluster's error. The coordinator holds the plan until the last row is sent, and with it
//!   the leases of the filtered snapshots it reads, as in one process.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use datafusion::execution::runtime_env::RuntimeEnv;
//! use datafusion::prelude::SessionConfig;
//! use fhirflight::catalog::{self, CatalogOptions, FhirCatalog, LocalFolder};
//! use fhirflight::cluster::Cluster;
//!
//! let cluster = Cluster::new("df://scheduler.example:50050")?;
//! let ctx = cluster.session(SessionConfig::new(), Arc::new(RuntimeEnv::default()));
//! let source = Arc::new(LocalFolder::try_new("data/synthea-100")?);
//! let fhir = FhirCatalog::try_new(source, CatalogOptions::default()).await?;
//! ctx.register_catalog("synthea", Arc::new(fhir));
//! catalog::register_functions(&ctx, CatalogOptions::default());
//! // Exported and planned here, run by the cluster's executors.
//! let df = catalog::sql(&ctx, "SELECT gender, count(*) FROM synthea.fhir.Patient GROUP BY gender").await?;
//! df.show().await?;
//! # Ok(()) }
//! ```

mod codec;
mod convert;
mod exec;
mod processes;

use std::sync::Arc;

use ballista_core::extension::SessionConfigExt;
use datafusion::error::Result as DfResult;
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::prelude::{SessionConfig, SessionContext};
use object_store::ObjectStore;
use url::Url;

pub use codec::FhirCodec;
pub use exec::ClusterExec;
pub use processes::{ExecutorOptions, SchedulerOptions, serve_executor, serve_scheduler};

use crate::{Error, Result};

/// The port of a scheduler URL without one (Ballista's).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// A Ballista cluster, named by its scheduler: `df://HOST[:PORT]` (port 50050 when omitted).
/// Its sessions plan statements here and run them there ([module docs](self)).
#[derive(Debug, Clone)]
pub struct Cluster {
    /// `http://host:port`, as Ballista's gRPC clients take it.
    scheduler: String,
}

impl Cluster {
    /// The cluster of the scheduler at `url` (`df://host:port`; `http://` is taken too).
    ///
    /// ```
    /// use fhirflight::cluster::Cluster;
    ///
    /// assert_eq!(Cluster::new("df://10.0.0.5")?.scheduler(), "http://10.0.0.5:50050");
    /// assert!(Cluster::new("df://").is_err());
    /// # Ok::<(), fhirflight::Error>(())
    /// ```
    pub fn new(url: &str) -> Result<Self> {
        let bad = |why: &str| Error::config(format!("--cluster {url}: {why}"));
        let parsed = Url::parse(url).map_err(|e| bad(&e.to_string()))?;
        if !parsed.username().is_empty() || parsed.password().is_some() {
            // Not repeated: it may hold a password.
            return Err(Error::config(
                "--cluster: a scheduler's URL is df://HOST:PORT, without user or password",
            ));
        }
        if !matches!(parsed.scheme(), "df" | "http") {
            return Err(bad("a scheduler is df://HOST:PORT"));
        }
        let host = parsed.host_str().filter(|h| !h.is_empty());
        let host = host.ok_or_else(|| bad("no host"))?;
        if parsed.path().len() > 1 || parsed.query().is_some() {
            return Err(bad("a scheduler is df://HOST:PORT, nothing more"));
        }
        let port = parsed.port().unwrap_or(DEFAULT_SCHEDULER_PORT);
        Ok(Self {
            scheduler: format!("http://{host}:{port}"),
        })
    }

    /// The scheduler's address, `http://host:port`.
    pub fn scheduler(&self) -> &str {
        &self.scheduler
    }

    /// `config` made fit for Ballista: its settings travel with each statement, and DataFusion
    /// options that do not work across processes are off (round-robin repartitioning, view
    /// types, dynamic filters; joins sort and merge, which spills, rather than hash).
    pub fn config(&self, config: SessionConfig) -> SessionConfig {
        config
            .upgrade_for_ballista()
            .with_ballista_job_name("fhirflight")
    }

    /// The physical optimizer rule that sends a statement's plan to the cluster; it must be the
    /// session's last.
    pub fn rule(&self) -> Arc<dyn PhysicalOptimizerRule + Send + Sync> {
        Arc::new(exec::Distribute {
            scheduler: self.scheduler.clone(),
            codec: Arc::new(FhirCodec::default()),
        })
    }

    /// A session whose statements run on this cluster: `config` made fit for it
    /// ([`config`](Self::config)), DataFusion's default features and [`rule`](Self::rule).
    pub fn session(&self, config: SessionConfig, runtime: Arc<RuntimeEnv>) -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_config(self.config(config))
            .with_runtime_env(runtime)
            .with_default_features()
            .build();
        let mut rules = state.physical_optimizers().to_vec();
        rules.push(self.rule());
        let state = SessionStateBuilder::new_from_existing(state)
            .with_physical_optimizer_rules(rules)
            .build();
        SessionContext::new_with_state(state)
    }
}

/// The object stores of an executor: those of DataFusion's registry (local files), and the
/// bucket or container of any `s3://`, `gs://` or `az://` URL, opened on first use with the
/// cloud's standard credentials, as the coordinator opens the tables' location.
#[derive(Debug, Default)]
pub(crate) struct CloudRegistry {
    opened: DefaultObjectStoreRegistry,
}

impl ObjectStoreRegistry for CloudRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.opened.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> DfResult<Arc<dyn ObjectStore>> {
        let cloud = matches!(url.scheme(), "s3" | "s3a" | "gs" | "az" | "abfs" | "abfss");
        if !cloud || self.opened.get_store(url).is_ok() {
            return self.opened.get_store(url);
        }
        let bucket = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let bucket = Url::parse(&bucket)
            .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let store = crate::snapshot::cloud_store(&bucket)?;
        self.opened.register_store(&bucket, Arc::clone(&store));
        Ok(store)
    }
}

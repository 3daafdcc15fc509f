//! The configuration model and the session assembly shared by the CLI and embedders.
//!
//! [`Config`] is the TOML file of the README's configuration reference: `[server]` (the catalog
//! `fhir`), one `[servers.<name>]` per further FHIR server (the catalog `<name>`),
//! `[views.<name>]` (view tables of the default catalog), `[limits]` and `[cache]`.
//! [`SessionBuilder`] turns it into the [`SessionContext`] every query of the `fhirflight`
//! command runs in, so an application gets exactly the catalogs, views and functions the CLI has:
//!
//! ```no_run
//! # async fn demo() -> fhirflight::Result<()> {
//! use fhirflight::catalog::{self, CatalogOptions, Freshness};
//! use fhirflight::config::{Config, SessionBuilder};
//!
//! let config: Config = r#"
//!     [server]
//!     url = "https://ehr.example.org/fhir"
//!     client_id = "my-client"
//!     key_file = "/secure/key.jwks.json"
//!
//!     [views.patients]
//!     resource = "Patient"
//!     columns = [["id", "id"], ["gender", "gender"]]
//! "#
//! .parse()?;
//! let options = CatalogOptions::default().with_freshness(Freshness::Always);
//! let session = SessionBuilder::new(config).with_catalog_options(options).build().await?;
//! catalog::sql(session.context(), "SELECT gender, count(*) FROM patients GROUP BY gender")
//!     .await?
//!     .show()
//!     .await?;
//! # Ok(()) }
//! ```
//!
//! The command line maps its flags and environment onto this model ([`ServerConfig::or`]: flags
//! and environment win over the file) and then calls the same builder.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use serde::Deserialize;
use url::Url;

use crate::bulk::{BulkClient, ClientOptions, ExportLevel};
use crate::catalog::{
    self, BulkSource, CatalogOptions, FhirCatalog, FhirSource, LocalFolder, PushdownMode,
};
#[cfg(feature = "demo")]
use crate::demo::{DemoConfig, DemoServer};
use crate::smart::{SigningKey, SmartConfig};
use crate::view::ViewDefinition;
use crate::{Error, Result};

/// The name of the catalog of `[server]` (or of a folder, or of the demo server).
pub const PRIMARY_CATALOG: &str = "fhir";

/// How errors name the server of `[server]` and the flags.
const PRIMARY_SERVER: &str = "FHIR server";

/// The configuration file: `[server]`, `[servers.<name>]` and `[views.<name>]`.
///
/// Unknown keys are refused, so that a typo does not silently fall back to a default.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// `[server]`: the FHIR server of the catalog `fhir`.
    #[serde(default)]
    pub server: ServerConfig,
    /// `[servers.<name>]`: more FHIR servers, each served as the catalog of its name (lower case
    /// letters, digits and `_`, and not `fhir`).
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    /// `[views.<name>]`: view tables of the default catalog.
    #[serde(default)]
    pub views: BTreeMap<String, ViewConfig>,
    /// `[limits]`: bounds on what servers and files may make the process hold or download.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[cache]`: where the snapshots are kept.
    #[serde(default)]
    pub cache: CacheConfig,
}

/// `[cache]`: where the snapshots are kept. [`SessionBuilder::build`] applies it over the
/// catalog options it was given (the CLI's `--cache-dir` wins over it).
///
/// ```
/// use fhirflight::config::{CacheLocation, Config};
///
/// let config = Config::from_toml("[cache]\nurl = \"s3://hospital-lake/fhir\"\n")?;
/// let url = url::Url::parse("s3://hospital-lake/fhir").unwrap();
/// assert_eq!(config.cache.location()?, Some(CacheLocation::Store(url)));
/// # Ok::<(), fhirflight::Error>(())
/// ```
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct CacheConfig {
    /// `url`: a folder (a path or a `file://` URL) to keep the snapshots in, or an object
    /// store's URL (`s3://bucket/prefix`, `gs://...`, `az://...`) shared by machines: see
    /// [`CacheLocation`].
    pub url: Option<String>,
}

impl CacheConfig {
    /// Where `url` keeps the snapshots; none when it is not set.
    pub fn location(&self) -> Result<Option<CacheLocation>> {
        let parsed = self.url.as_deref().map(CacheLocation::read).transpose();
        parsed.map_err(|e| Error::config(format!("[cache] url: {e}")))
    }
}

/// Where the snapshots are kept (`[cache] url`, `--cache-dir`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheLocation {
    /// The cache folder ([`CatalogOptions::with_cache_dir`]).
    Folder(PathBuf),
    /// An object store: the types' Delta tables and the snapshots' home there, shared by the
    /// machines pointed at it ([`CatalogOptions::with_table_location`]), and this machine's
    /// working copy in the user's cache folder.
    Store(Url),
}

impl CacheLocation {
    /// A `file://` URL or a path is a folder; another URL (`s3://bucket/prefix`) an object
    /// store.
    pub fn parse(text: &str) -> Result<Self> {
        Self::read(text).map_err(Error::config)
    }

    fn read(text: &str) -> std::result::Result<Self, String> {
        match Url::parse(text) {
            Ok(url) if url.scheme() == "file" => url
                .to_file_path()
                .map(CacheLocation::Folder)
                .map_err(|()| format!("{text}: not a folder path")),
            Ok(url) if url.scheme().len() > 1 => Ok(CacheLocation::Store(url)),
            _ => Ok(CacheLocation::Folder(PathBuf::from(text))),
        }
    }

    /// `options` keeping their snapshots here.
    pub fn catalog_options(&self, options: CatalogOptions) -> CatalogOptions {
        match self {
            CacheLocation::Folder(dir) => options.with_cache_dir(dir),
            CacheLocation::Store(url) => options.with_table_location(url.clone()),
        }
    }
}

/// `[limits]`: bounds on what a FHIR server or an NDJSON file may make fhirflight download or
/// hold, for every server of the file. Sizes are bytes or `"64MiB"`-like text
/// ([`crate::size::parse_size`]). An unset key keeps its default, which real data stays far
/// below; an error past a bound names its key.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// The largest JSON response: status, manifest page, CapabilityStatement, token, discovery
    /// (64 MiB).
    #[serde(default, deserialize_with = "deserialize_size")]
    pub max_response_bytes: Option<u64>,
    /// The largest NDJSON file downloaded, decompressed (32 GiB).
    #[serde(default, deserialize_with = "deserialize_size")]
    pub max_file_bytes: Option<u64>,
    /// The most bytes one export downloads over all its files, decompressed (1 TiB).
    #[serde(default, deserialize_with = "deserialize_size")]
    pub max_export_bytes: Option<u64>,
    /// How many times its compressed size a gzip file may inflate to (200).
    pub max_gzip_ratio: Option<u64>,
    /// The longest NDJSON line read (128 MiB): a longer one is a skipped bad line.
    #[serde(default, deserialize_with = "deserialize_size")]
    pub max_line_bytes: Option<u64>,
    /// The most columns of a flattened table (50,000); a resource's paths beyond them go into
    /// its `_overflow` column.
    pub max_columns: Option<usize>,
}

impl LimitsConfig {
    /// `options` with the bounds set here.
    pub fn client_options(&self, mut options: ClientOptions) -> ClientOptions {
        if let Some(max) = self.max_response_bytes {
            options = options.with_max_response_bytes(max);
        }
        if let Some(max) = self.max_file_bytes {
            options = options.with_max_file_bytes(max);
        }
        if let Some(max) = self.max_export_bytes {
            options = options.with_max_export_bytes(max);
        }
        if let Some(ratio) = self.max_gzip_ratio {
            options = options.with_max_gzip_ratio(ratio);
        }
        options
    }

    /// `options` with the bounds on lines and columns set here.
    pub fn catalog_options(&self, mut options: CatalogOptions) -> CatalogOptions {
        if let Some(max) = self.max_line_bytes {
            options = options.with_max_line_bytes(usize::try_from(max).unwrap_or(usize::MAX));
        }
        if let Some(max) = self.max_columns {
            options = options.with_max_columns(max);
        }
        options
    }
}

/// `max_file_bytes = "32GiB"` or `= 34359738368`.
fn deserialize_size<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(bytes) => Ok(Some(bytes)),
        Size::Text(text) => crate::size::parse_size(&text).map(Some).ok_or_else(|| {
            serde::de::Error::custom(format!("{text:?}: expected a size like 64MiB, 32GiB"))
        }),
    }
}

/// `[views.<name>]`: the notebook's shorthand for a view, a table of `[column, FHIRPath]` pairs over
/// one resource type, each column holding its path's first value.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ViewConfig {
    /// The resource type the view reads (`Patient`).
    pub resource: String,
    /// `(column name, FHIRPath)` pairs, in column order.
    pub columns: Vec<(String, String)>,
}

impl ViewConfig {
    /// A view of `resource` with `columns` (`(name, FHIRPath)` pairs).
    pub fn new(resource: impl Into<String>, columns: Vec<(String, String)>) -> Self {
        Self {
            resource: resource.into(),
            columns,
        }
    }

    /// The ViewDefinition named `name`; errors name the section `[views.<name>]`.
    pub fn definition(&self, name: &str) -> Result<ViewDefinition> {
        let columns: Vec<(&str, &str)> = self
            .columns
            .iter()
            .map(|(column, path)| (column.as_str(), path.as_str()))
            .collect();
        let definition = ViewDefinition::from_paths(&self.resource, &columns)
            .map_err(|e| Error::config_with(format!("[views.{name}]"), e))?;
        Ok(definition.with_name(name))
    }
}

/// `[server]` and `[servers.<name>]`: a FHIR Bulk Data server and how to reach it.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The FHIR base URL.
    pub url: Option<Url>,
    /// SMART Backend Services client id (none for an open server).
    pub client_id: Option<String>,
    /// The private key: PEM (PKCS#1, PKCS#8, SEC1) or JWK/JWKS JSON.
    pub key_file: Option<PathBuf>,
    /// Key id (`kid`) when the key file does not name one.
    pub kid: Option<String>,
    /// OAuth scope.
    pub scope: Option<String>,
    /// Token endpoint; discovered from the server when none.
    pub token_endpoint: Option<Url>,
    /// Extra CA bundle (PEM) for a private certificate authority.
    pub ca_bundle: Option<PathBuf>,
    /// HTTP proxy for every request to this server.
    pub proxy: Option<Url>,
    /// Files downloaded at once.
    pub parallel_downloads: Option<usize>,
    /// Origins besides the server's that get the access token.
    #[serde(default)]
    pub token_origins: Vec<String>,
    /// The export level of the catalog's exports: `system` (the default), `patient` or
    /// `group:<id>`. Each level (and group, and patient list) keeps its own snapshots.
    #[serde(default, deserialize_with = "deserialize_level")]
    pub level: Option<ExportLevel>,
    /// `patient` references (`Patient/123` or bare ids) that exports at the patient or group
    /// level are restricted to (sent by POST).
    #[serde(default)]
    pub patient: Vec<String>,
    /// The only resource types that are tables; when unset, every resource type is one and
    /// browsing lists those the server declares and those exported.
    pub types: Option<Vec<String>>,
    /// Which filters are pushed into exports: `auto` (the default: those the server declares
    /// it supports), `on` or `off`.
    pub pushdown: Option<PushdownMode>,
    /// Fail an export whose file has another number of resources than the manifest's `count`
    /// (default: keep it with a warning, as the count is advisory).
    pub strict_counts: Option<bool>,
    /// Ask for `allowPartialManifests` and download the files of partial manifests while the
    /// export runs (default: no).
    pub allow_partial_manifests: Option<bool>,
    /// How long one request may keep being retried on transient failures (`10m` by default).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub retry_deadline: Option<Duration>,
    /// How long a server that refuses connections (or has no address) is retried (`5s`).
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub connect_retry_deadline: Option<Duration>,
    /// How long a whole export may take (`24h`); the job is kept when it is exceeded.
    #[serde(default, deserialize_with = "deserialize_duration")]
    pub export_deadline: Option<Duration>,
    /// Status polls in a row without progress before an export is given up (1000).
    pub max_polls_without_progress: Option<u32>,
}

/// `retry_deadline = "10m"`, parsed as the duration flags are ([`crate::time::parse_duration`]).
fn deserialize_duration<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Duration>, D::Error> {
    let text = String::deserialize(d)?;
    crate::time::parse_duration(&text).map(Some).ok_or_else(|| {
        serde::de::Error::custom(format!("{text:?}: expected a duration like 90s, 10m, 24h"))
    })
}

/// `level = "group:g1"`, parsed as `--level` is.
fn deserialize_level<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<ExportLevel>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(serde::de::Error::custom)
}

impl Config {
    /// Reads the TOML file at `path`; errors name the file.
    #[cfg(feature = "config")]
    #[cfg_attr(docsrs, doc(cfg(feature = "config")))]
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_toml(&text)
            .map_err(|e| Error::config(format!("{}: {}", path.display(), e.message())))
    }

    /// The configuration in TOML `text` (also `text.parse::<Config>()`).
    #[cfg(feature = "config")]
    #[cfg_attr(docsrs, doc(cfg(feature = "config")))]
    pub fn from_toml(text: &str) -> Result<Self> {
        Self::parse_toml(text).map_err(|e| Error::config(e.message().to_owned()))
    }

    #[cfg(feature = "config")]
    fn parse_toml(text: &str) -> std::result::Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// The session of this configuration with default catalog options: see [`SessionBuilder`].
    pub async fn session(self) -> Result<Session> {
        SessionBuilder::new(self).build().await
    }
}

#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
impl std::str::FromStr for Config {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        Self::from_toml(text)
    }
}

impl ServerConfig {
    /// A server at `url`, everything else unset.
    pub fn new(url: Url) -> Self {
        Self {
            url: Some(url),
            ..Self::default()
        }
    }

    /// Each key of `self`, else that of `fallback`; `token_origins` are `self`'s unless it has
    /// none. The command line puts its flags and environment over the file's `[server]` so.
    pub fn or(self, fallback: ServerConfig) -> ServerConfig {
        ServerConfig {
            url: self.url.or(fallback.url),
            client_id: self.client_id.or(fallback.client_id),
            key_file: self.key_file.or(fallback.key_file),
            kid: self.kid.or(fallback.kid),
            scope: self.scope.or(fallback.scope),
            token_endpoint: self.token_endpoint.or(fallback.token_endpoint),
            ca_bundle: self.ca_bundle.or(fallback.ca_bundle),
            proxy: self.proxy.or(fallback.proxy),
            parallel_downloads: self.parallel_downloads.or(fallback.parallel_downloads),
            token_origins: if self.token_origins.is_empty() {
                fallback.token_origins
            } else {
                self.token_origins
            },
            level: self.level.or(fallback.level),
            patient: if self.patient.is_empty() {
                fallback.patient
            } else {
                self.patient
            },
            types: self.types.or(fallback.types),
            pushdown: self.pushdown.or(fallback.pushdown),
            strict_counts: self.strict_counts.or(fallback.strict_counts),
            allow_partial_manifests: self
                .allow_partial_manifests
                .or(fallback.allow_partial_manifests),
            retry_deadline: self.retry_deadline.or(fallback.retry_deadline),
            connect_retry_deadline: self
                .connect_retry_deadline
                .or(fallback.connect_retry_deadline),
            export_deadline: self.export_deadline.or(fallback.export_deadline),
            max_polls_without_progress: self
                .max_polls_without_progress
                .or(fallback.max_polls_without_progress),
        }
    }

    /// `options` with this server's `types` and `pushdown`, when set.
    pub fn catalog_options(&self, options: CatalogOptions) -> CatalogOptions {
        let options = match &self.types {
            Some(types) => options.with_resource_types(types.clone()),
            None => options,
        };
        match self.pushdown {
            Some(pushdown) => options.with_pushdown(pushdown),
            None => options,
        }
    }

    /// The Bulk Data source of this server over `client`: its `level`, `patient` list and
    /// `allow_partial_manifests`.
    pub fn source(&self, client: BulkClient) -> BulkSource {
        BulkSource::new(client)
            .with_level(self.level.clone().unwrap_or(ExportLevel::System))
            .with_patients(self.patient.clone())
            .with_allow_partial_manifests(self.allow_partial_manifests.unwrap_or(false))
    }

    /// The client options of this server (CA bundle, proxy, parallel downloads, token origins,
    /// strict counts, time limits); `insecure_skip_tls_verify` turns certificate checks off
    /// (logged on every use).
    pub fn client_options(&self, insecure_skip_tls_verify: bool) -> ClientOptions {
        let mut options = ClientOptions::default()
            .with_danger_accept_invalid_certs(insecure_skip_tls_verify)
            .with_token_origins(self.token_origins.clone())
            .with_strict_counts(self.strict_counts.unwrap_or(false));
        if let Some(deadline) = self.retry_deadline {
            options = options.with_retry_deadline(deadline);
        }
        if let Some(deadline) = self.connect_retry_deadline {
            options = options.with_connect_retry_deadline(deadline);
        }
        if let Some(deadline) = self.export_deadline {
            options = options.with_export_deadline(deadline);
        }
        if let Some(polls) = self.max_polls_without_progress {
            options = options.with_max_polls_without_progress(polls);
        }
        if let Some(n) = self.parallel_downloads {
            options = options.with_parallel_downloads(n);
        }
        if let Some(ca) = &self.ca_bundle {
            options = options.with_ca_bundle(ca.clone());
        }
        if let Some(proxy) = &self.proxy {
            options = options.with_proxy(proxy.clone());
        }
        options
    }

    /// A client for this server with `options` (SMART Backend Services when a client id and a
    /// key file are set); `what` names it in errors (`FHIR server`, `[servers.x]`).
    pub async fn connect(self, what: &str, options: ClientOptions) -> Result<BulkClient> {
        let base = self.url.ok_or_else(|| {
            Error::config(format!(
                "{what}: no URL (pass --server URL or FHIRFLIGHT_SERVER, set url in the config file, or use --demo)"
            ))
        })?;
        let auth = match (self.client_id, self.key_file) {
            (Some(client_id), Some(key_file)) => {
                // Named as the setting it came from: flags apply to [server] only.
                let setting = match what {
                    PRIMARY_SERVER => "--key-file / key_file",
                    _ => "key_file",
                };
                let key = SigningKey::from_file(&key_file, self.kid.as_deref())
                    .map_err(|e| Error::config_with(format!("{what}: {setting}"), e))?;
                let mut auth = SmartConfig::new(client_id, key);
                if let Some(scope) = self.scope {
                    auth = auth.with_scope(scope);
                }
                if let Some(endpoint) = self.token_endpoint {
                    auth = auth.with_token_endpoint(endpoint);
                }
                Some(auth)
            }
            (None, None) => None,
            _ => {
                return Err(Error::config(format!(
                    "{what}: SMART Backend Services needs both a client id and a key file"
                )));
            }
        };
        BulkClient::try_new(base, auth, options).await
    }
}

/// Where the catalog `fhir` reads from.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum PrimarySource {
    /// The server of `[server]` (the default); no catalog `fhir` when it has no URL and
    /// `[servers.<name>]` name others.
    #[default]
    Server,
    /// A folder of NDJSON(.gz) files from an earlier export.
    Folder(PathBuf),
    /// The embedded demo Bulk Data server, started in-process; `[server]`'s client options
    /// (parallel downloads, proxy, CA bundle, token origins) still apply.
    #[cfg(feature = "demo")]
    #[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
    Demo(DemoConfig),
}

/// Builds the session the `fhirflight` command runs its queries in from a [`Config`].
///
/// 1. The catalog `fhir` reads the [`PrimarySource`]: `[server]`, a folder or the demo server.
///    It exists unless the source is `[server]` without a URL and `[servers.<name>]` name others.
/// 2. Each `[servers.<name>]` becomes the catalog `<name>`; its `proxy` and `ca_bundle` default to
///    those given by [`with_default_proxy`](Self::with_default_proxy) and
///    [`with_default_ca_bundle`](Self::with_default_ca_bundle).
/// 3. The default catalog is `fhir`, else the first named server (alphabetically), with the
///    schema `fhir`, so `SELECT * FROM Patient` works.
/// 4. Views (`[views.<name>]`, [`with_views_dir`](Self::with_views_dir)) are tables of the default
///    catalog.
/// 5. [`catalog::register_functions`] adds `STORED AS FHIR` and `fhir_refresh`.
/// 6. Statements share a memory pool of [`with_memory_limit`](Self::with_memory_limit)
///    (default: [`default_memory_limit`]); sorts, joins and aggregates spill to temporary files
///    beyond it, and what cannot spill fails with "Resources exhausted" (`RESOURCE_EXHAUSTED`
///    over Flight) instead of taking the machine's memory.
#[derive(Debug)]
pub struct SessionBuilder {
    config: Config,
    source: PrimarySource,
    options: CatalogOptions,
    views_dir: Option<PathBuf>,
    insecure_skip_tls_verify: bool,
    proxy: Option<Url>,
    ca_bundle: Option<PathBuf>,
    memory_limit: Option<usize>,
    #[cfg(feature = "cluster")]
    cluster: Option<crate::cluster::Cluster>,
}

/// The default memory limit of a session: half the machine's memory (Linux `MemTotal`), or
/// 4 GiB where that cannot be read.
pub fn default_memory_limit() -> usize {
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        });
    total_kib.map_or(4 << 30, |kib| kib.saturating_mul(1024) / 2)
}

impl SessionBuilder {
    /// A builder for `config`, reading `[server]`, with default [`CatalogOptions`].
    pub fn new(config: Config) -> Self {
        Self {
            config,
            source: PrimarySource::Server,
            options: CatalogOptions::default(),
            views_dir: None,
            insecure_skip_tls_verify: false,
            proxy: None,
            ca_bundle: None,
            memory_limit: Some(default_memory_limit()),
            #[cfg(feature = "cluster")]
            cluster: None,
        }
    }

    /// Runs the statements that read files on `cluster` (none: in this process); see
    /// [`crate::cluster`].
    #[cfg(feature = "cluster")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
    pub fn with_cluster(self, cluster: Option<crate::cluster::Cluster>) -> Self {
        Self { cluster, ..self }
    }

    /// The bytes all statements of the session may hold at once (`None`: no limit).
    pub fn with_memory_limit(self, memory_limit: Option<usize>) -> Self {
        Self {
            memory_limit,
            ..self
        }
    }

    /// Where the catalog `fhir` reads from instead of `[server]`.
    pub fn with_source(self, source: PrimarySource) -> Self {
        Self { source, ..self }
    }

    /// The options of every catalog (cache folder, freshness, table mode, ...).
    pub fn with_catalog_options(self, options: CatalogOptions) -> Self {
        Self { options, ..self }
    }

    /// A folder of SQL on FHIR ViewDefinition JSON files: views of the default catalog.
    pub fn with_views_dir(self, dir: impl Into<PathBuf>) -> Self {
        Self {
            views_dir: Some(dir.into()),
            ..self
        }
    }

    /// Do not verify TLS certificates, on any server. Dangerous: logged on every client built.
    pub fn with_danger_accept_invalid_certs(self, insecure: bool) -> Self {
        Self {
            insecure_skip_tls_verify: insecure,
            ..self
        }
    }

    /// The proxy of every server whose section sets none.
    pub fn with_default_proxy(self, proxy: Option<Url>) -> Self {
        Self { proxy, ..self }
    }

    /// The CA bundle of every server whose section sets none.
    pub fn with_default_ca_bundle(self, ca_bundle: Option<PathBuf>) -> Self {
        Self { ca_bundle, ..self }
    }

    /// The client options of `server`, within `[limits]`.
    fn client_options(&self, server: &ServerConfig) -> ClientOptions {
        let options = server.client_options(self.insecure_skip_tls_verify);
        self.config.limits.client_options(options)
    }

    /// `server` with the network defaults filled in.
    fn network(&self, server: ServerConfig) -> ServerConfig {
        ServerConfig {
            proxy: server.proxy.or_else(|| self.proxy.clone()),
            ca_bundle: server.ca_bundle.or_else(|| self.ca_bundle.clone()),
            ..server
        }
    }

    /// A Bulk Data client for the primary server only (`[server]` or the demo server), as
    /// `fhirflight export` uses it. A folder source is refused.
    pub async fn connect(self) -> Result<Connection> {
        let server = self.network(self.config.server.clone());
        let options = self.client_options(&server);
        match self.source {
            PrimarySource::Server => Ok(Connection {
                client: server.connect(PRIMARY_SERVER, options).await?,
                #[cfg(feature = "demo")]
                demo: None,
            }),
            PrimarySource::Folder(folder) => Err(Error::config(format!(
                "{}: a folder is not a Bulk Data server",
                folder.display()
            ))),
            #[cfg(feature = "demo")]
            PrimarySource::Demo(demo) => {
                let demo = DemoServer::start(demo).await?;
                let client = demo.client(options).await?;
                Ok(Connection {
                    client,
                    demo: Some(demo),
                })
            }
        }
    }

    /// The session: makes a client of every server and opens the catalogs (no export, and no
    /// request the clients do not make when built).
    pub async fn build(mut self) -> Result<Session> {
        let mut options = self.config.limits.catalog_options(self.options.clone());
        if let Some(cache) = self.config.cache.location()? {
            options = cache.catalog_options(options);
        }
        // Views are tables of the default catalog.
        let mut views_dir = self.views_dir.take();
        let mut views = std::mem::take(&mut self.config.views)
            .into_iter()
            .map(|(name, view)| view.definition(&name))
            .collect::<Result<Vec<_>>>()?;
        let servers = std::mem::take(&mut self.config.servers);
        let primary = match &self.source {
            PrimarySource::Server => self.config.server.url.is_some() || servers.is_empty(),
            _ => true,
        };
        let memory_limit = self.memory_limit;
        #[cfg(feature = "cluster")]
        let cluster = self.cluster.take();
        let mut named = Vec::new();
        for (name, server) in servers {
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid || name == PRIMARY_CATALOG {
                return Err(Error::config(format!(
                    "[servers.{name}]: a catalog name is lower case letters, digits and _, and not fhir"
                )));
            }
            let server = self.network(server);
            let client_options = self.client_options(&server);
            named.push((name, server, client_options));
        }
        let mut catalogs: Vec<(String, Arc<dyn FhirSource>, CatalogOptions)> = Vec::new();
        #[cfg(feature = "demo")]
        let mut demo = None;
        if primary {
            let server = self.config.server.clone();
            let source: Arc<dyn FhirSource> = match &self.source {
                PrimarySource::Folder(folder) => {
                    if server.level.is_some() || !server.patient.is_empty() {
                        tracing::warn!(
                            "{}: a folder has no export level; level and patient are ignored",
                            folder.display()
                        );
                    }
                    Arc::new(LocalFolder::try_new(folder.clone())?)
                }
                _ => {
                    let connection = self.connect().await?;
                    let source = server.source(connection.client);
                    // The demo server's port changes every run, its population does not.
                    #[cfg(feature = "demo")]
                    let source = match connection.demo {
                        Some(server) => {
                            let named = source.with_name(server.source_name());
                            demo = Some(server);
                            named
                        }
                        None => source,
                    };
                    Arc::new(source)
                }
            };
            let options = server.catalog_options(options.clone());
            catalogs.push((PRIMARY_CATALOG.to_owned(), source, options));
        }
        for (name, server, client_options) in named {
            let client = server
                .clone()
                .connect(&format!("[servers.{name}]"), client_options)
                .await?;
            let source = server.source(client);
            let options = server.catalog_options(options.clone());
            catalogs.push((name, Arc::new(source), options));
        }
        let default = catalogs[0].0.clone();
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = memory_limit {
            runtime = runtime.with_memory_pool(catalog::memory_pool(limit));
        }
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(&default, catalog::DEFAULT_SCHEMA);
        let runtime = runtime.build_arc()?;
        #[cfg(feature = "cluster")]
        let ctx = match cluster {
            Some(cluster) => cluster.session(config, runtime),
            None => SessionContext::new_with_config_rt(config, runtime),
        };
        #[cfg(not(feature = "cluster"))]
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        for (name, source, mut own) in catalogs {
            if name == default {
                if let Some(dir) = views_dir.take() {
                    own = own.with_views(dir);
                }
                for view in std::mem::take(&mut views) {
                    own = own.with_view(view);
                }
            }
            let fhir = FhirCatalog::try_new(source, own).await?;
            ctx.register_catalog(name, Arc::new(fhir));
        }
        catalog::register_functions(&ctx, options);
        Ok(Session {
            ctx,
            #[cfg(feature = "demo")]
            demo,
        })
    }
}

/// A connected Bulk Data client, and the demo server behind it when one was started.
#[derive(Debug)]
#[non_exhaustive]
pub struct Connection {
    /// The client.
    pub client: BulkClient,
    /// The demo server the client talks to, kept alive as long as this is.
    #[cfg(feature = "demo")]
    #[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
    pub demo: Option<DemoServer>,
}

/// A session built by [`SessionBuilder`]: the [`SessionContext`], and the demo server its catalog
/// `fhir` reads when one was started (shut down when this is dropped).
pub struct Session {
    ctx: SessionContext,
    #[cfg(feature = "demo")]
    demo: Option<DemoServer>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("Session");
        debug.field("session_id", &self.ctx.session_id());
        debug.field("catalogs", &self.ctx.catalog_names());
        #[cfg(feature = "demo")]
        debug.field("demo", &self.demo);
        debug.finish()
    }
}

impl Session {
    /// The session context: catalogs, views and functions registered.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The demo server started for the catalog `fhir`, if any.
    #[cfg(feature = "demo")]
    #[cfg_attr(docsrs, doc(cfg(feature = "demo")))]
    pub fn demo(&self) -> Option<&DemoServer> {
        self.demo.as_ref()
    }
}

#[cfg(all(test, feature = "config"))]
mod tests {
    use super::*;

    #[test]
    fn the_readme_reference_parses() {
        // The block of the README's configuration reference, as users copy it.
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Configuration reference").unwrap()..];
        let start = section.find("```toml\n").unwrap() + "```toml\n".len();
        let block = &section[start..start + section[start..].find("```").unwrap()];
        let config: Config = block.parse().unwrap();
        assert_eq!(config.server.parallel_downloads, Some(4));
        assert_eq!(config.server.token_origins, ["https://files.example.org"]);
        assert_eq!(
            config.server.level,
            Some(ExportLevel::Group("cohort-1".into()))
        );
        assert_eq!(config.server.patient, ["Patient/123"]);
        assert_eq!(config.server.strict_counts, Some(false));
        assert_eq!(config.server.retry_deadline, Some(Duration::from_secs(600)));
        assert_eq!(
            config.server.export_deadline,
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(config.server.max_polls_without_progress, Some(1000));
        let lake = Url::parse("s3://hospital-lake/fhirflight").unwrap();
        assert_eq!(
            config.cache.location().unwrap(),
            Some(CacheLocation::Store(lake))
        );
        // The README states the defaults of [limits].
        let (stated, default) = (
            config.limits.client_options(ClientOptions::default()),
            ClientOptions::default(),
        );
        assert_eq!(
            (
                stated.max_response_bytes,
                stated.max_file_bytes,
                stated.max_export_bytes,
                stated.max_gzip_ratio
            ),
            (
                default.max_response_bytes,
                default.max_file_bytes,
                default.max_export_bytes,
                default.max_gzip_ratio
            )
        );
        assert_eq!(
            (config.limits.max_line_bytes, config.limits.max_columns),
            (
                Some(crate::ndjson::DEFAULT_MAX_LINE_BYTES as u64),
                Some(crate::ndjson::DEFAULT_MAX_COLUMNS)
            )
        );
        let limits = Config::from_toml("[limits]\nmax_file_bytes = 1048576\n").unwrap();
        assert_eq!(limits.limits.max_file_bytes, Some(1 << 20));
        let error = Config::from_toml("[limits]\nmax_file_bytes = \"lots\"\n").unwrap_err();
        assert!(error.to_string().contains("expected a size"), "{error}");
        let error = Config::from_toml("[server]\nexport_deadline = \"1 day\"\n").unwrap_err();
        assert!(error.to_string().contains("expected a duration"), "{error}");
        assert_eq!(
            config.server.types.as_deref(),
            Some(&["Patient".to_owned(), "Condition".to_owned()][..])
        );
        assert_eq!(config.server.pushdown, Some(PushdownMode::Auto));
        let error = Config::from_toml("[server]\nlevel = \"group:\"\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("expected system, patient or group:<id>"),
            "{error}"
        );
        assert_eq!(config.views["patients"].columns.len(), 4);
        assert_eq!(
            config.servers["hospital_b"].url.as_ref().unwrap().as_str(),
            "https://fhir.hospital-b.example/r4"
        );
    }

    #[test]
    fn unknown_keys_are_refused() {
        let error = Config::from_toml("[server]\nurll = \"https://x\"\n").unwrap_err();
        assert!(
            error.to_string().contains("unknown field `urll`"),
            "{error}"
        );
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = ServerConfig {
            url: Some(Url::parse("https://file.example").unwrap()),
            scope: Some("system/*.read".into()),
            token_origins: vec!["https://a.example".into()],
            ..ServerConfig::default()
        };
        let flags = ServerConfig {
            url: Some(Url::parse("https://flag.example").unwrap()),
            ..ServerConfig::default()
        };
        let merged = flags.or(file);
        assert_eq!(merged.url.unwrap().as_str(), "https://flag.example/");
        assert_eq!(merged.scope.as_deref(), Some("system/*.read"));
        assert_eq!(merged.token_origins, ["https://a.example"]);
    }

    #[tokio::test]
    async fn a_bad_catalog_name_is_named_by_its_section() {
        let config =
            Config::from_toml("[servers.Hospital]\nurl = \"https://x.example\"\n").unwrap();
        let error = config.session().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "configuration: [servers.Hospital]: a catalog name is lower case letters, digits and _, and not fhir"
        );
    }

    #[tokio::test]
    async fn a_bad_view_is_named_by_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::from_toml(
            "[views.broken]\nresource = \"Patient\"\ncolumns = [[\"x\", \"name.(\"]]\n",
        )
        .unwrap();
        let error = SessionBuilder::new(config)
            .with_source(PrimarySource::Folder(dir.path().to_owned()))
            .build()
            .await
            .unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("configuration: [views.broken]: "),
            "{error}"
        );
    }
}

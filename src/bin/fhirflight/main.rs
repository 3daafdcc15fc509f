//! The `fhirflight` command line: parses flags, environment and the config file, then calls the
//! library. `fhirflight --help` lists the commands.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use datafusion::prelude::{SessionConfig, SessionContext};
use fhirflight::bulk::{
    BulkClient, ClientOptions, ExportLevel, ExportPhase, ExportProgress, ExportRequest,
    KickoffMethod,
};
use fhirflight::catalog::{
    self, BulkSource, CatalogOptions, ExportState, FhirCatalog, FhirSource, Freshness, LocalFolder,
    QueryRuntime,
};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::flight::{FhirExportControl, FlightSqlServer, Users};
use fhirflight::ndjson::TableMode;
use fhirflight::r4::check_type_name;
use fhirflight::smart::{SigningKey, SmartConfig};
use fhirflight::view::ViewDefinition;
use fhirflight::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Deserialize;
use tokio::sync::watch;
use url::Url;

#[derive(Debug, Parser)]
#[command(name = "fhirflight", version, about = "SQL over FHIR Bulk Data")]
struct Cli {
    /// Log filter, e.g. `info` or `fhirflight=debug` (default: `RUST_LOG`, else `info`).
    #[arg(long, global = true, env = "FHIRFLIGHT_LOG")]
    log: Option<String>,
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, global = true, env = "FHIRFLIGHT_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the FHIR catalog over Arrow Flight SQL (ADBC, JDBC/DBeaver, any Flight SQL client).
    Serve(ServeArgs),
    /// Run one SQL query over the FHIR catalog and print the result.
    Sql(SqlArgs),
    /// Run a Bulk Data export and write the NDJSON files and the manifest to a folder.
    Export(ExportArgs),
    /// Run the embedded demo Bulk Data server (synthetic FHIR R4 data, SMART Backend Services).
    DemoServer(DemoServerArgs),
}

/// Which FHIR server to talk to and how to authenticate.
#[derive(Debug, Args)]
struct ServerArgs {
    /// Start the embedded demo Bulk Data server in-process and use it.
    #[arg(long, conflicts_with = "server")]
    demo: bool,
    /// Patients in the demo population.
    #[arg(long, default_value_t = 100)]
    demo_patients: usize,
    /// FHIR base URL of the Bulk Data server.
    #[arg(long, env = "FHIRFLIGHT_SERVER")]
    server: Option<Url>,
    /// SMART Backend Services client id (omit for an open server).
    #[arg(long, env = "FHIRFLIGHT_CLIENT_ID")]
    client_id: Option<String>,
    /// Private key: PEM (PKCS#1, PKCS#8, SEC1) or JWK/JWKS JSON.
    #[arg(long, env = "FHIRFLIGHT_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Key id (`kid`) when the key file does not name one.
    #[arg(long, env = "FHIRFLIGHT_KID")]
    kid: Option<String>,
    /// OAuth scope.
    #[arg(long, env = "FHIRFLIGHT_SCOPE")]
    scope: Option<String>,
    /// Token endpoint; discovered from the server when omitted.
    #[arg(long, env = "FHIRFLIGHT_TOKEN_ENDPOINT")]
    token_endpoint: Option<Url>,
    /// Extra CA bundle (PEM) for a private certificate authority (also for `[servers.<name>]`
    /// that set none).
    #[arg(long, env = "FHIRFLIGHT_CA_BUNDLE")]
    ca_bundle: Option<PathBuf>,
    /// Do not verify TLS certificates. Dangerous: logs a warning on every run.
    #[arg(long)]
    insecure_skip_tls_verify: bool,
    /// HTTP proxy for every request, to every server (a `[servers.<name>]` may set its own), e.g.
    /// `http://user:pw@proxy:3128` (default: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; hosts in NO_PROXY
    /// are always reached directly).
    #[arg(long)]
    proxy: Option<Url>,
    /// Files downloaded at once.
    #[arg(long)]
    parallel_downloads: Option<usize>,
    /// An origin besides the FHIR server's that gets the access token (repeatable), e.g.
    /// `https://files.example.org`; other origins are asked without it.
    #[arg(long = "token-origin", value_name = "ORIGIN")]
    token_origins: Vec<String>,
}

#[derive(Debug, Args)]
struct ExportArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Folder for the NDJSON files and `manifest.json`; an interrupted export resumes from it.
    #[arg(long)]
    out: PathBuf,
    /// Resource types (`_type`), comma separated; all when omitted.
    #[arg(long, value_delimiter = ',', value_parser = parse_type)]
    types: Vec<String>,
    /// `system`, `patient` or `group:<id>`.
    #[arg(long, default_value = "system", value_parser = parse_level)]
    level: ExportLevel,
    /// `_since` (FHIR instant).
    #[arg(long)]
    since: Option<String>,
    /// `_until` (FHIR instant).
    #[arg(long)]
    until: Option<String>,
    /// `_typeFilter`, repeatable, e.g. `Observation?code=8867-4`.
    #[arg(long)]
    type_filter: Vec<String>,
    /// `_elements`, comma separated.
    #[arg(long, value_delimiter = ',')]
    elements: Vec<String>,
    /// `patient` references (`Patient/123`), comma separated (sent by POST).
    #[arg(long, value_delimiter = ',')]
    patient: Vec<String>,
    /// `includeAssociatedData`, comma separated.
    #[arg(long, value_delimiter = ',')]
    include_associated_data: Vec<String>,
    /// `_outputFormat`.
    #[arg(long)]
    output_format: Option<String>,
    /// Kick off by POST with a `Parameters` body (default: GET unless a parameter needs POST).
    #[arg(long)]
    post: bool,
}

/// Where the tables come from and how they are kept.
#[derive(Debug, Args)]
struct CatalogArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// A folder of NDJSON(.gz) files from an earlier export instead of a server.
    #[arg(long, conflicts_with_all = ["server", "demo"])]
    folder: Option<PathBuf>,
    /// Snapshot cache folder (default: the user's cache folder).
    #[arg(long, env = "FHIRFLIGHT_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// How old a snapshot may be before a query exports again: `always`, `never` or an age
    /// such as `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h")]
    freshness: Freshness,
    /// Nested tables (Struct/List columns) instead of the flattened ones.
    #[arg(long)]
    nested: bool,
    /// A folder of SQL on FHIR ViewDefinition JSON files: each becomes a table named after it.
    #[arg(long, env = "FHIRFLIGHT_VIEWS")]
    views: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SqlArgs {
    /// The SQL statement; tables are resource types (`Patient`, `Condition`, ...).
    query: String,
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Export again before the query, whatever the snapshot's age.
    #[arg(long)]
    refresh: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    format: OutputFormat,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OutputFormat {
    Table,
    Csv,
    Json,
    Parquet,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    catalog: CatalogArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FHIRFLIGHT_LISTEN")]
    listen: SocketAddr,
    /// Users as `name:password` pairs separated by commas.
    #[arg(long, env = "FHIRFLIGHT_USERS", hide_env_values = true)]
    users: Option<String>,
    /// Allow clients without credentials (only on a loopback address).
    #[arg(long)]
    anonymous: bool,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DemoServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Patients in the synthetic population.
    #[arg(long, default_value_t = 100)]
    patients: usize,
    /// Seed of the generator (same seed and size, same data).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Resources per output file.
    #[arg(long)]
    page_size: Option<usize>,
    /// Folder to write the demo client's private keys to (default: a temporary folder).
    #[arg(long)]
    keys_dir: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key. Clients need the issuing
    /// CA (`--ca-bundle`), e.g. `tests/fixtures/tls/ca.pem` for the test certificate there.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

/// The config file: every flag's default, by command.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    server: ServerConfig,
    /// More FHIR servers, each served as the catalog of its name (`[servers.<name>]`).
    #[serde(default)]
    servers: BTreeMap<String, ServerConfig>,
    #[serde(default)]
    views: std::collections::BTreeMap<String, ViewConfig>,
}

/// `[views.<name>]` in the config file: the notebook's shorthand, a table of `[column, FHIRPath]`
/// pairs over one resource type.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ViewConfig {
    resource: String,
    columns: Vec<(String, String)>,
}

/// `[server]` and `[servers.<name>]` in the config file: what `ServerArgs` takes by flag or
/// environment.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerConfig {
    url: Option<Url>,
    client_id: Option<String>,
    key_file: Option<PathBuf>,
    kid: Option<String>,
    scope: Option<String>,
    token_endpoint: Option<Url>,
    ca_bundle: Option<PathBuf>,
    proxy: Option<Url>,
    parallel_downloads: Option<usize>,
    #[serde(default)]
    token_origins: Vec<String>,
}

impl Config {
    fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        toml::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: {}", path.display(), e.message())))
    }
}

/// A resource type name ([`check_type_name`]): a typo or a path is refused before any request.
fn parse_type(text: &str) -> std::result::Result<String, String> {
    check_type_name(text)
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

fn parse_level(text: &str) -> std::result::Result<ExportLevel, String> {
    match text {
        "system" => Ok(ExportLevel::System),
        "patient" => Ok(ExportLevel::Patient),
        _ => match text.strip_prefix("group:") {
            Some(id) if !id.is_empty() => Ok(ExportLevel::Group(id.to_owned())),
            _ => Err(format!("`{text}`: expected system, patient or group:<id>")),
        },
    }
}

/// The session every query runs in: the FHIR catalog `fhir` (flags, environment, `[server]`)
/// and one catalog per `[servers.<name>]`, all with the schema `fhir`. The default catalog is
/// `fhir` (else the first named server), so `SELECT * FROM Patient` works. Holds the demo server
/// when `--demo` started one.
struct Session {
    ctx: SessionContext,
    _demo: Option<DemoServer>,
}

impl CatalogArgs {
    async fn session(self, config: Config) -> Result<Session> {
        let mut options = CatalogOptions::default().with_freshness(self.freshness);
        if let Some(dir) = self.cache_dir {
            options = options.with_cache_dir(dir);
        }
        if self.nested {
            options = options.with_mode(TableMode::Nested);
        }
        // Views are tables of the default catalog.
        let mut viewed = options.clone();
        if let Some(dir) = self.views {
            viewed = viewed.with_views(dir);
        }
        for (name, view) in config.views {
            let columns: Vec<(&str, &str)> = view
                .columns
                .iter()
                .map(|(column, path)| (column.as_str(), path.as_str()))
                .collect();
            let definition = ViewDefinition::from_paths(&view.resource, &columns)
                .map_err(|e| Error::Config(format!("[views.{name}]: {e}")))?;
            viewed = viewed.with_view(definition.with_name(name));
        }
        let named = !config.servers.is_empty();
        let primary = self.folder.is_some()
            || self.server.demo
            || self.server.server.is_some()
            || config.server.url.is_some()
            || !named;
        // The network's settings hold for every server unless its table sets its own.
        let insecure = self.server.insecure_skip_tls_verify;
        let (proxy, ca_bundle) = (self.server.proxy.clone(), self.server.ca_bundle.clone());
        let mut catalogs = Vec::new();
        let mut demo = None;
        if primary {
            let source: Arc<dyn FhirSource> = match self.folder {
                Some(folder) => Arc::new(LocalFolder::try_new(folder)?),
                None => {
                    let connection = self.server.connect(config.server).await?;
                    demo = connection.demo;
                    Arc::new(BulkSource::new(connection.client))
                }
            };
            catalogs.push(("fhir".to_owned(), source));
        }
        for (name, server) in config.servers {
            let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !valid || name == "fhir" {
                return Err(Error::Config(format!(
                    "[servers.{name}]: a catalog name is lower case letters, digits and _, and not fhir"
                )));
            }
            let server = ServerConfig {
                proxy: server.proxy.or_else(|| proxy.clone()),
                ca_bundle: server.ca_bundle.or_else(|| ca_bundle.clone()),
                ..server
            };
            let client = server
                .connect(&format!("[servers.{name}]"), insecure)
                .await?;
            catalogs.push((name, Arc::new(BulkSource::new(client))));
        }
        let default = catalogs[0].0.clone();
        let ctx = SessionContext::new_with_config(
            SessionConfig::new()
                .with_information_schema(true)
                .with_default_catalog_and_schema(&default, catalog::DEFAULT_SCHEMA),
        );
        for (name, source) in catalogs {
            let options = if name == default { &viewed } else { &options };
            let fhir = FhirCatalog::try_new(source, options.clone()).await?;
            ctx.register_catalog(name, Arc::new(fhir));
        }
        catalog::register_functions(&ctx, options);
        Ok(Session { ctx, _demo: demo })
    }
}

async fn sql(args: SqlArgs, config: Config) -> Result<()> {
    let freshness = if args.refresh {
        Freshness::Always
    } else {
        args.catalog.freshness
    };
    let session = args.catalog.session(config).await?;
    // Ctrl-C ends the process as is: a running export's job and downloads stay in the cache's
    // staging folder, and the next run resumes them.
    let fhir = session.ctx.catalog("fhir");
    let fhir = fhir.as_ref().and_then(|c| c.downcast_ref::<FhirCatalog>());
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let reporter = fhir.map(|c| tokio::spawn(report_exports(c.clone(), stopped)));
    // Planned and run on query threads, whose stack holds the deepest statement accepted.
    let (ctx, query) = (session.ctx.clone(), args.query.clone());
    let batches = QueryRuntime::try_default()?
        .run(async move {
            let df = catalog::sql_with_freshness(&ctx, &query, freshness).await?;
            df.collect().await
        })
        .await;
    let _ = stop.send(());
    if let Some(reporter) = reporter {
        let _ = reporter.await;
    }
    let batches = batches?;
    let mut out: Box<dyn std::io::Write> = match &args.output {
        Some(path) => Box::new(std::fs::File::create(path).map_err(|e| Error::io(path, e))?),
        None => Box::new(std::io::stdout().lock()),
    };
    let io_error =
        |e: std::io::Error| Error::io(args.output.clone().unwrap_or("<stdout>".into()), e);
    match args.format {
        OutputFormat::Table => {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches)?;
            writeln!(out, "{table}").map_err(io_error)?;
        }
        OutputFormat::Csv => {
            let mut writer = datafusion::arrow::csv::Writer::new(out);
            for batch in &batches {
                writer.write(batch)?;
            }
        }
        OutputFormat::Json => {
            let mut writer = datafusion::arrow::json::LineDelimitedWriter::new(out);
            for batch in &batches {
                writer.write(batch)?;
            }
            writer.finish()?;
        }
        OutputFormat::Parquet => {
            let path = args
                .output
                .as_ref()
                .ok_or_else(|| Error::Config("--format parquet needs --output FILE".into()))?;
            let schema = batches
                .first()
                .map(|b| b.schema())
                .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
            let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
            let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(file, schema, None)?;
            for batch in &batches {
                writer.write(batch)?;
            }
            writer.close()?;
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs, config: Config) -> Result<()> {
    let users = match &args.users {
        Some(spec) => Users::parse(spec)?,
        None => Users::new(),
    };
    if users.is_empty() && !args.anonymous {
        return Err(Error::Config(
            "no users: pass --users name:password (or FHIRFLIGHT_USERS), or --anonymous on a loopback address".into(),
        ));
    }
    let scheme = if args.tls_cert.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let session = args.catalog.session(config).await?;
    let control = FhirExportControl::from_session(&session.ctx);
    let mut server = FlightSqlServer::new(session.ctx.clone())
        .with_users(users)
        .with_anonymous(args.anonymous)
        .with_export_control(Arc::new(control));
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        server = server.with_tls(cert, key);
    }
    let running = server.bind(args.listen).await?;
    let addr = running.local_addr();
    println!("fhirflight Flight SQL server listening on {scheme}://{addr}");
    println!(
        "  Python:  adbc_driver_flightsql.dbapi.connect(\"{scheme}://{addr}\", db_kwargs={{\"username\": ..., \"password\": ...}})"
    );
    println!(
        "  JDBC:    jdbc:arrow-flight-sql://{addr}?useEncryption={}",
        scheme == "grpc+tls"
    );
    println!("  catalogs: {}", session.ctx.catalog_names().join(", "));
    println!("  tables:   SELECT table_catalog, table_name FROM information_schema.tables");
    shutdown_signal().await?;
    tracing::info!("shutting down");
    running.shutdown().await
}

/// Ctrl-C, or SIGTERM on Unix (a service manager, a test harness).
async fn shutdown_signal() -> Result<()> {
    let failed = |e: std::io::Error| Error::Config(format!("waiting for a shutdown signal: {e}"));
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).map_err(failed)?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.map_err(failed),
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.map_err(failed)
}

/// A connected Bulk Data client, and the demo server behind it when `--demo` started one.
struct Connection {
    client: BulkClient,
    /// Kept alive as long as the client talks to it.
    demo: Option<DemoServer>,
}

impl ServerArgs {
    /// Flags and environment win over the config file.
    async fn connect(self, config: ServerConfig) -> Result<Connection> {
        let config = ServerConfig {
            url: self.server.or(config.url),
            client_id: self.client_id.or(config.client_id),
            key_file: self.key_file.or(config.key_file),
            kid: self.kid.or(config.kid),
            scope: self.scope.or(config.scope),
            token_endpoint: self.token_endpoint.or(config.token_endpoint),
            ca_bundle: self.ca_bundle.or(config.ca_bundle),
            parallel_downloads: self.parallel_downloads.or(config.parallel_downloads),
            proxy: self.proxy.or(config.proxy),
            token_origins: if self.token_origins.is_empty() {
                config.token_origins
            } else {
                self.token_origins
            },
        };
        let insecure = self.insecure_skip_tls_verify;
        if self.demo {
            let demo =
                DemoServer::start(DemoConfig::default().with_patients(self.demo_patients)).await?;
            let creds = demo.credentials();
            let key = SigningKey::from_jwk(creds.rs384().private_jwk(), None)?;
            let auth = SmartConfig::new(creds.client_id(), key);
            let options = config.client_options(insecure);
            let client = BulkClient::try_new(demo.base_url(), Some(auth), options).await?;
            return Ok(Connection {
                client,
                demo: Some(demo),
            });
        }
        let client = config.connect("FHIR server", insecure).await?;
        Ok(Connection { client, demo: None })
    }
}

impl ServerConfig {
    fn client_options(&self, insecure_skip_tls_verify: bool) -> ClientOptions {
        let mut options = ClientOptions::default()
            .with_danger_accept_invalid_certs(insecure_skip_tls_verify)
            .with_token_origins(self.token_origins.clone());
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

    /// A client for this server; `what` names it in errors (`FHIR server`, `[servers.x]`).
    async fn connect(self, what: &str, insecure_skip_tls_verify: bool) -> Result<BulkClient> {
        let options = self.client_options(insecure_skip_tls_verify);
        let base = self.url.ok_or_else(|| {
            Error::Config(format!(
                "{what}: no URL (pass --server URL or FHIRFLIGHT_SERVER, set url in the config file, or use --demo)"
            ))
        })?;
        let auth = match (self.client_id, self.key_file) {
            (Some(client_id), Some(key_file)) => {
                let key = SigningKey::from_file(&key_file, self.kid.as_deref())?;
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
                return Err(Error::Config(format!(
                    "{what}: SMART Backend Services needs both a client id and a key file"
                )));
            }
        };
        BulkClient::try_new(base, auth, options).await
    }
}

async fn export(args: ExportArgs, config: Config) -> Result<()> {
    let request = ExportRequest::new(args.level)
        .with_types(args.types)
        .with_type_filters(args.type_filter)
        .with_elements(args.elements)
        .with_patients(args.patient)
        .with_include_associated_data(args.include_associated_data)
        .with_method(if args.post {
            KickoffMethod::Post
        } else {
            KickoffMethod::Auto
        });
    let request = ExportRequest {
        since: args.since,
        until: args.until,
        output_format: args.output_format,
        ..request
    };
    let connection = args.server.connect(config.server).await?;
    let (progress, updates) = watch::channel(ExportProgress::default());
    let reporter = tokio::spawn(report_progress(updates));
    let runtime = tokio::runtime::Handle::current().metrics();
    let tasks_before = runtime.num_alive_tasks();
    let outcome = tokio::select! {
        outcome = connection.client.export_to_dir(&request, &args.out, &progress) => outcome,
        _ = tokio::signal::ctrl_c() => {
            // Dropping the export made its guard DELETE the job in a background task: let that
            // finish (bounded) before the process exits.
            eprintln!("interrupted: cancelling the export job on the server");
            reporter.abort();
            for _ in 0..100 {
                if runtime.num_alive_tasks() < tasks_before {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            return Err(Error::Cancelled);
        }
    };
    drop(progress);
    let _ = reporter.await;
    let outcome = outcome?;
    for warning in &outcome.warnings {
        tracing::warn!("server reported: {warning}");
    }
    let resources: u64 = outcome.files.iter().map(|f| f.lines).sum();
    let bytes: u64 = outcome.files.iter().map(|f| f.bytes).sum();
    println!(
        "exported {resources} resources in {} files ({:.1} MB), {} deletions, transactionTime {} -> {}",
        outcome.files.len(),
        bytes as f64 / 1e6,
        outcome.deleted.len(),
        outcome.manifest.transaction_time,
        args.out.display()
    );
    Ok(())
}

/// Shows the catalog's running exports until `stop`: a bar on a terminal, log lines otherwise.
async fn report_exports(catalog: FhirCatalog, mut stop: tokio::sync::oneshot::Receiver<()>) {
    let terminal = std::io::stderr().is_terminal();
    let mut bar: Option<ProgressBar> = None;
    let mut logged = std::collections::HashSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
        }
        let running: Vec<_> = catalog
            .exports()
            .into_iter()
            .filter(|e| e.state == ExportState::Running)
            .collect();
        let message = running
            .iter()
            .map(|e| {
                let p = &e.progress;
                let percent = p.percent.map(|p| format!(" {p:.0}%")).unwrap_or_default();
                format!(
                    "export {}: {}{percent}, {} files, {:.1} MB",
                    e.request.types.join(","),
                    p.phase,
                    p.files,
                    p.bytes as f64 / 1e6
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        match (&bar, terminal, running.is_empty()) {
            (Some(b), _, true) => {
                b.finish_and_clear();
                bar = None;
            }
            (Some(b), _, false) => b.set_message(message),
            (None, true, false) => {
                let b = ProgressBar::new_spinner();
                b.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                        .expect("a valid template"),
                );
                b.enable_steady_tick(Duration::from_millis(120));
                b.set_message(message);
                bar = Some(b);
            }
            (None, false, false) => {
                for e in &running {
                    if logged.insert((e.id, e.progress.phase.clone())) {
                        tracing::info!(
                            "export {}: {}",
                            e.request.types.join(","),
                            e.progress.phase
                        );
                    }
                }
            }
            (None, _, true) => {}
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// Shows an export's progress: a bar on a terminal, log lines otherwise.
async fn report_progress(mut updates: watch::Receiver<ExportProgress>) {
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut last_phase = None;
    while updates.changed().await.is_ok() {
        let p = updates.borrow_and_update().clone();
        let message = match p.phase {
            ExportPhase::KickOff => "kicking off the export".to_owned(),
            ExportPhase::Waiting => format!(
                "waiting for the server{}",
                p.server_progress
                    .as_deref()
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default()
            ),
            ExportPhase::Downloading => format!(
                "downloading: {}/{} files, {:.1} MB, {} resources",
                p.files_done,
                p.files_total,
                p.bytes_downloaded as f64 / 1e6,
                p.lines_downloaded
            ),
            ExportPhase::CleaningUp => "deleting the job on the server".to_owned(),
            ExportPhase::Done => "done".to_owned(),
        };
        match &bar {
            Some(bar) => bar.set_message(message),
            None if last_phase != Some(p.phase) => tracing::info!("{message}"),
            None => {}
        }
        last_phase = Some(p.phase);
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

async fn demo_server(args: DemoServerArgs) -> Result<()> {
    let mut config = DemoConfig::default()
        .with_patients(args.patients)
        .with_seed(args.seed);
    if let Some(page_size) = args.page_size {
        config = config.with_page_size(page_size);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let read = |path: &PathBuf| std::fs::read_to_string(path).map_err(|e| Error::io(path, e));
        config = config.with_tls(read(cert)?, read(key)?);
    }
    let server = DemoServer::bind(args.listen, config).await?;
    let keys_dir = match args.keys_dir {
        Some(dir) => dir,
        None => {
            std::env::temp_dir().join(format!("fhirflight-demo-{}", server.local_addr().port()))
        }
    };
    std::fs::create_dir_all(&keys_dir).map_err(|e| Error::io(&keys_dir, e))?;
    let creds = server.credentials();
    let mut key_files = Vec::new();
    for key in [creds.rs384(), creds.es384()] {
        let path = keys_dir.join(format!("demo-client-{}.jwk.json", key.alg()));
        write_private(&path, key.private_jwk())?;
        key_files.push(path);
    }
    println!("demo FHIR Bulk Data server: {}", server.base_url());
    println!("  client id:      {}", creds.client_id());
    println!("  token endpoint: {}", creds.token_endpoint());
    for path in &key_files {
        println!("  private key:    {}", path.display());
    }
    println!(
        "try: fhirflight export --server {} --client-id {} --key-file {} --types Patient,Condition --out ./export",
        server.base_url(),
        creds.client_id(),
        key_files[0].display()
    );
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::Config(format!("waiting for Ctrl-C: {e}")))?;
    server.shutdown().await;
    Ok(())
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).map_err(|e| Error::io(path, e))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::io(path, e))
}

fn init_logging(filter: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match filter {
        Some(filter) => EnvFilter::new(filter),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    let result = async {
        let config = Config::load(cli.config.as_deref())?;
        match cli.command {
            Command::Serve(args) => serve(args, config).await,
            Command::Sql(args) => sql(args, config).await,
            Command::Export(args) => export(args, config).await,
            Command::DemoServer(args) => demo_server(args).await,
        }
    }
    .await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

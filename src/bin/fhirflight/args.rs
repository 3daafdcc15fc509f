//! The command line's flags, and how they map onto the library's configuration model: flags win
//! over environment variables (clap's `env`), which win over the config file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use fhirflight::bulk::ExportLevel;
use fhirflight::catalog::{CatalogOptions, Freshness, PushdownMode};
use fhirflight::cluster::Cluster;
use fhirflight::config::{
    CacheConfig, CacheLocation, Config, PrimarySource, ServerConfig, SessionBuilder,
};
use fhirflight::demo::DemoConfig;
use fhirflight::flight::{ExportRate, Role};
use fhirflight::ndjson::TableMode;
use fhirflight::r4::check_type_name;
use url::Url;

use crate::output::{MaxRows, Output, OutputFormat, stdout_terminal_width};

#[derive(Debug, Parser)]
#[command(name = "fhirflight", version, about = "SQL over FHIR Bulk Data")]
pub(crate) struct Cli {
    /// Log filter, e.g. `info` or `fhirflight=debug` (default: `warn` with --quiet, else
    /// `RUST_LOG`, else `warn` for `sql` and `info` for the others).
    #[arg(long, global = true, env = "FHIRFLIGHT_LOG")]
    pub(crate) log: Option<String>,
    /// Log lines as `text`, or as `json` objects (one a line) for a service's log collector.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "FHIRFLIGHT_LOG_FORMAT")]
    pub(crate) log_format: LogFormat,
    /// No progress lines, and only warnings and errors in the log (warnings are always printed).
    #[arg(long, short, global = true)]
    pub(crate) quiet: bool,
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, global = true, env = "FHIRFLIGHT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum LogFormat {
    Text,
    Json,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Serve the FHIR catalog over Arrow Flight SQL (ADBC, JDBC/DBeaver, any Flight SQL client).
    #[command(after_help = "Examples:
  fhirflight serve --demo --users alice:wonderland
  fhirflight serve --server https://ehr.example.org/fhir --client-id ID --key-file key.jwks.json \\
      --users-file users.txt --listen 0.0.0.0:50051 --tls-cert cert.pem --tls-key key.pem")]
    Serve(ServeArgs),
    /// Run SQL over the FHIR catalog and print the results; without a query, the interactive
    /// shell.
    #[command(after_help = "Examples:
  fhirflight sql --demo \"SELECT gender, count(*) AS patients FROM Patient GROUP BY gender\"
  fhirflight sql --folder ./export --format csv --output patients.csv \"SELECT id, birthDate FROM Patient\"
  fhirflight sql --server https://ehr.example.org/fhir --client-id ID --key-file key.jwks.json
  fhirflight sql --demo -f report.sql")]
    Sql(SqlArgs),
    /// Run a Bulk Data export and write the NDJSON files and the manifest to a folder.
    #[command(after_help = "Examples:
  fhirflight export --demo --types Patient,Condition --out ./export
  fhirflight export --server https://ehr.example.org/fhir --client-id ID --key-file key.jwks.json \\
      --level group:cohort-1 --since 2024-01-01T00:00:00Z --out ./export")]
    Export(ExportArgs),
    /// Run the embedded demo Bulk Data server (synthetic FHIR R4 data, SMART Backend Services).
    DemoServer(DemoServerArgs),
    /// Manage the users file of `serve --users-file`.
    #[command(subcommand)]
    Users(UsersCommand),
    /// Look after the snapshot cache: what it holds (the default), what another engine reads,
    /// removing snapshots.
    Cache(CacheArgs),
    /// List the exports of a running `fhirflight serve` (its ListExports action): running and
    /// recently finished, with their progress, errors and warnings.
    Exports(ExportsArgs),
    /// Run a process of an Apache DataFusion Ballista cluster that `serve --cluster` and
    /// `sql --cluster` run their statements on (its scheduler, or one of its executors), or
    /// convert an export on it.
    #[command(
        subcommand,
        after_help = "Examples:
  fhirflight cluster scheduler --listen 0.0.0.0:50050
  fhirflight cluster executor --scheduler df://scheduler-host:50050 --listen 0.0.0.0:50052
  fhirflight cluster export --cluster df://scheduler-host:50050 --server https://ehr.example.org/fhir \\
      --client-id ID --key-file key.jwks.json --cache-dir s3://bucket/fhir --types Patient,Observation
  fhirflight serve --cluster df://scheduler-host:50050 --cache-dir s3://bucket/fhir --users-file users.txt"
    )]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
    /// The scheduler: splits the statements' plans into stages and hands their tasks to the
    /// executors. Prints `scheduler listening on df://HOST:PORT`, then runs until Ctrl-C or
    /// SIGTERM.
    Scheduler(SchedulerArgs),
    /// An executor: asks the scheduler for tasks, runs them (reading the tables' location with
    /// each cloud's standard credentials, `AWS_*`, `GOOGLE_*`, `AZURE_*`) and serves their
    /// results. Prints `executor listening on HOST:PORT`, then runs until Ctrl-C or SIGTERM.
    Executor(ExecutorArgs),
    /// Exports `--types` from the server and converts them on the cluster (`--cluster`): its
    /// executors fetch and convert the files, straight into the tables' location (`--cache-dir
    /// s3://...` or `--table-location`), and this process commits each type there once. Every
    /// machine with that location then reads the snapshots (`sql`, `serve`) without exporting.
    Export(Box<ClusterExportArgs>),
}

/// The catalog's arguments; its `--types` are the types exported.
#[derive(Debug, Args)]
pub(crate) struct ClusterExportArgs {
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:50050")]
    pub(crate) listen: SocketAddr,
    /// How long an executor may stay silent before its tasks run elsewhere.
    #[arg(long, value_parser = parse_duration, default_value = "180s")]
    pub(crate) executor_timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// The scheduler: `df://HOST:PORT`.
    #[arg(long, env = "FHIRFLIGHT_CLUSTER", value_parser = parse_cluster)]
    pub(crate) scheduler: Cluster,
    /// Address to serve task results on, to coordinators and other executors (port 0: any
    /// free port).
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub(crate) listen: SocketAddr,
    /// The host name or address others reach this executor at (default: the listening
    /// address, or this machine's host name when that is 0.0.0.0).
    #[arg(long)]
    pub(crate) host: Option<String>,
    /// Tasks run at once (default: one per core).
    #[arg(long)]
    pub(crate) task_slots: Option<usize>,
    /// Folder of the tasks' shuffle files (default: a temporary folder, removed on exit).
    #[arg(long)]
    pub(crate) work_dir: Option<PathBuf>,
    /// Memory the running tasks may hold at once, e.g. `4G`, or `none`; beyond it sorts, joins
    /// and aggregates spill to disk and the rest fails its task. Default: half the machine's
    /// memory.
    #[arg(long, value_parser = parse_memory_limit, env = "FHIRFLIGHT_MEMORY_LIMIT")]
    pub(crate) memory_limit: Option<MemoryLimit>,
}

/// A `--cluster` or `--scheduler`: `df://HOST:PORT`.
fn parse_cluster(text: &str) -> Result<Cluster, String> {
    Cluster::new(text).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct ExportsArgs {
    /// The server, as `serve` announces it: `grpc://HOST:PORT` or `grpc+tls://HOST:PORT`.
    #[arg(long, default_value = "grpc://127.0.0.1:50051")]
    pub(crate) connect: String,
    /// Log in as this user; the password is read from `FHIRFLIGHT_PASSWORD`, else from the
    /// first line of standard input. Without it, the call is anonymous.
    #[arg(long)]
    pub(crate) user: Option<String>,
    /// PEM file of the certificate authority that signed a `grpc+tls://` server's certificate.
    #[arg(long)]
    pub(crate) ca_cert: Option<PathBuf>,
    /// `table` or `json` (an array of objects).
    #[arg(long, value_enum, default_value_t = ExportsFormat::Table)]
    pub(crate) format: ExportsFormat,
}

/// `fhirflight exports --format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ExportsFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub(crate) struct CacheArgs {
    #[command(subcommand)]
    pub(crate) command: Option<CacheCommand>,
    /// Without a subcommand: `list`.
    #[command(flatten)]
    pub(crate) list: CacheListArgs,
}

#[derive(Debug, Subcommand)]
pub(crate) enum CacheCommand {
    /// List each source's current snapshots: type, rows, size, age, transaction time.
    List(CacheListArgs),
    /// Print what another engine reads for a type: its Delta table's folder (Spark, Trino,
    /// DuckDB `delta_scan`, Polars `read_delta`, Python `deltalake`), or with `--format lines`
    /// the Parquet files of its current snapshot.
    Path(CachePathArgs),
    /// List the versions of a type's Delta table, newest first: each an export, with when it
    /// was committed, its resources, `transactionTime` and snapshot (`--format json`: all the
    /// export's metadata: source, request, counts, warnings).
    History(CacheHistoryArgs),
    /// Remove a type's snapshots (with SOURCE TYPE or TYPE: in every source), a source's (with
    /// SOURCE), or all (without arguments). What a running process reads or exports into stays;
    /// it is no longer current, and `cache gc` removes it once unread.
    Clear(CacheClearArgs),
    /// Remove what nobody needs any more: snapshots superseded by newer ones (more than
    /// `--retention` ago) once nobody reads them, the folders of writers that are gone, and the downloads of stopped exports that no
    /// export holds and nothing touched for `--staging-older-than` (they can no longer be
    /// resumed). Never what a running process reads, writes or exports into.
    Gc(CacheGcArgs),
}

/// The cache folder of the `cache` subcommands.
#[derive(Debug, Args)]
pub(crate) struct CacheDir {
    /// Snapshot cache folder (default: the user's cache folder); for an object store's URL,
    /// the user's cache folder, which holds this machine's copy of its snapshots.
    #[arg(long, env = "FHIRFLIGHT_CACHE_DIR", value_parser = parse_cache)]
    cache_dir: Option<CacheLocation>,
}

impl CacheDir {
    pub(crate) fn root(&self) -> PathBuf {
        match &self.cache_dir {
            Some(CacheLocation::Folder(dir)) => dir.clone(),
            _ => fhirflight::snapshot::default_cache_dir(),
        }
    }

    /// Without `--cache-dir`, the config's `[cache] url`.
    fn or_config(&mut self, config: &Config) -> fhirflight::Result<()> {
        if self.cache_dir.is_none() {
            self.cache_dir = config.cache.location()?;
        }
        Ok(())
    }
}

impl CacheCommand {
    /// The command with its cache from the config's `[cache] url` unless `--cache-dir` names
    /// one.
    pub(crate) fn or_config(mut self, config: &Config) -> fhirflight::Result<Self> {
        match &mut self {
            CacheCommand::List(a) => a.cache.or_config(config)?,
            CacheCommand::Path(a) => a.table.cache.or_config(config)?,
            CacheCommand::History(a) => a.table.cache.or_config(config)?,
            CacheCommand::Clear(a) => a.cache.or_config(config)?,
            CacheCommand::Gc(a) => a.cache.or_config(config)?,
        }
        Ok(self)
    }
}

fn parse_cache(text: &str) -> Result<CacheLocation, String> {
    CacheLocation::parse(text).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub(crate) struct CacheListArgs {
    #[command(flatten)]
    pub(crate) cache: CacheDir,
    /// `text` (a table per source) or `json` (sources, snapshots, tables with their files).
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    pub(crate) format: ListFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum ListFormat {
    Text,
    Json,
}

/// One table of the cache, as `cache path` and `cache history` name it.
#[derive(Debug, Args)]
pub(crate) struct CacheTableArgs {
    #[command(flatten)]
    pub(crate) cache: CacheDir,
    /// `TYPE` (when one source holds it) or `SOURCE TYPE`. A source is named by its URL,
    /// folder or demo population, or by its cache folder's name, as `cache list` shows them.
    #[arg(value_name = "SOURCE|TYPE", num_args = 1..=2, required = true)]
    pub(crate) names: Vec<String>,
    /// The table: `flattened`, `nested`, or another mode `cache list --format json` shows.
    #[arg(long, default_value = "flattened")]
    pub(crate) mode: String,
}

#[derive(Debug, Args)]
pub(crate) struct CachePathArgs {
    #[command(flatten)]
    pub(crate) table: CacheTableArgs,
    /// `delta` (the Delta table's folder), `lines` (the current snapshot's Parquet files, one
    /// per line) or `duckdb` (a `SELECT * FROM read_parquet([...])` of them).
    #[arg(long, value_enum, default_value_t = PathFormat::Delta)]
    pub(crate) format: PathFormat,
}

#[derive(Debug, Args)]
pub(crate) struct CacheHistoryArgs {
    #[command(flatten)]
    pub(crate) table: CacheTableArgs,
    /// `text` (a table) or `json` (every version with its export's metadata).
    #[arg(long, value_enum, default_value_t = ListFormat::Text)]
    pub(crate) format: ListFormat,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum PathFormat {
    Delta,
    Lines,
    Duckdb,
}

#[derive(Debug, Args)]
pub(crate) struct CacheClearArgs {
    #[command(flatten)]
    pub(crate) cache: CacheDir,
    /// Nothing (all), `SOURCE`, `TYPE` (in every source) or `SOURCE TYPE`.
    #[arg(value_name = "SOURCE|TYPE", num_args = 0..=2)]
    pub(crate) names: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct CacheGcArgs {
    #[command(flatten)]
    pub(crate) cache: CacheDir,
    /// How long the downloads of a stopped export are kept for its resume.
    #[arg(long, value_parser = parse_duration, default_value = "7d")]
    pub(crate) staging_older_than: Duration,
    /// How long a superseded snapshot is kept (its version of the Delta tables readable), as
    /// `--retention` of `sql` and `serve`.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub(crate) retention: Duration,
}

#[derive(Debug, Subcommand)]
pub(crate) enum UsersCommand {
    /// Print the users-file line of a user (`name:role:hash`, Argon2id with a fresh salt),
    /// reading the password from the first line of standard input; append it to the file:
    /// `fhirflight users add carol --role read >> users.txt`.
    Add(UsersAddArgs),
}

#[derive(Debug, Args)]
pub(crate) struct UsersAddArgs {
    /// The user name (letters, digits and `._@-`).
    pub(crate) name: String,
    /// `read` (queries and browsing) or `admin` (also views, refreshes, cancelling exports).
    #[arg(long, default_value = "read")]
    pub(crate) role: Role,
}

/// Which FHIR server to talk to and how to authenticate.
#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Start the embedded demo Bulk Data server in-process and use it.
    #[arg(long, conflicts_with = "server", help_heading = "FHIR server")]
    pub(crate) demo: bool,
    /// Patients in the demo population.
    #[arg(long, default_value_t = 100, help_heading = "FHIR server")]
    pub(crate) demo_patients: usize,
    /// FHIR base URL of the Bulk Data server.
    #[arg(long, env = "FHIRFLIGHT_SERVER", help_heading = "FHIR server")]
    pub(crate) server: Option<Url>,
    /// SMART Backend Services client id (omit for an open server).
    #[arg(
        long,
        env = "FHIRFLIGHT_CLIENT_ID",
        help_heading = "SMART Backend Services"
    )]
    pub(crate) client_id: Option<String>,
    /// Private key: PEM (PKCS#1, PKCS#8, SEC1) or JWK/JWKS JSON.
    #[arg(
        long,
        env = "FHIRFLIGHT_KEY_FILE",
        help_heading = "SMART Backend Services"
    )]
    pub(crate) key_file: Option<PathBuf>,
    /// Key id (`kid`) when the key file does not name one.
    #[arg(long, env = "FHIRFLIGHT_KID", help_heading = "SMART Backend Services")]
    pub(crate) kid: Option<String>,
    /// OAuth scope.
    #[arg(
        long,
        env = "FHIRFLIGHT_SCOPE",
        help_heading = "SMART Backend Services"
    )]
    pub(crate) scope: Option<String>,
    /// Token endpoint; discovered from the server when omitted.
    #[arg(
        long,
        env = "FHIRFLIGHT_TOKEN_ENDPOINT",
        help_heading = "SMART Backend Services"
    )]
    pub(crate) token_endpoint: Option<Url>,
    /// Extra CA bundle (PEM) for a private certificate authority (also for `[servers.<name>]`
    /// that set none).
    #[arg(long, env = "FHIRFLIGHT_CA_BUNDLE", help_heading = "FHIR server")]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// Do not verify TLS certificates. Dangerous: logs a warning on every run.
    #[arg(long, help_heading = "FHIR server")]
    pub(crate) insecure_skip_tls_verify: bool,
    /// HTTP proxy for every request, to every server (a `[servers.<name>]` may set its own), e.g.
    /// `http://user:pw@proxy:3128` (default: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; hosts in NO_PROXY
    /// are always reached directly).
    #[arg(long, help_heading = "FHIR server")]
    pub(crate) proxy: Option<Url>,
    /// Files downloaded at once.
    #[arg(long, help_heading = "FHIR server")]
    pub(crate) parallel_downloads: Option<usize>,
    /// An origin besides the FHIR server's that gets the access token (repeatable), e.g.
    /// `https://files.example.org`; other origins are asked without it.
    #[arg(
        long = "token-origin",
        value_name = "ORIGIN",
        help_heading = "FHIR server"
    )]
    pub(crate) token_origins: Vec<String>,
}

#[derive(Debug, Args)]
pub(crate) struct ExportArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// Folder for the NDJSON files and `manifest.json` (written once the export is complete).
    /// An interrupted or failed export keeps its job on the server: the same command resumes
    /// it, `--cancel` cancels it.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Resource types (`_type`), comma separated; all when omitted.
    #[arg(long, value_delimiter = ',', value_parser = parse_type)]
    pub(crate) types: Vec<String>,
    /// `system`, `patient` or `group:<id>`.
    #[arg(long, default_value = "system")]
    pub(crate) level: ExportLevel,
    /// `_since` (FHIR instant).
    #[arg(long)]
    pub(crate) since: Option<String>,
    /// `_until` (FHIR instant).
    #[arg(long)]
    pub(crate) until: Option<String>,
    /// `_typeFilter`, repeatable, e.g. `Observation?code=8867-4`.
    #[arg(long)]
    pub(crate) type_filter: Vec<String>,
    /// `_elements`, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) elements: Vec<String>,
    /// `patient` references (`Patient/123`), comma separated (sent by POST).
    #[arg(long, value_delimiter = ',')]
    pub(crate) patient: Vec<String>,
    /// `includeAssociatedData`, comma separated.
    #[arg(long, value_delimiter = ',')]
    pub(crate) include_associated_data: Vec<String>,
    /// `_outputFormat`.
    #[arg(long)]
    pub(crate) output_format: Option<String>,
    /// Kick off by POST with a `Parameters` body (default: GET unless a parameter needs POST).
    #[arg(long)]
    pub(crate) post: bool,
    /// Fail when a file's line count differs from the manifest's `count` (default: download
    /// it once more, then keep it with a warning).
    #[arg(long)]
    pub(crate) strict_counts: bool,
    /// Ask for `allowPartialManifests`: files the server lists while the export runs are
    /// downloaded at once.
    #[arg(long)]
    pub(crate) allow_partial_manifests: bool,
    /// Cancel the export job saved in `--out` (DELETE it on the server) and remove its files,
    /// instead of exporting.
    #[arg(long)]
    pub(crate) cancel: bool,
}

/// Where the tables come from and how they are kept.
#[derive(Debug, Args)]
pub(crate) struct CatalogArgs {
    #[command(flatten)]
    pub(crate) server: ServerArgs,
    /// A folder of NDJSON(.gz) files from an earlier export instead of a server.
    #[arg(long, conflicts_with_all = ["server", "demo"], help_heading = "FHIR server")]
    pub(crate) folder: Option<PathBuf>,
    /// Snapshot cache folder (default: the user's cache folder), or an object store's URL
    /// (`s3://bucket/prefix`, `gs://...`, `az://...`): the snapshots' home there, as
    /// `--table-location` makes it, with this machine's copy in the user's cache folder.
    #[arg(long, env = "FHIRFLIGHT_CACHE_DIR", value_parser = parse_cache, help_heading = "Cache")]
    pub(crate) cache_dir: Option<CacheLocation>,
    /// How old a snapshot may be before a query exports again: `always`, `never` or an age
    /// such as `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h", help_heading = "Cache")]
    pub(crate) freshness: Freshness,
    /// How long an export's version of a table stays readable (`fhir_snapshot`, other engines'
    /// time travel) after a newer export supersedes it: `0s` (until no query reads it) or an
    /// age such as `1d`, `7d`.
    #[arg(long, value_parser = parse_duration, default_value = "0s", help_heading = "Cache")]
    pub(crate) retention: Duration,
    /// Where the types' Delta tables go, for other engines and machines: `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, `az://container/prefix` (credentials from each cloud's standard
    /// environment) or a folder (default: the cache folder). The cache keeps its own copy.
    #[arg(long, env = "FHIRFLIGHT_TABLE_LOCATION", value_parser = parse_location, help_heading = "Cache")]
    pub(crate) table_location: Option<url::Url>,
    /// Nested tables (Struct/List columns) instead of the flattened ones.
    #[arg(long, help_heading = "Tables and exports")]
    pub(crate) nested: bool,
    /// Fail an export with a bad NDJSON line (the error names the file and line; no snapshot
    /// is committed) instead of skipping the line with a warning.
    #[arg(long, help_heading = "Tables and exports")]
    pub(crate) strict: bool,
    /// A folder of SQL on FHIR ViewDefinition JSON files: each becomes a table named after it.
    #[arg(long, env = "FHIRFLIGHT_VIEWS", help_heading = "Tables and exports")]
    pub(crate) views: Option<PathBuf>,
    /// Export level: `system`, `patient` or `group:<id>` (default: the config's `level`, else
    /// system). Each level, group and patient list keeps its own snapshots.
    #[arg(long, help_heading = "Tables and exports")]
    pub(crate) level: Option<ExportLevel>,
    /// `patient` references (`Patient/123`), comma separated, that patient or group exports are
    /// restricted to (sent by POST).
    #[arg(long, value_delimiter = ',', help_heading = "Tables and exports")]
    pub(crate) patient: Vec<String>,
    /// The only resource types that are tables, comma separated (default: every resource type;
    /// browsing lists those the server declares and those exported).
    #[arg(long, value_delimiter = ',', value_parser = parse_type, help_heading = "Tables and exports")]
    pub(crate) types: Option<Vec<String>>,
    /// Which filters are pushed into exports: `auto` (those the server declares it supports),
    /// `on` or `off` (default: the config's `pushdown`, else auto).
    #[arg(long, help_heading = "Tables and exports")]
    pub(crate) pushdown: Option<PushdownMode>,
    /// Memory all statements may hold at once, e.g. `512M`, `4G` (K, M, G, T: powers of 1024),
    /// or `none`; beyond it sorts, joins and aggregates spill to disk and the rest fails with
    /// "Resources exhausted". Default: half the machine's memory.
    #[arg(long, value_parser = parse_memory_limit, env = "FHIRFLIGHT_MEMORY_LIMIT", help_heading = "Tables and exports")]
    pub(crate) memory_limit: Option<MemoryLimit>,
    /// Run statements on an Apache DataFusion Ballista cluster, `df://HOST:PORT` (its
    /// scheduler; see `fhirflight cluster`): exports and planning stay here, scans, joins and
    /// aggregates run on its executors. They read the tables at `--cache-dir s3://...` (or
    /// `--table-location`), and other files at their path here (a shared folder).
    #[arg(long, env = "FHIRFLIGHT_CLUSTER", value_parser = parse_cluster, help_heading = "Cluster")]
    pub(crate) cluster: Option<Cluster>,
}

/// A `--memory-limit`: bytes, or `None` for no limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MemoryLimit(pub(crate) Option<usize>);

fn parse_memory_limit(text: &str) -> Result<MemoryLimit, String> {
    if text.trim().eq_ignore_ascii_case("none") {
        return Ok(MemoryLimit(None));
    }
    fhirflight::size::parse_size(text)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .map(|bytes| MemoryLimit(Some(bytes)))
        .ok_or_else(|| format!("{text:?}: expected a size like 512M, 4G, or none"))
}

/// A `-c` command or a `-f` file of `sql`.
#[derive(Debug, Clone)]
pub(crate) enum Script {
    Command(String),
    File(PathBuf),
}

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// SQL statements, `;` between them; tables are resource types (`Patient`, `Condition`,
    /// ...). Without QUERY, -c or -f the statements are read from standard input: on a
    /// terminal, the interactive shell (`\?` lists its meta commands).
    pub(crate) query: Option<String>,
    /// SQL statements or a meta command line (`\d Patient`); repeatable, and run in the order
    /// of the command line with the -f files.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SQL",
        conflicts_with = "query"
    )]
    pub(crate) commands: Vec<String>,
    /// A file of SQL statements and meta command lines; repeatable, and run in the order of the
    /// command line with the -c commands.
    #[arg(
        short = 'f',
        long = "file",
        value_name = "FILE",
        conflicts_with = "query"
    )]
    pub(crate) files: Vec<PathBuf>,
    /// The -c commands and -f files in the order of the command line (set by [`SqlArgs::order_scripts`]).
    #[arg(skip)]
    pub(crate) scripts: Vec<Script>,
    /// The interactive shell's history file, written readable by its owner only (it holds
    /// statements, so patient ids) [default: fhirflight/history in the user's data folder,
    /// ~/.local/share on Linux].
    #[arg(long, value_name = "FILE", env = "FHIRFLIGHT_HISTORY")]
    pub(crate) history: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
    /// Export again before each statement, whatever the snapshot's age.
    #[arg(long)]
    pub(crate) refresh: bool,
    /// Types the statements will read, comma separated (`Patient,Condition`): brought up to
    /// date in ONE export before the first statement, as the notebook's one export of them did
    /// (statements that each read one type would otherwise export one at a time).
    #[arg(long, value_delimiter = ',', value_parser = parse_type, value_name = "TYPES")]
    pub(crate) prefetch: Vec<String>,
    /// Output format (default: table). Asked for, it is the whole result, however wide or long.
    #[arg(long, value_enum, help_heading = "Output")]
    pub(crate) format: Option<OutputFormat>,
    /// Write to this file instead of standard output (needed for parquet, and for arrow unless
    /// standard output is a file or a pipe).
    #[arg(long, help_heading = "Output")]
    pub(crate) output: Option<PathBuf>,
    /// Rows a table shows, or `inf`; the footer counts them all (default: 40 on a terminal, every
    /// row with --format, --output or a pipe).
    #[arg(long, value_name = "N|inf", help_heading = "Output")]
    pub(crate) maxrows: Option<MaxRows>,
}

impl SqlArgs {
    /// Sets [`SqlArgs::scripts`]: the -c commands and -f files in the order of the command line,
    /// as psql and duckdb run them, from the parser's `matches` of `sql`.
    pub(crate) fn order_scripts(&mut self, matches: &clap::ArgMatches) {
        let at = |id| matches.indices_of(id).into_iter().flatten();
        let commands = self.commands.iter().cloned().map(Script::Command);
        let files = self.files.iter().cloned().map(Script::File);
        let mut scripts: Vec<_> = at("commands")
            .zip(commands)
            .chain(at("files").zip(files))
            .collect();
        scripts.sort_by_key(|(index, _)| *index);
        self.scripts = scripts.into_iter().map(|(_, script)| script).collect();
    }

    /// What to write and where: the output flags, checked before any session or export.
    pub(crate) fn output(&self) -> fhirflight::Result<Output> {
        Output::new(
            self.format,
            self.output.clone(),
            self.maxrows,
            stdout_terminal_width(),
        )
    }
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FHIRFLIGHT_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Users as `name:password` pairs separated by commas, all admins: the quick form for a
    /// local or demo server (a password on the command line is visible to other local users;
    /// prefer --users-file or the environment variable).
    #[arg(long, env = "FHIRFLIGHT_USERS", hide_env_values = true)]
    pub(crate) users: Option<String>,
    /// The users file: `name:role:hash` lines made by `fhirflight users add`.
    #[arg(long, env = "FHIRFLIGHT_USERS_FILE", conflicts_with = "users")]
    pub(crate) users_file: Option<PathBuf>,
    /// Allow clients without credentials (only on a loopback address).
    #[arg(long)]
    pub(crate) anonymous: bool,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Longest time one call of a statement may take (planning with its export wait, or
    /// streaming its results): `30s`, `15m`, `2h`. Past it the client gets DEADLINE_EXCEEDED.
    /// Default: no limit.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) query_timeout: Option<Duration>,
    /// Statements running at once over all users (default: 8 per core); one more is refused
    /// with RESOURCE_EXHAUSTED.
    #[arg(long)]
    pub(crate) max_statements: Option<usize>,
    /// Statements one user may run at once (default: 2 per core).
    #[arg(long)]
    pub(crate) max_statements_per_user: Option<usize>,
    /// Connections open at once; one more is closed at once.
    #[arg(long, default_value_t = 512)]
    pub(crate) max_connections: usize,
    /// Record every statement, action and login as a JSON line in this file (appended; `-` for
    /// standard error).
    #[arg(long, env = "FHIRFLIGHT_AUDIT_LOG")]
    pub(crate) audit_log: Option<PathBuf>,
    /// Close a connection whose client sent nothing for this long (live clients answer the
    /// server's pings every 30 s).
    #[arg(long, value_parser = parse_duration, default_value = "2m")]
    pub(crate) idle_timeout: Duration,
    /// Exports one user may start upstream within a sliding period, as EXPORTS/PERIOD (`4/1m`,
    /// `20/1h`). A statement or refresh that would start one more gets RESOURCE_EXHAUSTED
    /// saying when the next may start; reading fresh snapshots or joining a running export is
    /// free.
    #[arg(long, default_value = "10/15m", value_name = "EXPORTS/PERIOD")]
    pub(crate) exports_per_user: ExportRate,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics (off by default). They hold counts
    /// and ages only (statements, errors by code, exports, snapshot ages, memory), no patient
    /// data, and ask for no credentials.
    #[arg(long, value_name = "HOST:PORT")]
    pub(crate) metrics_addr: Option<SocketAddr>,
}

/// A duration flag: `250ms`, `90s`, `15m`, `2h`, `1d` (a bare number is seconds).
/// A URL with a scheme (`s3://...`), or a folder path (made absolute).
fn parse_location(text: &str) -> Result<url::Url, String> {
    match url::Url::parse(text) {
        Ok(url) if url.scheme().len() > 1 => Ok(url),
        _ => std::path::absolute(text)
            .map_err(|e| e.to_string())
            .and_then(|p| {
                url::Url::from_directory_path(&p).map_err(|()| format!("{text}: no folder path"))
            }),
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    fhirflight::time::parse_duration(text)
        .ok_or_else(|| format!("{text:?}: expected a duration like 90s, 15m, 2h"))
}

#[derive(Debug, Args)]
pub(crate) struct DemoServerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Patients in the synthetic population.
    #[arg(long, default_value_t = 100)]
    pub(crate) patients: usize,
    /// Seed of the generator (same seed and size, same data).
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Resources per output file.
    #[arg(long)]
    pub(crate) page_size: Option<usize>,
    /// Folder to write the demo client's private keys to (default: a temporary folder).
    #[arg(long)]
    pub(crate) keys_dir: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); with --tls-key. Clients need the issuing
    /// CA (`--ca-bundle`), e.g. `tests/fixtures/tls/ca.pem` for the test certificate there.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
}

/// A resource type name ([`check_type_name`]): a typo or a path is refused before any request.
fn parse_type(text: &str) -> fhirflight::Result<String> {
    check_type_name(text).map(str::to_owned)
}

impl ServerArgs {
    /// The flags and environment as a `[server]` table: unset where not given.
    fn server_config(&self) -> ServerConfig {
        let mut server = ServerConfig::default();
        server.url = self.server.clone();
        server.client_id = self.client_id.clone();
        server.key_file = self.key_file.clone();
        server.kid = self.kid.clone();
        server.scope = self.scope.clone();
        server.token_endpoint = self.token_endpoint.clone();
        server.ca_bundle = self.ca_bundle.clone();
        server.proxy = self.proxy.clone();
        server.parallel_downloads = self.parallel_downloads;
        server.token_origins = self.token_origins.clone();
        server
    }

    /// The session of `config` with these flags: they win over the file's `[server]`; the
    /// network flags (`--proxy`, `--ca-bundle`, `--insecure-skip-tls-verify`) also hold for
    /// every `[servers.<name>]` that sets none.
    pub(crate) fn session_builder(self, mut config: Config) -> SessionBuilder {
        config.server = self.server_config().or(config.server);
        let builder = SessionBuilder::new(config)
            .with_danger_accept_invalid_certs(self.insecure_skip_tls_verify)
            .with_default_proxy(self.proxy)
            .with_default_ca_bundle(self.ca_bundle);
        if self.demo {
            let demo = DemoConfig::default().with_patients(self.demo_patients);
            return builder.with_source(PrimarySource::Demo(demo));
        }
        builder
    }
}

impl CatalogArgs {
    /// The session of `config` with these flags (see [`ServerArgs::session_builder`]); the
    /// catalog flags (`--level`, `--patient`, `--types`, `--pushdown`) win over `[server]`.
    /// Fails for a `--cache-dir` URL and a `--table-location` that differ.
    pub(crate) fn session_builder(self, mut config: Config) -> fhirflight::Result<SessionBuilder> {
        let mut flags = ServerConfig::default();
        flags.level = self.level;
        flags.patient = self.patient;
        flags.types = self.types;
        flags.pushdown = self.pushdown;
        config.server = flags.or(config.server);
        let mut options = CatalogOptions::default()
            .with_freshness(self.freshness)
            .with_retention(self.retention)
            .with_strict(self.strict);
        // `--cache-dir` wins over the file's `[cache] url`.
        let cache = match self.cache_dir {
            Some(cache) => Some(cache),
            None => config.cache.location()?,
        };
        config.cache = CacheConfig::default();
        let location = match cache {
            Some(CacheLocation::Folder(dir)) => {
                options = options.with_cache_dir(dir);
                self.table_location
            }
            Some(CacheLocation::Store(url)) => match self.table_location {
                Some(other) if other != url => {
                    return Err(fhirflight::Error::config(format!(
                        "--cache-dir {url} puts the tables there: --table-location {other} \
                         names another place"
                    )));
                }
                _ => Some(url),
            },
            None => self.table_location,
        };
        if let Some(location) = location {
            options = options.with_table_location(location);
        }
        if self.nested {
            options = options.with_mode(TableMode::Nested);
        }
        let mut builder = self
            .server
            .session_builder(config)
            .with_catalog_options(options);
        if let Some(folder) = self.folder {
            builder = builder.with_source(PrimarySource::Folder(folder));
        }
        if let Some(dir) = self.views {
            builder = builder.with_views_dir(dir);
        }
        if let Some(MemoryLimit(limit)) = self.memory_limit {
            builder = builder.with_memory_limit(limit);
        }
        Ok(builder.with_cluster(self.cluster))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn memory_limits_read_as_people_write_them() {
        let bytes = |text: &str| parse_memory_limit(text).map(|MemoryLimit(b)| b);
        assert_eq!(bytes("512M"), Ok(Some(512 << 20)));
        assert_eq!(bytes(" 4gib "), Ok(Some(4 << 30)));
        assert_eq!(bytes("2GB"), Ok(Some(2 << 30)));
        assert_eq!(bytes("1000"), Ok(Some(1000)));
        assert_eq!(bytes("none"), Ok(None));
        assert!(bytes("4X").unwrap_err().contains("expected a size"));
        assert!(bytes("99999999999T").is_err(), "overflow is refused");
    }
}

//! The command line's flags, and how they map onto the library's configuration model: flags win
//! over environment variables (clap's `env`), which win over the config file.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use fhirflight::bulk::ExportLevel;
use fhirflight::catalog::{CatalogOptions, Freshness};
use fhirflight::config::{Config, PrimarySource, ServerConfig, SessionBuilder};
use fhirflight::demo::DemoConfig;
use fhirflight::ndjson::TableMode;
use fhirflight::r4::check_type_name;
use url::Url;

use crate::output::OutputFormat;

#[derive(Debug, Parser)]
#[command(name = "fhirflight", version, about = "SQL over FHIR Bulk Data")]
pub(crate) struct Cli {
    /// Log filter, e.g. `info` or `fhirflight=debug` (default: `RUST_LOG`, else `info`).
    #[arg(long, global = true, env = "FHIRFLIGHT_LOG")]
    pub(crate) log: Option<String>,
    /// TOML configuration file (see the README's configuration reference).
    #[arg(long, global = true, env = "FHIRFLIGHT_CONFIG")]
    pub(crate) config: Option<PathBuf>,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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
pub(crate) struct ServerArgs {
    /// Start the embedded demo Bulk Data server in-process and use it.
    #[arg(long, conflicts_with = "server")]
    pub(crate) demo: bool,
    /// Patients in the demo population.
    #[arg(long, default_value_t = 100)]
    pub(crate) demo_patients: usize,
    /// FHIR base URL of the Bulk Data server.
    #[arg(long, env = "FHIRFLIGHT_SERVER")]
    pub(crate) server: Option<Url>,
    /// SMART Backend Services client id (omit for an open server).
    #[arg(long, env = "FHIRFLIGHT_CLIENT_ID")]
    pub(crate) client_id: Option<String>,
    /// Private key: PEM (PKCS#1, PKCS#8, SEC1) or JWK/JWKS JSON.
    #[arg(long, env = "FHIRFLIGHT_KEY_FILE")]
    pub(crate) key_file: Option<PathBuf>,
    /// Key id (`kid`) when the key file does not name one.
    #[arg(long, env = "FHIRFLIGHT_KID")]
    pub(crate) kid: Option<String>,
    /// OAuth scope.
    #[arg(long, env = "FHIRFLIGHT_SCOPE")]
    pub(crate) scope: Option<String>,
    /// Token endpoint; discovered from the server when omitted.
    #[arg(long, env = "FHIRFLIGHT_TOKEN_ENDPOINT")]
    pub(crate) token_endpoint: Option<Url>,
    /// Extra CA bundle (PEM) for a private certificate authority (also for `[servers.<name>]`
    /// that set none).
    #[arg(long, env = "FHIRFLIGHT_CA_BUNDLE")]
    pub(crate) ca_bundle: Option<PathBuf>,
    /// Do not verify TLS certificates. Dangerous: logs a warning on every run.
    #[arg(long)]
    pub(crate) insecure_skip_tls_verify: bool,
    /// HTTP proxy for every request, to every server (a `[servers.<name>]` may set its own), e.g.
    /// `http://user:pw@proxy:3128` (default: HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; hosts in NO_PROXY
    /// are always reached directly).
    #[arg(long)]
    pub(crate) proxy: Option<Url>,
    /// Files downloaded at once.
    #[arg(long)]
    pub(crate) parallel_downloads: Option<usize>,
    /// An origin besides the FHIR server's that gets the access token (repeatable), e.g.
    /// `https://files.example.org`; other origins are asked without it.
    #[arg(long = "token-origin", value_name = "ORIGIN")]
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
    #[arg(long, conflicts_with_all = ["server", "demo"])]
    pub(crate) folder: Option<PathBuf>,
    /// Snapshot cache folder (default: the user's cache folder).
    #[arg(long, env = "FHIRFLIGHT_CACHE_DIR")]
    pub(crate) cache_dir: Option<PathBuf>,
    /// How old a snapshot may be before a query exports again: `always`, `never` or an age
    /// such as `15m`, `1h`, `7d`.
    #[arg(long, default_value = "1h")]
    pub(crate) freshness: Freshness,
    /// Nested tables (Struct/List columns) instead of the flattened ones.
    #[arg(long)]
    pub(crate) nested: bool,
    /// A folder of SQL on FHIR ViewDefinition JSON files: each becomes a table named after it.
    #[arg(long, env = "FHIRFLIGHT_VIEWS")]
    pub(crate) views: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct SqlArgs {
    /// The SQL statement; tables are resource types (`Patient`, `Condition`, ...).
    pub(crate) query: String,
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
    /// Export again before the query, whatever the snapshot's age.
    #[arg(long)]
    pub(crate) refresh: bool,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub(crate) format: OutputFormat,
    /// Write to this file instead of standard output (required for parquet).
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    #[command(flatten)]
    pub(crate) catalog: CatalogArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:50051", env = "FHIRFLIGHT_LISTEN")]
    pub(crate) listen: SocketAddr,
    /// Users as `name:password` pairs separated by commas.
    #[arg(long, env = "FHIRFLIGHT_USERS", hide_env_values = true)]
    pub(crate) users: Option<String>,
    /// Allow clients without credentials (only on a loopback address).
    #[arg(long)]
    pub(crate) anonymous: bool,
    /// TLS certificate chain (PEM); with --tls-key.
    #[arg(long, requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,
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
    /// The session of `config` with these flags (see [`ServerArgs::session_builder`]).
    pub(crate) fn session_builder(self, config: Config) -> SessionBuilder {
        let mut options = CatalogOptions::default().with_freshness(self.freshness);
        if let Some(dir) = self.cache_dir {
            options = options.with_cache_dir(dir);
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
        builder
    }
}

//! The `fhirflight` command line: parses flags, environment and the config file, builds the
//! session with the library ([`fhirflight::config`]) and dispatches to the subcommand.
//! `fhirflight --help` lists the commands.

mod args;
mod cache;
mod commands;
mod output;
mod progress;
mod repl;
mod signal;

use clap::Parser;
use fhirflight::{Config, Result};

use crate::args::{Cli, Command};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log.as_deref());
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Interrupted (Ctrl-C): the command said what it keeps; 130 as a shell reports SIGINT.
        Err(fhirflight::Error::Cancelled) => std::process::ExitCode::from(130),
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = match &cli.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    match cli.command {
        Command::Serve(args) => commands::serve(args, config).await,
        Command::Sql(args) => commands::sql(args, config).await,
        Command::Export(args) => commands::export(args, config).await,
        Command::DemoServer(args) => commands::demo_server(args).await,
        Command::Users(command) => commands::users(command),
        Command::Cache(args) => cache::run(args),
    }
}

/// Logs to standard error, filtered by `--log` (`FHIRFLIGHT_LOG`), else `RUST_LOG`, else `info`.
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

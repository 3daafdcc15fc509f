//! The `fhirflight` command line: parses flags, environment and the config file, builds the
//! session with the library ([`fhirflight::config`]) and dispatches to the subcommand.
//! `fhirflight --help` lists the commands.

mod args;
mod cache;
mod commands;
mod exports;
mod output;
mod progress;
mod repl;
mod signal;

use clap::{CommandFactory as _, FromArgMatches as _};
use fhirflight::{Config, Result};

use crate::args::{Cli, Command, LogFormat};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let (Command::Sql(args), Some(("sql", sql))) = (&mut cli.command, matches.subcommand()) {
        args.order_scripts(sql);
    }
    init_logging(&cli);
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
    // The sessions' futures are large: on the heap, not on the main thread's stack.
    match cli.command {
        Command::Serve(args) => Box::pin(commands::serve(args, config)).await,
        Command::Sql(args) => Box::pin(commands::sql(args, config, cli.quiet)).await,
        Command::Export(args) => commands::export(args, config).await,
        Command::DemoServer(args) => commands::demo_server(args).await,
        Command::Users(command) => commands::users(command),
        Command::Cache(args) => cache::run(args, &config),
        Command::Exports(args) => exports::run(args).await,
        Command::Cluster(command) => Box::pin(commands::cluster(command, config)).await,
    }
}

/// Logs to standard error through the progress lines ([`progress::LogWriter`]), with colours on
/// a terminal only. The filter is `--log`, else `warn` with `--quiet`, else `RUST_LOG`, else the
/// command's: a successful `sql` shows its result and the progress line, nothing more.
fn init_logging(cli: &Cli) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    if cli.quiet {
        progress::bars().set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    // Other crates' information (deltalake's kernel tells every log replay) is not ours to show.
    let default = match cli.command {
        Command::Sql(_) => "warn",
        _ => "warn,fhirflight=info",
    };
    let filter = match cli.log.as_deref() {
        Some(filter) => EnvFilter::new(filter),
        None if cli.quiet => EnvFilter::new("warn"),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let log = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| progress::LogWriter)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => log.init(),
        LogFormat::Json => log.json().init(),
    }
}

//! One function per subcommand: each takes its flags and the config file, calls the library and
//! prints what the user asked for.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::prelude::SessionContext;
use fhirflight::bulk::{ExportProgress, ExportRequest, KickoffMethod};
use fhirflight::catalog::{FhirCatalog, Freshness};
use fhirflight::config::{Config, PRIMARY_CATALOG};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::flight::{AuditLog, FhirExportControl, FlightSqlServer, Users};
use fhirflight::{Error, Result};
use tokio::sync::watch;

use crate::args::{
    ClusterCommand, ClusterExportArgs, DemoServerArgs, ExportArgs, ServeArgs, SqlArgs, UsersCommand,
};
use crate::progress::{ExportsReport, print_warnings, report_progress};
use crate::repl::{Input, Shell, default_history};
use crate::signal::{ctrl_c, shutdown_signal, stop_snapshot_writes};

pub(crate) async fn sql(args: SqlArgs, config: Config, quiet: bool) -> Result<()> {
    // Before the session: a flag or a file that cannot work costs no export.
    let output = args.output()?.with_footer(!quiet);
    let input = Input::new(args.query, &args.scripts, args.output.is_some())?;
    if args.output.is_some() {
        // Created and removed again (it is not finished): a path that cannot be written fails
        // here; the statement creates it anew.
        drop(output.open()?);
    }
    let freshness = if args.refresh {
        Freshness::Always
    } else {
        args.catalog.freshness
    };
    let session = args.catalog.session_builder(config)?.build().await?;
    if !args.prefetch.is_empty() {
        prefetch(session.context(), &args.prefetch, freshness).await?;
    }
    let history = args.history.or_else(default_history);
    Shell::new(session, output, freshness, history)?
        .run(input)
        .await
}

/// `--prefetch`: `types` of the catalog `fhir` up to date in one export, its progress shown;
/// Ctrl-C keeps the export for the next run, as during a statement.
async fn prefetch(ctx: &SessionContext, types: &[String], freshness: Freshness) -> Result<()> {
    let fhir = FhirCatalog::all_in(ctx)
        .into_iter()
        .find(|(name, _)| name == PRIMARY_CATALOG)
        .map(|(_, fhir)| fhir)
        .ok_or_else(|| Error::config("--prefetch: there is no catalog fhir (no [server] url)"))?;
    let report = ExportsReport::start(ctx.clone());
    let fetched = tokio::select! {
        fetched = fhir.prefetch(types, Some(freshness)) => fetched.map(drop),
        _ = tokio::signal::ctrl_c() => {
            stop_snapshot_writes().await;
            Err(Error::Cancelled)
        }
    };
    report.finish().await;
    fetched
}

pub(crate) async fn serve(args: ServeArgs, config: Config) -> Result<()> {
    let users = match (&args.users, &args.users_file) {
        (Some(spec), _) => Users::parse(spec)?,
        (None, Some(path)) => Users::from_file(path)?,
        (None, None) => Users::new(),
    };
    if users.is_empty() && !args.anonymous {
        return Err(Error::config(
            "no users: pass --users-file FILE (lines from `fhirflight users add`), --users name:password, or --anonymous on a loopback address",
        ));
    }
    let scheme = if args.tls_cert.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let session = args.catalog.session_builder(config)?.build().await?;
    let control = FhirExportControl::from_session(session.context());
    let mut server = FlightSqlServer::new(session.context().clone())
        .with_users(users)
        .with_anonymous(args.anonymous)
        .with_export_control(Arc::new(control))
        .with_query_timeout(args.query_timeout)
        .with_max_connections(args.max_connections)
        .with_idle_timeout(args.idle_timeout)
        .with_exports_per_user(args.exports_per_user);
    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| Error::io("metrics listen address", e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| Error::io("metrics listener", e))?;
            server = server.with_metrics(listener);
            Some(addr)
        }
        None => None,
    };
    if let Some(max) = args.max_statements {
        server = server.with_max_statements(max);
    }
    if let Some(max) = args.max_statements_per_user {
        server = server.with_max_statements_per_user(max);
    }
    match args.audit_log.as_deref() {
        Some(path) if path == Path::new("-") => {
            server = server.with_audit_log(AuditLog::to_writer(std::io::stderr()))
        }
        Some(path) => server = server.with_audit_log(AuditLog::to_file(path)?),
        None => {}
    }
    if let (Some(cert), Some(key)) = (args.tls_cert, args.tls_key) {
        server = server.with_tls(cert, key);
    }
    // Listening for signals before announcing: one sent right after is a graceful stop.
    let stop = shutdown_signal()?;
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
    println!(
        "  catalogs: {}",
        session.context().catalog_names().join(", ")
    );
    println!("  tables:   SELECT table_catalog, table_name FROM information_schema.tables");
    if let Some(addr) = metrics {
        println!("  metrics:  http://{addr}/metrics");
    }
    stop.await;
    tracing::info!("shutting down; running exports are kept for the next start");
    let served = running.shutdown().await;
    stop_snapshot_writes().await;
    served
}

pub(crate) async fn export(args: ExportArgs, mut config: Config) -> Result<()> {
    if args.strict_counts {
        config.server.strict_counts = Some(true);
    }
    let connection = args.server.session_builder(config).connect().await?;
    let client = connection.client;
    if args.cancel {
        return match client.cancel_export(&args.out).await? {
            true => {
                println!("export job cancelled; {} cleared", args.out.display());
                Ok(())
            }
            false => Err(Error::config(format!(
                "{}: no export job to cancel",
                args.out.display()
            ))),
        };
    }
    let request = ExportRequest::new(args.level)
        .with_types(args.types)
        .with_type_filters(args.type_filter)
        .with_elements(args.elements)
        .with_patients(args.patient)
        .with_include_associated_data(args.include_associated_data)
        .with_allow_partial_manifests(args.allow_partial_manifests)
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
    let (progress, updates) = watch::channel(ExportProgress::default());
    let reporter = tokio::spawn(report_progress(updates));
    let outcome = tokio::select! {
        outcome = client.export_to_dir(&request, &args.out, &progress) => outcome,
        _ = tokio::signal::ctrl_c() => {
            // The job stays on the server and its state in the folder: an export is expensive,
            // and only an explicit cancel throws it away.
            reporter.abort();
            eprintln!(
                "interrupted: the export job is kept on the server; run the same command again to resume it, or cancel it with `fhirflight export --cancel --out {}`",
                args.out.display()
            );
            return Err(Error::Cancelled);
        }
    };
    drop(progress);
    let _ = reporter.await;
    let outcome = outcome?;
    print_warnings(&outcome.warnings);
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

pub(crate) async fn demo_server(args: DemoServerArgs) -> Result<()> {
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
    tracing::info!(
        "generating {} patients (seed {})...",
        args.patients,
        args.seed
    );
    let started = Instant::now();
    let server = DemoServer::bind(args.listen, config).await?;
    tracing::info!("generated in {:.1?}", started.elapsed());
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
    let (url, client_id, key_file) = (server.base_url(), creds.client_id(), &key_files[0]);
    println!("demo FHIR Bulk Data server: {url}");
    println!("  client id:      {client_id}");
    println!("  token endpoint: {}", creds.token_endpoint());
    for path in &key_files {
        println!("  private key:    {}", path.display());
    }
    // What to run next, in another terminal: the flags of this server, then the same as a
    // config file.
    let flags = format!(
        "--server {url} --client-id {client_id} --key-file {}{}",
        key_file.display(),
        if args.tls_cert.is_some() {
            " --ca-bundle <the CA of --tls-cert>"
        } else {
            ""
        }
    );
    println!("next, in another terminal:");
    println!("  fhirflight sql {flags} \"SELECT gender, count(*) FROM Patient GROUP BY gender\"");
    println!("  fhirflight serve {flags} --anonymous");
    println!("  fhirflight export {flags} --types Patient,Condition --out ./export");
    println!("or put the server in a config file (fhirflight --config FILE sql ...):");
    println!("  [server]");
    for (key, value) in [
        ("url", url.as_str()),
        ("client_id", client_id),
        ("key_file", key_file.display().to_string().as_str()),
    ] {
        println!("  {key} = {}", toml::Value::from(value));
    }
    ctrl_c().await?;
    server.shutdown().await;
    Ok(())
}

pub(crate) fn users(command: UsersCommand) -> Result<()> {
    match command {
        UsersCommand::Add(args) => {
            let mut password = String::new();
            std::io::stdin()
                .read_line(&mut password)
                .map_err(|e| Error::io("standard input", e))?;
            let password = password.trim_end_matches(['\r', '\n']);
            println!("{}", Users::entry(&args.name, password, args.role)?);
            Ok(())
        }
    }
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

/// `fhirflight cluster scheduler|executor`: one process of a Ballista cluster, until Ctrl-C or
/// SIGTERM.
/// `fhirflight cluster export`: `types` exported from the catalog `fhir`'s server and
/// converted on `--cluster`, committed at the tables' location.
async fn cluster_export(args: ClusterExportArgs, config: Config) -> Result<()> {
    let cluster = args.catalog.cluster.clone().ok_or_else(|| {
        Error::config("fhirflight cluster export: --cluster df://HOST:PORT names the cluster")
    })?;
    let types = args.catalog.types.clone().ok_or_else(|| {
        Error::config("fhirflight cluster export: --types names the types to export")
    })?;
    let session = args.catalog.session_builder(config)?.build().await?;
    let fhir = FhirCatalog::all_in(session.context())
        .into_iter()
        .find(|(name, _)| name == PRIMARY_CATALOG)
        .map(|(_, fhir)| fhir)
        .ok_or_else(|| Error::config("fhirflight cluster export: there is no [server] url"))?;
    let started = Instant::now();
    let committed = tokio::select! {
        committed = cluster.export(&fhir, &types) => committed?,
        _ = tokio::signal::ctrl_c() => return Err(Error::Cancelled),
    };
    for manifest in &committed {
        print_warnings(&manifest.warnings);
        let files = manifest.raw.len();
        let bytes: u64 = manifest.raw.iter().map(|r| r.bytes).sum();
        let at = manifest
            .tables
            .values()
            .find_map(|t| t.delta_table.as_ref());
        println!(
            "{}: {} resources in {files} files ({:.1} MB) converted on the cluster -> {}",
            manifest.resource_type,
            manifest.resources(),
            bytes as f64 / 1e6,
            at.map_or_else(String::new, ToString::to_string),
        );
    }
    println!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

pub(crate) async fn cluster(command: ClusterCommand, config: Config) -> Result<()> {
    use fhirflight::cluster::{ExecutorOptions, SchedulerOptions, serve_executor, serve_scheduler};
    use fhirflight::config::default_memory_limit;
    let bind = |addr| async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| Error::config_with(format!("listening on {addr}"), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::config_with(format!("listening on {addr}"), e))?;
        Ok::<_, Error>((listener, local))
    };
    let stop = shutdown_signal()?;
    let serving = match command {
        ClusterCommand::Export(args) => return cluster_export(*args, config).await,
        ClusterCommand::Scheduler(args) => {
            let (listener, local) = bind(args.listen).await?;
            let options = SchedulerOptions::default().with_executor_timeout(args.executor_timeout);
            println!("scheduler listening on df://{local}");
            futures::future::Either::Left(serve_scheduler(listener, options))
        }
        ClusterCommand::Executor(args) => {
            let (listener, local) = bind(args.listen).await?;
            let mut options = ExecutorOptions::new(args.scheduler);
            let host = args.host.or_else(|| {
                // Others cannot reach 0.0.0.0: the machine's name instead.
                local.ip().is_unspecified().then(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .map(|h| h.trim().to_owned())
                        .unwrap_or_else(|_| "localhost".into())
                })
            });
            if let Some(host) = host {
                options = options.with_host(host);
            }
            if let Some(slots) = args.task_slots {
                options = options.with_task_slots(slots);
            }
            if let Some(dir) = args.work_dir {
                options = options.with_work_dir(dir);
            }
            let limit = args
                .memory_limit
                .map_or(Some(default_memory_limit()), |m| m.0);
            options = options.with_memory_limit(limit);
            println!("executor listening on {local}");
            futures::future::Either::Right(serve_executor(listener, options))
        }
    };
    tokio::select! {
        served = serving => served,
        () = stop => Ok(()),
    }
}

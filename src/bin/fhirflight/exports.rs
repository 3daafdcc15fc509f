//! `fhirflight exports`: the `ListExports` action of a running `fhirflight serve`, as a table or
//! JSON, so that nobody needs to compile the project's proto to see what its exports do.

use std::io::IsTerminal as _;

use arrow_flight::Action;
use arrow_flight::sql::client::FlightSqlServiceClient;
use fhirflight::flight::proto::{ExportState, ExportStatus, ListExportsResult};
use fhirflight::{Error, Result};
use prost::Message as _;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

use crate::args::{ExportsArgs, ExportsFormat};

pub(crate) async fn run(args: ExportsArgs) -> Result<()> {
    let exports = list(&args).await?;
    match args.format {
        ExportsFormat::Json => {
            let rows: Vec<serde_json::Value> = exports.iter().map(json).collect();
            println!("{}", serde_json::Value::Array(rows));
        }
        ExportsFormat::Table => print!("{}", table(&exports)),
    }
    Ok(())
}

/// Logs in (when a user is given) and asks for the exports.
async fn list(args: &ExportsArgs) -> Result<Vec<ExportStatus>> {
    let failed = |what: &str, e: &dyn std::fmt::Display| {
        Error::config(format!("{}: {what}: {e}", args.connect))
    };
    let (tls, address) = match args.connect.split_once("://") {
        Some(("grpc", rest)) => (false, rest),
        Some(("grpc+tls", rest)) => (true, rest),
        _ => return Err(failed("not grpc://HOST:PORT", &"or grpc+tls://HOST:PORT")),
    };
    let scheme = if tls { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|e| failed("bad address", &e))?;
    if tls {
        fhirflight::flight::install_crypto_provider();
        let mut config = ClientTlsConfig::new();
        if let Some(path) = &args.ca_cert {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(config).map_err(|e| failed("TLS", &e))?;
    }
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| failed("cannot connect", &e))?;
    let mut client = FlightSqlServiceClient::new(channel);
    if let Some(user) = &args.user {
        let password = match std::env::var("FHIRFLIGHT_PASSWORD") {
            Ok(password) => password,
            Err(_) => {
                if std::io::stdin().is_terminal() {
                    eprint!("password for {user}: ");
                }
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .map_err(|e| Error::io("standard input", e))?;
                line.trim_end_matches(['\r', '\n']).to_owned()
            }
        };
        client
            .handshake(user, &password)
            .await
            .map_err(|e| failed("login refused", &e))?;
    }
    let action = Action {
        r#type: "ListExports".into(),
        body: Default::default(),
    };
    let mut request = tonic::Request::new(action);
    if let Some(token) = client.token() {
        let bearer = format!("Bearer {token}")
            .parse()
            .map_err(|e| failed("token", &e))?;
        request.metadata_mut().insert("authorization", bearer);
    }
    let mut results = client
        .inner_mut()
        .do_action(request)
        .await
        .map_err(|e| failed("ListExports", &e.message()))?
        .into_inner();
    let body = results
        .message()
        .await
        .map_err(|e| failed("ListExports", &e.message()))?
        .map(|r| r.body)
        .unwrap_or_default();
    let listed = ListExportsResult::decode(body).map_err(|e| failed("ListExports", &e))?;
    Ok(listed.exports)
}

fn state(export: &ExportStatus) -> &'static str {
    match export.state() {
        ExportState::Running => "running",
        ExportState::Downloading => "downloading",
        ExportState::Completed => "completed",
        ExportState::Failed => "failed",
        ExportState::Cancelled => "cancelled",
        _ => "unknown",
    }
}

fn started(export: &ExportStatus) -> String {
    let at = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(export.started_at_ms).unwrap_or(0));
    fhirflight::time::rfc3339(at)
}

fn json(export: &ExportStatus) -> serde_json::Value {
    let warnings: Vec<serde_json::Value> = export
        .warnings
        .iter()
        .map(|w| {
            serde_json::json!({"kind": w.kind, "resourceType": w.resource_type,
                "message": w.message, "count": w.count})
        })
        .collect();
    serde_json::json!({
        "id": export.id,
        "catalog": export.catalog,
        "resourceTypes": export.resource_types,
        "state": state(export),
        "progress": export.progress,
        "filesDone": export.files_done,
        "filesTotal": export.files_total,
        "bytesDownloaded": export.bytes_downloaded,
        "startedAt": started(export),
        "error": export.error,
        "warnings": warnings,
    })
}

/// One line per export, then its error and warnings indented below it.
fn table(exports: &[ExportStatus]) -> String {
    if exports.is_empty() {
        return "no exports\n".to_owned();
    }
    let mut out = format!(
        "{:<10} {:<11} {:<24} {:<8} {:>11} {:<20} TYPES\n",
        "ID", "STATE", "STARTED", "FILES", "BYTES", "PROGRESS"
    );
    for export in exports {
        let files = match export.files_total {
            0 => export.files_done.to_string(),
            total => format!("{}/{total}", export.files_done),
        };
        out += &format!(
            "{:<10} {:<11} {:<24} {:<8} {:>11} {:<20} {}\n",
            export.id,
            state(export),
            started(export),
            files,
            fhirflight::size::display_rounded(export.bytes_downloaded),
            export.progress,
            export.resource_types.join(",")
        );
        if !export.error.is_empty() {
            out += &format!("  error: {}\n", export.error);
        }
        for w in &export.warnings {
            out += &format!(
                "  warning: {}: {}: {}\n",
                w.resource_type, w.kind, w.message
            );
        }
    }
    out
}

//! Progress of exports on standard error: a spinner on a terminal, log lines otherwise.

use std::io::IsTerminal;
use std::time::Duration;

use fhirflight::bulk::{ExportPhase, ExportProgress};
use fhirflight::catalog::{ExportState, FhirCatalog};
use fhirflight::warning::Warning;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::sync::watch;

/// Shows the catalog's running exports until `stop`: a bar on a terminal, log lines otherwise.
pub(crate) async fn report_exports(
    catalog: FhirCatalog,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
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
                    if logged.insert((e.id, e.progress.phase)) {
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
    for export in catalog.exports() {
        print_warnings(&export.warnings);
    }
}

/// Prints each warning on standard error as `warning: <warning>`.
pub(crate) fn print_warnings(warnings: &[Warning]) {
    for warning in warnings {
        eprintln!("warning: {warning}");
    }
}

/// Shows an export's progress: a bar on a terminal, log lines otherwise.
pub(crate) async fn report_progress(mut updates: watch::Receiver<ExportProgress>) {
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

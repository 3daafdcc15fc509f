//! Signals: the end of `serve` and `demo-server`, and the interruption of `export`.

use std::time::Duration;

use fhirflight::{Error, Result};
use tokio::runtime::RuntimeMetrics;

/// Ctrl-C, or SIGTERM on Unix (a service manager, a test harness).
pub(crate) async fn shutdown_signal() -> Result<()> {
    let failed = |e: std::io::Error| Error::config_with("waiting for a shutdown signal", e);
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

/// Ctrl-C.
pub(crate) async fn ctrl_c() -> Result<()> {
    tokio::signal::ctrl_c()
        .await
        .map_err(|e| Error::config_with("waiting for Ctrl-C", e))
}

/// Waits, at most 10 s, until fewer than `before` tasks are alive on the runtime of `metrics`: a
/// dropped export's guard DELETEs the job in a background task, which should finish before the
/// process exits.
pub(crate) async fn let_background_tasks_finish(metrics: &RuntimeMetrics, before: usize) {
    for _ in 0..100 {
        if metrics.num_alive_tasks() < before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

//! Signals: the end of `serve` and `demo-server`.

use fhirflight::{Error, Result};

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

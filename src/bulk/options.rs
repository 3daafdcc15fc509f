//! Network settings of the export client.

use std::path::PathBuf;
use std::time::Duration;

use crate::smart::http::RetryPolicy;
use crate::{Error, Result};

/// How the export client talks to the network.
///
/// Proxies come from the usual environment variables (`HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY`,
/// `NO_PROXY`).
///
/// ```
/// use std::time::Duration;
/// use fhirflight::bulk::ClientOptions;
/// let options = ClientOptions::default()
///     .with_parallel_downloads(8)
///     .with_retry_after_bounds(Duration::from_secs(2), Duration::from_secs(60))
///     .with_ca_bundle("/etc/hospital/ca.pem");
/// ```
#[derive(Clone, Debug)]
pub struct ClientOptions {
    pub(crate) parallel_downloads: usize,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) read_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) ca_bundle: Option<PathBuf>,
    pub(crate) danger_accept_invalid_certs: bool,
    pub(crate) user_agent: String,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            parallel_downloads: 4,
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(120),
            retry: RetryPolicy::default(),
            ca_bundle: None,
            danger_accept_invalid_certs: false,
            user_agent: concat!("fhirflight/", env!("CARGO_PKG_VERSION")).into(),
        }
    }
}

impl ClientOptions {
    /// How many files download at once (default 4, at least 1).
    pub fn with_parallel_downloads(self, parallel_downloads: usize) -> Self {
        Self {
            parallel_downloads: parallel_downloads.max(1),
            ..self
        }
    }

    /// Time allowed to open a connection (default 30 s).
    pub fn with_connect_timeout(self, timeout: Duration) -> Self {
        Self {
            connect_timeout: timeout,
            ..self
        }
    }

    /// Time allowed for a whole kick-off, status or token request (default 5 min). File downloads
    /// have no total limit, only [`ClientOptions::with_read_timeout`].
    pub fn with_request_timeout(self, timeout: Duration) -> Self {
        Self {
            request_timeout: timeout,
            ..self
        }
    }

    /// Time allowed between two reads of a response (default 2 min).
    pub fn with_read_timeout(self, timeout: Duration) -> Self {
        Self {
            read_timeout: timeout,
            ..self
        }
    }

    /// Bounds of every wait: a server's `Retry-After` is clamped to them, and exponential backoff
    /// (when the server gives none) starts at `min` and stops growing at `max`. Default 1 s..2 min.
    pub fn with_retry_after_bounds(self, min: Duration, max: Duration) -> Self {
        Self {
            retry: RetryPolicy {
                min,
                max: max.max(min),
                ..self.retry
            },
            ..self
        }
    }

    /// Retries one request may use on 429, 5xx, transient errors and broken connections before
    /// the export fails (default 10).
    pub fn with_retry_budget(self, budget: u32) -> Self {
        Self {
            retry: RetryPolicy {
                budget,
                ..self.retry
            },
            ..self
        }
    }

    /// Trusts the certificate authorities in this PEM bundle besides the built-in ones.
    pub fn with_ca_bundle(self, path: impl Into<PathBuf>) -> Self {
        Self {
            ca_bundle: Some(path.into()),
            ..self
        }
    }

    /// Turns TLS certificate verification off. Dangerous: anyone on the path can read the data
    /// and the tokens. A warning is logged every time a client is built with it.
    pub fn with_danger_accept_invalid_certs(self, accept: bool) -> Self {
        Self {
            danger_accept_invalid_certs: accept,
            ..self
        }
    }

    /// The `User-Agent` header.
    pub fn with_user_agent(self, user_agent: impl Into<String>) -> Self {
        Self {
            user_agent: user_agent.into(),
            ..self
        }
    }

    /// The HTTP client these options describe.
    pub(crate) fn http_client(&self) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .user_agent(&self.user_agent)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout);
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::Config(format!(
                    "{}: not a PEM certificate bundle: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(Error::Config(format!(
                    "{}: no certificates in the bundle",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if self.danger_accept_invalid_certs {
            tracing::warn!(
                "TLS certificate verification is OFF (danger_accept_invalid_certs): \
                 data and tokens can be read by anyone between here and the server"
            );
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundle_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = ClientOptions::default()
            .with_ca_bundle(&empty)
            .http_client()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "configuration: {}: no certificates in the bundle",
                empty.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        let err = ClientOptions::default()
            .with_ca_bundle(&missing)
            .http_client()
            .unwrap_err();
        assert!(
            matches!(err, Error::Io { ref path, .. } if *path == missing),
            "{err}"
        );
        assert!(
            ClientOptions::default()
                .with_danger_accept_invalid_certs(true)
                .http_client()
                .is_ok()
        );
    }

    #[test]
    fn bounds_and_parallelism_stay_sane() {
        let options = ClientOptions::default()
            .with_parallel_downloads(0)
            .with_retry_after_bounds(Duration::from_secs(5), Duration::from_secs(1))
            .with_retry_budget(3);
        assert_eq!(options.parallel_downloads, 1);
        assert_eq!(
            (options.retry.min, options.retry.max, options.retry.budget),
            (Duration::from_secs(5), Duration::from_secs(5), 3)
        );
    }
}

//! Network settings of the export client.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::http::{RetryPolicy, redact_url};
use crate::{Error, Result};

/// How the export client talks to the network.
///
/// Proxies: without [`ClientOptions::with_proxy`], the usual environment variables apply, as
/// curl reads them: `HTTPS_PROXY` for `https://` URLs, `HTTP_PROXY` for `http://` ones,
/// `ALL_PROXY` for both, each also in lower case, and `NO_PROXY` (host names, domains,
/// addresses or networks, comma separated; `*` for all) for hosts reached directly.
///
/// ```
/// use std::time::Duration;
/// use fhirflight::bulk::ClientOptions;
/// let options = ClientOptions::default()
///     .with_parallel_downloads(8)
///     .with_retry_after_bounds(Duration::from_secs(2), Duration::from_secs(60))
///     .with_export_deadline(Duration::from_secs(6 * 3600))
///     .with_strict_counts(true)
///     .with_ca_bundle("/etc/hospital/ca.pem")
///     .with_proxy("http://proxy.hospital.example:3128".parse().unwrap());
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
    pub(crate) proxy: Option<ProxyUrl>,
    pub(crate) user_agent: String,
    pub(crate) token_origins: Vec<String>,
    pub(crate) strict_counts: bool,
    pub(crate) export_deadline: Duration,
    pub(crate) max_polls_without_progress: u32,
    pub(crate) max_response_bytes: u64,
    pub(crate) max_file_bytes: u64,
    pub(crate) max_export_bytes: u64,
    pub(crate) max_gzip_ratio: u64,
}

/// A proxy URL, whose password `Debug` does not show.
#[derive(Clone)]
pub(crate) struct ProxyUrl(Url);

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
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
            proxy: None,
            user_agent: concat!("fhirflight/", env!("CARGO_PKG_VERSION")).into(),
            token_origins: Vec::new(),
            strict_counts: false,
            export_deadline: Duration::from_secs(24 * 3600),
            max_polls_without_progress: 1000,
            max_response_bytes: crate::http::DEFAULT_MAX_RESPONSE_BYTES,
            max_file_bytes: 32 << 30,
            max_export_bytes: 1 << 40,
            max_gzip_ratio: 200,
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
    /// the export fails (default 10); see also [`with_retry_deadline`](Self::with_retry_deadline).
    pub fn with_retry_budget(self, budget: u32) -> Self {
        Self {
            retry: RetryPolicy {
                budget,
                ..self.retry
            },
            ..self
        }
    }

    /// Total time one request may spend retrying 429s, 5xx, transient errors and broken
    /// connections, besides the [retry budget](Self::with_retry_budget) (default 10 min).
    pub fn with_retry_deadline(self, deadline: Duration) -> Self {
        Self {
            retry: RetryPolicy {
                deadline,
                ..self.retry
            },
            ..self
        }
    }

    /// Total time one request may spend retrying connect-level failures (connection refused,
    /// no such host) before the error names the cause (default 5 s): a server that is down is
    /// reported at once.
    pub fn with_connect_retry_deadline(self, deadline: Duration) -> Self {
        Self {
            retry: RetryPolicy {
                connect_deadline: deadline,
                ..self.retry
            },
            ..self
        }
    }

    /// Time a whole export may take, from kick-off (or resume) to the last file (default 24 h).
    /// When it is reached the export fails naming this limit, and the job is kept on the server
    /// so that a later run resumes it.
    pub fn with_export_deadline(self, deadline: Duration) -> Self {
        Self {
            export_deadline: deadline,
            ..self
        }
    }

    /// Status polls in a row that may answer "in progress" without any progress (the same
    /// `X-Progress` text, no new files of a partial manifest) before the export fails naming
    /// this limit (default 1000, at least 1). The job is kept on the server.
    pub fn with_max_polls_without_progress(self, polls: u32) -> Self {
        Self {
            max_polls_without_progress: polls.max(1),
            ..self
        }
    }

    /// The largest JSON response read (a status, a manifest page, the CapabilityStatement, a
    /// token or discovery document), counted after decompression (default 64 MiB; a manifest
    /// of 10,000 files is about 2 MiB). A larger one fails the request naming this limit.
    pub fn with_max_response_bytes(self, max: u64) -> Self {
        Self {
            max_response_bytes: max,
            ..self
        }
    }

    /// The largest NDJSON file downloaded, decompressed (default 32 GiB): a server that
    /// streams without end fails the export naming this limit instead of filling the disk.
    pub fn with_max_file_bytes(self, max: u64) -> Self {
        Self {
            max_file_bytes: max,
            ..self
        }
    }

    /// The most bytes one export run downloads over all its files, decompressed (default
    /// 1 TiB).
    pub fn with_max_export_bytes(self, max: u64) -> Self {
        Self {
            max_export_bytes: max,
            ..self
        }
    }

    /// How many times its compressed size a gzip-encoded file may inflate to (default 200;
    /// FHIR NDJSON compresses 3x to 25x, a gzip bomb about 1000x). Checked once a file has
    /// inflated past 1 MiB, so that small files with long runs pass.
    pub fn with_max_gzip_ratio(self, ratio: u64) -> Self {
        Self {
            max_gzip_ratio: ratio.max(1),
            ..self
        }
    }

    /// Whether a file whose line count differs from the manifest's `count` fails the export
    /// (default: no). The specification makes `count` advisory: by default such a file is
    /// downloaded once more and then accepted with a
    /// [`CountMismatch`](crate::warning::WarningKind::CountMismatch) warning.
    pub fn with_strict_counts(self, strict: bool) -> Self {
        Self {
            strict_counts: strict,
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

    /// Sends every request (`http://` and `https://`, by `CONNECT`) through this HTTP proxy,
    /// whatever `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY` say; hosts in `NO_PROXY` are still
    /// reached directly. User and password in the URL authenticate to the proxy (Basic).
    pub fn with_proxy(self, proxy: Url) -> Self {
        Self {
            proxy: Some(ProxyUrl(proxy)),
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

    /// Origins besides the FHIR server's own that get the access token, e.g.
    /// `https://files.example.org` (`scheme://host[:port]`, https when the server is; checked by
    /// [`BulkClient::try_new`](super::BulkClient::try_new)). Status URLs, manifest pages and
    /// files on any other origin are requested without it, like the presigned storage URLs
    /// Bulk Data allows.
    pub fn with_token_origins<S: Into<String>>(self, origins: impl IntoIterator<Item = S>) -> Self {
        Self {
            token_origins: origins.into_iter().map(Into::into).collect(),
            ..self
        }
    }

    /// The HTTP clients these options describe: one that inflates gzip responses as they are
    /// read (JSON responses, whose inflated size is what is bounded), and one that hands them
    /// over compressed (file downloads, which bound the expansion too).
    pub(crate) fn http_clients(&self) -> Result<(reqwest::Client, reqwest::Client)> {
        if self.danger_accept_invalid_certs {
            tracing::warn!(
                "TLS certificate verification is OFF (danger_accept_invalid_certs): \
                 data and tokens can be read by anyone between here and the server"
            );
        }
        Ok((self.http_client(true)?, self.http_client(false)?))
    }

    fn http_client(&self, inflate: bool) -> Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder()
            .gzip(inflate)
            .user_agent(&self.user_agent)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .redirect(reqwest::redirect::Policy::custom(follow_redirect))
            // The previous URL may hold presigned-URL secrets: the next origin does not get it.
            .referer(false);
        if let Some(path) = &self.ca_bundle {
            let pem = std::fs::read(path)
                .map_err(|e| Error::config_with(CA_BUNDLE, Error::io(path, e)))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                Error::config_with(
                    format!(
                        "{CA_BUNDLE}: {}: not a PEM certificate bundle",
                        path.display()
                    ),
                    e,
                )
            })?;
            if certs.is_empty() {
                return Err(Error::config(format!(
                    "{CA_BUNDLE}: {}: no certificates in the bundle",
                    path.display()
                )));
            }
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some(ProxyUrl(proxy)) = &self.proxy {
            let bad = |e| Error::config_with(format!("proxy {}", redact_url(proxy)), e);
            let proxy_all = reqwest::Proxy::all(proxy.as_str()).map_err(bad)?;
            builder = builder.proxy(proxy_all.no_proxy(reqwest::NoProxy::from_env()));
            tracing::debug!(proxy = %redact_url(proxy), "requests go through the proxy");
        }
        if self.danger_accept_invalid_certs {
            builder = builder.danger_accept_invalid_certs(true);
        }
        builder
            .build()
            .map_err(|e| Error::config_with("HTTP client", e))
    }
}

/// How errors name the CA bundle: as the settings that give it.
const CA_BUNDLE: &str = "ca_bundle (--ca-bundle)";

/// Follows at most 10 redirects, none from https to plain http. A hop to another host or port
/// loses the `Authorization` header in reqwest itself (0.12 `redirect::remove_sensitive_headers`;
/// the integration test `the_token_goes_to_files_only_when_required_and_never_to_another_origin`
/// pins it); with downgrades refused, the one other change of origin left is http to https on the
/// same host and port, which exposes nothing new.
fn follow_redirect(attempt: reqwest::redirect::Attempt) -> reqwest::redirect::Action {
    let from_https = attempt
        .previous()
        .last()
        .is_some_and(|url| url.scheme() == "https");
    if from_https && attempt.url().scheme() == "http" {
        let to = redact_url(attempt.url());
        attempt.error(format!(
            "refused a redirect from https to plain http ({to})"
        ))
    } else if attempt.previous().len() > 10 {
        attempt.error("too many redirects")
    } else {
        attempt.follow()
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
            .http_clients()
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "configuration: ca_bundle (--ca-bundle): {}: no certificates in the bundle",
                empty.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        let err = ClientOptions::default()
            .with_ca_bundle(&missing)
            .http_clients()
            .unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "configuration: ca_bundle (--ca-bundle): {}: ",
                missing.display()
            )),
            "{err}"
        );
        assert!(
            ClientOptions::default()
                .with_danger_accept_invalid_certs(true)
                .http_clients()
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

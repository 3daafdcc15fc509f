//! [`DemoConfig`]: how a demo server is set up (population, paging, tokens, auth, TLS).

use std::time::Duration;

use serde_json::Value;

use crate::demo::tls::TlsIdentity;

/// How a demo server is set up. Consuming `with_*` setters.
///
/// ```
/// use std::time::Duration;
/// use fhirflight::demo::DemoConfig;
///
/// let config = DemoConfig::default().with_patients(5).with_page_size(100).with_token_lifetime(Duration::from_secs(2));
/// assert_eq!(config.patients(), 5);
/// ```
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub(super) patients: usize,
    pub(super) seed: u64,
    pub(super) page_size: usize,
    pub(super) manifest_page_size: usize,
    pub(super) token_lifetime: Duration,
    pub(super) require_auth: bool,
    pub(super) status_polls: u32,
    pub(super) retry_after: Duration,
    pub(super) clients: Vec<(String, Value)>,
    pub(super) tls: Option<TlsIdentity>,
}

impl Default for DemoConfig {
    /// 100 patients, seed 42, 5000 resources per file, 5-minute tokens, auth required, one
    /// in-progress status response (`Retry-After: 0`) before the manifest.
    fn default() -> Self {
        Self {
            patients: 100,
            seed: 42,
            page_size: 5000,
            manifest_page_size: usize::MAX,
            token_lifetime: Duration::from_secs(300),
            require_auth: true,
            status_polls: 1,
            retry_after: Duration::ZERO,
            clients: Vec::new(),
            tls: None,
        }
    }
}

impl DemoConfig {
    /// Number of generated patients.
    pub fn with_patients(self, patients: usize) -> Self {
        Self { patients, ..self }
    }

    /// Seed of the generator.
    pub fn with_seed(self, seed: u64) -> Self {
        Self { seed, ..self }
    }

    /// Resources per output file (at least 1).
    pub fn with_page_size(self, page_size: usize) -> Self {
        Self {
            page_size: page_size.max(1),
            ..self
        }
    }

    /// Files listed per manifest page (default: all on one page). With fewer, the complete
    /// manifest is split into pages linked by `link` rel=`next`, as servers with huge exports do.
    pub fn with_manifest_page_size(self, files: usize) -> Self {
        Self {
            manifest_page_size: files.max(1),
            ..self
        }
    }

    /// Lifetime of issued access tokens.
    pub fn with_token_lifetime(self, token_lifetime: Duration) -> Self {
        Self {
            token_lifetime,
            ..self
        }
    }

    /// Whether every FHIR call and file download needs a bearer token (the default), or the server
    /// is open.
    pub fn with_require_auth(self, require_auth: bool) -> Self {
        Self {
            require_auth,
            ..self
        }
    }

    /// How many status polls answer 202 (in progress) before the manifest.
    pub fn with_status_polls(self, status_polls: u32) -> Self {
        Self {
            status_polls,
            ..self
        }
    }

    /// The `Retry-After` sent with in-progress status responses (whole seconds).
    pub fn with_retry_after(self, retry_after: Duration) -> Self {
        Self {
            retry_after,
            ..self
        }
    }

    /// Registers another client by its public JWKS (JSON), next to the built-in demo client.
    pub fn with_client(mut self, client_id: impl Into<String>, jwks: Value) -> Self {
        self.clients.push((client_id.into(), jwks));
        self
    }

    /// Serves HTTPS with this certificate chain and private key (both PEM) instead of plain
    /// HTTP. With a certificate from a private certificate authority, this is the server a
    /// hospital network puts in front of its FHIR API (see `tests/fixtures/tls/`).
    pub fn with_tls(self, cert_chain_pem: impl Into<String>, key_pem: impl Into<String>) -> Self {
        Self {
            tls: Some(TlsIdentity {
                cert_chain_pem: cert_chain_pem.into(),
                key_pem: key_pem.into(),
            }),
            ..self
        }
    }

    /// Number of generated patients.
    pub fn patients(&self) -> usize {
        self.patients
    }

    /// Seed of the generator.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The name of the population, `demo:seed=<seed>,patients=<patients>`: what the data depends
    /// on (unlike the server's port), so it keys the snapshot store of a demo session and a
    /// second run with the same settings reads the first one's snapshots.
    ///
    /// ```
    /// use fhirflight::demo::DemoConfig;
    /// let config = DemoConfig::default().with_patients(5);
    /// assert_eq!(config.source_name(), "demo:seed=42,patients=5");
    /// ```
    pub fn source_name(&self) -> String {
        format!("demo:seed={},patients={}", self.seed, self.patients)
    }
}

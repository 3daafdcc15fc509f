//! Client assertions, token requests, discovery and the shared token cache.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::Method;
use reqwest::header::ACCEPT;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, OnceCell};
use url::Url;

use super::SigningKey;
use crate::error::BoxError;
use crate::http::{self, RetryPolicy, TokenSource, redact_url};
use crate::redacted::Redacted;
use crate::{Error, Result};

/// The client assertion type of SMART Backend Services (RFC 7523).
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// The CapabilityStatement extension that carries OAuth endpoints.
const OAUTH_URIS: &str = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris";
/// Assertion lifetime: the spec allows at most 5 minutes; one less leaves room for clock skew.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(240);
/// A token is renewed this long before it expires (at most half its lifetime), so no request
/// leaves with a dying token.
const REFRESH_MARGIN: Duration = Duration::from_secs(30);

/// SMART Backend Services settings of a registered client.
///
/// ```no_run
/// # fn main() -> fhirflight::Result<()> {
/// use fhirflight::smart::{SigningKey, SmartConfig};
/// let key = SigningKey::from_jwk_file("jwks.json", None)?;
/// let config = SmartConfig::new("my-client-id", key).with_scope("system/Patient.rs system/Observation.rs");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SmartConfig {
    /// The client id registered with the authorization server (`iss` and `sub` of the assertion).
    pub client_id: String,
    /// The private key that signs client assertions.
    pub key: SigningKey,
    /// The requested scope: `system/*.read` by default; v2 (`system/*.rs`) and per-type scopes work.
    pub scope: String,
    /// The token endpoint; when `None` it is discovered from the FHIR server.
    pub token_endpoint: Option<Url>,
    /// The JWKS URL sent as `jku` in the assertion header, for servers that fetch keys from it.
    pub jku: Option<Url>,
}

impl SmartConfig {
    /// Settings for `client_id` signing with `key`, scope `system/*.read`, endpoint discovered.
    pub fn new(client_id: impl Into<String>, key: SigningKey) -> Self {
        Self {
            client_id: client_id.into(),
            key,
            scope: "system/*.read".into(),
            token_endpoint: None,
            jku: None,
        }
    }

    /// Sets the requested scope.
    pub fn with_scope(self, scope: impl Into<String>) -> Self {
        Self {
            scope: scope.into(),
            ..self
        }
    }

    /// Sets the token endpoint, skipping discovery.
    pub fn with_token_endpoint(self, token_endpoint: Url) -> Self {
        Self {
            token_endpoint: Some(token_endpoint),
            ..self
        }
    }

    /// Sets the `jku` header of the assertion.
    pub fn with_jku(self, jku: Url) -> Self {
        Self {
            jku: Some(jku),
            ..self
        }
    }
}

/// A bearer token and when it expires. `Debug` never shows the token.
#[derive(Clone)]
pub struct AccessToken {
    secret: Redacted<Arc<str>>,
    expires_at: Instant,
    refresh_at: Instant,
    scope: Option<String>,
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("token", &self.secret)
            .field(
                "expires_in",
                &self.expires_at.saturating_duration_since(Instant::now()),
            )
            .field("scope", &self.scope)
            .finish()
    }
}

impl AccessToken {
    /// The token itself, for an `Authorization: Bearer` header. Keep it out of logs.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the server says the token expires.
    pub fn expires_at(&self) -> Instant {
        self.expires_at
    }

    /// The scope the server granted, when it said.
    pub fn scope(&self) -> Option<&str> {
        self.scope.as_deref()
    }

    fn is_fresh(&self) -> bool {
        Instant::now() < self.refresh_at
    }
}

/// Claims of a SMART Backend Services client assertion.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) struct AssertionClaims {
    pub(crate) iss: String,
    pub(crate) sub: String,
    pub(crate) aud: String,
    pub(crate) exp: u64,
    pub(crate) iat: u64,
    pub(crate) jti: String,
}

/// Signs a fresh client assertion for `token_endpoint`.
pub(crate) fn client_assertion(
    key: &SigningKey,
    client_id: &str,
    token_endpoint: &Url,
    jku: Option<&Url>,
) -> Result<String> {
    let mut header = jsonwebtoken::Header::new(key.algorithm());
    header.kid = Some(key.kid().to_string());
    header.jku = jku.map(Url::to_string);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let claims = AssertionClaims {
        iss: client_id.to_string(),
        sub: client_id.to_string(),
        aud: token_endpoint.to_string(),
        exp: now + ASSERTION_LIFETIME.as_secs(),
        iat: now,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    jsonwebtoken::encode(&header, &claims, key.encoding_key()).map_err(|e| {
        Error::auth_with(
            format!("cannot sign the client assertion with {}", key.alg()),
            e,
        )
    })
}

/// SMART Backend Services authorization for one FHIR server: a cheap-to-clone handle whose token
/// cache is shared by every clone, so concurrent requests reuse one token and a refresh happens
/// once (single flight), ahead of expiry or after a 401.
#[derive(Clone)]
pub struct SmartAuth {
    inner: Arc<Inner>,
}

/// Refuses a token endpoint the token may not come back from (see [`SmartAuth::try_new_with`]).
pub(crate) type EndpointCheck = Box<dyn Fn(&Url) -> Result<()> + Send + Sync>;

struct Inner {
    http: reqwest::Client,
    retry: RetryPolicy,
    /// The largest token or discovery response read.
    max_response_bytes: u64,
    config: SmartConfig,
    fhir_base: Url,
    /// Given, or discovered on first use.
    token_endpoint: OnceCell<Url>,
    endpoint_check: EndpointCheck,
    token: Mutex<Option<AccessToken>>,
}

impl fmt::Debug for SmartAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SmartAuth")
            .field("client_id", &self.inner.config.client_id)
            .field(
                "token_endpoint",
                &self.inner.token_endpoint.get().map(Url::as_str),
            )
            .field("scope", &self.inner.config.scope)
            .finish_non_exhaustive()
    }
}

impl SmartAuth {
    /// Authorization for the FHIR server at `fhir_base`, over `http`. Without an explicit token
    /// endpoint, it is discovered from `{fhir_base}/.well-known/smart-configuration`, falling back
    /// to the CapabilityStatement's oauth-uris extension.
    ///
    /// Does no network I/O: discovery and the first token happen on first use, so a caller that
    /// never needs the server (answers from a cache) never calls it, and a server that is down
    /// fails the first request, not the setup.
    pub async fn try_new(
        fhir_base: &Url,
        config: SmartConfig,
        http: reqwest::Client,
    ) -> Result<Self> {
        Ok(Self::try_new_with(
            fhir_base,
            config,
            http,
            RetryPolicy::default(),
            http::DEFAULT_MAX_RESPONSE_BYTES,
            Box::new(|_| Ok(())),
        ))
    }

    /// [`SmartAuth::try_new`] with a retry policy, a bound on response sizes, and
    /// `endpoint_check` run on the token endpoint (given or discovered) before any token request
    /// goes there.
    pub(crate) fn try_new_with(
        fhir_base: &Url,
        config: SmartConfig,
        http: reqwest::Client,
        retry: RetryPolicy,
        max_response_bytes: u64,
        endpoint_check: EndpointCheck,
    ) -> Self {
        let inner = Inner {
            http,
            retry,
            max_response_bytes,
            token_endpoint: OnceCell::new_with(config.token_endpoint.clone()),
            config,
            fhir_base: fhir_base.clone(),
            endpoint_check,
            token: Mutex::new(None),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The token endpoint: the one given, or the one discovered from the FHIR server (on the
    /// first call; concurrent callers share one discovery).
    pub async fn token_endpoint(&self) -> Result<Url> {
        let Inner {
            http,
            retry,
            max_response_bytes,
            config,
            fhir_base,
            token_endpoint,
            endpoint_check,
            ..
        } = &*self.inner;
        let endpoint = token_endpoint
            .get_or_try_init(|| async {
                let endpoint =
                    discover(http, retry, *max_response_bytes, fhir_base, &config.key).await?;
                tracing::debug!(token_endpoint = %redact_url(&endpoint), "SMART token endpoint discovered");
                Ok::<_, Error>(endpoint)
            })
            .await?;
        endpoint_check(endpoint)?;
        Ok(endpoint.clone())
    }

    /// A token valid for at least the refresh margin: the cached one, or a new one. Concurrent
    /// callers wait for the one request in flight instead of sending their own.
    pub async fn token(&self) -> Result<AccessToken> {
        let mut cached = self.inner.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| t.is_fresh()) {
            return Ok(token.clone());
        }
        // Boxed: the token request goes through the same `send` that calls `token`.
        let token = Box::pin(self.request_token()).await?;
        *cached = Some(token.clone());
        Ok(token)
    }

    /// Forgets `rejected` (a server answered 401 to it) so the next [`SmartAuth::token`] fetches
    /// a new one; a no-op when another task already replaced it.
    pub async fn invalidate(&self, rejected: &AccessToken) {
        self.refused(&rejected.secret).await;
    }

    async fn request_token(&self) -> Result<AccessToken> {
        let token_endpoint = &self.token_endpoint().await?;
        let Inner {
            http,
            retry,
            max_response_bytes,
            config,
            ..
        } = &*self.inner;
        // A fresh assertion (new jti) for every attempt: servers reject a replayed one.
        let response = http::send(http, retry, None, Method::POST, token_endpoint, |r| {
            let assertion = client_assertion(
                &config.key,
                &config.client_id,
                token_endpoint,
                config.jku.as_ref(),
            )?;
            let form = [
                ("grant_type", "client_credentials"),
                ("scope", config.scope.as_str()),
                ("client_assertion_type", ASSERTION_TYPE),
                ("client_assertion", assertion.as_str()),
            ];
            Ok(r.header(ACCEPT, "application/json").form(&form))
        })
        .await;
        let response = response.map_err(|e| Error::Token {
            message: "token request failed".into(),
            source: Some(Box::new(e)),
        })?;
        let url = redact_url(token_endpoint);
        let unreadable = |source: BoxError| Error::Token {
            message: format!("{url}: unreadable token response"),
            source: Some(source),
        };
        let body = http::read_body(token_endpoint, response, *max_response_bytes)
            .await
            .map_err(|e| unreadable(Box::new(e)))?;
        let body: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| unreadable(Box::new(e)))?;
        if !body.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Error::Token {
                message: format!("{url}: token_type {:?}, expected bearer", body.token_type),
                source: None,
            });
        }
        let lifetime = Duration::from_secs(body.expires_in.unwrap_or(300));
        let now = Instant::now();
        Ok(AccessToken {
            secret: Redacted(body.access_token.into()),
            expires_at: now + lifetime,
            refresh_at: now + lifetime - REFRESH_MARGIN.min(lifetime / 2),
            scope: body.scope,
        })
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
    scope: Option<String>,
}

/// Finds the token endpoint of the FHIR server at `base`.
async fn discover(
    http: &reqwest::Client,
    retry: &RetryPolicy,
    max_response_bytes: u64,
    base: &Url,
    key: &SigningKey,
) -> Result<Url> {
    let well_known = join(base, ".well-known/smart-configuration")?;
    let get_json = |url: Url| async move {
        let response = http::send(http, retry, None, Method::GET, &url, |r| {
            Ok(r.header(ACCEPT, "application/json"))
        })
        .await?;
        let body = http::read_body(&url, response, max_response_bytes).await?;
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| Error::protocol_with(redact_url(&url), "not JSON", e))
    };
    match get_json(well_known.clone()).await {
        Ok(config) => {
            if let Some(endpoint) = config["token_endpoint"].as_str() {
                if let Some(algs) =
                    config["token_endpoint_auth_signing_alg_values_supported"].as_array()
                    && !algs.iter().any(|a| a.as_str() == Some(&key.alg()))
                {
                    let algs: Vec<&str> = algs.iter().filter_map(|a| a.as_str()).collect();
                    tracing::warn!(
                        "the server lists signing algorithms {}; the key signs with {}",
                        algs.join(", "),
                        key.alg()
                    );
                }
                return parse_endpoint(&well_known, endpoint);
            }
        }
        // The server cannot be reached: asking it for its CapabilityStatement cannot help.
        Err(e @ (Error::Transport { .. } | Error::Tls { .. })) => return Err(e),
        Err(e) => {
            tracing::debug!("SMART configuration unavailable ({e}); trying the CapabilityStatement")
        }
    }
    let metadata = join(base, "metadata")?;
    let statement = get_json(metadata.clone()).await?;
    let endpoint = statement["rest"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|rest| {
            rest["security"]["extension"]
                .as_array()?
                .iter()
                .find(|e| e["url"] == OAUTH_URIS)?["extension"]
                .as_array()?
                .iter()
                .find(|e| e["url"] == "token")?["valueUri"]
                .as_str()
        });
    match endpoint {
        Some(endpoint) => parse_endpoint(&metadata, endpoint),
        None => Err(Error::config(format!(
            "no token endpoint: neither {} nor {} names one; give it explicitly",
            redact_url(&well_known),
            redact_url(&metadata)
        ))),
    }
}

fn parse_endpoint(source: &Url, endpoint: &str) -> Result<Url> {
    source.join(endpoint).map_err(|e| {
        Error::protocol_with(
            redact_url(source),
            format!("bad token endpoint {endpoint:?}"),
            e,
        )
    })
}

/// `base` joined with a relative `path`, `base` taken as a folder whether or not it ends in `/`.
pub(crate) fn join(base: &Url, path: &str) -> Result<Url> {
    let mut folder = base.clone();
    if !folder.path().ends_with('/') {
        folder.set_path(&format!("{}/", folder.path()));
    }
    folder
        .join(path)
        .map_err(|e| Error::config_with(format!("{base} + {path}"), e))
}

#[async_trait::async_trait]
impl TokenSource for SmartAuth {
    async fn bearer(&self) -> Result<Redacted<Arc<str>>> {
        Ok(self.token().await?.secret)
    }

    async fn refused(&self, rejected: &Redacted<Arc<str>>) {
        let mut cached = self.inner.token.lock().await;
        if cached
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(&t.secret, rejected))
        {
            *cached = None;
        }
    }
}

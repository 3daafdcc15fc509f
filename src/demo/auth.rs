//! SMART Backend Services on the demo server: the registered client's keys, the token endpoint
//! (client assertion verification) and bearer-token checks on protected calls.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rsa::pkcs8::DecodePrivateKey;
use rsa::traits::{PrivateKeyParts, PublicKeyParts};
use serde_json::{Value, json};
use url::Url;

use crate::redacted::Redacted;

/// Demo-only key pairs, shipped as fixtures: generating RSA-2048 in a debug build takes seconds, and
/// every test starts a server. They are public by design and only ever trusted by the demo server.
const RS384_PEM: &str = include_str!("keys/rs384.pem");
const ES384_PEM: &str = include_str!("keys/es384.pem");

/// Client id of the client every demo server registers.
pub const DEMO_CLIENT_ID: &str = "fhirflight-demo";

/// One private signing key of the demo client, in the two formats clients load.
#[derive(Debug, Clone)]
pub struct DemoKey {
    alg: &'static str,
    kid: &'static str,
    private_pem: Redacted<String>,
    private_jwk: Redacted<String>,
    public_jwk: Value,
}

impl DemoKey {
    /// The JWS algorithm: `RS384` or `ES384`.
    pub fn alg(&self) -> &str {
        self.alg
    }

    /// The key id registered with the server (the JWK `kid`).
    pub fn kid(&self) -> &str {
        self.kid
    }

    /// The private key as PKCS#8 PEM text.
    pub fn private_pem(&self) -> &str {
        &self.private_pem.0
    }

    /// The private key as JWK JSON text, with `kid` and `alg` (the SMART launcher's format).
    pub fn private_jwk(&self) -> &str {
        &self.private_jwk.0
    }

    /// The public JWK as registered on the server.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }
}

/// The client registered on a demo server: its id, keys and the token endpoint to use them on.
///
/// `Debug` never shows the private keys.
#[derive(Debug, Clone)]
pub struct DemoCredentials {
    client_id: String,
    token_endpoint: Url,
    rs384: DemoKey,
    es384: DemoKey,
}

impl DemoCredentials {
    pub(crate) fn new(token_endpoint: Url) -> Self {
        let (rs384, es384) = demo_keys().clone();
        Self {
            client_id: DEMO_CLIENT_ID.to_owned(),
            token_endpoint,
            rs384,
            es384,
        }
    }

    /// The registered client id (`iss` and `sub` of client assertions).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The token endpoint (`aud` of client assertions).
    pub fn token_endpoint(&self) -> &Url {
        &self.token_endpoint
    }

    /// The RS384 key.
    pub fn rs384(&self) -> &DemoKey {
        &self.rs384
    }

    /// The ES384 key.
    pub fn es384(&self) -> &DemoKey {
        &self.es384
    }

    /// A JWKS JSON text holding both private keys.
    pub fn private_jwks(&self) -> String {
        let keys: Vec<Value> = [&self.rs384, &self.es384]
            .iter()
            .map(|k| serde_json::from_str(k.private_jwk()).expect("fixture JWK is JSON"))
            .collect();
        json!({ "keys": keys }).to_string()
    }

    /// The public JWKS registered on the server.
    pub fn public_jwks(&self) -> Value {
        json!({ "keys": [self.rs384.public_jwk, self.es384.public_jwk] })
    }
}

/// The fixture keys, parsed once per process.
fn demo_keys() -> &'static (DemoKey, DemoKey) {
    static KEYS: OnceLock<(DemoKey, DemoKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let b64 = |n: &rsa::BigUint| URL_SAFE_NO_PAD.encode(n.to_bytes_be());
        let rsa = rsa::RsaPrivateKey::from_pkcs8_pem(RS384_PEM).expect("RS384 fixture");
        let public = json!({"kty": "RSA", "kid": "demo-rs384", "alg": "RS384", "use": "sig",
            "n": b64(rsa.n()), "e": b64(rsa.e())});
        let mut private = public.clone();
        let primes = rsa.primes();
        let extra = json!({"d": b64(rsa.d()), "p": b64(&primes[0]), "q": b64(&primes[1]),
            "dp": b64(rsa.dp().expect("precomputed")), "dq": b64(rsa.dq().expect("precomputed")),
            "qi": b64(&rsa.crt_coefficient().expect("two primes"))});
        merge(&mut private, extra);
        let rs384 = DemoKey {
            alg: "RS384",
            kid: "demo-rs384",
            private_pem: Redacted(RS384_PEM.to_owned()),
            private_jwk: Redacted(private.to_string()),
            public_jwk: public,
        };

        let ec = p384::SecretKey::from_pkcs8_pem(ES384_PEM).expect("ES384 fixture");
        let head = json!({"kid": "demo-es384", "alg": "ES384", "use": "sig"});
        let mut public: Value =
            serde_json::from_str(&ec.public_key().to_jwk_string()).expect("JWK");
        merge(&mut public, head.clone());
        let mut private: Value = serde_json::from_str(&ec.to_jwk_string()).expect("JWK");
        merge(&mut private, head);
        let es384 = DemoKey {
            alg: "ES384",
            kid: "demo-es384",
            private_pem: Redacted(ES384_PEM.to_owned()),
            private_jwk: Redacted(private.to_string()),
            public_jwk: public,
        };
        (rs384, es384)
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// A client the token endpoint accepts: its id and public keys.
#[derive(Debug, Clone)]
pub(crate) struct RegisteredClient {
    pub(crate) client_id: String,
    pub(crate) jwks: JwkSet,
}

impl RegisteredClient {
    pub(crate) fn new(client_id: String, jwks: &Value) -> crate::Result<Self> {
        let jwks = serde_json::from_value(jwks.clone()).map_err(|e| {
            crate::Error::config_with(format!("JWKS of demo client {client_id}"), e)
        })?;
        Ok(Self { client_id, jwks })
    }
}

/// An OAuth 2.0 error response (RFC 6749 section 5.2).
#[derive(Debug)]
pub(crate) struct OAuthError {
    pub(crate) error: &'static str,
    pub(crate) description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        Self {
            error,
            description: description.into(),
        }
    }

    /// 401 for client authentication failures, 400 for everything else (RFC 6749).
    pub(crate) fn status(&self) -> u16 {
        if self.error == "invalid_client" {
            401
        } else {
            400
        }
    }

    pub(crate) fn body(&self) -> Value {
        json!({"error": self.error, "error_description": self.description})
    }
}

/// An access token's grant: what it may read and until when.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    expires: SystemTime,
    scopes: Arc<[Scope]>,
}

impl Grant {
    /// Whether this grant may read resources of `resource_type`.
    pub(crate) fn can_read(&self, resource_type: &str) -> bool {
        self.scopes
            .iter()
            .any(|s| s.read && (s.resource_type == "*" || s.resource_type == resource_type))
    }
}

#[derive(Debug, Clone)]
struct Scope {
    resource_type: String,
    read: bool,
}

/// Parses one `system/` scope, SMART v1 (`.read`, `.write`, `.*`) or v2 (`.cruds` subsets).
fn parse_scope(scope: &str) -> Option<Scope> {
    let (resource_type, permissions) = scope.strip_prefix("system/")?.split_once('.')?;
    let type_ok = resource_type == "*" || crate::r4::is_resource_type(resource_type);
    let read = match permissions {
        "read" | "*" => true,
        "write" => false,
        p if !p.is_empty() && is_ordered_subset(p, "cruds") => p.contains('r'),
        _ => return None,
    };
    type_ok.then(|| Scope {
        resource_type: resource_type.to_owned(),
        read,
    })
}

/// `p` uses letters of `all` at most once each, in `all`'s order (SMART v2 `cruds`).
fn is_ordered_subset(p: &str, all: &str) -> bool {
    let mut rest = all.chars();
    p.chars().all(|c| rest.by_ref().any(|a| a == c))
}

/// The token endpoint's state: issued tokens and assertion ids already used.
#[derive(Default)]
pub(crate) struct TokenStore {
    tokens: HashMap<String, Grant>,
    used_jti: HashMap<(String, String), u64>,
}

impl fmt::Debug for TokenStore {
    /// Counts only: the tokens are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("tokens", &self.tokens.len())
            .field("used_jti", &self.used_jti.len())
            .finish()
    }
}

/// What the assertion must carry.
#[derive(Debug, serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    exp: u64,
    jti: String,
}

/// Longest lifetime SMART allows a client assertion (`exp` at most five minutes ahead).
const MAX_ASSERTION_LIFETIME: u64 = 300;
/// Clock skew tolerated on `exp`.
const LEEWAY: u64 = 10;

impl TokenStore {
    /// Handles a token request (form fields already decoded); returns the token response JSON.
    pub(crate) fn token_request(
        &mut self,
        form: &HashMap<String, String>,
        clients: &[RegisteredClient],
        token_endpoint: &Url,
        lifetime: Duration,
    ) -> Result<Value, OAuthError> {
        let field = |name: &str| {
            form.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
                OAuthError::new("invalid_request", format!("missing form field `{name}`"))
            })
        };
        let grant_type = field("grant_type")?;
        if grant_type != "client_credentials" {
            return Err(OAuthError::new(
                "unsupported_grant_type",
                format!("grant_type `{grant_type}` is not supported, use `client_credentials`"),
            ));
        }
        let assertion_type = field("client_assertion_type")?;
        if assertion_type != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
            return Err(OAuthError::new(
                "invalid_request",
                format!("client_assertion_type `{assertion_type}` is not supported"),
            ));
        }
        let scope_text = field("scope")?;
        let scopes: Vec<Scope> = scope_text
            .split_whitespace()
            .map(|s| {
                parse_scope(s).ok_or_else(|| {
                    OAuthError::new(
                        "invalid_scope",
                        format!("scope `{s}` is not a valid system scope"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        let claims = self.verify_assertion(field("client_assertion")?, clients, token_endpoint)?;

        let token = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let grant = Grant {
            expires: SystemTime::now() + lifetime,
            scopes: scopes.into(),
        };
        self.tokens.retain(|_, g| g.expires > SystemTime::now());
        self.tokens.insert(token.clone(), grant);
        tracing::debug!(client_id = %claims.iss, "demo server issued an access token");
        Ok(json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": lifetime.as_secs(),
            "scope": scope_text,
        }))
    }

    fn verify_assertion(
        &mut self,
        assertion: &str,
        clients: &[RegisteredClient],
        token_endpoint: &Url,
    ) -> Result<AssertionClaims, OAuthError> {
        let invalid = |msg: String| OAuthError::new("invalid_client", msg);
        let header = jsonwebtoken::decode_header(assertion)
            .map_err(|e| invalid(format!("client_assertion is not a JWT: {e}")))?;
        if header.typ.as_deref() != Some("JWT") {
            return Err(invalid(
                "client_assertion header `typ` must be `JWT`".into(),
            ));
        }
        if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
            return Err(invalid(format!(
                "client_assertion alg {:?} is not supported, use RS384 or ES384",
                header.alg
            )));
        }
        if let Some(jku) = &header.jku {
            return Err(invalid(format!(
                "jku `{jku}` is not registered for any client"
            )));
        }
        // The issuer names the client: read it unverified only to pick the registered keys.
        let unverified = jsonwebtoken::dangerous::insecure_decode::<Value>(assertion)
            .map_err(|e| invalid(format!("client_assertion claims: {e}")))?;
        let iss = unverified
            .claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let client = clients
            .iter()
            .find(|c| c.client_id == iss)
            .ok_or_else(|| invalid(format!("client_id `{iss}` is not registered")))?;
        let keys: Vec<&Jwk> = match &header.kid {
            Some(kid) => client.jwks.find(kid).into_iter().collect(),
            None => client.jwks.keys.iter().collect(),
        };
        if keys.is_empty() {
            return Err(invalid(format!(
                "no key with kid {:?} registered for `{iss}`",
                header.kid
            )));
        }

        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[token_endpoint.as_str()]);
        validation.set_issuer(&[&client.client_id]);
        validation.sub = Some(client.client_id.clone());
        validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
        validation.leeway = LEEWAY;
        let mut last_error = None;
        for jwk in keys {
            let key = match DecodingKey::from_jwk(jwk) {
                Ok(key) => key,
                Err(e) => {
                    last_error = Some(format!("registered key: {e}"));
                    continue;
                }
            };
            match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    let now = unix_now();
                    if claims.exp > now + MAX_ASSERTION_LIFETIME + LEEWAY {
                        return Err(invalid(format!(
                            "client_assertion exp is {} s ahead, at most {MAX_ASSERTION_LIFETIME} s allowed",
                            claims.exp - now
                        )));
                    }
                    self.used_jti.retain(|_, exp| *exp + LEEWAY >= now);
                    let key = (claims.iss.clone(), claims.jti.clone());
                    if self.used_jti.insert(key, claims.exp).is_some() {
                        return Err(invalid(format!(
                            "client_assertion jti `{}` was already used",
                            claims.jti
                        )));
                    }
                    return Ok(claims);
                }
                Err(e) => last_error = Some(describe_jwt_error(&e, token_endpoint)),
            }
        }
        Err(invalid(format!(
            "client_assertion rejected: {}",
            last_error.unwrap_or_default()
        )))
    }

    /// Forgets an issued token: later requests with it are refused.
    pub(crate) fn revoke(&mut self, token: &str) {
        self.tokens.remove(token);
    }

    /// The grant of a bearer token, or why it is not valid.
    pub(crate) fn check(&self, token: &str) -> Result<Grant, &'static str> {
        match self.tokens.get(token) {
            Some(grant) if grant.expires > SystemTime::now() => Ok(grant.clone()),
            Some(_) => Err("the access token has expired"),
            None => Err("the access token is not valid"),
        }
    }
}

fn describe_jwt_error(e: &jsonwebtoken::errors::Error, token_endpoint: &Url) -> String {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::InvalidAudience => format!("aud must be the token endpoint {token_endpoint}"),
        ErrorKind::ExpiredSignature => "the assertion has expired (exp)".into(),
        ErrorKind::InvalidIssuer => "iss must be the client_id".into(),
        ErrorKind::InvalidSubject => "sub must be the client_id".into(),
        ErrorKind::InvalidSignature => "signature does not verify with the registered key".into(),
        ErrorKind::MissingRequiredClaim(c) => format!("claim `{c}` is required"),
        _ => e.to_string(),
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_v1_and_v2() {
        assert!(parse_scope("system/*.read").unwrap().read);
        assert!(parse_scope("system/Patient.rs").unwrap().read);
        assert!(parse_scope("system/Observation.cruds").unwrap().read);
        assert!(!parse_scope("system/Patient.write").unwrap().read);
        assert!(!parse_scope("system/Patient.c").unwrap().read);
        assert!(parse_scope("system/Patient.sr").is_none());
        assert!(parse_scope("patient/*.read").is_none());
        assert!(parse_scope("system/Nope.read").is_none());
    }

    #[test]
    fn credentials_debug_hides_keys() {
        let creds = DemoCredentials::new(Url::parse("http://127.0.0.1:1/auth/token").unwrap());
        let debug = format!("{creds:?}");
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
        assert!(creds.rs384().private_pem().contains("PRIVATE KEY"));
        let jwk: Value = serde_json::from_str(creds.es384().private_jwk()).unwrap();
        assert_eq!(jwk["crv"], "P-384");
        assert!(jwk["d"].is_string());
        assert!(creds.public_jwks()["keys"][0].get("d").is_none());
    }
}

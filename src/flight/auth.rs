//! Authentication: HTTP Basic on the Handshake (or any call), then a signed bearer token.
//!
//! Tokens are HS256 JWTs (`sub` = user, `exp`) signed with a random key made when the server
//! starts: the server keeps no session table, any call can check a token on its own, and a
//! restart invalidates every token. They expire after a configurable time (one hour by default);
//! clients that get `UNAUTHENTICATED` do the Handshake again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::redacted::Redacted;
use crate::{Error, Result};

/// The users allowed to connect, with their passwords (kept only as SHA-256 digests).
///
/// ```
/// use fhirflight::flight::Users;
/// let users = Users::parse("alice:wonderland,bob:builder").unwrap();
/// assert_eq!(users.len(), 2);
/// ```
#[derive(Debug, Clone, Default)]
pub struct Users(HashMap<String, Redacted<[u8; 32]>>);

impl Users {
    /// No users.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a user (replacing one of the same name).
    pub fn with_user(mut self, name: impl Into<String>, password: impl AsRef<str>) -> Self {
        self.0
            .insert(name.into(), Redacted(digest(password.as_ref())));
        self
    }

    /// Parses `name:password` pairs separated by commas (a password may contain `:` but not `,`),
    /// the format of `FHIRFLIGHT_USERS`.
    pub fn parse(spec: &str) -> Result<Self> {
        spec.split(',')
            .map(str::trim)
            .filter(|pair| !pair.is_empty())
            .try_fold(Self::new(), |users, pair| match pair.split_once(':') {
                Some((name, password)) if !name.is_empty() => Ok(users.with_user(name, password)),
                _ => Err(Error::config(format!(
                    "users: expected `name:password` pairs separated by commas, got an entry without a name or `:` (entry starts with {:?})",
                    pair.chars().take(3).collect::<String>()
                ))),
            })
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when there are no users.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn verify(&self, name: &str, password: &str) -> bool {
        self.0.get(name).is_some_and(|d| **d == digest(password))
    }
}

/// Base64 with or without padding: Go's Flight client (ADBC) sends Basic credentials unpadded.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn digest(password: &str) -> [u8; 32] {
    Sha256::digest(password.as_bytes()).into()
}

/// Who made a call; put in the request extensions by [`AuthInterceptor`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Authenticated with a password or a token.
    User(String),
    /// No credentials, allowed because the server runs with anonymous access.
    Anonymous,
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Checks credentials and mints tokens.
#[derive(Debug)]
pub(crate) struct Authenticator {
    users: Users,
    anonymous: bool,
    token_ttl: Duration,
    encoding: Redacted<EncodingKey>,
    decoding: Redacted<DecodingKey>,
}

impl Authenticator {
    pub(crate) fn new(users: Users, anonymous: bool, token_ttl: Duration) -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            users,
            anonymous,
            token_ttl,
            encoding: Redacted(EncodingKey::from_secret(&key)),
            decoding: Redacted(DecodingKey::from_secret(&key)),
        }
    }

    /// Who is calling, from the `authorization` header (Basic or Bearer).
    pub(crate) fn authenticate(&self, metadata: &MetadataMap) -> Result<Caller> {
        let Some(header) = metadata.get("authorization") else {
            return if self.anonymous {
                Ok(Caller::Anonymous)
            } else {
                Err(Error::unauthenticated(
                    "no credentials: do a Handshake with HTTP Basic username and password, then send `authorization: Bearer <token>`",
                ))
            };
        };
        let header = header
            .to_str()
            .map_err(|_| Error::unauthenticated("authorization header is not ASCII"))?;
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            let decoded = BASE64
                .decode(value.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    Error::unauthenticated("Basic credentials are not base64 of `user:password`")
                })?;
            let (user, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
            if self.users.verify(user, password) {
                Ok(Caller::User(user.to_owned()))
            } else {
                Err(Error::unauthenticated("invalid username or password"))
            }
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let claims = jsonwebtoken::decode::<Claims>(
                value.trim(),
                &self.decoding,
                &Validation::new(Algorithm::HS256),
            )
            .map_err(|e| Error::Unauthenticated {
                message: "invalid bearer token (do the Handshake again for a new one)".into(),
                source: Some(Box::new(e)),
            })?
            .claims;
            Ok(Caller::User(claims.sub))
        } else {
            Err(Error::unauthenticated(format!(
                "unsupported authorization scheme {scheme:?}: use Basic or Bearer"
            )))
        }
    }

    /// A signed token for `user`, valid for the configured time.
    pub(crate) fn token(&self, user: &str) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: user.to_owned(),
            exp: (now + self.token_ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::config_with("signing a bearer token", e))
    }
}

/// Authenticates every call before it reaches the service; the Handshake passes with Basic
/// credentials and turns them into a token.
#[derive(Debug, Clone)]
pub(crate) struct AuthInterceptor(pub(crate) Arc<Authenticator>);

impl tonic::service::Interceptor for AuthInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let caller = self
            .0
            .authenticate(request.metadata())
            .map_err(super::status::status)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::prelude::{BASE64_STANDARD, BASE64_STANDARD_NO_PAD};

    fn metadata(value: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert("authorization", value.parse().unwrap());
        m
    }

    fn basic(user: &str, password: &str) -> MetadataMap {
        metadata(&format!(
            "Basic {}",
            BASE64_STANDARD.encode(format!("{user}:{password}"))
        ))
    }

    #[test]
    fn basic_then_bearer() {
        let auth = Authenticator::new(
            Users::parse("alice:a:b").unwrap(),
            false,
            Duration::from_secs(60),
        );
        assert_eq!(
            auth.authenticate(&basic("alice", "a:b")).unwrap(),
            Caller::User("alice".into())
        );
        let unpadded = format!("Basic {}", BASE64_STANDARD_NO_PAD.encode("alice:a:b"));
        assert_eq!(
            auth.authenticate(&metadata(&unpadded)).unwrap(),
            Caller::User("alice".into())
        );
        assert!(matches!(
            auth.authenticate(&basic("alice", "a")),
            Err(Error::Unauthenticated { .. })
        ));
        assert!(matches!(
            auth.authenticate(&MetadataMap::new()),
            Err(Error::Unauthenticated { .. })
        ));

        let token = auth.token("alice").unwrap();
        let caller = auth
            .authenticate(&metadata(&format!("Bearer {token}")))
            .unwrap();
        assert_eq!(caller, Caller::User("alice".into()));

        // A token from another server (another key) is refused.
        let other = Authenticator::new(Users::new(), false, Duration::from_secs(60));
        let foreign = other.token("alice").unwrap();
        let err = auth
            .authenticate(&metadata(&format!("Bearer {foreign}")))
            .unwrap_err();
        assert!(err.to_string().contains("invalid bearer token"), "{err}");
    }

    #[test]
    fn expired_tokens_are_refused() {
        let auth = Authenticator::new(Users::new(), false, Duration::ZERO);
        let claims = Claims {
            sub: "alice".into(),
            exp: 1,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap();
        let err = auth
            .authenticate(&metadata(&format!("Bearer {token}")))
            .unwrap_err();
        assert!(err.to_string().contains("ExpiredSignature"), "{err}");
    }

    #[test]
    fn anonymous_only_without_credentials() {
        let auth = Authenticator::new(Users::new(), true, Duration::from_secs(60));
        assert_eq!(
            auth.authenticate(&MetadataMap::new()).unwrap(),
            Caller::Anonymous
        );
        assert!(auth.authenticate(&basic("mallory", "x")).is_err());
    }

    #[test]
    fn users_debug_hides_passwords() {
        let users = Users::parse("alice:secret1, bob:secret2").unwrap();
        let debug = format!("{users:?}");
        assert!(
            debug.contains("alice") && !debug.contains("secret"),
            "{debug}"
        );
        assert!(Users::parse("nocolon").is_err());
    }
}

//! Authentication: HTTP Basic on the Handshake only, then a signed bearer token on every call.
//!
//! Tokens are HS256 JWTs (`sub` = user, `role`, `exp`) signed with a random key made when the
//! server starts: the server keeps no session table, any call can check a token on its own, and
//! a restart invalidates every token. They expire after a configurable time (one hour by
//! default); clients that get `UNAUTHENTICATED` do the Handshake again.
//!
//! Passwords are checked only on the Handshake (Argon2, off the async threads), so a password
//! travels once per session and a slow hash costs once. Failed logins are logged with the
//! client's address, and each address that fails waits before it may try again (1 s, doubling
//! to 1 min), which turns an online guessing attack from thousands of tries a second into one a
//! minute.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::alphabet::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use futures::future::BoxFuture;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use tonic::codegen::Service;
use tonic::codegen::http;
use tonic::transport::server::TcpConnectInfo;

use super::audit::{AuditLog, AuditRecord};
use super::metrics::Metrics;
use super::users::{Role, Users};
use crate::redacted::Redacted;
use crate::{Error, Result};

/// Base64 with or without padding: Go's Flight client (ADBC) sends Basic credentials unpadded.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The gRPC path of the Handshake, the one call that takes Basic credentials.
const HANDSHAKE_PATH: &str = "/arrow.flight.protocol.FlightService/Handshake";

/// The gRPC path prefix of the standard health service: load balancers probe it without
/// credentials, and it tells nothing but SERVING or NOT_SERVING.
const HEALTH_PATH_PREFIX: &str = "/grpc.health.v1.Health/";

/// Addresses whose failed logins are remembered; beyond it, expired entries go first.
const THROTTLED_ADDRESSES: usize = 10_000;

/// Who made a call; put in the request extensions by [`AuthLayer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// Authenticated with a password or a token.
    User {
        /// The user name.
        name: String,
        /// What they may do.
        role: Role,
    },
    /// No credentials, allowed because the server runs with anonymous access (on a loopback
    /// address only: the machine's own users, who get the admin role).
    Anonymous,
}

impl Caller {
    /// What the caller may do.
    pub(crate) fn role(&self) -> Role {
        match self {
            Caller::User { role, .. } => *role,
            Caller::Anonymous => Role::Admin,
        }
    }

    /// The user name (empty for anonymous callers).
    pub(crate) fn name(&self) -> &str {
        match self {
            Caller::User { name, .. } => name,
            Caller::Anonymous => "",
        }
    }

    /// `Ok` for an admin; else [`Error::PermissionDenied`] naming `what`.
    pub(crate) fn require_admin(&self, what: &str) -> Result<()> {
        match self.role() {
            Role::Admin => Ok(()),
            Role::Read => Err(Error::permission_denied(format!(
                "{what} needs the admin role; {} has the read role",
                self.name()
            ))),
        }
    }
}

#[derive(Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
}

/// Checks credentials and mints tokens.
#[derive(Debug)]
pub(crate) struct Authenticator {
    users: Arc<Users>,
    anonymous: bool,
    token_ttl: Duration,
    encoding: Redacted<EncodingKey>,
    decoding: Redacted<DecodingKey>,
    throttle: Throttle,
    audit: Option<AuditLog>,
    metrics: Arc<Metrics>,
}

impl Authenticator {
    pub(crate) fn new(
        users: Users,
        anonymous: bool,
        token_ttl: Duration,
        audit: Option<AuditLog>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let key: [u8; 32] = rand::random();
        Self {
            users: Arc::new(users),
            anonymous,
            token_ttl,
            encoding: Redacted(EncodingKey::from_secret(&key)),
            decoding: Redacted(DecodingKey::from_secret(&key)),
            throttle: Throttle::default(),
            audit,
            metrics,
        }
    }

    /// Who is calling, from the `authorization` header: Basic credentials on the Handshake
    /// (`handshake`), a bearer token on every other call; `client` is the caller's address.
    pub(crate) async fn authenticate(
        &self,
        header: Option<&str>,
        handshake: bool,
        client: Option<SocketAddr>,
    ) -> Result<Caller> {
        let Some(header) = header else {
            return if self.anonymous {
                Ok(Caller::Anonymous)
            } else {
                Err(Error::unauthenticated(
                    "no credentials: do a Handshake with HTTP Basic username and password, then send `authorization: Bearer <token>`",
                ))
            };
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            if !handshake {
                return Err(Error::unauthenticated(
                    "Basic credentials are taken on the Handshake only: send the bearer token it returns",
                ));
            }
            self.login(value, client).await
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
            let role = claims
                .role
                .parse()
                .map_err(|_| Error::unauthenticated("invalid bearer token (unknown role)"))?;
            Ok(Caller::User {
                name: claims.sub,
                role,
            })
        } else {
            Err(Error::unauthenticated(format!(
                "unsupported authorization scheme {}: use Basic or Bearer",
                crate::error::quoted(scheme)
            )))
        }
    }

    /// Checks Basic credentials (base64 of `user:password`) from `client`, which must not be
    /// waiting after failed logins.
    async fn login(&self, credentials: &str, client: Option<SocketAddr>) -> Result<Caller> {
        let address = client.map(|c| c.ip());
        self.throttle.check(address)?;
        let decoded = BASE64
            .decode(credentials.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| {
                Error::unauthenticated("Basic credentials are not base64 of `user:password`")
            })?;
        let (name, password) = decoded.split_once(':').unwrap_or((&decoded, ""));
        let (users, name, password) = (
            Arc::clone(&self.users),
            name.to_owned(),
            password.to_owned(),
        );
        let checked = tokio::task::spawn_blocking(move || {
            let role = users.verify(&name, &password);
            (name, role)
        })
        .await
        .map_err(|e| Error::config_with("password check", e))?;
        match checked {
            (name, Some(role)) => {
                self.throttle.succeeded(address);
                Ok(Caller::User { name, role })
            }
            (name, None) => {
                let wait = self.throttle.failed(address);
                self.metrics.login_failed();
                if let Some(log) = &self.audit {
                    let reason = "invalid username or password";
                    log.record(&AuditRecord::failed_login(&name, client, reason));
                }
                let client = client.map_or_else(|| "unknown".to_owned(), |c| c.to_string());
                tracing::warn!(
                    user = %crate::error::quoted(&name),
                    client = %client,
                    "failed login; this address waits {} s before its next try",
                    wait.as_secs()
                );
                Err(Error::unauthenticated("invalid username or password"))
            }
        }
    }

    /// A signed token for `user` with `role`, valid for the configured time.
    pub(crate) fn token(&self, user: &str, role: Role) -> Result<String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let claims = Claims {
            sub: user.to_owned(),
            role: role.to_string(),
            exp: (now + self.token_ttl).as_secs(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::config_with("signing a bearer token", e))
    }
}

/// Failed logins by client address, and until when each address must wait.
#[derive(Debug, Default)]
struct Throttle {
    failures: Mutex<HashMap<Option<IpAddr>, (u32, Instant)>>,
}

impl Throttle {
    fn check(&self, address: Option<IpAddr>) -> Result<()> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match failures.get(&address) {
            Some((_, until)) if *until > Instant::now() => {
                let wait = until.duration_since(Instant::now()).as_secs() + 1;
                Err(Error::unauthenticated(format!(
                    "too many failed logins from this address: try again in {wait} s"
                )))
            }
            _ => Ok(()),
        }
    }

    /// Counts a failure of `address`; how long it now waits (1 s, doubling, at most 1 min).
    fn failed(&self, address: Option<IpAddr>) -> Duration {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if failures.len() >= THROTTLED_ADDRESSES {
            failures.retain(|_, (_, until)| *until > now);
            if failures.len() >= THROTTLED_ADDRESSES {
                failures.clear();
            }
        }
        let (count, until) = failures.entry(address).or_insert((0, now));
        *count += 1;
        let wait = Duration::from_secs(1 << (*count - 1).min(6)).min(Duration::from_secs(60));
        *until = now + wait;
        wait
    }

    fn succeeded(&self, address: Option<IpAddr>) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&address);
    }
}

/// Authenticates every call before it reaches the service (a tower layer, so that it can tell
/// the Handshake by its path and check passwords off the async threads).
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer(pub(crate) Arc<Authenticator>);

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: Arc::clone(&self.0),
            inner,
        }
    }
}

/// The service of [`AuthLayer`]: puts the [`Caller`] in the request's extensions, or answers
/// the gRPC status of the refusal.
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    auth: Arc<Authenticator>,
    inner: S,
}

impl<S, B> Service<http::Request<B>> for AuthService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<'static, std::result::Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        // The service that was made ready is the one to call; a fresh clone stays behind.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            if request.uri().path().starts_with(HEALTH_PATH_PREFIX) {
                return inner.call(request).await;
            }
            let handshake = request.uri().path() == HANDSHAKE_PATH;
            let client = request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr);
            let header = match request.headers().get(http::header::AUTHORIZATION) {
                Some(value) => match value.to_str() {
                    Ok(text) => Some(text.to_owned()),
                    Err(_) => {
                        let refused = Error::unauthenticated("authorization header is not ASCII");
                        return Ok(super::status::status(refused).into_http());
                    }
                },
                None => None,
            };
            match auth
                .authenticate(header.as_deref(), handshake, client)
                .await
            {
                Ok(caller) => {
                    request.extensions_mut().insert(caller);
                    inner.call(request).await
                }
                Err(refused) => Ok(super::status::status(refused).into_http()),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::prelude::{BASE64_STANDARD, BASE64_STANDARD_NO_PAD};

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            BASE64_STANDARD.encode(format!("{user}:{password}"))
        )
    }

    fn alice() -> Authenticator {
        let users = Users::parse("alice:a:b").unwrap();
        Authenticator::new(users, false, Duration::from_secs(60), None, Arc::default())
    }

    fn admin(name: &str) -> Caller {
        Caller::User {
            name: name.into(),
            role: Role::Admin,
        }
    }

    #[tokio::test]
    async fn basic_on_the_handshake_then_bearer() {
        let auth = alice();
        let login = |header: String| {
            let auth = &auth;
            async move { auth.authenticate(Some(&header), true, None).await }
        };
        assert_eq!(login(basic("alice", "a:b")).await.unwrap(), admin("alice"));
        let unpadded = format!("Basic {}", BASE64_STANDARD_NO_PAD.encode("alice:a:b"));
        assert_eq!(login(unpadded).await.unwrap(), admin("alice"));
        assert!(auth.authenticate(None, true, None).await.is_err());

        // Basic on any other call is refused, even with the right password.
        let elsewhere = auth
            .authenticate(Some(&basic("alice", "a:b")), false, None)
            .await
            .unwrap_err();
        assert!(
            elsewhere.to_string().contains("on the Handshake only"),
            "{elsewhere}"
        );

        let token = auth.token("alice", Role::Read).unwrap();
        let bearer = format!("Bearer {token}");
        let caller = auth.authenticate(Some(&bearer), false, None).await.unwrap();
        assert_eq!(caller.role(), Role::Read);
        assert!(
            caller
                .require_admin("AddView")
                .unwrap_err()
                .to_string()
                .contains("AddView needs the admin role; alice has the read role")
        );

        // A token from another server (another key) is refused.
        let other = Authenticator::new(
            Users::new(),
            false,
            Duration::from_secs(60),
            None,
            Arc::default(),
        );
        let foreign = format!("Bearer {}", other.token("alice", Role::Admin).unwrap());
        let err = auth
            .authenticate(Some(&foreign), false, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("invalid bearer token"), "{err}");
    }

    #[tokio::test]
    async fn failed_logins_make_their_address_wait() {
        let auth = alice();
        let mallory: SocketAddr = "10.0.0.9:4000".parse().unwrap();
        let other: SocketAddr = "10.0.0.10:4000".parse().unwrap();
        let wrong = basic("alice", "guess");
        let err = auth.authenticate(Some(&wrong), true, Some(mallory)).await;
        assert!(
            err.unwrap_err()
                .to_string()
                .contains("invalid username or password")
        );
        // The next try from that address waits, even with the right password...
        let right = basic("alice", "a:b");
        let err = auth
            .authenticate(Some(&right), true, Some(mallory))
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("too many failed logins from this address"),
            "{err}"
        );
        // ... while other addresses log in.
        assert!(
            auth.authenticate(Some(&right), true, Some(other))
                .await
                .is_ok()
        );
        let waits: Vec<u64> = (0..8)
            .map(|_| auth.throttle.failed(Some(mallory.ip())).as_secs())
            .collect();
        assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let auth = Authenticator::new(Users::new(), false, Duration::ZERO, None, Arc::default());
        let claims = Claims {
            sub: "alice".into(),
            role: "read".into(),
            exp: 1,
        };
        let token =
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &auth.encoding).unwrap();
        let err = auth
            .authenticate(Some(&format!("Bearer {token}")), false, None)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("ExpiredSignature"), "{err}");
    }

    #[tokio::test]
    async fn anonymous_only_without_credentials() {
        let auth = Authenticator::new(
            Users::new(),
            true,
            Duration::from_secs(60),
            None,
            Arc::default(),
        );
        assert_eq!(
            auth.authenticate(None, false, None).await.unwrap(),
            Caller::Anonymous
        );
        let mallory = basic("mallory", "x");
        assert!(auth.authenticate(Some(&mallory), true, None).await.is_err());
    }
}

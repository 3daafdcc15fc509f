//! SMART Backend Services against small axum mocks (discovery, token cache, errors) and against
//! the demo server (real assertion verification, both algorithms).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ClientOptions};
use fhirflight::demo::{DemoConfig, DemoServer};
use fhirflight::smart::{SigningKey, SmartAuth, SmartConfig};
use serde_json::json;
use url::Url;

/// Serves `app` on 127.0.0.1, port 0; returns its origin.
pub(crate) async fn serve(app: Router) -> Url {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Url::parse(&format!("http://{addr}/")).unwrap()
}

/// A key for mocks that do not verify signatures.
pub(crate) fn test_key() -> SigningKey {
    SigningKey::from_pem(include_str!("../../src/smart/testdata/ec384-sec1.pem")).unwrap()
}

#[derive(Default)]
struct Counters {
    token: AtomicUsize,
    well_known: AtomicUsize,
    metadata: AtomicUsize,
}

/// A token endpoint issuing `token-1`, `token-2`, ... slowly enough for callers to overlap.
async fn token(State(counters): State<Arc<Counters>>, body: String) -> impl IntoResponse {
    assert!(body.contains("grant_type=client_credentials"), "{body}");
    assert!(body.contains(
        "client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer"
    ));
    assert!(body.contains("scope=system%2F*.rs"), "{body}");
    let n = counters.token.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(Duration::from_millis(50)).await;
    axum::Json(
        json!({"access_token": format!("token-{n}"), "token_type": "bearer", "expires_in": 300, "scope": "system/*.rs"}),
    )
}

/// The token endpoint, and the SMART configuration under the FHIR base `/r4` when `well_known`.
fn auth_routes(counters: &Arc<Counters>, well_known: bool) -> Router {
    let mut app = Router::new().route("/auth/token", post(token));
    if well_known {
        app = app.route(
            "/r4/.well-known/smart-configuration",
            get(|State(c): State<Arc<Counters>>| async move {
                c.well_known.fetch_add(1, Ordering::SeqCst);
                axum::Json(json!({"token_endpoint": "/auth/token", "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]}))
            }),
        );
    }
    app.with_state(Arc::clone(counters))
}

/// [`auth_routes`] plus a CapabilityStatement, naming the token endpoint when `capability`.
fn mock_auth_server(counters: &Arc<Counters>, well_known: bool, capability: bool) -> Router {
    let metadata = Router::new()
        .route(
            "/r4/metadata",
            get(move |State(c): State<Arc<Counters>>| async move {
                c.metadata.fetch_add(1, Ordering::SeqCst);
                let security = if capability {
                    json!({"extension": [{"url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                        "extension": [{"url": "authorize", "valueUri": "/auth/authorize"}, {"url": "token", "valueUri": "/auth/token"}]}]})
                } else {
                    json!({})
                };
                axum::Json(json!({"resourceType": "CapabilityStatement", "rest": [{"mode": "server", "security": security,
                    "resource": [{"type": "Patient"}, {"type": "Observation"}]}]}))
            }),
        )
        .with_state(Arc::clone(counters));
    auth_routes(counters, well_known).merge(metadata)
}

fn config() -> SmartConfig {
    SmartConfig::new("client-1", test_key()).with_scope("system/*.rs")
}

#[tokio::test]
async fn concurrent_callers_share_one_token_request() {
    let counters = Arc::new(Counters::default());
    let origin = serve(mock_auth_server(&counters, true, false)).await;
    let base = origin.join("r4").unwrap();
    let auth = SmartAuth::try_new(&base, config(), reqwest::Client::new())
        .await
        .unwrap();
    assert_eq!(
        counters.well_known.load(Ordering::SeqCst),
        0,
        "discovery waits for first use"
    );

    let tokens = futures::future::join_all((0..10).map(|_| auth.token())).await;
    assert_eq!(counters.token.load(Ordering::SeqCst), 1, "single flight");
    assert_eq!(
        counters.well_known.load(Ordering::SeqCst),
        1,
        "one discovery"
    );
    assert_eq!(
        auth.token_endpoint().await.unwrap().as_str(),
        origin.join("auth/token").unwrap().as_str()
    );
    assert!(
        tokens
            .iter()
            .all(|t| t.as_ref().unwrap().secret() == "token-1")
    );
    let first = tokens[0].as_ref().unwrap().clone();
    assert_eq!(first.scope(), Some("system/*.rs"));
    assert_eq!(
        format!("{first:?}").matches("token-1").count(),
        0,
        "Debug hides the token"
    );

    // Two tasks seeing the same 401 cause one refresh.
    auth.invalidate(&first).await;
    auth.invalidate(&first).await;
    let again = futures::future::join_all((0..5).map(|_| auth.token())).await;
    assert!(
        again
            .iter()
            .all(|t| t.as_ref().unwrap().secret() == "token-2")
    );
    assert_eq!(counters.token.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn discovery_falls_back_to_the_capability_statement() {
    let counters = Arc::new(Counters::default());
    let origin = serve(mock_auth_server(&counters, false, true)).await;
    let auth = SmartAuth::try_new(
        &origin.join("r4/").unwrap(),
        config(),
        reqwest::Client::new(),
    )
    .await
    .unwrap();
    assert_eq!(auth.token_endpoint().await.unwrap().path(), "/auth/token");
    assert_eq!(counters.metadata.load(Ordering::SeqCst), 1);
    assert_eq!(auth.token().await.unwrap().secret(), "token-1");
    assert_eq!(
        counters.metadata.load(Ordering::SeqCst),
        1,
        "discovered once"
    );
}

#[tokio::test]
async fn explicit_token_endpoint_skips_discovery() {
    let counters = Arc::new(Counters::default());
    let origin = serve(mock_auth_server(&counters, true, true)).await;
    let endpoint = origin.join("auth/token").unwrap();
    let config = config().with_token_endpoint(endpoint.clone());
    let auth = SmartAuth::try_new(&origin.join("r4").unwrap(), config, reqwest::Client::new())
        .await
        .unwrap();
    assert_eq!(auth.token_endpoint().await.unwrap(), endpoint);
    assert_eq!(auth.token().await.unwrap().secret(), "token-1");
    assert_eq!(
        counters.well_known.load(Ordering::SeqCst) + counters.metadata.load(Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn no_token_endpoint_anywhere_is_a_clear_error() {
    let counters = Arc::new(Counters::default());
    let origin = serve(mock_auth_server(&counters, false, false)).await;
    let auth = SmartAuth::try_new(
        &origin.join("r4").unwrap(),
        config(),
        reqwest::Client::new(),
    )
    .await
    .unwrap();
    let err = auth.token().await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Config { .. }), "{text}");
    assert!(
        text.contains("/r4/.well-known/smart-configuration") && text.contains("/r4/metadata"),
        "{text}"
    );
}

#[tokio::test]
async fn token_errors_carry_the_oauth_description_but_no_secrets() {
    let app = Router::new().route(
        "/token",
        post(|| async {
            (
                StatusCode::BAD_REQUEST,
                axum::Json(json!({"error": "invalid_client", "error_description": "unknown kid"})),
            )
        }),
    );
    let origin = serve(app).await;
    let config = config().with_token_endpoint(origin.join("token").unwrap());
    let auth = SmartAuth::try_new(&origin, config, reqwest::Client::new())
        .await
        .unwrap();
    let text = auth.token().await.unwrap_err().to_string();
    assert!(
        text.contains("HTTP 400: invalid_client: unknown kid"),
        "{text}"
    );
    assert!(text.contains(&format!("POST {origin}token")), "{text}");
    assert!(!text.contains("eyJ"), "no JWT in errors: {text}");
}

/// A FHIR server whose first token is rejected: the client refreshes once and succeeds.
#[tokio::test]
async fn a_401_refreshes_the_token_once() {
    let counters = Arc::new(Counters::default());
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    let app = auth_routes(&counters, true).route(
        "/r4/metadata",
        get(move |headers: axum::http::HeaderMap| {
            let log = Arc::clone(&log);
            async move {
                let bearer = headers["authorization"].to_str().unwrap().to_string();
                log.lock().unwrap().push(bearer.clone());
                if bearer == "Bearer token-1" {
                    return (StatusCode::UNAUTHORIZED, "expired").into_response();
                }
                axum::Json(json!({"resourceType": "CapabilityStatement", "rest": [{"resource": [{"type": "Patient"}]}]}))
                    .into_response()
            }
        }),
    );
    let origin = serve(app).await;
    let client = BulkClient::try_new(
        origin.join("r4").unwrap(),
        Some(config()),
        ClientOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(client.resource_types().await.unwrap(), ["Patient"]);
    assert_eq!(*seen.lock().unwrap(), ["Bearer token-1", "Bearer token-2"]);
}

/// The demo server verifies real assertions: both SHALL algorithms, from PEM and from JWK.
#[tokio::test]
async fn demo_server_accepts_rs384_and_es384_assertions() {
    let server = DemoServer::start(DemoConfig::default().with_patients(1))
        .await
        .unwrap();
    let creds = server.credentials();
    for demo_key in [creds.rs384(), creds.es384()] {
        let from_pem = SigningKey::from_pem(demo_key.private_pem())
            .unwrap()
            .with_kid(demo_key.kid());
        let from_jwk = SigningKey::from_jwk(demo_key.private_jwk(), None).unwrap();
        assert_eq!(from_jwk.alg(), demo_key.alg());
        assert_eq!(from_jwk.kid(), demo_key.kid());
        for key in [from_pem, from_jwk] {
            let config = SmartConfig::new(creds.client_id(), key);
            let auth = SmartAuth::try_new(&server.base_url(), config, reqwest::Client::new())
                .await
                .unwrap();
            assert_eq!(
                &auth.token_endpoint().await.unwrap(),
                creds.token_endpoint()
            );
            assert!(!auth.token().await.unwrap().secret().is_empty());
        }
    }
    let stats = server.stats();
    assert_eq!((stats.token_requests, stats.tokens_issued), (4, 4));

    // A key the server does not know is refused with its reason.
    let stranger = SmartConfig::new(creds.client_id(), test_key().with_kid(creds.es384().kid()));
    let auth = SmartAuth::try_new(&server.base_url(), stranger, reqwest::Client::new())
        .await
        .unwrap();
    let text = auth.token().await.unwrap_err().to_string();
    assert!(text.contains("HTTP 4"), "{text}");
}

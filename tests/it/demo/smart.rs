//! SMART Backend Services on the demo server: the discovery documents, tokens for RS384 and ES384
//! client assertions, bad assertions refused with the reason, and protected calls that need a
//! valid token.

use std::time::Duration;

use fhirflight::demo::DemoConfig;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::Client;
use serde_json::{Value, json};

use super::{
    assertion, kickoff, manifest, now, outcome_text, server, start, token, token_request, url,
};

#[tokio::test]
async fn discovery_documents() {
    let server = server().await;
    let smart: Value = reqwest::get(url(&server, ".well-known/smart-configuration"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        smart["token_endpoint"],
        server.credentials().token_endpoint().as_str()
    );
    assert_eq!(
        smart["token_endpoint_auth_signing_alg_values_supported"],
        json!(["RS384", "ES384"])
    );
    let capability: Value = reqwest::get(url(&server, "metadata"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(capability["resourceType"], "CapabilityStatement");
    let oauth = &capability["rest"][0]["security"]["extension"][0];
    assert_eq!(
        oauth["url"],
        "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    );
    assert_eq!(
        oauth["extension"][0]["valueUri"],
        server.credentials().token_endpoint().as_str()
    );
    let patient = capability["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap();
    assert_eq!(patient["operation"][0]["name"], "export");

    let open = start(DemoConfig::default().with_require_auth(false)).await;
    let capability: Value = reqwest::get(url(&open, "metadata"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(capability["rest"][0].get("security").is_none());
    assert_eq!(
        reqwest::get(url(&open, ".well-known/smart-configuration"))
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn tokens_for_rs384_and_es384_assertions() {
    let server = server().await;
    for key in [server.credentials().rs384(), server.credentials().es384()] {
        let response = token_request(
            &server,
            &assertion(&server, key, json!({})),
            "system/Patient.rs system/Observation.read",
        )
        .await;
        assert_eq!(response.status(), 200, "{}", key.alg());
        assert_eq!(response.headers()["cache-control"], "no-store");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 300);
        assert_eq!(body["scope"], "system/Patient.rs system/Observation.read");
    }
    assert_eq!(server.stats().tokens_issued, 2);
    assert!(!format!("{:?}", server.credentials()).contains("PRIVATE"));
    assert!(!format!("{server:?}").contains("PRIVATE"));

    // Another registered client: its own id, keys given as a public JWKS.
    let jwks = server.credentials().public_jwks();
    let other = start(DemoConfig::default().with_client("second-client", jwks)).await;
    let claims = json!({ "iss": "second-client", "sub": "second-client" });
    let response = token_request(
        &other,
        &assertion(&other, other.credentials().es384(), claims),
        "system/*.rs",
    )
    .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bad_assertions_rejected() {
    let server = server().await;
    let rs = server.credentials().rs384();
    let reused = assertion(&server, rs, json!({ "jti": "once" }));
    assert_eq!(
        token_request(&server, &reused, "system/*.read")
            .await
            .status(),
        200
    );
    let cases = [
        (
            reused,
            "system/*.read",
            401,
            "invalid_client",
            "already used",
        ),
        (
            assertion(&server, rs, json!({ "aud": "https://elsewhere/token" })),
            "system/*.read",
            401,
            "invalid_client",
            "aud",
        ),
        (
            assertion(&server, rs, json!({ "exp": now() - 120 })),
            "system/*.read",
            401,
            "invalid_client",
            "expired",
        ),
        (
            assertion(&server, rs, json!({ "exp": now() + 3600 })),
            "system/*.read",
            401,
            "invalid_client",
            "at most 300",
        ),
        (
            assertion(&server, rs, json!({ "iss": "someone", "sub": "someone" })),
            "system/*.read",
            401,
            "invalid_client",
            "not registered",
        ),
        (
            assertion(&server, rs, json!({ "sub": "other" })),
            "system/*.read",
            401,
            "invalid_client",
            "sub",
        ),
        (
            assertion(&server, rs, json!({})),
            "user/*.read",
            400,
            "invalid_scope",
            "user/*.read",
        ),
        (
            "not.a.jwt".to_owned(),
            "system/*.read",
            401,
            "invalid_client",
            "not a JWT",
        ),
    ];
    for (assertion, scope, status, error, needle) in cases {
        let response = token_request(&server, &assertion, scope).await;
        assert_eq!(response.status(), status, "{needle}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], error, "{body}");
        assert!(
            body["error_description"].as_str().unwrap().contains(needle),
            "{body}"
        );
    }
    // Signed by the ES384 key but claiming the RS384 key's kid.
    let es = server.credentials().es384();
    let mut header = Header::new(Algorithm::ES384);
    header.kid = Some(rs.kid().to_owned());
    let claims = json!({ "iss": "fhirflight-demo", "sub": "fhirflight-demo", "aud": server.credentials().token_endpoint().as_str(),
        "exp": now() + 60, "jti": "forged" });
    let forged = jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_ec_pem(es.private_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        token_request(&server, &forged, "system/*.read")
            .await
            .status(),
        401
    );

    let wrong_grant = Client::new()
        .post(server.credentials().token_endpoint().clone())
        .form(&[("grant_type", "password"), ("scope", "system/*.read")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_grant.status(), 400);
    assert_eq!(
        wrong_grant.json::<Value>().await.unwrap()["error"],
        "unsupported_grant_type"
    );
}

#[tokio::test]
async fn protected_calls_need_a_valid_token() {
    let server = server().await;
    let no_token = Client::new()
        .get(url(&server, "$export"))
        .header("Accept", "application/fhir+json")
        .header("Prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(no_token.status(), 401);
    assert!(
        no_token.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(outcome_text(no_token).await.contains("bearer token"));
    let bad = kickoff(&server, "made-up", "$export").await;
    assert_eq!(bad.status(), 401);
    assert!(outcome_text(bad).await.contains("not valid"));

    let expiring = start(DemoConfig::default().with_token_lifetime(Duration::ZERO)).await;
    let token = token(&expiring).await;
    let expired = kickoff(&expiring, &token, "$export").await;
    assert_eq!(expired.status(), 401);
    assert!(outcome_text(expired).await.contains("expired"));

    // A token scoped to Patient cannot export Observation.
    let response = token_request(
        &server,
        &assertion(&server, server.credentials().es384(), json!({})),
        "system/Patient.rs",
    )
    .await;
    let patient_only = response.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let forbidden = kickoff(&server, &patient_only, "$export?_type=Observation").await;
    assert_eq!(forbidden.status(), 403);
    let manifest = manifest(
        &patient_only,
        kickoff(&server, &patient_only, "$export").await,
    )
    .await;
    let types: Vec<&str> = manifest["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Patient"]);

    // Files need the token too.
    let file = manifest["output"][0]["url"].as_str().unwrap();
    assert_eq!(reqwest::get(file).await.unwrap().status(), 401);
    assert_eq!(server.stats().unauthorized, 3);
}

//! The private key that signs client assertions.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use serde_json::Value;

use crate::redacted::Redacted;
use crate::{Error, Result};

/// A private key for SMART Backend Services client assertions, with its algorithm and key id.
///
/// RSA keys sign with RS256/384/512 or PS256/384/512 (default RS384), EC keys with ES256 (P-256) or
/// ES384 (P-384, the default for that curve). The key id (`kid`) comes from the JWK, is given with
/// [`SigningKey::with_kid`], or defaults to the RFC 7638 thumbprint of the public key.
///
/// `Debug` never shows the key material.
///
/// ```no_run
/// # fn main() -> fhirflight::Result<()> {
/// use fhirflight::smart::SigningKey;
/// let key = SigningKey::from_pem_file("client.pem")?.with_alg("RS384")?.with_kid("key-1");
/// let key = SigningKey::from_jwk_file("jwks.json", Some("key-1"))?; // alg and kid from the JWK
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SigningKey {
    key: Redacted<EncodingKey>,
    curve: Option<EcCurve>,
    alg: Algorithm,
    kid: String,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum EcCurve {
    P256,
    P384,
}

impl EcCurve {
    /// The curve's name in a JWK (`crv`).
    fn name(self) -> &'static str {
        match self {
            EcCurve::P256 => "P-256",
            EcCurve::P384 => "P-384",
        }
    }

    fn alg(self) -> Algorithm {
        match self {
            EcCurve::P256 => Algorithm::ES256,
            EcCurve::P384 => Algorithm::ES384,
        }
    }
}

fn key_error(what: &str) -> impl Fn(String) -> Error + '_ {
    move |detail| Error::auth(format!("{what}: {detail}"))
}

/// An [`Error::Auth`] about `what` (`PEM key`, `JWK`), caused by the key crate's `error`.
fn key_source(what: &str, error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::auth_with(what, error)
}

impl SigningKey {
    /// Loads a PEM private key: PKCS#1 (`RSA PRIVATE KEY`), PKCS#8 (`PRIVATE KEY`, RSA or EC) or
    /// SEC1 (`EC PRIVATE KEY`, P-256 or P-384). Other PEM blocks in the text (certificates) are skipped.
    pub fn from_pem(pem: &str) -> Result<Self> {
        let err = key_error("PEM key");
        let (label, block) = private_pem_block(pem).ok_or_else(|| {
            err("no `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block found".into())
        })?;
        match label {
            "RSA PRIVATE KEY" => {
                let key = rsa::RsaPrivateKey::from_pkcs1_pem(block).map_err(|e| key_source("PEM key", e))?;
                Self::from_rsa(&key)
            }
            "EC PRIVATE KEY" => {
                if let Ok(key) = p384::SecretKey::from_sec1_pem(block) {
                    Self::from_ec(key.to_pkcs8_der(), EcCurve::P384)
                } else if let Ok(key) = p256::SecretKey::from_sec1_pem(block) {
                    Self::from_ec(key.to_pkcs8_der(), EcCurve::P256)
                } else {
                    Err(err("SEC1 key is not a valid P-256 or P-384 key".into()))
                }
            }
            "ENCRYPTED PRIVATE KEY" => Err(err(
                "encrypted keys are not supported (decrypt with `openssl pkcs8 -in KEY -out PLAIN`)".into(),
            )),
            _ => {
                if let Ok(key) = rsa::RsaPrivateKey::from_pkcs8_pem(block) {
                    Self::from_rsa(&key)
                } else if let Ok(key) = p384::SecretKey::from_pkcs8_pem(block) {
                    Self::from_ec(key.to_pkcs8_der(), EcCurve::P384)
                } else if let Ok(key) = p256::SecretKey::from_pkcs8_pem(block) {
                    Self::from_ec(key.to_pkcs8_der(), EcCurve::P256)
                } else {
                    Err(err("PKCS#8 key is not an RSA, P-256 or P-384 key".into()))
                }
            }
        }
    }

    /// Loads a PEM private key from a file; see [`SigningKey::from_pem`].
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_pem(&text).map_err(|e| Error::auth_with(path.display().to_string(), e))
    }

    /// Loads a private key from a JWK or a JWK Set (`{"keys": [...]}`, the format SMART launchers
    /// hand out). With `kid`, the private key with that id is taken; without, the first private key.
    /// The algorithm comes from the JWK's `alg` (else the key type's default), the key id from its
    /// `kid` (else the thumbprint).
    pub fn from_jwk(json: &str, kid: Option<&str>) -> Result<Self> {
        let err = key_error("JWK");
        let value: Value = serde_json::from_str(json).map_err(|e| key_source("JWK", e))?;
        let keys = match value.get("keys") {
            Some(Value::Array(keys)) => keys.iter().collect(),
            _ => vec![&value],
        };
        let jwk = keys
            .into_iter()
            .filter(|k| k.get("d").is_some())
            .find(|k| kid.is_none_or(|kid| k["kid"].as_str() == Some(kid)))
            .ok_or_else(|| match kid {
                Some(kid) => err(format!("no private key with kid {kid:?}")),
                None => err("no private key (a JWK with `d`) found".into()),
            })?;
        let field = |name: &str| -> Result<Vec<u8>> {
            let text = jwk[name]
                .as_str()
                .ok_or_else(|| err(format!("missing `{name}`")))?;
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|e| key_source(&format!("JWK: `{name}`"), e))
        };
        let mut key = match jwk["kty"].as_str() {
            Some("RSA") => {
                let int = |name| field(name).map(|b| rsa::BigUint::from_bytes_be(&b));
                let primes = match (field("p"), field("q")) {
                    (Ok(p), Ok(q)) => vec![
                        rsa::BigUint::from_bytes_be(&p),
                        rsa::BigUint::from_bytes_be(&q),
                    ],
                    _ => Vec::new(),
                };
                let key =
                    rsa::RsaPrivateKey::from_components(int("n")?, int("e")?, int("d")?, primes)
                        .map_err(|e| key_source("JWK", e))?;
                Self::from_rsa(&key)?
            }
            Some("EC") => {
                // The curve crates' JWK parser refuses members it does not know (kid, alg, use).
                let text = serde_json::json!({"kty": "EC", "crv": jwk["crv"], "x": jwk["x"], "y": jwk["y"], "d": jwk["d"]})
                    .to_string();
                match jwk["crv"].as_str() {
                    Some("P-384") => {
                        let key = p384::SecretKey::from_jwk_str(&text)
                            .map_err(|e| key_source("JWK", e))?;
                        Self::from_ec(key.to_pkcs8_der(), EcCurve::P384)?
                    }
                    Some("P-256") => {
                        let key = p256::SecretKey::from_jwk_str(&text)
                            .map_err(|e| key_source("JWK", e))?;
                        Self::from_ec(key.to_pkcs8_der(), EcCurve::P256)?
                    }
                    other => {
                        return Err(err(format!(
                            "unsupported curve {other:?} (P-256 and P-384 are)"
                        )));
                    }
                }
            }
            other => {
                return Err(err(format!(
                    "unsupported key type {other:?} (RSA and EC are)"
                )));
            }
        };
        if let Some(alg) = jwk["alg"].as_str() {
            key = key.with_alg(alg)?;
        }
        if let Some(kid) = jwk["kid"].as_str() {
            key = key.with_kid(kid);
        }
        Ok(key)
    }

    /// Loads a private key from a JWK or JWK Set file; see [`SigningKey::from_jwk`].
    pub fn from_jwk_file(path: impl AsRef<Path>, kid: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_jwk(&text, kid).map_err(|e| Error::auth_with(path.display().to_string(), e))
    }

    /// Loads a key file, telling JWK/JWKS (JSON) from PEM by its content.
    pub fn from_file(path: impl AsRef<Path>, kid: Option<&str>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let key = if text.trim_start().starts_with('{') {
            Self::from_jwk(&text, kid)
        } else {
            Self::from_pem(&text).map(|key| match kid {
                Some(kid) => key.with_kid(kid),
                None => key,
            })
        };
        // One "SMART auth:" in the text: the key's error takes the file's name.
        key.map_err(|e| match e {
            Error::Auth { message, source } => Error::Auth {
                message: format!("{}: {message}", path.display()),
                source,
            },
            other => Error::auth_with(path.display().to_string(), other),
        })
    }

    /// Sets the signing algorithm (`RS384`, `ES384`, `RS256`, `PS384`, ...); it must suit the key.
    pub fn with_alg(self, alg: &str) -> Result<Self> {
        let parsed: Algorithm = alg
            .parse()
            .map_err(|_| Error::auth(format!("unknown signing algorithm {alg:?}")))?;
        let fits = match self.curve {
            Some(curve) => parsed == curve.alg(),
            None => matches!(
                parsed,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
        };
        if !fits {
            let kind = match self.curve {
                Some(curve) => format!("an EC {} key", curve.name()),
                None => "an RSA key".into(),
            };
            return Err(Error::auth(format!(
                "algorithm {alg} cannot sign with {kind}"
            )));
        }
        Ok(Self {
            alg: parsed,
            ..self
        })
    }

    /// Sets the key id sent in the assertion header (`kid`), as registered with the server.
    pub fn with_kid(self, kid: impl Into<String>) -> Self {
        Self {
            kid: kid.into(),
            ..self
        }
    }

    /// The signing algorithm, e.g. `RS384`.
    pub fn alg(&self) -> String {
        format!("{:?}", self.alg)
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK (with `alg` and `kid`), to register with a server.
    pub fn public_jwk(&self) -> Result<Value> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.alg)
            .map_err(|e| Error::auth_with("public key", e))?;
        jwk.common.key_id = Some(self.kid.clone());
        serde_json::to_value(jwk).map_err(|e| Error::auth_with("public key", e))
    }

    pub(crate) fn encoding_key(&self) -> &EncodingKey {
        &self.key
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn from_rsa(key: &rsa::RsaPrivateKey) -> Result<Self> {
        let der = key
            .to_pkcs1_der()
            .map_err(|e| Error::auth_with("RSA key", e))?;
        Self::finish(
            EncodingKey::from_rsa_der(der.as_bytes()),
            None,
            Algorithm::RS384,
        )
    }

    fn from_ec(
        der: p256::pkcs8::Result<p256::pkcs8::SecretDocument>,
        curve: EcCurve,
    ) -> Result<Self> {
        let der = der.map_err(|e| Error::auth_with("EC key", e))?;
        Self::finish(
            EncodingKey::from_ec_der(der.as_bytes()),
            Some(curve),
            curve.alg(),
        )
    }

    /// Completes a key with its default kid, the RFC 7638 thumbprint of the public key.
    fn finish(key: EncodingKey, curve: Option<EcCurve>, alg: Algorithm) -> Result<Self> {
        let jwk = Jwk::from_encoding_key(&key, alg).map_err(|e| Error::auth_with("key", e))?;
        let kid = jwk.thumbprint(ThumbprintHash::SHA256);
        Ok(Self {
            key: Redacted(key),
            curve,
            alg,
            kid,
        })
    }
}

/// The label and full text of the first private-key PEM block in `text`.
fn private_pem_block(text: &str) -> Option<(&str, &str)> {
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label = &after[..after.find("-----")?];
        let end_marker = format!("-----END {label}-----");
        let end = rest.find(&end_marker)? + end_marker.len();
        if label.ends_with("PRIVATE KEY") {
            return Some((label, &rest[start..end]));
        }
        rest = &rest[end..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smart::auth::{AssertionClaims, client_assertion};
    use jsonwebtoken::{DecodingKey, Validation};
    use rsa::traits::{PrivateKeyParts, PublicKeyParts};
    use serde_json::json;
    use url::Url;

    const RSA_PKCS1: &str = include_str!("testdata/rsa-pkcs1.pem");
    const RSA_PKCS8: &str = include_str!("testdata/rsa-pkcs8.pem");
    const EC384_SEC1: &str = include_str!("testdata/ec384-sec1.pem");
    const EC384_PKCS8: &str = include_str!("testdata/ec384-pkcs8.pem");
    const EC256_SEC1: &str = include_str!("testdata/ec256-sec1.pem");

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// The private JWK of the test RSA key, built from its components.
    fn rsa_private_jwk(kid: &str, alg: &str) -> Value {
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(RSA_PKCS1).unwrap();
        let [p, q] = key.primes() else {
            panic!("two primes")
        };
        json!({"kty": "RSA", "kid": kid, "alg": alg, "n": b64(&key.n().to_bytes_be()), "e": b64(&key.e().to_bytes_be()),
               "d": b64(&key.d().to_bytes_be()), "p": b64(&p.to_bytes_be()), "q": b64(&q.to_bytes_be())})
    }

    fn ec384_private_jwk(kid: &str) -> Value {
        let key = p384::SecretKey::from_sec1_pem(EC384_SEC1).unwrap();
        let mut jwk: Value = serde_json::from_str(&key.to_jwk_string()).unwrap();
        jwk["kid"] = json!(kid);
        jwk["alg"] = json!("ES384");
        jwk
    }

    /// Signs an assertion and verifies it with the key's public JWK, as a server would.
    fn verify(key: &SigningKey) -> (jsonwebtoken::Header, AssertionClaims) {
        let endpoint = Url::parse("https://auth.example/token").unwrap();
        let jku = Url::parse("https://client.example/jwks.json").unwrap();
        let jwt = client_assertion(key, "client-1", &endpoint, Some(&jku)).unwrap();
        let public: Jwk = serde_json::from_value(key.public_jwk().unwrap()).unwrap();
        let mut validation = Validation::new(key.algorithm());
        validation.set_audience(&[endpoint.as_str()]);
        validation.set_issuer(&["client-1"]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        let data = jsonwebtoken::decode::<AssertionClaims>(
            &jwt,
            &DecodingKey::from_jwk(&public).unwrap(),
            &validation,
        )
        .unwrap();
        assert_eq!(data.header.typ.as_deref(), Some("JWT"));
        assert_eq!(data.header.jku.as_deref(), Some(jku.as_str()));
        (data.header, data.claims)
    }

    #[test]
    fn pem_formats_load_with_default_algorithms() {
        for (pem, alg) in [
            (RSA_PKCS1, "RS384"),
            (RSA_PKCS8, "RS384"),
            (EC384_SEC1, "ES384"),
            (EC384_PKCS8, "ES384"),
            (EC256_SEC1, "ES256"),
        ] {
            let key = SigningKey::from_pem(pem).unwrap();
            assert_eq!(key.alg(), alg);
            let (header, claims) = verify(&key);
            assert_eq!(header.alg, key.algorithm());
            // Default kid: the RFC 7638 thumbprint, 43 base64url characters of SHA-256.
            assert_eq!(header.kid.as_deref(), Some(key.kid()));
            assert_eq!(key.kid().len(), 43);
            assert_eq!(
                (claims.iss.as_str(), claims.sub.as_str()),
                ("client-1", "client-1")
            );
        }
        // Same key, two encodings, same thumbprint.
        assert_eq!(
            SigningKey::from_pem(RSA_PKCS1).unwrap().kid(),
            SigningKey::from_pem(RSA_PKCS8).unwrap().kid()
        );
    }

    #[test]
    fn assertion_claims_follow_the_spec() {
        let key = SigningKey::from_pem(EC384_PKCS8).unwrap().with_kid("k1");
        let (header, first) = verify(&key);
        let (_, second) = verify(&key);
        assert_eq!(header.kid.as_deref(), Some("k1"));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(
            first.exp > now && first.exp <= now + 300,
            "exp at most 5 minutes ahead"
        );
        assert_eq!(first.aud, "https://auth.example/token");
        assert_ne!(first.jti, second.jti, "a fresh jti every time");
    }

    #[test]
    fn other_rsa_algorithms_and_mismatches() {
        for alg in ["RS256", "RS512", "PS256", "PS384", "PS512"] {
            let key = SigningKey::from_pem(RSA_PKCS1)
                .unwrap()
                .with_alg(alg)
                .unwrap();
            assert_eq!(verify(&key).0.alg, alg.parse().unwrap());
        }
        let err = SigningKey::from_pem(RSA_PKCS1)
            .unwrap()
            .with_alg("ES384")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "SMART auth: algorithm ES384 cannot sign with an RSA key"
        );
        assert!(
            SigningKey::from_pem(EC256_SEC1)
                .unwrap()
                .with_alg("ES384")
                .is_err()
        );
        assert!(
            SigningKey::from_pem(RSA_PKCS1)
                .unwrap()
                .with_alg("HS256")
                .is_err()
        );
        assert!(
            SigningKey::from_pem(RSA_PKCS1)
                .unwrap()
                .with_alg("nope")
                .is_err()
        );
    }

    #[test]
    fn jwk_and_jwks_load_with_their_alg_and_kid() {
        let rsa = rsa_private_jwk("rsa-1", "RS384");
        let key = SigningKey::from_jwk(&rsa.to_string(), None).unwrap();
        assert_eq!((key.alg().as_str(), key.kid()), ("RS384", "rsa-1"));
        verify(&key);

        let ec = ec384_private_jwk("ec-1");
        let public_only =
            json!({"kty": "EC", "crv": "P-384", "kid": "pub", "x": ec["x"], "y": ec["y"]});
        let jwks = json!({"keys": [public_only, rsa, ec]}).to_string();
        let first = SigningKey::from_jwk(&jwks, None).unwrap();
        assert_eq!(first.kid(), "rsa-1", "the first private key");
        let chosen = SigningKey::from_jwk(&jwks, Some("ec-1")).unwrap();
        assert_eq!((chosen.alg().as_str(), chosen.kid()), ("ES384", "ec-1"));
        verify(&chosen);
        let err = SigningKey::from_jwk(&jwks, Some("pub"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "SMART auth: JWK: no private key with kid \"pub\"");

        // Without p and q the primes are recovered from n, e, d.
        let mut bare = rsa_private_jwk("rsa-2", "PS384");
        bare.as_object_mut()
            .unwrap()
            .retain(|k, _| !matches!(k.as_str(), "p" | "q"));
        let key = SigningKey::from_jwk(&bare.to_string(), None).unwrap();
        assert_eq!(verify(&key).0.alg, Algorithm::PS384);
    }

    #[test]
    fn bad_keys_say_why_and_debug_hides_the_key() {
        let err = |text: &str| SigningKey::from_pem(text).unwrap_err().to_string();
        assert!(err("hello").contains("no `PRIVATE KEY`"));
        assert!(
            err("-----BEGIN ENCRYPTED PRIVATE KEY-----\nAA==\n-----END ENCRYPTED PRIVATE KEY-----")
                .contains("encrypted")
        );
        assert!(SigningKey::from_jwk(r#"{"kty":"oct","k":"AA","d":"x"}"#, None).is_err());
        let key = SigningKey::from_pem(RSA_PKCS1).unwrap().with_kid("k");
        let debug = format!("{key:?}");
        assert_eq!(
            debug,
            "SigningKey { key: ***, curve: None, alg: RS384, kid: \"k\" }"
        );
    }

    #[test]
    fn key_files_are_told_apart_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("k.pem");
        std::fs::write(&pem, format!("junk\n{EC384_SEC1}")).unwrap();
        let jwk = dir.path().join("k.json");
        std::fs::write(&jwk, json!({"keys": [ec384_private_jwk("e")]}).to_string()).unwrap();
        assert_eq!(
            SigningKey::from_file(&pem, Some("mine")).unwrap().kid(),
            "mine"
        );
        assert_eq!(SigningKey::from_file(&jwk, None).unwrap().kid(), "e");
        let missing = SigningKey::from_pem_file(dir.path().join("none.pem"))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("none.pem"), "{missing}");
    }
}

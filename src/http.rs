//! HTTP plumbing below the SMART and Bulk Data clients: one request loop with retries
//! (`Retry-After` or backoff with jitter), token refresh on 401 (from any [`TokenSource`]), and
//! errors that carry the server's OperationOutcome text and a URL without query secrets.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use url::Url;

use crate::redacted::Redacted;
use crate::{Error, Result};

/// Where a request's bearer token comes from ([`crate::smart::SmartAuth`]): a token believed
/// valid, and forgetting one that a server refused.
#[async_trait::async_trait]
pub(crate) trait TokenSource: Send + Sync {
    /// The token to send, cached while fresh.
    async fn bearer(&self) -> Result<Redacted<Arc<str>>>;
    /// `rejected` was answered 401: the next [`TokenSource::bearer`] gets a new one.
    async fn refused(&self, rejected: &Redacted<Arc<str>>);
}

/// Query parameters whose values are safe to show in errors and logs (the Bulk Data ones).
const PUBLIC_PARAMS: &[&str] = &[
    "patient",
    "includeAssociatedData",
    "organizeOutputBy",
    "allowPartialManifests",
];

/// `url` for errors and logs: no user info, and the value of every query parameter that may be a
/// secret (presigned-URL signatures, tokens) replaced by `***`.
pub(crate) fn redact_url(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    if url.query().is_some() {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let public = k.starts_with('_') || PUBLIC_PARAMS.contains(&k.as_ref());
                (
                    k.into_owned(),
                    if public { v.into_owned() } else { "***".into() },
                )
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// The human text of an OperationOutcome: each issue's severity, code and diagnostics or details.
pub(crate) fn outcome_text(outcome: &Value) -> Option<String> {
    if outcome["resourceType"] != "OperationOutcome" {
        return None;
    }
    let issues: Vec<String> = outcome["issue"]
        .as_array()?
        .iter()
        .map(|issue| {
            let details = &issue["details"];
            let text = issue["diagnostics"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .or_else(|| details["coding"][0]["display"].as_str())
                .or_else(|| details["coding"][0]["code"].as_str())
                .unwrap_or("(no text)");
            let severity = issue["severity"].as_str().unwrap_or("error");
            let code = issue["code"].as_str().unwrap_or("unknown");
            format!("{severity} ({code}): {text}")
        })
        .collect();
    Some(issues.join("; "))
}

/// Whether an OperationOutcome says to try again (`issue.code = transient`, or `throttled`).
pub(crate) fn is_transient(outcome: &Value) -> bool {
    outcome["resourceType"] == "OperationOutcome"
        && outcome["issue"].as_array().is_some_and(|issues| {
            issues
                .iter()
                .any(|i| matches!(i["code"].as_str(), Some("transient" | "throttled")))
        })
}

/// How long to wait between attempts, and how many retries one request may use.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    /// Lower bound of every wait (and the first backoff step).
    pub(crate) min: Duration,
    /// Upper bound of every wait, `Retry-After` included.
    pub(crate) max: Duration,
    /// Retries allowed for one request before its error is final.
    pub(crate) budget: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(120),
            budget: 10,
        }
    }
}

impl RetryPolicy {
    /// The server's `Retry-After` clamped to the bounds, else exponential backoff with jitter.
    pub(crate) fn wait(&self, headers: &HeaderMap, attempt: u32) -> Duration {
        match retry_after(headers, SystemTime::now()) {
            Some(wait) => wait.clamp(self.min, self.max),
            None => self.backoff(attempt),
        }
    }

    /// `min * 2^attempt` capped at `max`, then a random point in its upper half (jitter, so
    /// parallel downloads do not retry in lockstep).
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .min
            .saturating_mul(1u32 << attempt.min(20))
            .min(self.max);
        step.mul_f64(rand::rng().random_range(0.5..=1.0))
            .max(self.min)
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = httpdate::parse_http_date(value).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// What one failed attempt means for the request loop.
pub(crate) struct Failure {
    pub(crate) error: Error,
    pub(crate) retry: bool,
}

/// Reads an error response into an [`Error::Http`] with the server's explanation, and decides
/// whether it is worth another attempt: 429, an OperationOutcome saying `transient`, and 5xx
/// without an OperationOutcome (a gateway hiccup; a server that explains a 5xx means it).
pub(crate) async fn http_failure(method: &Method, url: &Url, response: Response) -> Failure {
    let status = response.status();
    let body = read_capped(response, 64 * 1024).await;
    let json: Option<Value> = serde_json::from_slice(&body).ok();
    let message = json
        .as_ref()
        .and_then(|v| {
            outcome_text(v).or_else(|| {
                // An OAuth error response (RFC 6749 §5.2).
                let error = v["error"].as_str()?;
                Some(match v["error_description"].as_str() {
                    Some(description) => format!("{error}: {description}"),
                    None => error.to_string(),
                })
            })
        })
        .unwrap_or_else(|| {
            let text = String::from_utf8_lossy(&body);
            let text: String = text.trim().chars().take(300).collect();
            if text.is_empty() {
                status.canonical_reason().unwrap_or("").to_string()
            } else {
                text
            }
        });
    let outcome = json
        .as_ref()
        .filter(|v| v["resourceType"] == "OperationOutcome");
    let retry = status == StatusCode::TOO_MANY_REQUESTS
        || outcome.is_some_and(is_transient)
        || (status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED && outcome.is_none());
    let error = Error::Http {
        method: method.to_string(),
        url: redact_url(url),
        status: status.as_u16(),
        message,
    };
    Failure { error, retry }
}

/// The first `cap` bytes of a body (error bodies can be whole HTML pages).
async fn read_capped(mut response: Response, cap: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk[..chunk.len().min(cap - body.len())]);
        if body.len() >= cap {
            break;
        }
    }
    body
}

/// An [`Error::Transport`] without the URL reqwest puts in its messages, an [`Error::Tls`]
/// saying what TLS refused (reqwest's own message says only "error sending request"), or an
/// [`Error::Protocol`] saying why a redirect was not followed.
pub(crate) fn transport_error(method: &Method, url: &Url, error: reqwest::Error) -> Error {
    // A redirect the policy refused: reqwest's message ("error following redirect") hides why.
    if error.is_redirect()
        && let Some(why) = std::error::Error::source(&error)
    {
        return Error::Protocol {
            url: redact_url(url),
            message: why.to_string(),
            source: None,
        };
    }
    if let Some(tls) = tls_failure(&error) {
        let hint = match tls {
            rustls::Error::InvalidCertificate(_) => {
                "; if the server's certificate comes from a private certificate authority, trust \
                 its PEM bundle (--ca-bundle, ClientOptions::with_ca_bundle)"
            }
            _ => "",
        };
        return Error::Tls {
            method: method.to_string(),
            url: redact_url(url),
            message: format!("{tls}{hint}"),
        };
    }
    Error::Transport {
        method: method.to_string(),
        url: redact_url(url),
        source: error.without_url(),
    }
}

/// The rustls error somewhere in the causes of `error`, if TLS is what failed.
fn tls_failure(error: &reqwest::Error) -> Option<&rustls::Error> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        // `io::Error::source` skips the error it wraps (and I/O errors nest): step into it.
        cause = match error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner),
            None => error.source(),
        };
    }
    None
}

/// Whether a transport error may go away on its own: a refused or broken connection, a
/// timeout. A TLS refusal or a bad URL fails the same way every time.
pub(crate) fn transport_retryable(error: &reqwest::Error) -> bool {
    (error.is_connect()
        || error.is_timeout()
        || error.is_request()
        || error.is_body()
        || error.is_decode())
        && tls_failure(error).is_none()
}

/// Sends a request until it succeeds (2xx) or fails for good.
///
/// `build` makes the request afresh for every attempt (so it may sign a fresh assertion). With `auth`, a bearer token is attached,
/// and a 401 refreshes it once. 429, transient OperationOutcomes, 5xx and broken connections are
/// retried within the policy's budget, honouring `Retry-After`.
pub(crate) async fn send(
    client: &reqwest::Client,
    policy: &RetryPolicy,
    auth: Option<&dyn TokenSource>,
    method: Method,
    url: &Url,
    build: impl Fn(RequestBuilder) -> Result<RequestBuilder>,
) -> Result<Response> {
    let mut attempt = 0;
    let mut refreshed = false;
    loop {
        let token = match auth {
            Some(auth) => Some(auth.bearer().await?),
            None => None,
        };
        let mut request = build(client.request(method.clone(), url.clone()))?;
        if let Some(token) = &token {
            request = request.bearer_auth(&***token);
        }
        let (failure, wait) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED && !refreshed => {
                if let (Some(auth), Some(token)) = (auth, &token) {
                    tracing::debug!(url = %redact_url(url), "401: refreshing the access token");
                    auth.refused(token).await;
                    refreshed = true;
                    continue;
                }
                let failure = http_failure(&method, url, response).await;
                (failure, Duration::ZERO)
            }
            Ok(response) => {
                let wait = policy.wait(response.headers(), attempt);
                (http_failure(&method, url, response).await, wait)
            }
            Err(error) => {
                let retry = transport_retryable(&error);
                (
                    Failure {
                        error: transport_error(&method, url, error),
                        retry,
                    },
                    policy.backoff(attempt),
                )
            }
        };
        if !failure.retry || attempt >= policy.budget {
            return Err(failure.error);
        }
        tracing::warn!("{}; retrying in {:.1} s", failure.error, wait.as_secs_f64());
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    #[test]
    fn redacts_secrets_but_keeps_bulk_parameters() {
        let url = Url::parse(
            "https://user:pw@s3.example/bucket/f.ndjson?X-Amz-Signature=abc&_type=Patient&token=t",
        )
        .unwrap();
        assert_eq!(
            redact_url(&url),
            "https://s3.example/bucket/f.ndjson?X-Amz-Signature=***&_type=Patient&token=***"
        );
        let plain = Url::parse("http://h/fhir/$export").unwrap();
        assert_eq!(redact_url(&plain), "http://h/fhir/$export");
    }

    #[test]
    fn outcome_text_takes_diagnostics_then_details() {
        let outcome = json!({"resourceType": "OperationOutcome", "issue": [
            {"severity": "error", "code": "processing", "diagnostics": "bad _since"},
            {"severity": "warning", "code": "informational", "details": {"text": "slow"}},
            {"severity": "fatal", "code": "exception", "details": {"coding": [{"code": "X1", "display": "Boom"}]}},
        ]});
        assert_eq!(
            outcome_text(&outcome).unwrap(),
            "error (processing): bad _since; warning (informational): slow; fatal (exception): Boom"
        );
        assert!(!is_transient(&outcome));
        assert!(is_transient(
            &json!({"resourceType": "OperationOutcome", "issue": [{"code": "transient"}]})
        ));
        assert_eq!(outcome_text(&json!({"resourceType": "Patient"})), None);
    }

    /// An HTTP response with `status` and `body`, as reqwest hands it over.
    fn response(status: u16, body: &str) -> Response {
        axum::http::Response::builder()
            .status(status)
            .body(body.to_owned())
            .unwrap()
            .into()
    }

    #[tokio::test]
    async fn only_429_transient_outcomes_and_unexplained_5xx_are_retried() {
        let url = Url::parse("https://fhir.example/$export?_type=Patient").unwrap();
        let transient = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"transient","diagnostics":"busy"}]}"#;
        let fatal = r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"exception","diagnostics":"disk full"}]}"#;
        let cases = [
            (429, "", true),
            (503, transient, true),
            (502, "<html>Bad Gateway</html>", true),
            (504, "", true),
            (500, fatal, false),
            (501, "", false),
            (400, transient, true),
            (404, fatal, false),
        ];
        for (status, body, retry) in cases {
            let failure = http_failure(&Method::GET, &url, response(status, body)).await;
            assert_eq!(failure.retry, retry, "{status} {body}");
        }
        let failure = http_failure(&Method::GET, &url, response(500, fatal)).await;
        assert_eq!(
            failure.error.to_string(),
            "GET https://fhir.example/$export?_type=Patient: HTTP 500: error (exception): disk full"
        );
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&later).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        headers.insert(RETRY_AFTER, HeaderValue::from_str(&past).unwrap());
        assert_eq!(retry_after(&headers, now), Some(Duration::ZERO));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&headers, now), None);
    }

    #[test]
    fn waits_are_clamped_and_backoff_grows_with_jitter() {
        let policy = RetryPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            budget: 3,
        };
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3600"));
        assert_eq!(policy.wait(&headers, 0), Duration::from_secs(2));
        headers.insert(RETRY_AFTER, HeaderValue::from_static("0"));
        assert_eq!(policy.wait(&headers, 0), Duration::from_millis(100));
        for attempt in 0..8 {
            let step = Duration::from_millis(100 * (1 << attempt)).min(Duration::from_secs(2));
            let wait = policy.backoff(attempt);
            assert!(
                wait <= step && wait >= (step / 2).max(policy.min),
                "{attempt}: {wait:?}"
            );
        }
    }
}

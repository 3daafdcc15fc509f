//! HTTP plumbing below the SMART and Bulk Data clients: one request loop with retries
//! (`Retry-After` or backoff with jitter), token refresh on 401 (from any [`TokenSource`]), and
//! errors that carry the server's OperationOutcome text and a URL without query secrets.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// Whether a query parameter is safe to show: a FHIR search parameter (`_type`, `_since`) or a
/// Bulk Data one.
fn is_public_param(key: &str) -> bool {
    key.starts_with('_') || PUBLIC_PARAMS.contains(&key)
}

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
                let value = match is_public_param(&k) {
                    true => v.into_owned(),
                    false => "***".into(),
                };
                (k.into_owned(), value)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

/// Whether [`redact_url`] hides something of `url`.
pub(crate) fn has_secrets(url: &Url) -> bool {
    !url.username().is_empty()
        || url.password().is_some()
        || url.query_pairs().any(|(k, _)| !is_public_param(&k))
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
    /// Total time one request may spend on retries of transient failures.
    pub(crate) deadline: Duration,
    /// Total time one request may spend on retries of connect-level failures (connection
    /// refused, no such host): a server that is down is reported in seconds, not minutes.
    pub(crate) connect_deadline: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(120),
            budget: 10,
            deadline: Duration::from_secs(600),
            connect_deadline: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The server's `Retry-After` within the bounds (a wait above `max` is logged as capped),
    /// else exponential backoff with jitter.
    pub(crate) fn wait(&self, headers: &HeaderMap, attempt: u32) -> Duration {
        match retry_after(headers, SystemTime::now()) {
            Some(asked) if asked > self.max => {
                tracing::info!(
                    "the server asks to wait {}; capped at {} (the retry policy's maximum)",
                    seconds(asked),
                    seconds(self.max)
                );
                self.max
            }
            Some(asked) => asked.max(self.min),
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

/// The retries of one request: counts attempts against the budget and time against the
/// deadlines of a [`RetryPolicy`].
#[derive(Debug)]
pub(crate) struct Retries<'a> {
    policy: &'a RetryPolicy,
    started: Instant,
    attempt: u32,
}

impl<'a> Retries<'a> {
    pub(crate) fn new(policy: &'a RetryPolicy) -> Self {
        Self {
            policy,
            started: Instant::now(),
            attempt: 0,
        }
    }

    /// Retries used so far.
    pub(crate) fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Whether another attempt after `wait` is allowed, counting it if so; `connect` picks the
    /// short deadline of connect-level failures. When not, logs why `error` is final.
    pub(crate) fn next(&mut self, wait: Duration, connect: bool, error: &Error) -> bool {
        let (deadline, which) = if connect {
            (self.policy.connect_deadline, "connect retry deadline")
        } else {
            (self.policy.deadline, "retry deadline")
        };
        let elapsed = self.started.elapsed();
        let limit = if self.attempt >= self.policy.budget {
            format!("retry budget of {}", self.policy.budget)
        } else if elapsed + wait > deadline {
            format!("{which} of {}", seconds(deadline))
        } else {
            self.attempt += 1;
            tracing::warn!("{error}; retrying in {}", seconds(wait));
            return true;
        };
        if self.attempt > 0 {
            tracing::warn!(
                "giving up after {} attempts in {} ({limit} reached)",
                self.attempt + 1,
                seconds(elapsed)
            );
        }
        false
    }
}

/// A duration for logs and errors: `1.5 s`, `20 ms`, `2 h`.
pub(crate) fn seconds(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 1.0 {
        format!("{} ms", duration.as_millis())
    } else if secs >= 7200.0 && secs % 3600.0 == 0.0 {
        format!("{} h", secs / 3600.0)
    } else if secs >= 120.0 && secs % 60.0 == 0.0 {
        format!("{} min", secs / 60.0)
    } else {
        format!("{:.1} s", secs)
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3). A number larger than the
/// current epoch time is an absolute instant, as some servers send on 429: epoch milliseconds
/// when it is that large, else epoch seconds.
pub(crate) fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(number) = value.parse::<u64>() {
        let epoch = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        if number <= epoch.as_secs() {
            return Some(Duration::from_secs(number));
        }
        let at = if number > epoch.as_secs().saturating_mul(100) {
            Duration::from_millis(number)
        } else {
            Duration::from_secs(number)
        };
        return Some(at.saturating_sub(epoch));
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

/// The default bound on a JSON response ([`read_body`]): a manifest of 10,000 files is about
/// 2 MiB.
pub(crate) const DEFAULT_MAX_RESPONSE_BYTES: u64 = 64 << 20;

/// The whole body of a JSON response (a manifest, a status, a token, a discovery document), read
/// chunk by chunk and refused past `max` bytes: decompressed bytes, so a gzip bomb ends at `max`
/// too.
pub(crate) async fn read_body(url: &Url, mut response: Response, max: u64) -> Result<Vec<u8>> {
    let declared = response.content_length().unwrap_or(0);
    let too_large = || Error::Protocol {
        url: redact_url(url),
        message: format!(
            "response larger than {} (limits.max_response_bytes)",
            crate::size::display(max)
        ),
        source: None,
    };
    if declared > max {
        return Err(too_large());
    }
    let mut body = Vec::with_capacity(declared as usize);
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| transport_error(&Method::GET, url, e))?
    {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
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
                 its PEM bundle (--ca-bundle, ca_bundle)"
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

/// What a connect-level failure was, in a word: `connection refused`, `no such host`,
/// `connection timed out`; `None` when the connection was made (or TLS refused it).
pub(crate) fn connect_cause(error: &reqwest::Error) -> Option<&'static str> {
    if !error.is_connect() || tls_failure(error).is_some() {
        return None;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(io) = error.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return Some("connection refused"),
                std::io::ErrorKind::TimedOut => return Some("connection timed out"),
                _ => {}
            }
        }
        if error.to_string().starts_with("dns error") {
            return Some("no such host");
        }
        cause = error.source();
    }
    Some("cannot connect")
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
/// `build` makes the request afresh for every attempt (so it may sign a fresh assertion). With
/// `auth`, a bearer token is attached, and a 401 refreshes it once. 429, transient
/// OperationOutcomes, 5xx and broken connections are retried within the policy's budget and
/// deadline, honouring `Retry-After`; connect-level failures (connection refused, no such host)
/// only within its short connect deadline.
pub(crate) async fn send(
    client: &reqwest::Client,
    policy: &RetryPolicy,
    auth: Option<&dyn TokenSource>,
    method: Method,
    url: &Url,
    build: impl Fn(RequestBuilder) -> Result<RequestBuilder>,
) -> Result<Response> {
    let mut retries = Retries::new(policy);
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
        let (failure, wait, connect) = match request.send().await {
            Ok(response) if response.status().is_success() => return Ok(response),
            Ok(response) if response.status() == StatusCode::UNAUTHORIZED && !refreshed => {
                if let (Some(auth), Some(token)) = (auth, &token) {
                    tracing::debug!(url = %redact_url(url), "401: refreshing the access token");
                    auth.refused(token).await;
                    refreshed = true;
                    continue;
                }
                let failure = http_failure(&method, url, response).await;
                (failure, Duration::ZERO, false)
            }
            Ok(response) => {
                let wait = policy.wait(response.headers(), retries.attempt());
                (http_failure(&method, url, response).await, wait, false)
            }
            Err(error) => {
                let retry = transport_retryable(&error);
                let cause = connect_cause(&error);
                if let Some(cause) = cause {
                    tracing::debug!(url = %redact_url(url), "{cause}");
                }
                let failure = Failure {
                    error: transport_error(&method, url, error),
                    retry,
                };
                (failure, policy.backoff(retries.attempt()), cause.is_some())
            }
        };
        if !failure.retry || !retries.next(wait, connect, &failure.error) {
            return Err(failure.error);
        }
        tokio::time::sleep(wait).await;
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
    fn retry_after_beyond_the_epoch_time_is_an_absolute_instant() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut headers = HeaderMap::new();
        let mut at = |value: String| {
            headers.insert(RETRY_AFTER, HeaderValue::from_str(&value).unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(at("1700000030".into()), Some(Duration::from_secs(30)));
        assert_eq!(
            at("1700000002500".into()),
            Some(Duration::from_millis(2500))
        );
        // An instant just passed (clocks differ) is no wait; a plain delay stays a delay.
        assert_eq!(at("1700000000001".into()), Some(Duration::from_millis(1)));
        assert_eq!(
            at("1699999999".into()),
            Some(Duration::from_secs(1_699_999_999))
        );
        assert_eq!(at("120".into()), Some(Duration::from_secs(120)));
    }

    #[test]
    fn retries_stop_at_the_budget_or_the_deadline() {
        let policy = RetryPolicy {
            budget: 2,
            deadline: Duration::from_secs(10),
            connect_deadline: Duration::from_secs(1),
            ..RetryPolicy::default()
        };
        let error = Error::config("x");
        let mut retries = Retries::new(&policy);
        assert!(retries.next(Duration::from_secs(3), false, &error));
        // The deadline counts from the first attempt: a wait ending past it is not taken.
        assert!(
            !retries.next(Duration::from_secs(11), false, &error),
            "past the deadline"
        );
        assert!(retries.next(Duration::from_secs(1), false, &error));
        assert!(!retries.next(Duration::ZERO, false, &error), "budget spent");
        let mut connect = Retries::new(&policy);
        assert!(!connect.next(Duration::from_secs(2), true, &error));
        assert_eq!(seconds(Duration::from_millis(20)), "20 ms");
        assert_eq!(seconds(Duration::from_secs(86400)), "24 h");
        assert_eq!(seconds(Duration::from_secs(300)), "5 min");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
    }

    #[test]
    fn waits_are_clamped_and_backoff_grows_with_jitter() {
        let policy = RetryPolicy {
            min: Duration::from_millis(100),
            max: Duration::from_secs(2),
            budget: 3,
            ..RetryPolicy::default()
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

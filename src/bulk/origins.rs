//! Where the bearer token may go: the FHIR server's own origin and the origins listed in
//! `token_origins`, nowhere else, and never over plain http when the server speaks https.
//!
//! Bulk Data servers may put status URLs, manifest pages and files on other origins (object
//! storage with presigned URLs, a CDN): those are requested without the token.

use reqwest::{Method, RequestBuilder, Response};
use url::{Origin, Url};

use crate::http::{self, RetryPolicy, TokenSource, redact_url};
use crate::{Error, Result};

/// The origins the bearer token may be sent to, and whether plain http is refused.
#[derive(Clone, Debug)]
pub(crate) struct TokenOrigins {
    /// The FHIR base URL's origin.
    base: Origin,
    /// The FHIR server speaks https: no request may fall back to plain http.
    https: bool,
    /// The `token_origins` besides the base's.
    listed: Vec<Origin>,
}

impl TokenOrigins {
    /// The origins for the FHIR server at `base`, with `listed` (`scheme://host[:port]` each)
    /// also getting the token. An entry that is not an origin, or plain http when the server is
    /// https, is a configuration error naming it.
    pub(crate) fn try_new(base: &Url, listed: &[String]) -> Result<Self> {
        let https = base.scheme() == "https";
        let listed = listed
            .iter()
            .map(|entry| parse_origin(entry, https))
            .collect::<Result<_>>()?;
        Ok(Self {
            base: base.origin(),
            https,
            listed,
        })
    }

    /// Whether a request to `url` may carry the bearer token: only on the FHIR server's origin
    /// (scheme, host and port) or a listed one. A URL that must not be requested at all is an
    /// error: one that is not http(s), or plain http when the FHIR server is https (a downgrade
    /// would expose the data, and the token of a listed origin).
    ///
    /// With an http FHIR server (a local demo), http URLs are requested like https ones: nothing
    /// is downgraded, and the token goes only where it would over https.
    pub(crate) fn token_allowed(&self, url: &Url) -> Result<bool> {
        let refuse = |why: &str| Error::Protocol {
            url: redact_url(url),
            message: format!("refused: {why}"),
            source: None,
        };
        match url.scheme() {
            "https" => {}
            "http" if !self.https => {}
            "http" => {
                return Err(refuse(
                    "plain http, and the FHIR server is https: nothing of an export falls back to http",
                ));
            }
            _ => return Err(refuse("only http and https URLs are requested")),
        }
        let origin = url.origin();
        Ok(origin == self.base || self.listed.contains(&origin))
    }

    /// [`http::send`] with `auth`'s bearer token only where [`TokenOrigins::token_allowed`] says.
    /// A 401 from an origin that got no token says so, and how to send it there.
    pub(crate) async fn send(
        &self,
        client: &reqwest::Client,
        policy: &RetryPolicy,
        auth: Option<&dyn TokenSource>,
        method: Method,
        url: &Url,
        build: impl Fn(RequestBuilder) -> Result<RequestBuilder>,
    ) -> Result<Response> {
        let withheld = !self.token_allowed(url)? && auth.is_some();
        let auth = auth.filter(|_| !withheld);
        http::send(client, policy, auth, method, url, build)
            .await
            .map_err(|error| match error {
                Error::Http {
                    method,
                    url: shown,
                    status: 401,
                    message,
                } if withheld => Error::Http {
                    method,
                    url: shown,
                    status: 401,
                    message: format!(
                        "{message} (no access token was sent: {} is not the FHIR server's origin; \
                         list it in token_origins if it should get the token)",
                        url.origin().ascii_serialization()
                    ),
                },
                error => error,
            })
    }
}

/// One `token_origins` entry: `scheme://host[:port]`, and https when the FHIR server is.
fn parse_origin(entry: &str, https: bool) -> Result<Origin> {
    let url =
        Url::parse(entry).map_err(|e| Error::config_with(format!("token origin {entry:?}"), e))?;
    let bad = |why: &str| Error::config(format!("token origin {:?}: {why}", redact_url(&url)));
    match url.scheme() {
        "https" => {}
        "http" if !https => {}
        "http" => {
            return Err(bad(
                "plain http, and the FHIR server is https: the token never goes over http",
            ));
        }
        _ => return Err(bad("not http or https")),
    }
    let bare = url.username().is_empty()
        && url.password().is_none()
        && url.path() == "/"
        && url.query().is_none()
        && url.fragment().is_none();
    if !bare {
        return Err(bad(
            "an origin is scheme://host[:port], without user, path, query or fragment",
        ));
    }
    Ok(url.origin())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn the_token_goes_to_the_base_origin_and_listed_ones_only() {
        let listed = ["https://files.example.org".to_string()];
        let origins = TokenOrigins::try_new(&url("https://fhir.example.org/r4/"), &listed).unwrap();
        let cases = [
            ("https://fhir.example.org/r4/$export", true),
            ("https://FHIR.example.org:443/jobs/1?sig=x", true),
            ("https://files.example.org/bucket/a.ndjson", true),
            ("https://fhir.example.org:8443/jobs/1", false),
            (
                "https://storage.example.net/a.ndjson?X-Amz-Signature=s",
                false,
            ),
            ("https://sub.fhir.example.org/jobs/1", false),
        ];
        for (text, allowed) in cases {
            assert_eq!(
                origins.token_allowed(&url(text)).unwrap(),
                allowed,
                "{text}"
            );
        }
    }

    #[test]
    fn an_https_server_never_falls_back_to_http() {
        let origins = TokenOrigins::try_new(&url("https://fhir.example.org/r4"), &[]).unwrap();
        let err = origins
            .token_allowed(&url("http://fhir.example.org/files/a.ndjson?sig=secret"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "http://fhir.example.org/files/a.ndjson?sig=***: refused: plain http, and the FHIR \
             server is https: nothing of an export falls back to http"
        );
        let err = origins
            .token_allowed(&url("file:///etc/passwd"))
            .unwrap_err();
        assert!(
            err.to_string()
                .ends_with("only http and https URLs are requested"),
            "{err}"
        );

        // An http server (a local demo): http is fine, the token still stays on its origin.
        let local = TokenOrigins::try_new(&url("http://127.0.0.1:8080/fhir"), &[]).unwrap();
        assert!(
            local
                .token_allowed(&url("http://127.0.0.1:8080/jobs/1"))
                .unwrap()
        );
        assert!(
            !local
                .token_allowed(&url("http://127.0.0.1:9090/files/1"))
                .unwrap()
        );
        assert!(
            !local
                .token_allowed(&url("https://127.0.0.1:8080/jobs/1"))
                .unwrap()
        );
    }

    #[test]
    fn listed_origins_are_checked_and_named_when_wrong() {
        let https = url("https://fhir.example.org/");
        let err = |entry: &str| {
            TokenOrigins::try_new(&https, &[entry.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err("files.example.org"),
            "configuration: token origin \"files.example.org\": relative URL without a base"
        );
        assert_eq!(
            err("https://files.example.org/bucket"),
            "configuration: token origin \"https://files.example.org/bucket\": an origin is \
             scheme://host[:port], without user, path, query or fragment"
        );
        assert_eq!(
            err("https://user:pw@files.example.org"),
            "configuration: token origin \"https://files.example.org/\": an origin is \
             scheme://host[:port], without user, path, query or fragment"
        );
        assert_eq!(
            err("http://files.example.org"),
            "configuration: token origin \"http://files.example.org/\": plain http, and the FHIR \
             server is https: the token never goes over http"
        );
        assert!(err("s3://bucket").ends_with("not http or https"));
        let http = url("http://127.0.0.1:8080/fhir");
        assert!(TokenOrigins::try_new(&http, &["http://localhost:8081".into()]).is_ok());
    }
}

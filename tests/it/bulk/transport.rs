//! How requests travel: TLS with a private certificate authority (or verification skipped), no
//! step down from https to plain http (by the server's URLs or by a redirect), and proxies, given
//! explicitly or by the environment.

use std::sync::{Arc, Mutex};

use fhirflight::Error;
use fhirflight::bulk::{BulkClient, ExportLevel, ExportRequest};
use fhirflight::demo::{DemoConfig, DemoServer, ForeignOrigin};
use url::Url;

use super::{
    demo, downloaded, expected, export, foreign_demo, logs_of, options, rs384, try_export,
};

/// The test CA of `tests/fixtures/tls/` (see its README).
const TEST_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls/ca.pem");

/// A demo server speaking HTTPS with a certificate only the test CA vouches for.
async fn tls_demo() -> DemoServer {
    demo(DemoConfig::default().with_tls(
        include_str!("../../fixtures/tls/server.pem"),
        include_str!("../../fixtures/tls/server.key"),
    ))
    .await
}

#[tokio::test]
async fn a_private_certificate_authority_needs_its_bundle() {
    let server = tls_demo().await;
    assert_eq!(server.base_url().scheme(), "https");
    let untrusting = BulkClient::try_new(server.base_url(), Some(rs384(&server)), options())
        .await
        .unwrap();
    let err = untrusting.resource_types().await.unwrap_err();
    assert!(matches!(err, Error::Tls { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!(
            "GET {}/.well-known/smart-configuration: TLS: invalid peer certificate: UnknownIssuer; \
             if the server's certificate comes from a private certificate authority, trust its PEM \
             bundle (--ca-bundle, ca_bundle)",
            server.base_url()
        )
    );

    let trusting = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_ca_bundle(TEST_CA),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (outcome, _) = export(&trusting, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    assert_eq!(server.stats().deletes, 1);
}

/// `--insecure-skip-tls-verify`: the same server, no bundle, verification off (its warning is
/// tested in `bulk::options`).
#[tokio::test]
async fn skipping_verification_reaches_an_untrusted_server() {
    let server = tls_demo().await;
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_danger_accept_invalid_certs(true),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));
}

#[tokio::test]
async fn an_https_server_pointing_at_plain_http_is_refused() {
    let tls = DemoConfig::default().with_tls(
        include_str!("../../fixtures/tls/server.pem"),
        include_str!("../../fixtures/tls/server.key"),
    );
    let refusal = "refused: plain http, and the FHIR server is https: nothing of an export falls \
                   back to http";
    for (status, files, path) in [(false, true, "files"), (true, false, "jobs")] {
        let server = foreign_demo(tls.clone(), |url| ForeignOrigin {
            url,
            status,
            pages: false,
            files,
            requires_auth: false,
        })
        .await;
        assert_eq!(server.base_url().scheme(), "https");
        let dir = tempfile::tempdir().unwrap();
        let err = try_export(&server, options().with_ca_bundle(TEST_CA), dir.path())
            .await
            .unwrap_err()
            .to_string();
        let origin = format!("http://localhost:{}", server.local_addr().port());
        assert!(
            err.starts_with(&format!("{origin}/{path}/")) && err.ends_with(refusal),
            "{err}"
        );
        assert_eq!(
            server.stats().foreign_requests,
            [],
            "nothing went over http"
        );
    }
}

/// An https server that answers every request with a redirect to plain http.
async fn redirecting_to_http() -> Url {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::{self, pki_types::pem::PemObject};
    let certs = rustls::pki_types::CertificateDer::pem_slice_iter(include_bytes!(
        "../../fixtures/tls/server.pem"
    ))
    .collect::<Result<Vec<_>, _>>()
    .unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(include_bytes!(
        "../../fixtures/tls/server.key"
    ))
    .unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = Url::parse(&format!("https://{}/fhir", listener.local_addr().unwrap())).unwrap();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                continue;
            };
            let mut head = [0u8; 4096];
            let _ = tls.read(&mut head).await;
            let response = "HTTP/1.1 307 Temporary Redirect\r\nLocation: \
                            http://127.0.0.1:9/metadata?sig=secret\r\nContent-Length: 0\r\n\r\n";
            let _ = tls.write_all(response.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    url
}

#[tokio::test]
async fn a_redirect_from_https_to_plain_http_is_refused() {
    let base = redirecting_to_http().await;
    let client = BulkClient::try_new(base.clone(), None, options().with_ca_bundle(TEST_CA))
        .await
        .unwrap();
    let err = client.resource_types().await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{base}/metadata: refused a redirect from https to plain http \
             (http://127.0.0.1:9/metadata?sig=***)"
        )
    );
}

/// A minimal HTTP proxy on 127.0.0.1:0: forwards absolute-form requests (one per connection,
/// `Connection: close` upstream) and tunnels `CONNECT`, recording each request line.
struct CountingProxy {
    url: Url,
    seen: Arc<Mutex<Vec<String>>>,
}

impl CountingProxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = Url::parse(&format!("http://{}/", listener.local_addr().unwrap())).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        tokio::spawn(async move {
            loop {
                let (client, _) = listener.accept().await.unwrap();
                tokio::spawn(Self::relay(client, Arc::clone(&log)));
            }
        });
        Self { url, seen }
    }

    async fn relay(mut client: tokio::net::TcpStream, log: Arc<Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = client.read(&mut buf).await.unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&buf[..n]);
        };
        let text = String::from_utf8(head[..end].to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let request_line: Vec<&str> = lines.next().unwrap().split(' ').collect();
        let [method, target, version] = request_line[..] else {
            panic!("{request_line:?}")
        };
        log.lock().unwrap().push(format!("{method} {target}"));
        let (mut upstream, forwarded) = if method == "CONNECT" {
            let upstream = tokio::net::TcpStream::connect(target).await.unwrap();
            client
                .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                .await
                .unwrap();
            (upstream, Vec::new())
        } else {
            let url = Url::parse(target).expect("absolute-form request target");
            let address = (
                url.host_str().unwrap(),
                url.port_or_known_default().unwrap(),
            );
            let upstream = tokio::net::TcpStream::connect(address).await.unwrap();
            let mut forwarded = format!(
                "{method} {} {version}\r\n",
                &url[url::Position::BeforePath..]
            );
            for line in lines.filter(|l| !l.is_empty()) {
                let name = line.split(':').next().unwrap().to_ascii_lowercase();
                if !matches!(
                    name.as_str(),
                    "connection" | "proxy-connection" | "keep-alive"
                ) {
                    forwarded.push_str(line);
                    forwarded.push_str("\r\n");
                }
            }
            forwarded.push_str("Connection: close\r\n\r\n");
            (upstream, forwarded.into_bytes())
        };
        upstream.write_all(&forwarded).await.unwrap();
        upstream.write_all(&head[end..]).await.unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

#[tokio::test]
async fn an_explicit_proxy_carries_every_request() {
    let proxy = CountingProxy::start().await;
    let server = demo(DemoConfig::default()).await;
    let client = BulkClient::try_new(
        server.base_url(),
        Some(rs384(&server)),
        options().with_proxy(proxy.url.clone()),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient", "Condition"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Condition"), expected("Condition"));

    let origin = server.base_url().join("/").unwrap();
    let seen = proxy.seen();
    let count = |prefix: &str| seen.iter().filter(|l| l.starts_with(prefix)).count();
    let stats = server.stats();
    assert_eq!(
        count(&format!("POST {origin}auth/token")),
        stats.token_requests
    );
    assert_eq!(count(&format!("GET {origin}fhir/$export?_type=")), 1);
    assert_eq!(count(&format!("GET {origin}jobs/")), stats.status_polls);
    assert_eq!(count(&format!("GET {origin}files/")), stats.downloads);
    assert_eq!(count(&format!("DELETE {origin}jobs/")), 1);
    assert!(
        seen.iter()
            .all(|l| l.split(' ').nth(1).unwrap().starts_with(origin.as_str())),
        "only the demo server was asked for: {seen:?}"
    );

    // HTTPS goes through the same proxy, tunnelled by CONNECT.
    let tls = tls_demo().await;
    let client = BulkClient::try_new(
        tls.base_url(),
        Some(rs384(&tls)),
        options()
            .with_ca_bundle(TEST_CA)
            .with_proxy(proxy.url.clone()),
    )
    .await
    .unwrap();
    // A folder of its own: nothing from the export above can stand in for this one's files.
    let dir = tempfile::tempdir().unwrap();
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
    let tunnels = proxy
        .seen()
        .iter()
        .filter(|l| **l == format!("CONNECT {}", tls.local_addr()))
        .count();
    assert!(tunnels >= 1, "{:?}", proxy.seen());
}

/// The proxy variables every child run starts without.
const PROXY_VARIABLES: [&str; 9] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "REQUEST_METHOD",
];

/// Environment variables are read once per process and race between tests, so each case runs
/// [`env_proxy_child`] in a child process of this test binary.
#[tokio::test]
async fn proxies_come_from_the_environment() {
    let proxy = CountingProxy::start().await;
    let server = demo(DemoConfig::default().with_require_auth(false)).await;
    let proxy_url = proxy.url.as_str();
    // (environment, explicit proxy too, expected through the proxy)
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(Env, bool, bool); 6] = [
        (&[("HTTP_PROXY", proxy_url)], false, true),
        (&[("http_proxy", proxy_url)], false, true),
        (&[("all_proxy", proxy_url)], false, true),
        // HTTPS_PROXY is for https:// URLs only.
        (&[("HTTPS_PROXY", proxy_url)], false, false),
        (
            &[
                ("HTTP_PROXY", proxy_url),
                ("NO_PROXY", "localhost,127.0.0.1"),
            ],
            false,
            false,
        ),
        // An explicit proxy still leaves NO_PROXY hosts alone.
        (&[("no_proxy", "127.0.0.0/8")], true, false),
    ];
    for (env, explicit, through_proxy) in cases {
        let before = proxy.seen().len();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "bulk::transport::env_proxy_child",
                "--ignored",
                "--test-threads=1",
            ])
            .env("FHIRFLIGHT_TEST_BASE", server.base_url().as_str());
        for var in PROXY_VARIABLES {
            child.env_remove(var);
        }
        child.envs(env.iter().copied());
        if explicit {
            child.env("FHIRFLIGHT_TEST_PROXY", proxy_url);
        }
        let output = tokio::task::spawn_blocking(move || child.output().unwrap())
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success()
                && stdout.contains("test bulk::transport::env_proxy_child ... ok"),
            "{env:?}: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let proxied = proxy.seen().len() - before;
        assert_eq!(
            proxied > 0,
            through_proxy,
            "{env:?}: {proxied} requests proxied"
        );
    }
    assert_eq!(server.stats().kickoffs.len(), cases.len());
}

/// One export with the proxy settings of the environment `proxies_come_from_the_environment`
/// gives it (plus an explicit proxy when `FHIRFLIGHT_TEST_PROXY` is set).
#[tokio::test]
#[ignore = "run by proxies_come_from_the_environment in a child process"]
async fn env_proxy_child() {
    let base =
        std::env::var("FHIRFLIGHT_TEST_BASE").expect("run by proxies_come_from_the_environment");
    let mut options = options();
    if let Ok(proxy) = std::env::var("FHIRFLIGHT_TEST_PROXY") {
        options = options.with_proxy(proxy.parse().unwrap());
    }
    let client = BulkClient::try_new(base.parse().unwrap(), None, options)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let request = ExportRequest::new(ExportLevel::System).with_types(["Patient"]);
    let (outcome, _) = export(&client, &request, dir.path()).await;
    assert_eq!(downloaded(&outcome, "Patient"), expected("Patient"));
}

#[tokio::test]
async fn skipping_tls_verification_warns_every_time_a_client_is_built() {
    let base = Url::parse("https://fhir.example/r4/").unwrap();
    let insecure = options().with_danger_accept_invalid_certs(true);
    let build = |options| BulkClient::try_new(base.clone(), None, options);
    let (_, logs) = logs_of(async {
        build(insecure.clone()).await.unwrap();
        build(insecure.clone()).await.unwrap();
        build(options()).await.unwrap();
    })
    .await;
    let warnings: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("TLS certificate verification is OFF"))
        .collect();
    assert_eq!(warnings.len(), 2, "{logs}");
    assert!(warnings.iter().all(|l| l.contains("WARN")), "{logs}");
}

#[tokio::test]
async fn proxy_credentials_stay_out_of_debug_and_logs() {
    let proxy = Url::parse("http://alice:s3cret@proxy.example:3128/").unwrap();
    let options = options().with_proxy(proxy);
    let base = Url::parse("https://fhir.example/r4/").unwrap();
    let (_, logs) = logs_of(BulkClient::try_new(base, None, options.clone())).await;
    assert!(logs.contains("proxy.example:3128"), "{logs}");
    let debug = format!("{options:?}");
    assert!(
        debug.contains("proxy: Some(http://proxy.example:3128/)"),
        "{debug}"
    );
    assert!(!debug.contains("s3cret") && !logs.contains("s3cret"));
}

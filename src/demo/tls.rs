//! HTTPS for the demo server: a rustls acceptor behind axum's `Listener`, so tests can stand in
//! for a hospital server whose certificate comes from a private certificate authority.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::error::BoxError;
use crate::{Error, Result};

/// A certificate chain and its private key, both PEM: the identity of a demo server that
/// speaks HTTPS. `Debug` shows neither.
#[derive(Clone)]
pub(crate) struct TlsIdentity {
    pub(crate) cert_chain_pem: String,
    pub(crate) key_pem: String,
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsIdentity { key: *** }")
    }
}

impl TlsIdentity {
    /// A rustls acceptor (ring, TLS 1.2 and 1.3, HTTP/1.1 by ALPN) serving this identity.
    pub(crate) fn acceptor(&self) -> Result<TlsAcceptor> {
        let bad = |what: &str, e: BoxError| Error::Config {
            message: format!("demo server TLS {what}"),
            source: Some(e),
        };
        let certs = CertificateDer::pem_slice_iter(self.cert_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("certificate chain", e.into()))?;
        if certs.is_empty() {
            return Err(Error::config(
                "demo server TLS certificate chain: no certificate in the PEM",
            ));
        }
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| bad("private key", e.into()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| bad("setup", e.into()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| bad("certificate", e.into()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

/// Accepts TCP connections and hands axum those whose TLS handshake succeeded. Handshakes run
/// on their own tasks, so a slow or failing client holds up nobody.
pub(crate) struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    pub(crate) fn new(tcp: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<Self> {
        let local = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let (stream, peer) = tokio::select! {
                    // The server stopped: it dropped the listener.
                    _ = tx.closed() => return,
                    accepted = tcp.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(e) => {
                            // Out of file descriptors and the like: wait a little and go on.
                            tracing::debug!("demo server accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let handshake = acceptor.accept(stream);
                    match tokio::time::timeout(Duration::from_secs(10), handshake).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("demo server: TLS handshake with {peer}: {e}")
                        }
                        Err(_) => {
                            tracing::debug!("demo server: TLS handshake with {peer} timed out")
                        }
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept task only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_identities_are_config_errors_without_the_key() {
        let identity = TlsIdentity {
            cert_chain_pem: include_str!("../../tests/fixtures/tls/server.pem").into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n".into(),
        };
        let err = identity.acceptor().map(|_| ()).unwrap_err().to_string();
        assert!(
            err.starts_with("configuration: demo server TLS private key"),
            "{err}"
        );
        assert_eq!(format!("{identity:?}"), "TlsIdentity { key: *** }");
        let no_chain = TlsIdentity {
            cert_chain_pem: String::new(),
            key_pem: include_str!("../../tests/fixtures/tls/server.key").into(),
        };
        assert!(
            no_chain
                .acceptor()
                .map(|_| ())
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        let good = TlsIdentity {
            cert_chain_pem: include_str!("../../tests/fixtures/tls/server.pem").into(),
            key_pem: include_str!("../../tests/fixtures/tls/server.key").into(),
        };
        assert!(good.acceptor().is_ok());
    }
}

//! TLS on the gRPC listener (rustls, with the ring provider): certificates reloaded from disk
//! without a restart, and optional client-certificate verification (mTLS) with revocation
//! lists.
//!
//! The current `ServerConfig` sits behind a lock; every accepted connection takes the one in
//! force, and a polling task swaps in a new one when the certificate, key, CA or revocation-list files change (a
//! broken change, e.g. a key that does not match the certificate, is refused and the old
//! configuration kept; open connections keep theirs). Polling the files' bytes, rather than
//! watching them, also follows Kubernetes-style symlink swaps. rustls can swap certificates per
//! connection but not the client CA bundle, hence the whole configuration is swapped.
use std::{path::PathBuf, sync::Arc, time::Duration};

use futures::{Stream, StreamExt};
use parking_lot::RwLock;
use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, CertificateRevocationListDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use tokio::net::TcpStream;
use tokio_rustls::{server::TlsStream, TlsAcceptor};

/// Any error, boxed.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Paths of the PEM files; `client_ca` turns on client-certificate verification (mTLS).
#[derive(Debug, Clone)]
struct TlsFiles {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
    /// Revocation lists of client certificates (PEM).
    client_crl: Option<PathBuf>,
    /// Accept clients without a certificate (they still get TLS, without a peer certificate).
    client_auth_optional: bool,
}

/// The bytes read from disk; compared on every poll to detect changes.
#[derive(PartialEq, Eq)]
struct Material {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Option<Vec<u8>>,
    crl: Option<Vec<u8>>,
}

fn read_material(f: &TlsFiles) -> std::io::Result<Material> {
    Ok(Material {
        cert: std::fs::read(&f.cert)?,
        key: std::fs::read(&f.key)?,
        ca: f.client_ca.as_ref().map(std::fs::read).transpose()?,
        crl: f.client_crl.as_ref().map(std::fs::read).transpose()?,
    })
}

/// Explicit provider: never depends on rustls' crate-feature auto-detection
/// (which panics if both `ring` and `aws-lc-rs` end up enabled in the build).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_config(m: &Material, f: &TlsFiles) -> Result<ServerConfig, BoxError> {
    let provider = provider();
    let certs = CertificateDer::pem_slice_iter(&m.cert).collect::<Result<Vec<_>, _>>()?;
    if certs.is_empty() {
        return Err(format!("no certificate in {}", f.cert.display()).into());
    }
    let key = PrivateKeyDer::from_pem_slice(&m.key)?; // PKCS#8, PKCS#1 or SEC1
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &m.ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca) {
                roots.add(c?)?;
            }
            let mut v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if let Some(crl) = &m.crl {
                let crls = CertificateRevocationListDer::pem_slice_iter(crl)
                    .collect::<Result<Vec<_>, _>>()?;
                if crls.is_empty() {
                    return Err(format!(
                        "no revocation list in {}",
                        f.client_crl
                            .as_ref()
                            .map_or("?".into(), |p| p.display().to_string())
                    )
                    .into());
                }
                // A leaf listed by its CA is refused; CAs without a list are not checked.
                v = v
                    .with_crls(crls)
                    .only_check_end_entity_revocation()
                    .allow_unknown_revocation_status();
            }
            if f.client_auth_optional {
                v = v.allow_unauthenticated();
            }
            builder.with_client_cert_verifier(v.build()?)
        }
    };
    // Fails if the key does not match the leaf certificate (protects against half-written files).
    let mut cfg = builder.with_single_cert(certs, key)?;
    // gRPC needs HTTP/2 (tonic's client errors with "HTTP/2 was not negotiated" otherwise), so
    // it comes first; HTTP/1.1 is offered too, for the HTTP API and gRPC-Web from clients that
    // speak only that (browsers' EventSource over some proxies, plain HTTP/1.1 libraries).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Current `ServerConfig`, swapped atomically by the reloader; each accept clones the `Arc`.
#[derive(Clone)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl std::fmt::Debug for ReloadingTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReloadingTls")
            .field("files", &self.files)
            .finish()
    }
}

impl ReloadingTls {
    /// Loads the files of `settings` once (`None` when TLS is off); bad files fail here, at
    /// start-up, naming the problem.
    pub fn from_settings(settings: &crate::config::TlsSettings) -> Result<Option<Self>, BoxError> {
        let (Some(cert), Some(key)) = (&settings.cert_file, &settings.key_file) else {
            return Ok(None);
        };
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: settings.client_ca_file.clone(),
            client_crl: settings.client_crl_file.clone(),
            client_auth_optional: settings.client_auth == crate::config::ClientAuth::Optional,
        };
        let m = read_material(&files).map_err(|e| format!("reading the TLS files: {e}"))?;
        let cfg = build_config(&m, &files)?;
        Ok(Some(Self {
            files,
            current: Arc::new(RwLock::new(Arc::new(cfg))),
        }))
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.read().clone())
    }

    /// Polls the files every `every`; on a change builds a new config and swaps it in.
    /// A bad/partial update is logged and the previous config stays in force.
    /// Existing connections keep the config they were accepted with.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut last = read_material(&this.files).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let m = match tokio::task::spawn_blocking({
                    let f = this.files.clone();
                    move || read_material(&f)
                })
                .await
                {
                    Ok(Ok(m)) => m,
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "tls: cannot read certificate files");
                        continue;
                    }
                    Err(_) => continue,
                };
                if last.as_ref() == Some(&m) {
                    continue;
                }
                match build_config(&m, &this.files) {
                    Ok(cfg) => {
                        *this.current.write() = Arc::new(cfg);
                        tracing::info!("tls: certificate reloaded");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "tls: new certificate rejected; keeping the old one")
                    }
                }
                last = Some(m);
            }
        })
    }
}

/// Wraps a stream of accepted TCP connections (e.g. tonic's `TcpIncoming`) into a stream of
/// finished TLS handshakes, suitable for `Server::serve_with_incoming_shutdown`.
/// Handshakes run concurrently (up to `max_handshakes`), each bounded by `timeout`;
/// failed handshakes are logged and dropped (never returned as errors).
pub fn tls_incoming<S>(
    tcp: S,
    tls: ReloadingTls,
    timeout: Duration,
    max_handshakes: usize,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> + Send + 'static
where
    S: Stream<Item = std::io::Result<TcpStream>> + Send + 'static,
{
    tcp.map(move |accepted| {
        let acceptor = tls.acceptor(); // the config current at accept time
        async move {
            let stream = match accepted {
                Ok(s) => s,
                Err(e) => return Some(Err(e)), // tonic logs accept errors and continues
            };
            let peer = stream.peer_addr().ok();
            match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => Some(Ok(tls)),
                Ok(Err(e)) => {
                    tracing::debug!(?peer, error = %e, "tls handshake failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(?peer, "tls handshake timed out");
                    None
                }
            }
        }
    })
    .buffer_unordered(max_handshakes)
    .filter_map(futures::future::ready)
}

//! TLS on the gRPC port: rustls with our own acceptor, so the certificate
//! can be replaced while serving (on SIGHUP, or when its files change:
//! cert-manager and ACME clients rewrite them in place) without dropping a
//! connection. With a client CA, clients may present certificates signed
//! by it (mutual TLS); a certificate that does not verify (another CA,
//! expired) fails the handshake. Whether a client without one may call is
//! the authenticator's decision (a bearer token is the alternative).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// The files TLS is configured from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates that sign client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading certificates from {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!("{} holds no PEM certificate", path.display());
    }
    Ok(certs)
}

fn load_key(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key in {}", files.key.display()))?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("loading the private key in {}", files.key.display()))?;
    let key = CertifiedKey::new(certs, signing);
    key.keys_match().with_context(|| {
        format!(
            "the key in {} does not belong to the certificate in {}",
            files.key.display(),
            files.cert.display()
        )
    })?;
    Ok(Arc::new(key))
}

fn modified(files: &TlsFiles) -> Option<(SystemTime, SystemTime)> {
    let m = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some((m(&files.cert)?, m(&files.key)?))
}

/// The server's certificate, replaced by [`reload`](Self::reload).
#[derive(Debug)]
pub struct ReloadingCert {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Option<(SystemTime, SystemTime)>>,
}

impl ReloadingCert {
    fn load(files: &TlsFiles) -> anyhow::Result<Self> {
        let before = modified(files);
        Ok(Self {
            current: RwLock::new(load_key(files)?),
            seen: Mutex::new(before),
            files: files.clone(),
        })
    }

    /// Loads the files again. A certificate that does not load (half
    /// written, mismatched key) is refused and the one in use is kept.
    pub fn reload(&self) -> anyhow::Result<()> {
        // The times before the read: files changed during it are seen as
        // changed again, and read again, on the next check.
        let before = modified(&self.files);
        let key = load_key(&self.files)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = key;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = before;
        Ok(())
    }

    /// Whether the files changed since they were last loaded.
    fn changed(&self) -> bool {
        let now = modified(&self.files);
        now.is_some() && *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != now
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// The rustls configuration of `files`, and its certificate (to reload).
pub fn server_config(
    files: &TlsFiles,
) -> anyhow::Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>)> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("a CA certificate in {}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                // No certificate: the authenticator may still accept a
                // bearer token. A certificate that does not verify
                // fails the handshake.
                .allow_unauthenticated()
                .build()
                .context("the client CA")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let cert = Arc::new(ReloadingCert::load(files)?);
    let mut config = builder.with_cert_resolver(Arc::clone(&cert) as Arc<dyn ResolvesServerCert>);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((Arc::new(config), cert))
}

/// Reloads `cert` on SIGHUP, and when its files change (checked every
/// `poll`), until aborted.
pub fn spawn_reloader(cert: Arc<ReloadingCert>, poll: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            #[cfg(unix)]
            let why = tokio::select! {
                _ = tick.tick() => "files changed",
                Some(()) = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await,
                        None => std::future::pending().await,
                    }
                } => "SIGHUP",
            };
            #[cfg(not(unix))]
            let why = {
                tick.tick().await;
                "files changed"
            };
            if why == "files changed" && !cert.changed() {
                continue;
            }
            match cert.reload() {
                Ok(()) => {
                    tracing::info!(cause = why, cert = %cert.files.cert.display(), "TLS certificate reloaded")
                }
                Err(e) => tracing::warn!(
                    cause = why,
                    error = format!("{e:#}"),
                    "TLS certificate not reloaded; serving the previous one"
                ),
            }
        }
    })
}

/// TLS connections accepted on `listener`: each handshake runs on its own
/// task (a slow client holds up nobody) within a timeout; failed
/// handshakes are logged and dropped, never ending the stream.
pub fn incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors, mostly: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

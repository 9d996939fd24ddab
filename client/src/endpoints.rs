//! The replicas of one service, tried in turn.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

/// How a client proves itself and checks the server: TLS (a CA to trust,
/// a client certificate for mutual TLS) and a bearer token.
#[derive(Clone, Default)]
pub struct Credentials {
    tls: Option<ClientTlsConfig>,
    token: Option<tonic::metadata::AsciiMetadataValue>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("Credentials")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

impl Credentials {
    /// Trusts the server certificates signed by the PEM CA `ca_pem` (for
    /// `https://` endpoints; without it the system's roots are not used,
    /// so a private CA is the norm).
    #[must_use]
    pub fn with_ca_pem(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.ca_certificate(Certificate::from_pem(ca_pem)));
        self
    }

    /// Presents this PEM certificate and key (mutual TLS).
    #[must_use]
    pub fn with_client_identity(
        mut self,
        cert_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.identity(Identity::from_pem(cert_pem, key_pem)));
        self
    }

    /// Sends `token` as `authorization: Bearer TOKEN` with every call.
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let mut value: tonic::metadata::AsciiMetadataValue =
            format!("Bearer {}", token.trim()).parse().map_err(|_| {
                ClientError::BadEndpoint("the token has characters a header cannot carry".into())
            })?;
        // Kept out of HPACK's index and out of Debug output.
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// Adds the token, if any, to `req`.
    pub(crate) fn authorize<T>(&self, req: &mut tonic::Request<T>) {
        if let Some(t) = &self.token {
            req.metadata_mut().insert("authorization", t.clone());
        }
    }
}

/// The endpoints of one service's replicas, tried in turn: a launcher
/// given all of them survives the loss of the one it talks to (a warm
/// reattaches elsewhere by its request id).
#[derive(Debug)]
pub struct Endpoints {
    list: Vec<String>,
    /// Where the next connect starts.
    next: std::sync::atomic::AtomicUsize,
    /// The one connected to last.
    current: std::sync::atomic::AtomicUsize,
    credentials: Credentials,
}

impl Endpoints {
    /// One endpoint, or several separated by commas, e.g.
    /// `http://a:50051,http://b:50051`.
    pub fn parse(list: &str) -> Result<Self, String> {
        let list: Vec<String> = list.split(',').map(|e| e.trim().to_owned()).collect();
        if list.iter().any(String::is_empty) {
            return Err(format!(
                "endpoint list {list:?} has an empty entry; give URLs separated by commas"
            ));
        }
        Ok(Self {
            list,
            next: 0.into(),
            current: 0.into(),
            credentials: Credentials::default(),
        })
    }

    /// Connects and calls with `credentials`.
    #[must_use]
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }

    /// The credentials connections and calls use.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The endpoints, in the order given.
    pub fn as_slice(&self) -> &[String] {
        &self.list
    }

    /// Connects to the first endpoint that answers, starting where the
    /// last failure left off; the error of the last one tried if none does.
    pub(crate) async fn connect(&self) -> Result<Channel, ClientError> {
        use std::sync::atomic::Ordering::Relaxed;
        let start = self.next.load(Relaxed);
        let mut last = None;
        for i in 0..self.list.len() {
            let idx = (start + i) % self.list.len();
            match connect_one(&self.list[idx], self.credentials.tls.as_ref()).await {
                Ok(c) => {
                    self.current.store(idx, Relaxed);
                    self.next.store(idx, Relaxed);
                    return Ok(c);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::BadEndpoint("no endpoint given".into())))
    }

    /// Notes that the endpoint connected to last failed: the next
    /// connection starts at the one after it.
    pub fn failed(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let failed = self.current.load(Relaxed);
        self.next.store((failed + 1) % self.list.len(), Relaxed);
    }

    /// The endpoint connected to last.
    pub fn current(&self) -> &str {
        &self.list[self.current.load(std::sync::atomic::Ordering::Relaxed)]
    }
}

/// A channel to one endpoint, e.g. `http://127.0.0.1:50051`.
pub(crate) async fn connect_one(
    endpoint: &str,
    tls: Option<&ClientTlsConfig>,
) -> Result<Channel, ClientError> {
    let connect_err = |source| ClientError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    // A malformed URL is the caller's to fix, not a reason to retry.
    let mut e = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| ClientError::BadEndpoint(format!("{endpoint:?}: {e}")))?;
    if let Some(tls) = tls {
        if !endpoint.starts_with("https://") {
            return Err(ClientError::BadEndpoint(format!(
                "{endpoint:?}: TLS options (a CA or a client certificate) need an https:// endpoint"
            )));
        }
        e = e
            .tls_config(tls.clone())
            .map_err(|e| ClientError::BadEndpoint(format!("{endpoint:?}: TLS: {e}")))?;
    }
    e
        // Short: with several replicas, a dead one must not hold up trying
        // the next.
        .connect_timeout(Duration::from_secs(5))
        .tcp_keepalive(Some(Duration::from_secs(30)))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .connect()
        .await
        .map_err(connect_err)
}

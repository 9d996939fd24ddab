//! The replicas of one service, tried in turn.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{describe, ClientError};

/// How a client proves itself and checks the server: TLS (a CA to trust,
/// a client certificate for mutual TLS) and a bearer token.
#[derive(Clone, Default)]
pub struct Credentials {
    tls: Option<ClientTlsConfig>,
    /// Whether a CA was given: then only it is trusted, else the system's
    /// roots are.
    custom_ca: bool,
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
    /// Trusts the server certificates signed by the PEM CA `ca_pem`, and
    /// only those (for `https://` endpoints; without a CA the system's
    /// roots are trusted).
    #[must_use]
    pub fn with_ca_pem(mut self, ca_pem: impl AsRef<[u8]>) -> Self {
        let tls = self.tls.take().unwrap_or_default();
        self.tls = Some(tls.ca_certificate(Certificate::from_pem(ca_pem)));
        self.custom_ca = true;
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

    /// The TLS settings of an `https://` endpoint: the CA given, else the
    /// system's roots (a server with a certificate from a public CA needs
    /// no `--ca-cert`).
    fn https(&self) -> ClientTlsConfig {
        let tls = self.tls.clone().unwrap_or_default();
        if self.custom_ca {
            tls
        } else {
            tls.with_native_roots()
        }
    }
}

/// The endpoint forms [`Endpoints::parse`] accepts, for messages.
pub const ENDPOINT_FORMS: &str = "give http://HOST:PORT, https://HOST:PORT (TLS) or HOST:PORT (plain http), several separated by commas";

/// One endpoint as a URL tonic connects to: `HOST:PORT` is
/// `http://HOST:PORT`; `http://` and `https://` are kept (the scheme in
/// lower case); any other scheme is refused, so nothing is ever tried
/// against, say, an `s3://` URL given by mistake.
fn normalize(entry: &str) -> Result<String, String> {
    let url = match entry.split_once("://") {
        None => format!("http://{entry}"),
        Some((scheme, rest)) => {
            let scheme = scheme.to_ascii_lowercase();
            if scheme != "http" && scheme != "https" {
                let hint = if scheme == "s3" {
                    " (an s3:// URL names data to warm, not the expresscache server)"
                } else {
                    ""
                };
                return Err(format!(
                    "{entry:?}: unsupported scheme {scheme:?}{hint}; {ENDPOINT_FORMS}"
                ));
            }
            format!("{scheme}://{rest}")
        }
    };
    // Checked here, so a malformed URL is a usage error before anything
    // is tried rather than a failed connection.
    match url.parse::<tonic::transport::Uri>() {
        Ok(uri) if uri.host().is_some_and(|h| !h.is_empty()) => Ok(url),
        Ok(_) => Err(format!("{entry:?} names no host; {ENDPOINT_FORMS}")),
        Err(e) => Err(format!(
            "{entry:?} is not a valid endpoint ({e}); {ENDPOINT_FORMS}"
        )),
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
    /// `http://a:50051,http://b:50051`. `HOST:PORT` without a scheme is
    /// `http://HOST:PORT`; schemes other than `http` and `https` are
    /// refused, as are malformed URLs (nothing is tried).
    pub fn parse(list: &str) -> Result<Self, String> {
        let entries: Vec<&str> = list.split(',').map(str::trim).collect();
        if entries.iter().any(|e| e.is_empty()) {
            return Err(format!(
                "endpoint list {list:?} has an empty entry; {ENDPOINT_FORMS}"
            ));
        }
        let list = entries
            .into_iter()
            .map(normalize)
            .collect::<Result<Vec<_>, _>>()?;
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
            match connect_one(&self.list[idx], &self.credentials).await {
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

/// A channel to one endpoint, e.g. `http://127.0.0.1:50051` (as
/// [`Endpoints::parse`] normalized it).
pub(crate) async fn connect_one(
    endpoint: &str,
    credentials: &Credentials,
) -> Result<Channel, ClientError> {
    let connect_err = |source| ClientError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    // A malformed URL is the caller's to fix, not a reason to retry.
    let mut e = Endpoint::from_shared(endpoint.to_owned()).map_err(|e| {
        ClientError::BadEndpoint(format!("{endpoint:?}: {}", describe::connect_cause(&e)))
    })?;
    if endpoint.starts_with("https://") {
        e = e.tls_config(credentials.https()).map_err(|e| {
            ClientError::BadEndpoint(format!(
                "{endpoint:?}: TLS: {} (give the server's CA with --ca-cert / EXPRESSCACHE_CA_CERT)",
                describe::connect_cause(&e)
            ))
        })?;
    } else if credentials.tls.is_some() {
        return Err(ClientError::BadEndpoint(format!(
            "{endpoint:?}: TLS options (a CA or a client certificate) need an https:// endpoint"
        )));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_without_a_scheme_mean_plain_http() {
        let e = Endpoints::parse("127.0.0.1:50051, HTTPS://cache.internal:443,http://b:1").unwrap();
        assert_eq!(
            e.as_slice(),
            [
                "http://127.0.0.1:50051",
                "https://cache.internal:443",
                "http://b:1"
            ]
        );
    }

    #[test]
    fn other_schemes_are_refused_naming_the_accepted_forms() {
        for bad in [
            "ftp://h:21",
            "s3://demo-src/datasets/",
            "unix:///tmp/s.sock",
        ] {
            let e = Endpoints::parse(bad).unwrap_err();
            assert!(e.contains("unsupported scheme"), "{bad}: {e}");
            assert!(e.contains(ENDPOINT_FORMS), "{bad}: {e}");
        }
        assert!(Endpoints::parse("s3://b/")
            .unwrap_err()
            .contains("names data to warm"));
        for bad in ["http://a b:1", "a,,b", "http://"] {
            assert!(Endpoints::parse(bad).is_err(), "{bad}");
        }
    }
}

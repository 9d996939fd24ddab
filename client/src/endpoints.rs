//! The replicas of one service, tried in turn.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::ClientError;

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
        })
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
            match connect_one(&self.list[idx]).await {
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
pub(crate) async fn connect_one(endpoint: &str) -> Result<Channel, ClientError> {
    let connect_err = |source| ClientError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    };
    // A malformed URL is the caller's to fix, not a reason to retry.
    Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| ClientError::BadEndpoint(format!("{endpoint:?}: {e}")))?
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

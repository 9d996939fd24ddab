//! The fixture every end-to-end test starts from: moto, a source bucket with
//! objects, an empty directory bucket, and an in-process server.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use expresscache_client::{Client, ClientError, Progress, WarmReport, WarmRequest};
use expresscache_server::server::Deps;
use expresscache_server::testing::{
    create_bucket, create_directory_bucket, list_keys, put, unique, unique_directory_bucket, Moto,
    TestIndex, TestServer, TestStore,
};

/// A source bucket with objects, an empty directory bucket and a server.
pub struct Fixture {
    pub moto: Moto,
    pub s3: aws_sdk_s3::Client,
    pub server: TestServer,
    pub src: String,
    pub dir: String,
}

impl Fixture {
    pub async fn new(objects: &[(&str, &[u8])]) -> Self {
        Self::new_tuned(objects, |_| {}).await
    }

    /// Like `new`, with `tune` applied to the server's dependencies.
    pub async fn new_tuned(
        objects: &[(&str, &[u8])],
        tune: impl FnOnce(&mut Deps<TestStore, TestIndex>),
    ) -> Self {
        Self::new_tuned_with_moto(objects, |_, d| tune(d)).await
    }

    /// Like `new_tuned`, and `tune` sees moto (to start what else the
    /// server talks to).
    pub async fn new_tuned_with_moto(
        objects: &[(&str, &[u8])],
        tune: impl FnOnce(&Moto, &mut Deps<TestStore, TestIndex>),
    ) -> Self {
        let moto = Moto::start();
        let s3 = moto.s3();
        let src = unique("src");
        let dir = unique_directory_bucket();
        create_bucket(&s3, &src).await;
        create_directory_bucket(&s3, &dir).await;
        for (k, body) in objects {
            put(&s3, &src, k, *body).await;
        }
        let server = TestServer::start_with(&moto.endpoint, |d| tune(&moto, d)).await;
        Self {
            moto,
            s3,
            server,
            src,
            dir,
        }
    }

    /// From now on every listing of the source is refused (AccessDenied).
    pub fn deny_listings(&self) {
        self.server.store.fail(
            expresscache_server::store::Op::List,
            None,
            expresscache_server::store::StoreError::Service {
                code: "AccessDenied".into(),
                status: 403,
                message: "injected for the test".into(),
            },
            None,
        );
    }

    pub async fn client(&self) -> Client {
        Client::connect(self.server.endpoint.clone())
            .await
            .expect("connect")
    }

    pub fn request(&self, prefixes: &[&str]) -> WarmRequest {
        let mut r = WarmRequest::new(&self.src, &self.dir).ttl(Duration::from_secs(3600));
        for p in prefixes {
            r = r.prefix(*p);
        }
        r
    }

    pub async fn warm(&self, req: WarmRequest) -> WarmReport {
        self.warm_counting(req).await.0
    }

    /// The report and every progress message streamed before it.
    pub async fn warm_counting(&self, req: WarmRequest) -> (WarmReport, Vec<Progress>) {
        let mut updates = Vec::new();
        let report = self
            .client()
            .await
            .warm_and_wait(req, |p| updates.push(p.clone()))
            .await
            .expect("warm");
        (report, updates)
    }

    /// ETag and LastModified of every destination object.
    pub async fn dest_versions(&self) -> BTreeMap<String, (String, String)> {
        let mut out = BTreeMap::new();
        for k in list_keys(&self.s3, &self.dir, "").await {
            let h = self
                .s3
                .head_object()
                .bucket(&self.dir)
                .key(&k)
                .send()
                .await
                .expect("head");
            out.insert(
                k,
                (
                    h.e_tag().unwrap_or_default().to_owned(),
                    h.last_modified().map(|t| t.to_string()).unwrap_or_default(),
                ),
            );
        }
        out
    }
}

pub fn data_set(n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| {
            (
                format!("data/part-{i:04}.bin"),
                format!("payload {i} ").repeat(i + 1).into_bytes(),
            )
        })
        .collect()
}

pub fn as_refs(v: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8])> {
    v.iter().map(|(k, b)| (k.as_str(), b.as_slice())).collect()
}

pub fn rpc_error(e: ClientError) -> tonic::Status {
    match e {
        ClientError::Rpc(s) => s,
        other => panic!("expected an RPC error, got {other:?}"),
    }
}

/// `n` small objects named `{prefix}000`, `{prefix}001`, ...
pub fn objects(prefix: &str, n: usize) -> Vec<(String, Vec<u8>)> {
    (0..n)
        .map(|i| (format!("{prefix}{i:03}"), vec![b'q'; 16]))
        .collect()
}

/// A warm's progress stream as received.
pub type Stream = tonic::Streaming<expresscache_client::pb::WarmProgress>;

/// Reads `stream` to its final message.
pub async fn finish(mut stream: Stream) -> expresscache_client::pb::WarmProgress {
    let mut last = None;
    while let Some(p) = stream.message().await.unwrap() {
        last = Some(p);
    }
    last.expect("a final message")
}

/// The outcome of a progress message.
pub fn outcome(p: &expresscache_client::pb::WarmProgress) -> expresscache_client::pb::Outcome {
    expresscache_client::pb::Outcome::try_from(p.outcome).unwrap()
}

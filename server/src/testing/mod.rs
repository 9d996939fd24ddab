//! Test support shared by this crate's and the client's integration tests
//! (feature `testing`): a moto server (S3 and DynamoDB) on a free
//! port, SDK clients pointed at it, an in-process expresscache server, unique names, and an
//! HTTP fault-injection proxy ([`proxy::FaultProxy`]).
//!
//! A test that needs moto and cannot start it panics with what is missing:
//! it never passes by skipping.

// Test support: a failed step must stop the test with its message.
#![allow(clippy::unwrap_used)]

pub mod built;
pub mod proxy;
pub mod records;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, SharedCredentialsProvider};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketInfo, BucketType, CreateBucketConfiguration, DataRedundancy, LocationInfo, LocationType,
};
use tokio::net::TcpListener;

use crate::core::clock::ManualClock;
use crate::evict::{Evictor, SweepReport};
use crate::index::{CountingIndex, SqliteIndex};
use crate::server::{serve, Deps};
use crate::store::{FaultStore, S3Store};

/// Where the moto server binary is: `$EXPRESSCACHE_MOTO_SERVER`, else the
/// workspace's `.venv/bin/moto_server` (which `scripts/test` installs).
pub fn moto_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EXPRESSCACHE_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/moto_server")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// A moto S3 server for one test, killed on drop.
#[derive(Debug)]
pub struct Moto {
    child: Child,
    pub endpoint: String,
}

/// moto's server, one request at a time (`threaded=False`): moto applies
/// a transaction's items one by one without locking, so two concurrent
/// transactions on its threaded server can interleave, which DynamoDB
/// itself never lets happen (nor a conditional write racing another).
const SERIAL_MOTO: &str = "\
import os, sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
os.environ.setdefault('MOTO_PORT', sys.argv[1])
run_simple('127.0.0.1', int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False, request_handler=MotoRequestHandler)
";

impl Moto {
    /// Starts moto on a free port, serving one request at a time (so each
    /// DynamoDB transaction and conditional write is isolated, as on
    /// DynamoDB), and waits until it accepts connections.
    /// `EXPRESSCACHE_MOTO_THREADED=1` runs moto's own threaded server
    /// instead.
    pub fn start() -> Self {
        Self::launch(std::env::var_os("EXPRESSCACHE_MOTO_THREADED").is_none())
    }

    fn launch(serial: bool) -> Self {
        let bin = moto_binary();
        assert!(
            bin.exists(),
            "moto server not found at {}: run `scripts/test` (it installs moto[server] into .venv) \
             or set EXPRESSCACHE_MOTO_SERVER",
            bin.display()
        );
        for _ in 0..5 {
            let port = free_port();
            let mut command = if serial {
                let python = bin.with_file_name("python");
                let mut c = Command::new(python);
                c.args(["-c", SERIAL_MOTO, &port.to_string()]);
                c
            } else {
                let mut c = Command::new(&bin);
                c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                c
            };
            let child = command
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut moto = Moto {
                child,
                endpoint: format!("http://127.0.0.1:{port}"),
            };
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return moto;
                }
                if let Ok(Some(_)) = moto.child.try_wait() {
                    break; // lost the port race; try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("moto server did not start (tried 5 ports)");
    }

    /// An S3 client for this endpoint with dummy credentials.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        s3_client(&self.endpoint)
    }

    /// SDK settings for this endpoint (us-east-1, dummy credentials), for
    /// the other services moto serves (DynamoDB).
    pub fn sdk_config(&self) -> aws_config::SdkConfig {
        local_sdk_config(&self.endpoint)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The fake S3 Control endpoint (`fake_s3control.py`): S3 Batch
/// Operations jobs run for real against an S3 endpoint, since moto does not
/// implement them. Started with the venv's Python next to moto.
#[derive(Debug)]
pub struct FakeS3Control {
    child: std::process::Child,
    pub endpoint: String,
}

/// The fake's source, written to a file at start (the crate is not run
/// from its source tree by every caller).
const FAKE_S3CONTROL: &str = include_str!("fake_s3control.py");

impl FakeS3Control {
    /// Starts the fake against `s3_endpoint`, with its knobs (`FAKE_S3CONTROL_*`
    /// variables, see the script) in `env`; fails loudly if it cannot.
    pub fn start(s3_endpoint: &str, env: &[(&str, &str)]) -> Self {
        let python = moto_binary().with_file_name("python");
        assert!(
            python.exists(),
            "python not found at {}: run `scripts/test` (it installs the venv)",
            python.display()
        );
        let script = std::env::temp_dir().join(format!("fake_s3control-{}.py", std::process::id()));
        std::fs::write(&script, FAKE_S3CONTROL).expect("write the fake's script");
        let port = free_port();
        let child = Command::new(&python)
            .arg(&script)
            .arg(port.to_string())
            .arg(s3_endpoint)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the fake S3 Control endpoint: {e}"));
        let mut fake = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return fake;
            }
            if let Ok(Some(status)) = fake.child.try_wait() {
                panic!("the fake S3 Control endpoint exited: {status}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the fake S3 Control endpoint did not start");
    }

    /// What the fake saw: `create_job_calls` and every job's state.
    pub fn stats(&self) -> serde_json::Value {
        use std::io::{Read, Write};
        let addr = self.endpoint.trim_start_matches("http://");
        let mut conn = std::net::TcpStream::connect(addr).expect("connect to the fake");
        write!(
            conn,
            "GET /_fake/stats HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .expect("ask the fake");
        let mut reply = String::new();
        conn.read_to_string(&mut reply)
            .expect("read the fake's answer");
        let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
        serde_json::from_str(body).expect("the fake answers JSON")
    }
}

impl Drop for FakeS3Control {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SDK settings for a local endpoint: us-east-1, dummy credentials.
pub fn local_sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    aws_config::SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
            "test", "test", None, None, "static",
        )))
        .build()
}

/// An SDK S3 client for a local endpoint.
pub fn s3_client(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "static"))
        .force_path_style(true)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The item of partition key `pk` in DynamoDB table `table`, read on
/// `moto` directly (past any proxy), with a consistent read.
pub async fn raw_item(
    moto: &Moto,
    table: &str,
    pk: &str,
) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    aws_sdk_dynamodb::Client::new(&moto.sdk_config())
        .get_item()
        .table_name(table)
        .key("pk", aws_sdk_dynamodb::types::AttributeValue::S(pk.into()))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem on moto")
        .item
}

/// A bucket name unique to this test run, starting with `stem`.
pub fn unique(stem: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{stem}-{}", &id[..12])
}

/// A unique directory bucket name in zone use1-az4.
pub fn unique_directory_bucket() -> String {
    format!("{}--use1-az4--x-s3", unique("cache"))
}

pub async fn create_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    s3.create_bucket()
        .bucket(bucket)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket}: {e:?}"));
}

/// Creates a directory bucket the way the AWS docs show.
pub async fn create_directory_bucket(s3: &aws_sdk_s3::Client, bucket: &str) {
    let cfg = CreateBucketConfiguration::builder()
        .location(
            LocationInfo::builder()
                .r#type(LocationType::AvailabilityZone)
                .name("use1-az4")
                .build(),
        )
        .bucket(
            BucketInfo::builder()
                .data_redundancy(DataRedundancy::SingleAvailabilityZone)
                .r#type(BucketType::Directory)
                .build(),
        )
        .build();
    // CreateBucket is a regional call; without this the SDK first asks the
    // (not yet existing) bucket for an S3 Express session.
    let regional = aws_sdk_s3::Client::from_conf(
        s3.config()
            .to_builder()
            .disable_s3_express_session_auth(true)
            .build(),
    );
    regional
        .create_bucket()
        .bucket(bucket)
        .create_bucket_configuration(cfg)
        .send()
        .await
        .unwrap_or_else(|e| panic!("create directory bucket {bucket}: {e:?}"));
}

pub async fn put(s3: &aws_sdk_s3::Client, bucket: &str, key: &str, body: impl Into<Vec<u8>>) {
    s3.put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.into()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {bucket}/{key}: {e:?}"));
}

pub async fn get(s3: &aws_sdk_s3::Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = s3
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {bucket}/{key}: {e:?}"));
    out.body
        .collect()
        .await
        .expect("read body")
        .into_bytes()
        .to_vec()
}

/// Every key of `bucket` under `prefix`, in listing order.
pub async fn list_keys(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut pages = s3
        .list_objects_v2()
        .bucket(bucket)
        .prefix(prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.unwrap_or_else(|e| panic!("list {bucket}: {e:?}"));
        keys.extend(
            page.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
    }
    keys
}

/// The store and index types of [`TestServer`]: real S3 (moto) behind the
/// fault injector, which also counts requests; SQLite behind a counter.
pub type TestStore = FaultStore<S3Store>;
pub type TestIndex = CountingIndex<SqliteIndex>;

/// An expresscache server running in this process against `s3_endpoint`,
/// with its own SQLite index in a temporary directory and a manual clock
/// (starting at the real time) that only tests move. The periodic sweeper is
/// off; tests run [`TestServer::sweep`] when they want one.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub endpoint: String,
    pub store: Arc<TestStore>,
    pub index: Arc<TestIndex>,
    pub clock: Arc<ManualClock>,
    evictor: Evictor,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    pub async fn start(s3_endpoint: &str) -> Self {
        Self::start_with(s3_endpoint, |_| {}).await
    }

    /// Starts with `tune` applied to the default dependencies.
    pub async fn start_with(
        s3_endpoint: &str,
        tune: impl FnOnce(&mut Deps<TestStore, TestIndex>),
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let clock = Arc::new(ManualClock::new(crate::core::clock::now_millis()));
        let index = SqliteIndex::open(&dir.path().join("index.db"))
            .expect("open index")
            .with_clock(clock.clone());
        let store = FaultStore::new(S3Store::new(s3_client(s3_endpoint)));
        let mut deps = Deps::new(store, CountingIndex::new(index));
        deps.ops.publish_interval = Duration::from_millis(50);
        deps.clock = clock.clone();
        deps.sweep_interval = None;
        tune(&mut deps);
        let evictor = Evictor::new(
            deps.store.clone(),
            deps.index.clone(),
            Arc::clone(&deps.clock),
            deps.evict.clone(),
        );
        let (store, index) = (Arc::clone(&deps.store), Arc::clone(&deps.index));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            serve(listener, deps, std::future::pending())
                .await
                .expect("server failed");
        });
        Self {
            addr,
            endpoint: format!("http://{addr}"),
            store,
            index,
            clock,
            evictor,
            _dir: dir,
            task,
        }
    }

    /// Runs one pass of the expiry sweeper now, as the server's would.
    pub async fn sweep(&self) -> SweepReport {
        self.evictor.sweep_once().await.expect("sweep")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

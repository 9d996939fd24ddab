//! Running the real binaries: `expresscache-server` (as a child process
//! configured only through flags and the standard AWS environment) and the
//! `expresscache` CLI.

#![allow(dead_code, clippy::unwrap_used)]

use expresscache_server::index::Records;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use expresscache_server::testing::{
    create_bucket, create_directory_bucket, free_port, put, unique, unique_directory_bucket, Moto,
};
use serde_json::Value;
use std::process::Command as StdCommand;

pub mod pki;

pub fn cli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_expresscache"))
}

/// The server binary cargo built next to this test's binary, or
/// `$EXPRESSCACHE_SERVER_BIN` (to run these tests against another build,
/// e.g. an older release).
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("EXPRESSCACHE_SERVER_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let bin = dir.join("expresscache-server");
    assert!(
        bin.exists(),
        "{} not built: run the tests with `scripts/test` (cargo nextest run --workspace)",
        bin.display()
    );
    bin
}

/// A server process with its own index file and port; it can be killed and
/// started again on the same port and index, as an operator would.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    pub endpoint: String,
    s3_endpoint: String,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Server {
    pub fn start(moto: &Moto) -> Self {
        Self::start_with(moto, &[], &[])
    }

    pub fn start_with(moto: &Moto, extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_on(&moto.endpoint, extra, env)
    }

    /// A server whose S3 endpoint is `s3_endpoint` (e.g. a fault proxy in
    /// front of moto).
    pub fn start_on(s3_endpoint: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let mut s = Self {
            child: None,
            port,
            endpoint: format!("http://127.0.0.1:{port}"),
            s3_endpoint: s3_endpoint.to_owned(),
            extra: extra.iter().map(|a| (*a).to_owned()).collect(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        s.spawn();
        s
    }

    pub fn index_path(&self) -> PathBuf {
        self.dir.path().join("i.db")
    }

    /// Starts the process (again) and waits until it listens.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("server.log")).expect("log file");
        let child = Command::new(server_binary())
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.extra)
            .env(
                "EXPRESSCACHE_INDEX",
                format!("sqlite://{}", self.index_path().display()),
            )
            .env("AWS_ENDPOINT_URL", &self.s3_endpoint)
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_PROFILE")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start expresscache-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "server did not listen; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Whether the process is still running (it has not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Sends `signal` (e.g. "STOP", "CONT") to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal} {pid}");
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM, then waits for the exit; returns how long it took.
    pub fn terminate(&mut self, limit: Duration) -> Duration {
        let mut c = self.child.take().expect("running");
        let t0 = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(ok.success());
        loop {
            if let Some(status) = c.try_wait().expect("wait") {
                assert!(
                    status.success(),
                    "server exited with {status}; log:\n{}",
                    self.log()
                );
                return t0.elapsed();
            }
            if t0.elapsed() > limit {
                let _ = c.kill();
                panic!(
                    "server still running {limit:?} after SIGTERM; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(cli());
        c.arg("--endpoint").arg(&self.endpoint);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run expresscache")
    }

    /// Runs the CLI, failing the test (and killing the CLI) if it has not
    /// finished within `limit`: for the cases that used to hang.
    pub fn run_within(&self, args: &[&str], limit: Duration) -> Output {
        let mut child = self
            .command()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run expresscache");
        let t0 = Instant::now();
        loop {
            if child.try_wait().expect("wait").is_some() {
                return child.wait_with_output().expect("output");
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "`expresscache {}` still running after {limit:?}\nstdout: {}\nserver log:\n{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn json_lines(out: &Output) -> Vec<Value> {
    parse_json_lines(&String::from_utf8_lossy(&out.stdout))
}

/// An integer of the CLI's proto3 JSON: 64-bit integers are strings there,
/// 32-bit ones numbers.
pub fn int(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

pub fn parse_json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

pub struct Setup {
    pub moto: Moto,
    pub server: Server,
    pub src: String,
    pub dir: String,
    pub s3: aws_sdk_s3::Client,
}

/// moto with a source bucket holding `keys` (body = key) and an empty
/// directory bucket, and a server with default settings.
pub async fn setup(keys: &[&str]) -> Setup {
    setup_with(keys, &[]).await
}

/// [`setup`] with `extra` server arguments.
pub async fn setup_with(keys: &[&str], extra: &[&str]) -> Setup {
    let (moto, s3, src, dir) = buckets(keys).await;
    let server = Server::start_with(&moto, extra, &[]);
    Setup {
        moto,
        server,
        src,
        dir,
        s3,
    }
}

pub async fn buckets(keys: &[&str]) -> (Moto, aws_sdk_s3::Client, String, String) {
    let moto = Moto::start();
    let s3 = moto.s3();
    let src = unique("src");
    let dir = unique_directory_bucket();
    create_bucket(&s3, &src).await;
    create_directory_bucket(&s3, &dir).await;
    let mut puts = tokio::task::JoinSet::new();
    for k in keys {
        let (s3, src, k) = (s3.clone(), src.clone(), (*k).to_owned());
        puts.spawn(async move { put(&s3, &src, &k, k.as_bytes().to_vec()).await });
        if puts.len() >= 32 {
            puts.join_next().await;
        }
    }
    puts.join_all().await;
    (moto, s3, src, dir)
}

/// Which index the servers of a test share.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Sqlite,
    Dynamo,
}

impl Kind {
    pub fn index(self, moto: &Moto) -> SharedIndex {
        match self {
            Self::Sqlite => SharedIndex::sqlite(),
            Self::Dynamo => SharedIndex::dynamo(moto),
        }
    }
}

pub enum SharedIndex {
    /// One SQLite file on this host, opened by every replica.
    Sqlite(tempfile::TempDir),
    /// DynamoDB tables on moto (the same moto that serves S3), created with
    /// `expresscache-server index create`.
    Dynamo { prefix: String, endpoint: String },
}

impl SharedIndex {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().unwrap())
    }

    /// Fresh tables on `moto`, created the way an operator would.
    pub fn dynamo(moto: &Moto) -> Self {
        let index = Self::Dynamo {
            prefix: unique("fleet"),
            endpoint: moto.endpoint.clone(),
        };
        let out = StdCommand::new(server_binary())
            .args(["index", "create", "--index", &index.url()])
            .envs(index.env())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "index create: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        index
    }

    pub fn url(&self) -> String {
        match self {
            Self::Sqlite(dir) => format!("sqlite://{}", dir.path().join("shared.db").display()),
            Self::Dynamo { prefix, .. } => format!("dynamodb://{prefix}"),
        }
    }

    /// What the replicas' environment needs besides the index URL.
    pub fn env(&self) -> Vec<(String, String)> {
        match self {
            Self::Sqlite(_) => vec![],
            Self::Dynamo { endpoint, .. } => {
                vec![("AWS_ENDPOINT_URL_DYNAMODB".into(), endpoint.clone())]
            }
        }
    }
}

impl SharedIndex {
    /// The environment a server needs to use this index.
    pub fn server_env(&self) -> Vec<(String, String)> {
        let mut env = self.env();
        env.push(("EXPRESSCACHE_INDEX".into(), self.url()));
        env
    }

    /// Objects recorded under `prefix` of `dir`, read from the index
    /// itself (not through a server).
    pub async fn usage(&self, dir: &str, prefix: &str) -> u64 {
        match self {
            Self::Sqlite(d) => {
                expresscache_server::index::SqliteIndex::open(&d.path().join("shared.db"))
                    .expect("index")
                    .usage(dir, prefix)
                    .await
                    .expect("usage")
                    .objects
            }
            Self::Dynamo {
                prefix: p,
                endpoint,
            } => {
                let table =
                    expresscache_server::index::dynamo::TablePrefix::new(p).expect("prefix");
                expresscache_server::index::DynamoIndex::connect(
                    &expresscache_server::testing::local_sdk_config(endpoint),
                    &table,
                )
                .usage(dir, prefix)
                .await
                .expect("usage")
                .objects
            }
        }
    }
}

/// Borrows `(key, value)` pairs for [`Server::start_on`].
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// Sends `request` to the server at `endpoint` as any gRPC client would
/// (no local checks) and returns the field violations of the
/// INVALID_ARGUMENT it must be refused with.
pub async fn refused_field_violations(
    endpoint: &str,
    request: expresscache_client::pb::WarmCacheRequest,
) -> Vec<tonic_types::FieldViolation> {
    use tonic_types::StatusExt;
    let mut raw = expresscache_client::pb::cache_service_client::CacheServiceClient::connect(
        endpoint.to_owned(),
    )
    .await
    .expect("connect");
    let status = match raw.warm_cache(request).await {
        Err(status) => status,
        Ok(stream) => match stream.into_inner().message().await {
            Err(status) => status,
            Ok(first) => panic!("the request was accepted: {first:?}"),
        },
    };
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    status
        .get_details_bad_request()
        .expect("field violations")
        .field_violations
}

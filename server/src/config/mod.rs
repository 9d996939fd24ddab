//! Server configuration: command line, environment, optional TOML file,
//! defaults, in that order of precedence. Every setting is one row of the
//! table below (help, name, type, default, check, environment variable);
//! `table.rs` turns the rows into the flags, the file keys, [`Config`] and
//! `expresscache-server config print`.

mod table;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use expresscache::Limits;
use table::{check, settings};

#[cfg(any(test, feature = "testing"))]
pub use table::Source;

/// Settings whose default is computed at start, per host: `config print`
/// shows them commented out.
const COMPUTED_DEFAULTS: &[&str] = &["index", "replica_id"];

/// How often a running warm renews its run lease: a run lease lasts at
/// least three of these.
const RUN_RENEW_INTERVAL: Duration = Duration::from_secs(1);

settings! {
    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    listen: SocketAddr => SocketAddr = SocketAddr::from(([127, 0, 0, 1], 50051)),
        parse from_str::<SocketAddr>, check check::any, [env = "EXPRESSCACHE_LISTEN"];
    /// Serve Prometheus metrics over plain HTTP at ADDR/metrics, e.g.
    /// 0.0.0.0:9090 [default: off].
    metrics_listen: SocketAddr => Option<SocketAddr> = None,
        parse from_str::<SocketAddr>, check check::any, [env = "EXPRESSCACHE_METRICS_LISTEN"];
    /// Warms running at once on this server; more wait in phase QUEUED
    /// [default: 64].
    max_running_warms: usize => usize = 64,
        parse from_str::<usize>, check check::within(1..=100_000), [env = "EXPRESSCACHE_MAX_RUNNING_WARMS"];
    /// Warms waiting for a running slot; past it new warms are refused
    /// with RESOURCE_EXHAUSTED and a retry hint [default: 1024].
    max_queued_warms: usize => usize = 1024,
        parse from_str::<usize>, check check::within(0..=1_000_000), [env = "EXPRESSCACHE_MAX_QUEUED_WARMS"];
    /// Warms in progress (running or queued) of one authenticated
    /// principal; past it its new warms are refused with RESOURCE_EXHAUSTED
    /// and a retry hint. 0: no limit per principal (a job array launches
    /// hundreds of warms under one identity at once) [default: 0].
    max_warms_per_principal: usize => usize = 0,
        parse from_str::<usize>, check check::within(0..=1_000_000), [env = "EXPRESSCACHE_MAX_WARMS_PER_PRINCIPAL"];
    /// Concurrent gRPC streams (calls) one client connection may hold
    /// [default: 1024].
    // A job array's launchers may share one connection.
    max_streams_per_connection: u32 => u32 = 1024,
        parse from_str::<u32>, check check::within(1..=1_000_000), [env = "EXPRESSCACHE_MAX_STREAMS_PER_CONNECTION"];
    /// Largest request message accepted, e.g. 1MiB [default: 2MiB].
    // Below a full request (1,000 prefixes of 1 KiB) is a self-inflicted
    // outage; above 64 MiB no request is honest.
    max_request_size: u64 => u64 = 2 * 1024 * 1024,
        parse parse_size, check check::within((1024 * 1024)..=(64 * 1024 * 1024)),
        [env = "EXPRESSCACHE_MAX_REQUEST_SIZE"];
    /// Cached entries one GetStatus call counts at most, over all its
    /// prefixes; past it the counts are lower bounds (counts_truncated)
    /// [default: 1000000].
    status_count_limit: u64 => u64 = 1_000_000,
        parse from_str::<u64>, check check::within(1..=u64::MAX), [env = "EXPRESSCACHE_STATUS_COUNT_LIMIT"];
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key.
    /// Reloaded on SIGHUP and when the files change.
    tls_cert: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_TLS_CERT", requires = "tls_key"];
    /// TLS private key (PEM) for the gRPC port; with --tls-cert.
    tls_key: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_TLS_KEY", requires = "tls_cert"];
    /// CA certificates (PEM) that sign client certificates: mutual TLS,
    /// where a client's principal is its certificate's subject.
    tls_client_ca: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_TLS_CLIENT_CA"];
    /// Bearer tokens: lines `PRINCIPAL sha256:HEX` (hash a token with
    /// `expresscache-server token hash`).
    auth_tokens: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_AUTH_TOKENS"];
    /// Policy file: which principals may warm from which sources into
    /// which directory buckets, evict, force, and see others' operations
    /// (doc/POLICY.md) [default: none, single-tenant].
    policy: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_POLICY"];
    /// Price table (TOML) for dry runs' cost estimates; fields it leaves
    /// out keep the defaults (doc/COSTS.md) [default: us-east-1 list
    /// prices].
    price_table: PathBuf => Option<PathBuf> = None,
        parse from_str::<PathBuf>, check check::any, [env = "EXPRESSCACHE_PRICE_TABLE"];
    /// IAM role S3 Batch Operations assumes for offloaded warms
    /// (arn:aws:iam::ACCOUNT:role/NAME); with --batch-working-bucket, turns
    /// the offload on (doc/OFFLOAD.md) [default: off].
    batch_role_arn: String => Option<String> = None,
        parse from_str::<String>, check check::any,
        [env = "EXPRESSCACHE_BATCH_ROLE_ARN", requires = "batch_working_bucket"];
    /// General-purpose bucket for offloaded warms' manifests and reports.
    batch_working_bucket: String => Option<String> = None,
        parse from_str::<String>, check check::any,
        [env = "EXPRESSCACHE_BATCH_WORKING_BUCKET", requires = "batch_role_arn"];
    /// Offload warms with more objects to copy than this without being
    /// asked (they are planned in full before copying) [default: only warms
    /// that ask].
    batch_threshold: u64 => Option<u64> = None,
        parse from_str::<u64>, check check::any, [env = "EXPRESSCACHE_BATCH_THRESHOLD"];
    /// S3 Control endpoint used as given (a local or test endpoint)
    /// [default: the region's].
    batch_control_endpoint: String => Option<String> = None,
        parse from_str::<String>, check check::any, [env = "EXPRESSCACHE_BATCH_CONTROL_ENDPOINT"];
    /// Serve plaintext gRPC on a non-loopback address (without TLS anyone
    /// on the network can read and send requests): only behind a trusted
    /// proxy or in a private network.
    allow_plaintext: bool => bool = false,
        parse from_str::<bool>, check check::any, [env = "EXPRESSCACHE_ALLOW_PLAINTEXT"];
    /// Cache index: sqlite://PATH (relative or absolute), sqlite://:memory:,
    /// or dynamodb://TABLE_PREFIX for several replicas sharing DynamoDB
    /// tables (create them with `expresscache-server index create`)
    /// [default: sqlite://$XDG_DATA_HOME/expresscache/index.db].
    index: IndexLocation => IndexLocation = IndexLocation::Sqlite(default_index_path()),
        parse IndexLocation::parse, check check::any, [global = true, env = "EXPRESSCACHE_INDEX"];
    /// Hard ceiling of S3 copy requests in flight at once, across all
    /// warms (split among live replicas). Below it, the limit per directory
    /// bucket adapts to the measured latency and to throttling
    /// [default: 1024].
    // Enough for S3 Express at a real round trip (thousands of requests/s
    // need hundreds in flight); the adaptive limit finds what the endpoint
    // takes below it.
    max_concurrency: usize => usize = 1024,
        parse from_str::<usize>, check check::within(1..=10_000), [env = "EXPRESSCACHE_MAX_CONCURRENCY"];
    /// Listings of one warm under way at once: a prefix's sub-prefixes are
    /// listed in parallel; 1 lists each prefix flat, one page after the
    /// other [default: 32].
    list_concurrency: usize => usize = 32,
        parse from_str::<usize>, check check::within(1..=1_000), [env = "EXPRESSCACHE_LIST_CONCURRENCY"];
    /// Objects larger than this are copied in parts with multipart
    /// UploadPartCopy, side by side, e.g. 5GiB, 64MiB [default: 128MiB].
    multipart_threshold: u64 => u64 = DEFAULT_MULTIPART_THRESHOLD,
        parse parse_size, check multipart_threshold_in_range, [env = "EXPRESSCACHE_MULTIPART_THRESHOLD"];
    /// The size of one part of a multipart copy (5MiB..512MiB; more for an
    /// object that would need over 10,000 parts) [default: 64MiB].
    multipart_part_size: u64 => u64 = crate::engine::DEFAULT_PART_SIZE,
        parse parse_size, check part_size_in_range, [env = "EXPRESSCACHE_MULTIPART_PART_SIZE"];
    /// Longest TTL a warm may ask for, e.g. 30d [default: 30d].
    max_ttl: Duration => Duration = Limits::default().max_ttl,
        parse duration, check check::at_least(Duration::from_millis(1)), [env = "EXPRESSCACHE_MAX_TTL"];
    /// Shortest TTL a warm may ask for, e.g. 1s, 5m [default: 1s].
    min_ttl: Duration => Duration = Limits::default().min_ttl,
        parse duration, check check::at_least(Duration::from_millis(1)), [env = "EXPRESSCACHE_MIN_TTL"];
    /// How far clocks may disagree (between replicas, or after a clock
    /// step): deletion of an expired lease's objects and takeover of a
    /// lapsed claim wait this long past the deadline [default: 5s].
    clock_skew_margin: Duration => Duration = Duration::from_secs(5),
        parse duration, check check::at_most(Duration::from_secs(3600)), [env = "EXPRESSCACHE_CLOCK_SKEW_MARGIN"];
    /// Base timeout of one S3 request attempt; copies get more time in
    /// proportion to their size [default: 30s].
    s3_request_timeout: Duration => Duration = Duration::from_secs(30),
        parse duration, check check::at_least(Duration::from_millis(100)), [env = "EXPRESSCACHE_S3_REQUEST_TIMEOUT"];
    /// How long one index call keeps trying while the index is throttled,
    /// failing with 5xx or not answering, before the work that needs it
    /// fails: index trouble slows warms down rather than failing them
    /// [default: 5m].
    index_retry_budget: Duration => Duration = Duration::from_secs(300),
        parse duration, check check::at_most(Duration::from_secs(24 * 3600)), [env = "EXPRESSCACHE_INDEX_RETRY_BUDGET"];
    /// Times a server start resumes one unfinished warm before failing it
    /// (a warm that crashes the server must not crash it forever)
    /// [default: 3].
    max_resumptions: u32 => u32 = 3,
        parse from_str::<u32>, check check::any, [env = "EXPRESSCACHE_MAX_RESUMPTIONS"];
    /// Address buckets as https://endpoint/bucket instead of
    /// https://bucket.endpoint (for S3-compatible endpoints by host name).
    force_path_style: bool => bool = false,
        parse from_str::<bool>, check check::any, [env = "EXPRESSCACHE_S3_FORCE_PATH_STYLE"];
    /// How often expired leases are swept, e.g. 1s, 5m [default: 60s].
    sweep_interval: Duration => Duration = Duration::from_secs(60),
        parse duration, check check::at_least(Duration::from_millis(100)), [env = "EXPRESSCACHE_SWEEP_INTERVAL"];
    /// On SIGTERM/SIGINT, how long running warms may take to finish before
    /// they are interrupted and left for the next start to resume
    /// [default: 30s].
    shutdown_grace: Duration => Duration = Duration::from_secs(30),
        parse duration, check check::any, [env = "EXPRESSCACHE_SHUTDOWN_GRACE"];
    /// How long finished operations stay listed and watchable [default: 7d].
    operation_retention: Duration => Duration = Duration::from_secs(7 * 24 * 3600),
        parse duration, check check::at_least(Duration::from_secs(1)), [env = "EXPRESSCACHE_OPERATION_RETENTION"];
    /// Accept general-purpose buckets as destinations. For S3-compatible
    /// endpoints without directory buckets (benchmarks on garage, MinIO);
    /// off by default, and logged as a warning when on.
    allow_general_purpose_destination: bool => bool = false,
        parse from_str::<bool>, check check::any, [env = "EXPRESSCACHE_ALLOW_GENERAL_PURPOSE_DESTINATION"];
    /// Log format: text or json [default: text].
    log_format: LogFormat => LogFormat = LogFormat::Text,
        parse LogFormat::parse, check check::any, [env = "EXPRESSCACHE_LOG_FORMAT"];
    /// This replica's name in the operation log, unique among the replicas
    /// sharing an index [default: host name and a random suffix].
    replica_id: String => String = default_replica_id(),
        parse from_str::<String>, check replica_id_valid, [env = "EXPRESSCACHE_REPLICA_ID"];
    /// How long a replica keeps an operation it runs without renewing its
    /// run lease: another replica takes an operation over this long (plus
    /// the clock skew margin) after its replica died [default: 10s].
    // Takeover bound: run_lease_ttl + clock_skew_margin + adopt_interval =
    // 17 s by default (doc/FLEET.md).
    run_lease_ttl: Duration => Duration = Duration::from_secs(10),
        parse duration, check check::at_least(RUN_RENEW_INTERVAL * 3), [env = "EXPRESSCACHE_RUN_LEASE_TTL"];
    @fixed {
        /// TLS on the gRPC port, if configured (from the three files above).
        tls: Option<crate::tls::TlsFiles> = None,
        /// How often a running warm renews its run lease (and sees a cancel
        /// requested through another replica).
        run_renew_interval: Duration = RUN_RENEW_INTERVAL,
        /// How often a replica looks for operations whose run lapsed.
        adopt_interval: Duration = Duration::from_secs(2),
        /// How often a running warm publishes progress to its followers.
        publish_interval: Duration = Duration::from_millis(500),
        /// How often a running warm's state is written to the operation log.
        checkpoint_interval: Duration = Duration::from_secs(5),
        /// How often a follower of an operation running elsewhere reads it.
        follow_poll: Duration = Duration::from_millis(500),
        /// How long a Cancel waits for another replica to stop the operation.
        cancel_wait: Duration = Duration::from_secs(30),
    }
}

/// What `expresscache-server` does besides serving (the default).
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ServerCommand {
    /// Manage the index's storage.
    #[command(subcommand)]
    Index(IndexCommand),
    /// Bearer tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// The configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value as a config file (TOML) would
    /// hold it, and where it came from: command line, environment, config
    /// file or default.
    Print,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum TokenCommand {
    /// Reads a token on standard input and prints the `sha256:HEX` that
    /// the tokens file (--auth-tokens) stores for it.
    Hash,
}

#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum IndexCommand {
    /// Create the DynamoDB tables of --index dynamodb://PREFIX (on-demand
    /// billing, TTL, point-in-time recovery); does nothing for tables that
    /// exist as they should, and says what it did.
    Create,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl LogFormat {
    fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("invalid log format {other:?}: text or json")),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

use crate::core::limits::{MAX_COPY_OBJECT, MIN_PART};
/// Above this, an object is copied in parts side by side: at S3's ~90 MB/s
/// a request, one CopyObject of 128 MiB takes 1.5 s, two 64 MiB parts at
/// once under a second with five requests more (listing open uploads,
/// create, one part more, complete, the size check; measured:
/// doc/PERFORMANCE.md, large objects).
const DEFAULT_MULTIPART_THRESHOLD: u64 = 128 * 1024 * 1024;

/// Parses sizes like `5GiB`, `64MiB`, `100MB`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("invalid size {s:?} (e.g. 5GiB, 64MiB): {e}"))
}

/// Where the cache index lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexLocation {
    Sqlite(PathBuf),
    SqliteMemory,
    /// DynamoDB tables under this prefix, shared by every replica.
    Dynamo(crate::index::dynamo::TablePrefix),
}

impl IndexLocation {
    pub fn parse(url: &str) -> Result<Self, String> {
        if url.starts_with(crate::index::dynamo::SCHEME) {
            return crate::index::dynamo::TablePrefix::parse(url).map(Self::Dynamo);
        }
        let Some(rest) = url.strip_prefix("sqlite://") else {
            return Err(format!(
                "unsupported index {url:?}: expected sqlite://PATH or dynamodb://TABLE_PREFIX"
            ));
        };
        match rest {
            "" => Err("sqlite:// needs a path, e.g. sqlite://data/index.db".into()),
            ":memory:" => Ok(Self::SqliteMemory),
            path => Ok(Self::Sqlite(PathBuf::from(path))),
        }
    }
}

/// A replica name unique enough without configuration: the host name and
/// a random suffix (two servers on one host are two replicas).
fn default_replica_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "replica".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &suffix[..8])
}

fn default_index_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("expresscache").join("index.db")
}

impl Config {
    /// Resolves `args` against the config file they name (if any) and the
    /// defaults.
    pub fn resolve(args: Args) -> Result<Self, String> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => BTreeMap::new(),
        };
        let mut config = Self::resolve_each(&args, file)?;
        config.check_together()?;
        Ok(config)
    }

    /// The rules that tie settings together.
    fn check_together(&mut self) -> Result<(), String> {
        if self.min_ttl > self.max_ttl {
            return Err(format!(
                "min_ttl must be between 1ms and max_ttl ({:?}), got {:?}",
                self.max_ttl, self.min_ttl
            ));
        }
        self.tls = match (&self.tls_cert, &self.tls_key, &self.tls_client_ca) {
            (Some(cert), Some(key), client_ca) => Some(crate::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)".into())
            }
            _ => return Err("tls_cert and tls_key go together".into()),
        };
        if self.tls.is_none() && !self.listen.ip().is_loopback() && !self.allow_plaintext {
            return Err(format!(
                "listen {} is not a loopback address: serve TLS (--tls-cert, --tls-key) or \
                 accept plaintext explicitly (--allow-plaintext true) behind a trusted network",
                self.listen
            ));
        }
        Ok(())
    }

    /// The request bounds these settings impose.
    pub fn limits(&self) -> Limits {
        Limits {
            max_ttl: self.max_ttl,
            min_ttl: self.min_ttl,
            allow_general_purpose_destination: self.allow_general_purpose_destination,
            ..Limits::default()
        }
    }
}

/// A config file's settings by key; a key that names no setting is an
/// error (a typo would otherwise be ignored).
fn read_file(path: &Path) -> Result<BTreeMap<String, toml::Value>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
    let mut values: BTreeMap<String, toml::Value> =
        toml::from_str(&text).map_err(|e| format!("invalid config {}: {e}", path.display()))?;
    // Replaced by the adaptive task count (0.2); accepted and ignored so
    // that existing config files still load.
    values.remove("shard_concurrency");
    if let Some(unknown) = values.keys().find(|k| !FILE_KEYS.contains(&k.as_str())) {
        return Err(format!(
            "invalid config {}: unknown setting `{unknown}` (the settings are the flags' names \
             in snake_case: `expresscache-server config print` lists them)",
            path.display()
        ));
    }
    Ok(values)
}

/// A flag's or file value's text as `T`.
fn from_str<T: std::str::FromStr>(s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    if s.trim().is_empty() {
        return Err("an empty value: give one, or leave the setting out".into());
    }
    s.trim()
        .parse()
        .map_err(|e| format!("invalid value {s:?}: {e}"))
}

/// Durations like `30s`, `5m`, `7d`.
fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} (e.g. 30s, 5m): {e}"))
}

fn multipart_threshold_in_range(name: &str, v: &u64) -> Result<(), String> {
    if (MIN_PART..=MAX_COPY_OBJECT).contains(v) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 5MiB and 5GiB (CopyObject's limit), got {v} bytes"
        ))
    }
}

fn part_size_in_range(name: &str, v: &u64) -> Result<(), String> {
    if (MIN_PART..=crate::engine::MAX_PART).contains(v) {
        Ok(())
    } else {
        Err(format!(
            "{name} must be between 5MiB and 512MiB, got {v} bytes"
        ))
    }
}

fn replica_id_valid(name: &str, id: &String) -> Result<(), String> {
    if id.trim().is_empty() || id.len() > 200 {
        Err(format!("{name} must be 1 to 200 characters, got {id:?}"))
    } else {
        Ok(())
    }
}

impl table::Shown for IndexLocation {
    fn shown(&self) -> Option<String> {
        let url = match self {
            IndexLocation::Sqlite(path) => format!("sqlite://{}", path.display()),
            IndexLocation::SqliteMemory => "sqlite://:memory:".to_owned(),
            IndexLocation::Dynamo(prefix) => {
                format!("{}{}", crate::index::dynamo::SCHEME, prefix.as_str())
            }
        };
        url.shown()
    }
}

impl table::Shown for LogFormat {
    fn shown(&self) -> Option<String> {
        Some(format!("\"{}\"", self.name()))
    }
}

impl Default for crate::engine::EngineSettings {
    fn default() -> Self {
        Self::from(&Config::default())
    }
}

// The engine takes its settings from the configuration; they live here,
// not in engine/, so the engine does not depend on the configuration.
impl From<&Config> for crate::engine::EngineSettings {
    fn from(c: &Config) -> Self {
        Self {
            max_concurrency: c.max_concurrency,
            min_concurrency: 1,
            max_attempts: 5,
            retry_base_delay: Duration::from_millis(100),
            retry_max_delay: Duration::from_secs(5),
            multipart_threshold: c.multipart_threshold,
            part_size: c.multipart_part_size,
            part_concurrency: 8,
            request_timeout: c.s3_request_timeout,
            min_copy_rate: 10 * 1024 * 1024,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("5MiB").unwrap(), 5 * 1024 * 1024);
        assert_eq!(parse_size("5GiB").unwrap(), 5 << 30);
        assert_eq!(parse_size("100MB").unwrap(), 100_000_000);
        assert_eq!(parse_size("1024").unwrap(), 1024);
        assert!(parse_size("lots").is_err());
        let too_small = Config::resolve(Args {
            multipart_threshold: Some(1024),
            ..Args::default()
        });
        assert!(too_small.unwrap_err().contains("multipart_threshold"));
    }

    #[test]
    fn index_urls() {
        assert_eq!(
            IndexLocation::parse("sqlite://data/i.db").unwrap(),
            IndexLocation::Sqlite("data/i.db".into())
        );
        assert_eq!(
            IndexLocation::parse("sqlite:///var/lib/i.db").unwrap(),
            IndexLocation::Sqlite("/var/lib/i.db".into())
        );
        assert_eq!(
            IndexLocation::parse("dynamodb://team-cache").unwrap(),
            IndexLocation::Dynamo(crate::index::dynamo::TablePrefix::new("team-cache").unwrap())
        );
        assert!(IndexLocation::parse("dynamodb://").is_err());
        assert!(IndexLocation::parse("dynamodb://a/b").is_err());
        assert!(IndexLocation::parse("redis://x").is_err());
        assert!(IndexLocation::parse("sqlite://").is_err());
    }

    #[test]
    fn every_default_a_help_text_states_is_the_default() {
        use clap::CommandFactory;
        let defaults: BTreeMap<String, String> = Config::default()
            .print_lines()
            .into_iter()
            .filter_map(|l| {
                let (name, rest) = l.split_once(" = ")?;
                Some((name.to_owned(), rest.rsplit_once("  # ")?.0.to_owned()))
            })
            .collect();
        let mut checked = 0;
        for arg in Args::command().get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let stated = rest.split(']').next().unwrap_or_default();
            let name = arg.get_id().as_str();
            // Described, not stated: a default computed at start (the
            // host's name, the user's data directory), or none at all.
            if COMPUTED_DEFAULTS.contains(&name) || !defaults.contains_key(name) {
                continue;
            }
            match shown_as(name, stated) {
                // A value: it must be the default.
                Some(Ok(shown)) => {
                    assert_eq!(
                        shown.as_ref(),
                        defaults.get(name),
                        "{name}: help says {stated}"
                    );
                    checked += 1;
                }
                // A description ("off", "the region's"): the setting has
                // no value of that form.
                Some(Err(_)) => {}
                None => panic!("{name} has a default in its help but is no setting"),
            }
        }
        assert!(checked >= 20, "only {checked} defaults checked");
    }

    #[test]
    fn a_file_takes_what_a_flag_takes_and_print_says_where_each_value_came_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "max_request_size = \"1MiB\"\nstatus_count_limit = 10\nlog_format = \"json\"\n",
        )
        .unwrap();
        let mut args = Args {
            config: Some(path),
            max_concurrency: Some(16),
            sweep_interval: Some(Duration::from_secs(120)),
            ..Args::default()
        };
        args.sources.insert("sweep_interval", Source::Env);
        let cfg = Config::resolve(args).unwrap();
        assert_eq!(cfg.max_request_size, 1024 * 1024);
        assert_eq!(cfg.status_count_limit, 10);
        assert_eq!(cfg.log_format, LogFormat::Json);
        let lines = cfg.print_lines();
        for expected in [
            "max_request_size = 1048576  # config file",
            "max_concurrency = 16  # command line",
            "sweep_interval = \"2m\"  # environment",
            "list_concurrency = 32  # default",
            "log_format = \"json\"  # config file",
            "# tls_cert is not set",
        ] {
            assert!(
                lines.iter().any(|l| l == expected),
                "{expected}: {lines:#?}"
            );
        }
    }

    #[test]
    fn file_fills_what_args_leave_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:6000\"\nmax_ttl = \"2h\"\nmax_concurrency = 8\n",
        )
        .unwrap();
        // Plaintext on every interface is a decision, not a default.
        let refused = Config::resolve(Args {
            config: Some(path.clone()),
            ..Args::default()
        })
        .unwrap_err();
        assert!(refused.contains("--allow-plaintext"), "{refused}");
        std::fs::write(
            &path,
            "listen = \"0.0.0.0:6000\"\nallow_plaintext = true\nmax_ttl = \"2h\"\nmax_concurrency = 8\n",
        )
        .unwrap();
        let cfg = Config::resolve(Args {
            config: Some(path.clone()),
            max_concurrency: Some(16),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(cfg.listen.port(), 6000);
        assert_eq!(cfg.max_ttl, Duration::from_secs(7200));
        assert_eq!(cfg.max_concurrency, 16);
        std::fs::write(&path, "lisen = \"x\"\n").unwrap();
        assert!(Config::resolve(Args {
            config: Some(path),
            ..Args::default()
        })
        .unwrap_err()
        .contains("lisen"));
    }
}

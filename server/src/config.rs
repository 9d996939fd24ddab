//! Server configuration: command line, environment, optional TOML file,
//! defaults, in that order of precedence.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use expresscache::Limits;
use serde::Deserialize;

/// Command line of `expresscache-server`.
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "expresscache-server",
    version,
    about = "Warms S3 Express One Zone directory buckets from general-purpose S3 buckets (gRPC service)"
)]
pub struct Args {
    #[command(subcommand)]
    pub command: Option<ServerCommand>,
    /// TOML file with any of the settings below (keys in snake_case).
    #[arg(long, global = true, env = "EXPRESSCACHE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address to serve gRPC on [default: 127.0.0.1:50051].
    #[arg(long, env = "EXPRESSCACHE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over plain HTTP at ADDR/metrics, e.g.
    /// 0.0.0.0:9090 [default: off].
    #[arg(long, env = "EXPRESSCACHE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Warms running at once on this server; more wait in phase QUEUED
    /// [default: 64].
    #[arg(long, env = "EXPRESSCACHE_MAX_RUNNING_WARMS")]
    pub max_running_warms: Option<usize>,
    /// Warms waiting for a running slot; past it new warms are refused
    /// with RESOURCE_EXHAUSTED and a retry hint [default: 1024].
    #[arg(long, env = "EXPRESSCACHE_MAX_QUEUED_WARMS")]
    pub max_queued_warms: Option<usize>,
    /// Warms in progress (running or queued) of one authenticated
    /// principal; past it its new warms are refused with RESOURCE_EXHAUSTED
    /// and a retry hint. 0: no limit per principal (a job array launches
    /// hundreds of warms under one identity at once) [default: 0].
    #[arg(long, env = "EXPRESSCACHE_MAX_WARMS_PER_PRINCIPAL")]
    pub max_warms_per_principal: Option<usize>,
    /// Concurrent gRPC streams (calls) one client connection may hold
    /// [default: 1024].
    #[arg(long, env = "EXPRESSCACHE_MAX_STREAMS_PER_CONNECTION")]
    pub max_streams_per_connection: Option<u32>,
    /// Largest request message accepted, e.g. 1MiB [default: 2MiB].
    #[arg(long, env = "EXPRESSCACHE_MAX_REQUEST_SIZE", value_parser = parse_size)]
    pub max_request_size: Option<u64>,
    /// Cached entries one GetStatus call counts at most, over all its
    /// prefixes; past it the counts are lower bounds (counts_truncated)
    /// [default: 1000000].
    #[arg(long, env = "EXPRESSCACHE_STATUS_COUNT_LIMIT")]
    pub status_count_limit: Option<u64>,
    /// TLS certificate chain (PEM) for the gRPC port; with --tls-key.
    /// Reloaded on SIGHUP and when the files change.
    #[arg(long, env = "EXPRESSCACHE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for the gRPC port; with --tls-cert.
    #[arg(long, env = "EXPRESSCACHE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that sign client certificates: mutual TLS,
    /// where a client's principal is its certificate's subject.
    #[arg(long, env = "EXPRESSCACHE_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Bearer tokens: lines `PRINCIPAL sha256:HEX` (hash a token with
    /// `expresscache-server token hash`).
    #[arg(long, env = "EXPRESSCACHE_AUTH_TOKENS")]
    pub auth_tokens: Option<PathBuf>,
    /// Policy file: which principals may warm from which sources into
    /// which directory buckets, evict, force, and see others' operations
    /// (doc/POLICY.md) [default: none, single-tenant].
    #[arg(long, env = "EXPRESSCACHE_POLICY")]
    pub policy: Option<PathBuf>,
    /// Price table (TOML) for dry runs' cost estimates; fields it leaves
    /// out keep the defaults (doc/COSTS.md) [default: us-east-1 list
    /// prices].
    #[arg(long, env = "EXPRESSCACHE_PRICE_TABLE")]
    pub price_table: Option<PathBuf>,
    /// IAM role S3 Batch Operations assumes for offloaded warms
    /// (arn:aws:iam::ACCOUNT:role/NAME); with --batch-working-bucket, turns
    /// the offload on (doc/OFFLOAD.md) [default: off].
    #[arg(
        long,
        env = "EXPRESSCACHE_BATCH_ROLE_ARN",
        requires = "batch_working_bucket"
    )]
    pub batch_role_arn: Option<String>,
    /// General-purpose bucket for offloaded warms' manifests and reports.
    #[arg(
        long,
        env = "EXPRESSCACHE_BATCH_WORKING_BUCKET",
        requires = "batch_role_arn"
    )]
    pub batch_working_bucket: Option<String>,
    /// Offload warms with more objects to copy than this without being
    /// asked (they are planned in full before copying) [default: only warms
    /// that ask].
    #[arg(long, env = "EXPRESSCACHE_BATCH_THRESHOLD")]
    pub batch_threshold: Option<u64>,
    /// S3 Control endpoint used as given (a local or test endpoint)
    /// [default: the region's].
    #[arg(long, env = "EXPRESSCACHE_BATCH_CONTROL_ENDPOINT")]
    pub batch_control_endpoint: Option<String>,
    /// Serve plaintext gRPC on a non-loopback address (without TLS anyone
    /// on the network can read and send requests): only behind a trusted
    /// proxy or in a private network.
    #[arg(long, env = "EXPRESSCACHE_ALLOW_PLAINTEXT")]
    pub allow_plaintext: Option<bool>,
    /// Cache index: sqlite://PATH (relative or absolute), sqlite://:memory:,
    /// or dynamodb://TABLE_PREFIX for several replicas sharing DynamoDB
    /// tables (create them with `expresscache-server index create`)
    /// [default: sqlite://$XDG_DATA_HOME/expresscache/index.db].
    #[arg(long, global = true, env = "EXPRESSCACHE_INDEX")]
    pub index: Option<String>,
    /// Hard ceiling of S3 copy requests in flight at once, across all
    /// warms (split among live replicas). Below it, the limit per directory
    /// bucket adapts to the measured latency and to throttling
    /// [default: 1024].
    #[arg(long, env = "EXPRESSCACHE_MAX_CONCURRENCY")]
    pub max_concurrency: Option<usize>,
    /// Listings of one warm under way at once: a prefix's sub-prefixes are
    /// listed in parallel; 1 lists each prefix flat, one page after the
    /// other [default: 32].
    #[arg(long, env = "EXPRESSCACHE_LIST_CONCURRENCY")]
    pub list_concurrency: Option<usize>,
    /// Objects larger than this are copied in parts with multipart
    /// UploadPartCopy, side by side, e.g. 5GiB, 64MiB [default: 128MiB].
    #[arg(long, env = "EXPRESSCACHE_MULTIPART_THRESHOLD", value_parser = parse_size)]
    pub multipart_threshold: Option<u64>,
    /// The size of one part of a multipart copy (5MiB..512MiB; more for an
    /// object that would need over 10,000 parts) [default: 64MiB].
    #[arg(long, env = "EXPRESSCACHE_MULTIPART_PART_SIZE", value_parser = parse_size)]
    pub multipart_part_size: Option<u64>,
    /// Longest TTL a warm may ask for, e.g. 30d [default: 30d].
    #[arg(long, env = "EXPRESSCACHE_MAX_TTL", value_parser = humantime::parse_duration)]
    pub max_ttl: Option<Duration>,
    /// Shortest TTL a warm may ask for, e.g. 1s, 5m [default: 1s].
    #[arg(long, env = "EXPRESSCACHE_MIN_TTL", value_parser = humantime::parse_duration)]
    pub min_ttl: Option<Duration>,
    /// How far clocks may disagree (between replicas, or after a clock
    /// step): deletion of an expired lease's objects and takeover of a
    /// lapsed claim wait this long past the deadline [default: 5s].
    #[arg(long, env = "EXPRESSCACHE_CLOCK_SKEW_MARGIN", value_parser = humantime::parse_duration)]
    pub clock_skew_margin: Option<Duration>,
    /// Base timeout of one S3 request attempt; copies get more time in
    /// proportion to their size [default: 30s].
    #[arg(long, env = "EXPRESSCACHE_S3_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    pub s3_request_timeout: Option<Duration>,
    /// How long one index call keeps trying while the index is throttled,
    /// failing with 5xx or not answering, before the work that needs it
    /// fails: index trouble slows warms down rather than failing them
    /// [default: 5m].
    #[arg(long, env = "EXPRESSCACHE_INDEX_RETRY_BUDGET", value_parser = humantime::parse_duration)]
    pub index_retry_budget: Option<Duration>,
    /// Times a server start resumes one unfinished warm before failing it
    /// (a warm that crashes the server must not crash it forever)
    /// [default: 3].
    #[arg(long, env = "EXPRESSCACHE_MAX_RESUMPTIONS")]
    pub max_resumptions: Option<u32>,
    /// Address buckets as https://endpoint/bucket instead of
    /// https://bucket.endpoint (for S3-compatible endpoints by host name).
    #[arg(long, env = "EXPRESSCACHE_S3_FORCE_PATH_STYLE")]
    pub force_path_style: Option<bool>,
    /// How often expired leases are swept, e.g. 1s, 5m [default: 60s].
    #[arg(long, env = "EXPRESSCACHE_SWEEP_INTERVAL", value_parser = humantime::parse_duration)]
    pub sweep_interval: Option<Duration>,
    /// On SIGTERM/SIGINT, how long running warms may take to finish before
    /// they are interrupted and left for the next start to resume
    /// [default: 30s].
    #[arg(long, env = "EXPRESSCACHE_SHUTDOWN_GRACE", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// How long finished operations stay listed and watchable [default: 7d].
    #[arg(long, env = "EXPRESSCACHE_OPERATION_RETENTION", value_parser = humantime::parse_duration)]
    pub operation_retention: Option<Duration>,
    /// Accept general-purpose buckets as destinations. For S3-compatible
    /// endpoints without directory buckets (benchmarks on garage, MinIO);
    /// off by default, and logged as a warning when on.
    #[arg(long, env = "EXPRESSCACHE_ALLOW_GENERAL_PURPOSE_DESTINATION")]
    pub allow_general_purpose_destination: Option<bool>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "EXPRESSCACHE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
    /// This replica's name in the operation log, unique among the replicas
    /// sharing an index [default: host name and a random suffix].
    #[arg(long, env = "EXPRESSCACHE_REPLICA_ID")]
    pub replica_id: Option<String>,
    /// How long a replica keeps an operation it runs without renewing its
    /// run lease: another replica takes an operation over this long (plus
    /// the clock skew margin) after its replica died [default: 10s].
    #[arg(long, env = "EXPRESSCACHE_RUN_LEASE_TTL", value_parser = humantime::parse_duration)]
    pub run_lease_ttl: Option<Duration>,
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

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The same settings as they appear in a config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_client_ca: Option<PathBuf>,
    auth_tokens: Option<PathBuf>,
    policy: Option<PathBuf>,
    price_table: Option<PathBuf>,
    batch_role_arn: Option<String>,
    batch_working_bucket: Option<String>,
    batch_threshold: Option<u64>,
    batch_control_endpoint: Option<String>,
    allow_plaintext: Option<bool>,
    metrics_listen: Option<SocketAddr>,
    max_running_warms: Option<usize>,
    max_queued_warms: Option<usize>,
    max_warms_per_principal: Option<usize>,
    max_streams_per_connection: Option<u32>,
    max_request_size: Option<String>,
    status_count_limit: Option<u64>,
    index: Option<String>,
    max_concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    max_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    min_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    clock_skew_margin: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    s3_request_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    index_retry_budget: Option<Duration>,
    max_resumptions: Option<u32>,
    force_path_style: Option<bool>,
    log_format: Option<LogFormat>,
    #[serde(default, with = "humantime_serde_opt")]
    sweep_interval: Option<Duration>,
    multipart_threshold: Option<String>,
    multipart_part_size: Option<String>,
    allow_general_purpose_destination: Option<bool>,
    list_concurrency: Option<usize>,
    /// Replaced by the adaptive task count (0.2); accepted and ignored so
    /// that existing config files still load.
    #[allow(dead_code)]
    shard_concurrency: Option<usize>,
    #[serde(default, with = "humantime_serde_opt")]
    shutdown_grace: Option<Duration>,
    #[serde(default, with = "humantime_serde_opt")]
    operation_retention: Option<Duration>,
    replica_id: Option<String>,
    #[serde(default, with = "humantime_serde_opt")]
    run_lease_ttl: Option<Duration>,
}

mod humantime_serde_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| humantime::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

const MIN_MULTIPART: u64 = 5 * 1024 * 1024;
const MAX_COPY_OBJECT: u64 = 5 * 1024 * 1024 * 1024;
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

/// `value`, or an error naming `name` and the range it must be in.
fn in_range<T: PartialOrd + std::fmt::Display>(
    name: &str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, String> {
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(format!(
            "{name} must be {}..={}, got {value}",
            range.start(),
            range.end()
        ))
    }
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

/// Fully resolved settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// TLS on the gRPC port, if configured.
    pub tls: Option<crate::tls::TlsFiles>,
    /// The bearer tokens file, if any.
    pub auth_tokens: Option<PathBuf>,
    /// The policy file, if any.
    pub policy: Option<PathBuf>,
    /// The price table file, if any.
    pub price_table: Option<PathBuf>,
    /// S3 Batch Operations offload: role, working bucket, threshold and
    /// S3 Control endpoint (off without a role).
    pub batch_role_arn: Option<String>,
    pub batch_working_bucket: Option<String>,
    pub batch_threshold: Option<u64>,
    pub batch_control_endpoint: Option<String>,
    /// Plaintext on a non-loopback address was asked for explicitly.
    pub allow_plaintext: bool,
    /// Where `/metrics` is served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    pub max_running_warms: usize,
    pub max_queued_warms: usize,
    pub max_warms_per_principal: usize,
    pub max_streams_per_connection: u32,
    pub max_request_size: u64,
    pub status_count_limit: u64,
    pub index: IndexLocation,
    pub max_concurrency: usize,
    pub max_ttl: Duration,
    pub min_ttl: Duration,
    pub clock_skew_margin: Duration,
    pub s3_request_timeout: Duration,
    pub index_retry_budget: Duration,
    pub max_resumptions: u32,
    pub force_path_style: bool,
    pub log_format: LogFormat,
    pub sweep_interval: Duration,
    pub multipart_threshold: u64,
    pub multipart_part_size: u64,
    pub allow_general_purpose_destination: bool,
    pub list_concurrency: usize,
    pub shutdown_grace: Duration,
    pub operation_retention: Duration,
    pub replica_id: String,
    pub run_lease_ttl: Duration,
    /// How often a running warm renews its run lease (and sees a cancel
    /// requested through another replica).
    pub run_renew_interval: Duration,
    /// How often a replica looks for operations whose run lapsed.
    pub adopt_interval: Duration,
    /// How often a running warm publishes progress to its followers.
    pub publish_interval: Duration,
    /// How often a running warm's state is written to the operation log.
    pub checkpoint_interval: Duration,
    /// How often a follower of an operation running elsewhere reads it.
    pub follow_poll: Duration,
    /// How long a Cancel waits for another replica to stop the operation.
    pub cancel_wait: Duration,
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
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| format!("invalid config {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let index = match args.index.or(file.index) {
            Some(url) => IndexLocation::parse(&url)?,
            None => d.index,
        };
        let max_concurrency = args
            .max_concurrency
            .or(file.max_concurrency)
            .unwrap_or(d.max_concurrency);
        if max_concurrency == 0 || max_concurrency > 10_000 {
            return Err(format!(
                "max_concurrency must be 1..=10000, got {max_concurrency}"
            ));
        }
        let max_ttl = args.max_ttl.or(file.max_ttl).unwrap_or(d.max_ttl);
        if max_ttl.is_zero() {
            return Err("max_ttl must be greater than zero".into());
        }
        let min_ttl = args.min_ttl.or(file.min_ttl).unwrap_or(d.min_ttl);
        if min_ttl < Duration::from_millis(1) || min_ttl > max_ttl {
            return Err(format!(
                "min_ttl must be between 1ms and max_ttl ({max_ttl:?}), got {min_ttl:?}"
            ));
        }
        let clock_skew_margin = args
            .clock_skew_margin
            .or(file.clock_skew_margin)
            .unwrap_or(d.clock_skew_margin);
        if clock_skew_margin > Duration::from_secs(3600) {
            return Err(format!(
                "clock_skew_margin must be at most 1h, got {clock_skew_margin:?}"
            ));
        }
        let index_retry_budget = args
            .index_retry_budget
            .or(file.index_retry_budget)
            .unwrap_or(d.index_retry_budget);
        if index_retry_budget > Duration::from_secs(24 * 3600) {
            return Err(format!(
                "index_retry_budget must be at most 24h, got {index_retry_budget:?}"
            ));
        }
        let s3_request_timeout = args
            .s3_request_timeout
            .or(file.s3_request_timeout)
            .unwrap_or(d.s3_request_timeout);
        if s3_request_timeout < Duration::from_millis(100) {
            return Err(format!(
                "s3_request_timeout must be at least 100ms, got {s3_request_timeout:?}"
            ));
        }
        let sweep_interval = args
            .sweep_interval
            .or(file.sweep_interval)
            .unwrap_or(d.sweep_interval);
        if sweep_interval < Duration::from_millis(100) {
            return Err("sweep_interval must be at least 100ms".into());
        }
        let operation_retention = args
            .operation_retention
            .or(file.operation_retention)
            .unwrap_or(d.operation_retention);
        if operation_retention < Duration::from_secs(1) {
            return Err("operation_retention must be at least 1s".into());
        }
        let multipart_threshold = match (args.multipart_threshold, file.multipart_threshold) {
            (Some(n), _) => n,
            (None, Some(s)) => parse_size(&s)?,
            (None, None) => d.multipart_threshold,
        };
        if !(MIN_MULTIPART..=MAX_COPY_OBJECT).contains(&multipart_threshold) {
            return Err(format!(
                "multipart_threshold must be between 5MiB and 5GiB (CopyObject's limit), got {multipart_threshold} bytes"
            ));
        }
        let multipart_part_size = match (args.multipart_part_size, file.multipart_part_size) {
            (Some(n), _) => n,
            (None, Some(s)) => parse_size(&s)?,
            (None, None) => d.multipart_part_size,
        };
        if !(crate::engine::MIN_PART..=crate::engine::MAX_PART).contains(&multipart_part_size) {
            return Err(format!(
                "multipart_part_size must be between 5MiB and 512MiB, got {multipart_part_size} bytes"
            ));
        }
        let list_concurrency = args
            .list_concurrency
            .or(file.list_concurrency)
            .unwrap_or(d.list_concurrency);
        if !(1..=1_000).contains(&list_concurrency) {
            return Err(format!(
                "list_concurrency must be 1..=1000, got {list_concurrency}"
            ));
        }
        let listen = args.listen.or(file.listen).unwrap_or(d.listen);
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
            args.tls_client_ca.or(file.tls_client_ca),
        ) {
            (Some(cert), Some(key), client_ca) => Some(crate::tls::TlsFiles {
                cert,
                key,
                client_ca,
            }),
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err("tls_client_ca needs tls_cert and tls_key (mutual TLS is TLS)".into())
            }
            _ => return Err("tls_cert and tls_key go together".into()),
        };
        let allow_plaintext = args
            .allow_plaintext
            .or(file.allow_plaintext)
            .unwrap_or(d.allow_plaintext);
        if tls.is_none() && !listen.ip().is_loopback() && !allow_plaintext {
            return Err(format!(
                "listen {listen} is not a loopback address: serve TLS (--tls-cert, --tls-key) or \
                 accept plaintext explicitly (--allow-plaintext true) behind a trusted network"
            ));
        }
        let auth_tokens = args.auth_tokens.or(file.auth_tokens);
        Ok(Self {
            listen,
            tls,
            auth_tokens,
            policy: args.policy.or(file.policy),
            price_table: args.price_table.or(file.price_table),
            batch_role_arn: args.batch_role_arn.or(file.batch_role_arn),
            batch_working_bucket: args.batch_working_bucket.or(file.batch_working_bucket),
            batch_threshold: args.batch_threshold.or(file.batch_threshold),
            batch_control_endpoint: args.batch_control_endpoint.or(file.batch_control_endpoint),
            allow_plaintext,
            metrics_listen: args.metrics_listen.or(file.metrics_listen),
            max_running_warms: in_range(
                "max_running_warms",
                args.max_running_warms
                    .or(file.max_running_warms)
                    .unwrap_or(d.max_running_warms),
                1..=100_000,
            )?,
            max_queued_warms: in_range(
                "max_queued_warms",
                args.max_queued_warms
                    .or(file.max_queued_warms)
                    .unwrap_or(d.max_queued_warms),
                0..=1_000_000,
            )?,
            max_warms_per_principal: in_range(
                "max_warms_per_principal",
                args.max_warms_per_principal
                    .or(file.max_warms_per_principal)
                    .unwrap_or(d.max_warms_per_principal),
                0..=1_000_000,
            )?,
            max_streams_per_connection: in_range(
                "max_streams_per_connection",
                args.max_streams_per_connection
                    .or(file.max_streams_per_connection)
                    .unwrap_or(d.max_streams_per_connection),
                1..=1_000_000,
            )?,
            max_request_size: in_range(
                "max_request_size",
                match (args.max_request_size, file.max_request_size) {
                    (Some(n), _) => n,
                    (None, Some(s)) => parse_size(&s)?,
                    (None, None) => d.max_request_size,
                },
                // Below a full request (1,000 prefixes of 1 KiB) is a
                // self-inflicted outage; above 64 MiB no request is honest.
                (1024 * 1024)..=(64 * 1024 * 1024),
            )?,
            status_count_limit: in_range(
                "status_count_limit",
                args.status_count_limit
                    .or(file.status_count_limit)
                    .unwrap_or(d.status_count_limit),
                1..=u64::MAX,
            )?,
            index,
            max_concurrency,
            max_ttl,
            min_ttl,
            clock_skew_margin,
            s3_request_timeout,
            index_retry_budget,
            max_resumptions: args
                .max_resumptions
                .or(file.max_resumptions)
                .unwrap_or(d.max_resumptions),
            force_path_style: args
                .force_path_style
                .or(file.force_path_style)
                .unwrap_or(d.force_path_style),
            log_format: args.log_format.or(file.log_format).unwrap_or(d.log_format),
            sweep_interval,
            multipart_threshold,
            multipart_part_size,
            allow_general_purpose_destination: args
                .allow_general_purpose_destination
                .or(file.allow_general_purpose_destination)
                .unwrap_or(d.allow_general_purpose_destination),
            list_concurrency,
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(d.shutdown_grace),
            operation_retention,
            replica_id: match args.replica_id.or(file.replica_id) {
                Some(id) if id.trim().is_empty() || id.len() > 200 => {
                    return Err(format!(
                        "replica_id must be 1 to 200 characters, got {:?}",
                        id
                    ))
                }
                Some(id) => id,
                None => d.replica_id,
            },
            run_lease_ttl: {
                let ttl = args
                    .run_lease_ttl
                    .or(file.run_lease_ttl)
                    .unwrap_or(d.run_lease_ttl);
                if ttl < d.run_renew_interval * 3 {
                    return Err(format!(
                        "run_lease_ttl must be at least {:?} (three renewals), got {ttl:?}",
                        d.run_renew_interval * 3
                    ));
                }
                ttl
            },
            ..d
        })
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

/// The defaults, in one place: every settings struct the server runs on
/// takes its configurable values from here (`From<&Config>`).
impl Default for Config {
    fn default() -> Self {
        let limits = Limits::default();
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            tls: None,
            auth_tokens: None,
            policy: None,
            price_table: None,
            batch_role_arn: None,
            batch_working_bucket: None,
            batch_threshold: None,
            batch_control_endpoint: None,
            allow_plaintext: false,
            metrics_listen: None,
            max_running_warms: 64,
            max_queued_warms: 1024,
            max_warms_per_principal: 0,
            // A job array's launchers may share one connection.
            max_streams_per_connection: 1024,
            max_request_size: 2 * 1024 * 1024,
            status_count_limit: 1_000_000,
            index: IndexLocation::Sqlite(default_index_path()),
            // Enough for S3 Express at a real round trip (thousands of
            // requests/s need hundreds in flight); the adaptive limit finds
            // what the endpoint takes below it.
            max_concurrency: 1024,
            max_ttl: limits.max_ttl,
            min_ttl: limits.min_ttl,
            clock_skew_margin: Duration::from_secs(5),
            s3_request_timeout: Duration::from_secs(30),
            index_retry_budget: Duration::from_secs(300),
            max_resumptions: 3,
            force_path_style: false,
            log_format: LogFormat::Text,
            sweep_interval: Duration::from_secs(60),
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            multipart_part_size: crate::engine::DEFAULT_PART_SIZE,
            allow_general_purpose_destination: false,
            list_concurrency: 32,
            shutdown_grace: Duration::from_secs(30),
            operation_retention: Duration::from_secs(7 * 24 * 3600),
            replica_id: default_replica_id(),
            // Takeover bound: run_lease_ttl + clock_skew_margin +
            // adopt_interval = 17 s by default (doc/FLEET.md).
            run_lease_ttl: Duration::from_secs(10),
            run_renew_interval: Duration::from_secs(1),
            adopt_interval: Duration::from_secs(2),
            publish_interval: Duration::from_millis(500),
            checkpoint_interval: Duration::from_secs(5),
            follow_poll: Duration::from_millis(500),
            cancel_wait: Duration::from_secs(30),
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

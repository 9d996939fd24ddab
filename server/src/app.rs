//! The production wiring: AWS configuration chain, SQLite index, signals.

use anyhow::Context;
use expresscache::Limits;
use tokio::net::TcpListener;

use crate::config::{Config, IndexLocation, LogFormat};
use crate::index::SqliteIndex;
use crate::server::{serve, Deps};
use crate::store::{FaultStore, ObjectStore, Op, S3Store};

/// Installs the global tracing subscriber (RUST_LOG filters, default info).
pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// An S3 client from the standard AWS configuration chain (environment,
/// profiles, SSO, instance/container credentials), so AWS_ENDPOINT_URL,
/// AWS_ENDPOINT_URL_S3, AWS_REGION and AWS_PROFILE all apply unchanged.
pub async fn s3_client(force_path_style: bool) -> aws_sdk_s3::Client {
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Resolves once SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received; draining");
}

/// Runs the server described by `config` until a shutdown signal.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let index = match &config.index {
        IndexLocation::Sqlite(path) => {
            SqliteIndex::open(path).with_context(|| format!("opening index {}", path.display()))?
        }
        IndexLocation::SqliteMemory => SqliteIndex::open_in_memory()?,
    };
    let s3 = S3Store::with_request_timeout(
        s3_client(config.force_path_style).await,
        config.s3_request_timeout,
    );
    // A diagnostic knob for crash and shutdown tests: slows every copy so a
    // warm is reliably mid-flight when the test strikes. Without it the
    // store is used as is, with nothing in the request path.
    match std::env::var("EXPRESSCACHE_DEBUG_COPY_DELAY")
        .ok()
        .and_then(|d| humantime::parse_duration(&d).ok())
    {
        Some(delay) => {
            tracing::warn!(
                ?delay,
                "EXPRESSCACHE_DEBUG_COPY_DELAY is set: every copy is slowed down"
            );
            let slowed = FaultStore::new(s3);
            slowed.delay(Op::Copy, delay);
            run_with(config, slowed, index).await
        }
        None => run_with(config, s3, index).await,
    }
}

async fn run_with<S: ObjectStore>(
    config: Config,
    store: S,
    index: SqliteIndex,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let mut deps = Deps::new(store, index);
    deps.warm.engine.max_concurrency = config.max_concurrency;
    deps.warm.engine.multipart_threshold = config.multipart_threshold;
    deps.warm.per_shard_concurrency = config.shard_concurrency;
    deps.sweep_interval = Some(config.sweep_interval);
    deps.shutdown_grace = config.shutdown_grace;
    deps.ops.retention = config.operation_retention;
    deps.warm.skew_margin = config.clock_skew_margin;
    deps.warm.engine.request_timeout = config.s3_request_timeout;
    deps.evict.skew_margin = config.clock_skew_margin;
    deps.ops.max_resumptions = config.max_resumptions;
    deps.limits = Limits {
        max_ttl: config.max_ttl,
        min_ttl: config.min_ttl,
        allow_general_purpose_destination: config.allow_general_purpose_destination,
        ..Limits::default()
    };
    if config.allow_general_purpose_destination {
        tracing::warn!("general-purpose buckets are accepted as destinations (--allow-general-purpose-destination): meant for S3-compatible test endpoints, not for production");
    }
    tracing::info!(listen = %listener.local_addr()?, index = ?config.index, max_concurrency = config.max_concurrency, "expresscache-server listening");
    serve(listener, deps, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

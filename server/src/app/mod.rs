//! The production wiring: AWS configuration chain, the index (SQLite or
//! DynamoDB), signals, and the `index create` command; [`main`] is what
//! the binary runs.

mod command;

pub use command::main;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::config::{Config, IndexCommand, IndexLocation};
use crate::index::dynamo::{DynamoConfig, DynamoIndex, TablePrefix};
use crate::index::{FleetIndex, MeteredIndex, SqliteIndex};
use crate::server::{serve, Deps};
use crate::store::{ObjectStore, S3Store};

/// An S3 client from the standard AWS configuration chain (environment,
/// profiles, SSO, instance/container credentials), so AWS_ENDPOINT_URL,
/// AWS_ENDPOINT_URL_S3, AWS_REGION and AWS_PROFILE all apply unchanged.
pub async fn s3_client(force_path_style: bool) -> aws_sdk_s3::Client {
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(force_path_style)
        // Every reply's Date measures this replica's clock against S3's.
        .interceptor(crate::skew::MeasureSkew)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// How long the start waits for the credentials chain (an instance or
/// container role may take a moment) before going on without an answer.
const CREDENTIALS_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// Checks, before the server says it listens, that the AWS configuration
/// chain gives a region and credentials: without them every warm would
/// fail, and callers would see an unreachable server rather than the
/// cause. A chain that is only slow to answer does not stop the start.
pub async fn check_aws_setup() -> anyhow::Result<()> {
    use aws_credential_types::provider::error::CredentialsError;
    use aws_credential_types::provider::ProvideCredentials;
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    if shared.region().is_none() {
        anyhow::bail!(
            "no AWS region: set AWS_REGION to the region of your directory buckets \
             (e.g. AWS_REGION=us-west-2), or give the profile AWS_PROFILE names a region"
        );
    }
    let Some(provider) = shared.credentials_provider() else {
        anyhow::bail!("no AWS credentials provider is configured");
    };
    match tokio::time::timeout(CREDENTIALS_CHECK, provider.provide_credentials()).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(
            e @ (CredentialsError::CredentialsNotLoaded(_)
            | CredentialsError::InvalidConfiguration(_)),
        )) => anyhow::bail!(
            "no usable AWS credentials ({}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, \
             or AWS_PROFILE, or run where an instance or container role provides them",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                "loading AWS credentials failed; starting anyway (the provider may recover)");
            Ok(())
        }
        Err(_) => {
            tracing::warn!(after = ?CREDENTIALS_CHECK,
                "the AWS credentials chain did not answer in time; starting anyway");
            Ok(())
        }
    }
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

/// The object store of the production binary: S3 (or any S3-compatible
/// endpoint) through the standard AWS configuration chain.
pub async fn s3_store(config: &Config) -> S3Store {
    S3Store::with_request_timeout(
        s3_client(config.force_path_style).await,
        config.s3_request_timeout,
    )
}

/// File descriptors kept for everything but S3 connections: the index,
/// gRPC clients, logs.
const RESERVED_FILES: u64 = 256;

/// Raises the open-files limit to what the system allows (the soft limit
/// is often 1,024, too few for a thousand S3 connections), and lowers
/// `max_concurrency` if even that is too few: running out of descriptors
/// mid-warm would fail copies, not slow them.
pub fn fit_to_open_files(config: &mut Config) {
    let files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the open-files limit");
            // Fit to the limit as it stands.
            match rlimit::getrlimit(rlimit::Resource::NOFILE) {
                Ok((soft, _)) => soft,
                Err(_) => return,
            }
        }
    };
    // One connection per request in flight, and as many idle in the pool.
    let fits = usize::try_from(files.saturating_sub(RESERVED_FILES) / 2).unwrap_or(usize::MAX);
    if config.max_concurrency > fits {
        tracing::warn!(
            open_files = files,
            max_concurrency = config.max_concurrency,
            lowered_to = fits.max(1),
            "the open-files limit is too low for --max-concurrency; raise it (ulimit -n, LimitNOFILE=) to use the full ceiling"
        );
        config.max_concurrency = fits.max(1);
    }
}

/// Runs the server described by `config` on `store` until a shutdown
/// signal. The store is a parameter so tests and diagnostics can run the
/// same server over their own (an in-memory or fault-injecting store).
pub async fn run<S: ObjectStore>(config: Config, store: S) -> anyhow::Result<()> {
    match &config.index {
        IndexLocation::Sqlite(path) => {
            let index = SqliteIndex::open(path)
                .with_context(|| format!("opening index {}", path.display()))?;
            run_on(config, store, MeteredIndex::new(index, "sqlite")).await
        }
        IndexLocation::SqliteMemory => {
            let index = SqliteIndex::open_in_memory()?;
            run_on(config, store, MeteredIndex::new(index, "sqlite")).await
        }
        IndexLocation::Dynamo(prefix) => {
            let index = dynamo_index(prefix, &config).await;
            // Refuse to start on missing or mismatched tables, naming the
            // command that creates them. An index that is only slow or
            // throttled does not stop the start: the server comes up
            // NOT_SERVING and joins the fleet once the index answers.
            match tokio::time::timeout(STARTUP_INDEX_CHECK, index.check_tables()).await {
                Ok(Ok(())) => {}
                Ok(Err(crate::index::IndexError::Unavailable(e))) => tracing::warn!(error = %e,
                    "the index is not answering yet; starting NOT_SERVING until it does"),
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => tracing::warn!(after = ?STARTUP_INDEX_CHECK,
                    "the index is not answering yet; starting NOT_SERVING until it does"),
            }
            run_on(config, store, MeteredIndex::new(index, "dynamodb")).await
        }
    }
}

/// How long the start waits for the index's tables to be described before
/// it goes on without (the index is then checked by the first heartbeat).
const STARTUP_INDEX_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The S3 Batch Operations offload, when a role and a working bucket are
/// configured: jobs in the role's account, directory buckets in the
/// configured region.
async fn batch_offload(
    config: &Config,
) -> anyhow::Result<Option<std::sync::Arc<crate::batch::Offload>>> {
    let (Some(role), Some(bucket)) = (&config.batch_role_arn, &config.batch_working_bucket) else {
        return Ok(None);
    };
    let account = crate::batch::offload::account_of_role(role).map_err(anyhow::Error::msg)?;
    expresscache::BucketName::parse(bucket)
        .map_err(|e| anyhow::anyhow!("--batch-working-bucket: {e}"))?;
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let region = shared.region().map(ToString::to_string).ok_or_else(|| {
        anyhow::anyhow!("the S3 Batch Operations offload needs a region (AWS_REGION)")
    })?;
    let jobs = crate::batch::S3ControlJobs::new(
        &shared,
        &account,
        config.batch_control_endpoint.as_deref(),
        crate::batch::control::REQUEST_TIMEOUT,
    );
    tracing::info!(role = %role, working_bucket = %bucket, threshold = ?config.batch_threshold,
        "S3 Batch Operations offload on");
    Ok(Some(std::sync::Arc::new(crate::batch::Offload {
        jobs: std::sync::Arc::new(jobs),
        // Bounded like the store's requests: a manifest write or report
        // read that never answers fails and is retried, it does not hang.
        s3: crate::store::S3Store::with_request_timeout(
            s3_client(config.force_path_style).await,
            config.s3_request_timeout,
        )
        .retrying_client()
        .clone(),
        working_bucket: bucket.clone(),
        role_arn: role.clone(),
        account_id: account,
        region,
        threshold: config.batch_threshold,
        poll: (
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(15),
        ),
    })))
}

/// A DynamoDB index from the standard AWS configuration chain
/// (AWS_ENDPOINT_URL_DYNAMODB for a local endpoint).
async fn dynamo_index(prefix: &TablePrefix, config: &Config) -> DynamoIndex {
    let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let defaults = DynamoConfig::default();
    DynamoIndex::connect_with(
        &shared,
        prefix,
        DynamoConfig {
            // DynamoDB's TTL may delete a finished operation only well after
            // this server's own retention has purged it.
            finished_operation_ttl: defaults
                .finished_operation_ttl
                .max(config.operation_retention * 2),
            busy_budget: config.index_retry_budget,
            ..defaults
        },
    )
}

/// `expresscache-server index ...`: prints what it did, one line each.
pub async fn index_command(config: &Config, command: &IndexCommand) -> anyhow::Result<()> {
    match command {
        IndexCommand::Create => match &config.index {
            IndexLocation::Dynamo(prefix) => {
                let did = dynamo_index(prefix, config).await.create_tables().await?;
                if did.is_empty() {
                    println!("the tables of {prefix} exist as they should; nothing to do");
                }
                for line in did {
                    println!("{line}");
                }
                Ok(())
            }
            IndexLocation::Sqlite(path) => {
                SqliteIndex::open(path)
                    .with_context(|| format!("opening index {}", path.display()))?;
                println!("SQLite index {} is ready", path.display());
                Ok(())
            }
            IndexLocation::SqliteMemory => {
                anyhow::bail!("an in-memory index exists only inside a running server")
            }
        },
    }
}

async fn run_on<S: ObjectStore, I: FleetIndex>(
    config: Config,
    store: S,
    index: I,
) -> anyhow::Result<()> {
    // Every file the server needs is read before anything says it serves
    // or joins the fleet: a missing certificate is a failed start, not a
    // replica that registered and then died.
    if let Some(files) = &config.tls {
        crate::tls::server_config(files).map_err(|e| anyhow::anyhow!("TLS: {e:#}"))?;
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    // Bound before serving, so a taken port fails the start, not a scrape.
    let _metrics = match config.metrics_listen {
        Some(addr) => {
            let m = crate::metrics::serve(addr).await?;
            tracing::info!(metrics = %format!("http://{}/metrics", m.local_addr), "serving Prometheus metrics");
            Some(m)
        }
        None => None,
    };
    let mut deps = Deps::from_config(store, index, &config);
    let tokens = match &config.auth_tokens {
        Some(path) => crate::auth::load_tokens(path)?,
        None => Vec::new(),
    };
    let mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    deps.auth = std::sync::Arc::new(crate::auth::Authenticator::new(tokens, mtls));
    match (&config.tls, deps.auth.enabled()) {
        (None, _) if !config.listen.ip().is_loopback() => tracing::warn!(listen = %config.listen,
            "serving plaintext gRPC on a non-loopback address (--allow-plaintext): requests and tokens cross the network unencrypted"),
        (Some(t), _) => {
            tracing::info!(cert = %t.cert.display(), mutual = t.client_ca.is_some(), "serving TLS")
        }
        _ => {}
    }
    deps.batch = batch_offload(&config).await?;
    if let Some(path) = &config.price_table {
        deps.prices = crate::pricing::PriceTable::load(path).map_err(anyhow::Error::msg)?;
        tracing::info!(prices = %path.display(), source = %deps.prices.source, "dry runs use this price table");
    }
    deps.policy = match &config.policy {
        Some(path) => {
            let policy = crate::policy::Policy::load(path)?;
            tracing::info!(policy = %path.display(), principals = policy.principals(), "enforcing the policy");
            if !deps.auth.enabled() {
                tracing::warn!("a policy without authentication (--auth-tokens, --tls-client-ca) applies to one caller, \"anonymous\"");
            }
            Some(std::sync::Arc::new(policy))
        }
        None => {
            tracing::info!("no policy file (--policy): single-tenant, every caller may warm, evict and see every operation");
            None
        }
    };
    if !deps.auth.enabled() {
        tracing::info!("no authentication configured (--auth-tokens, --tls-client-ca): every caller is \"anonymous\"");
    }
    if config.allow_general_purpose_destination {
        tracing::warn!("general-purpose buckets are accepted as destinations (--allow-general-purpose-destination): meant for S3-compatible test endpoints, not for production");
    }
    tracing::info!(listen = %listener.local_addr()?, index = ?config.index, max_concurrency = config.max_concurrency, "expresscache-server listening");
    serve(listener, deps, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

//! `expresscache`: warm, inspect and evict the cache from a shell, a CI step
//! or a scheduler.

mod exit;
mod render;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use expresscache_client::{is_final, pb, ClientError, Endpoints, WarmReport, WarmRequest};
use render::{OutputFormat, Renderer};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "expresscache", version, about = "Stage S3 data in S3 Express One Zone directory buckets before a job runs", after_help = exit::HELP)]
struct Cli {
    /// gRPC endpoint of the expresscache server, or of several replicas
    /// separated by commas: the first that answers is used, and a broken
    /// warm or watch fails over to the next and reattaches.
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy what is missing or changed under the prefixes into the directory
    /// bucket and wait until it is all there.
    Warm(WarmArgs),
    /// Show an operation's state, or how warm prefixes are.
    Status(StatusArgs),
    /// End the leases of prefixes now and delete their cached objects.
    Evict(EvictArgs),
    /// Follow a running warm (started by anyone) until it is done.
    Watch(WatchArgs),
    /// Stop a running warm; it ends CANCELLED.
    Cancel(CancelArgs),
    /// List recent operations, newest first.
    Ops(OpsArgs),
}

/// How `warm` and `watch` show progress and survive broken connections.
#[derive(Debug, Args)]
struct FollowArgs {
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
    /// In plain-text logs, print a progress line at most this often.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    log_interval: Duration,
    /// How often to reconnect (and reattach) when the connection breaks.
    #[arg(long, default_value_t = 10)]
    reconnect_attempts: u32,
}

#[derive(Debug, Args)]
struct WatchArgs {
    /// Operation id printed by `warm` or `ops`.
    operation: String,
    #[command(flatten)]
    follow: FollowArgs,
}

#[derive(Debug, Args)]
struct CancelArgs {
    operation: String,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum StateFilter {
    All,
    Running,
    Finished,
}

#[derive(Debug, Args)]
struct OpsArgs {
    #[arg(long, value_enum, default_value = "all")]
    state: StateFilter,
    /// Most operations to show.
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct WarmArgs {
    /// Source general-purpose bucket.
    #[arg(long)]
    bucket: String,
    /// Prefix to warm ("" = whole bucket; otherwise ends in "/"). Repeatable.
    #[arg(long = "prefix", required = true)]
    prefixes: Vec<String>,
    /// Destination directory bucket (name--zone-id--x-s3).
    #[arg(long)]
    directory_bucket: String,
    /// How long the data must stay cached, e.g. 90m, 24h, 7d.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "24h")]
    ttl: Duration,
    /// Copy everything again, even objects already cached and unchanged.
    #[arg(long)]
    force_copy: bool,
    /// Cache source key K as PREFIX + K, so several sources can share one
    /// directory bucket ("" or ending in "/").
    #[arg(long, default_value = "")]
    destination_prefix: String,
    /// Idempotency key; the same id reattaches to the running warm. A random
    /// one is generated when omitted, so reconnects never start a second warm.
    #[arg(long)]
    request_id: Option<String>,
    #[command(flatten)]
    follow: FollowArgs,
}

#[derive(Debug, Args)]
struct StatusArgs {
    /// Operation id printed by `warm`.
    #[arg(long, conflicts_with_all = ["directory_bucket", "prefixes"], required_unless_present = "directory_bucket")]
    operation: Option<String>,
    #[arg(long, requires = "prefixes")]
    directory_bucket: Option<String>,
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct EvictArgs {
    #[arg(long)]
    directory_bucket: String,
    /// Prefix to evict ("" = everything). Repeatable.
    #[arg(long = "prefix", required = true)]
    prefixes: Vec<String>,
    /// Also delete objects that other live leases (a parent prefix) still
    /// cover.
    #[arg(long)]
    force: bool,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let endpoints = match Endpoints::parse(&cli.endpoint) {
        Ok(e) => e,
        Err(e) => return fail(&ClientError::BadEndpoint(format!("--endpoint: {e}"))),
    };
    let result = match cli.command {
        Command::Warm(a) => return warm(&endpoints, a).await,
        Command::Watch(a) => return watch(&endpoints, a).await,
        Command::Status(a) => status(&endpoints, a).await,
        Command::Evict(a) => evict(&endpoints, a).await,
        Command::Cancel(a) => cancel(&endpoints, a).await,
        Command::Ops(a) => ops(&endpoints, a).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(e: &ClientError) -> ExitCode {
    eprintln!("error: {e}");
    if let ClientError::Rpc(status) = e {
        use tonic_types::StatusExt;
        if let Some(br) = status.get_details_bad_request() {
            for v in br.field_violations {
                eprintln!("  {}: {}", v.field, v.description);
            }
        }
    }
    exit::for_error(e)
}

fn retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Connect { .. } | ClientError::StreamEnded(_) => true,
        ClientError::Rpc(s) => matches!(
            s.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Aborted
        ),
        _ => false,
    }
}

async fn warm(endpoints: &Endpoints, a: WarmArgs) -> ExitCode {
    let request_id = a
        .request_id
        .clone()
        .unwrap_or_else(|| format!("cli-{}", uuid::Uuid::new_v4()));
    let mut request = WarmRequest::new(a.bucket, a.directory_bucket)
        .ttl(a.ttl)
        .force_copy(a.force_copy)
        .destination_prefix(a.destination_prefix)
        .request_id(request_id);
    for p in a.prefixes {
        request = request.prefix(p);
    }
    let renderer = Renderer::new(a.follow.output, a.follow.log_interval);
    // Before the first answer, resubmitting is safe: the same request_id
    // reattaches to the running warm. Once the operation is known, follow
    // that very operation instead: had it ended meanwhile (cancelled,
    // say), a resubmission could start a new one.
    let operation: std::cell::RefCell<Option<String>> = std::cell::RefCell::default();
    follow(
        renderer,
        endpoints,
        a.follow.reconnect_attempts,
        async |r: &mut Renderer| {
            let known = operation.borrow().clone();
            match known {
                Some(id) => {
                    let mut client = endpoints.connect().await?;
                    client.watch_and_wait(&id, |p| r.update(p)).await
                }
                None => warm_once(endpoints, request.clone(), r, &operation).await,
            }
        },
    )
    .await
}

async fn watch(endpoints: &Endpoints, a: WatchArgs) -> ExitCode {
    let renderer = Renderer::new(a.follow.output, a.follow.log_interval);
    let operation = a.operation;
    follow(
        renderer,
        endpoints,
        a.follow.reconnect_attempts,
        async |r: &mut Renderer| {
            let mut client = endpoints.connect().await?;
            client.watch_and_wait(&operation, |p| r.update(p)).await
        },
    )
    .await
}

/// Runs `attempt` (which renders progress) until it returns a final report,
/// reconnecting with backoff after retryable failures (to the next of
/// `endpoints`: the one that failed may be gone); maps the outcome to the
/// exit code.
async fn follow<F>(
    mut renderer: Renderer,
    endpoints: &Endpoints,
    attempts: u32,
    mut attempt: F,
) -> ExitCode
where
    F: AsyncFnMut(&mut Renderer) -> Result<WarmReport, ClientError>,
{
    let mut tries = 0;
    let mut delay = Duration::from_millis(500);
    loop {
        match attempt(&mut renderer).await {
            Ok(report) => {
                renderer.finish(&report);
                return exit::for_outcome(report.outcome);
            }
            Err(e) if retryable(&e) && tries < attempts => {
                tries += 1;
                endpoints.failed();
                eprintln!("warning: {e}; reconnecting (attempt {tries}/{attempts})");
                // Within one round over the replicas there is nothing to wait
                // for; after a full round, back off (all may be restarting).
                let n = endpoints.as_slice().len() as u32;
                if tries % n != 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                } else {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
            Err(e) => {
                renderer.abandon();
                return fail(&e);
            }
        }
    }
}

fn operation_line(s: &pb::OperationStatus) -> String {
    let p = s.progress.clone().unwrap_or_default();
    let r = s.request.clone().unwrap_or_default();
    let state = if is_final(&p) {
        render::outcome_name(pb::Outcome::try_from(p.outcome).unwrap_or(pb::Outcome::Unspecified))
            .to_owned()
    } else {
        render::phase_name(p.phase).to_owned()
    };
    let c = p.counters.unwrap_or_default();
    format!(
        "{}  {}  {:<16}  s3://{} {:?} -> {}  listed {} hits {} copied {} failed {}{}",
        s.operation_id,
        ts(s.created_at.as_ref()),
        state,
        r.bucket,
        r.prefixes,
        r.directory_bucket,
        c.objects_listed,
        c.objects_hit,
        c.objects_copied,
        c.objects_failed,
        if s.resumptions > 0 {
            format!("  (resumed {}x)", s.resumptions)
        } else {
            String::new()
        }
    )
}

fn operation_json(s: &pb::OperationStatus) -> serde_json::Value {
    let mut v = render::progress_json(&s.progress.clone().unwrap_or_default());
    v["operation_id"] = json!(s.operation_id);
    v["created_at"] = json!(ts(s.created_at.as_ref()));
    v["resumptions"] = json!(s.resumptions);
    v["request"] = request_json(&s.request.clone().unwrap_or_default());
    v
}

async fn cancel(endpoints: &Endpoints, a: CancelArgs) -> Result<(), ClientError> {
    let mut client = endpoints.connect().await?;
    let s = client.cancel(&a.operation).await?;
    match a.output {
        OutputFormat::Json => println!("{}", operation_json(&s)),
        OutputFormat::Text => println!("{}", operation_line(&s)),
    }
    Ok(())
}

async fn ops(endpoints: &Endpoints, a: OpsArgs) -> Result<(), ClientError> {
    let mut client = endpoints.connect().await?;
    let filter = match a.state {
        StateFilter::All => pb::OperationFilter::Unspecified,
        StateFilter::Running => pb::OperationFilter::Running,
        StateFilter::Finished => pb::OperationFilter::Finished,
    };
    let mut shown = 0;
    let mut token = String::new();
    while shown < a.limit {
        let page = client
            .list_operations(filter, (a.limit - shown).min(1000), token)
            .await?;
        for s in &page.operations {
            match a.output {
                OutputFormat::Json => println!("{}", operation_json(s)),
                OutputFormat::Text => println!("{}", operation_line(s)),
            }
        }
        shown += page.operations.len() as u32;
        if page.next_page_token.is_empty() || page.operations.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if shown == 0 && a.output == OutputFormat::Text {
        println!("no operations");
    }
    Ok(())
}

async fn warm_once(
    endpoints: &Endpoints,
    request: WarmRequest,
    renderer: &mut Renderer,
    operation: &std::cell::RefCell<Option<String>>,
) -> Result<WarmReport, ClientError> {
    let mut client = endpoints.connect().await?;
    let mut stream = client.warm(request).await?;
    let mut op = String::new();
    while let Some(p) = stream.message().await? {
        op.clone_from(&p.operation_id);
        operation.replace(Some(op.clone()));
        renderer.update(&p);
        if is_final(&p) {
            return Ok(WarmReport::from_final(p));
        }
    }
    Err(ClientError::StreamEnded(op))
}

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(ToString::to_string).unwrap_or_else(|| "-".into())
}

async fn status(endpoints: &Endpoints, a: StatusArgs) -> Result<(), ClientError> {
    let mut client = endpoints.connect().await?;
    if let Some(id) = a.operation {
        let s = client.operation_status(id).await?;
        let p = s.progress.unwrap_or_default();
        match a.output {
            OutputFormat::Json => {
                let mut v = render::progress_json(&p);
                v["request"] = request_json(&s.request.unwrap_or_default());
                println!("{v}");
            }
            OutputFormat::Text => {
                if is_final(&p) {
                    for l in render::summary_lines(&WarmReport::from_final(p)) {
                        println!("{l}");
                    }
                } else {
                    println!("{}", render::progress_line(&p));
                }
            }
        }
        return Ok(());
    }
    let dir = a.directory_bucket.unwrap_or_default();
    let prefixes = client.prefix_status(dir, a.prefixes).await?;
    for p in prefixes {
        match a.output {
            OutputFormat::Json => println!(
                "{}",
                json!({
                    "prefix": p.prefix,
                    "cached_objects": p.cached_objects,
                    "cached_bytes": p.cached_bytes,
                    "leases": p.leases.iter().map(|l| json!({
                        "prefix": l.prefix,
                        "source_bucket": l.source_bucket,
                        "expires_at": ts(l.expires_at.as_ref()),
                    })).collect::<Vec<_>>(),
                    "sweep_failures": p.sweep_failures.iter().map(|f| {
                        let l = f.lease.clone().unwrap_or_default();
                        json!({
                            "prefix": l.prefix,
                            "source_bucket": l.source_bucket,
                            "expired_at": ts(l.expires_at.as_ref()),
                            "attempts": f.attempts,
                            "error": f.error,
                            "next_attempt_at": ts(f.next_attempt_at.as_ref()),
                        })
                    }).collect::<Vec<_>>(),
                })
            ),
            OutputFormat::Text => {
                println!(
                    "{:?}: {} objects, {} cached",
                    p.prefix,
                    p.cached_objects,
                    indicatif::HumanBytes(p.cached_bytes)
                );
                if p.leases.is_empty() {
                    println!("  no live lease");
                }
                for l in &p.leases {
                    println!(
                        "  lease {:?} from {} until {}",
                        l.prefix,
                        l.source_bucket,
                        ts(l.expires_at.as_ref())
                    );
                }
                for f in &p.sweep_failures {
                    let l = f.lease.clone().unwrap_or_default();
                    println!(
                        "  expired lease {:?} not swept yet ({} attempts, next at {}): {}",
                        l.prefix,
                        f.attempts,
                        ts(f.next_attempt_at.as_ref()),
                        f.error
                    );
                }
            }
        }
    }
    Ok(())
}

fn request_json(r: &pb::WarmCacheRequest) -> serde_json::Value {
    json!({
        "bucket": r.bucket,
        "prefixes": r.prefixes,
        "directory_bucket": r.directory_bucket,
        "ttl_seconds": r.ttl.as_ref().map(|t| t.seconds).unwrap_or(0),
        "force_copy": r.force_copy,
        "request_id": r.request_id,
    })
}

async fn evict(endpoints: &Endpoints, a: EvictArgs) -> Result<(), ClientError> {
    let mut client = endpoints.connect().await?;
    let r = client
        .evict(a.directory_bucket, a.prefixes, a.force)
        .await?;
    match a.output {
        OutputFormat::Json => println!(
            "{}",
            json!({
                "objects_deleted": r.objects_deleted,
                "bytes_deleted": r.bytes_deleted,
                "leases_ended": r.leases_ended,
                "objects_kept": r.objects_kept,
                "kept_under": r.kept_under,
                "forced": r.forced,
                "failures": r.failures.iter().map(|f| json!({"key": f.key, "code": f.code, "message": f.message})).collect::<Vec<_>>(),
                "failures_omitted": r.failures_omitted,
            })
        ),
        OutputFormat::Text => {
            println!(
                "evicted {} objects ({}), ended {} leases{}",
                r.objects_deleted,
                indicatif::HumanBytes(r.bytes_deleted),
                r.leases_ended,
                if r.forced { " (forced)" } else { "" }
            );
            if r.objects_kept > 0 {
                println!(
                    "kept {} objects still covered by live leases or being copied: {}",
                    r.objects_kept,
                    r.kept_under.join(", ")
                );
            }
            for f in &r.failures {
                println!("failed: {} ({}): {}", f.key, f.code, f.message);
            }
            if r.failures_omitted > 0 {
                println!(
                    "... and {} more failures (see the server's log)",
                    r.failures_omitted
                );
            }
        }
    }
    let failed = r.failures.len() as u64 + r.failures_omitted;
    if failed == 0 {
        Ok(())
    } else {
        Err(ClientError::Rpc(tonic::Status::aborted(format!(
            "{failed} objects could not be deleted"
        ))))
    }
}

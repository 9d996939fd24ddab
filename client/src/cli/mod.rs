//! `expresscache`: warm, inspect and evict the cache from a shell, a CI step
//! or a scheduler.

mod errors;
mod exit;
mod json;
mod ls;
mod render;
mod source;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use std::sync::Arc;

use expresscache::request::parse_operation_id;
use expresscache::{EvictSpec, InvalidRequest, StatusQuery};
use expresscache_client::{
    client_limits, pb, Client, ClientError, Credentials, Endpoints, RetryPolicy, WarmReport,
    WarmRequest,
};
use json::to_json;
use render::{OutputFormat, Renderer};
use serde_json::json;

#[derive(Debug, Parser)]
#[command(name = "expresscache", version, about = "Stage S3 data in S3 Express One Zone directory buckets before a job runs", after_help = exit::HELP)]
struct Cli {
    /// gRPC endpoint of the expresscache server, or of several replicas
    /// separated by commas: the first that answers is used, and a broken
    /// warm or watch fails over to the next and reattaches. Forms:
    /// http://HOST:PORT, https://HOST:PORT (TLS; the system's roots
    /// unless --ca-cert), HOST:PORT (plain http).
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_ENDPOINT",
        default_value = "http://127.0.0.1:50051"
    )]
    endpoint: String,
    /// CA certificate (PEM) that signs the server's certificate (https://
    /// endpoints; without it the system's trusted roots are used).
    #[arg(long, global = true, env = "EXPRESSCACHE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; with --client-key.
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_CLIENT_CERT",
        requires = "client_key"
    )]
    client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_CLIENT_KEY",
        requires = "client_cert"
    )]
    client_key: Option<PathBuf>,
    /// File holding the bearer token (first line); EXPRESSCACHE_TOKEN
    /// gives the token itself instead.
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_TOKEN_FILE",
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    /// The bearer token (prefer the environment variable: a command line
    /// is visible to every user of the machine).
    #[arg(
        long,
        global = true,
        env = "EXPRESSCACHE_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

/// The TLS files and token the command line names, read.
fn credentials(cli: &Cli) -> Result<Credentials, ClientError> {
    let read = |what: &str, p: &PathBuf| {
        std::fs::read(p)
            .map_err(|e| ClientError::BadEndpoint(format!("{what} {}: {e}", p.display())))
    };
    let mut c = Credentials::default();
    if let Some(ca) = &cli.ca_cert {
        c = c.with_ca_pem(read("--ca-cert", ca)?);
    }
    if let (Some(cert), Some(key)) = (&cli.client_cert, &cli.client_key) {
        c = c.with_client_identity(read("--client-cert", cert)?, read("--client-key", key)?);
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => {
            let text = String::from_utf8(read("--token-file", f)?).map_err(|_| {
                ClientError::BadEndpoint(format!("--token-file {}: not UTF-8", f.display()))
            })?;
            Some(text.lines().next().unwrap_or_default().trim().to_owned())
        }
        (None, None) => None,
    };
    if let Some(t) = token.filter(|t| !t.is_empty()) {
        c = c.with_token(&t)?;
    }
    Ok(c)
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Copy what is missing or changed under the prefixes into the directory
    /// bucket and wait until it is all there.
    Warm(WarmArgs),
    /// Show an operation's state, or how warm prefixes are.
    #[command(after_help = STATUS_FORMS)]
    Status(StatusArgs),
    /// End the leases of prefixes now and delete their cached objects.
    Evict(EvictArgs),
    /// Follow a running warm (started by anyone) until it is done.
    Watch(WatchArgs),
    /// Stop a running warm; it ends CANCELLED.
    Cancel(CancelArgs),
    /// List recent operations, newest first.
    Ops(OpsArgs),
    /// List the live leases of a directory bucket: each prefix kept
    /// cached, from which source, until when, what is cached under it and
    /// the operations that hold it.
    Ls(LsArgs),
    /// Print the completion script of a shell (bash, zsh, fish,
    /// powershell, elvish), e.g. `expresscache completion bash >
    /// /etc/bash_completion.d/expresscache`.
    Completion(CompletionArgs),
    /// Print the manual page (roff), e.g. `expresscache man > expresscache.1`
    /// or `expresscache man | man -l -`.
    Man,
}

#[derive(Debug, Args)]
struct LsArgs {
    /// Directory bucket whose leases to list.
    #[arg(long)]
    directory_bucket: String,
    /// Only the leases at, over or under this prefix ("" = the whole
    /// bucket; otherwise ends in "/").
    #[arg(long, default_value = "")]
    prefix: String,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

#[derive(Debug, Args)]
struct CompletionArgs {
    /// The shell to print the completion script of.
    #[arg(value_enum)]
    shell: clap_complete::Shell,
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
    /// What to warm as s3://BUCKET/PREFIX/ (s3://BUCKET for the whole
    /// bucket): the same as --bucket BUCKET --prefix PREFIX/; or
    /// s3://BUCKET/KEY, a URL not ending in "/": that one object. Several
    /// are allowed, all of one bucket, either prefixes or objects.
    #[arg(value_name = "s3://BUCKET/PREFIX/")]
    sources: Vec<String>,
    /// Source general-purpose bucket.
    #[arg(long)]
    bucket: Option<String>,
    /// Key prefix inside --bucket to warm ("" = whole bucket; otherwise
    /// ends in "/"; not an s3:// URL). Repeatable.
    #[arg(long = "prefix")]
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
    /// Answer at once when a warm of the same data succeeded at most this
    /// long ago and its leases are live, e.g. 30s, 10m (no listing: changes
    /// within the window go unnoticed). 0: always list.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    max_staleness: Duration,
    /// Plan only: print what would be copied and what is cached per prefix,
    /// and what the warm would cost by the engine and by S3 Batch
    /// Operations; copy nothing, write no lease.
    #[arg(long)]
    dry_run: bool,
    /// Copy through one S3 Batch Operations job instead of the server's
    /// copy engine (the server must be configured for it).
    #[arg(long)]
    batch_operations: bool,
    /// Succeed even when no prefix lists any object (by default such a
    /// warm fails: it is far more often a mistyped prefix than the
    /// intent). Empty prefixes are warned of either way.
    #[arg(long)]
    allow_empty: bool,
    /// Warm only the keys matching this glob (repeatable: any of them).
    /// It matches the whole key from the bucket's root, not from the
    /// prefix: "*" within a directory, "**" across directories ("**/"
    /// also none), "?" one character, "[a-z]" one of a set, "\" escapes;
    /// e.g. 'datasets/**/*.parquet'. Quote it from the shell.
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Never warm the keys matching this glob (repeatable; wins over
    /// --include), e.g. '**/_tmp/**'.
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// Warm the exact keys listed in FILE ("-": standard input), one per
    /// line (a line s3://BUCKET/KEY is KEY); blank lines and lines
    /// starting with "#" are skipped. Instead of prefixes; --include and
    /// --exclude still apply. A key the source does not hold fails (exit
    /// 3). The keys' directories are listed and leased.
    #[arg(long, value_name = "FILE")]
    files_from: Option<PathBuf>,
    /// Submit the warm, print its operation id and exit 0 without waiting
    /// (the warm runs on; follow it with `expresscache watch ID`).
    #[arg(long, conflicts_with = "dry_run")]
    no_wait: bool,
    #[command(flatten)]
    follow: FollowArgs,
}

/// The forms `status` accepts, for its help and its usage errors.
const STATUS_FORMS: &str = "status needs what to show: --operation ID (an operation's state), \
or --directory-bucket NAME--ZONE--x-s3 --prefix P [--prefix P2 ...] (how warm those prefixes are)";

#[derive(Debug, Args)]
struct StatusArgs {
    /// Operation id printed by `warm`.
    #[arg(long, conflicts_with_all = ["directory_bucket", "prefixes"])]
    operation: Option<String>,
    /// Directory bucket whose prefixes to show (with --prefix).
    #[arg(long)]
    directory_bucket: Option<String>,
    /// Prefix of --directory-bucket to show ("" = everything). Repeatable.
    #[arg(long = "prefix")]
    prefixes: Vec<String>,
    #[arg(long, value_enum, default_value = "text")]
    output: OutputFormat,
}

/// What `status` shows, checked before connecting.
enum StatusTarget {
    Operation(String),
    Prefixes {
        directory_bucket: String,
        prefixes: Vec<String>,
    },
}

/// The target `a` names, checked as the server would; the lines to print
/// if it names none, or an invalid one. (Checked here rather than by clap,
/// whose message names only one of the two forms.)
fn status_target(a: &StatusArgs) -> Result<StatusTarget, Vec<String>> {
    let (directory_bucket, prefixes) = match (&a.operation, &a.directory_bucket) {
        (Some(id), _) => {
            return match parse_operation_id("--operation", id) {
                Ok(id) => Ok(StatusTarget::Operation(id)),
                Err(e) => Err(invalid_lines(&e)),
            };
        }
        (None, Some(dir)) if !a.prefixes.is_empty() => (dir.clone(), a.prefixes.clone()),
        (None, Some(_)) => {
            return Err(errors::problem_lines(
                "",
                &[format!("--directory-bucket needs at least one --prefix (\"\" for everything); {STATUS_FORMS}")],
            ))
        }
        (None, None) => return Err(errors::problem_lines("", &[STATUS_FORMS.to_owned()])),
    };
    let query = pb::GetStatusRequest {
        target: Some(pb::get_status_request::Target::Prefixes(pb::PrefixQuery {
            directory_bucket: directory_bucket.clone(),
            prefixes: prefixes.clone(),
        })),
    };
    match StatusQuery::parse(&query, &client_limits()) {
        Ok(_) => Ok(StatusTarget::Prefixes {
            directory_bucket,
            prefixes,
        }),
        Err(e) => Err(invalid_lines(&e)),
    }
}

/// A request found invalid before sending: every violation once.
fn invalid_lines(e: &InvalidRequest) -> Vec<String> {
    errors::error_lines(&ClientError::Invalid(e.clone()))
}

/// Prints `lines` (found before connecting) and exits with the usage code.
fn usage(lines: &[String]) -> ExitCode {
    for l in lines {
        eprintln!("{l}");
    }
    ExitCode::from(exit::USAGE)
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
    // Generated from the definition alone: no endpoint, no credentials.
    match &cli.command {
        Command::Completion(a) => {
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "expresscache",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        Command::Man => return man(),
        _ => {}
    }
    let credentials = match credentials(&cli) {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    // Checked before anything else: a malformed endpoint, or one of
    // another scheme, is a usage error, never a connection attempt.
    let endpoints = match Endpoints::parse(&cli.endpoint) {
        Ok(e) => Arc::new(e.with_credentials(credentials)),
        Err(e) => return fail(&ClientError::BadEndpoint(format!("--endpoint: {e}"))),
    };
    let result = match cli.command {
        Command::Warm(a) => return warm(&endpoints, a).await,
        Command::Watch(a) => return watch(&endpoints, a).await,
        Command::Status(a) => match status_target(&a) {
            Ok(target) => status(&endpoints, target, a.output).await,
            Err(lines) => return usage(&lines),
        },
        Command::Evict(a) => match check_evict(&a) {
            Ok(()) => evict(&endpoints, a).await,
            Err(lines) => return usage(&lines),
        },
        Command::Cancel(a) => cancel(&endpoints, a).await,
        Command::Ops(a) => ops(&endpoints, a).await,
        Command::Ls(a) => match check_ls(&a) {
            Ok(()) => match Client::connect_to(Arc::clone(&endpoints)).await {
                Ok(mut client) => {
                    ls::run(&mut client, a.directory_bucket, a.prefix, a.output).await
                }
                Err(e) => Err(e),
            },
            Err(lines) => return usage(&lines),
        },
        Command::Completion(_) | Command::Man => unreachable!("answered above"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

/// `man`: the manual page of the whole command line, in roff.
fn man() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match clap_mangen::Man::new(Cli::command()).render(&mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the manual page: {e}");
            ExitCode::from(exit::FAILED)
        }
    }
}

/// An `ls` checked as the server would, before connecting.
fn check_ls(a: &LsArgs) -> Result<(), Vec<String>> {
    let query = pb::GetStatusRequest {
        target: Some(pb::get_status_request::Target::Prefixes(pb::PrefixQuery {
            directory_bucket: a.directory_bucket.clone(),
            prefixes: vec![a.prefix.clone()],
        })),
    };
    StatusQuery::parse(&query, &client_limits())
        .map(|_| ())
        .map_err(|e| invalid_lines(&e))
}

fn fail(e: &ClientError) -> ExitCode {
    for line in errors::error_lines(e) {
        eprintln!("{line}");
    }
    exit::for_error(e)
}

/// The request `a` asks for and its source bucket, checked as the server
/// would before anything is sent; every problem at once if it cannot be
/// sent.
fn warm_request(a: &WarmArgs) -> Result<(WarmRequest, String), Vec<String>> {
    let source = source::resolve(
        &a.sources,
        a.bucket.as_deref(),
        &a.prefixes,
        a.files_from.is_some(),
    )
    .map_err(|problems| errors::problem_lines("", &problems))?;
    let mut keys = source.keys.clone();
    if let Some(path) = &a.files_from {
        let listed = source::read_key_list(path, &source.bucket)
            .map_err(|problems| errors::problem_lines("", &problems))?;
        keys.extend(listed);
    }
    if !keys.is_empty() && !source.prefixes.is_empty() {
        return Err(errors::problem_lines(
            "",
            &[
                "a warm takes either prefixes (s3://BUCKET/PREFIX/, --prefix) or exact keys \
               (s3://BUCKET/KEY, --files-from), not both: run one warm for each, or select \
               keys under the prefixes with --include"
                    .to_owned(),
            ],
        ));
    }
    let mut request = WarmRequest::new(source.bucket.clone(), a.directory_bucket.clone())
        .ttl(a.ttl)
        .force_copy(a.force_copy)
        .max_staleness(a.max_staleness)
        .batch_operations(a.batch_operations)
        .allow_empty(a.allow_empty)
        .destination_prefix(a.destination_prefix.clone());
    // A random id when none is given: a reconnect then reattaches to the
    // running warm instead of starting a second.
    request = match &a.request_id {
        Some(id) => request.request_id(id.clone()),
        None => request.request_id(format!("cli-{}", uuid::Uuid::new_v4())),
    };
    for p in &source.prefixes {
        request = request.prefix(p.clone());
    }
    request = request.keys(keys);
    for g in &a.include {
        request = request.include(g.clone());
    }
    for g in &a.exclude {
        request = request.exclude(g.clone());
    }
    if let Err(invalid) = request.validate() {
        let problems: Vec<String> = invalid
            .violations
            .iter()
            .map(|v| source::explain(v, &source.prefixes))
            .collect();
        return Err(errors::problem_lines("invalid request", &problems));
    }
    Ok((request, source.bucket))
}

async fn warm(endpoints: &Arc<Endpoints>, a: WarmArgs) -> ExitCode {
    let (request, bucket) = match warm_request(&a) {
        Ok(r) => r,
        Err(lines) => return usage(&lines),
    };
    if a.dry_run {
        return dry_run(endpoints, request, &a.follow).await;
    }
    if a.no_wait {
        return submit(endpoints, request, &a.follow).await;
    }
    let mut renderer = Renderer::new(a.follow.output, a.follow.log_interval);
    let result = match connect(endpoints, a.follow.reconnect_attempts).await {
        Ok(mut client) => {
            client
                .warm_and_wait(request, |p| renderer.update(p.proto()))
                .await
        }
        Err(e) => Err(e),
    };
    finish(renderer, result, Some(&bucket))
}

/// `warm --no-wait`: submits, prints the operation id and returns without
/// waiting (the warm runs detached from the call).
async fn submit(endpoints: &Arc<Endpoints>, request: WarmRequest, f: &FollowArgs) -> ExitCode {
    let result = match connect(endpoints, f.reconnect_attempts).await {
        Ok(mut client) => client.submit(request).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(id) => {
            match f.output {
                OutputFormat::Json => println!("{}", json!({ "operation_id": id })),
                OutputFormat::Text => {
                    println!("operation {id} submitted; follow it with: expresscache watch {id}")
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

/// `warm --dry-run`: the listing's progress on stderr (text) and the plan
/// on stdout.
async fn dry_run(endpoints: &Arc<Endpoints>, request: WarmRequest, f: &FollowArgs) -> ExitCode {
    let result = match connect(endpoints, 0).await {
        Ok(mut client) => {
            let mut last = std::time::Instant::now();
            let format = f.output;
            client
                .plan(request, |p| {
                    if format == OutputFormat::Text
                        && p.phase != pb::Phase::Done as i32
                        && last.elapsed() >= f.log_interval
                    {
                        last = std::time::Instant::now();
                        eprintln!("{}", render::progress_line(p));
                    }
                })
                .await
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(plan) => {
            match f.output {
                OutputFormat::Json => println!("{}", to_json(&plan)),
                OutputFormat::Text => {
                    for line in render::plan_lines(&plan) {
                        println!("{line}");
                    }
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(&e),
    }
}

async fn watch(endpoints: &Arc<Endpoints>, a: WatchArgs) -> ExitCode {
    let mut renderer = Renderer::new(a.follow.output, a.follow.log_interval);
    let result = match connect(endpoints, a.follow.reconnect_attempts).await {
        Ok(mut client) => {
            client
                .watch_and_wait(a.operation, |p| renderer.update(p.proto()))
                .await
        }
        Err(e) => Err(e),
    };
    finish(renderer, result, None)
}

/// A client that reconnects (warning on stderr each time) up to
/// `attempts` times, from the first connection on.
async fn connect(endpoints: &Arc<Endpoints>, attempts: u32) -> Result<Client, ClientError> {
    let policy = RetryPolicy {
        attempts,
        on_retry: Some(Arc::new(|e: &ClientError, attempt, of| {
            eprintln!("warning: {e}; reconnecting (attempt {attempt}/{of})");
        })),
        ..RetryPolicy::default()
    };
    Client::connect_with_retry(Arc::clone(endpoints), policy).await
}

/// Prints how the wait ended and maps it to the exit code; in text, a
/// warning per prefix that listed nothing (of `bucket`, when known).
fn finish(
    renderer: Renderer,
    result: Result<WarmReport, ClientError>,
    bucket: Option<&str>,
) -> ExitCode {
    match result {
        Ok(report) => {
            let text = !renderer.is_json();
            renderer.finish(&report);
            if text {
                for w in render::empty_prefix_warnings(bucket, &report.empty_prefixes) {
                    eprintln!("{w}");
                }
            }
            exit::for_outcome(report.outcome)
        }
        Err(e) => {
            renderer.abandon();
            fail(&e)
        }
    }
}

/// Whether a progress message is its operation's last.
fn is_final(p: &pb::WarmProgress) -> bool {
    p.phase == pb::Phase::Done as i32
}

fn operation_line(s: &pb::OperationStatus) -> String {
    let p = s.progress.clone().unwrap_or_default();
    let r = s.request.clone().unwrap_or_default();
    let state = if is_final(&p) {
        render::outcome_name(expresscache_client::Outcome::from(p.outcome)).to_owned()
    } else {
        render::phase_name(p.phase).to_owned()
    };
    let c = p.counters.unwrap_or_default();
    // A key list is shown by its size: it may be 100,000 keys long.
    let what = if r.keys.is_empty() {
        format!("{:?}", r.prefixes)
    } else {
        format!("({} keys)", r.keys.len())
    };
    format!(
        "{}  {}  {:<16}  s3://{} {} -> {}  listed {} hits {} copied {} failed {}{}",
        s.operation_id,
        ts(s.created_at.as_ref()),
        state,
        r.bucket,
        what,
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

async fn cancel(endpoints: &Arc<Endpoints>, a: CancelArgs) -> Result<(), ClientError> {
    let mut client = Client::connect_to(Arc::clone(endpoints)).await?;
    let s = client.cancel(&a.operation).await?;
    match a.output {
        OutputFormat::Json => println!("{}", to_json(&s)),
        OutputFormat::Text => println!("{}", operation_line(&s)),
    }
    Ok(())
}

async fn ops(endpoints: &Arc<Endpoints>, a: OpsArgs) -> Result<(), ClientError> {
    let mut client = Client::connect_to(Arc::clone(endpoints)).await?;
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
                OutputFormat::Json => println!("{}", to_json(s)),
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

fn ts(t: Option<&prost_types::Timestamp>) -> String {
    t.map(ToString::to_string).unwrap_or_else(|| "-".into())
}

async fn status(
    endpoints: &Arc<Endpoints>,
    target: StatusTarget,
    output: OutputFormat,
) -> Result<(), ClientError> {
    let mut client = Client::connect_to(Arc::clone(endpoints)).await?;
    let (dir, prefixes) = match target {
        StatusTarget::Operation(id) => return operation_status(&mut client, id, output).await,
        StatusTarget::Prefixes {
            directory_bucket,
            prefixes,
        } => (directory_bucket, prefixes),
    };
    let answer = client.prefix_status_with_clock(dir, prefixes).await?;
    // A server whose clock is off holds back sweeps and evictions: the
    // operator must hear it wherever status is read.
    if let Some(clock) = answer.clock.as_ref().filter(|c| !c.refusing.is_empty()) {
        eprintln!("warning: {}", clock.refusing);
    }
    for p in answer.prefixes {
        match output {
            OutputFormat::Json => println!("{}", to_json(&p)),
            OutputFormat::Text => {
                // A truncated count is a lower bound.
                let at_least = if p.counts_truncated { "at least " } else { "" };
                println!(
                    "{:?}: {at_least}{} objects, {at_least}{} cached",
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

/// `status --operation ID`: its request and latest progress.
async fn operation_status(
    client: &mut Client,
    id: String,
    output: OutputFormat,
) -> Result<(), ClientError> {
    let s = client.operation_status(id).await?;
    match output {
        OutputFormat::Json => println!("{}", to_json(&s)),
        OutputFormat::Text => {
            let p = s.progress.unwrap_or_default();
            if is_final(&p) {
                for l in render::summary_lines(&WarmReport::from_final(p)) {
                    println!("{l}");
                }
            } else {
                println!("{}", render::progress_line(&p));
            }
        }
    }
    Ok(())
}

/// An eviction checked as the server would, before connecting.
fn check_evict(a: &EvictArgs) -> Result<(), Vec<String>> {
    let req = pb::EvictRequest {
        directory_bucket: a.directory_bucket.clone(),
        prefixes: a.prefixes.clone(),
        force: a.force,
    };
    EvictSpec::parse(&req, &client_limits())
        .map(|_| ())
        .map_err(|e| invalid_lines(&e))
}

async fn evict(endpoints: &Arc<Endpoints>, a: EvictArgs) -> Result<(), ClientError> {
    let mut client = Client::connect_to(Arc::clone(endpoints)).await?;
    let r = client
        .evict(a.directory_bucket, a.prefixes, a.force)
        .await?;
    match a.output {
        OutputFormat::Json => println!("{}", to_json(&r)),
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
            for p in unconfirmed(&r) {
                println!(
                    "unconfirmed: {} ({} deleted, {} kept so far): {}",
                    p.prefix, p.objects_deleted, p.objects_kept, p.error
                );
            }
        }
    }
    let failed = r.failures.len() as u64 + r.failures_omitted;
    let open = unconfirmed(&r).count();
    if open > 0 {
        // Nothing it reports is false: what it deleted is gone, what it
        // kept is there; the rest is for another evict of those prefixes.
        return Err(ClientError::Rpc(tonic::Status::aborted(format!(
            "{open} prefixes could not be confirmed within the server's retry budget \
             (the index or S3 did not answer); evict them again to finish"
        ))));
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(ClientError::Rpc(tonic::Status::aborted(format!(
            "{failed} objects could not be deleted"
        ))))
    }
}

/// The prefixes an Evict could not confirm.
fn unconfirmed(r: &pb::EvictResponse) -> impl Iterator<Item = &pb::PrefixEviction> {
    r.prefixes
        .iter()
        .filter(|p| p.state() == pb::prefix_eviction::State::Unconfirmed)
}

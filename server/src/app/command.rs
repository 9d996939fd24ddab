//! What the `expresscache-server` binary does with its command line: print
//! the configuration, hash a token, run an index command, or serve.

use std::process::ExitCode;

use crate::config::{self, Config, ServerCommand};

/// The binary's entry point: resolves the configuration (flags,
/// environment, file) and runs the command it names, serving by default.
pub async fn main() -> ExitCode {
    // A bad flag, variable or config file is a usage error, said in one line.
    let args = config::Args::parse_with_sources();
    let command = args.command.clone();
    let mut config = match Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = crate::telemetry::init(config.log_format);
    super::fit_to_open_files(&mut config);
    match command {
        Some(ServerCommand::Config(config::ConfigCommand::Print)) => {
            // After the fit to the open-file limit: the values the server
            // would run with.
            for line in config.print_lines() {
                println!("{line}");
            }
            ExitCode::SUCCESS
        }
        Some(ServerCommand::Token(config::TokenCommand::Hash)) => hash_token(),
        Some(ServerCommand::Index(cmd)) => match super::index_command(&config, &cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        },
        None => {
            let code = serve(config).await;
            // The spans of the last warms, and of the shutdown, are still
            // buffered.
            telemetry.shutdown();
            code
        }
    }
}

/// `token hash`: the config line for the token on standard input.
fn hash_token() -> ExitCode {
    let mut token = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut token) {
        eprintln!("error: reading the token from standard input: {e}");
        return ExitCode::FAILURE;
    }
    let token = token.trim_end_matches(['\n', '\r']);
    if token.is_empty() {
        eprintln!("error: no token on standard input");
        return ExitCode::from(2);
    }
    println!("{}", crate::auth::token_line_hash(token));
    ExitCode::SUCCESS
}

async fn serve(config: Config) -> ExitCode {
    // A missing region or credentials is a configuration error, said in
    // one line before anything listens (exit 2, like a bad flag).
    if let Err(e) = super::check_aws_setup().await {
        tracing::error!(error = format!("{e:#}"), "expresscache-server cannot start");
        eprintln!("error: {e:#}");
        return ExitCode::from(2);
    }
    let store = super::s3_store(&config).await;
    match super::run(config, store).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "expresscache-server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

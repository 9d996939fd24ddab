use std::process::ExitCode;

use expresscache_server::{app, config};

#[tokio::main]
async fn main() -> ExitCode {
    // A bad flag, variable or config file is a usage error, said in one line.
    let args = config::Args::parse_with_sources();
    let command = args.command.clone();
    let mut config = match config::Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = expresscache_server::telemetry::init(config.log_format);
    app::fit_to_open_files(&mut config);
    if let Some(config::ServerCommand::Config(config::ConfigCommand::Print)) = command {
        // After the fit to the open-file limit: the values the server
        // would run with.
        for line in config.print_lines() {
            println!("{line}");
        }
        return ExitCode::SUCCESS;
    }
    if let Some(config::ServerCommand::Token(config::TokenCommand::Hash)) = command {
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
        println!("{}", expresscache_server::auth::token_line_hash(token));
        return ExitCode::SUCCESS;
    }
    if let Some(config::ServerCommand::Index(cmd)) = command {
        return match app::index_command(&config, &cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // A missing region or credentials is a configuration error, said in
    // one line before anything listens (exit 2, like a bad flag).
    if let Err(e) = app::check_aws_setup().await {
        tracing::error!(error = format!("{e:#}"), "expresscache-server cannot start");
        eprintln!("error: {e:#}");
        telemetry.shutdown();
        return ExitCode::from(2);
    }
    let store = app::s3_store(&config).await;
    let code = match app::run(config, store).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "expresscache-server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // The spans of the last warms, and of the shutdown, are still buffered.
    telemetry.shutdown();
    code
}

use std::process::ExitCode;

use clap::Parser;
use expresscache_server::{app, config};

#[tokio::main]
async fn main() -> ExitCode {
    // A bad flag, variable or config file is a usage error, said in one line.
    let args = config::Args::parse();
    let command = args.command.clone();
    let mut config = match config::Config::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    app::init_tracing(config.log_format);
    app::fit_to_open_files(&mut config);
    if let Some(config::ServerCommand::Index(cmd)) = command {
        return match app::index_command(&config, &cmd).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let store = app::s3_store(&config).await;
    match app::run(config, store).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "expresscache-server failed");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

use clap::Parser;
use expresscache_server::{app, config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = config::Config::resolve(config::Args::parse()).map_err(anyhow::Error::msg)?;
    app::init_tracing(config.log_format);
    app::run(config).await
}

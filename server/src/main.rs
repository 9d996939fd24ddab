//! The `expresscache-server` binary; [`expresscache_server::app::main`]
//! reads its command line and runs it.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    expresscache_server::app::main().await
}

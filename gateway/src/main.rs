//! `flashsale`: parse the command line, set up logging, run the subcommand.

use clap::Parser;
use flashsale_gateway::cli::{Cli, Command, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(cmd) => flashsale_gateway::kafka::cli::serve_command(cmd, shutdown_signal()).await,
            Command::Topics(args) => flashsale_gateway::kafka::cli::topics_command(args).await,
            Command::Engine(args) => flashsale_gateway::kafka::cli::engine_command(args, shutdown_signal()).await,
            Command::Gateway(args) => flashsale_gateway::kafka::cli::gateway_command(args, shutdown_signal()).await,
            Command::Replay(args) => flashsale_gateway::operator::replay_command(args).await,
            Command::Audit(args) => flashsale_gateway::operator::audit_command(args).await,
            Command::Snapshot(args) => flashsale_gateway::operator::snapshot_command(args).await,
            Command::Migrate(args) => flashsale_gateway::pg::migrate_command(args).await,
            Command::Projector(args) => flashsale_gateway::pg::projector_command(args, shutdown_signal()).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // A tool that ran and found problems (audit, verify) exits 1; errors exit 2.
        Err(e) if e.downcast_ref::<flashsale_gateway::operator::ProblemsFound>().is_some() => {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

//! `flashsale-bench`: parses the command line, builds the runtime, runs, exits with
//! 0 (clean), 1 (correctness violations) or 2 (the run could not be done).

use std::process::ExitCode;

use clap::Parser;
use flashsale_bench::cli::{
    compare_command, plan_command, run_command, side_by_side_command, Cli, Command, EXIT_FAILED,
};

/// mimalloc, as the server uses: the harness allocates small, short-lived buffers per
/// request (bodies, ids, samples), and glibc's malloc/free were ~6 % of its CPU at
/// 8,000 requests/s (`perf`); the harness shares the cores with the node it measures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match &cli.command {
        Some(Command::Compare(args)) => compare_command(args),
        Some(Command::SideBySide(args)) => side_by_side_command(args),
        Some(Command::Plan(args)) => plan_command(args),
        Some(Command::Profile(args)) => flashsale_bench::profile::profile_command(args),
        Some(Command::FillEvents(args)) => {
            flashsale_bench::fill_events::fill_events(args).map(|()| 0)
        }
        None => {
            // The harness shares the machine with the server it measures: its thread count
            // is a flag, not the number of cores. One thread (the default) is a
            // current-thread runtime: dispatcher and requests on one thread, no wake-up
            // of another thread per request (`scripts/harness-cost.sh` measures it).
            let rt = if cli.run.client_threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(cli.run.client_threads.min(64))
                    .enable_all()
                    .build()
            };
            match rt {
                Ok(rt) => rt.block_on(run_command(&cli.run)),
                Err(e) => Err(e.into()),
            }
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("flashsale-bench: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}

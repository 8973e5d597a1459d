//! `flashsale`: parse the command line, set up logging, run the subcommand.

use flashsale_ops::cli::{Cli, Command};

/// mimalloc instead of glibc's malloc: the request path allocates small, short-lived
/// buffers on many threads (HTTP, JSON, Kafka records); glibc's arenas spent ~14 % of
/// Kafka mode's CPU in malloc/free (perf, issue 11). Figures in README "Performance".
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    exit_quietly_when_stdout_closes();
    let cli = Cli::parse_resolved();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    // Inside the runtime: the gRPC trace exporter needs it.
    let telemetry = {
        let _rt = runtime.enter();
        flashsale_runtime::telemetry::init(
            &cli.log,
            cli.log_format,
            &cli.telemetry,
            service_name(&cli.command),
        )
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(cmd) => {
                flashsale_ops::kafka::cli::serve_command(cmd.into(), shutdown_signal()).await
            }
            Command::Topics(args) => flashsale_ops::kafka::cli::topics_command(args).await,
            Command::Engine(args) => {
                flashsale_ops::kafka::cli::engine_command(args.into(), shutdown_signal()).await
            }
            Command::Gateway(args) => {
                flashsale_ops::kafka::cli::gateway_command(args.into(), shutdown_signal()).await
            }
            Command::Replay(args) => flashsale_ops::operator::replay_command(args).await,
            Command::Audit(args) => flashsale_ops::operator::audit_command(args).await,
            Command::Snapshot(args) => flashsale_ops::operator::snapshot_command(args).await,
            Command::Migrate(args) => flashsale_ops::projector::cli::migrate_command(args).await,
            Command::PartitionOf(args) => flashsale_ops::cli::partition_of_command(args),
            Command::ConfigReference => {
                print!("{}", flashsale_ops::cli::reference::render());
                Ok(())
            }
            Command::Events(args) => match args.command {
                flashsale_ops::cli::EventsCommand::Publish(a) => {
                    flashsale_ops::publish::run_publisher(a.into(), shutdown_signal()).await
                }
                flashsale_ops::cli::EventsCommand::Tail(a) => {
                    flashsale_ops::publish::tail_command(a, shutdown_signal()).await
                }
            },
            Command::Projector(args) => {
                flashsale_ops::projector::cli::projector_command(args.into(), shutdown_signal())
                    .await
            }
        }
    });
    // Export the spans still buffered, while the runtime is still there.
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // Exit codes: 0 done; 1 a tool that ran and found problems (audit, verify);
        // 2 an error; 70 the engine failed (below). Only this function exits.
        Err(e)
            if e.downcast_ref::<flashsale_ops::operator::ProblemsFound>()
                .is_some() =>
        {
            eprintln!("{e}");
            std::process::ExitCode::from(1)
        }
        // The engine (`engine`, `serve --kafka`) stopped by itself, the rest of the
        // process stopped in order after it: 70 (EX_SOFTWARE), as before errors
        // stopped being exits; another engine takes its partitions over.
        Err(e)
            if e.downcast_ref::<flashsale_engine::kafka::EngineFailed>()
                .is_some() =>
        {
            eprintln!("fatal: {e:#}");
            std::process::ExitCode::from(flashsale_engine::kafka::EngineFailed::EXIT_CODE)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// A reader that stops early (`flashsale audit --json | head -1`, `… | true`) closes
/// stdout under us. Rust ignores SIGPIPE, so the next `println!` fails with EPIPE and
/// std panics ("failed printing to stdout: Broken pipe"). That is not a failure of
/// the command: whoever wanted the output has all they wanted. For the whole binary,
/// once: such a panic, on any thread, ends the process at once with status 0 and no
/// message, like `yes | head`. Any other failure to write stdout (a full disk) exits 2
/// with one line; every other panic goes to the default hook.
fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's wording (library/std/src/io/stdio.rs, `print_to`), stable since 1.0.
        if let Some(why) = msg.strip_prefix("failed printing to stdout: ") {
            // EPIPE is 32 on Linux, macOS and the BSDs.
            let epipe = std::io::Error::from_raw_os_error(32).to_string();
            let broken_pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe).to_string();
            if why == epipe || why == broken_pipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {why}");
            std::process::exit(2);
        }
        default(info);
    }));
}

/// The `service.name` of this process's traces.
fn service_name(cmd: &Command) -> &'static str {
    match cmd {
        Command::Serve(_) => "flashsale",
        Command::Engine(_) => "flashsale-engine",
        Command::Gateway(_) => "flashsale-gateway",
        Command::Projector(_) => "flashsale-projector",
        _ => "flashsale-cli",
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
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

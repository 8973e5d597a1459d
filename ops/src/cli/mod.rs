//! The `flashsale` command line: one clap-derive struct per subcommand, every flag
//! with an `env = "FLASHSALE_…"`, a default and a doc comment. The processes' flags
//! become the typed configs of [`crate::config`] (`From` impls beside each struct),
//! validated here before anything starts.
//!
//! - [`serve`]: `serve`'s flags (both modes).
//! - [`kafka`]: `engine`, `gateway`, `projector`, `topics`, `migrate`.
//! - [`reference`]: `docs/configuration.md`, rendered from these definitions.

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
pub use flashsale_runtime::telemetry::{LogFormat, OtlpProtocol, TelemetryArgs};

pub mod events;
pub mod kafka;
pub mod reference;
pub mod serve;

pub use events::*;
pub use kafka::*;
pub use serve::*;

// The help sections, by purpose (`--help` and docs/configuration.md).
const H_SERVER: &str = "Server";
const H_ADMISSION: &str = "Admission and rate limits";
const H_SNAPSHOTS: &str = "Snapshots and retention";
const H_SERVE_KAFKA: &str = "Kafka mode (--kafka; without it, embedded)";
const H_KAFKA: &str = "Kafka";
const H_READMODEL: &str = "Read-model snapshots (Kafka mode)";
const H_METRICS: &str = "Metrics";
const H_PUBLISH: &str = "Public events (docs/events.md)";

#[derive(Debug, Parser)]
#[command(
    name = "flashsale",
    version,
    about = "A flash-sale engine: every hold answered in milliseconds, no unit sold twice.",
    long_about = "flashsale holds stock for buyers during a flash sale. Commands are appended to a \
partitioned log keyed by SKU; one engine actor per partition applies them in order to an \
in-memory inventory, so there is no lock and no database row to fight over.\n\n\
With no Kafka configured, `flashsale serve` runs everything in one process over a local \
data directory (the embedded mode).",
    after_help = "Examples:\n  # embedded server with a demo sale on 127.0.0.1:8080\n  flashsale serve --demo\n  flashsale serve --data-dir /var/lib/flashsale --admin-token s3cret\n  flashsale serve --help                 # every flag of the server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, env = "FLASHSALE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, help_heading = GLOBAL)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `flashsale_gateway=debug`.
    #[arg(
        long,
        global = true,
        env = "FLASHSALE_LOG",
        default_value = "info",
        help_heading = GLOBAL
    )]
    pub log: String,
    #[command(flatten, next_help_heading = GLOBAL)]
    pub telemetry: TelemetryArgs,
}

/// The help section of the flags every subcommand takes (logging, tracing).
const GLOBAL: &str = "Global options (logging, tracing; any subcommand)";

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API with the engine (embedded mode: log and snapshots in --data-dir).
    #[command(
        after_help = "Examples:\n  flashsale serve --demo\n  FLASHSALE_ADMIN_TOKEN=s3cret flashsale serve --listen 0.0.0.0:8080 \\\n      --data-dir /var/lib/flashsale"
    )]
    Serve(ServeCmd),
    /// Create the Kafka topics (commands, events, replies); existing ones are checked.
    #[command(
        after_help = "Examples:\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 8\n  flashsale topics create --kafka 127.0.0.1:19092 --partitions 32 \\\n      --replies-partitions 8 --replication-factor 3 \\\n      --min-insync-replicas 2 --prefix shop1."
    )]
    Topics(TopicsArgs),
    /// Run an engine (Kafka mode): owns the command partitions the group gives it.
    #[command(
        after_help = "Examples:\n  flashsale engine --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  # snapshots in files, no Postgres\n  flashsale engine --kafka 127.0.0.1:19092 --data-dir /var/lib/flashsale\nStart as many as you like: the consumer group shares the partitions among them."
    )]
    Engine(EngineArgs),
    /// Run an HTTP gateway (Kafka mode): commands to Kafka, replies and events back.
    #[command(
        after_help = "Examples:\n  flashsale gateway --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale \\\n      --listen 0.0.0.0:8080 --admin-token s3cret --gateway-id 0\n  flashsale gateway --kafka 127.0.0.1:19092 --listen 127.0.0.1:8081 \\\n      --gateway-id 1\nEvery gateway needs its own --gateway-id (a partition of the replies topic)."
    )]
    Gateway(GatewayArgs),
    /// Rebuild a partition's state from a snapshot and the log, to an offset or a time.
    Replay(crate::operator::ReplayArgs),
    /// Check every invariant: rebuild every partition; with Postgres, check the orders too.
    Audit(crate::operator::AuditArgs),
    /// List, show and verify engine snapshots.
    #[command(
        after_help = "Examples:\n  flashsale snapshot list\n  flashsale snapshot show p3@120000\n  flashsale snapshot verify --partition 3"
    )]
    Snapshot(crate::operator::SnapshotArgs),
    /// Create or update the Postgres schema (Kafka mode); running it again is a no-op.
    #[command(
        after_help = "Examples:\n  flashsale migrate \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale\n  FLASHSALE_POSTGRES=postgres://postgres@127.0.0.1:15432/flashsale \\\n      flashsale migrate --json"
    )]
    Migrate(MigrateArgs),
    /// Follow the events topic and write reservations and orders to Postgres, exactly once.
    #[command(
        after_help = "Examples:\n  flashsale projector --kafka 127.0.0.1:19092 \\\n      --postgres postgres://postgres@127.0.0.1:15432/flashsale"
    )]
    Projector(ProjectorArgs),
    /// The public sale events (docs/events.md): publish them, or follow them.
    Events(EventsArgs),
    /// Print docs/configuration.md: every flag of every process, from these definitions.
    #[command(hide = true)]
    ConfigReference,
    /// Which partition (engine actor, and `replay --partition`) holds a SKU.
    #[command(
        after_long_help = "Examples:\n  flashsale partition-of SKU-1\n  flashsale partition-of SKU-1 --partitions 32 --json"
    )]
    PartitionOf(PartitionOfArgs),
}

#[derive(Debug, Clone, Args)]
pub struct PartitionOfArgs {
    /// The SKU, exactly as in the API (case matters).
    pub sku: String,
    /// Partitions of the deployment (`serve --partitions`, `topics create --partitions`).
    #[arg(long, env = "FLASHSALE_PARTITIONS", default_value_t = 8)]
    pub partitions: u32,
    /// Print JSON instead of a sentence.
    #[arg(long)]
    pub json: bool,
}

/// `flashsale partition-of SKU`: the partition the gateway routes the SKU to.
pub fn partition_of_command(args: PartitionOfArgs) -> anyhow::Result<()> {
    if args.partitions == 0 {
        anyhow::bail!("--partitions must be at least 1 (the deployment's partition count)");
    }
    let p = flashsale_proto::partition_for_key(args.sku.as_bytes(), args.partitions);
    if args.json {
        println!(
            "{}",
            serde_json::json!({"sku": args.sku, "partition": p, "partitions": args.partitions})
        );
    } else {
        println!(
            "{} is in partition {p} of {}: flashsale replay --partition {p}",
            args.sku, args.partitions
        );
    }
    Ok(())
}

/// The environment variable the gateway's `linger_ms` was read from before it followed
/// the `FLASHSALE_<FLAG>` pattern; still honoured when the new one is not set (not by
/// the engine, whose producer no longer lingers by default).
pub const OLD_LINGER_ENV: &str = "FLASHSALE_KAFKA_LINGER_MS";

impl Cli {
    /// Parses the process's arguments (exiting with clap's message on a mistake), then
    /// [`Cli::resolve`]s them.
    pub fn parse_resolved() -> Cli {
        let matches = Cli::command().get_matches();
        match Cli::from_arg_matches(&matches) {
            Ok(mut cli) => match cli.resolve(&matches) {
                Ok(()) => cli,
                Err(e) => e.exit(),
            },
            Err(e) => e.exit(),
        }
    }

    /// [`Cli::parse_resolved`] for tests: from given arguments, errors returned.
    pub fn try_parse_resolved_from<I, T>(args: I) -> Result<Cli, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Cli::command().try_get_matches_from(args)?;
        let mut cli = Cli::from_arg_matches(&matches)?;
        cli.resolve(&matches)?;
        Ok(cli)
    }

    /// An explicit flag beats the environment: `--data-dir` on `replay`/`audit`/
    /// `snapshot` means the embedded data directory even when FLASHSALE_KAFKA is set;
    /// `serve --embedded` drops FLASHSALE_KAFKA/FLASHSALE_POSTGRES. Records why each
    /// process runs in its mode, for its first line. Also reads the old name of the
    /// linger variable.
    pub fn resolve(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        let Some((_, sub)) = matches.subcommand() else {
            return Ok(());
        };
        let old_linger = std::env::var(OLD_LINGER_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<u32>().ok());
        let linger = |m: &ArgMatches, v: &mut u32| {
            if m.value_source("linger_ms") == Some(ValueSource::DefaultValue) {
                if let Some(old) = old_linger {
                    *v = old;
                }
            }
        };
        match &mut self.command {
            Command::Serve(cmd) => {
                linger(sub, &mut cmd.kafka.linger_ms);
                let k = &mut cmd.kafka;
                if k.embedded && sub.value_source("kafka") == Some(ValueSource::CommandLine) {
                    return Err(Cli::command().error(
                        clap::error::ErrorKind::ArgumentConflict,
                        "--embedded and --kafka contradict each other: give one (--embedded: log and snapshots in --data-dir; --kafka: Kafka mode)",
                    ));
                }
                k.mode_reason = if k.embedded {
                    let ignored = if k.kafka.is_some() || k.postgres.is_some() {
                        " (FLASHSALE_KAFKA/FLASHSALE_POSTGRES from the environment ignored)"
                    } else {
                        ""
                    };
                    k.kafka = None;
                    k.postgres = None;
                    format!("embedded mode: --embedded given{ignored}")
                } else if k.kafka.is_some() {
                    if sub.value_source("kafka") == Some(ValueSource::CommandLine) {
                        "Kafka mode: --kafka given".to_string()
                    } else {
                        "Kafka mode: FLASHSALE_KAFKA is set (pass --embedded to run embedded)"
                            .to_string()
                    }
                } else {
                    "embedded mode: no --kafka and no FLASHSALE_KAFKA".to_string()
                };
            }
            Command::Gateway(a) => linger(sub, &mut a.linger_ms),
            Command::Replay(a) => a.source.resolve(sub),
            Command::Audit(a) => a.source.resolve(sub),
            Command::Snapshot(a) => {
                if let Some((_, leaf)) = sub.subcommand() {
                    match &mut a.command {
                        crate::operator::SnapshotCommand::List(l)
                        | crate::operator::SnapshotCommand::Verify(l) => l.source.resolve(leaf),
                        crate::operator::SnapshotCommand::Show(s) => s.source.resolve(leaf),
                    }
                }
            }
            _ => {}
        }
        self.validate()
    }

    /// The typed config of the subcommand (a process), checked: a value out of its
    /// range is a usage error (exit 2) naming the flag, before anything starts.
    fn validate(&self) -> Result<(), clap::Error> {
        use crate::config::{EngineConfig, GatewayConfig, ProjectorCmdConfig, ServeCommandConfig};
        let checked = match &self.command {
            Command::Serve(c) => ServeCommandConfig::from(c.clone()).validate(),
            Command::Engine(a) => EngineConfig::from(a.clone()).validate(),
            Command::Gateway(a) => GatewayConfig::from(a.clone()).validate(),
            Command::Projector(a) => ProjectorCmdConfig::from(a.clone()).validate(),
            _ => Ok(()),
        };
        checked.map_err(|e| {
            Cli::command().error(clap::error::ErrorKind::ValueValidation, e.to_string())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The long help of `cmd` and of every subcommand under it, at 80 columns.
    fn helps(cmd: &mut clap::Command, path: String, out: &mut Vec<(String, String)>) {
        let mut c = cmd.clone().term_width(80);
        out.push((path.clone(), c.render_long_help().to_string()));
        for sub in cmd.get_subcommands_mut() {
            let name = format!("{path} {}", sub.get_name());
            helps(sub, name, out);
        }
    }

    /// Each example command of a help text: lines under "Examples:" that start with
    /// two spaces, joined across trailing backslashes; comments dropped.
    fn examples(help: &str) -> Vec<String> {
        let mut out = Vec::new();
        let mut in_examples = false;
        let mut pending = String::new();
        for line in help.lines() {
            if line.starts_with("Examples:") {
                in_examples = true;
                continue;
            }
            if !in_examples {
                continue;
            }
            if !line.starts_with("  ") && pending.is_empty() {
                in_examples = false;
                continue;
            }
            let t = line.trim();
            if t.starts_with('#') {
                continue;
            }
            match t.strip_suffix('\\') {
                Some(head) => {
                    pending.push_str(head);
                    pending.push(' ');
                }
                None => {
                    pending.push_str(t);
                    out.push(std::mem::take(&mut pending));
                }
            }
        }
        out
    }

    /// Runs `f` with no FLASHSALE_* or OTEL_* variable in the environment (clap reads
    /// them while parsing; `make test` exports .services.env), one test at a time,
    /// and puts the environment back afterwards.
    fn with_clean_env<T>(f: impl FnOnce() -> T) -> T {
        static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = ENV.lock().unwrap_or_else(|p| p.into_inner());
        let saved: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with("FLASHSALE_") || k.starts_with("OTEL_"))
            .collect();
        for (k, _) in &saved {
            std::env::remove_var(k);
        }
        let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        for (k, v) in &saved {
            std::env::set_var(k, v);
        }
        out.unwrap_or_else(|p| std::panic::resume_unwind(p))
    }

    #[test]
    fn every_help_example_parses_as_written() {
        with_clean_env(every_help_example_parses);
    }

    fn every_help_example_parses() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut all = Vec::new();
        helps(&mut cmd, "flashsale".into(), &mut all);
        let mut checked = 0;
        for (path, help) in &all {
            for ex in examples(help) {
                let words =
                    shlex::split(&ex).unwrap_or_else(|| panic!("{path}: cannot split {ex:?}"));
                // Leading VAR=value words: the environment of that one command.
                let env: Vec<(&str, &str)> = words
                    .iter()
                    .take_while(|w| w.contains('=') && !w.starts_with('-'))
                    .filter_map(|w| w.split_once('='))
                    .collect();
                let words: Vec<&String> = words.iter().skip(env.len()).collect();
                assert_eq!(
                    words.first().map(|w| w.as_str()),
                    Some("flashsale"),
                    "{path}: example {ex:?} does not start with flashsale"
                );
                if words.iter().any(|w| *w == "--help") {
                    continue;
                }
                for (k, v) in &env {
                    std::env::set_var(k, v);
                }
                let parsed = Cli::try_parse_resolved_from(words.iter().map(|w| w.as_str()));
                for (k, _) in &env {
                    std::env::remove_var(k);
                }
                if let Err(e) = parsed {
                    panic!("{path}: the example {ex:?} does not parse:\n{e}");
                }
                checked += 1;
            }
        }
        assert!(
            checked >= 15,
            "only {checked} examples found; the parser of help texts lost them"
        );
    }

    #[test]
    fn admission_defaults_follow_the_mode_and_flags_win() {
        with_clean_env(|| {
            let serve = |argv: &[&str]| {
                let cli = Cli::try_parse_resolved_from(argv.iter().copied()).unwrap();
                let Command::Serve(s) = cli.command else {
                    panic!("serve")
                };
                crate::config::ServeConfig::from(s.args)
            };
            let a = serve(&["flashsale", "serve", "--embedded"]);
            assert_eq!(crate::serve::admission(&a), (1_024, 128));
            let k = crate::kafka::GatewayParams::from(&a);
            assert_eq!(
                (k.max_in_flight, k.max_in_flight_per_partition),
                (4_096, 1_024)
            );
            let a = serve(&[
                "flashsale",
                "serve",
                "--embedded",
                "--max-in-flight",
                "9",
                "--max-in-flight-per-partition",
                "7",
            ]);
            assert_eq!(crate::serve::admission(&a), (9, 7));
            let k = crate::kafka::GatewayParams::from(&a);
            assert_eq!((k.max_in_flight, k.max_in_flight_per_partition), (9, 7));
        });
    }

    #[test]
    fn explicit_data_dir_beats_kafka_from_the_environment() {
        with_clean_env(explicit_data_dir_beats_kafka);
    }

    fn explicit_data_dir_beats_kafka() {
        // Only the parse: the variable is read by clap, so set it for this process.
        // Only this test of the crate parses with FLASHSALE_KAFKA in mind.
        std::env::set_var("FLASHSALE_KAFKA", "127.0.0.1:1");
        let cli =
            Cli::try_parse_resolved_from(["flashsale", "audit", "--data-dir", "/tmp/x"]).unwrap();
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        assert_eq!(a.source.kafka, None);
        assert!(
            a.source.mode_reason.contains("--data-dir given"),
            "{}",
            a.source.mode_reason
        );
        let cli = Cli::try_parse_resolved_from(["flashsale", "audit"]).unwrap();
        let Command::Audit(a) = cli.command else {
            panic!("audit")
        };
        assert_eq!(a.source.kafka.as_deref(), Some("127.0.0.1:1"));
        assert!(
            a.source.mode_reason.contains("FLASHSALE_KAFKA is set"),
            "{}",
            a.source.mode_reason
        );
        let cli =
            Cli::try_parse_resolved_from(["flashsale", "serve", "--embedded", "--demo"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert_eq!(s.kafka.kafka, None);
        assert!(s
            .kafka
            .mode_reason
            .starts_with("embedded mode: --embedded given"));
        let cli = Cli::try_parse_resolved_from(["flashsale", "serve", "--demo"]).unwrap();
        let Command::Serve(s) = cli.command else {
            panic!("serve")
        };
        assert!(
            s.kafka.mode_reason.contains("pass --embedded"),
            "{}",
            s.kafka.mode_reason
        );
        let err =
            Cli::try_parse_resolved_from(["flashsale", "serve", "--embedded", "--kafka", "h:1"])
                .unwrap_err();
        assert!(err.to_string().contains("contradict"), "{err}");
        let cli = Cli::try_parse_resolved_from([
            "flashsale",
            "replay",
            "--partition",
            "1",
            "--prefix",
            "shop1.",
        ])
        .unwrap();
        let Command::Replay(r) = cli.command else {
            panic!("replay")
        };
        assert_eq!(r.source.topic_prefix, "shop1.");
        std::env::remove_var("FLASHSALE_KAFKA");
    }

    #[test]
    fn no_flags_give_each_process_its_config_defaults() {
        use crate::config::*;
        with_clean_env(|| {
            let parse = |argv: &[&str]| {
                Cli::try_parse_resolved_from(argv.iter().copied())
                    .unwrap()
                    .command
            };
            let Command::Serve(s) = parse(&["flashsale", "serve"]) else {
                panic!("serve")
            };
            let c = ServeCommandConfig::from(s);
            assert_eq!(c.node, ServeConfig::default());
            assert_eq!(c.kafka, None);
            let Command::Serve(s) = parse(&["flashsale", "serve", "--kafka", "h:1"]) else {
                panic!("serve")
            };
            assert_eq!(
                ServeCommandConfig::from(s).kafka,
                Some(KafkaServeConfig::new("h:1"))
            );
            let Command::Engine(e) = parse(&["flashsale", "engine", "--kafka", "h:1"]) else {
                panic!("engine")
            };
            assert_eq!(EngineConfig::from(e), EngineConfig::new("h:1"));
            let Command::Gateway(g) = parse(&["flashsale", "gateway", "--kafka", "h:1"]) else {
                panic!("gateway")
            };
            assert_eq!(GatewayConfig::from(g), GatewayConfig::new("h:1"));
            let Command::Projector(p) = parse(&[
                "flashsale",
                "projector",
                "--kafka",
                "h:1",
                "--postgres",
                "pg://x",
            ]) else {
                panic!("projector")
            };
            assert_eq!(
                ProjectorCmdConfig::from(p),
                ProjectorCmdConfig::new("h:1", "pg://x")
            );
        });
    }

    #[test]
    fn an_out_of_range_value_is_a_usage_error_naming_its_flag() {
        with_clean_env(|| {
            for (argv, flag) in [
                (
                    &["flashsale", "serve", "--keep-snapshots", "0"][..],
                    "--keep-snapshots",
                ),
                (
                    &["flashsale", "serve", "--partitions", "0"][..],
                    "--partitions",
                ),
                (
                    &[
                        "flashsale",
                        "serve",
                        "--kafka",
                        "h:1",
                        "--replies-partitions",
                        "0",
                    ][..],
                    "--replies-partitions",
                ),
                (
                    &[
                        "flashsale",
                        "gateway",
                        "--kafka",
                        "h:1",
                        "--max-in-flight",
                        "0",
                    ][..],
                    "--max-in-flight",
                ),
                (
                    &[
                        "flashsale",
                        "engine",
                        "--kafka",
                        "h:1",
                        "--snapshot-every-secs",
                        "0",
                    ][..],
                    "--snapshot-every-secs",
                ),
            ] {
                let e = Cli::try_parse_resolved_from(argv.iter().copied()).unwrap_err();
                assert_eq!(
                    e.kind(),
                    clap::error::ErrorKind::ValueValidation,
                    "{argv:?}"
                );
                assert!(e.to_string().contains(flag), "{argv:?}: {e}");
            }
        });
    }

    #[test]
    fn serve_help_files_each_flag_under_its_purpose() {
        let mut cmd = Cli::command();
        cmd.build();
        let serve = cmd.find_subcommand("serve").expect("serve");
        let heading = |id: &str| {
            serve
                .get_arguments()
                .find(|a| a.get_id() == id)
                .unwrap_or_else(|| panic!("no --{id}"))
                .get_help_heading()
                .unwrap_or("Options")
                .to_string()
        };
        for id in [
            "kafka",
            "embedded",
            "postgres",
            "pg_pool_size",
            "topic_prefix",
            "replies_partitions",
            "linger_ms",
            "engine_group",
            "max_batch",
            "session_timeout_ms",
            "heartbeat_interval_ms",
            "standby_window",
            "readmodel_snapshot_every_events",
            "readmodel_snapshot_every_secs",
        ] {
            assert!(
                heading(id).contains("Kafka"),
                "--{id} is under {:?}",
                heading(id)
            );
        }
        for a in serve.get_arguments() {
            let id = a.get_id().as_str();
            let h = a.get_help_heading().unwrap_or("Options");
            let http = id.starts_with("http_") || id == "shutdown_drain_secs";
            assert_eq!(
                h == "HTTP timeouts and limits",
                http,
                "--{id} is under {h:?}"
            );
        }
        for (id, h) in [
            ("listen", H_SERVER),
            ("max_in_flight", H_ADMISSION),
            ("retention_secs", H_SNAPSHOTS),
        ] {
            assert_eq!(heading(id), h);
        }
    }
}

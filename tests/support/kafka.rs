//! Kafka mode in tests: where the real services are, fresh topics and a fresh
//! Postgres schema per server, and the in-process `serve --kafka` node.
//!
//! The services come from `FLASHSALE_KAFKA` / `FLASHSALE_POSTGRES` in the environment,
//! else from `<repo>/.services.env` (written by `make services-up`). With neither,
//! Kafka-mode tests skip with a message, unless `FLASHSALE_REQUIRE_SERVICES=1`, which
//! turns the skip into a failure (CI sets it, so a missing broker cannot pass as green).

use flashsale_ops::config::{EngineGroupConfig, KafkaServeConfig, ServeConfig};
use std::collections::HashMap;
use std::path::PathBuf;

/// The real services of this run.
#[derive(Debug, Clone)]
pub struct Services {
    pub kafka: String,
    pub postgres: Option<String>,
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn env_file() -> HashMap<String, String> {
    let path = repo_root().join(".services.env");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return HashMap::new();
    };
    text.lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The services, if configured (environment first, then `.services.env`).
pub fn services() -> Option<Services> {
    let file = env_file();
    let get = |k: &str| {
        std::env::var(k)
            .ok()
            .filter(|v| !v.is_empty())
            .or_else(|| file.get(k).cloned().filter(|v| !v.is_empty()))
    };
    let kafka = get("FLASHSALE_KAFKA")?;
    Some(Services {
        kafka,
        postgres: get("FLASHSALE_POSTGRES"),
    })
}

/// The Postgres URL alone (environment first, then `.services.env`), for tests that
/// need no Kafka.
pub fn postgres_url() -> Option<String> {
    std::env::var("FLASHSALE_POSTGRES")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| {
            env_file()
                .get("FLASHSALE_POSTGRES")
                .cloned()
                .filter(|v| !v.is_empty())
        })
}

/// True when a missing service must fail the test instead of skipping it.
pub fn services_required() -> bool {
    std::env::var("FLASHSALE_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// The services, or `None` after saying why the caller skips; panics instead when
/// `FLASHSALE_REQUIRE_SERVICES=1`.
pub fn services_or_skip(what: &str) -> Option<Services> {
    match services() {
        Some(s) => Some(s),
        None if services_required() => panic!(
            "{what}: FLASHSALE_REQUIRE_SERVICES=1 but no Kafka is configured: run `make services-up` (writes .services.env) or set FLASHSALE_KAFKA/FLASHSALE_POSTGRES"
        ),
        None => {
            eprintln!("{what}: Kafka/Postgres not configured (run `make services-up` or set FLASHSALE_KAFKA); skipping");
            None
        }
    }
}

/// A name part unique to this test run (lowercase; fine in topic and schema names).
pub fn unique_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!(
        "{t:x}p{}n{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates a fresh schema in the Postgres of `url` and returns a URL whose sessions
/// use it, so every test server has empty tables of its own.
pub async fn fresh_postgres(url: &str, id: &str) -> anyhow::Result<String> {
    let schema = format!("t_{id}");
    let pool = flashsale_runtime::pg::connect(url, 1)?;
    let client = pool
        .get()
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to Postgres at {url}: {e}"))?;
    client
        .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\""))
        .await?;
    let sep = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{sep}options=-c%20search_path%3D{schema}"))
}

/// Kafka flags of a test server: fresh topics (prefix `flashsale-test-<id>.`), its own
/// engine group, Postgres in a fresh schema.
pub async fn serve_kafka_args(svc: &Services) -> anyhow::Result<KafkaServeConfig> {
    let id = unique_id();
    let postgres = match &svc.postgres {
        Some(url) => Some(fresh_postgres(url, &id).await?),
        None => None,
    };
    Ok(KafkaServeConfig {
        postgres,
        pg_pool_size: 4,
        topic_prefix: format!("flashsale-test-{id}."),
        replies_partitions: 2,
        engine: EngineGroupConfig {
            engine_group: format!("flashsale-test-{id}-engine"),
            session_timeout_ms: 1000,
            heartbeat_interval_ms: 250,
            ..EngineGroupConfig::default()
        },
        ..KafkaServeConfig::new(svc.kafka.clone())
    })
}

/// `serve --kafka` in this process, on fresh topics.
pub async fn start_in_process(
    args: ServeConfig,
    svc: &Services,
) -> anyhow::Result<flashsale_ops::Running> {
    let kafka = serve_kafka_args(svc).await?;
    let (gw, k, extras) = flashsale_ops::kafka::cli::serve_parts(&args, &kafka).await?;
    flashsale_ops::kafka::start(gw, k, extras).await
}

/// A `flashsale` child process (engine, gateway, projector) for fault tests; killed
/// with SIGKILL when dropped. Its stderr goes to `<log_dir>/<name>.log`.
pub struct Proc {
    pub name: String,
    child: Option<std::process::Child>,
}

impl Proc {
    /// Starts `flashsale <args>` with the services' variables removed from its
    /// environment (everything it needs is on the command line).
    pub fn spawn(name: &str, args: &[String], log_dir: &std::path::Path) -> anyhow::Result<Proc> {
        Self::spawn_with_env(name, args, &[], log_dir)
    }

    /// [`Proc::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        args: &[String],
        env: &[(&str, &str)],
        log_dir: &std::path::Path,
    ) -> anyhow::Result<Proc> {
        use anyhow::Context;
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).context("log file")?;
        let child = std::process::Command::new(crate::flashsale_bin())
            .args(args)
            .envs(env.iter().copied())
            .env_remove("FLASHSALE_KAFKA")
            .env_remove("FLASHSALE_POSTGRES")
            .env("FLASHSALE_LOG", "info,librdkafka=warn")
            .env("FLASHSALE_LOG_FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn flashsale {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child: Some(child),
        })
    }

    /// SIGKILL: no shutdown hooks, no final snapshot, no offset commit.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and a bounded wait (30 s), then SIGKILL. True if it exited by itself.
    pub fn terminate(&mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(_)) = c.try_wait() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Sends SIGTERM and returns at once (see [`Proc::terminate_after_exit`]).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
        }
    }

    /// Waits (bounded by `secs`) for the process to exit by itself; true if it exited
    /// with status 0. Killed when the time is up.
    pub fn terminate_after_exit(&mut self, secs: u64) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        for _ in 0..secs * 10 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// The process id while it runs (for signals such as SIGSTOP / SIGCONT).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Creates the topics of `prefix` (blocking call off the runtime).
pub async fn create_topics(
    brokers: &str,
    prefix: &str,
    partitions: u32,
    replies_partitions: u32,
) -> anyhow::Result<()> {
    use flashsale_ops::kafka::topics;
    use flashsale_proto::Topics;
    let spec = topics::TopicSpec {
        topics: Topics::with_prefix(prefix),
        partitions,
        replies_partitions,
        replication_factor: None,
        min_insync_replicas: None,
    };
    let brokers = brokers.to_string();
    tokio::task::spawn_blocking(move || topics::create(&brokers, &spec)).await??;
    Ok(())
}

/// The acknowledged holds of a load run through a fault, checked the way every Kafka
/// fault test checks them: no reservation id handed out twice, and at most one live
/// (not cancelled) hold per user and SKU. `created` maps an attempt to the reservation
/// id it was acknowledged with, `cancelled` holds the attempts whose cancel was
/// acknowledged, and `attempt` names an attempt's user and SKU. Returns the live holds
/// per SKU, for the test to hold against its stock.
pub fn live_holds(
    created: &std::collections::BTreeMap<usize, String>,
    cancelled: &std::collections::HashSet<usize>,
    attempt: impl Fn(usize) -> (String, String),
) -> std::collections::HashMap<String, u64> {
    use std::collections::{HashMap, HashSet};
    let ids: HashSet<&String> = created.values().collect();
    assert_eq!(
        ids.len(),
        created.len(),
        "a reservation id handed out twice"
    );
    let mut live: HashMap<String, u64> = HashMap::new();
    let mut per_user: HashMap<(String, String), u64> = HashMap::new();
    for i in created.keys().filter(|i| !cancelled.contains(i)) {
        let (user, sku) = attempt(*i);
        *live.entry(sku.clone()).or_default() += 1;
        *per_user.entry((user, sku)).or_default() += 1;
    }
    if let Some(((user, sku), n)) = per_user.iter().find(|(_, n)| **n > 1) {
        panic!("{user} holds {n} units of {sku} (limit 1)");
    }
    live
}

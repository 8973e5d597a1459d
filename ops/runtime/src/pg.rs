//! Postgres plumbing every process shares: the connection pool ([`connect`]), the
//! schema ([`migrate`], files in `schemas/migrations/`), the retry policy for writes
//! that must ride out an outage ([`Retry`]), and the conversions between log time and
//! `timestamptz`.
//!
//! The users are the engine's snapshot store (`flashsale-engine`), the order reads of
//! the gateway (`flashsale-gateway`) and the projector (`flashsale-ops`). None of them
//! decides anything here: the command log is the truth and Postgres holds copies, so
//! when Postgres is away, writes retry with backoff while the engine keeps answering.
//!
//! SQL lives in `.sql` files next to the module that runs it, loaded with
//! `include_str!` and prepared once per connection (deadpool's statement cache).

pub use deadpool_postgres::Pool;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod, Runtime};
use std::future::Future;
use std::time::{Duration, Instant};

/// Errors of the Postgres layer.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("invalid Postgres URL: {0}")]
    Url(String),
    #[error("cannot build the Postgres pool: {0}")]
    Build(String),
    #[error("no Postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("postgres: {}", pg_message(.0))]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}) differs from the one applied to this database; add a new migration instead of editing a shipped one")]
    MigrationChanged { version: i32, name: &'static str },
    #[error("unexpected data in Postgres: {0}")]
    Data(String),
    /// Postgres refused us for a reason a retry cannot fix (authentication, no such
    /// database or role), or cannot be reached and the caller does not wait.
    #[error("{target}: {reason}; {hint}")]
    Connect {
        target: Target,
        reason: String,
        hint: &'static str,
    },
}

/// Where a Postgres URL points, for messages: host, port, database and user (never the
/// password).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Postgres at {}:{} (database {}, user {})",
            self.host, self.port, self.database, self.user
        )
    }
}

const URL_HINT: &str = "give --postgres (or FLASHSALE_POSTGRES) as postgres://USER@HOST:PORT/DATABASE, e.g. postgres://postgres@127.0.0.1:15432/flashsale";

/// Parses and checks a Postgres URL: not empty, one host named.
pub fn parse_url(url: &str) -> Result<(tokio_postgres::Config, Target), PgError> {
    if url.trim().is_empty() {
        return Err(PgError::Url(format!(
            "the Postgres URL is empty; {URL_HINT}"
        )));
    }
    let config: tokio_postgres::Config = url.parse().map_err(|e: tokio_postgres::Error| {
        PgError::Url(format!("{}; {URL_HINT}", pg_message(&e)))
    })?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => {
            return Err(PgError::Url(format!(
                "the Postgres URL names no host; {URL_HINT}"
            )))
        }
    };
    let user = config.get_user().unwrap_or("postgres").to_string();
    let target = Target {
        host,
        port: config.get_ports().first().copied().unwrap_or(5432),
        database: config
            .get_dbname()
            .map_or_else(|| user.clone(), str::to_string),
        user,
    };
    Ok((config, target))
}

/// The reason Postgres or the network gave, in a few words: the server's message and
/// SQLSTATE, "connection refused", "timed out"...
pub fn reason(e: &PgError) -> String {
    match e {
        PgError::Pool(deadpool_postgres::PoolError::Backend(e)) | PgError::Db(e) => pg_reason(e),
        PgError::Pool(deadpool_postgres::PoolError::Timeout(_)) => {
            "no connection within 5 s (timed out)".to_string()
        }
        other => other.to_string(),
    }
}

fn pg_reason(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                std::io::ErrorKind::TimedOut => "timed out".to_string(),
                _ => io.to_string(),
            };
        }
        source = s.source();
    }
    pg_message(e)
}

/// True when a retry cannot fix a connection error: wrong password or method
/// (28xxx), no such database (3D000), a bad URL.
fn is_permanent_connect(e: &PgError) -> bool {
    match e {
        PgError::Url(_) | PgError::Build(_) => true,
        PgError::Pool(deadpool_postgres::PoolError::Backend(e)) | PgError::Db(e) => {
            match e.code() {
                Some(c) => {
                    let c = c.code();
                    c.starts_with("28") || c == "3D000" || c.starts_with("42")
                }
                None => false,
            }
        }
        PgError::Pool(
            deadpool_postgres::PoolError::Closed | deadpool_postgres::PoolError::NoRuntimeSpecified,
        ) => true,
        _ => false,
    }
}

/// Whether [`connect_checked`] waits for Postgres when it cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Fail at once (`migrate`: a one-shot command).
    No,
    /// Retry until it answers (servers: Postgres may still be starting). Says once
    /// what it waits for, then stays quiet until Postgres is up.
    Forever,
}

/// [`connect`], then one connection made to prove the URL: errors no retry can fix
/// (authentication, missing database, bad URL) fail at once with Postgres's reason and
/// the target named; a server not (yet) reachable is waited for per `wait`.
pub async fn connect_checked(url: &str, pool_size: usize, wait: Wait) -> Result<Pool, PgError> {
    let (_, target) = parse_url(url)?;
    let pool = connect(url, pool_size)?;
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut announced = false;
    loop {
        match pool.get().await {
            Ok(_) => {
                if announced {
                    tracing::info!(
                        postgres = %target,
                        waited_ms = started.elapsed().as_millis() as u64,
                        "Postgres is up"
                    );
                }
                return Ok(pool);
            }
            Err(e) => {
                let e = PgError::Pool(e);
                let why = reason(&e);
                if is_permanent_connect(&e) {
                    return Err(PgError::Connect {
                        target,
                        reason: why,
                        hint: "a retry cannot fix this: check the user, password and database in --postgres (or FLASHSALE_POSTGRES); `make services-up` creates database flashsale",
                    });
                }
                if wait == Wait::No {
                    return Err(PgError::Connect {
                        target,
                        reason: why,
                        hint: "is Postgres running there? (`make services-up` starts one; see .services.env for its port)",
                    });
                }
                if !announced {
                    tracing::warn!(
                        "waiting for Postgres at {}:{} ({why})…; retrying quietly until it answers",
                        target.host,
                        target.port
                    );
                    announced = true;
                } else {
                    tracing::debug!(postgres = %target, reason = %why, "still waiting for Postgres");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// tokio-postgres' Display says only "db error"; the server's message is in the source.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {} ({})", db.severity(), db.message(), db.code().code()),
        None => match std::error::Error::source(e) {
            Some(s) => format!("{e}: {s}"),
            None => e.to_string(),
        },
    }
}

impl PgError {
    /// True for errors that a later attempt may not meet: no connection, the server
    /// restarting or shutting down, a serialization failure or a deadlock.
    pub fn is_transient(&self) -> bool {
        match self {
            PgError::Pool(_) => !is_permanent_connect(self),
            PgError::Db(e) => match e.code() {
                // No SQLSTATE: the connection broke (i/o error, closed, timeout).
                None => true,
                Some(code) => {
                    let c = code.code();
                    c.starts_with("08") // connection exception
                        || c.starts_with("57P") // admin/crash shutdown, cannot connect now
                        || c == "53300" // too many connections
                        || c == "40001" // serialization failure
                        || c == "40P01" // deadlock detected
                }
            },
            _ => false,
        }
    }
}

/// Builds a pool of at most `pool_size` connections. Lazy: no connection is made until
/// one is needed, so a process can start while Postgres is down.
///
/// `url`: `postgres://user@host:port/db`. To work in another schema (tests do), add
/// `?options=-c%20search_path%3Dmy_schema`.
pub fn connect(url: &str, pool_size: usize) -> Result<Pool, PgError> {
    let (mut config, _) = parse_url(url)?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(5));
    }
    if config.get_application_name().is_none() {
        config.application_name("flashsale");
    }
    let manager = Manager::from_config(
        config,
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(pool_size.max(1))
        .runtime(Runtime::Tokio1)
        // Bounded waits: a caller learns within seconds that Postgres is away, and retries.
        .wait_timeout(Some(Duration::from_secs(10)))
        .create_timeout(Some(Duration::from_secs(5)))
        .recycle_timeout(Some(Duration::from_secs(5)))
        .build()
        .map_err(|e| PgError::Build(e.to_string()))
}

/// One file of `schemas/migrations/`.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A unit test checks this list against the directory.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "init",
        sql: include_str!("../../../schemas/migrations/0001_init.sql"),
    },
    Migration {
        version: 2,
        name: "log_identity",
        sql: include_str!("../../../schemas/migrations/0002_log_identity.sql"),
    },
    Migration {
        version: 3,
        name: "readmodel_snapshots",
        sql: include_str!("../../../schemas/migrations/0003_readmodel_snapshots.sql"),
    },
    Migration {
        version: 4,
        name: "deployment_isolation",
        sql: include_str!("../../../schemas/migrations/0004_deployment_isolation.sql"),
    },
];

/// Applies the migrations this database has not seen, in order, in one transaction,
/// recording each in `schema_migrations` (version, name, md5 of the file). Returns
/// the versions applied now: empty when the schema is up to date. Safe to run from
/// several processes at once (an advisory lock serialises them). Fails without
/// retrying when Postgres is unreachable.
pub async fn migrate(pool: &Pool) -> Result<Vec<Migration>, PgError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    tx.batch_execute(include_str!("sql/migrate_lock.sql"))
        .await?;
    let applied = tx
        .query(include_str!("sql/migrations_applied.sql"), &[])
        .await?;
    let mut done = std::collections::HashMap::new();
    for row in applied {
        done.insert(row.get::<_, i32>(0), row.get::<_, String>(1));
    }
    let mut now = Vec::new();
    for m in MIGRATIONS {
        let md5: String = tx
            .query_one("SELECT md5($1::text)", &[&m.sql])
            .await?
            .get(0);
        match done.get(&m.version) {
            Some(recorded) if *recorded == md5 => continue,
            Some(_) => {
                return Err(PgError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                })
            }
            None => {
                tx.batch_execute(m.sql).await?;
                tx.execute(
                    include_str!("sql/migration_record.sql"),
                    &[&m.version, &m.name, &md5],
                )
                .await?;
                now.push(*m);
            }
        }
    }
    tx.commit().await?;
    Ok(now)
}

/// How long to keep retrying an operation that met a transient error.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// Give up (return the last error) once this much time has passed; `None`: never.
    pub give_up_after: Option<Duration>,
}

impl Retry {
    /// For snapshots: 100 ms doubling to 5 s, for up to 60 s. Long enough to ride out a
    /// Postgres restart or a short outage (the writer then writes what it holds), short
    /// enough that a caller on the rebalance or shutdown path is not held for long; a
    /// snapshot given up is not lost work (the log has it; the next one is taken later).
    pub const BACKGROUND: Retry = Retry {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        give_up_after: Some(Duration::from_secs(60)),
    };
    /// Never give up (the projector: its batch must land).
    pub const FOREVER: Retry = Retry {
        first_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(5),
        give_up_after: None,
    };
    /// No retry at all.
    pub const NONE: Retry = Retry {
        first_delay: Duration::ZERO,
        max_delay: Duration::ZERO,
        give_up_after: Some(Duration::ZERO),
    };

    /// Runs `op` until it succeeds, fails with a permanent error, or the policy gives up.
    pub async fn run<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, PgError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, PgError>>,
    {
        let started = Instant::now();
        let mut delay = self.first_delay;
        let mut attempt = 1u32;
        loop {
            match op().await {
                Ok(v) => {
                    if attempt > 1 {
                        tracing::info!(
                            what,
                            attempt,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "postgres is back"
                        );
                    }
                    return Ok(v);
                }
                Err(e)
                    if e.is_transient()
                        && self
                            .give_up_after
                            .is_none_or(|g| started.elapsed() + delay <= g) =>
                {
                    tracing::warn!(what, attempt, retry_in_ms = delay.as_millis() as u64, error = %e, "postgres unavailable; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2)
                        .min(self.max_delay)
                        .max(Duration::from_millis(1));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

pub fn ms_to_time(ms: u64) -> Result<chrono::DateTime<chrono::Utc>, PgError> {
    i64::try_from(ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .ok_or_else(|| PgError::Data(format!("time {ms} ms is out of range")))
}

pub fn time_to_ms(t: chrono::DateTime<chrono::Utc>) -> Result<u64, PgError> {
    u64::try_from(t.timestamp_millis())
        .map_err(|_| PgError::Data(format!("time {t} is before 1970")))
}

pub fn to_i64(v: u64, what: &str) -> Result<i64, PgError> {
    i64::try_from(v).map_err(|_| PgError::Data(format!("{what} {v} does not fit a bigint")))
}

pub fn to_i32(v: u32, what: &str) -> Result<i32, PgError> {
    i32::try_from(v).map_err(|_| PgError::Data(format!("{what} {v} does not fit an integer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_listed_in_order() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas/migrations");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .expect("schemas/migrations exists")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|m| format!("{:04}_{}.sql", m.version, m.name))
            .collect();
        assert_eq!(
            files, listed,
            "MIGRATIONS must list every file of schemas/migrations, in order"
        );
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(
                m.version,
                i as i32 + 1,
                "versions are 1, 2, 3, ... without gaps"
            );
        }
    }

    #[test]
    fn transient_errors_are_told_apart() {
        assert!(!PgError::Data("x".into()).is_transient());
        assert!(!PgError::MigrationChanged {
            version: 1,
            name: "init"
        }
        .is_transient());
    }

    #[test]
    fn urls_are_checked_and_described() {
        assert!(parse_url("").unwrap_err().to_string().contains("empty"));
        assert!(parse_url("postgres:///db")
            .unwrap_err()
            .to_string()
            .contains("no host"));
        let (_, t) = parse_url("postgres://me:secret@127.0.0.1:15433/nosuchdb").unwrap();
        let shown = t.to_string();
        assert!(shown.contains("127.0.0.1:15433"), "{shown}");
        assert!(shown.contains("nosuchdb"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn times_round_trip() {
        let t = ms_to_time(1_736_935_200_123).unwrap();
        assert_eq!(time_to_ms(t).unwrap(), 1_736_935_200_123);
        assert!(ms_to_time(u64::MAX).is_err());
    }
}

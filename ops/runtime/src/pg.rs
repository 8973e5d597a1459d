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
            PgError::Pool(_) => true,
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
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| PgError::Url(e.to_string()))?;
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
    fn times_round_trip() {
        let t = ms_to_time(1_736_935_200_123).unwrap();
        assert_eq!(time_to_ms(t).unwrap(), 1_736_935_200_123);
        assert!(ms_to_time(u64::MAX).is_err());
    }
}

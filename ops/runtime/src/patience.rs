//! Waiting for a dependency (a broker) without flooding the log: one clear line when
//! the wait starts, then quiet, with a summary line at most every [`Quiet::every`]
//! counting the errors not shown, and one line when it is over.

use std::time::{Duration, Instant};

/// How often a still-failing operation may log again.
pub const QUIET_EVERY: Duration = Duration::from_secs(30);

/// Rate limit for a repeated warning: the first is logged, later ones are counted and
/// summed up at most once per `every`.
#[derive(Debug)]
pub struct Quiet {
    what: String,
    every: Duration,
    failing_since: Option<Instant>,
    last_logged: Option<Instant>,
    suppressed: u64,
    failures: u64,
}

impl Quiet {
    /// `what` names what is waited for, e.g. "Kafka at 127.0.0.1:9092".
    pub fn new(what: impl Into<String>) -> Self {
        Quiet {
            what: what.into(),
            every: QUIET_EVERY,
            failing_since: None,
            last_logged: None,
            suppressed: 0,
            failures: 0,
        }
    }

    pub fn every(mut self, every: Duration) -> Self {
        self.every = every;
        self
    }

    /// Failures since the last success.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// One more failure: logged if it is the first or `every` passed since the last line.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        let now = Instant::now();
        self.failures += 1;
        let since = *self.failing_since.get_or_insert(now);
        match self.last_logged {
            None => {
                tracing::warn!(error = %error, "waiting for {}; retrying with backoff (further errors are summed up every {}s)", self.what, self.every.as_secs());
                self.last_logged = Some(now);
            }
            Some(t) if now.duration_since(t) >= self.every => {
                tracing::warn!(
                    error = %error,
                    repeated = self.suppressed + 1,
                    waiting_s = now.duration_since(since).as_secs(),
                    "still waiting for {}",
                    self.what
                );
                self.last_logged = Some(now);
                self.suppressed = 0;
            }
            Some(_) => self.suppressed += 1,
        }
    }

    /// Success: if it had been failing, says so once and resets.
    pub fn succeeded(&mut self) {
        if let Some(since) = self.failing_since.take() {
            tracing::info!(
                failures = self.failures,
                waited_s = since.elapsed().as_secs(),
                "{} is back",
                self.what
            );
        }
        self.last_logged = None;
        self.suppressed = 0;
        self.failures = 0;
    }
}

/// Exponential backoff from 200 ms to 5 s.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(200),
        }
    }
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(5);

    /// The delay to wait now; the next one doubles (up to [`Backoff::MAX`]).
    pub fn delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        d
    }
}

/// Runs `f` until it succeeds, with backoff and a [`Quiet`] log; gives up only when
/// `stop()` says so (then returns the last error). Blocking.
pub fn retry_blocking<T>(
    what: &str,
    mut stop: impl FnMut() -> bool,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut quiet = Quiet::new(what);
    let mut backoff = Backoff::default();
    loop {
        match f() {
            Ok(v) => {
                quiet.succeeded();
                return Ok(v);
            }
            Err(e) => {
                if stop() {
                    return Err(e);
                }
                quiet.failed(&format!("{e:#}"));
                // Sleep in slices so a stop is seen promptly.
                let until = Instant::now() + backoff.delay();
                while Instant::now() < until && !stop() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
    }
}

/// Async [`retry_blocking`] for `f` run on the blocking pool (librdkafka's admin calls
/// block). Never gives up.
pub async fn retry_forever<T: Send + 'static>(
    what: &str,
    f: impl Fn() -> anyhow::Result<T> + Send + Sync + 'static,
) -> T {
    let f = std::sync::Arc::new(f);
    let mut quiet = Quiet::new(what);
    let mut backoff = Backoff::default();
    loop {
        let g = f.clone();
        let r = tokio::task::spawn_blocking(move || g())
            .await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("{e}")));
        match r {
            Ok(v) => {
                quiet.succeeded();
                return v;
            }
            Err(e) => {
                quiet.failed(&format!("{e:#}"));
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut b = Backoff::default();
        let d: Vec<u64> = (0..8).map(|_| b.delay().as_millis() as u64).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
    }

    #[test]
    fn quiet_counts_and_resets() {
        let mut q = Quiet::new("x").every(Duration::from_secs(3600));
        for _ in 0..5 {
            q.failed(&"down");
        }
        assert_eq!(q.failures(), 5);
        assert_eq!(q.suppressed, 4);
        q.succeeded();
        assert_eq!(q.failures(), 0);
        assert_eq!(q.suppressed, 0);
    }

    #[test]
    fn retry_blocking_stops_when_told() {
        let mut n = 0;
        let r: anyhow::Result<()> = retry_blocking(
            "nothing",
            || true,
            || {
                n += 1;
                anyhow::bail!("no")
            },
        );
        assert!(r.is_err());
        assert_eq!(n, 1);
        let mut m = 0;
        let v = retry_blocking(
            "something",
            || false,
            || {
                m += 1;
                if m < 2 {
                    anyhow::bail!("not yet")
                }
                Ok(m)
            },
        )
        .unwrap();
        assert_eq!(v, 2);
    }
}

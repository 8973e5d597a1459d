//! Kafka client settings every process shares (idempotent producers, `acks=all`,
//! latency-first sockets), the client context every client uses ([`QuietContext`]:
//! librdkafka's log lines rate-limited, a broker outage told in a few lines by
//! [`KafkaHealth`]), the check of a bootstrap list ([`parse_bootstrap`]), and small
//! helpers around librdkafka's blocking admin calls.

use crate::patience::QUIET_EVERY;
use crate::ratelimit::{similarity_key, LogLimiter};
use anyhow::Context as _;
use flashsale_proto::Topics;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::BaseConsumer;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Settings every client of this process shares.
pub fn base_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", client_id)
        // Loopback and LAN brokers: find a dead broker quickly.
        .set("socket.keepalive.enable", "true")
        // Small records, latency first: never let Nagle hold a request back.
        .set("socket.nagle.disable", "true")
        .set("reconnect.backoff.max.ms", "1000")
        // After a broker dies, its partitions' new leaders are looked up again and
        // again with a backoff that doubles from retry.backoff.ms (100) up to this cap
        // (librdkafka's default 1000): a lower cap finds the new leader up to ~0.75 s
        // sooner once the cluster has moved it (issue 13, broker-kill window).
        .set("retry.backoff.max.ms", "250")
        .set("log_level", "4");
    c
}

/// How long an undelivered record may wait: for ever (the engine's outputs: they must
/// not be lost, and a retry after the broker is back cures any outage), or bounded (a
/// gateway's commands: their request answered 503 long before, and the buyer retries
/// with the same `Idempotency-Key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// `message.timeout.ms=0`: librdkafka retries until the broker takes the record.
    UntilAcknowledged,
    /// Fails the record after this long.
    Within(Duration),
}

/// An idempotent producer (`enable.idempotence`, `acks=all`, ordered, no duplicates
/// on retry). `linger_ms` trades a little latency for batching under load.
pub fn producer_config(
    brokers: &str,
    client_id: &str,
    linger_ms: u32,
    delivery: Delivery,
) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    let timeout_ms = match delivery {
        // librdkafka: "A time of 0 is infinite". With the idempotent producer the
        // record is retried, in order and without duplicates, until acknowledged.
        Delivery::UntilAcknowledged => 0,
        Delivery::Within(d) => (d.as_millis() as u64).clamp(1000, i32::MAX as u64),
    };
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "200000")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", timeout_ms.to_string());
    c
}

/// How long a consumer lets the broker hold a fetch that finds no new record
/// (`fetch.wait.max.ms`). The broker answers a fetch as soon as one byte is there
/// (`fetch.min.bytes` stays 1), so while records flow this adds no latency: it only
/// sets how often an idle consumer asks again. At 5 ms (the setting before) the three
/// consumers of one idle `serve --kafka` kept the broker at half a core (517 ticks of
/// its CPU per 10 s, against 42 at 100 ms and 23-47 with no client at all) and took
/// that CPU from the node during a sale. Not longer: librdkafka sends a partition's
/// first fetch only after the broker's fetch in flight returns, so a partition an
/// engine (or a projector) is newly given may wait this long before its first records
/// (issue 13's failover budget of 1 s).
const FETCH_WAIT_MAX_MS: &str = "100";

/// [`base_config`] for a consumer that follows a topic's records (the engine, its
/// standby copies, a gateway's follower, the projector): idle fetches paced by
/// [`FETCH_WAIT_MAX_MS`].
pub fn consumer_config(brokers: &str, client_id: &str) -> ClientConfig {
    let mut c = base_config(brokers, client_id);
    c.set("fetch.wait.max.ms", FETCH_WAIT_MAX_MS);
    c
}

/// How often a client with a [`QuietContext`] reports its statistics (the broker
/// states [`KafkaHealth`] reads).
pub const STATS_INTERVAL_MS: &str = "1000";

/// How long every broker must stay unreachable before an outage is announced (a
/// reconnect after an idle disconnect is not an outage).
const OUTAGE_AFTER: Duration = Duration::from_secs(2);

/// librdkafka's log lines of the whole process, rate-limited by kind. One for the
/// process, like the log itself: short-lived clients (a metadata call retried every few
/// seconds while the broker is away) would otherwise each start with a clean slate.
fn librdkafka_lines() -> &'static LogLimiter {
    static LINES: OnceLock<LogLimiter> = OnceLock::new();
    LINES.get_or_init(|| LogLimiter::new(QUIET_EVERY))
}

/// Whether the brokers of one part of a process (an engine, a gateway, a projector:
/// one or more clients sharing it) can be reached, told in a few lines: one when an
/// outage starts (with librdkafka's reason), one every [`QUIET_EVERY`] while it lasts,
/// one when it is over (with how long and how many lines were left out).
#[derive(Debug)]
pub struct KafkaHealth {
    /// What waits for the broker, e.g. "engine" (in the log lines).
    who: String,
    brokers: String,
    state: Mutex<HealthState>,
}

#[derive(Debug, Default)]
struct HealthState {
    /// Per client (its librdkafka name): was a broker `UP` in its last statistics?
    views: HashMap<String, bool>,
    down_since: Option<Instant>,
    announced: bool,
    last_line: Option<Instant>,
    last_reason: Option<String>,
    /// Lines of librdkafka and errors left out during the outage.
    left_out: u64,
}

impl KafkaHealth {
    pub fn new(who: impl Into<String>, brokers: impl Into<String>) -> Arc<Self> {
        Arc::new(KafkaHealth {
            who: who.into(),
            brokers: brokers.into(),
            state: Mutex::new(HealthState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// False while an announced outage lasts: the gateway then refuses commands at
    /// once (503) instead of letting buyers wait for a broker that is not there.
    pub fn is_reachable(&self) -> bool {
        !self.lock().announced
    }

    /// True (and counted) when a line about the outage should be left out because the
    /// outage was announced already.
    fn absorb(&self) -> bool {
        let mut s = self.lock();
        if s.announced {
            s.left_out += 1;
            true
        } else {
            false
        }
    }

    /// A client's statistics: is any broker `UP`?
    fn on_stats(&self, client: &str, any_up: bool) {
        let mut s = self.lock();
        s.views.insert(client.to_string(), any_up);
        self.evaluate(&mut s);
    }

    /// librdkafka says a connection failed (`reason`), or every broker is down.
    fn on_failure(&self, client: &str, reason: &str, all_down: bool) {
        let mut s = self.lock();
        // The most specific reason: a connection's own failure, over "1/1 brokers are down".
        if !all_down || s.last_reason.is_none() {
            s.last_reason = Some(reason.to_string());
        }
        if all_down {
            s.views.insert(client.to_string(), false);
        }
        if s.announced {
            s.left_out += 1;
        }
        self.evaluate(&mut s);
    }

    fn evaluate(&self, s: &mut HealthState) {
        let now = Instant::now();
        if s.views.values().any(|up| *up) {
            if s.announced {
                tracing::info!(
                    target: "flashsale::kafka",
                    who = %self.who,
                    down_s = s.down_since.map_or(0, |t| now.duration_since(t).as_secs()),
                    lines_left_out = s.left_out,
                    "Kafka at {} is reachable again; {} resumes",
                    self.brokers,
                    self.who
                );
            }
            s.down_since = None;
            s.last_reason = None;
            s.announced = false;
            s.last_line = None;
            s.left_out = 0;
            return;
        }
        if s.views.is_empty() {
            return; // no statistics yet: nothing known
        }
        let since = *s.down_since.get_or_insert(now);
        let reason = s
            .last_reason
            .as_deref()
            .unwrap_or("no broker connection is up");
        if !s.announced {
            if now.duration_since(since) >= OUTAGE_AFTER {
                tracing::error!(
                    target: "flashsale::kafka",
                    who = %self.who,
                    reason,
                    "Kafka at {} is unreachable: {} waits and retries by itself (nothing is lost; buyers get 503 + Retry-After meanwhile); further errors are counted, a line every {}s",
                    self.brokers,
                    self.who,
                    QUIET_EVERY.as_secs()
                );
                s.announced = true;
                s.last_line = Some(now);
            }
        } else if s
            .last_line
            .is_none_or(|t| now.duration_since(t) >= QUIET_EVERY)
        {
            tracing::warn!(
                target: "flashsale::kafka",
                who = %self.who,
                reason,
                down_s = now.duration_since(since).as_secs(),
                lines_left_out = s.left_out,
                "Kafka at {} still unreachable; {} keeps retrying",
                self.brokers,
                self.who
            );
            s.last_line = Some(now);
        }
    }
}

/// The context of every flashsale Kafka client: librdkafka's log lines and errors
/// rate-limited by kind (a count of those left out on the next line), and, with a
/// [`KafkaHealth`], outages told in a few lines (set `statistics.interval.ms` to
/// [`STATS_INTERVAL_MS`] on such a client).
#[derive(Debug, Clone, Default)]
pub struct QuietContext {
    pub health: Option<Arc<KafkaHealth>>,
}

impl QuietContext {
    pub fn new(health: Arc<KafkaHealth>) -> Self {
        QuietContext {
            health: Some(health),
        }
    }

    /// [`ClientContext::log`], for contexts that wrap this one.
    pub fn log_line(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        let quiet = matches!(
            level,
            RDKafkaLogLevel::Debug | RDKafkaLogLevel::Info | RDKafkaLogLevel::Notice
        );
        if quiet || self.health.as_ref().is_some_and(|h| h.absorb()) {
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        if let (Some(h), "FAIL") = (&self.health, fac) {
            // A connection failed: the health's lines tell an outage (with this as the
            // reason); a reconnect within a moment is not worth a line.
            h.on_failure("", message, false);
            tracing::debug!(target: "librdkafka", "{fac} {message}");
            return;
        }
        let Some(left_out) = librdkafka_lines().check(&similarity_key(&format!("{fac} {message}")))
        else {
            return;
        };
        if matches!(level, RDKafkaLogLevel::Warning) {
            tracing::warn!(target: "librdkafka", similar_left_out = left_out, "{fac} {message}");
        } else {
            tracing::error!(target: "librdkafka", similar_left_out = left_out, "{fac} {message}");
        }
    }

    /// [`ClientContext::error`], for contexts that wrap this one.
    pub fn error_line(&self, client: &str, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        let connection = matches!(
            code,
            Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
        );
        if connection {
            if let Some(h) = &self.health {
                h.on_failure(
                    client,
                    reason,
                    code == Some(RDKafkaErrorCode::AllBrokersDown),
                );
                tracing::debug!(target: "librdkafka", "{error}: {reason}");
                return;
            }
        }
        let Some(left_out) =
            librdkafka_lines().check(&similarity_key(&format!("error {error}: {reason}")))
        else {
            return;
        };
        tracing::warn!(target: "librdkafka", similar_left_out = left_out, "{error}: {reason}");
    }

    /// [`ClientContext::stats`], for contexts that wrap this one.
    pub fn stats_seen(&self, stats: &rdkafka::Statistics) {
        if let Some(h) = &self.health {
            let any_up = stats
                .brokers
                .values()
                .any(|b| b.source != "internal" && b.state == "UP");
            h.on_stats(&stats.name, any_up);
        }
    }
}

impl ClientContext for QuietContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.log_line(level, fac, log_message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        self.error_line("client", &error, reason);
    }
    fn stats(&self, statistics: rdkafka::Statistics) {
        self.stats_seen(&statistics);
    }
}

impl rdkafka::consumer::ConsumerContext for QuietContext {}

/// A lost broker connection (what [`KafkaHealth`] tells as an outage): callers leave
/// these out of their own error lines.
pub fn is_connection_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::AllBrokersDown | RDKafkaErrorCode::BrokerTransportFailure)
    )
}

/// Checks a bootstrap list, `host:port[,host:port]` (each optionally `plaintext://`),
/// for what can never work, however long one retries: an empty list or entry, a
/// missing or non-numeric port, a host name with characters no host name has, an IPv6
/// address without brackets. The host:port pairs.
///
/// A host name that does not resolve is *not* refused here: DNS can be transient (a
/// container's name appears when it starts), so the processes wait for it like for a
/// broker that is down, naming host:port in their waiting line.
pub fn parse_bootstrap(list: &str) -> Result<Vec<(String, u16)>, String> {
    const EXAMPLE: &str = "host:port[,host:port], e.g. 127.0.0.1:9092";
    let list = list.trim();
    if list.is_empty() {
        return Err(format!("the Kafka bootstrap list is empty; give {EXAMPLE}"));
    }
    let mut out = Vec::new();
    for raw in list.split(',') {
        let entry = raw.trim();
        if entry.is_empty() {
            return Err(format!(
                "{list:?} has an empty entry (a stray comma?); give {EXAMPLE}"
            ));
        }
        let addr = match entry.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("plaintext") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "{entry:?}: only plaintext listeners are supported, not {scheme}://; give {EXAMPLE}"
                ))
            }
            None => entry,
        };
        let Some((host, port)) = addr.rsplit_once(':') else {
            return Err(format!(
                "{entry:?} has no port; write host:port, e.g. {addr}:9092"
            ));
        };
        let port: u16 = match port.parse() {
            Ok(p) if p > 0 => p,
            _ => {
                return Err(format!(
                    "{entry:?}: the port {port:?} is not a number 1-65535; write host:port, e.g. 127.0.0.1:9092"
                ))
            }
        };
        let host_ok = if let Some(inner) = host.strip_prefix('[') {
            inner
                .strip_suffix(']')
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        } else {
            !host.is_empty()
                && !host.contains(':')
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !host_ok {
            let hint = if host.contains(':') && !host.starts_with('[') {
                "write IPv6 addresses in brackets, e.g. [::1]:9092"
            } else {
                "a host is a name or an IP address"
            };
            return Err(format!("{entry:?}: {host:?} is not a host; {hint}"));
        }
        out.push((host.to_string(), port));
    }
    Ok(out)
}

/// Can a TCP connection be opened to one of the bootstrap addresses? A quick check
/// before librdkafka's calls (which only time out), so that a waiting line says why:
/// `cannot resolve HOST:PORT` or `cannot connect to HOST:PORT (Connection refused)`.
pub fn probe(brokers: &str, timeout: Duration) -> anyhow::Result<()> {
    use std::net::ToSocketAddrs as _;
    let mut last = None;
    for entry in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        let addr = entry.split_once("://").map_or(entry, |(_, a)| a);
        let addrs = match addr.to_socket_addrs() {
            Ok(a) => a.collect::<Vec<_>>(),
            Err(e) => {
                last = Some(anyhow::anyhow!("cannot resolve {addr}: {e}"));
                continue;
            }
        };
        for sock in addrs {
            match std::net::TcpStream::connect_timeout(&sock, timeout) {
                Ok(_) => return Ok(()),
                Err(e) => {
                    last = Some(anyhow::anyhow!(
                        "cannot connect to {addr} ({e}); is Kafka running?"
                    ))
                }
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker address in {brokers:?}")))
}

/// [`parse_bootstrap`] as a clap value parser: a bad `--kafka` (or `FLASHSALE_KAFKA`)
/// fails at once, exit 2, with the reason.
pub fn bootstrap_arg(list: &str) -> Result<String, String> {
    parse_bootstrap(list).map(|_| list.trim().to_string())
}

/// Milliseconds of a Kafka record timestamp (`CreateTime`), if it has one.
pub fn record_time_ms(ts: rdkafka::Timestamp) -> Option<u64> {
    ts.to_millis().and_then(|t| u64::try_from(t).ok())
}

/// The owner epoch an engine wrote on an output record (`events`, `replies`) as its
/// [`flashsale_proto::EPOCH_HEADER`]; `None` without one or when it is not a number.
pub fn record_epoch<M: rdkafka::Message>(m: &M) -> Option<u64> {
    use rdkafka::message::Headers as _;
    m.headers()?
        .iter()
        .find(|h| h.key == flashsale_proto::EPOCH_HEADER)
        .and_then(|h| h.value)
        .and_then(flashsale_proto::parse_epoch)
}

/// A wait for metadata and other admin answers.
pub const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// `(low, high)` offsets of a partition, retried (bounded) while the broker is still
/// electing its leader: right after a topic is created, `ListOffsets` can answer
/// `NotLeaderForPartition` for a moment.
pub fn watermarks<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    topic: &str,
    partition: i32,
) -> rdkafka::error::KafkaResult<(i64, i64)> {
    use rdkafka::consumer::Consumer;
    let deadline = std::time::Instant::now() + ADMIN_TIMEOUT;
    loop {
        match consumer.fetch_watermarks(topic, partition, ADMIN_TIMEOUT) {
            Ok(w) => return Ok(w),
            Err(e) if std::time::Instant::now() < deadline && is_transient(&e) => {
                tracing::debug!(topic, partition, error = %e, "offsets not available yet; retrying");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors a broker answers while a partition's leadership settles.
pub fn is_transient(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::error::RDKafkaErrorCode as C;
    matches!(
        e.rdkafka_error_code(),
        Some(
            C::NotLeaderForPartition
                | C::LeaderNotAvailable
                | C::UnknownTopicOrPartition
                | C::UnknownLeaderEpoch
                | C::NotCoordinator
                | C::RequestTimedOut
                | C::OperationTimedOut
        )
    )
}

/// Partition counts of the named topics (`None` for a topic that does not exist).
pub fn partition_counts(brokers: &str, names: &[&str]) -> anyhow::Result<Vec<Option<u32>>> {
    count_partitions(brokers, names, false)
}

/// Per named topic, how many partitions it has (`only_led`: how many have a leader);
/// `None` for a topic that does not exist.
pub fn count_partitions(
    brokers: &str,
    names: &[&str],
    only_led: bool,
) -> anyhow::Result<Vec<Option<u32>>> {
    let consumer: BaseConsumer<QuietContext> = base_config(brokers, "flashsale-metadata")
        .create_with_context(QuietContext::default())
        .context("cannot create a Kafka client")?;
    let md = consumer
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .with_context(|| format!("cannot read topic metadata from {brokers}; is Kafka running?"))?;
    Ok(names
        .iter()
        .map(|n| {
            md.topics()
                .iter()
                .find(|t| t.name() == *n && t.error().is_none())
                .map(|t| {
                    t.partitions()
                        .iter()
                        .filter(|p| !only_led || (p.error().is_none() && p.leader() >= 0))
                        .count() as u32
                })
        })
        .collect())
}

/// The partition counts of an existing deployment: (commands = events, replies).
/// Errors name the missing topic and the command that creates it.
pub fn check(brokers: &str, topics: &Topics) -> anyhow::Result<(u32, u32)> {
    let counts = partition_counts(
        brokers,
        &[&topics.commands, &topics.events, &topics.replies],
    )?;
    let names = [&topics.commands, &topics.events, &topics.replies];
    for (c, n) in counts.iter().zip(names) {
        anyhow::ensure!(
            c.is_some(),
            "topic {n} does not exist on {brokers}; create the topics first: flashsale topics create --kafka {brokers} --partitions N"
        );
    }
    let (commands, events, replies) = (
        counts[0].unwrap_or(0),
        counts[1].unwrap_or(0),
        counts[2].unwrap_or(0),
    );
    anyhow::ensure!(
        commands == events,
        "{} has {commands} partitions but {} has {events}: they must match",
        topics.commands,
        topics.events
    );
    Ok((commands, replies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists_that_can_work() {
        assert_eq!(
            parse_bootstrap("127.0.0.1:9092").unwrap(),
            vec![("127.0.0.1".to_string(), 9092)]
        );
        assert_eq!(
            parse_bootstrap(" kafka-1:9092 , PLAINTEXT://kafka_2.local:19092,[::1]:9093")
                .unwrap()
                .len(),
            3
        );
        // A name that does not resolve (now) is left to the retries.
        assert!(parse_bootstrap("no-such-host.invalid:9092").is_ok());
    }

    #[test]
    fn bootstrap_lists_that_never_can() {
        for (bad, phrase) in [
            ("", "empty"),
            ("   ", "empty"),
            ("notaport:x", "not a number"),
            ("127.0.0.1", "no port"),
            ("127.0.0.1:0", "not a number"),
            ("127.0.0.1:70000", "not a number"),
            ("a:1,,b:2", "empty entry"),
            ("a:1,", "empty entry"),
            ("ssl://a:1", "only plaintext"),
            ("::1:9092", "brackets"),
            ("bad host:9092", "is not a host"),
            (":9092", "is not a host"),
        ] {
            let e = parse_bootstrap(bad).expect_err(bad);
            assert!(e.contains(phrase), "{bad:?}: {e}");
        }
    }

    #[test]
    fn an_outage_is_announced_once_and_its_end_too() {
        let h = KafkaHealth::new("test", "127.0.0.1:1");
        assert!(h.is_reachable());
        h.on_stats("c", true);
        h.on_failure("c", "Connection refused", true);
        // Not announced before OUTAGE_AFTER: a reconnect is not an outage.
        assert!(h.is_reachable());
        {
            let mut s = h.lock();
            s.down_since = Some(Instant::now() - OUTAGE_AFTER);
            h.evaluate(&mut s);
        }
        assert!(!h.is_reachable());
        // Lines during the outage are absorbed (counted).
        assert!(h.absorb());
        h.on_failure("c", "Connection refused", false);
        assert_eq!(h.lock().left_out, 2);
        h.on_stats("c", true);
        assert!(h.is_reachable());
        assert_eq!(h.lock().left_out, 0);
        assert!(!h.absorb());
    }
}

//! Does the broker give the engines the group session they expect under KIP-848's
//! consumer protocol (`--group-protocol consumer`, the default)?
//!
//! Under that protocol the broker alone times a member's session, with its own
//! `group.consumer.session.timeout.ms` (Kafka's default 45 s, also its minimum). A
//! broker left at the defaults accepts the engines without a word and then takes 45 s
//! to move a killed engine's partitions: the failover the engines are built for (~0.6 s)
//! would silently become 45 s. So before joining, the engine reads the brokers' configs
//! (one DescribeConfigs) and:
//! - fails when a broker does not offer the consumer protocol (no
//!   `group.consumer.session.timeout.ms`: Kafka < 3.7; or `consumer` not in
//!   `group.coordinator.rebalance.protocols`): `--group-protocol classic` is the way;
//! - warns when a broker's session is longer than `--session-timeout-ms`;
//! - warns and goes on when the configs cannot be read (e.g. not authorized).
//!
//! A per-group override (`consumer.session.timeout.ms` on the group resource) is not
//! looked at: start.sh sets none.

use flashsale_runtime::kafka::{base_config, QuietContext};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use std::time::Duration;

/// How long the check may take before the engine goes on without it.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// What one broker says about the consumer protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerGroupConfig {
    pub broker: i32,
    /// `group.coordinator.rebalance.protocols` (None: the broker does not list it).
    pub protocols: Option<String>,
    /// `group.consumer.session.timeout.ms` (None: the broker does not know KIP-848).
    pub session_ms: Option<u64>,
}

/// The verdict on the brokers' configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ok,
    /// Join anyway, but say this.
    Warn(String),
    /// Do not join: the engine cannot work with this broker under this protocol.
    Fail(String),
}

/// The broker settings the engines need, as ops/kafka/start.sh writes them.
pub const BROKER_SETTINGS: &str = "group.consumer.min.session.timeout.ms=500, group.consumer.session.timeout.ms=600, group.consumer.min.heartbeat.interval.ms=100, group.consumer.heartbeat.interval.ms=150";

/// Pure: the verdict on the brokers' configs for an engine that accepts sessions up to
/// `want_session_ms`. A failure comes before a warning.
pub fn judge(brokers: &[BrokerGroupConfig], want_session_ms: u32) -> Verdict {
    let mut warn = None;
    for b in brokers {
        let id = b.broker;
        let Some(session) = b.session_ms else {
            return Verdict::Fail(format!(
                "broker {id} does not offer KIP-848's consumer group protocol (it has no group.consumer.session.timeout.ms; Kafka >= 4.0 is needed): run the engines with --group-protocol classic (FLASHSALE_GROUP_PROTOCOL=classic)"
            ));
        };
        if let Some(p) = &b.protocols {
            if !p.split(',').any(|x| x.trim() == "consumer") {
                return Verdict::Fail(format!(
                    "broker {id} does not allow the consumer group protocol (group.coordinator.rebalance.protocols={p}): add `consumer` there, or run the engines with --group-protocol classic (FLASHSALE_GROUP_PROTOCOL=classic)"
                ));
            }
        }
        if session > u64::from(want_session_ms) && warn.is_none() {
            warn = Some(format!(
                "broker {id} keeps a group session for {session} ms (group.consumer.session.timeout.ms), longer than --session-timeout-ms {want_session_ms}: a killed or cut-off engine's partitions move only after that long. Give the broker {BROKER_SETTINGS} (ops/kafka/start.sh does), or run the engines with --group-protocol classic (FLASHSALE_GROUP_PROTOCOL=classic) to keep the client's own session"
            ));
        }
    }
    warn.map_or(Verdict::Ok, Verdict::Warn)
}

/// I/O: reads every broker's group settings (blocking, at most ~[`CHECK_TIMEOUT`]).
pub fn read_brokers(brokers: &str) -> anyhow::Result<Vec<BrokerGroupConfig>> {
    let brokers = brokers.to_string();
    // A thread of its own with its own small runtime: callable from any context
    // (the engine starts inside a tokio blocking task, tests call it directly).
    std::thread::Builder::new()
        .name("group-check".into())
        .spawn(move || -> anyhow::Result<Vec<BrokerGroupConfig>> {
            let admin: AdminClient<QuietContext> = base_config(&brokers, "flashsale-engine")
                .create_with_context(QuietContext::default())?;
            let md = admin.inner().fetch_metadata(None, CHECK_TIMEOUT)?;
            let ids: Vec<i32> = md.brokers().iter().map(|b| b.id()).collect();
            let specs: Vec<ResourceSpecifier> = ids
                .iter()
                .map(|id| ResourceSpecifier::Broker(*id))
                .collect();
            let opts = AdminOptions::new().request_timeout(Some(CHECK_TIMEOUT));
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()?;
            let results = rt.block_on(async {
                tokio::time::timeout(CHECK_TIMEOUT, admin.describe_configs(&specs, &opts)).await
            });
            let results =
                results.map_err(|_| anyhow::anyhow!("no answer within {CHECK_TIMEOUT:?}"))??;
            let mut out = Vec::new();
            for (id, r) in ids.iter().zip(results) {
                let r = r.map_err(|e| anyhow::anyhow!("broker {id}: {e:?}"))?;
                let value = |name: &str| r.get(name).and_then(|e| e.value.clone());
                out.push(BrokerGroupConfig {
                    broker: *id,
                    protocols: value("group.coordinator.rebalance.protocols"),
                    session_ms: value("group.consumer.session.timeout.ms")
                        .and_then(|v| v.trim().parse().ok()),
                });
            }
            Ok(out)
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the group check panicked"))?
}

/// The check before joining: `Err` only on a [`Verdict::Fail`].
pub fn check(brokers: &str, want_session_ms: u32) -> anyhow::Result<()> {
    let configs = match read_brokers(brokers) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "engine: could not read the brokers' group.consumer.* settings ({e:#}); joining with the consumer group protocol anyway: its session is the broker's group.consumer.session.timeout.ms (Kafka's default 45 s), not --session-timeout-ms"
            );
            return Ok(());
        }
    };
    match judge(&configs, want_session_ms) {
        Verdict::Ok => {
            tracing::debug!(
                ?configs,
                "engine: the brokers' consumer-protocol sessions fit"
            );
            Ok(())
        }
        Verdict::Warn(w) => {
            tracing::warn!("engine: {w}");
            Ok(())
        }
        Verdict::Fail(f) => anyhow::bail!(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(protocols: Option<&str>, session_ms: Option<u64>) -> BrokerGroupConfig {
        BrokerGroupConfig {
            broker: 1,
            protocols: protocols.map(str::to_string),
            session_ms,
        }
    }

    #[test]
    fn start_sh_settings_pass() {
        let b = broker(Some("classic,consumer,streams"), Some(600));
        assert_eq!(judge(&[b], 600), Verdict::Ok);
    }

    #[test]
    fn a_default_broker_warns_with_the_fix() {
        let Verdict::Warn(w) = judge(&[broker(Some("classic,consumer"), Some(45_000))], 600) else {
            panic!("a 45 s session must warn");
        };
        assert!(w.contains("45000 ms"), "{w}");
        assert!(
            w.contains("group.consumer.min.session.timeout.ms=500"),
            "{w}"
        );
        assert!(w.contains("--group-protocol classic"), "{w}");
    }

    #[test]
    fn no_consumer_protocol_fails() {
        let old = judge(&[broker(None, None)], 600);
        assert!(matches!(&old, Verdict::Fail(f) if f.contains("--group-protocol classic")));
        let off = judge(&[broker(Some("classic"), Some(600))], 600);
        assert!(matches!(&off, Verdict::Fail(f) if f.contains("rebalance.protocols=classic")));
    }

    #[test]
    fn a_failure_wins_over_a_warning() {
        let brokers = [
            broker(Some("classic,consumer"), Some(45_000)),
            broker(Some("classic"), Some(600)),
        ];
        assert!(matches!(judge(&brokers, 600), Verdict::Fail(_)));
    }
}

//! `flashsale events tail`: prints the public topics' records for an operator, one JSON
//! line each (read_committed: only published transactions), until Ctrl-C, `--max` or
//! `--idle-exit`.

use super::Channel;
use flashsale_runtime::kafka::consumer_config;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use std::future::Future;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::cli::TailArgs;

/// Runs `flashsale events tail` until `shutdown`.
pub async fn tail_command(
    args: TailArgs,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let channels: Vec<Channel> = if args.topic.is_empty() {
        Channel::ALL.to_vec()
    } else {
        args.topic
            .iter()
            .map(|t| {
                Channel::ALL
                    .into_iter()
                    .find(|c| c.suffix() == t || c.topic(&args.kafka.topic_prefix) == *t)
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--topic {t}: not a public topic; use reservations, inventory-updates or orders"
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        tokio::task::spawn_blocking(move || tail(&args, &channels, &stop))
    };
    let mut worker = std::pin::pin!(worker);
    tokio::select! {
        r = &mut worker => r?,
        _ = shutdown => {
            stop.store(true, Ordering::Relaxed);
            worker.await?
        }
    }
}

fn tail(args: &TailArgs, channels: &[Channel], stop: &AtomicBool) -> anyhow::Result<()> {
    let consumer: BaseConsumer = consumer_config(&args.kafka.kafka, "flashsale-events-tail")
        .set("group.id", "flashsale-events-tail")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| anyhow::anyhow!("cannot create a Kafka consumer: {e}"))?;
    let mut tpl = TopicPartitionList::new();
    let start = if args.from_beginning {
        Offset::Beginning
    } else {
        Offset::End
    };
    for c in channels {
        let topic = c.topic(&args.kafka.topic_prefix);
        let md = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .map_err(|e| anyhow::anyhow!("Kafka at {}: {e}", args.kafka.kafka))?;
        let n = md
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        anyhow::ensure!(
            n > 0,
            "topic {topic} does not exist: create it with `flashsale topics create` (check --topic-prefix)"
        );
        for p in 0..n as i32 {
            tpl.add_partition_offset(&topic, p, start)?;
        }
    }
    consumer.assign(&tpl)?;
    let mut printed = 0u64;
    let mut lags: Vec<i64> = Vec::new();
    let mut last = Instant::now();
    let out = std::io::stdout();
    while !stop.load(Ordering::Relaxed) {
        if args.max > 0 && printed >= args.max {
            break;
        }
        if args.idle_exit > 0 && last.elapsed() >= Duration::from_secs(args.idle_exit) {
            break;
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let msg = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "read error; retrying");
                continue;
            }
        };
        last = Instant::now();
        let value = msg.payload().unwrap_or_default();
        if args.lag_summary && lags.len() < MAX_LAG_SAMPLES {
            let ev: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
            if let Some(t) = ev["time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            {
                lags.push(chrono::Utc::now().timestamp_millis() - t.timestamp_millis());
            }
        }
        let line = if args.json {
            String::from_utf8_lossy(value).into_owned()
        } else {
            let ev: serde_json::Value = serde_json::from_slice(value).unwrap_or_default();
            format!(
                "{} {}[{}]@{} {} {}",
                ev["time"].as_str().unwrap_or("-"),
                msg.topic(),
                msg.partition(),
                msg.offset(),
                ev["type"].as_str().unwrap_or("-"),
                ev["data"]
            )
        };
        let mut lock = out.lock();
        writeln!(lock, "{line}")?;
        lock.flush()?;
        printed += 1;
    }
    if args.lag_summary {
        eprintln!("{}", lag_line(&mut lags));
    }
    Ok(())
}

/// Most lag samples `--lag-summary` keeps (8 MB).
const MAX_LAG_SAMPLES: usize = 1_000_000;

/// `lag: n=… p50=…ms p99=…ms max=…ms` of the samples (sorted in place).
fn lag_line(lags: &mut [i64]) -> String {
    if lags.is_empty() {
        return "lag: no records".to_string();
    }
    lags.sort_unstable();
    let at = |q: f64| lags[((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1];
    format!(
        "lag: n={} p50={}ms p99={}ms max={}ms",
        lags.len(),
        at(0.50),
        at(0.99),
        lags[lags.len() - 1]
    )
}

#[cfg(test)]
mod lag_tests {
    #[test]
    fn lag_percentiles_are_nearest_rank() {
        let mut v: Vec<i64> = (1..=100).rev().collect();
        assert_eq!(
            super::lag_line(&mut v),
            "lag: n=100 p50=50ms p99=99ms max=100ms"
        );
        assert_eq!(super::lag_line(&mut []), "lag: no records");
    }
}

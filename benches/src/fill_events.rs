//! `flashsale-bench fill-events`: fills a deployment's `events` topic with many
//! synthetic but valid event records, fast, for the gateway start-up benchmark
//! (`scripts/gateway-startup.sh`: gateway start → `/ready` with 10,000,000 records).
//!
//! The records are what an engine writes, encoded with flashsale-proto's own encoder:
//! per events partition, one `SaleConfigured` (one product whose SKU hashes to that
//! partition), then holds (`Reservation` RESERVED + `Inventory`), each expired
//! `--live-holds` records later (`Reservation` EXPIRED + `Inventory`), and every 1,000
//! records a `ReservationsPruned` of the expired ones, as the engine's retention does.
//! So the read model a gateway builds from them stays bounded (about `--live-holds` live
//! holds and up to 1,000 ended ones per partition) however many records there are,
//! as in a real deployment, and a full replay costs what it costs on a real topic.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Args;
use flashsale_proto::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

use crate::error::BenchError;

/// Flags of `fill-events`.
#[derive(Debug, Args)]
pub struct FillEventsArgs {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "FLASHSALE_KAFKA")]
    pub kafka: String,
    /// Prefix of the topic names; records go to <prefix>events (which must exist, e.g.
    /// made by `flashsale topics create`).
    #[arg(long, default_value = "flashsale.")]
    pub topic_prefix: String,
    /// Event records to write, all partitions together.
    #[arg(long, default_value_t = 10_000_000)]
    pub records: u64,
    /// Holds alive at once per partition (each expires this many records later).
    #[arg(long, default_value_t = 1_000)]
    pub live_holds: u64,
}

/// Records between two `ReservationsPruned` of a partition.
const PRUNE_EVERY: u64 = 1_000;
/// Unlimited stock: the synthetic holds never run out.
const TOTAL: u64 = 1 << 40;

/// One partition's generator.
struct Part {
    partition: u32,
    sku: SkuId,
    next_offset: u64,
    live: VecDeque<ReservationId>,
    ended: Vec<ReservationId>,
    held: u64,
    next_hold: u64,
}

impl Part {
    fn view(&self, id: ReservationId, status: ReservationStatus, at: UnixMs) -> ReservationView {
        ReservationView {
            id,
            user: UserId::parse(&format!("fill-u{}", id.ulid % 1_000_000)).expect("valid user id"),
            sku: self.sku.clone(),
            quantity: 1,
            status,
            created_at: at,
            expires_at: at + 120_000,
        }
    }

    /// The next record of this partition.
    fn next(&mut self, sale: &SaleMeta, live_holds: u64, now: UnixMs) -> EventRecord {
        let offset = self.next_offset;
        self.next_offset += 1;
        let events = if offset == 0 {
            vec![Event::SaleConfigured(SaleConfig {
                sale: sale.clone(),
                products: vec![ProductSpec {
                    sku: self.sku.clone(),
                    name: format!("Fill product {}", self.partition),
                    description: "synthetic".into(),
                    category: "Bench".into(),
                    base_price: Cents(10_000),
                    flash_sale_price: Cents(5_000),
                    total_inventory: TOTAL,
                    per_user_limit: 1,
                    image_url: String::new(),
                }],
            })]
        } else if offset.is_multiple_of(PRUNE_EVERY) && !self.ended.is_empty() {
            vec![Event::ReservationsPruned {
                reservations: std::mem::take(&mut self.ended),
            }]
        } else if self.live.len() as u64 >= live_holds.max(1) {
            let id = self.live.pop_front().expect("not empty");
            self.ended.push(id);
            self.held -= 1;
            vec![
                Event::Reservation(self.view(id, ReservationStatus::Expired, now)),
                self.inventory(),
            ]
        } else {
            let id = ReservationId {
                partition: self.partition as u16,
                ulid: (u128::from(now) << 64) | u128::from(self.next_hold),
            };
            self.next_hold += 1;
            self.live.push_back(id);
            self.held += 1;
            vec![
                Event::Reservation(self.view(id, ReservationStatus::Reserved, now)),
                self.inventory(),
            ]
        };
        EventRecord {
            partition: self.partition,
            offset,
            log_time: now,
            events,
        }
    }

    fn inventory(&self) -> Event {
        Event::Inventory {
            sku: self.sku.clone(),
            total: TOTAL,
            held: self.held,
            sold: 0,
        }
    }
}

/// A SKU whose key hashes to `partition` (the engine's partitioner).
fn sku_for(partition: u32, partitions: u32) -> SkuId {
    (0u64..)
        .map(|n| format!("FILL-{partition}-{n}"))
        .find(|s| partition_for_key(s.as_bytes(), partitions) == partition)
        .and_then(|s| SkuId::parse(&s).ok())
        .expect("some key hashes to every partition")
}

/// Writes the records; prints progress on stderr and a summary on stdout.
pub fn fill_events(args: &FillEventsArgs) -> Result<(), BenchError> {
    let topic = format!("{}events", args.topic_prefix);
    let fail = |what: &str, e: &dyn std::fmt::Display| BenchError::Report(format!("{what}: {e}"));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .create()
        .map_err(|e| fail("Kafka client", &e))?;
    let md = consumer
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .map_err(|e| fail(&format!("metadata of {topic} at {}", args.kafka), &e))?;
    let partitions = md
        .topics()
        .first()
        .map(|t| t.partitions().len() as u32)
        .filter(|n| *n > 0)
        .ok_or_else(|| {
            BenchError::Report(format!(
                "topic {topic} does not exist on {}; create it first: flashsale topics create --kafka {} --topic-prefix {}",
                args.kafka, args.kafka, args.topic_prefix
            ))
        })?;
    for p in 0..partitions as i32 {
        // Topics made a moment ago may have no leader yet: ask again, for up to 30 s.
        let mut tries = 0;
        let high = loop {
            match consumer.fetch_watermarks(&topic, p, Duration::from_secs(10)) {
                Ok((_, high)) => break high,
                Err(_) if tries < 60 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(fail(&format!("offsets of {topic} partition {p}"), &e)),
            }
        };
        if high > 0 {
            return Err(BenchError::Report(format!(
                "{topic} partition {p} already holds {high} records; fill fresh topics (another --topic-prefix)"
            )));
        }
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set("linger.ms", "50")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        .set("queue.buffering.max.kbytes", "1048576")
        .set("message.timeout.ms", "300000")
        .create()
        .map_err(|e| fail("Kafka producer", &e))?;
    let skus: Vec<SkuId> = (0..partitions).map(|p| sku_for(p, partitions)).collect();
    let now = u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0),
    )
    .unwrap_or(0);
    let sale = SaleMeta {
        sale_id: SaleId((u128::from(now) << 80) | 1),
        name: "Fill sale".into(),
        starts_at: now,
        ends_at: now + 86_400_000,
        reservation_ttl_s: 120,
        all_skus: skus.clone(),
    };
    let mut parts: Vec<Part> = skus
        .into_iter()
        .enumerate()
        .map(|(p, sku)| Part {
            partition: p as u32,
            sku,
            next_offset: 0,
            live: VecDeque::new(),
            ended: Vec::new(),
            held: 0,
            next_hold: 0,
        })
        .collect();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let mut bytes = 0u64;
    for i in 0..args.records {
        let part = &mut parts[(i % u64::from(partitions)) as usize];
        // A millisecond of log time per 100 records: holds expire inside their TTL.
        let rec = part.next(&sale, args.live_holds, now + i / 100);
        let payload = encode(&rec);
        bytes += payload.len() as u64;
        let key = part.sku.as_str().as_bytes().to_vec();
        let mut record = BaseRecord::to(&topic)
            .partition(part.partition as i32)
            .key(&key)
            .payload(&payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    if !matches!(
                        e,
                        rdkafka::error::KafkaError::MessageProduction(
                            rdkafka::types::RDKafkaErrorCode::QueueFull
                        )
                    ) {
                        return Err(fail("produce", &e));
                    }
                    record = r;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
        if i.is_multiple_of(10_000) {
            producer.poll(Duration::ZERO);
            if last_report.elapsed() >= Duration::from_secs(2) {
                last_report = Instant::now();
                eprintln!(
                    "fill-events: {i} of {} records ({:.0} records/s)",
                    args.records,
                    i as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
    }
    producer
        .flush(Duration::from_secs(300))
        .map_err(|e| fail("flush", &e))?;
    println!(
        "fill-events: {} records ({} bytes before compression) in {topic} ({partitions} partitions) in {:.1} s",
        args.records,
        bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's records are what an engine writes: they decode, offsets
    /// count up per partition, and the live holds stay bounded.
    #[test]
    fn records_decode_and_stay_bounded() {
        let sku = sku_for(1, 4);
        assert_eq!(partition_for_key(sku.as_str().as_bytes(), 4), 1);
        let sale = SaleMeta {
            sale_id: SaleId(1),
            name: "s".into(),
            starts_at: 0,
            ends_at: 1,
            reservation_ttl_s: 120,
            all_skus: vec![sku.clone()],
        };
        let mut p = Part {
            partition: 1,
            sku,
            next_offset: 0,
            live: VecDeque::new(),
            ended: Vec::new(),
            held: 0,
            next_hold: 0,
        };
        let mut pruned = 0;
        for i in 0..5_000u64 {
            let rec = p.next(&sale, 100, 1_000 + i);
            assert_eq!(rec.offset, i);
            let back: EventRecord = decode(&encode(&rec)).unwrap();
            assert_eq!(back, rec);
            for e in &rec.events {
                if let Event::ReservationsPruned { reservations } = e {
                    pruned += reservations.len();
                }
            }
            assert!(p.live.len() <= 100);
            assert!(p.ended.len() as u64 <= PRUNE_EVERY);
        }
        assert!(pruned > 1_000, "ended holds are pruned ({pruned})");
    }
}

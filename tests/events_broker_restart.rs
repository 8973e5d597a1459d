//! `flashsale events publish` through a broker restart (issue 33; a module of the
//! kafka_partitioner test binary, to keep the number of linked test binaries down): a Kafka deployment on
//! a broker of this test's own (`ops/kafka/start.sh` on free ports, in a temporary
//! dir; never the shared broker), the broker stopped (`ops/kafka/stop.sh --keep`) while
//! holds keep coming (each retried with its Idempotency-Key while it gets 503) and
//! started again on its data. Afterwards, read with `isolation.level=read_committed`:
//! every acknowledged hold exactly once as `created`, every checkout once in `orders`,
//! the cancel and the expiry once, every record valid against its schema, each SKU's
//! last inventory update equal to the API's count, and `flashsale audit` of the same
//! log clean and counting as many reservations as there are `created` events.
//!
//! Skips, saying why, when it cannot start its broker (no Java or Kafka jars: `make
//! services-up` fetches them). One broker JVM (384 MB heap) for ~1-2 minutes; it is
//! stopped and its dir deleted at the end, also when the test fails half-way.

use flashsale_tests::kafka::{self, Services};
use flashsale_tests::{create_sale, free_port, unique_sku};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::public_events::{
    audit_reservations, cancel_and_expire, holds_and_checkouts, inventory_matches_the_api,
    read_public_events, start_with_publisher, Acked, Expected, WithPublisher,
};

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../ops/kafka/{name}"))
}

/// This test's own single broker: started in `new`, stopped (and its dir deleted) on
/// drop.
struct OwnBroker {
    env: Vec<(String, String)>,
    addr: String,
}

impl OwnBroker {
    /// Starts a broker on free ports in `dir`; `Err` says why it could not.
    fn start(dir: &Path) -> Result<OwnBroker, String> {
        let env = vec![
            ("FLASHSALE_KAFKA_PORT".into(), free_port().to_string()),
            (
                "FLASHSALE_KAFKA_CONTROLLER_PORT".into(),
                free_port().to_string(),
            ),
            (
                "FLASHSALE_KAFKA_DIR".into(),
                dir.join("kafka").display().to_string(),
            ),
            // Never the shared .services.env: this broker is the test's own.
            (
                "FLASHSALE_SERVICES_ENV".into(),
                dir.join("services.env").display().to_string(),
            ),
            ("FLASHSALE_KAFKA_HEAP".into(), "384m".into()),
            ("FLASHSALE_KAFKA_PARTITIONS".into(), "4".into()),
        ];
        let mut broker = OwnBroker {
            env,
            addr: String::new(),
        };
        let out = broker.run("start.sh", &[])?;
        broker.addr = out.lines().last().unwrap_or("").trim().to_string();
        if broker.addr.is_empty() {
            return Err("start.sh printed no address".into());
        }
        Ok(broker)
    }

    fn run(&self, name: &str, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new(script(name))
            .args(args)
            .env_remove("FLASHSALE_KAFKA_BROKERS")
            .env_remove("FLASHSALE_KAFKA_BROKER_ID")
            .env_remove("FLASHSALE_KAFKA_EXTRA_PROPERTIES")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .map_err(|e| format!("cannot run {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{name} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn stop_keeping_data(&self) {
        self.run("stop.sh", &["--keep"])
            .expect("stop the test's broker");
    }

    fn start_again(&self) {
        self.run("start.sh", &[])
            .expect("start the test's broker again");
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        // Stops it and deletes its dir (also after a failed start: stop.sh exits 0 when
        // nothing runs).
        if let Err(e) = self.run("stop.sh", &[]) {
            eprintln!("stopping the test's broker: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_events_stay_exactly_once_through_a_broker_restart() {
    let _alone = crate::public_events::alone().await;
    let dir = tempfile::tempdir().unwrap();
    let broker = match OwnBroker::start(dir.path()) {
        Ok(b) => b,
        Err(why) if kafka::services_required() => panic!(
            "public events through a broker restart: FLASHSALE_REQUIRE_SERVICES=1 but this test cannot start a broker of its own: {why} (`make services-up` fetches Java's Kafka jars)"
        ),
        Err(why) => {
            eprintln!(
                "public events through a broker restart: cannot start a broker of this test's own ({why}); skipping (`make services-up` fetches Java's Kafka jars)"
            );
            return;
        }
    };
    let svc = Services {
        kafka: broker.addr.clone(),
        postgres: None,
    };
    let WithPublisher {
        running,
        base,
        prefix,
        http,
        publisher,
        ..
    } = start_with_publisher(&svc, dir.path()).await;

    let skus: Vec<String> = (0..3).map(|_| unique_sku("RPUB")).collect();
    let short = unique_sku("RPUBTTL");
    create_sale(
        &http,
        &base,
        &skus.iter().map(|s| (s.as_str(), 40, 1)).collect::<Vec<_>>(),
        600,
        -1,
    )
    .await;
    let mut acked = Acked::default();
    holds_and_checkouts(&http, &base, &skus, 0..30, &mut acked).await;

    // Holds go on while the broker stops and starts again (503s retried with the same
    // key: each is one hold however often it is sent).
    let during = {
        let (http, base, skus) = (http.clone(), base.clone(), skus.clone());
        tokio::spawn(async move {
            let mut acked = Acked::default();
            holds_and_checkouts(&http, &base, &skus, 30..60, &mut acked).await;
            acked
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.stop_keeping_data();
    tokio::time::sleep(Duration::from_secs(3)).await;
    broker.start_again();
    let d = during.await.unwrap();
    acked.holds.extend(d.holds);
    acked.orders.extend(d.orders);
    acked.confirmed.extend(d.confirmed);
    holds_and_checkouts(&http, &base, &skus, 60..90, &mut acked).await;
    create_sale(&http, &base, &[(short.as_str(), 1, 1)], 2, -1).await;
    let (cancelled, expiring) = cancel_and_expire(&http, &base, &short, &mut acked).await;

    let available = read_public_events(
        &svc.kafka,
        &prefix,
        &Expected {
            holds: &acked.holds,
            orders: &acked.orders,
            confirmed: &acked.confirmed,
            cancelled: &cancelled,
            expiring: &expiring,
        },
        &dir.path().display().to_string(),
    );
    inventory_matches_the_api(
        &http,
        &base,
        skus.iter().cloned().chain([short]),
        &available,
    )
    .await;
    drop(publisher);
    running.stop().await.unwrap();

    // The operators' audit of the same log: clean, and the same reservations.
    let reservations = audit_reservations(&["--kafka", &svc.kafka, "--topic-prefix", &prefix]);
    assert_eq!(reservations, acked.holds.len() as u64, "audit of the log");
    drop(broker);
}

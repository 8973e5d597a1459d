//! Kafka bootstrap mistakes (issue 16), from the built `flashsale` binary: exit status
//! and a key phrase.
//!
//! - What can never work however long one retries — an empty list, a missing or
//!   non-numeric port, a stray comma, an unbracketed IPv6 address, another protocol —
//!   fails at once, exit 2, with the reason, on every subcommand that takes `--kafka`
//!   (and from `FLASHSALE_KAFKA` too).
//! - What a retry can cure — nothing listening on the port yet, a host name that does
//!   not resolve (yet: DNS can be transient, e.g. a container not started) — makes the
//!   processes wait: they keep running and say what they wait for, naming host:port,
//!   in a few lines, not one per attempt.
//!
//! No broker needed; bounded waits; no timing assertions.

use flashsale_tests::*;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn base_command(args: &[&str]) -> Command {
    let mut c = Command::new(flashsale_bin());
    c.args(args)
        .env_remove("FLASHSALE_KAFKA")
        .env_remove("FLASHSALE_POSTGRES")
        .env_remove("FLASHSALE_DATA_DIR")
        .env_remove("FLASHSALE_LOG_FORMAT")
        .env_remove("FLASHSALE_LOG");
    c
}

fn flashsale(args: &[&str]) -> Output {
    base_command(args).output().expect("run flashsale")
}

fn assert_fails(o: &Output, code: i32, phrases: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "exit status; stderr: {err}");
    for p in phrases {
        assert!(err.contains(p), "stderr lacks {p:?}: {err}");
    }
}

#[test]
fn a_malformed_bootstrap_list_fails_at_once_on_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let pg = "postgres://postgres@127.0.0.1:1/flashsale";
    let listen = format!("127.0.0.1:{}", free_port());
    for (bad, phrase) in [
        ("notaport:x", "the port \"x\" is not a number 1-65535"),
        ("", "the Kafka bootstrap list is empty"),
        ("127.0.0.1", "has no port"),
        ("127.0.0.1:9092,", "has an empty entry"),
        ("::1:9092", "write IPv6 addresses in brackets"),
        (
            "ssl://127.0.0.1:9093",
            "only plaintext listeners are supported",
        ),
    ] {
        for args in [
            vec!["engine", "--kafka", bad, "--data-dir", data],
            vec!["gateway", "--kafka", bad, "--listen", &listen],
            vec!["projector", "--kafka", bad, "--postgres", pg],
            vec![
                "serve",
                "--kafka",
                bad,
                "--data-dir",
                data,
                "--listen",
                &listen,
            ],
            vec!["topics", "create", "--kafka", bad],
            vec!["audit", "--kafka", bad],
        ] {
            let o = flashsale(&args);
            assert_fails(&o, 2, &["--kafka", phrase]);
        }
    }
}

#[test]
fn a_malformed_bootstrap_list_from_the_environment_fails_too() {
    let o = base_command(&["engine"])
        .env("FLASHSALE_KAFKA", "kafka-1:port")
        .output()
        .expect("run flashsale");
    assert_fails(&o, 2, &["kafka-1:port", "is not a number"]);
}

/// Runs `flashsale ARGS` (stderr to a file) until its stderr holds every phrase (at
/// most 60 s), then checks it still runs and kills it. Returns the stderr.
fn waits_and_says(args: &[&str], phrases: &[&str], dir: &Path) -> String {
    let log = dir.join(format!("{}.log", args[0]));
    let mut child = base_command(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("spawn flashsale");
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if phrases.iter().all(|p| text.contains(p)) {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("flashsale {args:?} exited ({status}) instead of waiting: {text}");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flashsale {args:?}: {phrases:?} not said within 60 s: {text}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(running, "flashsale {args:?} must keep waiting: {text}");
    text
}

#[test]
fn nothing_listening_yet_makes_engine_and_gateway_wait_naming_host_and_port() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let kafka = format!("127.0.0.1:{}", free_port());
    let text = waits_and_says(
        &[
            "engine",
            "--kafka",
            &kafka,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[
            &format!("waiting for Kafka at {kafka}"),
            "Connection refused",
        ],
        dir.path(),
    );
    // A few lines, not one per attempt: the waiting line, then quiet.
    let waiting = text.matches("waiting for Kafka").count();
    assert_eq!(waiting, 1, "{text}");
    let listen = format!("127.0.0.1:{}", free_port());
    waits_and_says(
        &["gateway", "--kafka", &kafka, "--listen", &listen],
        &[
            &format!("waiting for Kafka at {kafka}"),
            "Connection refused",
        ],
        dir.path(),
    );
}

#[test]
fn a_host_name_that_does_not_resolve_is_waited_for_and_named() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // `.invalid` never resolves (RFC 6761); a real deployment's name may appear later.
    let kafka = "kafka-not-there-yet.invalid:9092";
    waits_and_says(
        &[
            "engine",
            "--kafka",
            kafka,
            "--data-dir",
            data.to_str().unwrap(),
        ],
        &[&format!("waiting for Kafka at {kafka}"), "cannot resolve"],
        dir.path(),
    );
    let listen = format!("127.0.0.1:{}", free_port());
    waits_and_says(
        &["gateway", "--kafka", kafka, "--listen", &listen],
        &[&format!("waiting for Kafka at {kafka}"), "cannot resolve"],
        dir.path(),
    );
}

/// Runs `flashsale ARGS` to its end (at most 60 s, then killed: a failure).
fn run_bounded(args: &[String], log: &Path) -> (Option<i32>, String) {
    let mut child = base_command(&args.iter().map(String::as_str).collect::<Vec<_>>())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("spawn flashsale");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("flashsale {args:?} still runs after 60 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    (status, std::fs::read_to_string(log).unwrap_or_default())
}

/// Gateways scale past the replies partitions of `topics create` without new topics:
/// a gateway id past the count is refused, saying to grow the topic; `topics grow`
/// adds the partition while the engine runs; the new gateway then starts and its
/// buyers get their holds (the running engine learns the new count by itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_grow_adds_a_gateway_to_a_running_deployment() {
    use flashsale_tests::kafka::{create_topics, services_or_skip, unique_id, Proc};
    let Some(svc) = services_or_skip("topics grow") else {
        return;
    };
    let id = unique_id();
    let prefix = format!("flashsale-test-{id}.");
    create_topics(&svc.kafka, &prefix, 2, 1).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let common = |cmd: &str| -> Vec<String> {
        [cmd, "--kafka", &svc.kafka, "--topic-prefix", &prefix]
            .map(String::from)
            .to_vec()
    };
    let gateway = |gid: u32, port: u16| -> Vec<String> {
        let mut g = common("gateway");
        g.extend(
            [
                "--gateway-id",
                &gid.to_string(),
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-token",
                TOKEN,
                "--rate-limit-per-user",
                "0",
            ]
            .map(String::from),
        );
        g
    };
    let mut engine = common("engine");
    engine.extend(
        [
            "--engine-group",
            &format!("flashsale-test-{id}-engine"),
            "--data-dir",
            dir.path().join("engine").to_str().unwrap(),
        ]
        .map(String::from),
    );
    let mut engine = Proc::spawn("engine", &engine, dir.path()).unwrap();
    let (p0, p1) = (free_port(), free_port());
    let _g0 = Proc::spawn("gateway-0", &gateway(0, p0), dir.path()).unwrap();
    let client = client();
    let (b0, b1) = (
        format!("http://127.0.0.1:{p0}"),
        format!("http://127.0.0.1:{p1}"),
    );
    wait_ready(&client, &b0).await;
    let sku = unique_sku("GROW");
    create_sale(&client, &b0, &[(&sku, 10, 1)], 600, -1).await;
    let hold = |base: String, user: &'static str| {
        let (client, sku) = (client.clone(), sku.clone());
        async move {
            let body = serde_json::json!({"userId": user, "skuId": sku, "quantity": 1});
            eventually(&format!("a hold for {user} through {base}"), 60, || {
                let (client, base, body) = (client.clone(), base.clone(), body.clone());
                async move {
                    let a = call(
                        &client,
                        &base,
                        reqwest::Method::POST,
                        "/api/v1/reservations",
                        Some(body),
                        &[],
                    )
                    .await;
                    (a.status == reqwest::StatusCode::CREATED).then_some(a.body)
                }
            })
            .await
        }
    };
    hold(b0.clone(), "grow-u0").await;

    // Gateway id 1 has no replies partition yet: refused at once, saying what to do.
    let (code, err) = run_bounded(&gateway(1, p1), &dir.path().join("g1-refused.log"));
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--gateway-id 1 has no partition") && err.contains("flashsale topics grow"),
        "{err}"
    );

    // Grow replies to 2 while the engine and gateway 0 run; again: unchanged.
    let grow = |n: &str| {
        let mut a = common("topics");
        a.insert(1, "grow".into());
        a.extend(["--replies-partitions", n, "--json"].map(String::from));
        base_command(&a.iter().map(String::as_str).collect::<Vec<_>>())
            .output()
            .expect("run topics grow")
    };
    let o = grow("2");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(
        (
            v["partitionsBefore"].as_u64(),
            v["partitions"].as_u64(),
            v["status"].as_str()
        ),
        (Some(1), Some(2), Some("grown")),
        "{v}"
    );
    let v: serde_json::Value = serde_json::from_slice(&grow("2").stdout).expect("JSON");
    assert_eq!(v["status"], "unchanged", "{v}");
    assert_fails(&grow("1"), 2, &["cannot take partitions away"]);

    // The new gateway starts and its buyers get holds from the engine that was running.
    let _g1 = Proc::spawn("gateway-1", &gateway(1, p1), dir.path()).unwrap();
    wait_ready(&client, &b1).await;
    let held = hold(b1.clone(), "grow-u1").await;
    assert!(held["reservationId"].is_string(), "{held}");
    assert!(engine.is_running(), "the engine kept running");
    let elog = std::fs::read_to_string(dir.path().join("engine.log")).unwrap_or_default();
    assert!(
        elog.contains("the replies topic has more partitions now"),
        "{elog}"
    );
}

/// Issue 35, item 3: a Kafka-mode node whose port is taken stops at once, naming the
/// port, before it waits for the broker, creates topics or starts an engine (none of
/// which would be stopped again without noise). Nothing listens on the broker's port
/// here: a node that waited for Kafka first would still be waiting at the deadline.
#[test]
fn a_kafka_node_whose_port_is_taken_stops_at_once_before_waiting_for_kafka() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let kafka = format!("127.0.0.1:{}", free_port());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for args in [
        vec!["gateway", "--kafka", &kafka, "--listen", &listen],
        vec![
            "serve",
            "--kafka",
            &kafka,
            "--data-dir",
            data,
            "--listen",
            &listen,
        ],
    ] {
        let mut child = base_command(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flashsale");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut err = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
        let status = status.unwrap_or_else(|| {
            panic!("flashsale {args:?} kept running with its port taken: {err}")
        });
        assert!(!status.success(), "{args:?}: {status}; {err}");
        assert!(
            err.contains("cannot listen on") && err.contains(&listen),
            "{args:?} names the port: {err}"
        );
        assert!(
            !err.contains("waiting for Kafka") && !err.contains("ERROR"),
            "{args:?} stops before waiting for Kafka, with no ERROR line: {err}"
        );
    }
    drop(taken);
}

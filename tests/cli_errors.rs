//! What a newcomer or an operator reads when something is wrong: each error message of
//! issue 16 from the built `flashsale` binary, its exit status and a key phrase.
//!
//! Postgres: a bad or empty URL, a missing database and an unknown role fail at once
//! (exit 2) with Postgres's own reason and the host, port and database named; a
//! Postgres not reachable fails `migrate` at once and makes the servers wait, saying so
//! once. The cases that need a real Postgres (missing database, unknown role) skip
//! without one unless `FLASHSALE_REQUIRE_SERVICES=1`.

use flashsale_tests::kafka::{postgres_url, services_required};
use flashsale_tests::*;
use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

/// Runs `flashsale ARGS` with none of the services' variables set.
fn flashsale(args: &[&str]) -> Output {
    base_command(args).output().expect("run flashsale")
}

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

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts exit status `code` and every phrase in stderr.
fn assert_fails(o: &Output, code: i32, phrases: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit status; stderr: {err}");
    for p in phrases {
        assert!(err.contains(p), "stderr lacks {p:?}: {err}");
    }
}

/// host:port of the test Postgres, or `None` (skip) when none is configured.
fn real_postgres(what: &str) -> Option<String> {
    match postgres_url() {
        Some(url) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
            let rest = rest.split_once('@').map_or(rest, |(_, r)| r);
            let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
            Some(hostport.to_string())
        }
        None if services_required() => {
            panic!("{what}: FLASHSALE_REQUIRE_SERVICES=1 but no FLASHSALE_POSTGRES: run `make services-up`")
        }
        None => {
            eprintln!("{what}: no Postgres configured (make services-up); skipping");
            None
        }
    }
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    free_port()
}

#[test]
fn migrate_with_an_empty_url_says_it_is_empty() {
    let o = flashsale(&["migrate", "--postgres", ""]);
    assert_fails(
        &o,
        2,
        &[
            "Postgres URL is empty",
            "postgres://USER@HOST:PORT/DATABASE",
        ],
    );
}

#[test]
fn migrate_with_a_bad_url_says_what_a_url_looks_like() {
    let o = flashsale(&["migrate", "--postgres", "postgres:///flashsale"]);
    assert_fails(
        &o,
        2,
        &["names no host", "postgres://USER@HOST:PORT/DATABASE"],
    );
    let o = flashsale(&["migrate", "--postgres", "notaurl"]);
    assert_fails(&o, 2, &["invalid Postgres URL"]);
}

#[test]
fn migrate_with_postgres_down_names_host_port_and_connection_refused() {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/flashsale");
    let o = flashsale(&["migrate", "--postgres", &url]);
    assert_fails(
        &o,
        2,
        &[
            &format!("127.0.0.1:{port}"),
            "database flashsale",
            "connection refused",
            "is Postgres running",
        ],
    );
}

#[test]
fn migrate_names_a_database_that_does_not_exist() {
    let Some(hostport) = real_postgres("missing database") else {
        return;
    };
    let url = format!("postgres://postgres@{hostport}/nosuchdb");
    let o = flashsale(&["migrate", "--postgres", &url]);
    assert_fails(
        &o,
        2,
        &[
            &hostport,
            "database \"nosuchdb\" does not exist",
            "3D000",
            "a retry cannot fix this",
        ],
    );
}

#[test]
fn servers_fail_at_once_on_a_missing_database_or_role() {
    let Some(hostport) = real_postgres("missing database (servers)") else {
        return;
    };
    let missing_db = format!("postgres://postgres@{hostport}/nosuchdb");
    let missing_role = format!("postgres://nosuchrole@{hostport}/flashsale");
    // Kafka is never reached: Postgres is checked first, and the error ends the process.
    let kafka = format!("127.0.0.1:{}", closed_port());
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    for (args, phrase) in [
        (
            vec!["projector", "--kafka", &kafka, "--postgres", &missing_db],
            "database \"nosuchdb\" does not exist",
        ),
        (
            vec![
                "engine",
                "--kafka",
                &kafka,
                "--postgres",
                &missing_role,
                "--data-dir",
                data,
            ],
            "role \"nosuchrole\" does not exist",
        ),
        (
            vec![
                "gateway",
                "--kafka",
                &kafka,
                "--postgres",
                &missing_db,
                "--listen",
                &listen,
            ],
            "database \"nosuchdb\" does not exist",
        ),
        (
            vec![
                "serve",
                "--kafka",
                &kafka,
                "--postgres",
                &missing_db,
                "--data-dir",
                data,
                "--listen",
                &listen,
            ],
            "database \"nosuchdb\" does not exist",
        ),
    ] {
        let o = flashsale(&args);
        assert_fails(&o, 2, &[phrase, &hostport]);
    }
}

#[test]
fn a_server_waits_for_postgres_and_says_so_once() {
    let port = closed_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/flashsale");
    let kafka = format!("127.0.0.1:{}", closed_port());
    let mut child = base_command(&["projector", "--kafka", &kafka, "--postgres", &url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn flashsale projector");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let mut found = false;
    // Bounded: the waiting line is among the first few.
    for _ in 0..5 {
        let Some(Ok(line)) = lines.next() else { break };
        let hit = line.contains(&format!(
            "waiting for Postgres at 127.0.0.1:{port} (connection refused)"
        ));
        seen.push(line);
        if hit {
            found = true;
            break;
        }
    }
    let still_running = child.try_wait().expect("try_wait").is_none();
    let _ = child.kill();
    let _ = child.wait();
    assert!(found, "no waiting line in {seen:#?}");
    assert!(still_running, "the projector must keep waiting, not exit");
}

/// A data directory with one sale on it, written by a real `flashsale serve` child
/// (stopped again); returns the directory and the SKU's partition.
async fn data_dir_with_a_sale() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), free_port(), &[])
        .await
        .expect("start flashsale serve");
    let sku = "SKU-CLI-1";
    create_sale(&client(), &server.base, &[(sku, 5, 1)], 120, -1).await;
    server.kill9();
    (dir, sku.to_string())
}

fn partition_of(sku: &str, partitions: &str) -> u64 {
    let o = flashsale(&["partition-of", sku, "--partitions", partitions, "--json"]);
    assert!(o.status.success(), "partition-of: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    v["partition"].as_u64().expect("partition")
}

#[test]
fn partition_of_names_the_partition_the_gateway_uses() {
    for sku in ["SKU-1", "SKU-2", "iphone-15"] {
        let p = partition_of(sku, "8");
        assert_eq!(
            p,
            u64::from(flashsale_proto::partition_for_key(sku.as_bytes(), 8))
        );
    }
    let o = flashsale(&["partition-of", "SKU-1", "--partitions", "8"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("flashsale replay --partition"), "{text}");
    let o = flashsale(&["partition-of", "SKU-1", "--partitions", "0"]);
    assert_fails(&o, 2, &["--partitions must be at least 1"]);
}

#[tokio::test]
async fn explicit_data_dir_beats_kafka_in_the_environment_and_replay_says_what_it_cannot_do() {
    let (dir, sku) = data_dir_with_a_sale().await;
    let data = dir.path().to_str().unwrap();
    let p = partition_of(&sku, "4").to_string();
    // FLASHSALE_KAFKA as `.services.env` exports it: --data-dir still means this directory.
    let o = base_command(&["audit", "--data-dir", data])
        .env("FLASHSALE_KAFKA", "127.0.0.1:1")
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "audit: {err}");
    assert!(
        err.lines()
            .next()
            .unwrap_or("")
            .contains("embedded mode: --data-dir given"),
        "first line must say the mode and why: {err}"
    );
    // Past the end: said, exit 2.
    let o = flashsale(&[
        "replay",
        "--data-dir",
        data,
        "--partition",
        &p,
        "--to-offset",
        "999",
        "--quiet",
    ]);
    assert_fails(
        &o,
        2,
        &["--to-offset 999 is past the end", "last offset is"],
    );
    // Before the first record.
    let o = flashsale(&[
        "replay",
        "--data-dir",
        data,
        "--partition",
        &p,
        "--to-time",
        "2000-01-01T00:00:00Z",
        "--quiet",
    ]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "replay --to-time: {}", stderr(&o));
    assert!(
        out.contains("no record at or before 2000-01-01T00:00:00Z"),
        "{out}"
    );
    assert!(!out.contains("null"), "{out}");
    // Plurals: one record, one product.
    let o = flashsale(&["replay", "--data-dir", data, "--partition", &p, "--quiet"]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        !out.contains(" 1 records") && out.contains(" record"),
        "{out}"
    );
}

#[test]
fn serve_embedded_beats_the_environment_and_logs_have_no_colour_in_a_pipe() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut child = base_command(&[
        "serve",
        "--embedded",
        "--demo",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &listen,
    ])
    .env("FLASHSALE_KAFKA", "127.0.0.1:1")
    .env(
        "FLASHSALE_POSTGRES",
        "postgres://postgres@127.0.0.1:1/flashsale",
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn serve");
    let first = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .next()
        .and_then(Result::ok)
        .unwrap_or_default();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.contains("embedded mode: --embedded given"),
        "first line: {first:?}"
    );
    assert!(!first.contains('\x1b'), "ANSI codes in a pipe: {first:?}");
}

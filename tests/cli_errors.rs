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

/// Reads `child`'s stderr lines (on a thread) until `done` says so or `limit` passes;
/// returns the lines and whether `done` was reached. Kills the child after.
fn stderr_until(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    mut done: impl FnMut(&[String]) -> bool,
) -> (Vec<String>, bool) {
    let (tx, rx) = std::sync::mpsc::channel();
    let err = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + limit;
    let mut seen = Vec::new();
    let mut reached = false;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line);
                if done(&seen) {
                    reached = true;
                    break;
                }
            }
            Err(_) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    (seen, reached)
}

/// Kafka mode without `--admin-token`: each gateway would invent its own token. Said
/// at start (before the broker is even reached) by `gateway` and by `serve --kafka`;
/// not said when a token is given.
#[test]
fn kafka_gateways_without_an_admin_token_say_to_set_one_for_all() {
    let kafka = format!("127.0.0.1:{}", closed_port());
    let warning = "set one --admin-token for all gateways";
    for args in [
        vec!["gateway", "--kafka", kafka.as_str()],
        vec!["serve", "--kafka", kafka.as_str()],
    ] {
        let listen = format!("127.0.0.1:{}", free_port());
        let mut full = args.clone();
        full.extend(["--listen", listen.as_str()]);
        let mut child = base_command(&full)
            .env_remove("FLASHSALE_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flashsale");
        let (seen, found) = stderr_until(&mut child, std::time::Duration::from_secs(60), |l| {
            l.last().is_some_and(|l| l.contains(warning))
        });
        assert!(found, "{args:?}: no admin-token warning in {seen:#?}");
        let line = seen.last().unwrap();
        assert!(
            line.contains("WARN") && line.contains("each accept a different one"),
            "{line}"
        );

        // With a token: no such warning among the first lines (up to the broker wait).
        let mut full = args.clone();
        full.extend(["--listen", listen.as_str(), "--admin-token", "t0ken"]);
        let mut child = base_command(&full)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn flashsale");
        // (The warning comes right after the first line: three lines, or the wait for
        // the broker, are past it.)
        let (seen, _) = stderr_until(&mut child, std::time::Duration::from_secs(30), |l| {
            l.len() >= 3 || l.iter().any(|l| l.contains("waiting for"))
        });
        assert!(!seen.is_empty(), "{args:?}: nothing said at start");
        assert!(
            seen.iter().all(|l| !l.contains(warning)),
            "{args:?} with a token: {seen:#?}"
        );
    }
}

/// `--log-format json`: every line is a JSON object whose fields are JSON values (no
/// Rust debug text such as "Some(4)" or "[]"), and start-up is summed up in one line
/// (mode, listen address, partitions, data dir) instead of one line per partition.
#[test]
fn json_logs_carry_typed_values_and_one_start_up_summary() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let data = dir.path().to_str().unwrap();
    let mut child = base_command(&[
        "serve",
        "--embedded",
        "--data-dir",
        data,
        "--partitions",
        "4",
        "--listen",
        &listen,
        "--admin-token",
        "t0ken",
        "--log-format",
        "json",
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn serve");
    let has = |lines: &[String], msg: &str| lines.iter().any(|l| l.contains(msg));
    let (seen, done) = stderr_until(&mut child, std::time::Duration::from_secs(90), |l| {
        has(l, "\"listening\"") && has(l, "all partitions recovered")
    });
    assert!(done, "no summary and ready lines in {seen:#?}");
    let lines: Vec<serde_json::Value> = seen
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for (line, text) in lines.iter().zip(&seen) {
        let fields = line["fields"].as_object().expect("fields");
        for (k, v) in fields {
            if let Some(s) = v.as_str() {
                assert!(
                    !(s.starts_with("Some(") || s == "None" || s.starts_with('[')),
                    "field {k} is Rust debug text: {text}"
                );
            }
        }
        assert_ne!(
            fields["message"], "partition recovered",
            "one line per partition at start: {text}"
        );
    }
    let summary = lines
        .iter()
        .find(|l| l["fields"]["message"] == "listening")
        .expect("a summary line");
    let f = &summary["fields"];
    assert_eq!(f["mode"], "embedded");
    assert_eq!(f["partitions"], 4, "a number, not a string: {summary}");
    assert_eq!(f["listen"], listen.as_str());
    assert_eq!(f["data_dir"], data);
    let ready = lines
        .iter()
        .find(|l| l["fields"]["message"] == "all partitions recovered; ready")
        .expect("a ready line");
    assert!(ready["fields"]["elapsed_ms"].is_u64(), "{ready}");
}

/// A mistyped subcommand gets clap's suggestion (exit 2); a data directory in use or
/// made with another partition count is refused at once (exit 2), saying what to do.
#[tokio::test]
async fn a_typo_a_busy_data_dir_and_a_partition_mismatch_say_what_to_do() {
    let o = flashsale(&["serv"]);
    assert_fails(&o, 2, &["unrecognized subcommand 'serv'", "serve"]);

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let server = ChildServer::start(dir.path(), free_port(), &[])
        .await
        .expect("start flashsale serve");
    let listen = format!("127.0.0.1:{}", free_port());
    let o = flashsale(&[
        "serve",
        "--embedded",
        "--data-dir",
        data,
        "--partitions",
        "4",
        "--listen",
        &listen,
    ]);
    assert_fails(
        &o,
        2,
        &["is in use by another flashsale process", "--data-dir"],
    );
    server.kill9();
    let o = flashsale(&[
        "serve",
        "--embedded",
        "--data-dir",
        data,
        "--partitions",
        "8",
        "--listen",
        &listen,
    ]);
    assert_fails(
        &o,
        2,
        &["was created with 4 partitions", "start with --partitions 4"],
    );
}

/// A reader that stops early (`flashsale audit --json | true`) must not make any
/// command panic: each JSON-printing command, its stdout a pipe whose reading end is
/// already closed (what `| true` does, without the race of `true` exiting before or
/// after the write), exits 0 without a panic message.
#[tokio::test]
async fn every_cli_exits_cleanly_when_its_reader_is_gone() {
    let (dir, sku) = data_dir_with_a_sale().await;
    let data = dir.path().to_str().unwrap();
    let p = partition_of(&sku, "4").to_string();
    let commands: [&[&str]; 6] = [
        &["audit", "--data-dir", data, "--json"],
        &["audit", "--data-dir", data],
        &[
            "replay",
            "--data-dir",
            data,
            "--partition",
            &p,
            "--json",
            "--quiet",
        ],
        &["snapshot", "list", "--data-dir", data, "--json"],
        &["snapshot", "verify", "--data-dir", data, "--json"],
        &["partition-of", "SKU-1", "--json"],
    ];
    for args in commands {
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let o = base_command(args)
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .stderr(Stdio::piped())
            .output()
            .expect("run flashsale");
        let err = stderr(&o);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "flashsale {args:?} with its reader gone: {err}"
        );
        assert_eq!(o.status.code(), Some(0), "flashsale {args:?}: {err}");
    }
}

/// A port in use is refused before any partition starts: one "cannot listen" line,
/// exit 2, and no ERROR about partitions stopped half-way (nothing to alarm an
/// operator grepping for ERROR).
#[test]
fn a_port_in_use_is_one_line_and_no_partition_errors() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let listen = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let o = flashsale(&[
        "serve",
        "--embedded",
        "--data-dir",
        dir.path().to_str().unwrap(),
        "--listen",
        &listen,
    ]);
    assert_fails(&o, 2, &["cannot listen on", "Address already in use"]);
    let err = stderr(&o);
    assert!(
        !err.contains("ERROR") && !err.contains("panicked") && !err.contains("partition"),
        "{err}"
    );
}

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

//! Storage faults in embedded mode (issue 15): flipped bytes at seeded random positions
//! of every log and snapshot file, truncations, an unopenable log, a `.snap.tmp` left
//! behind, a `snapshots` path that is a file. After each: no acknowledged hold, order
//! or cancel is silently lost or changed (its partition serves it exactly, or is named
//! as failed and answers 503), and the healthy partitions serve.
//!
//! Damage inside a log (not a torn tail) that a valid snapshot covers is recovered
//! from: the partition serves from that snapshot and the valid records after the
//! damage, the file is left as it is and the damaged bytes are copied aside. Damage
//! past the newest valid snapshot keeps the partition down, named, with the reason;
//! `flashsale snapshot verify` says which of the two a data directory is in.

use flashsale_tests::reqwest::{Method, StatusCode};
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const PARTITIONS: u32 = 4;

/// What the clients were told: reservation id → (sku, partition, status).
#[derive(Debug, Default, Clone)]
struct Acked {
    holds: BTreeMap<String, (String, u32, &'static str)>,
    /// sku → (reserved, sold)
    counts: BTreeMap<String, (u64, u64)>,
}

/// A small deterministic generator (xorshift64*): the positions are the same each run.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

fn args(data: &Path) -> flashsale_ops::config::ServeConfig {
    let mut a = serve_args(data.to_path_buf());
    a.partitions = PARTITIONS;
    a.ready_with_failed_partitions = true;
    // Only the final snapshot of a clean stop: it covers the whole log, so damage
    // anywhere in a log is detectable, and damage to it falls back to a full replay.
    a.snapshot_every_commands = 1_000_000;
    a.snapshot_every_secs = 3600;
    a
}

/// Polls `/ready` (bounded) until no partition is still recovering; returns the failed
/// partitions it names.
async fn settled(base: &str) -> BTreeSet<u32> {
    let c = client();
    for _ in 0..600 {
        let a = call(&c, base, Method::GET, "/ready", None, &[]).await;
        let body = if a.status == StatusCode::OK {
            a.body.clone()
        } else {
            a.body["details"].clone()
        };
        if body.get("recoveringPartitions").is_none() && body.get("status").is_some() {
            return body["failedPartitions"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .map(|f| f["partition"].as_u64().unwrap() as u32)
                        .collect()
                })
                .unwrap_or_default();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("partitions still recovering after 60 s");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if e.file_name() != ".lock" {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Every `*.snap` file of partition `p`.
fn snapshots_of(data: &Path, p: u32) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data.join(format!("snapshots/p{p:03}")))
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    v.retain(|f| f.extension().is_some_and(|x| x == "snap"));
    v.sort();
    v
}

fn log_of(data: &Path, p: u32) -> PathBuf {
    data.join(format!("log/p{p:03}.log"))
}

/// Byte position of every record of a well-formed log, in offset order (the layout of
/// engine/src/log.rs, version 2: a 28-byte header starting with the payload length
/// (version in the top byte), the payload, an 8-byte trailer).
fn record_starts(log: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 36 <= log.len() {
        out.push(pos);
        let len = u32::from_le_bytes(log[pos..pos + 4].try_into().unwrap()) & 0xFF_FFFF;
        pos += 36 + len as usize;
    }
    assert_eq!(pos, log.len(), "a well-formed log");
    out
}

/// The offset a snapshot file covers up to (its name: `<offset>-<log time>.snap`).
fn snapshot_offset(f: &Path) -> usize {
    let name = f.file_name().unwrap().to_string_lossy().into_owned();
    name.split('-').next().unwrap().parse().unwrap()
}

/// Files the server copied damaged log bytes to (`pNNN.log.damaged-<position>`).
fn damaged_copies(data: &Path, p: u32) -> Vec<PathBuf> {
    std::fs::read_dir(data.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|f| {
            f.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("p{p:03}.log.damaged-"))
        })
        .collect()
}

/// `flashsale <args> --data-dir <data>` (embedded mode whatever the environment says).
fn tool(data: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(flashsale_bin())
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .env_remove("FLASHSALE_KAFKA")
        .env_remove("FLASHSALE_POSTGRES")
        .output()
        .expect("run flashsale")
}

/// `flashsale snapshot verify --partition p` on a data directory.
fn verify(data: &Path, p: u32) -> std::process::Output {
    tool(data, &["snapshot", "verify", "--partition", &p.to_string()])
}

/// `flashsale audit --json` on a data directory: its exit code and, per damaged
/// partition, what it says. Every partition must be in its report.
fn audit_verdict(data: &Path, what: &str) -> (Option<i32>, BTreeMap<u32, String>) {
    let o = tool(data, &["audit", "--json", "--quiet"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: audit prints JSON ({e}): {} / {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    assert_eq!(
        v["partitions"].as_array().map(Vec::len),
        Some(PARTITIONS as usize),
        "{what}: audit reports every partition: {v}"
    );
    let damaged = v["damaged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["partition"].as_u64().unwrap() as u32,
                d["damage"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    (o.status.code(), damaged)
}

/// What `/ready` says about each failed partition.
async fn failed_errors(base: &str) -> BTreeMap<u32, String> {
    let a = call(&client(), base, Method::GET, "/ready", None, &[]).await;
    let body = if a.status == StatusCode::OK {
        a.body.clone()
    } else {
        a.body["details"].clone()
    };
    body["failedPartitions"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|f| {
                    (
                        f["partition"].as_u64().unwrap() as u32,
                        f["error"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Builds a sale with holds, orders and cancels on every partition in two runs, each
/// stopped cleanly: every partition has an older snapshot (end of the first run) and a
/// newer one (end of the second), covering its whole log.
async fn build_history(data: &Path) -> (Acked, Vec<(String, u32)>) {
    let running = flashsale_ops::start(args(data)).await.unwrap();
    let mut base = format!("http://{}", running.addr);
    let mut running = Some(running);
    let c = client();
    wait_ready(&c, &base).await;
    // Two SKUs per partition.
    let mut skus: Vec<(String, u32)> = Vec::new();
    let mut per = [0; PARTITIONS as usize];
    while skus.len() < 2 * PARTITIONS as usize {
        let s = unique_sku("DISK");
        let p = flashsale_proto::partition_for_key(s.as_bytes(), PARTITIONS);
        if per[p as usize] < 2 {
            per[p as usize] += 1;
            skus.push((s, p));
        }
    }
    let products: Vec<(&str, u64, u64)> = skus.iter().map(|(s, _)| (s.as_str(), 50, 1)).collect();
    create_sale(&c, &base, &products, 3600, -1).await;
    let mut acked = Acked::default();
    for (i, (sku, p)) in skus.iter().cycle().take(48).enumerate() {
        if i == 24 {
            running.take().unwrap().stop().await.unwrap();
            let again = flashsale_ops::start(args(data)).await.unwrap();
            base = format!("http://{}", again.addr);
            running = Some(again);
            wait_ready(&c, &base).await;
        }
        let user = format!("disk-user-{i}");
        let r = call(
            &c,
            &base,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let rid = r.body["reservationId"].as_str().unwrap().to_string();
        let counts = acked.counts.entry(sku.clone()).or_default();
        let status = if i % 3 == 0 {
            let o = call(
                &c,
                &base,
                Method::POST,
                "/api/v1/orders/checkout",
                Some(
                    json!({"reservationId": rid, "paymentTransactionId": format!("pay-{i}"),
                            "paymentMethod": "WALLET", "shippingAddress": "1 Disk Rd"}),
                ),
                &[],
            )
            .await;
            assert_eq!(o.status, StatusCode::CREATED, "{}", o.body);
            counts.1 += 1;
            "CONFIRMED"
        } else if i % 5 == 0 {
            let d = call(
                &c,
                &base,
                Method::DELETE,
                &format!("/api/v1/reservations/{rid}"),
                None,
                &[],
            )
            .await;
            assert_eq!(d.status, StatusCode::OK, "{}", d.body);
            "CANCELLED"
        } else {
            counts.0 += 1;
            "RESERVED"
        };
        acked.holds.insert(rid, (sku.clone(), *p, status));
    }
    running.take().unwrap().stop().await.unwrap();
    for p in 0..PARTITIONS {
        assert!(
            snapshots_of(data, p).len() >= 2,
            "at least two snapshots of p{p}"
        );
    }
    (acked, skus)
}

/// Starts on `data`, checks every acknowledged outcome, that exactly `want_failed`
/// partitions are named failed, and that the healthy ones take a new hold.
async fn check(
    data: &Path,
    acked: &Acked,
    skus: &[(String, u32)],
    want_failed: &BTreeSet<u32>,
    what: &str,
) {
    // The tools' verdict (read only, before the server touches anything) ...
    let (code, damaged) = audit_verdict(data, what);
    let running = flashsale_ops::start(args(data)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let c = client();
    let failed = settled(&base).await;
    assert_eq!(&failed, want_failed, "{what}: failed partitions");
    // ... is the server's: the same partitions, in the same words.
    assert_eq!(
        damaged.keys().copied().collect::<BTreeSet<u32>>(),
        failed,
        "{what}: audit's damaged partitions are the server's failed ones: {damaged:?}"
    );
    assert_eq!(
        code,
        Some(if failed.is_empty() { 0 } else { 1 }),
        "{what}: audit's exit code"
    );
    let errors = failed_errors(&base).await;
    for (p, said) in &damaged {
        assert!(
            errors[p].contains(said.as_str()),
            "{what}: audit says what the server says about p{p}:\n server: {}\n audit: {said}",
            errors[p]
        );
    }
    for (rid, (sku, p, status)) in &acked.holds {
        let g = call(
            &c,
            &base,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        if failed.contains(p) {
            assert_eq!(
                g.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{what}: hold {rid} on failed partition {p}: {}",
                g.body
            );
            assert!(
                g.headers.contains_key("retry-after"),
                "{what}: 503 without Retry-After"
            );
        } else {
            assert_eq!(
                g.status,
                StatusCode::OK,
                "{what}: acknowledged hold {rid} ({sku}) lost: {}",
                g.body
            );
            assert_eq!(g.body["status"], *status, "{what}: hold {rid} changed");
        }
    }
    let products = call(&c, &base, Method::GET, "/api/v1/products", None, &[]).await;
    if failed.is_empty() {
        assert_eq!(products.status, StatusCode::OK, "{what}: {}", products.body);
        for (sku, (reserved, sold)) in &acked.counts {
            let a = call(
                &c,
                &base,
                Method::GET,
                &format!("/api/v1/products/{sku}/availability"),
                None,
                &[],
            )
            .await;
            assert_eq!(a.status, StatusCode::OK, "{what}: {}", a.body);
            let total = 50u64;
            let available = a.body["availableInventory"]
                .as_u64()
                .or_else(|| a.body["available"].as_u64());
            if let Some(av) = available {
                assert_eq!(
                    av,
                    total - reserved - sold,
                    "{what}: {sku} stock changed: {}",
                    a.body
                );
            }
        }
    } else {
        assert_eq!(
            products.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{what}: a partial product list: {}",
            products.body
        );
        assert!(products.headers.contains_key("retry-after"));
    }
    // the healthy partitions serve: a new hold on each of them
    for (i, (sku, p)) in skus.iter().enumerate().step_by(2) {
        let r = call(
            &c,
            &base,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": format!("after-{i}"), "skuId": sku, "quantity": 1})),
            &[],
        )
        .await;
        if failed.contains(p) {
            assert_eq!(
                r.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{what}: {}",
                r.body
            );
        } else {
            assert_eq!(
                r.status,
                StatusCode::CREATED,
                "{what}: healthy partition {p} refused a hold: {}",
                r.body
            );
        }
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_faults_lose_nothing_acknowledged_and_fail_one_partition_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pristine = dir.path().join("pristine");
    let (acked, skus) = build_history(&pristine).await;
    let mut rng = Rng(0x5EED_F00D_1234_5678);
    let run = dir.path().join("run");
    let fresh = || {
        let _ = std::fs::remove_dir_all(&run);
        copy_dir(&pristine, &run);
    };
    let none = BTreeSet::new();
    for p in 0..PARTITIONS {
        let one: BTreeSet<u32> = [p].into();
        // flipped bytes in the log: never a silent cut. The newest snapshot covers
        // the whole log, so damage anywhere (the last record included: it is on disk
        // in full, so it is damage, not a torn tail) is recovered from that snapshot.
        let starts = record_starts(&std::fs::read(log_of(&pristine, p)).unwrap());
        let last_start = *starts.last().unwrap();
        for _ in 0..4 {
            fresh();
            let log = log_of(&run, p);
            let mut bytes = std::fs::read(&log).unwrap();
            let at = rng.below(bytes.len() as u64) as usize;
            bytes[at] ^= 1 << rng.below(8);
            std::fs::write(&log, &bytes).unwrap();
            check(
                &run,
                &acked,
                &skus,
                &none,
                &format!("log p{p} byte {at} flipped (last record from {last_start})"),
            )
            .await;
            let now = std::fs::read(&log).unwrap();
            assert_eq!(
                &now[..bytes.len()],
                &bytes[..],
                "log p{p} byte {at}: the damaged file was changed (only appended to)"
            );
            assert_eq!(
                damaged_copies(&run, p).len(),
                1,
                "log p{p} byte {at}: the damaged bytes are kept aside"
            );
        }
        // Damage the newest snapshot does not cover: without it (removed), only the
        // older one is left. Before its offset: recovered from it; after it: down.
        let older = snapshots_of(&pristine, p)[0].clone();
        let covered = snapshot_offset(&older);
        assert!(
            covered > 0 && covered + 1 < starts.len(),
            "p{p}: records on both sides"
        );
        for (at, down) in [
            (starts[rng.below(covered as u64) as usize] + 8, false),
            (
                starts[covered + rng.below((starts.len() - covered - 1) as u64) as usize] + 8,
                true,
            ),
            // The last record, which no snapshot covers now (as after a kill -9).
            (last_start + 8, true),
        ] {
            fresh();
            // Every snapshot but the oldest goes.
            for f in snapshots_of(&run, p).into_iter().skip(1) {
                std::fs::remove_file(f).unwrap();
            }
            let log = log_of(&run, p);
            let mut bytes = std::fs::read(&log).unwrap();
            bytes[at] ^= 0x10;
            std::fs::write(&log, &bytes).unwrap();
            let o = verify(&run, p);
            let out = String::from_utf8_lossy(&o.stdout).into_owned();
            let what = format!(
                "log p{p} byte {at} flipped, snapshot at offset {covered} {}",
                if down { "before it" } else { "past it" }
            );
            if down {
                assert_eq!(o.status.code(), Some(1), "{what}: verify fails: {out}");
                assert!(
                    out.contains(&format!("corrupt at byte {}", at - 8))
                        && out.contains("keeps partition"),
                    "{what}: verify names the byte and the outcome: {out}"
                );
            } else {
                assert!(o.status.success(), "{what}: verify passes: {out}");
                assert!(
                    out.contains("covers offsets below")
                        && out.contains(&format!("byte {}", at - 8)),
                    "{what}: verify explains the recovery: {out}"
                );
            }
            check(&run, &acked, &skus, if down { &one } else { &none }, &what).await;
            assert_eq!(
                &std::fs::read(&log).unwrap()[..bytes.len()],
                &bytes[..],
                "{what}: the damaged file was changed"
            );
            if down {
                let running = flashsale_ops::start(args(&run)).await.unwrap();
                let base = format!("http://{}", running.addr);
                settled(&base).await;
                let ready = call(&client(), &base, Method::GET, "/ready", None, &[]).await;
                let text = ready.body.to_string();
                assert!(
                    text.contains(&format!("corrupt at byte {}", at - 8))
                        && text.contains(&format!("p{p:03}.log"))
                        && text.contains("docs/operations.md"),
                    "{what}: /ready names the file, the byte and what to do: {text}"
                );
                running.stop().await.unwrap();
            } else {
                // The recovered partition took a new hold after the damage; a restart
                // recovers it again (from the newest snapshot, past the same damage).
                let running = flashsale_ops::start(args(&run)).await.unwrap();
                let base = format!("http://{}", running.addr);
                assert_eq!(settled(&base).await, none, "{what}: second restart");
                for (rid, (_, hp, status)) in &acked.holds {
                    if *hp == p {
                        let g = call(
                            &client(),
                            &base,
                            Method::GET,
                            &format!("/api/v1/reservations/{rid}"),
                            None,
                            &[],
                        )
                        .await;
                        assert_eq!(g.status, StatusCode::OK, "{what}: {rid}: {}", g.body);
                        assert_eq!(g.body["status"], *status, "{what}: {rid} changed");
                    }
                }
                running.stop().await.unwrap();
            }
        }
        // a log cut short
        fresh();
        let log = log_of(&run, p);
        let len = log.metadata().unwrap().len();
        let cut = rng.below(len);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&log)
            .unwrap()
            .set_len(cut)
            .unwrap();
        check(
            &run,
            &acked,
            &skus,
            &one,
            &format!("log p{p} cut to {cut} bytes"),
        )
        .await;
        assert_eq!(
            log.metadata().unwrap().len(),
            cut,
            "the damaged log was changed on disk"
        );
        if p == 0 {
            // Issue 27: after a clean stop (the final snapshot covers the whole log),
            // 20 bytes cut off the log, or the log deleted: records are lost. The
            // server refuses the partition (and creates nothing in place of a missing
            // log); every tool says so and exits 1; verify names the snapshot's file.
            for (what, delete) in [("log p0 cut by 20 bytes", false), ("log p0 deleted", true)] {
                fresh();
                let log = log_of(&run, p);
                if delete {
                    std::fs::remove_file(&log).unwrap();
                } else {
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&log)
                        .unwrap()
                        .set_len(len - 20)
                        .unwrap();
                }
                check(&run, &acked, &skus, &one, what).await;
                assert_eq!(
                    log.exists(),
                    !delete,
                    "{what}: nothing created in its place"
                );
                let replay = tool(&run, &["replay", "--partition", "0", "--quiet"]);
                assert_eq!(
                    replay.status.code(),
                    Some(1),
                    "{what}: replay: {}",
                    String::from_utf8_lossy(&replay.stderr)
                );
                assert!(
                    String::from_utf8_lossy(&replay.stderr).contains("refused"),
                    "{what}: replay names the refusal"
                );
                let o = verify(&run, p);
                let out = String::from_utf8_lossy(&o.stdout).into_owned();
                assert_eq!(o.status.code(), Some(1), "{what}: verify: {out}");
                let newest = snapshots_of(&run, p).last().unwrap().display().to_string();
                assert!(
                    out.contains("REFUSED") && out.contains(&newest),
                    "{what}: verify names the damage and the snapshot file {newest}: {out}"
                );
            }
        }
        // flipped bytes and a cut in each snapshot: refused, full replay, all there
        for snap in snapshots_of(&pristine, p) {
            let name = snap.file_name().unwrap().to_owned();
            for _ in 0..2 {
                fresh();
                let f = run.join(format!("snapshots/p{p:03}")).join(&name);
                let mut bytes = std::fs::read(&f).unwrap();
                let at = rng.below(bytes.len() as u64) as usize;
                bytes[at] ^= 1 << rng.below(8);
                std::fs::write(&f, bytes).unwrap();
                check(
                    &run,
                    &acked,
                    &skus,
                    &none,
                    &format!("snapshot {name:?} byte {at} flipped"),
                )
                .await;
            }
            fresh();
            let f = run.join(format!("snapshots/p{p:03}")).join(&name);
            let len = f.metadata().unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&f)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
            check(
                &run,
                &acked,
                &skus,
                &none,
                &format!("snapshot {name:?} cut"),
            )
            .await;
        }
    }
    // a log that cannot be opened (a directory in its place: root reads any file)
    fresh();
    let log = log_of(&run, 2);
    std::fs::remove_file(&log).unwrap();
    std::fs::create_dir(&log).unwrap();
    check(&run, &acked, &skus, &[2].into(), "log p2 unopenable").await;
    // a .snap.tmp left behind by a crash or a full disk: removed at start
    fresh();
    let tmp = run.join("snapshots/p001/00000000000000000099-1.snap.tmp");
    std::fs::write(&tmp, b"half a snapshot").unwrap();
    check(&run, &acked, &skus, &none, ".snap.tmp left behind").await;
    assert!(!tmp.exists(), "the .snap.tmp was removed at start");
    // the snapshots path is a file: every partition fails, the process stays up and
    // says so, reads answer 503 rather than 404
    fresh();
    std::fs::remove_dir_all(run.join("snapshots")).unwrap();
    std::fs::write(run.join("snapshots"), b"not a directory").unwrap();
    let running = flashsale_ops::start(args(&run)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let failed = settled(&base).await;
    assert_eq!(failed, (0..PARTITIONS).collect::<BTreeSet<_>>());
    let ready = call(&client(), &base, Method::GET, "/ready", None, &[]).await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    let rid = acked.holds.keys().next().unwrap();
    let g = call(
        &client(),
        &base,
        Method::GET,
        &format!("/api/v1/reservations/{rid}"),
        None,
        &[],
    )
    .await;
    assert_eq!(g.status, StatusCode::SERVICE_UNAVAILABLE, "{}", g.body);
    running.stop().await.unwrap();
}

/// A full disk is a state, not a crash: holds are refused with 503 + Retry-After while
/// the log cannot be written, reads still work, `/ready` names the partitions, and
/// service resumes by itself when space returns. Needs a small tmpfs (root and
/// `mount`); skipped with a message where that is not possible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_holds_and_recovers_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("tmpfs");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the full-disk test did not run"
        );
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _guard = Unmount(mnt.clone());
    let data = mnt.join("data");
    let mut a = args(&data);
    a.reply_deadline_ms = 1000;
    let running = flashsale_ops::start(a).await.unwrap();
    let base = format!("http://{}", running.addr);
    let c = client();
    wait_ready(&c, &base).await;
    let sku = unique_sku("FULL");
    create_sale(&c, &base, &[(&sku, 1000, 1000)], 3600, -1).await;
    let hold = |user: String| {
        let (c, base, sku) = (c.clone(), base.clone(), sku.clone());
        async move {
            call(
                &c,
                &base,
                Method::POST,
                "/api/v1/reservations",
                Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
                &[],
            )
            .await
        }
    };
    let first = hold("full-0".into()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.body);
    let rid = first.body["reservationId"].as_str().unwrap().to_string();
    let mut acked = vec![rid.clone()];
    // fill the disk
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    // holds are refused (never acknowledged without being on disk), the process lives
    let mut refused = None;
    for i in 1..=300 {
        let r = hold(format!("full-{i}")).await;
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            refused = Some(r);
            break;
        }
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        // a few small records may still fit in the last free pages
        acked.push(r.body["reservationId"].as_str().unwrap().to_string());
    }
    let refused = refused.expect("a hold on a full disk is refused");
    assert!(refused.headers.contains_key("retry-after"));
    // A nearly full disk may still take a small write now and then (the log's last
    // page), so the partition can flap; each refusal leaves it blocked until the next
    // retry, and /ready names it then.
    let mut blocked = false;
    for i in 400..460 {
        // Reads are still served (plain /ready stays 200); writes are not.
        let ready = call(&c, &base, Method::GET, "/ready?writes", None, &[]).await;
        if ready.status == StatusCode::SERVICE_UNAVAILABLE
            && ready.body["details"]
                .get("writeBlockedPartitions")
                .is_some()
        {
            blocked = true;
            break;
        }
        let r = hold(format!("full-{i}")).await;
        if r.status == StatusCode::CREATED {
            acked.push(r.body["reservationId"].as_str().unwrap().to_string());
        }
    }
    assert!(blocked, "/ready names the write-blocked partition");
    let g = call(
        &c,
        &base,
        Method::GET,
        &format!("/api/v1/reservations/{rid}"),
        None,
        &[],
    )
    .await;
    assert_eq!(
        g.status,
        StatusCode::OK,
        "reads are served on a full disk: {}",
        g.body
    );
    // space returns: service resumes by itself (the writer retries every second)
    std::fs::remove_file(&filler).unwrap();
    let mut resumed = false;
    for i in 1000..1100 {
        let r = hold(format!("full-{i}")).await;
        if r.status == StatusCode::CREATED {
            acked.push(r.body["reservationId"].as_str().unwrap().to_string());
            resumed = true;
            break;
        }
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(resumed, "holds are taken again once space returns");
    wait_ready(&c, &base).await;
    running.stop().await.unwrap();
    // everything acknowledged is there after a restart, and the log is sound
    let running = flashsale_ops::start(args(&data)).await.unwrap();
    let base = format!("http://{}", running.addr);
    wait_ready(&c, &base).await;
    for rid in &acked {
        let g = call(
            &c,
            &base,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            g.status,
            StatusCode::OK,
            "acknowledged hold {rid} lost: {}",
            g.body
        );
        assert_eq!(g.body["status"], "RESERVED");
    }
    running.stop().await.unwrap();
}

/// SIGTERM with slow clients attached (silent, half a header, half a body): the
/// drain is bounded, the final snapshots are written, the exit status is 0, and
/// every acknowledged hold is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_slow_clients_drains_in_bounded_time_and_exits_0() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let flags = [
        "--shutdown-drain-secs",
        "2",
        "--snapshot-every-commands",
        "1000000",
    ];
    let mut server = ChildServer::start(&data, free_port(), &flags)
        .await
        .unwrap();
    let c = client();
    let sku = unique_sku("TERM");
    create_sale(&c, &server.base, &[(&sku, 100, 1)], 3600, -1).await;
    let mut acked = Vec::new();
    for i in 0..10 {
        let r = call(
            &c,
            &server.base,
            Method::POST,
            "/api/v1/reservations",
            Some(json!({"userId": format!("term-{i}"), "skuId": sku, "quantity": 1})),
            &[],
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        acked.push(r.body["reservationId"].as_str().unwrap().to_string());
    }
    let addr = server.base.trim_start_matches("http://").to_string();
    let _silent = std::net::TcpStream::connect(&addr).unwrap();
    let mut half_header = std::net::TcpStream::connect(&addr).unwrap();
    half_header
        .write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut half_body = std::net::TcpStream::connect(&addr).unwrap();
    half_body
        .write_all(b"POST /api/v1/reservations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"userId\":")
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let pid = server.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let mut status = None;
    for _ in 0..300 {
        if let Some(s) = server.child.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let status =
        status.expect("the server exits after SIGTERM although slow clients hold connections");
    assert!(status.success(), "exit status {status:?}");
    let p = flashsale_proto::partition_for_key(sku.as_bytes(), 4);
    assert!(
        !snapshots_of(&data, p).is_empty(),
        "the final snapshot of partition {p} was written"
    );
    drop(server);
    let server = ChildServer::start(&data, free_port(), &flags)
        .await
        .unwrap();
    for rid in &acked {
        let g = call(
            &c,
            &server.base,
            Method::GET,
            &format!("/api/v1/reservations/{rid}"),
            None,
            &[],
        )
        .await;
        assert_eq!(
            g.status,
            StatusCode::OK,
            "acknowledged hold {rid} lost: {}",
            g.body
        );
    }
    drop(server);
}

/// Bounded state through the server: with a 1 s retention and a 2 s TTL, a cancelled
/// hold is pruned (engine, snapshot and read model) once log time passes both its end
/// + 1 s and its expiresAt: a GET
/// then answers 404 "Reservation Not Found" as for an unknown id, also after a restart;
/// an order stays; the pruning is counted in `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_reservations_are_pruned_after_the_retention_and_orders_stay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let short = |d: &Path| {
        let mut a = args(d);
        a.retention_secs = 1;
        a
    };
    let running = flashsale_ops::start(short(&data)).await.unwrap();
    let base = format!("http://{}", running.addr);
    let c = client();
    wait_ready(&c, &base).await;
    let sku = unique_sku("PRUNE");
    create_sale(&c, &base, &[(&sku, 200, 1)], 2, -1).await;
    let hold = |user: String| {
        let (c, base, sku) = (c.clone(), base.clone(), sku.clone());
        async move {
            let r = call(
                &c,
                &base,
                Method::POST,
                "/api/v1/reservations",
                Some(json!({"userId": user, "skuId": sku, "quantity": 1})),
                &[],
            )
            .await;
            assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
            r.body["reservationId"].as_str().unwrap().to_string()
        }
    };
    let get = |rid: String| {
        let (c, base) = (c.clone(), base.clone());
        async move {
            call(
                &c,
                &base,
                Method::GET,
                &format!("/api/v1/reservations/{rid}"),
                None,
                &[],
            )
            .await
        }
    };
    let cancelled = hold("prune-a".into()).await;
    let d = call(
        &c,
        &base,
        Method::DELETE,
        &format!("/api/v1/reservations/{cancelled}"),
        None,
        &[],
    )
    .await;
    assert_eq!(d.status, StatusCode::OK, "{}", d.body);
    let bought = hold("prune-b".into()).await;
    let o = call(
        &c,
        &base,
        Method::POST,
        "/api/v1/orders/checkout",
        Some(
            json!({"reservationId": bought, "paymentTransactionId": "pay-prune",
                    "paymentMethod": "WALLET", "shippingAddress": "1 Prune St"}),
        ),
        &[],
    )
    .await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.body);
    let order_id = o.body["orderId"].as_str().unwrap().to_string();
    assert_eq!(get(cancelled.clone()).await.body["status"], "CANCELLED");
    // Pruning is driven by log time: each new record (here a hold) moves it on.
    let mut pruned = None;
    for i in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        hold(format!("prune-later-{i}")).await;
        let g = get(cancelled.clone()).await;
        if g.status == StatusCode::NOT_FOUND {
            pruned = Some(g);
            break;
        }
        assert_eq!(g.status, StatusCode::OK, "{}", g.body);
    }
    let pruned = pruned.expect("the cancelled hold is pruned within 30 s of log time");
    assert_eq!(pruned.error(), "Reservation Not Found", "{}", pruned.body);
    let g = get(bought.clone()).await;
    assert_eq!(
        g.status,
        StatusCode::OK,
        "orders are never pruned: {}",
        g.body
    );
    assert_eq!(g.body["status"], "CONFIRMED");
    let m = c.get(format!("{base}/metrics")).send().await.unwrap();
    let text = m.text().await.unwrap();
    let count: f64 = text
        .lines()
        .find(|l| l.starts_with("flashsale_reservations_pruned_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .expect("flashsale_reservations_pruned_total in /metrics");
    assert!(count >= 1.0, "pruning counted: {count}");
    // The user who bought still cannot hold again (limit 1): the order counts.
    let again = call(
        &c,
        &base,
        Method::POST,
        "/api/v1/reservations",
        Some(json!({"userId": "prune-b", "skuId": sku, "quantity": 1})),
        &[],
    )
    .await;
    assert_eq!(again.status, StatusCode::CONFLICT, "{}", again.body);
    running.stop().await.unwrap();
    // After a restart (from the final snapshot): still gone, the order still there.
    let running = flashsale_ops::start(short(&data)).await.unwrap();
    let base = format!("http://{}", running.addr);
    wait_ready(&c, &base).await;
    let g = call(
        &c,
        &base,
        Method::GET,
        &format!("/api/v1/reservations/{cancelled}"),
        None,
        &[],
    )
    .await;
    assert_eq!(g.status, StatusCode::NOT_FOUND, "{}", g.body);
    let g = call(
        &c,
        &base,
        Method::GET,
        &format!("/api/v1/orders/{order_id}"),
        None,
        &[],
    )
    .await;
    assert_eq!(g.status, StatusCode::OK, "{}", g.body);
    running.stop().await.unwrap();
}

#[allow(dead_code)]
fn unused(_: Value) {}

//! Group-commit throughput of the embedded command log: batches appended and synced
//! (`PartitionLog::append`: one write + one `fdatasync` per batch), the cost every
//! acknowledged command pays before it is applied.
//!
//! It uses only `PartitionLog::open` and `PartitionLog::append`, which every version of
//! the log has, so the same file measures an older commit side by side (issue 27: the
//! tail protection of record format 2 must keep at least 0.95x the throughput of
//! format 1). On an idle machine, from the repository root:
//!
//! ```text
//! git worktree add /tmp/fs-old <old commit>
//! cp engine/benches/group_commit.rs /tmp/fs-old/engine/benches/
//! printf '\n[[bench]]\nname = "group_commit"\nharness = false\n' >> /tmp/fs-old/engine/Cargo.toml
//! for i in 1 2 3; do
//!   (cd /tmp/fs-old && cargo bench -p flashsale-engine --bench group_commit)
//!   cargo bench -p flashsale-engine --bench group_commit
//! done
//! ```
//!
//! Env: `GC_DIR` (directory for the log: put it on the disk the data directory uses;
//! default a temporary directory), `GC_BATCHES` (batches per run, default 2000),
//! `GC_BATCH` (records per batch, default 32), `GC_PAYLOAD` (bytes per record,
//! default 128: a typical encoded command), `GC_RUNS` (default 5). Prints the median
//! run's records/s and batches/s.

use flashsale_engine::log::PartitionLog;
use std::time::Instant;

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let batches = env_num("GC_BATCHES", 2000);
    let batch = env_num("GC_BATCH", 32);
    let payload = env_num("GC_PAYLOAD", 128);
    let runs = env_num("GC_RUNS", 5).max(1);
    let base = match std::env::var("GC_DIR") {
        Ok(d) => tempfile::tempdir_in(d).expect("GC_DIR is a writable directory"),
        Err(_) => tempfile::tempdir().expect("a temporary directory"),
    };
    let record: Vec<u8> = (0..payload).map(|i| (i * 31 % 251) as u8).collect();
    let mut secs = Vec::with_capacity(runs);
    for run in 0..runs {
        let dir = base.path().join(format!("run-{run}"));
        let mut log = PartitionLog::open(&dir, 0).expect("open the log");
        let t = Instant::now();
        for b in 0..batches {
            log.append(vec![record.clone(); batch], b as u64)
                .expect("append");
        }
        secs.push(t.elapsed().as_secs_f64());
        drop(log);
        std::fs::remove_dir_all(&dir).expect("remove the run's log");
    }
    secs.sort_by(f64::total_cmp);
    let median = secs[runs / 2];
    let records = (batches * batch) as f64;
    println!(
        "group commit: {batches} batches x {batch} records x {payload} B, {runs} runs: median {:.0} records/s, {:.0} batches/s ({:.1} us per batch; runs {:?} s)",
        records / median,
        batches as f64 / median,
        median * 1e6 / batches as f64,
        secs.iter().map(|s| (s * 1000.0).round() / 1000.0).collect::<Vec<_>>()
    );
}

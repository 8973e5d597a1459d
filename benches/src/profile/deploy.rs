//! The deployments `profile` measures: started by this command on loopback, optionally
//! pinned to some CPUs, and stopped and cleaned up (processes, data directories,
//! database, topics) however the profile ends.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::client::ApiClient;
use crate::error::BenchError;
use crate::plan::{MachineInfo, ROLE_BROKER, ROLE_NODE, ROLE_POSTGRES, ROLE_PROJECTOR};
use crate::soak::{read_proc, USER_HZ};

use super::ProfileArgs;

/// The admin token of the deployments the profile starts.
const TOKEN: &str = "profile-admin-token";
/// The engines' group session, ms (their default, 600, is for a sub-second failover),
/// with `--group-protocol classic` (the session is then the client's, not the broker's).
const ENGINE_SESSION_MS: u32 = 6000;
/// Longest wait for a topic deletion.
const DELETE_WAIT: Duration = Duration::from_secs(30);

/// A started process, stopped when dropped (TERM, then KILL after 10 s).
pub(super) struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("profile: {} did not stop in 10 s: killed", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A measured process: a role name, the pids whose CPU counts for it, and whether it is
/// one of the deployment's own (pinned) processes rather than a shared service.
#[derive(Debug, Clone)]
pub(super) struct Watched {
    pub name: String,
    pub pids: Vec<u32>,
    pub own: bool,
}

/// CPU seconds and RSS bytes of each watched process now.
pub(super) fn sample(w: &[Watched]) -> Vec<(f64, u64)> {
    w.iter()
        .map(|x| {
            x.pids
                .iter()
                .filter_map(|p| read_proc(*p))
                .fold((0.0, 0), |a, s| {
                    (a.0 + s.cpu_ticks as f64 / USER_HZ, a.1 + s.rss_bytes)
                })
        })
        .collect()
}

/// Where the deployment and the harness run: CPU lists for `taskset -c`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Pinning {
    /// The deployment's own processes during the cost runs, e.g. `0`.
    pub deployment: String,
    /// The harness (this process), e.g. `1`.
    pub harness: String,
}

/// Sets the CPUs every thread of `pid` may run on (`taskset -a -p -c`).
pub(super) fn set_affinity(pid: u32, cpus: &str) -> Result<(), BenchError> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .output()
        .map_err(|e| BenchError::Setup(format!("taskset: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "taskset -a -p -c {cpus} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn pgrep(args: &[&str]) -> Vec<u32> {
    Command::new("pgrep")
        .args(args)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The pid listening on loopback TCP `port`, from `ss -Hltnp`.
fn listener_pid(port: &str) -> Option<u32> {
    let out = Command::new("ss")
        .args(["-Hltnp", &format!("sport = :{port}")])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("pid=")? + 4;
    text[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Starts `bin args`, its output in `logs/<name>.log`; under `taskset -c pin` when given
/// (taskset execs the program: the pid is the program's, and the runtime sizes its
/// worker threads to the CPUs it may use, as on a machine of that many cores).
fn spawn(
    bin: &Path,
    name: &str,
    args: &[String],
    logs: &Path,
    pin: Option<&str>,
) -> Result<Proc, BenchError> {
    let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
    let mut cmd = match pin {
        Some(cpus) => {
            let mut c = Command::new("taskset");
            c.args(["-c", cpus]).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let child = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .map_err(|e| BenchError::Setup(format!("{}: {e}", bin.display())))?;
    Ok(Proc {
        name: name.into(),
        child,
    })
}

fn run_tool(bin: &Path, args: &[&str]) -> Result<(), BenchError> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| BenchError::Setup(format!("{}: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "{} {}: {}",
            bin.display(),
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("failed")
        )));
    }
    Ok(())
}

/// The machine: cores, CPU model, kernel, load.
pub fn machine() -> MachineInfo {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default();
    MachineInfo {
        // Online cores, not this process's affinity (the profile pins itself).
        cores: std::fs::read_to_string("/sys/devices/system/cpu/online")
            .ok()
            .and_then(|s| cpu_list_len(s.trim()))
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32)),
        cpu_model: model,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string(),
        load_avg_1m: load_avg(),
    }
}

/// CPUs in a kernel CPU list such as `0-3,6`.
pub fn cpu_list_len(list: &str) -> Option<u32> {
    let mut n = 0;
    for part in list.split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u32>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u32>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

pub(super) fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0.0)
}

/// Removes directories when dropped (after the processes using them stopped).
struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Drops the database when dropped.
struct Database {
    admin_url: String,
    name: String,
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([
                &self.admin_url,
                "-qc",
                &format!("DROP DATABASE IF EXISTS {}", self.name),
            ])
            .output();
    }
}

/// A running deployment. Dropping it stops the processes, deletes the topics, then
/// removes the data directories and drops the database.
pub(super) struct Deployment {
    /// The HTTP entry the harness drives (gateway 0 in Kafka mode).
    pub client: ApiClient,
    /// Its processes (the driven gateway first in Kafka mode), then the shared services.
    pub watched: Vec<Watched>,
    /// Kafka mode: the bootstrap servers and the topic prefix to delete at the end.
    topics: Option<(String, String)>,
    // Field order is drop order: the processes stop before their directories and
    // database go.
    procs: Vec<Proc>,
    _dirs: Dirs,
    _db: Option<Database>,
}

impl Drop for Deployment {
    fn drop(&mut self) {
        // The processes first: an engine still running would recreate nothing, but
        // its consumers would log errors for the deleted topics.
        self.procs.clear();
        if let Some((kafka, prefix)) = self.topics.take() {
            // A thread of its own: this may run inside the profile's runtime.
            let deleted = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(delete_topics(&kafka, &prefix))
                    .map_err(|e| format!("{prefix}*: {e}"))
            })
            .join();
            match deleted {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => eprintln!("profile: could not delete the topics {e}"),
                Err(_) => eprintln!("profile: could not delete the topics (panic)"),
            }
        }
    }
}

/// Deletes every topic whose name starts with `prefix`; returns how many.
pub(super) async fn delete_topics(kafka: &str, prefix: &str) -> Result<usize, String> {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .map_err(|e| e.to_string())?;
    let md = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = md
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect();
    if names.is_empty() {
        return Ok(0);
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let opts = AdminOptions::new().operation_timeout(Some(DELETE_WAIT));
    let results = tokio::time::timeout(DELETE_WAIT, admin.delete_topics(&refs, &opts))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|(t, e)| format!("{t}: {e}")))
        .collect();
    if failed.is_empty() {
        Ok(names.len())
    } else {
        Err(failed.join(", "))
    }
}

fn client(port: u16, max_in_flight: usize) -> Result<ApiClient, BenchError> {
    ApiClient::new(
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        max_in_flight,
        Duration::from_secs(5),
    )
}

/// `flashsale serve --embedded` (role `node`), pinned to `pin` when given.
pub(super) fn start_embedded(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
    pin: Option<&str>,
) -> Result<Deployment, BenchError> {
    let data = logs.join("embedded-data");
    let _ = std::fs::remove_dir_all(&data);
    let node = spawn(
        bin,
        "embedded-node",
        &[
            "serve".into(),
            "--embedded".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--partitions".into(),
            "8".into(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port),
            "--admin-token".into(),
            TOKEN.into(),
            "--log".into(),
            "warn".into(),
        ],
        logs,
        pin,
    )?;
    Ok(Deployment {
        client: client(args.port, 512)?,
        watched: vec![Watched {
            name: ROLE_NODE.into(),
            pids: vec![node.pid()],
            own: true,
        }],
        topics: None,
        procs: vec![node],
        _dirs: Dirs(vec![data]),
        _db: None,
    })
}

/// `flashsale engine` ×2, `gateway` ×2 (ids 0 and 1) and `projector` on fresh topics
/// (prefix `<tag>.`) and a fresh database `<tag>`, pinned to `pin` when given; the
/// broker and Postgres watched as shared services (never pinned). Returns once both
/// gateways answer /ready.
pub(super) async fn start_kafka(
    args: &ProfileArgs,
    bin: &Path,
    logs: &Path,
    tag: &str,
    copies: u16,
    pin: Option<&str>,
    notes: &mut Vec<String>,
) -> Result<Deployment, BenchError> {
    let copies = copies.clamp(1, 2);
    let pg = args.postgres.clone().ok_or_else(|| {
        BenchError::Setup(
            "kafka mode needs --postgres or FLASHSALE_POSTGRES (set -a; . ./.services.env)".into(),
        )
    })?;
    crate::client::check_loopback(&format!("http://{}", args.kafka))
        .map_err(|_| BenchError::Target(format!("--kafka {} is not loopback", args.kafka)))?;
    let base = pg
        .rsplit_once('/')
        .map(|(b, _)| b.to_string())
        .ok_or_else(|| BenchError::Setup(format!("{pg}: not a postgres://…/db URL")))?;
    let out = Command::new("psql")
        .args([
            &pg,
            "-v",
            "ON_ERROR_STOP=1",
            "-qc",
            &format!("CREATE DATABASE {tag}"),
        ])
        .output()
        .map_err(|e| BenchError::Setup(format!("psql: {e}")))?;
    if !out.status.success() {
        return Err(BenchError::Setup(format!(
            "CREATE DATABASE {tag}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let db_guard = Database {
        admin_url: pg.clone(),
        name: tag.to_string(),
    };
    let db = format!("{base}/{tag}");
    let prefix = format!("{tag}.");
    run_tool(bin, &["migrate", "--postgres", &db, "--log", "warn"])?;
    let mut dep = Deployment {
        client: client(args.port, 512)?,
        watched: Vec::new(),
        topics: Some((args.kafka.clone(), prefix.clone())),
        procs: Vec::new(),
        _dirs: Dirs(
            (0..copies)
                .flat_map(|i| [format!("engine{i}"), format!("gateway{i}")])
                .map(|d| logs.join(format!("{tag}-{d}")))
                .collect(),
        ),
        _db: Some(db_guard),
    };
    run_tool(
        bin,
        &[
            "topics",
            "create",
            "--kafka",
            &args.kafka,
            "--topic-prefix",
            &prefix,
            "--partitions",
            "8",
            "--replies-partitions",
            &copies.to_string(),
        ],
    )?;
    let common = |cmd: &str| -> Vec<String> {
        vec![
            cmd.into(),
            "--kafka".into(),
            args.kafka.clone(),
            "--postgres".into(),
            db.clone(),
            "--topic-prefix".into(),
            prefix.clone(),
            "--log".into(),
            "warn".into(),
        ]
    };
    for i in 0..copies {
        let mut a = common("engine");
        a.extend([
            // Capacity, not failover, is measured: the default 600 ms session is
            // shorter than a rebalance takes with both engines on one busy core, and
            // the group would lose its sessions and rebalance again and again. The
            // classic protocol, whose session is the flag below (under the default
            // consumer protocol it would be the broker's, whatever that is).
            "--group-protocol".into(),
            "classic".into(),
            "--session-timeout-ms".into(),
            ENGINE_SESSION_MS.to_string(),
            "--heartbeat-interval-ms".into(),
            (ENGINE_SESSION_MS / 6).to_string(),
            "--engine-group".into(),
            tag.to_string(),
            "--data-dir".into(),
            logs.join(format!("{tag}-engine{i}")).display().to_string(),
        ]);
        dep.procs
            .push(spawn(bin, &format!("{tag}-engine{i}"), &a, logs, pin)?);
    }
    for i in 0..copies {
        let mut a = common("gateway");
        a.extend([
            "--gateway-id".into(),
            i.to_string(),
            "--data-dir".into(),
            logs.join(format!("{tag}-gateway{i}")).display().to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", args.port + i),
            "--admin-token".into(),
            TOKEN.into(),
        ]);
        dep.procs
            .push(spawn(bin, &format!("{tag}-gateway{i}"), &a, logs, pin)?);
    }
    dep.procs.push(spawn(
        bin,
        &format!("{tag}-projector"),
        &common("projector"),
        logs,
        pin,
    )?);
    if copies > 1 {
        let follower = client(args.port + 1, 4)?;
        crate::runner::wait_ready(&follower, super::READY_WAIT).await?;
    }
    crate::runner::wait_ready(&dep.client, super::READY_WAIT).await?;
    // Spawned in order: the engines, the gateways, the projector.
    let c = usize::from(copies);
    let mut w = (0..c)
        .map(|i| (format!("gateway{i}"), dep.procs[c + i].pid()))
        .chain((0..c).map(|i| (format!("engine{i}"), dep.procs[i].pid())))
        .chain([(ROLE_PROJECTOR.to_string(), dep.procs[2 * c].pid())])
        .map(|(n, p)| Watched {
            name: n,
            pids: vec![p],
            own: true,
        })
        .collect::<Vec<_>>();
    // The broker this deployment uses: the one listening on --kafka's port (several
    // may run on the machine); else every `kafka.Kafka` process.
    let port = args.kafka.rsplit(':').next().unwrap_or("");
    let mut broker = listener_pid(port).into_iter().collect::<Vec<_>>();
    if broker.is_empty() {
        broker = pgrep(&["-f", "kafka\\.Kafka"]);
    }
    // A shared service's processes are watched (not ours to stop), or a note says why
    // its cost is missing.
    let mut watch_service = |name: &str, pids: Vec<u32>, missing: &str| {
        if pids.is_empty() {
            notes.push(format!("kafka: {missing}: its cost is not measured"));
        } else {
            w.push(Watched {
                name: name.into(),
                pids,
                own: false,
            });
        }
    };
    watch_service(
        ROLE_BROKER,
        broker,
        "no broker process found on this machine (pgrep -f kafka.Kafka)",
    );
    watch_service(
        ROLE_POSTGRES,
        pgrep(&["-x", "postgres"]),
        "no postgres process on this machine",
    );
    dep.watched = w;
    Ok(dep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count_their_cpus() {
        assert_eq!(cpu_list_len("0-1"), Some(2));
        assert_eq!(cpu_list_len("0"), Some(1));
        assert_eq!(cpu_list_len("0-3,6,8-9"), Some(7));
        assert_eq!(cpu_list_len(""), None);
        assert_eq!(cpu_list_len("3-1"), None);
    }
}

//! Shared support for the integration tests: start a real server (in-process on
//! 127.0.0.1:0, or the `flashsale` binary as a child process for crash tests), talk
//! to it over HTTP, and create sales.
//!
//! Modes: every HTTP scenario runs against [`Mode::Embedded`]; [`Mode::Kafka`] runs it
//! against real Kafka + Postgres when `.services.env` / `FLASHSALE_KAFKA` provide
//! them (see `make services-up`).

use anyhow::Context;
use flashsale_ops::config::ServeConfig;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;

pub mod kafka;
pub mod otlp;

pub use reqwest;
pub use serde_json;

pub const TOKEN: &str = "test-admin-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Embedded,
    Kafka,
}

/// A server's config as a test wants it: loopback, port 0, a fresh data dir, a known
/// token, the per-user rate limit off (tests that check it turn it on), 4 partitions,
/// admission and queues wide open; the rest the flags' defaults.
pub fn serve_args(data_dir: PathBuf) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().expect("valid addr"),
        admin_token: Some(TOKEN.into()),
        data_dir,
        partitions: 4,
        reply_deadline_ms: 5000,
        max_in_flight: Some(20_000),
        max_in_flight_per_partition: Some(20_000),
        queue_depth: 16_384,
        rate_limit_per_user: 0,
        // Latency-driven shedding off: a loaded test machine must not turn a test's
        // holds into 503s (tests/admission.rs sets its own values to test it).
        http: flashsale_ops::config::HttpConfig {
            admission_max_wait_ms: 0,
            admission_target_ms: 0,
            admission_max_lag_ms: 0,
            ..Default::default()
        },
        ..ServeConfig::default()
    }
}

/// A running server and an HTTP client for it.
pub struct TestServer {
    pub base: String,
    pub client: reqwest::Client,
    pub mode: Mode,
    /// Embedded mode: the server's data directory (for the operators' tools).
    pub data_dir: PathBuf,
    running: Option<flashsale_ops::Running>,
    _dir: tempfile::TempDir,
}

/// One HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Answer {
    /// The `error` title of an error body.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or("")
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

impl TestServer {
    /// Starts a server in `mode` with `tweak` applied to the default flags. Returns
    /// `None` (after saying why) when that mode's services are not configured.
    pub async fn start_with(
        mode: Mode,
        tweak: impl FnOnce(&mut ServeConfig),
    ) -> Option<TestServer> {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = serve_args(dir.path().join("data"));
        tweak(&mut args);
        let data_dir = args.data_dir.clone();
        let running = match mode {
            Mode::Embedded => flashsale_ops::start(args).await.expect("server starts"),
            Mode::Kafka => {
                let svc = kafka::services_or_skip("Kafka mode")?;
                kafka::start_in_process(args, &svc)
                    .await
                    .expect("Kafka-mode server starts")
            }
        };
        let base = format!("http://{}", running.addr);
        let s = TestServer {
            base,
            client: client(),
            mode,
            data_dir,
            running: Some(running),
            _dir: dir,
        };
        s.wait_ready().await;
        Some(s)
    }

    pub async fn start(mode: Mode) -> Option<TestServer> {
        Self::start_with(mode, |_| {}).await
    }

    pub async fn embedded() -> TestServer {
        Self::start(Mode::Embedded)
            .await
            .expect("embedded mode always starts")
    }

    /// Polls `/ready` (bounded: 60 s).
    pub async fn wait_ready(&self) {
        wait_ready(&self.client, &self.base).await
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
    }

    /// Stops the server and hands over its temp dir (with `data_dir`) instead of
    /// deleting it.
    pub async fn stop_keeping_data(mut self) -> tempfile::TempDir {
        if let Some(r) = self.running.take() {
            r.stop().await.expect("clean stop");
        }
        self._dir
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Answer {
        call(&self.client, &self.base, method, path, body, headers).await
    }
    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, &[]).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Answer {
        self.call(Method::POST, path, Some(body), &[]).await
    }
    pub async fn admin_post(&self, path: &str, body: Value) -> Answer {
        self.call(
            Method::POST,
            path,
            Some(body),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await
    }
    pub async fn reserve(&self, user: &str, sku: &str, quantity: u64) -> Answer {
        self.post(
            "/api/v1/reservations",
            json!({"userId": user, "skuId": sku, "quantity": quantity}),
        )
        .await
    }
    /// [`TestServer::reserve`] of one unit, with owned ids (for many at once).
    pub async fn reserve_owned(&self, user: String, sku: String) -> Answer {
        self.reserve(&user, &sku, 1).await
    }
    pub async fn checkout(&self, reservation_id: &str, payment: &str) -> Answer {
        self.post(
            "/api/v1/orders/checkout",
            json!({"reservationId": reservation_id, "paymentTransactionId": payment,
                   "paymentMethod": "CREDIT_CARD", "shippingAddress": "123 Main St, City, State 12345"}),
        )
        .await
    }
    /// Creates a sale (open now unless `starts_in_s` says otherwise) and returns its id.
    pub async fn create_sale(
        &self,
        products: &[(&str, u64, u64)],
        ttl_s: u64,
        starts_in_s: i64,
    ) -> String {
        create_sale(&self.client, &self.base, products, ttl_s, starts_in_s).await
    }
}

pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    for _ in 0..600 {
        if let Ok(r) = client.get(format!("{base}/ready")).send().await {
            if r.status() == StatusCode::OK {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("server at {base} not ready within 60 s");
}

pub async fn call(
    client: &reqwest::Client,
    base: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("request to {path} failed: {e}"));
    let status = res.status();
    let headers = res.headers().clone();
    let text = res.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer {
        status,
        headers,
        body,
    }
}

/// RFC 3339 of now + `secs`.
pub fn time_in(secs: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::seconds(secs))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// products: (skuId, totalInventory, perUserLimit)
pub async fn create_sale(
    client: &reqwest::Client,
    base: &str,
    products: &[(&str, u64, u64)],
    ttl_s: u64,
    starts_in_s: i64,
) -> String {
    let products: Vec<Value> = products
        .iter()
        .map(|(sku, total, limit)| {
            json!({"skuId": sku, "name": format!("Product {sku}"), "category": "Electronics",
                   "basePrice": 1299.99, "flashSalePrice": 999.99, "totalInventory": total, "perUserLimit": limit})
        })
        .collect();
    let body = json!({"name": "Test Sale", "startsAt": time_in(starts_in_s), "endsAt": time_in(starts_in_s + 7200),
                      "reservationTtlSeconds": ttl_s, "products": products});
    let a = call(
        client,
        base,
        Method::POST,
        "/api/v1/admin/sales",
        Some(body),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "create sale: {:?}", a.body);
    a.body["saleId"].as_str().expect("saleId").to_string()
}

/// A unique SKU name per test run, so tests sharing Kafka topics never collide.
pub fn unique_sku(prefix: &str) -> String {
    format!("{prefix}-{}", ulid_like())
}

fn ulid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "{:x}{}{}",
        t,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The `flashsale` binary built next to the test executables (`make test` builds it
/// first: `cargo build --bin flashsale`).
pub fn flashsale_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test exe path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let bin = dir.join("flashsale");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build --bin flashsale` first (make test does)",
        bin.display()
    );
    bin
}

/// The `flashsale` binary running as a child process (for kill -9 tests).
pub struct ChildServer {
    pub child: std::process::Child,
    pub base: String,
}

impl ChildServer {
    /// Starts `flashsale serve` on a free port with `data_dir`, waiting until ready.
    pub async fn start(
        data_dir: &std::path::Path,
        port: u16,
        extra: &[&str],
    ) -> anyhow::Result<ChildServer> {
        Self::start_logged(data_dir, port, extra, None).await
    }

    /// [`ChildServer::start`] with the server's stderr appended to `log` (a restart adds
    /// to the same file), for a failure message to show; `None` drops it.
    pub async fn start_logged(
        data_dir: &std::path::Path,
        port: u16,
        extra: &[&str],
        log: Option<&std::path::Path>,
    ) -> anyhow::Result<ChildServer> {
        let stderr = match log {
            Some(path) => std::process::Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .context("the server's log file")?,
            ),
            None => std::process::Stdio::null(),
        };
        let child = std::process::Command::new(flashsale_bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--data-dir", data_dir.to_str().context("utf-8 path")?])
            .args([
                "--admin-token",
                TOKEN,
                "--partitions",
                "4",
                "--rate-limit-per-user",
                "0",
            ])
            .args(extra)
            // Embedded mode even when the services' variables are exported.
            .env_remove("FLASHSALE_KAFKA")
            .env_remove("FLASHSALE_POSTGRES")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("spawn flashsale")?;
        let base = format!("http://127.0.0.1:{port}");
        let s = ChildServer { child, base };
        wait_ready(&client(), &s.base).await;
        Ok(s)
    }

    /// SIGKILL: no shutdown hooks, no final snapshot.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound and released; good enough for tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Runs each named `async fn(&TestServer)` once in embedded mode and once in Kafka
/// mode (skipped with a message when the services are not configured).
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use $crate::{Mode, TestServer};
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let s = TestServer::start(Mode::Embedded).await.expect("embedded starts");
                super::$name(&s).await;
                s.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn kafka() {
                if let Some(s) = TestServer::start(Mode::Kafka).await {
                    super::$name(&s).await;
                    s.stop().await;
                }
            }
        }
    )*};
}

/// Polls `f` every 200 ms until it returns `Some` (the value), panicking with `what`
/// after `secs` seconds: the tests' one bounded wait for a condition.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {secs} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

//! The operators' console in a real browser: Debian's headless `chromium`, driven over
//! the Chrome DevTools protocol (a small client below on `tokio-tungstenite`: four
//! methods are all it needs), against an embedded server in this process.
//!
//! It loads `/console`; a wrong token shows an error on the page (and the stream
//! answers 401 to it); the right one shows the sale; the stock of a product falls as
//! holds are made through the API and matches `GET …/availability` each time;
//! "Pause" (its confirmation accepted) pauses the product, and a reservation is then
//! refused with 409. A screenshot is saved as `$CARGO_TARGET_TMPDIR/console.png` (its
//! path is printed).
//!
//! A page opened after the fact shows what happened before it opened (the history the
//! server keeps), its y axes read "10M" for a 10-million-unit sale (not a clipped
//! "0,000"), and its health strip says ready, with a warning colour while buyers get
//! 429s. Without `chromium` on PATH the test skips with a line, unless
//! FLASHSALE_REQUIRE_SERVICES=1 (or FLASHSALE_REQUIRE_BROWSER=1), where it fails.

use anyhow::{bail, Context};
use flashsale_tests::reqwest::StatusCode;
use flashsale_tests::serde_json::{json, Value};
use flashsale_tests::*;
use futures::{SinkExt, StreamExt};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// A wait for one thing the page should show (the machine may be loaded).
const PATIENCE: Duration = Duration::from_secs(60);

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn browser_required() -> bool {
    ["FLASHSALE_REQUIRE_SERVICES", "FLASHSALE_REQUIRE_BROWSER"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| v == "1"))
}

/// Headless Chromium with its own profile, killed when dropped.
struct Browser {
    child: tokio::process::Child,
    /// `http://127.0.0.1:PORT` of its DevTools endpoint.
    devtools: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn launch(chromium: &Path) -> anyhow::Result<Browser> {
        let profile = tempfile::tempdir()?;
        let mut child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("start chromium")?;
        let stderr = child.stderr.take().context("chromium's stderr")?;
        let mut lines = BufReader::new(stderr).lines();
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/<id>"
        let ws = tokio::time::timeout(PATIENCE, async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return Ok(url.trim().to_string());
                }
            }
            bail!("chromium exited before opening its DevTools port")
        })
        .await
        .context("chromium did not open its DevTools port within 60 s")??;
        // Keep reading its stderr so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let hostport = ws
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .context("DevTools URL")?;
        Ok(Browser {
            child,
            devtools: format!("http://{hostport}"),
            _profile: profile,
        })
    }

    /// The DevTools WebSocket URL of the (one) page.
    async fn page_url(&self) -> anyhow::Result<String> {
        let targets: Value = client()
            .get(format!("{}/json/list", self.devtools))
            .send()
            .await?
            .json()
            .await?;
        targets
            .as_array()
            .and_then(|t| t.iter().find(|t| t["type"] == "page"))
            .and_then(|t| t["webSocketDebuggerUrl"].as_str())
            .map(str::to_string)
            .context("no page target")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

type Waiters = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A DevTools protocol session with one page: commands by id, and every JavaScript
/// dialog (the console's confirmations) accepted as it opens, its text kept.
struct Page {
    out: mpsc::UnboundedSender<String>,
    waiters: Waiters,
    next_id: Arc<AtomicU64>,
    dialogs: Arc<Mutex<Vec<String>>>,
}

impl Page {
    async fn connect(ws_url: &str) -> anyhow::Result<Page> {
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .context("connect to the page's DevTools socket")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let waiters: Waiters = Arc::default();
        let next_id = Arc::new(AtomicU64::new(1));
        let dialogs: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let (waiters, next_id, dialogs, out) = (
                waiters.clone(),
                next_id.clone(),
                dialogs.clone(),
                out.clone(),
            );
            tokio::spawn(async move {
                while let Some(Ok(msg)) = stream.next().await {
                    let Message::Text(text) = msg else { continue };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if let Some(id) = v["id"].as_u64() {
                        if let Some(w) = waiters.lock().unwrap().remove(&id) {
                            let _ = w.send(v);
                        }
                    } else if v["method"] == "Page.javascriptDialogOpening" {
                        let message = v["params"]["message"].as_str().unwrap_or("").to_string();
                        dialogs.lock().unwrap().push(message);
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        let _ = out.send(
                            json!({"id": id, "method": "Page.handleJavaScriptDialog",
                                   "params": {"accept": true}})
                            .to_string(),
                        );
                    }
                }
            });
        }
        let page = Page {
            out,
            waiters,
            next_id,
            dialogs,
        };
        page.call("Page.enable", json!({})).await?;
        Ok(page)
    }

    async fn call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().unwrap().insert(id, tx);
        self.out
            .send(json!({"id": id, "method": method, "params": params}).to_string())
            .context("DevTools socket closed")?;
        let v = tokio::time::timeout(PATIENCE, rx)
            .await
            .with_context(|| format!("{method}: no answer within 60 s"))?
            .context("DevTools socket closed")?;
        if !v["error"].is_null() {
            bail!("{method}: {}", v["error"]);
        }
        Ok(v["result"].clone())
    }

    /// Evaluates `js` in the page; its value (JSON).
    async fn eval(&self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await
            .unwrap_or_else(|e| panic!("evaluate {js}: {e:#}"));
        if !r["exceptionDetails"].is_null() {
            panic!("{js} threw: {}", r["exceptionDetails"]);
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` until it gives something other than null/false (bounded).
    async fn wait_for(&self, what: &str, js: &str) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let v = self.eval(js).await;
            if !(v.is_null() || v == false) {
                return v;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText").await;
                panic!("the page did not show {what} within 60 s; it shows:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self, path: &Path) -> anyhow::Result<usize> {
        use base64::Engine;
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().context("screenshot data")?)?;
        std::fs::write(path, &png)?;
        Ok(png.len())
    }
}

/// JS: the text of one cell of the product's row, or null while the row is absent.
fn cell(sku: &str, class: &str) -> String {
    format!(
        "(() => {{ const r = document.querySelector('tr[data-sku=\"{sku}\"]'); \
         const c = r && r.querySelector('td.{class}'); return c ? c.textContent : null; }})()"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_headless_chromium() {
    let Some(chromium) = on_path("chromium") else {
        assert!(
            !browser_required(),
            "chromium is not on PATH but FLASHSALE_REQUIRE_SERVICES=1 / FLASHSALE_REQUIRE_BROWSER=1: install it (`bash ops/ensure-tools.sh`, or apt-get install chromium)"
        );
        eprintln!("console_in_headless_chromium: skipped: chromium is not on PATH (bash ops/ensure-tools.sh installs it)");
        return;
    };
    let s = TestServer::embedded().await;
    let sku = "CONSOLE-PHONE";
    s.create_sale(&[(sku, 10, 1), ("CONSOLE-CASE", 40, 2)], 120, -1)
        .await;
    let browser = Browser::launch(&chromium).await.expect("chromium starts");
    let page = Page::connect(&browser.page_url().await.expect("a page"))
        .await
        .expect("DevTools session");
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/console", s.base)}),
    )
    .await
    .expect("navigate");
    page.wait_for(
        "the token form",
        "document.readyState === 'complete' && !!document.querySelector('#token') && !document.querySelector('#login').hidden",
    )
    .await;

    // A wrong token: an error on the page, and 401 from the stream.
    let submit = |t: &str| {
        format!(
            "document.querySelector('#token').value = {}; document.querySelector('#connect').click(); true",
            json!(t)
        )
    };
    page.eval(&submit("not-the-token")).await;
    let error = page
        .wait_for(
            "an error for the wrong token",
            "(() => { const e = document.querySelector('#error'); return !e.hidden && e.textContent.includes('401') ? e.textContent : null; })()",
        )
        .await;
    assert!(
        error.as_str().unwrap().contains("Wrong admin token"),
        "{error}"
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('flashsale.adminToken')")
            .await,
        Value::Null,
        "a refused token is not kept"
    );
    let res = s
        .client
        .get(format!("{}/api/v1/admin/stream", s.base))
        .header("authorization", "Bearer not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // The right token: the sale shows, the token stays in this tab's session storage only.
    page.eval(&submit(TOKEN)).await;
    let shown = page
        .wait_for("the product's stock", &cell(sku, "available"))
        .await;
    assert_eq!(shown, "10");
    assert_eq!(
        page.eval("document.querySelector('#error').hidden").await,
        true,
        "the error is gone"
    );
    assert_eq!(
        page.eval("sessionStorage.getItem('flashsale.adminToken')")
            .await,
        TOKEN
    );
    assert_eq!(
        page.eval(&format!("location.href.includes({})", json!(TOKEN)))
            .await,
        false
    );

    // Holds through the API: the page's stock falls with each and matches the API.
    let mut seen = vec![10];
    for i in 0..3 {
        let a = s.reserve(&format!("browser-user-{i}"), sku, 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        let api = s
            .get(&format!("/api/v1/products/{sku}/availability"))
            .await
            .body["availableCount"]
            .as_u64()
            .unwrap();
        let js = format!(
            "(() => {{ const v = {}; return v === '{api}' ? v : null; }})()",
            cell(sku, "available")
        );
        page.wait_for(&format!("{api} available, as the API says"), &js)
            .await;
        seen.push(api);
    }
    assert_eq!(seen, [10, 9, 8, 7], "the stock fell by one per hold");
    assert_eq!(page.eval(&cell(sku, "held")).await, "3", "three units held");

    // Pause, with its confirmation accepted: the page shows it, the API refuses holds.
    page.eval(&format!(
        "setTimeout(() => document.querySelector('tr[data-sku=\"{sku}\"] button.pause').click(), 0); true"
    ))
    .await;
    page.wait_for(
        "the product paused",
        &format!("{} === 'paused'", cell(sku, "state")),
    )
    .await;
    let dialogs = page.dialogs.lock().unwrap().clone();
    assert!(
        dialogs
            .iter()
            .any(|d| d.starts_with(&format!("Pause {sku}?"))),
        "a confirmation was asked: {dialogs:?}"
    );
    let refused = s.reserve("browser-user-late", sku, 1).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{}", refused.body);
    assert_eq!(refused.error(), "Sale Not Active");
    assert_eq!(refused.body["details"]["paused"], true);
    page.wait_for(
        "the action in the page's log",
        &format!("document.querySelector('#log').textContent.includes('pause {sku}: done')"),
    )
    .await;

    // A screenshot for people to look at (let the charts draw a few points first).
    page.wait_for(
        "a few chart points",
        "document.querySelectorAll('.uplot').length === 4",
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let png = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    std::fs::create_dir_all(png.parent().unwrap()).unwrap();
    let bytes = page.screenshot(&png).await.expect("screenshot");
    assert!(
        bytes > 20_000,
        "a rendered page, not a blank one: {bytes} bytes"
    );
    println!("console screenshot: {}", png.display());
    eprintln!("console screenshot: {}", png.display());

    drop(page);
    drop(browser);
    s.stop().await;
}

/// The first event of the console's stream (history included).
async fn first_event(s: &TestServer) -> Value {
    let mut res = s
        .client
        .get(format!("{}/api/v1/admin/stream", s.base))
        .header("authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    let mut buf = String::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        if let Some(end) = buf.find("\n\n") {
            let data: String = buf[..end]
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            return serde_json::from_str(&data).expect("a JSON event");
        }
    }
    panic!("the stream ended before its first event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_opened_later_shows_the_history_axes_and_health() {
    let Some(chromium) = on_path("chromium") else {
        assert!(
            !browser_required(),
            "chromium is not on PATH but FLASHSALE_REQUIRE_SERVICES=1 / FLASHSALE_REQUIRE_BROWSER=1"
        );
        eprintln!("a_console_opened_later_shows_the_history_axes_and_health: skipped: chromium is not on PATH");
        return;
    };
    // The per-user rate limit on (1/s, burst 2), for 429s.
    let s = TestServer::start_with(Mode::Embedded, |a| {
        a.rate_limit_per_user = 1;
        a.rate_limit_burst = 2;
    })
    .await
    .expect("embedded mode always starts");
    let hot = "HISTORY-HOT-SKU-WITH-A-RATHER-LONG-IDENTIFIER-0001";
    s.create_sale(&[(hot, 2_000, 1)], 120, -1).await;
    s.create_sale(&[("HISTORY-BIG", 10_000_000, 1)], 120, -1)
        .await;
    // Holds before any console is open.
    for i in 0..5 {
        let a = s.reserve(&format!("early-user-{i}"), hot, 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    // The server's history has the holds (a point a second) before the page opens.
    let before = eventually("history with the early holds", 60, || async {
        let ev = first_event(&s).await;
        let held = ev["history"]["products"][hot]["held"].as_array()?.clone();
        (held.iter().any(|v| v.as_u64() == Some(5)) && ev["history"]["t"].as_array()?.len() >= 3)
            .then_some(ev)
    })
    .await;
    let first_t = before["history"]["t"][0].as_u64().unwrap();
    assert!(before["health"]["ready"] == true, "{}", before["health"]);
    assert_eq!(before["health"]["partitions"], 4);

    let browser = Browser::launch(&chromium).await.expect("chromium starts");
    let page = Page::connect(&browser.page_url().await.expect("a page"))
        .await
        .expect("DevTools session");
    page.call(
        "Page.navigate",
        json!({"url": format!("{}/console", s.base)}),
    )
    .await
    .expect("navigate");
    page.wait_for(
        "the token form",
        "document.readyState === 'complete' && !!document.querySelector('#token') && !document.querySelector('#login').hidden",
    )
    .await;
    page.eval(&format!(
        "document.querySelector('#token').value = {}; document.querySelector('#connect').click(); true",
        json!(TOKEN)
    ))
    .await;

    // History from before the page opened: the page's first point is the server's.
    let t0 = page
        .wait_for(
            "the history",
            "(() => { const h = window.flashsaleConsole.history; return h.t.length >= 3 ? h.t[0] : null; })()",
        )
        .await;
    assert!(
        t0.as_f64().unwrap() * 1000.0 <= first_t as f64 + 1.0,
        "the page starts at the server's first point ({first_t} ms), not at its own opening: {t0}"
    );
    let held_then = page
        .eval(&format!(
            "window.flashsaleConsole.history.products[{}].held.filter(v => v === 5).length",
            json!(hot)
        ))
        .await;
    assert!(held_then.as_u64().unwrap() >= 1, "{held_then}");

    // Axes: any magnitude with SI suffixes; the big sale reads 10M, never "0,000".
    assert_eq!(
        page.eval("window.flashsaleConsole.si(10000000)").await,
        "10M"
    );
    assert_eq!(page.eval("window.flashsaleConsole.si(1500)").await, "1.5k");
    assert_eq!(page.eval("window.flashsaleConsole.si(2.5e9)").await, "2.5G");
    assert_eq!(page.eval("window.flashsaleConsole.si(7)").await, "7");
    page.eval(
        "(() => { const sel = document.querySelector('#view'); \
           const o = [...sel.options].find(o => o.value.startsWith('sku:HISTORY-BIG')); \
           sel.value = o.value; sel.dispatchEvent(new Event('change')); return true; })()",
    )
    .await;
    let labels = page
        .wait_for(
            "y labels of the big product's stock",
            "(() => { const l = window.flashsaleConsole.yLabels('stock'); \
               return l && l.some(x => x.text.endsWith('M')) ? l : null; })()",
        )
        .await;
    for l in labels.as_array().unwrap() {
        let text = l["text"].as_str().unwrap();
        assert!(
            !text.contains(',') && text.len() <= 6 && l["fits"] == true,
            "every y label is short, has no thousands separator and fits its axis: {labels}"
        );
    }
    // The hot product on its own scale: its stock, not the sum with 10M.
    page.eval(&format!(
        "(() => {{ const sel = document.querySelector('#view'); sel.value = {}; \
           sel.dispatchEvent(new Event('change')); return true; }})()",
        json!(format!("sku:{hot}"))
    ))
    .await;
    page.wait_for(
        "the hot product's legend",
        "document.querySelector('#legend-stock').textContent.includes('available 1,995')",
    )
    .await;
    assert!(
        !page
            .eval("document.querySelector('#legend-stock').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("--"),
        "legends show values without hovering"
    );

    // Health strip: ready and the partition count; 5xx and partitions in green.
    let tile = |key: &str| {
        format!(
            "(() => {{ const t = document.querySelector('#health .tile[data-key=\"{key}\"]'); \
               return t ? [t.dataset.level, t.textContent] : null; }})()"
        )
    };
    let ready = page.wait_for("the ready tile", &tile("ready")).await;
    assert_eq!(ready[0], "ok", "{ready}");
    assert!(
        ready[1].as_str().unwrap().contains("ready")
            && ready[1].as_str().unwrap().contains("4 partitions"),
        "{ready}"
    );
    for key in ["down", "blocked", "errors"] {
        assert_eq!(page.eval(&tile(key)).await[0], "ok", "{key}");
    }
    assert!(page
        .eval("document.querySelector('#lag').textContent")
        .await
        .as_str()
        .unwrap()
        .contains("over 4 partitions"));
    // 429s (one user past the per-user limit) while the test watches: the tile warns.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let hammer = {
        let (client, base, stop) = (s.client.clone(), s.base.clone(), stop.clone());
        tokio::spawn(async move {
            for i in 0..1200 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let _ = client
                    .post(format!("{base}/api/v1/reservations"))
                    .json(&json!({"userId": "eager-user", "skuId": "HISTORY-BIG", "quantity": 1}))
                    .header("idempotency-key", format!("eager-{i}"))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let warned = page
        .wait_for(
            "the 429 tile in a warning colour",
            &format!(
                "(() => {{ const t = {}; return t && t[0] === 'warn' ? t : null; }})()",
                tile("rate-limited")
            ),
        )
        .await;
    stop.store(true, Ordering::Relaxed);
    let _ = hammer.await;
    assert!(warned[1].as_str().unwrap().contains("/s"), "{warned}");

    // Nothing sideways at 1280 px, even with the long SKU id.
    assert_eq!(
        page.eval("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
            .await,
        true,
        "the page scrolls sideways at 1280 px"
    );
    drop(page);
    drop(browser);
    s.stop().await;
}

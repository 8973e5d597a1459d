//! The operators' console feed and page without a browser (the browser test is
//! `console_browser.rs`): `GET /api/v1/admin/stream` answers 401 without or with a
//! wrong token, streams one JSON event at once and then every second with the stock
//! (matching `GET …/availability`), the outcomes counted from the log and this node's
//! own figures; at most 16 streams at once; an open stream never holds a graceful stop
//! back. `GET /console` serves the page. A fresh server's `/metrics` shows every known
//! `result` series at 0. Stream figures run in embedded and (with the services) Kafka
//! mode.

use flashsale_tests::reqwest::{self, StatusCode};
use flashsale_tests::serde_json::Value;
use flashsale_tests::*;
use std::time::{Duration, Instant};

both_modes!(stream_shows_the_whole_sale);

/// An open `text/event-stream` response, read event by event.
struct EventStream {
    res: reqwest::Response,
    buf: String,
}

impl EventStream {
    async fn open(s: &TestServer, token: &str) -> EventStream {
        let res = s
            .client
            .get(format!("{}/api/v1/admin/stream", s.base))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .expect("stream request");
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            res.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        EventStream {
            res,
            buf: String::new(),
        }
    }

    /// The next event's JSON, or `None` when the stream ended. Bounded: an event is
    /// due every second, so 30 s without one is a failure.
    async fn next(&mut self) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let data: Vec<&str> = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|l| l.strip_prefix(' ').unwrap_or(l))
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some(serde_json::from_str(&data.join("\n")).expect("event data is JSON"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.res.chunk())
                .await
                .expect("an event within 30 s")
                .expect("stream read");
            match chunk {
                Some(bytes) => self
                    .buf
                    .push_str(std::str::from_utf8(&bytes).expect("utf-8")),
                None => return None,
            }
        }
    }

    /// Reads events until `pred` holds for one (at most 60 events), returning it.
    async fn until(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..60 {
            let ev = self.next().await.expect("stream still open");
            if pred(&ev) {
                return ev;
            }
            last = ev;
        }
        panic!("no event with {what} in 60 events; last: {last}");
    }
}

fn product<'a>(ev: &'a Value, sku: &str) -> Option<&'a Value> {
    ev["sales"]
        .as_array()?
        .iter()
        .flat_map(|s| s["products"].as_array().into_iter().flatten())
        .find(|p| p["skuId"] == sku)
}

async fn stream_shows_the_whole_sale(s: &TestServer) {
    let sku = unique_sku("CONSOLE");
    let sale_id = s.create_sale(&[(&sku, 10, 1)], 120, -1).await;
    let mut st = EventStream::open(s, TOKEN).await;
    // The first event comes at once, with the sale as the read model has it.
    let first = st
        .until("the new product", |e| product(e, &sku).is_some())
        .await;
    let p = product(&first, &sku).unwrap();
    assert_eq!(p["availableCount"], 10, "{p}");
    assert_eq!(p["totalInventory"], 10);
    assert_eq!(p["paused"], false);
    let sale = first["sales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["saleId"] == sale_id.as_str())
        .expect("the sale is listed");
    assert_eq!(sale["status"], "ACTIVE");
    assert!(first["node"]["scope"]
        .as_str()
        .unwrap()
        .contains("this gateway"));
    assert!(first["engineLag"]["max"].is_u64(), "{}", first["engineLag"]);

    // Three holds and a checkout through the API.
    let mut ids = Vec::new();
    for i in 0..3 {
        let a = s.reserve(&format!("console-user-{i}"), &sku, 1).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
        ids.push(a.body["reservationId"].as_str().unwrap().to_string());
    }
    let c = s.checkout(&ids[0], "pay-console-1").await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let avail = s.get(&format!("/api/v1/products/{sku}/availability")).await;
    assert_eq!(avail.body["availableCount"], 7);
    // The stream catches up with the API's figures...
    let ev = st
        .until("7 available, 2 held, 1 sold", |e| {
            product(e, &sku).is_some_and(|p| {
                p["availableCount"] == avail.body["availableCount"]
                    && p["reservedCount"] == 2
                    && p["soldCount"] == 1
            })
        })
        .await;
    let sale = ev["sales"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["saleId"] == sale_id.as_str())
        .unwrap();
    assert!(sale["availableCount"].as_u64().unwrap() >= 7);
    // ...and the outcomes from the log add up to what happened: summed over the
    // events' intervals, 3 new holds and 1 confirmation (rates are per second).
    let mut held = 0.0;
    let mut confirmed = 0.0;
    let mut st2 = EventStream::open(s, TOKEN).await;
    st2.next().await.expect("baseline event");
    let a = s.reserve("console-user-9", &sku, 1).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let c = s.checkout(&ids[1], "pay-console-2").await;
    assert_eq!(c.status, StatusCode::CREATED, "{}", c.body);
    let mut node_ok = 0.0;
    for _ in 0..60 {
        let e = st2.next().await.expect("stream open");
        let secs = e["intervalMs"].as_f64().unwrap() / 1000.0;
        let r = &product(&e, &sku).expect("product listed")["holdsPerSecond"];
        held += r["reserved"].as_f64().unwrap() * secs;
        confirmed += r["confirmed"].as_f64().unwrap() * secs;
        node_ok += e["node"]["reservationsPerSecond"]["ok"].as_f64().unwrap() * secs;
        if held > 0.5 && confirmed > 0.5 && node_ok > 0.5 {
            assert!(e["node"]["latencyMs"]["count"].as_u64().is_some());
            break;
        }
    }
    assert!(
        (0.8..1.2).contains(&held),
        "one new hold since the baseline, got {held}"
    );
    assert!(
        (0.8..1.2).contains(&confirmed),
        "one checkout since the baseline, got {confirmed}"
    );
    assert!(
        (0.8..1.2).contains(&node_ok),
        "one ok attempt on this node, got {node_ok}"
    );

    // A pause shows.
    let a = s
        .admin_post(
            &format!("/api/v1/admin/products/{sku}/pause"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    st.until("the product paused", |e| {
        product(e, &sku).is_some_and(|p| p["paused"] == true && p["isActive"] == false)
    })
    .await;

    if s.mode == Mode::Kafka {
        // Every gateway measures lag against the commands topic itself.
        st.until("lag measured against the log", |e| {
            e["engineLag"]["source"] == "log"
                && e["engineLag"]["partitions"]
                    .as_array()
                    .is_some_and(|p| !p.is_empty())
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_needs_the_token() {
    let s = TestServer::embedded().await;
    for auth in [None, Some("Bearer wrong-token"), Some("wrong-token")] {
        let mut req = s.client.get(format!("{}/api/v1/admin/stream", s.base));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{auth:?}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "Unauthorized", "{body}");
        assert_eq!(body["path"], "/api/v1/admin/stream");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_end_at_shutdown() {
    let s = TestServer::embedded().await;
    let mut open = Vec::new();
    for _ in 0..16 {
        let mut st = EventStream::open(&s, TOKEN).await;
        st.next().await.expect("first event");
        open.push(st);
    }
    let a = s
        .call(
            reqwest::Method::GET,
            "/api/v1/admin/stream",
            None,
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.body);
    assert!(
        a.body["message"].as_str().unwrap().contains("16"),
        "{}",
        a.body
    );
    assert!(a.headers.contains_key("retry-after"));
    // One closed frees a place.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        let res = s
            .client
            .get(format!("{}/api/v1/admin/stream", s.base))
            .header("authorization", format!("Bearer {TOKEN}"))
            .send()
            .await
            .unwrap();
        if res.status() == StatusCode::OK {
            again = Some(res);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        again.is_some(),
        "a stream place is free again once one closed"
    );
    drop(again);
    // The server stops although 15 streams are open (the drain time is 10 s; the
    // streams end at once), and each stream ends instead of hanging.
    let stop = tokio::spawn(s.stop());
    for mut st in open {
        let mut ended = false;
        for _ in 0..5 {
            if st.next().await.is_none() {
                ended = true;
                break;
            }
        }
        assert!(ended, "the stream ended at shutdown");
    }
    tokio::time::timeout(Duration::from_secs(60), stop)
        .await
        .expect("graceful stop with open streams")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_page_is_served() {
    let s = TestServer::embedded().await;
    let res = s
        .client
        .get(format!("{}/console", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let h = res.headers().clone();
    assert!(h["content-type"].to_str().unwrap().starts_with("text/html"));
    let csp = h["content-security-policy"].to_str().unwrap().to_string();
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert_eq!(h["cache-control"], "no-store");
    let page = res.text().await.unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("a script nonce");
    assert!(page.contains(&format!("<script nonce=\"{nonce}\">")));
    assert!(page.contains("/api/v1/admin/stream"));
    assert!(page.contains("id=\"token\""));
    s.stop().await;
}

/// docs/observability.md: series whose labels are known up front start at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_metrics_show_every_known_result_at_zero() {
    let s = TestServer::embedded().await;
    let text = s
        .client
        .get(format!("{}/metrics", s.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for r in flashsale_runtime::metrics::RESERVATION_RESULTS {
        let line = format!("flashsale_reservation_total{{result=\"{r}\"}} 0");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for r in flashsale_runtime::metrics::ORDER_RESULTS {
        let line = format!("flashsale_order_total{{result=\"{r}\"}} 0");
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
    for name in [
        "flashsale_inventory_stockout_total 0",
        "flashsale_reservation_latency_seconds_count 0",
    ] {
        assert!(text.lines().any(|l| l == name), "{name} missing:\n{text}");
    }
    s.stop().await;
}

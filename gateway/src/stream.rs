//! `GET /api/v1/admin/stream`: the operators' live figures as Server-Sent Events, one
//! `data:` JSON event at once and then every second (docs/api.md, "GET /console"). The
//! console page (`GET /console`, [`crate::console`]) is its reader.
//!
//! Where each figure comes from, so that in Kafka mode every gateway shows the whole
//! sale and says which figures are its own:
//! - stock (available / held / sold / total, paused, end of the window): the read model,
//!   which follows every partition's events (the whole sale in either mode);
//! - holds per second by outcome (new holds, confirmed, expired, cancelled, extended)
//!   and stock-outs per product: [`Activity`], counted from the same events as the read
//!   model applies them (the whole sale);
//! - reservation attempts per second by API result (`ok`, `out_of_stock`, …), orders
//!   per second, p50/p99 latency: this node's own requests (the refusals never reach the
//!   log, so no other node can see them); the event puts them under `node`;
//! - engine lag per partition: command records not yet reflected in this gateway's view.
//!   In Kafka mode that is the `commands` topic's end minus what the read model has
//!   applied (the wiring probes the ends, [`spawn_log_end_probe`]); in embedded mode the
//!   engine's own count of records written but not applied.
//!
//! History: every gateway records one point a second ([`spawn_recorder`]) in a ring
//! of [`HISTORY_POINTS`] (16 minutes): per sale and per product (the first
//! [`MAX_PRODUCT_SERIES`]) stock and holds per second, this node's reservations per
//! second by result, p50/p99 of every attempt and of the holds alone, and its health
//! (ready, partitions down or write-blocked, engine lag per partition). The first
//! event of a stream carries the whole ring under `history`, each later one the points
//! added since, so a console opened at 10:01 shows 10:00.
//!
//! Bounded: at most [`MAX_STREAMS`] streams at once (503 past that), at most
//! [`MAX_SALES`] sales per event, [`HISTORY_POINTS`] points of at most [`MAX_SALES`]
//! sales and [`MAX_PRODUCT_SERIES`] products each, and every stream ends when the
//! server shuts down ([`Streams::close`]), so an open console never holds a graceful
//! stop back.
//!
//! This file holds the limits, [`Streams`] and the SSE endpoint; `activity` counts
//! outcomes from the events, `render` builds one event from two samples, and `history`
//! keeps and serialises the ring of points.

use crate::api::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

mod activity;
mod history;
mod render;

pub use activity::{Activity, SkuActivity};
pub use history::spawn_recorder;
use history::History;
use render::{render, Sample};

/// Streams open at once on one node (each costs a task and one JSON render a second).
pub const MAX_STREAMS: usize = 16;
/// Sales per event: active ones first, then upcoming, then ended, newest first.
pub const MAX_SALES: usize = 20;
/// One event at least this often.
pub const EVENT_EVERY: Duration = Duration::from_secs(1);
/// A probed log end older than this is not used (the probe is failing).
const LOG_ENDS_FRESH_FOR: Duration = Duration::from_secs(5);
/// Points of history kept (one a second): 16 minutes.
pub const HISTORY_POINTS: usize = 960;
/// Products with a history of their own: the first ones of the sales shown.
pub const MAX_PRODUCT_SERIES: usize = 64;

/// The node's open streams: the limit, the shutdown signal, and (Kafka mode) the
/// probed ends of the `commands` partitions.
#[derive(Debug)]
pub struct Streams {
    permits: Arc<Semaphore>,
    closed: watch::Sender<bool>,
    log_ends: Mutex<Option<(Vec<u64>, Instant)>>,
    history: Mutex<History>,
}

impl Default for Streams {
    fn default() -> Self {
        Streams {
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
            closed: watch::Sender::new(false),
            log_ends: Mutex::new(None),
            history: Mutex::new(History::default()),
        }
    }
}

impl Streams {
    /// Ends every open stream and refuses new ones (server shutdown).
    pub fn close(&self) {
        self.closed.send_replace(true);
        self.permits.close();
    }
    /// Streams open now.
    pub fn open(&self) -> usize {
        MAX_STREAMS.saturating_sub(self.permits.available_permits())
    }
    /// The newest end offset of each `commands` partition (Kafka mode's lag probe).
    pub fn set_log_ends(&self, ends: Vec<u64>) {
        *self.log_ends.lock().unwrap_or_else(|p| p.into_inner()) = Some((ends, Instant::now()));
    }
    /// Points recorded so far (at most [`HISTORY_POINTS`]).
    pub fn history_len(&self) -> usize {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .points
            .len()
    }
    fn fresh_log_ends(&self) -> Option<Vec<u64>> {
        let g = self.log_ends.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(_, at)| at.elapsed() < LOG_ENDS_FRESH_FOR)
            .map(|(e, _)| e.clone())
    }
}

/// Kafka mode: every second while a stream is open, asks `probe` (a blocking call to
/// the broker) for the end offset of each `commands` partition, so the console's lag
/// covers engines in other processes too. Stops with the returned task.
pub fn spawn_log_end_probe<F>(app: AppState, probe: F) -> tokio::task::JoinHandle<()>
where
    F: FnMut() -> anyhow::Result<Vec<u64>> + Send + 'static,
{
    let probe = Arc::new(Mutex::new(probe));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(EVENT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        let mut tick = 0u64;
        loop {
            every.tick().await;
            tick += 1;
            // Every second while a console watches; every 5 s for the history.
            if app.streams.open() == 0 && !tick.is_multiple_of(5) {
                continue;
            }
            let probe = probe.clone();
            let ends = tokio::task::spawn_blocking(move || {
                let mut p = probe.lock().unwrap_or_else(|p| p.into_inner());
                (*p)()
            })
            .await;
            match ends {
                Ok(Ok(ends)) => {
                    warned = false;
                    app.streams.set_log_ends(ends);
                }
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %format!("{e:#}"), "console: cannot read the commands topic's end offsets; engine lag shows this process's engine only");
                }
                Ok(Err(_)) => {}
                Err(e) => tracing::warn!(error = %e, "console: the log-end probe panicked"),
            }
        }
    })
}

/// `GET /api/v1/admin/stream` (Bearer auth).
pub async fn admin_stream(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = app.authorize(&headers) {
        return e.into_response();
    }
    let permit = match app.streams.permits.clone().try_acquire_owned() {
        Ok(p) => p,
        Err(tokio::sync::TryAcquireError::Closed) => {
            return ApiError::unavailable("The server is shutting down").into_response()
        }
        Err(tokio::sync::TryAcquireError::NoPermits) => {
            return ApiError::shed(&format!(
                "{MAX_STREAMS} console streams are open on this node (the limit); close one"
            ))
            .into_response()
        }
    };
    let closed = app.streams.closed.subscribe();
    let state = StreamState {
        app,
        _permit: permit,
        closed,
        prev: None,
        every: None,
        sent_through: None,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        match &mut st.every {
            None => {
                let mut every = tokio::time::interval(EVENT_EVERY);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await; // the first tick is now
                st.every = Some(every);
            }
            Some(every) => {
                tokio::select! {
                    _ = every.tick() => {}
                    _ = st.closed.wait_for(|c| *c) => return None,
                }
            }
        }
        if *st.closed.borrow() {
            return None;
        }
        let sample = Sample::take(&st.app);
        let mut body = render(&st.app, &sample, st.prev.as_ref());
        let (history, through) = st.app.streams.history_since(st.sent_through);
        body["history"] = history;
        st.sent_through = through.or(st.sent_through);
        st.prev = Some(sample);
        Some((
            Ok::<_, Infallible>(SseEvent::default().data(body.to_string())),
            st,
        ))
    });
    let mut res = Sse::new(events).into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies (nginx) must not hold the events back.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}

struct StreamState {
    app: AppState,
    _permit: OwnedSemaphorePermit,
    closed: watch::Receiver<bool>,
    prev: Option<Sample>,
    every: Option<tokio::time::Interval>,
    /// Time of the newest history point sent.
    sent_through: Option<u64>,
}

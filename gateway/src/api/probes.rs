//! What load balancers and monitoring ask: `/health`, `/ready` (reads, and with
//! `?writes` writes too), `/metrics`, and the layer that counts every 5xx answer.

use super::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::response::Response;
use axum::Json;
use serde_json::{json, Value};

/// Counts every 5xx answer of the API's handlers, for `/metrics` and the console's
/// health strip. `/ready`'s 503 is a probe's answer ("not ready yet"), not an error
/// served to a client: not counted.
pub(super) async fn count_server_errors(
    State(app): State<AppState>,
    uri: axum::http::Uri,
    res: Response,
) -> Response {
    if res.status().is_server_error() && uri.path() != "/ready" {
        app.metrics.http_server_error();
    }
    res
}

pub(super) async fn health() -> Json<Value> {
    Json(json!({"status": "UP"}))
}

/// `GET /ready`: can this node serve reads (every partition's data loaded)? For a
/// load balancer's read pool; 200 through a Kafka outage or a full disk, when reads
/// are served and writes are refused. `GET /ready?writes`: can it take writes too?
/// The body says both (`reads`, `writes`: "UP" or "DOWN") and why not.
pub(super) async fn ready(
    State(app): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> Result<Json<Value>, ApiError> {
    use crate::dispatch::PartitionStatus as S;
    let for_writes = q.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "writes" || kv.starts_with("writes="))
    });
    let (mut failed, mut blocked, mut recovering) = (Vec::new(), Vec::new(), Vec::new());
    let mut reasons: Vec<String> = Vec::new();
    for p in 0..app.dispatcher.partitions() {
        match app.dispatcher.partition_status(p) {
            S::Live => {}
            S::Recovering => recovering.push(p),
            S::Failed(e) => {
                if !reasons.contains(&e) {
                    reasons.push(e.clone());
                }
                failed.push(json!({"partition": p, "error": e}));
            }
            S::WriteBlocked(e) => blocked.push(json!({"partition": p, "error": e})),
        }
    }
    // `--ready-with-failed-partitions` (embedded): the bus reports ready while some
    // partitions are live, so a node with a refused partition stays in the balancer
    // for the products it can serve.
    let reads = recovering.is_empty() && (failed.is_empty() || app.dispatcher.is_ready());
    let writes = reads && blocked.is_empty() && app.dispatcher.is_ready();
    let up = |b: bool| if b { "UP" } else { "DOWN" };
    let mut body = json!({"status": "UP", "reads": up(reads), "writes": up(writes)});
    if !failed.is_empty() {
        body["failedPartitions"] = json!(failed);
    }
    if !blocked.is_empty() {
        body["writeBlockedPartitions"] = json!(blocked);
    }
    if !recovering.is_empty() {
        body["recoveringPartitions"] = json!(recovering);
    }
    if (!for_writes && reads) || writes {
        Ok(Json(body))
    } else {
        let message = if reasons.len() == 1 && failed.len() as u32 == app.dispatcher.partitions() {
            // One cause for the whole node (a topic recreated, in Kafka mode).
            reasons[0].clone()
        } else if !failed.is_empty() {
            "Some partitions failed recovery and are down (see details.failedPartitions); docs/operations.md, \"Storage damage and recovery\", says how to recover".to_string()
        } else if !recovering.is_empty() || !app.dispatcher.is_ready() {
            "Not every partition is owned and caught up yet".to_string()
        } else {
            "Some partitions cannot write their command log now (disk full, or the Kafka cluster unreachable); reads are served and writing is retried by itself".to_string()
        };
        body["status"] = json!("DOWN");
        Err(ApiError::unavailable_with(message, body))
    }
}

pub(super) async fn metrics(State(app): State<AppState>) -> Response {
    app.metrics.response()
}

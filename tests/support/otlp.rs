//! Real OTLP receivers for tests: a small axum server that accepts `POST /v1/traces`
//! (protobuf `ExportTraceServiceRequest`), or a tonic server of the OTLP gRPC
//! `TraceService`; both decode every request and record each span with its service
//! name.

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One received span, ids in lowercase hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP SpanKind: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    /// Request bodies received (to see that export happened at all).
    pub requests: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn value_text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> Vec<(String, String)> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), value_text(&kv.value)))
        .collect()
}

/// Records every span of one export request.
fn record(req: &ExportTraceServiceRequest, out: &Mutex<Vec<ReceivedSpan>>) {
    let mut out = out.lock().unwrap();
    for rs in &req.resource_spans {
        let service = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .and_then(|a| {
                a.into_iter()
                    .find(|(k, _)| k == "service.name")
                    .map(|(_, v)| v)
            })
            .unwrap_or_default();
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                out.push(ReceivedSpan {
                    service: service.clone(),
                    name: s.name.clone(),
                    trace_id: hex(&s.trace_id),
                    span_id: hex(&s.span_id),
                    parent_span_id: hex(&s.parent_span_id),
                    kind: s.kind,
                    attributes: attrs(&s.attributes),
                });
            }
        }
    }
}

/// The gRPC side: the OTLP `TraceService`.
struct GrpcSink {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<std::sync::atomic::AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for GrpcSink {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        record(req.get_ref(), &self.spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl OtlpReceiver {
    /// OTLP/HTTP (protobuf) on 127.0.0.1 (a free port).
    pub async fn start() -> OtlpReceiver {
        use axum::routing::post;
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let requests: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let (s2, r2) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            post(move |body: axum::body::Bytes| {
                let (spans, requests) = (s2.clone(), r2.clone());
                async move {
                    requests.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    record(&req, &spans);
                    // An empty ExportTraceServiceResponse.
                    (axum::http::StatusCode::OK, Vec::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        OtlpReceiver {
            addr,
            spans,
            requests,
            task,
        }
    }

    /// OTLP/gRPC (`TraceService/Export`) on 127.0.0.1 (a free port).
    pub async fn start_grpc() -> OtlpReceiver {
        let spans: Arc<Mutex<Vec<ReceivedSpan>>> = Arc::default();
        let requests: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let sink = GrpcSink {
            spans: spans.clone(),
            requests: requests.clone(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind OTLP receiver");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        OtlpReceiver {
            addr,
            spans,
            requests,
            task,
        }
    }

    /// `http://127.0.0.1:<port>`: the `--otlp-endpoint` to give.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded by `timeout`) until `done` holds for the spans received so far;
    /// returns them either way.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

//! Telemetry of one process: structured logs on stderr (text or JSON) and, when an
//! OTLP endpoint is configured, OpenTelemetry traces (docs/observability.md).
//!
//! A reservation is one trace: the gateway's HTTP request span, its `command` span
//! (produce the command record, await the reply), and the engine's `engine.apply` span
//! of that record, a child of the `command` span. The context travels with the record
//! as a W3C `traceparent`: a Kafka record header in Kafka mode; in embedded mode it
//! rides next to the record on its way in-process (writer thread → actor), and is never
//! written to the durable log, so replays and snapshots do not depend on tracing.
//!
//! Cost: the sampling decision is made once per HTTP request, before any span exists
//! (head sampling at `--trace-sample-ratio`, or the caller's `traceparent` flag). A
//! request left out, or any request while export is off, creates no span at all
//! (`Span::none()`; one relaxed load, plus one random number when export is on) and
//! propagates nothing, so the engine does no span work for it either. Trace spans use
//! their own target ([`TRACE_TARGET`]), which the log layer never records.
//!
//! What it does not do: metrics (those are Prometheus, [`crate::metrics`]), or log
//! bodies, headers or secrets: spans carry methods, routes, partitions, offsets and
//! outcomes only.

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Trace export (OpenTelemetry OTLP); off unless an endpoint is given. The variables
/// are OpenTelemetry's standard ones, so a deployment's usual settings apply.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// OTLP collector base URL (http:// only), e.g. http://127.0.0.1:4318 for OTLP/HTTP (spans go to <url>/v1/traces) or http://127.0.0.1:4317 for gRPC. Unset: no trace export.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: http/protobuf or grpc.
    #[arg(long, global = true, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::HttpProtobuf)]
    pub otlp_protocol: OtlpProtocol,
    /// Fraction of new traces recorded, 0.0-1.0. A request with a W3C traceparent follows its caller's decision (parent-based).
    #[arg(
        long,
        global = true,
        env = "FLASHSALE_TRACE_SAMPLE_RATIO",
        default_value_t = 0.01
    )]
    pub trace_sample_ratio: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    #[value(name = "http/protobuf", alias = "http")]
    HttpProtobuf,
    Grpc,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The target of every trace span. The log layer filters it out; the trace layer
/// takes only it (and warnings of this workspace, as span events).
pub const TRACE_TARGET: &str = "flashsale::trace";

/// Name of the Kafka record header that carries the context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

// Head sampling, decided once per HTTP request before any span exists, so the 99 % of
// requests a 1 % ratio leaves out cost a random number and nothing else (an unsampled
// OpenTelemetry span still allocates its builder, attributes and context). Global
// like the subscriber they belong to: set once by `init`, read by the middleware.
/// True when spans are exported.
static EXPORTING: AtomicBool = AtomicBool::new(false);
/// A request without a sampled parent starts a trace when a random u64 is below this.
static HEAD_SAMPLE_BELOW: AtomicU64 = AtomicU64::new(0);

/// Whether a request starts (or continues) a recorded trace: a caller's sampled
/// `traceparent` is followed, an unsampled one too (nothing is recorded), and a
/// request without one is sampled at `--trace-sample-ratio`.
fn head_sample(parent: Option<&TraceParent>) -> bool {
    if !EXPORTING.load(Ordering::Relaxed) {
        return false;
    }
    match parent {
        Some(tp) => tp.sampled(),
        None => match HEAD_SAMPLE_BELOW.load(Ordering::Relaxed) {
            0 => false,
            u64::MAX => true,
            below => rand::random::<u64>() < below,
        },
    }
}

/// True when the current span is one of ours (a request being traced).
fn in_trace() -> bool {
    EXPORTING.load(Ordering::Relaxed)
        && Span::current()
            .metadata()
            .is_some_and(|m| m.target() == TRACE_TARGET)
}

/// The process's telemetry; [`Telemetry::shutdown`] exports what is still buffered.
#[derive(Debug)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes and stops the exporter (bounded: 5 s). Blocking; call it outside the
    /// async runtime but while it still exists (the gRPC exporter runs on it).
    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            if let Err(e) = p.shutdown_with_timeout(Duration::from_secs(5)) {
                eprintln!("warning: traces not all exported at shutdown: {e}");
            }
        }
    }
}

/// The trace endpoint URL for `protocol`: OTLP/HTTP posts to `<base>/v1/traces` (as
/// `OTEL_EXPORTER_OTLP_ENDPOINT` means it), gRPC uses the base as it is.
pub fn traces_url(endpoint: &str, protocol: OtlpProtocol) -> String {
    let base = endpoint.trim_end_matches('/');
    match protocol {
        OtlpProtocol::Grpc => base.to_string(),
        OtlpProtocol::HttpProtobuf if base.ends_with("/v1/traces") => base.to_string(),
        OtlpProtocol::HttpProtobuf => format!("{base}/v1/traces"),
    }
}

/// Sets the global subscriber: the log layer (`log` is an EnvFilter string; an invalid
/// one falls back to `info`) and, with an endpoint, the trace layer exporting as
/// `service`. Call it inside the tokio runtime (the gRPC exporter needs it).
/// Colour codes in the text log only when stderr is a terminal and `NO_COLOR` is unset
/// or empty (<https://no-color.org>): a log file or pipe gets plain text.
pub fn colour_wanted(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

pub fn init(
    log: &str,
    format: LogFormat,
    args: &TelemetryArgs,
    service: &str,
) -> anyhow::Result<Telemetry> {
    // The trace target is never a log line, whatever `log` says about targets.
    let log_filter = EnvFilter::try_new(format!("{log},{TRACE_TARGET}=off"))
        .unwrap_or_else(|_| EnvFilter::new(format!("info,{TRACE_TARGET}=off")));
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(colour_wanted(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            std::env::var_os("NO_COLOR").as_deref(),
        ));
    let fmt = match format {
        LogFormat::Json => fmt
            .event_format(json_log::JsonLine)
            .fmt_fields(json_log::TypedFields)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Text => fmt.with_filter(log_filter).boxed(),
    };
    let provider = match args
        .otlp_endpoint
        .as_deref()
        .filter(|e| !e.trim().is_empty())
    {
        None => None,
        Some(endpoint) => Some(provider(endpoint, args, service)?),
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("flashsale"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(
                Targets::new()
                    .with_target(TRACE_TARGET, LevelFilter::INFO)
                    .with_target("flashsale_gateway", LevelFilter::WARN)
                    .with_target("flashsale_engine", LevelFilter::WARN),
            )
    });
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .context("cannot set up logging: a subscriber is already set")?;
    if provider.is_some() {
        let ratio = args.trace_sample_ratio;
        let below = if ratio >= 1.0 {
            u64::MAX
        } else {
            (ratio * u64::MAX as f64) as u64
        };
        HEAD_SAMPLE_BELOW.store(below, Ordering::Relaxed);
        EXPORTING.store(true, Ordering::Relaxed);
    }
    if let Some(endpoint) = &args.otlp_endpoint {
        if provider.is_some() {
            tracing::info!(
                endpoint = %traces_url(endpoint, args.otlp_protocol),
                protocol = ?args.otlp_protocol,
                sample_ratio = args.trace_sample_ratio,
                service,
                "exporting traces"
            );
        }
    }
    Ok(Telemetry { provider })
}

/// `--log-format json`: one JSON object per line, shaped like tracing-subscriber's
/// own (`timestamp`, `level`, `fields` with `message`, `target`, `span`, `spans`),
/// but with typed values: numbers, booleans, arrays and `null` stay JSON values
/// instead of Rust debug text (`"Some(4)"`, `"[]"`). A field recorded with `?x`
/// arrives as debug text; [`json_log::typed`] reads back what is plainly JSON in it
/// (`4`, `[0, 1]`, `true`, `"text"`), maps `Some(x)` to `x` and `None` to `null`, and
/// keeps anything else (`Duration`, structs, `%display` text) as a string.
pub mod json_log {
    use serde_json::{Map, Value};
    use std::fmt;
    use tracing::field::{Field, Visit};
    use tracing::{Event, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
    use tracing_subscriber::registry::LookupSpan;

    /// The JSON value of a field's debug text (see the module's doc).
    pub fn typed(debug: &str) -> Value {
        let t = debug.trim();
        if t == "None" {
            return Value::Null;
        }
        if let Some(inner) = t.strip_prefix("Some(").and_then(|r| r.strip_suffix(')')) {
            return typed(inner);
        }
        let json_like = t.starts_with(['[', '{', '"', '-'])
            || t.starts_with(|c: char| c.is_ascii_digit())
            || matches!(t, "true" | "false" | "null");
        if json_like {
            if let Ok(v) = serde_json::from_str::<Value>(t) {
                return v;
            }
        }
        Value::String(debug.to_string())
    }

    /// Records an event's or a span's fields into a JSON map, typed.
    pub struct TypedVisitor<'a>(pub &'a mut Map<String, Value>);

    impl Visit for TypedVisitor<'_> {
        fn record_f64(&mut self, field: &Field, value: f64) {
            let v = serde_json::Number::from_f64(value)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(value.to_string()));
            self.0.insert(field.name().to_string(), v);
        }
        fn record_i64(&mut self, field: &Field, value: i64) {
            self.0.insert(field.name().to_string(), Value::from(value));
        }
        fn record_u64(&mut self, field: &Field, value: u64) {
            self.0.insert(field.name().to_string(), Value::from(value));
        }
        fn record_i128(&mut self, field: &Field, value: i128) {
            let v = i64::try_from(value)
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(value.to_string()));
            self.0.insert(field.name().to_string(), v);
        }
        fn record_u128(&mut self, field: &Field, value: u128) {
            let v = u64::try_from(value)
                .map(Value::from)
                .unwrap_or_else(|_| Value::String(value.to_string()));
            self.0.insert(field.name().to_string(), v);
        }
        fn record_bool(&mut self, field: &Field, value: bool) {
            self.0.insert(field.name().to_string(), Value::Bool(value));
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.0
                .insert(field.name().to_string(), Value::String(value.to_string()));
        }
        fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
            self.0
                .insert(field.name().to_string(), Value::String(value.to_string()));
        }
        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            let text = format!("{value:?}");
            // The message is prose, never a value to read back.
            let v = if field.name() == "message" {
                Value::String(text)
            } else {
                typed(&text)
            };
            self.0.insert(field.name().to_string(), v);
        }
    }

    /// Span fields as a JSON object (kept in the span's extensions, merged on
    /// `span.record`).
    #[derive(Debug, Default, Clone, Copy)]
    pub struct TypedFields;

    impl<'w> FormatFields<'w> for TypedFields {
        fn format_fields<R: tracing_subscriber::field::RecordFields>(
            &self,
            mut writer: Writer<'w>,
            fields: R,
        ) -> fmt::Result {
            let mut map = Map::new();
            fields.record(&mut TypedVisitor(&mut map));
            write!(writer, "{}", Value::Object(map))
        }

        fn add_fields(
            &self,
            current: &'w mut FormattedFields<Self>,
            fields: &tracing::span::Record<'_>,
        ) -> fmt::Result {
            let mut map = match serde_json::from_str::<Value>(&current.fields) {
                Ok(Value::Object(m)) => m,
                _ => Map::new(),
            };
            fields.record(&mut TypedVisitor(&mut map));
            current.fields = Value::Object(map).to_string();
            Ok(())
        }
    }

    /// The event formatter of `--log-format json`.
    #[derive(Debug, Default, Clone, Copy)]
    pub struct JsonLine;

    impl<S, N> FormatEvent<S, N> for JsonLine
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &Event<'_>,
        ) -> fmt::Result {
            let mut line = Map::new();
            let mut time = String::new();
            SystemTime.format_time(&mut Writer::new(&mut time))?;
            line.insert("timestamp".into(), Value::String(time));
            let meta = event.metadata();
            line.insert("level".into(), Value::String(meta.level().to_string()));
            let mut fields = Map::new();
            event.record(&mut TypedVisitor(&mut fields));
            line.insert("fields".into(), Value::Object(fields));
            line.insert("target".into(), Value::String(meta.target().to_string()));
            let mut spans = Vec::new();
            if let Some(scope) = ctx.event_scope() {
                for span in scope.from_root() {
                    let mut obj = Map::new();
                    if let Some(f) = span.extensions().get::<FormattedFields<N>>() {
                        if let Ok(Value::Object(m)) = serde_json::from_str::<Value>(&f.fields) {
                            obj = m;
                        }
                    }
                    obj.insert("name".into(), Value::String(span.name().to_string()));
                    spans.push(Value::Object(obj));
                }
            }
            if let Some(current) = spans.last() {
                line.insert("span".into(), current.clone());
                line.insert("spans".into(), Value::Array(spans));
            }
            writeln!(writer, "{}", Value::Object(line))
        }
    }
}

fn provider(
    endpoint: &str,
    args: &TelemetryArgs,
    service: &str,
) -> anyhow::Result<SdkTracerProvider> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&args.trace_sample_ratio),
        "--trace-sample-ratio must be between 0 and 1, not {}",
        args.trace_sample_ratio
    );
    let url = traces_url(endpoint, args.otlp_protocol);
    anyhow::ensure!(
        url.starts_with("http://"),
        "--otlp-endpoint {endpoint}: only http:// endpoints are supported (run a local collector for TLS)"
    );
    let exporter = match args.otlp_protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(url.clone())
            .with_timeout(Duration::from_secs(10))
            .build(),
    }
    .with_context(|| format!("cannot set up the OTLP exporter for {url}"))?;
    // The service name: OTEL_SERVICE_NAME if set, else what this process is.
    let service = std::env::var("OTEL_SERVICE_NAME")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| service.to_string());
    Ok(SdkTracerProvider::builder()
        // Parent-based: a trace that arrives sampled (or not) stays so. The ratio is
        // applied before spans are made (`head_sample`), so a root span that exists is
        // one to record.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
        // Batched on the SDK's own thread; when its queue (2048 spans) is full, spans
        // are dropped rather than slowing requests.
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// A W3C trace context (`traceparent`), small enough to copy along with a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl TraceParent {
    /// Parses `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`; `None` for anything
    /// else, or all-zero ids (invalid by the W3C spec).
    pub fn parse(s: &[u8]) -> Option<TraceParent> {
        if s.len() != 55 || &s[0..3] != b"00-" || s[35] != b'-' || s[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        let mut flags = [0u8; 1];
        unhex(&s[3..35], &mut trace_id)?;
        unhex(&s[36..52], &mut span_id)?;
        unhex(&s[53..55], &mut flags)?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags: flags[0],
        })
    }

    /// The header value (55 ASCII bytes).
    pub fn encode(&self) -> [u8; 55] {
        let mut out = [b'-'; 55];
        out[0] = b'0';
        out[1] = b'0';
        let mut put = |at: usize, bytes: &[u8]| {
            for (i, b) in bytes.iter().enumerate() {
                out[at + 2 * i] = HEX[usize::from(b >> 4)];
                out[at + 2 * i + 1] = HEX[usize::from(b & 0xf)];
            }
        };
        put(3, &self.trace_id);
        put(36, &self.span_id);
        put(53, &[self.flags]);
        out
    }

    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The context of `span` if it is recorded and sampled (else nothing is propagated,
    /// and the engine does no span work for the record).
    pub fn of(span: &Span) -> Option<TraceParent> {
        if span.is_disabled() {
            return None;
        }
        let cx = span.context();
        let otel = cx.span();
        let sc = otel.span_context();
        if !sc.is_valid() || !sc.is_sampled() {
            return None;
        }
        Some(TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        })
    }

    /// As a remote parent context.
    pub fn context(&self) -> opentelemetry::Context {
        opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            TraceFlags::new(self.flags),
            true,
            TraceState::default(),
        ))
    }

    /// The trace id as 32 hex digits (tests and logs).
    pub fn trace_id_hex(&self) -> String {
        String::from_utf8_lossy(&self.encode()[3..35]).into_owned()
    }
}

fn unhex(s: &[u8], out: &mut [u8]) -> Option<()> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None, // W3C: lowercase only
        }
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(s[2 * i])? << 4) | nibble(s[2 * i + 1])?;
    }
    Some(())
}

/// The server span of one HTTP request (`otel.name` = "METHOD route"), continuing the
/// caller's trace when the request has a valid `traceparent` header; `Span::none()`
/// (free) when the request is not sampled or export is off.
pub fn http_span(
    method: &axum::http::Method,
    route: &str,
    headers: &axum::http::HeaderMap,
) -> Span {
    if !EXPORTING.load(Ordering::Relaxed) {
        return Span::none();
    }
    let parent = headers
        .get(TRACEPARENT_HEADER)
        .and_then(|v| TraceParent::parse(v.as_bytes()));
    if !head_sample(parent.as_ref()) {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: TRACE_TARGET,
        "http.request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    if let Some(tp) = parent {
        let _ = span.set_parent(tp.context());
    }
    span
}

/// Middleware of the API's routes: the request's server span around the handler
/// (routes under `/api/` only; health and metrics are not traced).
pub async fn trace_http(
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use tracing::Instrument;
    if !EXPORTING.load(Ordering::Relaxed) {
        return next.run(req).await;
    }
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("", |p| p.as_str());
    if !route.starts_with("/api/") {
        return next.run(req).await;
    }
    let span = http_span(req.method(), route, req.headers());
    if span.is_disabled() {
        return next.run(req).await;
    }
    let res = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", res.status().as_u16());
    if res.status().is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    res
}

/// The span of one command: put on the log, awaited until the engine replies. Only
/// inside a traced request; `Span::none()` (free) otherwise.
pub fn command_span(command: &'static str, partition: u32) -> Span {
    if !in_trace() {
        return Span::none();
    }
    tracing::info_span!(
        target: TRACE_TARGET,
        "command",
        otel.name = format!("command {command}"),
        otel.kind = "producer",
        flashsale.command = command,
        flashsale.partition = partition,
        flashsale.offset = tracing::field::Empty,
    )
}

/// Serves the process's registry as `GET /metrics` (and `/health`) on `addr`, for the
/// processes without an HTTP API (`flashsale engine`, `flashsale projector`). Runs
/// until the returned task is aborted.
pub async fn serve_metrics(
    addr: std::net::SocketAddr,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} for /metrics; pass another --metrics-listen")
    })?;
    let bound = listener.local_addr()?;
    let router = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.response() }
            }),
        )
        .route("/health", get(|| async { "{\"status\":\"UP\"}" }));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "metrics on http://{bound}/metrics");
    Ok(task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_log_values_are_typed() {
        use super::json_log::typed;
        use serde_json::json;
        assert_eq!(typed("Some(4)"), json!(4));
        assert_eq!(typed("None"), json!(null));
        assert_eq!(typed("[]"), json!([]));
        assert_eq!(typed("[0, 3]"), json!([0, 3]));
        assert_eq!(typed("Some([1])"), json!([1]));
        assert_eq!(typed("\"text\""), json!("text"));
        assert_eq!(typed("true"), json!(true));
        assert_eq!(typed("-2.5"), json!(-2.5));
        // anything that is not plainly JSON stays the text it was
        assert_eq!(typed("1.5s"), json!("1.5s"));
        assert_eq!(typed("Some(sale_01HQ)"), json!("sale_01HQ"));
        assert_eq!(typed("HttpProtobuf"), json!("HttpProtobuf"));
        assert_eq!(typed("127.0.0.1:8080"), json!("127.0.0.1:8080"));
    }

    /// A real subscriber with the JSON format: every line parses, and `?` fields come
    /// out as JSON values.
    #[test]
    fn json_log_lines_carry_typed_fields() {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .event_format(super::json_log::JsonLine)
            .fmt_fields(super::json_log::TypedFields)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", partition = 3u32, route = "/x");
            let _g = span.enter();
            let failed: Vec<u32> = vec![];
            let offset: Option<u64> = Some(4);
            let none: Option<u64> = None;
            tracing::info!(failed = ?failed, offset = ?offset, none = ?none, ok = true, n = 7u64, who = %"gw-1", "started");
        });
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).expect(&text);
        let f = &line["fields"];
        assert_eq!(f["message"], "started");
        assert_eq!(f["failed"], serde_json::json!([]));
        assert_eq!(f["offset"], 4);
        assert!(f["none"].is_null());
        assert_eq!(f["ok"], true);
        assert_eq!(f["n"], 7);
        assert_eq!(f["who"], "gw-1");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["span"]["name"], "request");
        assert_eq!(line["span"]["partition"], 3);
        assert_eq!(line["spans"][0]["route"], "/x");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_wanted(true, None));
        assert!(colour_wanted(true, Some(OsStr::new(""))));
        assert!(!colour_wanted(true, Some(OsStr::new("1"))));
        assert!(!colour_wanted(false, None));
    }

    #[test]
    fn traceparent_round_trip_and_rejects() {
        let s = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(s).unwrap();
        assert!(tp.sampled());
        assert_eq!(&tp.encode(), s);
        assert_eq!(tp.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        for bad in [
            &b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0"[..],
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
        ] {
            assert_eq!(
                TraceParent::parse(bad),
                None,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn traces_url_appends_the_signal_path_for_http_only() {
        assert_eq!(
            traces_url("http://c:4318", OtlpProtocol::HttpProtobuf),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/", OtlpProtocol::HttpProtobuf),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces", OtlpProtocol::HttpProtobuf),
            "http://c:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4317", OtlpProtocol::Grpc),
            "http://c:4317"
        );
    }

    #[test]
    fn spans_are_disabled_without_a_trace_layer() {
        // No subscriber in this test thread: every trace span is a no-op and nothing
        // is propagated.
        let span = command_span("reserve", 0);
        assert!(TraceParent::of(&span).is_none());
    }
}

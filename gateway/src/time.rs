//! Time as the API writes and reads it: RFC 3339 UTC with `Z`, unix milliseconds
//! inside. A leaf module: errors, JSON rendering and the read model all use it.

use chrono::{DateTime, SecondsFormat, Utc};
use flashsale_proto::UnixMs;

pub use flashsale_runtime::now_ms;

pub fn rfc3339(ms: UnixMs) -> String {
    DateTime::<Utc>::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

pub fn rfc3339_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub fn parse_time(s: &str) -> Result<UnixMs, String> {
    let bad = || "must be an RFC 3339 UTC time ending in Z, e.g. 2025-01-15T10:00:00Z".to_string();
    if !(s.ends_with('Z') || s.ends_with('z')) {
        return Err(bad());
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
    let ms = t.timestamp_millis();
    if ms < 0 {
        return Err("must be after 1970-01-01T00:00:00Z".into());
    }
    Ok(ms as u64)
}

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

/// Now, to the second, as RFC 3339 (the error bodies' `timestamp`). Formatted once per
/// second per thread: every answer of a sold-out or shed crowd carries one.
pub fn rfc3339_now() -> String {
    rfc3339_now_with_secs().1
}

/// [`rfc3339_now`] and the unix second it names.
pub fn rfc3339_now_with_secs() -> (i64, String) {
    thread_local! {
        static LAST: std::cell::RefCell<(i64, String)> =
            const { std::cell::RefCell::new((i64::MIN, String::new())) };
    }
    let now = Utc::now();
    let secs = now.timestamp();
    LAST.with_borrow_mut(|(at, text)| {
        if *at != secs {
            *at = secs;
            *text = now.to_rfc3339_opts(SecondsFormat::Secs, true);
        }
        (secs, text.clone())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_timestamp_follows_the_clock() {
        for _ in 0..3 {
            let before = Utc::now().timestamp();
            let got = rfc3339_now();
            let after = Utc::now().timestamp();
            let t = DateTime::parse_from_rfc3339(&got).unwrap().timestamp();
            assert!(
                (before..=after).contains(&t),
                "{got} not within [{before}, {after}]"
            );
            assert!(got.ends_with('Z') && got.len() == 20, "{got}");
            std::thread::sleep(std::time::Duration::from_millis(600));
        }
    }
}

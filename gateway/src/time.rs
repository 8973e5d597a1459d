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

/// The first instant the API does not take or write: 10000-01-01T00:00:00Z (RFC 3339
/// has four-digit years).
pub const END_OF_TIME_MS: UnixMs = 253_402_300_800_000;

/// An API time: RFC 3339 in UTC (`Z`), from 1970-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999Z, milliseconds kept (finer digits are dropped). A leap
/// second (`:60`) is refused: unix time has none, and taking it as the next second
/// would answer a time the client never sent (`9999-12-31T23:59:60Z` would come back
/// as `+10000-01-01T00:00:00Z`).
pub fn parse_time(s: &str) -> Result<UnixMs, String> {
    let bad = || "must be an RFC 3339 UTC time ending in Z, e.g. 2025-01-15T10:00:00Z".to_string();
    if !(s.ends_with('Z') || s.ends_with('z')) {
        return Err(bad());
    }
    let t = DateTime::parse_from_rfc3339(s).map_err(|_| bad())?;
    if t.timestamp_subsec_nanos() >= 1_000_000_000 {
        return Err("must not be a leap second (seconds 00-59)".into());
    }
    let ms = t.timestamp_millis();
    if ms < 0 {
        return Err("must be after 1970-01-01T00:00:00Z".into());
    }
    if ms as u64 >= END_OF_TIME_MS {
        return Err("must be before 10000-01-01T00:00:00Z".into());
    }
    Ok(ms as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_outside_the_api_range_are_refused() {
        for ok in [
            "1970-01-01T00:00:00Z",
            "2025-01-15T10:00:00.5Z",
            "9999-12-31T23:59:59.999Z",
        ] {
            let ms = parse_time(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
            assert_eq!(parse_time(&rfc3339(ms)), Ok(ms), "{ok} round-trips");
            assert!(
                rfc3339(ms).starts_with(&ok[..19]),
                "{ok} -> {}",
                rfc3339(ms)
            );
        }
        for bad in [
            "9999-12-31T23:59:60Z",
            "2016-12-31T23:59:60Z",
            "1969-12-31T23:59:59Z",
            "2025-01-15T10:00:00+01:00",
            "2025-01-15",
        ] {
            assert!(parse_time(bad).is_err(), "{bad} is refused");
        }
    }

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

//! Rate limits for repeated log lines: the first line of a kind is written, the
//! repeats within [`LogLimiter::every`] are counted, and the next line written says how
//! many were left out. Used for librdkafka's own log lines (see
//! [`crate::kafka::QuietContext`]) and for errors our retry loops see again and again
//! (consume errors during a broker outage), so that an outage costs a few lines, not
//! 10-20 a second.
//!
//! "Of a kind" is a key the caller chooses; [`similarity_key`] turns a message into one
//! that ignores the parts that change between repeats (numbers: ports, durations,
//! counts), so "failed (after 3ms)" and "failed (after 12ms)" are one kind.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most kinds remembered; past it, kinds quiet for a whole window are forgotten first
/// (a bound on memory whatever the messages are).
const MAX_KEYS: usize = 512;

#[derive(Debug)]
struct Entry {
    last_logged: Instant,
    suppressed: u64,
}

/// Counts repeats per key; see the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    every: Duration,
    keys: Mutex<HashMap<String, Entry>>,
}

impl LogLimiter {
    /// Writes a kind at most once per `every`.
    pub fn new(every: Duration) -> Self {
        LogLimiter {
            every,
            keys: Mutex::new(HashMap::new()),
        }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// One more line of kind `key`: `Some(n)` when it is to be written now (`n`: lines
    /// of this kind left out since the last one written), `None` when it is left out.
    pub fn check(&self, key: &str) -> Option<u64> {
        self.check_at(key, Instant::now())
    }

    fn check_at(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = keys.get_mut(key) {
            if now.duration_since(e.last_logged) < self.every {
                e.suppressed += 1;
                return None;
            }
            let n = e.suppressed;
            e.last_logged = now;
            e.suppressed = 0;
            return Some(n);
        }
        if keys.len() >= MAX_KEYS {
            let every = self.every;
            keys.retain(|_, e| now.duration_since(e.last_logged) < every);
            if keys.len() >= MAX_KEYS {
                keys.clear();
            }
        }
        keys.insert(
            key.to_string(),
            Entry {
                last_logged: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

/// `message` with every run of digits replaced by `#`, and cut at 160 characters: the
/// kind of a message, for [`LogLimiter::check`].
pub fn similarity_key(message: &str) -> String {
    // librdkafka's trailers ("(after 0ms in state CONNECT, 3 identical error(s)
    // suppressed)") vary between repeats of one failure.
    let message = message.split(" (after ").next().unwrap_or(message);
    let mut key = String::with_capacity(message.len().min(160));
    let mut in_digits = false;
    for c in message.chars().take(160) {
        if c.is_ascii_digit() {
            if !in_digits {
                key.push('#');
            }
            in_digits = true;
        } else {
            key.push(c);
            in_digits = false;
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_counted_and_reported_with_the_next_line() {
        let l = LogLimiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert_eq!(l.check_at("a", t0), Some(0));
        for i in 1..=9 {
            assert_eq!(l.check_at("a", t0 + Duration::from_secs(i)), None);
        }
        // Another kind is not held back by the first.
        assert_eq!(l.check_at("b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(l.check_at("a", t0 + Duration::from_secs(31)), Some(9));
        assert_eq!(l.check_at("a", t0 + Duration::from_secs(32)), None);
        assert_eq!(l.check_at("a", t0 + Duration::from_secs(62)), Some(1));
    }

    #[test]
    fn memory_is_bounded() {
        let l = LogLimiter::new(Duration::from_secs(30));
        let t0 = Instant::now();
        for i in 0..(MAX_KEYS * 3) {
            assert_eq!(l.check_at(&format!("k{i}"), t0), Some(0));
        }
        assert!(l.keys.lock().unwrap().len() <= MAX_KEYS);
    }

    #[test]
    fn numbers_do_not_make_a_new_kind() {
        assert_eq!(
            similarity_key(
                "127.0.0.1:19092/bootstrap: Connect failed (after 3ms in state CONNECT)"
            ),
            similarity_key(
                "127.0.0.1:19092/bootstrap: Connect failed (after 120ms in state CONNECT)"
            )
        );
        assert_eq!(
            similarity_key("request 12 of 40 failed"),
            similarity_key("request 13 of 40 failed")
        );
        assert_eq!(
            similarity_key("Connect failed (after 0ms in state CONNECT)"),
            similarity_key("Connect failed (after 0ms, 1 identical error(s) suppressed)")
        );
        assert_ne!(
            similarity_key("connect failed"),
            similarity_key("disconnected")
        );
        assert!(similarity_key(&"x".repeat(1000)).len() <= 160);
    }
}

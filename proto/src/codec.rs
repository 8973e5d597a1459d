//! Versioned encoding: `[FORMAT_VERSION] ++ bincode(value)` for one value, and
//! `[BATCH_FORMAT_VERSION] ++ bincode(Vec<value>)` for a batch of them (what the engine
//! produces to `events` and `replies`: one Kafka record per applied batch instead of one
//! per command; and what a gateway produces to `commands` for the commands of one
//! partition that arrive together). Readers take both layouts, see [`decode_many`].

use serde::{de::DeserializeOwned, Serialize};

/// The first byte of every encoded message. Bump it when a layout changes; readers
/// refuse versions they do not know instead of misreading them.
pub const FORMAT_VERSION: u8 = 1;

/// The first byte of a batch written by [`BatchEncoder`]: a length-prefixed sequence of
/// values (bincode's layout of a `Vec`).
pub const BATCH_FORMAT_VERSION: u8 = 2;

/// Upper bound on one encoded message, so a corrupt length prefix cannot make a
/// decoder allocate without bound. A sale of 100 products with maximal text fields is
/// well under this.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown format version {found} (this build writes {FORMAT_VERSION}, and {BATCH_FORMAT_VERSION} for batches of replies and events)")]
    Version { found: u8 },
    #[error("message of {0} bytes is over the {MAX_MESSAGE_BYTES} byte limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_MESSAGE_BYTES>()
}

/// Encodes `value` with the leading format-version byte.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    // Encoding into a Vec only fails for types serde cannot express (none here) or
    // over the size limit, which our own values never reach: a bug, so panic.
    bincode::serde::encode_into_std_write(value, &mut out, config())
        .expect("flashsale-proto values always encode");
    out
}

/// Decodes a value written by [`encode`]. Never panics, whatever the input.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let (&version, body) = bytes.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::Version { found: version });
    }
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let (value, used) = bincode::serde::decode_from_slice(body, config())
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if used != body.len() {
        return Err(DecodeError::Trailing(body.len() - used));
    }
    Ok(value)
}

/// Decodes either layout: one value written by [`encode`] or a batch written by
/// [`BatchEncoder`], appending the values to `out` in order. Never panics.
pub fn decode_many<T: DeserializeOwned>(bytes: &[u8], out: &mut Vec<T>) -> Result<(), DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&FORMAT_VERSION) => {
            out.push(decode(bytes)?);
            Ok(())
        }
        Some(&BATCH_FORMAT_VERSION) => {
            let body = &bytes[1..];
            if body.len() > MAX_MESSAGE_BYTES {
                return Err(DecodeError::TooLarge(body.len()));
            }
            let (values, used): (Vec<T>, usize) = bincode::serde::decode_from_slice(body, config())
                .map_err(|e| DecodeError::Malformed(e.to_string()))?;
            if used != body.len() {
                return Err(DecodeError::Trailing(body.len() - used));
            }
            out.extend(values);
            Ok(())
        }
        Some(&found) => Err(DecodeError::Version { found }),
    }
}

/// Builds one batch record (`[BATCH_FORMAT_VERSION] ++ bincode(Vec<T>)`) value by value,
/// so the caller can cut batches by size ([`Self::body_len`]) without encoding twice.
#[derive(Debug, Default)]
pub struct BatchEncoder {
    items: Vec<u8>,
    count: u64,
}

impl BatchEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push<T: Serialize>(&mut self, value: &T) {
        bincode::serde::encode_into_std_write(value, &mut self.items, config())
            .expect("flashsale-proto values always encode");
        self.count += 1;
    }

    /// Pushes a value already encoded by [`encode`] (its version byte is dropped), so a
    /// caller that encoded a value to measure it does not encode it again. A slice that
    /// is not such an encoding is a caller bug.
    pub fn push_encoded(&mut self, encoded: &[u8]) {
        let (&version, body) = encoded.split_first().expect("an encoded value");
        assert_eq!(
            version, FORMAT_VERSION,
            "push_encoded takes what `encode` wrote"
        );
        self.items.extend_from_slice(body);
        self.count += 1;
    }

    /// Values pushed since the last [`Self::take`].
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Bytes of the values pushed so far.
    pub fn body_len(&self) -> usize {
        self.items.len()
    }

    /// The encoded batch; the encoder is empty again.
    pub fn take(&mut self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.items.len() + 10);
        out.push(BATCH_FORMAT_VERSION);
        // A Vec's length in bincode's standard config: the same varint as a u64.
        bincode::serde::encode_into_std_write(self.count, &mut out, config())
            .expect("a u64 always encodes");
        out.extend_from_slice(&self.items);
        self.items.clear();
        self.count = 0;
        out
    }
}

#[cfg(test)]
mod batch_tests {
    use super::*;

    #[test]
    fn a_batch_decodes_to_its_values_and_a_single_value_too() {
        let mut enc = BatchEncoder::new();
        let values: Vec<(u64, String)> = (0..300).map(|i| (i * 7919, format!("v{i}"))).collect();
        for v in &values {
            enc.push(v);
        }
        assert_eq!(enc.count(), 300);
        let bytes = enc.take();
        assert_eq!(enc.count(), 0);
        assert_eq!(bytes[0], BATCH_FORMAT_VERSION);
        let mut out: Vec<(u64, String)> = Vec::new();
        decode_many(&bytes, &mut out).unwrap();
        assert_eq!(out, values);
        // the same bytes as a Vec encoded in one go
        let whole: Vec<u8> = std::iter::once(BATCH_FORMAT_VERSION)
            .chain(bincode::serde::encode_to_vec(&values, config()).unwrap())
            .collect();
        assert_eq!(bytes, whole);
        // values pushed as their `encode` bytes make the same batch
        let mut again = BatchEncoder::new();
        for v in &values {
            again.push_encoded(&encode(v));
        }
        assert_eq!(again.take(), bytes);
        // a single value in the old layout
        let mut one: Vec<(u64, String)> = Vec::new();
        decode_many(&encode(&(5u64, "x".to_string())), &mut one).unwrap();
        assert_eq!(one, vec![(5, "x".to_string())]);
        // an empty batch is a valid, empty record
        let mut none: Vec<(u64, String)> = Vec::new();
        decode_many(&BatchEncoder::new().take(), &mut none).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn damaged_batches_are_errors_not_panics() {
        let mut enc = BatchEncoder::new();
        for i in 0..10u64 {
            enc.push(&(i, "abc".to_string()));
        }
        let bytes = enc.take();
        let mut out: Vec<(u64, String)> = Vec::new();
        for cut in 0..bytes.len() {
            let _ = decode_many(&bytes[..cut], &mut out);
        }
        assert!(decode_many(&bytes[..bytes.len() - 1], &mut out).is_err());
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(matches!(
            decode_many(&extra, &mut out),
            Err(DecodeError::Trailing(1))
        ));
        assert!(matches!(
            decode_many(&[9, 1, 2], &mut out),
            Err(DecodeError::Version { found: 9 })
        ));
    }
}

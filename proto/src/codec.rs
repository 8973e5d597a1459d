//! Versioned encoding: `[FORMAT_VERSION] ++ bincode(value)`.

use serde::{de::DeserializeOwned, Serialize};

/// The first byte of every encoded message. Bump it when a layout changes; readers
/// refuse versions they do not know instead of misreading them.
pub const FORMAT_VERSION: u8 = 1;

/// Upper bound on one encoded message, so a corrupt length prefix cannot make a
/// decoder allocate without bound. A sale of 100 products with maximal text fields is
/// well under this.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("empty message")]
    Empty,
    #[error("unknown format version {found} (this build reads version {FORMAT_VERSION})")]
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

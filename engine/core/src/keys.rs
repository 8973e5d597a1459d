//! Idempotency keys within the retention, each key's text stored once (issue 29).
//!
//! A key is remembered from the hold it made until one retention (log time) later,
//! oldest first; lookups go by its text. A map from key to reservation plus a FIFO of
//! keys to forget kept every key twice (two allocations for a 36-character UUID) and
//! was most of a live hold's memory. Here the FIFO holds (taken at, key, reservation)
//! and the index holds only each entry's sequence number, hashed by the key's text:
//! 8 bytes per key beside the FIFO entry. Snapshots carry the FIFO; the index is
//! rebuilt when one is loaded.

use compact_str::CompactString;
use flashsale_proto::UnixMs;
use hashbrown::HashTable;
use serde::{de::Error as _, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::VecDeque;
use std::hash::BuildHasher;

#[derive(Clone, Default)]
pub(crate) struct IdempotencyKeys {
    /// (taken at, key, reservation ULID), oldest first; a key at most once.
    fifo: VecDeque<(UnixMs, CompactString, u128)>,
    /// Sequence number of `fifo`'s front (keys forgotten so far).
    base: u64,
    /// The sequence number of every entry of `fifo`, hashed by its key.
    index: HashTable<u64>,
}

fn hash(key: &str) -> u64 {
    rustc_hash::FxBuildHasher.hash_one(key)
}

impl IdempotencyKeys {
    pub(crate) fn len(&self) -> usize {
        self.fifo.len()
    }

    /// The reservation `key` made, if it is remembered.
    pub(crate) fn get(&self, key: &str) -> Option<u128> {
        let (fifo, base) = (&self.fifo, self.base);
        self.index
            .find(hash(key), |&s| fifo[(s - base) as usize].1 == key)
            .map(|&s| fifo[(s - base) as usize].2)
    }

    /// Remembers `key`, not remembered yet, for the reservation `ulid` made at `now`
    /// (log time never goes back, so the FIFO stays sorted).
    pub(crate) fn insert(&mut self, now: UnixMs, key: &str, ulid: u128) {
        debug_assert!(self.get(key).is_none(), "a key is remembered once");
        debug_assert!(self.fifo.back().is_none_or(|b| b.0 <= now));
        let seq = self.base + self.fifo.len() as u64;
        self.fifo.push_back((now, CompactString::new(key), ulid));
        let (fifo, base) = (&self.fifo, self.base);
        self.index
            .insert_unique(hash(key), seq, |&s| hash(&fifo[(s - base) as usize].1));
    }

    /// When the oldest remembered key was taken.
    pub(crate) fn oldest(&self) -> Option<UnixMs> {
        self.fifo.front().map(|e| e.0)
    }

    /// Forgets the oldest remembered key.
    pub(crate) fn forget_oldest(&mut self) {
        let Some((_, key, _)) = self.fifo.front() else {
            return;
        };
        let base = self.base;
        if let Ok(e) = self.index.find_entry(hash(key), |&s| s == base) {
            e.remove();
        }
        self.fifo.pop_front();
        self.base += 1;
    }

    /// (key, reservation ULID), oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, u128)> {
        self.fifo.iter().map(|(_, k, u)| (k.as_str(), *u))
    }

    /// (taken at, key, reservation ULID), oldest first.
    pub(crate) fn entries(&self) -> impl Iterator<Item = &(UnixMs, CompactString, u128)> {
        self.fifo.iter()
    }

    /// From (taken at, key, reservation) oldest first; `None` if a key comes twice.
    pub(crate) fn from_entries(
        entries: impl IntoIterator<Item = (UnixMs, CompactString, u128)>,
    ) -> Option<Self> {
        let entries = entries.into_iter();
        let mut keys = IdempotencyKeys {
            fifo: VecDeque::with_capacity(entries.size_hint().0),
            base: 0,
            index: HashTable::with_capacity(entries.size_hint().0),
        };
        for (t, k, u) in entries {
            if keys.get(&k).is_some() {
                return None;
            }
            keys.insert(t, &k, u);
        }
        Some(keys)
    }
}

/// Equal when they remember the same keys in the same order (the index is derived).
impl PartialEq for IdempotencyKeys {
    fn eq(&self, other: &Self) -> bool {
        self.fifo == other.fifo
    }
}
impl Eq for IdempotencyKeys {}

impl std::fmt::Debug for IdempotencyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyKeys")
            .field("keys", &self.fifo.len())
            .finish()
    }
}

impl Serialize for IdempotencyKeys {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fifo.serialize(s)
    }
}

impl<'de> Deserialize<'de> for IdempotencyKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let fifo = VecDeque::<(UnixMs, CompactString, u128)>::deserialize(d)?;
        IdempotencyKeys::from_entries(fifo)
            .ok_or_else(|| D::Error::custom("an idempotency key is remembered twice"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_found_forgotten_oldest_first_and_survive_a_round_trip() {
        let mut k = IdempotencyKeys::default();
        for i in 0..1000u128 {
            k.insert(i as u64, &format!("key-{i:040}"), i + 7);
        }
        assert_eq!(k.get(&format!("key-{:040}", 500)), Some(507));
        assert_eq!(k.get("unknown"), None);
        for _ in 0..600 {
            k.forget_oldest();
        }
        assert_eq!(k.len(), 400);
        assert_eq!(k.get(&format!("key-{:040}", 500)), None);
        assert_eq!(k.get(&format!("key-{:040}", 600)), Some(607));
        assert_eq!(k.oldest(), Some(600));
        // A forgotten key may be taken again.
        k.insert(2000, &format!("key-{:040}", 1), 9);
        assert_eq!(k.get(&format!("key-{:040}", 1)), Some(9));
        let cfg = bincode::config::standard();
        let bytes = bincode::serde::encode_to_vec(&k, cfg).unwrap();
        let (back, _): (IdempotencyKeys, usize) =
            bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
        assert_eq!(back, k);
        assert_eq!(back.get(&format!("key-{:040}", 999)), Some(1006));
        // A key twice does not decode.
        let twice = IdempotencyKeys {
            fifo: VecDeque::from([(1, "a".into(), 1), (2, "a".into(), 2)]),
            ..Default::default()
        };
        let bytes = bincode::serde::encode_to_vec(&twice, cfg).unwrap();
        assert!(bincode::serde::decode_from_slice::<IdempotencyKeys, _>(&bytes, cfg).is_err());
    }
}

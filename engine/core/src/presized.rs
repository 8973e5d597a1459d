//! Deserialising large maps at their final size. serde's default for a map reserves at
//! most about 1 MiB up front (a guard against lengths an attacker made up), then grows
//! by doubling: for a snapshot with a million holds that is a dozen rehashes and
//! hundreds of MB copied, on the path from partition assignment to serving. Here the
//! map is sized from the encoded length, bounded by [`MAX_PRESIZE`] so a forged length
//! still cannot ask for more memory than a real partition would use.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::marker::PhantomData;

/// Most entries reserved ahead of reading them (a partition of ~4 million holds).
pub const MAX_PRESIZE: usize = 1 << 22;

/// `#[serde(deserialize_with = "crate::presized::map")]` for a `HashMap`.
pub fn map<'de, D, K, V, S>(d: D) -> Result<HashMap<K, V, S>, D::Error>
where
    D: Deserializer<'de>,
    K: Deserialize<'de> + Eq + Hash,
    V: Deserialize<'de>,
    S: BuildHasher + Default,
{
    struct MapVisitor<K, V, S>(PhantomData<(K, V, S)>);
    impl<'de, K, V, S> Visitor<'de> for MapVisitor<K, V, S>
    where
        K: Deserialize<'de> + Eq + Hash,
        V: Deserialize<'de>,
        S: BuildHasher + Default,
    {
        type Value = HashMap<K, V, S>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a map")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
            let mut out = HashMap::with_capacity_and_hasher(
                access.size_hint().unwrap_or(0).min(MAX_PRESIZE),
                S::default(),
            );
            while let Some((k, v)) = access.next_entry()? {
                out.insert(k, v);
            }
            Ok(out)
        }
    }
    d.deserialize_map(MapVisitor(PhantomData))
}

#[cfg(test)]
mod tests {
    use rustc_hash::FxHashMap;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrap(#[serde(deserialize_with = "super::map")] FxHashMap<String, u32>);

    fn config() -> impl bincode::config::Config {
        bincode::config::standard().with_limit::<{ 1 << 20 }>()
    }

    #[test]
    fn round_trips() {
        let m: FxHashMap<String, u32> = (0..1000).map(|i| (format!("k{i}"), i)).collect();
        let bytes = bincode::serde::encode_to_vec(Wrap(m.clone()), config()).unwrap();
        let (back, _): (Wrap, usize) = bincode::serde::decode_from_slice(&bytes, config()).unwrap();
        assert_eq!(back.0, m);
    }

    #[test]
    fn a_forged_length_is_an_error_not_an_allocation() {
        // Length u64::MAX (varint 0xfd + 8 bytes), then nothing.
        let bytes = [0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(bincode::serde::decode_from_slice::<Wrap, _>(&bytes, config()).is_err());
    }
}

//! Ids, money and time as types, so that a `SkuId` cannot be passed where a `UserId`
//! is expected and cents are never confused with units.

use compact_str::CompactString;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use ulid::Ulid;

/// Milliseconds since the Unix epoch. The engine's clock is the log time of the record
/// being applied, never the wall clock.
pub type UnixMs = u64;

/// The largest quantity one request may ask for (docs/api.md).
pub const MAX_QUANTITY: u32 = 1_000_000;
/// Longest `userId` / `skuId` (docs/api.md).
pub const MAX_ID_CHARS: usize = 64;
/// Partitions are encoded in 3 hex digits inside reservation and order ids.
pub const MAX_PARTITIONS: u32 = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("must be 1-{MAX_ID_CHARS} characters")]
    Length,
    #[error("may only contain letters, digits and _ . : @ -")]
    Charset,
    #[error("is not a valid {0} id")]
    Malformed(&'static str),
}

fn check_name(s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > MAX_ID_CHARS {
        return Err(IdError::Length);
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'@' | b'-'))
    {
        return Err(IdError::Charset);
    }
    Ok(())
}

macro_rules! name_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(CompactString);

        impl $name {
            /// Parses and validates (1-64 chars of `[A-Za-z0-9_.:@-]`).
            pub fn parse(s: &str) -> Result<Self, IdError> {
                check_name(s)?;
                Ok(Self(CompactString::new(s)))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// True when the value obeys the rules `parse` enforces. Values decoded from
            /// the wire are not trusted until checked.
            pub fn is_valid(&self) -> bool {
                check_name(&self.0).is_ok()
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0.as_str())
            }
        }
    };
}

name_id!(
    /// A product's stock-keeping unit id; also the Kafka message key of its commands.
    SkuId
);
name_id!(
    /// A buyer, as the storefront identifies them.
    UserId
);

/// A gateway-stamped request id: a ULID, unique per attempt.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u128);

impl RequestId {
    pub fn from_ulid(u: Ulid) -> Self {
        Self(u.0)
    }
}
impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Ulid(self.0))
    }
}
impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

macro_rules! partitioned_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $what:literal) => {
        $(#[$doc])*
        ///
        /// Rendered as the prefix, the 26-character ULID of the request that created it,
        /// and the owning partition in 3 hex digits, so any gateway can route a command
        /// about it to the right partition without a lookup.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name {
            pub partition: u16,
            pub ulid: u128,
        }
        impl $name {
            pub const PREFIX: &'static str = $prefix;
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}{:03x}", $prefix, Ulid(self.ulid), self.partition)
            }
        }
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{self}")
            }
        }
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let rest = s.strip_prefix($prefix).ok_or(IdError::Malformed($what))?;
                if rest.len() != 29 || !rest.is_ascii() {
                    return Err(IdError::Malformed($what));
                }
                let (u, p) = rest.split_at(26);
                let ulid = Ulid::from_string(u).map_err(|_| IdError::Malformed($what))?;
                let partition = u16::from_str_radix(p, 16).map_err(|_| IdError::Malformed($what))?;
                if u32::from(partition) >= MAX_PARTITIONS || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(IdError::Malformed($what));
                }
                Ok(Self { partition, ulid: ulid.0 })
            }
        }
    };
}

partitioned_id!(
    /// A reservation (hold) id, `res_…`.
    ReservationId,
    "res_",
    "reservation"
);
partitioned_id!(
    /// An order id, `ord_…`.
    OrderId,
    "ord_",
    "order"
);

/// A sale id, `sale_…` + ULID.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SaleId(pub u128);

impl fmt::Display for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sale_{}", Ulid(self.0))
    }
}
impl fmt::Debug for SaleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}
impl FromStr for SaleId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        let rest = s.strip_prefix("sale_").ok_or(IdError::Malformed("sale"))?;
        if rest.len() != 26 {
            return Err(IdError::Malformed("sale"));
        }
        Ulid::from_string(rest)
            .map(|u| SaleId(u.0))
            .map_err(|_| IdError::Malformed("sale"))
    }
}

/// Money in integer cents; JSON shows it as a number with at most 2 decimals.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Cents(pub u64);

impl fmt::Debug for Cents {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_validated() {
        assert!(SkuId::parse("IPHONE15-256GB").is_ok());
        assert!(UserId::parse("a.b:c@d_e-f").is_ok());
        assert_eq!(SkuId::parse(""), Err(IdError::Length));
        assert_eq!(SkuId::parse(&"x".repeat(65)), Err(IdError::Length));
        assert!(SkuId::parse(&"x".repeat(64)).is_ok());
        assert_eq!(UserId::parse("a b"), Err(IdError::Charset));
        assert_eq!(UserId::parse("é"), Err(IdError::Charset));
    }

    #[test]
    fn partitioned_ids_round_trip() {
        let id = ReservationId {
            partition: 7,
            ulid: Ulid::from_parts(1_700_000_000_000, 42).0,
        };
        let s = id.to_string();
        assert!(s.starts_with("res_"));
        assert_eq!(s.len(), 33);
        assert_eq!(s.parse::<ReservationId>().unwrap(), id);
        assert!(s.parse::<OrderId>().is_err());
        assert!("res_".parse::<ReservationId>().is_err());
        assert!("res_0000000000000000000000000Z+ff"
            .parse::<ReservationId>()
            .is_err());
        let sale = SaleId(99);
        assert_eq!(sale.to_string().parse::<SaleId>().unwrap(), sale);
    }
}

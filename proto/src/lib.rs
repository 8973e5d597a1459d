//! Wire types of flashsale: the commands a gateway puts on the log, the replies and
//! events an engine actor sends back, the ids they carry, and their encoding.
//!
//! Every message on every topic (and every record of the embedded log) is one byte of
//! format version followed by the bincode (serde) encoding of the value. Decoding any
//! byte string returns a value or an error, never panics, and never allocates more than
//! [`MAX_MESSAGE_BYTES`]. The engine's outputs (`events`, `replies`) are batches: one
//! version-2 record holds the values of one applied batch ([`BatchEncoder`],
//! [`decode_many`]).
//!
//! What it owns: the shape of everything that crosses a process boundary, and the
//! rule that maps a SKU to its partition.
//!
//! What it must never do: I/O, or hold policy. Validation of user input lives in the
//! gateway (`flashsale-gateway`), business rules in the engine's pure core
//! (`flashsale-core`).
//!
//! Layout: [`ids`] (newtypes for ids, money and time), [`msg`] (commands, replies,
//! events), [`codec`] (versioned encoding), [`partition`] (Kafka-compatible murmur2
//! partitioner), [`topics`] (the topic names of a deployment).

pub mod codec;
pub mod ids;
pub mod msg;
pub mod partition;
pub mod topics;

pub use codec::{
    decode, decode_many, encode, BatchEncoder, DecodeError, BATCH_FORMAT_VERSION, FORMAT_VERSION,
    MAX_MESSAGE_BYTES,
};
pub use ids::*;
pub use msg::*;
pub use partition::{murmur2, partition_for_key};
pub use topics::{Topics, DEFAULT_PREFIX};

//! One record of a partition's command log, as the engine sees it whatever the log
//! (the embedded file log or a Kafka partition): its offset, its log time, and the
//! encoded command.

use flashsale_proto::UnixMs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: u64,
    /// The record's log time: the engine's only clock.
    pub log_time: UnixMs,
    pub payload: Vec<u8>,
}

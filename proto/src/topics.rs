//! Names of the three Kafka topics of one deployment (ARCHITECTURE.md, docs/kafka-mode.md).

/// Default prefix of the three topic names.
pub const DEFAULT_PREFIX: &str = "flashsale.";

/// The three topics of one deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    pub commands: String,
    pub events: String,
    pub replies: String,
}

impl Topics {
    pub fn with_prefix(prefix: &str) -> Self {
        Topics {
            commands: format!("{prefix}commands"),
            events: format!("{prefix}events"),
            replies: format!("{prefix}replies"),
        }
    }
}

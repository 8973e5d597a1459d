//! Which log is this? A topic's identity: its name and the id Kafka gave it at creation.
//!
//! Snapshots and projector offsets are only meaningful for the log they were taken
//! from. A topic name alone does not say that: two deployments may share a database
//! under different prefixes, and a topic deleted and created again restarts at offset
//! 0 under the same name. Kafka gives every topic a UUID at creation (KIP-516), so
//! `name/uuid` names one log and a recreated topic is a new one.
//!
//! rdkafka 0.39's metadata API does not expose topic ids (librdkafka has them only
//! through its C `DescribeTopics` call, and this workspace forbids `unsafe`), so this
//! module asks a broker itself: one `Metadata` request (v12, Kafka 2.8+), encoded and
//! decoded by the `kafka-protocol` crate, over a plain TCP connection to each bootstrap
//! address in turn. Plaintext listeners only (the only kind flashsale configures).

use anyhow::{bail, Context as _};
use bytes::{Buf as _, BufMut as _, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, MetadataResponse, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable as _, Encodable as _, HeaderVersion as _, StrBytes};
use std::io::{Read as _, Write as _};
use std::net::{TcpStream, ToSocketAddrs as _};
use std::time::Duration;

/// `Metadata` v12: the first version whose topics carry their id and that every
/// broker flashsale supports (Kafka 2.8 to 4.x) answers.
const METADATA_VERSION: i16 = 12;
/// Kafka's `UNKNOWN_TOPIC_OR_PARTITION`.
const UNKNOWN_TOPIC: i16 = 3;
/// Longest answer read (a one-topic metadata answer is a few KiB).
const MAX_RESPONSE: usize = 16 << 20;

/// A topic's identity: its name and Kafka's id for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicIdentity {
    pub name: String,
    /// Kafka's topic id (a UUID), as text.
    pub id: String,
}

impl TopicIdentity {
    /// The key stored beside snapshots and projector offsets: `name/uuid` (`/` never
    /// occurs in a topic name).
    pub fn log_id(&self) -> String {
        format!("{}/{}", self.name, self.id)
    }
}

impl std::fmt::Display for TopicIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (topic id {})", self.name, self.id)
    }
}

/// The identity of `topic`, from the first bootstrap address of `brokers` that
/// answers. Errors when no broker answers, or the topic does not exist.
pub fn topic_identity(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<TopicIdentity> {
    let mut last = None;
    for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match ask(addr, topic, timeout) {
            Ok(Some(id)) => return Ok(id),
            Ok(None) => bail!(
                "topic {topic} does not exist on {brokers}; create the topics first: flashsale topics create --kafka {brokers} --partitions N"
            ),
            Err(e) => last = Some(e.context(format!("asking {addr} for the id of {topic}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker address in {brokers:?}")))
}

/// The identity of `topic` now: `Ok(None)` when the broker says it does not exist (it
/// was deleted), an error when no broker answered.
pub fn lookup(
    brokers: &str,
    topic: &str,
    timeout: Duration,
) -> anyhow::Result<Option<TopicIdentity>> {
    let mut last = None;
    for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match ask(addr, topic, timeout) {
            Ok(found) => return Ok(found),
            Err(e) => last = Some(e.context(format!("asking {addr} for the id of {topic}"))),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker address in {brokers:?}")))
}

/// A topic that is no longer the log a process serves: deleted (`now` is `None`), or
/// deleted and created again under the same name (a new topic id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recreated {
    pub topic: String,
    pub old_id: String,
    pub new_id: Option<String>,
}

impl std::fmt::Display for Recreated {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.new_id {
            Some(new) => write!(
                f,
                "topic {} was recreated (topic id {} -> {new})",
                self.topic, self.old_id
            ),
            None => write!(
                f,
                "topic {} was deleted (topic id {})",
                self.topic, self.old_id
            ),
        }
    }
}

/// What changed between the identities a process started with and the ones the broker
/// gives now (`now[i]` is the lookup of `expected[i].name`). Empty: same log.
pub fn changes(expected: &[TopicIdentity], now: &[Option<TopicIdentity>]) -> Vec<Recreated> {
    expected
        .iter()
        .zip(now)
        .filter(|(e, n)| n.as_ref().is_none_or(|n| n.id != e.id))
        .map(|(e, n)| Recreated {
            topic: e.name.clone(),
            old_id: e.id.clone(),
            new_id: n.as_ref().map(|n| n.id.clone()),
        })
        .collect()
}

/// The changes in one line: "topic a was recreated (topic id X -> Y); topic b ...".
pub fn describe(changes: &[Recreated]) -> String {
    changes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Looks up every topic of `names` (see [`lookup`]); an error when a broker did not
/// answer for one of them (no verdict: try again later).
pub fn lookup_all(
    brokers: &str,
    names: &[&str],
    timeout: Duration,
) -> anyhow::Result<Vec<Option<TopicIdentity>>> {
    names.iter().map(|t| lookup(brokers, t, timeout)).collect()
}

fn ask(addr: &str, topic: &str, timeout: Duration) -> anyhow::Result<Option<TopicIdentity>> {
    let sock = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let mut conn = TcpStream::connect_timeout(&sock, timeout)
        .with_context(|| format!("cannot connect to {addr}; is Kafka running?"))?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    conn.set_nodelay(true)?;

    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(METADATA_VERSION)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("flashsale-topic-id")));
    let request = MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .with_allow_auto_topic_creation(false);
    let mut body = BytesMut::new();
    header.encode(&mut body, MetadataRequest::header_version(METADATA_VERSION))?;
    request.encode(&mut body, METADATA_VERSION)?;
    let mut frame = BytesMut::with_capacity(body.len() + 4);
    frame.put_i32(i32::try_from(body.len())?);
    frame.extend_from_slice(&body);
    conn.write_all(&frame)?;

    let mut len = [0u8; 4];
    conn.read_exact(&mut len)?;
    let len = usize::try_from(i32::from_be_bytes(len)).context("negative answer length")?;
    if len > MAX_RESPONSE {
        bail!("answer of {len} bytes: not a Kafka broker?");
    }
    let mut buf = vec![0u8; len];
    conn.read_exact(&mut buf)?;
    let mut buf = bytes::Bytes::from(buf);
    let rh = ResponseHeader::decode(&mut buf, MetadataResponse::header_version(METADATA_VERSION))?;
    if rh.correlation_id != 1 {
        bail!(
            "answer to another request (correlation id {})",
            rh.correlation_id
        );
    }
    let response = MetadataResponse::decode(&mut buf, METADATA_VERSION)?;
    let _ = buf.remaining();
    let Some(t) = response
        .topics
        .iter()
        .find(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == topic))
    else {
        return Ok(None);
    };
    match t.error_code {
        0 => {}
        UNKNOWN_TOPIC => return Ok(None),
        code => bail!("the broker answered error code {code} for topic {topic}"),
    }
    if t.topic_id.is_nil() {
        bail!("the broker at {addr} gave topic {topic} no id (Kafka older than 2.8?)");
    }
    Ok(Some(TopicIdentity {
        name: topic.to_string(),
        id: t.topic_id.to_string(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, id: &str) -> TopicIdentity {
        TopicIdentity {
            name: name.into(),
            id: id.into(),
        }
    }

    #[test]
    fn changes_name_each_topic_with_both_ids() {
        let expected = [
            id("s.commands", "A"),
            id("s.events", "B"),
            id("s.replies", "C"),
        ];
        assert!(changes(
            &expected,
            &[
                Some(id("s.commands", "A")),
                Some(id("s.events", "B")),
                Some(id("s.replies", "C"))
            ]
        )
        .is_empty());
        let c = changes(
            &expected,
            &[
                Some(id("s.commands", "A2")),
                None,
                Some(id("s.replies", "C")),
            ],
        );
        assert_eq!(c.len(), 2);
        let line = describe(&c);
        assert_eq!(
            line,
            "topic s.commands was recreated (topic id A -> A2); topic s.events was deleted (topic id B)"
        );
    }
}

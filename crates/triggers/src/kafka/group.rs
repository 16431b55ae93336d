//! The consumer-group offset store of a Kafka cluster, reached through the group coordinator:
//! `FindCoordinator`, `OffsetFetch`, `OffsetCommit` and `DeleteGroups` on a connection of its
//! own (`rskafka`, which carries the records, has no group APIs).
//!
//! Kappa commits as a *standalone* member of the group (generation -1, empty member id), the
//! way a Kafka client with manually assigned partitions commits: the offsets live in the
//! cluster's `__consumer_offsets`, under the trigger's group, visible to Kafka's own tools.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ParseResponseErrorCode as _;
use kafka_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, DeleteGroupsRequest, FindCoordinatorRequest, GroupId,
    OffsetCommitRequest, OffsetFetchRequest, RequestHeader, ResponseHeader, TopicName,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one request (connect included) may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest response accepted.
const MAX_RESPONSE: usize = 64 << 20;
/// The client id sent with every request.
const CLIENT_ID: &str = "kappa";

/// A committed position: the next offset to process and Kappa's metadata string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub offset: i64,
    pub metadata: Option<String>,
}

/// One connection to a broker, speaking the group APIs.
struct Connection {
    stream: TcpStream,
    address: String,
    correlation: i32,
    /// The broker's versions: api key -> (min, max).
    versions: HashMap<i16, (i16, i16)>,
}

impl Connection {
    async fn open(address: &str) -> Result<Self, String> {
        let stream = tokio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("connecting to {address} timed out"))?
            .map_err(|e| format!("connecting to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Self {
            stream,
            address: address.to_string(),
            correlation: 0,
            versions: HashMap::new(),
        };
        // Version 0 of ApiVersions is understood by every broker and needs no negotiation.
        let reply: ApiVersionsResponse = conn.exchange(&ApiVersionsRequest::default(), 0).await?;
        if let Some(e) = reply.error_code.err() {
            return Err(format!("ApiVersions on {address}: {e}"));
        }
        conn.versions = reply
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    /// The version of `R` to use: the highest both sides know, at most `cap`.
    fn version<R: Request>(&self, cap: i16) -> Result<i16, String> {
        let (broker_min, broker_max) = self.versions.get(&R::KEY).copied().ok_or_else(|| {
            format!(
                "the broker at {} does not support API {} (needed for consumer-group offsets)",
                self.address,
                R::KEY
            )
        })?;
        let version = cap.min(broker_max).min(R::VERSIONS.max);
        if version < broker_min.max(R::VERSIONS.min) {
            return Err(format!(
                "the broker at {} supports API {} versions {broker_min}..={broker_max}, none Kappa speaks",
                self.address,
                R::KEY
            ));
        }
        Ok(version)
    }

    async fn call<R: Request>(&mut self, request: &R, cap: i16) -> Result<R::Response, String> {
        let version = self.version::<R>(cap)?;
        self.exchange(request, version).await
    }

    async fn exchange<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, String> {
        let address = self.address.clone();
        tokio::time::timeout(REQUEST_TIMEOUT, self.roundtrip(request, version))
            .await
            .map_err(|_| format!("API {} request to {address} timed out", R::KEY))?
    }

    async fn roundtrip<R: Request>(
        &mut self,
        request: &R,
        version: i16,
    ) -> Result<R::Response, String> {
        self.correlation = self.correlation.wrapping_add(1);
        let correlation = self.correlation;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)));
        let mut body = BytesMut::new();
        header
            .encode(&mut body, R::header_version(version))
            .map_err(|e| format!("encoding API {} request header: {e}", R::KEY))?;
        request
            .encode(&mut body, version)
            .map_err(|e| format!("encoding API {} request: {e}", R::KEY))?;
        let mut frame = BytesMut::with_capacity(body.len() + 4);
        frame.put_u32(u32::try_from(body.len()).map_err(|_| "request too large".to_string())?);
        frame.extend_from_slice(&body);
        let io_err = |e: std::io::Error| format!("talking to {}: {e}", self.address);
        self.stream.write_all(&frame).await.map_err(io_err)?;
        let len = self.stream.read_u32().await.map_err(io_err)? as usize;
        if len > MAX_RESPONSE {
            return Err(format!("{} sent a {len}-byte response", self.address));
        }
        let mut buf = vec![0u8; len];
        self.stream.read_exact(&mut buf).await.map_err(io_err)?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, R::Response::header_version(version))
            .map_err(|e| format!("decoding API {} response header: {e}", R::KEY))?;
        if header.correlation_id != correlation {
            return Err(format!(
                "{} answered request {} to request {correlation}",
                self.address, header.correlation_id
            ));
        }
        let response = R::Response::decode(&mut buf, version)
            .map_err(|e| format!("decoding API {} response: {e}", R::KEY))?;
        if buf.has_remaining() {
            tracing::debug!(
                api = R::KEY,
                left = buf.remaining(),
                "unread response bytes"
            );
        }
        Ok(response)
    }
}

/// The offsets of one consumer group, through its coordinator.
pub struct GroupClient {
    bootstrap: Vec<String>,
    group: String,
    coordinator: Option<Connection>,
}

impl GroupClient {
    /// A client of `group` on the cluster of `bootstrap` (connects on first use).
    pub fn new(bootstrap: Vec<String>, group: &str) -> Self {
        Self {
            bootstrap,
            group: group.to_string(),
            coordinator: None,
        }
    }

    /// The group's name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Finds the group's coordinator through any bootstrap broker and connects to it.
    async fn coordinator(&mut self) -> Result<&mut Connection, String> {
        if self.coordinator.is_none() {
            let mut last = String::from("no bootstrap server");
            let mut found = None;
            for address in &self.bootstrap {
                match Self::find(address, &self.group).await {
                    Ok(coordinator) => {
                        found = Some(coordinator);
                        break;
                    }
                    Err(e) => last = e,
                }
            }
            let address = found.ok_or(last)?;
            self.coordinator = Some(Connection::open(&address).await?);
        }
        self.coordinator
            .as_mut()
            .ok_or_else(|| "no coordinator".to_string())
    }

    async fn find(bootstrap: &str, group: &str) -> Result<String, String> {
        let mut conn = Connection::open(bootstrap).await?;
        // Versions 0 to 3 answer with one coordinator (4 and later batch keys).
        let request = FindCoordinatorRequest::default()
            .with_key(StrBytes::from_string(group.to_string()))
            .with_key_type(0);
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            let reply = conn.call(&request, 3).await?;
            match reply.error_code.err() {
                None => return Ok(format!("{}:{}", reply.host.as_str(), reply.port)),
                Some(e) if e.is_retriable() => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Some(e) => {
                    return Err(format!(
                        "finding the coordinator of group {group} through {bootstrap}: {e}"
                    ));
                }
            }
        }
        Err(format!(
            "finding the coordinator of group {group} through {bootstrap}: not available"
        ))
    }

    /// Runs `op` on the coordinator; a broken connection or a moved coordinator is looked up
    /// again once.
    async fn with_retry<T>(
        &mut self,
        what: &str,
        op: impl for<'a> Fn(
            &'a mut Connection,
            &'a str,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, Retry>> + Send + 'a>,
        >,
    ) -> Result<T, String> {
        let mut last = String::new();
        for _ in 0..2 {
            let group = self.group.clone();
            let conn = match self.coordinator().await {
                Ok(c) => c,
                Err(e) => {
                    last = e;
                    self.coordinator = None;
                    continue;
                }
            };
            match op(conn, &group).await {
                Ok(v) => return Ok(v),
                Err(Retry::Again(e)) => {
                    last = e;
                    self.coordinator = None;
                }
                Err(Retry::Fail(e)) => return Err(format!("{what} of group {group}: {e}")),
            }
        }
        Err(format!("{what} of group {}: {last}", self.group))
    }

    /// The committed offsets of `partitions` of `topic`: absent when none is.
    pub async fn fetch(
        &mut self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<BTreeMap<i32, Committed>, String> {
        let topic = topic.to_string();
        let partitions = partitions.to_vec();
        self.with_retry("reading the committed offsets", move |conn, group| {
            let topic = topic.clone();
            let partitions = partitions.clone();
            Box::pin(async move {
                let request = OffsetFetchRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
                    .with_topics(Some(vec![
                        OffsetFetchRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partition_indexes(partitions),
                    ]));
                // Versions 1 to 7 take one group (8 and later batch groups).
                let reply = conn.call(&request, 7).await.map_err(Retry::Again)?;
                if let Some(e) = reply.error_code.err() {
                    return Err(Retry::of(e));
                }
                let mut out = BTreeMap::new();
                for t in reply.topics {
                    for p in t.partitions {
                        if let Some(e) = p.error_code.err() {
                            return Err(Retry::of(e));
                        }
                        if p.committed_offset >= 0 {
                            out.insert(
                                p.partition_index,
                                Committed {
                                    offset: p.committed_offset,
                                    metadata: p.metadata.map(|m| m.as_str().to_string()),
                                },
                            );
                        }
                    }
                }
                Ok(out)
            })
        })
        .await
    }

    /// Commits `offsets` (partition -> position) of `topic`.
    pub async fn commit(
        &mut self,
        topic: &str,
        offsets: &BTreeMap<i32, Committed>,
    ) -> Result<(), String> {
        if offsets.is_empty() {
            return Ok(());
        }
        let topic = topic.to_string();
        let offsets = offsets.clone();
        self.with_retry("committing offsets", move |conn, group| {
            let topic = topic.clone();
            let offsets = offsets.clone();
            Box::pin(async move {
                let partitions = offsets
                    .iter()
                    .map(|(p, c)| {
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(*p)
                            .with_committed_offset(c.offset)
                            .with_committed_leader_epoch(-1)
                            .with_committed_metadata(c.metadata.clone().map(StrBytes::from_string))
                    })
                    .collect();
                // A standalone commit: no generation, no member.
                let request = OffsetCommitRequest::default()
                    .with_group_id(GroupId(StrBytes::from_string(group.to_string())))
                    .with_generation_id_or_member_epoch(-1)
                    .with_member_id(StrBytes::from_static_str(""))
                    .with_retention_time_ms(-1)
                    .with_topics(vec![
                        OffsetCommitRequestTopic::default()
                            .with_name(TopicName(StrBytes::from_string(topic.clone())))
                            .with_partitions(partitions),
                    ]);
                // Versions 2 to 7 name topics (8 is flexible, 9 and later may use topic ids).
                let reply = conn.call(&request, 7).await.map_err(Retry::Again)?;
                for t in reply.topics {
                    for p in t.partitions {
                        if let Some(e) = p.error_code.err() {
                            return Err(Retry::of(e));
                        }
                    }
                }
                Ok(())
            })
        })
        .await
    }

    /// Deletes the group (its committed offsets). An unknown group is fine.
    pub async fn delete(&mut self) -> Result<(), String> {
        self.with_retry("deleting", |conn, group| {
            Box::pin(async move {
                let request = DeleteGroupsRequest::default()
                    .with_groups_names(vec![GroupId(StrBytes::from_string(group.to_string()))]);
                let reply = conn.call(&request, 2).await.map_err(Retry::Again)?;
                for r in reply.results {
                    match r.error_code.err() {
                        None
                        | Some(kafka_protocol::ResponseError::GroupIdNotFound)
                        | Some(kafka_protocol::ResponseError::InvalidGroupId) => {}
                        Some(e) => return Err(Retry::of(e)),
                    }
                }
                Ok(())
            })
        })
        .await
    }
}

/// Whether a failed group request is worth sending again to a freshly found coordinator.
enum Retry {
    Again(String),
    Fail(String),
}

impl Retry {
    fn of(e: kafka_protocol::ResponseError) -> Self {
        use kafka_protocol::ResponseError as E;
        match e {
            E::NotCoordinator | E::CoordinatorNotAvailable | E::CoordinatorLoadInProgress => {
                Self::Again(e.to_string())
            }
            other => Self::Fail(other.to_string()),
        }
    }
}

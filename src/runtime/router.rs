//! Input records wait here until they can be routed in timestamp order across the input
//! partitions, as Kafka Streams picks a task's next record (KIP-695).
//!
//! librdkafka fetches each partition on its own, so after a restart or under a backlog the
//! read topic's partitions can be fetched far ahead of the room topics'. Routed in arrival
//! order, reads would then run ahead of the joins and messages they follow: reads by users
//! who have not joined yet count as non-member reads, and reads of messages not seen yet are
//! parked, beyond the per-user bound, and dropped. So a record is routed only when no other
//! assigned partition can still deliver an earlier one: every partition either has buffered
//! records (whose heads are compared) or has nothing left to fetch. A partition known to have
//! unfetched records holds routing back until it is fetched, or for at most `max_idle`
//! (at least [`FIRST_FETCH_PATIENCE`] for one nothing was polled from yet).
//!
//! What waits here is bounded per partition, as Kafka Streams bounds it
//! (`buffered.records.per.partition`): a partition holding `buffered_records_per_partition`
//! records is paused in the client until routing has taken half of them.
//! Unlike Java's consumer, librdkafka drops a paused partition's prefetched records and
//! fetches them again after the resume: a bound the benchmark's backlog reaches costs 10-30%
//! of its throughput (BENCHMARKS.md, 7 December, a twenty-third session), so the default is
//! well above what a backlog piles up here (1.1-1.3 million records in all, at most about
//! 165,000 in one partition) and bounds stalls.

use std::cmp::Reverse;
use std::collections::binary_heap::PeekMut;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::message::{BorrowedMessage, Message, OwnedHeaders};

use crate::codec::{self, DecodeError, DecodeLimits};
use crate::config::Config;
use crate::receipts::Event;

// Every polled record is looked up in these maps: foldhash, as the engine's maps, not SipHash.
use crate::receipts::HashMap;

type Key = (Arc<str>, i32);

/// A record taken from the consumer: what routing, the tasks and the dead-letter topic read
/// of it. An input record is decoded as it is polled, as Kafka Streams deserializes a record
/// when it joins its partition's queue; only one that does not decode keeps its bytes and
/// headers, for the dead-letter topic. Asking librdkafka for a record's headers parses them
/// into a fresh buffer, also when there are none: 4% of the processing thread when it was
/// done for every record. Unlike rdkafka's `OwnedMessage` it does not carry a `String` of its
/// topic (topics are shared, see [`TopicNames`]): under a backlog the router holds hundreds
/// of thousands of these, and every allocation per record costs time and memory.
#[derive(Debug)]
pub struct Polled {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch, if the record has a timestamp.
    pub timestamp: Option<i64>,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// An input record, decoded; `bytes`: the length of its payload.
    Event { event: Event, bytes: u32 },
    /// A record as it came: a record of the repartition topic (its task decodes it), or an
    /// input record that did not decode, with its error (routing dead-letters it).
    Raw(Box<Raw>),
}

/// A record's bytes, kept: its key's, then its payload's, in one allocation.
#[derive(Debug)]
pub struct Raw {
    data: Box<[u8]>,
    /// The key's length in `data`, [`NO_KEY`] for a record without a key.
    key_len: u32,
    has_payload: bool,
    pub headers: Option<OwnedHeaders>,
    pub error: Option<DecodeError>,
}

/// `Raw::key_len` of a record without a key (which is not the same as an empty key).
const NO_KEY: u32 = u32::MAX;

/// How input records are decoded, by topic: the read topic's, and the room topics' (whose
/// room the topic names).
pub struct InputDecoder {
    read: String,
    room_prefix: String,
    repartition: String,
    limits: DecodeLimits,
}

impl InputDecoder {
    pub fn new(cfg: &Config) -> Self {
        InputDecoder {
            read: cfg.topics.read.clone(),
            room_prefix: cfg.topics.room_prefix.clone(),
            repartition: cfg.repartition_topic(),
            limits: cfg.decode_limits(),
        }
    }

    /// An input record of `topic` -> its event.
    pub fn input(&self, topic: &str, payload: &[u8]) -> Result<Event, DecodeError> {
        codec::decode_input(topic, &self.read, &self.room_prefix, payload, &self.limits)
    }

    /// Which of the topics it decodes `topic` is.
    fn kind(&self, topic: &str) -> TopicKind {
        if topic == self.read {
            TopicKind::Read
        } else if topic == self.repartition {
            TopicKind::Repartition
        } else {
            TopicKind::Room
        }
    }

    /// A polled record's verdict, by its topic and the topic's kind: `None` for one of the
    /// repartition topic, which its task decodes.
    fn polled(&self, topic: &str, kind: TopicKind, payload: &[u8]) -> Option<Result<Event, DecodeError>> {
        (kind != TopicKind::Repartition)
            .then(|| codec::decode_input_of(kind == TopicKind::Read, topic, &self.room_prefix, payload, &self.limits))
    }
}

/// What a topic's records are to the decoder: found once per topic (see [`TopicNames`]), not
/// by comparing names for every record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TopicKind {
    Read,
    /// A room topic, or any other input topic (which decodes as one).
    Room,
    Repartition,
}

/// What [`Polled::new`] reads of a fetched record: a record served in a batch
/// ([`crate::kafka::records::Record`]), or one rdkafka's `poll` gave.
pub trait Fetched {
    fn topic(&self) -> &str;
    /// Something that is the same for two records exactly when they are of one topic, if the
    /// record has it: see [`crate::kafka::records::Record::topic_identity`].
    fn topic_identity(&self) -> Option<(u64, usize)> {
        None
    }
    fn partition(&self) -> i32;
    fn offset(&self) -> i64;
    /// Milliseconds since the epoch, if the record has a timestamp.
    fn timestamp(&self) -> Option<i64>;
    fn key(&self) -> Option<&[u8]>;
    fn payload(&self) -> Option<&[u8]>;
    /// A copy of its headers, `None` if it has none.
    fn headers(&self) -> Option<OwnedHeaders>;
}

impl Fetched for crate::kafka::records::Record<'_> {
    fn topic(&self) -> &str {
        self.topic()
    }
    fn topic_identity(&self) -> Option<(u64, usize)> {
        Some(self.topic_identity())
    }
    fn partition(&self) -> i32 {
        self.partition()
    }
    fn offset(&self) -> i64 {
        self.offset()
    }
    fn timestamp(&self) -> Option<i64> {
        self.timestamp()
    }
    fn key(&self) -> Option<&[u8]> {
        self.key()
    }
    fn payload(&self) -> Option<&[u8]> {
        self.payload()
    }
    fn headers(&self) -> Option<OwnedHeaders> {
        self.headers()
    }
}

impl Fetched for BorrowedMessage<'_> {
    fn topic(&self) -> &str {
        Message::topic(self)
    }
    fn partition(&self) -> i32 {
        Message::partition(self)
    }
    fn offset(&self) -> i64 {
        Message::offset(self)
    }
    fn timestamp(&self) -> Option<i64> {
        Message::timestamp(self).to_millis()
    }
    fn key(&self) -> Option<&[u8]> {
        Message::key(self)
    }
    fn payload(&self) -> Option<&[u8]> {
        Message::payload(self)
    }
    fn headers(&self) -> Option<OwnedHeaders> {
        Message::headers(self).map(|h| h.detach())
    }
}

impl Polled {
    pub fn new(m: &impl Fetched, topics: &mut TopicNames, decoder: &InputDecoder) -> Polled {
        let (topic, kind) = topics.of(m, decoder);
        let payload = m.payload();
        let error = match decoder.polled(&topic, kind, payload.unwrap_or_default()) {
            Some(Ok(event)) => {
                // A Kafka record is far smaller than 4 GiB.
                let bytes = payload.map_or(0, |p| u32::try_from(p.len()).expect("a record under 4 GiB"));
                let body = Body::Event { event, bytes };
                return Polled { topic, partition: m.partition(), offset: m.offset(), timestamp: m.timestamp(), body };
            }
            Some(Err(e)) => Some(e),
            None => None,
        };
        let headers = if error.is_some() { m.headers() } else { None };
        let mut polled = Polled::from_parts(topic, m.partition(), m.offset(), m.timestamp(), m.key(), payload, headers);
        if let Body::Raw(raw) = &mut polled.body {
            raw.error = error;
        }
        polled
    }

    /// A record kept as it came (see [`Body::Raw`]).
    pub fn from_parts(
        topic: Arc<str>,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: Option<OwnedHeaders>,
    ) -> Polled {
        let (k, p) = (key.unwrap_or_default(), payload.unwrap_or_default());
        let mut data = Vec::with_capacity(k.len() + p.len());
        data.extend_from_slice(k);
        data.extend_from_slice(p);
        let raw = Raw {
            data: data.into_boxed_slice(),
            // A Kafka record is far smaller than 4 GiB.
            key_len: key.map_or(NO_KEY, |k| u32::try_from(k.len()).expect("a key under 4 GiB")),
            has_payload: payload.is_some(),
            headers,
            error: None,
        };
        Polled { topic, partition, offset, timestamp, body: Body::Raw(Box::new(raw)) }
    }

    /// The record's bytes, if it was kept as it came.
    pub fn raw(&self) -> Option<&Raw> {
        match &self.body {
            Body::Raw(raw) => Some(raw),
            Body::Event { .. } => None,
        }
    }
}

impl Raw {
    pub fn key(&self) -> Option<&[u8]> {
        (self.key_len != NO_KEY).then(|| &self.data[..self.key_len as usize])
    }

    /// The payload; empty if the record has none.
    pub fn payload(&self) -> &[u8] {
        &self.data[self.key().map_or(0, <[u8]>::len)..]
    }

    /// The payload, `None` if the record has none (a tombstone).
    pub fn payload_if_any(&self) -> Option<&[u8]> {
        self.has_payload.then(|| self.payload())
    }
}

/// The topic names records came from, one shared copy of each, with what their records are to
/// the decoder.
#[derive(Default)]
pub struct TopicNames {
    names: HashMap<Arc<str>, TopicKind>,
    /// The last one asked for: librdkafka hands records over in runs of one partition, so
    /// the last one usually answers without hashing the name.
    last: Option<(Arc<str>, TopicKind)>,
    /// The last record's [`Fetched::topic_identity`], if it had one: a record with the same
    /// one is of the same topic, known without reading its name.
    last_identity: Option<(u64, usize)>,
}

impl TopicNames {
    /// A fetched record's topic, and what its records are to `decoder`. Finding a topic's
    /// name costs a `strlen`, a UTF-8 check and comparisons of the name (about 3% of the
    /// processing thread for every record); a record whose topic identity is the last one's
    /// costs one comparison of two integers.
    fn of(&mut self, m: &impl Fetched, decoder: &InputDecoder) -> (Arc<str>, TopicKind) {
        let identity = m.topic_identity();
        if let (Some(id), Some(last)) = (identity, &self.last) {
            if self.last_identity == Some(id) {
                return (last.0.clone(), last.1);
            }
        }
        let found = self.lookup(m.topic(), |t| decoder.kind(t));
        self.last_identity = identity;
        found
    }

    fn lookup(&mut self, topic: &str, kind: impl FnOnce(&str) -> TopicKind) -> (Arc<str>, TopicKind) {
        if let Some(last) = self.last.as_ref().filter(|last| *last.0 == *topic) {
            return (last.0.clone(), last.1);
        }
        let found = match self.names.get_key_value(topic) {
            Some((t, &k)) => (t.clone(), k),
            None => {
                let t: Arc<str> = Arc::from(topic);
                let k = kind(topic);
                self.names.insert(t.clone(), k);
                (t, k)
            }
        };
        self.last = Some(found.clone());
        found
    }
}

struct Part {
    key: Key,
    queue: Queue,
    /// The offset after the last record polled (or the committed offset), if known.
    next: Option<i64>,
    /// The last answer to "more to fetch?" for `next` (`None`: the client does not know
    /// yet), and when it was found. Asking the client costs a lookup linear in the number of
    /// topics, so answers are kept: "more to fetch" holds until records are polled; "caught
    /// up" is asked again after `recheck`, and "not known" after [`RECHECK_CAUGHT_UP`], as a
    /// fetch response may have changed them.
    more: Option<(Option<bool>, Instant)>,
    /// How long the current "caught up" is kept: [`RECHECK_CAUGHT_UP`], doubled each time
    /// the partition is found caught up again with nothing polled in between, up to
    /// [`RECHECK_IDLE`].
    recheck: Duration,
    /// The last high watermark the client gave, and when. A high watermark never goes back,
    /// so while `next` is below it there is more to fetch without asking: under a backlog a
    /// partition whose queue runs dry is not asked at all. Kept for `RECHECK_HIGH` only, so
    /// that a topic deleted and created again under its name cannot hold routing back for
    /// long with the old topic's watermark.
    high: Option<(i64, Instant)>,
    /// Whether a record was polled from it since it was assigned (or the buffer was reset).
    polled: bool,
    /// The offset after the last record the current routing round took from it, if any.
    taken: Option<i64>,
    /// Whether it holds too many records to fetch more: set at the bound, cleared at half
    /// of it. The client is told at the next [`InputBuffer::take_fetching`].
    hold: bool,
    /// Whether the client was told to pause it (and not to resume it since).
    paused: bool,
}

/// A record in its partition's [`Queue`]: a [`Polled`] without the topic and partition,
/// which are the same for the whole queue, and with its timestamp in 8 bytes, not an
/// `Option`'s 16. 88 bytes against 120: under a backlog the router held up to 1.3 million
/// records under `at_least_once` and 2.6 million under `exactly_once`, below the default
/// bound per partition (BENCHMARKS.md, 7 December, a twenty-second session).
struct Queued {
    offset: i64,
    /// Milliseconds since the epoch; [`NO_TIMESTAMP`] for a record without one.
    timestamp: i64,
    body: Body,
}

/// `Queued::timestamp` of a record without a timestamp (Kafka's are never negative).
const NO_TIMESTAMP: i64 = i64::MIN;

impl Queued {
    fn new(offset: i64, timestamp: Option<i64>, body: Body) -> Queued {
        Queued { offset, timestamp: timestamp.unwrap_or(NO_TIMESTAMP), body }
    }

    /// Its timestamp for routing: 0 for a record without one.
    fn order(&self) -> i64 {
        if self.timestamp == NO_TIMESTAMP {
            0
        } else {
            self.timestamp
        }
    }

    fn into_polled(self, key: &Key) -> Polled {
        let timestamp = (self.timestamp != NO_TIMESTAMP).then_some(self.timestamp);
        Polled { topic: key.0.clone(), partition: key.1, offset: self.offset, timestamp, body: self.body }
    }
}

/// Records a chunk of a partition's [`Queue`] holds.
const CHUNK: usize = 256;

/// A partition's records waiting to be routed, in chunks of [`CHUNK`]. A `VecDeque` grows by
/// doubling, copying what it holds each time, and keeps the room it grew to: the router holds
/// the 1,000 room topics' records of a backlog for seconds, 500-600 in each, which left
/// about as much room unused as used. Here at most one chunk is part full, and growing copies
/// nothing beyond the first chunk. A queue that empties keeps its one chunk, so that a
/// partition of a live stream, which holds a record or two at a time, allocates nothing.
#[derive(Default)]
struct Queue {
    chunks: VecDeque<VecDeque<Queued>>,
    len: usize,
}

impl Queue {
    fn push_back(&mut self, m: Queued) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < CHUNK => chunk.push_back(m),
            _ => {
                // The first chunk grows as a `VecDeque` does (most partitions never fill it);
                // the next ones are allocated whole.
                let mut chunk = if self.chunks.is_empty() { VecDeque::new() } else { VecDeque::with_capacity(CHUNK) };
                chunk.push_back(m);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<Queued> {
        let chunk = self.chunks.front_mut()?;
        let m = chunk.pop_front()?;
        if chunk.is_empty() && self.chunks.len() > 1 {
            self.chunks.pop_front();
        }
        self.len -= 1;
        Some(m)
    }

    fn front(&self) -> Option<&Queued> {
        self.chunks.front().and_then(VecDeque::front)
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn clear(&mut self) {
        self.chunks.truncate(1);
        if let Some(chunk) = self.chunks.front_mut() {
            chunk.clear();
        }
        self.len = 0;
    }
}

/// How long a partition found caught up is taken to stay so before the client is asked again
/// (the first time: see [`RECHECK_IDLE`]).
/// Asking costs a lookup linear in the number of topics (1,000 room topics: 7% of the
/// processing thread at 20 ms). Taking a partition for caught up a little too long only lets
/// a later record of another partition go first, as one fetched late would: a read that gets
/// ahead of its message is parked (spec rule 8). It is also how long a partition the client
/// knows nothing of yet (no fetch response has named it) is taken to stay so: at start-up,
/// before the first responses, every routing round asked about each of 1,000 room topics,
/// some 56,000 lookups in two seconds (BENCHMARKS.md, 6 December, a seventeenth session).
pub const RECHECK_CAUGHT_UP: Duration = Duration::from_millis(100);

/// The longest a partition found caught up again and again is taken to stay so. A partition
/// with nothing new for a while is most likely idle: under a backlog the 1,000 room topics
/// run dry one by one and stay so, and asking about each of them every 100 ms was 3.3% of the
/// processing thread (BENCHMARKS.md, 5 December, a ninth session). A record polled from it
/// brings it back to [`RECHECK_CAUGHT_UP`].
pub const RECHECK_IDLE: Duration = Duration::from_secs(1);

/// How long a partition's last known high watermark is trusted (see `Part::high`).
pub const RECHECK_HIGH: Duration = Duration::from_secs(1);

impl Part {
    fn new(key: Key, next: Option<i64>) -> Part {
        Part {
            key,
            queue: Queue::default(),
            next,
            more: None,
            recheck: RECHECK_CAUGHT_UP,
            high: None,
            polled: false,
            taken: None,
            hold: false,
            paused: false,
        }
    }

    fn has_more(&mut self, backlog: &dyn Backlog, now: Instant) -> Option<bool> {
        match self.more {
            Some((Some(true), _)) => return Some(true),
            Some((Some(false), at)) if now.duration_since(at) < self.recheck => return Some(false),
            Some((None, at)) if now.duration_since(at) < RECHECK_CAUGHT_UP => return None,
            _ => {}
        }
        let was_caught_up = matches!(self.more, Some((Some(false), _)));
        let answer = match (self.next, self.high) {
            (Some(next), Some((high, at))) if next < high && now.duration_since(at) < RECHECK_HIGH => Some(true),
            _ => backlog.watermarks(&self.key.0, self.key.1).map(|(low, high)| {
                self.high = Some((high, now));
                high > self.next.unwrap_or(low.max(0))
            }),
        };
        self.more = Some((answer, now));
        self.recheck = match answer {
            Some(false) if was_caught_up => (self.recheck * 2).min(RECHECK_IDLE),
            _ => RECHECK_CAUGHT_UP,
        };
        answer
    }
}

#[derive(Default)]
pub struct InputBuffer {
    /// The partitions, each at its place in `index`. Every record goes through a partition's
    /// queue, so the per-record paths find its partition without hashing its key: `push` by
    /// the partition of the record before (librdkafka hands records over in runs of one
    /// partition), `drain_ready` by index.
    parts: Vec<Part>,
    index: HashMap<Key, usize>,
    /// Each partition's place in the order of the keys, which breaks ties of timestamps (see
    /// `drain_ready`); emptied when the partitions change, computed again when needed.
    ranks: Vec<u32>,
    /// Where the last record pushed went.
    last_pushed: usize,
    waiting_since: Option<Instant>,
    /// Records in all queues (asked on every batch: kept, not summed over the partitions).
    buffered: usize,
    /// The partitions the current routing round took records from (their `taken` is set).
    taken: Vec<usize>,
    /// The most records a partition holds before it is paused (0: no bound).
    bound: usize,
    /// Whether some partition's `hold` may differ from what the client was told.
    fetching_changed: bool,
    /// Partitions revoked or assigned again while paused: to resume in the client, so that
    /// they are not paused when assigned next.
    released: Vec<Key>,
    /// The most records one partition held since [`InputBuffer::take_peak`] was last called.
    peak: usize,
}

/// Which partitions the client should pause and resume, from [`InputBuffer::take_fetching`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FetchChanges {
    pub pause: Vec<(Arc<str>, i32)>,
    pub resume: Vec<(Arc<str>, i32)>,
}

/// Where a routing round left an input partition: the offset after the last record it took.
pub type Taken = (Arc<str>, i32, i64);

/// What a partition holds on the broker, as far as the client knows.
pub trait Backlog {
    /// The low and high watermarks of `topic`/`partition`: records from the position up to
    /// the high watermark (from the low one, when the position is unknown) are not fetched
    /// yet. `None` when the client does not know yet (no fetch response has named it so far).
    fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)>;
}

/// How long routing waits for a partition with records on the broker that nothing was polled
/// from yet (just assigned, or rewound): as Kafka Streams does for unknown lag, until its first
/// fetch, within reason. librdkafka learns a partition's high watermark from any fetch
/// response that names it, also one that carried none of its records: a response stops at
/// `fetch.max.bytes`, filled in the request's order, which librdkafka turns by one partition
/// per request. So over a backlog of 1,016 partitions the last room topics were first fetched
/// about 2 s after the read topic's partitions, with their watermarks long known; waiting for
/// them only `max_idle` (1 s) routed the 420,000 records buffered meanwhile out of order, and
/// the reads that ran ahead of their messages (82,840-384,372 per run) were parked, and many
/// dropped (BENCHMARKS.md, 5 December, later).
pub const FIRST_FETCH_PATIENCE: Duration = Duration::from_secs(10);

impl InputBuffer {
    /// A buffer that pauses a partition holding `bound` records (0: no bound).
    pub fn with_bound(bound: usize) -> Self {
        InputBuffer { bound, ..Default::default() }
    }

    pub fn assign(&mut self, topic: &str, partition: i32, next: Option<i64>) {
        let key: Key = (Arc::from(topic), partition);
        match self.index.get(&key) {
            Some(&i) => {
                let old = std::mem::replace(&mut self.parts[i], Part::new(key, next));
                self.buffered -= old.queue.len();
                self.release(old);
            }
            None => {
                self.add(key, next);
            }
        }
    }

    pub fn revoke(&mut self, topic: &str, partition: i32) {
        let Some(i) = self.index.remove(&(Arc::from(topic), partition)) else { return };
        let old = self.parts.swap_remove(i);
        self.buffered -= old.queue.len();
        if let Some(moved) = self.parts.get(i) {
            self.index.insert(moved.key.clone(), i);
        }
        self.ranks.clear();
        self.release(old);
    }

    /// A partition let go while the client had it paused is resumed there.
    fn release(&mut self, old: Part) {
        if old.paused {
            self.released.push(old.key);
        }
    }

    /// Drops every buffered record (the consumer was rewound) and sets each partition's
    /// position from `positions`.
    pub fn reset(&mut self, positions: &HashMap<Key, i64>) {
        for part in self.parts.iter_mut() {
            part.queue.clear();
            part.next = positions.get(&part.key).copied();
            part.more = None;
            part.high = None;
            part.polled = false;
            part.hold = false;
        }
        self.buffered = 0;
        self.waiting_since = None;
        self.fetching_changed = true;
    }

    pub fn push(&mut self, m: Polled) {
        let Polled { topic, partition, offset, timestamp, body } = m;
        let i = match self.parts.get(self.last_pushed) {
            Some(p) if p.key.1 == partition && (Arc::ptr_eq(&p.key.0, &topic) || p.key.0 == topic) => self.last_pushed,
            _ => self.index_of(&topic, partition),
        };
        self.last_pushed = i;
        let part = &mut self.parts[i];
        part.next = Some(offset + 1);
        part.more = None;
        part.polled = true;
        part.queue.push_back(Queued::new(offset, timestamp, body));
        self.buffered += 1;
        self.peak = self.peak.max(part.queue.len());
        if self.bound > 0 && !part.hold && part.queue.len() >= self.bound {
            part.hold = true;
            self.fetching_changed = true;
        }
    }

    /// The most records one partition held since the last call (what the bound is measured
    /// against).
    pub fn take_peak(&mut self) -> usize {
        std::mem::take(&mut self.peak)
    }

    /// What the client should be told about fetching, since the last call: partitions that
    /// reached the bound to pause, partitions routing took half their bound from (or let go
    /// of, or dropped the records of) to resume.
    pub fn take_fetching(&mut self) -> FetchChanges {
        let mut changes = FetchChanges { pause: Vec::new(), resume: std::mem::take(&mut self.released) };
        if !std::mem::take(&mut self.fetching_changed) {
            return changes;
        }
        for part in self.parts.iter_mut().filter(|p| p.hold != p.paused) {
            part.paused = part.hold;
            let list = if part.hold { &mut changes.pause } else { &mut changes.resume };
            list.push(part.key.clone());
        }
        changes
    }

    /// The partition's index, added (with an unknown position) if it was not assigned.
    fn index_of(&mut self, topic: &Arc<str>, partition: i32) -> usize {
        let key: Key = (topic.clone(), partition);
        match self.index.get(&key) {
            Some(&i) => i,
            None => self.add(key, None),
        }
    }

    /// Adds a partition not held yet; returns its index.
    fn add(&mut self, key: Key, next: Option<i64>) -> usize {
        let i = self.parts.len();
        self.index.insert(key.clone(), i);
        self.parts.push(Part::new(key, next));
        self.ranks.clear();
        i
    }

    pub fn buffered(&self) -> usize {
        self.buffered
    }

    /// Appends to `out` the records that can be routed now, in timestamp order (each
    /// partition's own order kept), at most `limit` of them: the rest wait for the next call;
    /// returns whether routing went ahead without waiting any longer for a lagging partition
    /// (after `max_idle`). Appends to `taken`, once for each partition records were taken
    /// from, the offset after its last one: what committing them will commit, without a
    /// lookup per record. The caller keeps both vectors from one call to the next, so that a
    /// batch of ten thousand records does not grow a new one.
    pub fn drain_ready(
        &mut self,
        backlog: &dyn Backlog,
        max_idle: Duration,
        out: &mut Vec<Polled>,
        taken: &mut Vec<Taken>,
        limit: usize,
    ) -> bool {
        let enforced = self.take_ready(backlog, max_idle, out, limit);
        for i in self.taken.drain(..) {
            let part = &mut self.parts[i];
            let next = part.taken.take().expect("listed when taken");
            taken.push((part.key.0.clone(), part.key.1, next));
        }
        enforced
    }

    fn take_ready(&mut self, backlog: &dyn Backlog, max_idle: Duration, out: &mut Vec<Polled>, limit: usize) -> bool {
        if self.buffered == 0 {
            self.waiting_since = None;
            return false;
        }
        // The longest any empty partition asks us to wait: max_idle for a known backlog, more
        // for one not fetched at all yet.
        let now = Instant::now();
        let mut patience = None;
        for part in self.parts.iter_mut().filter(|p| p.queue.is_empty()) {
            match part.has_more(backlog, now) {
                Some(false) => {}
                Some(true) if part.polled => patience = patience.max(Some(max_idle)),
                _ => patience = Some(FIRST_FETCH_PATIENCE.max(max_idle)),
            }
        }
        // When the wait ran out: a round that stops at `limit` keeps it, so that the next
        // goes on at once rather than waiting again.
        let mut expired = None;
        if let Some(patience) = patience {
            let since = *self.waiting_since.get_or_insert_with(Instant::now);
            if since.elapsed() < patience {
                return false;
            }
            expired = Some(since);
        }
        let enforced = expired.is_some();
        self.waiting_since = None;
        if self.ranks.len() != self.parts.len() {
            let mut order: Vec<usize> = (0..self.parts.len()).collect();
            order.sort_unstable_by(|&a, &b| self.parts[a].key.cmp(&self.parts[b].key));
            self.ranks = vec![0; order.len()];
            for (rank, i) in order.into_iter().enumerate() {
                self.ranks[i] = rank as u32;
            }
        }
        // Heads in (timestamp, key) order: the key's rank stands for the key.
        let mut heads: BinaryHeap<Reverse<(i64, u32, usize)>> = self
            .parts
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.queue.front().map(|m| Reverse((m.order(), self.ranks[i], i))))
            .collect();
        let until = out.len().saturating_add(limit);
        while out.len() < until {
            let Some(mut head) = heads.peek_mut() else { break };
            let Reverse((_, rank, i)) = *head;
            let part = &mut self.parts[i];
            let m = part.queue.pop_front().expect("a partition in the heap has a head");
            if part.taken.replace(m.offset + 1).is_none() {
                self.taken.push(i);
            }
            out.push(m.into_polled(&part.key));
            self.buffered -= 1;
            if part.hold && part.queue.len() <= self.bound / 2 {
                part.hold = false;
                self.fetching_changed = true;
            }
            if let Some(next) = part.queue.front() {
                // Replaced in place: one sift down instead of a pop and a push.
                *head = Reverse((next.order(), rank, i));
                continue;
            }
            PeekMut::pop(head);
            if !enforced && part.has_more(backlog, now) != Some(false) {
                // It may deliver something earlier than the other heads: wait for it.
                self.waiting_since = Some(Instant::now());
                break;
            }
        }
        if enforced && !heads.is_empty() {
            // Stopped at `limit` (an enforced round does not stop to wait), with records left.
            self.waiting_since = expired;
        }
        enforced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn record(topic: &str, partition: i32, offset: i64, ts: i64) -> Polled {
        Polled::from_parts(topic.into(), partition, offset, Some(ts), None, None, None)
    }

    fn timestamp(m: &Polled) -> i64 {
        m.timestamp.unwrap_or(0)
    }

    fn queued(offset: i64) -> Queued {
        Queued::new(offset, Some(offset), record("t", 0, offset, offset).body)
    }

    #[test]
    fn a_queued_record_leaves_its_topic_and_partition_to_its_queue() {
        let (queued, polled) = (std::mem::size_of::<Queued>(), std::mem::size_of::<Polled>());
        assert!(queued + 32 <= polled, "{queued} bytes queued against {polled} polled");
    }

    /// A fetched record of `topic`, with a topic identity if given.
    struct Fake<'a> {
        topic: &'a str,
        identity: Option<(u64, usize)>,
    }

    impl Fetched for Fake<'_> {
        fn topic(&self) -> &str {
            self.topic
        }
        fn topic_identity(&self) -> Option<(u64, usize)> {
            self.identity
        }
        fn partition(&self) -> i32 {
            0
        }
        fn offset(&self) -> i64 {
            0
        }
        fn timestamp(&self) -> Option<i64> {
            None
        }
        fn key(&self) -> Option<&[u8]> {
            None
        }
        fn payload(&self) -> Option<&[u8]> {
            None
        }
        fn headers(&self) -> Option<OwnedHeaders> {
            None
        }
    }

    fn cfg() -> Config {
        let mut cfg = Config::default();
        cfg.topics.read = "reads".into();
        cfg.topics.room_prefix = "room_".into();
        cfg
    }

    fn decoder() -> InputDecoder {
        InputDecoder::new(&cfg())
    }

    #[test]
    fn each_topic_name_is_one_shared_copy_whatever_the_order_asked() {
        let (mut names, decoder) = (TopicNames::default(), decoder());
        let mut get = |topic: &str| names.of(&Fake { topic, identity: None }, &decoder).0;
        let a = get("room_a");
        assert!(Arc::ptr_eq(&a, &get("room_a")), "the last one, again");
        let b = get("room_b");
        assert_eq!(&*b, "room_b");
        assert!(Arc::ptr_eq(&a, &get("room_a")), "an earlier one");
        assert!(Arc::ptr_eq(&b, &get("room_b")));
        assert_eq!(&*get("room_c"), "room_c", "never the last one for another name");
    }

    #[test]
    fn a_topics_kind_is_found_by_its_name_and_kept_with_it() {
        let (mut names, decoder) = (TopicNames::default(), decoder());
        let repartition = cfg().repartition_topic();
        let mut kind = |topic: &str| names.of(&Fake { topic, identity: None }, &decoder).1;
        for _ in 0..2 {
            assert_eq!(kind("reads"), TopicKind::Read);
            assert_eq!(kind("room_a"), TopicKind::Room);
            assert_eq!(kind(&repartition), TopicKind::Repartition);
            assert_eq!(kind("reads_2"), TopicKind::Room, "any other topic decodes as a room's");
        }
    }

    #[test]
    fn a_record_with_the_last_ones_topic_identity_is_of_its_topic_and_any_other_is_found_by_name() {
        let (mut names, decoder) = (TopicNames::default(), decoder());
        let mut of = |topic: &str, identity: Option<(u64, usize)>| names.of(&Fake { topic, identity }, &decoder);
        let (a, kind) = of("reads", Some((1, 10)));
        assert_eq!((&*a, kind), ("reads", TopicKind::Read));
        // The same identity: the name is not read (a record of one topic never has another's).
        let (same, kind) = of("not read", Some((1, 10)));
        assert!(Arc::ptr_eq(&a, &same));
        assert_eq!(kind, TopicKind::Read);
        // Another identity, or none: found by name.
        let (b, kind) = of("room_b", Some((1, 11)));
        assert_eq!((&*b, kind), ("room_b", TopicKind::Room));
        assert_eq!(&*of("room_c", Some((2, 11))).0, "room_c", "the same address in another batch");
        assert_eq!(&*of("room_d", None).0, "room_d");
        assert_eq!(&*of("room_e", Some((2, 11))).0, "room_e", "a record without one in between");
    }

    #[test]
    fn a_partition_queue_is_first_in_first_out_across_chunks_and_keeps_one_chunk_when_empty() {
        let mut q = Queue::default();
        let mut model = VecDeque::new();
        let mut offset = 0;
        // Rounds of pushes and pops that cross chunk boundaries, empty the queue and refill it.
        for (push, pop) in [(3, 1), (CHUNK * 2 + 5, 10), (0, CHUNK * 2), (CHUNK, CHUNK + 2), (1, 1), (CHUNK * 3, 0)] {
            for _ in 0..push {
                q.push_back(queued(offset));
                model.push_back(offset);
                offset += 1;
            }
            for _ in 0..pop {
                assert_eq!(q.pop_front().map(|m| m.offset), model.pop_front());
            }
            assert_eq!(q.len(), model.len());
            assert_eq!(q.is_empty(), model.is_empty());
            assert_eq!(q.front().map(|m| m.offset), model.front().copied());
            assert!(q.chunks.len() <= model.len().div_ceil(CHUNK) + 1, "at most one chunk more than needed");
            assert!(!q.chunks.is_empty(), "an empty queue keeps its chunk");
        }
        q.clear();
        assert!((q.len(), q.front().is_none(), q.pop_front().is_none()) == (0, true, true));
        assert_eq!(q.chunks.len(), 1);
        q.push_back(queued(7));
        assert_eq!(q.pop_front().map(|m| m.offset), Some(7));
    }

    /// A buffer with a room partition and a read partition, both from offset 0.
    fn room_and_reads() -> InputBuffer {
        let mut b = InputBuffer::default();
        b.assign("room", 0, Some(0));
        b.assign("reads", 0, Some(0));
        b
    }

    /// Partitions with records left on the broker.
    struct Lagging(HashSet<(String, i32)>);
    impl Backlog for Lagging {
        fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
            Some((0, if self.0.contains(&(topic.to_string(), partition)) { LAGGING_HIGH } else { 0 }))
        }
    }

    /// The high watermark of a lagging partition: past every offset a test polls.
    const LAGGING_HIGH: i64 = 1_000_000;

    fn drain(b: &mut InputBuffer, backlog: &dyn Backlog, max_idle: Duration) -> (Vec<Polled>, bool) {
        let mut out = Vec::new();
        let mut taken = Vec::new();
        let enforced = b.drain_ready(backlog, max_idle, &mut out, &mut taken, usize::MAX);
        // Each partition's last record taken, once per partition.
        let mut last: HashMap<(String, i32), i64> = HashMap::default();
        for m in &out {
            last.insert((m.topic.to_string(), m.partition), m.offset + 1);
        }
        let taken: HashMap<(String, i32), i64> = taken.into_iter().map(|(t, p, o)| ((t.to_string(), p), o)).collect();
        assert_eq!(taken, last, "what the round took, by partition");
        (out, enforced)
    }

    fn offsets(out: &[Polled]) -> Vec<(String, i64)> {
        out.iter().map(|m| (m.topic.to_string(), m.offset)).collect()
    }

    #[test]
    fn a_record_leaves_the_buffer_as_it_came_in_with_its_partition_and_without_a_timestamp_if_it_had_none() {
        let mut b = room_and_reads();
        b.push(Polled::from_parts("room".into(), 0, 0, None, Some(b"k"), Some(b"v"), None));
        b.push(record("room", 0, 1, 10));
        b.push(record("reads", 0, 0, 5));
        let (out, _) = drain(&mut b, &Lagging(HashSet::new()), Duration::from_secs(1));
        let seen: Vec<(String, i32, i64, Option<i64>)> =
            out.iter().map(|m| (m.topic.to_string(), m.partition, m.offset, m.timestamp)).collect();
        // Without a timestamp it is routed as of time 0, ahead of the read at 5.
        let want = [("room", 0, 0, None), ("reads", 0, 0, Some(5)), ("room", 0, 1, Some(10))];
        assert_eq!(seen, want.map(|(t, p, o, ts)| (t.to_string(), p, o, ts)));
        let raw = out[0].raw().expect("kept as it came");
        assert_eq!((raw.key(), raw.payload()), (Some(&b"k"[..]), &b"v"[..]));
    }

    #[test]
    fn records_go_out_in_timestamp_order_across_partitions() {
        let mut b = room_and_reads();
        for (i, ts) in [10, 20, 30].into_iter().enumerate() {
            b.push(record("room", 0, i as i64, ts));
        }
        for (i, ts) in [5, 15, 25].into_iter().enumerate() {
            b.push(record("reads", 0, i as i64, ts));
        }
        let (out, enforced) = drain(&mut b, &Lagging(HashSet::new()), Duration::from_secs(1));
        assert!(!enforced);
        let order: Vec<i64> = out.iter().map(timestamp).collect();
        assert_eq!(order, [5, 10, 15, 20, 25, 30]);
    }

    #[test]
    fn a_polled_record_keeps_its_key_and_payload_apart_and_tells_none_from_empty() {
        let polled = Polled::from_parts("t".into(), 0, 0, None, Some(b"room-1"), Some(b"{}"), None);
        let r = polled.raw().expect("kept as it came");
        assert_eq!((r.key(), r.payload(), r.payload_if_any()), (Some(&b"room-1"[..]), &b"{}"[..], Some(&b"{}"[..])));
        let polled = Polled::from_parts("t".into(), 0, 0, None, None, Some(b"{}"), None);
        let r = polled.raw().expect("kept as it came");
        assert_eq!((r.key(), r.payload()), (None, &b"{}"[..]));
        let polled = Polled::from_parts("t".into(), 0, 0, None, Some(b""), None, None);
        let r = polled.raw().expect("kept as it came");
        assert_eq!((r.key(), r.payload(), r.payload_if_any()), (Some(&b""[..]), &b""[..], None));
    }

    #[test]
    fn a_round_stops_at_its_limit_and_the_next_goes_on_in_order() {
        let mut b = room_and_reads();
        for i in 0..4 {
            b.push(record("room", 0, i, 10 * i + 5));
            b.push(record("reads", 0, i, 10 * i));
        }
        let caught_up = Lagging(HashSet::new());
        let (mut out, mut taken) = (Vec::new(), Vec::new());
        b.drain_ready(&caught_up, Duration::from_secs(1), &mut out, &mut taken, 3);
        assert_eq!(out.len(), 3);
        assert_eq!(b.buffered(), 5);
        let positions = |taken: &mut Vec<Taken>| -> Vec<(String, i64)> {
            let mut p: Vec<_> = taken.drain(..).map(|(t, _, o)| (t.to_string(), o)).collect();
            p.sort();
            p
        };
        assert_eq!(positions(&mut taken), [("reads".to_string(), 2), ("room".to_string(), 1)]);
        b.drain_ready(&caught_up, Duration::from_secs(1), &mut out, &mut taken, 3);
        assert_eq!(positions(&mut taken), [("reads".to_string(), 3), ("room".to_string(), 3)]);
        b.drain_ready(&caught_up, Duration::from_secs(1), &mut out, &mut taken, 3);
        assert_eq!(positions(&mut taken), [("reads".to_string(), 4), ("room".to_string(), 4)]);
        let order: Vec<i64> = out.iter().map(timestamp).collect();
        assert_eq!(order, [0, 5, 10, 15, 20, 25, 30, 35]);
        assert_eq!(b.buffered(), 0);
        b.drain_ready(&caught_up, Duration::from_secs(1), &mut out, &mut taken, 3);
        assert!(taken.is_empty(), "nothing taken, no position");
    }

    #[test]
    fn routing_that_stopped_waiting_goes_on_past_a_rounds_limit_without_waiting_again() {
        let mut b = room_and_reads();
        b.push(record("room", 0, 0, 10));
        for i in 0..3 {
            b.push(record("reads", 0, i, 50 + i));
        }
        let lagging = Lagging([("room".to_string(), 0)].into_iter().collect());
        let (mut out, mut taken) = (Vec::new(), Vec::new());
        let idle = Duration::from_millis(30);
        assert!(!b.drain_ready(&lagging, idle, &mut out, &mut taken, 10), "the room topic is behind");
        assert_eq!(offsets(&out), [("room".to_string(), 0)]);
        out.clear();
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.drain_ready(&lagging, idle, &mut out, &mut taken, 1));
        assert!(b.drain_ready(&lagging, idle, &mut out, &mut taken, 1), "no second wait of max_idle");
        assert!(b.drain_ready(&lagging, idle, &mut out, &mut taken, 1));
        assert_eq!(out.len(), 3);
        assert!(!b.drain_ready(&lagging, idle, &mut out, &mut taken, 1), "nothing left");
        let reads: Vec<i64> = taken.iter().filter(|(t, ..)| &**t == "reads").map(|(.., o)| *o).collect();
        assert_eq!(reads, [1, 2, 3], "one position a round");
    }

    #[test]
    fn a_partition_with_unfetched_records_holds_routing_back_until_max_idle() {
        let mut b = room_and_reads();
        b.push(record("reads", 0, 0, 50));
        let lagging = Lagging([("room".to_string(), 0)].into_iter().collect());
        assert!(drain(&mut b, &lagging, Duration::from_millis(30)).0.is_empty(), "the room topic is behind");
        // Once its records are fetched, the earlier one goes first.
        b.push(record("room", 0, 0, 40));
        let (out, _) = drain(&mut b, &lagging, Duration::from_millis(30));
        assert_eq!(offsets(&out), [("room".to_string(), 0)], "then the room has nothing buffered but more to fetch");
        std::thread::sleep(Duration::from_millis(40));
        let (out, enforced) = drain(&mut b, &lagging, Duration::from_millis(30));
        assert!(enforced, "after max_idle routing goes on");
        assert_eq!(offsets(&out), [("reads".to_string(), 0)]);
    }

    #[test]
    fn a_partition_nothing_was_polled_from_yet_holds_routing_back_longer_than_max_idle() {
        let mut b = room_and_reads();
        b.push(record("reads", 0, 0, 50));
        // The client knows the room's high watermark (a fetch response named it) but has
        // delivered none of its records yet.
        let lagging = Lagging([("room".to_string(), 0)].into_iter().collect());
        assert!(drain(&mut b, &lagging, Duration::from_millis(10)).0.is_empty());
        std::thread::sleep(Duration::from_millis(30));
        let (out, enforced) = drain(&mut b, &lagging, Duration::from_millis(10));
        assert!(out.is_empty() && !enforced, "max_idle is for partitions that delivered something");
        b.push(record("room", 0, 0, 40));
        let (out, _) = drain(&mut b, &lagging, Duration::from_millis(10));
        assert_eq!(offsets(&out), [("room".to_string(), 0)]);
        // A rewind makes every partition new again.
        b.push(record("room", 0, 1, 45));
        b.reset(&Default::default());
        b.push(record("reads", 0, 0, 50));
        assert!(drain(&mut b, &lagging, Duration::from_millis(10)).0.is_empty());
        std::thread::sleep(Duration::from_millis(30));
        assert!(drain(&mut b, &lagging, Duration::from_millis(10)).0.is_empty(), "the room is to be fetched again");
    }

    #[test]
    fn idle_partitions_do_not_hold_anything_back_and_a_reset_drops_the_buffer() {
        let mut b = InputBuffer::default();
        b.assign("quiet-room", 0, Some(7));
        b.assign("reads", 1, Some(0));
        b.push(record("reads", 1, 0, 1));
        let (out, _) = drain(&mut b, &Lagging(HashSet::new()), Duration::from_secs(1));
        assert_eq!(out.len(), 1);
        b.push(record("reads", 1, 1, 2));
        assert_eq!(b.buffered(), 1);
        b.reset(&Default::default());
        assert_eq!(b.buffered(), 0);
        b.revoke("reads", 1);
        b.revoke("quiet-room", 0);
        assert!(drain(&mut b, &Lagging(HashSet::new()), Duration::from_secs(1)).0.is_empty());
    }

    #[test]
    fn the_buffered_count_follows_pushes_routing_revocations_and_reassignments() {
        let mut b = room_and_reads();
        for i in 0..3 {
            b.push(record("room", 0, i, 10 + i));
            b.push(record("reads", 0, i, 20 + i));
        }
        assert_eq!(b.buffered(), 6);
        // The room's records (older) go; the reads wait for the lagging room topic.
        let lagging = Lagging([("room".to_string(), 0)].into_iter().collect());
        assert_eq!(drain(&mut b, &lagging, Duration::from_secs(10)).0.len(), 3);
        assert_eq!(b.buffered(), 3);
        b.assign("reads", 0, Some(3)); // assigned again: its buffered records are gone
        assert_eq!(b.buffered(), 0);
        b.push(record("reads", 0, 3, 23));
        b.push(record("room", 0, 3, 13));
        b.revoke("room", 0);
        assert_eq!(b.buffered(), 1);
        assert_eq!(drain(&mut b, &Lagging(HashSet::new()), Duration::from_secs(1)).0.len(), 1);
        assert_eq!(b.buffered(), 0);
    }

    #[test]
    fn equal_timestamps_go_out_in_the_order_of_their_partitions_keys_through_revocations() {
        let mut b = InputBuffer::default();
        for (topic, partition) in [("d", 0), ("b", 1), ("a", 0), ("b", 0), ("c", 0)] {
            b.assign(topic, partition, Some(0));
        }
        let push_all = |b: &mut InputBuffer, offset: i64| {
            for (topic, partition) in [("c", 0), ("a", 0), ("b", 1), ("d", 0), ("b", 0)] {
                b.push(record(topic, partition, offset, 7));
            }
        };
        push_all(&mut b, 0);
        let idle = Lagging(HashSet::new());
        let order = |out: Vec<Polled>| out.iter().map(|m| format!("{}{}", m.topic, m.partition)).collect::<Vec<_>>();
        assert_eq!(order(drain(&mut b, &idle, Duration::from_secs(1)).0), ["a0", "b0", "b1", "c0", "d0"]);
        // Revoking moves other partitions within the buffer; records still find their own,
        // and one of a partition not assigned (any more) is kept, as before.
        b.revoke("d", 0);
        b.revoke("a", 0);
        push_all(&mut b, 1);
        b.push(record("c", 0, 2, 6));
        assert_eq!(b.buffered(), 6);
        let out = drain(&mut b, &idle, Duration::from_secs(1)).0;
        // c's second record is earlier (6), but a partition's own order is kept.
        assert_eq!(offsets(&out[3..5]), [("c".to_string(), 1), ("c".to_string(), 2)]);
        assert_eq!(order(out), ["a0", "b0", "b1", "c0", "c0", "d0"]);
    }

    /// Counts the questions asked of the client; every partition's high watermark is `.1`.
    struct Counting(std::cell::Cell<u32>, i64);
    impl Backlog for Counting {
        fn watermarks(&self, _: &str, _: i32) -> Option<(i64, i64)> {
            self.0.set(self.0.get() + 1);
            Some((0, self.1))
        }
    }

    #[test]
    fn the_client_is_asked_about_a_partition_only_when_its_answer_may_have_changed() {
        let mut b = room_and_reads();
        let lagging = Counting(Default::default(), 2);
        let ten_s = Duration::from_secs(10);
        assert!(drain(&mut b, &lagging, ten_s).0.is_empty());
        assert_eq!(lagging.0.get(), 0, "nothing buffered: nothing to decide, nothing asked");
        b.push(record("reads", 0, 0, 5));
        for _ in 0..5 {
            assert!(drain(&mut b, &lagging, ten_s).0.is_empty());
        }
        assert_eq!(lagging.0.get(), 1, "more to fetch stays so until records are polled");
        b.push(record("room", 0, 0, 1));
        assert_eq!(offsets(&drain(&mut b, &lagging, ten_s).0), [("room".to_string(), 0)]);
        assert_eq!(lagging.0.get(), 1, "polled, but still below the high watermark it gave: not asked");
        b.push(record("room", 0, 1, 2));
        let out = drain(&mut b, &lagging, ten_s).0;
        assert_eq!(offsets(&out), [("room".to_string(), 1), ("reads".to_string(), 0)]);
        assert_eq!(lagging.0.get(), 3, "polled up to it: asked, caught up; then the reads, run dry, asked");

        let mut b = room_and_reads();
        let caught_up = Counting(Default::default(), 0);
        let mut next = 0;
        let mut route_one = |b: &mut InputBuffer| {
            b.push(record("reads", 0, next, next));
            next += 1;
            assert_eq!(drain(b, &caught_up, Duration::from_secs(10)).0.len(), 1);
        };
        // Each round asks about the reads partition once (it just had records polled); the
        // room, found caught up in the first round, only after RECHECK_CAUGHT_UP.
        route_one(&mut b);
        assert_eq!(caught_up.0.get(), 2);
        route_one(&mut b);
        assert_eq!(caught_up.0.get(), 3, "caught up is kept for a while");
        std::thread::sleep(RECHECK_CAUGHT_UP + Duration::from_millis(5));
        route_one(&mut b);
        assert_eq!(caught_up.0.get(), 5, "then asked again");
    }

    /// Knows nothing of any partition until `.1` is set; counts the questions, as `Counting`.
    struct Unknown(std::cell::Cell<u32>, std::cell::Cell<bool>);
    impl Backlog for Unknown {
        fn watermarks(&self, _: &str, _: i32) -> Option<(i64, i64)> {
            self.0.set(self.0.get() + 1);
            self.1.get().then_some((0, 0))
        }
    }

    #[test]
    fn a_partition_the_client_knows_nothing_of_yet_is_asked_about_again_after_a_while() {
        let mut b = room_and_reads();
        b.push(record("reads", 0, 0, 5));
        let client = Unknown(Default::default(), Default::default());
        let ten_s = Duration::from_secs(10);
        for _ in 0..5 {
            assert!(drain(&mut b, &client, ten_s).0.is_empty(), "the room may hold something earlier");
        }
        assert_eq!(client.0.get(), 1, "not known: kept for a while, not asked every round");
        client.1.set(true);
        assert!(drain(&mut b, &client, ten_s).0.is_empty());
        assert_eq!(client.0.get(), 1, "still within RECHECK_CAUGHT_UP");
        std::thread::sleep(RECHECK_CAUGHT_UP + Duration::from_millis(5));
        assert_eq!(offsets(&drain(&mut b, &client, ten_s).0), [("reads".to_string(), 0)]);
        assert_eq!(client.0.get(), 3, "the room asked again, caught up; the read goes, its partition asked");
    }

    #[test]
    fn a_partition_found_caught_up_again_and_again_is_asked_less_often_until_it_has_records() {
        let mut b = room_and_reads();
        let caught_up = Counting(Default::default(), 0);
        let mut next = 0;
        // A read routed each round (and what else is buffered): the reads partition runs dry
        // and is asked every round.
        let mut round = |b: &mut InputBuffer, after: Duration| {
            std::thread::sleep(after);
            b.push(record("reads", 0, next, next));
            next += 1;
            assert!(!drain(b, &caught_up, Duration::from_secs(10)).0.is_empty());
            caught_up.0.get()
        };
        let step = RECHECK_CAUGHT_UP + Duration::from_millis(5);
        assert_eq!(round(&mut b, Duration::ZERO), 2, "both asked");
        assert_eq!(round(&mut b, step), 4, "the room again after 100 ms: still caught up");
        assert_eq!(round(&mut b, step), 5, "so kept for 200 ms now");
        assert_eq!(round(&mut b, step), 7, "asked at 210 ms, caught up a third time");
        assert_eq!(round(&mut b, step), 8, "kept for 400 ms now");
        b.push(record("room", 0, 0, 0));
        assert_eq!(round(&mut b, Duration::ZERO), 10, "a record from the room: it ran dry, asked");
        assert_eq!(round(&mut b, step), 12, "and back to 100 ms");
        let before = caught_up.0.get();
        for _ in 0..20 {
            round(&mut b, step);
        }
        let room = caught_up.0.get() - before - 20;
        assert!(room <= 5, "at most once a second at length: the room asked {room} times in 2.1 s");
    }

    #[test]
    fn a_high_watermark_is_trusted_for_a_while_only() {
        let mut b = room_and_reads();
        let lagging = Counting(Default::default(), 10);
        let ten_s = Duration::from_secs(10);
        b.push(record("reads", 0, 0, 5));
        b.push(record("room", 0, 0, 1));
        assert_eq!(offsets(&drain(&mut b, &lagging, ten_s).0), [("room".to_string(), 0)]);
        assert_eq!(lagging.0.get(), 1, "the room ran dry: asked, 9 records to fetch");
        b.push(record("room", 0, 1, 2));
        assert_eq!(offsets(&drain(&mut b, &lagging, ten_s).0), [("room".to_string(), 1)]);
        assert_eq!(lagging.0.get(), 1, "below the high watermark it knows: not asked");
        // A topic deleted and created again starts from 0 under its old name: its old high
        // watermark must not hold routing back for long.
        std::thread::sleep(RECHECK_HIGH + Duration::from_millis(5));
        b.push(record("room", 0, 2, 3));
        assert_eq!(offsets(&drain(&mut b, &lagging, ten_s).0), [("room".to_string(), 2)]);
        assert_eq!(lagging.0.get(), 2, "asked again once RECHECK_HIGH passed");
    }

    fn keys(list: &[(Arc<str>, i32)]) -> Vec<(String, i32)> {
        list.iter().map(|(t, p)| (t.to_string(), *p)).collect()
    }

    fn take_round(b: &mut InputBuffer, backlog: &dyn Backlog, limit: usize) -> Vec<Polled> {
        let (mut out, mut taken) = (Vec::new(), Vec::new());
        b.drain_ready(backlog, Duration::from_secs(10), &mut out, &mut taken, limit);
        out
    }

    #[test]
    fn a_partition_is_paused_at_the_bound_and_resumed_once_routing_took_half_of_it() {
        let mut b = InputBuffer::with_bound(4);
        b.assign("room", 0, Some(0));
        b.assign("reads", 0, Some(0));
        let idle = Lagging(HashSet::new());
        for i in 0..3 {
            b.push(record("reads", 0, i, 10 + i));
        }
        assert_eq!(b.take_fetching(), FetchChanges::default(), "below the bound");
        b.push(record("reads", 0, 3, 13));
        b.push(record("room", 0, 0, 11));
        let changes = b.take_fetching();
        assert_eq!((keys(&changes.pause), keys(&changes.resume)), (vec![("reads".to_string(), 0)], vec![]));
        assert_eq!(b.take_fetching(), FetchChanges::default(), "told once");
        // Records fetched before the pause took hold still come, and are kept.
        b.push(record("reads", 0, 4, 14));
        assert_eq!(b.buffered(), 6);
        // Two reads and the room's record: three reads left, above half the bound.
        assert_eq!(take_round(&mut b, &idle, 3).len(), 3);
        assert_eq!(b.take_fetching(), FetchChanges::default());
        assert_eq!(take_round(&mut b, &idle, 1).len(), 1);
        let changes = b.take_fetching();
        assert_eq!((keys(&changes.pause), keys(&changes.resume)), (vec![], vec![("reads".to_string(), 0)]));
        assert_eq!(b.take_fetching(), FetchChanges::default(), "told once");
        assert_eq!(take_round(&mut b, &idle, usize::MAX).len(), 2);
    }

    #[test]
    fn the_peak_is_the_most_one_partition_held_since_it_was_last_taken() {
        let mut b = InputBuffer::with_bound(100);
        b.assign("room", 0, Some(0));
        b.assign("reads", 0, Some(0));
        for i in 0..3 {
            b.push(record("reads", 0, i, 10 + i));
        }
        b.push(record("room", 0, 0, 20));
        assert_eq!(b.take_peak(), 3, "the largest partition, not the sum");
        assert_eq!(b.take_peak(), 0, "none pushed since");
        take_round(&mut b, &Lagging(HashSet::new()), usize::MAX);
        b.push(record("room", 0, 1, 21));
        assert_eq!(b.take_peak(), 1);
    }

    #[test]
    fn a_paused_partition_that_is_revoked_assigned_again_or_rewound_is_resumed() {
        let mut b = InputBuffer::with_bound(1);
        for p in 0..3 {
            b.assign("reads", p, Some(0));
            b.push(record("reads", p, 0, 10));
        }
        assert_eq!(b.take_fetching().pause.len(), 3);
        b.revoke("reads", 0);
        b.assign("reads", 1, Some(0));
        let changes = b.take_fetching();
        assert_eq!(
            (keys(&changes.pause), keys(&changes.resume)),
            (vec![], vec![("reads".to_string(), 0), ("reads".to_string(), 1)])
        );
        b.reset(&Default::default());
        assert_eq!(keys(&b.take_fetching().resume), [("reads".to_string(), 2)]);
        assert_eq!(b.buffered(), 0);
    }

    proptest::proptest! {
        /// Whatever is polled and routed, routing never waits on a partition the client was
        /// told to pause (it would wait for good), and no partition holds more than the bound
        /// unless the client was told to pause it.
        #[test]
        fn routing_never_waits_on_a_paused_partition(
            bound in 1usize..6,
            steps in proptest::collection::vec((0usize..4, 0usize..8, 0usize..5), 1..120),
        ) {
            let partitions = 3;
            let mut b = InputBuffer::with_bound(bound);
            for p in 0..partitions {
                b.assign("in", p as i32, Some(0));
            }
            // Every partition has more on the broker: routing waits on any that runs dry.
            let backlog = Lagging((0..partitions).map(|p| ("in".to_string(), p as i32)).collect());
            let (mut next, mut paused) = (vec![0i64; partitions], HashSet::new());
            let mut clock = 0;
            for (partition, polled, routed) in steps {
                for _ in 0..polled {
                    let p = partition % partitions;
                    // Paused in the client: nothing more comes (beyond what the bound allows
                    // to arrive late, which the first push past it stands for).
                    if paused.contains(&p) && b.parts[b.index[&(Arc::from("in"), p as i32)]].queue.len() > bound {
                        break;
                    }
                    clock += 1;
                    b.push(record("in", p as i32, next[p], clock));
                    next[p] += 1;
                }
                take_round(&mut b, &backlog, routed);
                let changes = b.take_fetching();
                for (_, p) in &changes.pause {
                    proptest::prop_assert!(paused.insert(*p as usize), "paused twice");
                }
                for (_, p) in &changes.resume {
                    paused.remove(&(*p as usize));
                }
                for part in &b.parts {
                    let p = part.key.1 as usize;
                    if paused.contains(&p) {
                        proptest::prop_assert!(!part.queue.is_empty(), "partition {} paused and empty", p);
                    } else {
                        proptest::prop_assert!(part.queue.len() < bound, "partition {} holds {} unpaused", p, part.queue.len());
                    }
                }
            }
        }
    }
}

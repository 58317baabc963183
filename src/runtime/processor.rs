//! The processing loop's state: routing input records to the repartition topic, running
//! tasks, and committing output, state and offsets in the right order.
//!
//! Order of a commit (at-least-once): (1) wait until every produced record (receipts,
//! repartition records, dead letters) is acknowledged; (2) write each task's state with the
//! repartition offset and source positions it reflects, in one RocksDB batch; (3) commit the
//! consumer's offsets to Kafka. A crash between any two steps re-processes input, and the
//! task's source positions make that re-processing a no-op for the state; the worst case is
//! a receipt emitted twice, never one lost.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, info_span, warn};

use super::context::RuntimeContext;
use super::task::{Task, TaskError};
use super::RuntimeError;
use crate::codec::{self, encode_receipt, DecodeError, DecodeLimits};
use crate::config::Config;
use crate::kafka::envelope::{self, Source};
use crate::kafka::partitioner::partition_for;
use crate::metrics::Metrics;
use crate::receipts::{Millis, Outcomes};
use crate::store::rocks::RocksOptions;

pub(crate) type Consumer_ = BaseConsumer<RuntimeContext>;

/// Counts acknowledgements and failures of produced records.
#[derive(Default)]
pub struct DeliveryContext {
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((e, msg)) = result {
            self.failures.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_failure.lock().unwrap();
            if first.is_none() {
                *first = Some(format!("producing to {}: {e}", msg.topic()));
            }
        }
    }
}

impl DeliveryContext {
    /// Failures since the last call, with the first one's description.
    fn take_failures(&self) -> Option<(u64, String)> {
        let n = self.failures.swap(0, Ordering::Relaxed);
        let first = self.first_failure.lock().unwrap().take();
        (n > 0).then(|| (n, first.unwrap_or_default()))
    }
}

pub struct Processor {
    cfg: Arc<Config>,
    producer: ThreadedProducer<DeliveryContext>,
    rocks: RocksOptions,
    limits: DecodeLimits,
    repartition: String,
    dlq: String,
    pub(crate) tasks: BTreeMap<i32, Task>,
    /// Input partitions: the next offset to commit, for records routed since the last commit.
    routed: HashMap<(String, i32), i64>,
    /// Repartition offsets last committed to Kafka, so that idle commits send nothing.
    kafka_committed: HashMap<i32, i64>,
    pub(crate) metrics: Arc<Metrics>,
    /// Engine outcomes already added to the metrics.
    exported_outcomes: Outcomes,
    /// Whether the consumer has received an assignment (it is in its group).
    pub(crate) assigned: bool,
    /// Engine outcomes of tasks this process no longer has.
    closed_outcomes: Outcomes,
    pub(crate) last_commit: Instant,
    pub(crate) last_tick: Instant,
    /// Set when something happened that the loop cannot continue from.
    pub(crate) fatal: Option<RuntimeError>,
    /// Called with every receipt produced (the demo prints them).
    pub(crate) on_receipt: Option<super::ReceiptHook>,
}

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

fn send(
    producer: &ThreadedProducer<DeliveryContext>,
    mut record: BaseRecord<'_, [u8], [u8]>,
) -> Result<(), KafkaError> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                // The producer's thread drains the queue; wait for room rather than drop.
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

impl Processor {
    pub fn new(
        cfg: Arc<Config>,
        producer: ThreadedProducer<DeliveryContext>,
        rocks: RocksOptions,
        metrics: Arc<Metrics>,
    ) -> Self {
        Processor {
            limits: cfg.decode_limits(),
            repartition: cfg.repartition_topic(),
            dlq: cfg.dlq_topic(),
            cfg,
            producer,
            rocks,
            tasks: BTreeMap::new(),
            routed: HashMap::new(),
            kafka_committed: HashMap::new(),
            metrics,
            exported_outcomes: Outcomes::default(),
            assigned: false,
            closed_outcomes: Outcomes::default(),
            last_commit: Instant::now(),
            last_tick: Instant::now(),
            fatal: None,
            on_receipt: None,
        }
    }

    pub fn is_repartition(&self, topic: &str) -> bool {
        topic == self.repartition
    }

    /// Engine outcomes of every task this process has run.
    pub fn outcomes(&self) -> Outcomes {
        let mut o = self.closed_outcomes;
        for t in self.tasks.values() {
            o.add(&t.outcomes());
        }
        o
    }

    /// Routes and processes one batch of polled records.
    pub fn handle_batch(&mut self, records: Vec<OwnedMessage>) -> Result<(), RuntimeError> {
        let now = now_ms();
        let (repartitioned, inputs): (Vec<_>, Vec<_>) =
            records.into_iter().partition(|m| self.is_repartition(m.topic()));
        for m in merge_by_timestamp(inputs) {
            self.route(&m)?;
        }
        for m in repartitioned {
            self.process(&m, now)?;
        }
        Ok(())
    }

    /// Input record -> repartition topic (by room), or -> dead letters.
    fn route(&mut self, m: &OwnedMessage) -> Result<(), RuntimeError> {
        let topic = m.topic();
        let payload = m.payload().unwrap_or(&[]);
        let source = if topic == self.cfg.topics.read { "read" } else { "room" };
        self.metrics.input_records.with_label_values(&[source]).inc();
        self.metrics.input_bytes.with_label_values(&[source]).inc_by(payload.len() as u64);
        let topics = &self.cfg.topics;
        match codec::decode_input(topic, &topics.read, &topics.room_prefix, payload, &self.limits) {
            Ok(event) => {
                let room = event.room_id().clone();
                let partition = partition_for(room.as_bytes(), self.cfg.topics.partitions);
                let source = Source {
                    topic: topic.to_string(),
                    partition: m.partition(),
                    offset: m.offset(),
                    timestamp: m.timestamp().to_millis().unwrap_or(0),
                };
                let value = envelope::encode(&source, &event);
                let mut record =
                    BaseRecord::to(&self.repartition).partition(partition).key(room.as_bytes()).payload(&value[..]);
                if let Some(ts) = m.timestamp().to_millis() {
                    record = record.timestamp(ts);
                }
                send(&self.producer, record)?;
                self.metrics.routed.inc();
            }
            Err(e) => self.dead_letter(m, &e)?,
        }
        self.routed.insert((topic.to_string(), m.partition()), m.offset() + 1);
        Ok(())
    }

    /// The record, unchanged, to `<application_id>-dlq`, with headers saying where it came
    /// from and why it was rejected. Its content is never logged.
    fn dead_letter(&mut self, m: &OwnedMessage, e: &DecodeError) -> Result<(), RuntimeError> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = m.headers() {
            for h in original.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let partition = m.partition().to_string();
        let offset = m.offset().to_string();
        let message = e.to_string();
        for (key, value) in [
            ("allread.source.topic", m.topic()),
            ("allread.source.partition", partition.as_str()),
            ("allread.source.offset", offset.as_str()),
            ("allread.error.kind", e.kind()),
            ("allread.error.message", message.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&self.dlq).headers(headers);
        if let Some(key) = m.key() {
            record = record.key(key);
        }
        if let Some(payload) = m.payload() {
            record = record.payload(payload);
        }
        if let Some(ts) = m.timestamp().to_millis() {
            record = record.timestamp(ts);
        }
        send(&self.producer, record)?;
        warn!(topic = m.topic(), partition = m.partition(), offset = m.offset(), kind = e.kind(), error = %e, "dead-lettered an undecodable record");
        self.metrics.dead_lettered.inc();
        self.metrics.decode_failures.with_label_values(&[e.kind()]).inc();
        Ok(())
    }

    /// Repartition record -> its task -> receipts.
    fn process(&mut self, m: &OwnedMessage, now: Millis) -> Result<(), RuntimeError> {
        let partition = m.partition();
        let Some(task) = self.tasks.get_mut(&partition) else {
            debug!(partition, "record of a task no longer assigned here; skipped");
            return Ok(());
        };
        match task.process(m.offset(), m.payload().unwrap_or(&[]), now) {
            Ok(None) => {
                self.metrics.duplicates_skipped.inc();
                Ok(())
            }
            Ok(Some(applied)) => {
                for r in &applied.receipts {
                    self.metrics.receipts.inc();
                    self.metrics.message_to_receipt.observe((now - r.sent_at).max(0) as f64 / 1000.0);
                    self.metrics.last_read_to_receipt.observe((now - applied.source_timestamp).max(0) as f64 / 1000.0);
                    let value = encode_receipt(r);
                    let record = BaseRecord::to(&self.cfg.topics.output).key(r.room_id.as_bytes()).payload(&value[..]);
                    send(&self.producer, record)?;
                    if let Some(f) = self.on_receipt.as_mut() {
                        f(r);
                    }
                }
                Ok(())
            }
            Err(TaskError::Envelope(e)) => {
                let _task = info_span!("task", task = partition).entered();
                // Only allread writes this topic; a record it cannot read is a bug or a
                // foreign writer. Count it loudly and go on.
                error!(partition, offset = m.offset(), error = %e, "skipping a corrupt repartition record");
                self.metrics.corrupt_repartition_records.inc();
                Ok(())
            }
            Err(TaskError::Engine(e)) => Err(RuntimeError::Engine { partition, source: e }),
        }
    }

    pub fn tick(&mut self) -> Result<(), RuntimeError> {
        let now = now_ms();
        for (partition, task) in self.tasks.iter_mut() {
            task.tick(now).map_err(|source| RuntimeError::Engine { partition: *partition, source })?;
        }
        self.last_tick = Instant::now();
        self.update_gauges();
        Ok(())
    }

    /// Output acknowledged, then state, then Kafka offsets (see the module's doc).
    pub fn commit(&mut self, consumer: &Consumer_, mode: CommitMode) -> Result<(), RuntimeError> {
        let started = Instant::now();
        let result = self.commit_inner(consumer, mode);
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                let outcomes = self.outcomes();
                self.metrics.add_outcomes(&outcomes, &self.exported_outcomes);
                self.exported_outcomes = outcomes;
            }
            Err(_) => self.metrics.commit_failures.inc(),
        }
        result
    }

    fn commit_inner(&mut self, consumer: &Consumer_, mode: CommitMode) -> Result<(), RuntimeError> {
        self.last_commit = Instant::now();
        self.producer.flush(Duration::from_secs(60)).map_err(RuntimeError::Produce)?;
        if let Some((n, first)) = self.producer.context().take_failures() {
            return Err(RuntimeError::Delivery { failed: n, first });
        }
        for (partition, task) in self.tasks.iter_mut() {
            let _task = info_span!("task", task = *partition).entered();
            task.commit().map_err(|source| RuntimeError::Engine { partition: *partition, source })?;
        }
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.routed {
            tpl.add_partition_offset(topic, *partition, Offset::Offset(*offset)).map_err(RuntimeError::Produce)?;
        }
        let mut tasks_committed = Vec::new();
        for (partition, task) in &self.tasks {
            if let Some(offset) = task.committed_offset() {
                if self.kafka_committed.get(partition) != Some(&offset) {
                    tpl.add_partition_offset(&self.repartition, *partition, Offset::Offset(offset))
                        .map_err(RuntimeError::Produce)?;
                    tasks_committed.push((*partition, offset));
                }
            }
        }
        if tpl.count() > 0 {
            // A failed offset commit loses nothing: tasks resume from their own state and
            // skip what they have applied. Warn and let the next commit carry it.
            if let Err(e) = consumer.commit(&tpl, mode) {
                warn!(error = %e, "committing consumer offsets failed; retrying at the next commit");
            } else {
                self.routed.clear();
                self.kafka_committed.extend(tasks_committed);
            }
        }
        Ok(())
    }

    /// After a failure: forget everything uncommitted and re-read from the committed
    /// positions, as Kafka Streams revives a task. Output already produced stays (at-least-once).
    pub fn rewind(&mut self, consumer: &Consumer_, reason: &RuntimeError) {
        self.metrics.rewinds.inc();
        // The rewound engines count again what they re-apply; count only the new.
        self.exported_outcomes = self.outcomes();
        warn!(error = %reason, "rewinding to the last commit");
        let _ = self.producer.flush(Duration::from_secs(30));
        let _ = self.producer.context().take_failures();
        let tasks = std::mem::take(&mut self.tasks);
        for (partition, task) in tasks {
            let _task = info_span!("task", task = partition).entered();
            match task.rewind() {
                Ok(task) => {
                    let offset = task.committed_offset().map_or(Offset::Beginning, Offset::Offset);
                    if let Err(e) = consumer.seek(&self.repartition, partition, offset, Duration::from_secs(10)) {
                        warn!(partition, error = %e, "seeking the repartition topic failed");
                    }
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    self.fatal = Some(RuntimeError::Store { partition, source: e });
                    return;
                }
            }
        }
        // Input partitions go back to Kafka's committed offsets.
        self.routed.clear();
        match consumer.assignment().and_then(|a| consumer.committed_offsets(a, Duration::from_secs(10))) {
            Ok(committed) => {
                for elem in committed.elements() {
                    if self.is_repartition(elem.topic()) {
                        continue;
                    }
                    let offset = match elem.offset() {
                        Offset::Offset(o) => Offset::Offset(o),
                        _ => Offset::Beginning,
                    };
                    if let Err(e) = consumer.seek(elem.topic(), elem.partition(), offset, Duration::from_secs(10)) {
                        warn!(topic = elem.topic(), partition = elem.partition(), error = %e, "seek failed");
                    }
                }
            }
            Err(e) => warn!(error = %e, "reading committed offsets failed; input may be re-read from later positions"),
        }
    }

    /// Partitions assigned: open a task per repartition partition and start it where its
    /// local state is.
    pub fn on_assign(&mut self, tpl: &mut TopicPartitionList) {
        self.assigned = true;
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        let mine: Vec<i32> =
            tpl.elements().iter().filter(|e| self.is_repartition(e.topic())).map(|e| e.partition()).collect();
        for partition in mine {
            let dir = self.cfg.task_dir(partition);
            let _task = info_span!("task", task = partition).entered();
            match Task::open(partition, dir.clone(), self.cfg.engine.clone(), &self.rocks) {
                Ok(task) => {
                    // Resume where the local state is. Without local state, rebuild it from
                    // everything the repartition topic still holds rather than from Kafka's
                    // committed offset, which would skip the rooms' history.
                    let offset = task.committed_offset().map_or(Offset::Beginning, Offset::Offset);
                    let _ = tpl.set_partition_offset(&self.repartition, partition, offset);
                    info!(task = partition, state = %dir.display(), resume_at = ?task.committed_offset(), "task assigned");
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    error!(task = partition, state = %dir.display(), error = %e, "cannot open the task's state");
                    self.fatal = Some(RuntimeError::Store { partition, source: e });
                }
            }
        }
    }

    /// Partitions revoked: commit what we have, then let them go.
    pub fn on_revoke(&mut self, consumer: &Consumer_, tpl: &TopicPartitionList, lost: bool) {
        self.metrics.rebalances.with_label_values(&[if lost { "lost" } else { "revoke" }]).inc();
        if !lost {
            if let Err(e) = self.commit(consumer, CommitMode::Sync) {
                warn!(error = %e, "commit before revocation failed; the next owner re-processes from the last commit");
            }
        }
        for elem in tpl.elements() {
            if self.is_repartition(elem.topic()) {
                self.kafka_committed.remove(&elem.partition());
                let label = elem.partition().to_string();
                let m = &self.metrics;
                for g in [
                    &m.cached_rooms,
                    &m.cached_members,
                    &m.pending_messages,
                    &m.consumer_lag,
                    &m.rocksdb_keys,
                    &m.rocksdb_sst_bytes,
                    &m.rocksdb_memtable_bytes,
                ] {
                    let _ = g.remove_label_values(&[&label]);
                }
                if let Some(task) = self.tasks.remove(&elem.partition()) {
                    self.closed_outcomes.add(&task.outcomes());
                    info!(task = elem.partition(), lost, "task revoked");
                }
            } else {
                self.routed.remove(&(elem.topic().to_string(), elem.partition()));
            }
        }
    }

    /// Per-task gauges of the engines' caches.
    pub fn update_gauges(&self) {
        self.metrics.tasks.set(self.tasks.len() as i64);
        let m = &self.metrics;
        for (partition, task) in &self.tasks {
            let label = partition.to_string();
            let f = task.figures();
            m.cached_rooms.with_label_values(&[&label]).set(f.cached_rooms as i64);
            m.cached_members.with_label_values(&[&label]).set(f.cached_members as i64);
            m.pending_messages.with_label_values(&[&label]).set(f.pending as i64);
            m.rocksdb_keys.with_label_values(&[&label]).set(f.rocksdb_keys as i64);
            m.rocksdb_sst_bytes.with_label_values(&[&label]).set(f.rocksdb_sst_bytes as i64);
            m.rocksdb_memtable_bytes.with_label_values(&[&label]).set(f.rocksdb_memtable_bytes as i64);
            m.rocksdb_block_cache_bytes.set(f.rocksdb_block_cache_bytes as i64);
        }
    }

    /// Sets each task's lag from its partition's high watermark (one short request per task;
    /// called every few seconds).
    pub fn update_lag(&self, consumer: &Consumer_) {
        for (partition, task) in &self.tasks {
            let watermarks = consumer.fetch_watermarks(&self.repartition, *partition, Duration::from_secs(1));
            if let (Ok((_, high)), Some(position)) = (watermarks, task.position()) {
                self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set((high - position).max(0));
            }
        }
    }

    pub fn flush_producer(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(timeout) {
            warn!(error = %e, "flushing the producer at shutdown");
        }
    }
}

/// Input records in approximately timestamp order across partitions, each partition's own
/// order kept (as Kafka Streams picks a task's next record by head timestamp): a backlog of
/// reads does not run ahead of the messages it names.
fn merge_by_timestamp(records: Vec<OwnedMessage>) -> Vec<OwnedMessage> {
    let mut queues: HashMap<(String, i32), std::collections::VecDeque<OwnedMessage>> = HashMap::new();
    for m in records {
        queues.entry((m.topic().to_string(), m.partition())).or_default().push_back(m);
    }
    if queues.len() <= 1 {
        return queues.into_values().flatten().collect();
    }
    let mut queues: Vec<_> = queues.into_values().collect();
    let mut heads: BinaryHeap<Reverse<(i64, usize)>> = queues
        .iter()
        .enumerate()
        .filter_map(|(i, q)| q.front().map(|m| Reverse((m.timestamp().to_millis().unwrap_or(0), i))))
        .collect();
    let mut out = Vec::with_capacity(queues.iter().map(|q| q.len()).sum());
    while let Some(Reverse((_, i))) = heads.pop() {
        let m = queues[i].pop_front().expect("a queue in the heap has a head");
        out.push(m);
        if let Some(next) = queues[i].front() {
            heads.push(Reverse((next.timestamp().to_millis().unwrap_or(0), i)));
        }
    }
    out
}

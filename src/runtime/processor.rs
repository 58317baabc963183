//! The processing loop's state: routing input records to their tasks (through the
//! repartition topic, or directly to a task of this instance: see `shortcut`), running tasks,
//! restoring them from their changelogs, and committing output, state and offsets in the
//! right order.
//!
//! A commit, in both guarantees: (1) each task's changes since the last commit (with the
//! repartition offset and source positions they reflect) become changelog records; then
//!
//! - `exactly_once`: (2) the consumed offsets join the producer's transaction
//!   (`send_offsets_to_transaction` with the consumer's group metadata), and (3) the
//!   transaction commits: receipts, repartition records, dead letters, changelog records and
//!   offsets become visible together or not at all. (4) Only then is each task's batch
//!   written to its local store, with the changelog offset it reaches. A crash before (3)
//!   aborts everything and the local store is at the previous commit; a crash between (3) and
//!   (4) leaves the local store behind its changelog, which restore replays. Local state is
//!   never ahead of what was committed, so it never has to be wiped.
//! - `at_least_once`: (2) wait until every record produced before the commit began
//!   (receipts, repartition records, dead letters) is acknowledged; (3) only then send the
//!   changelog records, and wait for them; (4) write the local batches; (5) commit the
//!   consumer's offsets. A crash between any two steps re-processes input, and the source
//!   positions make that a no-op for the state; the worst case is a receipt emitted twice,
//!   never one lost. The changelog follows the output because a failed commit rewinds to it:
//!   a changelog sent with a receipt that was then refused would hold the read as applied,
//!   and the read, consumed again, would produce nothing (`complete_acks`).
//!
//! Under `exactly_once`, (2) and (3) are broker round trips (about 15 ms a commit in a backlog
//! run, BENCHMARKS.md), so they run on a thread of their own (`CommitInFlight`). Nothing can
//! be produced meanwhile: the transaction is being committed and the next one has not begun.
//! The loop goes on polling, routing and applying input all the same (the engines read
//! through the batch they prepared, and their new changes go to the next commit), and holds
//! what that produces (receipts, repartition records, dead letters; past
//! [`MAX_HELD_OUTPUT`], input waits in the router) until the commit settles, when it
//! goes into the next transaction ([`Processor::release_output`]), with the state changes
//! and input offsets it came from. A rewind drops it: the input is read and applied again.
//! Only a repartition record waits for the transaction, since what its task produces is not
//! held.
//!
//! Under `at_least_once` the loop goes on routing, applying and producing while (2) and (3)
//! run on a thread of their own: the engines read through the batch they prepared, and their
//! new changes go to the next commit. Every record is sent with the commit epoch as its
//! delivery opaque, and a commit ends its epoch, so (2) counts only the records sent before
//! it began (`DeliveryContext::wait_reported`); its changelog records have an epoch of their
//! own. The loop settles the commit, (4) and (5), once the thread is done. Only preparing
//! the batches still stops the loop (26 ms at the median, 60 ms at p90, at a quarter of the
//! benchmark's load: BENCHMARKS.md, tenth session).
//! Under either guarantee, what needs the last commit complete (the next commit, a tick, a
//! rebalance, a rewind; under `exactly_once` also routing and queries) settles it first
//! (`settle_commit`).
//!
//! The local write is begun, not awaited: one writer thread inserts the tasks' batches into
//! their stores while the loop goes on (`Engine::write_prepared`). The stores keep no
//! write-ahead log, so a local write was never durable when it returned; a crash before it
//! lands is the crash between (3) and (4) above. A write that fails shows at the task's next commit, or
//! when it next needs the store, and rewinds like any failure.
//!
//! Tasks start `restoring`: their repartition partition stays paused while a separate
//! consumer (no group, `read_committed`) replays their changelog partition from the local
//! store's changelog offset to the end; tasks already restored keep processing meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, info_span, warn};

use super::changelog_reader::ChangelogReader;
use super::context::RuntimeContext;
use super::router::{Backlog, Body, FetchChanges, InputBuffer, InputDecoder, Polled, Raw, Taken};
use super::shortcut::{Acks, Route, Shortcut};
use super::task::{changelog_records, ChangelogRecord, Completed, Task, TaskError};
use super::RuntimeError;
use crate::codec::{encode_receipt_into, DecodeError};
use crate::config::Config;
use crate::kafka::envelope::{self, Source};
use crate::kafka::partitioner::partition_for;
use crate::kafka::{base_client_config, with_consumer_passthrough, with_producer_passthrough};
use crate::metrics::Metrics;
use crate::receipts::{cache_share, Event, Millis, Outcomes};
use crate::store::rocks::RocksOptions;
use crate::store::WriteBatch;

pub(crate) type Consumer_ = BaseConsumer<RuntimeContext>;
type Producer_ = ThreadedProducer<DeliveryContext>;

/// Input topic -> partition -> offset of the first record held there (see `held_positions`).
type HeldPositions = HashMap<Arc<str>, HashMap<i32, i64>>;

/// A commit that has sent its records and waits for them (see the module's doc), and what
/// remains to do once they are in.
struct CommitInFlight {
    waiting: Waiting,
    /// The tasks whose prepared changes the commit carries, written locally once it is in.
    prepared: Vec<i32>,
    held: HeldPositions,
    /// The input offsets routed up to when the commit began (what it commits, unless held).
    routed: Vec<(String, i32, i64)>,
    /// Repartition offsets the commit commits.
    tasks_committed: Vec<(i32, i64)>,
    started: Instant,
}

/// What a commit in flight waits for.
enum Waiting {
    /// `exactly_once`: another thread adds the offsets to the transaction, commits it, and
    /// begins the next one.
    Transaction(std::thread::JoinHandle<Result<(), RuntimeError>>),
    /// `at_least_once`: another thread waits for the acknowledgement of the output sent up
    /// to the commit, then sends the changelog records and waits for theirs
    /// (`complete_acks`); then the consumer's offsets are committed with `mode`.
    Acks { sending: std::thread::JoinHandle<Result<(), RuntimeError>>, offsets: TopicPartitionList, mode: CommitMode },
}

/// Output made while an `exactly_once` commit's transaction completes, for the next
/// transaction (see [`Processor::release_output`]). The receipts wait in `Processor::outbox`.
#[derive(Default)]
struct HeldOutput {
    /// Records for the repartition topic, by task, in routing order.
    routed: Vec<(i32, Vec<Bound>)>,
    dead_letters: Vec<DeadLetter>,
    /// How many records `routed` holds.
    routed_records: usize,
}

/// An input record that did not decode, on its way to the dead-letter topic.
struct DeadLetter {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
    raw: Box<Raw>,
    error: DecodeError,
}

/// An input record, decoded, on its way to its task.
struct Bound {
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    timestamp: Option<Millis>,
    event: Event,
}

/// Counts acknowledgements and failures of produced records, and remembers, per changelog
/// partition, the offset after the last changelog record acknowledged.
pub struct DeliveryContext {
    changelog: String,
    repartition: String,
    /// Acknowledgements of repartition records, for the local shortcut's lanes.
    pub(crate) acks: Acks,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
    changelog_next: Mutex<HashMap<i32, i64>>,
    /// Records sent and not reported yet (acknowledged or failed), by the commit epoch they
    /// were sent in (each record's delivery opaque; see `Processor::epoch`). An epoch with
    /// none has no entry.
    outstanding: Mutex<HashMap<u64, i64>>,
    /// Notified whenever an epoch's last outstanding record is reported.
    reported: Condvar,
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    /// The commit epoch the record was sent in.
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, epoch: usize) {
        // A failure is counted before its record stops being outstanding, so whoever sees
        // an epoch complete also sees its failures.
        match result {
            Ok(msg) => {
                if msg.topic() == self.repartition {
                    self.acks.report(msg.partition(), Some(msg.offset()));
                } else if msg.topic() == self.changelog {
                    let mut next = self.changelog_next.lock().unwrap();
                    let entry = next.entry(msg.partition()).or_insert(0);
                    *entry = (*entry).max(msg.offset() + 1);
                }
            }
            Err((e, msg)) => {
                if msg.topic() == self.repartition {
                    self.acks.report(msg.partition(), None);
                }
                self.failures.fetch_add(1, Ordering::Relaxed);
                let mut first = self.first_failure.lock().unwrap();
                if first.is_none() {
                    *first = Some(format!("producing to {}: {e}", msg.topic()));
                }
            }
        }
        self.add_outstanding(epoch as u64, -1);
    }
}

impl DeliveryContext {
    fn new(cfg: &Config) -> Self {
        DeliveryContext {
            changelog: cfg.changelog_topic(),
            repartition: cfg.repartition_topic(),
            acks: Acks::new(cfg.topics.partitions as usize),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
            changelog_next: Mutex::new(HashMap::new()),
            outstanding: Mutex::new(HashMap::new()),
            reported: Condvar::new(),
        }
    }

    /// `n` more records of `epoch` sent (negative: reported, or not sent after all).
    fn add_outstanding(&self, epoch: u64, n: i64) {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
        let count = outstanding.entry(epoch).or_insert(0);
        *count += n;
        if *count == 0 {
            outstanding.remove(&epoch);
            self.reported.notify_all();
        }
    }

    /// Waits until every record of `epoch` is reported, or `deadline`; whether they all are.
    fn wait_reported(&self, epoch: u64, deadline: Instant) -> bool {
        let mut outstanding = self.outstanding.lock().unwrap_or_else(|e| e.into_inner());
        while outstanding.get(&epoch).is_some_and(|n| *n > 0) {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            outstanding = self.reported.wait_timeout(outstanding, left).unwrap_or_else(|e| e.into_inner()).0;
        }
        true
    }

    /// Failures since the last [`DeliveryContext::take_failures`], with the first one's
    /// description, left to it.
    fn failures(&self) -> Option<(u64, String)> {
        let n = self.failures.load(Ordering::Relaxed);
        (n > 0).then(|| (n, self.first_failure.lock().unwrap().clone().unwrap_or_default()))
    }

    /// Failures since the last call, with the first one's description.
    fn take_failures(&self) -> Option<(u64, String)> {
        let n = self.failures.swap(0, Ordering::Relaxed);
        let first = self.first_failure.lock().unwrap().take();
        (n > 0).then(|| (n, first.unwrap_or_default()))
    }

    /// Changelog partitions written since the last call, with the offset after their last record.
    fn take_changelog_next(&self) -> HashMap<i32, i64> {
        std::mem::take(&mut *self.changelog_next.lock().unwrap())
    }
}

/// The most input records one routing round releases (see `Processor::handle_batch`); what
/// is left stays in the router for the next round, after the loop has had a chance to poll
/// and commit. The records a round sends to local tasks are staged and applied task by task
/// after it (`Processor::apply_staged`): longer runs per task keep its state in the CPU's
/// caches longer (staging whole batches ran about 10% faster than a limit of 10,000,
/// BENCHMARKS.md). Without a bound, the first round over a backlog released more than half a
/// million records at once: its vectors kept room for all of them (about 90 MB for the
/// released records alone), and the first commit, seconds later, wrote all of its changes in
/// one batch.
const ROUND_RECORDS: usize = 50_000;

/// Output (receipts, repartition records, dead letters) held while an `exactly_once` commit's
/// transaction completes: once this much is held, no routing round begins (input waits in
/// the router) until the transaction is done. A round may add more than one record of output
/// per record routed (a read can complete several messages).
const MAX_HELD_OUTPUT: usize = 100_000;

/// How long a transactional call may block before it counts as failed.
const TXN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the shortcut's probe of a repartition partition may block the processing loop.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The producer of every record allread writes, transactional under `exactly_once`.
fn create_producer(cfg: &Config, transactional_id: Option<&str>) -> Result<Producer_, RuntimeError> {
    let mut c = base_client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("partitioner", "murmur2_random");
    if let Some(id) = transactional_id {
        c.set("transactional.id", id).set("transaction.timeout.ms", cfg.processing.transaction_timeout_ms.to_string());
    }
    let producer: Producer_ = with_producer_passthrough(c, cfg)
        .create_with_context(DeliveryContext::new(cfg))
        .map_err(RuntimeError::Client)?;
    if transactional_id.is_some() {
        // Fences any earlier producer with this id and aborts the transaction it left open.
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| RuntimeError::Transaction { step: "init", source: e })?;
        producer.begin_transaction().map_err(|e| RuntimeError::Transaction { step: "begin", source: e })?;
    }
    Ok(producer)
}

/// Completes an `exactly_once` commit on its own thread, the records of its transaction sent:
/// the consumed offsets join the transaction, it commits (a commit that timed out, its outcome
/// unknown, is retried), and the next one begins.
fn complete_transaction(
    producer: &Producer_,
    offsets: Option<(TopicPartitionList, ConsumerGroupMetadata)>,
) -> Result<(), RuntimeError> {
    // Tests only (the `failpoints` feature): a transaction that takes long, then fails, as one
    // the broker aborts does; the loop meanwhile goes on applying input.
    #[cfg(feature = "failpoints")]
    {
        fail::fail_point!("transaction-slow");
        fail::fail_point!("transaction-fails", |_| Err(RuntimeError::Transaction {
            step: "commit (failpoint)",
            source: KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::Fail),
        }));
    }
    if let Some((tpl, group)) = offsets {
        producer
            .send_offsets_to_transaction(&tpl, &group, TXN_TIMEOUT)
            .map_err(|e| RuntimeError::Transaction { step: "send offsets", source: e })?;
    }
    let mut attempt = 0;
    loop {
        // rdkafka's commit_transaction first flushes in whole 100 ms slices (see
        // kafka::flush); flushed here, that finds nothing in flight and returns at once.
        crate::kafka::flush(producer, TXN_TIMEOUT).map_err(RuntimeError::Produce)?;
        match producer.commit_transaction(TXN_TIMEOUT) {
            Ok(()) => break,
            Err(KafkaError::Transaction(e)) if e.is_retriable() && attempt < 3 => {
                attempt += 1;
                warn!(error = %e, attempt, "committing the transaction timed out; retrying");
            }
            Err(e) => return Err(RuntimeError::Transaction { step: "commit", source: e }),
        }
    }
    producer.begin_transaction().map_err(|e| RuntimeError::Transaction { step: "begin", source: e })
}

/// How long an `at_least_once` commit waits for its records' acknowledgements before it
/// counts as failed.
const ACKS_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends an `at_least_once` commit's changelog records on its own thread, once the output
/// before them is in: waits for every record sent in epoch `output` (receipts, repartition
/// records, dead letters) to be acknowledged, then, if none failed, sends `batches` to the
/// `changelog` topic in epoch `changelog` and waits for their acknowledgements.
///
/// The order is the guarantee: a changelog record reflects only events whose output is in
/// Kafka. Were the changelog sent with the output, a refused receipt would leave it holding
/// a state whose receipt was never produced; the rewind that follows the failure restores
/// that state, and the read, consumed again, is a duplicate that produces nothing.
fn complete_acks(
    producer: &Producer_,
    changelog: &str,
    output: u64,
    changelog_epoch: u64,
    batches: &[(i32, Arc<WriteBatch>)],
    deadline: Instant,
) -> Result<(), RuntimeError> {
    let context = producer.context();
    let timed_out = || RuntimeError::Produce(KafkaError::Flush(rdkafka::types::RDKafkaErrorCode::MessageTimedOut));
    let failed = || context.failures().map(|(failed, first)| RuntimeError::Delivery { failed, first });
    if !context.wait_reported(output, deadline) {
        return Err(timed_out());
    }
    if let Some(e) = failed() {
        return Err(e);
    }
    for (partition, batch) in batches {
        let records = changelog_records(batch);
        context.add_outstanding(changelog_epoch, records.clone().count() as i64);
        // Some may have been sent on an error: the rewind that follows begins a new epoch.
        crate::kafka::send_batch(producer, changelog, *partition, records, changelog_epoch as usize)?;
    }
    if !context.wait_reported(changelog_epoch, deadline) {
        return Err(timed_out());
    }
    failed().map_or(Ok(()), Err)
}

/// The restore consumer's context: reaching a partition's end is how a restore finishes, not
/// an error worth logging.
/// A task catching up from its changelog partition.
struct Restore {
    started: Instant,
    /// The changelog's end when the restore began.
    end: i64,
    position: i64,
    restored: u64,
    last_report: Instant,
}

pub struct Processor {
    cfg: Arc<Config>,
    /// Shared with the thread that completes an `exactly_once` commit.
    producer: Arc<Producer_>,
    /// `Some` under `exactly_once`.
    transactional_id: Option<String>,
    /// Records produced since the last commit began (nothing to commit when 0 and no state
    /// changed).
    sent: u64,
    /// The commit epoch: every record is sent with it as its delivery opaque, and a commit
    /// ends it, so that an `at_least_once` commit waits for its own records, not for those
    /// sent after it began.
    epoch: u64,
    /// The commit being completed, if any (see `settle_commit`).
    in_flight: Option<CommitInFlight>,
    rocks: RocksOptions,
    decoder: InputDecoder,
    repartition: String,
    changelog: String,
    dlq: String,
    pub(crate) tasks: BTreeMap<i32, Task>,
    /// Reads changelogs into restoring tasks: assigned, never in a group, `read_committed`,
    /// partition EOF on.
    restorer: ChangelogReader,
    restores: BTreeMap<i32, Restore>,
    /// Reads the repartition topic's high watermarks for the shortcut's probe: never in a
    /// group, `read_uncommitted` (records of open transactions count; see `shortcut`).
    probe: BaseConsumer,
    /// Input records waiting to be routed in timestamp order.
    inputs: InputBuffer,
    /// Scratch for the records `inputs` releases in one batch (empty between batches).
    ready: Vec<Polled>,
    /// Where each routing round left the input partitions it took records from, kept as
    /// `ready` is.
    taken: Vec<Taken>,
    /// Records routing released to local tasks, by task, applied task by task (`apply_staged`)
    /// after each routing round (at most [`ROUND_RECORDS`]); empty between batches, their
    /// capacity kept.
    staged: Vec<Vec<Bound>>,
    /// How many records `staged` holds.
    staged_records: usize,
    /// Whether the last routing round stopped at [`ROUND_RECORDS`], with more records ready.
    more_ready: bool,
    /// Which local tasks input records may reach without the repartition topic.
    shortcut: Shortcut<Bound>,
    /// `allread_input_records_total` and `allread_input_bytes_total` of the room topics and of
    /// the read topic, looked up once rather than by label for every record, and counted
    /// here, without an atomic operation per record, until the routing round ends
    /// ([`Processor::flush_input_counts`]).
    room_input: (LocalIntCounter, LocalIntCounter),
    read_input: (LocalIntCounter, LocalIntCounter),
    /// The receipts the records applied since the last [`Processor::emit`] completed, with
    /// each one's last read's timestamp; kept, emptied, from one batch to the next.
    outbox: Vec<Completed>,
    /// Whether output is held for the next transaction (`held`, `outbox`): set while records
    /// are routed during an `exactly_once` commit's transaction, cleared when it settles.
    holding: bool,
    held: HeldOutput,
    /// `allread_receipts_emitted_total`, `allread_message_to_receipt_seconds` and
    /// `allread_last_read_to_receipt_seconds`, counted here and added to the metrics once per
    /// batch of receipts, as the input counts are.
    receipt_metrics: (LocalIntCounter, LocalHistogram, LocalHistogram),
    /// Input partitions: the next offset to commit, for records routed since the last commit.
    routed: crate::receipts::HashMap<String, crate::receipts::HashMap<i32, i64>>,
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
    /// Commits completed (settled without an error) since the process started.
    pub(crate) commits_completed: u64,
    pub(crate) last_tick: Instant,
    /// Set when something happened that the loop cannot continue from.
    pub(crate) fatal: Option<RuntimeError>,
    /// Set by a rebalance callback whose commit failed: the loop rewinds.
    pub(crate) pending_rewind: Option<RuntimeError>,
    /// Called with every receipt produced (the demo prints them).
    pub(crate) on_receipt: Option<super::ReceiptHook>,
}

pub fn now_ms() -> Millis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as Millis)
}

/// The restore consumer's client settings, before those a restore needs (see
/// `changelog_reader`): a restore reads a changelog as fast as the task applies it, so
/// librdkafka's prefetch queue stays full and, by default, postpones each next fetch by a
/// second. Restoring 1.4 million records took 5.5 s that way and 1.5-1.9 s with
/// [`crate::kafka::FETCH_QUEUE_BACKOFF_MS`] (BENCHMARKS.md). `kafka.*` properties win.
fn restore_client_config(cfg: &Config) -> rdkafka::ClientConfig {
    let mut c = base_client_config(cfg);
    crate::kafka::fetch_again_soon(&mut c);
    with_consumer_passthrough(c, cfg)
}

impl Processor {
    pub fn new(
        cfg: Arc<Config>,
        transactional_id: Option<String>,
        rocks: RocksOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RuntimeError> {
        let producer = Arc::new(create_producer(&cfg, transactional_id.as_deref())?);
        let restorer = ChangelogReader::new(
            restore_client_config(&cfg),
            &format!("{}-restore", cfg.application_id),
            &cfg.changelog_topic(),
        )
        .map_err(RuntimeError::Client)?;
        let probe = {
            let mut c = with_consumer_passthrough(base_client_config(&cfg), &cfg);
            c.remove("group.id").remove("group.instance.id").set("isolation.level", "read_uncommitted");
            c.create().map_err(RuntimeError::Client)?
        };
        let partitions = cfg.topics.partitions;
        let inputs = InputBuffer::with_bound(cfg.processing.buffered_records_per_partition);
        Ok(Processor {
            probe,
            decoder: InputDecoder::new(&cfg),
            repartition: cfg.repartition_topic(),
            changelog: cfg.changelog_topic(),
            dlq: cfg.dlq_topic(),
            shortcut: Shortcut::new(cfg.processing.local_shortcut, cfg.topics.partitions as usize),
            room_input: (
                metrics.input_records.with_label_values(&["room"]).local(),
                metrics.input_bytes.with_label_values(&["room"]).local(),
            ),
            read_input: (
                metrics.input_records.with_label_values(&["read"]).local(),
                metrics.input_bytes.with_label_values(&["read"]).local(),
            ),
            outbox: Vec::new(),
            holding: false,
            held: HeldOutput::default(),
            receipt_metrics: (
                metrics.receipts.local(),
                metrics.message_to_receipt.local(),
                metrics.last_read_to_receipt.local(),
            ),
            cfg,
            producer,
            transactional_id,
            sent: 0,
            epoch: 0,
            in_flight: None,
            rocks,
            tasks: BTreeMap::new(),
            restorer,
            restores: BTreeMap::new(),
            inputs,
            ready: Vec::new(),
            taken: Vec::new(),
            staged: (0..partitions).map(|_| Vec::new()).collect(),
            staged_records: 0,
            more_ready: false,
            routed: Default::default(),
            kafka_committed: HashMap::new(),
            metrics,
            exported_outcomes: Outcomes::default(),
            assigned: false,
            closed_outcomes: Outcomes::default(),
            last_commit: Instant::now(),
            commits_completed: 0,
            last_tick: Instant::now(),
            fatal: None,
            pending_rewind: None,
            on_receipt: None,
        })
    }

    pub fn is_repartition(&self, topic: &str) -> bool {
        topic == self.repartition
    }

    fn exactly_once(&self) -> bool {
        self.transactional_id.is_some()
    }

    /// A record to `topic`, sent in this commit epoch.
    fn record<'a>(&self, topic: &'a str) -> BaseRecord<'a, [u8], [u8], usize> {
        BaseRecord::with_opaque_to(topic, self.epoch as usize)
    }

    /// Sends a record made by [`Processor::record`].
    fn send(&mut self, record: BaseRecord<'_, [u8], [u8], usize>) -> Result<(), RuntimeError> {
        let context = self.producer.context();
        context.add_outstanding(self.epoch, 1);
        if let Err(e) = crate::kafka::send(&self.producer, record) {
            context.add_outstanding(self.epoch, -1);
            return Err(e.into());
        }
        self.sent += 1;
        Ok(())
    }

    /// Engine outcomes of every task this process has run.
    pub fn outcomes(&self) -> Outcomes {
        let mut o = self.closed_outcomes;
        for t in self.tasks.values() {
            o.add(&t.outcomes());
        }
        o
    }

    /// Tasks still catching up from their changelogs.
    pub fn restoring(&self) -> usize {
        self.tasks.values().filter(|t| t.restoring).count()
    }

    /// Routes what can be routed (see `router`) and processes one batch of polled records.
    /// Takes every record out of `records` (the caller's vector, kept for the next poll).
    pub fn handle_batch(&mut self, consumer: &Consumer_, records: &mut Vec<Polled>) -> Result<(), RuntimeError> {
        let handled = self.handle_batch_inner(consumer, records);
        self.sync_fetching(consumer);
        handled
    }

    /// Pauses the input partitions that hold the router's bound and resumes those it took
    /// half of (see `router`). Either call returns once librdkafka's threads have taken it.
    fn sync_fetching(&mut self, consumer: &Consumer_) {
        let FetchChanges { pause, resume } = self.inputs.take_fetching();
        let list = |keys: &[(Arc<str>, i32)]| {
            let mut tpl = TopicPartitionList::with_capacity(keys.len());
            for (topic, partition) in keys {
                tpl.add_partition(topic, *partition);
            }
            tpl
        };
        if !pause.is_empty() {
            self.metrics.input_pauses.inc_by(pause.len() as u64);
            if let Err(e) = consumer.pause(&list(&pause)) {
                warn!(error = %e, partitions = pause.len(), "pausing input partitions that hold the router's bound");
            }
        }
        if !resume.is_empty() {
            if let Err(e) = consumer.resume(&list(&resume)) {
                warn!(error = %e, partitions = resume.len(), "resuming input partitions");
            }
        }
    }

    fn handle_batch_inner(&mut self, consumer: &Consumer_, records: &mut Vec<Polled>) -> Result<(), RuntimeError> {
        let mut repartitioned = Vec::new();
        for m in records.drain(..) {
            // Only a record kept as it came can be the repartition topic's (an input record is
            // decoded as it is polled): the others' topics need no comparison.
            if matches!(m.body, Body::Raw(_)) && self.is_repartition(&m.topic) {
                repartitioned.push(m);
            } else {
                self.inputs.push(m);
            }
        }
        self.more_ready = false;
        // While a commit's transaction completes, input is routed and applied, and what that
        // produces is held for the next transaction (module doc); past a bound, input waits
        // in the router. A repartition record waits for the transaction.
        if repartitioned.is_empty() && self.committing() {
            if self.held_output() >= MAX_HELD_OUTPUT {
                return Ok(());
            }
            self.holding = true;
        } else if self.transaction_in_flight() {
            // Done, or waited for by a repartition record.
            self.settle_commit(consumer)?;
        } else {
            // A commit waiting for acknowledgements does not stop the tasks (module doc).
            self.settle_if_done(consumer)?;
        }
        let now = now_ms();
        if !self.shortcut.saturated() {
            let max_idle = Duration::from_millis(self.cfg.processing.max_task_idle_ms);
            let mut ready = std::mem::take(&mut self.ready);
            let mut taken = std::mem::take(&mut self.taken);
            if self.inputs.drain_ready(&CachedWatermarks(consumer), max_idle, &mut ready, &mut taken, ROUND_RECORDS) {
                self.metrics.enforced_routing.inc();
            }
            self.more_ready = ready.len() >= ROUND_RECORDS;
            let routed = ready.drain(..).try_for_each(|m| self.route(m));
            self.flush_input_counts();
            if routed.is_ok() {
                taken.drain(..).for_each(|(topic, partition, next)| self.routed_to(&topic, partition, next));
            }
            taken.clear();
            self.ready = ready;
            self.taken = taken;
            let applied = routed.and_then(|()| self.apply_staged(now));
            if applied.is_err() {
                // Nothing staged outlives the batch: the loop rewinds to the last commit.
                self.staged.iter_mut().for_each(Vec::clear);
                self.staged_records = 0;
            }
            applied?;
        }
        for m in repartitioned {
            self.process(&m, now)?;
        }
        self.release_held(now)
    }

    /// Input record -> its task, directly if the task is here and its lane is open (see
    /// `shortcut`), else through the repartition topic (by room); or -> dead letters.
    fn route(&mut self, m: Polled) -> Result<(), RuntimeError> {
        // A decoded record's event says which topic it came from: the read topic's decode as
        // reads, the room topics' as room events. Only one kept as it came compares names.
        let read = match &m.body {
            Body::Event { event, .. } => matches!(event, Event::Read { .. }),
            Body::Raw(_) => *m.topic == self.cfg.topics.read,
        };
        let (records, bytes) = if read { &self.read_input } else { &self.room_input };
        records.inc();
        let Polled { topic, partition, offset, timestamp, body } = m;
        let event = match body {
            Body::Event { event, bytes: size } => {
                bytes.inc_by(u64::from(size));
                Some(event)
            }
            Body::Raw(mut raw) => {
                bytes.inc_by(raw.payload().len() as u64);
                // Kept as it came without a verdict (not decoded when polled): decoded now.
                let decoded = match raw.error.take() {
                    Some(e) => Err(e),
                    None => self.decoder.input(&topic, raw.payload()),
                };
                match decoded {
                    Ok(event) => Some(event),
                    Err(error) if self.holding => {
                        let topic = topic.clone();
                        self.held.dead_letters.push(DeadLetter { topic, partition, offset, timestamp, raw, error });
                        None
                    }
                    Err(e) => {
                        self.dead_letter(&topic, partition, offset, timestamp, &raw, &e)?;
                        None
                    }
                }
            }
        };
        if let Some(event) = event {
            let task = partition_for(event.room_id().as_bytes(), self.cfg.topics.partitions);
            let bound = Bound { topic, partition, offset, timestamp, event };
            let position = self.tasks.get(&task).filter(|t| !t.restoring).map(Task::lane_position);
            if position.is_some() && self.shortcut.wants_probe(task, &self.producer.context().acks) {
                let drained = self.repartition_drained(task);
                self.shortcut.probed(task, drained);
            }
            match self.shortcut.route(task, position, &self.producer.context().acks, bound) {
                Route::Apply(held, record) => {
                    self.staged_records += held.len() + 1;
                    let staged = &mut self.staged[task as usize];
                    staged.extend(held);
                    staged.push(record);
                }
                Route::Send(records) if self.holding => {
                    self.held.routed_records += records.len();
                    self.held.routed.push((task, records));
                }
                Route::Send(records) => self.send_routed(task, records)?,
                Route::Held => {}
            }
        }
        Ok(())
    }

    /// Adds the input records and bytes counted since the last call to the metrics.
    fn flush_input_counts(&mut self) {
        for counter in [&self.room_input.0, &self.room_input.1, &self.read_input.0, &self.read_input.1] {
            counter.flush();
        }
    }

    /// Input partition `topic`/`partition` was routed up to `next` (the offset the next commit
    /// commits for it): once per partition per round, not per record.
    fn routed_to(&mut self, topic: &str, partition: i32, next: i64) {
        // Looked up by &str: no allocation once the topic is known.
        match self.routed.get_mut(topic) {
            Some(partitions) => {
                partitions.insert(partition, next);
            }
            None => {
                self.routed.entry(topic.to_string()).or_default().insert(partition, next);
            }
        }
    }

    /// Whether repartition partition `partition` holds nothing its local task has not
    /// consumed: its high watermark, read from the broker now, is at the task's position (or,
    /// for a task that has consumed nothing, at the low watermark). One request, once per
    /// lane closure (see `shortcut`); a failed one answers no, and the barrier is sent.
    fn repartition_drained(&self, partition: i32) -> bool {
        let Some(task) = self.tasks.get(&partition) else { return false };
        match self.probe.fetch_watermarks(&self.repartition, partition, PROBE_TIMEOUT) {
            Ok((low, high)) => match task.position() {
                Some(position) => high <= position,
                None => high <= low,
            },
            Err(e) => {
                warn!(task = partition, error = %e, "reading the repartition partition's watermarks; the shortcut waits for a barrier");
                false
            }
        }
    }

    /// Records bound for task `partition` -> the repartition topic.
    fn send_routed(&mut self, partition: i32, records: Vec<Bound>) -> Result<(), RuntimeError> {
        let repartition = self.repartition.clone();
        for b in records {
            let source = Source {
                topic: b.topic.to_string(),
                partition: b.partition,
                offset: b.offset,
                timestamp: b.timestamp.unwrap_or(0),
            };
            let value = envelope::encode(&source, &b.event);
            let mut record =
                self.record(&repartition).partition(partition).key(b.event.room_id().as_bytes()).payload(&value[..]);
            if let Some(ts) = b.timestamp {
                record = record.timestamp(ts);
            }
            self.send(record)?;
            self.metrics.routed.inc();
        }
        Ok(())
    }

    /// Records bound for task `partition`, which is here and whose lane is open -> the task.
    /// Takes them out of `records`.
    fn apply_local(&mut self, partition: i32, records: &mut Vec<Bound>, now: Millis) -> Result<(), RuntimeError> {
        // Read in place and dropped together after: moving each record out of the vector
        // copied it (over a hundred bytes) once more.
        let (mut taken, mut skipped) = (0, 0);
        let applied = records.iter().try_for_each(|b| {
            let task = self.tasks.get_mut(&partition).expect("a lane opens only for a task held here");
            let applied = task
                .apply(&b.topic, b.partition, b.offset, b.timestamp.unwrap_or(0), &b.event, now, &mut self.outbox)
                .map_err(|source| RuntimeError::Engine { partition, source })?;
            taken += 1;
            skipped += u64::from(!applied);
            Ok(())
        });
        self.metrics.shortcut.inc_by(taken);
        self.metrics.duplicates_skipped.inc_by(skipped);
        records.clear();
        // What was applied before a failure is sent all the same, as it was when each
        // record's receipts were sent at once.
        let emitted = self.emit(now);
        applied.and(emitted)
    }

    /// The records routing staged for local tasks in this batch -> their tasks, task by task
    /// (each task's in routing order). Task by task rather than in routing order across
    /// tasks keeps each task's state in the CPU's caches: 29% more events per second at the
    /// median of an A/B over the benchmark's chat (BENCHMARKS.md). Tasks are independent (a
    /// room has one task), so the order across tasks does not matter. `handle_batch` leaves
    /// nothing staged when it returns, applied or (after an error) dropped.
    fn apply_staged(&mut self, now: Millis) -> Result<(), RuntimeError> {
        if self.staged_records == 0 {
            return Ok(());
        }
        self.staged_records = 0;
        for p in 0..self.staged.len() {
            if self.staged[p].is_empty() {
                continue;
            }
            // Taken out and put back emptied (`apply_local` empties it), so that its capacity
            // serves the next batch.
            let mut records = std::mem::take(&mut self.staged[p]);
            let applied = self.apply_local(p as i32, &mut records, now);
            self.staged[p] = records;
            applied?;
        }
        Ok(())
    }

    /// Held records whose lane has opened -> their tasks.
    fn release_held(&mut self, now: Millis) -> Result<(), RuntimeError> {
        let tasks = &self.tasks;
        let position = |p: i32| tasks.get(&p).filter(|t| !t.restoring).map(Task::lane_position);
        let released = self.shortcut.release(position, &self.producer.context().acks);
        for (partition, mut records) in released {
            self.apply_local(partition, &mut records, now)?;
        }
        Ok(())
    }

    /// Closes every lane and sends what they held (partitions are being assigned or revoked).
    fn close_lanes(&mut self) {
        for (partition, records) in self.shortcut.close_all() {
            if let Err(e) = self.send_routed(partition, records) {
                warn!(error = %e, "sending held records to the repartition topic failed");
                self.pending_rewind = Some(e);
            }
        }
    }

    /// Per input topic and partition, the offset of the first record held: offsets are not
    /// committed past it.
    fn held_positions(&self) -> HeldPositions {
        let mut first = HeldPositions::new();
        for b in self.shortcut.held() {
            let e = first.entry(b.topic.clone()).or_default().entry(b.partition).or_insert(b.offset);
            *e = (*e).min(b.offset);
        }
        first
    }

    /// Whether there is work without new records: input waiting to be routed, or held.
    pub fn has_pending(&self) -> bool {
        self.inputs.buffered() > 0 || self.shortcut.holding()
    }

    /// Whether the last routing round stopped at its bound with more records ready to go: the
    /// next poll should not wait for new ones.
    pub fn more_ready(&self) -> bool {
        self.more_ready
    }

    /// How much output is held for the next transaction.
    fn held_output(&self) -> usize {
        self.outbox.len() + self.held.routed_records + self.held.dead_letters.len()
    }

    /// Sends the output held while a transaction completed (see `holding`), into the
    /// transaction that followed it: repartition records and dead letters in the order they
    /// were routed, then the receipts. A task's repartition records go before any its lane
    /// held back since (sent when lanes close), as they were routed before them.
    fn release_output(&mut self) -> Result<(), RuntimeError> {
        if !std::mem::take(&mut self.holding) {
            return Ok(());
        }
        let held = std::mem::take(&mut self.held);
        let count = held.routed_records + held.dead_letters.len() + self.outbox.len();
        self.metrics.held_output.inc_by(count as u64);
        for (task, records) in held.routed {
            self.send_routed(task, records)?;
        }
        for d in held.dead_letters {
            self.dead_letter(&d.topic, d.partition, d.offset, d.timestamp, &d.raw, &d.error)?;
        }
        self.emit(now_ms())
    }

    /// Drops the output held for the next transaction (a rewind: it is made again), and
    /// receipts a failed batch left unsent.
    fn drop_held_output(&mut self) {
        if std::mem::take(&mut self.holding) {
            self.metrics.held_output_dropped.inc_by(self.held_output() as u64);
        }
        self.held = HeldOutput::default();
        self.outbox.clear();
    }

    /// Produces the receipts that the records applied since the last call completed
    /// (`outbox`). A task's batch sends its receipts once it is applied: some tens of
    /// milliseconds after the first of them under a backlog (a routing round is at most
    /// [`ROUND_RECORDS`]), well under one under a live load.
    fn emit(&mut self, now: Millis) -> Result<(), RuntimeError> {
        if self.outbox.is_empty() || self.holding {
            // Most batches of a few events complete nothing: no topic handle. Held receipts
            // wait for the next transaction.
            return Ok(());
        }
        let outbox = std::mem::take(&mut self.outbox);
        let sent = self.send_receipts(&outbox, now);
        self.outbox = outbox;
        self.outbox.clear();
        sent
    }

    /// `receipts` -> the output topic, through one topic handle (see
    /// `kafka::send_with_opaque`), counted outstanding under the epoch at once, as a commit
    /// counts its changelog records.
    fn send_receipts(&mut self, receipts: &[Completed], now: Millis) -> Result<(), RuntimeError> {
        let output = crate::kafka::TopicHandle::with_opaques(&self.producer, &self.cfg.topics.output)?;
        let context = self.producer.context();
        let count = receipts.len();
        context.add_outstanding(self.epoch, count as i64);
        let (emitted, message_to_receipt, last_read_to_receipt) = &self.receipt_metrics;
        let mut sent = Ok(());
        // One buffer for every receipt's value: librdkafka copies it.
        let mut value = Vec::new();
        for (i, (last_read, r)) in receipts.iter().enumerate() {
            encode_receipt_into(&mut value, r);
            if let Err(e) = crate::kafka::send_with_opaque(&output, r.room_id.as_bytes(), &value, self.epoch as usize) {
                // This receipt and the ones after it were not sent.
                context.add_outstanding(self.epoch, -((count - i) as i64));
                sent = Err(e.into());
                break;
            }
            emitted.inc();
            message_to_receipt.observe((now - r.sent_at).max(0) as f64 / 1000.0);
            last_read_to_receipt.observe((now - last_read).max(0) as f64 / 1000.0);
            self.sent += 1;
            if let Some(f) = self.on_receipt.as_mut() {
                f(r);
            }
        }
        // What was sent is counted, whether or not all of it was.
        emitted.flush();
        message_to_receipt.flush();
        last_read_to_receipt.flush();
        sent
    }

    /// The record, unchanged, to `<application_id>-dlq`, with headers saying where it came
    /// from and why it was rejected. Its content is never logged.
    fn dead_letter(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        raw: &Raw,
        e: &DecodeError,
    ) -> Result<(), RuntimeError> {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = &raw.headers {
            for h in original.iter() {
                headers = headers.insert(Header { key: h.key, value: h.value });
            }
        }
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let message = e.to_string();
        for (key, value) in [
            ("allread.source.topic", topic),
            ("allread.source.partition", partition_text.as_str()),
            ("allread.source.offset", offset_text.as_str()),
            ("allread.error.kind", e.kind()),
            ("allread.error.message", message.as_str()),
        ] {
            headers = headers.insert(Header { key, value: Some(value.as_bytes()) });
        }
        let dlq = self.dlq.clone();
        let mut record = self.record(&dlq).headers(headers);
        if let Some(key) = raw.key() {
            record = record.key(key);
        }
        if let Some(payload) = raw.payload_if_any() {
            record = record.payload(payload);
        }
        if let Some(ts) = timestamp {
            record = record.timestamp(ts);
        }
        self.send(record)?;
        warn!(topic, partition, offset, kind = e.kind(), error = %e, "dead-lettered an undecodable record");
        self.metrics.dead_lettered.inc();
        self.metrics.decode_failures.with_label_values(&[e.kind()]).inc();
        Ok(())
    }

    /// Repartition record -> its task -> receipts.
    fn process(&mut self, m: &Polled, now: Millis) -> Result<(), RuntimeError> {
        let partition = m.partition;
        let Some(task) = self.tasks.get_mut(&partition) else {
            debug!(partition, "record of a task no longer assigned here; skipped");
            return Ok(());
        };
        if task.restoring {
            // Fetched before the partition was paused; re-read once the task is restored.
            return Ok(());
        }
        let payload = m.raw().map_or(&[][..], Raw::payload);
        match task.process(m.offset, payload, now, &mut self.outbox) {
            Ok(false) => {
                self.metrics.duplicates_skipped.inc();
                Ok(())
            }
            Ok(true) => self.emit(now),
            Err(TaskError::Envelope(e)) => {
                let _task = info_span!("task", task = partition).entered();
                // Only allread writes this topic; a record it cannot read is a bug or a
                // foreign writer. Count it loudly and go on.
                error!(partition, offset = m.offset, error = %e, "skipping a corrupt repartition record");
                self.metrics.corrupt_repartition_records.inc();
                Ok(())
            }
            Err(TaskError::Engine(e)) => Err(RuntimeError::Engine { partition, source: e }),
        }
    }

    pub fn tick(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        self.settle_commit(consumer)?;
        let now = now_ms();
        for (partition, task) in self.tasks.iter_mut().filter(|(_, t)| !t.restoring) {
            task.tick(now).map_err(|source| RuntimeError::Engine { partition: *partition, source })?;
        }
        self.last_tick = Instant::now();
        self.update_gauges();
        Ok(())
    }

    /// Commits output, changelog, offsets and local state (see the module's doc), and returns
    /// once all of it is done.
    pub fn commit(&mut self, consumer: &Consumer_, mode: CommitMode) -> Result<(), RuntimeError> {
        self.start_commit(consumer, mode)?;
        self.settle_commit(consumer)
    }

    /// Begins a commit, after completing the one before it, and returns once its records are
    /// sent: under `exactly_once` another thread completes the transaction, under
    /// `at_least_once` the records are acknowledged meanwhile, and [`Processor::settle_commit`]
    /// (or [`Processor::settle_if_done`]) does the rest.
    pub fn start_commit(&mut self, consumer: &Consumer_, mode: CommitMode) -> Result<(), RuntimeError> {
        self.settle_commit(consumer)?;
        let started = Instant::now();
        let begun = self.commit_inner(consumer, mode, started);
        if begun.is_err() {
            self.metrics.commit_failures.inc();
        }
        begun
    }

    /// Whether an `exactly_once` commit's transaction is still being completed.
    pub fn committing(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|c| matches!(&c.waiting, Waiting::Transaction(t) if !t.is_finished()))
    }

    /// Whether an `exactly_once` commit is in flight (its transaction complete or not).
    fn transaction_in_flight(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|c| matches!(c.waiting, Waiting::Transaction(_)))
    }

    /// Whether a commit is in flight, of either guarantee.
    pub fn commit_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether the commit in flight has what it waits for.
    fn commit_done(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|c| match &c.waiting {
            Waiting::Transaction(t) => t.is_finished(),
            Waiting::Acks { sending, .. } => sending.is_finished(),
        })
    }

    /// Completes the commit in flight, if any: waits for its transaction to commit (or for
    /// its records' acknowledgements), then writes the tasks' changes locally (and commits
    /// the consumer's offsets). Everything that needs the last commit complete calls this
    /// first. An error means the commit did not complete (the transaction failed, a record
    /// was not acknowledged, or a local write could not begin): the caller rewinds.
    pub fn settle_commit(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        self.settle(Some(consumer))
    }

    /// [`Processor::settle_commit`] of an `exactly_once` commit in flight, if there is one
    /// (for callers without the consumer).
    pub fn settle_transaction(&mut self) -> Result<(), RuntimeError> {
        if self.transaction_in_flight() {
            self.settle(None)?;
        }
        Ok(())
    }

    fn settle(&mut self, consumer: Option<&Consumer_>) -> Result<(), RuntimeError> {
        let Some(c) = self.in_flight.take() else {
            return Ok(());
        };
        let result = match c.waiting {
            Waiting::Transaction(transaction) => {
                let transaction = transaction.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                transaction.and_then(|()| {
                    self.metrics.transactions.with_label_values(&["committed"]).inc();
                    self.write_local(c.prepared)?;
                    self.offsets_committed(&c.held, &c.routed, c.tasks_committed);
                    Ok(())
                })
            }
            Waiting::Acks { sending, offsets, mode } => {
                // Usually long done: a commit waits a commit interval before it is settled.
                let sent = sending.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                sent.and_then(|()| self.write_local(c.prepared)).map(|()| {
                    if offsets.count() > 0 {
                        // A failed offset commit loses nothing: tasks resume from their own
                        // state and skip what they have applied. Warn; the next commit
                        // carries it.
                        let consumer = consumer.expect("an at_least_once commit is settled with the consumer");
                        if let Err(e) = consumer.commit(&offsets, mode) {
                            warn!(error = %e, "committing consumer offsets failed; retrying at the next commit");
                            return;
                        }
                    }
                    self.offsets_committed(&c.held, &c.routed, c.tasks_committed);
                })
            }
        };
        match &result {
            Ok(()) => self.committed(c.started),
            Err(_) => self.metrics.commit_failures.inc(),
        }
        // The next transaction has begun: what was held for it goes in.
        result.and_then(|()| self.release_output())
    }

    /// [`Processor::settle_commit`] if the commit in flight has what it waits for, without
    /// waiting.
    pub fn settle_if_done(&mut self, consumer: &Consumer_) -> Result<(), RuntimeError> {
        if self.commit_done() {
            self.settle_commit(consumer)?;
        }
        Ok(())
    }

    fn committed(&mut self, started: Instant) {
        self.commits_completed += 1;
        self.metrics.commit_duration.observe(started.elapsed().as_secs_f64());
        let outcomes = self.outcomes();
        self.metrics.add_outcomes(&outcomes, &self.exported_outcomes);
        self.exported_outcomes = outcomes;
    }

    /// Begins a commit, if there is anything to commit: it is then in flight.
    fn commit_inner(&mut self, consumer: &Consumer_, mode: CommitMode, started: Instant) -> Result<(), RuntimeError> {
        self.last_commit = started;
        // (1) Changes -> changelog records: sent now under `exactly_once` (into the
        // transaction), and only once the output is in under `at_least_once`.
        let epoch = self.epoch;
        let changelog_epoch = epoch + 1;
        let mut prepared = Vec::new();
        let mut batches = Vec::new();
        let partitions: Vec<i32> = self.tasks.keys().copied().collect();
        for partition in partitions {
            let task = self.tasks.get_mut(&partition).expect("listed above");
            let _task = info_span!("task", task = partition).entered();
            let batch = task.prepare_commit().map_err(|source| RuntimeError::Engine { partition, source })?;
            if let Some(batch) = batch {
                let count = changelog_records(&batch).count();
                self.metrics.changelog_records.inc_by(count as u64);
                prepared.push(partition);
                if self.exactly_once() {
                    self.producer.context().add_outstanding(changelog_epoch, count as i64);
                    // Some may have been sent on an error: the rewind that follows aborts
                    // the transaction.
                    crate::kafka::send_batch(
                        &self.producer,
                        &self.changelog,
                        partition,
                        changelog_records(&batch),
                        changelog_epoch as usize,
                    )?;
                } else {
                    batches.push((partition, batch));
                }
            }
        }
        let routed = self.routed.values().map(|p| p.len()).sum::<usize>();
        let mut tpl = TopicPartitionList::with_capacity(routed + self.tasks.len());
        let held = self.held_positions();
        for (topic, partitions) in &self.routed {
            for (partition, offset) in partitions {
                let first_held = held.get(topic.as_str()).and_then(|p| p.get(partition));
                let offset = first_held.map_or(*offset, |first| (*first).min(*offset));
                crate::kafka::add_offset(&mut tpl, topic, *partition, offset).map_err(RuntimeError::Produce)?;
            }
        }
        let mut tasks_committed = Vec::new();
        for (partition, task) in self.tasks.iter().filter(|(_, t)| !t.restoring) {
            if let Some(offset) = task.position() {
                if self.kafka_committed.get(partition) != Some(&offset) {
                    crate::kafka::add_offset(&mut tpl, &self.repartition, *partition, offset)
                        .map_err(RuntimeError::Produce)?;
                    tasks_committed.push((*partition, offset));
                }
            }
        }
        if self.sent == 0 && prepared.is_empty() && tpl.count() == 0 {
            return Ok(());
        }
        let routed: Vec<(String, i32, i64)> =
            self.routed.iter().flat_map(|(t, ps)| ps.iter().map(move |(p, o)| (t.clone(), *p, *o))).collect();
        // What is sent from now on belongs to the next commit.
        self.epoch += 2;
        self.sent = 0;
        let waiting = if self.exactly_once() {
            // (2) Offsets into the transaction, (3) commit it: on their own thread.
            let offsets = match tpl.count() {
                0 => None,
                _ => Some((tpl, consumer.group_metadata().ok_or(RuntimeError::NotInGroup)?)),
            };
            let producer = self.producer.clone();
            let transaction = std::thread::Builder::new()
                .name("allread-commit".into())
                .spawn(move || complete_transaction(&producer, offsets))
                .map_err(RuntimeError::Thread)?;
            Waiting::Transaction(transaction)
        } else {
            // (2) The output acknowledged, then (3) the changelog sent and acknowledged: on
            // their own thread, while the loop goes on. (4) and (5) in `settle_commit`.
            let producer = self.producer.clone();
            let changelog = self.changelog.clone();
            let sending = std::thread::Builder::new()
                .name("allread-commit".into())
                .spawn(move || {
                    complete_acks(&producer, &changelog, epoch, changelog_epoch, &batches, started + ACKS_TIMEOUT)
                })
                .map_err(RuntimeError::Thread)?;
            Waiting::Acks { sending, offsets: tpl, mode }
        };
        self.in_flight = Some(CommitInFlight { waiting, prepared, held, routed, tasks_committed, started });
        Ok(())
    }

    /// After the commit's records are acknowledged (and, under `exactly_once`, committed): (4)
    /// each task's batch to its local store, with the changelog offset it now reflects.
    fn write_local(&mut self, prepared: Vec<i32>) -> Result<(), RuntimeError> {
        if let Some((n, first)) = self.producer.context().take_failures() {
            return Err(RuntimeError::Delivery { failed: n, first });
        }
        let changelog_next = self.producer.context().take_changelog_next();
        for partition in prepared {
            let _task = info_span!("task", task = partition).entered();
            let task = self.tasks.get_mut(&partition).expect("prepared tasks are held");
            task.finish_commit(changelog_next.get(&partition).copied())
                .map_err(|source| RuntimeError::Engine { partition, source })?;
        }
        Ok(())
    }

    /// After a commit's offsets are committed: the input offsets (see `forget_routed`) and the
    /// tasks' repartition offsets it carried.
    fn offsets_committed(
        &mut self,
        held: &HeldPositions,
        routed: &[(String, i32, i64)],
        tasks_committed: Vec<(i32, i64)>,
    ) {
        self.forget_routed(held, routed);
        self.kafka_committed.extend(tasks_committed);
    }

    /// After a commit of the input offsets `routed`: those committed in full are forgotten,
    /// unless routing went past them since the commit began (the next commit carries those);
    /// those held back by a held record are committed again next time.
    fn forget_routed(&mut self, held: &HeldPositions, routed: &[(String, i32, i64)]) {
        for (topic, partition, offset) in routed {
            if held.get(topic.as_str()).is_some_and(|h| h.contains_key(partition)) {
                continue;
            }
            if let Some(partitions) = self.routed.get_mut(topic.as_str()) {
                if partitions.get(partition) == Some(offset) {
                    partitions.remove(partition);
                }
                if partitions.is_empty() {
                    self.routed.remove(topic.as_str());
                }
            }
        }
    }

    /// After a failure: abort what is uncommitted and go back to the last commit, as Kafka
    /// Streams revives its tasks. Under `exactly_once` nothing produced since that commit is
    /// ever visible; under `at_least_once` what was produced stays.
    pub fn rewind(&mut self, consumer: &Consumer_, reason: &RuntimeError) {
        // What was held for the next transaction is made again from the input (below); not
        // sent when the commit in flight settles.
        self.drop_held_output();
        // A commit in flight ends first, either way (its tasks are rebuilt below if it failed).
        if let Err(e) = self.settle_commit(consumer) {
            warn!(error = %e, "the commit in flight failed as well");
        }
        self.metrics.rewinds.inc();
        // The rewound engines count again what they re-apply; count only the new.
        self.exported_outcomes = self.outcomes();
        warn!(error = %reason, "rewinding to the last commit");
        self.sent = 0;
        // Records of the abandoned epoch may never be reported (some of a batch may not have
        // been sent): nothing waits for it again. Nor for the next, which a commit that
        // failed as it began may have sent changelog records in (see `commit_inner`).
        self.epoch += 2;
        let mut new_producer = false;
        if self.exactly_once() {
            self.metrics.transactions.with_label_values(&["aborted"]).inc();
            let aborted = self.producer.abort_transaction(TXN_TIMEOUT).and_then(|()| self.producer.begin_transaction());
            if let Err(e) = aborted {
                // Fenced, or otherwise fatal: a new producer with the same transactional id
                // fences the old one and aborts its transaction.
                warn!(error = %e, "the transactional producer cannot continue; creating a new one");
                match create_producer(&self.cfg, self.transactional_id.as_deref()) {
                    Ok(p) => {
                        self.metrics.producers_created.inc();
                        self.producer = Arc::new(p);
                        new_producer = true;
                    }
                    Err(e) => {
                        error!(error = %e, "creating a new transactional producer failed");
                        self.fatal = Some(e);
                        return;
                    }
                }
            }
        } else {
            let _ = crate::kafka::flush(&self.producer, Duration::from_secs(30));
        }
        let _ = self.producer.context().take_failures();
        let _ = self.producer.context().take_changelog_next();
        // Tasks go back to their last commit: what they applied since must come again (input
        // is read again from the committed offsets), and the repartition topic may hold some.
        self.shortcut.reset(new_producer);
        // Every task goes back to its local store and catches up from its changelog (which
        // is ahead if a commit reached Kafka but not the store), its partition paused.
        self.stop_restores();
        let tasks = std::mem::take(&mut self.tasks);
        let mut paused = TopicPartitionList::new();
        for (partition, task) in tasks {
            let _task = info_span!("task", task = partition).entered();
            match task.rewind() {
                Ok(task) => {
                    paused.add_partition(&self.repartition, partition);
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    self.fatal = Some(RuntimeError::Store { partition, source: e });
                    return;
                }
            }
        }
        if let Err(e) = consumer.pause(&paused) {
            warn!(error = %e, "pausing the tasks' partitions");
        }
        // Input partitions go back to Kafka's committed offsets.
        self.routed.clear();
        self.kafka_committed.clear();
        match consumer.assignment().and_then(|a| consumer.committed_offsets(a, Duration::from_secs(10))) {
            Ok(committed) => {
                let positions: crate::receipts::HashMap<(Arc<str>, i32), i64> = committed
                    .elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some(((Arc::from(e.topic()), e.partition()), o)),
                        _ => None,
                    })
                    .collect();
                self.inputs.reset(&positions);
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
            Err(e) => {
                self.inputs.reset(&Default::default());
                warn!(error = %e, "reading committed offsets failed; input may be re-read from later positions")
            }
        }
        // Partitions paused for the router's bound hold nothing now.
        self.sync_fetching(consumer);
    }

    /// Partitions assigned: open a task per repartition partition, restoring. Returns the
    /// partitions to pause until their tasks are restored.
    pub fn on_assign(&mut self, consumer: &Consumer_, tpl: &mut TopicPartitionList) -> TopicPartitionList {
        self.assigned = true;
        if let Err(e) = self.settle_commit(consumer) {
            self.pending_rewind = Some(e);
        }
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        // New input partitions may have records their last owner sent through the repartition
        // topic that no task has applied yet; new tasks may too.
        self.close_lanes();
        // Input partitions: where each starts, so that the router knows which have a backlog.
        let mut inputs = TopicPartitionList::new();
        for e in tpl.elements().iter().filter(|e| !self.is_repartition(e.topic())) {
            inputs.add_partition(e.topic(), e.partition());
        }
        if inputs.count() > 0 {
            let committed = consumer.committed_offsets(inputs.clone(), Duration::from_secs(10)).unwrap_or_else(|e| {
                warn!(error = %e, "reading committed offsets of new input partitions");
                inputs
            });
            for e in committed.elements() {
                let next = match e.offset() {
                    Offset::Offset(o) => Some(o),
                    _ => None,
                };
                self.inputs.assign(e.topic(), e.partition(), next);
            }
        }
        let mut paused = TopicPartitionList::new();
        let mine: Vec<i32> =
            tpl.elements().iter().filter(|e| self.is_repartition(e.topic())).map(|e| e.partition()).collect();
        for partition in mine {
            let dir = self.cfg.task_dir(partition);
            let _task = info_span!("task", task = partition).entered();
            match Task::open(partition, dir.clone(), self.cfg.engine.clone(), &self.rocks) {
                Ok(task) => {
                    let offset = task.committed_offset().map_or(Offset::Beginning, Offset::Offset);
                    let _ = tpl.set_partition_offset(&self.repartition, partition, offset);
                    paused.add_partition(&self.repartition, partition);
                    info!(task = partition, state = %dir.display(), changelog_offset = ?task.changelog_offset(), "task assigned");
                    self.tasks.insert(partition, task);
                }
                Err(e) => {
                    error!(task = partition, state = %dir.display(), error = %e, "cannot open the task's state");
                    self.fatal = Some(RuntimeError::Store { partition, source: e });
                }
            }
        }
        self.share_cache();
        paused
    }

    /// Gives each task an even share of the instance's engine cache (`engine.cache_entries`),
    /// after the tasks assigned to it changed. A task past its new share evicts rooms after
    /// its next commit.
    fn share_cache(&mut self) {
        let share = cache_share(self.cfg.engine.cache_entries, self.tasks.len());
        for task in self.tasks.values_mut() {
            task.engine_mut().set_cache_entries(share);
        }
        debug!(tasks = self.tasks.len(), entries_per_task = share, "engine cache shared");
    }

    /// Partitions revoked: commit what we have, then let them go.
    pub fn on_revoke(&mut self, consumer: &Consumer_, tpl: &TopicPartitionList, lost: bool) {
        self.metrics.rebalances.with_label_values(&[if lost { "lost" } else { "revoke" }]).inc();
        let settled = self.settle_commit(consumer);
        // Held records go the long way before the commit covers their input.
        self.close_lanes();
        if let Err(e) = settled {
            warn!(error = %e, "the commit before revocation failed; the next owner re-processes from the last commit");
            self.pending_rewind = Some(e);
        } else if !lost {
            if let Err(e) = self.commit(consumer, CommitMode::Sync) {
                warn!(error = %e, "commit before revocation failed; the next owner re-processes from the last commit");
                self.pending_rewind = Some(e);
            }
        } else if self.exactly_once() {
            // Lost partitions may have a new owner already: whatever is uncommitted here must
            // never become visible.
            self.pending_rewind = Some(RuntimeError::Lost);
        }
        for elem in tpl.elements() {
            if self.is_repartition(elem.topic()) {
                let partition = elem.partition();
                self.kafka_committed.remove(&partition);
                self.release_restore(partition);
                let label = partition.to_string();
                let m = &self.metrics;
                for g in [
                    &m.cached_rooms,
                    &m.cached_entries,
                    &m.cached_members,
                    &m.pending_messages,
                    &m.consumer_lag,
                    &m.rocksdb_keys,
                    &m.rocksdb_sst_bytes,
                    &m.rocksdb_memtable_bytes,
                    &m.restore_remaining,
                ] {
                    let _ = g.remove_label_values(&[&label]);
                }
                if let Some(task) = self.tasks.remove(&partition) {
                    self.closed_outcomes.add(&task.outcomes());
                    info!(task = partition, lost, "task revoked");
                }
            } else {
                if let Some(partitions) = self.routed.get_mut(elem.topic()) {
                    partitions.remove(&elem.partition());
                }
                self.inputs.revoke(elem.topic(), elem.partition());
            }
        }
        self.share_cache();
    }

    /// One round of restoring: starts restores of tasks that need one, applies what the
    /// changelog consumer has, and resumes the tasks that reached their changelog's end.
    /// Returns whether any task is still restoring.
    pub fn restore_step(&mut self, consumer: &Consumer_) -> Result<bool, RuntimeError> {
        let waiting: Vec<i32> =
            self.tasks.iter().filter(|(p, t)| t.restoring && !self.restores.contains_key(p)).map(|(p, _)| *p).collect();
        for partition in waiting {
            self.start_restore(consumer, partition)?;
        }
        if self.restores.is_empty() {
            self.metrics.restoring_tasks.set(self.restoring() as i64);
            return Ok(self.restoring() > 0);
        }
        let mut records: BTreeMap<i32, Vec<ChangelogRecord>> = BTreeMap::new();
        let mut finished = Vec::new();
        let deadline = Instant::now() + Duration::from_millis(20);
        let mut n = 0usize;
        while n < self.cfg.processing.restore_batch_records {
            let timeout = if n == 0 { Duration::from_millis(10) } else { Duration::ZERO };
            match self.restorer.poll(timeout) {
                None => break,
                Some(Ok(m)) => {
                    n += 1;
                    if m.topic() == self.restorer.topic() && self.restores.contains_key(&m.partition()) {
                        let entry = records.entry(m.partition()).or_default();
                        entry.push((m.offset(), m.key().unwrap_or(&[]).to_vec(), m.payload().map(<[u8]>::to_vec)));
                    }
                }
                Some(Err(KafkaError::PartitionEOF(partition))) => finished.push(partition),
                Some(Err(e)) => {
                    warn!(error = %e, "reading a changelog (retrying)");
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
        }
        for (partition, batch) in records {
            let (Some(task), Some(r)) = (self.tasks.get_mut(&partition), self.restores.get_mut(&partition)) else {
                continue;
            };
            let count = batch.len() as u64;
            r.position = batch.last().map_or(r.position, |b| b.0 + 1);
            task.restore(batch).map_err(|source| RuntimeError::Store { partition, source })?;
            r.restored += count;
            self.metrics.restored_records.inc_by(count);
            self.metrics
                .restore_remaining
                .with_label_values(&[&partition.to_string()])
                .set((r.end - r.position).max(0));
            if r.last_report.elapsed() > Duration::from_secs(5) {
                r.last_report = Instant::now();
                info!(task = partition, restored = r.restored, position = r.position, end = r.end, "restoring");
            }
        }
        for partition in finished {
            self.finish_restore(consumer, partition)?;
        }
        self.metrics.restoring_tasks.set(self.restoring() as i64);
        Ok(self.restoring() > 0)
    }

    fn start_restore(&mut self, consumer: &Consumer_, partition: i32) -> Result<(), RuntimeError> {
        let (low, high) = match self.restorer.watermarks(partition, Duration::from_secs(5)) {
            Ok(w) => w,
            Err(e) => {
                warn!(task = partition, error = %e, "reading the changelog's offsets (retrying)");
                return Ok(());
            }
        };
        let task = &self.tasks[&partition];
        let from = task.changelog_offset().unwrap_or(low).max(low);
        let now = Instant::now();
        let restore = Restore { started: now, end: high, position: from, restored: 0, last_report: now };
        if from >= high {
            if from > high {
                warn!(task = partition, local = from, changelog_end = high, "local state is ahead of its changelog (was the changelog topic recreated?); keeping the local state");
            }
            self.restores.insert(partition, restore);
            return self.finish_restore(consumer, partition);
        }
        match self.restorer.add(partition, from) {
            Ok(true) => {}
            // It left the restore consumer a moment ago; the next round tries again.
            Ok(false) => return Ok(()),
            Err(e) => {
                warn!(task = partition, error = %e, "assigning the changelog partition to the restore consumer (retrying)");
                return Ok(());
            }
        }
        info!(task = partition, from, to = high, "restoring the task from its changelog");
        self.metrics.restore_remaining.with_label_values(&[&partition.to_string()]).set(high - from);
        self.restores.insert(partition, restore);
        Ok(())
    }

    /// The task has caught up: it re-reads its offsets and its partition resumes from there.
    fn finish_restore(&mut self, consumer: &Consumer_, partition: i32) -> Result<(), RuntimeError> {
        let Some(r) = self.release_restore(partition) else {
            return Ok(());
        };
        let Some(task) = self.tasks.remove(&partition) else {
            return Ok(());
        };
        let _task = info_span!("task", task = partition).entered();
        let task = task.finish_restore().map_err(|source| RuntimeError::Store { partition, source })?;
        let offset = task.committed_offset().map_or(Offset::Beginning, Offset::Offset);
        let secs = r.started.elapsed().as_secs_f64();
        info!(
            task = partition,
            restored = r.restored,
            seconds = format!("{secs:.3}"),
            records_per_second = (r.restored as f64 / secs.max(1e-6)) as u64,
            resume_at = ?task.committed_offset(),
            "task restored; processing"
        );
        self.metrics.restore_remaining.with_label_values(&[&partition.to_string()]).set(0);
        self.tasks.insert(partition, task);
        if let Err(e) = consumer.seek(&self.repartition, partition, offset, Duration::from_secs(10)) {
            warn!(task = partition, error = %e, "seeking the task's partition failed");
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.repartition, partition);
        consumer.resume(&tpl).map_err(RuntimeError::Client)?;
        Ok(())
    }

    /// Ends a restore: its changelog partition leaves the restore consumer.
    fn release_restore(&mut self, partition: i32) -> Option<Restore> {
        let r = self.restores.remove(&partition)?;
        self.restorer.remove(partition);
        Some(r)
    }

    fn stop_restores(&mut self) {
        let partitions: Vec<i32> = self.restores.keys().copied().collect();
        for partition in partitions {
            self.release_restore(partition);
        }
    }

    /// Per-task gauges of the engines' caches.
    pub fn update_gauges(&mut self) {
        let peak = self.inputs.take_peak();
        self.metrics.buffered_inputs_peak.set(i64::try_from(peak).unwrap_or(i64::MAX));
        self.metrics.tasks.set(self.tasks.len() as i64);
        self.metrics.restoring_tasks.set(self.restoring() as i64);
        self.metrics.buffered_inputs.set(self.inputs.buffered() as i64);
        self.metrics.held_records.set(self.shortcut.held_count() as i64);
        let m = &self.metrics;
        for (partition, task) in &self.tasks {
            let label = partition.to_string();
            let f = task.figures();
            m.cached_rooms.with_label_values(&[&label]).set(f.cached_rooms as i64);
            m.cached_entries.with_label_values(&[&label]).set(f.cached_entries as i64);
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
            // The client's cached high watermark (every fetch response updates it): asking the
            // broker here would stall the processing loop for a round trip per task.
            if let (Some((_, high)), Some(position)) =
                (cached_watermarks(consumer, &self.repartition, *partition), task.position())
            {
                self.metrics.consumer_lag.with_label_values(&[&partition.to_string()]).set((high - position).max(0));
            }
        }
    }

    /// At shutdown, after the final commit: wait for what is still in flight.
    pub fn flush_producer(&self, timeout: Duration) {
        if let Err(e) = crate::kafka::flush(&self.producer, timeout) {
            warn!(error = %e, "flushing the producer at shutdown");
        }
    }
}

/// The client's cached high watermarks (updated by every fetch response; no request).
struct CachedWatermarks<'a>(&'a Consumer_);

impl Backlog for CachedWatermarks<'_> {
    fn watermarks(&self, topic: &str, partition: i32) -> Option<(i64, i64)> {
        cached_watermarks(self.0, topic, partition)
    }
}

/// The low and high watermarks the client has cached for a partition (no request); `None`
/// before anything was fetched from it.
fn cached_watermarks(consumer: &Consumer_, topic: &str, partition: i32) -> Option<(i64, i64)> {
    let Ok(topic) = std::ffi::CString::new(topic) else { return None };
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client pointer is valid while the consumer lives; librdkafka only
    // reads the topic name and writes the two offsets.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || high < 0 {
        return None;
    }
    Some((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::changelog_reader::restore_config;

    #[test]
    fn the_restore_consumer_fetches_again_soon_unless_the_user_says_otherwise() {
        let mut cfg = Config::default();
        let c = restore_config(restore_client_config(&cfg), "g");
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some(crate::kafka::FETCH_QUEUE_BACKOFF_MS));
        cfg.kafka.insert("fetch.queue.backoff.ms".into(), "250".into());
        let c = restore_config(restore_client_config(&cfg), "g");
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("250"), "kafka.* wins");
    }
}

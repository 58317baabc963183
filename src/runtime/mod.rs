//! The stream processor: `allread run`.
//!
//! One consumer in the group `application_id` subscribes to the room topics (those matching the
//! room pattern, found by `kafka::discovery`), the read topic and the repartition topic. Like
//! a Kafka Streams application it has two stages:
//!
//! 1. **Routing.** Input records are decoded, re-keyed by room id and written to the
//!    repartition topic (`<application_id>-events-repartition`) at the partition Kafka's
//!    Java partitioner would pick; undecodable ones go, unchanged, to the dead-letter topic.
//!    This brings a room's events and the reads of that room to one partition.
//! 2. **Tasks.** Each repartition partition is a task with its own RocksDB state; it applies
//!    the events to the receipt engine and produces `receipt_complete` records.
//!
//! Commits are at-least-once with state and offsets together (see `processor`). Everything
//! Kafka-facing runs on one dedicated thread, not on an async runtime: librdkafka's calls
//! block, and a consumer must not be dropped on a tokio worker.

pub mod changelog_reader;
mod context;
mod processor;
mod router;
mod shortcut;
pub mod task;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use tracing::{error, info, warn};

pub use processor::now_ms;

use self::context::RuntimeContext;
use self::processor::Processor;
use self::router::{InputDecoder, Polled, TopicNames};
use crate::config::{Config, ConfigError, Guarantee};
use crate::kafka::admin::{self, AdminError};
use crate::kafka::discovery::{RoomTopics, RoomWatch};
use crate::kafka::partitioner::partition_for;
use crate::kafka::records::RecordQueue;
use crate::kafka::{base_client_config, with_consumer_passthrough, with_producer_passthrough};
use crate::metrics::Metrics;
use crate::receipts::persist;
use crate::receipts::{Engine, EngineError, Outcomes, ReceiptComplete};
use crate::store::rocks::{KeyPrefix, RocksOptions, RocksStore};
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("setting up topics: {0}")]
    Admin(#[from] AdminError),
    #[error("creating a Kafka client: {0}")]
    Client(KafkaError),
    #[error("producing: {0}")]
    Produce(KafkaError),
    #[error("{failed} produced records were not acknowledged; first: {first}")]
    Delivery { failed: u64, first: String },
    #[error("task {partition}: {source}")]
    Engine { partition: i32, source: EngineError },
    #[error("task {partition}: state store: {source}")]
    Store { partition: i32, source: StoreError },
    #[error("transaction ({step}): {source}")]
    Transaction { step: &'static str, source: KafkaError },
    #[error("the consumer is not in its group (no group metadata for the transaction)")]
    NotInGroup,
    #[error("partitions were lost to another instance (session timed out) with work uncommitted")]
    Lost,
    #[error("state directory {path}: {reason}")]
    StateDir { path: String, reason: String },
    #[error("starting a thread: {0}")]
    Thread(std::io::Error),
}

impl From<KafkaError> for RuntimeError {
    fn from(e: KafkaError) -> Self {
        RuntimeError::Produce(e)
    }
}

/// What a run did, returned when it stops (read from the metrics, which count everything).
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub routed: u64,
    pub receipts: u64,
    pub dead_lettered: u64,
    pub outcomes: Outcomes,
}

/// Called with every receipt produced.
pub type ReceiptHook = Box<dyn FnMut(&ReceiptComplete) + Send>;

/// Hooks for embedding the processor (the demo, tests, the HTTP server).
#[derive(Default)]
pub struct Hooks {
    pub on_receipt: Option<ReceiptHook>,
    /// Filled in once the processor exists, for queries and readiness.
    pub handle: Option<Arc<Handle>>,
    pub metrics: Option<Arc<Metrics>>,
}

/// What the HTTP server sees of a running processor.
#[derive(Default)]
pub struct Handle {
    processor: OnceLock<Arc<Mutex<Processor>>>,
    config: OnceLock<Arc<Config>>,
    lookup: OnceLock<rdkafka::consumer::BaseConsumer>,
}

/// Why a query cannot be answered here.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("allread is starting: not in its consumer group yet")]
    NotReady,
    #[error("room's task {task} is not assigned to this instance")]
    NotOwned { task: i32 },
    #[error("room's task {task} is restoring its state from the changelog; try again shortly")]
    Restoring { task: i32 },
    #[error("a commit failed; allread is going back to its last commit: try again shortly")]
    Rewinding,
    #[error("task {task}: {source}")]
    Engine { task: i32, source: EngineError },
}

impl Handle {
    /// The query address of the instance that owns `room`'s task, from the consumer group.
    pub fn owner_of(&self, room: &str) -> Option<String> {
        let cfg = self.config.get()?;
        let task = partition_for(room.as_bytes(), cfg.topics.partitions);
        // One client for all lookups: outside the group, it only reads the group's members.
        let client = match self.lookup.get() {
            Some(c) => c,
            None => {
                let c: rdkafka::consumer::BaseConsumer = with_consumer_passthrough(base_client_config(cfg), cfg)
                    .create()
                    .map_err(|e| warn!(error = %e, "creating the owner lookup client"))
                    .ok()?;
                self.lookup.get_or_init(|| c)
            }
        };
        crate::kafka::group::owner_address(
            client,
            &cfg.application_id,
            &cfg.repartition_topic(),
            task,
            Duration::from_secs(5),
        )
        .map_err(|e| warn!(error = %e, "looking up the owner of a task"))
        .ok()
        .flatten()
    }

    /// `Ok(tasks)` once the consumer is in its group, with the tasks it holds.
    pub fn readiness(&self) -> Result<usize, &'static str> {
        let Some(p) = self.processor.get() else {
            return Err("starting: topics and clients are being set up");
        };
        let p = lock(p);
        if !p.assigned {
            return Err("waiting for the consumer group to assign partitions");
        }
        if p.restoring() > 0 {
            return Err("restoring tasks from their changelogs");
        }
        Ok(p.tasks.len())
    }

    /// Runs `f` on the engine of the task that owns `room`.
    pub fn query<T>(
        &self,
        room: &str,
        f: impl FnOnce(&mut Engine<RocksStore>) -> Result<T, EngineError>,
    ) -> Result<T, QueryError> {
        let (Some(p), Some(cfg)) = (self.processor.get(), self.config.get()) else {
            return Err(QueryError::NotReady);
        };
        let task = partition_for(room.as_bytes(), cfg.topics.partitions);
        let mut p = lock(p);
        // The tasks may hold a commit whose transaction is being completed: complete it. (An
        // `at_least_once` commit waiting for acknowledgements need not be: the engines read
        // through the batch they prepared.)
        if let Err(e) = p.settle_transaction() {
            p.pending_rewind = Some(e);
            return Err(QueryError::Rewinding);
        }
        let Some(t) = p.tasks.get_mut(&task) else {
            return Err(if p.assigned { QueryError::NotOwned { task } } else { QueryError::NotReady });
        };
        if t.restoring {
            return Err(QueryError::Restoring { task });
        }
        f(t.engine_mut()).map_err(|source| QueryError::Engine { task, source })
    }
}

/// Runs the processor until `shutdown` is set, then commits, leaves the group and returns.
pub fn run(cfg: Config, shutdown: Arc<AtomicBool>, hooks: Hooks) -> Result<RunReport, RuntimeError> {
    cfg.validate()?;
    let cfg = Arc::new(cfg);
    ensure_topics_with_retry(&cfg, &shutdown)?;
    if shutdown.load(Ordering::Relaxed) {
        return Ok(RunReport::default());
    }

    let (_lock, instance) = lock_state_dir(&cfg)?;
    let transactional_id = match cfg.processing.guarantee {
        Guarantee::ExactlyOnce => Some(format!("{}-{instance}", cfg.application_id)),
        Guarantee::AtLeastOnce => None,
    };
    info!(guarantee = cfg.processing.guarantee.name(), transactional_id = ?transactional_id, "starting");
    let rocks = engine_rocks_options(&cfg.rocksdb);
    let metrics = hooks.metrics.unwrap_or_default();
    let mut processor = Processor::new(cfg.clone(), transactional_id, rocks, metrics)?;
    processor.on_receipt = hooks.on_receipt;
    let processor = Arc::new(Mutex::new(processor));
    if let Some(handle) = &hooks.handle {
        let _ = handle.processor.set(processor.clone());
        let _ = handle.config.set(cfg.clone());
    }

    let consumer: BaseConsumer<RuntimeContext> = input_consumer_config(&cfg)
        .create_with_context(RuntimeContext { processor: processor.clone(), forwarding: Default::default() })
        .map_err(RuntimeError::Client)?;
    // Opened before subscribing, so that every assigned partition is forwarded to it.
    let records = RecordQueue::open(&consumer, &consumer.context().forwarding);

    // The room topics by name, found by listing the cluster's topics (see `kafka::discovery`).
    let repartition = cfg.repartition_topic();
    let own = [cfg.topics.read.as_str(), repartition.as_str()];
    let lister =
        RoomTopics::new(&with_consumer_passthrough(base_client_config(&cfg), &cfg), &cfg.topics.room_pattern, &own)
            .map_err(RuntimeError::Client)?;
    let Some(rooms) = list_rooms_with_retry(&lister, &shutdown) else {
        return Ok(RunReport::default());
    };
    consumer.subscribe(&subscription(&own, &rooms)).map_err(RuntimeError::Client)?;
    info!(pattern = %cfg.topics.room_pattern, room_topics = rooms.len(), read = %cfg.topics.read, %repartition, group = %cfg.application_id, "allread running");
    let watch =
        RoomWatch::start(lister, rooms, Duration::from_millis(cfg.processing.metadata_refresh_ms)).map_err(|e| {
            RuntimeError::Client(KafkaError::ClientCreation(format!("starting the room topics' watch: {e}")))
        })?;

    let result = process_until(&consumer, records, &processor, &cfg, &shutdown, &watch, &own);
    drop(watch);

    // Leave cleanly: commit, then close the consumer (its revocation commits again, which is
    // a no-op), here on this thread.
    {
        let mut p = lock(&processor);
        if result.is_ok() {
            if let Err(e) = p.commit(&consumer, CommitMode::Sync) {
                warn!(error = %e, "final commit failed; the next start re-processes from the last commit");
            }
        }
    }
    consumer.unsubscribe();
    drop(consumer);
    let p = lock(&processor);
    p.flush_producer(Duration::from_secs(10));
    let report = RunReport {
        routed: p.metrics.routed.get(),
        receipts: p.metrics.receipts.get(),
        dead_lettered: p.metrics.dead_lettered.get(),
        outcomes: p.outcomes(),
    };
    info!(
        routed = report.routed,
        receipts = report.receipts,
        dead_lettered = report.dead_lettered,
        processing_cpu_s = format!("{:.3}", p.metrics.processing_cpu.get()),
        "allread stopped"
    );
    result.map(|()| report)
}

/// The group consumer of the input and repartition topics: allread's settings, then the
/// user's `kafka.*` properties, which win.
fn input_consumer_config(cfg: &Config) -> rdkafka::ClientConfig {
    let mut c = base_client_config(cfg);
    if let Some(address) = &cfg.http.advertised {
        // How other instances find this one's queries (see kafka::group).
        c.set("client.id", crate::kafka::group::client_id_for(address));
    }
    crate::kafka::tune_input_consumer(&mut c)
        .set("group.id", &cfg.application_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    with_consumer_passthrough(c, cfg)
}

/// RocksDB settings for the engine's stores: one memory budget (block cache and memtables)
/// shared by every task, the room as the key prefix (one room load is one prefix scan), no
/// write-ahead log, and commits written in the background.
pub fn engine_rocks_options(settings: &crate::config::Rocksdb) -> RocksOptions {
    let mut opts = RocksOptions::default().with_memory_budget(settings.memory_bytes, settings.write_buffer_bytes);
    opts.key_prefix = Some(KeyPrefix { name: persist::ROOM_PREFIX_SCHEME, prefix_len: persist::room_prefix_len });
    // The changelog is the tasks' log (see `RocksOptions::wal`).
    opts.wal = false;
    // A commit's memtable inserts overlap the processing of what follows it.
    opts.background_writes = Some(crate::store::rocks::BackgroundWriter::new());
    opts
}

fn lock(p: &Mutex<Processor>) -> std::sync::MutexGuard<'_, Processor> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn process_until(
    consumer: &BaseConsumer<RuntimeContext>,
    mut records: RecordQueue<'_>,
    processor: &Mutex<Processor>,
    cfg: &Config,
    shutdown: &AtomicBool,
    watch: &RoomWatch,
    own: &[&str],
) -> Result<(), RuntimeError> {
    let commit_every = cfg.processing.commit_interval();
    let tick_every = Duration::from_millis(cfg.processing.tick_interval_ms);
    let max_records = cfg.processing.max_poll_records;
    let mut last_consumer_warning: Option<Instant> = None;
    let mut unforwarded_warned = false;
    let mut ticks = 0u64;
    let mut restoring = false;
    // Consecutive rewinds without a completed commit: each waits longer, so a failure that
    // persists (broker away, fenced again, a receipt the output topic refuses) is retried
    // calmly instead of in a tight loop. A commit that began is not enough: both guarantees
    // complete it later, and that is where such failures show.
    let mut failures = 0u32;
    let mut completed = 0u64;
    let mut topics = TopicNames::default();
    // Input records are decoded as they are polled (see `Polled`).
    let decoder = InputDecoder::new(cfg);
    // One vector for every poll: growing a fresh one to ten thousand records each time cost
    // the processing thread about 3% of its time in a profile (reallocation, fresh pages zeroed).
    let mut batch = Vec::with_capacity(max_records.min(100_000));
    // The last routing round left records ready to go: poll without waiting.
    let mut more_ready = false;
    // A commit's transaction is being completed: poll briefly, to settle it (and send the
    // output held meanwhile) soon after it is.
    let mut committing = false;
    let mut cpu = ThreadCpu::start();
    // Room topics found that the consumer is not subscribed with yet, and when to try.
    let mut rooms: Option<Vec<String>> = None;
    let mut subscribe_at = Instant::now();
    while !shutdown.load(Ordering::Relaxed) {
        if let Some(found) = watch.changed() {
            rooms = Some(found);
            subscribe_at = Instant::now();
        }
        if let Some(found) = rooms.take_if(|_| Instant::now() >= subscribe_at) {
            // A new subscription takes effect through a rebalance, served by `poll` below.
            match consumer.subscribe(&subscription(own, &found)) {
                Ok(()) => info!(room_topics = found.len(), "the room topics changed; subscribed again"),
                Err(e) => {
                    warn!(error = %e, "subscribing to the room topics found failed; retrying in a second");
                    rooms = Some(found);
                    subscribe_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        // Poll without holding the lock: rebalance callbacks take it. What a failed round left
        // is dropped: the rewind reads it again.
        batch.clear();
        let mut timeout = Duration::from_millis(match (more_ready, restoring || committing) {
            (true, _) => 0,
            (false, true) => 1,
            (false, false) => 50,
        });
        // Broker down, topic not there yet: librdkafka retries; say so now and then.
        let mut consumer_error = |e: KafkaError| {
            if last_consumer_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                warn!(error = %e, "consumer error (retrying)");
                last_consumer_warning = Some(Instant::now());
            }
        };
        // The consumer's own queue: rebalances (served inside `poll`), errors, and the records
        // of a partition not forwarded to `records`, if any were.
        while batch.len() < max_records {
            let Some(polled) = consumer.poll(Duration::ZERO) else { break };
            match polled {
                Ok(m) => {
                    if !unforwarded_warned {
                        warn!(topic = m.topic(), partition = m.partition(), "a record came through the consumer's own queue: its partition was not forwarded to the record queue (taken one at a time)");
                        unforwarded_warned = true;
                    }
                    batch.push(Polled::new(&m, &mut topics, &decoder))
                }
                Err(e) => consumer_error(e),
            }
            timeout = Duration::ZERO;
        }
        let room = max_records.saturating_sub(batch.len());
        records.poll(timeout, room, |polled| match polled {
            Ok(m) => batch.push(Polled::new(&m, &mut topics, &decoder)),
            Err(e) => consumer_error(e),
        });
        let mut p = lock(processor);
        if let Some(fatal) = p.fatal.take() {
            return Err(fatal);
        }
        let mut failed = p.pending_rewind.take();
        if failed.is_none() {
            failed = p.settle_if_done(consumer).err();
        }
        if failed.is_none() && (!batch.is_empty() || p.has_pending()) {
            failed = p.handle_batch(consumer, &mut batch).err();
        }
        more_ready = failed.is_none() && p.more_ready();
        // Not while a commit is in flight: a tick would wait for it (and the engines expire
        // nothing while their batch is prepared). Before the next commit begins, so that
        // commits that take a whole interval do not keep it from ever running.
        if failed.is_none() && p.last_tick.elapsed() >= tick_every && !p.commit_in_flight() {
            p.metrics.fetched_inputs.set(i64::try_from(records.len()).unwrap_or(i64::MAX));
            failed = p.tick(consumer).err();
            cpu.add_to(&p.metrics.processing_cpu);
            ticks += 1;
            if ticks.is_multiple_of(5) {
                p.update_lag(consumer);
            }
        }
        if failed.is_none() && p.last_commit.elapsed() >= commit_every {
            failed = p.start_commit(consumer, CommitMode::Async).err();
        }
        if p.commits_completed != completed {
            completed = p.commits_completed;
            failures = 0;
        }
        if let Some(e) = failed {
            p.rewind(consumer, &e);
            drop(p);
            failures += 1;
            if failures > 1 {
                std::thread::sleep(Duration::from_millis(100 << failures.min(6)));
            }
            continue;
        }
        committing = p.committing();
        match p.restore_step(consumer) {
            Ok(r) => restoring = r,
            Err(e) => {
                error!(error = %e, "restoring a task failed");
                return Err(e);
            }
        }
    }
    cpu.add_to(&lock(processor).metrics.processing_cpu);
    Ok(())
}

/// The CPU time of the calling thread, as `/proc/thread-self/schedstat` gives it (Linux),
/// added to a counter since the last time.
struct ThreadCpu {
    last: f64,
}

impl ThreadCpu {
    fn start() -> Self {
        ThreadCpu { last: thread_cpu_seconds().unwrap_or(0.0) }
    }

    fn add_to(&mut self, counter: &prometheus::Counter) {
        if let Some(now) = thread_cpu_seconds() {
            counter.inc_by((now - self.last).max(0.0));
            self.last = now;
        }
    }
}

/// Seconds the calling thread has run on a CPU; `None` where the kernel does not say.
fn thread_cpu_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: u64 = text.split_whitespace().next()?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Locks `<state_dir>/<application_id>` for this process (two processes sharing task stores
/// would corrupt them) and returns the lock with this instance's stable id: `group.instance.id`
/// if set, else an id created once and kept in the directory. The transactional id is built
/// from it, so a restarted instance fences its predecessor and aborts the transaction that
/// one left open at once, instead of readers waiting for the transaction timeout.
fn lock_state_dir(cfg: &Config) -> Result<(std::fs::File, String), RuntimeError> {
    let dir = cfg.app_dir();
    let fail = |reason: String| RuntimeError::StateDir { path: dir.display().to_string(), reason };
    std::fs::create_dir_all(&dir).map_err(|e| fail(format!("creating it: {e}")))?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .map_err(|e| fail(format!("opening its lock file: {e}")))?;
    lock.try_lock().map_err(|e| match e {
        std::fs::TryLockError::WouldBlock => {
            fail("in use by another allread process; give each instance its own state_dir".into())
        }
        std::fs::TryLockError::Error(e) => fail(format!("locking it: {e}")),
    })?;
    if let Some(id) = cfg.kafka.get("group.instance.id") {
        return Ok((lock, id.clone()));
    }
    let path = dir.join("instance-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            let id = format!("{:x}-{:x}", nanos, std::process::id());
            std::fs::write(&path, &id).map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
            id
        }
    };
    Ok((lock, id))
}

/// The consumer's topics: the room topics, then allread's own (`own`). The order mattered:
/// with the read topic first, the benchmark's sustained rate was 13-18% lower in two rounds,
/// with 1% more changelog records, from reads that came ahead of their messages (BENCHMARKS.md,
/// 7 December, a twenty-seventh session).
fn subscription<'a>(own: &[&'a str], rooms: &'a [String]) -> Vec<&'a str> {
    rooms.iter().map(String::as_str).chain(own.iter().copied()).collect()
}

/// The room topics in the cluster, listed again with backoff while Kafka cannot be reached;
/// `None` if `shutdown` was set meanwhile.
fn list_rooms_with_retry(lister: &RoomTopics, shutdown: &AtomicBool) -> Option<Vec<String>> {
    // Every failure is retried, so there is no error to return.
    with_backoff(shutdown, || lister.list(Duration::from_secs(10)).map_err(Failure::Retry)).ok().flatten()
}

/// Creates or checks allread's topics, retrying with backoff while the broker is away.
fn ensure_topics_with_retry(cfg: &Config, shutdown: &AtomicBool) -> Result<(), RuntimeError> {
    let client = with_producer_passthrough(base_client_config(cfg), cfg);
    let specs = admin::owned_topics(cfg);
    let ensured = with_backoff(shutdown, || {
        admin::ensure_topics(&client, &specs).map_err(|e| {
            if e.is_retriable() {
                Failure::Retry(e)
            } else {
                Failure::Fatal(e)
            }
        })
    });
    match ensured {
        Ok(_) => Ok(()),
        Err(e) => {
            error!(error = %e, "cannot set up topics");
            Err(e.into())
        }
    }
}

/// How a call to Kafka failed, for [`with_backoff`].
enum Failure<E> {
    /// Kafka cannot be reached (yet): call again.
    Retry(E),
    Fatal(E),
}

/// Calls `attempt` until it succeeds or fails for good, waiting 0.5 s after the first failure
/// and twice as long after each next one, up to 10 s. `Ok(None)` if `shutdown` was set while it
/// failed.
fn with_backoff<T, E: std::fmt::Display>(
    shutdown: &AtomicBool,
    mut attempt: impl FnMut() -> Result<T, Failure<E>>,
) -> Result<Option<T>, E> {
    let mut backoff = Duration::from_millis(500);
    loop {
        match attempt() {
            Ok(v) => return Ok(Some(v)),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(e)) if shutdown.load(Ordering::Relaxed) => {
                info!(error = %e, "stopping before Kafka was reachable");
                return Ok(None);
            }
            Err(Failure::Retry(e)) => {
                warn!(error = %e, retry_in = ?backoff, "Kafka not ready; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_consumer_fetches_again_soon_and_reads_committed_unless_the_user_says_otherwise() {
        let mut cfg = Config::default();
        let c = input_consumer_config(&cfg);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some(crate::kafka::FETCH_QUEUE_BACKOFF_MS));
        assert_eq!(c.get("fetch.max.bytes"), Some(crate::kafka::INPUT_FETCH_MAX_BYTES));
        assert_eq!(c.get("fetch.min.bytes"), Some(crate::kafka::INPUT_FETCH_MIN_BYTES));
        assert_eq!(c.get("fetch.wait.max.ms"), Some(crate::kafka::INPUT_FETCH_WAIT_MAX_MS));
        assert_eq!(c.get("isolation.level"), Some("read_committed"));
        assert_eq!(c.get("group.id"), Some(cfg.application_id.as_str()));
        cfg.kafka.insert("fetch.queue.backoff.ms".into(), "250".into());
        cfg.kafka.insert("fetch.max.bytes".into(), "52428800".into());
        cfg.kafka.insert("fetch.min.bytes".into(), "1".into());
        let c = input_consumer_config(&cfg);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("250"), "kafka.* wins");
        assert_eq!(c.get("fetch.max.bytes"), Some("52428800"), "kafka.* wins");
        assert_eq!(c.get("fetch.min.bytes"), Some("1"), "kafka.* wins");
    }

    #[test]
    fn the_processing_cpu_counts_the_calling_threads_work_only() {
        let busy = |for_: Duration| {
            let start = Instant::now();
            let mut x = 0u64;
            while start.elapsed() < for_ {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        };
        let counter = prometheus::Counter::new("t", "t").unwrap();
        let mut cpu = ThreadCpu::start();
        // Another thread's work: this one waits for it.
        std::thread::spawn(move || busy(Duration::from_millis(300))).join().unwrap();
        cpu.add_to(&counter);
        let waited = counter.get();
        busy(Duration::from_millis(300));
        cpu.add_to(&counter);
        let worked = counter.get() - waited;
        assert!(waited < 0.05, "{waited} s counted while another thread worked");
        // Tests run in parallel on two cores: at least a sixth of the wall time on a CPU.
        assert!(worked > 0.05, "{worked} s counted for 0.3 s of work");
    }
}

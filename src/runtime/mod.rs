//! The stream processor: `allread run`.
//!
//! One consumer in the group `application_id` subscribes to the room-topic pattern, the read
//! topic and the repartition topic. Like a Kafka Streams application it has two stages:
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

mod context;
mod processor;
pub mod task;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::ThreadedProducer;
use tracing::{error, info, warn};

pub use processor::now_ms;

use self::context::RuntimeContext;
use self::processor::{DeliveryContext, Processor};
use crate::config::{Config, ConfigError};
use crate::kafka::admin::{self, AdminError};
use crate::kafka::partitioner::partition_for;
use crate::kafka::{base_client_config, with_passthrough};
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
                let c: rdkafka::consumer::BaseConsumer = with_passthrough(base_client_config(cfg), cfg)
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
        let Some(t) = p.tasks.get_mut(&task) else {
            return Err(if p.assigned { QueryError::NotOwned { task } } else { QueryError::NotReady });
        };
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

    let producer: ThreadedProducer<DeliveryContext> = with_passthrough(
        {
            let mut c = base_client_config(&cfg);
            c.set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "5")
                .set("compression.type", "lz4")
                .set("partitioner", "murmur2_random");
            c
        },
        &cfg,
    )
    .create_with_context(DeliveryContext::default())
    .map_err(RuntimeError::Client)?;

    let rocks = engine_rocks_options(256 << 20);
    let metrics = hooks.metrics.unwrap_or_default();
    let mut processor = Processor::new(cfg.clone(), producer, rocks, metrics);
    processor.on_receipt = hooks.on_receipt;
    let processor = Arc::new(Mutex::new(processor));
    if let Some(handle) = &hooks.handle {
        let _ = handle.processor.set(processor.clone());
        let _ = handle.config.set(cfg.clone());
    }

    let consumer: BaseConsumer<RuntimeContext> = with_passthrough(
        {
            let mut c = base_client_config(&cfg);
            if let Some(address) = &cfg.http.advertised {
                // How other instances find this one's queries (see kafka::group).
                c.set("client.id", crate::kafka::group::client_id_for(address));
            }
            c.set("group.id", &cfg.application_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("partition.assignment.strategy", "cooperative-sticky")
                .set("topic.metadata.refresh.interval.ms", cfg.processing.metadata_refresh_ms.to_string());
            c
        },
        &cfg,
    )
    .create_with_context(RuntimeContext { processor: processor.clone() })
    .map_err(RuntimeError::Client)?;

    let repartition = cfg.repartition_topic();
    let subscription = [cfg.topics.room_pattern.as_str(), cfg.topics.read.as_str(), repartition.as_str()];
    consumer.subscribe(&subscription).map_err(RuntimeError::Client)?;
    info!(?subscription, group = %cfg.application_id, "allread running");

    let result = process_until(&consumer, &processor, &cfg, &shutdown);

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
    info!(routed = report.routed, receipts = report.receipts, dead_lettered = report.dead_lettered, "allread stopped");
    result.map(|()| report)
}

/// RocksDB settings for the engine's stores: a block cache of `block_cache_bytes` shared by
/// every task, and the room as the key prefix (one room load is one prefix scan).
pub fn engine_rocks_options(block_cache_bytes: usize) -> RocksOptions {
    let mut opts = RocksOptions::default().with_shared_cache(block_cache_bytes);
    opts.key_prefix = Some(KeyPrefix { name: persist::ROOM_PREFIX_SCHEME, prefix_len: persist::room_prefix_len });
    opts
}

fn lock(p: &Mutex<Processor>) -> std::sync::MutexGuard<'_, Processor> {
    p.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn process_until(
    consumer: &BaseConsumer<RuntimeContext>,
    processor: &Mutex<Processor>,
    cfg: &Config,
    shutdown: &AtomicBool,
) -> Result<(), RuntimeError> {
    let commit_every = Duration::from_millis(cfg.processing.commit_interval_ms);
    let tick_every = Duration::from_millis(cfg.processing.tick_interval_ms);
    let max_records = cfg.processing.max_poll_records;
    let mut last_consumer_warning: Option<Instant> = None;
    let mut ticks = 0u64;
    while !shutdown.load(Ordering::Relaxed) {
        // Poll without holding the lock: rebalance callbacks take it.
        let mut batch = Vec::new();
        let mut timeout = Duration::from_millis(50);
        while batch.len() < max_records {
            match consumer.poll(timeout) {
                None => break,
                Some(Ok(m)) => batch.push(m.detach()),
                Some(Err(e)) => {
                    // Broker down, topic not there yet: librdkafka retries; say so now and then.
                    if last_consumer_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                        warn!(error = %e, "consumer error (retrying)");
                        last_consumer_warning = Some(Instant::now());
                    }
                    break;
                }
            }
            timeout = Duration::ZERO;
        }
        let mut p = lock(processor);
        if let Some(fatal) = p.fatal.take() {
            return Err(fatal);
        }
        if !batch.is_empty() {
            if let Err(e) = p.handle_batch(batch) {
                p.rewind(consumer, &e);
                continue;
            }
        }
        if p.last_commit.elapsed() >= commit_every {
            if let Err(e) = p.commit(consumer, CommitMode::Async) {
                p.rewind(consumer, &e);
                continue;
            }
        }
        if p.last_tick.elapsed() >= tick_every {
            if let Err(e) = p.tick() {
                p.rewind(consumer, &e);
            }
            ticks += 1;
            if ticks.is_multiple_of(5) {
                p.update_lag(consumer);
            }
        }
    }
    Ok(())
}

/// Creates or checks allread's topics, retrying with backoff while the broker is away.
fn ensure_topics_with_retry(cfg: &Config, shutdown: &AtomicBool) -> Result<(), RuntimeError> {
    let client = with_passthrough(base_client_config(cfg), cfg);
    let specs = admin::owned_topics(cfg);
    let mut backoff = Duration::from_millis(500);
    loop {
        match admin::ensure_topics(&client, &specs) {
            Ok(_) => return Ok(()),
            Err(e) if e.is_retriable() && shutdown.load(Ordering::Relaxed) => {
                info!(error = %e, "stopping before Kafka was reachable");
                return Ok(());
            }
            Err(e) if e.is_retriable() => {
                warn!(error = %e, retry_in = ?backoff, "Kafka not ready; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                error!(error = %e, "cannot set up topics");
                return Err(e.into());
            }
        }
    }
}

//! Every metric allread exports, registered in one place on an explicit registry.
//!
//! Names follow Prometheus conventions (`allread_` prefix, `_total` counters, base units).
//! Labels take a small fixed set of values: input source, error kind, engine outcome, task
//! number. Room and user ids never become labels.

use prometheus::{
    Counter, Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::receipts::Outcomes;

pub struct Metrics {
    pub registry: Registry,
    /// Input records by `source`: `room` (room topics) or `read` (the read topic).
    pub input_records: IntCounterVec,
    pub input_bytes: IntCounterVec,
    /// Undecodable records by `kind` (see `DecodeError::kind`).
    pub decode_failures: IntCounterVec,
    pub dead_lettered: IntCounter,
    /// Input records written to the repartition topic.
    pub routed: IntCounter,
    pub shortcut: IntCounter,
    /// Output made while an `exactly_once` transaction completed, sent into the next one.
    pub held_output: IntCounter,
    /// Held output dropped by a rewind (the input it came from is read and applied again).
    pub held_output_dropped: IntCounter,
    /// Repartition records that could not be read (only allread writes that topic).
    pub corrupt_repartition_records: IntCounter,
    pub receipts: IntCounter,
    /// Engine outcomes by `outcome` (see `Outcomes`).
    pub engine_outcomes: IntCounterVec,
    /// Routed records a task had applied already (re-sent after a restart), skipped.
    pub duplicates_skipped: IntCounter,
    /// Message `sent_at` to receipt produced.
    pub message_to_receipt: Histogram,
    /// Timestamp of the input record that completed the message to receipt produced.
    pub last_read_to_receipt: Histogram,
    pub commit_duration: Histogram,
    pub commit_failures: IntCounter,
    pub rewinds: IntCounter,
    /// Rebalance callbacks by `kind`: `assign`, `revoke`, `lost`.
    pub rebalances: IntCounterVec,
    pub tasks: IntGauge,
    /// Per task: pending messages, cached rooms and entries, consumer lag.
    pub pending_messages: IntGaugeVec,
    pub cached_rooms: IntGaugeVec,
    pub cached_entries: IntGaugeVec,
    pub cached_members: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    /// RocksDB figures per task: `rocksdb.estimate-num-keys`, `rocksdb.live-sst-files-size`,
    /// `rocksdb.cur-size-all-mem-tables`, and the shared block cache's usage.
    pub rocksdb_keys: IntGaugeVec,
    pub rocksdb_sst_bytes: IntGaugeVec,
    pub rocksdb_memtable_bytes: IntGaugeVec,
    pub rocksdb_block_cache_bytes: IntGauge,
    /// State changes written to the changelog topic.
    pub changelog_records: IntCounter,
    /// Transactions by `outcome`: `committed`, `aborted` (exactly_once only).
    pub transactions: IntCounterVec,
    /// Transactional producers replaced after a fatal error (e.g. fenced).
    pub producers_created: IntCounter,
    /// Changelog records applied to local stores while restoring.
    pub restored_records: IntCounter,
    /// Per task: changelog records still to restore (0 once restored).
    pub restore_remaining: IntGaugeVec,
    pub restoring_tasks: IntGauge,
    /// Routing rounds that went ahead after `max_task_idle_ms` although an input partition
    /// still had records to fetch (input possibly out of timestamp order).
    pub enforced_routing: IntCounter,
    /// Input records fetched by the consumer and not taken yet (librdkafka's prefetch).
    pub fetched_inputs: IntGauge,
    /// Input records polled and waiting to be routed in timestamp order.
    pub buffered_inputs: IntGauge,
    /// The most input records one partition held waiting to be routed since the last tick.
    pub buffered_inputs_peak: IntGauge,
    /// Times an input partition was paused for holding
    /// `processing.buffered_records_per_partition` records.
    pub input_pauses: IntCounter,
    /// Routed records held until their task's repartition partition is caught up.
    pub held_records: IntGauge,
    /// CPU time of the processing thread (polling, routing, applying, emitting, committing),
    /// as Linux accounts it per thread; added every tick. A rate near 1 means that thread is
    /// what limits the instance (`process_cpu_seconds_total` counts every thread).
    pub processing_cpu: Counter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("registered once");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("registered once");
    g
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("registered once");
    h
}

const LATENCY_BUCKETS: [f64; 16] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0, 86400.0];

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            input_records: counter_vec(&r, "allread_input_records_total", "Input records read, by source.", "source"),
            input_bytes: counter_vec(
                &r,
                "allread_input_bytes_total",
                "Bytes of input record values, by source.",
                "source",
            ),
            decode_failures: counter_vec(
                &r,
                "allread_decode_failures_total",
                "Input records that could not be decoded, by kind.",
                "kind",
            ),
            dead_lettered: counter(
                &r,
                "allread_dead_lettered_records_total",
                "Records written to the dead-letter topic.",
            ),
            routed: counter(&r, "allread_routed_records_total", "Input records written to the repartition topic."),
            shortcut: counter(
                &r,
                "allread_shortcut_records_total",
                "Input records applied to a task of this instance directly, without the repartition topic.",
            ),
            held_output: counter(
                &r,
                "allread_held_output_records_total",
                "Records (receipts, repartition records, dead letters) produced while an exactly_once transaction completed, held and sent into the next one.",
            ),
            held_output_dropped: counter(
                &r,
                "allread_held_output_dropped_records_total",
                "Held records dropped because the transaction they waited for failed: the input they came from is read and applied again.",
            ),
            corrupt_repartition_records: counter(
                &r,
                "allread_corrupt_repartition_records_total",
                "Repartition records that could not be read and were skipped.",
            ),
            receipts: counter(&r, "allread_receipts_emitted_total", "receipt_complete records produced."),
            engine_outcomes: counter_vec(
                &r,
                "allread_engine_outcomes_total",
                "What the engine did with events, by outcome.",
                "outcome",
            ),
            duplicates_skipped: counter(
                &r,
                "allread_routed_duplicates_skipped_total",
                "Repartition records skipped because their input was applied already.",
            ),
            message_to_receipt: histogram(
                &r,
                "allread_message_to_receipt_seconds",
                "From a message's sent_at to its receipt_complete being produced.",
                LATENCY_BUCKETS.to_vec(),
            ),
            last_read_to_receipt: histogram(
                &r,
                "allread_last_read_to_receipt_seconds",
                "From the timestamp of the input record that completed a message to its receipt being produced.",
                LATENCY_BUCKETS.to_vec(),
            ),
            commit_duration: histogram(
                &r,
                "allread_commit_duration_seconds",
                "Duration of a commit, from its start until output is acknowledged (or the transaction committed), state written, offsets committed (exactly_once: input is polled meanwhile).",
                vec![0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0],
            ),
            commit_failures: counter(
                &r,
                "allread_commit_failures_total",
                "Commits that failed (followed by a rewind).",
            ),
            rewinds: counter(&r, "allread_rewinds_total", "Returns to the last commit after a failure."),
            rebalances: counter_vec(
                &r,
                "allread_rebalances_total",
                "Consumer group rebalance callbacks, by kind.",
                "kind",
            ),
            tasks: gauge(&r, "allread_tasks", "Tasks assigned to this instance."),
            pending_messages: gauge_vec(
                &r,
                "allread_pending_messages",
                "Messages waiting for readers, per task (cached rooms).",
                "task",
            ),
            cached_rooms: gauge_vec(&r, "allread_cached_rooms", "Rooms held in memory, per task.", "task"),
            cached_entries: gauge_vec(
                &r,
                "allread_cached_entries",
                "State entries of the rooms held in memory, per task (the unit of engine.cache_entries, which the tasks share).",
                "task",
            ),
            cached_members: gauge_vec(
                &r,
                "allread_cached_members",
                "Members of the rooms held in memory, per task.",
                "task",
            ),
            rocksdb_keys: gauge_vec(
                &r,
                "allread_rocksdb_estimated_keys",
                "RocksDB's estimate of the keys in a task's store.",
                "task",
            ),
            rocksdb_sst_bytes: gauge_vec(
                &r,
                "allread_rocksdb_live_sst_bytes",
                "Bytes of live SST files of a task's store.",
                "task",
            ),
            rocksdb_memtable_bytes: gauge_vec(
                &r,
                "allread_rocksdb_memtable_bytes",
                "Bytes of all memtables of a task's store.",
                "task",
            ),
            rocksdb_block_cache_bytes: gauge(
                &r,
                "allread_rocksdb_block_cache_bytes",
                "Bytes in use in the block cache shared by all tasks, the memtables charged to it included ([rocksdb] memory_bytes bounds it).",
            ),
            consumer_lag: gauge_vec(
                &r,
                "allread_consumer_lag_records",
                "Records of the task's repartition partition not yet processed.",
                "task",
            ),
            changelog_records: counter(
                &r,
                "allread_changelog_records_total",
                "State changes written to the changelog topic.",
            ),
            transactions: counter_vec(
                &r,
                "allread_transactions_total",
                "Transactions (exactly_once), by outcome: committed or aborted.",
                "outcome",
            ),
            producers_created: counter(
                &r,
                "allread_producer_recreations_total",
                "Transactional producers replaced after a fatal error such as being fenced.",
            ),
            restored_records: counter(
                &r,
                "allread_restored_records_total",
                "Changelog records applied to local state while restoring.",
            ),
            restore_remaining: gauge_vec(
                &r,
                "allread_restore_remaining_records",
                "Changelog records a restoring task has still to apply (0 once restored).",
                "task",
            ),
            restoring_tasks: gauge(&r, "allread_restoring_tasks", "Tasks catching up from their changelogs."),
            enforced_routing: counter(
                &r,
                "allread_enforced_routing_total",
                "Routing rounds that stopped waiting for a lagging input partition after processing.max_task_idle_ms.",
            ),
            buffered_inputs_peak: gauge(
                &r,
                "allread_buffered_input_records_partition_peak",
                "The most input records one partition held waiting to be routed since the last tick (compare with processing.buffered_records_per_partition).",
            ),
            input_pauses: counter(
                &r,
                "allread_input_pauses_total",
                "Times an input partition was paused for holding processing.buffered_records_per_partition records waiting to be routed.",
            ),
            fetched_inputs: gauge(
                &r,
                "allread_fetched_input_records",
                "Input records the consumer has fetched and allread has not taken yet (librdkafka's prefetch).",
            ),
            buffered_inputs: gauge(
                &r,
                "allread_buffered_input_records",
                "Input records polled and waiting to be routed in timestamp order.",
            ),
            held_records: gauge(
                &r,
                "allread_held_records",
                "Routed records held until their task's repartition partition is caught up (the local shortcut).",
            ),
            processing_cpu: {
                let c = Counter::new(
                    "allread_processing_thread_cpu_seconds_total",
                    "CPU seconds of the processing thread (a rate near 1: the thread limits the instance).",
                )
                .expect("valid metric");
                r.register(Box::new(c.clone())).expect("registered once");
                c
            },
            registry: r,
        };
        // Process RSS, CPU seconds and open file descriptors.
        let _ = m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
        for kind in crate::codec::DecodeError::KINDS {
            m.decode_failures.with_label_values(&[kind]);
        }
        for source in ["room", "read"] {
            m.input_records.with_label_values(&[source]);
            m.input_bytes.with_label_values(&[source]);
        }
        for kind in ["assign", "revoke", "lost"] {
            m.rebalances.with_label_values(&[kind]);
        }
        for outcome in ["committed", "aborted"] {
            m.transactions.with_label_values(&[outcome]);
        }
        for outcome in Outcomes::NAMES {
            m.engine_outcomes.with_label_values(&[outcome]);
        }
        m
    }

    /// Adds the engine outcomes counted since `before`.
    pub fn add_outcomes(&self, now: &Outcomes, before: &Outcomes) {
        for (name, value) in now.since(before).iter() {
            if value > 0 {
                self.engine_outcomes.with_label_values(&[name]).inc_by(value);
            }
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("encoding to a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

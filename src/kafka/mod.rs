//! Kafka adapters: client settings, topic administration, the room partitioner, and the
//! repartition record format. Nothing here knows about tasks or the engine's rules.

pub mod admin;
pub mod discovery;
pub mod envelope;
pub mod group;
pub mod partitioner;
pub mod records;

use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::ToBytes;
use rdkafka::producer::{BaseRecord, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;

/// Sends `record`; while the producer's queue is full, waits for its thread to drain it
/// rather than dropping the record.
pub fn send<C, K, P>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, K, P, C::DeliveryOpaque>,
) -> KafkaResult<()>
where
    C: ProducerContext + 'static,
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e),
        }
    }
}

/// Sends `records` (key, value; a value of `None` is a tombstone) to `topic`/`partition`, in
/// order, with librdkafka's `rd_kafka_produce_batch`: it finds the topic and the partition and
/// reads the clock once for all of them, where [`send`] (`rd_kafka_producev`) does so for every
/// record. The records carry no headers, and the time they are sent as their timestamp. While
/// the producer's queue is full, waits for its thread to drain it, then sends the rest. On any
/// other error, the records before the one that failed are sent (as with [`send`]), and some
/// after it may be: the caller abandons the whole batch, as it does after [`send`] fails.
/// Every record carries `opaque` as its delivery opaque.
pub fn send_batch<'a, C, K, V>(
    producer: &ThreadedProducer<C>,
    topic: &str,
    partition: i32,
    records: impl IntoIterator<Item = &'a (K, Option<V>)>,
    opaque: usize,
) -> KafkaResult<()>
where
    C: ProducerContext<DeliveryOpaque = usize> + 'static,
    K: AsRef<[u8]> + 'a,
    V: AsRef<[u8]> + 'a,
{
    use rdkafka::bindings as rd;

    let mut messages: Vec<rd::rd_kafka_message_t> = records
        .into_iter()
        .map(|(key, value)| {
            // SAFETY: an all-zero rd_kafka_message_t is valid (null pointers, no error).
            let mut m: rd::rd_kafka_message_t = unsafe { std::mem::zeroed() };
            // Each record's delivery opaque, as rdkafka reads a `usize` one back.
            m._private = opaque as *mut std::ffi::c_void;
            let key = key.as_ref();
            m.key = key.as_ptr() as *mut std::ffi::c_void;
            m.key_len = key.len();
            if let Some(value) = value {
                let value = value.as_ref();
                m.payload = value.as_ptr() as *mut std::ffi::c_void;
                m.len = value.len();
            }
            m
        })
        .collect();
    if messages.is_empty() {
        return Ok(());
    }
    let handle = TopicHandle::open(producer, topic)?;
    let mut rest = &mut messages[..];
    while !rest.is_empty() {
        let count = std::ffi::c_int::try_from(rest.len()).expect("a batch of fewer than 2^31 records");
        // SAFETY: the messages point into `records`, which outlive the call; librdkafka copies
        // keys and payloads (RD_KAFKA_MSG_F_COPY) and sets each message's `err`.
        let sent = unsafe {
            rd::rd_kafka_produce_batch(handle.ptr, partition, rd::RD_KAFKA_MSG_F_COPY, rest.as_mut_ptr(), count)
        };
        if sent == count {
            return Ok(());
        }
        let failed = rest
            .iter()
            .position(|m| m.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR)
            .expect("a record not sent has its error set");
        let err = rest[failed].err;
        if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL {
            return Err(KafkaError::MessageProduction(err.into()));
        }
        std::thread::sleep(Duration::from_millis(1));
        rest = &mut rest[failed..];
    }
    Ok(())
}

/// An application handle of a topic of `producer`, released when dropped (it cannot outlive
/// the producer). Producing by topic name ([`send`]) makes librdkafka find the topic by a
/// linear search of every topic the producer has written to, comparing names: with 101 topics
/// whose names share a long prefix, 15% of the chat generator's CPU. With a handle there is no
/// search.
pub struct TopicHandle<'p> {
    ptr: *mut rdkafka::bindings::rd_kafka_topic_t,
    producer: *mut rdkafka::bindings::rd_kafka_t,
    _producer: std::marker::PhantomData<&'p ()>,
}

impl<'p> TopicHandle<'p> {
    /// A handle of `topic`, for a producer whose records carry no delivery opaque (see
    /// [`send_to`]).
    pub fn new<C>(producer: &'p ThreadedProducer<C>, topic: &str) -> KafkaResult<Self>
    where
        C: ProducerContext<DeliveryOpaque = ()> + 'static,
    {
        Self::open(producer, topic)
    }

    /// A handle of `topic`, for a producer whose records each carry a `usize` delivery opaque
    /// (see [`send_with_opaque`]).
    pub fn with_opaques<C>(producer: &'p ThreadedProducer<C>, topic: &str) -> KafkaResult<Self>
    where
        C: ProducerContext<DeliveryOpaque = usize> + 'static,
    {
        Self::open(producer, topic)
    }

    /// A handle of `topic`, for any producer: only for sends that set each record's opaque.
    fn open<C: ProducerContext + 'static>(producer: &'p ThreadedProducer<C>, topic: &str) -> KafkaResult<Self> {
        use rdkafka::bindings as rd;
        let name =
            std::ffi::CString::new(topic).map_err(|_| KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic))?;
        let client = producer.client().native_ptr();
        // SAFETY: the client pointer is valid while the producer lives, which the borrow
        // ensures; a topic handle may be taken from any thread and is released in `drop`.
        let ptr = unsafe { rd::rd_kafka_topic_new(client, name.as_ptr(), std::ptr::null_mut()) };
        if ptr.is_null() {
            // SAFETY: reads this thread's last librdkafka error, set by rd_kafka_topic_new.
            let err = unsafe { rd::rd_kafka_last_error() };
            return Err(KafkaError::MessageProduction(err.into()));
        }
        Ok(TopicHandle { ptr, producer: client, _producer: std::marker::PhantomData })
    }
}

impl Drop for TopicHandle<'_> {
    fn drop(&mut self) {
        // SAFETY: the handle came from rd_kafka_topic_new and is released once, while the
        // producer it borrows still lives.
        unsafe { rdkafka::bindings::rd_kafka_topic_destroy(self.ptr) }
    }
}

/// As [`send`], to the topic of `handle`, partitioned by `key` as the producer's partitioner
/// does, with `timestamp` (milliseconds since the epoch) and no headers; librdkafka copies the
/// key and the payload. While the producer's queue is full, waits for its thread to drain it.
pub fn send_to(handle: &TopicHandle<'_>, key: &[u8], payload: &[u8], timestamp: i64) -> KafkaResult<()> {
    // No opaque is passed, which is what a `()` delivery opaque reads back.
    produceva(handle, key, payload, timestamp, std::ptr::null_mut())
}

/// As [`send_to`], to a handle from [`TopicHandle::with_opaques`]: the record carries
/// `opaque` as its delivery opaque (as rdkafka passes a `usize` one) and, as its timestamp, the
/// time it is sent. Against rdkafka's `send`, it copies no topic name and looks up no topic
/// per record: for the receipts, 1.3% of the processing thread under `exactly_once`
/// (BENCHMARKS.md, 6 December, a seventeenth session).
pub fn send_with_opaque(handle: &TopicHandle<'_>, key: &[u8], payload: &[u8], opaque: usize) -> KafkaResult<()> {
    produceva(handle, key, payload, 0, opaque as *mut std::ffi::c_void)
}

/// One `rd_kafka_produceva`; a `timestamp` of 0 is librdkafka's "the time it is sent".
fn produceva(
    handle: &TopicHandle<'_>,
    key: &[u8],
    payload: &[u8],
    timestamp: i64,
    opaque: *mut std::ffi::c_void,
) -> KafkaResult<()> {
    use rdkafka::bindings as rd;
    let vu = |vtype, u| rd::rd_kafka_vu_t { vtype, u };
    let mem = |b: &[u8]| rd::rd_kafka_vu_s__bindgen_ty_1 {
        mem: rd::rd_kafka_vu_s__bindgen_ty_1__bindgen_ty_1 { ptr: b.as_ptr() as *mut std::ffi::c_void, size: b.len() },
    };
    let vus = [
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_RKT, rd::rd_kafka_vu_s__bindgen_ty_1 { rkt: handle.ptr }),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_KEY, mem(key)),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_VALUE, mem(payload)),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_TIMESTAMP, rd::rd_kafka_vu_s__bindgen_ty_1 { i64_: timestamp }),
        vu(rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_OPAQUE, rd::rd_kafka_vu_s__bindgen_ty_1 { ptr: opaque }),
        vu(
            rd::rd_kafka_vtype_t::RD_KAFKA_VTYPE_MSGFLAGS,
            rd::rd_kafka_vu_s__bindgen_ty_1 { i: rd::RD_KAFKA_MSG_F_COPY as std::ffi::c_int },
        ),
    ];
    loop {
        // SAFETY: the key and payload outlive the call and are copied (RD_KAFKA_MSG_F_COPY);
        // the handle belongs to this producer, which lives; the opaque is a plain value that
        // librdkafka hands back in the delivery report, as the handle's constructor promised.
        let error = unsafe { rd::rd_kafka_produceva(handle.producer, vus.as_ptr(), vus.len()) };
        if error.is_null() {
            return Ok(());
        }
        // SAFETY: a non-null error from rd_kafka_produceva is ours to read and destroy once.
        let code = unsafe {
            let code = rd::rd_kafka_error_code(error);
            rd::rd_kafka_error_destroy(error);
            code
        };
        if code != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__QUEUE_FULL {
            return Err(KafkaError::MessageProduction(code.into()));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Adds `topic`/`partition` at `offset` to `tpl`, in constant time. (rdkafka's
/// `add_partition_offset` finds the element it has just added by a linear search, so a list of
/// the ~1,000 input partitions built that way cost a quadratic number of topic name
/// comparisons: 2% of the processing thread under `exactly_once`, which commits ten times a
/// second.)
pub fn add_offset(tpl: &mut TopicPartitionList, topic: &str, partition: i32, offset: i64) -> KafkaResult<()> {
    tpl.add_partition(topic, partition).set_offset(Offset::Offset(offset))
}

/// Waits until every record `producer` has accepted is acknowledged (or failed), at most
/// `timeout`. rdkafka's own `Producer::flush` (0.39) alternates a non-blocking
/// `rd_kafka_flush` with a `poll` that always lasts its whole 100 ms slice, so each flush of a
/// `ThreadedProducer` took at least 100 ms: a commit every 100 ms spent most of its time
/// there. With a `ThreadedProducer` the delivery reports are served by its own thread, and
/// librdkafka's `rd_kafka_flush` waits on the count of undelivered records (it also sends
/// what `linger.ms` holds back at once).
pub fn flush<C: ProducerContext + 'static>(producer: &ThreadedProducer<C>, timeout: Duration) -> KafkaResult<()> {
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: the client pointer is valid while the producer lives; rd_kafka_flush may be
    // called from any thread.
    let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), ms) };
    if err == rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        Ok(())
    } else {
        Err(KafkaError::Flush(err.into()))
    }
}

/// Settings every client of allread shares: bootstrap servers, then the user's `kafka.*`
/// passthrough properties, which win over allread's own choices.
pub fn base_client_config(cfg: &Config) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.bootstrap_servers);
    c.set("client.id", format!("{}-{}", cfg.application_id, std::process::id()));
    c
}

/// How long librdkafka postpones the next fetch of a partition whose prefetch queue is full
/// (`fetch.queue.backoff.ms`), for consumers of input: allread's own and the passthrough it
/// is measured against. librdkafka's default, 1,000 ms, suits a consumer that takes records
/// in fetch order. allread routes in timestamp order across its input partitions, so when the
/// buffered records of one partition run out while that partition's next fetch is postponed,
/// routing waits for it: up to a second at a time, several times a second under a backlog of
/// 1,008 input partitions, with the processing thread idle (BENCHMARKS.md). Fetching again
/// within 10 ms costs librdkafka's fetcher a few wake-ups. The restore consumer, which reads
/// a changelog as fast as it applies it, takes it too. A `kafka.*` setting overrides it.
pub const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// The most one fetch response may carry (`fetch.max.bytes`) for consumers of input: 16 MiB,
/// against librdkafka's 50 MiB. librdkafka stops fetching once its prefetch queue holds
/// `queued.max.messages.kbytes` (64 MiB), but checks that before a fetch, so the queue
/// overshoots by up to a whole response, decompressed, plus an operation of some 200 bytes
/// per record: at its peak librdkafka held 234 MB in a 5M-event run. With 16 MiB, peak RSS was
/// 17% lower at the same events/s, and the latency at half load the same (BENCHMARKS.md).
/// Smaller is worse: a response below the busy partitions' shares (`fetch.message.max.bytes`,
/// 1 MiB each) is filled from the first partitions of the request, so a few partitions run
/// ahead while routing, in timestamp order, waits for the others and buffers what the few
/// delivered (at 4 MiB over 8 read partitions: up to 680,000 records). 8 MiB saved 20% of
/// peak RSS but doubled the p99 of a live chat at half load. A deployment with many more
/// partitions that have a backlog wants at least twice their number in MiB
/// (`kafka."fetch.max.bytes"`).
pub const INPUT_FETCH_MAX_BYTES: &str = "16777216";

/// The least a fetch response should carry (`fetch.min.bytes`: 64 KiB) and the longest the
/// broker holds a fetch to gather it (`fetch.wait.max.ms`: 10 ms), for consumers of input.
/// With librdkafka's defaults (1 byte, 500 ms) a consumer of a live stream fetches again as
/// soon as anything has arrived, in small responses, and at half load the broker's cost per
/// request made it the largest user of a two-core machine, ahead of allread. With these, each
/// response gathers up to 64 KiB or 10 ms of input. On the live chat at 150,000 events/s the
/// p99 from read to receipt fell in every round of a paired A/B; a single unpaired
/// `scripts/bench` run afterwards did not show it (BENCHMARKS.md). A sparse stream waits up to
/// 10 ms more per fetch; a backlog fills 64 KiB at once. A caught-up consumer fetches every
/// 10 ms, each fetch naming every assigned partition: with 1,000 room topics, 0.20 of a core
/// for allread and 0.60 for the broker at idle (README, "CPU at idle").
pub const INPUT_FETCH_MIN_BYTES: &str = "65536";
pub const INPUT_FETCH_WAIT_MAX_MS: &str = "10";

/// How a consumer of allread's input reads: committed records only, cooperative rebalancing,
/// [`INPUT_FETCH_MAX_BYTES`], [`INPUT_FETCH_MIN_BYTES`] within [`INPUT_FETCH_WAIT_MAX_MS`],
/// and [`FETCH_QUEUE_BACKOFF_MS`]. allread's own consumer and the passthrough it is measured
/// against both take these, so that the two read their input alike.
pub fn tune_input_consumer(c: &mut ClientConfig) -> &mut ClientConfig {
    fetch_again_soon(
        c.set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set("fetch.max.bytes", INPUT_FETCH_MAX_BYTES)
            .set("fetch.min.bytes", INPUT_FETCH_MIN_BYTES)
            .set("fetch.wait.max.ms", INPUT_FETCH_WAIT_MAX_MS),
    )
}

/// Sets [`FETCH_QUEUE_BACKOFF_MS`], for a consumer that empties its prefetch queue as fast as
/// librdkafka fills it. Set before the `kafka.*` properties are applied, so they win.
pub fn fetch_again_soon(c: &mut ClientConfig) -> &mut ClientConfig {
    c.set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
}

/// The passthrough properties that apply to a producer (or an admin client, which librdkafka
/// builds on one): consumer-only properties are left out, so that setting one for the
/// consumer does not make librdkafka warn about it on every other client.
pub fn with_producer_passthrough(c: ClientConfig, cfg: &Config) -> ClientConfig {
    passthrough(c, cfg, CONSUMER_ONLY)
}

/// The passthrough properties that apply to a consumer: producer-only ones are left out.
pub fn with_consumer_passthrough(c: ClientConfig, cfg: &Config) -> ClientConfig {
    passthrough(c, cfg, PRODUCER_ONLY)
}

fn passthrough(mut c: ClientConfig, cfg: &Config, skip: &[&str]) -> ClientConfig {
    for (k, v) in cfg.kafka.iter().filter(|(k, _)| !skip.contains(&k.as_str())) {
        c.set(k, v);
    }
    c
}

/// librdkafka's consumer-only properties (scope `C` in its CONFIGURATION.md).
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "group.protocol.type",
    "group.protocol",
    "group.remote.assignor",
    "coordinator.query.interval.ms",
    "max.poll.interval.ms",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "fetch.wait.max.ms",
    "fetch.queue.backoff.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.error.backoff.ms",
    "isolation.level",
    "enable.partition.eof",
    "check.crcs",
    "auto.offset.reset",
];

/// librdkafka's producer-only properties (scope `P` in its CONFIGURATION.md).
const PRODUCER_ONLY: &[&str] = &[
    "transactional.id",
    "transaction.timeout.ms",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "queue.buffering.max.ms",
    "linger.ms",
    "message.send.max.retries",
    "retries",
    "queue.buffering.backpressure.threshold",
    "compression.codec",
    "compression.type",
    "compression.level",
    "batch.num.messages",
    "batch.size",
    "delivery.report.only.error",
    "sticky.partitioning.linger.ms",
    "acks",
    "request.required.acks",
    "request.timeout.ms",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "partitioner",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_the_passthrough_properties_of_its_kind() {
        let mut cfg = Config::default();
        for (k, v) in [("session.timeout.ms", "6000"), ("linger.ms", "20"), ("security.protocol", "SASL_SSL")] {
            cfg.kafka.insert(k.into(), v.into());
        }
        let producer = with_producer_passthrough(base_client_config(&cfg), &cfg);
        let consumer = with_consumer_passthrough(base_client_config(&cfg), &cfg);
        assert_eq!(producer.get("linger.ms"), Some("20"));
        assert_eq!(producer.get("session.timeout.ms"), None);
        assert_eq!(consumer.get("session.timeout.ms"), Some("6000"));
        assert_eq!(consumer.get("linger.ms"), None);
        for c in [&producer, &consumer] {
            assert_eq!(c.get("security.protocol"), Some("SASL_SSL"), "shared properties reach every client");
        }
    }
}

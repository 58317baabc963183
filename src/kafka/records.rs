//! A group consumer's fetched records, served many at a time from a queue of their own.
//!
//! rdkafka's `BaseConsumer::poll` hands over one record per call: each call takes the queue's
//! lock, reads the clock several times (its own timeout, librdkafka's, the poll interval's
//! bookkeeping) and wraps the record in a reference-counted event. librdkafka's
//! `rd_kafka_consume_batch_queue` serves a whole batch per call, but not from the consumer's
//! own queue: there it would also serve rebalance events itself, which rdkafka takes as
//! events. So each assigned partition's fetch queue is forwarded to a [`RecordQueue`] instead,
//! and the consumer's queue keeps the rebalances, commits and errors, served by `poll` as
//! before.
//!
//! The forward must be set before the partition is assigned: when its fetch starts, librdkafka
//! forwards the fetch queue to the consumer's queue unless the application forwarded it
//! already (`RD_KAFKA_Q_F_FWD_APP`). Set in the rebalance callback, before `assign`, every
//! record of the partition goes through the one queue, in order. Pausing, seeking and
//! revoking bump the partition's version, as with the consumer's queue, and the batch call
//! drops what was fetched before. librdkafka measures a partition's prefetch by the queue it
//! is forwarded to, so `queued.min.messages` and `queued.max.messages.kbytes` still bound all
//! partitions together, as they did on the consumer's queue.

use std::ffi::{c_void, CStr};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::{ClientContext, TopicPartitionList};

/// Where a consumer's assigned partitions send their records: the [`RecordQueue`] open on it,
/// if any. Kept in the consumer's context, whose rebalance callback calls [`Forwarding::forward`].
#[derive(Default)]
pub struct Forwarding {
    target: AtomicPtr<rd::rd_kafka_queue_t>,
}

impl Forwarding {
    /// Forwards the fetch queue of each partition of `tpl` to the open [`RecordQueue`], if
    /// there is one. Call it in the rebalance callback, before assigning `tpl`.
    pub fn forward<C: ConsumerContext>(&self, consumer: &BaseConsumer<C>, tpl: &TopicPartitionList) {
        let target = self.target.load(Ordering::Acquire);
        if target.is_null() {
            return;
        }
        let client = consumer.client().native_ptr();
        for elem in tpl.elements() {
            let Ok(topic) = std::ffi::CString::new(elem.topic()) else { continue };
            // SAFETY: the client lives (the consumer is borrowed); a partition's queue handle
            // is released right after the forward, which holds its own references to both
            // queues; `target` stays open while it is published here (see `RecordQueue`).
            unsafe {
                let queue = rd::rd_kafka_queue_get_partition(client, topic.as_ptr(), elem.partition());
                if queue.is_null() {
                    continue;
                }
                rd::rd_kafka_queue_forward(queue, target);
                rd::rd_kafka_queue_destroy(queue);
            }
        }
    }
}

/// The queue a consumer's records are served from, in batches (see the module's doc). Open it
/// before subscribing; it cannot outlive the consumer. While it is open, the consumer's
/// `poll` still has to be called regularly: it serves the rebalances, and only records of
/// partitions that were not forwarded (none, when the context forwards them all).
pub struct RecordQueue<'c> {
    queue: NonNull<rd::rd_kafka_queue_t>,
    forwarding: &'c Forwarding,
    batch: Vec<*mut rd::rd_kafka_message_t>,
}

impl<'c> RecordQueue<'c> {
    /// Opens the queue of `consumer`'s records; `forwarding` is the one its context forwards
    /// assigned partitions with.
    pub fn open<C: ConsumerContext>(consumer: &'c BaseConsumer<C>, forwarding: &'c Forwarding) -> Self {
        // SAFETY: the client lives while the consumer is borrowed, which outlives the queue.
        let queue = unsafe { rd::rd_kafka_queue_new(consumer.client().native_ptr()) };
        let queue = NonNull::new(queue).expect("librdkafka allocates a queue or aborts");
        forwarding.target.store(queue.as_ptr(), Ordering::Release);
        RecordQueue { queue, forwarding, batch: Vec::new() }
    }

    /// Takes up to `max` records (or consumer errors), waiting at most `timeout` for the first
    /// one, and hands each to `f` in the queue's order (each partition's records in order);
    /// returns how many it took. A record is released when `f` returns.
    pub fn poll(&mut self, timeout: Duration, max: usize, mut f: impl FnMut(Result<Record<'_>, KafkaError>)) -> usize {
        if max == 0 {
            return 0;
        }
        self.batch.clear();
        self.batch.reserve(max);
        let buf = self.batch.spare_capacity_mut().as_mut_ptr().cast::<*mut rd::rd_kafka_message_t>();
        // librdkafka's batch call waits until the batch is full or the timeout is up: to
        // wait only for the first record, wait for one, then take what else is there.
        let ms = |d: Duration| i32::try_from(d.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: the queue is open and `buf` has room for `max` message pointers, which
        // librdkafka writes in order and returns the count of; each is destroyed below.
        // (A negative count is an error of the call: nothing was taken.)
        let taken = unsafe {
            let queue = self.queue.as_ptr();
            if timeout.is_zero() {
                rd::rd_kafka_consume_batch_queue(queue, 0, buf, max).max(0)
            } else {
                match rd::rd_kafka_consume_batch_queue(queue, ms(timeout), buf, 1) {
                    1 if max > 1 => 1 + rd::rd_kafka_consume_batch_queue(queue, 0, buf.add(1), max - 1).max(0),
                    n => n.max(0),
                }
            }
        };
        let taken = taken as usize;
        // SAFETY: librdkafka initialised the first `taken` pointers.
        unsafe { self.batch.set_len(taken) };
        let batch = BATCHES.fetch_add(1, Ordering::Relaxed);
        for &ptr in &self.batch {
            let ptr = NonNull::new(ptr).expect("librdkafka returns messages");
            f(Record { ptr, batch, _queue: PhantomData }.into_result());
        }
        taken
    }
}

impl RecordQueue<'_> {
    /// How many records (and consumer errors) wait in the queue.
    pub fn len(&self) -> usize {
        // SAFETY: the queue is open.
        unsafe { rd::rd_kafka_queue_length(self.queue.as_ptr()) }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for RecordQueue<'_> {
    fn drop(&mut self) {
        self.forwarding.target.store(std::ptr::null_mut(), Ordering::Release);
        // SAFETY: the queue was created by rd_kafka_queue_new and is destroyed once, while the
        // consumer lives. Partitions still forwarded to it hold references of their own; what
        // they fetch from now on is dropped.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) }
    }
}

/// Numbers the batches every [`RecordQueue`] serves, each with a number of its own.
static BATCHES: AtomicU64 = AtomicU64::new(0);

/// One record taken from a [`RecordQueue`], released when dropped.
pub struct Record<'q> {
    ptr: NonNull<rd::rd_kafka_message_t>,
    /// The number of the batch it came in.
    batch: u64,
    _queue: PhantomData<&'q ()>,
}

impl<'q> Record<'q> {
    /// The record, or the consumer error it carries (as rdkafka's `poll` gives it).
    fn into_result(self) -> Result<Record<'q>, KafkaError> {
        let m = self.message();
        match m.err {
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR => Ok(self),
            rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR__PARTITION_EOF => Err(KafkaError::PartitionEOF(m.partition)),
            e => Err(KafkaError::MessageConsumption(e.into())),
        }
    }

    fn message(&self) -> &rd::rd_kafka_message_t {
        // SAFETY: the message lives until this record is dropped.
        unsafe { self.ptr.as_ref() }
    }

    pub fn topic(&self) -> &str {
        // SAFETY: a fetched record's topic handle lives as long as the record, and its name is
        // a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(rd::rd_kafka_topic_name(self.message().rkt)) };
        name.to_str().expect("a Kafka topic name is ASCII")
    }

    /// The same for two records exactly when they are of one topic, without reading its
    /// name: the record's batch, and the address of its librdkafka topic handle. Every record
    /// of a batch held a reference to its topic's handle when the batch was served, so within
    /// a batch one address is one handle, of one topic. Across batches an address may be
    /// reused for another topic's handle (once the first one's is freed), so records of
    /// different batches never compare the same.
    pub fn topic_identity(&self) -> (u64, usize) {
        (self.batch, self.message().rkt as usize)
    }

    pub fn partition(&self) -> i32 {
        self.message().partition
    }

    pub fn offset(&self) -> i64 {
        self.message().offset
    }

    /// Milliseconds since the epoch, if the record has a timestamp (of either type).
    pub fn timestamp(&self) -> Option<i64> {
        let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
        // SAFETY: the message lives; librdkafka writes the timestamp's type.
        let ts = unsafe { rd::rd_kafka_message_timestamp(self.ptr.as_ptr(), &mut kind) };
        (ts != -1 && kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE).then_some(ts)
    }

    pub fn key(&self) -> Option<&[u8]> {
        let m = self.message();
        // SAFETY: the key lives with the message.
        bytes(m.key, m.key_len)
    }

    pub fn payload(&self) -> Option<&[u8]> {
        let m = self.message();
        bytes(m.payload, m.len)
    }

    /// A copy of the record's headers, `None` if it has none.
    pub fn headers(&self) -> Option<OwnedHeaders> {
        let mut native = std::ptr::null_mut();
        // SAFETY: the message lives; the headers it points to are owned by it and only read.
        unsafe {
            if rd::rd_kafka_message_headers(self.ptr.as_ptr(), &mut native)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                return None;
            }
            let count = rd::rd_kafka_header_cnt(native);
            let mut headers = OwnedHeaders::new_with_capacity(count);
            for i in 0..count {
                let (mut name, mut value, mut size) = (std::ptr::null(), std::ptr::null(), 0);
                if rd::rd_kafka_header_get_all(native, i, &mut name, &mut value, &mut size)
                    != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
                {
                    break;
                }
                let key = CStr::from_ptr(name).to_string_lossy();
                headers = headers.insert(Header { key: &key, value: bytes(value, size) });
            }
            Some(headers)
        }
    }
}

/// `len` bytes at `ptr`; `None` for a null pointer.
fn bytes<'a>(ptr: *const c_void, len: usize) -> Option<&'a [u8]> {
    // SAFETY: the callers pass memory owned by a message that outlives the returned slice.
    (!ptr.is_null()).then(|| unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), len) })
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        // SAFETY: taken from rd_kafka_consume_batch_queue, released once.
        unsafe { rd::rd_kafka_message_destroy(self.ptr.as_ptr()) }
    }
}

/// A consumer context that only forwards assigned partitions to a [`RecordQueue`]: for a
/// consumer that needs no rebalance callback of its own (the passthrough, tests).
#[derive(Default)]
pub struct ForwardingContext {
    pub forwarding: Forwarding,
}

impl ClientContext for ForwardingContext {}

impl ConsumerContext for ForwardingContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            self.forwarding.forward(consumer, tpl);
        }
    }
}

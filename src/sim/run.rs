//! The simulator against Kafka: producing a chat, checking the receipts a processor gives for
//! it against the reference model, and the passthrough that measures the broker's and the
//! client's own limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, ThreadedProducer};

use super::workload::{generate, ground_truth, Shape, SimEvent, Target};
use crate::codec::format_millis;
use crate::kafka::admin::{ensure_topics, TopicSpec};
use crate::kafka::records::{ForwardingContext, RecordQueue};
use crate::kafka::TopicHandle;
use crate::receipts::{Event, ReadScope};

/// Where the chat lives and how it is driven.
#[derive(Debug, Clone)]
pub struct Options {
    pub shape: Shape,
    pub bootstrap: String,
    pub room_prefix: String,
    pub read_topic: String,
    pub read_partitions: i32,
    pub output: String,
    /// Produce each event at its chat time (open loop) instead of as fast as possible.
    pub live: bool,
    /// Chat time runs this much faster than wall time in live mode.
    pub speed: f64,
    pub produce: bool,
    pub check: bool,
    /// How long to wait for the receipts once everything is produced.
    pub wait: Duration,
    /// Receipts seen twice are a failure (the processor runs exactly_once).
    pub exactly_once: bool,
    /// Wait this long between creating the topics and writing the first event (so that a
    /// processor started meanwhile subscribes to the rooms before the chat begins).
    pub start_after: Duration,
    /// Receipts completed by events due in the chat's first `warmup` (wall time) are checked
    /// but left out of the latency figures: the broker's first writes to new topics stall it
    /// for seconds on this kind of machine (see BENCHMARKS.md), which is not the steady state
    /// a latency goal is about.
    pub warmup: Duration,
    /// Every user is a chat client with its own consumer group, sending its reads when it
    /// has received the messages (needs `live`): see [`super::clients`].
    pub clients: bool,
    /// Written once the ground truth is computed and the checker is reading the output, so
    /// that a benchmark starts the system under test only then (computing the ground truth
    /// takes a core for seconds).
    pub ready_file: Option<std::path::PathBuf>,
    /// Where to write the latency second by second (see [`latency_timeline`]).
    pub latency_timeline: Option<std::path::PathBuf>,
}

/// What a check found.
#[derive(Debug, Default)]
pub struct Report {
    pub events: usize,
    pub expected: usize,
    pub received: usize,
    pub missing: usize,
    pub unexpected: usize,
    pub duplicates: usize,
    pub wrong: usize,
    /// When the checker read the first receipt and the last new one (epoch ms, wall clock: a
    /// processor's output timestamps may be its input's, as Kafka Streams' are).
    pub first_receipt_ms: i64,
    pub last_receipt_ms: i64,
    /// Input events per second while the middle 80% of the receipts arrived (see
    /// [`super::rate`]); `None` with too few receipts.
    pub sustained_events_per_s: Option<f64>,
}

impl Report {
    pub fn ok(&self, exactly_once: bool) -> bool {
        self.missing == 0 && self.unexpected == 0 && self.wrong == 0 && (!exactly_once || self.duplicates == 0)
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

pub(super) fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// The chat's JSON, as its clients would write it. Written field by field rather than built
/// as a `serde_json::Value` (a map, a string for every key and value, then serialized): at
/// half of allread's maximum the live chat is hundreds of thousands of events a second, on
/// the machine it measures, and every microsecond the generator spends is taken from the
/// system under test.
pub(super) fn encode(e: &SimEvent, epoch: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    let text = |out: &mut Vec<u8>, key: &[u8], value: &str| {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, value).expect("writing to a vector cannot fail");
    };
    let number = |out: &mut Vec<u8>, key: &[u8], value: i64| {
        out.extend_from_slice(key);
        serde_json::to_writer(&mut *out, &value).expect("writing to a vector cannot fail");
    };
    match &e.event {
        Event::Message { message_id, sender_id, sent_at, .. } => {
            text(&mut out, br#"{"type":"message","message_id":"#, message_id);
            text(&mut out, br#","sender_id":"#, sender_id);
            text(&mut out, br#","sent_at":"#, &format_millis(epoch + sent_at));
            out.extend_from_slice(br#","body":"simulated"}"#);
        }
        Event::Join { user_id, at, .. } => {
            text(&mut out, br#"{"type":"join","user_id":"#, user_id);
            number(&mut out, br#","at":"#, epoch + at);
            out.push(b'}');
        }
        Event::Leave { user_id, at, .. } => {
            text(&mut out, br#"{"type":"leave","user_id":"#, user_id);
            number(&mut out, br#","at":"#, epoch + at);
            out.push(b'}');
        }
        Event::Read { room_id, user_id, message_id, read_at, scope } => {
            text(&mut out, br#"{"room_id":"#, room_id);
            text(&mut out, br#","user_id":"#, user_id);
            text(&mut out, br#","message_id":"#, message_id);
            number(&mut out, br#","read_at":"#, epoch + read_at);
            if *scope == ReadScope::Message {
                out.extend_from_slice(br#","scope":"message""#);
            }
            out.push(b'}');
        }
    }
    out
}

/// Runs the simulation as `opts` says and prints what it did; fails if the check fails.
pub fn run(opts: &Options) -> anyhow::Result<Report> {
    let started = Instant::now();
    let events = generate(&opts.shape);
    let truth = ground_truth(&events);
    eprintln!(
        "sim: {} events ({} rooms, {} messages), {} receipts expected; generated in {:.1} s",
        events.len(),
        opts.shape.rooms,
        opts.shape.messages,
        truth.len(),
        started.elapsed().as_secs_f64()
    );
    let checker = if opts.check { Some(Checker::start(opts, truth.len())?) } else { None };
    if let Some(path) = &opts.ready_file {
        std::fs::write(path, "ready\n").with_context(|| format!("writing {}", path.display()))?;
    }
    // Chat time 0 in wall-clock milliseconds: when the first event is written. Recent even when
    // the chat is written as fast as possible: a processor expires messages by their age, as
    // the spec says it should.
    let epoch = match (opts.clients, opts.produce) {
        (true, _) => super::clients::produce(opts, &events)?,
        (false, true) => produce(opts, &events)?,
        (false, false) => now_ms(),
    };
    let Some(checker) = checker else {
        println!("RESULT events={} expected={}", events.len(), truth.len());
        return Ok(Report { events: events.len(), expected: truth.len(), ..Report::default() });
    };
    let report = checker.finish(opts, &events, &truth, epoch)?;
    if !report.ok(opts.exactly_once) {
        bail!("the receipts differ from the ground truth: {report:?}");
    }
    Ok(report)
}

/// Creates the chat's topics (one per room, and the read topic) if missing; returns the
/// room topics' names by room number.
pub(super) fn create_chat_topics(opts: &Options) -> anyhow::Result<Vec<String>> {
    let room_topics: Vec<String> = (0..opts.shape.rooms).map(|r| format!("{}room{r}", opts.room_prefix)).collect();
    let mut specs: Vec<TopicSpec> = room_topics
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: 1,
            replication: 1,
            exact_partitions: false,
            config: vec![],
        })
        .collect();
    specs.push(TopicSpec {
        name: opts.read_topic.clone(),
        partitions: opts.read_partitions,
        replication: 1,
        exact_partitions: false,
        config: vec![],
    });
    ensure_topics(&client(&opts.bootstrap), &specs).context("creating the chat's topics")?;
    Ok(room_topics)
}

/// The producer of the chat's room events. Idempotent: a retried batch (common right after
/// the topics were created) must not land behind later ones, or a room's log would not be the
/// chat's order.
pub(super) fn chat_producer(bootstrap: &str) -> anyhow::Result<ThreadedProducer<DefaultProducerContext>> {
    client(bootstrap)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "1000000")
        // Only failed deliveries are reported (and ignored: the checker finds their receipts
        // missing). A report per record cost the generator's threads CPU that the system it
        // measures shares: at half load allread fell 1.5-2 times as far behind with them
        // (BENCHMARKS.md, 7 December, a twenty-sixth session).
        .set("delivery.report.only.error", "true")
        .create()
        .context("creating the producer")
}

/// How late the generator handed each event to its producer: its own share of the latency the
/// checker reports (it shares the machine with what it measures).
pub(super) struct Lateness(Histogram<u64>);

impl Lateness {
    pub(super) fn new() -> Self {
        Lateness(Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"))
    }

    /// One event, due at `due` and sent at `sent` (both since the chat began).
    pub(super) fn record(&mut self, due: Duration, sent: Duration) {
        let _ = self.0.record((sent.saturating_sub(due).as_micros() as u64).max(1));
    }
}

impl std::fmt::Display for Lateness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |q: f64| self.0.value_at_quantile(q) as f64 / 1000.0;
        write!(
            f,
            "handed to the producer after their due time by p50 {:.1} p99 {:.1} max {:.1} ms",
            ms(0.5),
            ms(0.99),
            self.0.max() as f64 / 1000.0
        )
    }
}

/// Creates the chat's topics, waits `start_after`, then writes the chat; returns its epoch
/// (chat time 0 in wall-clock milliseconds: the moment the first event was due).
fn produce(opts: &Options, events: &[SimEvent]) -> anyhow::Result<i64> {
    let room_topics = create_chat_topics(opts)?;
    let producer = chat_producer(&opts.bootstrap)?;
    if !opts.start_after.is_zero() {
        eprintln!("sim: topics are there; writing the chat in {:?}", opts.start_after);
        std::thread::sleep(opts.start_after);
    }
    // Handles, not names: see `TopicHandle`.
    let room_handles = room_topics
        .iter()
        .map(|t| TopicHandle::new(&producer, t))
        .collect::<Result<Vec<_>, _>>()
        .context("opening the room topics")?;
    let read_handle = TopicHandle::new(&producer, &opts.read_topic).context("opening the read topic")?;
    let epoch = now_ms();
    let start = Instant::now();
    let mut lateness = Lateness::new();
    for e in events {
        if opts.live {
            let due = Duration::from_secs_f64(e.at as f64 / 1000.0 / opts.speed);
            // One clock read per event, a second only after sleeping.
            let mut now = start.elapsed();
            if let Some(wait) = due.checked_sub(now) {
                if wait > Duration::from_millis(1) {
                    std::thread::sleep(wait);
                    now = start.elapsed();
                }
            }
            lateness.record(due, now);
        }
        let value = encode(e, epoch);
        let room = e.event.room_id();
        let topic = match e.target {
            Target::Room(r) => &room_handles[r as usize],
            Target::Read => &read_handle,
        };
        // Stamped with the chat's time: a processor that orders by record timestamp sees the
        // chat's order even when it is written much faster than it happened.
        crate::kafka::send_to(topic, room.as_bytes(), &value, epoch + e.at as i64).context("producing the chat")?;
    }
    crate::kafka::flush(&producer, Duration::from_secs(120)).context("flushing the chat")?;
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "sim: produced {} events in {secs:.1} s ({:.0}/s){}",
        events.len(),
        events.len() as f64 / secs,
        if opts.live { format!("; {lateness}") } else { String::new() }
    );
    Ok(epoch)
}

/// The output topic does not exist (yet): the error a subscription to it reports.
fn output_not_there_yet(e: &KafkaError) -> bool {
    matches!(e.rdkafka_error_code(), Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic))
}

/// Reads `receipt_complete` (`read_committed`) from the beginning, on its own thread, while
/// the chat is produced: each receipt's arrival time is when it could first be read, not when
/// the producing side got round to looking.
struct Checker {
    produced: Arc<AtomicBool>,
    poller: std::thread::JoinHandle<anyhow::Result<Polled>>,
}

/// One receipt as read from the output.
struct Seen {
    seq: u64,
    required: u64,
    arrived_ms: i64,
}

/// What the checker's thread read.
struct Polled {
    seen: HashMap<(String, String), Seen>,
    received: usize,
    duplicates: usize,
    first_receipt_ms: i64,
    last_receipt_ms: i64,
    /// When the last receipt not seen before was read.
    last_new: Instant,
}

impl Default for Polled {
    fn default() -> Self {
        Polled {
            seen: HashMap::new(),
            received: 0,
            duplicates: 0,
            first_receipt_ms: 0,
            last_receipt_ms: 0,
            last_new: Instant::now(),
        }
    }
}

impl Polled {
    /// Room for every expected receipt from the start. Growing the map doubles it, and moves
    /// every receipt seen so far, on the thread that stamps arrivals: at a million receipts
    /// that stalled it for over a second, and every receipt arriving meanwhile was stamped
    /// late by up to that much (a spike in each latency run's p99; BENCHMARKS.md, 7 December,
    /// a twenty-first session).
    fn expecting(expected: usize) -> Polled {
        // A little more for receipts the model does not expect (counted, and reported).
        Polled { seen: HashMap::with_capacity(expected + expected / 64 + 16), ..Polled::default() }
    }
}

impl Checker {
    fn start(opts: &Options, expected: usize) -> anyhow::Result<Checker> {
        let consumer: BaseConsumer<ForwardingContext> = client(&opts.bootstrap)
            .set("group.id", format!("allread-sim-check-{}", now_ms()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // Sees the output topic soon after the processor creates it.
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create_with_context(ForwardingContext::default())
            .context("creating the checker's consumer")?;
        consumer.subscribe(&[&opts.output]).context("subscribing to the output")?;
        let produced = Arc::new(AtomicBool::new(false));
        let wait = opts.wait;
        let poller = {
            let produced = produced.clone();
            std::thread::Builder::new()
                .name("checker".into())
                .spawn(move || poll_receipts(&consumer, expected, &produced, wait))
                .context("starting the checker's thread")?
        };
        Ok(Checker { produced, poller })
    }

    fn finish(
        self,
        opts: &Options,
        events: &[SimEvent],
        truth: &[crate::receipts::ReceiptComplete],
        epoch: i64,
    ) -> anyhow::Result<Report> {
        self.produced.store(true, Ordering::Relaxed);
        let polled = self.poller.join().map_err(|_| anyhow::anyhow!("the checker's thread panicked"))??;
        let expected: HashMap<(String, String), &crate::receipts::ReceiptComplete> =
            truth.iter().map(|r| ((r.room_id.to_string(), r.message_id.to_string()), r)).collect();
        let seen = polled.seen;
        let mut report = Report {
            events: events.len(),
            expected: truth.len(),
            received: polled.received,
            duplicates: polled.duplicates,
            first_receipt_ms: polled.first_receipt_ms,
            last_receipt_ms: polled.last_receipt_ms,
            ..Report::default()
        };
        let mut latency = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
        // Collected only for a timeline: a pair for each of up to millions of receipts.
        let timeline = opts.latency_timeline.as_ref().filter(|_| opts.live);
        let mut by_due = Vec::new();
        for (key, r) in &expected {
            match seen.get(key) {
                None => report.missing += 1,
                Some(s) => {
                    if s.seq != r.seq || s.required != r.required_readers as u64 {
                        if report.wrong < 5 {
                            eprintln!(
                                "check: {key:?} came with seq {} and {} required readers; the model says {} and {}",
                                s.seq, s.required, r.seq, r.required_readers
                            );
                        }
                        report.wrong += 1;
                    }
                    // From when the completing event was due, not when it happened to be sent:
                    // an open-loop measure, free of coordinated omission.
                    let since_start = (r.completed_at as f64 / opts.speed) as i64;
                    let late = (s.arrived_ms - (epoch + since_start)).max(1);
                    if since_start >= opts.warmup.as_millis() as i64 {
                        let _ = latency.record(late as u64);
                    }
                    if timeline.is_some() {
                        by_due.push((since_start, late));
                    }
                }
            }
        }
        if let Some(path) = timeline {
            std::fs::write(path, latency_timeline(by_due))
                .with_context(|| format!("writing the latency timeline to {}", path.display()))?;
        }
        report.unexpected = seen.keys().filter(|k| !expected.contains_key(*k)).count();
        let mut arrivals: Vec<i64> = seen.values().map(|s| s.arrived_ms).collect();
        report.sustained_events_per_s = super::rate::sustained_of(report.events as u64, &mut arrivals);
        let mut missing: Vec<_> = expected.keys().filter(|k| !seen.contains_key(*k)).collect();
        missing.sort();
        if !missing.is_empty() {
            eprintln!("check: missing, e.g. {:?}", &missing[..missing.len().min(5)]);
        }
        eprintln!(
            "check: {} expected, {} received, {} missing, {} unexpected, {} wrong, {} duplicates",
            report.expected, report.received, report.missing, report.unexpected, report.wrong, report.duplicates
        );
        if opts.live && !latency.is_empty() {
            print_latency("check: read -> receipt latency (ms, from when the completing event was due)", &latency);
        }
        println!(
            "RESULT events={} expected={} received={} missing={} unexpected={} wrong={} duplicates={} first_receipt_ms={} last_receipt_ms={} sustained_events_per_s={:.0}",
            report.events,
            report.expected,
            report.received,
            report.missing,
            report.unexpected,
            report.wrong,
            report.duplicates,
            report.first_receipt_ms,
            report.last_receipt_ms,
            report.sustained_events_per_s.unwrap_or(0.0)
        );
        Ok(report)
    }
}

/// The fields of an output receipt the check compares, read straight from its JSON (the
/// checker reads them on the thread that stamps arrivals, beside the system under test). A
/// field that is missing compares unequal: `seq` 0 (sequences start at 1), no count of
/// required readers.
#[derive(serde::Deserialize)]
#[serde(default)]
struct OutputReceipt<'a> {
    #[serde(borrow)]
    room_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    message_id: std::borrow::Cow<'a, str>,
    seq: u64,
    required_readers: u64,
}

impl Default for OutputReceipt<'_> {
    fn default() -> Self {
        OutputReceipt { room_id: "".into(), message_id: "".into(), seq: 0, required_readers: u64::MAX }
    }
}

/// The checker's thread: reads receipts until every expected one arrived and two quiet seconds
/// passed (three more for late duplicates), or until `wait` after the chat was produced.
///
/// Until as many receipts as expected have arrived, each is only stamped and kept as it
/// came ([`Arrivals`]): this thread shares the machine with the system under test, and what it
/// does per receipt is taken from that system's CPU (the passthrough it is compared with has
/// no checker beside it). Reading them into the map waits until then, and from then on each
/// new one is read as it comes.
fn poll_receipts(
    consumer: &BaseConsumer<ForwardingContext>,
    expected: usize,
    produced: &AtomicBool,
    wait: Duration,
) -> anyhow::Result<Polled> {
    // Receipts are taken in batches from a queue of their own (as allread and the passthrough
    // take their input); the consumer's own queue keeps rebalances and errors.
    let mut records = RecordQueue::open(consumer, &consumer.context().forwarding);
    let mut polled = Polled::expecting(expected);
    let mut arrivals = Some(Arrivals::expecting(expected));
    let mut deadline: Option<Instant> = None;
    loop {
        let produced = produced.load(Ordering::Relaxed);
        if produced && deadline.is_none() {
            deadline = Some(Instant::now() + wait);
        }
        if let Some(a) = arrivals.as_ref().filter(|a| a.len() >= expected) {
            a.read_into(&mut polled, expected, &mut deadline);
            arrivals = None;
        }
        let complete = polled.seen.len() >= expected;
        if deadline.is_some_and(|d| Instant::now() > d)
            || (produced && complete && polled.last_new.elapsed() > Duration::from_secs(2))
        {
            if let Some(a) = arrivals.take() {
                a.read_into(&mut polled, expected, &mut deadline);
            }
            return Ok(polled);
        }
        match consumer.poll(Duration::ZERO) {
            None => {}
            Some(Ok(m)) => {
                bail!("a receipt of {} [{}] came through the consumer's own queue", m.topic(), m.partition())
            }
            // The output topic appears only once the processor has created it (Kafka
            // Streams creates its sink topic late): until then the subscription reports it
            // unknown, which is not a failure of the processor.
            Some(Err(e)) if output_not_there_yet(&e) => {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            Some(Err(e)) => return Err(e).context("reading the output"),
        }
        // Every receipt of a batch was there to be read when the batch was taken.
        let mut arrived_ms = None;
        let mut failed = None;
        records.poll(Duration::from_millis(100), 10_000, |m| {
            let m = match m {
                Ok(m) => m,
                Err(e) => return failed = Some(e),
            };
            let arrived_ms = *arrived_ms.get_or_insert_with(now_ms);
            let payload = m.payload().unwrap_or_default();
            match arrivals.as_mut() {
                Some(a) => a.push(payload, arrived_ms),
                None => polled.take(payload, arrived_ms, expected, &mut deadline),
            }
        });
        match failed {
            Some(e) if output_not_there_yet(&e) => std::thread::sleep(Duration::from_millis(100)),
            Some(e) => return Err(e).context("reading the output"),
            None => {}
        }
    }
}

impl Polled {
    /// One receipt as it arrived at `arrived_ms`: counted, and read into the map unless it
    /// came before. What cannot be read as a receipt counts under the empty key, an
    /// unexpected one.
    fn take(&mut self, payload: &[u8], arrived_ms: i64, expected: usize, deadline: &mut Option<Instant>) {
        let v: OutputReceipt = serde_json::from_slice(payload).unwrap_or_default();
        let key = (v.room_id.into_owned(), v.message_id.into_owned());
        self.received += 1;
        if self.received == 1 {
            self.first_receipt_ms = arrived_ms;
        }
        if self.seen.contains_key(&key) {
            self.duplicates += 1;
            return;
        }
        self.last_receipt_ms = arrived_ms;
        self.last_new = Instant::now();
        if self.seen.len() + 1 == expected {
            // Everything is in: a little longer for duplicates, then stop.
            let soon = Instant::now() + Duration::from_secs(3);
            *deadline = Some(deadline.map_or(soon, |d| d.min(soon)));
        }
        self.seen.insert(key, Seen { seq: v.seq, required: v.required_readers, arrived_ms });
    }
}

/// Receipts as they arrived, not read yet: their bytes in blocks of [`Arrivals::BLOCK`] and
/// their arrival times, each with room for the expected receipts up front, so that keeping
/// one never moves what was kept before (see [`Polled::expecting`] for why that matters).
struct Arrivals {
    blocks: Vec<Vec<u8>>,
    /// Block, start and length of each receipt's bytes, and when it arrived.
    kept: Vec<(u32, u32, u32, i64)>,
}

impl Arrivals {
    const BLOCK: usize = 1 << 20;

    fn expecting(expected: usize) -> Arrivals {
        Arrivals { blocks: Vec::with_capacity(1024), kept: Vec::with_capacity(expected + expected / 64 + 16) }
    }

    fn len(&self) -> usize {
        self.kept.len()
    }

    fn push(&mut self, payload: &[u8], arrived_ms: i64) {
        let fits = self.blocks.last().is_some_and(|b| b.capacity() - b.len() >= payload.len());
        if !fits {
            self.blocks.push(Vec::with_capacity(Self::BLOCK.max(payload.len())));
        }
        let block = self.blocks.last_mut().expect("one was added");
        let start = block.len();
        block.extend_from_slice(payload);
        self.kept.push(((self.blocks.len() - 1) as u32, start as u32, payload.len() as u32, arrived_ms));
    }

    /// Reads every kept receipt into `polled`, in the order they arrived.
    fn read_into(&self, polled: &mut Polled, expected: usize, deadline: &mut Option<Instant>) {
        for &(block, start, len, arrived_ms) in &self.kept {
            let bytes = &self.blocks[block as usize][start as usize..][..len as usize];
            polled.take(bytes, arrived_ms, expected, deadline);
        }
    }
}

/// The limit allread is measured against: a plain consume -> produce of the chat's topics to
/// `sink`, with the same client settings as allread's, until `expect` records went through.
/// Each record keeps its input timestamp (the simulator stamps the time it was due). With
/// `latency` set, a second consumer reads `sink` meanwhile and reports how long after its
/// due time each record could be read there, leaving out the records due in the first
/// `warmup`: the transport floor under allread's read -> receipt latency at the same load.
/// (The simulator stamps chat time: the chat must run at `--speed 1` for this to hold.)
/// Prints, as `RESULT`, the seconds from the first record polled to the last acknowledged,
/// when that was (`last_ms`), and the sustained rate: records per second from the one at 10%
/// to the one at 90% handed to the producer ([`super::rate`]).
pub fn passthrough(
    bootstrap: &str,
    room_pattern: &str,
    read_topic: &str,
    sink: &str,
    expect: u64,
    latency: Option<Duration>,
) -> anyhow::Result<()> {
    ensure_topics(
        &client(bootstrap),
        &[TopicSpec { name: sink.into(), partitions: 8, replication: 1, exact_partitions: false, config: vec![] }],
    )?;
    let done = Arc::new(AtomicBool::new(false));
    let measure = match latency {
        None => None,
        Some(warmup) => {
            let consumer: BaseConsumer = client(bootstrap)
                .set("group.id", format!("allread-passthrough-latency-{}", now_ms()))
                .set("auto.offset.reset", "earliest")
                .set("enable.auto.commit", "false")
                .create()
                .context("creating the latency consumer")?;
            consumer.subscribe(&[sink]).context("subscribing to the sink")?;
            let done = done.clone();
            Some(
                std::thread::Builder::new()
                    .name("sink-latency".into())
                    .spawn(move || sink_latency(&consumer, expect, warmup, &done))
                    .context("starting the latency thread")?,
            )
        }
    };
    // Records are taken in batches from a queue of their own, as allread takes them.
    let consumer: BaseConsumer<ForwardingContext> = crate::kafka::tune_input_consumer(&mut client(bootstrap))
        .set("group.id", format!("allread-passthrough-{}", now_ms()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create_with_context(ForwardingContext::default())?;
    let mut records = RecordQueue::open(&consumer, &consumer.context().forwarding);
    consumer.subscribe(&[room_pattern, read_topic])?;
    let producer: ThreadedProducer<DefaultProducerContext> = client(bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .create()?;
    let mut n = 0u64;
    let mut first: Option<Instant> = None;
    let mut last_commit = Instant::now();
    // When the records at the sustained rate's marks were sent (see `super::rate`).
    let (first_mark, second_mark) = super::rate::marks(expect);
    let mut at_marks = [0i64; 2];
    let mut failed: Option<anyhow::Error> = None;
    while n < expect {
        // The consumer's own queue: rebalances (served inside `poll`, which then gives nothing)
        // and errors. Every partition is forwarded to `records` as it is assigned, so a record
        // here would be a bug, not one to drop.
        if let Some(m) = consumer.poll(Duration::ZERO) {
            let m = m?;
            bail!("a record of {} [{}] came through the consumer's own queue", m.topic(), m.partition());
        }
        records.poll(Duration::from_millis(100), 10_000, |m| {
            if failed.is_some() || n >= expect {
                return;
            }
            let m = match m {
                Ok(m) => m,
                Err(e) => return failed = Some(e.into()),
            };
            first.get_or_insert_with(Instant::now);
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(sink).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                record = record.key(k);
            }
            if let Some(ts) = m.timestamp() {
                record = record.timestamp(ts);
            }
            if let Err(e) = crate::kafka::send(&producer, record) {
                return failed = Some(e.into());
            }
            if n == first_mark {
                at_marks[0] = now_ms();
            }
            if n == second_mark {
                at_marks[1] = now_ms();
            }
            n += 1;
        });
        if let Some(e) = failed {
            return Err(e);
        }
        if last_commit.elapsed() > Duration::from_millis(100) {
            crate::kafka::flush(&producer, Duration::from_secs(60))?;
            consumer.commit_consumer_state(CommitMode::Async)?;
            last_commit = Instant::now();
        }
    }
    crate::kafka::flush(&producer, Duration::from_secs(60))?;
    let secs = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let sustained = super::rate::sustained(n, n, at_marks[0], at_marks[1]).unwrap_or(0.0);
    eprintln!(
        "passthrough: {n} records in {secs:.2} s from the first one polled ({:.0}/s; {sustained:.0}/s sustained)",
        n as f64 / secs
    );
    println!("RESULT records={n} seconds={secs:.3} last_ms={} sustained_events_per_s={sustained:.0}", now_ms());
    if let Some(measure) = measure {
        done.store(true, Ordering::Relaxed);
        let h = measure.join().map_err(|_| anyhow::anyhow!("the latency thread panicked"))??;
        if h.is_empty() {
            bail!("no record after the warm-up reached the sink");
        }
        let what = format!("passthrough: due -> readable in the sink (ms, {} records after the warm-up)", h.len());
        print_latency(&what, &h);
    }
    Ok(())
}

/// `(ms since the chat began that a receipt's completing event was due, its latency in ms)`,
/// one per receipt, summed up second by second: a line per second with receipts, `second
/// receipts p50 p99 max`, tab-separated (each a nearest-rank percentile of that second's).
fn latency_timeline(mut by_due: Vec<(i64, i64)>) -> String {
    by_due.sort_unstable();
    let mut out = String::from("second\treceipts\tp50_ms\tp99_ms\tmax_ms\n");
    for second in by_due.chunk_by(|a, b| a.0.div_euclid(1000) == b.0.div_euclid(1000)) {
        let mut ms: Vec<i64> = second.iter().map(|&(_, late)| late).collect();
        ms.sort_unstable();
        let rank = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        let line = [second[0].0.div_euclid(1000), ms.len() as i64, rank(0.5), rank(0.99), ms[ms.len() - 1]];
        out.push_str(&line.map(|v| v.to_string()).join("\t"));
        out.push('\n');
    }
    out
}

/// A latency histogram (ms) for people on stderr and as the `RESULT` line `scripts/bench` parses.
fn print_latency(what: &str, h: &Histogram<u64>) {
    let q = |q: f64| h.value_at_quantile(q);
    eprintln!("{what}: p50 {} p99 {} p99.9 {} max {}", q(0.5), q(0.99), q(0.999), h.max());
    println!("RESULT latency_p50_ms={} latency_p99_ms={} latency_p999_ms={}", q(0.5), q(0.99), q(0.999));
}

/// The passthrough's latency thread: reads `expect` records from the sink (or stops 30 s after
/// `done`), recording arrival minus record timestamp for those stamped at least `warmup` after
/// the first one seen.
fn sink_latency(
    consumer: &BaseConsumer,
    expect: u64,
    warmup: Duration,
    done: &AtomicBool,
) -> anyhow::Result<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 3_600_000, 3).expect("valid bounds");
    let mut seen = 0u64;
    let mut start: Option<i64> = None;
    let mut deadline: Option<Instant> = None;
    while seen < expect {
        if deadline.is_none() && done.load(Ordering::Relaxed) {
            deadline = Some(Instant::now() + Duration::from_secs(30));
        }
        if deadline.is_some_and(|d| Instant::now() > d) {
            eprintln!("passthrough: the latency consumer read {seen} of {expect} records");
            break;
        }
        let m = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(m) => m.context("reading the sink")?,
        };
        let arrived = now_ms();
        seen += 1;
        let Some(ts) = m.timestamp().to_millis() else { continue };
        let start = *start.get_or_insert(ts);
        if ts >= start + warmup.as_millis() as i64 {
            let _ = h.record((arrived - ts).max(1) as u64);
        }
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    /// The chat's JSON as a `serde_json::Value`, the way `encode` wrote it before.
    fn reference(e: &Event, epoch: i64) -> Value {
        match e {
            Event::Message { message_id, sender_id, sent_at, .. } => json!({
                "type": "message", "message_id": &**message_id, "sender_id": &**sender_id,
                "sent_at": format_millis(epoch + sent_at), "body": "simulated",
            }),
            Event::Join { user_id, at, .. } => json!({"type": "join", "user_id": &**user_id, "at": epoch + at}),
            Event::Leave { user_id, at, .. } => json!({"type": "leave", "user_id": &**user_id, "at": epoch + at}),
            Event::Read { room_id, user_id, message_id, read_at, scope } => {
                let mut v = json!({
                    "room_id": &**room_id, "user_id": &**user_id, "message_id": &**message_id, "read_at": epoch + read_at,
                });
                if *scope == ReadScope::Message {
                    v["scope"] = "message".into();
                }
                v
            }
        }
    }

    #[test]
    fn the_latency_timeline_sums_up_each_second_of_due_times_with_nearest_rank_percentiles() {
        // Second 0: latencies 1..=100 in a shuffled order; second 2: one receipt; second 1:
        // none, so no line; a receipt due before the chat (a join's at -1 ms) is second -1.
        let mut by_due: Vec<(i64, i64)> = (1..=100).map(|l| ((l * 37) % 1000, (l * 53) % 100 + 1)).collect();
        by_due.push((2_500, 7));
        by_due.push((-1, 4));
        by_due.reverse();
        let lines: Vec<String> = latency_timeline(by_due).lines().map(str::to_string).collect();
        assert_eq!(
            lines,
            ["second\treceipts\tp50_ms\tp99_ms\tmax_ms", "-1\t1\t4\t4\t4", "0\t100\t50\t99\t100", "2\t1\t7\t7\t7"]
        );
    }

    #[test]
    fn the_checker_reads_a_receipts_key_and_counts_and_takes_what_is_missing_or_garbled_for_unequal() {
        let read = |bytes: &[u8]| -> (String, String, u64, u64) {
            let v: OutputReceipt = serde_json::from_slice(bytes).unwrap_or_default();
            (v.room_id.into_owned(), v.message_id.into_owned(), v.seq, v.required_readers)
        };
        let full = br#"{"room_id":"r\"1","message_id":"m\u00e91","sender_id":"u1",
            "seq":7,"sent_at":"2026-12-07T05:00:00.000Z","completed_at":"2026-12-07T05:00:01.000Z","required_readers":9}"#;
        assert_eq!(read(full), ("r\"1".into(), "m\u{e9}1".into(), 7, 9));
        assert_eq!(read(br#"{"room_id":"r1","message_id":"m1"}"#), ("r1".into(), "m1".into(), 0, u64::MAX));
        assert_eq!(read(b"not json"), (String::new(), String::new(), 0, u64::MAX));
    }

    #[test]
    fn the_checker_has_room_for_every_expected_receipt_before_the_first_arrives() {
        // A map that grows while receipts arrive stamps them late (see `Polled::expecting`).
        for expected in [0, 1, 1_000, 1_157_684] {
            assert!(Polled::expecting(expected).seen.capacity() >= expected, "{expected}");
        }
    }

    #[test]
    fn receipts_kept_as_they_arrived_read_back_as_if_each_was_read_on_arrival() {
        // Enough bytes for several blocks, one receipt larger than a block, a duplicate and
        // one that is not JSON.
        let mut payloads: Vec<Vec<u8>> = (0..30_000)
            .map(|i| {
                let pad = "x".repeat(i % 97);
                format!(
                    r#"{{"room_id":"r{}","message_id":"m{i}","seq":{i},"required_readers":9,"pad":"{pad}"}}"#,
                    i % 7
                )
                .into_bytes()
            })
            .collect();
        let big = "y".repeat(Arrivals::BLOCK);
        payloads.push(
            format!(r#"{{"room_id":"big","message_id":"m","seq":1,"required_readers":2,"pad":"{big}"}}"#).into_bytes(),
        );
        payloads.push(payloads[5].clone());
        payloads.push(b"not json".to_vec());
        let expected = payloads.len();
        let (mut direct, mut kept) = (Polled::expecting(expected), Arrivals::expecting(expected));
        let (mut direct_deadline, mut kept_deadline) = (None, None);
        for (i, p) in payloads.iter().enumerate() {
            direct.take(p, 1_000 + i as i64, expected, &mut direct_deadline);
            kept.push(p, 1_000 + i as i64);
        }
        assert!(kept.blocks.len() > 3, "{} blocks", kept.blocks.len());
        let mut later = Polled::expecting(expected);
        kept.read_into(&mut later, expected, &mut kept_deadline);
        let summary = |p: &Polled| {
            let mut seen: Vec<_> = p.seen.iter().map(|(k, s)| (k.clone(), s.seq, s.required, s.arrived_ms)).collect();
            seen.sort();
            (p.received, p.duplicates, p.first_receipt_ms, p.last_receipt_ms, seen)
        };
        let (received, duplicates, first, last, seen) = summary(&later);
        assert_eq!((received, duplicates, first, last), (expected, 1, 1_000, 1_000 + expected as i64 - 1));
        assert_eq!(seen.len(), expected - 1);
        assert!(seen.contains(&(("big".into(), "m".into()), 1, 2, 1_000 + 30_000)));
        assert_eq!(summary(&later), summary(&direct));
    }

    #[test]
    fn every_kind_of_event_is_written_as_its_json_and_reads_back_as_itself() {
        let epoch = 1_764_300_000_000;
        let id = |s: &str| -> crate::receipts::Id { s.into() };
        // Names a client could send, with characters JSON must escape.
        let room = id("r\"1\\é");
        let events = [
            Event::Message { room_id: room.clone(), message_id: id("m\n1"), sender_id: id("u1"), sent_at: 1_234 },
            Event::Join { room_id: room.clone(), user_id: id("u\u{1}2"), at: 0 },
            Event::Leave { room_id: room.clone(), user_id: id("u2"), at: 99 },
            Event::Read {
                room_id: room.clone(),
                user_id: id("u3"),
                message_id: id("m1"),
                read_at: 5,
                scope: ReadScope::UpTo,
            },
            Event::Read {
                room_id: room.clone(),
                user_id: id("u3"),
                message_id: id("m1"),
                read_at: 6,
                scope: ReadScope::Message,
            },
        ];
        let limits = crate::codec::DecodeLimits::default();
        for event in events {
            let target = if matches!(event, Event::Read { .. }) { Target::Read } else { Target::Room(0) };
            let e = SimEvent { at: 0, target, event };
            let bytes = encode(&e, epoch);
            let written: Value = serde_json::from_slice(&bytes).unwrap_or_else(|err| panic!("{err}: {bytes:?}"));
            assert_eq!(written, reference(&e.event, epoch));
            let topic = if matches!(e.target, Target::Read) { "reads".to_string() } else { format!("chatroom_{room}") };
            let decoded = crate::codec::decode_input(&topic, "reads", "chatroom_", &bytes, &limits).unwrap();
            let with_epoch = match e.event.clone() {
                Event::Message { room_id, message_id, sender_id, sent_at } => {
                    Event::Message { room_id, message_id, sender_id, sent_at: epoch + sent_at }
                }
                Event::Join { room_id, user_id, at } => Event::Join { room_id, user_id, at: epoch + at },
                Event::Leave { room_id, user_id, at } => Event::Leave { room_id, user_id, at: epoch + at },
                Event::Read { room_id, user_id, message_id, read_at, scope } => {
                    Event::Read { room_id, user_id, message_id, read_at: epoch + read_at, scope }
                }
            };
            assert_eq!(decoded, with_epoch, "allread reads what the chat wrote");
        }
    }
}

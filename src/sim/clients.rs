//! `allread sim --live --clients`: the chat's users as chat clients.
//!
//! One producer writes the room topics (messages, joins, leaves) open loop at their chat times,
//! as [`super::run`] does. Every user is a client: a Kafka consumer of its own, in the group
//! `<room-prefix>user_<user id>` (one group per user, as each device of the design has; the
//! room prefix names the chat, so two chats on one broker never share a group, and a rerun over
//! the same topics resumes each user's group at its committed offsets), subscribed to the
//! topics of the rooms the user joins in the generated chat. When a client receives a message
//! it has a read planned for, it sends that read (same message, same scope) to the read topic
//! after the user's reading delay (the generator's read time minus the message's time), counted
//! from when it received the message; `read_at` and the record timestamp are the chat time at
//! which the read is actually sent. Reads are thus caused by real deliveries.
//!
//! The receipts stay the generator's ground truth: the set of events is the same, every room
//! topic is written by the one producer in the chat's order (so seqs and required readers are
//! the same), and a read is sent only after its message was delivered, so no read is sent
//! before its message or its user's join (a processor that still applies one first parks it,
//! spec rule 8). Completion does not depend on when a read arrives (read
//! positions only move up, reader sets only grow, a leave releases its member), so late reads
//! change the receipts' times, never which receipts there are. A leave is held until every read
//! the user planned before it (in that room) is acknowledged by the broker, so a leaver's reads
//! are still the reads of a member, as the generator planned, and the leave is then stamped with
//! its actual time, after those reads. Holding a leave delays the room producer (counted as
//! "leaves held"); it happens only when delivery takes longer than
//! [`super::workload::LEAVE_GUARD_MS`] of chat time.
//!
//! Every client's consumer is started, and has its partitions, before the chat starts (an app
//! open before its user joins; it reads from the beginning and acts only on the messages its
//! user reads); it leaves its group once its user has left every room. librdkafka clients are
//! heavy (four threads and about eight file descriptors each), so the consumers are polled,
//! without blocking, by one or two threads (one per 500 users), which sleep until librdkafka
//! reports a non-empty consumer queue (and serve every consumer every 100 ms regardless), and
//! one producer sends every client's reads; at most [`MAX_USERS`] users.

use std::collections::{BTreeSet, BinaryHeap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, ProducerContext, ThreadedProducer};

use super::run::{client, encode, now_ms, Lateness, Options};
use super::workload::{SimEvent, Target};
use crate::receipts::{Event, Id};

/// The most users `--clients` simulates: each is a Kafka consumer, with its librdkafka threads
/// (about four) and connections (two) to a one-broker cluster.
pub const MAX_USERS: usize = 2_000;
/// Users per polling thread (at most two threads).
const USERS_PER_THREAD: usize = 500;
/// Records taken from one consumer before the next one's turn.
const POLL_BATCH: usize = 64;
/// Every consumer is served at least this often, whether it signalled or not.
const SWEEP: Duration = Duration::from_millis(100);
/// How long the clients may take to join their groups before the chat starts.
const JOIN_LIMIT: Duration = Duration::from_secs(120);
/// How long a leave may wait for its user's reads.
const HOLD_LIMIT: Duration = Duration::from_secs(60);

/// The soft limit on open files (Linux), if known.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The consumer group of one simulated user.
pub fn group_id(room_prefix: &str, user_id: &str) -> String {
    format!("{room_prefix}user_{user_id}")
}

/// Chat time: 0 when the first room event is due, running `speed` times faster than the clock.
struct Clock {
    start: Instant,
    /// Chat time 0 in epoch milliseconds (records are stamped `epoch + chat ms`).
    epoch: i64,
    speed: f64,
}

impl Clock {
    fn chat_ms(&self) -> f64 {
        self.start.elapsed().as_secs_f64() * 1000.0 * self.speed
    }
    fn wall(&self, chat_ms: u64) -> Duration {
        Duration::from_secs_f64(chat_ms as f64 / 1000.0 / self.speed)
    }
}

/// A read a user will send once it has received the message.
struct Plan {
    /// Chat milliseconds from receiving the message to reading it.
    delay_ms: u64,
    /// The generator's `Event::Read` (its `read_at` is replaced by the actual one).
    read: Event,
    /// The (user, room) slot whose acknowledged reads it counts in.
    slot: usize,
}

struct User {
    id: Id,
    rooms: BTreeSet<u32>,
    /// Room number -> message id -> the reads planned on receiving it.
    plans: HashMap<u32, HashMap<Id, Vec<Plan>>>,
}

/// What the clients are to do, derived from the generated chat.
struct Script {
    users: Vec<User>,
    /// Per (user, room) slot: reads planned.
    planned: Vec<u32>,
    /// Event index of a leave -> (slot, reads of that slot that must be acknowledged first).
    leave_needs: HashMap<usize, (usize, u32)>,
    /// Event index of a user's last leave (it is then in no room) -> the user.
    close_at: HashMap<usize, usize>,
    reads: u64,
    /// The longest reading delay, chat ms.
    max_delay_ms: u64,
}

/// Users, (user, room) slots and what is known of the chat so far, while [`script`] reads it.
#[derive(Default)]
struct Builder {
    users: Vec<User>,
    index: HashMap<Id, usize>,
    slots: HashMap<(usize, u32), usize>,
    planned: Vec<u32>,
    /// Per user: rooms joined minus rooms left, and its last leave (event index).
    rooms_in: Vec<i64>,
    last_leave: Vec<Option<usize>>,
}

impl Builder {
    fn user(&mut self, id: &Id) -> usize {
        if let Some(&u) = self.index.get(id) {
            return u;
        }
        self.users.push(User { id: id.clone(), rooms: BTreeSet::new(), plans: HashMap::new() });
        self.rooms_in.push(0);
        self.last_leave.push(None);
        self.index.insert(id.clone(), self.users.len() - 1);
        self.users.len() - 1
    }

    fn slot(&mut self, u: usize, r: u32) -> usize {
        self.users[u].rooms.insert(r);
        let next = self.planned.len();
        let s = *self.slots.entry((u, r)).or_insert(next);
        if s == next {
            self.planned.push(0);
        }
        s
    }
}

fn script(events: &[SimEvent]) -> anyhow::Result<Script> {
    let mut b = Builder::default();
    let mut room_of: HashMap<Id, u32> = HashMap::new();
    let mut message_at: HashMap<(u32, Id), u64> = HashMap::new();
    let mut leave_needs = HashMap::new();
    let mut reads = 0u64;
    let mut max_delay_ms = 0u64;
    for (i, e) in events.iter().enumerate() {
        match (e.target, &e.event) {
            (Target::Room(r), Event::Join { room_id, user_id, .. }) => {
                room_of.insert(room_id.clone(), r);
                let u = b.user(user_id);
                b.slot(u, r);
                b.rooms_in[u] += 1;
            }
            (Target::Room(r), Event::Leave { user_id, .. }) => {
                let u = b.user(user_id);
                let s = b.slot(u, r);
                // The reads of this user and room planned so far (in time order) go first.
                leave_needs.insert(i, (s, b.planned[s]));
                b.rooms_in[u] -= 1;
                b.last_leave[u] = Some(i);
            }
            (Target::Room(r), Event::Message { room_id, message_id, .. }) => {
                room_of.insert(room_id.clone(), r);
                message_at.insert((r, message_id.clone()), e.at);
            }
            (Target::Read, Event::Read { room_id, user_id, message_id, .. }) => {
                let Some(&r) = room_of.get(room_id) else {
                    bail!("the chat has a read in {room_id} before any event of that room");
                };
                let Some(&sent) = message_at.get(&(r, message_id.clone())) else {
                    bail!("the chat has a read of {message_id} in {room_id} before the message");
                };
                let u = b.user(user_id);
                let s = b.slot(u, r);
                let delay_ms = e.at.saturating_sub(sent);
                max_delay_ms = max_delay_ms.max(delay_ms);
                let plans = b.users[u].plans.entry(r).or_default().entry(message_id.clone()).or_default();
                plans.push(Plan { delay_ms, read: e.event.clone(), slot: s });
                b.planned[s] += 1;
                reads += 1;
            }
            (target, event) => bail!("the chat has a {} event on {target:?}", event.kind()),
        }
    }
    let close_at =
        (0..b.users.len()).filter(|&u| b.rooms_in[u] <= 0).filter_map(|u| b.last_leave[u].map(|i| (i, u))).collect();
    Ok(Script { users: b.users, planned: b.planned, leave_needs, close_at, reads, max_delay_ms })
}

/// What the producer, the clients and the delivery callbacks share.
struct Shared {
    clock: OnceLock<Clock>,
    /// Every planned read is acknowledged: the clients close their consumers and stop.
    stop: AtomicBool,
    /// Something failed: stop at once.
    abort: AtomicBool,
    /// Clients whose consumer has its partitions.
    assigned: AtomicUsize,
    /// Per user: it has left every room (its consumer leaves its group).
    gone: Vec<AtomicBool>,
    /// Per (user, room) slot: reads acknowledged (or failed).
    done: Vec<AtomicU32>,
    done_total: AtomicU64,
    failed: AtomicU64,
    /// The first failure of a client thread or of a read's delivery (never a payload).
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn fail(&self, what: String) {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(what);
    }
    /// An error if a client thread broke.
    fn check(&self) -> anyhow::Result<()> {
        if self.abort.load(Ordering::Relaxed) {
            let what = self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
            bail!("a client thread failed: {}", what.unwrap_or_default());
        }
        Ok(())
    }
}

/// Counts the reads the broker acknowledged, per (user, room) slot.
struct Reads(Arc<Shared>);

impl ClientContext for Reads {}

impl ProducerContext for Reads {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, slot: usize) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            self.0.fail(format!("a read was not delivered: {e}"));
        }
        self.0.done[slot].fetch_add(1, Ordering::Release);
        self.0.done_total.fetch_add(1, Ordering::Release);
    }
}

/// One simulated user: its consumer and the reads it has yet to receive messages for.
struct Client {
    user: usize,
    id: Id,
    consumer: Option<BaseConsumer>,
    closing: bool,
    assigned: bool,
    plans: HashMap<u32, HashMap<Id, Vec<Plan>>>,
}

/// A read waiting for its user's reading delay.
struct Due {
    at: Instant,
    n: u64,
    read: Event,
    slot: usize,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.n) == (other.at, other.n)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    /// The earliest first out of a (max-)heap.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.at, other.n).cmp(&(self.at, self.n))
    }
}

/// What one client thread saw.
struct Stats {
    /// Message produced -> client received, wall microseconds.
    delivery: Histogram<u64>,
    received: u64,
    reads_sent: u64,
    consumer_errors: u64,
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    message_id: Option<String>,
}

struct Driver {
    clients: Vec<Client>,
    shared: Arc<Shared>,
    producer: Arc<ThreadedProducer<Reads>>,
    topics: Arc<HashMap<String, u32>>,
    read_topic: String,
    wake: Arc<Wake>,
    due: BinaryHeap<Due>,
    n: u64,
    stats: Stats,
}

/// The clients (by index in their thread) whose consumer queue became non-empty: librdkafka
/// calls back when a record or event lands in an empty queue, so an idle thread sleeps.
#[derive(Default)]
struct Wake {
    ready: Mutex<Vec<usize>>,
    cv: Condvar,
}

impl Wake {
    fn push(&self, i: usize) {
        self.ready.lock().unwrap_or_else(|e| e.into_inner()).push(i);
        self.cv.notify_one();
    }
}

impl Driver {
    fn run(mut self) -> Stats {
        if let Err(e) = self.drive() {
            self.shared.fail(format!("{e:#}"));
            self.shared.abort.store(true, Ordering::Relaxed);
        }
        self.close();
        self.stats
    }

    fn drive(&mut self) -> anyhow::Result<()> {
        let mut last_sweep = Instant::now();
        let mut again: Vec<usize> = Vec::new();
        loop {
            if self.shared.abort.load(Ordering::Relaxed) {
                return Ok(());
            }
            // The clients whose queue has something (or everyone, now and then: a record left
            // behind a rebalance or commit event, a consumer to close).
            let mut ready = std::mem::take(&mut *self.wake.ready.lock().unwrap_or_else(|e| e.into_inner()));
            ready.append(&mut again);
            if last_sweep.elapsed() >= SWEEP {
                ready = (0..self.clients.len()).collect();
                last_sweep = Instant::now();
            }
            ready.sort_unstable();
            ready.dedup();
            for i in ready {
                if self.serve(i)? {
                    again.push(i);
                }
            }
            let now = Instant::now();
            while self.due.peek().is_some_and(|d| d.at <= now) {
                let d = self.due.pop().expect("peeked");
                self.send(d)?;
            }
            if self.shared.stop.load(Ordering::Acquire) && self.due.is_empty() {
                return Ok(());
            }
            if again.is_empty() {
                let mut wake_at = last_sweep + SWEEP;
                if let Some(d) = self.due.peek() {
                    wake_at = wake_at.min(d.at);
                }
                let ready = self.wake.ready.lock().unwrap_or_else(|e| e.into_inner());
                if ready.is_empty() {
                    let wait = wake_at.saturating_duration_since(Instant::now());
                    drop(self.wake.cv.wait_timeout(ready, wait).unwrap_or_else(|e| e.into_inner()));
                }
            }
        }
    }

    /// Takes what client `i`'s consumer has, without blocking; whether more may be waiting.
    fn serve(&mut self, i: usize) -> anyhow::Result<bool> {
        let c = &mut self.clients[i];
        let Some(consumer) = &c.consumer else { return Ok(false) };
        let (mut taken, mut nothing) = (0, 0);
        // `poll` also answers nothing right after serving a rebalance or commit event: the
        // queue is empty only after two such answers in a row.
        while nothing < 2 {
            if taken == POLL_BATCH {
                return Ok(true);
            }
            let m = match consumer.poll(Duration::ZERO) {
                None => {
                    nothing += 1;
                    continue;
                }
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    // Transient (a broker connection, a rebalance): librdkafka retries. A read
                    // that never comes fails the run at the end.
                    self.stats.consumer_errors += 1;
                    if self.stats.consumer_errors <= 3 {
                        eprintln!("sim: the consumer of {}: {e}", c.id);
                    }
                    continue;
                }
            };
            (taken, nothing) = (taken + 1, 0);
            if c.closing {
                continue;
            }
            // Records older than the chat (an earlier run on these topics) have no reader.
            let Some(clock) = self.shared.clock.get() else { continue };
            let received = Instant::now();
            self.stats.received += 1;
            let Some(&room) = self.topics.get(m.topic()) else { continue };
            // Only what a client needs of the record: never its body.
            let Ok(head) = serde_json::from_slice::<Head>(m.payload().unwrap_or_default()) else { continue };
            let (Some("message"), Some(message_id)) = (head.kind.as_deref(), head.message_id.as_deref()) else {
                continue;
            };
            // The record's timestamp is the chat time at which it was produced.
            if let Some(ts) = m.timestamp().to_millis() {
                let us = (clock.chat_ms() - (ts - clock.epoch) as f64) / clock.speed * 1000.0;
                let _ = self.stats.delivery.record(us.max(1.0) as u64);
            }
            let Some(plans) = c.plans.get_mut(&room).and_then(|p| p.remove(message_id)) else { continue };
            for p in plans {
                self.due.push(Due { at: received + clock.wall(p.delay_ms), n: self.n, read: p.read, slot: p.slot });
                self.n += 1;
            }
        }
        if !c.assigned && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            c.assigned = true;
            self.shared.assigned.fetch_add(1, Ordering::Relaxed);
        }
        if !c.closing && self.shared.gone[c.user].load(Ordering::Acquire) {
            // Its user has left every room: it leaves its group (committing its offsets).
            c.closing = true;
            let _ = consumer.close_queue();
        }
        if c.closing && consumer.closed() {
            c.consumer = None;
        }
        Ok(false)
    }

    fn send(&mut self, d: Due) -> anyhow::Result<()> {
        let clock = self.shared.clock.get().expect("reads are due only once the chat runs");
        let Event::Read { room_id, user_id, message_id, scope, .. } = d.read else { unreachable!("plans are reads") };
        let chat_ms = clock.chat_ms().max(0.0) as u64;
        let read = SimEvent {
            at: chat_ms,
            target: Target::Read,
            event: Event::Read { room_id: room_id.clone(), user_id, message_id, read_at: chat_ms as i64, scope },
        };
        let value = encode(&read, clock.epoch);
        let record = BaseRecord::with_opaque_to(&self.read_topic, d.slot)
            .key(room_id.as_bytes())
            .payload(&value[..])
            .timestamp(clock.epoch + chat_ms as i64);
        crate::kafka::send(&self.producer, record).context("producing a read")?;
        self.stats.reads_sent += 1;
        Ok(())
    }

    /// Every consumer leaves its group at once (committing its offsets), then they are dropped.
    fn close(&mut self) {
        for c in &mut self.clients {
            if let (Some(consumer), false) = (&c.consumer, c.closing) {
                c.closing = true;
                let _ = consumer.close_queue();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline && self.clients.iter().any(|c| c.consumer.as_ref().is_some_and(|k| !k.closed()))
        {
            let mut busy = false;
            for c in &self.clients {
                if let Some(consumer) = &c.consumer {
                    busy |= consumer.poll(Duration::ZERO).is_some();
                }
            }
            if !busy {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        self.clients.clear();
    }
}

/// The client threads; dropping this stops them.
struct Drivers {
    shared: Arc<Shared>,
    handles: Vec<JoinHandle<Stats>>,
}

impl Drivers {
    fn join(&mut self) -> Vec<Stats> {
        self.handles.drain(..).filter_map(|h| h.join().ok()).collect()
    }
}

impl Drop for Drivers {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.shared.abort.store(true, Ordering::Relaxed);
            self.join();
        }
    }
}

fn wait_until(shared: &Shared, limit: Duration, mut ready: impl FnMut() -> bool) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    while !ready() {
        shared.check()?;
        if Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(true)
}

/// Writes the chat's room events open loop and runs its users as clients that send the reads,
/// until every read is acknowledged. Returns chat time 0 in epoch milliseconds (the clients
/// are all in their groups by then), for the check's latencies.
pub fn produce(opts: &Options, events: &[SimEvent]) -> anyhow::Result<i64> {
    if !opts.live {
        bail!("--clients needs --live: the clients read at human speeds, in (scaled) real time");
    }
    if !opts.produce {
        bail!("--clients writes the chat: it cannot be used with --check-only");
    }
    let script = script(events)?;
    let users = script.users.len();
    if users > MAX_USERS {
        bail!(
            "--clients runs one Kafka consumer per user: this chat has {users} users, more than the limit of {MAX_USERS} \
             (fewer --rooms, --members or --large-members, or less --churn)"
        );
    }
    // A consumer holds about eight descriptors (sockets to the bootstrap and to the broker,
    // wake-up pipes of its threads); past the limit its connections fail.
    let files = 8 * users as u64 + 100;
    if let Some(limit) = open_files_limit().filter(|&l| l < files) {
        eprintln!("sim: warning: {users} clients need about {files} open files, the limit is {limit} (ulimit -n)");
    }
    let room_topics = super::run::create_chat_topics(opts)?;
    let started = Instant::now();

    let shared = Arc::new(Shared {
        clock: OnceLock::new(),
        stop: AtomicBool::new(false),
        abort: AtomicBool::new(false),
        assigned: AtomicUsize::new(0),
        gone: (0..users).map(|_| AtomicBool::new(false)).collect(),
        done: script.planned.iter().map(|_| AtomicU32::new(0)).collect(),
        done_total: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        failure: Mutex::new(None),
    });
    // Idempotent, as the room producer: a retried batch does not land behind later ones.
    let reads: Arc<ThreadedProducer<Reads>> = Arc::new(
        client(&opts.bootstrap)
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("compression.type", "lz4")
            .create_with_context(Reads(shared.clone()))
            .context("creating the clients' read producer")?,
    );
    let rooms = super::run::chat_producer(&opts.bootstrap)?;

    let topics: Arc<HashMap<String, u32>> =
        Arc::new(room_topics.iter().enumerate().map(|(r, t)| (t.clone(), r as u32)).collect());
    let threads = users.div_ceil(USERS_PER_THREAD).clamp(1, 2);
    let wakes: Vec<Arc<Wake>> = (0..threads).map(|_| Arc::new(Wake::default())).collect();
    let mut parts: Vec<Vec<Client>> = (0..threads).map(|_| Vec::new()).collect();
    for (u, user) in script.users.into_iter().enumerate() {
        let mut consumer: BaseConsumer = client(&opts.bootstrap)
            .set("group.id", group_id(&opts.room_prefix, &user.id))
            .set("client.id", format!("allread-sim-{}", user.id))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "true")
            // Small fetch buffers: there are many of these consumers.
            .set("queued.max.messages.kbytes", "1024")
            .create()
            .with_context(|| format!("creating the consumer of {}", user.id))?;
        let (t, i) = (u % threads, parts[u % threads].len());
        let wake = wakes[t].clone();
        consumer.set_nonempty_callback(move || wake.push(i));
        let subscription: Vec<&str> = user.rooms.iter().map(|&r| room_topics[r as usize].as_str()).collect();
        consumer.subscribe(&subscription).with_context(|| format!("subscribing {} to its rooms", user.id))?;
        let id = user.id.clone();
        parts[t].push(Client {
            user: u,
            id,
            consumer: Some(consumer),
            closing: false,
            assigned: false,
            plans: user.plans,
        });
    }
    let mut drivers = Drivers { shared: shared.clone(), handles: Vec::new() };
    for (t, (clients, wake)) in parts.into_iter().zip(wakes).enumerate() {
        let driver = Driver {
            clients,
            wake,
            shared: shared.clone(),
            producer: reads.clone(),
            topics: topics.clone(),
            read_topic: opts.read_topic.clone(),
            due: BinaryHeap::new(),
            n: 0,
            stats: Stats {
                delivery: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
                received: 0,
                reads_sent: 0,
                consumer_errors: 0,
            },
        };
        let handle = std::thread::Builder::new()
            .name(format!("sim-clients-{t}"))
            .spawn(move || driver.run())
            .context("starting a client thread")?;
        drivers.handles.push(handle);
    }
    if !wait_until(&shared, JOIN_LIMIT, || shared.assigned.load(Ordering::Relaxed) == users)? {
        bail!(
            "only {} of {users} clients got their partitions within {JOIN_LIMIT:?} (the broker's \
             group.initial.rebalance.delay.ms adds to each group's first join)",
            shared.assigned.load(Ordering::Relaxed)
        );
    }
    eprintln!(
        "sim: {users} clients (one consumer and group each, in {threads} thread(s)) in their groups after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(wait) = opts.start_after.checked_sub(started.elapsed()).filter(|w| !w.is_zero()) {
        eprintln!("sim: topics are there; writing the chat in {wait:?}");
        std::thread::sleep(wait);
    }

    let epoch = now_ms();
    let clock = shared.clock.get_or_init(|| Clock { start: Instant::now(), epoch, speed: opts.speed });
    let mut lateness = Lateness::new();
    let mut room_events = 0u64;
    let mut held = 0u64;
    let mut held_for = Duration::ZERO;
    for (i, e) in events.iter().enumerate() {
        let Target::Room(r) = e.target else { continue };
        let (due, now) = (clock.wall(e.at), clock.start.elapsed());
        if due > now {
            std::thread::sleep(due - now);
        }
        lateness.record(due, clock.start.elapsed());
        if let Some(&(slot, needed)) = script.leave_needs.get(&i) {
            let since = Instant::now();
            let acked = || shared.done[slot].load(Ordering::Acquire) >= needed;
            if !acked() {
                if !wait_until(&shared, HOLD_LIMIT, acked)? {
                    bail!(
                        "a leave at {} ms of chat time waited {HOLD_LIMIT:?} for {} of its user's reads, in vain: \
                         its client did not get a message it reads",
                        e.at,
                        needed - shared.done[slot].load(Ordering::Acquire)
                    );
                }
                held += 1;
                held_for += since.elapsed();
            }
        }
        // Stamped with the chat time at which it is actually sent (a held leave comes after
        // the reads it waited for), never before its planned time.
        let stamp = clock.epoch + (e.at as f64).max(clock.chat_ms()) as i64;
        let value = encode(e, clock.epoch);
        let record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(&room_topics[r as usize])
            .key(e.event.room_id().as_bytes())
            .payload(&value[..])
            .timestamp(stamp);
        crate::kafka::send(&rooms, record).context("producing the chat")?;
        room_events += 1;
        if let Some(&u) = script.close_at.get(&i) {
            shared.gone[u].store(true, Ordering::Release);
        }
    }
    crate::kafka::flush(&rooms, Duration::from_secs(120)).context("flushing the chat")?;
    let produced_in = clock.start.elapsed().as_secs_f64();
    eprintln!(
        "sim: produced {room_events} room events in {produced_in:.1} s ({:.0}/s); {lateness}",
        room_events as f64 / produced_in
    );
    let limit = clock.wall(script.max_delay_ms) + Duration::from_secs(60);
    if !wait_until(&shared, limit, || shared.done_total.load(Ordering::Acquire) >= script.reads)? {
        bail!(
            "only {} of the {} planned reads were sent within {limit:?} of the last room event: \
             some clients did not get the messages they read",
            shared.done_total.load(Ordering::Acquire),
            script.reads
        );
    }
    shared.stop.store(true, Ordering::Release);
    let stats = drivers.join();
    if stats.len() < threads {
        bail!("a client thread panicked");
    }
    crate::kafka::flush(&reads, Duration::from_secs(60)).context("flushing the reads")?;
    shared.check()?;
    let failed = shared.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let what = shared.failure.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        bail!("{failed} read(s) were not delivered, e.g. {what}");
    }
    let mut delivery = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds");
    let (mut received, mut sent, mut errors) = (0, 0, 0);
    for s in &stats {
        delivery.add(&s.delivery).expect("same bounds");
        received += s.received;
        sent += s.reads_sent;
        errors += s.consumer_errors;
    }
    let ms = |q: f64| delivery.value_at_quantile(q) as f64 / 1000.0;
    eprintln!(
        "sim: clients: {users} users, {users} consumers (groups {}user_<id>) in {threads} thread(s); {} records \
         received, {sent} reads sent; {held} leave(s) held for {:.1} s; {errors} consumer error(s); client delivery \
         delay (message produced -> client received, ms): p50 {:.1} p99 {:.1} max {:.1}",
        opts.room_prefix,
        received,
        held_for.as_secs_f64(),
        ms(0.5),
        ms(0.99),
        delivery.max() as f64 / 1000.0
    );
    Ok(epoch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::workload::{generate, Shape};

    #[test]
    fn the_script_has_every_read_and_holds_each_leave_for_the_leaver_s_earlier_reads() {
        let events = generate(&Shape { rooms: 5, members: 4, messages: 500, churn: 0.1, ..Shape::default() });
        let s = script(&events).unwrap();
        let reads = events.iter().filter(|e| e.target == Target::Read).count() as u64;
        assert_eq!(s.reads, reads);
        let planned: u64 =
            s.users.iter().flat_map(|u| u.plans.values()).flat_map(|m| m.values()).map(|v| v.len() as u64).sum();
        assert_eq!(planned, reads);
        let joins = events.iter().filter(|e| matches!(e.event, Event::Join { .. })).count();
        assert_eq!(s.users.len(), joins, "one user per join: the generator never rejoins");
        assert!(s.users.iter().all(|u| u.rooms.len() == 1));
        let leaves: Vec<usize> =
            events.iter().enumerate().filter(|(_, e)| matches!(e.event, Event::Leave { .. })).map(|(i, _)| i).collect();
        assert!(!leaves.is_empty());
        for i in leaves {
            let (slot, needed) = s.leave_needs[&i];
            // Every read a leaver ever makes comes before its leave.
            assert_eq!(needed, s.planned[slot]);
            assert!(s.close_at.contains_key(&i));
        }
    }
}

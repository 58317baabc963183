//! `allread demo`: the processor on an embedded broker (librdkafka's mock cluster) or a real
//! one, driven by a small simulated chat, printing receipts as they are emitted.
//!
//! The mock cluster may not show topics created after a client started, so the demo
//! creates every room topic before the processor starts (a real broker needs no such care);
//! it also lacks the CreateTopics API, so allread's internal topics are created up front too.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::config::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::json;

use crate::config::Config;
use crate::kafka::admin::{self, TopicSpec};
use crate::receipts::ReceiptComplete;
use crate::runtime::{self, now_ms, Hooks};

pub struct DemoOptions {
    /// A real broker; `None` starts the embedded mock cluster.
    pub bootstrap: Option<String>,
    /// How long the chat goes on.
    pub seconds: u64,
    pub seed: u64,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// One thing the simulated chat does at `at` (ms after start).
#[derive(Debug, Clone)]
enum Act {
    Join(usize, &'static str),
    Leave(usize, &'static str),
    Send(usize, &'static str, String),
    Read(usize, &'static str, String, bool),
    Garbage(usize),
}

const ROOMS: [&str; 3] = ["lobby", "team-42", "12345"];
const USERS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];

/// A deterministic script: everyone joins, people talk, read at human speeds (erin is slow
/// and sometimes never reads), someone leaves and comes back, one client sends garbage.
fn script(seconds: u64, seed: u64) -> Vec<(u64, Act)> {
    let mut rng = Rng(seed.max(1));
    let mut acts = Vec::new();
    let mut members: Vec<BTreeSet<&'static str>> = vec![BTreeSet::new(); ROOMS.len()];
    for (r, room_members) in members.iter_mut().enumerate() {
        for (i, u) in USERS.iter().enumerate() {
            if (r + i) % 4 != 3 {
                acts.push((i as u64 * 50, Act::Join(r, u)));
                room_members.insert(*u);
            }
        }
    }
    let end = seconds * 1000;
    let mut t = 500;
    let mut n = 0;
    while t < end {
        let r = rng.below(ROOMS.len() as u64) as usize;
        let senders: Vec<_> = members[r].iter().copied().collect();
        if senders.is_empty() {
            t += 400;
            continue;
        }
        let sender = senders[rng.below(senders.len() as u64) as usize];
        n += 1;
        let id = format!("m{n}");
        acts.push((t, Act::Send(r, sender, id.clone())));
        for u in senders.iter().filter(|u| **u != sender) {
            let slow = *u == "erin";
            if slow && rng.below(3) == 0 {
                continue; // erin never gets to this one
            }
            let delay = if slow { 2_000 + rng.below(6_000) } else { 200 + rng.below(2_500) };
            // Now and then a client marks just this one message as read.
            let one = rng.below(10) == 0;
            acts.push((t + delay, Act::Read(r, u, id.clone(), one)));
        }
        if n % 9 == 0 {
            let u = senders[rng.below(senders.len() as u64) as usize];
            if u != sender {
                acts.push((t + 300, Act::Leave(r, u)));
                acts.push((t + 4_000, Act::Join(r, u)));
            }
        }
        if n == 5 {
            acts.push((t + 100, Act::Garbage(r)));
        }
        t += 300 + rng.below(900);
    }
    acts.sort_by_key(|(at, _)| *at);
    acts
}

pub fn run_demo(opts: DemoOptions) -> anyhow::Result<()> {
    let run_id = format!("{:x}", now_ms() % 0xffff_ffff);
    let mock = match opts.bootstrap {
        None => Some(MockCluster::new(1).context("starting the embedded mock broker")?),
        Some(_) => None,
    };
    let (bootstrap, room_prefix) = match (&opts.bootstrap, &mock) {
        (Some(b), _) => (b.clone(), format!("chatroom_demo{run_id}-")), // this run's own rooms
        (None, Some(m)) => (m.bootstrap_servers(), "chatroom_".to_string()),
        (None, None) => unreachable!("a mock broker is started when no bootstrap is given"),
    };
    let state_dir = std::env::temp_dir().join(format!("allread-demo-{run_id}"));
    let mut cfg = Config {
        application_id: format!("allread-demo-{run_id}"),
        bootstrap_servers: bootstrap.clone(),
        state_dir: state_dir.clone(),
        ..Config::default()
    };
    cfg.topics.room_prefix = room_prefix.clone();
    cfg.topics.room_pattern = format!("^{}.*", room_prefix);
    cfg.topics.read =
        format!("{}read_events", if opts.bootstrap.is_some() { format!("demo{run_id}-") } else { String::new() });
    cfg.topics.output =
        format!("{}receipt_complete", if opts.bootstrap.is_some() { format!("demo{run_id}-") } else { String::new() });
    cfg.topics.partitions = 4;
    cfg.processing.metadata_refresh_ms = 1_000;
    if mock.is_some() {
        // librdkafka's mock cluster accepts transactions without honouring them.
        cfg.processing.guarantee = crate::config::Guarantee::AtLeastOnce;
    }

    // Topics: rooms and reads are the chat's; allread's own are created here too because
    // the mock broker has no CreateTopics (on a real broker allread would create them).
    let mut specs: Vec<TopicSpec> = ROOMS
        .iter()
        .map(|r| TopicSpec {
            name: format!("{room_prefix}{r}"),
            partitions: 1,
            replication: 1,
            exact_partitions: false,
            config: vec![],
        })
        .collect();
    specs.push(TopicSpec {
        name: cfg.topics.read.clone(),
        partitions: 2,
        replication: 1,
        exact_partitions: false,
        config: vec![],
    });
    specs.extend(admin::owned_topics(&cfg).into_iter().map(|mut s| {
        s.config.clear();
        s
    }));
    if let Some(m) = &mock {
        for s in &specs {
            m.create_topic(&s.name, s.partitions, 1).context("creating a topic on the mock broker")?;
        }
    } else {
        admin::ensure_topics(&crate::kafka::base_client_config(&cfg), &specs).context("creating the demo's topics")?;
    }

    println!(
        "allread demo: {} rooms, {} users, {} s of chat on {}",
        ROOMS.len(),
        USERS.len(),
        opts.seconds,
        if opts.bootstrap.is_some() { bootstrap.as_str() } else { "an embedded mock broker" }
    );
    println!("  input: {}<room> and {}, output: {}", room_prefix, cfg.topics.read, cfg.topics.output);

    let sent_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let receipts: Arc<Mutex<Vec<ReceiptComplete>>> = Arc::default();
    let started = Instant::now();
    let hooks = Hooks {
        on_receipt: Some(Box::new({
            let sent_at = sent_at.clone();
            let receipts = receipts.clone();
            move |r: &ReceiptComplete| {
                let key = format!("{}/{}", r.room_id, r.message_id);
                let after = sent_at
                    .lock()
                    .unwrap()
                    .get(&key)
                    .map(|t| format!("{:.1} s after sending", t.elapsed().as_secs_f64()))
                    .unwrap_or_default();
                println!(
                    "  [{:>5.1}s] receipt_complete  room {:<8} {:<4} from {:<6} seq {:<3} read by all {} {}",
                    started.elapsed().as_secs_f64(),
                    r.room_id,
                    r.message_id,
                    r.sender_id,
                    r.seq,
                    r.required_readers,
                    after
                );
                receipts.lock().unwrap().push(r.clone());
            }
        })),
        ..Hooks::default()
    };
    let shutdown = Arc::new(AtomicBool::new(false));
    let processor = {
        let cfg = cfg.clone();
        let shutdown = shutdown.clone();
        std::thread::Builder::new().name("allread".into()).spawn(move || runtime::run(cfg, shutdown, hooks))?
    };

    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "1")
        .set("partitioner", "murmur2_random")
        .create()
        .context("creating the chat's producer")?;
    let mut sent = 0usize;
    let mut reads = 0usize;
    for (at, act) in script(opts.seconds, opts.seed) {
        let due = started + Duration::from_millis(at);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let now = now_ms();
        let (topic, key, value) = match &act {
            Act::Join(r, u) => (
                format!("{room_prefix}{}", ROOMS[*r]),
                ROOMS[*r],
                json!({"type": "join", "user_id": u, "at": now}).to_string(),
            ),
            Act::Leave(r, u) => {
                println!("  [{:>5.1}s] {u} leaves {}", started.elapsed().as_secs_f64(), ROOMS[*r]);
                (
                    format!("{room_prefix}{}", ROOMS[*r]),
                    ROOMS[*r],
                    json!({"type": "leave", "user_id": u, "at": now}).to_string(),
                )
            }
            Act::Send(r, u, id) => {
                sent += 1;
                sent_at.lock().unwrap().insert(format!("{}/{id}", ROOMS[*r]), Instant::now());
                let value = json!({"type": "message", "message_id": id, "sender_id": u, "sent_at": now, "body": "(not logged)"});
                (format!("{room_prefix}{}", ROOMS[*r]), ROOMS[*r], value.to_string())
            }
            Act::Read(r, u, id, one) => {
                reads += 1;
                let mut value = json!({"room_id": ROOMS[*r], "user_id": u, "message_id": id, "read_at": now});
                if *one {
                    value["scope"] = "message".into();
                }
                (cfg.topics.read.clone(), ROOMS[*r], value.to_string())
            }
            Act::Garbage(r) => {
                println!(
                    "  [{:>5.1}s] a client sends a malformed record to {}: it goes to {}",
                    started.elapsed().as_secs_f64(),
                    ROOMS[*r],
                    cfg.dlq_topic()
                );
                (format!("{room_prefix}{}", ROOMS[*r]), ROOMS[*r], r#"{"type":"message","message_id":"#.to_string())
            }
        };
        producer
            .send(BaseRecord::to(&topic).key(key).payload(&value))
            .map_err(|(e, _)| e)
            .context("producing chat events")?;
    }
    producer.flush(Duration::from_secs(10)).context("flushing chat events")?;
    // Let the last reads land.
    std::thread::sleep(Duration::from_secs(3));
    shutdown.store(true, Ordering::Relaxed);
    let report = processor.join().map_err(|_| anyhow::anyhow!("the processor thread panicked"))??;
    let _ = std::fs::remove_dir_all(&state_dir);

    let done = receipts.lock().unwrap();
    let mut per_room: BTreeMap<&str, usize> = BTreeMap::new();
    for r in done.iter() {
        *per_room.entry(&r.room_id).or_default() += 1;
    }
    println!();
    println!("summary: {sent} messages, {reads} reads sent; {} receipt_complete emitted ({}); {} message(s) still wait for a reader; {} record(s) dead-lettered",
        done.len(),
        per_room.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>().join(", "),
        sent.saturating_sub(done.len()),
        report.dead_lettered);
    println!(
        "engine: {} parked reads applied, {} reads by non-members, {} duplicates",
        report.outcomes.parked_read_applied, report.outcomes.read_by_non_member, report.outcomes.duplicate_message
    );
    Ok(())
}

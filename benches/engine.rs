//! Throughput of the receipt engine on RocksDB alone (no Kafka), with state well beyond the
//! block cache, on the tasks' store settings (no WAL, each commit written by the background
//! writer thread). Prints figures; asserts nothing about speed.
//!
//!     cargo bench --bench engine                 # all cases, 10M members each
//!     cargo bench --bench engine -- --members 1000000 --events 1000000 a
//!     cargo bench --bench engine -- --cache-entries 12000000 b   # engine cache holding all state
//!     cargo bench --bench engine -- --foreground-writes a        # commits written on the engine's thread
//!
//! Cases: (a) rooms of 10 members, 1 message to 9 reads; (b) rooms of 1,000 members;
//! (c) one room of 10,000 members taking all traffic, beside 10M members of other rooms.
//! The engine commits every 10,000 events (about a 100 ms commit interval at 100k events/s)
//! and ticks every 100,000.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::path::Path;
use std::time::Instant;

use allread::receipts::{Engine, EngineConfig, Event, Id, ReadScope};
use allread::store::rocks::RocksStore;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const COMMIT_EVERY: usize = 10_000;
const TICK_EVERY: usize = 100_000;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: fast, deterministic, good enough to pick rooms and users.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn cpu_seconds() -> f64 {
    // utime + stime of this process, from /proc (Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries.flatten().filter_map(|e| e.metadata().ok()).filter(|m| m.is_file()).map(|m| m.len()).sum()
        })
        .unwrap_or(0)
}

struct Case {
    name: &'static str,
    rooms: u64,
    room_size: u64,
    /// Rooms that take the traffic (the first ones).
    hot_rooms: u64,
}

/// The engine's in-memory room cache, in state entries (`--cache-entries`, default
/// [`DEFAULT_CACHE_ENTRIES`]).
static CACHE_ENTRIES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The cache BENCHMARKS.md's figures of this benchmark were measured with: 2 million entries,
/// the engine's default per task until an instance's tasks came to share one budget (of a
/// million: a single task now has that).
const DEFAULT_CACHE_ENTRIES: usize = 2_000_000;

/// `--foreground-writes`: each commit is written on the engine's thread, not the writer's.
static FOREGROUND_WRITES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn open(path: &Path) -> Engine<RocksStore> {
    // 128 MiB for the block cache and memtables together: the state (hundreds of MB) is well
    // beyond it.
    let mut opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb {
        memory_bytes: 128 << 20,
        write_buffer_bytes: 64 << 20,
    });
    if FOREGROUND_WRITES.get() == Some(&true) {
        opts.background_writes = None;
    }
    let store = RocksStore::open(path, &opts).expect("open RocksDB");
    let config = EngineConfig {
        cache_entries: CACHE_ENTRIES.get().copied().unwrap_or(DEFAULT_CACHE_ENTRIES),
        ..EngineConfig::default()
    };
    Engine::new(store, config)
}

/// Resident memory of this process now, in MB.
fn current_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn drive(engine: &mut Engine<RocksStore>, events: &[Event], now: &mut i64) -> (f64, f64) {
    let cpu0 = cpu_seconds();
    let start = Instant::now();
    for (i, e) in events.iter().enumerate() {
        engine.apply(e, *now).unwrap();
        engine.take_emitted();
        if (i + 1) % COMMIT_EVERY == 0 {
            engine.commit(Vec::new()).unwrap();
            *now += 100;
        }
        if (i + 1) % TICK_EVERY == 0 {
            engine.tick(*now).unwrap();
        }
    }
    engine.commit(Vec::new()).unwrap();
    // The clock stops once the last commit is in the store.
    engine.wait_written().unwrap();
    (start.elapsed().as_secs_f64(), cpu_seconds() - cpu0)
}

fn joins(case: &Case) -> Vec<Event> {
    let mut out = Vec::with_capacity((case.rooms * case.room_size) as usize);
    for r in 0..case.rooms {
        let room_id: Id = format!("room-{r}").into();
        for u in 0..case.room_size {
            out.push(Event::Join { room_id: room_id.clone(), user_id: format!("user-{r}-{u}").into(), at: 0 });
        }
    }
    out
}

/// Messages to random hot rooms, each followed by 9 `up_to` reads by other members spread
/// over the next ~2,000 events, as reads trail messages in a real chat.
fn traffic(case: &Case, total: usize, rng: &mut Rng) -> Vec<Event> {
    let mut out = Vec::with_capacity(total);
    let mut due: BinaryHeap<Reverse<(usize, u64, u64, u64)>> = BinaryHeap::new(); // (at, room, user, msg)
    let mut msg = 0u64;
    while out.len() < total {
        let i = out.len();
        if let Some(&Reverse((at, room, user, m))) = due.peek() {
            if at <= i {
                due.pop();
                out.push(Event::Read {
                    room_id: format!("room-{room}").into(),
                    user_id: format!("user-{room}-{user}").into(),
                    message_id: format!("m{m}").into(),
                    read_at: 0,
                    scope: ReadScope::UpTo,
                });
                continue;
            }
        }
        let room = rng.below(case.hot_rooms);
        let sender = rng.below(case.room_size);
        msg += 1;
        out.push(Event::Message {
            room_id: format!("room-{room}").into(),
            message_id: format!("m{msg}").into(),
            sender_id: format!("user-{room}-{sender}").into(),
            sent_at: 0,
        });
        for k in 1..=9u64 {
            let reader = (sender + k * (1 + rng.below(case.room_size.max(10) / 10))) % case.room_size;
            due.push(Reverse((i + 1 + rng.below(2_000) as usize, room, reader, msg)));
        }
    }
    out
}

fn run(case: &Case, events: usize, workdir: &Path) {
    let path = workdir.join(case.name);
    let _ = std::fs::remove_dir_all(&path);
    let mut engine = open(&path);
    let mut now = 1_700_000_000_000i64;
    let members = case.rooms * case.room_size;
    let setup = joins(case);
    let (secs, cpu) = drive(&mut engine, &setup, &mut now);
    drop(setup);
    println!(
        "{:<28} setup: {members:>10} joins in {secs:>6.1}s = {:>9.0} joins/s ({:.0} per CPU-s)",
        case.name,
        members as f64 / secs,
        members as f64 / cpu
    );
    // Start cold: reopen so that nothing of the setup is in the engine's cache.
    drop(engine);
    let mut engine = open(&path);
    let mut rng = Rng(0x5eed_0000 + case.room_size);
    let load = traffic(case, events, &mut rng);
    let (secs, cpu) = drive(&mut engine, &load, &mut now);
    let o = *engine.outcomes();
    let (rooms_cached, entries_cached) = engine.cache_usage();
    println!(
        "{:<28} events: {events:>10} in {secs:>6.1}s = {:>9.0} events/s ({:.0} per CPU-s); receipts {}, pending at end {}, rooms cached {rooms_cached}, entries cached {entries_cached}",
        case.name,
        events as f64 / secs,
        events as f64 / cpu,
        o.receipt_emitted,
        o.message_applied - o.receipt_emitted - o.trivial_suppressed - o.pending_expired,
    );
    let rss = current_rss_mb();
    let store = engine.into_store();
    let keys = store.property_int("rocksdb.estimate-num-keys").unwrap_or(0);
    println!(
        "{:<28} state: ~{keys} keys, {:.1} MB on disk (SST + WAL); process RSS {rss:.0} MB with {entries_cached} entries cached",
        case.name,
        dir_bytes(&path) as f64 / 1e6
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&path);
}

/// Bytes on disk per member and per pending message, after flush and full compaction.
fn footprint(workdir: &Path, n: u64) {
    let measure = |name: &str, events: Vec<Event>| -> f64 {
        let path = workdir.join(name);
        let _ = std::fs::remove_dir_all(&path);
        let mut engine = open(&path);
        let mut now = 0;
        drive(&mut engine, &events, &mut now);
        let store = engine.into_store();
        store.flush().unwrap();
        store.compact();
        let sst = store.property_int("rocksdb.live-sst-files-size").unwrap_or(0);
        drop(store);
        let _ = std::fs::remove_dir_all(&path);
        sst as f64
    };
    let members = measure(
        "footprint-members",
        (0..n)
            .map(|i| Event::Join {
                room_id: format!("room-{}", i / 10).into(),
                user_id: format!("user-{i}").into(),
                at: 0,
            })
            .collect(),
    );
    // Rooms of 2 members where one never reads: every message stays pending.
    let rooms = n / 10;
    let mut events: Vec<Event> = (0..rooms)
        .flat_map(|r| {
            ["a", "b"].map(|u| Event::Join {
                room_id: format!("room-{r}").into(),
                user_id: format!("user-{r}-{u}").into(),
                at: 0,
            })
        })
        .collect();
    for i in 0..n {
        let r = i % rooms;
        events.push(Event::Message {
            room_id: format!("room-{r}").into(),
            message_id: format!("m{i}").into(),
            sender_id: format!("user-{r}-a").into(),
            sent_at: 1_700_000_000_000,
        });
    }
    let with_pending = measure("footprint-pending", events);
    let base = members / n as f64 * (2 * rooms) as f64;
    println!(
        "footprint: {:.1} bytes per member, {:.1} bytes per pending message (SST, after compaction)",
        members / n as f64,
        (with_pending - base) / n as f64
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let flag = |name: &str, default: u64| -> u64 {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let members = flag("--members", 10_000_000);
    let events = flag("--events", 5_000_000) as usize;
    if let Some(n) =
        args.iter().position(|a| a == "--cache-entries").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    {
        CACHE_ENTRIES.set(n).unwrap();
    }
    FOREGROUND_WRITES.set(args.iter().any(|a| a == "--foreground-writes")).unwrap();
    let wanted: Vec<&str> =
        args.iter().map(String::as_str).filter(|a| matches!(*a, "a" | "b" | "c" | "footprint")).collect();
    let want = |c: &str| wanted.is_empty() || wanted.contains(&c);
    let workdir = std::env::var("ALLREAD_BENCH_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir().join("allread-bench"));
    std::fs::create_dir_all(&workdir).unwrap();
    println!(
        "allread engine benchmark: {members} members per case, {events} events, engine cache {} entries, commits \
         written {}, state in {}",
        CACHE_ENTRIES.get().copied().unwrap_or(DEFAULT_CACHE_ENTRIES),
        if FOREGROUND_WRITES.get() == Some(&true) { "on the engine's thread" } else { "in the background" },
        workdir.display()
    );
    if want("a") {
        run(
            &Case { name: "(a) rooms of 10", rooms: members / 10, room_size: 10, hot_rooms: members / 10 },
            events,
            &workdir,
        );
    }
    if want("b") {
        run(
            &Case { name: "(b) rooms of 1,000", rooms: members / 1_000, room_size: 1_000, hot_rooms: members / 1_000 },
            events,
            &workdir,
        );
    }
    if want("c") {
        run(
            &Case { name: "(c) one room of 10,000", rooms: members / 10_000, room_size: 10_000, hot_rooms: 1 },
            events,
            &workdir,
        );
    }
    if want("footprint") {
        footprint(&workdir, (members / 10).max(10_000));
    }
}

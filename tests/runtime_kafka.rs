//! `allread run` against the real broker: the built binary, random topic names per test.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::workload::{join, leave, message, read, receipt_set, Workload};
use common::{Chat, Reader, Record, Setup};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);

fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.json()["message_id"].as_str().unwrap_or("?").to_string()).collect()
}

#[test]
fn the_spec_worked_example_end_to_end() {
    let s = Setup::new("example");
    let room = s.room_topic("12345");
    common::create_topic(&s.bootstrap, &room, 1);
    let allread = s.start();
    let chat = Chat::new(&s.bootstrap);
    let out = Reader::new(&s.bootstrap, &s.output);

    for u in ["alice", "bob", "carol"] {
        chat.json(&room, "12345", &join(u));
    }
    chat.json(&room, "12345", &message("m1", "alice"));
    chat.json(&room, "12345", &message("m2", "alice"));
    chat.flush();
    std::thread::sleep(Duration::from_millis(500));
    chat.json(&s.read_topic, "12345", &read("12345", "bob", "m2"));
    chat.json(&s.read_topic, "12345", &read("12345", "carol", "m1"));
    chat.flush();
    let first = out.read(1, WAIT);
    assert_eq!(ids(&first), ["m1"], "log: {}", allread.log_text());
    let r = first[0].json();
    assert_eq!(r["room_id"], "12345");
    assert_eq!(r["sender_id"], "alice");
    assert_eq!(r["seq"], 1);
    assert_eq!(r["required_readers"], 2);
    assert_eq!(r["sent_at"], "2026-11-28T10:00:00.000Z");
    assert_eq!(first[0].key.as_deref(), Some("12345"));

    // Mid-stream, the state queries answer from the task that owns the room.
    let port = s.http_port;
    let (status, ready) = common::http_json(port, "/readyz");
    assert_eq!((status, &ready["ready"]), (200, &json!(true)));
    let (status, view) = common::http_json(port, "/rooms/12345");
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["last_seq"], 2);
    assert_eq!(view["frontier"], 1);
    assert_eq!(view["pending_count"], 1);
    assert_eq!(view["oldest_pending"]["message_id"], "m2");
    assert_eq!(
        view["members"],
        json!([{"user_id": "carol", "read_position": 1}, {"user_id": "alice", "read_position": 2}, {"user_id": "bob", "read_position": 2}])
    );
    let (_, m2) = common::http_json(port, "/rooms/12345/messages/m2");
    assert_eq!((&m2["status"], &m2["required_readers"]), (&json!("pending"), &json!(2)));
    assert_eq!((&m2["readers"], &m2["missing"]), (&json!(["alice", "bob"]), &json!(["carol"])));
    let (_, m1) = common::http_json(port, "/rooms/12345/messages/m1");
    assert_eq!(m1["status"], "complete");
    let (_, carol) = common::http_json(port, "/rooms/12345/users/carol");
    assert_eq!((&carol["read_position"], &carol["unread"]), (&json!(1), &json!(1)));
    assert_eq!(common::http_json(port, "/rooms/12345/messages/nope").0, 404);
    assert_eq!(common::http_json(port, "/rooms/elsewhere").0, 404);
    assert_eq!(common::http_json(port, "/no/such/path").0, 404);

    chat.json(&room, "12345", &leave("carol"));
    chat.json(&room, "12345", &join("dave"));
    chat.flush();
    let second = out.read(1, WAIT);
    assert_eq!(ids(&second), ["m2"]);
    assert!(out.read(1, Duration::from_secs(2)).is_empty(), "nothing more is complete");
    assert!(!allread.log_text().contains("secret"), "a message body reached the log");
    // Every assigned partition was forwarded to the record queue, whose records are taken in
    // batches; one that was not would be taken one at a time, with this warning.
    assert!(
        !allread.log_text().contains("came through the consumer's own queue"),
        "a partition was not forwarded to the record queue"
    );

    // After: the counters match what was sent (engine outcomes are exported at commit).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let text = loop {
        let (_, text) = common::http_get(port, "/metrics").unwrap();
        let exported =
            common::metric(&text, r#"allread_engine_outcomes_total{outcome="receipt_emitted"}"#) == Some(2.0);
        let ticked = text.contains("allread_cached_members{task=");
        if (exported && ticked) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (series, value) in [
        (r#"allread_input_records_total{source="room"}"#, 7.0),
        (r#"allread_input_records_total{source="read"}"#, 2.0),
        ("allread_receipts_emitted_total", 2.0),
        ("allread_corrupt_repartition_records_total", 0.0),
        (r#"allread_engine_outcomes_total{outcome="receipt_emitted"}"#, 2.0),
        (r#"allread_engine_outcomes_total{outcome="join_applied"}"#, 4.0),
        (r#"allread_engine_outcomes_total{outcome="leave_applied"}"#, 1.0),
        (r#"allread_engine_outcomes_total{outcome="message_applied"}"#, 2.0),
        (r#"allread_engine_outcomes_total{outcome="read_applied"}"#, 2.0),
        ("allread_dead_lettered_records_total", 0.0),
        ("allread_message_to_receipt_seconds_count", 2.0),
        ("allread_last_read_to_receipt_seconds_count", 2.0),
        ("allread_tasks", 4.0),
        // Nothing waits once everything is applied.
        ("allread_fetched_input_records", 0.0),
        ("allread_buffered_input_records", 0.0),
    ] {
        assert_eq!(common::metric(&text, series), Some(value), "{series} in\n{text}");
    }
    // Every input record reached its task once: through the repartition topic, or (its task
    // being here) directly.
    let routed = common::metric(&text, "allread_routed_records_total").unwrap_or(-1.0);
    let shortcut = common::metric(&text, "allread_shortcut_records_total").unwrap_or(-1.0);
    assert_eq!(routed + shortcut, 9.0, "routed {routed}, shortcut {shortcut}");
    let busy = common::metric(&text, "allread_processing_thread_cpu_seconds_total").unwrap_or(-1.0);
    assert!(busy > 0.0, "the processing thread's CPU is counted every tick: {busy}");
    assert!(!text.contains("12345"), "a room id became a metric label");
    let task = allread::kafka::partitioner::partition_for(b"12345", 4);
    assert_eq!(
        common::metric(&text, &format!(r#"allread_cached_members{{task="{task}"}}"#)),
        Some(3.0),
        "alice, bob, dave"
    );
    assert!(
        common::metric(&text, &format!(r#"allread_rocksdb_estimated_keys{{task="{task}"}}"#)).is_some_and(|v| v > 0.0)
    );
    assert!(common::metric(&text, "process_resident_memory_bytes").is_some_and(|v| v > 0.0));
}

#[test]
fn a_broker_not_there_at_start_is_retried_and_sigterm_still_exits_cleanly() {
    // README: a broker that is down at start is retried with backoff, never a crash; and a
    // SIGTERM meanwhile still ends the process with 0.
    let mut s = Setup::new("nobroker");
    s.bootstrap = format!("127.0.0.1:{}", common::free_port());
    let allread = s.start();
    let deadline = std::time::Instant::now() + WAIT;
    while !allread.log_text().contains("Kafka not ready; retrying") {
        assert!(std::time::Instant::now() < deadline, "no retry; log: {}", allread.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = allread.log.clone();
    let status = allread.terminate(Duration::from_secs(40));
    assert!(status.success(), "{status:?}; log: {}", std::fs::read_to_string(log).unwrap_or_default());
}

#[test]
fn a_room_topic_created_after_start_is_picked_up() {
    let s = Setup::new("newroom");
    let allread = s.start();
    std::thread::sleep(Duration::from_secs(3));
    let room = s.room_topic("late");
    common::create_topic(&s.bootstrap, &room, 1);
    let chat = Chat::new(&s.bootstrap);
    for v in [join("a"), join("b"), message("m1", "a")] {
        chat.json(&room, "late", &v);
    }
    chat.json(&s.read_topic, "late", &read("late", "b", "m1"));
    chat.flush();
    let out = Reader::new(&s.bootstrap, &s.output);
    assert_eq!(ids(&out.read(1, WAIT)), ["m1"], "log: {}", allread.log_text());
}

#[test]
fn early_reads_duplicates_and_non_member_reads() {
    let s = Setup::new("early");
    let room = s.room_topic("r");
    common::create_topic(&s.bootstrap, &room, 1);
    let _allread = s.start();
    let chat = Chat::new(&s.bootstrap);
    let out = Reader::new(&s.bootstrap, &s.output);

    // bob's read arrives before the message it names, and eve is no member.
    chat.json(&s.read_topic, "r", &read("r", "bob", "m1"));
    chat.json(&s.read_topic, "r", &read("r", "eve", "m2"));
    chat.flush();
    std::thread::sleep(Duration::from_millis(300));
    for v in [join("alice"), join("bob"), message("m1", "alice"), message("m1", "alice"), message("m2", "alice")] {
        chat.json(&room, "r", &v);
    }
    chat.flush();
    assert_eq!(ids(&out.read(1, WAIT)), ["m1"], "the parked read completes m1, once");
    assert!(
        out.read(1, Duration::from_secs(3)).is_empty(),
        "eve's read does not complete m2; the duplicate m1 emits nothing"
    );
    chat.json(&s.read_topic, "r", &read("r", "bob", "m2"));
    chat.flush();
    assert_eq!(ids(&out.read(1, WAIT)), ["m2"]);
}

#[test]
fn undecodable_records_are_dead_lettered_with_headers_and_the_rest_completes() {
    let s = Setup::new("dlq");
    let room = s.room_topic("r");
    common::create_topic(&s.bootstrap, &room, 1);
    let _allread = s.start();
    let chat = Chat::new(&s.bootstrap);
    chat.json(&room, "r", &join("a"));
    chat.send_with_headers(&room, "r", "not json at all", &[("trace-id", "t-1")]);
    chat.json(&room, "r", &join("b"));
    chat.send(&room, "r", r#"{"type":"typing","user_id":"a","at":1}"#);
    chat.json(&room, "r", &json!({"type": "join", "room_id": "elsewhere", "user_id": "c", "at": 1}));
    chat.json(&room, "r", &message("m1", "a"));
    chat.send(&s.read_topic, "r", r#"{"room_id":"r","user_id":"b","message_id":"m1","read_at":1,"scope":"all"}"#);
    chat.json(&s.read_topic, "r", &read("r", "b", "m1"));
    chat.flush();

    let out = Reader::new(&s.bootstrap, &s.output);
    let done = out.read(1, WAIT);
    assert_eq!(ids(&done), ["m1"]);
    assert_eq!(done[0].json()["required_readers"], 1, "c's join in another room was rejected");

    let (_, metrics) = common::http_get(s.http_port, "/metrics").unwrap();
    assert_eq!(common::metric(&metrics, "allread_dead_lettered_records_total"), Some(4.0));
    assert_eq!(common::metric(&metrics, r#"allread_decode_failures_total{kind="not_json"}"#), Some(1.0));

    let dlq = Reader::new(&s.bootstrap, &s.dlq()).read(4, WAIT);
    let mut by_kind: BTreeMap<String, Record> = BTreeMap::new();
    for r in dlq {
        by_kind.insert(r.header("allread.error.kind").unwrap().to_string(), r);
    }
    assert_eq!(
        by_kind.keys().cloned().collect::<Vec<_>>(),
        ["not_json", "room_mismatch", "unknown_scope", "unknown_type"]
    );
    let garbage = &by_kind["not_json"];
    assert_eq!(garbage.payload, b"not json at all", "the record is dead-lettered unchanged");
    assert_eq!(garbage.key.as_deref(), Some("r"));
    assert_eq!(garbage.header("trace-id"), Some("t-1"), "the producer's own headers are kept");
    assert_eq!(garbage.header("allread.source.topic"), Some(room.as_str()));
    assert_eq!(garbage.header("allread.source.partition"), Some("0"));
    assert_eq!(garbage.header("allread.source.offset"), Some("1"));
    assert!(garbage.header("allread.error.message").unwrap().contains("not JSON"));
    assert_eq!(by_kind["unknown_scope"].header("allread.source.topic"), Some(s.read_topic.as_str()));
}

#[test]
fn thousands_of_generated_events_give_exactly_the_expected_receipts() {
    let (shortcut, routed) = bulk("bulk", "");
    assert!(shortcut > 0.0, "the tasks are all here: records skip the repartition topic");
    assert!(routed < shortcut, "only records routed while a task restored (and what waited for them) go the long way");
}

#[test]
fn input_routed_while_transactions_commit_is_applied_meanwhile_and_its_output_goes_into_the_next_one_exactly_once() {
    // Under exactly_once each commit's broker round trips run on their own thread; meanwhile
    // the loop goes on routing and applying input, and holds what that produces (receipts,
    // dead letters, and without the local shortcut repartition records) for the next
    // transaction (runtime::processor). Tens of thousands of events, with undecodable records
    // among them, stream in while allread commits every 10 ms, so input keeps arriving during
    // commits: each record must be applied once, and everything held must be sent.
    for (name, extra) in [("overlap", ""), ("overlaplong", "local_shortcut = false")] {
        let s = Setup::new(name);
        let w = Workload::new(16, 8_000, 29);
        assert!(w.events() > 20_000, "tens of thousands of events: {}", w.events());
        let chat = Chat::new(&s.bootstrap);
        w.produce_joins(&s, &chat);
        let config = s.config(&format!("commit_interval_ms = 10\n{extra}"));
        let allread = common::Allread::start(&config, &s.dir.path().join("allread.log"));
        w.await_members(&s, &[s.http_port], WAIT);
        // In 100 chunks, with an undecodable record after every 10 steps: only a few percent
        // of the input is routed while a transaction completes here, so many are needed for
        // some to be held (about 40 of the 800 were, with the shortcut, when this was written).
        let chunk = w.steps.len().div_ceil(100);
        let mut bad = 0;
        for from in (0..w.steps.len()).step_by(chunk) {
            for (i, step) in w.steps[from..(from + chunk).min(w.steps.len())].iter().enumerate() {
                chat.json(&s.room_topic(&step.room), &step.room, &step.message);
                for v in &step.reads {
                    chat.json(&s.read_topic, &step.room, v);
                }
                if i % 10 == 9 {
                    chat.send(&s.read_topic, "room0", "not json");
                    bad += 1;
                }
            }
            chat.flush();
            std::thread::sleep(Duration::from_millis(20));
        }
        chat.flush();
        expect_exactly(&Reader::new(&s.bootstrap, &s.output), &w, &allread);
        let dlq = Reader::new(&s.bootstrap, &s.dlq());
        let mut letters = dlq.read(bad, WAIT);
        letters.extend(dlq.drain(Duration::from_secs(1)));
        assert_eq!(letters.len(), bad, "{name}: every undecodable record dead-lettered, once");
        let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
        let metric = |series: &str| common::metric(&text, series).unwrap_or(0.0);
        let commits = metric(r#"allread_transactions_total{outcome="committed"}"#);
        assert!(commits >= 20.0, "{name}: the stream took many commits: {commits}");
        assert_eq!(metric("allread_dead_lettered_records_total"), bad as f64, "{name}: each once");
        let held = metric("allread_held_output_records_total");
        assert!(held > 0.0, "{name}: output was made while transactions completed, and sent after: {held}");
    }
}

#[test]
fn a_backlog_routed_under_a_small_bound_per_partition_gives_exactly_the_expected_receipts() {
    // An input partition holding 20 records waiting to be routed is paused until routing has
    // taken 10 of them: over a backlog of thousands of records, partitions are paused and
    // resumed again and again, and librdkafka drops what it had prefetched of each paused one
    // and fetches it again. Nothing may be lost, applied twice, or left behind paused, and
    // no partition may hold more than the bound and one poll (200 records).
    let s = Setup::new("bound");
    let w = Workload::new(12, 1_000, 11);
    let allread = start_on_backlog(&s, &w, "buffered_records_per_partition = 20\nmax_poll_records = 200");
    // The most one partition held, as the gauge gives it for each tick.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let peak = {
        let (done, port) = (done.clone(), s.http_port);
        std::thread::spawn(move || {
            let mut peak = 0.0f64;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok((_, text)) = common::http_get(port, "/metrics") {
                    let p = common::metric(&text, "allread_buffered_input_records_partition_peak").unwrap_or(0.0);
                    peak = peak.max(p);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    expect_exactly(&Reader::new(&s.bootstrap, &s.output), &w, &allread);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak = peak.join().unwrap();
    let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
    let pauses = common::metric(&text, "allread_input_pauses_total").unwrap_or(0.0);
    assert!(pauses >= 10.0, "partitions were paused again and again: {pauses}");
    // Paused in the consumer, a partition delivers nothing more: it holds at most the bound
    // and the rest of the poll that reached it (unpaused, one held 1,185 records here).
    assert!(peak > 0.0 && peak <= 220.0, "the most one partition held: {peak}");
}

#[test]
fn the_engine_cache_is_one_budget_shared_by_the_instance_tasks() {
    // 1,200 state entries for the instance: each of its 4 tasks keeps 300, and evicts down to
    // 270 after a commit. The chat's rooms end with about 2,500 (432-819 a task), so rooms are
    // evicted and loaded again from RocksDB all through the backlog, and every receipt must
    // still come. A task that took the whole budget would evict nothing.
    const BUDGET: usize = 1_200;
    let s = Setup::new("cache");
    let w = Workload::new(24, 2_000, 5);
    let allread = start_on_backlog(&s, &w, &format!("\n[engine]\ncache_entries = {BUDGET}\n"));
    expect_exactly(&Reader::new(&s.bootstrap, &s.output), &w, &allread);
    // The gauges as a tick after the last commit set them: that commit exported the last
    // receipt's outcome, and evicted.
    let scrape = || common::http_get(s.http_port, "/metrics").map(|(_, text)| text).unwrap_or_default();
    let ticks = |text: &str| common::metric(text, "allread_processing_thread_cpu_seconds_total").unwrap_or(0.0);
    let emitted = w.expected.len() as f64;
    let deadline = std::time::Instant::now() + WAIT;
    let mut exported_at: Option<f64> = None;
    let text = loop {
        let text = scrape();
        match exported_at {
            Some(at) if ticks(&text) > at => break text,
            None if common::metric(&text, r#"allread_engine_outcomes_total{outcome="receipt_emitted"}"#)
                == Some(emitted) =>
            {
                exported_at = Some(ticks(&text))
            }
            _ => {}
        }
        assert!(std::time::Instant::now() < deadline, "no tick after the last commit: {}", allread.log_text());
        std::thread::sleep(Duration::from_millis(100));
    };
    let per_task: Vec<f64> =
        (0..4).filter_map(|t| common::metric(&text, &format!(r#"allread_cached_entries{{task="{t}"}}"#))).collect();
    assert_eq!(per_task.len(), 4, "a gauge per task:\n{text}");
    let held: f64 = per_task.iter().sum();
    assert!(held > 0.0 && held <= BUDGET as f64, "cached entries per task: {per_task:?}");
}

/// Writes all of `w` to the topics, then starts allread with `settings` (under `[processing]`,
/// see `Setup::config`) on that backlog.
fn start_on_backlog(s: &Setup, w: &Workload, settings: &str) -> common::Allread {
    let chat = Chat::new(&s.bootstrap);
    w.produce_joins(s, &chat);
    w.produce_all(s, &chat);
    common::Allread::start(&s.config(settings), &s.dir.path().join("allread.log"))
}

/// Reads `out` until every receipt `w` expects is in (and 2 s more): exactly those, each once.
fn expect_exactly(out: &Reader, w: &Workload, allread: &common::Allread) {
    let mut got = out.read(w.expected.len(), WAIT);
    got.extend(out.drain(Duration::from_secs(2)));
    let (set, count) = receipt_set(&got);
    assert_eq!(set, w.expected, "log: {}", allread.log_text());
    assert_eq!(count, set.len(), "no receipt twice");
}

/// Waits until `/readyz` answers 200: every task is assigned and restored.
fn await_ready(port: u16, allread: &common::Allread) {
    let deadline = std::time::Instant::now() + WAIT;
    while !matches!(common::http_get(port, "/readyz"), Ok((200, _))) {
        assert!(std::time::Instant::now() < deadline, "never ready: {}", allread.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_new_deployment_sends_no_barrier_every_record_takes_the_shortcut() {
    // A new deployment's repartition partitions are empty: the probe finds them drained and
    // the lanes open without a barrier (see runtime::shortcut). New room topics appear after
    // the start, so every lane also closes and is probed again when they are assigned.
    let s = Setup::new("nobarrier");
    let allread = s.start();
    await_ready(s.http_port, &allread);
    let w = Workload::new(8, 300, 5);
    let chat = Chat::new(&s.bootstrap);
    w.produce_joins(&s, &chat);
    // The new room topics are assigned before anything is read in them.
    w.await_members(&s, &[s.http_port], WAIT);
    w.produce_all(&s, &chat);
    expect_exactly(&Reader::new(&s.bootstrap, &s.output), &w, &allread);
    let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
    let metric = |name| common::metric(&text, name).unwrap_or(-1.0);
    assert_eq!(metric("allread_routed_records_total"), 0.0, "nothing crossed the repartition topic");
    // Every record took the shortcut; once each, unless a commit failed and the loop went
    // back to the last one (a rebalance for the new room topics can invalidate the group
    // generation a transaction's offsets were sent with): then records were applied again.
    let shortcut = metric("allread_shortcut_records_total");
    if metric("allread_rewinds_total") == 0.0 {
        assert_eq!(shortcut, w.events() as f64, "{}", allread.log_text());
    } else {
        assert!(shortcut >= w.events() as f64, "{shortcut}: {}", allread.log_text());
    }
    assert!(allread.log_text().contains("no barrier needed"), "{}", allread.log_text());
}

#[test]
fn an_open_transaction_in_the_repartition_topic_keeps_the_shortcut_shut_until_it_ends() {
    // Another producer's transaction, still open, holds a record in every repartition
    // partition: a `read_committed` task cannot read past it, and the records it holds may yet
    // commit. The probe reads the high watermark `read_uncommitted`, so it sees them: every
    // lane sends its barrier and holds what follows until the transaction commits; only then
    // are the other producer's records applied, and after them what was held.
    use allread::kafka::envelope::{self, Source};
    use allread::receipts::Event;
    use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

    let s = Setup::new("opentxn");
    let repartition = format!("{}-events-repartition", s.app);
    common::create_topic(&s.bootstrap, &repartition, 4);
    let other: ThreadedProducer<rdkafka::producer::DefaultProducerContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &s.bootstrap)
        .set("transactional.id", format!("{}-other", s.app))
        .set("transaction.timeout.ms", "120000")
        .create()
        .unwrap();
    other.init_transactions(WAIT).unwrap();
    other.begin_transaction().unwrap();
    let mut ghosts = 0;
    for (i, room) in (0..100).map(|i| format!("ghost{i}")).enumerate() {
        let partition = allread::kafka::partitioner::partition_for(room.as_bytes(), 4);
        if ghosts & (1 << partition) != 0 {
            continue;
        }
        ghosts |= 1 << partition;
        let source = Source { topic: "another-instance-input".into(), partition: 0, offset: i as i64, timestamp: 0 };
        let event = Event::Join { room_id: room.as_str().into(), user_id: "ghost".into(), at: 0 };
        let value = envelope::encode(&source, &event);
        other.send(BaseRecord::to(&repartition).partition(partition).key(&room).payload(&value)).unwrap();
    }
    assert_eq!(ghosts, 0b1111, "a ghost room in every partition");
    other.flush(WAIT).unwrap();

    let w = Workload::new(8, 300, 9);
    let chat = Chat::new(&s.bootstrap);
    w.produce_joins(&s, &chat);
    let allread = s.start();
    await_ready(s.http_port, &allread);
    w.produce_all(&s, &chat);
    let out = Reader::new(&s.bootstrap, &s.output);
    let metric = |text: &str, name| common::metric(text, name).unwrap_or(-1.0);
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        // The held-records gauge is set every tick (1 s).
        let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
        if metric(&text, "allread_held_records") > 0.0 && metric(&text, "allread_routed_records_total") >= 1.0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing held: {text}\n{}", allread.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(out.drain(Duration::from_secs(2)).is_empty(), "a receipt came out while the lanes waited");
    let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
    assert_eq!(metric(&text, "allread_shortcut_records_total"), 0.0, "{text}");

    other.commit_transaction(WAIT).unwrap();
    expect_exactly(&out, &w, &allread);
    let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
    assert!(metric(&text, "allread_shortcut_records_total") > 0.0, "the lanes opened once the barriers were read");
    assert_eq!(
        metric(&text, r#"allread_engine_outcomes_total{outcome="join_applied"}"#),
        (w.joins.len() + 4) as f64,
        "the other producer's joins were applied too"
    );
}

#[test]
fn without_the_local_shortcut_every_record_crosses_the_repartition_topic() {
    let (shortcut, routed) = bulk("long", "local_shortcut = false");
    assert_eq!(shortcut, 0.0);
    assert!(routed > 2_000.0);
}

/// A generated chat through one instance (with `processing` settings `extra`); checks the
/// receipts and returns the records that took the shortcut and those routed the long way.
fn bulk(name: &str, extra: &str) -> (f64, f64) {
    let s = Setup::new(name);
    let w = Workload::new(12, 1_000, 7);
    let chat = Chat::new(&s.bootstrap);
    w.produce_joins(&s, &chat);
    let config = s.config(extra);
    let _allread = common::Allread::start(&config, &s.dir.path().join("allread.log"));
    w.produce_all(&s, &chat);
    assert!(w.events() > 2_000, "a few thousand events");
    let out = Reader::new(&s.bootstrap, &s.output);
    let mut got = out.read(w.expected.len(), WAIT);
    got.extend(out.drain(Duration::from_secs(3)));
    let (set, count) = receipt_set(&got);
    assert_eq!(count, set.len(), "no receipt twice");
    assert_eq!(set, w.expected);
    let (_, text) = common::http_get(s.http_port, "/metrics").unwrap();
    let metric = |name| common::metric(&text, name).unwrap_or(-1.0);
    let (shortcut, routed) = (metric("allread_shortcut_records_total"), metric("allread_routed_records_total"));
    let inputs = metric(r#"allread_input_records_total{source="room"}"#)
        + metric(r#"allread_input_records_total{source="read"}"#);
    assert_eq!(shortcut + routed, inputs, "every input record reached its task one way");
    // Every input record processed: the group's committed offsets reach every input
    // partition's end (a commit every 100 ms).
    let mut inputs: Vec<String> = (0..w.rooms).map(|r| s.room_topic(&format!("room{r}"))).collect();
    inputs.push(s.read_topic.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let short = common::uncommitted(&s.bootstrap, &s.app, &inputs);
        if short.is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "input offsets not committed to the end: {short:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    (shortcut, routed)
}

#[test]
fn sigterm_mid_stream_and_a_restart_lose_no_receipt() {
    let s = Setup::new("sigterm");
    let w = Workload::new(8, 400, 11);
    let chat = Chat::new(&s.bootstrap);
    w.produce_joins(&s, &chat);
    let mut allread = s.start();
    w.await_members(&s, &[s.http_port], WAIT);
    let quarter = w.steps.len() / 4 + 1;
    for i in 0..4 {
        w.produce_steps(&s, &chat, (i * quarter).min(w.steps.len())..((i + 1) * quarter).min(w.steps.len()));
        if i < 3 {
            std::thread::sleep(Duration::from_millis(1500));
            let log = allread.log.clone();
            let status = allread.terminate(Duration::from_secs(30));
            let log = std::fs::read_to_string(log).unwrap_or_default();
            assert!(status.success(), "exit status after SIGTERM: {status:?}; log: {log}");
            allread = s.start();
        }
    }
    let out = Reader::new(&s.bootstrap, &s.output);
    let mut got = out.read(w.expected.len(), WAIT);
    got.extend(out.drain(Duration::from_secs(3)));
    let (set, count) = receipt_set(&got);
    assert_eq!(set, w.expected, "log: {}", allread.log_text());
    assert_eq!(count, set.len(), "a clean stop commits everything: no receipt twice");
    // The stores keep no WAL; a clean stop flushes them, so the last start restored nothing.
    let log = allread.log_text();
    let restores: Vec<&str> = log.lines().filter(|l| l.contains("task restored; processing")).collect();
    assert!(
        !restores.is_empty() && restores.iter().all(|l| l.contains(" restored=0 ")),
        "after a clean stop the local stores are complete: {restores:?}"
    );
}

#[test]
fn an_existing_repartition_topic_with_another_partition_count_is_refused() {
    let s = Setup::new("mismatch");
    common::create_topic(&s.bootstrap, &format!("{}-events-repartition", s.app), 3);
    let config = s.config("");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_allread"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has 3 partitions but allread needs 4"), "{stderr}");
}

#[test]
fn a_query_for_a_room_on_another_instance_is_redirected_to_its_owner() {
    let s = Setup::new("owner");
    let ports = [s.http_port, common::free_port()];
    let log = |i: usize| s.dir.path().join(format!("allread-{i}.log"));
    let first = common::Allread::start(&s.instance_config("-0", ports[0], true, ""), &log(0));
    let deadline = std::time::Instant::now() + WAIT;
    // Tasks held by the instance on `port` (0 until its HTTP server and group are up).
    let tasks = |port: u16| {
        common::http_get(port, "/readyz")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|v| v["tasks"].as_u64())
            .unwrap_or(0)
    };
    while tasks(ports[0]) != 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first instance never took the 4 tasks: {}",
            first.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let second = common::Allread::start(&s.instance_config("-1", ports[1], true, ""), &log(1));
    // Cooperative rebalancing moves some tasks to the second instance.
    loop {
        let (a, b) = (tasks(ports[0]), tasks(ports[1]));
        if a > 0 && b > 0 && a + b == 4 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the tasks were never shared: {}", second.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Some room's task is on the second instance: the first redirects there.
    let mut redirected = 0;
    for r in 0..40 {
        let path = format!("/rooms/r{r}/users/u");
        let (status, body) = common::http_json(ports[0], &path);
        match status {
            307 => {
                assert_eq!(body["owner"], format!("127.0.0.1:{}", ports[1]), "{body}");
                let response = common::http_response(ports[0], &path).unwrap().to_lowercase();
                assert!(response.contains(&format!("location: http://127.0.0.1:{}{path}", ports[1])), "{response}");
                let (owner_status, _) = common::http_json(ports[1], &path);
                assert_eq!(owner_status, 404, "the owner answers itself (the room is unknown)");
                redirected += 1;
            }
            404 => {}
            other => panic!("GET {path} on the first instance: {other} {body}"),
        }
    }
    assert!(redirected > 0, "no room was redirected");
}

/// Under `at_least_once` a receipt the output topic refuses is not lost: the read's input is
/// not committed while the receipt is refused, and the receipt comes once the topic takes it.
/// Here the output topic first accepts no receipt (its `max.message.bytes`, 128, is below a
/// batch of one; not lower, as it must take a transaction's markers: at 16 the broker's log
/// says "Received fatal error RecordTooLargeException while sending txn marker", and the
/// transactional id stays blocked in the broker):
/// the receipt is refused, the commit fails and allread rewinds, again and again. The commit
/// must not have sent its changelog records: restored from them, the task would hold the read
/// as applied and the message complete, skip the read consumed again as a duplicate, produce
/// no receipt, and commit the read's offset at the next commit. (Found on 6 December: the
/// changelog went out with the output then.) A commit begins every millisecond, so one begins
/// while the receipt is still on its way: this also fails when a commit sends its changelog
/// without waiting for the output before it (checked by mutation, 3 runs of 3).
#[test]
fn at_least_once_a_receipt_the_output_topic_refuses_is_not_lost() {
    a_refused_receipt_is_not_lost("at_least_once");
}

/// The same under `exactly_once`: the transaction that carries the refused receipt aborts,
/// with the read's offset and the changelog records in it. (Its rewinds are slower: this one
/// does not notice a loop without the growing wait.)
#[test]
fn exactly_once_a_receipt_the_output_topic_refuses_is_not_lost() {
    a_refused_receipt_is_not_lost("exactly_once");
}

/// `allread_rewinds_total` of the instance serving `port` (0 if it does not answer).
fn rewinds(port: u16) -> f64 {
    let (_, text) = common::http_get(port, "/metrics").unwrap_or((0, String::new()));
    common::metric(&text, "allread_rewinds_total").unwrap_or(0.0)
}

/// Waits until the instance serving `port` has rewound at least once, after `what`.
fn wait_for_a_rewind(port: u16, what: &str, log: &dyn Fn() -> String) {
    let deadline = std::time::Instant::now() + WAIT;
    while rewinds(port) < 1.0 {
        assert!(std::time::Instant::now() < deadline, "no rewind after {what}; log: {}", log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn a_refused_receipt_is_not_lost(guarantee: &str) {
    use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
    let s = Setup::new("unacked");
    let room = s.room_topic("r1");
    common::create_topic(&s.bootstrap, &room, 1);
    let admin = common::admin(&s.bootstrap);
    let output = NewTopic::new(&s.output, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "128");
    let created = futures::executor::block_on(admin.create_topics([&output], &AdminOptions::new())).unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let config = s.config(&format!("guarantee = \"{guarantee}\"\ncommit_interval_ms = 1"));
    let allread = common::Allread::start(&config, &s.dir.path().join("allread.log"));
    let chat = Chat::new(&s.bootstrap);
    for u in ["alice", "bob"] {
        chat.json(&room, "r1", &join(u));
    }
    chat.json(&room, "r1", &message("m1", "alice"));
    chat.flush();
    std::thread::sleep(Duration::from_millis(500));
    chat.json(&s.read_topic, "r1", &read("r1", "bob", "m1"));
    chat.flush();
    // The receipt is produced, refused, and the commit fails ...
    let log = || allread.log_text();
    let port = s.http_port;
    wait_for_a_rewind(port, "a refused receipt", &log);
    let first = rewinds(port);
    std::thread::sleep(Duration::from_secs(2));
    // A failure that persists is retried with a growing wait (0, 0.4, 0.8, 1.6 s, ...), not in
    // a tight loop: a commit begins every millisecond here, and the refusal comes within
    // milliseconds.
    let retried = rewinds(port) - first;
    assert!((1.0..=6.0).contains(&retried), "{retried} rewinds in 2 s; log: {}", log());
    // ... and two seconds later the read is not committed: neither on its topic nor, once it
    // was routed there, on the repartition topic. (The joins and the message before it may
    // be: a commit without the receipt's read covered them.)
    let inputs = [s.read_topic.clone(), format!("{}-events-repartition", s.app)];
    let behind = common::uncommitted(&s.bootstrap, &s.app, &inputs);
    assert!(
        behind.iter().any(|(_, _, at, end)| *end > (*at).max(0)),
        "the read was committed though its receipt was never acknowledged: {behind:?}; log: {}",
        log()
    );
    // Once the topic takes it, the receipt comes.
    let mut larger = AlterConfig::new(ResourceSpecifier::Topic(&s.output));
    larger = larger.set("max.message.bytes", "1048588");
    let altered = futures::executor::block_on(admin.alter_configs([&larger], &AdminOptions::new())).unwrap();
    assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
    let receipts = Reader::new(&s.bootstrap, &s.output).read(1, WAIT);
    assert_eq!(ids(&receipts), ["m1"], "log: {}", log());
}

/// A dead letter the dead-letter topic refuses is not lost either (README: "If the dead letter
/// cannot be written, the input offset is not committed past it"): the undecodable record's
/// offset stays uncommitted while the topic refuses it, and the dead letter comes once the
/// topic takes it. Under `at_least_once`, whose commit orders output and changelog itself.
/// It fails when a commit ignores its records' delivery failures (checked by mutation).
#[test]
fn at_least_once_a_dead_letter_the_topic_refuses_is_not_lost() {
    use rdkafka::admin::{AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication};
    let s = Setup::new("dlqfull");
    let room = s.room_topic("r1");
    common::create_topic(&s.bootstrap, &room, 1);
    let admin = common::admin(&s.bootstrap);
    let dlq = s.dlq();
    let small = NewTopic::new(&dlq, 1, TopicReplication::Fixed(1)).set("max.message.bytes", "128");
    let created = futures::executor::block_on(admin.create_topics([&small], &AdminOptions::new())).unwrap();
    assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
    let config = s.config("guarantee = \"at_least_once\"\ncommit_interval_ms = 1");
    let allread = common::Allread::start(&config, &s.dir.path().join("allread.log"));
    let log = || allread.log_text();
    let chat = Chat::new(&s.bootstrap);
    // Not JSON, and larger than the topic takes even compressed: digits that do not repeat.
    let garbage: String = (0..120u64).map(|i| (i * 7919 % 100_003).to_string()).collect::<Vec<_>>().join(";");
    chat.send(&s.read_topic, "r1", &garbage);
    chat.flush();
    wait_for_a_rewind(s.http_port, "a refused dead letter", &log);
    std::thread::sleep(Duration::from_secs(2));
    let behind = common::uncommitted(&s.bootstrap, &s.app, std::slice::from_ref(&s.read_topic));
    assert!(
        behind.iter().any(|(_, _, at, end)| *end > (*at).max(0)),
        "the undecodable record was committed though its dead letter was refused: {behind:?}; log: {}",
        log()
    );
    let mut larger = AlterConfig::new(ResourceSpecifier::Topic(&dlq));
    larger = larger.set("max.message.bytes", "1048588");
    let altered = futures::executor::block_on(admin.alter_configs([&larger], &AdminOptions::new())).unwrap();
    assert!(altered.iter().all(|r| r.is_ok()), "{altered:?}");
    let letters = Reader::new(&s.bootstrap, &dlq).read(1, WAIT);
    assert_eq!(letters.len(), 1, "log: {}", log());
    assert_eq!(letters[0].header("allread.error.kind"), Some("not_json"));
    assert_eq!(letters[0].payload, garbage.as_bytes(), "the record, unchanged");
}

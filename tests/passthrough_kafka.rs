//! `allread passthrough`, the limit and the latency floor of issue 7's benchmark: over a live
//! chat on the real broker it copies every record to its sink with the record's own timestamp
//! (the time the simulator says it was due), and with `--latency-warmup` it reports how long
//! after that time the copies could be read, leaving out the warm-up.

mod common;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use allread::sim::workload::{generate, Shape};
use common::Setup;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

/// Reads up to `want` records of `topic`: (record timestamp, JSON value).
fn read_all(bootstrap: &str, topic: &str, want: usize) -> Vec<(i64, serde_json::Value)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", common::unique("sink_reader_"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap_or_default();
            out.push((m.timestamp().to_millis().unwrap_or(-1), value));
        }
    }
    out
}

#[test]
fn the_passthrough_copies_a_live_chat_with_its_timestamps_and_reports_its_latency() {
    let s = Setup::new("passthrough");
    // 3 rooms of 4, 60 messages at 20 a second, everyone reading promptly; at the clock's pace
    // (the records are stamped with chat time).
    let shape = Shape {
        seed: 3,
        rooms: 3,
        members: 4,
        messages: 60,
        message_rate: 20.0,
        slow_readers: 0.0,
        offline_readers: 0.0,
        ..Shape::default()
    };
    let events = generate(&shape).len();
    for r in 0..3 {
        common::create_topic(&s.bootstrap, &s.room_topic(&format!("room{r}")), 1);
    }
    let sink = format!("{}_sink", s.output);
    let mut passthrough = Command::new(env!("CARGO_BIN_EXE_allread"))
        .args(["passthrough", "--bootstrap", &s.bootstrap, "--room-pattern", &format!("^{}.*", s.room_prefix)])
        .args(["--read-topic", &s.read_topic, "--sink", &sink, "--expect", &events.to_string()])
        .args(["--latency-warmup", "1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting allread passthrough");
    // The chat begins once the passthrough has joined its group and fetches the rooms.
    let chat = Command::new(env!("CARGO_BIN_EXE_allread"))
        .args(["sim", "--bootstrap", &s.bootstrap, "--seed", "3", "--rooms", "3", "--members", "4"])
        .args(["--messages", "60", "--message-rate", "20", "--slow-readers", "0", "--offline-readers", "0"])
        .args(["--room-prefix", &s.room_prefix, "--read-topic", &s.read_topic, "--read-partitions", "2"])
        .args(["--live", "--produce-only", "--start-after", "6"])
        .output()
        .expect("running allread sim");
    assert!(chat.status.success(), "{}", String::from_utf8_lossy(&chat.stderr));
    assert!(String::from_utf8_lossy(&chat.stdout).contains(&format!("events={events} ")), "the same chat");

    let deadline = Instant::now() + Duration::from_secs(90);
    while passthrough.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = passthrough.kill();
            panic!("the passthrough did not see all {events} records within 90 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let (mut out, mut err) = (String::new(), String::new());
    passthrough.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    passthrough.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(passthrough.wait().unwrap().success(), "{out}{err}");
    assert!(out.contains(&format!("RESULT records={events} ")), "{out}{err}");
    let figure = |name: &str| -> u64 {
        let at = out.find(&format!("{name}=")).unwrap_or_else(|| panic!("no {name} in {out}{err}"));
        out[at + name.len() + 1..].split_whitespace().next().unwrap().parse().unwrap()
    };
    let (p50, p99, p999) = (figure("latency_p50_ms"), figure("latency_p99_ms"), figure("latency_p999_ms"));
    assert!(1 <= p50 && p50 <= p99 && p99 <= p999, "{out}");
    assert!(p999 < 30_000, "measured from each record's due time, not from some other clock: {out}");
    // The sustained rate is the chat's own pace (60 messages at 20 a second, their reads just
    // after): about a third of the records a second, not the rate of a backlog.
    let (sustained, pace) = (figure("sustained_events_per_s"), events as u64 / 3);
    assert!(pace / 4 <= sustained && sustained <= pace * 4, "sustained {sustained}/s, the chat's pace {pace}/s: {out}");

    // Every record is in the sink, stamped as its input was: for a read, its read_at.
    let copied = read_all(&s.bootstrap, &sink, events);
    assert_eq!(copied.len(), events);
    let reads: Vec<_> = copied.iter().filter(|(_, v)| v.get("read_at").is_some()).collect();
    assert!(!reads.is_empty());
    for (ts, v) in reads {
        assert_eq!(Some(*ts), v["read_at"].as_i64(), "a read's copy keeps its timestamp: {v}");
    }
}

//! Generated chats whose expected receipts do not depend on how the room topics and the read
//! topic interleave, computed by the naive model (not the engine).
//!
//! Every member joins before anything else happens in a room and nobody leaves, so reads
//! only move read positions up: whatever order the processor sees messages and reads in
//! (a read before its message is parked), the same messages complete.

use std::collections::BTreeSet;
use std::time::Duration;

use allread::receipts::{EngineConfig, Event, ReadScope};
use serde_json::{json, Value};

use super::{Chat, Record, Setup};
use allread::sim::model::Model;

pub fn join(u: &str) -> Value {
    json!({"type": "join", "user_id": u, "at": "2026-11-28T10:00:00Z"})
}
pub fn leave(u: &str) -> Value {
    json!({"type": "leave", "user_id": u, "at": 1_795_860_000_000i64})
}
pub fn message(id: &str, from: &str) -> Value {
    json!({"type": "message", "message_id": id, "sender_id": from, "sent_at": 1_795_860_000_000i64, "body": "secret"})
}
pub fn read(room: &str, u: &str, m: &str) -> Value {
    json!({"room_id": room, "user_id": u, "message_id": m, "read_at": 1_795_860_001_000i64})
}

/// A receipt as the tests compare it: (room, message id, seq, required readers).
pub type Receipt = (String, String, u64, u64);

/// One message and the reads it gets.
pub struct Step {
    pub room: String,
    pub message: Value,
    pub reads: Vec<Value>,
}

pub struct Workload {
    pub rooms: usize,
    /// (room, join) for every member.
    pub joins: Vec<(String, Value)>,
    pub steps: Vec<Step>,
    pub expected: BTreeSet<Receipt>,
}

/// A small deterministic generator (xorshift).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

impl Workload {
    /// `rooms` rooms of 2 to 6 members, `messages` messages (some duplicated ids), most read
    /// by most members (some with scope `message`), some read by a stranger.
    pub fn new(rooms: usize, messages: usize, seed: u64) -> Workload {
        let mut rnd = Rng::new(seed);
        let mut joins = Vec::new();
        let mut events = Vec::new();
        let mut late_events = Vec::new();
        let mut members: Vec<Vec<String>> = vec![Vec::new(); rooms];
        for (r, m) in members.iter_mut().enumerate() {
            for u in 0..2 + rnd.below(5) {
                m.push(format!("u{u}"));
                joins.push((format!("room{r}"), join(&format!("u{u}"))));
                events.push(Event::Join { room_id: format!("room{r}").into(), user_id: format!("u{u}").into(), at: 0 });
            }
        }
        let mut steps = Vec::new();
        for i in 0..messages {
            let r = rnd.below(rooms);
            let room = format!("room{r}");
            let sender = members[r][rnd.below(members[r].len())].clone();
            let id = format!("m{}", if i > 5 && rnd.below(20) == 0 { i - 3 } else { i }); // some duplicates
            events.push(Event::Message {
                room_id: room.as_str().into(),
                message_id: id.as_str().into(),
                sender_id: sender.as_str().into(),
                sent_at: 1_795_860_000_000,
            });
            let mut reads = Vec::new();
            for u in members[r].clone() {
                if u != sender && rnd.below(4) != 0 {
                    let one = rnd.below(8) == 0;
                    let mut v = read(&room, &u, &id);
                    if one {
                        v["scope"] = "message".into();
                    }
                    reads.push(v);
                    late_events.push(Event::Read {
                        room_id: room.as_str().into(),
                        user_id: u.as_str().into(),
                        message_id: id.as_str().into(),
                        read_at: 0,
                        scope: if one { ReadScope::Message } else { ReadScope::UpTo },
                    });
                }
            }
            if rnd.below(10) == 0 {
                reads.push(read(&room, "stranger", &id));
                late_events.push(Event::Read {
                    room_id: room.as_str().into(),
                    user_id: "stranger".into(),
                    message_id: id.as_str().into(),
                    read_at: 0,
                    scope: ReadScope::UpTo,
                });
            }
            steps.push(Step { room, message: message(&id, &sender), reads });
        }
        let mut model = Model::new(EngineConfig::default());
        for e in events.iter().chain(&late_events) {
            model.apply(e, 0);
        }
        let expected = model
            .out
            .iter()
            .map(|r| (r.room_id.to_string(), r.message_id.to_string(), r.seq, r.required_readers as u64))
            .collect();
        Workload { rooms, joins, steps, expected }
    }

    /// Input events in all.
    pub fn events(&self) -> usize {
        self.joins.len() + self.steps.iter().map(|s| 1 + s.reads.len()).sum::<usize>()
    }

    /// Creates the room topics (one partition each) and writes every join.
    pub fn produce_joins(&self, s: &Setup, chat: &Chat) {
        for r in 0..self.rooms {
            super::create_topic(&s.bootstrap, &s.room_topic(&format!("room{r}")), 1);
        }
        for (room, v) in &self.joins {
            chat.json(&s.room_topic(room), room, v);
        }
        chat.flush();
    }

    /// Writes every message, then every read.
    pub fn produce_all(&self, s: &Setup, chat: &Chat) {
        for step in &self.steps {
            chat.json(&s.room_topic(&step.room), &step.room, &step.message);
        }
        chat.flush();
        for step in &self.steps {
            for v in &step.reads {
                chat.json(&s.read_topic, &step.room, v);
            }
        }
        chat.flush();
    }

    /// Writes the steps `range` (each message, then its reads).
    pub fn produce_steps(&self, s: &Setup, chat: &Chat, range: std::ops::Range<usize>) {
        for step in &self.steps[range] {
            chat.json(&s.room_topic(&step.room), &step.room, &step.message);
            for v in &step.reads {
                chat.json(&s.read_topic, &step.room, v);
            }
        }
        chat.flush();
    }

    /// Waits until one of the allreads serving `ports` reports every room with its members (so
    /// that no read can be applied before its reader's join), or panics after `timeout` with
    /// what it last saw and the end of each allread log in `s`'s directory.
    pub fn await_members(&self, s: &Setup, ports: &[u16], timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        let mut want = std::collections::BTreeMap::<&str, usize>::new();
        for (room, _) in &self.joins {
            *want.entry(room.as_str()).or_default() += 1;
        }
        for (room, n) in want {
            loop {
                let answers: Vec<_> =
                    ports.iter().map(|port| super::try_http_json(*port, &format!("/rooms/{room}"))).collect();
                let members = answers
                    .iter()
                    .find_map(|(status, v)| (*status == 200).then(|| v["members"].as_array().map_or(0, |m| m.len())));
                if members == Some(n) {
                    break;
                }
                if std::time::Instant::now() >= deadline {
                    panic!("{room} never showed its {n} members; last answers {answers:?}\n{}", s.log_tails(80));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The receipts in `records` as a set, and how many records there were.
pub fn receipt_set(records: &[Record]) -> (BTreeSet<Receipt>, usize) {
    let mut set = BTreeSet::new();
    for r in records {
        let v = r.json();
        set.insert((
            v["room_id"].as_str().unwrap().to_string(),
            v["message_id"].as_str().unwrap().to_string(),
            v["seq"].as_u64().unwrap(),
            v["required_readers"].as_u64().unwrap(),
        ));
    }
    (set, records.len())
}

/// Receipts that appear more than once in `records`.
pub fn duplicates(records: &[Record]) -> Vec<Receipt> {
    let mut seen = BTreeSet::new();
    let mut twice = Vec::new();
    for r in records {
        let (set, _) = receipt_set(std::slice::from_ref(r));
        let receipt = set.into_iter().next().unwrap();
        if !seen.insert(receipt.clone()) {
            twice.push(receipt);
        }
    }
    twice
}

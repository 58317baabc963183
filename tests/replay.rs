//! `allread replay`'s engine path: a JSON Lines capture in, receipts out, bad lines reported.

use allread::codec::DecodeLimits;
use allread::receipts::{Engine, EngineConfig};
use allread::replay::{replay, TopicNames};
use allread::store::memory::MemoryStore;

#[test]
fn a_capture_replays_to_the_spec_receipts_and_reports_bad_lines() {
    let capture = r#"
{"topic": "chatroom_12345", "value": {"type": "join", "user_id": "alice", "at": 1}, "timestamp": 1000}
{"topic": "chatroom_12345", "value": {"type": "join", "user_id": "bob", "at": 1}}
{"topic": "chatroom_12345", "value": {"type": "message", "message_id": "m1", "sender_id": "alice", "sent_at": 5}}
{"topic": "chatroom_12345", "value": {"type": "typing"}}
{"topic": "elsewhere", "value": {}}
not even JSON
{"topic": "read_events", "value": {"room_id": "12345", "user_id": "bob", "message_id": "m1", "read_at": 9}, "timestamp": 2000}
"#;
    let mut engine = Engine::new(MemoryStore::new(), EngineConfig::default());
    let mut receipts = Vec::new();
    let summary = replay(&mut engine, capture.as_bytes(), &TopicNames::default(), &DecodeLimits::default(), 2, |r| {
        receipts.push(r.clone())
    })
    .unwrap();
    assert_eq!(receipts.len(), 1);
    assert_eq!((&*receipts[0].room_id, &*receipts[0].message_id, receipts[0].completed_at), ("12345", "m1", 2000));
    assert_eq!(summary.records, 4);
    let rejected: Vec<(usize, &str)> = summary.rejected.iter().map(|r| (r.line, r.kind)).collect();
    assert_eq!(rejected, [(5, "unknown_type"), (6, "unknown_topic"), (7, "bad_line")]);
}

//! One test per numbered rule of the spec (`shared/spec/receipts.md`), and its worked example.
//! These run on the in-memory store; `engine_model.rs` checks RocksDB against it.

use allread::receipts::{Engine, EngineConfig, Event, Id, Millis, ReadScope, ReceiptComplete};
use allread::store::memory::MemoryStore;

struct Room {
    engine: Engine<MemoryStore>,
    now: Millis,
}

fn id(s: &str) -> Id {
    s.into()
}

impl Room {
    fn new() -> Self {
        Self::with(EngineConfig::default())
    }
    fn with(config: EngineConfig) -> Self {
        Room { engine: Engine::new(MemoryStore::new(), config), now: 1_000 }
    }
    fn apply(&mut self, e: Event) -> Vec<String> {
        self.engine.apply(&e, self.now).unwrap();
        self.engine.take_emitted().into_iter().map(|r| r.message_id.to_string()).collect()
    }
    fn receipts(&mut self, e: Event) -> Vec<ReceiptComplete> {
        self.engine.apply(&e, self.now).unwrap();
        self.engine.take_emitted()
    }
    fn join(&mut self, u: &str) -> Vec<String> {
        self.apply(Event::Join { room_id: id("r"), user_id: id(u), at: 0 })
    }
    fn leave(&mut self, u: &str) -> Vec<String> {
        self.apply(Event::Leave { room_id: id("r"), user_id: id(u), at: 0 })
    }
    fn send(&mut self, u: &str, m: &str) -> Vec<String> {
        self.apply(Event::Message { room_id: id("r"), message_id: id(m), sender_id: id(u), sent_at: 7 })
    }
    fn read(&mut self, u: &str, m: &str) -> Vec<String> {
        self.apply(Event::Read {
            room_id: id("r"),
            user_id: id(u),
            message_id: id(m),
            read_at: 0,
            scope: ReadScope::UpTo,
        })
    }
    fn read_one(&mut self, u: &str, m: &str) -> Vec<String> {
        self.apply(Event::Read {
            room_id: id("r"),
            user_id: id(u),
            message_id: id(m),
            read_at: 0,
            scope: ReadScope::Message,
        })
    }
    fn tick(&mut self, advance: Millis) {
        self.now += advance;
        self.engine.tick(self.now).unwrap();
    }
    fn pos(&mut self, u: &str) -> Option<u64> {
        self.engine.user_view("r", u).unwrap().and_then(|v| v.read_position)
    }
    fn unread(&mut self, u: &str) -> Option<u64> {
        self.engine.user_view("r", u).unwrap().and_then(|v| v.unread)
    }
}

const NONE: Vec<String> = Vec::new();

#[test]
fn worked_example_of_the_spec() {
    let mut r = Room::new();
    for u in ["alice", "bob", "carol"] {
        assert_eq!(r.join(u), NONE);
    }
    assert_eq!(r.send("alice", "m1"), NONE);
    assert_eq!(r.send("alice", "m2"), NONE);
    assert_eq!(r.read("bob", "m2"), NONE);
    assert_eq!(r.engine.room_view("r").unwrap().unwrap().frontier, Some(0));
    let done = r.receipts(Event::Read {
        room_id: id("r"),
        user_id: id("carol"),
        message_id: id("m1"),
        read_at: 0,
        scope: ReadScope::UpTo,
    });
    assert_eq!(
        done,
        vec![ReceiptComplete {
            room_id: id("r"),
            message_id: id("m1"),
            sender_id: id("alice"),
            seq: 1,
            sent_at: 7,
            completed_at: 1_000,
            required_readers: 2,
        }]
    );
    assert_eq!(r.leave("carol"), vec!["m2"]);
    assert_eq!(r.join("dave"), NONE);
    assert_eq!(r.pos("dave"), Some(2));
    assert_eq!(r.engine.outcomes().receipt_emitted, 2);
}

#[test]
fn rule_1_join_starts_at_last_seq_and_rejoin_of_member_is_a_no_op() {
    let mut r = Room::new();
    r.join("alice");
    r.send("alice", "m1");
    r.send("alice", "m2");
    r.join("bob");
    assert_eq!(r.pos("bob"), Some(2));
    assert_eq!(r.unread("bob"), Some(0));
    r.join("bob");
    assert_eq!(r.engine.outcomes().join_of_member, 1);
    // m3 waits for bob only.
    r.send("alice", "m3");
    assert_eq!(r.read("bob", "m3"), vec!["m3"]);
}

#[test]
fn rule_2_leave_releases_and_rejoin_is_a_new_join() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    r.send("alice", "m1");
    assert_eq!(r.leave("bob"), vec!["m1"]);
    assert_eq!(r.leave("bob"), NONE);
    assert_eq!(r.engine.outcomes().leave_of_non_member, 1);
    r.send("alice", "m2"); // trivial: alice alone
    r.join("bob");
    assert_eq!(r.pos("bob"), Some(2));
}

#[test]
fn rule_3_sender_needs_not_read_own_message_and_sending_reads_up_to_there() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    r.send("bob", "m1"); // waits for alice
    assert_eq!(r.send("alice", "m2"), vec!["m1"]); // alice read up to m2, so m1 too
    assert_eq!(r.pos("alice"), Some(2));
    // A non-member's message is processed; the sender gains no membership.
    r.send("mallory", "m3");
    assert!(!r.engine.user_view("r", "mallory").unwrap().unwrap().member);
    assert_eq!(r.read("bob", "m3"), vec!["m2"]);
    assert_eq!(r.read("alice", "m3"), vec!["m3"]);
}

#[test]
fn rule_4_up_to_reads_never_move_back_and_non_member_reads_change_nothing() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    r.send("alice", "m1");
    r.send("alice", "m2");
    r.send("alice", "m3");
    assert_eq!(r.read("bob", "m2"), vec!["m1", "m2"]);
    assert_eq!(r.read("bob", "m1"), NONE);
    assert_eq!(r.pos("bob"), Some(2));
    assert_eq!(r.read("eve", "m3"), NONE);
    assert_eq!(r.engine.outcomes().read_by_non_member, 1);
    assert_eq!(r.engine.message_view("r", "m3").unwrap().unwrap().missing, vec!["bob"]);
}

#[test]
fn rule_5_message_scope_reads_add_to_one_message_only() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    r.join("carol");
    r.send("alice", "m1");
    r.send("alice", "m2");
    assert_eq!(r.read_one("bob", "m2"), NONE);
    assert_eq!(r.pos("bob"), Some(0));
    assert_eq!(r.read_one("carol", "m2"), vec!["m2"]); // before m1: reader sets complete out of order
    assert_eq!(r.read("bob", "m1"), NONE);
    assert_eq!(r.read("carol", "m1"), vec!["m1"]);
}

#[test]
fn rule_6_frontier_completions_come_in_seq_order_exactly_once() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    for m in ["m1", "m2", "m3"] {
        r.send("alice", m);
    }
    assert_eq!(r.read("bob", "m3"), vec!["m1", "m2", "m3"]);
    assert_eq!(r.read("bob", "m3"), NONE);
    assert_eq!(r.send("alice", "m1"), NONE); // duplicate
}

#[test]
fn rule_6_a_leave_can_finish_a_reader_set() {
    let mut r = Room::new();
    for u in ["a", "b", "c"] {
        r.join(u);
    }
    r.send("a", "m1");
    r.send("a", "m2");
    r.read_one("b", "m2");
    assert_eq!(r.leave("c"), vec!["m2"]);
    assert_eq!(r.read("b", "m1"), vec!["m1"]);
}

#[test]
fn rule_7_trivial_messages_complete_at_once_unless_suppressed() {
    let mut r = Room::new();
    assert_eq!(r.send("ghost", "m0"), vec!["m0"]); // empty room
    r.join("alice");
    let done =
        r.receipts(Event::Message { room_id: id("r"), message_id: id("m1"), sender_id: id("alice"), sent_at: 1 });
    assert_eq!(done[0].required_readers, 0);
    assert_eq!(r.engine.outcomes().trivial_completion, 2);

    let mut quiet = Room::with(EngineConfig { suppress_trivial: true, ..EngineConfig::default() });
    quiet.join("alice");
    assert_eq!(quiet.send("alice", "m1"), NONE);
    assert_eq!(quiet.engine.outcomes().trivial_suppressed, 1);
    assert_eq!(quiet.send("alice", "m1"), NONE);
    assert_eq!(quiet.engine.outcomes().duplicate_message, 1);
}

#[test]
fn rule_8_early_reads_are_parked_applied_bounded_and_expire() {
    let config = EngineConfig { max_parked_reads_per_user: 2, parked_read_ttl_ms: 100, ..EngineConfig::default() };
    let mut r = Room::with(config);
    r.join("alice");
    r.join("bob");
    assert_eq!(r.read("bob", "m1"), NONE); // before m1 exists
    assert_eq!(r.engine.outcomes().read_parked, 1);
    assert_eq!(r.send("alice", "m1"), vec!["m1"]);
    assert_eq!(r.engine.outcomes().parked_read_applied, 1);

    // The per-user bound drops the oldest parked read.
    r.read("bob", "x1");
    r.read("bob", "x2");
    r.read("bob", "x3");
    assert_eq!(r.engine.outcomes().parked_read_dropped, 1);
    assert_eq!(r.send("alice", "x1"), NONE); // bob's read of x1 was dropped
                                             // The rest expire.
    r.tick(101);
    assert_eq!(r.engine.outcomes().parked_read_expired, 2);
    assert_eq!(r.send("alice", "x3"), NONE);
    assert_eq!(r.read("bob", "x3"), vec!["x1", "x3"]);
}

#[test]
fn rule_9_duplicates_are_ignored_and_counted() {
    let mut r = Room::new();
    r.join("alice");
    r.join("bob");
    r.send("alice", "m1");
    r.send("alice", "m1");
    assert_eq!(r.read("bob", "m1"), vec!["m1"]);
    r.send("alice", "m1");
    assert_eq!(r.engine.outcomes().duplicate_message, 2);
    assert_eq!(r.engine.room_view("r").unwrap().unwrap().last_seq, 1);
}

#[test]
fn rule_10_pending_messages_and_markers_expire() {
    let config =
        EngineConfig { pending_message_ttl_ms: 100, completed_marker_ttl_ms: 1_000, ..EngineConfig::default() };
    let mut r = Room::with(config);
    r.join("alice");
    r.join("bob");
    r.send("alice", "m1");
    r.tick(100);
    assert_eq!(r.engine.outcomes().pending_expired, 1);
    let view = r.engine.message_view("r", "m1").unwrap().unwrap();
    assert_eq!(format!("{:?}", view.status), "Expired");
    assert_eq!(r.read("bob", "m1"), NONE); // expired: no receipt, but the position moves
    assert_eq!(r.pos("bob"), Some(1));
    assert_eq!(r.send("alice", "m1"), NONE); // still a duplicate while its marker lives
    r.tick(1_000);
    assert_eq!(r.engine.outcomes().marker_expired, 1);
    assert!(r.engine.message_view("r", "m1").unwrap().is_none());
    r.engine.commit(Vec::new()).unwrap();
    r.engine.wait_written().unwrap();
    // Nothing of m1 is left in the store but the room's meta and its members (one key in a
    // small room).
    assert_eq!(r.engine.store().len(), 2);
}

#[test]
fn rule_10_a_room_in_memory_forgets_an_expired_marker_too() {
    // The room keeps its last few markers in memory (no store lookup for the reads that
    // come after a message completed); an expired marker must leave that copy as well.
    let config = EngineConfig { completed_marker_ttl_ms: 1_000, ..EngineConfig::default() };
    let mut r = Room::with(config);
    r.join("alice");
    r.join("bob");
    r.send("alice", "m1");
    assert_eq!(r.read("bob", "m1"), ["m1"]);
    assert_eq!(r.read("bob", "m1"), NONE);
    assert_eq!(r.engine.outcomes().read_parked, 0, "a read of a completed message is known");
    assert_eq!(r.send("alice", "m1"), NONE);
    assert_eq!(r.engine.outcomes().duplicate_message, 1);
    r.tick(1_000);
    assert_eq!(r.engine.outcomes().marker_expired, 1);
    // m1 is unknown now: a read of it waits, and a message with its id is a new message.
    assert_eq!(r.read("bob", "m1"), NONE);
    assert_eq!(r.engine.outcomes().read_parked, 1);
    assert_eq!(r.send("alice", "m1"), ["m1"]);
    assert_eq!(r.engine.outcomes().message_applied, 2);
    assert_eq!(r.engine.outcomes().parked_read_applied, 1);
}

#[test]
fn rule_11_large_rooms_keep_positions_but_not_completions() {
    let config = EngineConfig { large_room_member_limit: 2, ..EngineConfig::default() };
    let mut r = Room::with(config);
    r.join("a");
    r.join("b");
    r.send("a", "m1"); // 2 members: tracked
    r.join("c");
    r.send("a", "m2"); // 3 members: not tracked
    assert_eq!(r.engine.outcomes().large_room_message, 1);
    assert_eq!(r.read("b", "m2"), vec!["m1"]);
    assert_eq!(r.pos("b"), Some(2));
    assert_eq!(r.read("c", "m2"), NONE);
    assert_eq!(r.unread("c"), Some(0));
}

#[test]
fn reads_of_rooms_that_never_exist_leave_nothing_once_expired() {
    let config = EngineConfig { parked_read_ttl_ms: 100, ..EngineConfig::default() };
    let mut r = Room::with(config);
    for i in 0..50 {
        r.engine
            .apply(
                &Event::Read {
                    room_id: id(&format!("bogus-{i}")),
                    user_id: id("eve"),
                    message_id: id("m1"),
                    read_at: 0,
                    scope: ReadScope::UpTo,
                },
                r.now,
            )
            .unwrap();
    }
    r.engine.commit(Vec::new()).unwrap();
    r.engine.wait_written().unwrap();
    assert!(r.engine.store().len() >= 100, "parked reads and their expiry entries are stored");
    r.tick(100);
    r.engine.commit(Vec::new()).unwrap();
    r.engine.wait_written().unwrap();
    assert_eq!(r.engine.outcomes().parked_read_expired, 50);
    assert_eq!(r.engine.store().len(), 0, "nothing of the bogus rooms is left");
}

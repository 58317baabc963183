//! Model-based property tests of the receipt engine.
//!
//! A deliberately naive reference model of the spec (every member and reader set kept in
//! full, every pending message re-checked after every event) runs the same random actions
//! as the engine; emissions must be identical, in identical order, and so must the
//! outcome counts. The engine runs on RocksDB (closed and reopened at random points, with a
//! tiny cache to force evictions) and on the in-memory store; both must also end with the
//! same stored bytes. Commits are sometimes split: the batch is prepared, events go on being
//! applied, and the batch is written only at the next commit point, as a commit that waits
//! for its changelog records (or its transaction) lets the processor go on; the same actions
//! with every commit whole must end with the same stored bytes.

mod common;

use std::collections::BTreeSet;

use allread::receipts::{Engine, EngineConfig, Event, Id, Millis, Outcomes, ReadScope, ReceiptComplete};
use allread::sim::model::Model;
use allread::store::memory::MemoryStore;
use allread::store::rocks::RocksStore;
use allread::store::KvStore;
use proptest::prelude::*;

// ---------------------------------------------------------------- actions

#[derive(Debug, Clone)]
enum Action {
    Event(Event),
    /// Re-apply the first `n` events applied so far (a replay of a prefix of the input).
    Replay(usize),
    Tick(Millis),
    Commit,
    /// Prepare a commit's batch (writing the one prepared before, if any) and go on applying
    /// events; the batch is written at the next commit point (`Prepare`, `Tick`, `Commit`,
    /// `Reopen` or the end).
    Prepare,
    /// Commit, close the store, open it again (RocksDB only).
    Reopen,
}

fn event() -> impl Strategy<Value = Event> {
    let room = (0..2u8).prop_map(|r| Id::from(format!("room{r}")));
    let user = (0..5u8).prop_map(|u| Id::from(format!("u{u}")));
    let msg = (0..10u8).prop_map(|m| Id::from(format!("m{m}")));
    prop_oneof![
        3 => (room.clone(), user.clone()).prop_map(|(room_id, user_id)| Event::Join { room_id, user_id, at: 0 }),
        1 => (room.clone(), user.clone()).prop_map(|(room_id, user_id)| Event::Leave { room_id, user_id, at: 0 }),
        3 => (room.clone(), msg.clone(), user.clone(), 0..1000i64)
            .prop_map(|(room_id, message_id, sender_id, sent_at)| Event::Message { room_id, message_id, sender_id, sent_at }),
        5 => (room, user, msg, prop::bool::weighted(0.3)).prop_map(|(room_id, user_id, message_id, one)| Event::Read {
            room_id,
            user_id,
            message_id,
            read_at: 0,
            scope: if one { ReadScope::Message } else { ReadScope::UpTo },
        }),
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        30 => event().prop_map(Action::Event),
        1 => (0..40usize).prop_map(Action::Replay),
        3 => (0..120i64).prop_map(Action::Tick),
        2 => Just(Action::Commit),
        2 => Just(Action::Prepare),
        1 => Just(Action::Reopen),
    ]
}

fn config() -> impl Strategy<Value = EngineConfig> {
    (1..4u32, any::<bool>(), 1..8usize, 2..5u32).prop_map(|(parked, suppress, cache, large)| EngineConfig {
        max_parked_reads_per_user: parked,
        parked_read_ttl_ms: 50,
        pending_message_ttl_ms: 200,
        completed_marker_ttl_ms: 400,
        large_room_member_limit: large,
        suppress_trivial: suppress,
        cache_entries: cache,
    })
}

// ---------------------------------------------------------------- runs

struct Run {
    emitted: Vec<ReceiptComplete>,
    outcomes: Outcomes,
    stored: Vec<(Vec<u8>, Vec<u8>)>,
}

fn dump(store: &dyn KvStore) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut all = Vec::new();
    store
        .scan(&[], None, &mut |k, v| {
            all.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    all
}

/// Runs `actions` on an engine; `reopen` builds a fresh engine over the committed store.
fn run_engine<S: KvStore>(
    actions: &[Action],
    mut engine: Engine<S>,
    reopen: &mut dyn FnMut(Engine<S>) -> Engine<S>,
) -> Run {
    let mut now: Millis = 0;
    let mut history: Vec<Event> = Vec::new();
    let mut emitted = Vec::new();
    let mut outcomes = Outcomes::default();
    let mut carried = Outcomes::default(); // counts of engines closed earlier
                                           // Writes the batch prepared, if there is one.
    let write_prepared = |engine: &mut Engine<S>| {
        if engine.has_prepared() {
            engine.write_prepared(Vec::new()).unwrap();
        }
    };
    for action in actions {
        let events: Vec<Event> = match action {
            Action::Event(e) => {
                history.push(e.clone());
                vec![e.clone()]
            }
            Action::Replay(n) => history[..(*n).min(history.len())].to_vec(),
            Action::Tick(dt) => {
                now += dt;
                write_prepared(&mut engine);
                engine.tick(now).unwrap();
                vec![]
            }
            Action::Commit => {
                write_prepared(&mut engine);
                engine.commit(Vec::new()).unwrap();
                vec![]
            }
            Action::Prepare => {
                write_prepared(&mut engine);
                drop(engine.prepare_commit(Vec::new()).unwrap());
                vec![]
            }
            Action::Reopen => {
                write_prepared(&mut engine);
                engine.commit(Vec::new()).unwrap();
                carried = add(&carried, engine.outcomes());
                engine = reopen(engine);
                vec![]
            }
        };
        for e in &events {
            engine.apply(e, now).unwrap();
            emitted.extend(engine.take_emitted());
        }
        outcomes = add(&carried, engine.outcomes());
    }
    write_prepared(&mut engine);
    engine.commit(Vec::new()).unwrap();
    engine.wait_written().unwrap();
    Run { emitted, outcomes, stored: dump(engine.store()) }
}

fn add(a: &Outcomes, b: &Outcomes) -> Outcomes {
    let mut sum = *a;
    sum.add(b);
    sum
}

fn run_model(actions: &[Action], config: &EngineConfig) -> (Vec<ReceiptComplete>, Outcomes) {
    let mut model = Model::new(config.clone());
    let mut now = 0;
    let mut history: Vec<Event> = Vec::new();
    for action in actions {
        let events = match action {
            Action::Event(e) => {
                history.push(e.clone());
                vec![e.clone()]
            }
            Action::Replay(n) => history[..(*n).min(history.len())].to_vec(),
            Action::Tick(dt) => {
                now += dt;
                model.tick(now);
                vec![]
            }
            Action::Commit | Action::Prepare | Action::Reopen => vec![],
        };
        for e in &events {
            model.apply(e, now);
        }
    }
    (model.out, model.counts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The engine on RocksDB (reopened at random points) and on memory both equal the model,
    /// and store the same bytes.
    #[test]
    fn engine_equals_the_reference_model(config in config(), actions in prop::collection::vec(action(), 1..160)) {
        let (expected, expected_counts) = run_model(&actions, &config);

        let memory = run_engine(&actions, Engine::new(MemoryStore::new(), config.clone()), &mut |e| {
            let c = e.config().clone();
            Engine::new(e.into_store(), c)
        });
        prop_assert_eq!(&memory.emitted, &expected);
        prop_assert_eq!(memory.outcomes, expected_counts);
        // Every commit whole, at the same points: the same state in the end.
        let whole: Vec<Action> =
            actions.iter().map(|a| if matches!(a, Action::Prepare) { Action::Commit } else { a.clone() }).collect();
        let whole = run_engine(&whole, Engine::new(MemoryStore::new(), config.clone()), &mut |e| {
            let c = e.config().clone();
            Engine::new(e.into_store(), c)
        });
        prop_assert_eq!(&whole.stored, &memory.stored);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        // The production settings, room prefix scans included.
        let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb {
            memory_bytes: 8 << 20,
            write_buffer_bytes: 2 << 20,
        });
        let rocks = run_engine(&actions, Engine::new(RocksStore::open(&path, &opts).unwrap(), config.clone()), &mut |e| {
            let c = e.config().clone();
            drop(e.into_store());
            Engine::new(RocksStore::open(&path, &opts).unwrap(), c)
        });
        prop_assert_eq!(&rocks.emitted, &expected);
        prop_assert_eq!(rocks.outcomes, expected_counts);
        prop_assert_eq!(rocks.stored, memory.stored);
    }

    /// While markers live, no message is ever emitted twice, whatever is replayed.
    #[test]
    fn no_message_completes_twice(actions in prop::collection::vec(action(), 1..200)) {
        let config = EngineConfig { completed_marker_ttl_ms: Millis::MAX / 4, pending_message_ttl_ms: Millis::MAX / 4, ..EngineConfig::default() };
        let run = run_engine(&actions, Engine::new(MemoryStore::new(), config), &mut |e| {
            let c = e.config().clone();
            Engine::new(e.into_store(), c)
        });
        let mut seen = BTreeSet::new();
        for r in &run.emitted {
            prop_assert!(seen.insert((r.room_id.clone(), r.message_id.clone())), "{:?} emitted twice", r);
        }
    }

    /// Replaying the whole input right after it emits nothing already emitted.
    #[test]
    fn replaying_a_prefix_emits_nothing_already_emitted(events in prop::collection::vec(event(), 1..120), cut in 0..120usize) {
        let mut engine = Engine::new(MemoryStore::new(), EngineConfig::default());
        let mut first = BTreeSet::new();
        for e in &events {
            engine.apply(e, 0).unwrap();
            first.extend(engine.take_emitted().into_iter().map(|r| (r.room_id, r.message_id)));
        }
        for e in &events[..cut.min(events.len())] {
            engine.apply(e, 0).unwrap();
            for r in engine.take_emitted() {
                prop_assert!(!first.contains(&(r.room_id.clone(), r.message_id.clone())), "{:?} emitted again", r);
            }
        }
    }
}

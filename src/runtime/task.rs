//! A task: one partition of the repartition topic, the rooms that hash to it, and their
//! state in a RocksDB instance of its own (as a Kafka Streams task owns its stores).
//!
//! Besides the engine's state the task's store keeps, in the same atomic batch:
//! - `_o`: the next repartition offset to read, so that a restart resumes exactly where the
//!   local state is, whatever Kafka's committed offset says;
//! - `_s<topic><partition>`: the last input offset applied from each source partition, so
//!   that records the router sent twice (at-least-once routing) are applied once;
//! - `_c`: the next changelog offset, i.e. how much of the task's changelog partition the
//!   local state reflects (local only: it is not itself in the changelog).
//!
//! Every write of a commit but `_c` and the expiry index entries of markers and pending messages
//! is also a changelog record (key = store key, value = the value, or a tombstone for a delete),
//! so replaying the changelog from `_c` onwards brings any older copy of the store, or an empty
//! one, to the latest committed state: a restore writes each marker's and each pending
//! message's expiry entry beside it, and deletes a pending message's with it (see
//! `persist::derived_expiry_entry`).

use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::sync::Arc;

use crate::kafka::envelope::{self, EnvelopeError, Routed};
use crate::receipts::{persist, Engine, EngineConfig, EngineError, Event, HashMap, Millis, Outcomes, ReceiptComplete};
use crate::store::rocks::{RocksOptions, RocksStore};
use crate::store::{KvStore, StoreError, Write, WriteBatch};

const KEY_OFFSET: &[u8] = b"_o";
const PREFIX_SOURCE: &[u8] = b"_s";
const KEY_CHANGELOG: &[u8] = b"_c";

/// The positions applied from one input topic's partitions.
struct TopicPositions {
    topic: Arc<str>,
    /// Partition -> (last input offset applied, changed since the last commit).
    partitions: HashMap<i32, (i64, bool)>,
}

/// The positions applied from each input partition, by topic: looked up for every record.
#[derive(Default)]
struct Sources {
    topics: Vec<TopicPositions>,
    /// `topics`' index by name, looked up by `&str`: no allocation per record (and, as every
    /// map looked up per record, with a fast hasher).
    index: HashMap<Arc<str>, usize>,
    /// The index of the topic found last. Most records in a row come from one topic (a chat
    /// has several reads to each message), so one comparison usually answers without hashing
    /// the name.
    last: usize,
    /// The partitions whose position changed since the last commit: (index in `topics`,
    /// partition).
    dirty: Vec<(usize, i32)>,
}

impl Sources {
    /// `topic`'s index, if a position of it is held.
    fn find(&mut self, topic: &str) -> Option<usize> {
        if self.topics.get(self.last).is_some_and(|t| *t.topic == *topic) {
            return Some(self.last);
        }
        let i = *self.index.get(topic)?;
        self.last = i;
        Some(i)
    }

    /// `topic`'s index, added without positions if it was not held.
    fn find_or_add(&mut self, topic: &str) -> usize {
        if let Some(i) = self.find(topic) {
            return i;
        }
        let topic: Arc<str> = Arc::from(topic);
        let i = self.topics.len();
        self.index.insert(topic.clone(), i);
        self.topics.push(TopicPositions { topic, partitions: HashMap::default() });
        self.last = i;
        i
    }

    /// A position read from the store (committed, so not changed).
    fn load(&mut self, topic: &str, partition: i32, offset: i64) {
        let i = self.find_or_add(topic);
        self.topics[i].partitions.insert(partition, (offset, false));
    }

    /// Hands each position changed since the last commit to `f` (topic, partition, offset),
    /// and marks it unchanged.
    fn take_changed(&mut self, mut f: impl FnMut(&str, i32, i64)) {
        for (i, partition) in self.dirty.drain(..) {
            let topic = &mut self.topics[i];
            let entry = topic.partitions.get_mut(&partition).expect("dirty sources are known");
            entry.1 = false;
            f(&topic.topic, partition, entry.0);
        }
    }
}

/// A changelog record: its offset, the store key, and the value (`None`: a tombstone).
pub type ChangelogRecord = (i64, Vec<u8>, Option<Vec<u8>>);

/// The writes of a commit's batch that are changelog records, in order: all but the expiry
/// index entries of markers and pending messages, which a restore derives.
pub fn changelog_records(batch: &WriteBatch) -> impl Iterator<Item = &Write> + Clone {
    batch.writes.iter().filter(|(key, _)| !persist::is_derived_expiry_key(key))
}

#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

pub struct Task {
    pub partition: i32,
    dir: PathBuf,
    engine: Engine<RocksStore>,
    next_offset: Option<i64>,
    /// `next_offset` as of the last commit (what the store holds under `_o`, once the write
    /// in flight has landed).
    committed_offset: Option<i64>,
    /// The next changelog offset the local store has not seen (`_c`).
    changelog_offset: Option<i64>,
    /// Whether the task is catching up from its changelog (no processing, no queries).
    pub restoring: bool,
    sources: Sources,
    /// Whether anything changed since the last batch was prepared.
    uncommitted: bool,
    /// `next_offset` as of the batch prepared and not written yet, if there is one.
    prepared_offset: Option<Option<i64>>,
    /// Outcome counts of engines this task replaced (rewinds), so totals survive them.
    carried: Outcomes,
    pub skipped_duplicates: u64,
}

pub struct TaskFigures {
    pub cached_rooms: usize,
    /// State entries of the cached rooms: the unit of the cache's budget.
    pub cached_entries: usize,
    pub cached_members: usize,
    pub pending: usize,
    pub rocksdb_keys: u64,
    pub rocksdb_sst_bytes: u64,
    pub rocksdb_memtable_bytes: u64,
    pub rocksdb_block_cache_bytes: u64,
}

/// A receipt a record completed, and the timestamp of that record (the last read).
pub type Completed = (Millis, ReceiptComplete);

fn source_key(topic: &str, partition: i32) -> Vec<u8> {
    let mut key = PREFIX_SOURCE.to_vec();
    key.extend_from_slice(&(topic.len() as u16).to_be_bytes());
    key.extend_from_slice(topic.as_bytes());
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

fn i64_value(key: &[u8], v: &[u8]) -> Result<i64, StoreError> {
    Ok(i64::from_be_bytes(v.try_into().map_err(|_| StoreError::corrupt(key, "offset is not 8 bytes"))?))
}

impl Task {
    pub fn open(partition: i32, dir: PathBuf, config: EngineConfig, rocks: &RocksOptions) -> Result<Task, StoreError> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::Engine(format!("creating {}: {e}", dir.display())))?;
        let store = RocksStore::open(&dir, rocks)?;
        Self::on_store(partition, dir, store, config)
    }

    fn on_store(partition: i32, dir: PathBuf, store: RocksStore, config: EngineConfig) -> Result<Task, StoreError> {
        let read_i64 = |key: &[u8]| -> Result<Option<i64>, StoreError> {
            match store.get(key)? {
                Some(v) => Ok(Some(i64_value(key, &v)?)),
                None => Ok(None),
            }
        };
        let next_offset = read_i64(KEY_OFFSET)?;
        let changelog_offset = read_i64(KEY_CHANGELOG)?;
        let mut sources = Sources::default();
        let mut failure = None;
        store.scan_prefix(PREFIX_SOURCE, &mut |k, v| {
            let parsed = (|| {
                let len = u16::from_be_bytes(k.get(2..4)?.try_into().ok()?) as usize;
                let topic = std::str::from_utf8(k.get(4..4 + len)?).ok()?;
                let partition = i32::from_be_bytes(k.get(4 + len..8 + len)?.try_into().ok()?);
                Some((topic, partition))
            })();
            match (parsed, i64_value(k, v)) {
                (Some((topic, partition)), Ok(offset)) => {
                    sources.load(topic, partition, offset);
                    true
                }
                (None, _) => {
                    failure = Some(StoreError::corrupt(k, "malformed source key"));
                    false
                }
                (_, Err(e)) => {
                    failure = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        Ok(Task {
            partition,
            dir,
            engine: Engine::new(store, config),
            next_offset,
            committed_offset: next_offset,
            changelog_offset,
            restoring: true,
            sources,
            uncommitted: false,
            prepared_offset: None,
            carried: Outcomes::default(),
            skipped_duplicates: 0,
        })
    }

    /// The repartition offset the committed local state reflects: where to resume.
    pub fn committed_offset(&self) -> Option<i64> {
        self.committed_offset
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Applies the repartition record at `offset`. A record whose source position was
    /// applied before is skipped (counted in `skipped_duplicates`).
    pub fn process(
        &mut self,
        offset: i64,
        payload: &[u8],
        now: Millis,
        receipts: &mut Vec<Completed>,
    ) -> Result<bool, TaskError> {
        self.next_offset = Some(offset + 1);
        self.uncommitted = true;
        let Routed { source, event } = envelope::decode(payload)?;
        Ok(self.apply(&source.topic, source.partition, source.offset, source.timestamp, &event, now, receipts)?)
    }

    /// Applies the event of input record `topic`/`partition`/`offset`, which reached the task
    /// through the repartition topic or the local shortcut (see `shortcut`); skipped when
    /// that input position was applied before (`false`). The caller keeps each input
    /// partition's records in offset order. The receipts it completes are appended to
    /// `receipts`, with `source_timestamp`.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        source_timestamp: Millis,
        event: &Event,
        now: Millis,
        receipts: &mut Vec<Completed>,
    ) -> Result<bool, EngineError> {
        // The source partition's position, looked up once: this runs for every record. (A
        // topic added here and left without positions by an engine error writes nothing.)
        let t = self.sources.find_or_add(topic);
        let position = self.sources.topics[t].partitions.entry(partition);
        if let Entry::Occupied(applied) = &position {
            if offset <= applied.get().0 {
                self.skipped_duplicates += 1;
                return Ok(false);
            }
        }
        self.engine.apply(event, now)?;
        self.uncommitted = true;
        let (applied, changed) = position.or_insert((offset, false));
        *applied = offset;
        if !*changed {
            *changed = true;
            self.sources.dirty.push((t, partition));
        }
        receipts.extend(self.engine.drain_emitted().map(|r| (source_timestamp, r)));
        Ok(true)
    }

    pub fn tick(&mut self, now: Millis) -> Result<(), EngineError> {
        if self.engine.tick(now)? > 0 {
            self.uncommitted = true;
        }
        Ok(())
    }

    /// The changes since the last commit, with the next offset and the source positions, as
    /// one batch for the changelog; `None` if there are none. The task may go on applying
    /// records (their changes go to the next commit), but must be followed by
    /// [`Task::finish_commit`], or by [`Task::rewind`], before it prepares again.
    pub fn prepare_commit(&mut self) -> Result<Option<Arc<WriteBatch>>, EngineError> {
        if self.restoring || (!self.uncommitted && !self.engine.has_uncommitted()) {
            return Ok(None);
        }
        let mut extra: Vec<Write> = Vec::with_capacity(self.sources.dirty.len() + 1);
        if let Some(o) = self.next_offset {
            extra.push((KEY_OFFSET.to_vec(), Some(o.to_be_bytes().to_vec())));
        }
        self.sources.take_changed(|topic, partition, offset| {
            extra.push((source_key(topic, partition), Some(offset.to_be_bytes().to_vec())));
        });
        let batch = self.engine.prepare_commit(extra)?;
        self.prepared_offset = Some(self.next_offset);
        self.uncommitted = false;
        Ok(Some(batch))
    }

    /// Writes a prepared batch locally, once its changelog records are committed, with the
    /// changelog offset that follows them, in one atomic write. The store may go on writing
    /// it in the background (see `Engine::write_prepared`): the task reads it as committed at
    /// once, and its local state is only ever that of a whole commit.
    pub fn finish_commit(&mut self, changelog_next: Option<i64>) -> Result<(), EngineError> {
        let extra = changelog_next.map(|c| (KEY_CHANGELOG.to_vec(), Some(c.to_be_bytes().to_vec())));
        self.engine.write_prepared(extra.into_iter().collect())?;
        if changelog_next.is_some() {
            self.changelog_offset = changelog_next;
        }
        self.committed_offset = self.prepared_offset.take().expect("a prepared batch has its offset");
        Ok(())
    }

    /// Prepares and writes at once, without a changelog (tests and tools).
    pub fn commit(&mut self) -> Result<(), EngineError> {
        if self.prepare_commit()?.is_some() {
            self.finish_commit(None)?;
        }
        Ok(())
    }

    /// The next changelog offset the local state has not applied (`None`: none applied).
    pub fn changelog_offset(&self) -> Option<i64> {
        self.changelog_offset
    }

    /// Applies changelog records (offset, key, value or tombstone) to the store, with the
    /// offset after the last of them, in one atomic write: a restore interrupted at any point
    /// resumes from where it stopped.
    pub fn restore(&mut self, records: Vec<ChangelogRecord>) -> Result<(), StoreError> {
        let Some(last) = records.last().map(|r| r.0) else {
            return Ok(());
        };
        let store = self.engine.store_mut()?;
        let mut batch = WriteBatch::new();
        batch.writes.reserve(records.len() + 1);
        // The entry each pending message's latest value in this batch implies (`None`: deleted
        // in this batch), so that its tombstone deletes the entry without a read of the store.
        let mut pending: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::default();
        for (_, key, value) in records {
            match &value {
                Some(v) => {
                    let entry = persist::derived_expiry_entry(&key, v)?;
                    if let Some(entry) = &entry {
                        batch.writes.push((entry.clone(), Some(Vec::new())));
                    }
                    if persist::is_pending_key(&key) {
                        pending.insert(key.clone(), entry);
                    }
                }
                None if persist::is_pending_key(&key) => {
                    let entry = match pending.insert(key.clone(), None) {
                        Some(entry) => entry,
                        None => match store.get(&key)? {
                            Some(v) => persist::derived_expiry_entry(&key, &v)?,
                            None => None,
                        },
                    };
                    if let Some(entry) = entry {
                        batch.writes.push((entry, None));
                    }
                }
                None => {}
            }
            batch.writes.push((key, value));
        }
        batch.put(KEY_CHANGELOG.to_vec(), (last + 1).to_be_bytes().to_vec());
        store.write(&batch)?;
        self.changelog_offset = Some(last + 1);
        Ok(())
    }

    /// Ends a restore: the task re-reads its offsets from the restored store and can run.
    pub fn finish_restore(self) -> Result<Task, StoreError> {
        let mut task = self.rewind()?;
        task.restoring = false;
        Ok(task)
    }

    /// Forgets everything not committed: the task is as it was after its last local commit
    /// (and is `restoring` again: its changelog may be ahead of its store).
    pub fn rewind(self) -> Result<Task, StoreError> {
        let mut carried = self.carried;
        carried.add(self.engine.outcomes());
        let skipped = self.skipped_duplicates;
        let config = self.engine.config().clone();
        let mut task = Self::on_store(self.partition, self.dir, self.engine.into_store(), config)?;
        task.carried = carried;
        task.skipped_duplicates = skipped;
        Ok(task)
    }

    /// Engine outcomes since the task was opened in this process.
    pub fn outcomes(&self) -> Outcomes {
        let mut o = self.carried;
        o.add(self.engine.outcomes());
        o
    }

    /// The next repartition offset this task will read (processed, committed or not).
    pub fn position(&self) -> Option<i64> {
        self.next_offset
    }

    /// The position the local shortcut compares with acknowledged repartition offsets: 0 for
    /// a task that has read nothing yet (below any acknowledged offset: its lane opens only
    /// once it has read past the barrier).
    pub fn lane_position(&self) -> i64 {
        self.next_offset.unwrap_or(0)
    }

    /// Figures for the metrics: the engine's cache and the store's size.
    pub fn figures(&self) -> TaskFigures {
        let store = self.engine.store();
        let prop = |name: &str| store.property_int(name).unwrap_or(0);
        let (cached_rooms, cached_entries) = self.engine.cache_usage();
        let (pending, cached_members) = self.engine.cached_pending_and_members();
        TaskFigures {
            cached_rooms,
            cached_entries,
            cached_members,
            pending,
            rocksdb_keys: prop("rocksdb.estimate-num-keys"),
            rocksdb_sst_bytes: prop("rocksdb.live-sst-files-size"),
            rocksdb_memtable_bytes: prop("rocksdb.cur-size-all-mem-tables"),
            rocksdb_block_cache_bytes: prop("rocksdb.block-cache-usage"),
        }
    }

    pub fn engine_mut(&mut self) -> &mut Engine<RocksStore> {
        &mut self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(user: &str) -> Event {
        Event::Join { room_id: "r".into(), user_id: user.into(), at: 1 }
    }

    /// Applies a join as input record `topic`/`partition`/`offset`: whether it was applied.
    fn apply(task: &mut Task, topic: &str, partition: i32, offset: i64) -> bool {
        task.apply(topic, partition, offset, 0, &join(&format!("u{offset}")), 1, &mut Vec::new()).expect("applies")
    }

    /// Every key and value of the task's store but `_c`, in key order.
    fn contents(task: &mut Task) -> Vec<(Vec<u8>, Vec<u8>)> {
        task.engine.wait_written().unwrap();
        let mut all = Vec::new();
        let mut visit = |k: &[u8], v: &[u8]| {
            if k != KEY_CHANGELOG {
                all.push((k.to_vec(), v.to_vec()));
            }
            true
        };
        task.engine.store().scan(b"", None, &mut visit).unwrap();
        all
    }

    /// Commits as the processor does: the batch's changelog records are appended to
    /// `changelog`, then the batch is written with the changelog offset after them.
    fn commit_to(task: &mut Task, changelog: &mut Vec<ChangelogRecord>) {
        if let Some(batch) = task.prepare_commit().unwrap() {
            for (key, value) in changelog_records(&batch) {
                changelog.push((changelog.len() as i64, key.clone(), value.clone()));
            }
            drop(batch);
            task.finish_commit(Some(changelog.len() as i64)).unwrap();
        }
    }

    #[test]
    fn a_store_restored_from_the_changelog_is_the_tasks_own_with_the_expiry_entries_derived() {
        let config = EngineConfig { completed_marker_ttl_ms: 1_000, ..EngineConfig::default() };
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| Task::open(0, dir.path().join(name), config.clone(), &RocksOptions::default()).unwrap();
        let restore = |name: &str, rounds: &[&[ChangelogRecord]]| {
            let mut task = open(name);
            for round in rounds {
                task.restore(round.to_vec()).unwrap();
            }
            task.finish_restore().unwrap()
        };
        let read = |message_id: &str| Event::Read {
            room_id: "r".into(),
            user_id: "u2".into(),
            message_id: message_id.into(),
            read_at: 7,
            scope: crate::receipts::ReadScope::Message,
        };
        let mut task = open("own").finish_restore().unwrap();
        let mut changelog = Vec::new();
        let events = [
            join("u1"),
            join("u2"),
            Event::Message { room_id: "r".into(), message_id: "m1".into(), sender_id: "u1".into(), sent_at: 5 },
            Event::Message { room_id: "r".into(), message_id: "m2".into(), sender_id: "u1".into(), sent_at: 6 },
            read("m1"),
        ];
        for (offset, event) in events.iter().enumerate() {
            assert!(task.apply("t", 0, offset as i64, 0, event, 10, &mut Vec::new()).unwrap());
        }
        commit_to(&mut task, &mut changelog);
        let entries = |contents: &[(Vec<u8>, Vec<u8>)], kind: u8| {
            contents.iter().filter(|(k, _)| k[0] == persist::TAG_EXPIRY && k[9] == kind).count()
        };
        let own = contents(&mut task);
        assert_eq!(entries(&own, persist::EXPIRE_MARKER), 1, "m1 completed: one marker, one entry");
        assert_eq!(entries(&own, persist::EXPIRE_PENDING), 1, "m2 pending: one entry");
        assert!(!changelog.iter().any(|(_, k, _)| k[0] == persist::TAG_EXPIRY), "no entry in the changelog");
        assert_eq!(contents(&mut restore("first", &[&changelog])), own);

        // u2 reads m2, which completes: the changelog gets its pending key's tombstone, and
        // nothing for its entry, which must go with it when restored, whether the pending
        // message's put is in the same round of the restore or in the store already.
        let first = changelog.len();
        assert!(task.apply("t", 0, 5, 0, &read("m2"), 10, &mut Vec::new()).unwrap());
        commit_to(&mut task, &mut changelog);
        let own = contents(&mut task);
        assert_eq!(entries(&own, persist::EXPIRE_MARKER), 2);
        assert_eq!(entries(&own, persist::EXPIRE_PENDING), 0);
        assert!(changelog[first..].iter().any(|(_, k, v)| persist::is_pending_key(k) && v.is_none()));
        assert!(!changelog.iter().any(|(_, k, _)| k[0] == persist::TAG_EXPIRY), "no entry in the changelog");
        assert_eq!(contents(&mut restore("whole", &[&changelog])), own, "in one round");
        assert_eq!(contents(&mut restore("rounds", &[&changelog[..first], &changelog[first..]])), own, "in two");

        // The markers expire: the changelog gets their tombstones, and nothing for their entries.
        task.tick(2_000).unwrap();
        commit_to(&mut task, &mut changelog);
        let own = contents(&mut task);
        let is_entry = |(k, _): &(Vec<u8>, Vec<u8>)| k[0] == persist::TAG_EXPIRY;
        assert!(!own.iter().any(is_entry));
        // Restored from the whole changelog, a marker's put and its tombstone leave its entry
        // behind, due already: the first tick drops it.
        let mut restored = restore("second", &[&changelog]);
        let stale: Vec<_> = contents(&mut restored).into_iter().filter(is_entry).collect();
        assert_eq!(entries(&stale, persist::EXPIRE_MARKER), 2, "{stale:?}");
        assert_eq!(contents(&mut restored).into_iter().filter(|w| !is_entry(w)).collect::<Vec<_>>(), own);
        restored.tick(2_000).unwrap();
        restored.commit().unwrap();
        assert_eq!(contents(&mut restored), own);
        assert_eq!(restored.engine.outcomes().marker_expired, 0, "a stale entry expires nothing");
    }

    #[test]
    fn an_input_position_applied_before_is_skipped_per_partition_also_after_a_commit_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let open = || Task::open(0, dir.path().join("t0"), EngineConfig::default(), &RocksOptions::default());
        let mut task = open().unwrap().finish_restore().unwrap();
        assert!(apply(&mut task, "a", 0, 5));
        assert!(!apply(&mut task, "a", 0, 5), "the same position again");
        assert!(!apply(&mut task, "a", 0, 4), "an earlier one");
        assert!(apply(&mut task, "a", 1, 4), "another partition has its own position");
        assert!(apply(&mut task, "b", 0, 1), "and another topic");
        assert!(apply(&mut task, "a", 0, 6));
        assert_eq!(task.skipped_duplicates, 2);
        task.commit().unwrap();
        // Applied after the commit: a position that moves again is written at the next one.
        assert!(apply(&mut task, "a", 0, 7));
        task.commit().unwrap();
        drop(task);

        let mut task = open().unwrap().finish_restore().unwrap();
        for (topic, partition, offset) in [("a", 0, 7), ("a", 1, 4), ("b", 0, 1)] {
            assert!(!apply(&mut task, topic, partition, offset), "{topic}/{partition} is at {offset}");
        }
        assert!(apply(&mut task, "a", 0, 8));
        assert!(apply(&mut task, "a", 1, 5));
        assert_eq!(task.skipped_duplicates, 3);
    }
}

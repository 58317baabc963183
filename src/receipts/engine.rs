//! The receipt engine: spec rules 1-11 applied to one task's rooms.
//!
//! Pure: events and "now" come in, `receipt_complete` records and outcome counts come out, and
//! state is read and written only through a [`KvStore`]. Hot rooms stay in memory (an LRU
//! bounded by [`EngineConfig::cache_entries`]) and are written back key by key when the
//! caller commits, so an event costs a few in-memory map operations and, on average, well
//! under one storage access.
//!
//! Markers of finished messages and the expiry index are not per-room in-memory state: they
//! are read from the store on demand, through `side` (writes not yet committed), the batch
//! of a commit prepared and not written yet (`prepared`, see [`Engine::prepare_commit`]) and
//! the commit the store may still be writing (`in_flight`, see [`Engine::write_prepared`]).
//! A pending message's expiry index entry is written with the message, by the first commit
//! that finds it still pending; until then its room is where the engine finds it due.
//! A resident room keeps only its latest markers, and the ids of all of them while they are
//! few (read when it is loaded), so that a new message's id needs no lookup to rule out a
//! duplicate. A load sees every marker of its room: a room with changes not yet in flight stays
//! resident, and loading one whose changes are in flight waits for them to land.

use super::{HashMap, HashSet};
use std::ops::{Range, RangeInclusive};
use std::sync::Arc;

use super::config::EngineConfig;
use super::event::{Event, Id, Millis, ReadScope, ReceiptComplete};
use super::outcome::Outcomes;
use super::persist::{self, MarkerState, MarkerV1};
use super::room::{Parked, Pending, Room};
use crate::store::{KvStore, StoreError, Write, WriteBatch};

/// Errors of the engine: always the store's (bad input never reaches the engine, and
/// the engine does not fail on any sequence of well-formed events).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a commit failed earlier; this engine must be rebuilt from its store")]
    Poisoned,
}

impl EngineError {
    pub fn is_retriable(&self) -> bool {
        match self {
            EngineError::Store(e) => e.is_retriable(),
            EngineError::Poisoned => true,
        }
    }
}

/// Key-level writes to markers and the expiry index that are not committed yet. A `None`
/// value deletes; a key missing here is whatever the store says.
///
/// Not in the map: the expiry index entries written since the last commit, which nothing
/// looks up by key. A marker's is listed in `markers` and goes into the commit's batch
/// as it is; a pending message's is written by its room, when it first writes the message
/// (`Room::flush_into`), so that a message completed before the next commit, as most are,
/// has none to put and none to delete. Each was a map operation on a table of some hundred
/// thousand keys, which misses the CPU's caches. Until the commit, `Engine::due_expiries`
/// finds those due in `markers` and in the rooms, when `markers_due` and `pending_due` say
/// that one can be.
#[derive(Default)]
pub(super) struct SideWrites {
    /// Hashed, not ordered: every new message looks its marker up here before the store, and
    /// a `BTreeMap` of tens of thousands of keys sharing room prefixes spent most of that in
    /// `memcmp`. The two ordered uses (due expiries, the commit batch) sort what they take.
    writes: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// The expiry index entries of the markers written since the last commit.
    markers: Vec<Vec<u8>>,
    /// The earliest expiry in `markers`, if it holds any.
    markers_due: Option<Millis>,
    /// Whether an entry of `markers` may have been handled (deleted in `writes`) already.
    markers_handled: bool,
    /// The earliest expiry of a pending message not written yet, if there is one.
    pending_due: Option<Millis>,
}

impl SideWrites {
    /// `key` as the engine sees it: these writes, then the commits not in the store yet
    /// (`behind`), then the store.
    pub(super) fn get(
        &self,
        behind: Behind<'_>,
        store: &dyn KvStore,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(v) = self.writes.get(key) {
            return Ok(v.clone());
        }
        if let Some(v) = behind.get(key) {
            return Ok(v.clone());
        }
        store.get(key)
    }
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }
    /// Deletes a key; `on_disk = false` means it was never committed, so no tombstone is needed.
    fn delete(&mut self, key: Vec<u8>, on_disk: bool) {
        if on_disk {
            self.writes.insert(key, None);
        } else {
            self.writes.remove(&key);
        }
    }
    /// A pending message that expires at `at` is not written yet.
    fn pending_unwritten(&mut self, at: Millis) {
        self.pending_due = Some(self.pending_due.map_or(at, |due| due.min(at)));
    }
    /// A marker's expiry index entry, due at `at`.
    fn marker_entry(&mut self, at: Millis, key: Vec<u8>) {
        self.markers.push(key);
        self.markers_due = Some(self.markers_due.map_or(at, |due| due.min(at)));
    }
    /// Deletes a due expiry index entry (due at `at`) that has been handled. One of `markers`,
    /// never written, leaves it at the commit with its delete ([`SideWrites::take_markers`]):
    /// searched for here, a tick that handles thousands would scan the list for each.
    fn delete_entry(&mut self, key: &[u8], at: Millis) {
        self.markers_handled |= self.markers_due.is_some_and(|due| due <= at);
        self.writes.insert(key.to_vec(), None);
    }
    /// Takes the entries of `markers` for a commit, without those handled already (and
    /// without their deletes), before `writes` is drained. The caller gives the emptied list
    /// back, so that its room serves the next commit.
    fn take_markers(&mut self) -> Vec<Vec<u8>> {
        if std::mem::take(&mut self.markers_handled) {
            let SideWrites { writes, markers, .. } = self;
            markers.retain(|key| writes.remove(key.as_slice()).is_none());
        }
        self.markers_due = None;
        std::mem::take(&mut self.markers)
    }
}

/// A commit's batch that the store may still be writing ([`KvStore::start_write`]). Its side
/// writes (markers and the expiry index) are a sorted run of it, `side`; the engine reads
/// them from here until the store holds the batch. Room keys are not read here: a room is
/// loaded with a prefix scan of the store, so loading one of `rooms` (evicted since) first
/// waits for the write. Other rooms' keys are not in the batch, so their loads do not wait.
pub(super) struct InFlight {
    batch: Arc<WriteBatch>,
    side: Range<usize>,
    /// The rooms whose keys the batch writes.
    rooms: HashSet<Id>,
}

impl InFlight {
    fn side(&self) -> &[Write] {
        &self.batch.writes[self.side.clone()]
    }

    /// The batch's write of `key` (`Some(None)`: a delete), if it has one.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        let side = self.side();
        side.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok().map(|i| &side[i].1)
    }

    /// The batch's side writes with `from <= key < to`, in key order.
    fn range(&self, from: &[u8], to: &[u8]) -> &[Write] {
        let side = self.side();
        let start = side.partition_point(|(k, _)| k.as_slice() < from);
        let end = side.partition_point(|(k, _)| k.as_slice() < to);
        &side[start..end.max(start)]
    }
}

/// The commits the store does not hold yet, newest first: the one prepared (and not written)
/// and the one the store may still be writing.
#[derive(Clone, Copy, Default)]
pub(super) struct Behind<'a> {
    pub(super) prepared: Option<&'a InFlight>,
    pub(super) in_flight: Option<&'a InFlight>,
}

impl Behind<'_> {
    /// The newest of their writes of `key` (`Some(None)`: a delete), if they have one.
    fn get(&self, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        self.prepared.and_then(|f| f.get(key)).or_else(|| self.in_flight.and_then(|f| f.get(key)))
    }
}

/// Everything the rules touch besides the room itself.
struct Ctx<'a> {
    store: &'a dyn KvStore,
    behind: Behind<'a>,
    side: &'a mut SideWrites,
    config: &'a EngineConfig,
    outcomes: &'a mut Outcomes,
    emitted: &'a mut Vec<ReceiptComplete>,
    now: Millis,
}

pub struct Engine<S> {
    pub(super) store: S,
    config: EngineConfig,
    pub(super) rooms: HashMap<Id, Room>,
    /// Counts room accesses; a room's `last_used` is this clock at its latest access.
    clock: u64,
    cached_entries: usize,
    dirty_rooms: Vec<Id>,
    pub(super) side: SideWrites,
    /// The last commit, until the store is known to hold it.
    pub(super) in_flight: Option<InFlight>,
    /// The batch `prepare_commit` returned, until `write_prepared` writes it: the engine reads
    /// it as if the store held it, and goes on applying events meanwhile.
    pub(super) prepared: Option<InFlight>,
    emitted: Vec<ReceiptComplete>,
    outcomes: Outcomes,
    poisoned: bool,
}

/// How many expiry index entries one tick handles at most; the rest wait for the next tick,
/// so that a long outage does not turn the first tick into a long stall.
pub const EXPIRY_BATCH: usize = 10_000;

impl<S: KvStore> Engine<S> {
    pub fn new(store: S, config: EngineConfig) -> Self {
        Engine {
            store,
            config,
            rooms: HashMap::default(),
            clock: 0,
            cached_entries: 0,
            dirty_rooms: Vec::new(),
            side: SideWrites::default(),
            in_flight: None,
            prepared: None,
            emitted: Vec::new(),
            outcomes: Outcomes::default(),
            poisoned: false,
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Sets the cache's budget, in state entries ([`EngineConfig::cache_entries`]). A cache
    /// past it is evicted down to it after the next commit.
    pub fn set_cache_entries(&mut self, entries: usize) {
        self.config.cache_entries = entries;
    }
    /// The store, which may not hold the last commit yet (see [`Engine::wait_written`]).
    pub fn store(&self) -> &S {
        &self.store
    }
    /// The store itself, once it holds every commit, for writes that bypass the engine
    /// (restoring a changelog into a task's store before its engine is used). Drop the engine
    /// afterwards: its cache does not know about such writes.
    pub fn store_mut(&mut self) -> Result<&mut S, StoreError> {
        self.await_write()?;
        Ok(&mut self.store)
    }
    /// Gives the store back once it holds every commit that did not fail, dropping
    /// uncommitted changes. (A commit that failed to write is not in the store at all, so the
    /// store is at an earlier commit, whole.)
    pub fn into_store(mut self) -> S {
        let _ = self.wait_written();
        self.store
    }
    /// Waits until the store holds the last commit. An error says that writing it failed: the
    /// engine is poisoned (its cache is ahead of the store) and must be rebuilt on the store.
    pub fn wait_written(&mut self) -> Result<(), EngineError> {
        Ok(self.await_write()?)
    }
    fn await_write(&mut self) -> Result<(), StoreError> {
        if self.in_flight.take().is_some() {
            if let Err(e) = self.store.finish_write() {
                self.poisoned = true;
                return Err(e);
            }
        }
        Ok(())
    }
    /// The commits the store does not hold yet.
    pub(super) fn behind(&self) -> Behind<'_> {
        Behind { prepared: self.prepared.as_ref(), in_flight: self.in_flight.as_ref() }
    }

    /// Lets go of the commit in flight once the store has written it: from then on, lookups
    /// go straight to the store.
    fn release_written(&mut self) -> Result<(), EngineError> {
        if self.in_flight.is_some() && self.store.write_ended() {
            self.wait_written()?;
        }
        Ok(())
    }
    /// Counts since the engine was created.
    pub fn outcomes(&self) -> &Outcomes {
        &self.outcomes
    }
    /// The `receipt_complete` records produced since the last call, in emission order.
    pub fn take_emitted(&mut self) -> Vec<ReceiptComplete> {
        std::mem::take(&mut self.emitted)
    }
    /// As [`Engine::take_emitted`], keeping the engine's buffer for the next ones.
    pub fn drain_emitted(&mut self) -> std::vec::Drain<'_, ReceiptComplete> {
        self.emitted.drain(..)
    }
    pub fn has_uncommitted(&self) -> bool {
        !self.dirty_rooms.is_empty() || !self.side.writes.is_empty()
    }
    /// Rooms and state entries held in memory.
    pub fn cache_usage(&self) -> (usize, usize) {
        (self.rooms.len(), self.cached_entries)
    }

    /// Pending messages and members of the rooms held in memory.
    pub fn cached_pending_and_members(&self) -> (usize, usize) {
        self.rooms.values().fold((0, 0), |(p, m), r| (p + r.pending.len(), m + r.members.len()))
    }

    /// Applies one event at processing time `now`.
    pub fn apply(&mut self, event: &Event, now: Millis) -> Result<(), EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        self.release_written()?;
        let room_id = event.room_id().clone();
        self.load(&room_id)?;
        let room = self.rooms.get_mut(&room_id).expect("loaded above");
        let mut ctx = Ctx {
            store: &self.store,
            behind: Behind { prepared: self.prepared.as_ref(), in_flight: self.in_flight.as_ref() },
            side: &mut self.side,
            config: &self.config,
            outcomes: &mut self.outcomes,
            emitted: &mut self.emitted,
            now,
        };
        if !room.listed_dirty {
            room.listed_dirty = true;
            self.dirty_rooms.push(room_id.clone());
        }
        match event {
            Event::Message { message_id, sender_id, sent_at, .. } => {
                on_message(room, &mut ctx, message_id, sender_id, *sent_at)?
            }
            Event::Join { user_id, .. } => on_join(room, &mut ctx, user_id),
            Event::Leave { user_id, .. } => on_leave(room, &mut ctx, user_id)?,
            Event::Read { user_id, message_id, scope, .. } => on_read(room, &mut ctx, user_id, message_id, *scope)?,
        }
        Ok(())
    }

    /// Expires what is due at `now`: parked reads, pending messages, markers (rules 8, 10).
    /// Returns how many index entries it handled; at most [`EXPIRY_BATCH`].
    /// While a commit's batch is prepared and not written, does nothing (returns 0): the
    /// next tick after the write catches up.
    pub fn tick(&mut self, now: Millis) -> Result<usize, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        if self.prepared.is_some() {
            return Ok(0);
        }
        self.release_written()?;
        let due = self.due_expiries(now)?;
        for key in &due {
            let entry = persist::parse_expiry_key(key)?;
            let (at, kind, room_id, id) = (entry.at, entry.kind, Id::from(entry.room), entry.id.to_vec());
            match kind {
                persist::EXPIRE_MARKER => {
                    let message_id = String::from_utf8_lossy(&id);
                    let mkey = persist::marker_key(&room_id, &message_id);
                    if let Some(bytes) = self.side.get(self.behind(), &self.store, &mkey)? {
                        let marker: MarkerV1 = persist::decode(&mkey, &bytes)?;
                        if marker.expire_at == at {
                            self.side.delete(mkey, true);
                            self.outcomes.marker_expired += 1;
                            if let Some(room) = self.rooms.get_mut(&room_id) {
                                room.forget_marker(&message_id);
                            }
                        }
                    }
                }
                persist::EXPIRE_PENDING | persist::EXPIRE_PARKED => {
                    self.load(&room_id)?;
                    let room = self.rooms.get_mut(&room_id).expect("loaded above");
                    if !room.listed_dirty {
                        room.listed_dirty = true;
                        self.dirty_rooms.push(room_id.clone());
                    }
                    let mut ctx = Ctx {
                        store: &self.store,
                        behind: Behind { prepared: self.prepared.as_ref(), in_flight: self.in_flight.as_ref() },
                        side: &mut self.side,
                        config: &self.config,
                        outcomes: &mut self.outcomes,
                        emitted: &mut self.emitted,
                        now,
                    };
                    if kind == persist::EXPIRE_PENDING {
                        expire_pending(room, &mut ctx, &id, at)?;
                    } else {
                        expire_parked(room, &mut ctx, &id, at)?;
                    }
                }
                _ => return Err(StoreError::corrupt(key, "unknown expiry kind").into()),
            }
            // The entry is handled whether or not it was stale. (That of a pending message not
            // written yet, which expired before the commit after it, gets a delete it does
            // not need: a tombstone in the local store, and never in the changelog.)
            self.side.delete_entry(key, at);
        }
        Ok(due.len())
    }

    /// Expiry index keys due at `now`, in key order: those in the store, in the commit in
    /// flight, in the one prepared and uncommitted, each as the newest of them has it.
    fn due_expiries(&self, now: Millis) -> Result<Vec<Vec<u8>>, StoreError> {
        let lower = [persist::TAG_EXPIRY];
        let upper = persist::expiry_upper_bound(now);
        let mut keys = Vec::new();
        self.store.scan(&lower, Some(&upper), &mut |k, _| {
            keys.push(k.to_vec());
            keys.len() < EXPIRY_BATCH
        })?;
        let behind = self.behind();
        for layer in [behind.prepared, behind.in_flight].into_iter().flatten() {
            let range = layer.range(&lower, &upper);
            keys.extend(range.iter().filter(|(_, v)| v.is_some()).map(|(k, _)| k.clone()));
        }
        for (k, v) in &self.side.writes {
            if v.is_some() && k.as_slice() >= &lower[..] && k.as_slice() < &upper[..] {
                keys.push(k.clone());
            }
        }
        if self.side.markers_due.is_some_and(|due| due <= now) {
            keys.extend(self.side.markers.iter().filter(|k| k.as_slice() < &upper[..]).cloned());
        }
        // The entries of pending messages not written yet: each is in a room with changes
        // not prepared yet, and stays due until the message completes or expires.
        if self.side.pending_due.is_some_and(|due| due <= now) {
            for room in self.dirty_rooms.iter().filter_map(|id| self.rooms.get(id)) {
                for (seq, p) in room.pending.iter().filter(|(_, p)| !p.persisted && p.expire_at <= now) {
                    keys.push(persist::expiry_key(p.expire_at, persist::EXPIRE_PENDING, &room.id, &seq.to_be_bytes()));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        // A key only the store has is there; the others are as their newest write says.
        keys.retain(|k| match self.side.writes.get(k) {
            Some(v) => v.is_some(),
            None => behind.get(k).is_none_or(Option::is_some),
        });
        keys.truncate(EXPIRY_BATCH);
        Ok(keys)
    }

    /// Collects every uncommitted change as one batch (plus `extra`, e.g. the input offsets
    /// these changes consumed), begins writing it atomically, and returns it (e.g. for a
    /// changelog). If the write fails the engine is poisoned: drop it and build a new one on
    /// the store.
    pub fn commit(&mut self, extra: Vec<Write>) -> Result<Arc<WriteBatch>, EngineError> {
        drop(self.prepare_commit(extra)?);
        self.write_prepared(Vec::new())
    }

    /// The first half of [`Engine::commit`]: every uncommitted change as one batch (plus
    /// `extra`), not written yet, for the caller to send to the changelog. The engine reads
    /// the batch as if the store held it, and may go on applying events: their changes go to
    /// the next commit. Until [`Engine::write_prepared`] writes it, it neither expires
    /// anything ([`Engine::tick`] does nothing) nor prepares another batch. If the batch is
    /// never to be written (the transaction that carries it aborted), drop the engine and
    /// build a new one on the store.
    ///
    /// # Panics
    /// If a batch is prepared already.
    pub fn prepare_commit(&mut self, extra: Vec<Write>) -> Result<Arc<WriteBatch>, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        assert!(self.prepared.is_none(), "a commit's batch is prepared already: write it first");
        let mut batch = WriteBatch::new();
        let mut rooms = HashSet::default();
        let mut pending_entries = Vec::new();
        for room_id in std::mem::take(&mut self.dirty_rooms) {
            if let Some(room) = self.rooms.get_mut(&room_id) {
                room.listed_dirty = false;
                room.flush_into(&mut batch, &mut pending_entries);
                let weight = room.entries();
                self.cached_entries = self.cached_entries + weight - room.weight;
                room.weight = weight;
                rooms.insert(room_id);
            }
        }
        let start = batch.writes.len();
        let mut markers = self.side.take_markers();
        let side_writes = self.side.writes.len();
        batch.writes.reserve(side_writes + markers.len() + pending_entries.len() + extra.len());
        batch.writes.extend(self.side.writes.drain());
        batch.writes.extend(markers.drain(..).map(|key| (key, Some(Vec::new()))));
        self.side.markers = markers;
        batch.writes.extend(pending_entries);
        self.side.pending_due = None;
        // The map keeps the room this commit needed, and the next commit most likely needs as
        // much: grown again from nothing, it rehashed ever larger tables, about 2% of the
        // processing thread (BENCHMARKS.md, 6 December, a seventeenth session). After a
        // burst, it shrinks to what the last commit needed.
        self.side.writes.shrink_to(side_writes);
        // In key order, as RocksDB inserts a sorted batch fastest, for a repeatable changelog,
        // and so that the commit prepared or in flight is searchable (`InFlight`).
        batch.writes[start..].sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let side = start..batch.writes.len();
        batch.writes.extend(extra);
        let batch = Arc::new(batch);
        self.prepared = Some(InFlight { batch: batch.clone(), side, rooms });
        Ok(batch)
    }

    /// Whether a batch is prepared and not written yet.
    pub fn has_prepared(&self) -> bool {
        self.prepared.is_some()
    }

    /// The second half of [`Engine::commit`]: begins writing the batch [`Engine::prepare_commit`]
    /// returned, with `extra` at its end (such as the changelog offset it reached), atomically,
    /// after the commit before it, and returns it. The caller should have dropped its copy of
    /// the batch by now (else it is copied here to add `extra`).
    ///
    /// A store that writes in the background may still be writing it when this returns. The
    /// engine goes on at once: it reads the batch's markers and expiry entries from its own
    /// copy, and waits for the write before anything that reads more of the store (loading a
    /// room whose keys it writes, evicted since) and before the next commit's write. A failed
    /// write shows in [`Engine::wait_written`] or in whichever later call waited for it, and
    /// poisons the engine. If starting the write fails the engine is poisoned.
    ///
    /// # Panics
    /// If no batch is prepared.
    pub fn write_prepared(&mut self, extra: Vec<Write>) -> Result<Arc<WriteBatch>, EngineError> {
        if self.poisoned {
            return Err(EngineError::Poisoned);
        }
        self.wait_written()?;
        let InFlight { mut batch, side, rooms } =
            self.prepared.take().expect("write_prepared without a prepared batch");
        if !extra.is_empty() {
            Arc::make_mut(&mut batch).writes.extend(extra);
        }
        // Until the write has begun, the store is behind what the engine has handed out.
        self.poisoned = true;
        self.store.start_write(batch.clone())?;
        self.in_flight = Some(InFlight { batch: batch.clone(), side, rooms });
        self.poisoned = false;
        self.evict();
        Ok(batch)
    }

    /// Evicts least recently used rooms once the cache is past its budget, down to 90% of
    /// it, so that the O(rooms) search for victims runs once per tenth of the cache's
    /// turnover rather than on every commit. Only called right after a commit; rooms changed
    /// since it was prepared stay.
    fn evict(&mut self) {
        if self.cached_entries <= self.config.cache_entries {
            return;
        }
        let target = self.config.cache_entries / 10 * 9;
        let mut by_age: Vec<(u64, Id)> =
            self.rooms.values().filter(|r| !r.listed_dirty).map(|r| (r.last_used, r.id.clone())).collect();
        by_age.sort_unstable_by_key(|(last_used, _)| *last_used);
        for (_, room_id) in by_age {
            if self.cached_entries <= target {
                break;
            }
            if let Some(room) = self.rooms.remove(&room_id) {
                self.cached_entries -= room.weight;
            }
        }
    }

    /// Makes `room_id` resident and most recently used.
    pub(super) fn load(&mut self, room_id: &Id) -> Result<(), StoreError> {
        self.clock += 1;
        if let Some(room) = self.rooms.get_mut(room_id) {
            room.last_used = self.clock;
        } else {
            // The room may have been evicted with its last changes still in flight.
            if self.in_flight.as_ref().is_some_and(|f| f.rooms.contains(room_id)) {
                self.await_write()?;
            }
            let mut room = Room::load(&self.store, room_id.clone())?;
            room.last_used = self.clock;
            self.cached_entries += room.weight;
            self.rooms.insert(room_id.clone(), room);
        }
        Ok(())
    }
}

fn marker(ctx: &Ctx, room: &str, message_id: &str) -> Result<Option<MarkerV1>, StoreError> {
    let key = persist::marker_key(room, message_id);
    match ctx.side.get(ctx.behind, ctx.store, &key)? {
        Some(bytes) => Ok(Some(persist::decode(&key, &bytes)?)),
        None => Ok(None),
    }
}

/// The seq of a message that completed or expired in this room (its marker), if any. The
/// room answers without the store when it can: from its recent markers (a read after the
/// message finished) or its marker ids (a new message's id, a read ahead of its message).
/// The recent markers first: a read that finds its message there needs no look at the ids,
/// a busy room's filter of them being a cache miss (BENCHMARKS.md, 7 December, a
/// twenty-first session).
fn marker_seq(room: &mut Room, ctx: &Ctx, message_id: &Id) -> Result<Option<u64>, StoreError> {
    if let Some(seq) = room.recent_marker(message_id) {
        return Ok(Some(seq));
    }
    if room.surely_no_marker(message_id) {
        return Ok(None);
    }
    let found = marker(ctx, &room.id, message_id)?;
    if let Some(m) = &found {
        room.widen_markers(room.last_seq.saturating_sub(m.seq));
        room.remember_marker(message_id.clone(), m.seq);
    }
    Ok(found.map(|m| m.seq))
}

fn put_marker(room: &mut Room, ctx: &mut Ctx, message_id: &Id, marker: MarkerV1) {
    let index = persist::expiry_key(marker.expire_at, persist::EXPIRE_MARKER, &room.id, message_id.as_bytes());
    ctx.side.marker_entry(marker.expire_at, index);
    ctx.side.put(persist::marker_key(&room.id, message_id), persist::encode(&marker));
    room.marker_written(message_id);
    room.remember_marker(message_id.clone(), marker.seq);
}

/// Rule 1.
fn on_join(room: &mut Room, ctx: &mut Ctx, user: &Id) {
    if room.members.contains_key(user) {
        ctx.outcomes.join_of_member += 1;
        return;
    }
    ctx.outcomes.join_applied += 1;
    // H[u] = max(H[u], last_seq); a former member's position is at most last_seq, so this
    // is last_seq. Joins never complete anything: the new member holds nothing back.
    room.add_member(user.clone(), room.last_seq);
}

/// Rule 2.
fn on_leave(room: &mut Room, ctx: &mut Ctx, user: &Id) -> Result<(), StoreError> {
    match room.remove_member(user) {
        None => ctx.outcomes.leave_of_non_member += 1,
        Some(pos) => {
            ctx.outcomes.leave_applied += 1;
            settle(room, ctx, pos.saturating_add(1)..=u64::MAX);
        }
    }
    Ok(())
}

/// Rules 3, 7, 9, 11, and the parked reads of rule 8.
fn on_message(room: &mut Room, ctx: &mut Ctx, message_id: &Id, sender: &Id, sent_at: Millis) -> Result<(), StoreError> {
    if room.pending_ids.contains_key(message_id) || marker_seq(room, ctx, message_id)?.is_some() {
        ctx.outcomes.duplicate_message += 1;
        return Ok(());
    }
    ctx.outcomes.message_applied += 1;
    let seq = room.last_seq + 1;
    room.last_seq = seq;
    room.dirty.meta = true;
    let sender_is_member = room.members.contains_key(sender);
    let required = (room.members.len() - usize::from(sender_is_member)) as u32;
    if room.members.len() > ctx.config.large_room_member_limit as usize {
        ctx.outcomes.large_room_message += 1;
        let expire_at = ctx.now.saturating_add(ctx.config.completed_marker_ttl_ms);
        let m = MarkerV1 {
            seq,
            state: MarkerState::Untracked,
            at: ctx.now,
            expire_at,
            sender_id: sender.to_string(),
            sent_at,
            required,
        };
        put_marker(room, ctx, message_id, m);
    } else {
        let expire_at = ctx.now.saturating_add(ctx.config.pending_message_ttl_ms);
        ctx.side.pending_unwritten(expire_at);
        room.insert_pending(
            seq,
            Pending {
                message_id: message_id.clone(),
                sender_id: sender.clone(),
                sent_at,
                required,
                expire_at,
                readers: Vec::new(),
                persisted: false,
            },
        );
    }
    // Sending implies having read the room up to here.
    let from = if sender_is_member { room.set_pos(sender, seq) + 1 } else { seq };
    settle(room, ctx, from..=seq);

    if let Some(reads) = room.parked.remove(message_id) {
        room.mark_parked_dirty(message_id);
        for read in reads {
            forget_parked_index(room, ctx, message_id, &read);
            ctx.outcomes.parked_read_applied += 1;
            let pending = room.pending.contains_key(&seq);
            read_known(room, ctx, &read.user_id, seq, read.scope, pending);
        }
    }
    Ok(())
}

/// Removes a parked read's per-user entry and its expiry index entry.
fn forget_parked_index(room: &mut Room, ctx: &mut Ctx, message_id: &Id, read: &Parked) {
    if let Some(set) = room.parked_by_user.get_mut(&read.user_id) {
        set.remove(&(read.park_seq, message_id.clone()));
        if set.is_empty() {
            room.parked_by_user.remove(&read.user_id);
        }
    }
    ctx.side.delete(parked_index_key(&room.id, read.expire_at, read.park_seq, message_id), read.persisted);
}

fn parked_index_key(room: &str, expire_at: Millis, park_seq: u64, message_id: &str) -> Vec<u8> {
    let mut id = park_seq.to_be_bytes().to_vec();
    id.extend_from_slice(message_id.as_bytes());
    persist::expiry_key(expire_at, persist::EXPIRE_PARKED, room, &id)
}

/// Rules 4, 5 and 8.
fn on_read(room: &mut Room, ctx: &mut Ctx, user: &Id, message_id: &Id, scope: ReadScope) -> Result<(), StoreError> {
    if let Some(&seq) = room.pending_ids.get(message_id) {
        read_known(room, ctx, user, seq, scope, true);
        return Ok(());
    }
    // Neither pending nor finished: a read ahead of its message, parked.
    match marker_seq(room, ctx, message_id)? {
        Some(seq) => read_known(room, ctx, user, seq, scope, false),
        None => park(room, ctx, user, message_id, scope),
    }
    Ok(())
}

/// A read of a message whose seq is known; `pending`: it still waits for readers.
fn read_known(room: &mut Room, ctx: &mut Ctx, user: &Id, seq: u64, scope: ReadScope, pending: bool) {
    let Some(pos) = room.pos(user) else {
        ctx.outcomes.read_by_non_member += 1;
        return;
    };
    ctx.outcomes.read_applied += 1;
    match scope {
        ReadScope::UpTo => {
            if seq > pos {
                room.set_pos(user, seq);
                settle(room, ctx, pos + 1..=seq);
            }
        }
        ReadScope::Message if !pending => ctx.outcomes.message_read_of_finished += 1,
        ReadScope::Message => {
            if pos >= seq {
                return; // already covered by the user's position
            }
            let p = room.pending.get_mut(&seq).expect("pending");
            if let Err(at) = p.readers.binary_search(user) {
                p.readers.insert(at, user.clone());
                room.with_readers.insert(seq);
                room.mark_pending_dirty(seq);
                settle(room, ctx, seq..=seq);
            }
        }
    }
}

/// Rule 8: keep a read of a message not applied yet, within the per-user bound.
fn park(room: &mut Room, ctx: &mut Ctx, user: &Id, message_id: &Id, scope: ReadScope) {
    ctx.outcomes.read_parked += 1;
    let park_seq = room.next_park_seq;
    room.next_park_seq += 1;
    room.dirty.meta = true;
    let expire_at = ctx.now.saturating_add(ctx.config.parked_read_ttl_ms);
    ctx.side.put(parked_index_key(&room.id, expire_at, park_seq, message_id), Vec::new());
    room.parked.entry(message_id.clone()).or_default().push(Parked {
        user_id: user.clone(),
        scope,
        park_seq,
        expire_at,
        persisted: false,
    });
    room.mark_parked_dirty(message_id);
    let mine = room.parked_by_user.entry(user.clone()).or_default();
    mine.insert((park_seq, message_id.clone()));
    if mine.len() > ctx.config.max_parked_reads_per_user as usize {
        let (old_seq, old_message) = mine.pop_first().expect("non-empty");
        ctx.outcomes.parked_read_dropped += 1;
        remove_parked(room, ctx, &old_message, old_seq);
    }
}

/// Removes one parked read (dropped or expired) by its number.
fn remove_parked(room: &mut Room, ctx: &mut Ctx, message_id: &Id, park_seq: u64) -> Option<Parked> {
    let reads = room.parked.get_mut(message_id)?;
    let at = reads.iter().position(|r| r.park_seq == park_seq)?;
    let read = reads.remove(at);
    if reads.is_empty() {
        room.parked.remove(message_id);
    }
    room.mark_parked_dirty(message_id);
    forget_parked_index(room, ctx, message_id, &read);
    Some(read)
}

fn expire_parked(room: &mut Room, ctx: &mut Ctx, id: &[u8], at: Millis) -> Result<(), StoreError> {
    if id.len() < 8 {
        return Err(StoreError::corrupt(id, "parked expiry id too short"));
    }
    let park_seq = u64::from_be_bytes(id[..8].try_into().unwrap());
    let message_id: Id = String::from_utf8_lossy(&id[8..]).into();
    let due = room
        .parked
        .get(&message_id)
        .and_then(|reads| reads.iter().find(|r| r.park_seq == park_seq))
        .is_some_and(|r| r.expire_at == at);
    if due {
        remove_parked(room, ctx, &message_id, park_seq);
        ctx.outcomes.parked_read_expired += 1;
    }
    Ok(())
}

fn expire_pending(room: &mut Room, ctx: &mut Ctx, id: &[u8], at: Millis) -> Result<(), StoreError> {
    let seq = u64::from_be_bytes(id.try_into().map_err(|_| StoreError::corrupt(id, "pending expiry id is not a seq"))?);
    if room.pending.get(&seq).is_none_or(|p| p.expire_at != at) {
        return Ok(());
    }
    let p = room.remove_pending(seq).expect("checked above");
    ctx.outcomes.pending_expired += 1;
    let m = MarkerV1 {
        seq,
        state: MarkerState::Expired,
        at: ctx.now,
        expire_at: ctx.now.saturating_add(ctx.config.completed_marker_ttl_ms),
        sender_id: p.sender_id.to_string(),
        sent_at: p.sent_at,
        required: p.required,
    };
    put_marker(room, ctx, &p.message_id, m);
    Ok(())
}

/// Rule 6: completes, in seq order, every pending message that the last change finished:
/// those at or below the frontier, and those in `touched` whose reader set now covers every
/// member still below them. Only messages in `touched` can have been finished by a reader
/// set, because only their condition changed.
fn settle(room: &mut Room, ctx: &mut Ctx, touched: RangeInclusive<u64>) {
    let w = room.frontier();
    if room.with_readers.is_empty() {
        // Only the frontier completes anything, lowest seq first; completing changes no
        // member's position, so `w` holds throughout.
        while let Some((&seq, _)) = room.pending.first_key_value() {
            if seq > w {
                break;
            }
            complete(room, ctx, seq);
        }
        return;
    }
    // In seq order as collected: those at or below `w` ascending, then those above it
    // ascending. No second vector for the latter and no sort.
    let mut done: Vec<u64> = room.pending.range(..=w).map(|(&seq, _)| seq).collect();
    done.extend(room.with_readers.range(touched).copied().filter(|&seq| seq > w && room.readers_cover(seq)));
    for seq in done {
        complete(room, ctx, seq);
    }
}

fn complete(room: &mut Room, ctx: &mut Ctx, seq: u64) {
    let p = room.remove_pending(seq).expect("completing a pending message");
    if p.persisted {
        let index = persist::expiry_key(p.expire_at, persist::EXPIRE_PENDING, &room.id, &seq.to_be_bytes());
        ctx.side.delete(index, true);
    }
    let m = MarkerV1 {
        seq,
        state: MarkerState::Completed,
        at: ctx.now,
        expire_at: ctx.now.saturating_add(ctx.config.completed_marker_ttl_ms),
        sender_id: p.sender_id.to_string(),
        sent_at: p.sent_at,
        required: p.required,
    };
    put_marker(room, ctx, &p.message_id, m);
    if p.required == 0 {
        ctx.outcomes.trivial_completion += 1;
        if ctx.config.suppress_trivial {
            ctx.outcomes.trivial_suppressed += 1;
            return;
        }
    }
    ctx.outcomes.receipt_emitted += 1;
    ctx.emitted.push(ReceiptComplete {
        room_id: room.id.clone(),
        message_id: p.message_id,
        sender_id: p.sender_id,
        seq,
        sent_at: p.sent_at,
        completed_at: ctx.now,
        required_readers: p.required,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;

    fn id(s: &str) -> Id {
        s.into()
    }

    const NOW: Millis = 1_000;

    /// Room `r` with members a and b, a's message m1 applied and committed (so the commit is
    /// in flight); returns m1 and b's read of it.
    fn a_committed_message<S: KvStore>(engine: &mut Engine<S>) -> (Event, Event) {
        for user in ["a", "b"] {
            engine.apply(&Event::Join { room_id: id("r"), user_id: id(user), at: 0 }, NOW).unwrap();
        }
        let message = Event::Message { room_id: id("r"), message_id: id("m1"), sender_id: id("a"), sent_at: 7 };
        engine.apply(&message, NOW).unwrap();
        engine.commit(Vec::new()).unwrap();
        let read = Event::Read {
            room_id: id("r"),
            user_id: id("b"),
            message_id: id("m1"),
            read_at: 0,
            scope: ReadScope::UpTo,
        };
        (message, read)
    }

    /// A message completed before the commit after it costs that commit no expiry index entry,
    /// written or deleted; one still pending at a commit has its entry written then, and
    /// deleted by the commit after it completes.
    #[test]
    fn a_pending_message_has_an_expiry_entry_only_once_a_commit_finds_it_pending() {
        let mut engine = Engine::new(MemoryStore::new(), EngineConfig::default());
        for user in ["a", "b"] {
            engine.apply(&Event::Join { room_id: id("r"), user_id: id(user), at: 0 }, NOW).unwrap();
        }
        let message = |m: &str| Event::Message { room_id: id("r"), message_id: id(m), sender_id: id("a"), sent_at: 7 };
        let read = |m: &str| Event::Read {
            room_id: id("r"),
            user_id: id("b"),
            message_id: id(m),
            read_at: 0,
            scope: ReadScope::Message,
        };
        // (seq, written or deleted) of each pending message's entry in a commit's batch.
        let entries = |batch: &WriteBatch| -> Vec<(u64, bool)> {
            let pending = batch.writes.iter().filter(|(k, _)| k.first() == Some(&persist::TAG_EXPIRY));
            pending
                .map(|(k, v)| (persist::parse_expiry_key(k).unwrap(), v.is_some()))
                .filter(|(entry, _)| entry.kind == persist::EXPIRE_PENDING)
                .map(|(entry, put)| (u64::from_be_bytes(entry.id.try_into().unwrap()), put))
                .collect()
        };
        engine.apply(&message("m1"), NOW).unwrap();
        engine.apply(&read("m1"), NOW).unwrap();
        engine.apply(&message("m2"), NOW).unwrap();
        assert_eq!(engine.take_emitted().len(), 1, "m1 completed");
        let first = engine.commit(Vec::new()).unwrap();
        assert_eq!(entries(&first), [(2, true)], "m2's entry only: m1 never had one");
        engine.apply(&read("m2"), NOW).unwrap();
        assert_eq!(engine.take_emitted().len(), 1, "m2 completed");
        let second = engine.commit(Vec::new()).unwrap();
        assert_eq!(entries(&second), [(2, false)], "m2's entry deleted");
        engine.wait_written().unwrap();
        let due = engine.due_expiries(Millis::MAX / 2).unwrap();
        let kinds: Vec<u8> = due.iter().map(|k| persist::parse_expiry_key(k).unwrap().kind).collect();
        assert_eq!(kinds, [persist::EXPIRE_MARKER; 2], "the two markers' entries, no pending message's");
    }

    /// A marker's expiry entry waits for the commit in a list, not in the side writes' map:
    /// one that expires before that commit leaves it, and the commit writes neither the
    /// entry nor a delete of it.
    #[test]
    fn a_marker_that_expires_before_the_commit_after_it_leaves_no_expiry_entry_in_it() {
        let config = EngineConfig { completed_marker_ttl_ms: 100, ..EngineConfig::default() };
        let mut engine = Engine::new(MemoryStore::new(), config);
        let (message, read) = a_committed_message(&mut engine);
        engine.apply(&read, NOW).unwrap();
        assert_eq!(engine.take_emitted().len(), 1);
        assert_eq!(engine.tick(NOW + 99).unwrap(), 0, "not due yet");
        assert_eq!(engine.tick(NOW + 100).unwrap(), 1, "the marker's entry, due");
        assert_eq!(engine.outcomes().marker_expired, 1);
        let batch = engine.commit(Vec::new()).unwrap();
        let entries: Vec<_> = batch.writes.iter().filter(|(k, _)| k.first() == Some(&persist::TAG_EXPIRY)).collect();
        let kinds: Vec<(u8, bool)> =
            entries.iter().map(|(k, v)| (persist::parse_expiry_key(k).unwrap().kind, v.is_some())).collect();
        assert_eq!(kinds, [(persist::EXPIRE_PENDING, false)], "only m1's pending entry, deleted: no marker's");
        engine.wait_written().unwrap();
        assert_eq!(engine.tick(NOW + 1_000).unwrap(), 0, "nothing left to expire");
        engine.apply(&message, NOW + 1_000).unwrap();
        assert_eq!(engine.outcomes().duplicate_message, 0, "m1 again is a new message: its marker expired");
    }

    /// The in-memory store applies a batch only when the next write or a wait asks for it, so
    /// between two commits the engine must read the last one from its own copy.
    #[test]
    fn the_commit_in_flight_is_read_before_the_store_and_its_deletes_hide_stored_keys() {
        let mut engine = Engine::new(MemoryStore::new(), EngineConfig::default());
        let (message, read) = a_committed_message(&mut engine);
        assert!(engine.store().is_empty(), "the first commit is still in flight");
        let pending_entry = |engine: &Engine<MemoryStore>| {
            let keys = engine.due_expiries(Millis::MAX / 2).unwrap();
            keys.into_iter().filter(|k| persist::parse_expiry_key(k).unwrap().kind == persist::EXPIRE_PENDING).count()
        };
        assert_eq!(pending_entry(&engine), 1, "a pending message's expiry entry, in flight only");

        // b's read completes m1: its pending entry is deleted and its marker written, in the
        // second commit, while the first lands in the store.
        engine.apply(&read, NOW).unwrap();
        assert_eq!(engine.take_emitted().len(), 1);
        engine.commit(Vec::new()).unwrap();
        let marker = persist::marker_key("r", "m1");
        assert!(engine.store().get(&marker).unwrap().is_none(), "the marker is in flight only");
        assert!(engine.side.get(engine.behind(), &engine.store, &marker).unwrap().is_some());
        assert_eq!(pending_entry(&engine), 0, "the stored entry is deleted by the commit in flight");

        // The same message again is a duplicate: its marker is found in flight.
        engine.apply(&message, NOW).unwrap();
        assert_eq!(engine.outcomes().duplicate_message, 1);
        engine.wait_written().unwrap();
        assert!(engine.store().get(&marker).unwrap().is_some());
    }

    /// A store that counts the marker lookups that reach it.
    #[derive(Default)]
    struct CountingMarkers {
        inner: MemoryStore,
        marker_gets: std::cell::Cell<usize>,
    }

    impl KvStore for CountingMarkers {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            if key.starts_with(&persist::marker_key("r", "")) {
                self.marker_gets.set(self.marker_gets.get() + 1);
            }
            self.inner.get(key)
        }
        fn scan(
            &self,
            from: &[u8],
            to: Option<&[u8]>,
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.scan(from, to, visit)
        }
        fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
            self.inner.write(batch)
        }
    }

    /// Room `r`: a sends `m{from}`..=`m{to}`, c reads each, b reads the last (completing
    /// them all); committed and written, so later lookups reach the store.
    fn finished_messages(engine: &mut Engine<CountingMarkers>, from: u32, to: u32) {
        let read = |user: &str, m: u32| Event::Read {
            room_id: id("r"),
            user_id: id(user),
            message_id: id(&format!("m{m}")),
            read_at: 0,
            scope: ReadScope::UpTo,
        };
        for m in from..=to {
            let message_id = id(&format!("m{m}"));
            engine
                .apply(&Event::Message { room_id: id("r"), message_id, sender_id: id("a"), sent_at: 7 }, NOW)
                .unwrap();
            engine.apply(&read("c", m), NOW).unwrap();
        }
        engine.apply(&read("b", to), NOW).unwrap();
        assert_eq!(engine.take_emitted().len(), (to - from + 1) as usize);
        engine.commit(Vec::new()).unwrap();
        engine.wait_written().unwrap();
    }

    /// Reads that name messages finished well before them: the store answers the first few,
    /// and the room's window of recent markers widens until it answers the rest itself.
    #[test]
    fn a_room_whose_reads_come_late_keeps_more_finished_messages_in_memory() {
        let mut engine = Engine::new(CountingMarkers::default(), EngineConfig::default());
        for user in ["a", "b", "c"] {
            engine.apply(&Event::Join { room_id: id("r"), user_id: id(user), at: 0 }, NOW).unwrap();
        }
        let late_read = |m: u32| Event::Read {
            room_id: id("r"),
            user_id: id("b"),
            message_id: id(&format!("m{m}")),
            read_at: 0,
            scope: ReadScope::UpTo,
        };
        finished_messages(&mut engine, 1, 40);
        let gets = |engine: &Engine<CountingMarkers>| engine.store().marker_gets.get();
        let before = gets(&engine);
        for m in 10..13 {
            engine.apply(&late_read(m), NOW).unwrap();
        }
        assert_eq!(gets(&engine) - before, 3, "the first 8 markers in memory are the last 8");

        finished_messages(&mut engine, 41, 100);
        let before = gets(&engine);
        for m in 41..100 {
            engine.apply(&late_read(m), NOW).unwrap();
        }
        assert_eq!(gets(&engine) - before, 0, "the widened window held all 60");
        assert_eq!(engine.outcomes().read_applied, 40 + 60 + 2 + 3 + 59, "each read applied once");
    }

    /// A read of a message not seen yet is parked; a room that knows its markers' ids parks
    /// it without asking the store whether the message finished long ago.
    #[test]
    fn a_read_ahead_of_its_message_is_parked_without_a_marker_lookup() {
        let mut engine = Engine::new(CountingMarkers::default(), EngineConfig::default());
        for user in ["a", "b", "c"] {
            engine.apply(&Event::Join { room_id: id("r"), user_id: id(user), at: 0 }, NOW).unwrap();
        }
        finished_messages(&mut engine, 1, 3);
        let read = |user: &str| Event::Read {
            room_id: id("r"),
            user_id: id(user),
            message_id: id("m4"),
            read_at: 0,
            scope: ReadScope::UpTo,
        };
        let before = engine.store().marker_gets.get();
        engine.apply(&read("b"), NOW).unwrap();
        assert_eq!(engine.outcomes().read_parked, 1);
        assert_eq!(engine.store().marker_gets.get(), before, "the room's marker ids rule a marker out");
        // The message comes: the parked read applies, and with c's the message is read by all.
        let message = Event::Message { room_id: id("r"), message_id: id("m4"), sender_id: id("a"), sent_at: 7 };
        engine.apply(&message, NOW).unwrap();
        engine.apply(&read("c"), NOW).unwrap();
        let emitted = engine.take_emitted();
        assert_eq!(emitted.iter().map(|r| &*r.message_id).collect::<Vec<_>>(), ["m4"]);
        assert_eq!(engine.store().marker_gets.get(), before, "nor the new message's duplicate check");
    }

    /// A store whose next background write fails: the batch stays out of it, and the failure
    /// is reported when the engine waits for the write.
    #[derive(Default)]
    struct FailingWrite {
        inner: MemoryStore,
        fail_next: bool,
        failed: Option<StoreError>,
    }

    impl KvStore for FailingWrite {
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            self.inner.get(key)
        }
        fn scan(
            &self,
            from: &[u8],
            to: Option<&[u8]>,
            visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.scan(from, to, visit)
        }
        fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
            self.finish_write()?;
            self.inner.write(batch)
        }
        fn start_write(&mut self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
            self.finish_write()?;
            if std::mem::take(&mut self.fail_next) {
                self.failed = Some(StoreError::Engine("no space left on device".into()));
                return Ok(());
            }
            self.inner.start_write(batch)
        }
        fn finish_write(&mut self) -> Result<(), StoreError> {
            match self.failed.take() {
                Some(e) => Err(e),
                None => self.inner.finish_write(),
            }
        }
        fn write_ended(&self) -> bool {
            self.failed.is_some() || self.inner.write_ended()
        }
    }

    /// A commit whose background write fails: the engine says so at its next step and is
    /// poisoned from then on (its cache is ahead of the store), and the store it hands back
    /// holds the commit before, whole, for the task to rewind to and restore from.
    #[test]
    fn a_failed_background_write_poisons_the_engine_and_leaves_the_store_at_the_commit_before() {
        let mut engine = Engine::new(FailingWrite::default(), EngineConfig::default());
        let (message, read) = a_committed_message(&mut engine);
        engine.store_mut().unwrap().fail_next = true;

        engine.apply(&read, NOW).unwrap();
        engine.commit(Vec::new()).unwrap();
        let err = engine.apply(&message, NOW).unwrap_err();
        assert!(matches!(&err, EngineError::Store(StoreError::Engine(m)) if m.contains("no space")), "{err}");
        assert!(matches!(engine.apply(&message, NOW), Err(EngineError::Poisoned)));
        assert!(matches!(engine.commit(Vec::new()), Err(EngineError::Poisoned)));

        let store = engine.into_store();
        assert!(store.get(&persist::marker_key("r", "m1")).unwrap().is_none(), "the failed commit is not in the store");
        assert!(store.get(&persist::pending_key("r", 1)).unwrap().is_some(), "the commit before it is");
    }
}

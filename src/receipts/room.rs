//! One room's state as the engine keeps it in memory, and its mapping to stored keys.
//!
//! A room is loaded with one prefix scan and written back, key by key, only where it changed
//! (`Dirty`), when the caller commits; a small room's members are one key, written whole when
//! any of them changed (see `flush_members`). The in-memory indexes (`positions`,
//! `pending_ids`, `with_readers`, `parked_by_user`) are derived on load and never stored.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::event::{Id, Millis, ReadScope};
use super::persist::{self, MemberV1, MembersV1, MetaV1, ParkedReadV1, ParkedV1, PendingV1, RoomEntry};
use super::{HashMap, HashSet};
use crate::store::{KvStore, StoreError, Write, WriteBatch};

#[derive(Debug, Clone)]
pub(crate) struct Pending {
    pub message_id: Id,
    pub sender_id: Id,
    pub sent_at: Millis,
    pub required: u32,
    pub expire_at: Millis,
    /// `R(m)`: users who read exactly this message (scope `message`), sorted.
    pub readers: Vec<Id>,
    /// Whether this message (and its expiry index entry) is in the store.
    pub persisted: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct Parked {
    pub user_id: Id,
    pub scope: ReadScope,
    pub park_seq: u64,
    pub expire_at: Millis,
    pub persisted: bool,
}

/// A member's read position `H[u]`, and whether it is listed in `Dirty::members`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member {
    pub pos: u64,
    listed: bool,
}

/// What changed since the last commit. `bool` values say whether the key is in the store,
/// so that state created and removed between two commits costs no write at all.
#[derive(Debug, Default)]
pub(crate) struct Dirty {
    pub meta: bool,
    /// Members who joined, left or moved: a list, not a set, so that a read moving a position costs
    /// no hashing (`Member::listed` keeps a member from being listed twice while it stays).
    /// A member that left and joined again may be listed twice; `flush_into` writes it once.
    pub members: Vec<Id>,
    pub pending: BTreeMap<u64, bool>,
    pub parked: HashMap<Id, bool>,
}

#[derive(Debug)]
pub(crate) struct Room {
    pub id: Id,
    pub last_seq: u64,
    pub next_park_seq: u64,
    /// Members and their read positions `H[u]`.
    pub members: HashMap<Id, Member>,
    /// The same positions as the frontier `W` needs them (see [`Positions`]).
    positions: Positions,
    pub pending: BTreeMap<u64, Pending>,
    pub pending_ids: HashMap<Id, u64>,
    /// Seqs of pending messages with a non-empty reader set.
    pub with_readers: BTreeSet<u64>,
    /// Reads waiting for a message, by message id, in arrival order.
    pub parked: HashMap<Id, Vec<Parked>>,
    /// Each user's parked reads in this room, oldest first: `(park_seq, message_id)`.
    pub parked_by_user: HashMap<Id, BTreeSet<(u64, Id)>>,
    /// Whether the parked list of a message id is in the store.
    pub parked_persisted: HashSet<Id>,
    pub dirty: Dirty,
    /// Whether the engine has this room in its list of rooms to flush.
    pub listed_dirty: bool,
    /// Whether the room's meta key is in the store.
    pub meta_persisted: bool,
    /// How the store holds the members: one value of them all (a small room), a key each
    /// (see [`persist::PACKED_MEMBERS`]), or, with neither, none. Never both.
    members_packed_stored: bool,
    members_keyed_stored: bool,
    pub last_used: u64,
    /// The weight counted for this room in the cache at the last commit.
    pub weight: usize,
    /// The markers of the last messages that completed or expired here, oldest first: id and
    /// seq, as in the marker store. Reads often come after the message they read completed:
    /// another read covered it, or the reader sent a later message (rule 3). This answers them
    /// without a store lookup. At most `marker_window` of them (see `widen_markers`).
    recent_markers: VecDeque<(Id, u64)>,
    /// `recent_markers` by id, once the window is too wide to scan.
    recent_index: Option<HashMap<Id, u64>>,
    marker_window: usize,
    /// The ids of every marker of this room that the store holds or will hold (the engine's
    /// uncommitted and unwritten commits included), while there are at most
    /// [`MARKER_IDS_MAX`]: a new message whose id is not here has no marker, and its duplicate
    /// check skips the store, which was a tenth of the processing thread (BENCHMARKS.md); so
    /// does a read of a message not seen yet, which is parked.
    /// Taken from a scan of the room's markers when it is loaded, and kept as markers are
    /// written and expire. Past that bound a filter of them (see [`MarkerIds::Filter`]).
    /// `None`: past the filter's bound too, or not loaded from a store: ask the store.
    marker_ids: Option<MarkerIds>,
}

/// The ids of every marker of a room, as far as ruling one out goes (see `Room::marker_ids`).
#[derive(Debug)]
enum MarkerIds {
    /// Exactly them, at most [`MARKER_IDS_MAX`].
    Exact(HashSet<Id>),
    /// A busy room's, past [`MARKER_IDS_MAX`]: a Bloom filter of every id the exact set held
    /// and every id written since, up to [`MARKER_FILTER_KEYS`] of them. It never rules out
    /// a marker the store holds. It answers "maybe" for about one id in a hundred it never
    /// held (when full), and for markers expired since (they stay in it): those ask the
    /// store, as every id did before. In rooms of 10 at 400 messages a second, every new
    /// message's duplicate check went to the store once its room had 4,096 markers (a week's
    /// worth are kept); with the filter the processing thread used 9% less CPU (BENCHMARKS.md,
    /// 7 December, a twenty-first session). A room loaded with more markers than
    /// [`MARKER_IDS_MAX`] gets its filter from its load's scan of their keys.
    Filter(MarkerFilter),
}

/// The most marker ids a busy room's filter holds (see [`MarkerIds::Filter`]): 10 bits each,
/// 40 KiB a room, counted in the cache's budget as the 256 state entries the same bytes make.
pub const MARKER_FILTER_KEYS: usize = 32 * 1024;

/// A blocked Bloom filter: each id sets 6 bits in one 64-byte line, so a lookup reads one
/// cache line. 10 bits an id: about 1% false positives when full (1.03% in the test).
struct MarkerFilter {
    lines: Box<[[u64; 8]]>,
    keys: usize,
}

impl MarkerIds {
    /// One more marker id: an exact set past [`MARKER_IDS_MAX`] becomes a filter, and a
    /// filter past [`MARKER_FILTER_KEYS`] gives up (`None`: ask the store).
    fn add(ids: &mut Option<MarkerIds>, id: &Id) {
        match ids {
            None => {}
            Some(MarkerIds::Exact(exact)) if exact.len() < MARKER_IDS_MAX => {
                exact.insert(id.clone());
            }
            Some(MarkerIds::Exact(exact)) => {
                let mut filter = MarkerFilter::new();
                for known in exact.iter() {
                    filter.insert(known);
                }
                filter.insert(id);
                *ids = Some(MarkerIds::Filter(filter));
            }
            Some(MarkerIds::Filter(filter)) if filter.keys < MARKER_FILTER_KEYS => filter.insert(id),
            Some(MarkerIds::Filter(_)) => *ids = None,
        }
    }
}

impl std::fmt::Debug for MarkerFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkerFilter").field("keys", &self.keys).finish_non_exhaustive()
    }
}

impl MarkerFilter {
    const LINES: usize = MARKER_FILTER_KEYS * 10 / 512;
    const HASH: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x6d61_726b_6572);

    fn new() -> MarkerFilter {
        MarkerFilter { lines: vec![[0u64; 8]; Self::LINES].into_boxed_slice(), keys: 0 }
    }

    /// The id's line and its 6 bits there (word, mask).
    fn probe(id: &str) -> (usize, [(usize, u64); 6]) {
        use std::hash::BuildHasher;
        let h = Self::HASH.hash_one(id);
        let line = ((u128::from(h) * Self::LINES as u128) >> 64) as usize;
        // Bits from a second mix of the hash (murmur3's finalizer), 9 bits each.
        let mut b = h ^ (h >> 33);
        b = b.wrapping_mul(0xff51_afd7_ed55_8ccd);
        b ^= b >> 33;
        b = b.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        b ^= b >> 33;
        let bits = std::array::from_fn(|i| {
            let bit = (b >> (9 * i)) as usize & 511;
            (bit / 64, 1u64 << (bit % 64))
        });
        (line, bits)
    }

    fn insert(&mut self, id: &str) {
        let (line, bits) = Self::probe(id);
        for (word, mask) in bits {
            self.lines[line][word] |= mask;
        }
        self.keys += 1;
    }

    fn may_contain(&self, id: &str) -> bool {
        let (line, bits) = Self::probe(id);
        bits.iter().all(|&(word, mask)| self.lines[line][word] & mask != 0)
    }

    /// The state entries its bytes stand for, at the 160 bytes or so an entry takes
    /// (README, `cache_entries`): 256.
    fn entries(&self) -> usize {
        Self::LINES * 64 / 160
    }
}

/// How many recent markers a room keeps in memory at first (each counts as a state entry).
const RECENT_MARKERS: usize = 8;

/// How wide a room's window of recent markers grows at most. In a busy room reads come
/// well after their message completed: with 370 messages a second in a room of 10, each
/// member reading each message 0.05-2 s after it was sent, a read can name a message up to
/// about 700 messages back, and with a window of 8 their store lookups took 37% of the
/// processing thread (BENCHMARKS.md).
const RECENT_MARKERS_MAX: usize = 1024;

/// Above this many recent markers a room looks them up through an index instead of a scan.
const RECENT_MARKERS_SCAN: usize = 16;

/// The most marker ids a room keeps exactly to rule out duplicate message ids without the
/// store (see `marker_ids`); four count as one state entry in the cache's budget. A room with
/// more (a busy room within `completed_marker_ttl_ms`) keeps a filter of them instead, up to
/// [`MARKER_FILTER_KEYS`], and its load stops scanning its markers past that.
pub const MARKER_IDS_MAX: usize = 4096;

/// The most members a room keeps as [`Positions::Lowest`]; one more makes it
/// [`Positions::Ordered`], which it stays while in memory.
const SCAN_MEMBERS: usize = 32;

/// A room's read positions as the frontier `W` needs them. A read that moves a member kept
/// an ordered set of `(position, member)` in step, a removal and an insertion: in a room of
/// ten that keeps up, 7.7% of the processing thread (BENCHMARKS.md, 7 December). A small room
/// keeps only the lowest position and how many members hold it, and scans its members when
/// the last of them moves on or leaves: once per message in a room whose members all read it.
#[derive(Debug)]
enum Positions {
    /// A room of at most [`SCAN_MEMBERS`]: its lowest position (`u64::MAX` when empty) and
    /// how many members hold it.
    Lowest { pos: u64, count: u32 },
    /// A larger room: every member's `(position, id)`, ordered.
    Ordered(BTreeSet<(u64, Id)>),
}

impl Positions {
    fn lowest_of(members: &HashMap<Id, Member>) -> Positions {
        let (mut pos, mut count) = (u64::MAX, 0);
        for m in members.values() {
            if m.pos < pos {
                (pos, count) = (m.pos, 1);
            } else if m.pos == pos {
                count += 1;
            }
        }
        Positions::Lowest { pos, count }
    }
}

impl Room {
    pub fn new(id: Id) -> Self {
        Room {
            id,
            last_seq: 0,
            next_park_seq: 0,
            members: HashMap::default(),
            positions: Positions::Lowest { pos: u64::MAX, count: 0 },
            pending: BTreeMap::new(),
            pending_ids: HashMap::default(),
            with_readers: BTreeSet::new(),
            parked: HashMap::default(),
            parked_by_user: HashMap::default(),
            parked_persisted: HashSet::default(),
            dirty: Dirty::default(),
            listed_dirty: false,
            meta_persisted: false,
            members_packed_stored: false,
            members_keyed_stored: false,
            last_used: 0,
            weight: 1,
            recent_markers: VecDeque::new(),
            recent_index: None,
            marker_window: RECENT_MARKERS,
            marker_ids: None,
        }
    }

    /// `W`: the lowest read position of a member, `u64::MAX` (+inf) in an empty room.
    pub fn frontier(&self) -> u64 {
        match &self.positions {
            Positions::Lowest { pos, .. } => *pos,
            Positions::Ordered(by_pos) => by_pos.first().map_or(u64::MAX, |(pos, _)| *pos),
        }
    }

    /// The members and their read positions in `(position, id)` order, for the queries.
    pub fn by_position(&self) -> Vec<(u64, &Id)> {
        match &self.positions {
            Positions::Lowest { .. } => {
                let mut v: Vec<(u64, &Id)> = self.members.iter().map(|(u, m)| (m.pos, u)).collect();
                v.sort_unstable();
                v
            }
            Positions::Ordered(by_pos) => by_pos.iter().map(|(pos, u)| (*pos, u)).collect(),
        }
    }

    /// State entries held, the unit of the cache's budget.
    pub fn entries(&self) -> usize {
        1 + self.members.len()
            + self.pending.len()
            + self.parked.values().map(Vec::len).sum::<usize>()
            + self.recent_markers.len()
            + match &self.marker_ids {
                None => 0,
                Some(MarkerIds::Exact(ids)) => ids.len() / 4,
                Some(MarkerIds::Filter(filter)) => filter.entries(),
            }
    }

    /// Whether this room has no marker for `message_id`, as far as it knows without the store:
    /// `true` means none (no lookup needed); `false`, look in the store.
    pub fn surely_no_marker(&self, message_id: &str) -> bool {
        match &self.marker_ids {
            None => false,
            Some(MarkerIds::Exact(ids)) => !ids.contains(message_id),
            Some(MarkerIds::Filter(filter)) => !filter.may_contain(message_id),
        }
    }

    /// A marker is being written for `message_id`.
    pub fn marker_written(&mut self, message_id: &Id) {
        MarkerIds::add(&mut self.marker_ids, message_id);
    }

    /// The seq of a recent marker (see `recent_markers`); `None` says nothing: look in the store.
    pub fn recent_marker(&self, message_id: &str) -> Option<u64> {
        match &self.recent_index {
            Some(index) => index.get(message_id).copied(),
            None => self.recent_markers.iter().rev().find(|(id, _)| &**id == message_id).map(|(_, seq)| *seq),
        }
    }

    /// A marker that is in the store (written, or just read from it).
    pub fn remember_marker(&mut self, message_id: Id, seq: u64) {
        if let Some(index) = &mut self.recent_index {
            if index.insert(message_id.clone(), seq).is_some() {
                return; // already here (a message's marker never changes its seq)
            }
        }
        while self.recent_markers.len() >= self.marker_window {
            let Some((oldest, _)) = self.recent_markers.pop_front() else { break };
            if let Some(index) = &mut self.recent_index {
                index.remove(&oldest);
            }
        }
        self.recent_markers.push_back((message_id, seq));
    }

    /// A read named a finished message `behind` seqs before the newest that the window no
    /// longer held (the store had it): reads here come later than the window reaches, so it
    /// doubles, up to [`RECENT_MARKERS_MAX`]. One too far back for even that leaves it as it
    /// is: rooms whose reads come in time, or hours late, keep the small window.
    pub fn widen_markers(&mut self, behind: u64) {
        if self.marker_window >= RECENT_MARKERS_MAX || behind >= RECENT_MARKERS_MAX as u64 {
            return;
        }
        self.marker_window = (self.marker_window * 2).min(RECENT_MARKERS_MAX);
        if self.marker_window > RECENT_MARKERS_SCAN && self.recent_index.is_none() {
            // One entry per id from here on, so that evicting the oldest never takes a newer
            // one's index entry with it.
            let mut index = HashMap::default();
            let mut seen = HashSet::default();
            let newest_first: Vec<(Id, u64)> =
                self.recent_markers.drain(..).rev().filter(|(id, _)| seen.insert(id.clone())).collect();
            for (id, seq) in newest_first.into_iter().rev() {
                index.insert(id.clone(), seq);
                self.recent_markers.push_back((id, seq));
            }
            self.recent_index = Some(index);
        }
    }

    /// A marker left the store (expired).
    pub fn forget_marker(&mut self, message_id: &str) {
        if let Some(index) = &mut self.recent_index {
            index.remove(message_id);
        }
        // A filter cannot forget: the id stays a "maybe", which asks the store.
        if let Some(MarkerIds::Exact(ids)) = &mut self.marker_ids {
            ids.remove(message_id);
        }
        self.recent_markers.retain(|(id, _)| &**id != message_id);
    }

    /// Whether this room holds nothing worth keeping but its meta.
    pub fn is_known(&self) -> bool {
        self.last_seq > 0 || !self.members.is_empty() || !self.parked.is_empty()
    }

    /// Moves a member's read position; returns the old one.
    pub fn set_pos(&mut self, user: &Id, pos: u64) -> u64 {
        let member = self.members.get_mut(user).expect("set_pos of a member");
        let old = member.pos;
        if old != pos {
            member.pos = pos;
            if !member.listed {
                member.listed = true;
                self.dirty.members.push(user.clone());
            }
            match &mut self.positions {
                Positions::Lowest { pos: lowest, count } => {
                    if old == *lowest {
                        *count -= 1;
                    }
                    if *count == 0 {
                        self.positions = Positions::lowest_of(&self.members);
                    } else if pos < *lowest {
                        (*lowest, *count) = (pos, 1);
                    } else if pos == *lowest {
                        *count += 1;
                    }
                }
                Positions::Ordered(by_pos) => {
                    by_pos.remove(&(old, user.clone()));
                    by_pos.insert((pos, user.clone()));
                }
            }
        }
        old
    }

    /// A member's read position.
    pub fn pos(&self, user: &str) -> Option<u64> {
        self.members.get(user).map(|m| m.pos)
    }

    pub fn add_member(&mut self, user: Id, pos: u64) {
        self.dirty.members.push(user.clone());
        self.insert_member(user, Member { pos, listed: true });
    }

    /// Adds a member, and its position to `positions`.
    fn insert_member(&mut self, user: Id, member: Member) {
        let pos = member.pos;
        match &mut self.positions {
            Positions::Lowest { .. } if self.members.len() >= SCAN_MEMBERS => {
                let mut by_pos: BTreeSet<(u64, Id)> = self.members.iter().map(|(u, m)| (m.pos, u.clone())).collect();
                by_pos.insert((pos, user.clone()));
                self.positions = Positions::Ordered(by_pos);
            }
            Positions::Lowest { pos: lowest, count } => {
                if pos < *lowest {
                    (*lowest, *count) = (pos, 1);
                } else if pos == *lowest {
                    *count += 1;
                }
            }
            Positions::Ordered(by_pos) => {
                by_pos.insert((pos, user.clone()));
            }
        }
        self.members.insert(user, member);
    }

    /// Removes a member; returns its read position.
    pub fn remove_member(&mut self, user: &Id) -> Option<u64> {
        let member = self.members.remove(user)?;
        match &mut self.positions {
            Positions::Lowest { pos, count } => {
                if member.pos == *pos {
                    *count -= 1;
                    if *count == 0 {
                        self.positions = Positions::lowest_of(&self.members);
                    }
                }
            }
            Positions::Ordered(by_pos) => {
                by_pos.remove(&(member.pos, user.clone()));
            }
        }
        if !member.listed {
            self.dirty.members.push(user.clone());
        }
        Some(member.pos)
    }

    /// Whether every member still holding back pending message `seq` is in its reader set.
    pub fn readers_cover(&self, seq: u64) -> bool {
        let Some(p) = self.pending.get(&seq) else {
            return false;
        };
        let covered = |user: &Id| p.readers.binary_search(user).is_ok();
        match &self.positions {
            Positions::Lowest { pos, .. } if *pos >= seq => true,
            Positions::Lowest { .. } => self.members.iter().all(|(user, m)| m.pos >= seq || covered(user)),
            // Members below `seq` in position order; usually the first one is not a reader and
            // the scan stops at once. It never visits more than |R(m)| + 1 members.
            Positions::Ordered(by_pos) => {
                by_pos.iter().take_while(|(pos, _)| *pos < seq).all(|(_, user)| covered(user))
            }
        }
    }

    pub fn insert_pending(&mut self, seq: u64, p: Pending) {
        self.pending_ids.insert(p.message_id.clone(), seq);
        if !p.readers.is_empty() {
            self.with_readers.insert(seq);
        }
        self.dirty.pending.entry(seq).or_insert(p.persisted);
        self.pending.insert(seq, p);
    }

    pub fn remove_pending(&mut self, seq: u64) -> Option<Pending> {
        let p = self.pending.remove(&seq)?;
        self.pending_ids.remove(&p.message_id);
        self.with_readers.remove(&seq);
        let on_disk = self.dirty.pending.entry(seq).or_insert(false);
        *on_disk |= p.persisted;
        Some(p)
    }

    pub fn mark_pending_dirty(&mut self, seq: u64) {
        let persisted = self.pending.get(&seq).is_some_and(|p| p.persisted);
        self.dirty.pending.entry(seq).or_insert(persisted);
    }

    pub fn mark_parked_dirty(&mut self, message_id: &Id) {
        let on_disk = self.parked_persisted.contains(message_id);
        self.dirty.parked.entry(message_id.clone()).or_insert(on_disk);
    }

    /// Loads a room with one prefix scan; a room never seen is empty.
    pub fn load(store: &dyn KvStore, id: Id) -> Result<Room, StoreError> {
        let mut room = Room::new(id);
        let prefix = persist::room_prefix(&room.id);
        let mut failure = None;
        store.scan_prefix(&prefix, &mut |key, value| match room.load_entry(key, &key[prefix.len()..], value) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        // The room's marker ids (keys only), as an exact set or, past MARKER_IDS_MAX, a filter;
        // past MARKER_FILTER_KEYS the scan stops, and the room asks the store.
        let mut ids = Some(MarkerIds::Exact(HashSet::default()));
        let mut failure = None;
        let markers = persist::marker_key(&room.id, "");
        store.scan_prefix(&markers, &mut |key, _| match std::str::from_utf8(&key[markers.len()..]) {
            Ok(id) => {
                MarkerIds::add(&mut ids, &Id::from(id));
                ids.is_some()
            }
            Err(_) => {
                failure = Some(StoreError::corrupt(key, "message id is not UTF-8"));
                false
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        room.marker_ids = ids;
        room.weight = room.entries();
        Ok(room)
    }

    fn load_entry(&mut self, key: &[u8], suffix: &[u8], value: &[u8]) -> Result<(), StoreError> {
        match persist::parse_room_suffix(key, suffix)? {
            RoomEntry::Meta => {
                self.meta_persisted = true;
                let meta: MetaV1 = persist::decode(key, value)?;
                self.last_seq = meta.last_seq;
                self.next_park_seq = meta.next_park_seq;
            }
            RoomEntry::Member(user) => {
                let m: MemberV1 = persist::decode(key, value)?;
                self.members_keyed_stored = true;
                self.load_member(user.into(), m.pos);
            }
            RoomEntry::Members => {
                let v: MembersV1 = persist::decode(key, value)?;
                self.members_packed_stored = true;
                for (user, pos) in v.members {
                    self.load_member(user.into(), pos);
                }
            }
            RoomEntry::Pending(seq) => {
                let v: PendingV1 = persist::decode(key, value)?;
                let p = Pending {
                    message_id: v.message_id.into(),
                    sender_id: v.sender_id.into(),
                    sent_at: v.sent_at,
                    required: v.required,
                    expire_at: v.expire_at,
                    readers: v.readers.into_iter().map(Id::from).collect(),
                    persisted: true,
                };
                self.pending_ids.insert(p.message_id.clone(), seq);
                if !p.readers.is_empty() {
                    self.with_readers.insert(seq);
                }
                self.pending.insert(seq, p);
            }
            RoomEntry::Parked(message_id) => {
                let v: ParkedV1 = persist::decode(key, value)?;
                let message_id: Id = message_id.into();
                let reads: Vec<Parked> = v
                    .reads
                    .into_iter()
                    .map(|r| Parked {
                        user_id: r.user_id.into(),
                        scope: if r.scope_message { ReadScope::Message } else { ReadScope::UpTo },
                        park_seq: r.park_seq,
                        expire_at: r.expire_at,
                        persisted: true,
                    })
                    .collect();
                for r in &reads {
                    self.parked_by_user.entry(r.user_id.clone()).or_default().insert((r.park_seq, message_id.clone()));
                }
                self.parked_persisted.insert(message_id.clone());
                self.parked.insert(message_id, reads);
            }
        }
        Ok(())
    }

    fn load_member(&mut self, user: Id, pos: u64) {
        self.insert_member(user, Member { pos, listed: false });
    }

    /// Writes the members' changes: a small room's as one value of them all, a larger room's
    /// as a key per member that changed, and, when a room crosses [`persist::PACKED_MEMBERS`]
    /// (or was written a key per member by an older version), the one layout in place of the
    /// other.
    fn flush_members(&mut self, changed: Vec<Id>, batch: &mut WriteBatch) {
        let room = &*self.id;
        if self.members.len() <= persist::PACKED_MEMBERS {
            let mut rewrite = !changed.is_empty();
            if self.members_keyed_stored {
                // Every key still stored: the members', and those of members who left since.
                let left = changed.iter().filter(|u| !self.members.contains_key(*u));
                for user in self.members.keys().chain(left) {
                    batch.delete(persist::member_key(room, user));
                }
                self.members_keyed_stored = false;
                rewrite = true;
            }
            for user in &changed {
                if let Some(m) = self.members.get_mut(user) {
                    m.listed = false;
                }
            }
            if !rewrite {
                return;
            }
            if self.members.is_empty() {
                if self.members_packed_stored {
                    batch.delete(persist::members_key(room));
                    self.members_packed_stored = false;
                }
                return;
            }
            let mut members: Vec<(String, u64)> = self.members.iter().map(|(u, m)| (u.to_string(), m.pos)).collect();
            members.sort_unstable();
            batch.put(persist::members_key(room), persist::encode(&MembersV1 { members }));
            self.members_packed_stored = true;
        } else if self.members_packed_stored {
            // Grown past a value of them all: a key each, for every member.
            batch.delete(persist::members_key(room));
            self.members_packed_stored = false;
            for (user, m) in self.members.iter_mut() {
                m.listed = false;
                batch.put(persist::member_key(room, user), persist::encode(&MemberV1 { pos: m.pos }));
            }
            self.members_keyed_stored = true;
        } else {
            for user in changed {
                match self.members.get_mut(&user) {
                    Some(m) if m.listed => {
                        m.listed = false;
                        batch.put(persist::member_key(room, &user), persist::encode(&MemberV1 { pos: m.pos }));
                        self.members_keyed_stored = true;
                    }
                    Some(_) => {} // listed twice (left and joined again): written already
                    None => batch.delete(persist::member_key(room, &user)),
                }
            }
        }
    }

    /// Writes what changed since the last commit into `batch` and marks it all persisted. A
    /// pending message written for the first time has its expiry index entry appended to
    /// `expiries`, which the engine writes with its other index entries (see
    /// [`super::engine::SideWrites`]): one that completes before a commit never has one.
    pub fn flush_into(&mut self, batch: &mut WriteBatch, expiries: &mut Vec<Write>) {
        let dirty = std::mem::take(&mut self.dirty);
        let room = &*self.id;
        let holds_nothing =
            self.last_seq == 0 && self.members.is_empty() && self.pending.is_empty() && self.parked.is_empty();
        if holds_nothing {
            // A room that only ever saw reads (of messages that never came) leaves nothing
            // behind once they expire: otherwise bogus room ids would accumulate forever.
            if self.meta_persisted {
                batch.delete(persist::meta_key(room));
                self.meta_persisted = false;
            }
            self.next_park_seq = 0;
        } else if dirty.meta {
            let meta = MetaV1 { last_seq: self.last_seq, next_park_seq: self.next_park_seq };
            batch.put(persist::meta_key(room), persist::encode(&meta));
            self.meta_persisted = true;
        }
        self.flush_members(dirty.members, batch);
        let room = &*self.id;
        for (seq, on_disk) in dirty.pending {
            let key = persist::pending_key(room, seq);
            match self.pending.get_mut(&seq) {
                Some(p) => {
                    let v = PendingV1 {
                        message_id: p.message_id.to_string(),
                        sender_id: p.sender_id.to_string(),
                        sent_at: p.sent_at,
                        required: p.required,
                        expire_at: p.expire_at,
                        readers: p.readers.iter().map(|r| r.to_string()).collect(),
                    };
                    batch.put(key, persist::encode(&v));
                    if !p.persisted {
                        let entry = persist::expiry_key(p.expire_at, persist::EXPIRE_PENDING, room, &seq.to_be_bytes());
                        expiries.push((entry, Some(Vec::new())));
                    }
                    p.persisted = true;
                }
                None if on_disk => batch.delete(key),
                None => {}
            }
        }
        for (message_id, on_disk) in dirty.parked {
            let key = persist::parked_key(room, &message_id);
            match self.parked.get_mut(&message_id) {
                Some(reads) => {
                    let v = ParkedV1 {
                        reads: reads
                            .iter()
                            .map(|r| ParkedReadV1 {
                                user_id: r.user_id.to_string(),
                                scope_message: r.scope == ReadScope::Message,
                                park_seq: r.park_seq,
                                expire_at: r.expire_at,
                            })
                            .collect(),
                    };
                    for r in reads.iter_mut() {
                        r.persisted = true;
                    }
                    batch.put(key, persist::encode(&v));
                    self.parked_persisted.insert(message_id);
                }
                None => {
                    if on_disk {
                        batch.delete(key);
                    }
                    self.parked_persisted.remove(&message_id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use proptest::prelude::*;

    /// Commits the room's changes to `store`; returns the batch.
    fn flush(room: &mut Room, store: &mut MemoryStore) -> WriteBatch {
        let mut batch = WriteBatch::new();
        let mut expiries = Vec::new();
        room.flush_into(&mut batch, &mut expiries);
        batch.writes.extend(expiries);
        store.write(&batch).unwrap();
        batch
    }

    /// The room's member keys in the store: per-member keys' users, and the packed value's.
    fn stored_members(store: &MemoryStore, room: &str) -> (Vec<String>, Option<Vec<(String, u64)>>) {
        let prefix = persist::room_prefix(room);
        let mut keyed = Vec::new();
        let mut packed = None;
        for (k, v) in store.entries() {
            match k.strip_prefix(prefix.as_slice()).map(|suffix| persist::parse_room_suffix(k, suffix).unwrap()) {
                Some(RoomEntry::Member(user)) => keyed.push(user.to_string()),
                Some(RoomEntry::Members) => packed = Some(persist::decode::<MembersV1>(k, v).unwrap().members),
                _ => {}
            }
        }
        (keyed, packed)
    }

    fn positions(room: &Room) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = room.members.iter().map(|(u, m)| (u.to_string(), m.pos)).collect();
        v.sort();
        v
    }

    #[derive(Debug, Clone)]
    enum Op {
        Join(u8, u64),
        Leave(u8),
        Move(u8, u64),
    }

    proptest! {
        /// Rooms that grow past [`SCAN_MEMBERS`] and shrink again, against the members' own
        /// positions: the frontier, the members in position order, and whether a message's
        /// reader set covers every member below it, after each change and after a reload.
        #[test]
        fn the_frontier_and_the_order_of_positions_are_the_members_own_below_and_above_the_scan_bound(
            ops in prop::collection::vec(
                prop_oneof![
                    4 => (0..48u8, 0..12u64).prop_map(|(u, p)| Op::Join(u, p)),
                    1 => (0..48u8).prop_map(Op::Leave),
                    4 => (0..48u8, 0..12u64).prop_map(|(u, p)| Op::Move(u, p)),
                ],
                1..400,
            ),
            readers in prop::collection::btree_set(0..48u8, 0..12),
            seq in 1..12u64,
        ) {
            let user = |i: u8| -> Id { format!("u{i:02}").into() };
            let readers: Vec<Id> = readers.into_iter().map(user).collect();
            let pending = Pending {
                message_id: "m".into(),
                sender_id: "s".into(),
                sent_at: 0,
                required: 1,
                expire_at: 0,
                readers: readers.clone(),
                persisted: false,
            };
            let mut room = Room::new("r".into());
            room.insert_pending(seq, pending);
            let mut model: BTreeMap<Id, u64> = BTreeMap::new();
            let check = |room: &Room, model: &BTreeMap<Id, u64>| -> Result<(), TestCaseError> {
                let mut want: Vec<(u64, Id)> = model.iter().map(|(u, &p)| (p, u.clone())).collect();
                want.sort();
                prop_assert_eq!(room.frontier(), want.first().map_or(u64::MAX, |(p, _)| *p));
                let got: Vec<(u64, Id)> = room.by_position().into_iter().map(|(p, u)| (p, u.clone())).collect();
                prop_assert_eq!(&got, &want);
                let covered = want.iter().all(|(p, u)| *p >= seq || readers.contains(u));
                prop_assert_eq!(room.readers_cover(seq), covered);
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Join(u, p) => {
                        if let std::collections::btree_map::Entry::Vacant(e) = model.entry(user(u)) {
                            room.add_member(user(u), p);
                            e.insert(p);
                        }
                    }
                    Op::Leave(u) => prop_assert_eq!(room.remove_member(&user(u)), model.remove(&user(u))),
                    Op::Move(u, p) => {
                        if let Some(old) = model.get_mut(&user(u)) {
                            prop_assert_eq!(room.set_pos(&user(u), p), *old);
                            *old = p;
                        }
                    }
                }
                check(&room, &model)?;
            }
            let mut store = MemoryStore::new();
            flush(&mut room, &mut store);
            let loaded = Room::load(&store, "r".into()).unwrap();
            check(&loaded, &model)?;
        }
    }

    #[test]
    fn a_small_room_stores_its_members_as_one_value_and_a_large_room_a_key_each() {
        let mut store = MemoryStore::new();
        let mut room = Room::new("r".into());
        let user = |i: usize| -> Id { format!("u{i:03}").into() };
        for i in 0..3 {
            room.add_member(user(i), 0);
        }
        let batch = flush(&mut room, &mut store);
        assert_eq!(batch.len(), 1, "one record for three new members");
        room.set_pos(&user(1), 4);
        room.set_pos(&user(2), 5);
        assert_eq!(flush(&mut room, &mut store).len(), 1, "one record for two moves");
        let want = vec![("u000".to_string(), 0), ("u001".to_string(), 4), ("u002".to_string(), 5)];
        assert_eq!(stored_members(&store, "r"), (vec![], Some(want.clone())));
        assert_eq!(positions(&Room::load(&store, "r".into()).unwrap()), want);
        assert!(flush(&mut room, &mut store).is_empty(), "nothing moved: nothing written");

        // Past the bound: a key each, for every member, and the value goes.
        for i in 3..=persist::PACKED_MEMBERS {
            room.add_member(user(i), 5);
        }
        let batch = flush(&mut room, &mut store);
        assert_eq!(batch.len(), persist::PACKED_MEMBERS + 2, "a key per member and the value's delete");
        let (keyed, packed) = stored_members(&store, "r");
        assert_eq!((keyed.len(), packed), (persist::PACKED_MEMBERS + 1, None));
        room.set_pos(&user(0), 5);
        assert_eq!(flush(&mut room, &mut store).len(), 1, "a large room writes only who moved");
        assert_eq!(positions(&Room::load(&store, "r".into()).unwrap()), positions(&room));

        // Back to the bound: the keys go, the value comes back.
        room.remove_member(&user(7));
        flush(&mut room, &mut store);
        let (keyed, packed) = stored_members(&store, "r");
        assert!(keyed.is_empty(), "no member key left: {keyed:?}");
        assert_eq!(packed.map(|m| m.len()), Some(persist::PACKED_MEMBERS));
        let loaded = Room::load(&store, "r".into()).unwrap();
        assert_eq!(positions(&loaded), positions(&room));

        // The last member leaves: the value goes.
        let mut room = loaded;
        for i in 0..=persist::PACKED_MEMBERS {
            room.remove_member(&user(i));
        }
        flush(&mut room, &mut store);
        assert_eq!(stored_members(&store, "r"), (vec![], None));
    }

    #[test]
    fn a_small_room_stored_a_key_per_member_is_stored_packed_at_its_next_commit() {
        // As an older version wrote it.
        let mut store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        for (user, pos) in [("a", 1), ("b", 2), ("gone", 0)] {
            batch.put(persist::member_key("r", user), persist::encode(&MemberV1 { pos }));
        }
        store.write(&batch).unwrap();
        let mut room = Room::load(&store, "r".into()).unwrap();
        room.remove_member(&"gone".into());
        flush(&mut room, &mut store);
        let want = vec![("a".to_string(), 1), ("b".to_string(), 2)];
        assert_eq!(stored_members(&store, "r"), (vec![], Some(want.clone())));
        assert_eq!(positions(&Room::load(&store, "r".into()).unwrap()), want);
    }

    #[test]
    fn a_room_remembers_its_latest_markers_and_forgets_the_oldest_and_the_expired() {
        let mut room = Room::new("r".into());
        let total = RECENT_MARKERS as u64 + 10;
        for seq in 1..=total {
            room.remember_marker(format!("m{seq}").into(), seq);
        }
        let oldest_kept = total - RECENT_MARKERS as u64 + 1;
        for seq in 1..=total {
            let want = (seq >= oldest_kept).then_some(seq);
            assert_eq!(room.recent_marker(&format!("m{seq}")), want, "m{seq}");
        }
        assert_eq!(room.entries(), 1 + RECENT_MARKERS, "each counts as a state entry");
        room.forget_marker(&format!("m{oldest_kept}"));
        assert_eq!(room.recent_marker(&format!("m{oldest_kept}")), None, "expired: no longer answered");
        assert_eq!(room.entries(), RECENT_MARKERS);
    }

    #[test]
    fn a_busy_rooms_filter_never_rules_out_a_marker_and_rules_out_most_ids_until_it_is_full() {
        let mut room = Room::load(&MemoryStore::new(), "r".into()).unwrap();
        let never_written = |room: &Room| (0..20_000).filter(|i| !room.surely_no_marker(&format!("x{i}"))).count();
        let write = |room: &mut Room, ids: std::ops::Range<usize>| {
            ids.for_each(|i| room.marker_written(&format!("m{i}").into()))
        };
        write(&mut room, 0..MARKER_IDS_MAX);
        assert_eq!(never_written(&room), 0, "exact up to the bound");
        assert_eq!(room.entries(), 1 + MARKER_IDS_MAX / 4);
        write(&mut room, MARKER_IDS_MAX..MARKER_IDS_MAX + 1);
        assert_eq!(room.entries(), 1 + 256, "40 KiB, as state entries of 160 bytes");
        room.forget_marker("m7");
        write(&mut room, MARKER_IDS_MAX + 1..MARKER_FILTER_KEYS);
        // No false negative, ever: every id written (the forgotten one too) asks the store.
        assert!((0..MARKER_FILTER_KEYS).all(|i| !room.surely_no_marker(&format!("m{i}"))));
        // Full: about 1% false positives (206 of these 20,000 ids it never held).
        let maybe = never_written(&room);
        assert!((100..600).contains(&maybe), "{maybe} of 20,000");
        // One more than it holds: it gives up, and every id asks the store.
        write(&mut room, MARKER_FILTER_KEYS..MARKER_FILTER_KEYS + 1);
        assert_eq!(never_written(&room), 20_000);
        assert_eq!(room.entries(), 1);
    }

    #[test]
    fn a_loaded_room_knows_its_markers_ids_up_to_a_bound_filters_them_past_it_and_asks_the_store_past_that() {
        let mut store = MemoryStore::new();
        let mut batch = WriteBatch::new();
        for i in 0..MARKER_IDS_MAX {
            batch.put(persist::marker_key("r", &format!("m{i}")), vec![]);
        }
        // Other rooms' markers are not its markers, whatever their names begin with.
        batch.put(persist::marker_key("r2", "other"), vec![]);
        batch.put(persist::marker_key("rr", "other"), vec![]);
        store.write(&batch).unwrap();
        let mut room = Room::load(&store, "r".into()).unwrap();
        assert!(!room.surely_no_marker("m0") && !room.surely_no_marker(&format!("m{}", MARKER_IDS_MAX - 1)));
        assert!(room.surely_no_marker("other"), "another room's marker");
        assert!(room.surely_no_marker("new"));
        room.forget_marker("m0");
        assert!(room.surely_no_marker("m0"), "expired");
        room.marker_written(&"new".into());
        assert!(!room.surely_no_marker("new"), "written");
        room.marker_written(&"one-more".into());
        // Past the bound: a filter, which still answers "maybe" for every id it was given.
        for id in ["one-more", "new", "m1", &format!("m{}", MARKER_IDS_MAX - 1)] {
            assert!(!room.surely_no_marker(id), "{id}");
        }

        // Loaded with more than the bound: a filter of them all, from the load's scan.
        store
            .write(&{
                let mut b = WriteBatch::new();
                b.put(persist::marker_key("r", "m0"), vec![]);
                b.put(persist::marker_key("r", "extra"), vec![]);
                b
            })
            .unwrap();
        let room = Room::load(&store, "r".into()).unwrap();
        assert!(
            (0..MARKER_IDS_MAX).all(|i| !room.surely_no_marker(&format!("m{i}"))) && !room.surely_no_marker("extra")
        );
        assert!(room.surely_no_marker("new"), "ruled out (this id is not among the filter's false positives)");
        assert_eq!(room.entries(), 1 + 256);
        // Loaded with more than the filter's bound: ask the store for every id.
        let mut batch = WriteBatch::new();
        for i in MARKER_IDS_MAX..MARKER_FILTER_KEYS {
            batch.put(persist::marker_key("r", &format!("m{i}")), vec![]);
        }
        store.write(&batch).unwrap();
        let room = Room::load(&store, "r".into()).unwrap();
        assert!(!room.surely_no_marker("new"), "32,769 markers");
        assert_eq!(room.entries(), 1);
        // A room never loaded from a store knows nothing.
        assert!(!Room::new("r".into()).surely_no_marker("new"));
    }

    #[test]
    fn an_id_remembered_twice_before_the_window_was_indexed_stays_answered() {
        let mut room = Room::new("r".into());
        for id in ["dup", "x1", "x2", "x3", "dup"] {
            room.remember_marker(id.into(), if id == "dup" { 1 } else { 2 });
        }
        while room.marker_window <= RECENT_MARKERS_SCAN {
            room.widen_markers(10);
        }
        // One past the window's room for what it held: the oldest goes, not the id in twice.
        let held = 4;
        for i in 0..=(room.marker_window - held) {
            room.remember_marker(format!("y{i}").into(), 3);
        }
        assert_eq!(room.recent_marker("x1"), None, "the oldest went");
        assert_eq!(room.recent_marker("dup"), Some(1));
    }

    #[test]
    fn the_window_widens_for_reads_that_come_late_but_not_for_those_too_late_for_any_window() {
        let mut room = Room::new("r".into());
        room.widen_markers(RECENT_MARKERS_MAX as u64);
        assert_eq!(room.marker_window, RECENT_MARKERS, "too far behind: a wider window would not help");
        let mut seq = 0u64;
        let mut remember = |room: &mut Room, n: u64| {
            for _ in 0..n {
                seq += 1;
                room.remember_marker(format!("m{seq}").into(), seq);
            }
            seq
        };
        remember(&mut room, 100);
        assert_eq!(room.recent_marker("m90"), None, "beyond the first window");
        while room.marker_window < RECENT_MARKERS_MAX {
            room.widen_markers(10);
        }
        assert!(room.recent_index.is_some(), "a wide window is indexed");
        let last = remember(&mut room, RECENT_MARKERS_MAX as u64 + 5);
        let oldest_kept = last - RECENT_MARKERS_MAX as u64 + 1;
        assert_eq!(room.recent_marker(&format!("m{oldest_kept}")), Some(oldest_kept));
        assert_eq!(room.recent_marker(&format!("m{}", oldest_kept - 1)), None, "the oldest went");
        assert_eq!(room.recent_marker(&format!("m{last}")), Some(last));
        assert_eq!(room.entries(), 1 + RECENT_MARKERS_MAX);
        // Remembering one it has again changes nothing and evicts nothing.
        room.remember_marker(format!("m{last}").into(), last);
        assert_eq!(room.recent_marker(&format!("m{oldest_kept}")), Some(oldest_kept));
        room.forget_marker(&format!("m{last}"));
        assert_eq!(room.recent_marker(&format!("m{last}")), None, "expired: no longer answered");
        assert_eq!(room.entries(), RECENT_MARKERS_MAX);
    }
}

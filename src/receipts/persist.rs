//! How the engine's state is laid out as keys and values in a [`KvStore`](crate::store::KvStore).
//!
//! Keys are built so that one prefix scan loads a whole room, and the expiry index is ordered
//! by deadline:
//!
//! | key | value |
//! |---|---|
//! | `r` room `M` | [`MetaV1`]: last seq, next parked-read number |
//! | `r` room `U` user | [`MemberV1`]: read position `H[u]` (rooms of more than [`PACKED_MEMBERS`]; a smaller room's only as an earlier version wrote them, until its next commit) |
//! | `r` room `N` | [`MembersV1`]: every member and its read position (rooms of at most [`PACKED_MEMBERS`]) |
//! | `r` room `P` seq | [`PendingV1`]: a pending message and its reader set `R(m)` |
//! | `r` room `K` message id | [`ParkedV1`]: reads waiting for that message |
//! | `c` room message id | [`MarkerV1`]: a finished message (completed / expired / untracked) |
//! | `x` deadline kind room id | empty: what expires when (kinds `P`, `K`, `C`) |
//!
//! `room` is length-prefixed (u16 big-endian); a trailing id is the rest of the key; numbers
//! are big-endian so that byte order is numeric order. Key tags other than `r`, `c` and `x`
//! are free for the runtime (it keeps offsets under `_`).
//!
//! Values are `[format version][bincode standard encoding]`. A reader that meets a version it
//! does not know reports corruption rather than guessing; a new version adds a decoder here.

use bincode::{Decode, Encode};

use super::event::Millis;
use crate::store::StoreError;

pub const FORMAT_V1: u8 = 1;

pub const TAG_ROOM: u8 = b'r';
pub const TAG_MARKER: u8 = b'c';
pub const TAG_EXPIRY: u8 = b'x';

pub const SUB_META: u8 = b'M';
pub const SUB_MEMBER: u8 = b'U';
pub const SUB_MEMBERS: u8 = b'N';
pub const SUB_PENDING: u8 = b'P';
pub const SUB_PARKED: u8 = b'K';

pub const EXPIRE_PENDING: u8 = b'P';
pub const EXPIRE_PARKED: u8 = b'K';
pub const EXPIRE_MARKER: u8 = b'C';

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MetaV1 {
    pub last_seq: u64,
    pub next_park_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MemberV1 {
    pub pos: u64,
}

/// The most members a room keeps in one [`MembersV1`] value rather than a [`MemberV1`] key
/// each. A commit writes a room's members again when any of them moved, so one value of all
/// of them is one record where keys are one per member that moved: in a small room most move
/// between two commits. Above this, a value of all of them costs more than the keys.
pub const PACKED_MEMBERS: usize = 32;

/// A small room's members and their read positions, sorted by user.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MembersV1 {
    pub members: Vec<(String, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct PendingV1 {
    pub message_id: String,
    pub sender_id: String,
    pub sent_at: Millis,
    pub required: u32,
    pub expire_at: Millis,
    pub readers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ParkedReadV1 {
    pub user_id: String,
    pub scope_message: bool,
    pub park_seq: u64,
    pub expire_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct ParkedV1 {
    pub reads: Vec<ParkedReadV1>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
pub enum MarkerState {
    Completed,
    Expired,
    Untracked,
}

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct MarkerV1 {
    pub seq: u64,
    pub state: MarkerState,
    /// When it finished (completion, expiry, or arrival for untracked messages).
    pub at: Millis,
    pub expire_at: Millis,
    pub sender_id: String,
    pub sent_at: Millis,
    pub required: u32,
}

const CONFIG: bincode::config::Configuration = bincode::config::standard();

pub fn encode<T: Encode>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(FORMAT_V1);
    bincode::encode_into_std_write(value, &mut out, CONFIG).expect("writing to a Vec cannot fail");
    out
}

pub fn decode<T: Decode<()>>(key: &[u8], bytes: &[u8]) -> Result<T, StoreError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            let (value, used) = bincode::decode_from_slice(rest, CONFIG).map_err(|e| StoreError::corrupt(key, e))?;
            if used != rest.len() {
                return Err(StoreError::corrupt(key, "trailing bytes after value"));
            }
            Ok(value)
        }
        Some((v, _)) => Err(StoreError::corrupt(key, format!("unknown format version {v}"))),
        None => Err(StoreError::corrupt(key, "empty value")),
    }
}

fn push_room(key: &mut Vec<u8>, room: &str) {
    let len = u16::try_from(room.len()).expect("room ids are limited to 1 KiB by the codec");
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(room.as_bytes());
}

/// Names the [`room_prefix_len`] scheme where a store records it (RocksDB's prefix extractor).
pub const ROOM_PREFIX_SCHEME: &str = "allread.room-prefix.v1";

/// The length of the room prefix of `key` (`r`, length, room), if it is a room key: what a
/// store may use to group a room's keys (see `RocksOptions::key_prefix`).
pub fn room_prefix_len(key: &[u8]) -> Option<usize> {
    if key.first() != Some(&TAG_ROOM) || key.len() < 3 {
        return None;
    }
    let len = 3 + u16::from_be_bytes([key[1], key[2]]) as usize;
    (key.len() >= len).then_some(len)
}

pub fn room_prefix(room: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + 16);
    key.push(TAG_ROOM);
    push_room(&mut key, room);
    key
}

fn room_key(room: &str, sub: u8, rest: &[u8]) -> Vec<u8> {
    let mut key = room_prefix(room);
    key.push(sub);
    key.extend_from_slice(rest);
    key
}

pub fn meta_key(room: &str) -> Vec<u8> {
    room_key(room, SUB_META, &[])
}
pub fn member_key(room: &str, user: &str) -> Vec<u8> {
    room_key(room, SUB_MEMBER, user.as_bytes())
}
pub fn members_key(room: &str) -> Vec<u8> {
    room_key(room, SUB_MEMBERS, &[])
}
pub fn pending_key(room: &str, seq: u64) -> Vec<u8> {
    room_key(room, SUB_PENDING, &seq.to_be_bytes())
}
pub fn parked_key(room: &str, message_id: &str) -> Vec<u8> {
    room_key(room, SUB_PARKED, message_id.as_bytes())
}

pub fn marker_key(room: &str, message_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + message_id.len() + 3);
    key.push(TAG_MARKER);
    push_room(&mut key, room);
    key.extend_from_slice(message_id.as_bytes());
    key
}

/// Byte order of the result is numeric order of `at`, negative times included.
pub fn time_bytes(at: Millis) -> [u8; 8] {
    ((at as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn expiry_key(at: Millis, kind: u8, room: &str, id: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(room.len() + id.len() + 12);
    key.push(TAG_EXPIRY);
    key.extend_from_slice(&time_bytes(at));
    key.push(kind);
    push_room(&mut key, room);
    key.extend_from_slice(id);
    key
}

/// Whether `key` is an expiry index entry that is derived state: a finished message's marker's
/// (kind `C`) or a pending message's (kind `P`). Each follows from the `expire_at` of the value
/// it indexes, which never changes while that value lives. So they stay out of the changelog
/// (every message's marker came with an entry; under `exactly_once` the pending messages'
/// entries, put and deleted, were a fifth of its records), and a restore writes each beside its
/// value ([`derived_expiry_entry`]). A parked read's entry (`K`)
/// is not derived: a parked key holds a changing set of reads, each with its own entry.
pub fn is_derived_expiry_key(key: &[u8]) -> bool {
    key.len() > 9 && key[0] == TAG_EXPIRY && matches!(key[9], EXPIRE_MARKER | EXPIRE_PENDING)
}

/// Whether `key` is a pending message's (`r` room `P` seq), whose expiry entry a restore
/// derives, and deletes with it.
pub fn is_pending_key(key: &[u8]) -> bool {
    room_prefix_len(key).is_some_and(|len| key.get(len) == Some(&SUB_PENDING))
}

/// The expiry index entry that a stored value implies: a marker's, or a pending message's;
/// for any other key, none. A marker is only ever deleted once it has expired, so the entry of
/// a marker that a later record deletes is due already: the next tick finds no marker expiring
/// at that time and drops the entry, as it drops any entry gone stale. A pending message's
/// entry must go with it (a restore looks up the value it deletes: see `Task::restore`).
pub fn derived_expiry_entry(key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    match key.first() {
        Some(&TAG_MARKER) => {
            let bad = || StoreError::corrupt(key, "malformed marker key");
            let len = u16::from_be_bytes([*key.get(1).ok_or_else(bad)?, *key.get(2).ok_or_else(bad)?]) as usize;
            let room = key.get(3..3 + len).ok_or_else(bad)?;
            let room = std::str::from_utf8(room).map_err(|_| bad())?;
            let marker: MarkerV1 = decode(key, value)?;
            Ok(Some(expiry_key(marker.expire_at, EXPIRE_MARKER, room, &key[3 + len..])))
        }
        Some(&TAG_ROOM) => {
            let Some(len) = room_prefix_len(key).filter(|&len| key.get(len) == Some(&SUB_PENDING)) else {
                return Ok(None);
            };
            let room = std::str::from_utf8(&key[3..len]).map_err(|_| StoreError::corrupt(key, "room is not UTF-8"))?;
            let seq = &key[len + 1..];
            if seq.len() != 8 {
                return Err(StoreError::corrupt(key, "pending key without seq"));
            }
            let pending: PendingV1 = decode(key, value)?;
            Ok(Some(expiry_key(pending.expire_at, EXPIRE_PENDING, room, seq)))
        }
        _ => Ok(None),
    }
}

/// The first key past every expiry entry due at or before `now`.
pub fn expiry_upper_bound(now: Millis) -> Vec<u8> {
    let mut key = vec![TAG_EXPIRY];
    key.extend_from_slice(&time_bytes(now.saturating_add(1)));
    key
}

/// A parsed expiry index key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiryEntry<'a> {
    pub at: Millis,
    pub kind: u8,
    pub room: &'a str,
    pub id: &'a [u8],
}

pub fn parse_expiry_key(key: &[u8]) -> Result<ExpiryEntry<'_>, StoreError> {
    let bad = || StoreError::corrupt(key, "malformed expiry key");
    if key.len() < 12 || key[0] != TAG_EXPIRY {
        return Err(bad());
    }
    let at = (u64::from_be_bytes(key[1..9].try_into().unwrap()) ^ (1 << 63)) as i64;
    let kind = key[9];
    let len = u16::from_be_bytes([key[10], key[11]]) as usize;
    let room = key.get(12..12 + len).ok_or_else(bad)?;
    let room = std::str::from_utf8(room).map_err(|_| bad())?;
    Ok(ExpiryEntry { at, kind, room, id: &key[12 + len..] })
}

/// What a key under a room's prefix holds.
pub enum RoomEntry<'a> {
    Meta,
    Member(&'a str),
    Members,
    Pending(u64),
    Parked(&'a str),
}

/// Parses the part of a room key after [`room_prefix`].
pub fn parse_room_suffix<'a>(key: &'a [u8], suffix: &'a [u8]) -> Result<RoomEntry<'a>, StoreError> {
    let bad = |why: &str| StoreError::corrupt(key, why);
    let (&sub, rest) = suffix.split_first().ok_or_else(|| bad("room key without kind"))?;
    let text = || std::str::from_utf8(rest).map_err(|_| bad("id is not UTF-8"));
    Ok(match sub {
        SUB_META => RoomEntry::Meta,
        SUB_MEMBER => RoomEntry::Member(text()?),
        SUB_MEMBERS if rest.is_empty() => RoomEntry::Members,
        SUB_PENDING => {
            RoomEntry::Pending(u64::from_be_bytes(rest.try_into().map_err(|_| bad("pending key without seq"))?))
        }
        SUB_PARKED => RoomEntry::Parked(text()?),
        _ => return Err(bad("unknown room key kind")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_with_their_version() {
        let v = PendingV1 {
            message_id: "m1".into(),
            sender_id: "alice".into(),
            sent_at: -5,
            required: 3,
            expire_at: 99,
            readers: vec!["bob".into()],
        };
        let bytes = encode(&v);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<PendingV1>(b"k", &bytes).unwrap(), v);
    }

    #[test]
    fn unknown_versions_and_garbage_are_corruption_not_panics() {
        assert!(decode::<MemberV1>(b"k", &[]).is_err());
        assert!(decode::<MemberV1>(b"k", &[9, 1]).is_err());
        assert!(decode::<MemberV1>(b"k", &[FORMAT_V1]).is_err());
        assert!(decode::<MemberV1>(b"k", &[FORMAT_V1, 1, 2]).is_err());
        // A small room's members key has nothing after its kind.
        let members = members_key("r");
        let suffix = &members[room_prefix("r").len()..];
        assert!(matches!(parse_room_suffix(&members, suffix), Ok(RoomEntry::Members)));
        assert!(parse_room_suffix(b"k", &[SUB_MEMBERS, b'x']).is_err());
        assert!(parse_room_suffix(b"k", b"?").is_err());
    }

    #[test]
    fn expiry_keys_sort_by_time_including_negative_times() {
        let a = expiry_key(-10, EXPIRE_PENDING, "r", b"1");
        let b = expiry_key(5, EXPIRE_PENDING, "r", b"1");
        let c = expiry_key(6, EXPIRE_MARKER, "a", b"");
        assert!(a < b && b < c);
        assert!(b < expiry_upper_bound(5) && c >= expiry_upper_bound(5));
        let parsed = parse_expiry_key(&b).unwrap();
        assert_eq!((parsed.at, parsed.kind, parsed.room, parsed.id), (5, EXPIRE_PENDING, "r", &b"1"[..]));
    }

    #[test]
    fn a_markers_and_a_pending_messages_expiry_entries_are_derived_from_their_values() {
        let marker = MarkerV1 {
            seq: 4,
            state: MarkerState::Completed,
            at: 10,
            expire_at: 1_000,
            sender_id: "alice".into(),
            sent_at: 7,
            required: 2,
        };
        let key = marker_key("room-1", "m7");
        let entry = derived_expiry_entry(&key, &encode(&marker)).unwrap().unwrap();
        assert_eq!(entry, expiry_key(1_000, EXPIRE_MARKER, "room-1", b"m7"));
        assert!(is_derived_expiry_key(&entry));
        assert!(!is_derived_expiry_key(&key));

        let pending = PendingV1 {
            message_id: "m8".into(),
            sender_id: "bob".into(),
            sent_at: 8,
            required: 3,
            expire_at: 2_000,
            readers: vec!["carol".into()],
        };
        let pkey = pending_key("room-1", 5);
        assert!(is_pending_key(&pkey));
        let entry = derived_expiry_entry(&pkey, &encode(&pending)).unwrap().unwrap();
        assert_eq!(entry, expiry_key(2_000, EXPIRE_PENDING, "room-1", &5u64.to_be_bytes()));
        assert!(is_derived_expiry_key(&entry));

        // A parked read's entry is not derived; nor is anything for other keys.
        assert!(!is_derived_expiry_key(&expiry_key(1_000, EXPIRE_PARKED, "room-1", b"m7")));
        let member = encode(&MemberV1 { pos: 3 });
        for other in [member_key("room-1", "u"), meta_key("room-1"), members_key("room-1"), parked_key("room-1", "m7")]
        {
            assert!(!is_pending_key(&other));
            assert_eq!(derived_expiry_entry(&other, &member).unwrap(), None);
        }
        assert!(derived_expiry_entry(&key, &member).is_err(), "a marker key holding something else");
        assert!(derived_expiry_entry(&pkey, &member).is_err(), "a pending key holding something else");
        assert!(derived_expiry_entry(&[TAG_MARKER, 0, 9, b'r'], &encode(&marker)).is_err());
        let short = room_key("room-1", SUB_PENDING, &[1, 2]);
        assert!(derived_expiry_entry(&short, &encode(&pending)).is_err(), "a pending key without its seq");
    }

    #[test]
    fn one_room_prefix_never_covers_another_room() {
        // "ab" must not be a key-prefix of room "abc": the length prefix sees to that.
        assert!(!member_key("abc", "u").starts_with(&room_prefix("ab")));
    }
}

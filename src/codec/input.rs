//! Decoding of input records, exactly as the spec's tables say, with a typed error for every
//! way a record can be wrong. No input makes the decoder panic.
//!
//! Room topics carry `{"type": "message"|"join"|"leave", ...}`; `room_id` may be omitted
//! there and is then the room of the topic. `read_events` carries
//! `{room_id, user_id, message_id, read_at, scope?}`. Ids are strings (integers are
//! accepted and read as their decimal form, so `12345` and `"12345"` are one room). Times
//! are RFC 3339 strings or integer epoch milliseconds. Unknown fields, `body` included, are
//! skipped without being looked at.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;
use std::hash::BuildHasher;

use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::time::parse_time_str;
use crate::receipts::{Event, Id, Millis, ReadScope};

/// Bounds on what a record may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest record value accepted, in bytes.
    pub max_record_bytes: usize,
    /// Longest id (room, user, message), in bytes.
    pub max_id_bytes: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_record_bytes: 1 << 20, max_id_bytes: 256 }
    }
}

/// Why a record could not be decoded. Never retriable: the same bytes fail the same way.
/// Messages name fields and limits, never the record's content beyond short ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {size} bytes is over the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("record is not UTF-8 (first bad byte at offset {valid_up_to})")]
    NotUtf8 { valid_up_to: usize },
    #[error("record is not JSON: {detail}")]
    NotJson { detail: String },
    #[error("record is JSON but not an object")]
    NotObject,
    #[error("field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("field `{field}` should be {expected}, found {found}")]
    WrongType { field: &'static str, expected: &'static str, found: &'static str },
    #[error("field `{field}` is empty or longer than {limit} bytes")]
    BadId { field: &'static str, limit: usize },
    #[error("field `{field}` is not an RFC 3339 time")]
    BadTime { field: &'static str },
    #[error("unknown event type {value:?} (expected message, join or leave)")]
    UnknownType { value: String },
    #[error("unknown read scope {value:?} (expected up_to or message)")]
    UnknownScope { value: String },
    #[error("room_id {record:?} contradicts the topic's room {topic:?}")]
    RoomMismatch { topic: String, record: String },
    #[error("record has no room_id and its topic names no room")]
    NoRoom,
}

impl DecodeError {
    /// A short, fixed name of the error's kind: a metric label value and a dead-letter header.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::Oversized { .. } => "oversized",
            DecodeError::NotUtf8 { .. } => "not_utf8",
            DecodeError::NotJson { .. } => "not_json",
            DecodeError::NotObject => "not_object",
            DecodeError::MissingField { .. } => "missing_field",
            DecodeError::WrongType { .. } => "wrong_type",
            DecodeError::BadId { .. } => "bad_id",
            DecodeError::BadTime { .. } => "bad_time",
            DecodeError::UnknownType { .. } => "unknown_type",
            DecodeError::UnknownScope { .. } => "unknown_scope",
            DecodeError::RoomMismatch { .. } => "room_mismatch",
            DecodeError::NoRoom => "no_room",
        }
    }

    pub const KINDS: &'static [&'static str] = &[
        "oversized",
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "bad_id",
        "bad_time",
        "unknown_type",
        "unknown_scope",
        "room_mismatch",
        "no_room",
    ];
}

/// A JSON value, kept only as far as the decoder needs it. `Absent` (the field is not
/// there) differs from `null`, which is a value of the wrong type.
#[derive(Debug, Default, PartialEq)]
enum Field<'a> {
    #[default]
    Absent,
    Str(Cow<'a, str>),
    Int(i64),
    Other(&'static str),
}

impl<'de: 'a, 'a> Deserialize<'de> for Field<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Field<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Field::Str(Cow::Owned(v)))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Field::Int(v))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v).map_or(Field::Other("a number out of range"), Field::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                // JSON Schema counts 5.0 as an integer; so do we.
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(Field::Int(v as i64))
                } else {
                    Ok(Field::Other("a fractional number"))
                }
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Field::Other("a boolean"))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Other("null"))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(Field::Other("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Other("an object"))
            }
        }
        d.deserialize_any(V(std::marker::PhantomData))
    }
}

/// Every field any input shape has; unknown fields are skipped.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", default, borrow)]
    kind: Field<'a>,
    #[serde(default, borrow)]
    room_id: Field<'a>,
    #[serde(default, borrow)]
    message_id: Field<'a>,
    #[serde(default, borrow)]
    sender_id: Field<'a>,
    #[serde(default, borrow)]
    user_id: Field<'a>,
    #[serde(default, borrow)]
    sent_at: Field<'a>,
    #[serde(default, borrow)]
    at: Field<'a>,
    #[serde(default, borrow)]
    read_at: Field<'a>,
    #[serde(default, borrow)]
    scope: Field<'a>,
}

/// Reads `bytes` into `raw` (all [`Field::Absent`]). Filled in place: `Raw` is nine fields of
/// 32 bytes, and returning it by value copied it twice per record (about 3% of the processing
/// thread, in `memcpy`).
fn parse<'a>(bytes: &'a [u8], limits: &DecodeLimits, raw: &mut Raw<'a>) -> Result<(), DecodeError> {
    if bytes.len() > limits.max_record_bytes {
        return Err(DecodeError::Oversized { size: bytes.len(), limit: limits.max_record_bytes });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| DecodeError::NotUtf8 { valid_up_to: e.valid_up_to() })?;
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {}
        Some(_) if serde_json::from_str::<IgnoredAny>(text).is_ok() => return Err(DecodeError::NotObject),
        _ => {
            let detail = serde_json::from_str::<IgnoredAny>(text)
                .err()
                .map_or_else(|| "empty record".to_string(), |e| e.to_string());
            return Err(DecodeError::NotJson { detail });
        }
    }
    if parse_flat(text, raw).is_none() {
        *raw = parse_serde(text)?;
    }
    Ok(())
}

fn parse_serde(text: &str) -> Result<Raw<'_>, DecodeError> {
    serde_json::from_str(text).map_err(|e| DecodeError::NotJson { detail: e.to_string() })
}

/// The common shape, read without serde into `raw` (all [`Field::Absent`]): one flat object
/// whose values are strings without escapes or non-negative integers of up to 18 digits, as
/// chat clients write them. `None`, with `raw` partly filled, for anything else (an escape, a nested value, a float, a negative number, a known field
/// twice, bytes after the object), which [`parse_serde`] then reads or rejects as before. On
/// every input it reads, it gives what `parse_serde` gives (a property test). JSON parsing
/// was two thirds of decoding, and decoding a seventh of the processing thread (BENCHMARKS.md).
fn parse_flat<'a>(text: &'a str, raw: &mut Raw<'a>) -> Option<()> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        return (skip_ws(b, i + 1) == b.len()).then_some(());
    }
    loop {
        let (key, next) = flat_string(text, i)?;
        i = skip_ws(b, next);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let (value, next) = match b.get(i)? {
            b'"' => flat_string(text, i).map(|(v, next)| (Field::Str(Cow::Borrowed(v)), next))?,
            b'0'..=b'9' => flat_integer(b, i).map(|(v, next)| (Field::Int(v), next))?,
            _ => return None,
        };
        let slot = match key {
            "type" => Some(&mut raw.kind),
            "room_id" => Some(&mut raw.room_id),
            "message_id" => Some(&mut raw.message_id),
            "sender_id" => Some(&mut raw.sender_id),
            "user_id" => Some(&mut raw.user_id),
            "sent_at" => Some(&mut raw.sent_at),
            "at" => Some(&mut raw.at),
            "read_at" => Some(&mut raw.read_at),
            "scope" => Some(&mut raw.scope),
            _ => None, // skipped, as serde skips unknown fields
        };
        if let Some(slot) = slot {
            if *slot != Field::Absent {
                return None; // serde rejects a duplicate field
            }
            *slot = value;
        }
        i = skip_ws(b, next);
        match b.get(i)? {
            b',' => i = skip_ws(b, i + 1),
            b'}' => return (skip_ws(b, i + 1) == b.len()).then_some(()),
            _ => return None,
        }
    }
}

/// The index of the first byte at or after `i` that is not JSON whitespace.
#[inline(always)]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    // Compact JSON has none: one comparison answers (every whitespace byte is at most b' ').
    if b.get(i).is_some_and(|&c| c > b' ') {
        return i;
    }
    while matches!(b.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// A string without escapes or control characters starting at `i` (its opening quote): its
/// content and the index after its closing quote.
#[inline(always)]
fn flat_string(text: &str, i: usize) -> Option<(&str, usize)> {
    let b = text.as_bytes();
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let start = i + 1;
    let end = start + string_end(b.get(start..)?)?;
    // Both ends are ASCII bytes, so both are char boundaries.
    (b[end] == b'"').then(|| (&text[start..end], end + 1))
}

/// The index of the first byte of `b` that ends a string without escapes: a quote, a
/// backslash or a control character. Eight bytes at a time: a byte at a time, the scan was
/// the largest single function in a profile of `cargo bench --bench decode` (17% of its
/// samples; a read has four keys and three ids to scan).
#[inline(always)]
fn string_end(b: &[u8]) -> Option<usize> {
    let mut chunks = b.chunks_exact(8);
    for (n, chunk) in chunks.by_ref().enumerate() {
        let found = string_end_bytes(u64::from_le_bytes(chunk.try_into().expect("8 bytes")));
        if found != 0 {
            return Some(n * 8 + (found.trailing_zeros() / 8) as usize);
        }
    }
    let done = b.len() - chunks.remainder().len();
    chunks.remainder().iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).map(|p| done + p)
}

/// The high bit of each byte of `w` (eight bytes, little-endian) that is a quote, a backslash or
/// below 0x20, exact up to the first such byte: `x - 0x01..01` borrows out of a zero byte of
/// `x` and may then mark the bytes above it, never one below. Bytes from 0x80 up (UTF-8
/// beyond ASCII) are never marked.
#[inline(always)]
fn string_end_bytes(w: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let zero = |x: u64| x.wrapping_sub(ONES) & !x;
    let quote = zero(w ^ (ONES * u64::from(b'"')));
    let backslash = zero(w ^ (ONES * u64::from(b'\\')));
    let control = w.wrapping_sub(ONES * 0x20) & !w;
    (quote | backslash | control) & HIGH
}

/// A non-negative integer of 1 to 18 digits (so that it fits an i64) starting at `i`, not
/// followed by a fraction or an exponent, without a leading zero: its value and the index after it.
#[inline(always)]
fn flat_integer(b: &[u8], i: usize) -> Option<(i64, usize)> {
    // One pass: the digits are counted as they are added up.
    let (mut value, mut end) = (0i64, i);
    while let Some(digit) = b.get(end).map(|c| c.wrapping_sub(b'0')).filter(|&d| d <= 9) {
        if end - i == 18 {
            return None;
        }
        value = value * 10 + i64::from(digit);
        end += 1;
    }
    let len = end - i;
    if len == 0 || (len > 1 && b[i] == b'0') || matches!(b.get(end), Some(b'.' | b'e' | b'E')) {
        return None;
    }
    Some((value, end))
}

#[inline(always)]
fn text<'a>(field: &'static str, v: &'a Field<'a>) -> Result<Option<Cow<'a, str>>, DecodeError> {
    match v {
        Field::Absent => Ok(None),
        Field::Str(s) => Ok(Some(Cow::Borrowed(s.as_ref()))),
        Field::Int(i) => Ok(Some(Cow::Owned(i.to_string()))),
        Field::Other(found) => Err(DecodeError::WrongType { field, expected: "a string", found }),
    }
}

#[inline(always)]
fn id(field: &'static str, v: &Field<'_>, limits: &DecodeLimits) -> Result<Option<Id>, DecodeError> {
    match text(field, v)? {
        None => Ok(None),
        Some(s) if s.is_empty() || s.len() > limits.max_id_bytes => {
            Err(DecodeError::BadId { field, limit: limits.max_id_bytes })
        }
        Some(s) => Ok(Some(shared_id(&s))),
    }
}

/// Slots of [`shared_id`]'s cache: a power of two.
const ID_CACHE_SLOTS: usize = 1 << 14;

thread_local! {
    /// Long ids decoded lately on this thread (see [`shared_id`]); empty until first used.
    static ID_CACHE: RefCell<Vec<Option<Id>>> = const { RefCell::new(Vec::new()) };
}

/// `s` as an [`Id`]. A short one is inline (see [`crate::receipts::id::INLINE`]). A longer
/// one is shared with the last record on this thread that named it, if it is still cached:
/// the records of a busy room, its users and a message's reads then share one allocation of
/// each id instead of allocating and freeing one per record. The cache is direct-mapped (an
/// id's hash picks its slot; a new id takes the slot over), so its memory is bounded (16,384
/// ids) however many ids there are, and a miss costs one hash more.
#[inline(always)]
fn shared_id(s: &str) -> Id {
    if s.len() <= crate::receipts::id::INLINE {
        return Id::new(s);
    }
    cached_id(s)
}

/// A long id, from [`shared_id`]'s cache.
#[inline(never)]
fn cached_id(s: &str) -> Id {
    const STATE: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x05ee_d1d5);
    let slot = STATE.hash_one(s) as usize & (ID_CACHE_SLOTS - 1);
    ID_CACHE.with_borrow_mut(|slots| {
        if slots.is_empty() {
            slots.resize(ID_CACHE_SLOTS, None);
        }
        match &slots[slot] {
            Some(id) if id.as_str() == s => id.clone(),
            _ => {
                let id = Id::from(s);
                slots[slot] = Some(id.clone());
                id
            }
        }
    })
}

/// The error is made only when the field is missing. With `ok_or` it was made for every field,
/// and dropped (a call to `DecodeError`'s drop, which has `String`s to free in other variants):
/// 1.3% of the processing thread; 3-5% of decoding a read (`cargo bench --bench decode`).
#[inline(always)]
fn required_id(field: &'static str, v: &Field<'_>, limits: &DecodeLimits) -> Result<Id, DecodeError> {
    match id(field, v, limits)? {
        Some(id) => Ok(id),
        None => Err(DecodeError::MissingField { field }),
    }
}

fn time(field: &'static str, v: &Field<'_>) -> Result<Millis, DecodeError> {
    match v {
        Field::Absent => Err(DecodeError::MissingField { field }),
        Field::Int(ms) => Ok(*ms),
        // As in `required_id`: the error only when there is one.
        Field::Str(s) => match parse_time_str(s) {
            Some(ms) => Ok(ms),
            None => Err(DecodeError::BadTime { field }),
        },
        Field::Other(found) => {
            Err(DecodeError::WrongType { field, expected: "an RFC 3339 string or epoch milliseconds", found })
        }
    }
}

/// Decodes a record of a room topic. `topic_room` is the room named by the topic (the part
/// after the pattern's prefix), if any.
pub fn decode_room_event(bytes: &[u8], topic_room: Option<&str>, limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let mut raw = Raw::default();
    parse(bytes, limits, &mut raw)?;
    let Some(kind) = text("type", &raw.kind)? else {
        return Err(DecodeError::MissingField { field: "type" });
    };
    let room_id = match (id("room_id", &raw.room_id, limits)?, topic_room) {
        (Some(record), Some(topic)) if &*record != topic => {
            return Err(DecodeError::RoomMismatch { topic: topic.to_string(), record: record.to_string() })
        }
        (Some(record), _) => record,
        (None, Some(topic)) if !topic.is_empty() && topic.len() <= limits.max_id_bytes => shared_id(topic),
        (None, _) => return Err(DecodeError::NoRoom),
    };
    match kind.as_ref() {
        "message" => Ok(Event::Message {
            room_id,
            message_id: required_id("message_id", &raw.message_id, limits)?,
            sender_id: required_id("sender_id", &raw.sender_id, limits)?,
            sent_at: time("sent_at", &raw.sent_at)?,
        }),
        "join" => Ok(Event::Join {
            room_id,
            user_id: required_id("user_id", &raw.user_id, limits)?,
            at: time("at", &raw.at)?,
        }),
        "leave" => Ok(Event::Leave {
            room_id,
            user_id: required_id("user_id", &raw.user_id, limits)?,
            at: time("at", &raw.at)?,
        }),
        other => Err(DecodeError::UnknownType { value: other.chars().take(64).collect() }),
    }
}

/// Decodes a record of any input topic: the read topic's records as reads, every other
/// (pattern-matched) topic's as room events, with the room named by the part of the topic
/// after `room_prefix` (none if the name lacks the prefix: the record must carry `room_id`).
pub fn decode_input(
    topic: &str,
    read_topic: &str,
    room_prefix: &str,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    decode_input_of(topic == read_topic, topic, room_prefix, bytes, limits)
}

/// [`decode_input`] for a caller that knows already whether `topic` is the read topic.
pub fn decode_input_of(
    read: bool,
    topic: &str,
    room_prefix: &str,
    bytes: &[u8],
    limits: &DecodeLimits,
) -> Result<Event, DecodeError> {
    if read {
        decode_read_event(bytes, limits)
    } else {
        decode_room_event(bytes, topic.strip_prefix(room_prefix), limits)
    }
}

/// Decodes a record of the read topic.
pub fn decode_read_event(bytes: &[u8], limits: &DecodeLimits) -> Result<Event, DecodeError> {
    let mut raw = Raw::default();
    parse(bytes, limits, &mut raw)?;
    let scope = match text("scope", &raw.scope)?.as_deref() {
        None | Some("up_to") => ReadScope::UpTo,
        Some("message") => ReadScope::Message,
        Some(other) => return Err(DecodeError::UnknownScope { value: other.chars().take(64).collect() }),
    };
    Ok(Event::Read {
        room_id: required_id("room_id", &raw.room_id, limits)?,
        user_id: required_id("user_id", &raw.user_id, limits)?,
        message_id: required_id("message_id", &raw.message_id, limits)?,
        read_at: time("read_at", &raw.read_at)?,
        scope,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: DecodeLimits = DecodeLimits { max_record_bytes: 1024, max_id_bytes: 16 };

    fn room(json: &str, topic: Option<&str>) -> Result<Event, DecodeError> {
        decode_room_event(json.as_bytes(), topic, &L)
    }

    #[test]
    fn long_ids_seen_lately_share_one_copy_short_ones_are_inline_and_every_id_reads_as_itself() {
        const LONG: DecodeLimits = DecodeLimits { max_record_bytes: 1024, max_id_bytes: 64 };
        let read = |room: &str, user: &str, message: &str| {
            let json = format!(r#"{{"room_id":"{room}","user_id":"{user}","message_id":"{message}","read_at":1}}"#);
            match decode_read_event(json.as_bytes(), &LONG).unwrap() {
                Event::Read { room_id, user_id, message_id, .. } => (room_id, user_id, message_id),
                other => panic!("{other:?}"),
            }
        };
        // 36 characters each, as UUIDs.
        let long = |c: &str| c.repeat(36);
        let (room, user, message) = read(&long("r"), &long("u"), &long("m"));
        let (room2, user2, message2) = read(&long("r"), &long("u"), &long("m"));
        assert!(Id::ptr_eq(&room, &room2) && Id::ptr_eq(&user, &user2) && Id::ptr_eq(&message, &message2));
        let (room, user, message) = read("r1", "u1", "m1");
        assert!(room.is_inline() && user.is_inline() && message.is_inline());
        // Far more ids than slots: every slot is taken over many times, and no id ever reads as
        // the one it displaced; short and long ids alike.
        for i in 0..3 * ID_CACHE_SLOTS {
            let pad = if i % 2 == 0 { "" } else { "-0123456789abcdef0123456789" };
            let (r, u, m) = (format!("r{}{pad}", i % 1000), format!("u{i}{pad}"), format!("m{}{pad}", i / 3));
            let (room, user, message) = read(&r, &u, &m);
            assert_eq!((&*room, &*user, &*message), (r.as_str(), u.as_str(), m.as_str()));
        }
    }

    #[test]
    fn message_with_body_and_room_from_topic() {
        let e = room(
            r#"{"type":"message","message_id":"m1","sender_id":"alice","sent_at":"2026-11-28T10:00:00Z","body":{"text":"hi"}}"#,
            Some("12345"),
        )
        .unwrap();
        assert_eq!(
            e,
            Event::Message {
                room_id: "12345".into(),
                message_id: "m1".into(),
                sender_id: "alice".into(),
                sent_at: 1_795_860_000_000,
            }
        );
    }

    #[test]
    fn join_and_leave_with_epoch_millis_and_numeric_room() {
        let e = room(r#"{"type":"join","room_id":12345,"user_id":"bob","at":17}"#, Some("12345")).unwrap();
        assert_eq!(e, Event::Join { room_id: "12345".into(), user_id: "bob".into(), at: 17 });
        assert!(matches!(room(r#"{"type":"leave","user_id":"bob","at":1}"#, Some("r")), Ok(Event::Leave { .. })));
    }

    #[test]
    fn read_scopes() {
        let r = |j: &str| decode_read_event(j.as_bytes(), &L);
        let up_to = r(r#"{"room_id":"r","user_id":"u","message_id":"m","read_at":5}"#).unwrap();
        assert!(matches!(up_to, Event::Read { scope: ReadScope::UpTo, .. }));
        let one = r(r#"{"room_id":"r","user_id":"u","message_id":"m","read_at":5,"scope":"message"}"#).unwrap();
        assert!(matches!(one, Event::Read { scope: ReadScope::Message, .. }));
        assert_eq!(
            r(r#"{"room_id":"r","user_id":"u","message_id":"m","read_at":5,"scope":"all"}"#).unwrap_err().kind(),
            "unknown_scope"
        );
        assert_eq!(
            r(r#"{"user_id":"u","message_id":"m","read_at":5}"#).unwrap_err(),
            DecodeError::MissingField { field: "room_id" }
        );
    }

    #[test]
    fn every_error_kind() {
        let kind = |bytes: &[u8], topic: Option<&str>| decode_room_event(bytes, topic, &L).unwrap_err().kind();
        assert_eq!(kind(&[b'{'; 2000], None), "oversized");
        assert_eq!(kind(b"{\"type\":\"\xff\"}", None), "not_utf8");
        assert_eq!(kind(b"{\"type\":", None), "not_json");
        assert_eq!(kind(b"", None), "not_json");
        assert_eq!(kind(b"[1,2]", None), "not_object");
        assert_eq!(kind(br#"{"room_id":"r"}"#, None), "missing_field");
        assert_eq!(kind(br#"{"type":"join","room_id":"r","user_id":true,"at":1}"#, None), "wrong_type");
        assert_eq!(kind(br#"{"type":"join","room_id":"r","user_id":"","at":1}"#, None), "bad_id");
        assert_eq!(kind(br#"{"type":"join","room_id":"r","user_id":"u","at":"noon"}"#, None), "bad_time");
        assert_eq!(kind(br#"{"type":"join","room_id":"r","user_id":"u","at":1.5}"#, None), "wrong_type");
        assert_eq!(kind(br#"{"type":"typing","room_id":"r"}"#, None), "unknown_type");
        assert_eq!(kind(br#"{"type":"join","room_id":"a","user_id":"u","at":1}"#, Some("b")), "room_mismatch");
        assert_eq!(kind(br#"{"type":"join","user_id":"u","at":1}"#, None), "no_room");
        assert_eq!(kind(br#"{"type":"join","type":"leave"}"#, None), "not_json");
    }

    #[test]
    fn the_records_clients_write_take_the_fast_path() {
        let read = serde_json::json!({"room_id": "r1", "user_id": "u_7", "message_id": "m-9", "read_at": 1_795_860_000_123u64});
        let message = serde_json::json!({"type": "message", "message_id": "m1", "sender_id": "alice",
            "sent_at": "2026-11-28T10:00:00.123Z", "body": "hi"});
        let join = serde_json::json!({"type": "join", "user_id": "bob", "at": 17});
        for v in [read, message, join] {
            let text = serde_json::to_string(&v).unwrap();
            let mut fast = Raw::default();
            parse_flat(&text, &mut fast).unwrap_or_else(|| panic!("{text} left the fast path"));
            assert_eq!(Ok(fast), parse_serde(&text), "{text}");
        }
        // With spaces and a scope, as a hand-written client may send it.
        let text =
            " {\"room_id\" : \"r\",\n\t\"scope\":\"message\", \"user_id\":\"u\",\"message_id\":\"m\",\"read_at\":0} ";
        let mut fast = Raw::default();
        parse_flat(text, &mut fast).unwrap();
        assert_eq!(Ok(fast), parse_serde(text));
    }

    #[test]
    fn a_fast_string_ends_at_its_first_quote_backslash_or_control_byte_at_any_position() {
        let ends = |c: u8| c == b'"' || c == b'\\' || c < 0x20;
        for len in 0..24 {
            for at in 0..len {
                for byte in 0..=u8::MAX {
                    // Plain bytes, one of them `byte`, and bytes that end a string after it.
                    let mut b = vec![b'a'; len];
                    b[at] = byte;
                    b.extend_from_slice(b"\"\\\x01");
                    let expected = b.iter().position(|&c| ends(c));
                    assert_eq!(string_end(&b), expected, "byte {byte:#04x} at {at} of {len}");
                }
            }
        }
    }

    #[test]
    fn integers_past_18_digits_are_left_to_serde() {
        for digits in ["999999999999999999", "9223372036854775807", "9999999999999999999", "10000000000000000000"] {
            let text = format!(r#"{{"read_at":{digits}}}"#);
            let mut fast = Raw::default();
            assert_eq!(parse_flat(&text, &mut fast).is_some(), digits.len() <= 18, "{digits}");
            let mut whole = Raw::default();
            assert_eq!(parse(text.as_bytes(), &L, &mut whole).map(|()| whole), parse_serde(&text), "{digits}");
        }
    }

    fn json_key() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // The known fields, two unknown ones, and "type" escaped: serde matches it, the fast
        // path leaves it.
        let keys = [
            "type",
            "room_id",
            "message_id",
            "sender_id",
            "user_id",
            "sent_at",
            "at",
            "read_at",
            "scope",
            "body",
            "x",
            "ty\\u0070e",
        ];
        proptest::sample::select(keys.to_vec()).prop_map(|k| format!("\"{k}\""))
    }

    /// Values of every kind: strings and integers the fast path reads, and what it must leave
    /// to serde (escapes, raw control characters, leading zeros, negative numbers, floats,
    /// literals, nested values).
    const FIXED_VALUES: [&str; 19] = [
        "\"join\"",
        "\"message\"",
        "\"up_to\"",
        "\"2026-11-28T10:00:00Z\"",
        "\"a\\\"b\"",
        "\"\\u00e9\"",
        "\"é\"",
        "\"tab\there\"", // a raw control character: not JSON
        "007",
        "-5",
        "-0",
        "1.5",
        "1e3",
        "2E1",
        "true",
        "null",
        "{}",
        "[1, \"x\"]",
        "{\"a\":{\"b\":1}}",
    ];

    fn json_value() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![
            1 => "[a-zA-Z0-9_ :.-]{0,8}".prop_map(|s| format!("\"{s}\"")),
            // Longer, with what ends a fast string (an escape, a raw control character) or
            // does not (a multi-byte character) anywhere in it: on both sides of 8 bytes.
            1 => "[a-z0-9_]{0,20}(\\\\n|\\\\\"|\t|\x01|\x1f|é|\x7f)?[a-z]{0,12}".prop_map(|s| format!("\"{s}\"")),
            1 => "0|[1-9][0-9]{0,19}", // up to 20 digits: past an i64
            FIXED_VALUES.len() as u32 => proptest::sample::select(&FIXED_VALUES[..]).prop_map(str::to_string),
        ]
    }

    proptest::proptest! {
        // Most generated objects hold some value the fast path leaves; enough cases that the
        // ones it reads cover every kind of value (with 256, a missing leading-zero check
        // slipped through).
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]

        /// Whatever the fast path reads, serde reads the same; what it leaves, serde decides.
        #[test]
        fn the_fast_path_reads_what_serde_reads(
            fields in proptest::collection::vec((json_key(), json_value(), "[ \t\n\r]{0,2}", "[ \t\n\r]{0,2}"), 0..7),
            lead in "[ \t\n]{0,2}",
            tail in proptest::prop_oneof!["[ \t\n\r]{0,2}", proptest::strategy::Just(",".to_string()),
                proptest::strategy::Just("}".to_string()), proptest::strategy::Just("x".to_string())],
            trailing_comma: bool,
        ) {
            let body: Vec<String> = fields.iter().map(|(k, v, a, b)| format!("{a}{k}{b}:{a}{v}{b}")).collect();
            let comma = if trailing_comma && !body.is_empty() { "," } else { "" };
            let text = format!("{lead}{{{}{comma}}}{tail}", body.join(","));
            let mut fast = Raw::default();
            if parse_flat(&text, &mut fast).is_some() {
                proptest::prop_assert_eq!(Ok(fast), parse_serde(&text), "{}", text);
            }
            let mut whole = Raw::default();
            let whole = parse(text.as_bytes(), &DecodeLimits::default(), &mut whole).map(|()| whole);
            proptest::prop_assert_eq!(whole, parse_serde(&text), "{}", text);
        }
    }
}

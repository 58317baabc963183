//! Offline replay: records from a JSON Lines file through the engine, receipts out.
//!
//! Each input line is `{"topic": "...", "value": {...}, "timestamp": <epoch ms>?}`, the
//! shape of a record on the room topics or on `read_events`. Records that do not decode are
//! counted and reported with their line number, never fatal. This is the engine with no
//! Kafka in the way: handy to check a capture of production traffic against expectations.

use std::io::BufRead;

use serde::Deserialize;

use crate::codec::{self, DecodeError, DecodeLimits};
use crate::receipts::{Engine, EngineError, Event, Millis, ReceiptComplete};
use crate::store::KvStore;

/// Which input a topic is, given the room-topic prefix and the read topic's name.
#[derive(Debug, Clone)]
pub struct TopicNames {
    pub room_prefix: String,
    pub read_topic: String,
}

impl Default for TopicNames {
    fn default() -> Self {
        Self { room_prefix: "chatroom_".into(), read_topic: "read_events".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("reading the input: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    topic: String,
    value: Box<serde_json::value::RawValue>,
    #[serde(default)]
    timestamp: Option<Millis>,
}

/// A line that could not be used.
#[derive(Debug)]
pub struct Rejected {
    pub line: usize,
    pub kind: &'static str,
    pub reason: String,
}

#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub records: usize,
    pub rejected: Vec<Rejected>,
}

/// Decodes one record of `topic` (`None`: the topic is neither a room topic nor the read topic).
pub fn decode_record(
    topics: &TopicNames,
    topic: &str,
    value: &[u8],
    limits: &DecodeLimits,
) -> Option<Result<Event, DecodeError>> {
    let known = topic == topics.read_topic || topic.starts_with(topics.room_prefix.as_str());
    known.then(|| codec::decode_input(topic, &topics.read_topic, &topics.room_prefix, value, limits))
}

/// Replays `input` through `engine`, calling `emit` for every receipt. A line's `timestamp`
/// (default: the previous line's, starting at 0) is the engine's "now"; the engine ticks
/// before each record and commits every `commit_every` records and at the end.
pub fn replay<S: KvStore>(
    engine: &mut Engine<S>,
    input: impl BufRead,
    topics: &TopicNames,
    limits: &DecodeLimits,
    commit_every: usize,
    mut emit: impl FnMut(&ReceiptComplete),
) -> Result<ReplaySummary, ReplayError> {
    let mut summary = ReplaySummary::default();
    let mut now: Millis = 0;
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let number = index + 1;
        let mut reject =
            |kind: &'static str, reason: String| summary.rejected.push(Rejected { line: number, kind, reason });
        let parsed: Line = match serde_json::from_str(&line) {
            Ok(l) => l,
            Err(e) => {
                reject("bad_line", e.to_string());
                continue;
            }
        };
        now = parsed.timestamp.unwrap_or(now);
        let event = match decode_record(topics, &parsed.topic, parsed.value.get().as_bytes(), limits) {
            None => {
                reject("unknown_topic", format!("topic {:?} is neither a room topic nor the read topic", parsed.topic));
                continue;
            }
            Some(Err(e)) => {
                reject(e.kind(), e.to_string());
                continue;
            }
            Some(Ok(event)) => event,
        };
        summary.records += 1;
        engine.tick(now)?;
        engine.apply(&event, now)?;
        for r in engine.take_emitted() {
            emit(&r);
        }
        if summary.records % commit_every.max(1) == 0 {
            engine.commit(Vec::new())?;
        }
    }
    engine.commit(Vec::new())?;
    Ok(summary)
}

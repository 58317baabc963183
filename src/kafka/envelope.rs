//! Records of the repartition topic: a decoded event plus where it came from.
//!
//! The router decodes each input record once; tasks receive compact binary events, keyed by
//! room id. The source position lets a task skip records it has already applied (a router
//! that restarts re-sends what it had not committed), so duplicates from at-least-once
//! routing never reach the engine.

use bincode::{Decode, Encode};

use crate::receipts::{Event, Millis, ReadScope};

const VERSION: u8 = 1;
const CONFIG: bincode::config::Configuration = bincode::config::standard();

#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
enum Wire {
    Message { room: String, message: String, sender: String, sent_at: Millis },
    Join { room: String, user: String, at: Millis },
    Leave { room: String, user: String, at: Millis },
    Read { room: String, user: String, message: String, read_at: Millis, scope_message: bool },
}

/// Where a routed record came from.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Source {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The input record's timestamp (epoch ms), for latency metrics.
    pub timestamp: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub source: Source,
    pub event: Event,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable repartition record: {0}")]
pub struct EnvelopeError(String);

pub fn encode(source: &Source, event: &Event) -> Vec<u8> {
    let wire = match event {
        Event::Message { room_id, message_id, sender_id, sent_at } => Wire::Message {
            room: room_id.to_string(),
            message: message_id.to_string(),
            sender: sender_id.to_string(),
            sent_at: *sent_at,
        },
        Event::Join { room_id, user_id, at } => {
            Wire::Join { room: room_id.to_string(), user: user_id.to_string(), at: *at }
        }
        Event::Leave { room_id, user_id, at } => {
            Wire::Leave { room: room_id.to_string(), user: user_id.to_string(), at: *at }
        }
        Event::Read { room_id, user_id, message_id, read_at, scope } => Wire::Read {
            room: room_id.to_string(),
            user: user_id.to_string(),
            message: message_id.to_string(),
            read_at: *read_at,
            scope_message: *scope == ReadScope::Message,
        },
    };
    let mut out = vec![VERSION];
    bincode::encode_into_std_write((source, &wire), &mut out, CONFIG).expect("writing to a Vec cannot fail");
    out
}

pub fn decode(bytes: &[u8]) -> Result<Routed, EnvelopeError> {
    let Some((&VERSION, rest)) = bytes.split_first() else {
        return Err(EnvelopeError(format!("unknown version {:?}", bytes.first())));
    };
    let ((source, wire), _): ((Source, Wire), usize) =
        bincode::decode_from_slice(rest, CONFIG).map_err(|e| EnvelopeError(e.to_string()))?;
    let event = match wire {
        Wire::Message { room, message, sender, sent_at } => {
            Event::Message { room_id: room.into(), message_id: message.into(), sender_id: sender.into(), sent_at }
        }
        Wire::Join { room, user, at } => Event::Join { room_id: room.into(), user_id: user.into(), at },
        Wire::Leave { room, user, at } => Event::Leave { room_id: room.into(), user_id: user.into(), at },
        Wire::Read { room, user, message, read_at, scope_message } => Event::Read {
            room_id: room.into(),
            user_id: user.into(),
            message_id: message.into(),
            read_at,
            scope: if scope_message { ReadScope::Message } else { ReadScope::UpTo },
        },
    };
    Ok(Routed { source, event })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let source = Source { topic: "chatroom_1".into(), partition: 3, offset: 42, timestamp: 7 };
        for event in [
            Event::Message { room_id: "1".into(), message_id: "m".into(), sender_id: "a".into(), sent_at: 5 },
            Event::Join { room_id: "1".into(), user_id: "a".into(), at: 1 },
            Event::Leave { room_id: "1".into(), user_id: "a".into(), at: 2 },
            Event::Read {
                room_id: "1".into(),
                user_id: "b".into(),
                message_id: "m".into(),
                read_at: 9,
                scope: ReadScope::Message,
            },
        ] {
            let routed = decode(&encode(&source, &event)).unwrap();
            assert_eq!(routed, Routed { source: source.clone(), event });
        }
        assert!(decode(&[]).is_err());
        assert!(decode(&[2, 0]).is_err());
        assert!(decode(&[1, 0]).is_err());
    }
}

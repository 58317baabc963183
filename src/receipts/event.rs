//! The engine's inputs and outputs, already decoded: no JSON, no Kafka.

pub use super::id::Id;

/// Milliseconds since the Unix epoch (UTC). Every time the engine sees is one of these,
/// supplied by the caller: the engine never reads a clock.
pub type Millis = i64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadScope {
    /// Reading a message means reading every earlier message of the room (spec rule 4).
    #[default]
    UpTo,
    /// Only this one message was read (spec rule 5).
    Message,
}

/// One input event, from a room topic (`Message`, `Join`, `Leave`) or from `read_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Message { room_id: Id, message_id: Id, sender_id: Id, sent_at: Millis },
    Join { room_id: Id, user_id: Id, at: Millis },
    Leave { room_id: Id, user_id: Id, at: Millis },
    Read { room_id: Id, user_id: Id, message_id: Id, read_at: Millis, scope: ReadScope },
}

impl Event {
    pub fn room_id(&self) -> &Id {
        match self {
            Event::Message { room_id, .. }
            | Event::Join { room_id, .. }
            | Event::Leave { room_id, .. }
            | Event::Read { room_id, .. } => room_id,
        }
    }

    /// A short name of the event's kind, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Message { .. } => "message",
            Event::Join { .. } => "join",
            Event::Leave { .. } => "leave",
            Event::Read { .. } => "read",
        }
    }
}

/// The engine's one output: every member of the room has read this message (spec rule 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptComplete {
    pub room_id: Id,
    pub message_id: Id,
    pub sender_id: Id,
    pub seq: u64,
    pub sent_at: Millis,
    /// The `now` of the event that completed the message.
    pub completed_at: Millis,
    /// Members other than the sender who were in the room when the message was applied.
    pub required_readers: u32,
}

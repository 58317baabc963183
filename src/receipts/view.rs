//! Read-only views of a room's state, for queries (the spec's "derived views").

use serde::Serialize;

use super::engine::{Engine, EngineError};
use super::event::{Id, Millis};
use super::persist::{self, MarkerState, MarkerV1};
use crate::store::KvStore;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberPosition {
    pub user_id: String,
    pub read_position: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingSummary {
    pub message_id: String,
    pub seq: u64,
    pub sender_id: String,
    pub sent_at: Millis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RoomView {
    pub room_id: String,
    pub last_seq: u64,
    /// `W`; `None` stands for +inf (no members).
    pub frontier: Option<u64>,
    pub member_count: usize,
    /// Members ordered by read position, then user id.
    pub members: Vec<MemberPosition>,
    pub pending_count: usize,
    pub oldest_pending: Option<PendingSummary>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Pending,
    Complete,
    /// Pending too long (rule 10).
    Expired,
    /// Sent while the room was above the large-room limit (rule 11).
    Untracked,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageView {
    pub room_id: String,
    pub message_id: String,
    pub status: MessageStatus,
    pub seq: u64,
    pub sender_id: String,
    pub sent_at: Millis,
    pub required_readers: u32,
    /// When it completed or expired.
    pub finished_at: Option<Millis>,
    /// Current members who have read it (position at or past it, or in its reader set).
    /// Listed while it is pending; for a finished message only `readers_count` is known.
    pub readers: Vec<String>,
    /// Current members it still waits for (pending messages only).
    pub missing: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserView {
    pub room_id: String,
    pub user_id: String,
    pub member: bool,
    pub read_position: Option<u64>,
    /// `last_seq - H[u]` for a member.
    pub unread: Option<u64>,
}

impl<S: KvStore> Engine<S> {
    /// `None` when the room has never been seen (or holds nothing).
    pub fn room_view(&mut self, room_id: &str) -> Result<Option<RoomView>, EngineError> {
        let id: Id = room_id.into();
        self.load(&id)?;
        let room = &self.rooms[&id];
        if !room.is_known() {
            return Ok(None);
        }
        let w = room.frontier();
        Ok(Some(RoomView {
            room_id: room_id.to_string(),
            last_seq: room.last_seq,
            frontier: (w != u64::MAX).then_some(w),
            member_count: room.members.len(),
            members: room
                .by_position()
                .into_iter()
                .map(|(pos, user)| MemberPosition { user_id: user.to_string(), read_position: pos })
                .collect(),
            pending_count: room.pending.len(),
            oldest_pending: room.pending.iter().next().map(|(&seq, p)| PendingSummary {
                message_id: p.message_id.to_string(),
                seq,
                sender_id: p.sender_id.to_string(),
                sent_at: p.sent_at,
            }),
        }))
    }

    /// `None` when the message is unknown (never seen, or its marker expired).
    pub fn message_view(&mut self, room_id: &str, message_id: &str) -> Result<Option<MessageView>, EngineError> {
        let id: Id = room_id.into();
        self.load(&id)?;
        let room = &self.rooms[&id];
        if let Some(&seq) = room.pending_ids.get(message_id) {
            let p = &room.pending[&seq];
            let mut readers = Vec::new();
            let mut missing = Vec::new();
            for (pos, user) in room.by_position() {
                if pos >= seq || p.readers.binary_search(user).is_ok() {
                    readers.push(user.to_string());
                } else {
                    missing.push(user.to_string());
                }
            }
            readers.sort();
            return Ok(Some(MessageView {
                room_id: room_id.to_string(),
                message_id: message_id.to_string(),
                status: MessageStatus::Pending,
                seq,
                sender_id: p.sender_id.to_string(),
                sent_at: p.sent_at,
                required_readers: p.required,
                finished_at: None,
                readers,
                missing,
            }));
        }
        let key = persist::marker_key(room_id, message_id);
        let Some(bytes) = self.side.get(self.behind(), &self.store, &key)? else {
            return Ok(None);
        };
        let m: MarkerV1 = persist::decode(&key, &bytes)?;
        let (status, finished_at) = match m.state {
            MarkerState::Completed => (MessageStatus::Complete, Some(m.at)),
            MarkerState::Expired => (MessageStatus::Expired, Some(m.at)),
            MarkerState::Untracked => (MessageStatus::Untracked, None),
        };
        let mut readers: Vec<String> =
            room.by_position().into_iter().filter(|(pos, _)| *pos >= m.seq).map(|(_, u)| u.to_string()).collect();
        readers.sort();
        Ok(Some(MessageView {
            room_id: room_id.to_string(),
            message_id: message_id.to_string(),
            status,
            seq: m.seq,
            sender_id: m.sender_id,
            sent_at: m.sent_at,
            required_readers: m.required,
            finished_at,
            readers,
            missing: Vec::new(),
        }))
    }

    pub fn user_view(&mut self, room_id: &str, user_id: &str) -> Result<Option<UserView>, EngineError> {
        let id: Id = room_id.into();
        self.load(&id)?;
        let room = &self.rooms[&id];
        if !room.is_known() {
            return Ok(None);
        }
        let pos = room.pos(user_id);
        Ok(Some(UserView {
            room_id: room_id.to_string(),
            user_id: user_id.to_string(),
            member: pos.is_some(),
            read_position: pos,
            unread: pos.map(|p| room.last_seq - p),
        }))
    }
}

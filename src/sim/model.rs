//! A deliberately naive reference model of the spec (`shared/spec/receipts.md`): every
//! member and reader set kept in full, every pending message re-checked after every event.
//! It shares no code with the engine (only the event and receipt types): the tests compare
//! the two, and `allread sim check` computes the ground truth of a simulated chat with it.

use std::collections::{BTreeMap, BTreeSet};

use crate::receipts::{EngineConfig, Event, Millis, Outcomes, ReadScope, ReceiptComplete};

#[derive(Clone, Debug)]
struct MMsg {
    id: String,
    seq: u64,
    sender: String,
    sent_at: Millis,
    required: u32,
    readers: BTreeSet<String>,
    expire_at: Millis,
}

#[derive(Clone, Debug)]
struct MParked {
    user: String,
    message: String,
    scope: ReadScope,
    expire_at: Millis,
}

#[derive(Default, Clone, Debug)]
struct MRoom {
    last_seq: u64,
    members: BTreeMap<String, u64>,
    pending: Vec<MMsg>,
    parked: Vec<MParked>, // arrival order
}

#[derive(Default)]
pub struct Model {
    pub config: EngineConfig,
    rooms: BTreeMap<String, MRoom>,
    /// (room, message id) -> (seq, marker expiry)
    markers: BTreeMap<(String, String), (u64, Millis)>,
    pub out: Vec<ReceiptComplete>,
    pub counts: Outcomes,
}

impl Model {
    pub fn new(config: EngineConfig) -> Self {
        Model { config, ..Model::default() }
    }

    pub fn apply(&mut self, e: &Event, now: Millis) {
        let room_id = e.room_id().to_string();
        let mut room = self.rooms.remove(&room_id).unwrap_or_default();
        match e {
            Event::Join { user_id, .. } => {
                if room.members.contains_key(&**user_id) {
                    self.counts.join_of_member += 1;
                } else {
                    self.counts.join_applied += 1;
                    room.members.insert(user_id.to_string(), room.last_seq);
                }
            }
            Event::Leave { user_id, .. } => {
                if room.members.remove(&**user_id).is_some() {
                    self.counts.leave_applied += 1;
                    self.check(&room_id, &mut room, now);
                } else {
                    self.counts.leave_of_non_member += 1;
                }
            }
            Event::Message { message_id, sender_id, sent_at, .. } => {
                let mid = message_id.to_string();
                let known = room.pending.iter().any(|m| m.id == mid)
                    || self.markers.contains_key(&(room_id.clone(), mid.clone()));
                if known {
                    self.counts.duplicate_message += 1;
                } else {
                    self.counts.message_applied += 1;
                    room.last_seq += 1;
                    let seq = room.last_seq;
                    let sender = sender_id.to_string();
                    let required = room.members.keys().filter(|u| **u != sender).count() as u32;
                    if room.members.len() > self.config.large_room_member_limit as usize {
                        self.counts.large_room_message += 1;
                        self.markers
                            .insert((room_id.clone(), mid.clone()), (seq, now + self.config.completed_marker_ttl_ms));
                    } else {
                        room.pending.push(MMsg {
                            id: mid.clone(),
                            seq,
                            sender: sender.clone(),
                            sent_at: *sent_at,
                            required,
                            readers: BTreeSet::new(),
                            expire_at: now + self.config.pending_message_ttl_ms,
                        });
                    }
                    if let Some(h) = room.members.get_mut(&sender) {
                        *h = (*h).max(seq);
                    }
                    self.check(&room_id, &mut room, now);
                    let (mine, rest): (Vec<_>, Vec<_>) = room.parked.drain(..).partition(|p| p.message == mid);
                    room.parked = rest;
                    for p in mine {
                        self.counts.parked_read_applied += 1;
                        let pending = room.pending.iter().any(|m| m.seq == seq);
                        self.read_known(&room_id, &mut room, &p.user, seq, p.scope, pending, now);
                    }
                }
            }
            Event::Read { user_id, message_id, scope, .. } => {
                let mid = message_id.to_string();
                if let Some(seq) = room.pending.iter().find(|m| m.id == mid).map(|m| m.seq) {
                    self.read_known(&room_id, &mut room, user_id, seq, *scope, true, now);
                } else if let Some(&(seq, _)) = self.markers.get(&(room_id.clone(), mid.clone())) {
                    self.read_known(&room_id, &mut room, user_id, seq, *scope, false, now);
                } else {
                    self.counts.read_parked += 1;
                    room.parked.push(MParked {
                        user: user_id.to_string(),
                        message: mid,
                        scope: *scope,
                        expire_at: now + self.config.parked_read_ttl_ms,
                    });
                    let mine = room.parked.iter().filter(|p| *p.user == **user_id).count();
                    if mine > self.config.max_parked_reads_per_user as usize {
                        let oldest = room.parked.iter().position(|p| *p.user == **user_id).unwrap();
                        room.parked.remove(oldest);
                        self.counts.parked_read_dropped += 1;
                    }
                }
            }
        }
        self.rooms.insert(room_id, room);
    }

    #[allow(clippy::too_many_arguments)]
    fn read_known(
        &mut self,
        room_id: &str,
        room: &mut MRoom,
        user: &str,
        seq: u64,
        scope: ReadScope,
        pending: bool,
        now: Millis,
    ) {
        let Some(h) = room.members.get_mut(user) else {
            self.counts.read_by_non_member += 1;
            return;
        };
        self.counts.read_applied += 1;
        match scope {
            ReadScope::UpTo => *h = (*h).max(seq),
            ReadScope::Message if !pending => self.counts.message_read_of_finished += 1,
            ReadScope::Message => {
                if *h < seq {
                    room.pending.iter_mut().find(|m| m.seq == seq).unwrap().readers.insert(user.to_string());
                }
            }
        }
        self.check(room_id, room, now);
    }

    /// Completes, in seq order, every pending message that every member has read.
    fn check(&mut self, room_id: &str, room: &mut MRoom, now: Millis) {
        let members = &room.members;
        let (done, waiting): (Vec<MMsg>, Vec<MMsg>) =
            room.pending.drain(..).partition(|m| members.iter().all(|(u, h)| *h >= m.seq || m.readers.contains(u)));
        room.pending = waiting;
        for m in done {
            self.markers
                .insert((room_id.to_string(), m.id.clone()), (m.seq, now + self.config.completed_marker_ttl_ms));
            if m.required == 0 {
                self.counts.trivial_completion += 1;
                if self.config.suppress_trivial {
                    self.counts.trivial_suppressed += 1;
                    continue;
                }
            }
            self.counts.receipt_emitted += 1;
            self.out.push(ReceiptComplete {
                room_id: room_id.into(),
                message_id: m.id.as_str().into(),
                sender_id: m.sender.as_str().into(),
                seq: m.seq,
                sent_at: m.sent_at,
                completed_at: now,
                required_readers: m.required,
            });
        }
    }

    pub fn tick(&mut self, now: Millis) {
        // What is due now; what this tick creates (markers of expired messages) waits.
        let due_markers: Vec<_> =
            self.markers.iter().filter(|(_, (_, at))| *at <= now).map(|(k, _)| k.clone()).collect();
        for k in due_markers {
            self.markers.remove(&k);
            self.counts.marker_expired += 1;
        }
        let ttl = self.config.completed_marker_ttl_ms;
        for (room_id, room) in self.rooms.iter_mut() {
            let before = room.parked.len();
            room.parked.retain(|p| p.expire_at > now);
            self.counts.parked_read_expired += (before - room.parked.len()) as u64;
            let (expired, alive): (Vec<_>, Vec<_>) = room.pending.drain(..).partition(|m| m.expire_at <= now);
            room.pending = alive;
            for m in expired {
                self.counts.pending_expired += 1;
                self.markers.insert((room_id.clone(), m.id), (m.seq, now + ttl));
            }
        }
    }
}

//! A deterministic chat: rooms, members, messages and the reads of simulated users, each
//! event with the time (ms from the start) at which a chat would produce it.
//!
//! Users read as chat clients do: most within a second or two, some slowly, some only when
//! they come back online (every minute, reading everything since). With churn, members
//! leave and new ones join. The receipts such a chat must give do not depend on how a
//! processor interleaves the room topics and the read topic, as long as it does not reorder
//! events by more than [`LEAVE_GUARD_MS`]: a read before its message is parked, and a member
//! leaves that long after its last read.

use crate::receipts::{Event, Id, ReadScope};

/// A member leaves only this long after its last read.
pub const LEAVE_GUARD_MS: u64 = 3_000;

/// The shape of a simulated chat.
#[derive(Debug, Clone, PartialEq)]
pub struct Shape {
    pub seed: u64,
    pub rooms: usize,
    /// Members of an ordinary room.
    pub members: usize,
    /// Rooms with `large_members` members (among `rooms`).
    pub large_rooms: usize,
    pub large_members: usize,
    pub messages: usize,
    /// Messages per second of chat time (sets the events' times).
    pub message_rate: f64,
    /// Fractions of users who read slowly (5-60 s) and who read only when back online.
    pub slow_readers: f64,
    pub offline_readers: f64,
    /// Per message: the chance that a member leaves and a new user joins.
    pub churn: f64,
    /// Fraction of reads with scope `message`.
    pub message_scoped_reads: f64,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            seed: 1,
            rooms: 100,
            members: 10,
            large_rooms: 0,
            large_members: 1_000,
            messages: 10_000,
            message_rate: 1_000.0,
            slow_readers: 0.2,
            offline_readers: 0.1,
            churn: 0.0,
            message_scoped_reads: 0.05,
        }
    }
}

/// Where an event is produced: a room's topic (by room number) or the read topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Room(u32),
    Read,
}

#[derive(Debug, Clone)]
pub struct SimEvent {
    /// Milliseconds of chat time from the start.
    pub at: u64,
    pub target: Target,
    pub event: Event,
}

/// splitmix64: small, fast and fully determined by the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

#[derive(Clone, Copy)]
enum Reader {
    Fast,
    Slow,
    Offline { phase: u64 },
}

struct Member {
    user: Id,
    reader: Reader,
    last_read: u64,
}

/// How long after `sent` a reader reads.
fn read_time(rng: &mut Rng, reader: Reader, sent: u64) -> u64 {
    match reader {
        Reader::Fast => sent + rng.between(50, 2_000),
        Reader::Slow => sent + rng.between(5_000, 60_000),
        Reader::Offline { phase } => {
            // Back online every minute (at its own phase), reading everything since.
            let next = (sent + 1_000).saturating_sub(phase).div_ceil(60_000) * 60_000 + phase;
            next + rng.between(0, 500)
        }
    }
}

pub fn room_id(r: u32) -> Id {
    Id::from(format!("room{r}").as_str())
}

/// The chat's events in time order (ties in generation order).
pub fn generate(shape: &Shape) -> Vec<SimEvent> {
    let mut rng = Rng::new(shape.seed);
    let mut events = Vec::with_capacity(shape.messages * (shape.members + 1));
    let mut rooms: Vec<Vec<Member>> = Vec::with_capacity(shape.rooms);
    let mut next_user = 0u64;
    let mut new_member = |rng: &mut Rng, room: u32| {
        next_user += 1;
        let x = rng.unit();
        let reader = if x < shape.offline_readers {
            Reader::Offline { phase: rng.below(60_000) }
        } else if x < shape.offline_readers + shape.slow_readers {
            Reader::Slow
        } else {
            Reader::Fast
        };
        Member { user: Id::from(format!("r{room}u{next_user}").as_str()), reader, last_read: 0 }
    };
    for r in 0..shape.rooms as u32 {
        let size = if (r as usize) < shape.large_rooms { shape.large_members } else { shape.members };
        let mut members = Vec::with_capacity(size);
        for _ in 0..size {
            let m = new_member(&mut rng, r);
            events.push(SimEvent {
                at: 0,
                target: Target::Room(r),
                event: Event::Join { room_id: room_id(r), user_id: m.user.clone(), at: 0 },
            });
            members.push(m);
        }
        rooms.push(members);
    }
    // Messages start once every join is in.
    let start = 2_000u64;
    for i in 0..shape.messages {
        let at = start + (i as f64 * 1_000.0 / shape.message_rate) as u64;
        let r = rng.below(shape.rooms as u64) as u32;
        if shape.churn > 0.0 && rng.unit() < shape.churn {
            churn(&mut rng, &mut rooms[r as usize], r, at, &mut events, &mut new_member);
        }
        let members = &mut rooms[r as usize];
        if members.is_empty() {
            continue;
        }
        let sender = members[rng.below(members.len() as u64) as usize].user.clone();
        let message_id = Id::from(format!("m{i}").as_str());
        events.push(SimEvent {
            at,
            target: Target::Room(r),
            event: Event::Message {
                room_id: room_id(r),
                message_id: message_id.clone(),
                sender_id: sender.clone(),
                sent_at: at as i64,
            },
        });
        for m in members.iter_mut().filter(|m| m.user != sender) {
            let read_at = read_time(&mut rng, m.reader, at);
            m.last_read = m.last_read.max(read_at);
            let scope = if rng.unit() < shape.message_scoped_reads { ReadScope::Message } else { ReadScope::UpTo };
            events.push(SimEvent {
                at: read_at,
                target: Target::Read,
                event: Event::Read {
                    room_id: room_id(r),
                    user_id: m.user.clone(),
                    message_id: message_id.clone(),
                    read_at: read_at as i64,
                    scope,
                },
            });
        }
    }
    events.sort_by_key(|e| e.at);
    events
}

/// A member stops reading and leaves [`LEAVE_GUARD_MS`] after its last read; a new user joins.
/// Messages sent meanwhile wait for the leaver until it leaves (rule 2).
fn churn(
    rng: &mut Rng,
    members: &mut Vec<Member>,
    r: u32,
    at: u64,
    events: &mut Vec<SimEvent>,
    new_member: &mut impl FnMut(&mut Rng, u32) -> Member,
) {
    if members.len() > 1 {
        let gone = members.swap_remove(rng.below(members.len() as u64) as usize);
        let leave_at = gone.last_read.max(at) + LEAVE_GUARD_MS;
        events.push(SimEvent {
            at: leave_at,
            target: Target::Room(r),
            event: Event::Leave { room_id: room_id(r), user_id: gone.user, at: leave_at as i64 },
        });
    }
    let m = new_member(rng, r);
    events.push(SimEvent {
        at,
        target: Target::Room(r),
        event: Event::Join { room_id: room_id(r), user_id: m.user.clone(), at: at as i64 },
    });
    members.push(m);
}

/// The receipts the chat must give, from the reference model (not the engine), with the
/// chat time of the event that completed each.
pub fn ground_truth(events: &[SimEvent]) -> Vec<crate::receipts::ReceiptComplete> {
    let mut model = super::model::Model::new(crate::receipts::EngineConfig::default());
    for e in events {
        model.apply(&e.event, e.at as i64);
    }
    model.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_chat_and_every_message_completes_without_churn() {
        let shape = Shape { rooms: 20, messages: 500, ..Shape::default() };
        let a = generate(&shape);
        let b = generate(&shape);
        assert_eq!(a.len(), b.len());
        assert!(a.iter().zip(&b).all(|(x, y)| x.at == y.at && x.event == y.event));
        assert!(a.windows(2).all(|w| w[0].at <= w[1].at), "in time order");
        let receipts = ground_truth(&a);
        assert_eq!(receipts.len(), 500, "everyone reads everything");
        assert!(receipts.iter().all(|r| r.required_readers == 9));
        let other = generate(&Shape { seed: 2, ..shape });
        assert!(a.iter().zip(&other).any(|(x, y)| x.event != y.event), "another seed, another chat");
    }

    #[test]
    fn in_time_order_no_read_comes_before_its_message() {
        let events = generate(&Shape { rooms: 50, messages: 20_000, ..Shape::default() });
        let mut model = crate::sim::model::Model::new(crate::receipts::EngineConfig::default());
        for e in &events {
            model.apply(&e.event, e.at as i64);
        }
        assert_eq!(model.counts.read_parked, 0);
        assert_eq!(model.counts.read_by_non_member, 0);
        assert_eq!(model.out.len(), 20_000);
    }

    #[test]
    fn churn_leaves_only_after_every_read_of_the_leaver() {
        let shape = Shape { rooms: 5, messages: 2_000, churn: 0.2, ..Shape::default() };
        let events = generate(&shape);
        let leaves: Vec<&SimEvent> = events.iter().filter(|e| matches!(e.event, Event::Leave { .. })).collect();
        assert!(leaves.len() > 50, "{} leaves", leaves.len());
        for leave in leaves {
            let Event::Leave { user_id, .. } = &leave.event else { unreachable!() };
            let last_read = events
                .iter()
                .filter(|e| matches!(&e.event, Event::Read { user_id: u, .. } if u == user_id))
                .map(|e| e.at)
                .max()
                .unwrap_or(0);
            assert!(last_read + LEAVE_GUARD_MS <= leave.at, "{user_id} read at {last_read}, left at {}", leave.at);
        }
        assert!(!ground_truth(&events).is_empty());
    }
}

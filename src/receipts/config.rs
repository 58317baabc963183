//! The engine's retention bounds and switches (spec rules 7, 8, 10, 11).

use super::event::Millis;

const MINUTE: Millis = 60_000;
const DAY: Millis = 24 * 60 * MINUTE;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Reads parked per user and room while their message has not arrived (rule 8). When a
    /// user exceeds it, that user's oldest parked read in the room is dropped (and counted):
    /// with `up_to` reads the newest says the most.
    pub max_parked_reads_per_user: u32,
    /// How long a read may wait for its message (rule 8), in milliseconds.
    pub parked_read_ttl_ms: Millis,
    /// How long a pending message may wait for its readers before it expires (rule 10).
    pub pending_message_ttl_ms: Millis,
    /// How long a finished message (completed, expired or untracked) is remembered for
    /// duplicate detection, reads that name it, and queries (rule 10). The default equals
    /// Kafka's default topic retention, so replaying anything still on a topic is deduplicated.
    pub completed_marker_ttl_ms: Millis,
    /// Above this many members a room's new messages are not tracked for completion (rule 11).
    pub large_room_member_limit: u32,
    /// Do not emit completions of messages with no required reader (rule 7).
    pub suppress_trivial: bool,
    /// Rooms kept in memory, measured in state entries (members + pending messages + parked
    /// reads + recently finished messages + 1 per room); the least recently used clean rooms
    /// are evicted past it.
    pub cache_entries: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_parked_reads_per_user: 16,
            parked_read_ttl_ms: 15 * MINUTE,
            pending_message_ttl_ms: 7 * DAY,
            completed_marker_ttl_ms: 7 * DAY,
            large_room_member_limit: 10_000,
            suppress_trivial: false,
            cache_entries: 2_000_000,
        }
    }
}

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
    /// Rooms kept in memory by an instance, measured in state entries (members + pending
    /// messages + parked reads + recently finished messages + 1 per room). Its tasks share it
    /// evenly (see [`cache_share`]), so the instance's memory for rooms does not grow with the
    /// partitions it is assigned; past its share a task evicts its least recently used clean
    /// rooms. An engine run on its own (`allread replay`) takes it whole.
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
            cache_entries: 1_000_000,
        }
    }
}

/// Each task's share of an instance's [`EngineConfig::cache_entries`] when it runs `tasks`
/// tasks: an even split, at least one entry each.
pub fn cache_share(cache_entries: usize, tasks: usize) -> usize {
    (cache_entries / tasks.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::cache_share;

    #[test]
    fn an_instance_cache_is_split_evenly_among_its_tasks() {
        assert_eq!(cache_share(1_000_000, 8), 125_000);
        assert_eq!(cache_share(1_000_000, 3), 333_333, "rounded down: the shares stay within the budget");
        assert_eq!(cache_share(1_000_000, 1), 1_000_000);
        assert_eq!(cache_share(1_000_000, 0), 1_000_000, "no task yet: one would take it whole");
        assert_eq!(cache_share(4, 8), 1, "at least one entry a task");
    }
}

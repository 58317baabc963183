package dev.allread.kstreams;

/**
 * The retention bounds and switches of the rules (spec rules 7, 8, 10, 11); the defaults are
 * allread's.
 *
 * @param maxParkedReadsPerUser reads parked per user and room while their message has not
 *     arrived (rule 8); past it the user's oldest parked read in the room is dropped (counted)
 * @param parkedReadTtlMs how long a read may wait for its message (rule 8)
 * @param pendingMessageTtlMs how long a pending message may wait for its readers (rule 10)
 * @param completedMarkerTtlMs how long a finished message is remembered, for duplicates and
 *     reads that name it (rules 9, 10)
 * @param largeRoomMemberLimit above this many members a room's new messages are not tracked
 *     for completion (rule 11)
 * @param suppressTrivial do not emit completions of messages with no required reader (rule 7)
 */
public record EngineConfig(
        int maxParkedReadsPerUser,
        long parkedReadTtlMs,
        long pendingMessageTtlMs,
        long completedMarkerTtlMs,
        int largeRoomMemberLimit,
        boolean suppressTrivial) {

    private static final long MINUTE = 60_000L;
    private static final long DAY = 24 * 60 * MINUTE;

    public static EngineConfig defaults() {
        return new EngineConfig(16, 15 * MINUTE, 7 * DAY, 7 * DAY, 10_000, false);
    }
}

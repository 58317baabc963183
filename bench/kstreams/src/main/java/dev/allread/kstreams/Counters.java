package dev.allread.kstreams;

import java.util.LinkedHashMap;
import java.util.Map;
import java.util.concurrent.atomic.LongAdder;

/**
 * Process-wide outcome counts (what the rules did, what was dropped), shared by every stream
 * thread's tasks. Summarized on shutdown; nothing is ever counted by logging a record.
 */
public final class Counters {
    private Counters() {}

    /** Events applied by the receipt processor (after the repartition). */
    public static final LongAdder processed = new LongAdder();
    public static final LongAdder receiptsEmitted = new LongAdder();
    /** Input records that did not decode (dead-lettered). */
    public static final LongAdder invalid = new LongAdder();

    public static final LongAdder messageApplied = new LongAdder();
    public static final LongAdder duplicateMessage = new LongAdder();
    public static final LongAdder joinApplied = new LongAdder();
    public static final LongAdder joinOfMember = new LongAdder();
    public static final LongAdder leaveApplied = new LongAdder();
    public static final LongAdder leaveOfNonMember = new LongAdder();
    public static final LongAdder readApplied = new LongAdder();
    public static final LongAdder readByNonMember = new LongAdder();
    public static final LongAdder messageReadOfFinished = new LongAdder();
    public static final LongAdder readParked = new LongAdder();
    public static final LongAdder parkedReadApplied = new LongAdder();
    public static final LongAdder parkedReadDropped = new LongAdder();
    public static final LongAdder parkedReadExpired = new LongAdder();
    public static final LongAdder pendingExpired = new LongAdder();
    public static final LongAdder markerExpired = new LongAdder();
    public static final LongAdder largeRoomMessage = new LongAdder();
    public static final LongAdder trivialCompletion = new LongAdder();
    public static final LongAdder trivialSuppressed = new LongAdder();

    /** Every count by name, for the summary line and tests. */
    public static Map<String, Long> snapshot() {
        Map<String, Long> m = new LinkedHashMap<>();
        m.put("records_processed", processed.sum());
        m.put("receipts_emitted", receiptsEmitted.sum());
        m.put("invalid_records", invalid.sum());
        m.put("message_applied", messageApplied.sum());
        m.put("duplicate_message", duplicateMessage.sum());
        m.put("join_applied", joinApplied.sum());
        m.put("join_of_member", joinOfMember.sum());
        m.put("leave_applied", leaveApplied.sum());
        m.put("leave_of_non_member", leaveOfNonMember.sum());
        m.put("read_applied", readApplied.sum());
        m.put("read_by_non_member", readByNonMember.sum());
        m.put("message_read_of_finished", messageReadOfFinished.sum());
        m.put("read_parked", readParked.sum());
        m.put("parked_read_applied", parkedReadApplied.sum());
        m.put("parked_read_dropped", parkedReadDropped.sum());
        m.put("parked_read_expired", parkedReadExpired.sum());
        m.put("pending_expired", pendingExpired.sum());
        m.put("marker_expired", markerExpired.sum());
        m.put("large_room_message", largeRoomMessage.sum());
        m.put("trivial_completion", trivialCompletion.sum());
        m.put("trivial_suppressed", trivialSuppressed.sum());
        return m;
    }

    /** One line: {@code records_processed=N receipts_emitted=N invalid_records=N ...}. */
    public static String summaryLine() {
        StringBuilder sb = new StringBuilder();
        for (Map.Entry<String, Long> e : snapshot().entrySet()) {
            if (sb.length() > 0) {
                sb.append(' ');
            }
            sb.append(e.getKey()).append('=').append(e.getValue());
        }
        return sb.toString();
    }

    /** Zeroes every count (tests). */
    public static void reset() {
        for (LongAdder a : new LongAdder[] {
            processed, receiptsEmitted, invalid, messageApplied, duplicateMessage, joinApplied, joinOfMember,
            leaveApplied, leaveOfNonMember, readApplied, readByNonMember, messageReadOfFinished, readParked,
            parkedReadApplied, parkedReadDropped, parkedReadExpired, pendingExpired, markerExpired,
            largeRoomMessage, trivialCompletion, trivialSuppressed
        }) {
            a.reset();
        }
    }
}

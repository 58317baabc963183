package dev.allread.kstreams;

import static dev.allread.kstreams.StateLayout.EMPTY;

import dev.allread.kstreams.StateLayout.ExpiryKey;
import dev.allread.kstreams.StateLayout.Meta;
import dev.allread.kstreams.StateLayout.MessageEntry;
import dev.allread.kstreams.StateLayout.ParkedRead;
import dev.allread.kstreams.StateLayout.Pending;
import dev.allread.kstreams.StateLayout.RoomKeys;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.utils.Bytes;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.processor.PunctuationType;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.ProcessorSupplier;
import org.apache.kafka.streams.processor.api.Record;
import org.apache.kafka.streams.state.KeyValueIterator;
import org.apache.kafka.streams.state.KeyValueStore;
import org.apache.kafka.streams.state.StoreBuilder;
import org.apache.kafka.streams.state.Stores;

/**
 * The receipt rules (spec rules 1-11) as one Processor API processor, after the repartition by
 * room id. Input: (room id, {@link Event}); output: (room id, {@link Receipt}).
 *
 * <p>State lives in two RocksDB key-value stores (Kafka Streams' default: persistent,
 * changelogged, with the record cache in front), laid out as {@link StateLayout} describes.
 * "now" is the stream time's wall clock ({@code currentSystemTimeMs}), as in allread, where
 * {@code completed_at} is when the completing event was applied. A wall-clock punctuator
 * expires parked reads, pending messages and markers every second.
 */
public final class ReceiptProcessor implements Processor<String, Event, String, Receipt> {

    public static final String STATE_STORE = "receipt-state";
    public static final String EXPIRY_STORE = "receipt-expiry";

    /** How many expiry index entries one punctuation handles at most (the rest wait a second). */
    static final int EXPIRY_BATCH = 10_000;

    private static final Serdes.BytesSerde BYTES = new Serdes.BytesSerde();

    /** Supplies the processor and declares its stores (connected automatically by {@code process()}). */
    public static final class Supplier implements ProcessorSupplier<String, Event, String, Receipt> {
        private final EngineConfig config;

        public Supplier(EngineConfig config) {
            this.config = config;
        }

        @Override
        public Processor<String, Event, String, Receipt> get() {
            return new ReceiptProcessor(config);
        }

        @Override
        public Set<StoreBuilder<?>> stores() {
            return Set.of(store(STATE_STORE), store(EXPIRY_STORE));
        }

        private static StoreBuilder<KeyValueStore<Bytes, byte[]>> store(String name) {
            return Stores.keyValueStoreBuilder(Stores.persistentKeyValueStore(name), Serdes.Bytes(), Serdes.ByteArray())
                    .withCachingEnabled(); // changelogging is on by default
        }
    }

    private final EngineConfig config;
    private ProcessorContext<String, Receipt> context;
    private KeyValueStore<Bytes, byte[]> state;
    private KeyValueStore<Bytes, byte[]> expiry;
    /** Timestamp given to receipts: that of the record that completed them. */
    private long outputTimestamp;

    ReceiptProcessor(EngineConfig config) {
        this.config = config;
    }

    @Override
    public void init(ProcessorContext<String, Receipt> context) {
        this.context = context;
        this.state = context.getStateStore(STATE_STORE);
        this.expiry = context.getStateStore(EXPIRY_STORE);
        context.schedule(Duration.ofSeconds(1), PunctuationType.WALL_CLOCK_TIME, this::expire);
    }

    /** One room's meta, loaded for the duration of an event (or a punctuation). */
    private final class Room {
        final RoomKeys keys;
        final Meta meta;
        /** The stored meta value (null if none): written back only if it changed. */
        final byte[] stored;

        Room(String id) {
            keys = new RoomKeys(id);
            stored = state.get(keys.meta());
            meta = Meta.decode(stored);
        }

        String id() {
            return keys.room;
        }

        /** W: the lowest read position of a member; +inf (Long.MAX_VALUE) in an empty room. */
        long frontier() {
            return meta.memberCount == 0 ? Long.MAX_VALUE : meta.frontier;
        }

        void save() {
            boolean holdsNothing = meta.lastSeq == 0 && meta.memberCount == 0 && meta.parkedCount == 0;
            if (holdsNothing) {
                // A room that only saw reads of messages that never came leaves nothing behind.
                if (stored != null) {
                    state.delete(keys.meta());
                }
            } else {
                byte[] now = meta.encode();
                if (!Arrays.equals(now, stored)) {
                    state.put(keys.meta(), now);
                }
            }
        }
    }

    @Override
    public void process(Record<String, Event> record) {
        Counters.processed.increment();
        if (record.key() == null || record.value() == null) {
            return;
        }
        long now = context.currentSystemTimeMs();
        outputTimestamp = record.timestamp();
        Room room = new Room(record.key());
        Event e = record.value();
        if (e instanceof Event.Message m) {
            onMessage(room, m.messageId(), m.senderId(), m.sentAt(), now);
        } else if (e instanceof Event.Join j) {
            onJoin(room, j.userId());
        } else if (e instanceof Event.Leave l) {
            onLeave(room, l.userId(), now);
        } else if (e instanceof Event.Read r) {
            onRead(room, r.userId(), r.messageId(), r.scopeMessage(), now);
        }
        room.save();
    }

    // ------------------------------------------------------------------ rules

    private Long position(Room room, String user) {
        byte[] b = state.get(room.keys.member(user));
        return b == null ? null : StateLayout.decodePos(b);
    }

    /** Rule 1. */
    private void onJoin(Room room, String user) {
        if (state.get(room.keys.member(user)) != null) {
            Counters.joinOfMember.increment();
            return;
        }
        Counters.joinApplied.increment();
        // H[u] = max(H[u], last_seq); a former member's position is at most last_seq. A join
        // never completes anything: the new member holds nothing back.
        long pos = room.meta.lastSeq;
        state.put(room.keys.member(user), StateLayout.encodePos(pos));
        state.put(room.keys.byPos(pos, user), EMPTY);
        room.meta.frontier = room.meta.memberCount == 0 ? pos : Math.min(room.meta.frontier, pos);
        room.meta.memberCount++;
    }

    /** Rule 2. */
    private void onLeave(Room room, String user, long now) {
        Long pos = position(room, user);
        if (pos == null) {
            Counters.leaveOfNonMember.increment();
            return;
        }
        Counters.leaveApplied.increment();
        state.delete(room.keys.member(user));
        state.delete(room.keys.byPos(pos, user));
        room.meta.memberCount--;
        if (room.meta.memberCount > 0 && pos == room.meta.frontier) {
            room.meta.frontier = scanFrontier(room);
        }
        settle(room, pos + 1, Long.MAX_VALUE, now);
    }

    /** Rules 3, 7, 9, 11, and the parked reads of rule 8. */
    private void onMessage(Room room, String messageId, String sender, long sentAt, long now) {
        Bytes entryKey = room.keys.message(messageId);
        if (state.get(entryKey) != null) {
            Counters.duplicateMessage.increment();
            return;
        }
        Counters.messageApplied.increment();
        long seq = ++room.meta.lastSeq;
        Long senderPos = position(room, sender);
        int required = room.meta.memberCount - (senderPos != null ? 1 : 0);
        if (room.meta.memberCount > config.largeRoomMemberLimit()) {
            Counters.largeRoomMessage.increment();
            putMarker(room, messageId, StateLayout.STATE_UNTRACKED, seq, now);
        } else {
            Pending p = new Pending();
            p.messageId = messageId;
            p.senderId = sender;
            p.sentAt = sentAt;
            p.required = required;
            p.expireAt = now + config.pendingMessageTtlMs();
            state.put(room.keys.pending(seq), p.encode());
            state.put(entryKey, new MessageEntry(StateLayout.STATE_PENDING, seq, 0).encode());
            expiry.put(room.keys.pendingExpiry(p.expireAt, seq), EMPTY);
        }
        // Sending implies having read the room up to here.
        long from = seq;
        if (senderPos != null) {
            setPosition(room, sender, senderPos, seq);
            from = senderPos + 1;
        }
        settle(room, from, seq, now);

        Bytes parkedKey = room.keys.parked(messageId);
        byte[] parked = state.get(parkedKey);
        if (parked != null) {
            state.delete(parkedKey);
            for (ParkedRead read : StateLayout.decodeParked(parked)) {
                state.delete(room.keys.parkedByUser(read.userId(), read.parkSeq()));
                expiry.delete(room.keys.parkedExpiry(read.expireAt(), read.parkSeq(), messageId));
                room.meta.parkedCount--;
                Counters.parkedReadApplied.increment();
                boolean pending = state.get(room.keys.pending(seq)) != null;
                readKnown(room, read.userId(), seq, read.scopeMessage(), pending, now);
            }
        }
    }

    /** Rules 4, 5 and 8. */
    private void onRead(Room room, String user, String messageId, boolean scopeMessage, long now) {
        byte[] entry = state.get(room.keys.message(messageId));
        if (entry != null) {
            MessageEntry m = MessageEntry.decode(entry);
            readKnown(room, user, m.seq(), scopeMessage, m.state() == StateLayout.STATE_PENDING, now);
        } else {
            park(room, user, messageId, scopeMessage, now);
        }
    }

    /** A read of a message whose seq is known; {@code pending}: it still waits for readers. */
    private void readKnown(Room room, String user, long seq, boolean scopeMessage, boolean pending, long now) {
        Long pos = position(room, user);
        if (pos == null) {
            Counters.readByNonMember.increment();
            return;
        }
        Counters.readApplied.increment();
        if (!scopeMessage) {
            if (seq > pos) {
                setPosition(room, user, pos, seq);
                settle(room, pos + 1, seq, now);
            }
        } else if (!pending) {
            Counters.messageReadOfFinished.increment();
        } else if (pos < seq) {
            Bytes key = room.keys.pending(seq);
            Pending p = Pending.decode(state.get(key));
            int at = Collections.binarySearch(p.readers, user);
            if (at < 0) {
                if (p.readers.isEmpty()) {
                    state.put(room.keys.withReaders(seq), EMPTY);
                    room.meta.withReadersCount++;
                }
                p.readers.add(-at - 1, user);
                state.put(key, p.encode());
                settle(room, seq, seq, now);
            }
        }
    }

    /** Rule 8: keep a read of a message not applied yet, within the per-user bound. */
    private void park(Room room, String user, String messageId, boolean scopeMessage, long now) {
        Counters.readParked.increment();
        long parkSeq = room.meta.nextParkSeq++;
        long expireAt = now + config.parkedReadTtlMs();
        room.meta.parkedCount++;
        expiry.put(room.keys.parkedExpiry(expireAt, parkSeq, messageId), EMPTY);
        Bytes key = room.keys.parked(messageId);
        byte[] old = state.get(key);
        List<ParkedRead> reads = old == null ? new ArrayList<>(1) : StateLayout.decodeParked(old);
        reads.add(new ParkedRead(user, scopeMessage, parkSeq, expireAt));
        state.put(key, StateLayout.encodeParked(reads));
        state.put(room.keys.parkedByUser(user, parkSeq), StateLayout.utf8(messageId));

        int count = 0;
        KeyValue<Bytes, byte[]> oldest = null;
        try (KeyValueIterator<Bytes, byte[]> it = state.prefixScan(room.keys.parkedByUserPrefix(user), BYTES.serializer())) {
            while (it.hasNext()) {
                KeyValue<Bytes, byte[]> kv = it.next();
                if (oldest == null) {
                    oldest = kv;
                }
                count++;
            }
        }
        if (count > config.maxParkedReadsPerUser() && oldest != null) {
            Counters.parkedReadDropped.increment();
            removeParked(room, new String(oldest.value, StandardCharsets.UTF_8), RoomKeys.parkSeqOf(oldest.key), null);
        }
    }

    /**
     * Removes one parked read (dropped or expired) by its park seq; if {@code dueAt} is given,
     * only if it expires then. Returns whether it was there.
     */
    private boolean removeParked(Room room, String messageId, long parkSeq, Long dueAt) {
        Bytes key = room.keys.parked(messageId);
        byte[] b = state.get(key);
        if (b == null) {
            return false;
        }
        List<ParkedRead> reads = StateLayout.decodeParked(b);
        for (int i = 0; i < reads.size(); i++) {
            ParkedRead read = reads.get(i);
            if (read.parkSeq() != parkSeq) {
                continue;
            }
            if (dueAt != null && read.expireAt() != dueAt) {
                return false;
            }
            reads.remove(i);
            if (reads.isEmpty()) {
                state.delete(key);
            } else {
                state.put(key, StateLayout.encodeParked(reads));
            }
            state.delete(room.keys.parkedByUser(read.userId(), parkSeq));
            expiry.delete(room.keys.parkedExpiry(read.expireAt(), parkSeq, messageId));
            room.meta.parkedCount--;
            return true;
        }
        return false;
    }

    /** Moves a member's read position up, keeping the by-position index and W. */
    private void setPosition(Room room, String user, long old, long pos) {
        state.put(room.keys.member(user), StateLayout.encodePos(pos));
        state.delete(room.keys.byPos(old, user));
        state.put(room.keys.byPos(pos, user), EMPTY);
        if (old == room.meta.frontier) {
            room.meta.frontier = scanFrontier(room);
        }
    }

    /** W from the by-position index (its first key); the room has members. */
    private long scanFrontier(Room room) {
        try (KeyValueIterator<Bytes, byte[]> it = state.prefixScan(room.keys.byPosPrefix(), BYTES.serializer())) {
            return it.hasNext() ? room.keys.posOf(it.next().key) : Long.MAX_VALUE;
        }
    }

    /**
     * Rule 6: completes, in seq order, every pending message the last change finished: those
     * at or below W, and those with seq in [lo, hi] whose reader set now covers every member
     * still below them (only their condition changed).
     */
    private void settle(Room room, long lo, long hi, long now) {
        long w = room.frontier();
        List<Long> done = null;
        long upper = Math.min(w, room.meta.lastSeq);
        if (upper >= 1) {
            try (KeyValueIterator<Bytes, byte[]> it = state.range(room.keys.pending(0), room.keys.pending(upper))) {
                while (it.hasNext()) {
                    if (done == null) {
                        done = new ArrayList<>();
                    }
                    done.add(room.keys.seqOf(it.next().key));
                }
            }
        }
        if (room.meta.withReadersCount > 0 && w != Long.MAX_VALUE) {
            long from = Math.max(lo, w + 1);
            long to = Math.min(hi, room.meta.lastSeq);
            if (from <= to) {
                List<Long> candidates = new ArrayList<>();
                try (KeyValueIterator<Bytes, byte[]> it = state.range(room.keys.withReaders(from), room.keys.withReaders(to))) {
                    while (it.hasNext()) {
                        candidates.add(room.keys.seqOf(it.next().key));
                    }
                }
                for (long seq : candidates) {
                    if (readersCover(room, seq)) {
                        if (done == null) {
                            done = new ArrayList<>();
                        }
                        done.add(seq); // all above W, so after the ones at or below it: still in order
                    }
                }
            }
        }
        if (done != null) {
            for (long seq : done) {
                complete(room, seq, now);
            }
        }
    }

    /** Whether every member with a position below {@code seq} is in R(m) of pending message seq. */
    private boolean readersCover(Room room, long seq) {
        byte[] b = state.get(room.keys.pending(seq));
        if (b == null) {
            return false;
        }
        List<String> readers = Pending.decode(b).readers;
        // Members in position order; usually the first one is not a reader and the scan stops.
        try (KeyValueIterator<Bytes, byte[]> it = state.range(room.keys.byPos(0, ""), room.keys.byPos(seq, ""))) {
            while (it.hasNext()) {
                Bytes key = it.next().key;
                if (room.keys.posOf(key) >= seq) {
                    break;
                }
                if (Collections.binarySearch(readers, room.keys.userOf(key)) < 0) {
                    return false;
                }
            }
        }
        return true;
    }

    private void complete(Room room, long seq, long now) {
        Bytes key = room.keys.pending(seq);
        Pending p = Pending.decode(state.get(key));
        state.delete(key);
        if (!p.readers.isEmpty()) {
            state.delete(room.keys.withReaders(seq));
            room.meta.withReadersCount--;
        }
        expiry.delete(room.keys.pendingExpiry(p.expireAt, seq));
        putMarker(room, p.messageId, StateLayout.STATE_COMPLETED, seq, now);
        if (p.required == 0) {
            Counters.trivialCompletion.increment();
            if (config.suppressTrivial()) {
                Counters.trivialSuppressed.increment();
                return;
            }
        }
        Counters.receiptsEmitted.increment();
        Receipt r = new Receipt(room.id(), p.messageId, p.senderId, seq, p.sentAt, now, p.required);
        context.forward(new Record<>(room.id(), r, outputTimestamp));
    }

    /** The marker of a finished message (rule 10), with its expiry. */
    private void putMarker(Room room, String messageId, int markerState, long seq, long now) {
        long expireAt = now + config.completedMarkerTtlMs();
        state.put(room.keys.message(messageId), new MessageEntry(markerState, seq, expireAt).encode());
        expiry.put(room.keys.markerExpiry(expireAt, messageId), EMPTY);
    }

    // ------------------------------------------------------------------ expiry (rules 8, 10)

    /** Expires what is due: parked reads, pending messages, markers. Wall-clock punctuation. */
    void expire(long now) {
        List<Bytes> due = new ArrayList<>();
        try (KeyValueIterator<Bytes, byte[]> it = expiry.all()) {
            while (it.hasNext() && due.size() < EXPIRY_BATCH) {
                Bytes key = it.next().key;
                if (ExpiryKey.parse(key).at() > now) {
                    break;
                }
                due.add(key);
            }
        }
        if (due.isEmpty()) {
            return;
        }
        outputTimestamp = now;
        Map<String, Room> rooms = new HashMap<>();
        for (Bytes key : due) {
            ExpiryKey e = ExpiryKey.parse(key);
            Room room = rooms.computeIfAbsent(e.room(), Room::new);
            switch (e.kind()) {
                case StateLayout.EXPIRE_MARKER -> {
                    String messageId = new String(e.id(), StandardCharsets.UTF_8);
                    Bytes mkey = room.keys.message(messageId);
                    byte[] b = state.get(mkey);
                    if (b != null) {
                        MessageEntry m = MessageEntry.decode(b);
                        if (m.state() != StateLayout.STATE_PENDING && m.expireAt() == e.at()) {
                            state.delete(mkey);
                            Counters.markerExpired.increment();
                        }
                    }
                }
                case StateLayout.EXPIRE_PENDING -> {
                    long seq = new Bin.Reader(e.id()).i64();
                    Bytes pkey = room.keys.pending(seq);
                    byte[] b = state.get(pkey);
                    if (b != null) {
                        Pending p = Pending.decode(b);
                        if (p.expireAt == e.at()) {
                            state.delete(pkey);
                            if (!p.readers.isEmpty()) {
                                state.delete(room.keys.withReaders(seq));
                                room.meta.withReadersCount--;
                            }
                            Counters.pendingExpired.increment();
                            putMarker(room, p.messageId, StateLayout.STATE_EXPIRED, seq, now);
                        }
                    }
                }
                case StateLayout.EXPIRE_PARKED -> {
                    Bin.Reader r = new Bin.Reader(e.id());
                    long parkSeq = r.i64();
                    String messageId = r.rest();
                    if (removeParked(room, messageId, parkSeq, e.at())) {
                        Counters.parkedReadExpired.increment();
                    }
                }
                default -> { } // unknown kind: only drop the index entry
            }
            expiry.delete(key); // handled, whether or not it was stale
        }
        for (Room room : rooms.values()) {
            room.save();
        }
    }
}

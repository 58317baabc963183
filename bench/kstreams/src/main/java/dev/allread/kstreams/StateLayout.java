package dev.allread.kstreams;

import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.common.utils.Bytes;

/**
 * Key and value layout of the processor's two state stores.
 *
 * <p><b>{@code receipt-state}</b>: every key starts with the room, {@code [u16 length][room
 * UTF-8]}, then a one-byte tag, so a room's entries are contiguous in RocksDB and each kind of
 * entry is a key range of its own. One small entry per member, per pending message, per parked
 * message id: an event reads and writes a handful of small values, never a whole room.
 *
 * <pre>
 *   room 'm'                         meta: last_seq, next_park_seq, member and parked counts,
 *                                    pending-with-readers count, cached frontier W
 *   room 'u' user                    member: read position H[u]
 *   room 'p' pos(8) user             index of members by position; its first key is W
 *   room 's' seq(8)                  pending message: id, sender, sent_at, required, expiry, R(m)
 *   room 'r' seq(8)                  index of pending messages whose R(m) is not empty
 *   room 'i' message_id              message id -> (pending | completed | expired | untracked, seq,
 *                                    marker expiry): duplicate detection and reads by id
 *   room 'k' message_id              parked (early) reads of a message not applied yet
 *   room 'q' [u16 len]user parkseq(8) index of a user's parked reads, oldest first (the bound)
 * </pre>
 *
 * <p><b>{@code receipt-expiry}</b>: {@code at(8) kind(1) room id...}, value empty: what expires
 * when, in time order, so the wall-clock punctuator reads only what is due.
 */
final class StateLayout {
    private StateLayout() {}

    static final byte[] EMPTY = new byte[0];

    static final byte META = 'm';
    static final byte MEMBER = 'u';
    static final byte BY_POS = 'p';
    static final byte PENDING = 's';
    static final byte WITH_READERS = 'r';
    static final byte MESSAGE = 'i';
    static final byte PARKED = 'k';
    static final byte PARKED_BY_USER = 'q';

    static final byte EXPIRE_MARKER = 1;
    static final byte EXPIRE_PENDING = 2;
    static final byte EXPIRE_PARKED = 3;

    static byte[] utf8(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }

    /** Keys of one room's entries. */
    static final class RoomKeys {
        final String room;
        final byte[] prefix; // [u16 len][room]

        RoomKeys(String room) {
            this.room = room;
            byte[] r = utf8(room);
            prefix = new byte[2 + r.length];
            prefix[0] = (byte) (r.length >>> 8);
            prefix[1] = (byte) r.length;
            System.arraycopy(r, 0, prefix, 2, r.length);
        }

        private Bin.Writer start(byte tag, int extra) {
            return new Bin.Writer(prefix.length + 1 + extra).raw(prefix).u8(tag);
        }

        Bytes meta() {
            return Bytes.wrap(start(META, 0).toBytes());
        }

        Bytes member(String user) {
            return Bytes.wrap(start(MEMBER, user.length()).raw(utf8(user)).toBytes());
        }

        Bytes byPos(long pos, String user) {
            return Bytes.wrap(start(BY_POS, 8 + user.length()).i64(pos).raw(utf8(user)).toBytes());
        }

        Bytes byPosPrefix() {
            return Bytes.wrap(start(BY_POS, 0).toBytes());
        }

        /** The position in a by-pos key. */
        long posOf(Bytes byPosKey) {
            return new Bin.Reader(byPosKey.get(), prefix.length + 1).i64();
        }

        /** The user in a by-pos key. */
        String userOf(Bytes byPosKey) {
            return new Bin.Reader(byPosKey.get(), prefix.length + 9).rest();
        }

        Bytes pending(long seq) {
            return Bytes.wrap(start(PENDING, 8).i64(seq).toBytes());
        }

        Bytes withReaders(long seq) {
            return Bytes.wrap(start(WITH_READERS, 8).i64(seq).toBytes());
        }

        /** The seq in a pending or with-readers key. */
        long seqOf(Bytes key) {
            return new Bin.Reader(key.get(), prefix.length + 1).i64();
        }

        Bytes message(String messageId) {
            return Bytes.wrap(start(MESSAGE, messageId.length()).raw(utf8(messageId)).toBytes());
        }

        Bytes parked(String messageId) {
            return Bytes.wrap(start(PARKED, messageId.length()).raw(utf8(messageId)).toBytes());
        }

        Bytes parkedByUser(String user, long parkSeq) {
            byte[] u = utf8(user);
            return Bytes.wrap(start(PARKED_BY_USER, 10 + u.length).u16(u.length).raw(u).i64(parkSeq).toBytes());
        }

        Bytes parkedByUserPrefix(String user) {
            byte[] u = utf8(user);
            return Bytes.wrap(start(PARKED_BY_USER, 2 + u.length).u16(u.length).raw(u).toBytes());
        }

        /** The park seq in a parked-by-user key (its last 8 bytes). */
        static long parkSeqOf(Bytes key) {
            byte[] k = key.get();
            return new Bin.Reader(k, k.length - 8).i64();
        }

        /** An expiry index key: {@code at kind room id}. */
        Bytes expiry(long at, byte kind, byte[] id) {
            return Bytes.wrap(new Bin.Writer(9 + prefix.length + id.length)
                    .i64(at ^ Long.MIN_VALUE).u8(kind).raw(prefix).raw(id).toBytes());
        }

        Bytes pendingExpiry(long at, long seq) {
            return expiry(at, EXPIRE_PENDING, new Bin.Writer(8).i64(seq).toBytes());
        }

        Bytes markerExpiry(long at, String messageId) {
            return expiry(at, EXPIRE_MARKER, utf8(messageId));
        }

        Bytes parkedExpiry(long at, long parkSeq, String messageId) {
            return expiry(at, EXPIRE_PARKED, new Bin.Writer(8 + messageId.length()).i64(parkSeq).raw(utf8(messageId)).toBytes());
        }
    }

    /** A parsed expiry index key. */
    record ExpiryKey(long at, byte kind, String room, byte[] id) {
        static ExpiryKey parse(Bytes key) {
            byte[] k = key.get();
            Bin.Reader r = new Bin.Reader(k);
            long at = r.i64() ^ Long.MIN_VALUE;
            byte kind = (byte) r.u8();
            int len = r.u16();
            String room = new String(k, r.position(), len, StandardCharsets.UTF_8);
            int idAt = r.position() + len;
            byte[] id = new byte[k.length - idAt];
            System.arraycopy(k, idAt, id, 0, id.length);
            return new ExpiryKey(at, kind, room, id);
        }
    }

    // ---------------------------------------------------------------- values

    /** A room's meta entry. {@code frontier} is W, valid while {@code memberCount > 0}. */
    static final class Meta {
        long lastSeq;
        long nextParkSeq;
        int memberCount;
        int parkedCount;
        int withReadersCount;
        long frontier;

        byte[] encode() {
            return new Bin.Writer(24).varint(lastSeq).varint(nextParkSeq).varint(memberCount)
                    .varint(parkedCount).varint(withReadersCount).varint(frontier).toBytes();
        }

        static Meta decode(byte[] b) {
            Meta m = new Meta();
            if (b != null) {
                Bin.Reader r = new Bin.Reader(b);
                m.lastSeq = r.varint();
                m.nextParkSeq = r.varint();
                m.memberCount = (int) r.varint();
                m.parkedCount = (int) r.varint();
                m.withReadersCount = (int) r.varint();
                m.frontier = r.varint();
            }
            return m;
        }
    }

    static byte[] encodePos(long pos) {
        return new Bin.Writer(10).varint(pos).toBytes();
    }

    static long decodePos(byte[] b) {
        return new Bin.Reader(b).varint();
    }

    /** A pending message; {@code readers} is R(m), sorted. */
    static final class Pending {
        String messageId;
        String senderId;
        long sentAt;
        int required;
        long expireAt;
        List<String> readers = new ArrayList<>(0);

        byte[] encode() {
            Bin.Writer w = new Bin.Writer(64).str(messageId).str(senderId).i64(sentAt).varint(required)
                    .i64(expireAt).varint(readers.size());
            for (String u : readers) {
                w.str(u);
            }
            return w.toBytes();
        }

        static Pending decode(byte[] b) {
            Bin.Reader r = new Bin.Reader(b);
            Pending p = new Pending();
            p.messageId = r.str();
            p.senderId = r.str();
            p.sentAt = r.i64();
            p.required = (int) r.varint();
            p.expireAt = r.i64();
            int n = (int) r.varint();
            p.readers = new ArrayList<>(n);
            for (int i = 0; i < n; i++) {
                p.readers.add(r.str());
            }
            return p;
        }
    }

    static final int STATE_PENDING = 0;
    static final int STATE_COMPLETED = 1;
    static final int STATE_EXPIRED = 2;
    static final int STATE_UNTRACKED = 3;

    /** What a message id is known as: pending (its seq) or a marker of a finished message. */
    record MessageEntry(int state, long seq, long expireAt) {
        byte[] encode() {
            return new Bin.Writer(20).u8(state).varint(seq).i64(expireAt).toBytes();
        }

        static MessageEntry decode(byte[] b) {
            Bin.Reader r = new Bin.Reader(b);
            return new MessageEntry(r.u8(), r.varint(), r.i64());
        }
    }

    /** One parked read of a message not applied yet. */
    record ParkedRead(String userId, boolean scopeMessage, long parkSeq, long expireAt) {}

    static byte[] encodeParked(List<ParkedRead> reads) {
        Bin.Writer w = new Bin.Writer(32 * reads.size()).varint(reads.size());
        for (ParkedRead p : reads) {
            w.str(p.userId()).u8(p.scopeMessage() ? 1 : 0).varint(p.parkSeq()).i64(p.expireAt());
        }
        return w.toBytes();
    }

    static List<ParkedRead> decodeParked(byte[] b) {
        Bin.Reader r = new Bin.Reader(b);
        int n = (int) r.varint();
        List<ParkedRead> out = new ArrayList<>(n + 1);
        for (int i = 0; i < n; i++) {
            out.add(new ParkedRead(r.str(), r.u8() == 1, r.varint(), r.i64()));
        }
        return out;
    }
}

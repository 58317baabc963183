package dev.allread.kstreams;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;

/**
 * A tiny binary codec for the repartition records and the state store values: varints for
 * lengths, fixed 8 bytes (big-endian) for longs, UTF-8 strings with a varint length. Big-endian
 * longs in keys sort numerically for non-negative values, which the range scans rely on.
 */
final class Bin {
    private Bin() {}

    /** A growable byte buffer. */
    static final class Writer {
        private byte[] buf;
        private int len;

        Writer(int capacity) {
            buf = new byte[Math.max(capacity, 16)];
        }

        private void ensure(int extra) {
            if (len + extra > buf.length) {
                buf = Arrays.copyOf(buf, Math.max(buf.length * 2, len + extra));
            }
        }

        Writer u8(int v) {
            ensure(1);
            buf[len++] = (byte) v;
            return this;
        }

        Writer u16(int v) {
            ensure(2);
            buf[len++] = (byte) (v >>> 8);
            buf[len++] = (byte) v;
            return this;
        }

        Writer i64(long v) {
            ensure(8);
            for (int shift = 56; shift >= 0; shift -= 8) {
                buf[len++] = (byte) (v >>> shift);
            }
            return this;
        }

        Writer varint(long v) {
            ensure(10);
            while ((v & ~0x7FL) != 0) {
                buf[len++] = (byte) ((v & 0x7F) | 0x80);
                v >>>= 7;
            }
            buf[len++] = (byte) v;
            return this;
        }

        Writer raw(byte[] b) {
            ensure(b.length);
            System.arraycopy(b, 0, buf, len, b.length);
            len += b.length;
            return this;
        }

        Writer str(String s) {
            byte[] b = s.getBytes(StandardCharsets.UTF_8);
            varint(b.length);
            return raw(b);
        }

        byte[] toBytes() {
            return Arrays.copyOf(buf, len);
        }
    }

    /** Reads what a {@link Writer} wrote. */
    static final class Reader {
        private final byte[] buf;
        private int pos;

        Reader(byte[] buf) {
            this(buf, 0);
        }

        Reader(byte[] buf, int pos) {
            this.buf = buf;
            this.pos = pos;
        }

        int position() {
            return pos;
        }

        boolean hasMore() {
            return pos < buf.length;
        }

        int u8() {
            return buf[pos++] & 0xFF;
        }

        int u16() {
            int v = ((buf[pos] & 0xFF) << 8) | (buf[pos + 1] & 0xFF);
            pos += 2;
            return v;
        }

        long i64() {
            long v = 0;
            for (int i = 0; i < 8; i++) {
                v = (v << 8) | (buf[pos++] & 0xFF);
            }
            return v;
        }

        long varint() {
            long v = 0;
            int shift = 0;
            while (true) {
                byte b = buf[pos++];
                v |= (long) (b & 0x7F) << shift;
                if (b >= 0) {
                    return v;
                }
                shift += 7;
            }
        }

        String str() {
            int n = (int) varint();
            String s = new String(buf, pos, n, StandardCharsets.UTF_8);
            pos += n;
            return s;
        }

        /** The bytes from here to the end, as a string. */
        String rest() {
            String s = new String(buf, pos, buf.length - pos, StandardCharsets.UTF_8);
            pos = buf.length;
            return s;
        }
    }
}

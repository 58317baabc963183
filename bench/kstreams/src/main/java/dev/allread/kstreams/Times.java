package dev.allread.kstreams;

import java.time.Instant;
import java.time.LocalDate;
import java.time.ZoneOffset;
import java.time.format.DateTimeFormatter;

/** Times on the wire: RFC 3339 strings or epoch milliseconds in, RFC 3339 UTC out. */
final class Times {
    private Times() {}

    private static final DateTimeFormatter OUT =
            DateTimeFormatter.ofPattern("uuuu-MM-dd'T'HH:mm:ss.SSS'Z'").withZone(ZoneOffset.UTC);

    /** Epoch milliseconds as RFC 3339 UTC with millisecond precision: 2026-11-28T10:00:00.000Z. */
    static String format(long millis) {
        return OUT.format(Instant.ofEpochMilli(millis));
    }

    /**
     * Parses an RFC 3339 date-time to epoch milliseconds, or returns {@code null}. Accepts what
     * allread accepts (chrono's RFC 3339 parser): {@code YYYY-MM-DD}, then {@code T}, {@code t}
     * or a space, {@code hh:mm:ss}, optional fraction (any number of digits, nanoseconds kept),
     * then {@code Z}, {@code z} or {@code ±hh:mm} (offset below 24 h); second 60 is a leap second.
     */
    static Long parse(String s) {
        int n = s.length();
        if (n < 20) {
            return null;
        }
        int year = digits(s, 0, 4);
        int month = digits(s, 5, 2);
        int day = digits(s, 8, 2);
        int hour = digits(s, 11, 2);
        int min = digits(s, 14, 2);
        int sec = digits(s, 17, 2);
        char sep = s.charAt(10);
        if (year < 0 || month < 0 || day < 0 || hour < 0 || min < 0 || sec < 0
                || s.charAt(4) != '-' || s.charAt(7) != '-' || s.charAt(13) != ':' || s.charAt(16) != ':'
                || (sep != 'T' && sep != 't' && sep != ' ')) {
            return null;
        }
        if (month < 1 || month > 12 || day < 1 || day > LocalDate.of(year, month, 1).lengthOfMonth()
                || hour > 23 || min > 59 || sec > 60) {
            return null;
        }
        long nanos = 0;
        if (sec == 60) { // a leap second: chrono reads it as 59 s + 1,000,000,000 ns
            sec = 59;
            nanos = 1_000_000_000L;
        }
        int i = 19;
        if (s.charAt(i) == '.') {
            i++;
            int start = i;
            long frac = 0;
            while (i < n && s.charAt(i) >= '0' && s.charAt(i) <= '9') {
                if (i - start < 9) {
                    frac = frac * 10 + (s.charAt(i) - '0');
                }
                i++;
            }
            int count = i - start;
            if (count == 0) {
                return null;
            }
            for (int k = Math.min(count, 9); k < 9; k++) {
                frac *= 10;
            }
            nanos += frac;
        }
        if (i >= n) {
            return null;
        }
        int offsetSeconds;
        char c = s.charAt(i);
        if (c == 'Z' || c == 'z') {
            offsetSeconds = 0;
            i++;
        } else if (c == '+' || c == '-' || c == '\u2212') {
            i++;
            if (i + 5 > n || s.charAt(i + 2) != ':') {
                return null;
            }
            int oh = digits(s, i, 2);
            int om = digits(s, i + 3, 2);
            if (oh < 0 || om < 0 || om > 59) {
                return null;
            }
            offsetSeconds = oh * 3600 + om * 60;
            if (offsetSeconds >= 86_400) {
                return null;
            }
            if (c != '+') {
                offsetSeconds = -offsetSeconds;
            }
            i += 5;
        } else {
            return null;
        }
        if (i != n) {
            return null;
        }
        long epochDay = LocalDate.of(year, month, day).toEpochDay();
        long seconds = epochDay * 86_400 + hour * 3600L + min * 60L + sec - offsetSeconds;
        return seconds * 1000 + nanos / 1_000_000;
    }

    /** The decimal value of {@code count} ASCII digits at {@code at}, or -1. */
    private static int digits(String s, int at, int count) {
        int v = 0;
        for (int k = at; k < at + count; k++) {
            char c = s.charAt(k);
            if (c < '0' || c > '9') {
                return -1;
            }
            v = v * 10 + (c - '0');
        }
        return v;
    }
}

package dev.allread.kstreams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonParser;
import com.fasterxml.jackson.core.JsonToken;
import com.fasterxml.jackson.core.StreamReadConstraints;
import com.fasterxml.jackson.core.StreamReadFeature;
import java.io.IOException;
import org.apache.kafka.common.serialization.Deserializer;

/**
 * Decodes input records exactly as allread does (spec "Input events"): room topics carry
 * {@code {"type": "message"|"join"|"leave", ...}} with an optional {@code room_id} (else the
 * room named by the topic), the read topic carries {@code {room_id, user_id, message_id,
 * read_at, scope?}}. Ids are strings (integers are read as their decimal form), 1 to 256
 * bytes; times are RFC 3339 strings or integer epoch milliseconds. Unknown fields, {@code body}
 * included, are skipped without being looked at.
 *
 * <p>A record that does not decode throws {@link InvalidRecord}, whose message names the field
 * and the reason, never the record's content: the deserialization exception handler
 * ({@link DeadLetterHandler}) counts it and sends the original bytes to the dead-letter topic.
 */
public final class InputDecoder {
    private InputDecoder() {}

    static final int MAX_RECORD_BYTES = 1 << 20;
    static final int MAX_ID_BYTES = 256;

    /**
     * Strict JSON as serde_json reads it: no comments, no NaN; error locations never quote the
     * input; nesting limited as serde_json's recursion limit does (127 levels).
     */
    private static final JsonFactory JSON = JsonFactory.builder()
            .disable(StreamReadFeature.INCLUDE_SOURCE_IN_LOCATION)
            .streamReadConstraints(StreamReadConstraints.builder().maxNestingDepth(127).build())
            .build();

    /** Why a record was rejected: {@code kind} is one of allread's error kinds. */
    public static final class InvalidRecord extends RuntimeException {
        public final String kind;

        InvalidRecord(String kind, String message) {
            super(message, null, false, false);
            this.kind = kind;
        }
    }

    private static InvalidRecord invalid(String kind, String message) {
        return new InvalidRecord(kind, message);
    }

    // ---- a JSON value, kept only as far as needed: absent, a string, an integer, or "other" ----

    private static final int ABSENT = 0;
    private static final int STR = 1;
    private static final int INT = 2;
    private static final int OTHER = 3;

    /** The fields any input shape has. */
    private static final class Raw {
        final int[] tag = new int[F_COUNT];
        final String[] str = new String[F_COUNT];
        final long[] num = new long[F_COUNT];
    }

    private static final int F_TYPE = 0;
    private static final int F_ROOM = 1;
    private static final int F_MESSAGE = 2;
    private static final int F_SENDER = 3;
    private static final int F_USER = 4;
    private static final int F_SENT_AT = 5;
    private static final int F_AT = 6;
    private static final int F_READ_AT = 7;
    private static final int F_SCOPE = 8;
    private static final int F_COUNT = 9;
    private static final String[] NAMES = {
        "type", "room_id", "message_id", "sender_id", "user_id", "sent_at", "at", "read_at", "scope"
    };

    private static int fieldIndex(String name) {
        switch (name) {
            case "type": return F_TYPE;
            case "room_id": return F_ROOM;
            case "message_id": return F_MESSAGE;
            case "sender_id": return F_SENDER;
            case "user_id": return F_USER;
            case "sent_at": return F_SENT_AT;
            case "at": return F_AT;
            case "read_at": return F_READ_AT;
            case "scope": return F_SCOPE;
            default: return -1;
        }
    }

    private static Raw parse(byte[] bytes) {
        if (bytes == null) {
            throw invalid("not_json", "record is not JSON: empty record (null value)");
        }
        if (bytes.length > MAX_RECORD_BYTES) {
            throw invalid("oversized", "record of " + bytes.length + " bytes is over the limit of " + MAX_RECORD_BYTES + " bytes");
        }
        int bad = firstInvalidUtf8(bytes);
        if (bad >= 0) {
            throw invalid("not_utf8", "record is not UTF-8 (first bad byte at offset " + bad + ")");
        }
        if (bytes.length >= 3 && (bytes[0] & 0xFF) == 0xEF && (bytes[1] & 0xFF) == 0xBB && (bytes[2] & 0xFF) == 0xBF) {
            throw invalid("not_json", "record is not JSON: starts with a byte order mark");
        }
        Raw raw = new Raw();
        try (JsonParser p = JSON.createParser(bytes)) {
            JsonToken first;
            try {
                first = p.nextToken();
            } catch (IOException e) {
                throw invalid("not_json", "record is not JSON");
            }
            if (first == null) {
                throw invalid("not_json", "record is not JSON: empty record");
            }
            if (first != JsonToken.START_OBJECT) {
                // Valid JSON of another kind, or not JSON at all.
                try {
                    p.skipChildren();
                    if (p.nextToken() != null) {
                        throw invalid("not_json", "record is not JSON: trailing characters");
                    }
                } catch (IOException e) {
                    throw invalid("not_json", "record is not JSON");
                }
                throw invalid("not_object", "record is JSON but not an object");
            }
            try {
                JsonToken t;
                while ((t = p.nextToken()) == JsonToken.FIELD_NAME) {
                    int f = fieldIndex(p.currentName());
                    JsonToken v = p.nextToken();
                    if (f < 0) {
                        p.skipChildren();
                        continue;
                    }
                    if (raw.tag[f] != ABSENT) {
                        throw invalid("not_json", "record is not JSON: duplicate field `" + NAMES[f] + "`");
                    }
                    switch (v) {
                        case VALUE_STRING -> {
                            raw.tag[f] = STR;
                            raw.str[f] = p.getText();
                        }
                        case VALUE_NUMBER_INT -> {
                            if (p.getNumberType() == JsonParser.NumberType.INT || p.getNumberType() == JsonParser.NumberType.LONG) {
                                raw.tag[f] = INT;
                                raw.num[f] = p.getLongValue();
                            } else {
                                raw.tag[f] = OTHER;
                                raw.str[f] = "a number out of range";
                            }
                        }
                        case VALUE_NUMBER_FLOAT -> {
                            double d = p.getDoubleValue();
                            // JSON Schema counts 5.0 as an integer; so does allread.
                            if (d == Math.rint(d) && Math.abs(d) < 9.0e15) {
                                raw.tag[f] = INT;
                                raw.num[f] = (long) d;
                            } else {
                                raw.tag[f] = OTHER;
                                raw.str[f] = "a fractional number";
                            }
                        }
                        case VALUE_TRUE, VALUE_FALSE -> other(raw, f, "a boolean");
                        case VALUE_NULL -> other(raw, f, "null");
                        case START_ARRAY -> {
                            p.skipChildren();
                            other(raw, f, "an array");
                        }
                        case START_OBJECT -> {
                            p.skipChildren();
                            other(raw, f, "an object");
                        }
                        default -> throw invalid("not_json", "record is not JSON");
                    }
                }
                if (t != JsonToken.END_OBJECT || p.nextToken() != null) {
                    throw invalid("not_json", "record is not JSON: trailing characters");
                }
            } catch (IOException e) {
                throw invalid("not_json", "record is not JSON");
            }
        } catch (IOException e) {
            throw invalid("not_json", "record is not JSON");
        }
        return raw;
    }

    private static void other(Raw raw, int f, String found) {
        raw.tag[f] = OTHER;
        raw.str[f] = found;
    }

    /** Offset of the first byte that is not valid UTF-8, or -1. */
    static int firstInvalidUtf8(byte[] b) {
        int i = 0;
        int n = b.length;
        while (i < n) {
            int c = b[i] & 0xFF;
            if (c < 0x80) {
                i++;
                continue;
            }
            int need;
            int min;
            if (c >= 0xC2 && c <= 0xDF) {
                need = 1;
                min = 0x80;
            } else if (c >= 0xE0 && c <= 0xEF) {
                need = 2;
                min = 0x800;
            } else if (c >= 0xF0 && c <= 0xF4) {
                need = 3;
                min = 0x10000;
            } else {
                return i;
            }
            if (i + need >= n) {
                return i;
            }
            int cp = c & (0x3F >> need);
            for (int k = 1; k <= need; k++) {
                int cc = b[i + k] & 0xFF;
                if ((cc & 0xC0) != 0x80) {
                    return i;
                }
                cp = (cp << 6) | (cc & 0x3F);
            }
            if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                return i;
            }
            i += need + 1;
        }
        return -1;
    }

    /** The field as text: strings as they are, integers in decimal; null when absent. */
    private static String text(Raw raw, int f) {
        return switch (raw.tag[f]) {
            case ABSENT -> null;
            case STR -> raw.str[f];
            case INT -> Long.toString(raw.num[f]);
            default -> throw invalid("wrong_type", "field `" + NAMES[f] + "` should be a string, found " + raw.str[f]);
        };
    }

    private static String id(Raw raw, int f) {
        String s = text(raw, f);
        if (s == null) {
            return null;
        }
        if (s.isEmpty() || utf8Length(s) > MAX_ID_BYTES) {
            throw invalid("bad_id", "field `" + NAMES[f] + "` is empty or longer than " + MAX_ID_BYTES + " bytes");
        }
        return s;
    }

    private static String requiredId(Raw raw, int f) {
        String s = id(raw, f);
        if (s == null) {
            throw invalid("missing_field", "field `" + NAMES[f] + "` is missing");
        }
        return s;
    }

    private static long time(Raw raw, int f) {
        switch (raw.tag[f]) {
            case ABSENT:
                throw invalid("missing_field", "field `" + NAMES[f] + "` is missing");
            case INT:
                return raw.num[f];
            case STR: {
                Long t = Times.parse(raw.str[f]);
                if (t == null) {
                    throw invalid("bad_time", "field `" + NAMES[f] + "` is not an RFC 3339 time");
                }
                return t;
            }
            default:
                throw invalid("wrong_type", "field `" + NAMES[f] + "` should be an RFC 3339 string or epoch milliseconds, found " + raw.str[f]);
        }
    }

    static int utf8Length(String s) {
        int n = s.length();
        int len = n;
        for (int i = 0; i < n; i++) {
            char c = s.charAt(i);
            if (c >= 0x80) {
                len += c >= 0x800 && !Character.isSurrogate(c) ? 2 : 1;
            }
        }
        return len;
    }

    /**
     * Decodes a record of a room topic. {@code topicRoom} is the room named by the topic (the
     * topic name minus the room prefix), or null when the topic name lacks the prefix.
     */
    public static Event.Routed decodeRoomEvent(byte[] bytes, String topicRoom) {
        Raw raw = parse(bytes);
        String kind = text(raw, F_TYPE);
        if (kind == null) {
            throw invalid("missing_field", "field `type` is missing");
        }
        String record = id(raw, F_ROOM);
        String room;
        if (record != null) {
            if (topicRoom != null && !record.equals(topicRoom)) {
                throw invalid("room_mismatch", "room_id contradicts the topic's room");
            }
            room = record;
        } else if (topicRoom != null && !topicRoom.isEmpty() && utf8Length(topicRoom) <= MAX_ID_BYTES) {
            room = topicRoom;
        } else {
            throw invalid("no_room", "record has no room_id and its topic names no room");
        }
        Event e = switch (kind) {
            case "message" -> new Event.Message(requiredId(raw, F_MESSAGE), requiredId(raw, F_SENDER), time(raw, F_SENT_AT));
            case "join" -> new Event.Join(requiredId(raw, F_USER), time(raw, F_AT));
            case "leave" -> new Event.Leave(requiredId(raw, F_USER), time(raw, F_AT));
            default -> throw invalid("unknown_type", "unknown event type (expected message, join or leave)");
        };
        return new Event.Routed(room, e);
    }

    /** Decodes a record of the read topic. */
    public static Event.Routed decodeReadEvent(byte[] bytes) {
        Raw raw = parse(bytes);
        String scope = text(raw, F_SCOPE);
        boolean scopeMessage;
        if (scope == null || scope.equals("up_to")) {
            scopeMessage = false;
        } else if (scope.equals("message")) {
            scopeMessage = true;
        } else {
            throw invalid("unknown_scope", "unknown read scope (expected up_to or message)");
        }
        String room = requiredId(raw, F_ROOM);
        String user = requiredId(raw, F_USER);
        String message = requiredId(raw, F_MESSAGE);
        long readAt = time(raw, F_READ_AT);
        return new Event.Routed(room, new Event.Read(user, message, readAt, scopeMessage));
    }

    /** Deserializer of the room topics: the room comes from the record or the topic name. */
    public static final class RoomEventDeserializer implements Deserializer<Event.Routed> {
        private final String roomPrefix;

        public RoomEventDeserializer(String roomPrefix) {
            this.roomPrefix = roomPrefix;
        }

        @Override
        public Event.Routed deserialize(String topic, byte[] data) {
            String topicRoom = topic != null && topic.startsWith(roomPrefix) ? topic.substring(roomPrefix.length()) : null;
            return decodeRoomEvent(data, topicRoom);
        }
    }

    /** Deserializer of the read topic. */
    public static final class ReadEventDeserializer implements Deserializer<Event.Routed> {
        @Override
        public Event.Routed deserialize(String topic, byte[] data) {
            return decodeReadEvent(data);
        }
    }
}

package dev.allread.kstreams;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertThrows;

import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import org.junit.jupiter.api.Test;

/** The decoder accepts and rejects what allread's does (its codec/input.rs tests). */
class InputDecoderTest {
    private static Event.Routed room(String json, String topicRoom) {
        return InputDecoder.decodeRoomEvent(json.getBytes(StandardCharsets.UTF_8), topicRoom);
    }

    private static String kind(byte[] bytes, String topicRoom) {
        return assertThrows(InputDecoder.InvalidRecord.class, () -> InputDecoder.decodeRoomEvent(bytes, topicRoom)).kind;
    }

    private static String kind(String json, String topicRoom) {
        return kind(json.getBytes(StandardCharsets.UTF_8), topicRoom);
    }

    @Test
    void messageWithBodyAndRoomFromTopic() {
        Event.Routed e = room("{\"type\":\"message\",\"message_id\":\"m1\",\"sender_id\":\"alice\","
                + "\"sent_at\":\"2026-11-28T10:00:00Z\",\"body\":{\"text\":\"hi\"}}", "12345");
        assertEquals(new Event.Routed("12345", new Event.Message("m1", "alice", 1_795_860_000_000L)), e);
    }

    @Test
    void joinAndLeaveWithEpochMillisAndNumericRoom() {
        assertEquals(new Event.Routed("12345", new Event.Join("bob", 17)),
                room("{\"type\":\"join\",\"room_id\":12345,\"user_id\":\"bob\",\"at\":17}", "12345"));
        assertEquals(new Event.Routed("r", new Event.Leave("bob", 1)), room("{\"type\":\"leave\",\"user_id\":\"bob\",\"at\":1}", "r"));
        assertEquals(new Event.Routed("r", new Event.Leave("bob", 5)), room("{\"type\":\"leave\",\"user_id\":\"bob\",\"at\":5.0}", "r"));
    }

    @Test
    void readScopes() {
        Event.Routed up = InputDecoder.decodeReadEvent("{\"room_id\":\"r\",\"user_id\":\"u\",\"message_id\":\"m\",\"read_at\":5}".getBytes());
        assertEquals(new Event.Routed("r", new Event.Read("u", "m", 5, false)), up);
        Event.Routed one = InputDecoder.decodeReadEvent(
                "{\"room_id\":\"r\",\"user_id\":\"u\",\"message_id\":\"m\",\"read_at\":5,\"scope\":\"message\"}".getBytes());
        assertEquals(new Event.Routed("r", new Event.Read("u", "m", 5, true)), one);
        InputDecoder.InvalidRecord e = assertThrows(InputDecoder.InvalidRecord.class,
                () -> InputDecoder.decodeReadEvent("{\"user_id\":\"u\",\"message_id\":\"m\",\"read_at\":5}".getBytes()));
        assertEquals("missing_field", e.kind);
    }

    @Test
    void everyErrorKind() {
        byte[] big = new byte[(1 << 20) + 1];
        Arrays.fill(big, (byte) '{');
        assertEquals("oversized", kind(big, null));
        assertEquals("not_utf8", kind(new byte[] {'{', '"', 't', '"', ':', '"', (byte) 0xff, '"', '}'}, null));
        assertEquals("not_json", kind("{\"type\":", null));
        assertEquals("not_json", kind("", null));
        assertEquals("not_object", kind("[1,2]", null));
        assertEquals("missing_field", kind("{\"room_id\":\"r\"}", null));
        assertEquals("wrong_type", kind("{\"type\":\"join\",\"room_id\":\"r\",\"user_id\":true,\"at\":1}", null));
        assertEquals("bad_id", kind("{\"type\":\"join\",\"room_id\":\"r\",\"user_id\":\"\",\"at\":1}", null));
        assertEquals("bad_time", kind("{\"type\":\"join\",\"room_id\":\"r\",\"user_id\":\"u\",\"at\":\"noon\"}", null));
        assertEquals("wrong_type", kind("{\"type\":\"join\",\"room_id\":\"r\",\"user_id\":\"u\",\"at\":1.5}", null));
        assertEquals("unknown_type", kind("{\"type\":\"typing\",\"room_id\":\"r\"}", null));
        assertEquals("room_mismatch", kind("{\"type\":\"join\",\"room_id\":\"a\",\"user_id\":\"u\",\"at\":1}", "b"));
        assertEquals("no_room", kind("{\"type\":\"join\",\"user_id\":\"u\",\"at\":1}", null));
        assertEquals("not_json", kind("{\"type\":\"join\",\"type\":\"leave\"}", null));
        assertEquals("not_json", kind("{\"type\":\"join\"} x", null));
        assertEquals("bad_id", kind("{\"type\":\"join\",\"room_id\":\"r\",\"user_id\":\"" + "x".repeat(257) + "\",\"at\":1}", null));
    }

    @Test
    void rfc3339() {
        assertEquals(1000L, Times.parse("1970-01-01T00:00:01Z"));
        assertEquals(1500L, Times.parse("1970-01-01T01:00:01.5+01:00"));
        assertEquals(1500L, Times.parse("1970-01-01 00:00:01.500999999999z"));
        assertNull(Times.parse("yesterday"));
        assertNull(Times.parse("1970-01-01T00:00:01"));
        assertNull(Times.parse("1970-02-30T00:00:01Z"));
        assertNull(Times.parse("1970-01-01T00:00:01+24:00"));
        assertEquals("1970-01-01T00:00:01.500Z", Times.format(1500));
        assertEquals(1_764_300_000_123L, Times.parse(Times.format(1_764_300_000_123L)));
    }

    @Test
    void repartitionValuesRoundTrip() {
        for (Event e : new Event[] {
            new Event.Message("m1", "alice", 17), new Event.Join("bob", 1), new Event.Leave("ünï", -5),
            new Event.Read("u", "m", 9, true), new Event.Read("u", "m", 9, false)
        }) {
            assertEquals(e, Event.decode(Event.encode(e)));
        }
    }
}

package dev.allread.kstreams;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.TopologyTestDriver;
import org.apache.kafka.streams.test.TestRecord;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The spec's rules through the whole topology (decode, repartition, processor, sink) in TopologyTestDriver. */
class ReceiptTopologyTest {
    private static final ObjectMapper JSON = new ObjectMapper();
    private static final Instant START = Instant.parse("2026-11-28T10:05:00Z");

    @TempDir
    Path tmp;

    private TopologyTestDriver driver;
    private TestInputTopic<String, String> reads;
    private TestOutputTopic<String, String> receipts;

    private void start(String... args) throws Exception {
        Counters.reset();
        Settings s = Settings.parse(args);
        Properties p = ReceiptTopology.properties(s);
        p.put(StreamsConfig.STATE_DIR_CONFIG, Files.createDirectories(tmp.resolve("state")).toString());
        driver = new TopologyTestDriver(ReceiptTopology.build(s), p, START);
        reads = driver.createInputTopic(s.readTopic, new StringSerializer(), new StringSerializer());
        receipts = driver.createOutputTopic(s.output, new StringDeserializer(), new StringDeserializer());
    }

    @AfterEach
    void close() {
        if (driver != null) {
            driver.close();
        }
    }

    private TestInputTopic<String, String> topic(String name) {
        return driver.createInputTopic(name, new StringSerializer(), new StringSerializer());
    }

    private static String join(String room, String user) {
        return "{\"type\":\"join\",\"room_id\":\"" + room + "\",\"user_id\":\"" + user + "\",\"at\":\"2026-11-28T10:00:00Z\"}";
    }

    private static String leave(String room, String user) {
        return "{\"type\":\"leave\",\"room_id\":\"" + room + "\",\"user_id\":\"" + user + "\",\"at\":\"2026-11-28T10:00:00Z\"}";
    }

    private static String message(String room, String id, String sender) {
        return "{\"type\":\"message\",\"room_id\":\"" + room + "\",\"message_id\":\"" + id + "\",\"sender_id\":\""
                + sender + "\",\"sent_at\":\"2026-11-28T10:00:00Z\",\"body\":{\"text\":\"secret\"}}";
    }

    private static String read(String room, String user, String id) {
        return "{\"room_id\":\"" + room + "\",\"user_id\":\"" + user + "\",\"message_id\":\"" + id
                + "\",\"read_at\":\"2026-11-28T10:01:00Z\"}";
    }

    private static String readMessage(String room, String user, String id) {
        return "{\"room_id\":\"" + room + "\",\"user_id\":\"" + user + "\",\"message_id\":\"" + id
                + "\",\"read_at\":1795860060000,\"scope\":\"message\"}";
    }

    /** The receipts emitted since the last call, as JSON. */
    private List<JsonNode> drain() throws Exception {
        List<JsonNode> out = new ArrayList<>();
        for (TestRecord<String, String> r : receipts.readRecordsToList()) {
            JsonNode n = JSON.readTree(r.value());
            assertEquals(n.get("room_id").asText(), r.key(), "keyed by room id");
            out.add(n);
        }
        return out;
    }

    private static void assertReceipt(JsonNode r, String room, String id, String sender, long seq, int required) {
        assertEquals(room, r.get("room_id").asText());
        assertEquals(id, r.get("message_id").asText());
        assertEquals(sender, r.get("sender_id").asText());
        assertEquals(seq, r.get("seq").asLong());
        assertEquals(required, r.get("required_readers").asInt());
    }

    @Test
    void specWorkedExample() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_12345");
        room.pipeInput(join("12345", "alice"));
        room.pipeInput(join("12345", "bob"));
        room.pipeInput(join("12345", "carol"));
        room.pipeInput(message("12345", "m1", "alice"));
        room.pipeInput(message("12345", "m2", "alice"));
        reads.pipeInput(read("12345", "bob", "m2"));
        assertEquals(List.of(), drain(), "W = min(2, 2, 0) = 0: nothing completes");

        reads.pipeInput(read("12345", "carol", "m1"));
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "12345", "m1", "alice", 1, 2);

        room.pipeInput(leave("12345", "carol"));
        r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "12345", "m2", "alice", 2, 2);
        // The exact wire format: field order, RFC 3339 UTC with milliseconds; completed_at is
        // the wall clock when the completing event was applied.
        assertEquals("{\"room_id\":\"12345\",\"message_id\":\"m2\",\"sender_id\":\"alice\",\"seq\":2,"
                + "\"sent_at\":\"2026-11-28T10:00:00.000Z\",\"completed_at\":\"2026-11-28T10:05:00.000Z\","
                + "\"required_readers\":2}", r.get(0).toString());

        room.pipeInput(join("12345", "dave"));
        reads.pipeInput(read("12345", "dave", "m2"));
        assertEquals(List.of(), drain(), "dave changes nothing that is already done");
        assertEquals(0, Counters.invalid.sum());
        assertEquals(10, Counters.processed.sum());
        assertEquals(2, Counters.receiptsEmitted.sum());
    }

    @Test
    void earlyReadIsParkedAndAppliedWhenTheMessageArrives() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r1");
        room.pipeInput(join("r1", "alice"));
        room.pipeInput(join("r1", "bob"));
        reads.pipeInput(read("r1", "bob", "m1")); // m1 not seen yet
        assertEquals(List.of(), drain());
        assertEquals(1, Counters.readParked.sum());
        room.pipeInput(message("r1", "m1", "alice"));
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r1", "m1", "alice", 1, 1);
        assertEquals(1, Counters.parkedReadApplied.sum());
    }

    @Test
    void parkedReadsExpireAndAreBoundedPerUser() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r2");
        room.pipeInput(join("r2", "alice"));
        room.pipeInput(join("r2", "bob"));
        for (int i = 0; i < 17; i++) {
            reads.pipeInput(read("r2", "bob", "x" + i));
        }
        assertEquals(1, Counters.parkedReadDropped.sum(), "the 17th parked read drops bob's oldest");
        reads.pipeInput(read("r2", "bob", "m1"));
        driver.advanceWallClockTime(Duration.ofMinutes(15).plusSeconds(1));
        assertEquals(16, Counters.parkedReadExpired.sum(), "x1..x15 and m1 expire after 15 min");
        room.pipeInput(message("r2", "m1", "alice"));
        assertEquals(List.of(), drain(), "the expired read no longer counts");
        assertEquals(0, Counters.parkedReadApplied.sum());
    }

    @Test
    void duplicateMessageIdIsIgnored() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r3");
        room.pipeInput(join("r3", "alice"));
        room.pipeInput(join("r3", "bob"));
        room.pipeInput(message("r3", "m1", "alice"));
        room.pipeInput(message("r3", "m1", "alice")); // duplicate of a pending message
        reads.pipeInput(read("r3", "bob", "m1"));
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r3", "m1", "alice", 1, 1);
        room.pipeInput(message("r3", "m1", "alice")); // duplicate of a completed message
        reads.pipeInput(read("r3", "bob", "m1"));
        assertEquals(List.of(), drain(), "no second receipt");
        room.pipeInput(message("r3", "m2", "alice"));
        reads.pipeInput(read("r3", "bob", "m2"));
        r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r3", "m2", "alice", 2, 1); // duplicates took no seq
        assertEquals(2, Counters.duplicateMessage.sum());
    }

    @Test
    void scopeMessageReadCompletesOnlyThatMessage() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r4");
        for (String u : List.of("alice", "bob", "carol")) {
            room.pipeInput(join("r4", u));
        }
        room.pipeInput(message("r4", "m1", "alice"));
        room.pipeInput(message("r4", "m2", "alice"));
        reads.pipeInput(readMessage("r4", "bob", "m2"));
        assertEquals(List.of(), drain(), "carol still has to read m2");
        reads.pipeInput(readMessage("r4", "carol", "m2"));
        List<JsonNode> r = drain();
        assertEquals(1, r.size(), "R(m2) covers bob and carol: m2 completes, m1 does not");
        assertReceipt(r.get(0), "r4", "m2", "alice", 2, 2);
        reads.pipeInput(read("r4", "bob", "m1"));
        assertEquals(List.of(), drain(), "scope message did not move H[carol]");
        reads.pipeInput(read("r4", "carol", "m1"));
        r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r4", "m1", "alice", 1, 2);
    }

    @Test
    void readByNonMemberHasNoEffect() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r5");
        room.pipeInput(join("r5", "alice"));
        room.pipeInput(join("r5", "bob"));
        room.pipeInput(message("r5", "m1", "alice"));
        reads.pipeInput(read("r5", "eve", "m1"));
        assertEquals(List.of(), drain());
        assertEquals(1, Counters.readByNonMember.sum());
        reads.pipeInput(read("r5", "bob", "m1"));
        assertEquals(1, drain().size());
    }

    @Test
    void trivialMessagesCompleteAtOnce() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r6");
        room.pipeInput(join("r6", "alice"));
        room.pipeInput(message("r6", "m1", "alice")); // the sender alone
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r6", "m1", "alice", 1, 0);
        TestInputTopic<String, String> empty = topic("chatroom_r7");
        empty.pipeInput(message("r7", "m1", "zed")); // an empty room, sender not a member
        r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r7", "m1", "zed", 1, 0);
        assertEquals(2, Counters.trivialCompletion.sum());
    }

    @Test
    void roomIdFromTheTopicNameAndMixedTimeFormats() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_777");
        room.pipeInput("{\"type\":\"join\",\"user_id\":\"alice\",\"at\":1}");
        room.pipeInput("{\"type\":\"join\",\"user_id\":\"bob\",\"at\":2}");
        room.pipeInput("{\"type\":\"message\",\"message_id\":\"m1\",\"sender_id\":\"alice\",\"sent_at\":\"2026-11-28T11:00:00.5+01:00\"}");
        reads.pipeInput("{\"room_id\":777,\"user_id\":\"bob\",\"message_id\":\"m1\",\"read_at\":3}");
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "777", "m1", "alice", 1, 1);
        assertEquals("2026-11-28T10:00:00.500Z", r.get(0).get("sent_at").asText());
    }

    @Test
    void invalidRecordsAreCountedAndDeadLettered() throws Exception {
        // at_least_once: TopologyTestDriver does not capture the dead letters that the
        // deserialization handler sends under exactly_once_v2 (the broker run checks EOS).
        start("--guarantee", "at_least_once");
        TestOutputTopic<byte[], byte[]> dlq =
                driver.createOutputTopic("allread-kstreams-dlq", new ByteArrayDeserializer(), new ByteArrayDeserializer());
        TestInputTopic<byte[], byte[]> room =
                driver.createInputTopic("chatroom_r8", new ByteArraySerializer(), new ByteArraySerializer());
        byte[] mismatch = join("other", "alice").getBytes(StandardCharsets.UTF_8);
        room.pipeInput("k".getBytes(StandardCharsets.UTF_8), mismatch);
        room.pipeInput(null, "not json".getBytes(StandardCharsets.UTF_8));
        reads.pipeInput("{\"room_id\":\"r8\",\"user_id\":\"u\",\"message_id\":\"m\",\"read_at\":5,\"scope\":\"all\"}");
        room.pipeInput(join("r8", "alice").getBytes(StandardCharsets.UTF_8)); // valid: processing goes on
        assertEquals(3, Counters.invalid.sum());
        assertEquals(1, Counters.processed.sum());
        List<TestRecord<byte[], byte[]>> dead = dlq.readRecordsToList();
        assertEquals(3, dead.size());
        assertArrayEquals(mismatch, dead.get(0).value(), "original bytes");
        assertArrayEquals("k".getBytes(StandardCharsets.UTF_8), dead.get(0).key());
        assertEquals("room_mismatch", header(dead.get(0), "allread.error.kind"));
        assertEquals("chatroom_r8", header(dead.get(0), "allread.source.topic"));
        assertEquals("not_json", header(dead.get(1), "allread.error.kind"));
        assertEquals("unknown_scope", header(dead.get(2), "allread.error.kind"));
    }

    private static String header(TestRecord<byte[], byte[]> r, String name) {
        Header h = r.headers().lastHeader(name);
        return h == null ? null : new String(h.value(), StandardCharsets.UTF_8);
    }

    @Test
    void leaveCompletesAndRejoinStartsAtLastSeq() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r9");
        room.pipeInput(join("r9", "alice"));
        room.pipeInput(join("r9", "bob"));
        room.pipeInput(leave("r9", "zed")); // leave of a non-member: no-op
        room.pipeInput(join("r9", "bob")); // join of a member: no-op
        room.pipeInput(message("r9", "m1", "alice"));
        room.pipeInput(leave("r9", "bob"));
        List<JsonNode> r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r9", "m1", "alice", 1, 1);
        room.pipeInput(join("r9", "bob")); // H[bob] = last_seq = 1
        room.pipeInput(message("r9", "m2", "alice"));
        reads.pipeInput(read("r9", "bob", "m1")); // read of a completed message: no move
        assertEquals(List.of(), drain());
        reads.pipeInput(read("r9", "bob", "m2"));
        r = drain();
        assertEquals(1, r.size());
        assertReceipt(r.get(0), "r9", "m2", "alice", 2, 1);
        assertEquals(1, Counters.leaveOfNonMember.sum());
        assertEquals(1, Counters.joinOfMember.sum());
    }

    @Test
    void completionsDrivenByTheFrontierComeInSeqOrder() throws Exception {
        start();
        TestInputTopic<String, String> room = topic("chatroom_r10");
        room.pipeInput(join("r10", "alice"));
        room.pipeInput(join("r10", "bob"));
        for (int i = 1; i <= 5; i++) {
            room.pipeInput(message("r10", "m" + i, "alice"));
        }
        reads.pipeInput(read("r10", "bob", "m4"));
        List<JsonNode> r = drain();
        assertEquals(4, r.size());
        for (int i = 0; i < 4; i++) {
            assertReceipt(r.get(i), "r10", "m" + (i + 1), "alice", i + 1, 1);
        }
    }

    @Test
    void largeRoomsStopPerMessageCompletion() throws Exception {
        start("--large-room-member-limit", "2");
        TestInputTopic<String, String> room = topic("chatroom_big");
        for (String u : List.of("a", "b", "c")) {
            room.pipeInput(join("big", u));
        }
        room.pipeInput(message("big", "m1", "a"));
        reads.pipeInput(read("big", "b", "m1"));
        reads.pipeInput(read("big", "c", "m1"));
        assertEquals(List.of(), drain());
        assertEquals(1, Counters.largeRoomMessage.sum());
        room.pipeInput(message("big", "m1", "a"));
        assertEquals(1, Counters.duplicateMessage.sum(), "untracked messages still dedupe");
    }

    @Test
    void pendingMessagesExpire() throws Exception {
        start("--pending-message-ttl-ms", "60000");
        TestInputTopic<String, String> room = topic("chatroom_r11");
        room.pipeInput(join("r11", "alice"));
        room.pipeInput(join("r11", "bob"));
        room.pipeInput(message("r11", "m1", "alice"));
        driver.advanceWallClockTime(Duration.ofSeconds(61));
        assertEquals(1, Counters.pendingExpired.sum());
        reads.pipeInput(read("r11", "bob", "m1"));
        assertEquals(List.of(), drain(), "an expired message never completes");
        room.pipeInput(message("r11", "m1", "alice"));
        assertEquals(1, Counters.duplicateMessage.sum(), "its marker still dedupes");
        assertTrue(Counters.readApplied.sum() >= 1);
    }
}

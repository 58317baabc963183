package dev.allread.kstreams;

import static org.junit.jupiter.api.Assertions.assertEquals;

import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.TreeMap;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.TestInputTopic;
import org.apache.kafka.streams.TestOutputTopic;
import org.apache.kafka.streams.TopologyTestDriver;
import org.apache.kafka.streams.test.TestRecord;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/**
 * Model-based test (as allread's tests/engine_model.rs): random events, replays of input
 * prefixes and wall-clock ticks go through the whole topology in TopologyTestDriver and through
 * {@link ReferenceModel}; the receipts (every field, in order) and the outcome counts must be
 * identical. {@code -Dmodel.cases=N} runs more cases (default 40).
 */
class ModelTest {
    @TempDir
    Path tmp;

    private static final String[] ROOMS = {"room0", "room1"};

    @Test
    void topologyEqualsTheReferenceModel() throws Exception {
        int cases = Integer.getInteger("model.cases", 40);
        for (int c = 0; c < cases; c++) {
            runCase(1000L + c);
        }
    }

    private record Input(String room, Event event, boolean viaReadTopic, boolean roomIdInRecord) {}

    private void runCase(long seed) throws Exception {
        Random rnd = new Random(seed);
        EngineConfig config = new EngineConfig(
                1 + rnd.nextInt(3), 50_000, 200_000, 400_000, 2 + rnd.nextInt(3), rnd.nextBoolean());
        Counters.reset();
        Settings s = Settings.parse(
                "--max-parked-reads-per-user", "" + config.maxParkedReadsPerUser(),
                "--parked-read-ttl-ms", "" + config.parkedReadTtlMs(),
                "--pending-message-ttl-ms", "" + config.pendingMessageTtlMs(),
                "--completed-marker-ttl-ms", "" + config.completedMarkerTtlMs(),
                "--large-room-member-limit", "" + config.largeRoomMemberLimit());
        if (config.suppressTrivial()) {
            s = Settings.parse(
                    "--max-parked-reads-per-user", "" + config.maxParkedReadsPerUser(),
                    "--parked-read-ttl-ms", "" + config.parkedReadTtlMs(),
                    "--pending-message-ttl-ms", "" + config.pendingMessageTtlMs(),
                    "--completed-marker-ttl-ms", "" + config.completedMarkerTtlMs(),
                    "--large-room-member-limit", "" + config.largeRoomMemberLimit(),
                    "--suppress-trivial");
        }
        assertEquals(config, s.engine);
        Properties p = ReceiptTopology.properties(s);
        p.put(StreamsConfig.STATE_DIR_CONFIG, Files.createDirectories(tmp.resolve("s" + seed)).toString());
        Instant start = Instant.parse("2026-11-28T10:00:00Z");
        long now = start.toEpochMilli();
        ReferenceModel model = new ReferenceModel(config);
        List<Input> history = new ArrayList<>();
        try (TopologyTestDriver driver = new TopologyTestDriver(ReceiptTopology.build(s), p, start)) {
            TestInputTopic<String, String> reads = driver.createInputTopic(s.readTopic, new StringSerializer(), new StringSerializer());
            TestInputTopic<String, String> room0 = driver.createInputTopic("chatroom_room0", new StringSerializer(), new StringSerializer());
            TestInputTopic<String, String> room1 = driver.createInputTopic("chatroom_room1", new StringSerializer(), new StringSerializer());
            TestOutputTopic<String, String> out = driver.createOutputTopic(s.output, new StringDeserializer(), new StringDeserializer());
            List<String> actual = new ArrayList<>();
            int actions = 1 + rnd.nextInt(160);
            for (int a = 0; a < actions; a++) {
                int kind = rnd.nextInt(34);
                List<Input> batch = new ArrayList<>();
                if (kind < 30) {
                    Input in = randomInput(rnd);
                    history.add(in);
                    batch.add(in);
                } else if (kind < 31) {
                    batch.addAll(history.subList(0, Math.min(rnd.nextInt(40), history.size())));
                } else {
                    long dt = 1000L * (1 + rnd.nextInt(120));
                    driver.advanceWallClockTime(Duration.ofMillis(dt));
                    now += dt;
                    model.tick(now);
                }
                for (Input in : batch) {
                    TestInputTopic<String, String> t = in.viaReadTopic() ? reads : in.room().equals("room0") ? room0 : room1;
                    t.pipeInput(json(in));
                    model.apply(in.room(), in.event(), now);
                }
                for (TestRecord<String, String> r : out.readRecordsToList()) {
                    actual.add(r.value());
                }
            }
            List<String> expected = new ArrayList<>();
            for (Receipt r : model.out) {
                expected.add(new String(r.toJson(), java.nio.charset.StandardCharsets.UTF_8));
            }
            assertEquals(expected, actual, "receipts, seed " + seed);
            Map<String, Long> got = new TreeMap<>(Counters.snapshot());
            got.remove("records_processed");
            got.remove("receipts_emitted");
            got.remove("invalid_records");
            got.put("receipt_emitted", Counters.receiptsEmitted.sum());
            got.values().removeIf(v -> v == 0);
            assertEquals(model.counts, got, "outcome counts, seed " + seed);
        }
    }

    private static Input randomInput(Random rnd) {
        String room = ROOMS[rnd.nextInt(2)];
        String user = "u" + rnd.nextInt(5);
        String msg = "m" + rnd.nextInt(10);
        int k = rnd.nextInt(12);
        boolean withRoomId = rnd.nextBoolean();
        if (k < 3) {
            return new Input(room, new Event.Join(user, 0), false, withRoomId);
        } else if (k < 4) {
            return new Input(room, new Event.Leave(user, 0), false, withRoomId);
        } else if (k < 7) {
            return new Input(room, new Event.Message(msg, user, 1_795_860_000_000L + rnd.nextInt(1000)), false, withRoomId);
        } else {
            return new Input(room, new Event.Read(user, msg, 0, rnd.nextInt(10) < 3), true, true);
        }
    }

    private static String json(Input in) {
        String room = in.roomIdInRecord() ? "\"room_id\":\"" + in.room() + "\"," : "";
        Event e = in.event();
        if (e instanceof Event.Join j) {
            return "{\"type\":\"join\"," + room + "\"user_id\":\"" + j.userId() + "\",\"at\":0}";
        } else if (e instanceof Event.Leave l) {
            return "{\"type\":\"leave\"," + room + "\"user_id\":\"" + l.userId() + "\",\"at\":0}";
        } else if (e instanceof Event.Message m) {
            return "{\"type\":\"message\"," + room + "\"message_id\":\"" + m.messageId() + "\",\"sender_id\":\""
                    + m.senderId() + "\",\"sent_at\":" + m.sentAt() + ",\"body\":\"x\"}";
        } else {
            Event.Read r = (Event.Read) e;
            return "{" + room + "\"user_id\":\"" + r.userId() + "\",\"message_id\":\"" + r.messageId()
                    + "\",\"read_at\":0" + (r.scopeMessage() ? ",\"scope\":\"message\"" : "") + "}";
        }
    }
}

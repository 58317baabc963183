package dev.allread.kstreams;

import java.util.LinkedHashMap;
import java.util.Map;

/** The command line. Every option has a default; {@code --help} prints them. */
public final class Settings {
    public String bootstrap = "127.0.0.1:9092";
    public String applicationId = "allread-kstreams";
    public String guarantee = "exactly_once_v2";
    public String roomPattern = "^chatroom_.*";
    public String roomPrefix = "chatroom_";
    public String readTopic = "read_events";
    public String output = "receipt_complete";
    public int partitions = 8;
    public String stateDir = "/tmp/allread-kstreams-state";
    /** Null: Kafka Streams' default for the guarantee (100 ms under EOS, 30 s otherwise). */
    public Long commitIntervalMs = null;
    public int threads = 2;
    public short replicationFactor = 1;
    public EngineConfig engine = EngineConfig.defaults();
    /** Extra Kafka Streams / client properties ({@code --config key=value}), applied last. */
    public final Map<String, String> overrides = new LinkedHashMap<>();

    public static final String USAGE = String.join("\n",
            "usage: java -jar allread-kstreams.jar [options]",
            "  --bootstrap HOST:PORT            Kafka bootstrap servers (127.0.0.1:9092)",
            "  --application-id ID              application.id: group, internal topic prefix (allread-kstreams)",
            "  --guarantee G                    exactly_once_v2 | at_least_once (exactly_once_v2)",
            "  --room-pattern REGEX             room topics (^chatroom_.*)",
            "  --room-prefix PREFIX             topic name minus this is the room id (chatroom_)",
            "  --read-topic T                   read events (read_events)",
            "  --output T                       receipt_complete records (receipt_complete)",
            "  --partitions N                   repartition topic partitions = tasks (8)",
            "  --state-dir DIR                  state.dir (/tmp/allread-kstreams-state)",
            "  --commit-interval-ms MS          commit.interval.ms (Streams default: 100 EOS, 30000 ALOS)",
            "  --threads N                      num.stream.threads (2)",
            "  --replication-factor N           internal, output and DLQ topics (1)",
            "  --max-parked-reads-per-user N    rule 8 bound (16)",
            "  --parked-read-ttl-ms MS          rule 8 expiry (900000)",
            "  --pending-message-ttl-ms MS      rule 10 expiry (604800000)",
            "  --completed-marker-ttl-ms MS     rule 10 marker retention (604800000)",
            "  --large-room-member-limit N      rule 11 (10000)",
            "  --suppress-trivial               rule 7: do not emit receipts with required_readers 0",
            "  --config KEY=VALUE               any Kafka Streams/client property (repeatable, applied last)",
            "  --help");

    public static Settings parse(String... args) {
        Settings s = new Settings();
        EngineConfig e = s.engine;
        int maxParked = e.maxParkedReadsPerUser();
        long parkedTtl = e.parkedReadTtlMs();
        long pendingTtl = e.pendingMessageTtlMs();
        long markerTtl = e.completedMarkerTtlMs();
        int largeRoom = e.largeRoomMemberLimit();
        boolean suppress = e.suppressTrivial();
        for (int i = 0; i < args.length; i++) {
            String a = args[i];
            String v = null;
            int eq = a.indexOf('=');
            if (a.startsWith("--") && eq > 0) { // --opt=value
                v = a.substring(eq + 1);
                a = a.substring(0, eq);
            }
            if (a.equals("--help") || a.equals("-h")) {
                throw new Usage(null);
            }
            if (a.equals("--suppress-trivial")) {
                suppress = true;
                continue;
            }
            if (v == null) {
                if (i + 1 >= args.length) {
                    throw new Usage(a + " needs a value");
                }
                v = args[++i];
            }
            switch (a) {
                case "--bootstrap" -> s.bootstrap = v;
                case "--application-id" -> s.applicationId = v;
                case "--guarantee" -> {
                    if (!v.equals("exactly_once_v2") && !v.equals("at_least_once")) {
                        throw new Usage("--guarantee must be exactly_once_v2 or at_least_once");
                    }
                    s.guarantee = v;
                }
                case "--room-pattern" -> s.roomPattern = v;
                case "--room-prefix" -> s.roomPrefix = v;
                case "--read-topic" -> s.readTopic = v;
                case "--output" -> s.output = v;
                case "--partitions" -> s.partitions = positive(a, v);
                case "--state-dir" -> s.stateDir = v;
                case "--commit-interval-ms" -> s.commitIntervalMs = (long) nonNegative(a, v);
                case "--threads" -> s.threads = positive(a, v);
                case "--replication-factor" -> s.replicationFactor = (short) positive(a, v);
                case "--max-parked-reads-per-user" -> maxParked = positive(a, v);
                case "--parked-read-ttl-ms" -> parkedTtl = nonNegative(a, v);
                case "--pending-message-ttl-ms" -> pendingTtl = nonNegative(a, v);
                case "--completed-marker-ttl-ms" -> markerTtl = nonNegative(a, v);
                case "--large-room-member-limit" -> largeRoom = (int) nonNegative(a, v);
                case "--config" -> {
                    int k = v.indexOf('=');
                    if (k <= 0) {
                        throw new Usage("--config needs KEY=VALUE");
                    }
                    s.overrides.put(v.substring(0, k), v.substring(k + 1));
                }
                default -> throw new Usage("unknown option " + a);
            }
        }
        s.engine = new EngineConfig(maxParked, parkedTtl, pendingTtl, markerTtl, largeRoom, suppress);
        return s;
    }

    private static int positive(String opt, String v) {
        long n = nonNegative(opt, v);
        if (n < 1 || n > Integer.MAX_VALUE) {
            throw new Usage(opt + " must be a positive integer");
        }
        return (int) n;
    }

    private static long nonNegative(String opt, String v) {
        try {
            long n = Long.parseLong(v);
            if (n < 0) {
                throw new Usage(opt + " must not be negative");
            }
            return n;
        } catch (NumberFormatException ex) {
            throw new Usage(opt + " must be an integer");
        }
    }

    /** A bad command line (message) or {@code --help} (null message). */
    public static final class Usage extends RuntimeException {
        Usage(String message) {
            super(message);
        }
    }
}

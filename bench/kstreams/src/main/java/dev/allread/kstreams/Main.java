package dev.allread.kstreams;

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicBoolean;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Runs the topology until SIGTERM/SIGINT, then closes Kafka Streams cleanly (committing, under
 * EOS, the open transaction) and prints a one-line summary. Exit 0 after a clean stop, 1 if
 * Kafka Streams failed, 2 for a bad command line or missing read topic.
 */
public final class Main {
    private static final Logger log = LoggerFactory.getLogger(Main.class);

    public static void main(String[] args) throws Exception {
        Settings s;
        try {
            s = Settings.parse(args);
        } catch (Settings.Usage u) {
            if (u.getMessage() == null) {
                System.out.println(Settings.USAGE);
                System.exit(0);
            }
            System.err.println("allread-kstreams: " + u.getMessage());
            System.err.println(Settings.USAGE);
            System.exit(2);
            return;
        }
        if (!ensureTopics(s)) {
            System.exit(2);
        }

        Topology topology = ReceiptTopology.build(s);
        log.info("topology:\n{}", topology.describe());
        Properties props = ReceiptTopology.properties(s);
        log.info("settings: {}", new TreeMap<>(props));
        log.info("rules: {}", s.engine);
        KafkaStreams streams = new KafkaStreams(topology, props);
        CountDownLatch stopped = new CountDownLatch(1);
        AtomicBoolean failed = new AtomicBoolean(false);
        streams.setUncaughtExceptionHandler(e -> {
            log.error("stream thread failed; shutting down", e);
            failed.set(true);
            return StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.setGlobalStateRestoreListener(new RestoreLog());
        streams.setStateListener((now, before) -> {
            log.info("state {} -> {}", before, now);
            if (now == KafkaStreams.State.ERROR) {
                failed.set(true);
            }
            if (now == KafkaStreams.State.NOT_RUNNING || now == KafkaStreams.State.ERROR) {
                stopped.countDown();
            }
        });

        AtomicBoolean summarized = new AtomicBoolean(false);
        // Returns whether Kafka Streams closed cleanly within 30 s.
        java.util.function.BooleanSupplier closeAndSummarize = () -> {
            boolean clean = streams.close(Duration.ofSeconds(30));
            if (summarized.compareAndSet(false, true)) {
                log.info("summary: {}", Counters.summaryLine());
            }
            return clean;
        };
        Thread hook = new Thread(() -> {
            log.info("signal received: closing Kafka Streams");
            boolean clean = closeAndSummarize.getAsBoolean();
            System.err.flush();
            // Exit 0 after a clean stop (the JVM's own status after SIGTERM would be 143).
            Runtime.getRuntime().halt(clean && !failed.get() ? 0 : 1);
        }, "shutdown");
        Runtime.getRuntime().addShutdownHook(hook);

        streams.start();
        stopped.await();
        if (failed.get()) {
            // Kafka Streams gave up on its own (not a signal): close, summarize, exit 1.
            closeAndSummarize.getAsBoolean();
            System.err.flush();
            Runtime.getRuntime().halt(1);
        }
        // NOT_RUNNING reached through close() in the shutdown hook: it finishes the summary.
    }

    /**
     * Creates the output and dead-letter topics if they are missing (as allread does; the broker
     * does not auto-create topics). The read topic must exist: a Kafka Streams source topic
     * that is missing stops the application.
     */
    static boolean ensureTopics(Settings s) throws InterruptedException {
        Map<String, Object> conf = Map.of(
                AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, s.bootstrap,
                AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, 60_000);
        try (Admin admin = Admin.create(conf)) {
            Set<String> existing = admin.listTopics().names().get(60, TimeUnit.SECONDS);
            if (!existing.contains(s.readTopic)) {
                log.error("the read topic {} does not exist; create it first", s.readTopic);
                return false;
            }
            List<NewTopic> missing = new ArrayList<>();
            for (String t : List.of(s.output, s.applicationId + ReceiptTopology.DLQ_SUFFIX)) {
                if (!existing.contains(t)) {
                    missing.add(new NewTopic(t, s.partitions, s.replicationFactor));
                }
            }
            for (NewTopic t : missing) {
                try {
                    admin.createTopics(List.of(t)).all().get(60, TimeUnit.SECONDS);
                    log.info("created topic {} ({} partitions)", t.name(), t.numPartitions());
                } catch (ExecutionException e) {
                    if (!(e.getCause() instanceof TopicExistsException)) {
                        throw e;
                    }
                }
            }
            return true;
        } catch (ExecutionException | java.util.concurrent.TimeoutException e) {
            log.error("cannot reach Kafka at {} to check topics: {}", s.bootstrap, String.valueOf(e.getCause() != null ? e.getCause() : e));
            return false;
        }
    }
}

package dev.allread.kstreams;

import java.util.Properties;
import java.util.regex.Pattern;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;
import org.apache.kafka.streams.KeyValue;
import org.apache.kafka.streams.StreamsBuilder;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.kstream.Consumed;
import org.apache.kafka.streams.kstream.KStream;
import org.apache.kafka.streams.kstream.Named;
import org.apache.kafka.streams.kstream.Produced;
import org.apache.kafka.streams.kstream.Repartitioned;

/**
 * The topology:
 *
 * <pre>
 *   room topics (Pattern) --decode--+
 *                                   +-- merge -- map: key = room id -- repartition("events", N)
 *   read topic -----------decode----+      -- process(receipts; stores receipt-state, receipt-expiry)
 *                                          -- to(receipt_complete)
 *   undecodable input records -> deserialization exception handler -> &lt;application.id&gt;-dlq
 * </pre>
 *
 * Decoding happens in the source deserializers (a room record's room comes from the topic name
 * when {@code room_id} is absent, and {@link org.apache.kafka.common.serialization.Deserializer}
 * is given the topic). The repartition topic {@code <application.id>-events-repartition} is keyed
 * by the room id's UTF-8 bytes and partitioned by Kafka's default partitioner (murmur2), as
 * allread partitions its own: a room lands on the same partition number in both.
 */
public final class ReceiptTopology {
    private ReceiptTopology() {}

    public static final String DLQ_SUFFIX = "-dlq";

    public static Topology build(Settings s) {
        StreamsBuilder builder = new StreamsBuilder();
        KStream<byte[], Event.Routed> rooms = builder.stream(
                Pattern.compile(s.roomPattern),
                Consumed.with(Serdes.ByteArray(), inputSerde(new InputDecoder.RoomEventDeserializer(s.roomPrefix)))
                        .withName("room-topics"));
        KStream<byte[], Event.Routed> reads = builder.stream(
                s.readTopic,
                Consumed.with(Serdes.ByteArray(), inputSerde(new InputDecoder.ReadEventDeserializer()))
                        .withName("read-topic"));
        rooms.merge(reads, Named.as("inputs"))
                .map((key, routed) -> KeyValue.pair(routed.roomId(), routed.event()), Named.as("key-by-room"))
                .repartition(Repartitioned.<String, Event>as("events")
                        .withKeySerde(Serdes.String())
                        .withValueSerde(Event.serde())
                        .withNumberOfPartitions(s.partitions))
                .process(new ReceiptProcessor.Supplier(s.engine), Named.as("receipts"))
                .to(s.output, Produced.with(Serdes.String(), Serdes.serdeFrom(new Receipt.JsonSerializer(), (t, b) -> null))
                        .withName("receipt-sink"));
        return builder.build();
    }

    private static Serde<Event.Routed> inputSerde(org.apache.kafka.common.serialization.Deserializer<Event.Routed> de) {
        Serializer<Event.Routed> none = (topic, v) -> {
            throw new UnsupportedOperationException("input records are only read");
        };
        return Serdes.serdeFrom(none, de);
    }

    /** The Kafka Streams configuration; README.md explains each choice. */
    public static Properties properties(Settings s) {
        Properties p = new Properties();
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, s.applicationId);
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, s.bootstrap);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG,
                s.guarantee.equals("at_least_once") ? StreamsConfig.AT_LEAST_ONCE : StreamsConfig.EXACTLY_ONCE_V2);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, s.threads);
        p.put(StreamsConfig.STATE_DIR_CONFIG, s.stateDir);
        if (s.commitIntervalMs != null) {
            p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, s.commitIntervalMs);
        }
        // One broker: internal topics (repartition, changelogs) with replication factor 1.
        p.put(StreamsConfig.REPLICATION_FACTOR_CONFIG, (int) s.replicationFactor);
        // Record cache in front of the stores, shared by the threads (default 10 MB).
        p.put(StreamsConfig.STATESTORE_CACHE_MAX_BYTES_CONFIG, 64L * 1024 * 1024);
        p.put(StreamsConfig.ROCKSDB_CONFIG_SETTER_CLASS_CONFIG, BoundedMemoryRocksDBConfig.class);
        // Undecodable input: count, skip, dead-letter (KIP-1034).
        p.put(StreamsConfig.DESERIALIZATION_EXCEPTION_HANDLER_CLASS_CONFIG, DeadLetterHandler.class);
        p.put(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG, s.applicationId + DLQ_SUFFIX);
        // No global stores; opting in now only silences a startup warning.
        p.put(StreamsConfig.PROCESSING_EXCEPTION_HANDLER_GLOBAL_ENABLED_CONFIG, true);
        // Producer: Streams raises linger.ms to 100; under EOS every commit flushes anyway, and
        // under at_least_once a receipt should not wait 100 ms to be sent.
        p.put(StreamsConfig.producerPrefix(ProducerConfig.LINGER_MS_CONFIG), 5);
        p.put(StreamsConfig.producerPrefix(ProducerConfig.BATCH_SIZE_CONFIG), 64 * 1024);
        // Find new room topics within 5 s (the default metadata age is 5 min), as allread does.
        p.put(StreamsConfig.mainConsumerPrefix(ConsumerConfig.METADATA_MAX_AGE_CONFIG), 5_000);
        for (var e : s.overrides.entrySet()) {
            p.put(e.getKey(), e.getValue());
        }
        return p;
    }
}

package dev.allread.kstreams;

import java.nio.charset.StandardCharsets;
import java.util.List;
import java.util.Map;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.header.internals.RecordHeaders;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.errors.DeserializationExceptionHandler;
import org.apache.kafka.streams.errors.ErrorHandlerContext;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * The deserialization exception handler (KIP-1034 style): an input record that does not decode
 * is counted, skipped, and sent unchanged (key, value, headers) to the dead-letter topic named
 * by {@code errors.dead.letter.queue.topic.name}, within the task's transaction under EOS. Its
 * headers name its source and the error, as allread's dead letters do ({@code
 * allread.source.topic}, {@code .partition}, {@code .offset}, {@code allread.error.kind},
 * {@code allread.error.message}). Logs never show a record's content: the first few are logged
 * with the error kind, then one line per 10,000.
 */
public final class DeadLetterHandler implements DeserializationExceptionHandler {
    private static final Logger log = LoggerFactory.getLogger(DeadLetterHandler.class);

    private String dlqTopic;

    @Override
    public void configure(Map<String, ?> configs) {
        Object t = configs.get(StreamsConfig.ERRORS_DEAD_LETTER_QUEUE_TOPIC_NAME_CONFIG);
        dlqTopic = t == null || t.toString().isEmpty() ? null : t.toString();
    }

    @Override
    public Response handleError(ErrorHandlerContext context, ConsumerRecord<byte[], byte[]> record, Exception exception) {
        Counters.invalid.increment();
        long n = Counters.invalid.sum();
        String kind = exception instanceof InputDecoder.InvalidRecord ir ? ir.kind : exception.getClass().getSimpleName();
        String message = exception instanceof InputDecoder.InvalidRecord ? exception.getMessage() : "undecodable record";
        if (n <= 10 || n % 10_000 == 0) {
            log.warn("skipped an invalid input record ({} so far): topic {} partition {} offset {}: {}: {}",
                    n, record.topic(), record.partition(), record.offset(), kind, message);
        }
        if (dlqTopic == null) {
            return Response.resume();
        }
        Headers headers = new RecordHeaders(record.headers().toArray());
        headers.add("allread.source.topic", bytes(record.topic()));
        headers.add("allread.source.partition", bytes(Integer.toString(record.partition())));
        headers.add("allread.source.offset", bytes(Long.toString(record.offset())));
        headers.add("allread.error.kind", bytes(kind));
        headers.add("allread.error.message", bytes(message));
        ProducerRecord<byte[], byte[]> dead =
                new ProducerRecord<>(dlqTopic, null, record.timestamp(), record.key(), record.value(), headers);
        return Response.resume(List.of(dead));
    }

    private static byte[] bytes(String s) {
        return s.getBytes(StandardCharsets.UTF_8);
    }
}

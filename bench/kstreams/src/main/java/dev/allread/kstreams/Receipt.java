package dev.allread.kstreams;

import com.fasterxml.jackson.core.JsonFactory;
import com.fasterxml.jackson.core.JsonGenerator;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import org.apache.kafka.common.serialization.Serializer;

/**
 * The one output record, {@code receipt_complete}, keyed by room id: every member of the room
 * has read this message (spec rule 6). On the wire:
 * {@code {"room_id","message_id","sender_id","seq","sent_at","completed_at","required_readers"}}
 * with times as RFC 3339 UTC strings, millisecond precision.
 */
public record Receipt(
        String roomId, String messageId, String senderId, long seq, long sentAt, long completedAt, int requiredReaders) {

    private static final JsonFactory JSON = new JsonFactory();

    public byte[] toJson() {
        ByteArrayOutputStream out = new ByteArrayOutputStream(160);
        try (JsonGenerator g = JSON.createGenerator(out)) {
            g.writeStartObject();
            g.writeStringField("room_id", roomId);
            g.writeStringField("message_id", messageId);
            g.writeStringField("sender_id", senderId);
            g.writeNumberField("seq", seq);
            g.writeStringField("sent_at", Times.format(sentAt));
            g.writeStringField("completed_at", Times.format(completedAt));
            g.writeNumberField("required_readers", requiredReaders);
            g.writeEndObject();
        } catch (IOException e) {
            throw new UncheckedIOException(e);
        }
        return out.toByteArray();
    }

    /** Serializer of the output topic's values. */
    public static final class JsonSerializer implements Serializer<Receipt> {
        @Override
        public byte[] serialize(String topic, Receipt r) {
            return r == null ? null : r.toJson();
        }
    }
}

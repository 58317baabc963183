package dev.allread.kstreams;

import org.apache.kafka.common.serialization.Deserializer;
import org.apache.kafka.common.serialization.Serde;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.common.serialization.Serializer;

/**
 * One decoded input event. The room is not part of it: after decoding, the room id is the
 * record key (and so what the repartition topic is partitioned by), so the value on the
 * repartition topic carries only what the rules need. {@code body} is never decoded.
 */
public sealed interface Event permits Event.Message, Event.Join, Event.Leave, Event.Read {

    /** A chat message (spec rule 3). */
    record Message(String messageId, String senderId, long sentAt) implements Event {}

    /** A user joins (rule 1). */
    record Join(String userId, long at) implements Event {}

    /** A user leaves (rule 2). */
    record Leave(String userId, long at) implements Event {}

    /** A read (rules 4, 5); {@code scopeMessage} is scope "message", otherwise "up_to". */
    record Read(String userId, String messageId, long readAt, boolean scopeMessage) implements Event {}

    /** What the input deserializers produce: the room (the future key) and the event. */
    record Routed(String roomId, Event event) {}

    byte MESSAGE = 1;
    byte JOIN = 2;
    byte LEAVE = 3;
    byte READ_UP_TO = 4;
    byte READ_MESSAGE = 5;

    /** The compact binary form used on the repartition topic: a tag byte, then the fields. */
    static byte[] encode(Event e) {
        Bin.Writer w = new Bin.Writer(48);
        if (e instanceof Message m) {
            w.u8(MESSAGE).str(m.messageId()).str(m.senderId()).i64(m.sentAt());
        } else if (e instanceof Join j) {
            w.u8(JOIN).str(j.userId()).i64(j.at());
        } else if (e instanceof Leave l) {
            w.u8(LEAVE).str(l.userId()).i64(l.at());
        } else if (e instanceof Read r) {
            w.u8(r.scopeMessage() ? READ_MESSAGE : READ_UP_TO).str(r.userId()).str(r.messageId()).i64(r.readAt());
        }
        return w.toBytes();
    }

    static Event decode(byte[] bytes) {
        Bin.Reader r = new Bin.Reader(bytes);
        int tag = r.u8();
        return switch (tag) {
            case MESSAGE -> new Message(r.str(), r.str(), r.i64());
            case JOIN -> new Join(r.str(), r.i64());
            case LEAVE -> new Leave(r.str(), r.i64());
            case READ_UP_TO, READ_MESSAGE -> new Read(r.str(), r.str(), r.i64(), tag == READ_MESSAGE);
            default -> throw new IllegalArgumentException("unknown event tag " + tag);
        };
    }

    /** Serde of the repartition topic's values. */
    static Serde<Event> serde() {
        Serializer<Event> ser = (topic, e) -> e == null ? null : encode(e);
        Deserializer<Event> de = (topic, b) -> b == null ? null : decode(b);
        return Serdes.serdeFrom(ser, de);
    }
}

package dev.allread.kstreams;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;
import java.util.TreeSet;

/**
 * A deliberately naive reference model of the spec, a port of allread's src/sim/model.rs: every
 * member and reader set kept in full, every pending message re-checked after every event. It
 * shares no code with {@link ReceiptProcessor}; {@link ModelTest} compares the two.
 */
final class ReferenceModel {
    private static final class Msg {
        String id;
        long seq;
        String sender;
        long sentAt;
        int required;
        TreeSet<String> readers = new TreeSet<>();
        long expireAt;
    }

    private record Parked(String user, String message, boolean scopeMessage, long expireAt) {}

    private static final class Room {
        long lastSeq;
        TreeMap<String, Long> members = new TreeMap<>();
        List<Msg> pending = new ArrayList<>();
        List<Parked> parked = new ArrayList<>();
    }

    private record Marker(long seq, long expireAt) {}

    final EngineConfig config;
    private final TreeMap<String, Room> rooms = new TreeMap<>();
    private final TreeMap<String, Marker> markers = new TreeMap<>(); // room + "\0" + message id
    final List<Receipt> out = new ArrayList<>();
    final Map<String, Long> counts = new TreeMap<>();

    ReferenceModel(EngineConfig config) {
        this.config = config;
    }

    private void count(String name) {
        counts.merge(name, 1L, Long::sum);
    }

    private static String mk(String room, String id) {
        return room + "\0" + id;
    }

    void apply(String roomId, Event e, long now) {
        Room room = rooms.computeIfAbsent(roomId, k -> new Room());
        if (e instanceof Event.Join j) {
            if (room.members.containsKey(j.userId())) {
                count("join_of_member");
            } else {
                count("join_applied");
                room.members.put(j.userId(), room.lastSeq);
            }
        } else if (e instanceof Event.Leave l) {
            if (room.members.remove(l.userId()) != null) {
                count("leave_applied");
                check(roomId, room, now);
            } else {
                count("leave_of_non_member");
            }
        } else if (e instanceof Event.Message m) {
            String mid = m.messageId();
            boolean known = room.pending.stream().anyMatch(p -> p.id.equals(mid)) || markers.containsKey(mk(roomId, mid));
            if (known) {
                count("duplicate_message");
                return;
            }
            count("message_applied");
            long seq = ++room.lastSeq;
            int required = (int) room.members.keySet().stream().filter(u -> !u.equals(m.senderId())).count();
            if (room.members.size() > config.largeRoomMemberLimit()) {
                count("large_room_message");
                markers.put(mk(roomId, mid), new Marker(seq, now + config.completedMarkerTtlMs()));
            } else {
                Msg p = new Msg();
                p.id = mid;
                p.seq = seq;
                p.sender = m.senderId();
                p.sentAt = m.sentAt();
                p.required = required;
                p.expireAt = now + config.pendingMessageTtlMs();
                room.pending.add(p);
            }
            room.members.computeIfPresent(m.senderId(), (u, h) -> Math.max(h, seq));
            check(roomId, room, now);
            List<Parked> mine = new ArrayList<>();
            List<Parked> rest = new ArrayList<>();
            for (Parked p : room.parked) {
                (p.message().equals(mid) ? mine : rest).add(p);
            }
            room.parked = rest;
            for (Parked p : mine) {
                count("parked_read_applied");
                boolean pending = room.pending.stream().anyMatch(x -> x.seq == seq);
                readKnown(roomId, room, p.user(), seq, p.scopeMessage(), pending, now);
            }
        } else if (e instanceof Event.Read r) {
            String mid = r.messageId();
            Msg p = room.pending.stream().filter(x -> x.id.equals(mid)).findFirst().orElse(null);
            Marker marker = markers.get(mk(roomId, mid));
            if (p != null) {
                readKnown(roomId, room, r.userId(), p.seq, r.scopeMessage(), true, now);
            } else if (marker != null) {
                readKnown(roomId, room, r.userId(), marker.seq(), r.scopeMessage(), false, now);
            } else {
                count("read_parked");
                room.parked.add(new Parked(r.userId(), mid, r.scopeMessage(), now + config.parkedReadTtlMs()));
                long mine = room.parked.stream().filter(x -> x.user().equals(r.userId())).count();
                if (mine > config.maxParkedReadsPerUser()) {
                    for (int i = 0; i < room.parked.size(); i++) {
                        if (room.parked.get(i).user().equals(r.userId())) {
                            room.parked.remove(i);
                            break;
                        }
                    }
                    count("parked_read_dropped");
                }
            }
        }
    }

    private void readKnown(String roomId, Room room, String user, long seq, boolean scopeMessage, boolean pending, long now) {
        Long h = room.members.get(user);
        if (h == null) {
            count("read_by_non_member");
            return;
        }
        count("read_applied");
        if (!scopeMessage) {
            room.members.put(user, Math.max(h, seq));
        } else if (!pending) {
            count("message_read_of_finished");
        } else if (h < seq) {
            room.pending.stream().filter(x -> x.seq == seq).findFirst().orElseThrow().readers.add(user);
        }
        check(roomId, room, now);
    }

    /** Completes, in seq order, every pending message that every member has read. */
    private void check(String roomId, Room room, long now) {
        List<Msg> done = new ArrayList<>();
        for (Iterator<Msg> it = room.pending.iterator(); it.hasNext(); ) {
            Msg m = it.next();
            boolean all = room.members.entrySet().stream().allMatch(x -> x.getValue() >= m.seq || m.readers.contains(x.getKey()));
            if (all) {
                done.add(m);
                it.remove();
            }
        }
        for (Msg m : done) {
            markers.put(mk(roomId, m.id), new Marker(m.seq, now + config.completedMarkerTtlMs()));
            if (m.required == 0) {
                count("trivial_completion");
                if (config.suppressTrivial()) {
                    count("trivial_suppressed");
                    continue;
                }
            }
            count("receipt_emitted");
            out.add(new Receipt(roomId, m.id, m.sender, m.seq, m.sentAt, now, m.required));
        }
    }

    void tick(long now) {
        markers.entrySet().removeIf(x -> {
            if (x.getValue().expireAt() <= now) {
                count("marker_expired");
                return true;
            }
            return false;
        });
        Map<String, Marker> created = new HashMap<>();
        for (Map.Entry<String, Room> x : rooms.entrySet()) {
            Room room = x.getValue();
            room.parked.removeIf(p -> {
                if (p.expireAt() <= now) {
                    count("parked_read_expired");
                    return true;
                }
                return false;
            });
            for (Iterator<Msg> it = room.pending.iterator(); it.hasNext(); ) {
                Msg m = it.next();
                if (m.expireAt <= now) {
                    it.remove();
                    count("pending_expired");
                    created.put(mk(x.getKey(), m.id), new Marker(m.seq, now + config.completedMarkerTtlMs()));
                }
            }
        }
        markers.putAll(created);
    }
}

//! The local shortcut: an input record whose task runs in this instance is applied to that
//! task at once, instead of crossing the repartition topic and coming back.
//!
//! Kafka Streams always takes the trip; allread skips it where that is safe, which on one
//! instance is nearly always (every task is local), and halves what each event costs Kafka.
//! What the trip gives, and the shortcut must keep:
//!
//! - **Order per source partition.** A task applies each input partition's records in
//!   offset order and skips any at or below the last one it applied (that is how records
//!   routed twice are applied once). A record that took the shortcut while an earlier record
//!   of the same input partition was still on its way through the repartition topic would
//!   overtake it, and the earlier one would then be skipped as a duplicate: lost.
//! - **Durability.** Nothing changes: a shortcut record's effect is committed as the task's
//!   state (changelog records, source positions) with the input offset, in the same commit
//!   (one transaction under `exactly_once`) as everything else.
//!
//! So the shortcut to task `p` (a *lane*) opens only when the repartition partition `p` is
//! drained of everything that could precede the next record: this instance has sent a record
//! to `p` since the lane was last closed (the barrier), every record it sent to `p` has been
//! acknowledged, and the task has consumed past the highest acknowledged offset. Records other
//! instances had sent for input partitions now routed here were written before this instance
//! was given those partitions, so before the barrier, and are consumed before it too. A lane
//! closes when partitions are assigned (input partitions may come with such records), when its
//! task is assigned or revoked, and when the processor rewinds. While it is closed, records go
//! the long way, exactly as without the shortcut; once it is open nothing is sent to `p` by
//! this instance, so it stays open.
//!
//! **No barrier when there is nothing to wait for.** The barrier's trip is only needed when
//! the repartition partition may hold records the task has not consumed. Before a closed lane
//! sends its barrier it is *probed* once: if every record this instance sent to `p` is
//! acknowledged, the processor asks the broker for `p`'s high watermark (`read_uncommitted`,
//! so records of open transactions count) and the lane opens at once when the task's position
//! is already there ([`Shortcut::probed`]). Anything anyone wrote to `p` before the probe is
//! below that watermark, hence consumed; records other instances had sent for the input
//! partitions now here were written before this instance was given them, so before the probe.
//! That is the case of a new deployment and of a restart whose repartition partitions were
//! drained, and it spares them the barrier's wait behind the input backlog that librdkafka
//! has already prefetched into the same consumer queue (950,000 records held at the start of
//! the 5M-event benchmark chat before this). A partition that holds anything past the task's
//! position, including a trailing transaction marker under `exactly_once`, takes the barrier.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use tracing::info;

/// Acknowledgements of the records one producer sent to the repartition topic, per partition
/// (written by the producer's delivery callback).
pub struct Acks {
    /// Records whose delivery was reported (acknowledged or failed).
    reported: Vec<AtomicU64>,
    /// The highest acknowledged offset (-1: none).
    max_offset: Vec<AtomicI64>,
}

impl Acks {
    pub fn new(partitions: usize) -> Self {
        Acks {
            reported: (0..partitions).map(|_| AtomicU64::new(0)).collect(),
            max_offset: (0..partitions).map(|_| AtomicI64::new(-1)).collect(),
        }
    }

    /// A delivery report: `offset` is `None` for a failed delivery.
    pub fn report(&self, partition: i32, offset: Option<i64>) {
        let Some(i) = usize::try_from(partition).ok().filter(|i| *i < self.reported.len()) else {
            return;
        };
        if let Some(o) = offset {
            self.max_offset[i].fetch_max(o, Ordering::Relaxed);
        }
        // Release: whoever sees the count sees the offset.
        self.reported[i].fetch_add(1, Ordering::Release);
    }

    /// (records reported, highest acknowledged offset) of a partition.
    fn get(&self, i: usize) -> (u64, i64) {
        let reported = self.reported[i].load(Ordering::Acquire);
        (reported, self.max_offset[i].load(Ordering::Relaxed))
    }
}

/// While this many records are held, routing waits (input records stay buffered): under a
/// backlog the router runs ahead of the tasks, and the lanes open once the tasks have caught
/// up with the repartition topic. It is checked once per processing round, and a round routes
/// everything ready, so more can be held: at the start of the 5M-event benchmark chat, with the
/// barriers behind librdkafka's prefetched input, 950,000 were for a few seconds before lanes
/// were probed (a new deployment now needs no barrier); a restart with records left in the
/// repartition topic still can (`allread_held_records`; BENCHMARKS.md says what capping it cost).
pub const MAX_HELD: usize = 100_000;

struct Lane<T> {
    /// Records sent to this partition through the current producer.
    sent: u64,
    /// Whether a record was sent to it since the lane was last closed (the barrier).
    barrier_sent: bool,
    open: bool,
    /// When the barrier was sent.
    barrier_at: Option<Instant>,
    /// Records that arrived after the barrier, while the lane waits for it to come back:
    /// sending them would leave the lane always waiting under a steady load.
    held: Vec<T>,
    /// Whether the lane was probed for an empty repartition partition since it last closed.
    probed: bool,
}

/// What to do with a record (and any held before it), in this order.
#[derive(Debug, PartialEq, Eq)]
pub enum Route<T> {
    /// Apply to the local task now: the records held for it, oldest first (usually none, and
    /// then no vector is allocated), then this one.
    Apply(Vec<T>, T),
    /// Send through the repartition topic.
    Send(Vec<T>),
    /// Held: it comes back from [`Shortcut::release`].
    Held,
}

/// The lanes of one processor, indexed by repartition partition.
pub struct Shortcut<T> {
    enabled: bool,
    lanes: Vec<Lane<T>>,
    held: usize,
}

impl<T> Shortcut<T> {
    pub fn new(enabled: bool, partitions: usize) -> Self {
        let lanes = (0..partitions)
            .map(|_| Lane {
                sent: 0,
                barrier_sent: false,
                open: false,
                barrier_at: None,
                held: Vec::new(),
                probed: false,
            })
            .collect();
        Shortcut { enabled, lanes, held: 0 }
    }

    fn index(&self, partition: i32) -> Option<usize> {
        usize::try_from(partition).ok().filter(|i| *i < self.lanes.len())
    }

    /// Opens the lane if the repartition partition is drained: every record sent to it is
    /// acknowledged and the task (at `position`) has consumed past the highest offset.
    fn try_open(&mut self, i: usize, position: i64, acks: &Acks) -> bool {
        let lane = &mut self.lanes[i];
        if !lane.open && lane.barrier_sent {
            let (reported, max_offset) = acks.get(i);
            lane.open = reported >= lane.sent && position > max_offset;
            if lane.open {
                let waited_ms = lane.barrier_at.take().map_or(0, |t| t.elapsed().as_millis() as u64);
                info!(task = i, waited_ms, held = lane.held.len(), "local shortcut to the task open");
            }
        }
        lane.open
    }

    /// Where `item`, a record for `partition`, goes. `position` is the local task's next
    /// repartition offset: `None` if the task is not here or is restoring.
    pub fn route(&mut self, partition: i32, position: Option<i64>, acks: &Acks, item: T) -> Route<T> {
        let Some(i) = self.index(partition).filter(|_| self.enabled) else {
            return Route::Send(vec![item]);
        };
        let Some(position) = position else {
            let mut items = self.take_held(i);
            items.push(item);
            return self.send(i, items);
        };
        if self.try_open(i, position, acks) {
            return Route::Apply(self.take_held(i), item);
        }
        let lane = &mut self.lanes[i];
        if lane.barrier_sent {
            lane.held.push(item);
            self.held += 1;
            return Route::Held;
        }
        self.send(i, vec![item])
    }

    /// Whether the processor should probe `partition`'s repartition partition now (see the
    /// module's doc): the lane is closed, has sent no barrier, was not probed since it closed,
    /// and every record this instance sent there is acknowledged, so that the watermark the
    /// probe reads covers them all. Nothing may be sent to the partition between this and
    /// [`Shortcut::probed`].
    pub fn wants_probe(&self, partition: i32, acks: &Acks) -> bool {
        let Some(i) = self.index(partition).filter(|_| self.enabled) else {
            return false;
        };
        let lane = &self.lanes[i];
        !lane.open && !lane.barrier_sent && !lane.probed && acks.get(i).0 >= lane.sent
    }

    /// The probe's answer: `drained` when the broker's high watermark of the repartition
    /// partition was at or below the task's position (nothing there for the task to consume).
    /// The lane then opens without a barrier; otherwise (or if the probe failed) the next
    /// record goes the long way as the barrier.
    pub fn probed(&mut self, partition: i32, drained: bool) {
        let Some(i) = self.index(partition) else { return };
        let lane = &mut self.lanes[i];
        lane.probed = true;
        if drained && !lane.barrier_sent {
            lane.open = true;
            info!(task = i, "local shortcut to the task open: its repartition partition is drained, no barrier needed");
        }
    }

    fn take_held(&mut self, i: usize) -> Vec<T> {
        let held = std::mem::take(&mut self.lanes[i].held);
        self.held -= held.len();
        held
    }

    fn send(&mut self, i: usize, items: Vec<T>) -> Route<T> {
        let lane = &mut self.lanes[i];
        lane.sent += items.len() as u64;
        if !lane.barrier_sent {
            lane.barrier_at = Some(Instant::now());
        }
        lane.barrier_sent = true;
        lane.open = false;
        Route::Send(items)
    }

    /// Held records whose lane has just opened, to apply now, per partition.
    pub fn release(&mut self, position: impl Fn(i32) -> Option<i64>, acks: &Acks) -> Vec<(i32, Vec<T>)> {
        if self.held == 0 {
            return Vec::new();
        }
        let mut released = Vec::new();
        for i in 0..self.lanes.len() {
            if self.lanes[i].held.is_empty() {
                continue;
            }
            let partition = i as i32;
            if let Some(p) = position(partition) {
                if self.try_open(i, p, acks) {
                    released.push((partition, self.take_held(i)));
                }
            }
        }
        released
    }

    /// Closes every lane (partitions were assigned or are being revoked): a lane opens again
    /// after a new barrier. Held records are returned, to be sent now (they are the barrier).
    pub fn close_all(&mut self) -> Vec<(i32, Vec<T>)> {
        let mut to_send = Vec::new();
        for i in 0..self.lanes.len() {
            let items = self.take_held(i);
            let lane = &mut self.lanes[i];
            lane.open = false;
            lane.probed = false;
            lane.barrier_sent = !items.is_empty();
            lane.barrier_at = lane.barrier_sent.then(Instant::now);
            lane.sent += items.len() as u64;
            if !items.is_empty() {
                to_send.push((i as i32, items));
            }
        }
        to_send
    }

    /// The processor went back to its last commit: held records are dropped (their input is
    /// read again) and every lane closes. `new_producer`: acknowledgements count from zero.
    pub fn reset(&mut self, new_producer: bool) {
        for lane in &mut self.lanes {
            lane.open = false;
            lane.probed = false;
            lane.barrier_sent = false;
            lane.barrier_at = None;
            lane.held.clear();
            if new_producer {
                lane.sent = 0;
            }
        }
        self.held = 0;
    }

    /// How many records are held.
    pub fn held_count(&self) -> usize {
        self.held
    }

    /// Whether routing should wait for the tasks to catch up (see [`MAX_HELD`]).
    pub fn saturated(&self) -> bool {
        self.held >= MAX_HELD
    }

    /// Whether any record is held.
    pub fn holding(&self) -> bool {
        self.held > 0
    }

    /// Every record held now.
    pub fn held(&self) -> impl Iterator<Item = &T> {
        self.lanes.iter().flat_map(|l| l.held.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send<T>(r: Route<T>) -> Vec<T> {
        match r {
            Route::Send(items) => items,
            _ => panic!("expected Send"),
        }
    }

    #[test]
    fn a_lane_opens_only_after_its_barrier_is_acknowledged_and_consumed() {
        let acks = Acks::new(2);
        let mut s = Shortcut::new(true, 2);
        // No barrier yet: the repartition partition may hold records routed by another
        // instance, so the first record goes the long way.
        assert_eq!(send(s.route(0, Some(10), &acks, 1)), vec![1]);
        // Later ones wait for it.
        assert_eq!(s.route(0, Some(10), &acks, 2), Route::Held);
        assert_eq!(s.route(0, Some(10), &acks, 3), Route::Held);
        assert!(s.holding());
        assert!(s.release(|_| Some(10), &acks).is_empty(), "not acknowledged yet");
        acks.report(0, Some(42));
        assert!(s.release(|_| Some(42), &acks).is_empty(), "the task has not consumed it yet");
        assert_eq!(s.release(|_| Some(43), &acks), vec![(0, vec![2, 3])]);
        assert!(!s.holding());
        // Open: straight to the task, and it stays open.
        assert_eq!(s.route(0, Some(43), &acks, 4), Route::Apply(vec![], 4));
        assert_eq!(s.route(0, Some(43), &acks, 5), Route::Apply(vec![], 5));
        // The other lane is independent.
        assert_eq!(send(s.route(1, Some(43), &acks, 6)), vec![6]);
    }

    #[test]
    fn held_records_come_first_when_the_lane_opens_on_a_new_record() {
        let acks = Acks::new(1);
        let mut s = Shortcut::new(true, 1);
        send(s.route(0, Some(0), &acks, 1));
        assert_eq!(s.route(0, Some(0), &acks, 2), Route::Held);
        acks.report(0, Some(0));
        assert_eq!(s.route(0, Some(1), &acks, 3), Route::Apply(vec![2], 3));
        assert_eq!(s.held().count(), 0);
    }

    #[test]
    fn a_failed_delivery_counts_as_reported_but_moves_no_offset() {
        let acks = Acks::new(1);
        let mut s = Shortcut::new(true, 1);
        send(s.route(0, None, &acks, 1));
        send(s.route(0, None, &acks, 2));
        acks.report(0, Some(7));
        acks.report(0, None);
        assert_eq!(s.route(0, Some(7), &acks, 3), Route::Held);
        assert_eq!(s.route(0, Some(8), &acks, 4), Route::Apply(vec![3], 4));
    }

    #[test]
    fn a_restoring_task_gets_everything_the_long_way_held_records_first() {
        let acks = Acks::new(1);
        let mut s = Shortcut::new(true, 1);
        send(s.route(0, Some(0), &acks, 1));
        assert_eq!(s.route(0, Some(0), &acks, 2), Route::Held);
        assert_eq!(send(s.route(0, None, &acks, 3)), vec![2, 3]);
        assert_eq!(send(s.route(0, None, &acks, 4)), vec![4]);
    }

    #[test]
    fn closing_sends_what_is_held_and_needs_a_new_barrier() {
        let acks = Acks::new(2);
        let mut s = Shortcut::new(true, 2);
        send(s.route(0, Some(0), &acks, 1));
        acks.report(0, Some(5));
        assert_eq!(s.route(0, Some(6), &acks, 2), Route::Apply(vec![], 2));
        send(s.route(1, Some(0), &acks, 10));
        assert_eq!(s.route(1, Some(0), &acks, 11), Route::Held);
        // Input partitions assigned: lane 0 needs a new barrier; lane 1's held record is sent
        // and is its barrier.
        assert_eq!(s.close_all(), vec![(1, vec![11])]);
        assert_eq!(send(s.route(0, Some(6), &acks, 3)), vec![3]);
        assert_eq!(s.route(1, Some(0), &acks, 12), Route::Held);
        acks.report(0, Some(9));
        assert_eq!(s.route(0, Some(9), &acks, 4), Route::Held);
        assert_eq!(s.route(0, Some(10), &acks, 5), Route::Apply(vec![4], 5));
        // Lane 1: two sent (10, 11), one acknowledged.
        acks.report(1, Some(20));
        assert!(s.release(|_| Some(100), &acks).is_empty());
        acks.report(1, Some(21));
        assert_eq!(s.release(|_| Some(22), &acks), vec![(1, vec![12])]);
    }

    #[test]
    fn routing_waits_while_max_held_records_are_held() {
        let acks = Acks::new(2);
        let mut s = Shortcut::new(true, 2);
        send(s.route(0, Some(0), &acks, 0));
        send(s.route(1, Some(0), &acks, 0));
        for i in 1..MAX_HELD {
            assert_eq!(s.route((i % 2) as i32, Some(0), &acks, i), Route::Held);
        }
        assert!(!s.saturated());
        assert_eq!(s.route(0, Some(0), &acks, MAX_HELD), Route::Held);
        assert!(s.saturated());
        acks.report(0, Some(0));
        let released = s.release(|_| Some(1), &acks);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].1.len(), MAX_HELD / 2, "lane 0 held the even ones");
        assert!(released[0].1.windows(2).all(|w| w[0] < w[1]), "in the order they came");
        assert!(!s.saturated());
    }

    #[test]
    fn reset_drops_what_is_held_and_a_new_producer_counts_from_zero() {
        let old = Acks::new(1);
        let mut s = Shortcut::new(true, 1);
        send(s.route(0, Some(0), &old, 1));
        assert_eq!(s.route(0, Some(0), &old, 2), Route::Held);
        s.reset(true);
        assert_eq!(s.held().count(), 0);
        let new = Acks::new(1);
        send(s.route(0, Some(0), &new, 3));
        // The old producer's unreported record does not hold the new one's lane shut.
        new.report(0, Some(20));
        assert_eq!(s.route(0, Some(20), &new, 4), Route::Held);
        assert_eq!(s.route(0, Some(21), &new, 5), Route::Apply(vec![4], 5));
    }

    #[test]
    fn a_drained_partition_opens_the_lane_without_a_barrier() {
        let acks = Acks::new(2);
        let mut s: Shortcut<i32> = Shortcut::new(true, 2);
        assert!(s.wants_probe(0, &acks));
        s.probed(0, true);
        assert_eq!(s.route(0, Some(0), &acks, 1), Route::Apply(vec![], 1), "nothing to wait for");
        assert!(!s.wants_probe(0, &acks), "open: nothing to probe");
        // Not drained: the next record is the barrier, and the lane is not probed again.
        assert!(s.wants_probe(1, &acks));
        s.probed(1, false);
        assert!(!s.wants_probe(1, &acks));
        assert_eq!(send(s.route(1, Some(0), &acks, 2)), vec![2]);
        assert_eq!(s.route(1, Some(0), &acks, 3), Route::Held);
    }

    #[test]
    fn a_lane_is_probed_only_once_its_own_records_are_acknowledged_and_before_any_barrier() {
        let acks = Acks::new(1);
        let mut s: Shortcut<i32> = Shortcut::new(true, 1);
        s.probed(0, false);
        send(s.route(0, Some(0), &acks, 1));
        acks.report(0, Some(0));
        assert_eq!(s.route(0, Some(1), &acks, 2), Route::Apply(vec![], 2));
        // Closed again, with the barrier's record still unacknowledged.
        s.close_all();
        assert!(s.wants_probe(0, &acks), "closing re-arms the probe");
        send(s.route(0, None, &acks, 3)); // the task is restoring: the long way
        assert!(!s.wants_probe(0, &acks), "a barrier is out: the probe is not needed");
        s.reset(false);
        assert!(!s.wants_probe(0, &acks), "record 3 is not acknowledged: a watermark read now could miss it");
        acks.report(0, Some(1));
        assert!(s.wants_probe(0, &acks));
        s.probed(0, true);
        assert_eq!(s.route(0, Some(2), &acks, 4), Route::Apply(vec![], 4));
    }

    #[test]
    fn disabled_or_out_of_range_always_sends() {
        let acks = Acks::new(1);
        let mut off = Shortcut::new(false, 1);
        send(off.route(0, Some(0), &acks, 1));
        acks.report(0, Some(0));
        assert_eq!(send(off.route(0, Some(10), &acks, 2)), vec![2]);
        assert!(!off.wants_probe(0, &acks), "disabled: never probed");
        let mut on = Shortcut::new(true, 1);
        assert!(!on.wants_probe(5, &acks));
        assert_eq!(send(on.route(5, Some(10), &acks, 3)), vec![3]);
        assert_eq!(send(on.route(-1, Some(10), &acks, 4)), vec![4]);
    }
}

//! Sustained throughput: input events per second while the middle of a run's output arrived.
//!
//! A run measured from its process's start to its last output also counts its start-up: topic
//! creation, the consumer group's join, a restore, a JVM's warm-up. That is seconds for some
//! systems and less than one for others, and it is not the rate they sustain. So every
//! system's throughput is taken over the same part of its run: from its output at 10% to
//! its output at 90% (receipts for a processor, copied records for the passthrough). The
//! chat's events are spread evenly over its receipts (it is generated at an even rate), so
//! that part of the output stands for the same part of the input.

/// The two outputs (0-based, in arrival order) between which the rate is taken, of `n`.
pub fn marks(n: u64) -> (u64, u64) {
    (n / 10, n * 9 / 10)
}

/// Input events per second between the outputs at [`marks`], given when each arrived (epoch
/// ms): `events` scaled by the share of the `n` outputs between the marks. `None` when the two
/// arrived in the same millisecond or there are too few outputs to tell.
pub fn sustained(events: u64, n: u64, at_first_mark_ms: i64, at_second_mark_ms: i64) -> Option<f64> {
    let (first, second) = marks(n);
    let ms = at_second_mark_ms - at_first_mark_ms;
    if second <= first || ms <= 0 {
        return None;
    }
    Some(events as f64 * (second - first) as f64 / n as f64 * 1000.0 / ms as f64)
}

/// [`sustained`] over every output's arrival time (epoch ms, in any order).
pub fn sustained_of(events: u64, arrivals_ms: &mut [i64]) -> Option<f64> {
    arrivals_ms.sort_unstable();
    let n = arrivals_ms.len() as u64;
    let (first, second) = marks(n);
    let at = |i: u64| arrivals_ms.get(i as usize).copied();
    sustained(events, n, at(first)?, at(second)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_even_run_gives_its_rate_whatever_its_start_up() {
        // 1,000 outputs, one every 2 ms, for 10,000 input events (10 per output): 5,000 events/s.
        let mut arrivals: Vec<i64> = (0..1000).map(|i| 60_000 + 2 * i).collect();
        assert_eq!(sustained_of(10_000, &mut arrivals), Some(5_000.0));
        // The same run after a 30 s start-up, and with its first and last outputs late: the
        // middle is unchanged.
        let mut late: Vec<i64> = (0..1000).map(|i| 90_000 + 2 * i).collect();
        late[0] = 99_000;
        late[999] = 120_000;
        assert_eq!(sustained_of(10_000, &mut late), Some(5_000.0));
    }

    #[test]
    fn a_slower_middle_shows() {
        // Outputs 101..=900 come twice as far apart as the rest: the rate is that of the middle.
        let mut t = 0;
        let mut arrivals = Vec::new();
        for i in 0..1000 {
            t += if (101..=900).contains(&i) { 4 } else { 2 };
            arrivals.push(t);
        }
        assert_eq!(sustained_of(10_000, &mut arrivals), Some(2_500.0));
    }

    #[test]
    fn too_few_outputs_give_no_rate() {
        assert_eq!(sustained_of(100, &mut []), None);
        assert_eq!(sustained_of(100, &mut [5]), None);
        assert_eq!(sustained_of(100, &mut [5, 5, 5, 5, 5, 5, 5, 5, 5, 5]), None);
        assert_eq!(sustained(100, 10, 7, 7), None);
    }
}

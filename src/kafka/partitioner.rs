//! Which partition a room lives in: Kafka's default partitioner for keyed records
//! (murmur2 of the key, made positive, modulo the partition count).
//!
//! Every allread instance, the Java clients and Kafka Streams compute the same partition for
//! the same room id, across processes and restarts. librdkafka's default partitioner
//! (`consistent_random`, CRC32) would not, so allread computes partitions itself and sets
//! `partitioner=murmur2_random` on its producers for the records it keys but does not place.

/// Kafka's `Utils.murmur2`.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition of `key` among `partitions`, as Kafka's Java producer computes it.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    assert!(partitions > 0, "a topic has at least one partition");
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with `org.apache.kafka.common.utils.Utils` from kafka-clients 4.4.0:
    /// (key, murmur2, toPositive(murmur2) % 12).
    const JAVA: &[(&str, i32, i32)] = &[
        ("21", -973932308, 0),
        ("foobar", -790332482, 6),
        ("a-little-bit-long-string", -985981536, 8),
        ("a-little-bit-longer-string", -1486304829, 11),
        ("lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971, 5),
        ("abc", 479470107, 3),
        ("12345", -1188365604, 8),
        ("room-7", 1912488984, 0),
        ("", 275646681, 9),
    ];

    #[test]
    fn matches_the_java_client() {
        for &(key, hash, partition) in JAVA {
            assert_eq!(murmur2(key.as_bytes()), hash, "murmur2({key:?})");
            assert_eq!(partition_for(key.as_bytes(), 12), partition, "partition of {key:?}");
        }
    }
}

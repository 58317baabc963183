//! The restore consumer against the real broker, driven the way restores drive it: several
//! partitions reaching their end together and leaving one after another with no pause between
//! them. Replacing the whole assignment at each step (what allread did before) aborts the
//! process inside librdkafka within a few rounds (librdkafka issue 5573); see
//! `src/runtime/changelog_reader.rs`.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use allread::runtime::changelog_reader::{ChangelogReader, REASSIGN_AFTER};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};

const PARTITIONS: i32 = 8;
const PER_PARTITION: i64 = 500;

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

/// Reads every assigned partition to its end, removing each as soon as its end is reported
/// (those reported in one poll batch leave back to back). Returns the records read per partition.
/// Other consumer errors are passed over, as a restore retries them: librdkafka reports a
/// passing one too (`AllBrokersDown` once failed this test on a broker just started).
fn read_to_ends(reader: &mut ChangelogReader) -> BTreeMap<i32, i64> {
    let mut counts = BTreeMap::new();
    let mut last_error = None;
    let deadline = Instant::now() + Duration::from_secs(60);
    while reader.assigned().next().is_some() {
        assert!(
            Instant::now() < deadline,
            "partitions never reached their end: {counts:?}; the last consumer error: {last_error:?}"
        );
        let mut ends = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while let Some(r) = reader.poll(timeout) {
            timeout = Duration::ZERO;
            match r {
                Ok(m) => {
                    if reader.assigned().any(|p| p == m.partition()) {
                        *counts.entry(m.partition()).or_insert(0) += 1;
                    }
                }
                Err(KafkaError::PartitionEOF(p)) => ends.push(p),
                Err(e) => last_error = Some(e),
            }
        }
        for p in ends {
            reader.remove(p);
        }
    }
    counts
}

#[test]
fn restores_ending_together_leave_the_reader_one_by_one_without_aborting() {
    let bootstrap = common::broker();
    let topic = common::unique("changelog_reader_");
    common::create_topic(&bootstrap, &topic, PARTITIONS);
    let producer: ThreadedProducer<_> = client(&bootstrap).create().unwrap();
    for i in 0..PER_PARTITION * PARTITIONS as i64 {
        let key = i.to_string();
        let partition = (i % PARTITIONS as i64) as i32;
        producer.send(BaseRecord::to(&topic).partition(partition).key(&key).payload(&key)).unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();

    let everything: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, PER_PARTITION)).collect();
    for round in 0..20 {
        let mut reader = ChangelogReader::new(client(&bootstrap), &common::unique("restore_"), &topic).unwrap();
        for p in 0..PARTITIONS {
            assert!(reader.add(p, 0).unwrap());
        }
        assert_eq!(read_to_ends(&mut reader), everything, "round {round}");
    }

    // A partition that just left comes back only after REASSIGN_AFTER, and then reads from
    // where it is asked to.
    let mut reader = ChangelogReader::new(client(&bootstrap), &common::unique("restore_"), &topic).unwrap();
    assert!(reader.add(3, 0).unwrap());
    reader.remove(3);
    assert!(!reader.add(3, PER_PARTITION / 2).unwrap(), "re-added at once");
    std::thread::sleep(REASSIGN_AFTER);
    assert!(reader.add(3, PER_PARTITION / 2).unwrap());
    assert_eq!(read_to_ends(&mut reader), BTreeMap::from([(3, PER_PARTITION / 2)]));
}

//! The restore consumer: reads changelog partitions into restoring tasks.
//!
//! It is never in a group (assigned, not subscribed), reads `read_committed` and reports the
//! end of each partition (`enable.partition.eof`), which is how a restore knows it is done:
//! under transactions the last offset is a commit marker, so "offset + 1 = end" cannot tell.
//!
//! Partitions join and leave it one at a time (`incremental_assign` / `incremental_unassign`),
//! never by replacing the whole assignment. Replacing it stops every partition and starts the
//! survivors again, and when two restores end together the second replacement stops partitions
//! whose first stop is still in flight: librdkafka up to 2.15 then aborts the process
//! (`rd_kafka_assignment_partition_stopped: Assertion rktp->rktp_started failed`, librdkafka
//! issue 5573). That is what took CI down once; `tests/changelog_reader_kafka.rs` drives the
//! pattern that triggered it.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{error, warn};

/// How long a partition stays out after leaving. Removing a partition is asynchronous in
/// librdkafka (its fetcher stops a little later); one added back and removed again before that
/// is stopped twice, which is the abort above. Restoring the same task again this soon only
/// happens when it is revoked and reassigned at once, and then waiting a second is harmless.
pub const REASSIGN_AFTER: Duration = Duration::from_secs(1);

pub struct RestoreContext;

impl ClientContext for RestoreContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_) | KafkaError::Global(RDKafkaErrorCode::PartitionEOF)) {
            error!(error = %error, reason, "changelog consumer error");
        }
    }
}

impl ConsumerContext for RestoreContext {}

pub struct ChangelogReader {
    consumer: BaseConsumer<RestoreContext>,
    topic: String,
    assigned: BTreeSet<i32>,
    /// When each partition last left the assignment.
    released: HashMap<i32, Instant>,
}

/// The settings a restore needs, on top of the client's (which `kafka.*` properties may
/// have set): these win over them.
pub(crate) fn restore_config(mut config: ClientConfig, group: &str) -> ClientConfig {
    config
        .remove("group.instance.id")
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        // A restore ends at the first empty fetch: do not let the broker hold it.
        .set("fetch.wait.max.ms", "10");
    config
}

impl ChangelogReader {
    /// A reader of `topic`, from a client configuration (brokers, security, passthrough
    /// properties) to which it adds its own settings. `group` is never joined: librdkafka
    /// needs one to assign partitions.
    pub fn new(config: ClientConfig, group: &str, topic: &str) -> KafkaResult<Self> {
        Ok(ChangelogReader {
            consumer: restore_config(config, group).create_with_context(RestoreContext)?,
            topic: topic.to_string(),
            assigned: BTreeSet::new(),
            released: HashMap::new(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition's low and high watermarks.
    pub fn watermarks(&self, partition: i32, timeout: Duration) -> KafkaResult<(i64, i64)> {
        self.consumer.fetch_watermarks(&self.topic, partition, timeout)
    }

    /// Starts reading `partition` at `from`. `Ok(false)`: it left less than
    /// [`REASSIGN_AFTER`] ago; ask again later. Adding a partition already being read
    /// changes nothing.
    pub fn add(&mut self, partition: i32, from: i64) -> KafkaResult<bool> {
        if self.assigned.contains(&partition) {
            return Ok(true);
        }
        if self.released.get(&partition).is_some_and(|t| t.elapsed() < REASSIGN_AFTER) {
            return Ok(false);
        }
        let mut tpl = TopicPartitionList::new();
        crate::kafka::add_offset(&mut tpl, &self.topic, partition, from)?;
        self.consumer.incremental_assign(&tpl)?;
        self.assigned.insert(partition);
        Ok(true)
    }

    /// Stops reading `partition`; nothing if it is not being read.
    pub fn remove(&mut self, partition: i32) {
        if !self.assigned.remove(&partition) {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, partition);
        if let Err(e) = self.consumer.incremental_unassign(&tpl) {
            warn!(partition, error = %e, "removing a changelog partition from the restore consumer");
        }
        self.released.insert(partition, Instant::now());
    }

    /// The partitions being read.
    pub fn assigned(&self) -> impl Iterator<Item = i32> + '_ {
        self.assigned.iter().copied()
    }

    /// The next record, or `Err(PartitionEOF(p))` when partition `p` reached its end.
    /// Records of partitions no longer being read may still arrive; skip them.
    pub fn poll(&self, timeout: Duration) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.consumer.poll(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restore_reads_committed_records_and_is_never_a_static_member() {
        let mut base = ClientConfig::new();
        base.set("group.instance.id", "member-1").set("isolation.level", "read_uncommitted");
        let c = restore_config(base, "g");
        assert_eq!(c.get("group.instance.id"), None, "never a static member of the group");
        assert_eq!(c.get("isolation.level"), Some("read_committed"), "over a kafka.* setting");
        assert_eq!(c.get("group.id"), Some("g"));
    }
}

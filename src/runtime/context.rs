//! The consumer's callbacks: rebalances open, resume, commit and close tasks.
//!
//! librdkafka calls these from inside `poll`, on the processing thread; the loop never holds
//! the processor's lock while polling, so the callback can take it.

use std::sync::{Arc, Mutex};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tracing::{error, info};

use super::processor::Processor;
use crate::kafka::records::Forwarding;

pub struct RuntimeContext {
    pub(crate) processor: Arc<Mutex<Processor>>,
    /// Sends assigned partitions' records to the loop's record queue (see `kafka::records`).
    pub(crate) forwarding: Forwarding,
}

impl ClientContext for RuntimeContext {}

impl ConsumerContext for RuntimeContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let mut processor = self.processor.lock().unwrap_or_else(|p| p.into_inner());
        let result: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                info!(partitions = tpl.count(), "partitions assigned");
                let paused = processor.on_assign(consumer, tpl);
                // Before the assignment starts their fetches (see `kafka::records`).
                self.forwarding.forward(consumer, tpl);
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                // Tasks restore before they process: their partitions wait, paused.
                assigned.and_then(|()| if paused.count() > 0 { consumer.pause(&paused) } else { Ok(()) })
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let lost = consumer.assignment_lost();
                info!(partitions = tpl.count(), lost, "partitions revoked");
                processor.on_revoke(consumer, tpl, lost);
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                error!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            error!(error = %e, "applying a rebalance failed");
        }
    }
}

//! Room topics found by listing the cluster's topics, for the input consumer's subscription.
//!
//! Subscribed by pattern, librdkafka asks for the metadata of every topic in the cluster at
//! each refresh, and then, on its main thread, matches its whole metadata cache against the
//! pattern in time quadratic in the cluster's topics (`rd_kafka_metadata_cache_topics_to_list`
//! looks each cached topic up in the list it is building). With 6,078 topics on the broker
//! that was 0.13 s of CPU at every refresh: 0.026 of a core for an idle instance refreshing
//! every 5 s, and in a profiled benchmark round librdkafka's main thread took 9% of the
//! samples against the processing thread's 47%. While it applies the answer, its locks hold
//! up the processing thread (BENCHMARKS.md, 7 December, a twenty-seventh session).
//!
//! So allread lists the topics itself, every `processing.metadata_refresh_ms`, on a client of
//! its own that holds no topic handles (the answer costs it time linear in the cluster's
//! topics), matches the pattern here, and subscribes the consumer to the room topics by name.
//! librdkafka then refreshes the metadata of those topics only, at its own interval, and a new
//! room is picked up by subscribing again with one name more (an incremental rebalance, as a
//! new topic matching the pattern was).

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaResult;
use regex::Regex;
use tracing::warn;

/// Lists the topics whose names match the room pattern.
pub struct RoomTopics {
    client: BaseConsumer,
    pattern: Regex,
    /// allread's own topics, never room topics even where the pattern matches them.
    exclude: Vec<String>,
}

impl RoomTopics {
    /// A lister over its own client, made from `config` (brokers, security); `pattern` is a
    /// regular expression (checked by the configuration's validation).
    pub fn new(config: &ClientConfig, pattern: &str, exclude: &[&str]) -> KafkaResult<Self> {
        let pattern = Regex::new(pattern).map_err(|e| {
            rdkafka::error::KafkaError::ClientCreation(format!("the room pattern {pattern:?} is not a regex: {e}"))
        })?;
        Ok(RoomTopics { client: config.create()?, pattern, exclude: exclude.iter().map(|t| t.to_string()).collect() })
    }

    /// The room topics in the cluster now, sorted. A topic whose metadata carries an error
    /// (being created or deleted) is left for a later listing, as librdkafka leaves it out of
    /// a pattern's match.
    pub fn list(&self, timeout: Duration) -> KafkaResult<Vec<String>> {
        let metadata = self.client.fetch_metadata(None, timeout)?;
        let mut topics: Vec<String> = metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && self.is_room(t.name()))
            .map(|t| t.name().to_string())
            .collect();
        topics.sort_unstable();
        Ok(topics)
    }

    fn is_room(&self, topic: &str) -> bool {
        self.pattern.is_match(topic) && !self.exclude.iter().any(|t| t == topic)
    }
}

/// Lists the room topics every `interval` on a thread of its own, and hands over each list
/// that differs from the one before. Stopped and joined when dropped.
pub struct RoomWatch {
    lists: Receiver<Vec<String>>,
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// How long one listing may take before it is given up (and tried again at the next interval).
const LIST_TIMEOUT: Duration = Duration::from_secs(10);

impl RoomWatch {
    /// Starts watching; `known` is the list the consumer is subscribed with.
    pub fn start(topics: RoomTopics, known: Vec<String>, interval: Duration) -> std::io::Result<Self> {
        let (list_tx, lists) = mpsc::channel();
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("room-topics".into())
            .spawn(move || watch(&topics, known, interval, &stopped, &list_tx))?;
        Ok(RoomWatch { lists, stop: Some(stop), thread: Some(thread) })
    }

    /// The newest list found since the last call, if the room topics changed.
    pub fn changed(&self) -> Option<Vec<String>> {
        self.lists.try_iter().last()
    }
}

fn watch(
    topics: &RoomTopics,
    mut known: Vec<String>,
    interval: Duration,
    stopped: &Receiver<()>,
    lists: &Sender<Vec<String>>,
) {
    let mut last_warning: Option<Instant> = None;
    loop {
        match stopped.recv_timeout(interval) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        match topics.list(LIST_TIMEOUT) {
            Ok(found) if found != known => {
                known = found.clone();
                if lists.send(found).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    warn!(error = %e, "listing the cluster's topics for new rooms failed (retrying)");
                    last_warning = Some(Instant::now());
                }
            }
        }
    }
}

impl Drop for RoomWatch {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_topic_matches_the_pattern_and_is_none_of_allread_own_topics() {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:1");
        let rooms = RoomTopics::new(&config, "^chatroom_.*", &["chatroom_reads"]).unwrap();
        assert!(rooms.is_room("chatroom_r1"));
        assert!(!rooms.is_room("chatroom_reads"), "allread's own topic");
        assert!(!rooms.is_room("x_chatroom_r1"), "anchored");
        assert!(RoomTopics::new(&config, "^chatroom_(", &[]).is_err(), "not a regex");
    }
}

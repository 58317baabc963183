//! The topics allread owns: created when missing, checked when present.
//!
//! allread creates its repartition topic, its dead-letter topic and (if absent) the output
//! topic. It refuses to start when an existing topic contradicts what it needs: a
//! repartition topic with another partition count would send rooms to the wrong tasks.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::Config;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("talking to Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("creating topic {topic}: {code}")]
    Create { topic: String, code: RDKafkaErrorCode },
    #[error("topic {topic} has {found} partitions but allread needs {expected} (topics.partitions); use another application_id or recreate the topic")]
    PartitionMismatch { topic: String, expected: i32, found: i32 },
}

impl AdminError {
    /// Whether waiting and trying again may help (the broker may be starting).
    pub fn is_retriable(&self) -> bool {
        matches!(self, AdminError::Kafka(_) | AdminError::Create { .. })
    }
}

/// What allread needs of one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    /// Require exactly `partitions` when the topic exists already.
    pub exact_partitions: bool,
    pub config: Vec<(String, String)>,
}

fn settings(t: &crate::topology::TopicSettings) -> Vec<(String, String)> {
    t.config.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// allread's own topics: names, partitions and replication from the configuration, topic-level
/// settings from the topology file.
pub fn owned_topics(cfg: &Config) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    vec![
        TopicSpec {
            name: cfg.repartition_topic(),
            partitions: t.partitions,
            replication: t.replication_factor,
            exact_partitions: true,
            config: settings(&cfg.topology.repartition),
        },
        TopicSpec {
            name: cfg.changelog_topic(),
            partitions: t.partitions,
            replication: t.replication_factor,
            exact_partitions: true,
            // Compacted: the latest value of every key is the state; a delete is a tombstone.
            config: settings(&cfg.topology.changelog),
        },
        TopicSpec {
            name: cfg.dlq_topic(),
            partitions: t.dlq_partitions,
            replication: t.replication_factor,
            exact_partitions: false,
            config: settings(&cfg.topology.dlq),
        },
        TopicSpec {
            name: t.output.clone(),
            partitions: t.output_partitions.unwrap_or(t.partitions),
            replication: t.replication_factor,
            exact_partitions: false,
            config: settings(&cfg.topology.output),
        },
    ]
}

/// Partition count of `topic`, or `None` if it does not exist.
pub fn partition_count(
    client: &AdminClient<DefaultClientContext>,
    topic: &str,
    timeout: Duration,
) -> Result<Option<i32>, KafkaError> {
    let metadata = client.inner().fetch_metadata(Some(topic), timeout)?;
    Ok(metadata.topics().iter().find(|t| t.name() == topic).and_then(|t| match t.error() {
        None => Some(t.partitions().len() as i32),
        Some(_) => None,
    }))
}

/// Creates what is missing, checks what exists; returns the names of the topics it created.
pub fn ensure_topics(client_config: &ClientConfig, specs: &[TopicSpec]) -> Result<Vec<String>, AdminError> {
    let admin: AdminClient<DefaultClientContext> = client_config.create()?;
    let timeout = Duration::from_secs(10);
    let mut missing = Vec::new();
    for spec in specs {
        match partition_count(&admin, &spec.name, timeout)? {
            Some(found) if spec.exact_partitions && found != spec.partitions => {
                return Err(AdminError::PartitionMismatch {
                    topic: spec.name.clone(),
                    expected: spec.partitions,
                    found,
                })
            }
            Some(_) => {}
            None => missing.push(spec),
        }
    }
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let new_topics: Vec<NewTopic> = missing
        .iter()
        .map(|s| {
            let mut t = NewTopic::new(&s.name, s.partitions, TopicReplication::Fixed(s.replication));
            for (k, v) in &s.config {
                t = t.set(k, v);
            }
            t
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = futures::executor::block_on(admin.create_topics(&new_topics, &opts))?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(name) => {
                tracing::info!(topic = %name, "created topic");
                created.push(name);
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, code }),
        }
    }
    // A topic created concurrently by another instance must still have the right shape.
    for spec in missing.iter().filter(|s| s.exact_partitions) {
        if let Some(found) = partition_count(&admin, &spec.name, timeout)? {
            if found != spec.partitions {
                return Err(AdminError::PartitionMismatch {
                    topic: spec.name.clone(),
                    expected: spec.partitions,
                    found,
                });
            }
        }
    }
    Ok(created)
}

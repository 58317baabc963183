//! allread's settings: one typed tree with a default for every value, read from a TOML file
//! and overridden by command-line flags. Unknown keys are rejected, naming the key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::codec::DecodeLimits;
use crate::receipts::EngineConfig;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Names the consumer group, the internal topics and the state directory, as Kafka
    /// Streams' `application.id` does. Instances with the same id share the work.
    pub application_id: String,
    pub bootstrap_servers: String,
    /// Where each task keeps its RocksDB state (`<state_dir>/<application_id>/task-<n>`).
    pub state_dir: PathBuf,
    pub topics: Topics,
    pub processing: Processing,
    pub http: Http,
    pub engine: EngineConfig,
    /// librdkafka properties passed to every client (consumer, producer, admin) unchanged,
    /// e.g. `"security.protocol" = "SASL_SSL"`. They override allread's own choices.
    pub kafka: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Room topics are named `<room_prefix><room_id>`.
    pub room_prefix: String,
    /// The regex subscription that finds room topics; it should only match names that
    /// start with `room_prefix`.
    pub room_pattern: String,
    pub read: String,
    pub output: String,
    /// Partitions of the repartition topic: the number of tasks.
    pub partitions: i32,
    /// Replication factor of the topics allread creates.
    pub replication_factor: i32,
    /// Partitions of the output topic, if allread creates it (default: `partitions`).
    pub output_partitions: Option<i32>,
    pub dlq_partitions: i32,
    /// `retention.ms` of the repartition topic.
    pub repartition_retention_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Http {
    /// Where `/metrics`, `/healthz`, `/readyz` and the state queries are served
    /// (`host:port`; port 0 picks a free one, logged at start).
    pub listen: String,
    /// The `host:port` at which other instances and clients reach this instance's HTTP
    /// server, as Kafka Streams' `application.server`. Instances advertise it through the
    /// consumer group, and a query for a room whose task is elsewhere is redirected to the
    /// owner. Unset: such queries get an error naming the task instead.
    pub advertised: Option<String>,
}

impl Default for Http {
    fn default() -> Self {
        Self { listen: "0.0.0.0:9464".into(), advertised: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Processing {
    /// How often state, offsets and output are committed together.
    pub commit_interval_ms: u64,
    /// How often room topics matching the pattern are looked for.
    pub metadata_refresh_ms: u64,
    /// How often expiry (parked reads, pending messages, markers) runs.
    pub tick_interval_ms: u64,
    pub max_record_bytes: usize,
    pub max_id_bytes: usize,
    /// Records taken from the consumer per processing round.
    pub max_poll_records: usize,
    /// How long SIGTERM/SIGINT may take to commit and leave the group before exiting anyway.
    pub shutdown_timeout_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            application_id: "allread".into(),
            bootstrap_servers: "127.0.0.1:9092".into(),
            state_dir: PathBuf::from("allread-state"),
            topics: Topics::default(),
            processing: Processing::default(),
            http: Http::default(),
            engine: EngineConfig::default(),
            kafka: BTreeMap::new(),
        }
    }
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            room_prefix: "chatroom_".into(),
            room_pattern: "^chatroom_.*".into(),
            read: "read_events".into(),
            output: "receipt_complete".into(),
            partitions: 8,
            replication_factor: 1,
            output_partitions: None,
            dlq_partitions: 1,
            repartition_retention_ms: 7 * 24 * 3600 * 1000,
        }
    }
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            commit_interval_ms: 100,
            metadata_refresh_ms: 5_000,
            tick_interval_ms: 1_000,
            max_record_bytes: DecodeLimits::default().max_record_bytes,
            max_id_bytes: DecodeLimits::default().max_id_bytes,
            max_poll_records: 10_000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    /// Parses TOML; the error names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }

    pub fn repartition_topic(&self) -> String {
        format!("{}-events-repartition", self.application_id)
    }
    pub fn dlq_topic(&self) -> String {
        format!("{}-dlq", self.application_id)
    }
    pub fn task_dir(&self, partition: i32) -> PathBuf {
        self.state_dir.join(&self.application_id).join(format!("task-{partition:04}"))
    }
    pub fn decode_limits(&self) -> DecodeLimits {
        DecodeLimits { max_record_bytes: self.processing.max_record_bytes, max_id_bytes: self.processing.max_id_bytes }
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, reason: &str| Err(ConfigError::Invalid { key, reason: reason.to_string() });
        if self.application_id.is_empty()
            || !self.application_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return invalid(
                "application_id",
                "use letters, digits, '.', '_' and '-' (it names topics and directories)",
            );
        }
        if self.bootstrap_servers.trim().is_empty() {
            return invalid("bootstrap_servers", "must name at least one host:port");
        }
        if !self.topics.room_pattern.starts_with('^') {
            return invalid(
                "topics.room_pattern",
                "must be a regex starting with '^' (librdkafka's pattern subscription)",
            );
        }
        if self.topics.room_prefix.is_empty() {
            return invalid("topics.room_prefix", "must not be empty");
        }
        if self.topics.partitions < 1
            || self.topics.dlq_partitions < 1
            || self.topics.output_partitions.is_some_and(|p| p < 1)
        {
            return invalid("topics.partitions", "partition counts must be at least 1");
        }
        if self.topics.replication_factor < 1 {
            return invalid("topics.replication_factor", "must be at least 1");
        }
        if self.processing.commit_interval_ms == 0 || self.processing.tick_interval_ms == 0 {
            return invalid("processing.commit_interval_ms", "intervals must be positive");
        }
        if self.processing.max_poll_records == 0 {
            return invalid("processing.max_poll_records", "must be positive");
        }
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return invalid("http.listen", "must be an IP address and port, such as 0.0.0.0:9464");
        }
        if self.http.advertised.as_ref().is_some_and(|a| a.is_empty() || a.contains('/')) {
            return invalid("http.advertised", "must be host:port, such as allread-1:9464");
        }
        if self.processing.max_id_bytes == 0 || self.processing.max_id_bytes > 1024 {
            return invalid("processing.max_id_bytes", "must be between 1 and 1024");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_round_trip_through_toml() {
        let c = Config::default();
        c.validate().unwrap();
        let text = toml::to_string(&c).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), c);
    }

    #[test]
    fn unknown_keys_are_rejected_by_name() {
        let err = Config::from_toml("[topics]\nparitions = 3\n").unwrap_err();
        assert!(err.contains("paritions"), "{err}");
        let err = Config::from_toml("[engine]\nlarge_room_member_limit = \"many\"\n").unwrap_err();
        assert!(err.contains("large_room_member_limit") || err.contains("invalid type"), "{err}");
    }

    #[test]
    fn validation_names_the_setting() {
        let mut c = Config::default();
        c.topics.room_pattern = "chatroom_.*".into();
        assert!(c.validate().unwrap_err().to_string().contains("topics.room_pattern"));
    }
}

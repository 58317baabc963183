//! allread's settings: one typed tree with a default for every value, overridden in turn by
//! a TOML file, by `ALLREAD_<SECTION>__<KEY>` environment variables and by command-line
//! flags ([`Config::load`]). Unknown keys and values of the wrong type are rejected, naming
//! the key and where it came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    pub rocksdb: Rocksdb,
    /// A topology file to use instead of the embedded `topology/topology.toml` (the topic-level
    /// settings of the topics allread owns).
    pub topology_file: Option<PathBuf>,
    /// What `topology_file` (or the embedded file) holds; loaded by [`Config::load`].
    #[serde(skip)]
    pub topology: crate::topology::TopologySettings,
    /// librdkafka properties passed to every client (consumer, producer, admin) unchanged,
    /// e.g. `"security.protocol" = "SASL_SSL"`. They override allread's own choices.
    pub kafka: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Topics {
    /// Room topics are named `<room_prefix><room_id>`.
    pub room_prefix: String,
    /// The regex that finds room topics among the cluster's topics (see `kafka::discovery`);
    /// it should only match names that start with `room_prefix`.
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

/// The memory of the tasks' RocksDB stores, bounded together as Kafka Streams' documented
/// bounded-memory configuration does it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rocksdb {
    /// One budget, in bytes, for the block cache and the memtables of every task of the
    /// process together: the memtables are charged to the shared block cache and flushed once
    /// they hold half of it.
    pub memory_bytes: usize,
    /// A task's memtable is flushed at this size at the latest, in bytes.
    pub write_buffer_bytes: usize,
}

impl Default for Rocksdb {
    fn default() -> Self {
        Self { memory_bytes: 128 << 20, write_buffer_bytes: 16 << 20 }
    }
}

impl Default for Http {
    fn default() -> Self {
        Self { listen: "0.0.0.0:9464".into(), advertised: None }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Processing {
    /// `exactly_once` (Kafka transactions, as Kafka Streams' `exactly_once_v2`) or
    /// `at_least_once` (no transactions; after a crash some receipts may be emitted twice).
    pub guarantee: Guarantee,
    /// How often state, offsets and output are committed together (one transaction under
    /// `exactly_once`); unset, the guarantee's default (see [`Processing::commit_interval`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit_interval_ms: Option<u64>,
    /// `transaction.timeout.ms` of the transactional producer: how long a transaction left
    /// open by a crashed instance can hold back readers before the broker aborts it.
    pub transaction_timeout_ms: u64,
    /// How often room topics matching the pattern are looked for.
    pub metadata_refresh_ms: u64,
    /// How often expiry (parked reads, pending messages, markers) runs.
    pub tick_interval_ms: u64,
    pub max_record_bytes: usize,
    pub max_id_bytes: usize,
    /// Records taken from the consumer per processing round.
    pub max_poll_records: usize,
    /// How long routing waits for an input partition that has records not fetched yet,
    /// before going on out of timestamp order (Kafka Streams' `max.task.idle.ms`). A partition
    /// nothing was polled from since it was assigned gets at least 10 s (see the router).
    pub max_task_idle_ms: u64,
    /// The most input records a partition holds waiting to be routed before it is paused in
    /// the client, until routing has taken half of them (Kafka Streams'
    /// `buffered.records.per.partition`).
    pub buffered_records_per_partition: usize,
    /// Whether an input record whose task runs in this instance skips the repartition topic
    /// (see the README's "How it works").
    pub local_shortcut: bool,
    /// Changelog records a restore applies per processing round: larger restores faster,
    /// smaller keeps tasks that are already running more responsive meanwhile.
    pub restore_batch_records: usize,
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
            rocksdb: Rocksdb::default(),
            topology_file: None,
            topology: crate::topology::TopologySettings::default(),
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
        }
    }
}

/// What a consumer of the output can count on (see the README's "Guarantees").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    ExactlyOnce,
    AtLeastOnce,
}

impl Guarantee {
    pub fn name(self) -> &'static str {
        match self {
            Guarantee::ExactlyOnce => "exactly_once",
            Guarantee::AtLeastOnce => "at_least_once",
        }
    }
}

impl Processing {
    /// `commit_interval_ms` if set, else by guarantee, as Kafka Streams chooses it: 100 ms under
    /// `exactly_once` (Kafka Streams' default too), where receipts become visible when their
    /// transaction commits; 1 s under `at_least_once` (Kafka Streams': 30 s), where receipts
    /// are visible as soon as they are written and a commit only bounds what a crash makes the
    /// next start process again. Each commit writes one changelog record for every state key
    /// changed since the last: a read position moves with every read, so the longer interval
    /// writes fewer of them (at 250,000 events/s in the benchmark's chat, rooms of 10, 1 s
    /// wrote less than half the changelog records of 100 ms, BENCHMARKS.md), and the loop stops
    /// for a commit's flush 1 time a second, not 10. Longer still pays less: 5 s ran 4% more
    /// events/s over a backlog than 1 s, and held about 120 MB more at its peak.
    pub fn commit_interval(&self) -> Duration {
        Duration::from_millis(self.commit_interval_ms.unwrap_or(match self.guarantee {
            Guarantee::ExactlyOnce => 100,
            Guarantee::AtLeastOnce => 1_000,
        }))
    }
}

impl Default for Processing {
    fn default() -> Self {
        Self {
            guarantee: Guarantee::ExactlyOnce,
            commit_interval_ms: None,
            transaction_timeout_ms: 10_000,
            metadata_refresh_ms: 5_000,
            tick_interval_ms: 1_000,
            max_record_bytes: DecodeLimits::default().max_record_bytes,
            max_id_bytes: DecodeLimits::default().max_id_bytes,
            max_poll_records: 10_000,
            max_task_idle_ms: 1_000,
            buffered_records_per_partition: 1_000_000,
            local_shortcut: true,
            restore_batch_records: 50_000,
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
    /// An `ALLREAD_*` variable names an unknown setting or holds a value of the wrong type.
    #[error("environment variable {var} sets `{key}`: {message}")]
    Env { var: String, key: String, message: String },
    /// An `ALLREAD_*` variable whose name cannot be read as a setting's path.
    #[error("environment variable {var}: {reason}")]
    EnvName { var: String, reason: String },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// The prefix of the environment variables that hold settings.
const ENV_PREFIX: &str = "ALLREAD_";

/// Variables with the prefix that are not settings: the file's path (`--config`) and the
/// scripts' caches. Compared case-insensitively, as the settings' names are.
const NOT_SETTINGS: [&str; 4] = ["ALLREAD_CONFIG", "ALLREAD_CACHE", "ALLREAD_KAFKA_HOME", "ALLREAD_BENCH_DIR"];

/// The settings given as command-line flags: the last layer, over the environment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub bootstrap_servers: Option<String>,
    pub application_id: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// `topics.partitions`.
    pub partitions: Option<i32>,
}

impl Overrides {
    pub fn apply(&self, cfg: &mut Config) {
        if let Some(v) = &self.bootstrap_servers {
            cfg.bootstrap_servers = v.clone();
        }
        if let Some(v) = &self.application_id {
            cfg.application_id = v.clone();
        }
        if let Some(v) = &self.state_dir {
            cfg.state_dir = v.clone();
        }
        if let Some(v) = self.partitions {
            cfg.topics.partitions = v;
        }
    }
}

impl Config {
    /// Defaults, then the TOML `file`, then the `ALLREAD_*` variables among `env`. Pure: the
    /// caller passes the environment (the binary passes its own), so tests need not touch the
    /// process's. Flags come last ([`Overrides::apply`]), then [`Config::validate`].
    ///
    /// `ALLREAD_<SECTION>__<KEY>` (case-insensitive, `__` between levels) sets
    /// `<section>.<key>`: `ALLREAD_TOPICS__PARTITIONS=16`, `ALLREAD_APPLICATION_ID=x`. Under
    /// `KAFKA__` each `_` is a `.`: `ALLREAD_KAFKA__SECURITY_PROTOCOL` sets the librdkafka
    /// property `kafka."security.protocol"`. A value is read as a TOML value when it parses as
    /// one (`16`, `true`), else as a string, and a setting that is a string (as every librdkafka
    /// property is) takes the text as written; serde then checks the type. An unknown key or a
    /// value of the wrong type is an error naming the variable and the key.
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Self, ConfigError> {
        let defaults = toml::Table::try_from(Config::default()).expect("the defaults serialize to TOML");
        let mut table = defaults.clone();
        if let Some(path) = file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            let parse_error = |message| ConfigError::Parse { path: path.into(), message };
            // Deserializing the text itself first: its errors show the offending line.
            Self::from_toml(&text).map_err(parse_error)?;
            let from_file = text.parse::<toml::Table>().map_err(|e| parse_error(e.to_string().trim_end().into()))?;
            merge(&mut table, from_file);
        }
        let mut cfg: Config = table.clone().try_into().map_err(|e: toml::de::Error| ConfigError::Parse {
            path: file.map_or_else(|| PathBuf::from("(defaults)"), Path::to_path_buf),
            message: e.message().to_string(),
        })?;
        // One variable at a time, so that an error is pinned on the variable that caused it.
        for EnvSetting { var, path, raw } in env_settings(env)? {
            let key = display_key(&path);
            let value = env_value(&raw, lookup(&table, &path), path[0] == "kafka");
            if let Err(message) = insert(&mut table, &path, value) {
                return Err(ConfigError::Env { var, key, message });
            }
            cfg = table.clone().try_into().map_err(|e: toml::de::Error| {
                let mut message = e.message().to_string();
                if let Some(hint) = hint(&defaults, &path) {
                    message.push_str(&hint);
                }
                ConfigError::Env { var, key, message }
            })?;
        }
        cfg.load_topology()?;
        Ok(cfg)
    }

    /// Reads `topology_file`, if one is set, into `topology` (else the embedded file stays).
    pub fn load_topology(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.topology_file {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            self.topology = crate::topology::TopologySettings::parse(&text)
                .map_err(|message| ConfigError::Parse { path: path.clone(), message })?;
        }
        Ok(())
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let mut cfg = Self::from_toml(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })?;
        cfg.load_topology()?;
        Ok(cfg)
    }

    /// Parses TOML; the error names the offending key and line.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e: toml::de::Error| e.to_string().trim_end().to_string())
    }

    pub fn repartition_topic(&self) -> String {
        format!("{}-events-repartition", self.application_id)
    }
    /// The compacted topic holding every change of the tasks' state, one partition per task.
    pub fn changelog_topic(&self) -> String {
        format!("{}-state-changelog", self.application_id)
    }
    /// This application's directory under `state_dir`.
    pub fn app_dir(&self) -> PathBuf {
        self.state_dir.join(&self.application_id)
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
                "must be a regex starting with '^', as Kafka clients take a topic pattern",
            );
        }
        if let Err(e) = regex::Regex::new(&self.topics.room_pattern) {
            return invalid("topics.room_pattern", &format!("is not a regex: {e}"));
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
        if self.processing.commit_interval_ms == Some(0) || self.processing.tick_interval_ms == 0 {
            return invalid("processing.commit_interval_ms", "intervals must be positive");
        }
        if !(1_000..=900_000).contains(&self.processing.transaction_timeout_ms) {
            return invalid(
                "processing.transaction_timeout_ms",
                "must be between 1000 and 900000 (the broker's limit)",
            );
        }
        if self.processing.max_poll_records == 0 {
            return invalid("processing.max_poll_records", "must be positive");
        }
        if self.processing.buffered_records_per_partition == 0 {
            return invalid("processing.buffered_records_per_partition", "must be positive");
        }
        if self.processing.restore_batch_records == 0 {
            return invalid("processing.restore_batch_records", "must be positive");
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
        if self.rocksdb.memory_bytes < 8 << 20 {
            return invalid("rocksdb.memory_bytes", "must be at least 8388608 (8 MiB)");
        }
        if self.rocksdb.write_buffer_bytes < 1 << 20 || self.rocksdb.write_buffer_bytes > self.rocksdb.memory_bytes / 2
        {
            return invalid(
                "rocksdb.write_buffer_bytes",
                "must be at least 1048576 (1 MiB) and at most half of rocksdb.memory_bytes",
            );
        }
        Ok(())
    }
}

/// A setting read from an `ALLREAD_*` variable.
struct EnvSetting {
    var: String,
    /// Its path in the TOML tree: `["topics", "partitions"]`, `["kafka", "security.protocol"]`.
    path: Vec<String>,
    raw: String,
}

/// The settings among `env`, by variable name, so that the first error is always the same.
fn env_settings(env: impl IntoIterator<Item = (String, String)>) -> Result<Vec<EnvSetting>, ConfigError> {
    let mut settings = Vec::new();
    for (var, raw) in env {
        let upper = var.to_ascii_uppercase();
        if !upper.starts_with(ENV_PREFIX) || NOT_SETTINGS.contains(&upper.as_str()) {
            continue;
        }
        let path =
            env_path(&upper[ENV_PREFIX.len()..]).map_err(|reason| ConfigError::EnvName { var: var.clone(), reason })?;
        settings.push(EnvSetting { var, path, raw });
    }
    settings.sort_by(|a, b| a.var.cmp(&b.var));
    for pair in settings.windows(2) {
        if pair[0].path == pair[1].path {
            return Err(ConfigError::EnvName {
                var: pair[1].var.clone(),
                reason: format!("`{}` is also set by {}", display_key(&pair[1].path), pair[0].var),
            });
        }
    }
    Ok(settings)
}

/// `TOPICS__PARTITIONS` → `["topics", "partitions"]`; `KAFKA__SECURITY_PROTOCOL` →
/// `["kafka", "security.protocol"]`.
fn env_path(name: &str) -> Result<Vec<String>, String> {
    let name = name.to_ascii_lowercase();
    if let Some(property) = name.strip_prefix("kafka__") {
        if property.is_empty() || property.contains("__") {
            return Err("a librdkafka property is ALLREAD_KAFKA__<PROPERTY>, with `_` for each `.` \
                        (ALLREAD_KAFKA__SECURITY_PROTOCOL sets \"security.protocol\")"
                .into());
        }
        return Ok(vec!["kafka".into(), property.replace('_', ".")]);
    }
    let path: Vec<String> = name.split("__").map(str::to_string).collect();
    if path.iter().any(String::is_empty) {
        return Err("expected ALLREAD_<KEY> or ALLREAD_<SECTION>__<KEY>, with no empty part".into());
    }
    Ok(path)
}

/// `kafka."security.protocol"`, `topics.partitions`.
fn display_key(path: &[String]) -> String {
    let parts: Vec<String> =
        path.iter().map(|p| if p.contains('.') { format!("\"{p}\"") } else { p.clone() }).collect();
    parts.join(".")
}

/// A variable's value: a TOML value if it parses as one, else the text. Where the setting is a
/// string (or a librdkafka property, all strings), anything but a quoted TOML string is kept
/// as written, so `ALLREAD_APPLICATION_ID=2024` is the id "2024", not a type error.
fn env_value(raw: &str, current: Option<&toml::Value>, is_string: bool) -> toml::Value {
    let is_string = is_string || matches!(current, Some(toml::Value::String(_)));
    match raw.parse::<toml::Value>() {
        Ok(value @ toml::Value::String(_)) => value,
        Ok(value) if !is_string => value,
        _ => toml::Value::String(raw.to_string()),
    }
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for part in parents {
        table = table.get(part)?.as_table()?;
    }
    table.get(last)
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("a setting's path is not empty");
    let mut table = table;
    for (i, part) in parents.iter().enumerate() {
        let entry = table.entry(part.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{}` is a setting, not a section", display_key(&path[..=i]))),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Overlays `over` on `base`, section by section.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(base)), toml::Value::Table(over)) => merge(base, over),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// For a top-level key that is unknown but exists in a section (`ALLREAD_PARTITIONS`): the
/// variable that was probably meant.
fn hint(defaults: &toml::Table, path: &[String]) -> Option<String> {
    let [key] = path else { return None };
    if defaults.contains_key(key) {
        return None;
    }
    let meant: Vec<String> = defaults
        .iter()
        .filter(|(_, v)| v.as_table().is_some_and(|t| t.contains_key(key)))
        .map(|(section, _)| format!("{ENV_PREFIX}{}__{}", section.to_ascii_uppercase(), key.to_ascii_uppercase()))
        .collect();
    (!meant.is_empty()).then(|| format!(" (did you mean {}?)", meant.join(" or ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commit_interval_defaults_by_guarantee_as_kafka_streams_does_unless_set() {
        let mut c = Config::default();
        assert_eq!(c.processing.commit_interval(), Duration::from_millis(100), "exactly_once");
        c.processing.guarantee = Guarantee::AtLeastOnce;
        assert_eq!(c.processing.commit_interval(), Duration::from_secs(1));
        let c = Config::from_toml("[processing]\nguarantee = \"at_least_once\"\ncommit_interval_ms = 250").unwrap();
        assert_eq!(c.processing.commit_interval(), Duration::from_millis(250));
        let err = Config::from_toml("[processing]\ncommit_interval_ms = 0").unwrap().validate().unwrap_err();
        assert!(err.to_string().contains("processing.commit_interval_ms"), "{err}");
    }

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
        c.topics.room_pattern = "^chatroom_(".into();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("topics.room_pattern") && err.contains("not a regex"), "{err}");
    }
}

#[cfg(test)]
mod layering {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
        vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn toml_file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        file
    }

    fn load_env(vars: &[(&str, &str)]) -> Result<Config, String> {
        Config::load(None, env(vars)).map_err(|e| e.to_string())
    }

    #[test]
    fn file_then_environment_then_flags() {
        let file = toml_file(
            "application_id = \"from-file\"\n[topics]\npartitions = 3\nreplication_factor = 2\n\
             [http]\nlisten = \"127.0.0.1:1\"\n[engine]\nsuppress_trivial = false\nlarge_room_member_limit = 50\n",
        );
        let vars = env(&[
            ("ALLREAD_APPLICATION_ID", "from-env"),
            ("ALLREAD_TOPICS__PARTITIONS", "16"),
            ("ALLREAD_ENGINE__SUPPRESS_TRIVIAL", "true"),
            ("PATH", "/usr/bin"),
        ]);
        let c = Config::load(Some(file.path()), vars.clone()).unwrap();
        assert_eq!(c.application_id, "from-env");
        assert_eq!(c.topics.partitions, 16);
        assert!(c.engine.suppress_trivial);
        // What the environment does not set comes from the file, then the defaults.
        assert_eq!(c.topics.replication_factor, 2);
        assert_eq!(c.engine.large_room_member_limit, 50);
        assert_eq!(c.http.listen, "127.0.0.1:1");
        assert_eq!(c.bootstrap_servers, Config::default().bootstrap_servers);
        assert_eq!(c.topics.room_prefix, Config::default().topics.room_prefix);

        let flags = Overrides {
            application_id: Some("from-flag".into()),
            partitions: Some(4),
            bootstrap_servers: Some("kafka:9092".into()),
            state_dir: Some("/var/lib/allread".into()),
        };
        let mut c = Config::load(Some(file.path()), vars).unwrap();
        flags.apply(&mut c);
        assert_eq!(c.application_id, "from-flag");
        assert_eq!(c.topics.partitions, 4);
        assert_eq!(c.bootstrap_servers, "kafka:9092");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/allread"));
        assert!(c.engine.suppress_trivial, "flags change only what they name");

        let c = Config::load(Some(file.path()), env(&[])).unwrap();
        assert_eq!((c.application_id.as_str(), c.topics.partitions), ("from-file", 3));
        assert_eq!(Config::load(None, env(&[])).unwrap(), Config::default());
    }

    #[test]
    fn names_are_case_insensitive_and_values_take_the_settings_type() {
        let c = load_env(&[
            ("allread_http__listen", "127.0.0.1:9000"),
            ("Allread_Http__Advertised", "allread-1:9464"),
            ("ALLREAD_APPLICATION_ID", "1234"),
            ("ALLREAD_TOPICS__OUTPUT_PARTITIONS", "4"),
            ("ALLREAD_TOPICS__READ", "\"quoted\""),
            ("ALLREAD_STATE_DIR", "/var/lib/allread/state"),
        ])
        .unwrap();
        assert_eq!(c.http.listen, "127.0.0.1:9000");
        assert_eq!(c.http.advertised.as_deref(), Some("allread-1:9464"));
        assert_eq!(c.application_id, "1234", "a string setting stays a string");
        assert_eq!(c.topics.output_partitions, Some(4));
        assert_eq!(c.topics.read, "quoted", "a TOML string is unquoted");
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/allread/state"));
        c.validate().unwrap();
    }

    #[test]
    fn kafka_variables_set_dotted_librdkafka_properties() {
        let file = toml_file("[kafka]\n\"client.rack\" = \"eu-1a\"\n\"security.protocol\" = \"PLAINTEXT\"\n");
        let vars = env(&[
            ("ALLREAD_KAFKA__SECURITY_PROTOCOL", "SASL_SSL"),
            ("allread_kafka__sasl_mechanism", "PLAIN"),
            ("ALLREAD_KAFKA__SESSION_TIMEOUT_MS", "45000"),
            ("ALLREAD_KAFKA__ENABLE_IDEMPOTENCE", "true"),
        ]);
        let c = Config::load(Some(file.path()), vars).unwrap();
        let expected: BTreeMap<String, String> = [
            ("client.rack", "eu-1a"),
            ("security.protocol", "SASL_SSL"),
            ("sasl.mechanism", "PLAIN"),
            ("session.timeout.ms", "45000"),
            ("enable.idempotence", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(c.kafka, expected, "properties are strings, whatever they look like");

        let err = load_env(&[("ALLREAD_KAFKA__SECURITY__PROTOCOL", "SSL")]).unwrap_err();
        assert!(
            err.contains("ALLREAD_KAFKA__SECURITY__PROTOCOL") && err.contains("ALLREAD_KAFKA__<PROPERTY>"),
            "{err}"
        );
    }

    #[test]
    fn variables_that_are_not_settings_are_ignored() {
        let c = load_env(&[
            ("ALLREAD_CONFIG", "/etc/allread.toml"),
            ("ALLREAD_CACHE", "/root/.cache/allread"),
            ("allread_cache", "/elsewhere"),
            ("ALLREAD_KAFKA_HOME", "/root/.cache/allread/kafka-run"),
            ("ALLREAD_BENCH_DIR", "/tmp/bench"),
            ("KAFKA_BOOTSTRAP", "kafka:9092"),
            ("ALLREADX_TOPICS__PARTITIONS", "3"),
            ("PATH", "/bin"),
        ])
        .unwrap();
        assert_eq!(c, Config::default());
    }

    #[test]
    fn an_unknown_key_from_the_environment_is_named() {
        let err = load_env(&[("ALLREAD_TOPICS__PARITIONS", "3")]).unwrap_err();
        assert!(err.contains("environment variable ALLREAD_TOPICS__PARITIONS"), "{err}");
        assert!(err.contains("`topics.paritions`") && err.contains("unknown field `paritions`"), "{err}");

        let err = load_env(&[("ALLREAD_NOPE__X", "1")]).unwrap_err();
        assert!(err.contains("ALLREAD_NOPE__X") && err.contains("unknown field `nope`"), "{err}");

        // The former variable of --partitions: the error says where the setting lives now.
        let err = load_env(&[("ALLREAD_PARTITIONS", "3")]).unwrap_err();
        assert!(err.contains("unknown field `partitions`") && err.contains("ALLREAD_TOPICS__PARTITIONS"), "{err}");

        let err = load_env(&[("ALLREAD_APPLICATION_ID__X", "1")]).unwrap_err();
        assert!(err.contains("`application_id` is a setting, not a section"), "{err}");
        let err = load_env(&[("ALLREAD_TOPICS__", "1")]).unwrap_err();
        assert!(err.contains("ALLREAD_TOPICS__") && err.contains("no empty part"), "{err}");
        let err = load_env(&[("ALLREAD_TOPICS__PARTITIONS", "3"), ("allread_topics__partitions", "4")]).unwrap_err();
        assert!(err.contains("is also set by"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_named() {
        let err = load_env(&[("ALLREAD_TOPICS__PARTITIONS", "many")]).unwrap_err();
        assert!(err.contains("ALLREAD_TOPICS__PARTITIONS") && err.contains("`topics.partitions`"), "{err}");
        assert!(err.contains("invalid type") && err.contains("i32"), "{err}");

        let err = load_env(&[("ALLREAD_ENGINE__SUPPRESS_TRIVIAL", "sometimes")]).unwrap_err();
        assert!(err.contains("`engine.suppress_trivial`") && err.contains("bool"), "{err}");

        // An optional setting, absent from the defaults, is checked as well.
        let err = load_env(&[("ALLREAD_TOPICS__OUTPUT_PARTITIONS", "many")]).unwrap_err();
        assert!(err.contains("ALLREAD_TOPICS__OUTPUT_PARTITIONS") && err.contains("i32"), "{err}");

        let err = load_env(&[("ALLREAD_PROCESSING__COMMIT_INTERVAL_MS", "-5")]).unwrap_err();
        assert!(err.contains("`processing.commit_interval_ms`"), "{err}");

        // A value of the right type that validation rejects is named by validation.
        let c = load_env(&[("ALLREAD_HTTP__LISTEN", "nowhere")]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("http.listen"));
        let c = load_env(&[("ALLREAD_PROCESSING__BUFFERED_RECORDS_PER_PARTITION", "0")]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("processing.buffered_records_per_partition"));
    }

    #[test]
    fn file_errors_still_name_the_key_and_line() {
        let file = toml_file("application_id = \"a\"\n[topics]\nparitions = 3\n");
        let err = Config::load(Some(file.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("paritions") && err.contains("line 3"), "{err}");
        let err = Config::load(Some(Path::new("/nonexistent/allread.toml")), env(&[])).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/allread.toml"), "{err}");
    }

    #[test]
    fn a_topology_file_is_loaded_and_checked() {
        let topology = toml_file(
            &crate::topology::DEFAULT_FILE.replace(r#""retention.ms" = "604800000""#, r#""retention.ms" = "1000""#),
        );
        let path = topology.path().display().to_string();
        let c = Config::load(None, env(&[("ALLREAD_TOPOLOGY_FILE", path.as_str())])).unwrap();
        assert_eq!(c.topology.repartition.config["retention.ms"], "1000");
        assert_eq!(Config::load(None, env(&[])).unwrap().topology, crate::topology::TopologySettings::default());
        let bad = toml_file(&crate::topology::DEFAULT_FILE.replace(r#"{ "cleanup.policy" = "compact" }"#, "{}"));
        let bad_path = bad.path().display().to_string();
        let err = Config::load(None, env(&[("ALLREAD_TOPOLOGY_FILE", bad_path.as_str())])).unwrap_err().to_string();
        assert!(err.contains(&bad_path) && err.contains("changelog: cleanup.policy must include"), "{err}");
    }
}

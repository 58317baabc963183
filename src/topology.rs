//! The processor's topology: its sources, the repartition, the state store, its sinks, and
//! every topic with its partitions, replication and topic-level settings.
//!
//! The topology is built from the configuration (names, partitions, replication) and the
//! topology file (`topology/topology.toml`, embedded; `topology_file` loads another), the
//! topic-level settings of every topic allread owns. What `allread topology describe`
//! prints, what `allread topology apply` creates and what `allread run` uses are built by
//! the same code from the same inputs, so they cannot disagree. The record schemas are in
//! `topology/schemas/`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::config::Config;
use crate::kafka::admin::{self, AdminError, TopicSpec};

/// The topology file allread embeds: `topology/topology.toml`.
pub const DEFAULT_FILE: &str = include_str!("../topology/topology.toml");

/// The topology file: the topic-level settings of each topic allread owns.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologySettings {
    pub repartition: TopicSettings,
    pub changelog: TopicSettings,
    pub output: TopicSettings,
    pub dlq: TopicSettings,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Kafka topic-level configs (`cleanup.policy`, `retention.ms`, `min.insync.replicas`, ...).
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopologySettings {
    /// Parses and checks a topology file; the error names the key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t: TopologySettings = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        let policy = |s: &TopicSettings| s.config.get("cleanup.policy").cloned().unwrap_or_else(|| "delete".into());
        if !policy(&t.changelog).contains("compact") {
            return Err("changelog: cleanup.policy must include \"compact\" (restores read the latest value per key; deleted segments would lose state)".into());
        }
        if policy(&t.repartition).contains("compact") {
            return Err(
                "repartition: cleanup.policy must not include \"compact\" (compaction by room would drop events)"
                    .into(),
            );
        }
        Ok(t)
    }
}

impl Default for TopologySettings {
    fn default() -> Self {
        Self::parse(DEFAULT_FILE).expect("the embedded topology file is valid")
    }
}

/// One topic of the topology.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicNode {
    /// A topic name, or a regex for a pattern source.
    pub name: String,
    pub role: &'static str,
    pub pattern: bool,
    /// Created and checked by allread (its own topics), or only read/written.
    pub owned: Option<TopicSpec>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    pub application_id: String,
    pub topics: Vec<TopicNode>,
    pub partitions: i32,
}

pub fn build(cfg: &Config) -> Topology {
    let owned: BTreeMap<String, TopicSpec> =
        admin::owned_topics(cfg).into_iter().map(|s| (s.name.clone(), s)).collect();
    let node = |name: String, role, pattern| TopicNode { owned: owned.get(&name).cloned(), name, role, pattern };
    Topology {
        application_id: cfg.application_id.clone(),
        partitions: cfg.topics.partitions,
        topics: vec![
            node(cfg.topics.room_pattern.clone(), "source: room events", true),
            node(cfg.topics.read.clone(), "source: read events", false),
            node(cfg.repartition_topic(), "repartition: events by room", false),
            node(cfg.changelog_topic(), "changelog: receipt-state", false),
            node(cfg.topics.output.clone(), "sink: receipt_complete", false),
            node(cfg.dlq_topic(), "sink: dead letters", false),
        ],
    }
}

fn settings(spec: &TopicSpec) -> String {
    let mut s = format!("partitions: {}, replication: {}", spec.partitions, spec.replication);
    for (k, v) in &spec.config {
        let _ = write!(s, ", {k}: {v}");
    }
    s
}

impl Topology {
    fn topic(&self, role_prefix: &str) -> &TopicNode {
        self.topics.iter().find(|t| t.role.starts_with(role_prefix)).expect("every role is in the topology")
    }

    /// The topology in the format of Kafka Streams' `Topology#describe()`, followed by the
    /// topics allread owns.
    pub fn describe(&self) -> String {
        let rooms = &self.topics[0];
        let reads = &self.topics[1];
        let repartition = self.topic("repartition");
        let output = self.topic("sink: receipt");
        let dlq = self.topic("sink: dead");
        let mut out = String::new();
        let _ = writeln!(out, "Topologies:");
        let _ = writeln!(out, "   Sub-topology: 0");
        let _ = writeln!(out, "    Source: room-events (topics: /{}/)", rooms.name.trim_start_matches('^'));
        let _ = writeln!(out, "      --> decode-and-route");
        let _ = writeln!(out, "    Source: read-events (topics: [{}])", reads.name);
        let _ = writeln!(out, "      --> decode-and-route");
        let _ = writeln!(out, "    Processor: decode-and-route (stores: [])");
        let _ = writeln!(out, "      --> repartition-sink, dead-letter-sink");
        let _ = writeln!(out, "      <-- room-events, read-events");
        let _ = writeln!(out, "    Sink: repartition-sink (topic: {})", repartition.name);
        let _ = writeln!(out, "      <-- decode-and-route");
        let _ = writeln!(out, "    Sink: dead-letter-sink (topic: {})", dlq.name);
        let _ = writeln!(out, "      <-- decode-and-route");
        let _ = writeln!(out);
        let _ = writeln!(out, "   Sub-topology: 1 ({} tasks)", self.partitions);
        let _ = writeln!(out, "    Source: routed-events (topics: [{}])", repartition.name);
        let _ = writeln!(out, "      --> receipts");
        let _ = writeln!(out, "    Processor: receipts (stores: [receipt-state])");
        let _ = writeln!(out, "      --> receipt-sink");
        let _ = writeln!(out, "      <-- routed-events");
        let _ = writeln!(out, "    Sink: receipt-sink (topic: {})", output.name);
        let _ = writeln!(out, "      <-- receipts");
        let _ = writeln!(out);
        let _ = writeln!(out, "State stores:");
        let _ = writeln!(out, "    receipt-state: RocksDB, one instance per task (members, read positions, pending messages, reader sets, parked reads, markers)");
        let _ = writeln!(out, "      changelog: {} (one partition per task, compacted)", self.topic("changelog").name);
        let _ = writeln!(out);
        let _ = writeln!(out, "Topics:");
        for t in &self.topics {
            let what = match &t.owned {
                Some(spec) => format!("created by allread; {}", settings(spec)),
                None if t.pattern => {
                    "the chat's topics matching the pattern, listed every processing.metadata_refresh_ms".to_string()
                }
                None if t.role.starts_with("sink") => "created by allread if absent".to_string(),
                None => "the chat's topic".to_string(),
            };
            let _ = writeln!(out, "    {} ({}): {what}", t.name, t.role);
        }
        out
    }

    /// The same as a Mermaid flowchart.
    pub fn mermaid(&self) -> String {
        let name = |role: &str| self.topic(role).name.clone();
        let mut out = String::from("flowchart LR\n");
        let _ = writeln!(out, "    rooms[/\"{}\"/] --> route[decode and route by room]", self.topics[0].name);
        let _ = writeln!(out, "    reads[/\"{}\"/] --> route", self.topics[1].name);
        let _ =
            writeln!(out, "    route --> repartition[/\"{}<br>{} partitions\"/]", name("repartition"), self.partitions);
        let _ = writeln!(out, "    route -- undecodable --> dlq[/\"{}\"/]", name("sink: dead"));
        let _ = writeln!(out, "    repartition --> receipts[receipts: one task per partition]");
        let _ = writeln!(out, "    receipts <--> store[(receipt-state<br>RocksDB per task)]");
        let _ = writeln!(out, "    store -- every change --> changelog[/\"{}<br>compacted\"/]", name("changelog"));
        let _ = writeln!(out, "    receipts --> output[/\"{}\"/]", name("sink: receipt"));
        out
    }
}

/// A difference between the cluster and the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    pub topic: String,
    pub problem: String,
}

/// Creates the owned topics that are missing; returns the names created.
pub fn apply(client: &ClientConfig, topology: &Topology) -> Result<Vec<String>, AdminError> {
    let specs: Vec<TopicSpec> = topology.topics.iter().filter_map(|t| t.owned.clone()).collect();
    admin::ensure_topics(client, &specs)
}

/// Reports, without changing anything, where the cluster differs from the topology.
pub fn check(client: &ClientConfig, topology: &Topology) -> Result<Vec<Drift>, AdminError> {
    let admin_client: AdminClient<DefaultClientContext> = client.create()?;
    let timeout = Duration::from_secs(10);
    let mut drift = Vec::new();
    let drifted = |topic: &str, problem: String| Drift { topic: topic.to_string(), problem };
    for t in &topology.topics {
        if t.pattern {
            continue;
        }
        let Some(found) = admin::partition_count(&admin_client, &t.name, timeout)? else {
            let problem = if t.owned.is_some() { "missing (allread topology apply creates it)" } else { "missing" };
            drift.push(drifted(&t.name, problem.to_string()));
            continue;
        };
        let Some(spec) = &t.owned else { continue };
        if spec.exact_partitions && found != spec.partitions {
            drift.push(drifted(&t.name, format!("has {found} partitions, the topology needs {}", spec.partitions)));
        }
        if spec.config.is_empty() {
            continue;
        }
        let resource = ResourceSpecifier::Topic(&t.name);
        let opts = AdminOptions::new().request_timeout(Some(timeout));
        let described = futures::executor::block_on(admin_client.describe_configs([&resource], &opts))?;
        let Some(Ok(config)) = described.into_iter().next() else {
            drift.push(drifted(&t.name, "its configuration could not be read".into()));
            continue;
        };
        for (key, want) in &spec.config {
            let have = config.get(key).and_then(|e| e.value.clone()).unwrap_or_default();
            if &have != want {
                drift.push(drifted(&t.name, format!("{key} is {have}, the topology says {want}")));
            }
        }
    }
    Ok(drift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_file_is_the_repository_file_and_parses() {
        let on_disk = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/topology/topology.toml")).unwrap();
        assert_eq!(on_disk, DEFAULT_FILE);
        let t = TopologySettings::default();
        assert_eq!(t.changelog.config["cleanup.policy"], "compact");
        assert_eq!(t.repartition.config["retention.ms"], "604800000");
    }

    #[test]
    fn a_changelog_that_is_not_compacted_or_a_compacted_repartition_is_refused() {
        let with = |repartition: &str, changelog: &str| {
            format!("[repartition]\nconfig = {repartition}\n[changelog]\nconfig = {changelog}\n[output]\n[dlq]\n")
        };
        let ok = with("{}", r#"{ "cleanup.policy" = "compact,delete" }"#);
        assert!(TopologySettings::parse(&ok).is_ok(), "{ok}");
        let err = TopologySettings::parse(&with("{}", r#"{ "cleanup.policy" = "delete" }"#)).unwrap_err();
        assert!(err.starts_with("changelog: cleanup.policy must include"), "{err}");
        let err = TopologySettings::parse(&with("{}", "{}")).unwrap_err();
        assert!(err.starts_with("changelog:"), "no policy means delete: {err}");
        let err = TopologySettings::parse(&with(
            r#"{ "cleanup.policy" = "compact" }"#,
            r#"{ "cleanup.policy" = "compact" }"#,
        ))
        .unwrap_err();
        assert!(err.starts_with("repartition: cleanup.policy must not"), "{err}");
        let err = TopologySettings::parse(&format!("{ok}[sink]\n")).unwrap_err();
        assert!(err.contains("unknown field `sink`"), "{err}");
    }
}

//! `topology apply` and `topology check` against the real broker, and `describe`.

mod common;

use allread::config::Config;
use allread::kafka::base_client_config;
use allread::topology;

fn config(app: &str, read: &str) -> Config {
    let mut cfg = Config { application_id: app.to_string(), bootstrap_servers: common::broker(), ..Config::default() };
    cfg.topics.read = read.to_string();
    cfg.topics.output = format!("{app}-receipts");
    cfg.topics.partitions = 4;
    cfg
}

#[test]
fn apply_creates_what_is_missing_once_and_check_then_finds_no_drift() {
    let app = common::unique("topo_");
    let read = format!("{app}-reads");
    let cfg = config(&app, &read);
    let client = base_client_config(&cfg);
    let t = topology::build(&cfg);

    let before = topology::check(&client, &t).unwrap();
    let missing: Vec<&str> = before.iter().map(|d| d.topic.as_str()).collect();
    assert_eq!(
        missing,
        [read.as_str(), &cfg.repartition_topic(), &cfg.changelog_topic(), &cfg.topics.output, &cfg.dlq_topic()]
    );
    assert!(before[0].problem == "missing", "the read topic is the chat's; apply does not create it: {before:?}");

    let mut created = topology::apply(&client, &t).unwrap();
    created.sort();
    let mut owned = vec![cfg.repartition_topic(), cfg.changelog_topic(), cfg.topics.output.clone(), cfg.dlq_topic()];
    owned.sort();
    assert_eq!(created, owned);
    assert!(topology::apply(&client, &t).unwrap().is_empty(), "apply is idempotent");

    common::create_topic(&cfg.bootstrap_servers, &read, 1);
    assert_eq!(topology::check(&client, &t).unwrap(), vec![], "no drift after apply");
}

#[test]
fn check_reports_drift_without_changing_anything() {
    let app = common::unique("drift_");
    let read = format!("{app}-reads");
    let cfg = config(&app, &read);
    common::create_topic(&cfg.bootstrap_servers, &read, 1);
    common::create_topic(&cfg.bootstrap_servers, &cfg.repartition_topic(), 3);
    let client = base_client_config(&cfg);
    let t = topology::build(&cfg);
    let drift = topology::check(&client, &t).unwrap();
    let repartition: Vec<&str> =
        drift.iter().filter(|d| d.topic == cfg.repartition_topic()).map(|d| d.problem.as_str()).collect();
    assert!(repartition.contains(&"has 3 partitions, the topology needs 4"), "{drift:?}");
    assert!(
        repartition.iter().any(|p| p.starts_with("retention.ms is ")),
        "a topic created by hand has the broker's retention: {drift:?}"
    );
    assert_eq!(topology::check(&client, &t).unwrap(), drift, "check changes nothing");
    let err = topology::apply(&client, &t).unwrap_err();
    assert!(err.to_string().contains("has 3 partitions but allread needs 4"), "{err}");
}

#[test]
fn a_topology_file_sets_the_topic_level_settings_that_apply_creates_and_check_compares() {
    let app = common::unique("topofile_");
    let read = format!("{app}-reads");
    common::create_topic(&common::broker(), &read, 1);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("topology.toml");
    let text = allread::topology::DEFAULT_FILE.replace(
        r#"config = { "cleanup.policy" = "delete" }"#,
        r#"config = { "cleanup.policy" = "delete", "retention.ms" = "86400000", "segment.ms" = "3600000" }"#,
    );
    assert_ne!(text, allread::topology::DEFAULT_FILE, "the DLQ's settings were replaced");
    std::fs::write(&file, text).unwrap();
    let mut cfg = config(&app, &read);
    cfg.topology_file = Some(file);
    cfg.load_topology().unwrap();
    let t = topology::build(&cfg);
    assert!(
        t.describe().contains("cleanup.policy: delete, retention.ms: 86400000, segment.ms: 3600000"),
        "{}",
        t.describe()
    );
    let client = base_client_config(&cfg);
    topology::apply(&client, &t).unwrap();
    assert_eq!(topology::check(&client, &t).unwrap(), vec![], "the broker has the file's settings");

    // Topics created with the embedded settings have drifted from the file's.
    let other = common::unique("topofile_");
    let mut before = config(&other, &read);
    topology::apply(&client, &topology::build(&before)).unwrap();
    before.topology_file = cfg.topology_file.clone();
    before.load_topology().unwrap();
    let drift = topology::check(&client, &topology::build(&before)).unwrap();
    let problems: Vec<&str> =
        drift.iter().filter(|d| d.topic == before.dlq_topic()).map(|d| d.problem.as_str()).collect();
    assert_eq!(problems.len(), 2, "{drift:?}");
    assert!(
        problems.iter().any(|p| p.starts_with("segment.ms is ") && p.ends_with("the topology says 3600000")),
        "{drift:?}"
    );
}

#[test]
fn describe_names_every_node_and_topic() {
    let cfg = Config::default();
    let text = topology::build(&cfg).describe();
    for needle in [
        "Sub-topology: 0",
        "Source: room-events (topics: /chatroom_.*/)",
        "Source: read-events (topics: [read_events])",
        "Sink: repartition-sink (topic: allread-events-repartition)",
        "Sink: dead-letter-sink (topic: allread-dlq)",
        "Sub-topology: 1 (8 tasks)",
        "Processor: receipts (stores: [receipt-state])",
        "Sink: receipt-sink (topic: receipt_complete)",
        "allread-events-repartition (repartition: events by room): created by allread; partitions: 8, replication: 1, cleanup.policy: delete, retention.ms: 604800000",
    ] {
        assert!(text.contains(needle), "describe lacks {needle:?}:\n{text}");
    }
    assert!(topology::build(&cfg).mermaid().starts_with("flowchart LR\n"));
}

//! The deployment files (docker-compose.yml, Dockerfile, topology/monitoring/) cannot be run
//! here (no Docker engine), so they are checked statically: they parse, and every port,
//! endpoint and metric they name exists in the code. A metric renamed in the code breaks this.

use std::collections::BTreeSet;

use allread::config::Config;
use allread::metrics::Metrics;
use serde_json::Value as Json;
use serde_yaml::Value as Yaml;

fn file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Yaml {
    serde_yaml::from_str(&file(path)).unwrap_or_else(|e| panic!("{path} does not parse: {e}"))
}

/// Every series name the code exports, histograms' `_bucket`, `_sum` and `_count` included.
fn exported_series() -> BTreeSet<String> {
    let metrics = Metrics::new();
    // Per-task series exist once a task does.
    for per_task in [
        &metrics.consumer_lag,
        &metrics.pending_messages,
        &metrics.cached_rooms,
        &metrics.cached_entries,
        &metrics.cached_members,
        &metrics.rocksdb_keys,
        &metrics.rocksdb_sst_bytes,
        &metrics.rocksdb_memtable_bytes,
        &metrics.restore_remaining,
    ] {
        per_task.with_label_values(&["0"]);
    }
    let mut names = BTreeSet::new();
    for family in metrics.registry.gather() {
        let name = family.name().to_string();
        for suffix in ["_bucket", "_sum", "_count"] {
            names.insert(format!("{name}{suffix}"));
        }
        names.insert(name);
    }
    names
}

/// The `allread_*` metric names used in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("allread_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn assert_exported(expr: &str, exported: &BTreeSet<String>, place: &str) {
    let names = metric_names(expr);
    for name in &names {
        assert!(exported.contains(name), "{place} uses {name}, which allread does not export (expr: {expr})");
    }
}

#[test]
fn compose_wires_allread_prometheus_and_grafana_together() {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_mapping().expect("services");
    for name in ["kafka", "allread", "prometheus", "grafana"] {
        assert!(services.contains_key(name), "docker-compose.yml lacks service {name}");
    }
    let port = Config::default().http.listen.rsplit(':').next().unwrap().to_string();
    let allread_ports: Vec<&str> =
        compose["services"]["allread"]["ports"].as_sequence().unwrap().iter().filter_map(|p| p.as_str()).collect();
    assert!(
        allread_ports.iter().any(|p| p.ends_with(&format!(":{port}"))),
        "allread's HTTP port {port} is not published"
    );
    for volume in compose["services"]["prometheus"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .chain(compose["services"]["grafana"]["volumes"].as_sequence().unwrap())
    {
        let host = volume.as_str().unwrap().split(':').next().unwrap();
        assert!(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(host).exists(),
            "docker-compose.yml mounts {host}, which does not exist"
        );
    }
    assert!(file("Dockerfile").contains("--bin allread"), "the Dockerfile builds the allread binary");
    let one_shot: Vec<&str> =
        compose["services"]["topology"]["command"].as_sequence().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(one_shot, ["topology", "apply"], "a one-shot topology apply runs before allread");
    assert!(compose["services"]["allread"]["depends_on"]["topology"].is_mapping());

    let prometheus = yaml("topology/monitoring/prometheus.yml");
    let job = &prometheus["scrape_configs"][0];
    assert_eq!(job["metrics_path"].as_str(), Some("/metrics"));
    assert_eq!(job["static_configs"][0]["targets"][0].as_str(), Some(format!("allread:{port}").as_str()));
    assert_eq!(prometheus["rule_files"][0].as_str(), Some("/etc/prometheus/alerts.yml"));
}

#[test]
fn alert_rules_use_only_exported_metrics() {
    let exported = exported_series();
    let rules = yaml("topology/monitoring/alerts.yml");
    let mut alerts = BTreeSet::new();
    for rule in rules["groups"][0]["rules"].as_sequence().expect("rules") {
        let expr = rule["expr"].as_str().expect("expr");
        assert_exported(expr, &exported, rule["alert"].as_str().unwrap());
        alerts.insert(rule["alert"].as_str().unwrap().to_string());
    }
    for wanted in ["AllreadConsumerLagHigh", "AllreadDeadLetters", "AllreadCommitsStalled"] {
        assert!(alerts.contains(wanted), "missing alert {wanted}");
    }
}

#[test]
fn the_dashboard_uses_only_exported_metrics() {
    let exported = exported_series();
    let dashboard: Json =
        serde_json::from_str(&file("topology/monitoring/grafana-dashboard.json")).expect("dashboard JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            assert_exported(expr, &exported, panel["title"].as_str().unwrap());
            used.extend(metric_names(expr));
        }
    }
    for wanted in [
        "allread_input_records_total",
        "allread_last_read_to_receipt_seconds_bucket",
        "allread_consumer_lag_records",
        "allread_pending_messages",
        "allread_dead_lettered_records_total",
        "allread_cached_entries",
        "allread_buffered_input_records",
    ] {
        assert!(used.contains(wanted), "the dashboard does not show {wanted}");
    }
    let datasource = yaml("topology/monitoring/grafana-datasource.yml");
    assert_eq!(datasource["datasources"][0]["url"].as_str(), Some("http://prometheus:9090"));
}

#[test]
fn metric_name_extraction_sees_every_name() {
    assert_eq!(metric_names("rate(allread_a_total[5m]) / allread_b"), ["allread_a_total", "allread_b"]);
}

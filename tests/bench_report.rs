//! `scripts/bench-report` picks each latency measurement's median run when `scripts/bench`
//! repeats it (`BENCH_LATENCY_REPEAT`), and shows a failed run; it holds each run to its goals.
//! Its functions are run directly on results made here (no broker, no plot).

use std::process::Command;

/// What Python `code` prints with the report's functions in `m` (the script run as a module).
fn with_report(code: &str) -> Vec<u8> {
    let script = format!("{}/scripts/bench-report", env!("CARGO_MANIFEST_DIR"));
    let code = format!("import json, runpy; m = runpy.run_path({script:?}); {code}");
    let out = Command::new("python3").args(["-c", &code]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// `load_latency` of a results file with these latency rows, as JSON: (system, load) -> the
/// chosen run's p50, p99 and status, and how many runs it was chosen from.
fn chosen(rows: &[&str]) -> serde_json::Value {
    let dir = std::env::temp_dir().join(format!("allread-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = rows.iter().map(|r| format!("latency\t{}\n", r.replace('|', "\t"))).collect();
    std::fs::write(dir.join("results.tsv"), lines.concat()).unwrap();
    let out = with_report(&format!(
        "l = m['load_latency']({dir:?}); \
         print(json.dumps({{f'{{k[0]}}@{{k[1]}}': dict(p50=v['p50'], p99=v['p99'], status=v['status'], runs=len(v['runs'])) for k, v in l.items()}}))",
        dir = dir.display().to_string()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    serde_json::from_slice(&out).expect("JSON")
}

#[test]
fn a_repeated_latency_measurement_reports_its_median_run_by_p99_and_any_failure() {
    // Fields, as scripts/bench writes them (tabs here written as |): system, load, offered
    // events/s, p50, p99, p99.9, status.
    let got = chosen(&[
        "(b) allread at_least_once|0.5|389884|298|461|700|ok",
        "(b) allread at_least_once|0.5|389884|300|521|745|ok",
        "(b) allread at_least_once|0.5|389884|282|505|745|ok",
        "(c) allread exactly_once|0.5|337146|180|509|600|ok",
        "(c) allread exactly_once|0.5|337146||||FAILED",
        "(a) passthrough|0.5|389884|20|61|129|ok",
    ]);
    let b = &got["(b) allread at_least_once@0.5"];
    assert_eq!((b["p50"].as_f64(), b["p99"].as_f64()), (Some(282.0), Some(505.0)), "the middle p99 of three: {got}");
    assert_eq!((b["status"].as_str(), b["runs"].as_u64()), (Some("ok"), Some(3)));
    // Of two, the lower middle one; a run without figures counts as the slowest.
    let c = &got["(c) allread exactly_once@0.5"];
    assert_eq!(c["p99"].as_f64(), Some(509.0), "{got}");
    assert_eq!(c["status"].as_str(), Some("1 of 2 runs failed"));
    let a = &got["(a) passthrough@0.5"];
    assert_eq!((a["p99"].as_f64(), a["runs"].as_u64()), (Some(61.0), Some(1)), "a single run is itself");
}

/// What `goals` prints for a run's throughput rows (system -> events/s, peak RSS MB).
fn goals(rows: &[(&str, f64, f64)]) -> String {
    let tput: Vec<String> =
        rows.iter().map(|(label, rate, rss)| format!("('main', {label:?}): dict(rate={rate}, rss={rss})")).collect();
    String::from_utf8(with_report(&format!("m['goals']({{{}}}, {{}}, [])", tput.join(", ")))).unwrap()
}

#[test]
fn the_less_memory_runs_are_held_to_the_kafka_streams_goals_and_the_defaults_to_all() {
    let printed = goals(&[
        ("(a) passthrough", 1_800_000.0, 300.0),
        ("(b) allread at_least_once", 1_400_000.0, 500.0),
        ("(b) allread at_least_once, less memory", 800_000.0, 240.0),
        ("(d) Kafka Streams at_least_once", 27_000.0, 1_330.0),
    ]);
    let said = |what: &str| {
        printed
            .lines()
            .find(|l| l.starts_with(&format!("- {what}:")))
            .unwrap_or_else(|| panic!("no {what:?} in {printed}"))
    };
    assert!(said("(b) allread at_least_once >= 75% of the passthrough").ends_with("78% -> met"), "{printed}");
    assert!(
        said("(b) allread at_least_once peak RSS <= 1/4 of Kafka Streams'").ends_with("0.38x -> NOT met"),
        "{printed}"
    );
    let lean = "(b) allread at_least_once, less memory";
    assert!(said(&format!("{lean} >= 2x Kafka Streams' throughput")).ends_with("29.63x -> met"), "{printed}");
    assert!(said(&format!("{lean} peak RSS <= 1/4 of Kafka Streams'")).ends_with("0.18x -> met"), "{printed}");
    assert!(!printed.contains(&format!("{lean} >= 75%")), "the passthrough goal is the defaults': {printed}");
    assert!(!printed.contains("exactly_once"), "no exactly_once runs, no exactly_once goals: {printed}");
}

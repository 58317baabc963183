//! The receipt engine stays pure: no I/O crate, no clock, in any file of `src/receipts/`.

#[test]
fn the_engine_imports_no_io_crate_and_reads_no_clock() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/receipts");
    let forbidden = [
        "rdkafka",
        "rocksdb",
        "tokio",
        "prometheus",
        "axum",
        "std::fs",
        "std::net",
        "SystemTime",
        "Instant",
        "store::rocks",
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rs") {
            let source = std::fs::read_to_string(&path).unwrap();
            let code = source.lines().filter(|l| !l.trim_start().starts_with("//"));
            for (n, line) in code.enumerate() {
                for word in forbidden {
                    assert!(
                        !line.contains(word),
                        "{}:{n}: uses {word}; the engine must stay free of I/O and clocks",
                        path.display()
                    );
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 5, "found only {checked} engine source files");
}

#[test]
fn the_reference_model_shares_no_code_with_the_engine() {
    let source = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/sim/model.rs")).unwrap();
    let code: Vec<&str> = source.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
    for word in
        ["receipts::engine", "receipts::room", "receipts::persist", "receipts::view", "Engine<", "Engine::", "store::"]
    {
        assert!(!code.iter().any(|l| l.contains(word)), "src/sim/model.rs uses {word}: it must stay independent");
    }
    assert!(code.iter().any(|l| l.contains("use crate::receipts::{")), "it uses the event types only");
}

//! The README's configuration reference is the code's: parsing it gives exactly the defaults.

use allread::config::Config;

/// The first TOML block of a README section.
fn toml_block(section: &str) -> &str {
    section.split("```toml").nth(1).and_then(|b| b.split("```").next()).expect("a toml block")
}

#[test]
fn readme_configuration_reference_matches_the_defaults() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split("### Configuration").nth(1).expect("README has a Configuration section");
    let block = toml_block(section);
    let documented = Config::from_toml(block).unwrap_or_else(|e| panic!("README's configuration does not parse: {e}"));
    assert_eq!(documented, Config::default(), "README's configuration reference drifted from the code's defaults");
    // Every setting is listed (a commented-out line for those without a default value).
    let defaults = toml::Table::try_from(Config::default()).unwrap();
    let mut missing = Vec::new();
    for (section, value) in &defaults {
        let keys: Vec<String> = match value.as_table() {
            Some(table) if section != "kafka" => table.keys().cloned().collect(),
            _ => vec![section.clone()],
        };
        for key in keys {
            let listed = block.lines().any(|l| {
                let l = l.trim_start_matches('#').trim_start();
                l.starts_with(&format!("{key} =")) || l.starts_with(&format!("[{key}]"))
            });
            if !listed {
                missing.push(format!("{section}.{key}"));
            }
        }
    }
    assert!(missing.is_empty(), "settings missing from README's configuration reference: {missing:?}");
}

#[test]
fn readme_shows_the_current_topology() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let describe = allread::topology::build(&Config::default()).describe();
    assert!(readme.contains(&describe), "README's `allread topology describe` output is stale; paste:\n{describe}");
}

/// The settings of README's "Running in less memory" are a valid configuration, and the ones
/// `scripts/bench` runs its less-memory rows with, environment included.
#[test]
fn readme_less_memory_settings_are_the_benchmarks() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = readme.split("### Running in less memory").nth(1).expect("README has the section");
    let section = section.split("\n### ").next().unwrap();
    let block = toml_block(section);
    let documented =
        Config::from_toml(block).unwrap_or_else(|e| panic!("README's less-memory settings do not parse: {e}"));
    assert_ne!(documented, Config::default(), "they change something");
    let bench = std::fs::read_to_string(format!("{root}/scripts/bench")).unwrap();
    let lean = bench
        .split("LEAN_SETTINGS='")
        .nth(1)
        .and_then(|b| b.split('\'').next())
        .expect("LEAN_SETTINGS in scripts/bench");
    let benched = Config::from_toml(&format!("[processing]\n{lean}")).unwrap();
    assert_eq!(documented, benched, "README's less-memory settings and scripts/bench's LEAN_SETTINGS differ");
    let env = bench.split("LEAN_ENV=(").nth(1).and_then(|b| b.split(')').next()).expect("LEAN_ENV in scripts/bench");
    assert!(section.contains(&format!("`{env}`")), "README gives the environment scripts/bench sets: {env}");
}

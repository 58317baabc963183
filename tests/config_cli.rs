//! `allread config check`, run as an operator would: bad settings are refused by name.

use std::process::Command;

fn check(file: Option<&str>, env: &[(&str, &str)], extra: &[&str]) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_allread"));
    cmd.args(["config", "check"]).args(extra);
    // Not env_clear: only our settings are taken away (names are case-insensitive).
    for (k, _) in std::env::vars_os().filter(|(k, _)| k.to_string_lossy().to_ascii_uppercase().starts_with("ALLREAD_"))
    {
        cmd.env_remove(k);
    }
    if let Some(text) = file {
        let path = dir.path().join("allread.toml");
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(&path);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_unknown_key_in_the_file_is_refused_by_name() {
    let (ok, _, stderr) = check(Some("[topics]\nparitions = 3\n"), &[], &[]);
    assert!(!ok);
    assert!(stderr.contains("paritions"), "{stderr}");
    assert!(!stderr.contains("configuration is valid"), "{stderr}");

    let (ok, _, stderr) = check(None, &[("ALLREAD_TOPICS__PARITIONS", "3")], &[]);
    assert!(!ok);
    assert!(stderr.contains("ALLREAD_TOPICS__PARITIONS") && stderr.contains("paritions"), "{stderr}");
}

#[test]
fn a_bad_environment_value_is_refused_naming_the_variable() {
    let (ok, _, stderr) = check(None, &[("ALLREAD_TOPICS__PARTITIONS", "many")], &[]);
    assert!(!ok);
    assert!(stderr.contains("ALLREAD_TOPICS__PARTITIONS"), "{stderr}");
    assert!(stderr.contains("topics.partitions") && stderr.contains("i32"), "{stderr}");
}

#[test]
fn environment_over_file_and_flags_over_environment() {
    let (ok, stdout, stderr) = check(
        Some("application_id = \"file\"\n[topics]\npartitions = 3\n"),
        &[("ALLREAD_TOPICS__PARTITIONS", "16"), ("ALLREAD_APPLICATION_ID", "env")],
        &["--print", "--application-id", "flag"],
    );
    assert!(ok, "{stderr}");
    assert!(stdout.lines().any(|l| l == "partitions = 16"), "{stdout}");
    assert!(stdout.contains("application_id = \"flag\""), "{stdout}");
    assert!(stderr.contains("configuration is valid"));
}

#[test]
fn an_invalid_value_is_refused_naming_the_setting() {
    let (ok, _, stderr) = check(Some("[http]\nlisten = \"everywhere\"\n"), &[], &[]);
    assert!(!ok);
    assert!(stderr.contains("http.listen"), "{stderr}");

    let (ok, _, stderr) = check(None, &[("ALLREAD_HTTP__LISTEN", "everywhere")], &[]);
    assert!(!ok);
    assert!(stderr.contains("http.listen"), "{stderr}");

    // A memtable larger than half the memory budget could never be held.
    let (ok, _, stderr) = check(Some("[rocksdb]\nmemory_bytes = 33554432\nwrite_buffer_bytes = 33554432\n"), &[], &[]);
    assert!(!ok);
    assert!(stderr.contains("rocksdb.write_buffer_bytes"), "{stderr}");
}

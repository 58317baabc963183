//! `allread sim --live --clients` (issue 7): every simulated user is a chat client with its own
//! consumer group, and its reads are caused by the deliveries it gets. Through a running
//! allread (exactly_once), the receipts are exactly the model's, and the users' groups exist.

mod common;

use std::collections::BTreeSet;
use std::process::{Command, Output};
use std::time::Duration;

use allread::receipts::Event;
use allread::sim::workload::{generate, Shape};
use common::Setup;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn sim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_allread")).arg("sim").args(args).output().expect("running allread sim")
}

#[test]
fn clients_in_their_own_groups_read_what_they_received_and_the_receipts_are_the_model_s() {
    let s = Setup::new("clients");
    // The room topics exist before allread starts, so that its first subscription has them.
    for r in 0..5 {
        common::create_topic(&s.bootstrap, &s.room_topic(&format!("room{r}")), 1);
    }
    let allread = s.start();
    // 5 rooms of 4, 100 messages over 5 s of chat, members leaving and joining; at 10 times
    // real speed the slowest readers (a minute of chat) are done in about 7 s.
    let shape = ["--seed", "5", "--rooms", "5", "--members", "4", "--messages", "100", "--message-rate", "20"];
    let out = sim(&[
        &shape[..],
        &["--churn", "0.1", "--live", "--speed", "10", "--clients", "--exactly-once", "--wait", "60"],
        &["--bootstrap", &s.bootstrap, "--room-prefix", &s.room_prefix, "--read-topic", &s.read_topic],
        &["--output", &s.output],
    ]
    .concat());
    let all = text(&out);
    assert!(out.status.success(), "{all}\nallread's log:\n{}", allread.log_text());
    assert!(all.contains("missing=0 unexpected=0 wrong=0 duplicates=0"), "{all}");
    assert!(all.contains("sim: clients: "), "the clients' summary: {all}");
    assert!(!all.contains(" 0 reads sent"), "{all}");

    // The users of that chat, as the generator makes them (every join is a new user).
    let events = generate(&Shape {
        seed: 5,
        rooms: 5,
        members: 4,
        messages: 100,
        message_rate: 20.0,
        churn: 0.1,
        ..Shape::default()
    });
    let users: BTreeSet<String> = events
        .iter()
        .filter_map(|e| match &e.event {
            Event::Join { user_id, .. } => Some(user_id.to_string()),
            _ => None,
        })
        .collect();
    assert!(users.len() > 20, "churn brings new users: {}", users.len());
    assert!(all.contains(&format!("sim: clients: {} users, {} consumers", users.len(), users.len())), "{all}");

    // Each one had its consumer group on the broker (left empty, with its offsets, at the end).
    let probe: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &s.bootstrap).create().expect("a Kafka client");
    let list = probe.fetch_group_list(None, Duration::from_secs(30)).expect("listing the consumer groups");
    let groups: BTreeSet<String> = list.groups().iter().map(|g| g.name().to_string()).collect();
    let prefix = format!("{}user_", s.room_prefix);
    let ours: BTreeSet<String> = groups.iter().filter_map(|g| g.strip_prefix(&prefix)).map(String::from).collect();
    assert_eq!(ours, users, "one consumer group {prefix}<user id> per user");
    drop(allread);
}

#[test]
fn clients_need_live_and_refuse_check_only_and_too_many_users() {
    let out = sim(&["--clients"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--live"), "{}", text(&out));

    let out = sim(&["--clients", "--live", "--check-only"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--check-only"), "{}", text(&out));

    // 201 rooms of 10: 2,010 users, past the limit; refused before anything is written.
    let out = sim(&["--clients", "--live", "--produce-only", "--rooms", "201", "--messages", "10"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("2010 users, more than the limit of 2000"), "{}", text(&out));
}

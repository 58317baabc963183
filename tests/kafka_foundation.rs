//! The foundation on a real broker: JSON through rdkafka, regex subscription picking up a
//! topic created later, transactions honoured for `read_committed` consumers, the batch path
//! allread writes its changelog by, the topic-handle path its chat generator writes by, and
//! the record queue allread takes its input from in batches.

mod common;

use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::{json, Value};

fn producer(bootstrap: &str, transactional_id: Option<&str>) -> ThreadedProducer<DefaultProducerContext> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap).set("enable.idempotence", "true");
    if let Some(id) = transactional_id {
        config.set("transactional.id", id);
    }
    config.create().expect("producer")
}

/// A group consumer's settings: from the earliest record, no auto-commit.
fn consumer_config(bootstrap: &str, group: &str, isolation: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", isolation)
        .set("topic.metadata.refresh.interval.ms", "1000");
    config
}

fn consumer(bootstrap: &str, group: &str, isolation: &str) -> BaseConsumer {
    consumer_config(bootstrap, group, isolation).create().expect("consumer")
}

/// Polls until `want` records arrived or `timeout` passed; returns (topic, value) pairs.
fn collect(consumer: &BaseConsumer, want: usize, timeout: Duration) -> Vec<(String, Value)> {
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < want && Instant::now() < deadline {
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("consumer error");
            let value = serde_json::from_slice(msg.payload().expect("payload")).expect("JSON payload");
            out.push((msg.topic().to_string(), value));
        }
    }
    out
}

#[test]
fn json_records_round_trip_through_the_broker() {
    let bootstrap = common::broker();
    let topic = common::unique("foundation_json_");
    common::create_topic(&bootstrap, &topic, 1);
    let p = producer(&bootstrap, None);
    let sent: Vec<Value> = (0..20)
        .map(|i| json!({"type": "message", "message_id": format!("m{i}"), "sender_id": "alice", "sent_at": i}))
        .collect();
    for v in &sent {
        let payload = serde_json::to_vec(v).unwrap();
        p.send(BaseRecord::to(&topic).key("room").payload(&payload)).map_err(|(e, _)| e).unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();

    let c = consumer(&bootstrap, &common::unique("g_"), "read_committed");
    c.subscribe(&[&topic]).unwrap();
    let got: Vec<Value> = collect(&c, sent.len(), Duration::from_secs(30)).into_iter().map(|(_, v)| v).collect();
    assert_eq!(got, sent);
}

#[test]
fn regex_subscription_picks_up_a_room_topic_created_later() {
    let bootstrap = common::broker();
    // A pattern of the form ^chatroom_.* that only this run's topics match.
    let prefix = common::unique("chatroom_t") + "_";
    let early = format!("{prefix}early");
    common::create_topic(&bootstrap, &early, 1);

    let c = consumer(&bootstrap, &common::unique("g_"), "read_committed");
    c.subscribe(&[&format!("^{prefix}.*")]).unwrap();
    let p = producer(&bootstrap, None);
    p.send(BaseRecord::to(&early).key("k").payload(r#"{"n":1}"#)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let first = collect(&c, 1, Duration::from_secs(30));
    assert_eq!(first, vec![(early.clone(), json!({"n": 1}))]);
    // Commit, so that the rebalance the new topic causes does not hand "early" out again.
    c.commit_consumer_state(CommitMode::Sync).unwrap();

    let late = format!("{prefix}late");
    common::create_topic(&bootstrap, &late, 1);
    p.send(BaseRecord::to(&late).key("k").payload(r#"{"n":2}"#)).map_err(|(e, _)| e).unwrap();
    p.flush(Duration::from_secs(10)).unwrap();
    let second = collect(&c, 1, Duration::from_secs(45));
    assert_eq!(second, vec![(late, json!({"n": 2}))], "the topic created after subscribing was not picked up");
}

#[test]
fn read_committed_consumers_see_committed_transactions_only() {
    let bootstrap = common::broker();
    let topic = common::unique("foundation_txn_");
    common::create_topic(&bootstrap, &topic, 1);
    let p = producer(&bootstrap, Some(&common::unique("txn_")));
    let timeout = Duration::from_secs(30);
    p.init_transactions(timeout).unwrap();
    for (n, commit) in [(1, true), (2, false), (3, true)] {
        p.begin_transaction().unwrap();
        let payload = json!({ "n": n }).to_string();
        p.send(BaseRecord::to(&topic).key("k").payload(&payload)).map_err(|(e, _)| e).unwrap();
        p.flush(timeout).unwrap();
        if commit {
            p.commit_transaction(timeout).unwrap();
        } else {
            p.abort_transaction(timeout).unwrap();
        }
    }

    let committed = consumer(&bootstrap, &common::unique("g_"), "read_committed");
    committed.subscribe(&[&topic]).unwrap();
    let seen: Vec<Value> = collect(&committed, 3, Duration::from_secs(10)).into_iter().map(|(_, v)| v).collect();
    assert_eq!(seen, vec![json!({"n": 1}), json!({"n": 3})]);

    // The aborted record is on the log: an uncommitted reader sees it.
    let uncommitted = consumer(&bootstrap, &common::unique("g_"), "read_uncommitted");
    uncommitted.subscribe(&[&topic]).unwrap();
    let all: Vec<Value> = collect(&uncommitted, 3, Duration::from_secs(30)).into_iter().map(|(_, v)| v).collect();
    assert_eq!(all, vec![json!({"n": 1}), json!({"n": 2}), json!({"n": 3})]);
}

/// Collects the delivery opaque of every record reported.
#[derive(Default)]
struct Opaques(std::sync::Mutex<Vec<usize>>);

impl rdkafka::ClientContext for Opaques {}

impl rdkafka::producer::ProducerContext for Opaques {
    type DeliveryOpaque = usize;
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, opaque: usize) {
        self.0.lock().unwrap().push(opaque);
    }
}

#[test]
fn a_batch_goes_out_whole_in_order_with_its_tombstones_through_a_full_queue_and_in_its_transaction() {
    let bootstrap = common::broker();
    let topic = common::unique("foundation_batch_");
    common::create_topic(&bootstrap, &topic, 2);
    // A queue of 50 records: a batch of 1,000 fills it many times over.
    let p: ThreadedProducer<Opaques> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", common::unique("txn_"))
        .set("queue.buffering.max.messages", "50")
        .create_with_context(Opaques::default())
        .expect("producer");
    let timeout = Duration::from_secs(30);
    p.init_transactions(timeout).unwrap();
    let batch = |tag: &str| -> Vec<(String, Option<String>)> {
        (0..1000).map(|i| (format!("{tag}{i}"), (i % 7 != 3).then(|| format!("v{i}")))).collect()
    };
    for (tag, commit, opaque) in [("a", false, 7), ("c", true, 9)] {
        p.begin_transaction().unwrap();
        allread::kafka::send_batch(&p, &topic, 1, &batch(tag), opaque).expect("sent");
        if commit {
            p.commit_transaction(timeout).unwrap();
        } else {
            p.abort_transaction(timeout).unwrap();
        }
    }

    let c = consumer(&bootstrap, &common::unique("g_"), "read_committed");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 1, rdkafka::Offset::Beginning).unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < 1000 && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::from_millis(200)) {
            let m = m.expect("consumer error");
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
            got.push((text(m.key()).expect("key"), text(m.payload())));
        }
    }
    // Only the committed batch, each record once, in order; every seventh a tombstone.
    assert_eq!(got, batch("c"));
    assert!(c.poll(Duration::from_secs(1)).is_none(), "nothing after the batch");
    // Every record was reported once, with its batch's delivery opaque.
    p.flush(timeout).unwrap();
    let mut opaques = p.context().0.lock().unwrap().clone();
    opaques.sort_unstable();
    assert_eq!(opaques, [vec![7; 1000], vec![9; 1000]].concat());
}

#[test]
fn a_record_sent_by_topic_handle_lands_as_one_sent_by_name_would_through_a_full_queue() {
    let bootstrap = common::broker();
    let by_handle = common::unique("foundation_handle_");
    let by_name = common::unique("foundation_name_");
    common::create_topic(&bootstrap, &by_handle, 4);
    common::create_topic(&bootstrap, &by_name, 4);
    // A queue of 50 records: 600 records fill it many times over.
    let p: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "50")
        .create()
        .expect("producer");
    let base = 1_700_000_000_000i64;
    let records: Vec<(String, String, i64)> =
        (0..600).map(|i| (format!("room{}", i % 37), format!("v{i}"), base + i * 1000)).collect();
    let handle = allread::kafka::TopicHandle::new(&p, &by_handle).expect("handle");
    for (key, value, ts) in &records {
        allread::kafka::send_to(&handle, key.as_bytes(), value.as_bytes(), *ts).expect("sent by handle");
        let record = BaseRecord::to(&by_name).key(key.as_bytes()).payload(value.as_bytes()).timestamp(*ts);
        allread::kafka::send(&p, record).expect("sent by name");
    }
    drop(handle);
    allread::kafka::flush(&p, Duration::from_secs(30)).expect("flushed");

    // (partition, key, value, timestamp) of each topic's records, in each partition's order.
    let read = |topic: &str| {
        let c = consumer(&bootstrap, &common::unique("g_"), "read_committed");
        let mut tpl = rdkafka::TopicPartitionList::new();
        for partition in 0..4 {
            tpl.add_partition_offset(topic, partition, rdkafka::Offset::Beginning).unwrap();
        }
        c.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = Vec::new();
        while got.len() < records.len() && Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.expect("consumer error");
                let text = |b: Option<&[u8]>| String::from_utf8(b.expect("bytes").to_vec()).unwrap();
                got.push((m.partition(), text(m.key()), text(m.payload()), m.timestamp().to_millis().unwrap()));
            }
        }
        // Stable: each partition's records stay in the order they were read.
        got.sort_by_key(|(partition, ..)| *partition);
        got
    };
    let number = |value: &str| value[1..].parse::<u32>().unwrap();
    let got = read(&by_handle);
    let mut sent: Vec<(String, String, i64)> = got.iter().map(|(_, k, v, ts)| (k.clone(), v.clone(), *ts)).collect();
    sent.sort_by_key(|(_, value, _)| number(value));
    assert_eq!(sent, records, "every record once, with its key, value and timestamp");
    for pair in got.windows(2).filter(|w| w[0].0 == w[1].0) {
        assert!(number(&pair[0].2) < number(&pair[1].2), "a partition keeps the order sent: {pair:?}");
    }
    assert_eq!(got, read(&by_name), "the same partitions, in the same order, as records sent by name");
    let partitions: std::collections::BTreeSet<i32> = got.iter().map(|(p, ..)| *p).collect();
    assert!(partitions.len() > 1, "keys spread over partitions: {partitions:?}");
}

/// (partition, offset, key, value, timestamp, header value) of a record.
type Taken = (i32, i64, String, String, i64, Option<String>);

/// Takes records from `queue` (serving `c`'s own queue between batches, as allread's loop does)
/// until `want` arrived or `within` passed; returns them and how many `c`'s own `poll` gave.
fn take_batches(
    c: &BaseConsumer<allread::kafka::records::ForwardingContext>,
    queue: &mut allread::kafka::records::RecordQueue<'_>,
    want: usize,
    within: Duration,
) -> (Vec<Taken>, usize) {
    let text = |b: Option<&[u8]>| String::from_utf8(b.expect("bytes").to_vec()).unwrap();
    let deadline = Instant::now() + within;
    let (mut got, mut by_poll) = (Vec::new(), 0);
    while got.len() < want && Instant::now() < deadline {
        while let Some(m) = c.poll(Duration::ZERO) {
            m.expect("consumer error");
            by_poll += 1;
        }
        let n = queue.poll(Duration::from_millis(100), 64, |m| {
            let m = m.expect("consumer error");
            let header = m.headers().map(|h| {
                use rdkafka::message::Headers;
                let h = h.get(0);
                assert_eq!(h.key, "h");
                text(h.value)
            });
            got.push((m.partition(), m.offset(), text(m.key()), text(m.payload()), m.timestamp().unwrap(), header));
        });
        assert!(n <= 64, "at most the batch asked for: {n}");
    }
    (got, by_poll)
}

#[test]
fn forwarded_partitions_are_served_in_batches_in_order_and_a_seek_drops_what_was_fetched_before() {
    use allread::kafka::records::{ForwardingContext, RecordQueue};
    use rdkafka::message::{Header, OwnedHeaders};

    let bootstrap = common::broker();
    let topic = common::unique("foundation_batches_");
    common::create_topic(&bootstrap, &topic, 2);
    let p = producer(&bootstrap, None);
    let base = 1_700_000_000_000i64;
    let send = |partition: i32, i: i64| {
        let (key, value) = (format!("k{partition}-{i}"), format!("v{partition}-{i}"));
        let mut record = BaseRecord::to(&topic)
            .partition(partition)
            .key(key.as_bytes())
            .payload(value.as_bytes())
            .timestamp(base + i);
        if i % 50 == 0 {
            record = record.headers(OwnedHeaders::new().insert(Header { key: "h", value: Some(&format!("x{i}")) }));
        }
        allread::kafka::send(&p, record).expect("sent");
    };
    let expected = |partition: i32, i: i64| -> Taken {
        let header = (i % 50 == 0).then(|| format!("x{i}"));
        (partition, i, format!("k{partition}-{i}"), format!("v{partition}-{i}"), base + i, header)
    };
    for i in 0..200 {
        send(0, i);
        send(1, i);
    }
    allread::kafka::flush(&p, Duration::from_secs(30)).expect("flushed");

    let c: BaseConsumer<ForwardingContext> = consumer_config(&bootstrap, &common::unique("g_"), "read_uncommitted")
        .create_with_context(ForwardingContext::default())
        .expect("consumer");
    let mut queue = RecordQueue::open(&c, &c.context().forwarding);
    c.subscribe(&[&topic]).unwrap();
    let (mut got, by_poll) = take_batches(&c, &mut queue, 400, Duration::from_secs(30));
    assert_eq!(by_poll, 0, "every record of an assigned partition comes from the record queue");
    // Stable: each partition's records stay in the order they were taken.
    got.sort_by_key(|t| t.0);
    let want: Vec<Taken> = (0..2).flat_map(|p| (0..200).map(move |i| expected(p, i))).collect();
    assert_eq!(got, want, "every record once, each partition in order, with its key, value, timestamp, headers");

    // Records fetched into the queue and not taken yet are dropped by a seek, which serves
    // the partition again from where it points.
    for i in 200..300 {
        send(0, i);
    }
    allread::kafka::flush(&p, Duration::from_secs(30)).expect("flushed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.len() < 100 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(queue.len(), 100, "fetched into the queue, not taken");
    c.seek(&topic, 0, rdkafka::Offset::Offset(250), Duration::from_secs(10)).expect("seek");
    let (got, by_poll) = take_batches(&c, &mut queue, 50, Duration::from_secs(30));
    assert_eq!(by_poll, 0);
    assert_eq!(got, (250..300).map(|i| expected(0, i)).collect::<Vec<_>>(), "from the seek on, once each");
    let (more, _) = take_batches(&c, &mut queue, 1, Duration::from_secs(2));
    assert!(more.is_empty(), "nothing fetched before the seek is served after it: {:?}", more.first());
}

#[test]
fn records_of_one_topic_in_one_batch_share_a_topic_identity_and_records_of_other_topics_or_batches_do_not() {
    use allread::kafka::records::{ForwardingContext, RecordQueue};

    let bootstrap = common::broker();
    let topics: Vec<String> = (0..3).map(|_| common::unique("foundation_identity_")).collect();
    for topic in &topics {
        common::create_topic(&bootstrap, topic, 1);
    }
    let p = producer(&bootstrap, None);
    let send_all = |round: i32| {
        for i in 0..100 {
            for topic in &topics {
                let payload = format!("{round}-{i}");
                allread::kafka::send(&p, BaseRecord::<(), _>::to(topic).payload(payload.as_bytes())).expect("sent");
            }
        }
        allread::kafka::flush(&p, Duration::from_secs(30)).expect("flushed");
    };
    let c: BaseConsumer<ForwardingContext> = consumer_config(&bootstrap, &common::unique("g_"), "read_uncommitted")
        .create_with_context(ForwardingContext::default())
        .expect("consumer");
    let mut queue = RecordQueue::open(&c, &c.context().forwarding);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    c.subscribe(&names).unwrap();
    // Each round's 300 records, fetched into the queue first, then taken in one batch: (topic,
    // identity) of each.
    let mut take_round = |round: i32| -> Vec<(String, (u64, usize))> {
        send_all(round);
        let deadline = Instant::now() + Duration::from_secs(30);
        while queue.len() < 300 && Instant::now() < deadline {
            while let Some(m) = c.poll(Duration::ZERO) {
                m.expect("consumer error");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut got = Vec::new();
        queue.poll(Duration::from_secs(1), 1_000, |m| {
            let m = m.expect("consumer error");
            got.push((m.topic().to_string(), m.topic_identity()));
        });
        assert_eq!(got.len(), 300, "the round's records, in one batch");
        got
    };
    let first = take_round(0);
    let second = take_round(1);
    for batch in [&first, &second] {
        let distinct: std::collections::HashSet<&str> = batch.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(distinct.len(), 3, "the batch holds records of every topic");
        for a in batch {
            for b in batch {
                assert_eq!(
                    a.0 == b.0,
                    a.1 == b.1,
                    "within a batch, the same identity exactly when of one topic: {a:?} {b:?}"
                );
            }
        }
    }
    for a in &first {
        for b in &second {
            assert_ne!(a.1, b.1, "records of different batches never share an identity");
        }
    }
}

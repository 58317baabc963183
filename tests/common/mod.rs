//! Helpers shared by the tests that need a real Kafka broker.
//!
//! Every test names its topics and groups with a random suffix, so runs never see each
//! other's records. A missing broker is a failure with directions, never a silent skip.

#![allow(dead_code)]

pub mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

/// The broker under test: `KAFKA_BOOTSTRAP`, or the one `scripts/kafka start` runs.
pub fn bootstrap() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

/// The bootstrap address, once a broker has answered a metadata request there.
pub fn broker() -> String {
    let bootstrap = bootstrap();
    let probe: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", &bootstrap).create().expect("creating a Kafka client");
    if let Err(e) = probe.fetch_metadata(None, Duration::from_secs(15)) {
        panic!(
            "no Kafka broker answers at {bootstrap} ({e}).\n\
             Start the local one with `scripts/kafka start` (scripts/test does this for you),\n\
             or point the tests at another broker with KAFKA_BOOTSTRAP=host:port."
        );
    }
    bootstrap
}

/// A name unique to this run and call: `<prefix><time><pid><counter>`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() % 1_000_000_000_000;
    format!("{prefix}{nanos:x}{:x}{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

pub fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client")
}

pub fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    let admin = admin(bootstrap);
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = futures::executor::block_on(admin.create_topics([&topic], &opts)).expect("create_topics");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

// ------------------------------------------------------------------ running the binary

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rdkafka::message::{Headers, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use serde_json::Value;

/// One test's names: topics, group, state, all unique to the test.
pub struct Setup {
    pub bootstrap: String,
    pub app: String,
    pub room_prefix: String,
    pub read_topic: String,
    pub output: String,
    pub dir: tempfile::TempDir,
    /// The HTTP port of the `allread run` processes this setup starts.
    pub http_port: u16,
}

impl Setup {
    pub fn new(name: &str) -> Setup {
        let bootstrap = broker();
        let tag = unique(&format!("{name}_"));
        let s = Setup {
            app: format!("test-{tag}"),
            room_prefix: format!("chatroom_{tag}_"),
            read_topic: format!("reads_{tag}"),
            output: format!("receipts_{tag}"),
            dir: tempfile::tempdir().unwrap(),
            bootstrap,
            http_port: free_port(),
        };
        create_topic(&s.bootstrap, &s.read_topic, 2);
        s
    }

    pub fn room_topic(&self, room: &str) -> String {
        format!("{}{room}", self.room_prefix)
    }

    pub fn dlq(&self) -> String {
        format!("{}-dlq", self.app)
    }

    /// Writes the configuration file for `allread run` and returns its path.
    pub fn config(&self, extra: &str) -> PathBuf {
        self.instance_config("", self.http_port, false, extra)
    }

    /// The configuration of one of several instances: its own file, state and HTTP port,
    /// and (with `advertise`) its HTTP address published through the group.
    pub fn instance_config(&self, name: &str, port: u16, advertise: bool, extra: &str) -> PathBuf {
        let path = self.dir.path().join(format!("allread{name}.toml"));
        let advertised = if advertise { format!("advertised = \"127.0.0.1:{port}\"") } else { String::new() };
        let text = format!(
            r#"application_id = "{app}"
bootstrap_servers = "{bootstrap}"
state_dir = "{state}"

[topics]
room_prefix = "{prefix}"
room_pattern = "^{prefix}.*"
read = "{read}"
output = "{output}"
partitions = 4

[http]
listen = "127.0.0.1:{port}"
{advertised}

[processing]
metadata_refresh_ms = 1000
{commit}
{extra}
"#,
            // `extra` may set its own commit interval; it goes under [processing] (and may
            // open tables after it, such as [kafka]).
            commit = if extra.contains("commit_interval_ms") { "" } else { "commit_interval_ms = 100" },
            port = port,
            app = self.app,
            bootstrap = self.bootstrap,
            state = self.dir.path().join(format!("state{name}")).display(),
            prefix = self.room_prefix,
            read = self.read_topic,
            output = self.output,
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The last `lines` lines of every allread log in this setup's directory, for a failure's
    /// message.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut logs: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.retain(|p| p.extension().is_some_and(|e| e == "log"));
        logs.sort();
        let mut out = String::new();
        for p in logs {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out += &format!("--- {} (last {lines} lines)\n", p.display());
            for l in &all[all.len().saturating_sub(lines)..] {
                out += l;
                out.push('\n');
            }
        }
        out
    }

    pub fn start(&self) -> Allread {
        let config = self.config("");
        Allread::start(&config, &self.dir.path().join(format!("allread-{}.log", unique(""))))
    }
}

/// A running `allread run` process.
pub struct Allread {
    child: Child,
    pub log: PathBuf,
}

impl Allread {
    pub fn start(config: &Path, log: &Path) -> Allread {
        Allread::start_with_env(config, log, &[])
    }

    /// [`Allread::start`] with these environment variables set too.
    pub fn start_with_env(config: &Path, log: &Path, env: &[(&str, &str)]) -> Allread {
        let file = std::fs::File::create(log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_allread"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("starting allread");
        Allread { child, log: log.to_path_buf() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} failed");
    }

    /// SIGTERM, then the exit status (within `limit`).
    pub fn terminate(mut self, limit: Duration) -> std::process::ExitStatus {
        self.signal("-TERM");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("allread did not exit within {limit:?} of SIGTERM; log: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// kill -9.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Allread {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Chat {
    producer: ThreadedProducer<DefaultProducerContext>,
}

impl Chat {
    pub fn new(bootstrap: &str) -> Chat {
        let producer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("linger.ms", "2")
            .set("enable.idempotence", "true")
            .create()
            .expect("producer");
        Chat { producer }
    }

    pub fn send(&self, topic: &str, key: &str, value: &str) {
        self.producer.send(BaseRecord::to(topic).key(key).payload(value)).map_err(|(e, _)| e).expect("producing");
    }

    /// Sends with the producer's own headers, as a chat client that traces its requests would.
    pub fn send_with_headers(&self, topic: &str, key: &str, value: &str, headers: &[(&str, &str)]) {
        let mut h = rdkafka::message::OwnedHeaders::new();
        for (k, v) in headers {
            h = h.insert(rdkafka::message::Header { key: k, value: Some(*v) });
        }
        self.producer
            .send(BaseRecord::to(topic).key(key).payload(value).headers(h))
            .map_err(|(e, _)| e)
            .expect("producing");
    }

    pub fn json(&self, topic: &str, key: &str, value: &Value) {
        self.send(topic, key, &value.to_string());
    }

    pub fn flush(&self) {
        self.producer.flush(Duration::from_secs(30)).expect("flush");
    }
}

/// A read_committed consumer of one topic from its beginning.
pub struct Reader {
    consumer: BaseConsumer,
}

/// One consumed record: its JSON value (or raw text) and headers.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Record {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.payload).unwrap_or(Value::Null)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

impl Reader {
    /// Reads what is committed (`read_committed`), as a downstream service would.
    pub fn new(bootstrap: &str, topic: &str) -> Reader {
        Self::with_isolation(bootstrap, topic, "read_committed")
    }

    /// Also reads records of open and aborted transactions (`read_uncommitted`).
    pub fn uncommitted(bootstrap: &str, topic: &str) -> Reader {
        Self::with_isolation(bootstrap, topic, "read_uncommitted")
    }

    fn with_isolation(bootstrap: &str, topic: &str, isolation: &str) -> Reader {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", unique("reader_"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .set("topic.metadata.refresh.interval.ms", "1000")
            .create()
            .expect("consumer");
        consumer.subscribe(&[topic]).unwrap();
        Reader { consumer }
    }

    /// Records until `want` in total were read or `timeout` passed.
    pub fn read(&self, want: usize, timeout: Duration) -> Vec<Record> {
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < want && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = self.consumer.poll(Duration::from_millis(100)) {
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter()
                            .map(|h| {
                                (h.key.to_string(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                out.push(Record {
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers,
                });
            }
        }
        out
    }

    /// Everything that arrives until nothing more has come for `quiet`.
    pub fn drain(&self, quiet: Duration) -> Vec<Record> {
        let mut out = Vec::new();
        loop {
            let more = self.read(usize::MAX, quiet);
            if more.is_empty() {
                return out;
            }
            out.extend(more);
        }
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The whole response (status line, headers, body) to `GET path` on 127.0.0.1:`port`.
/// No HTTP client crate needed for this.
pub fn http_response(port: u16, path: &str) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// `GET path` on 127.0.0.1:`port`: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let response = http_response(port, path)?;
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The JSON body of `GET path`, with its status.
pub fn http_json(port: u16, path: &str) -> (u16, Value) {
    let (status, body) = http_get(port, path).unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Like [`http_json`], with status 0 when nothing answers (a stopped instance).
pub fn try_http_json(port: u16, path: &str) -> (u16, Value) {
    match http_get(port, path) {
        Ok((status, body)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// The value of one sample in a Prometheus text exposition (`name{labels}` as written).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    })
}

/// The partitions of `topics` whose committed offset in consumer group `group` is short of
/// their end: (topic, partition, committed, end), with -1 for nothing committed.
pub fn uncommitted(bootstrap: &str, group: &str, topics: &[String]) -> Vec<(String, i32, i64, i64)> {
    use rdkafka::{Offset, TopicPartitionList};
    let timeout = Duration::from_secs(10);
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for topic in topics {
        let metadata = c.fetch_metadata(Some(topic), timeout).unwrap();
        for p in metadata.topics()[0].partitions() {
            let (_, end) = c.fetch_watermarks(topic, p.id(), timeout).unwrap();
            tpl.add_partition(topic, p.id());
            ends.insert((topic.clone(), p.id()), end);
        }
    }
    let committed = c.committed_offsets(tpl, timeout).unwrap();
    committed
        .elements()
        .iter()
        .filter_map(|e| {
            let end = ends[&(e.topic().to_string(), e.partition())];
            let at = if let Offset::Offset(o) = e.offset() { o } else { -1 };
            (at < end).then(|| (e.topic().to_string(), e.partition(), at, end))
        })
        .collect()
}

//! The `allread` command line: a thin front end over the library.

use std::fs::File;
use std::io::{self, BufReader, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};

use allread::codec::{encode_receipt_into, DecodeLimits};
use allread::config::Config;
use allread::demo::{run_demo, DemoOptions};
use allread::kafka::{base_client_config, with_producer_passthrough};
use allread::metrics::Metrics;
use allread::receipts::{Engine, EngineConfig};
use allread::replay::{replay, ReplaySummary, TopicNames};
use allread::runtime::{self, Handle, Hooks};
use allread::store::memory::MemoryStore;
use allread::store::rocks::{RocksOptions, RocksStore};
use allread::topology;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "allread", version, about = "Read receipts for chat systems on Apache Kafka")]
struct Cli {
    /// Log format on standard error; verbosity follows RUST_LOG (default "info").
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the processor: consume room topics and read events, emit receipt_complete.
    Run {
        #[command(flatten)]
        settings: Settings,
    },
    /// Run allread on an embedded broker (or --bootstrap) over a simulated chat, printing
    /// receipts as they are emitted.
    Demo {
        /// Use this Kafka broker instead of the embedded mock one.
        #[arg(long, env = "KAFKA_BOOTSTRAP")]
        bootstrap: Option<String>,
        /// How long the simulated chat goes on, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        #[arg(long, default_value_t = 42)]
        seed: u64,
    },
    /// Configuration: `allread config check [--print]`.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Describe the processor's topology, create its topics, or check them for drift.
    Topology {
        #[command(subcommand)]
        action: TopologyAction,
    },
    /// A simulated chat on Kafka: write it (as fast as possible, or live at its own pace) and
    /// check the receipts a running processor gives for it against the spec's reference model.
    Sim {
        #[command(flatten)]
        sim: SimArgs,
    },
    /// The throughput limit: consume the chat's topics and produce every record to SINK with
    /// allread's client settings, until EXPECT records went through.
    Passthrough {
        #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
        bootstrap: String,
        #[arg(long, default_value = "^chatroom_.*")]
        room_pattern: String,
        #[arg(long, default_value = "read_events")]
        read_topic: String,
        #[arg(long)]
        sink: String,
        #[arg(long)]
        expect: u64,
        /// Also measure how long after its due time (its timestamp) each record could be read
        /// in SINK, leaving out the first SECS seconds: the transport floor for latency runs.
        #[arg(long, value_name = "SECS")]
        latency_warmup: Option<u64>,
    },
    /// Run the receipt engine over records from a JSON Lines file (no Kafka) and print
    /// every receipt_complete as JSON, one per line.
    ///
    /// Each line: {"topic": "chatroom_<room>" | "read_events", "value": {...}, "timestamp": <epoch ms>}.
    Replay {
        /// The input file ("-" for standard input).
        input: PathBuf,
        /// Keep state in RocksDB in this directory (default: in memory).
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Prefix of room topics; the rest of the name is the room id.
        #[arg(long, default_value = "chatroom_")]
        room_prefix: String,
        #[arg(long, default_value = "read_events")]
        read_topic: String,
    },
}

#[derive(clap::Args)]
struct SimArgs {
    #[arg(long, env = "KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Members of an ordinary room.
    #[arg(long, default_value_t = 10)]
    members: usize,
    /// How many of the rooms have --large-members members.
    #[arg(long, default_value_t = 0)]
    large_rooms: usize,
    #[arg(long, default_value_t = 1000)]
    large_members: usize,
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// Messages per second of chat time.
    #[arg(long, default_value_t = 1000.0)]
    message_rate: f64,
    #[arg(long, default_value_t = 0.2)]
    slow_readers: f64,
    #[arg(long, default_value_t = 0.1)]
    offline_readers: f64,
    /// Per message, the chance that a member leaves and a new user joins.
    #[arg(long, default_value_t = 0.0)]
    churn: f64,
    #[arg(long, default_value = "chatroom_")]
    room_prefix: String,
    #[arg(long, default_value = "read_events")]
    read_topic: String,
    #[arg(long, default_value_t = 8)]
    read_partitions: i32,
    #[arg(long, default_value = "receipt_complete")]
    output: String,
    /// Produce each event at its chat time (open loop), not as fast as possible.
    #[arg(long)]
    live: bool,
    /// In live mode, run chat time this many times faster than the clock.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Only write the chat (no check), or only check (the chat was written before).
    #[arg(long, conflicts_with = "check_only")]
    produce_only: bool,
    #[arg(long)]
    check_only: bool,
    /// Seconds to wait for the receipts once the chat is written.
    #[arg(long, default_value_t = 120)]
    wait: u64,
    /// Receipts emitted twice count as failures.
    #[arg(long)]
    exactly_once: bool,
    /// Seconds between creating the chat's topics and writing its first event (start a
    /// processor meanwhile, so that it subscribes before the chat begins).
    #[arg(long, default_value_t = 0)]
    start_after: u64,
    /// Leave the receipts of reads due in the chat's first SECS seconds out of the latency
    /// figures (they are still checked): a warm-up.
    #[arg(long, default_value_t = 0)]
    warmup: u64,
    /// Run every user as a chat client (needs --live; not with --check-only): one producer
    /// writes the room topics (messages, joins, leaves) open loop, and each user has its own
    /// consumer (group <room-prefix>user_<id>) on its rooms' topics and sends its reads once it
    /// has received the messages, after its reading delay. At most 2000 users (one Kafka
    /// consumer each).
    #[arg(long, requires = "live", conflicts_with = "check_only")]
    clients: bool,
    /// Write this file once the ground truth is computed and the check has begun (start the
    /// system under test after it appears, so that the two do not share the CPU meanwhile).
    #[arg(long)]
    ready_file: Option<std::path::PathBuf>,
    /// Write the read -> receipt latency second by second of the chat (live only; the
    /// warm-up included) to this file: the second its completing event was due, receipts,
    /// p50, p99, max (ms), tab-separated. Shows when a tail happened, not only how long.
    #[arg(long)]
    latency_timeline: Option<std::path::PathBuf>,
}

impl SimArgs {
    fn options(&self) -> allread::sim::run::Options {
        use allread::sim::workload::Shape;
        allread::sim::run::Options {
            shape: Shape {
                seed: self.seed,
                rooms: self.rooms,
                members: self.members,
                large_rooms: self.large_rooms,
                large_members: self.large_members,
                messages: self.messages,
                message_rate: self.message_rate,
                slow_readers: self.slow_readers,
                offline_readers: self.offline_readers,
                churn: self.churn,
                ..Shape::default()
            },
            bootstrap: self.bootstrap.clone(),
            room_prefix: self.room_prefix.clone(),
            read_topic: self.read_topic.clone(),
            read_partitions: self.read_partitions,
            output: self.output.clone(),
            live: self.live,
            speed: self.speed,
            produce: !self.check_only,
            check: !self.produce_only,
            wait: std::time::Duration::from_secs(self.wait),
            exactly_once: self.exactly_once,
            start_after: std::time::Duration::from_secs(self.start_after),
            warmup: std::time::Duration::from_secs(self.warmup),
            clients: self.clients,
            ready_file: self.ready_file.clone(),
            latency_timeline: self.latency_timeline.clone(),
        }
    }
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Validate the effective configuration (defaults < file < ALLREAD_* < flags) without
    /// starting anything; exit 1 naming the first problem.
    Check {
        #[command(flatten)]
        settings: Settings,
        /// Print the effective configuration as TOML.
        #[arg(long)]
        print: bool,
    },
}

#[derive(Subcommand)]
enum TopologyAction {
    /// Print the topology as Kafka Streams' Topology#describe() does (or as Mermaid).
    Describe {
        #[command(flatten)]
        settings: Settings,
        #[arg(long)]
        mermaid: bool,
    },
    /// Create the topics allread owns that are missing (idempotent).
    Apply {
        #[command(flatten)]
        settings: Settings,
    },
    /// Report where the cluster differs from the topology, changing nothing; exit 1 on drift.
    Check {
        #[command(flatten)]
        settings: Settings,
    },
}

/// Settings: defaults, then the TOML file, then `ALLREAD_<SECTION>__<KEY>` environment
/// variables, then these flags.
#[derive(clap::Args)]
struct Settings {
    /// A TOML configuration file (see README: configuration).
    #[arg(long, short = 'c', env = "ALLREAD_CONFIG")]
    config: Option<PathBuf>,
    #[arg(long)]
    bootstrap_servers: Option<String>,
    #[arg(long)]
    application_id: Option<String>,
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Partitions of the repartition topic (the number of tasks).
    #[arg(long)]
    partitions: Option<i32>,
}

impl Settings {
    fn load(&self) -> anyhow::Result<Config> {
        // vars_os: std::env::vars would panic on any variable that is not UTF-8, ours or not.
        let env =
            std::env::vars_os().map(|(k, v)| (k.to_string_lossy().into_owned(), v.to_string_lossy().into_owned()));
        let mut cfg = Config::load(self.config.as_deref(), env)?;
        let flags = allread::config::Overrides {
            bootstrap_servers: self.bootstrap_servers.clone(),
            application_id: self.application_id.clone(),
            state_dir: self.state_dir.clone(),
            partitions: self.partitions,
        };
        flags.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal (and never with NO_COLOR): log files stay plain text.
    let ansi = io::IsTerminal::is_terminal(&io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(io::stderr).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// mimalloc gives memory that stayed free for a second back to the system (its purge delay),
/// and a later allocation faults it in again, a page at a time, zeroed. The input's records
/// and the router's queues come and go in waves, so in the benchmark's backlog that was about
/// 100,000 page faults and 13% of all CPU samples, nearly all of it zeroing pages. allread
/// keeps what it has allocated instead: its resident memory stays at its peak, which is what
/// it must be sized for anyway (BENCHMARKS.md, 6 December, a twelfth session). Setting
/// `MIMALLOC_PURGE_DELAY` (milliseconds) restores purging.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one of mimalloc's options; any value is valid, and -1 means never purge.
        unsafe { mimalloc_options::mi_option_set(mimalloc_options::PURGE_DELAY, -1) };
    }
}

/// The two mimalloc functions allread calls itself (the `mimalloc` crate links them).
mod mimalloc_options {
    use std::ffi::{c_int, c_long};

    /// `mi_option_purge_delay` in `mimalloc.h`'s `mi_option_e`, the same in mimalloc 2 and 3
    /// (the `libmimalloc-sys` crate does not name it). A test checks its default.
    pub const PURGE_DELAY: c_int = 15;

    extern "C" {
        pub fn mi_option_set(option: c_int, value: c_long);
        #[cfg(test)]
        pub fn mi_option_get(option: c_int) -> c_long;
    }
}

fn main() -> anyhow::Result<()> {
    keep_freed_memory();
    // Failure injection for tests (the `failpoints` feature): FAILPOINTS configures them.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { settings } => {
            init_logs(cli.log_format);
            let cfg = settings.load()?;
            run_until_signal(cfg)
        }
        Command::Demo { bootstrap, seconds, seed } => {
            // The demo narrates on stdout; keep logs to errors unless RUST_LOG asks for more.
            if std::env::var_os("RUST_LOG").is_none() {
                std::env::set_var("RUST_LOG", "error");
            }
            init_logs(cli.log_format);
            run_demo(DemoOptions { bootstrap, seconds, seed })
        }
        Command::Config { action: ConfigAction::Check { settings, print } } => {
            let cfg = settings.load()?;
            if print {
                print!("{}", toml::to_string(&cfg)?);
            }
            eprintln!("configuration is valid");
            Ok(())
        }
        Command::Topology { action } => topology_command(action),
        Command::Sim { sim } => {
            allread::sim::run::run(&sim.options())?;
            Ok(())
        }
        Command::Passthrough { bootstrap, room_pattern, read_topic, sink, expect, latency_warmup } => {
            let latency = latency_warmup.map(std::time::Duration::from_secs);
            allread::sim::run::passthrough(&bootstrap, &room_pattern, &read_topic, &sink, expect, latency)
        }
        Command::Replay { input, state_dir, room_prefix, read_topic } => {
            let reader: Box<dyn io::BufRead> = if input.as_os_str() == "-" {
                Box::new(BufReader::new(io::stdin()))
            } else {
                let file = File::open(&input).with_context(|| format!("opening {}", input.display()))?;
                Box::new(BufReader::new(file))
            };
            let topics = TopicNames { room_prefix, read_topic };
            let summary = match state_dir {
                Some(dir) => {
                    let store = RocksStore::open(&dir, &RocksOptions::default())
                        .with_context(|| format!("opening state in {}", dir.display()))?;
                    run_replay(Engine::new(store, EngineConfig::default()), reader, &topics)?
                }
                None => run_replay(Engine::new(MemoryStore::new(), EngineConfig::default()), reader, &topics)?,
            };
            for r in &summary.rejected {
                eprintln!("line {}: rejected ({}): {}", r.line, r.kind, r.reason);
            }
            eprintln!("{} records applied, {} rejected", summary.records, summary.rejected.len());
            Ok(())
        }
    }
}

/// Runs the processor on its own thread and the HTTP server on this one, until SIGTERM or
/// SIGINT; then gives the processor `shutdown_timeout_ms` to commit and leave the group.
fn run_until_signal(cfg: Config) -> anyhow::Result<()> {
    let shutdown = Arc::new(AtomicBool::new(false));
    let grace = Duration::from_millis(cfg.processing.shutdown_timeout_ms);
    let metrics = Arc::new(Metrics::new());
    let handle = Arc::new(Handle::default());
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = signals
        .block_on(tokio::net::TcpListener::bind(&cfg.http.listen))
        .with_context(|| format!("listening on {} (http.listen)", cfg.http.listen))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz, /readyz and queries");
    let app = allread::http::router(metrics.clone(), handle.clone());
    let worker = {
        let shutdown = shutdown.clone();
        let hooks = Hooks { handle: Some(handle), metrics: Some(metrics), ..Hooks::default() };
        std::thread::Builder::new().name("allread".into()).spawn(move || runtime::run(cfg, shutdown, hooks))?
    };
    let finished = signals.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the HTTP server stopped");
            }
        });
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let worker_done = async {
            while !worker.is_finished() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight work"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight work"),
            _ = worker_done => return Ok::<bool, io::Error>(true),
        }
        Ok(false)
    })?;
    shutdown.store(true, Ordering::Relaxed);
    if !finished {
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            eprintln!("allread: shutdown took longer than {grace:?}; exiting without a clean leave");
            std::process::exit(2);
        });
    }
    match worker.join() {
        Ok(result) => {
            result?;
            Ok(())
        }
        Err(_) => anyhow::bail!("the processing thread panicked"),
    }
}

fn topology_command(action: TopologyAction) -> anyhow::Result<()> {
    match action {
        TopologyAction::Describe { settings, mermaid } => {
            let t = topology::build(&settings.load()?);
            print!("{}", if mermaid { t.mermaid() } else { t.describe() });
        }
        TopologyAction::Apply { settings } => {
            let cfg = settings.load()?;
            let created =
                topology::apply(&with_producer_passthrough(base_client_config(&cfg), &cfg), &topology::build(&cfg))?;
            if created.is_empty() {
                println!("nothing to create: every topic allread owns exists");
            }
            for name in created {
                println!("created {name}");
            }
        }
        TopologyAction::Check { settings } => {
            let cfg = settings.load()?;
            let drift =
                topology::check(&with_producer_passthrough(base_client_config(&cfg), &cfg), &topology::build(&cfg))?;
            if drift.is_empty() {
                println!("no drift: the cluster matches the topology");
                return Ok(());
            }
            for d in &drift {
                println!("{}: {}", d.topic, d.problem);
            }
            anyhow::bail!("{} difference(s) between the cluster and the topology", drift.len());
        }
    }
    Ok(())
}

fn run_replay<S: allread::store::KvStore>(
    mut engine: Engine<S>,
    reader: Box<dyn io::BufRead>,
    topics: &TopicNames,
) -> anyhow::Result<ReplaySummary> {
    let stdout = io::stdout();
    let mut out = stdout.lock();
    let mut failed = None;
    let mut line = Vec::new();
    let summary = replay(&mut engine, reader, topics, &DecodeLimits::default(), 10_000, |r| {
        if failed.is_none() {
            encode_receipt_into(&mut line, r);
            line.push(b'\n');
            failed = out.write_all(&line).err();
        }
    })?;
    if let Some(e) = failed {
        return Err(e).context("writing receipts");
    }
    for (name, value) in engine.outcomes().iter().filter(|(_, v)| *v > 0) {
        eprintln!("{name}: {value}");
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use std::ffi::c_void;

    extern "C" {
        fn malloc(size: usize) -> *mut c_void;
        fn free(p: *mut c_void);
        fn mi_is_in_heap_region(p: *const c_void) -> bool;
    }

    /// `keep_freed_memory` sets mimalloc's purge delay to "never", unless
    /// `MIMALLOC_PURGE_DELAY` says otherwise. Before it runs, the option is mimalloc 3's
    /// default, 1,000 ms, which no option next to it has, or the variable's value: so the
    /// option it sets is the purge delay. (One test: the option is process-wide.)
    #[test]
    fn allread_keeps_freed_memory_unless_the_variable_says_otherwise() {
        use super::mimalloc_options::{mi_option_get, PURGE_DELAY};
        // SAFETY: reads an option; mimalloc initialises its options on first use.
        let get = || unsafe { mi_option_get(PURGE_DELAY) };
        let from_env = std::env::var("MIMALLOC_PURGE_DELAY").ok().map(|v| v.parse().expect("a number"));
        assert_eq!(get(), from_env.unwrap_or(1000), "option {PURGE_DELAY} is not mimalloc's purge delay");
        super::keep_freed_memory();
        assert_eq!(get(), from_env.unwrap_or(-1), "the variable wins; without it, freed memory is kept");
    }

    /// librdkafka and RocksDB call `malloc` as C does: with mimalloc's `override` feature that
    /// is mimalloc's, not glibc's (Cargo.toml says why).
    #[test]
    fn c_code_allocates_from_mimalloc_too() {
        // SAFETY: a plain allocation, checked and freed by the allocator that made it.
        unsafe {
            let p = malloc(200);
            assert!(!p.is_null());
            assert!(mi_is_in_heap_region(p), "malloc is glibc's: the mimalloc crate lost its `override` feature");
            free(p);
        }
    }
}

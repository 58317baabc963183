//! The production [`KvStore`]: one RocksDB instance per task, as Kafka Streams keeps one
//! store instance per task. Each instance owns its directory, memtables and write-ahead log
//! (if it keeps one, see [`RocksOptions::wal`]); all instances of a process may share one
//! block cache ([`RocksOptions::block_cache`]) and one writer thread for the batches of
//! [`KvStore::start_write`] ([`RocksOptions::background_writes`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, Direction, IteratorMode, Options,
    WriteBufferManager, DB,
};

use super::{KvStore, StoreError, WriteBatch};

/// How to find the "group" prefix of a key (for the engine: the room), so that RocksDB can
/// keep prefix bloom filters and a prefix scan skips files that hold nothing of the group.
/// `None` from `prefix_len`: the key belongs to no group.
#[derive(Clone, Copy)]
pub struct KeyPrefix {
    /// Stored in every SST file; change it when `prefix_len` changes meaning.
    pub name: &'static str,
    pub prefix_len: fn(&[u8]) -> Option<usize>,
}

/// Tuning shared by every task's store.
#[derive(Clone)]
pub struct RocksOptions {
    pub key_prefix: Option<KeyPrefix>,
    /// A block cache shared by all stores of the process (`None`: RocksDB's default 32 MiB
    /// per instance).
    pub block_cache: Option<Cache>,
    /// Caps the memtables of all stores opened with these options together, their memory
    /// charged to `block_cache` (see [`RocksOptions::with_memory_budget`]).
    pub write_buffer_manager: Option<WriteBufferManager>,
    pub write_buffer_bytes: usize,
    /// `false` only for throwaway stores: without fsync on commit a power loss may lose the
    /// newest writes (a process crash never does; the WAL is still written). Applies only
    /// with `wal`.
    pub sync_writes: bool,
    /// `false`: writes skip RocksDB's write-ahead log, as Kafka Streams' RocksDB stores do,
    /// for stores whose every write is also in a changelog topic (the tasks'). A crash then
    /// loses what the memtables held since they were last flushed, and the store opens at an
    /// earlier state: each batch is written atomically and a memtable is flushed whole, so
    /// that state is a whole earlier commit, with the changelog offset it reflects, and
    /// restore replays the changelog from there. Closing the store flushes its memtables
    /// (RocksDB's default `avoid_flush_during_shutdown = false`, which the crate does not
    /// expose).
    pub wal: bool,
    /// `Some`: [`KvStore::start_write`] hands the batch to this writer thread, shared by all
    /// stores opened with these options, and returns at once (`None`: it writes on the
    /// caller's thread). Converting a commit's batch and inserting it into the memtables then
    /// overlaps the caller's next work.
    pub background_writes: Option<BackgroundWriter>,
}

impl Default for RocksOptions {
    fn default() -> Self {
        Self {
            key_prefix: None,
            block_cache: None,
            write_buffer_manager: None,
            write_buffer_bytes: 64 << 20,
            sync_writes: false,
            wal: true,
            background_writes: None,
        }
    }
}

impl RocksOptions {
    /// A block cache of `bytes` to share between all stores opened with these options.
    pub fn with_shared_cache(mut self, bytes: usize) -> Self {
        self.block_cache = Some(Cache::new_lru_cache(bytes));
        self
    }

    /// One memory budget for every store opened with these options, as Kafka Streams'
    /// bounded-memory RocksDB configuration sets it up: a block cache of `total_bytes` shared by
    /// all, and a write buffer manager that charges the memtables to that cache and flushes
    /// them once they hold half of it together. Each store's memtable is flushed at
    /// `write_buffer_bytes` at the latest.
    pub fn with_memory_budget(mut self, total_bytes: usize, write_buffer_bytes: usize) -> Self {
        let cache = Cache::new_lru_cache(total_bytes);
        self.write_buffer_manager =
            Some(WriteBufferManager::new_write_buffer_manager_with_cache(total_bytes / 2, false, cache.clone()));
        self.block_cache = Some(cache);
        self.write_buffer_bytes = write_buffer_bytes;
        self
    }
}

pub struct RocksStore {
    db: Arc<DB>,
    key_prefix: Option<KeyPrefix>,
    path: PathBuf,
    write: WriteMode,
    writer: Option<BackgroundWriter>,
    /// The batch the writer has been given and this store has not seen the end of.
    in_flight: Option<Submitted>,
}

#[derive(Clone, Copy)]
struct WriteMode {
    sync: bool,
    wal: bool,
}

/// A thread that writes batches to stores, in the order they come, for every store opened
/// with the [`RocksOptions`] that hold it. Started by the first batch; stopped once the
/// options and every store using it are gone.
#[derive(Clone, Default)]
pub struct BackgroundWriter {
    inner: Arc<WriterThread>,
}

#[derive(Default)]
struct WriterThread {
    /// `None` until the first batch.
    jobs: Mutex<Option<(mpsc::Sender<Job>, JoinHandle<()>)>>,
}

struct Job {
    db: Arc<DB>,
    batch: Arc<WriteBatch>,
    mode: WriteMode,
    done: mpsc::SyncSender<Result<(), StoreError>>,
    ended: Arc<AtomicBool>,
}

/// A batch given to the writer: its result comes on `done`; `ended` is set once it has.
struct Submitted {
    done: mpsc::Receiver<Result<(), StoreError>>,
    ended: Arc<AtomicBool>,
}

impl BackgroundWriter {
    pub fn new() -> Self {
        Self::default()
    }

    fn submit(&self, db: Arc<DB>, batch: Arc<WriteBatch>, mode: WriteMode) -> Result<Submitted, StoreError> {
        let (done, result) = mpsc::sync_channel(1);
        let ended = Arc::new(AtomicBool::new(false));
        let job = Job { db, batch, mode, done, ended: ended.clone() };
        let mut jobs = self.inner.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if jobs.is_none() {
            let (sender, receiver) = mpsc::channel::<Job>();
            let thread = std::thread::Builder::new()
                .name("store-writer".into())
                .spawn(move || {
                    for job in receiver {
                        let result = write_db(&job.db, &job.batch, job.mode);
                        // The store may close its database as soon as it has the result.
                        let Job { db, batch, done, ended, .. } = job;
                        drop((db, batch));
                        let _ = done.send(result);
                        ended.store(true, Ordering::Release);
                    }
                })
                .map_err(|e| StoreError::Engine(format!("starting the store writer thread: {e}")))?;
            *jobs = Some((sender, thread));
        }
        let (sender, _) = jobs.as_ref().expect("started above");
        sender.send(job).map_err(|_| StoreError::Engine("the store writer thread stopped".into()))?;
        Ok(Submitted { done: result, ended })
    }
}

impl Drop for WriterThread {
    fn drop(&mut self) {
        let jobs = self.jobs.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if let Some((sender, thread)) = jobs {
            drop(sender);
            let _ = thread.join();
        }
    }
}

impl Submitted {
    fn wait(self) -> Result<(), StoreError> {
        self.done.recv().unwrap_or_else(|_| Err(StoreError::Engine("the store writer thread stopped".into())))
    }
}

impl Drop for RocksStore {
    /// Lets the batch in flight land before the database closes (and flushes its memtables).
    fn drop(&mut self) {
        let _ = self.finish_write();
    }
}

fn write_db(db: &DB, batch: &WriteBatch, mode: WriteMode) -> Result<(), StoreError> {
    let mut wb = rocksdb::WriteBatch::default();
    for (key, value) in &batch.writes {
        match value {
            Some(v) => wb.put(key, v),
            None => wb.delete(key),
        }
    }
    let mut wo = rocksdb::WriteOptions::default();
    if mode.wal {
        wo.set_sync(mode.sync);
    } else {
        wo.disable_wal(true);
    }
    wo.set_memtable_insert_hint_per_batch(true);
    db.write_opt(wb, &wo).map_err(engine_err)
}

fn engine_err(e: rocksdb::Error) -> StoreError {
    StoreError::Engine(e.into_string())
}

impl RocksStore {
    pub fn open(path: impl AsRef<Path>, tuning: &RocksOptions) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // LZ4 at every level: room loads read data blocks from the bottommost level too,
        // and LZ4 decompresses several times faster than ZSTD.
        opts.set_compression_type(DBCompressionType::Lz4);
        opts.set_write_buffer_size(tuning.write_buffer_bytes);
        if let Some(manager) = &tuning.write_buffer_manager {
            opts.set_write_buffer_manager(manager);
        }
        opts.set_max_background_jobs(2);
        opts.set_level_compaction_dynamic_level_bytes(true);
        let mut table = BlockBasedOptions::default();
        // Whole-key bloom filters make the engine's frequent "is this message id known?"
        // point lookups nearly free when the answer is no. Index and filters are partitioned
        // and live in the block cache, so memory stays bounded as state grows; only their top
        // levels are pinned. (With whole filters in a small cache, every lookup re-read a
        // 13 MB filter block: over 8x slower, see BENCHMARKS.md.)
        table.set_bloom_filter(10.0, false);
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        if let Some(cache) = &tuning.block_cache {
            table.set_block_cache(cache);
        }
        opts.set_block_based_table_factory(&table);
        if let Some(kp) = tuning.key_prefix {
            opts.set_prefix_extractor(prefix_transform(kp));
            opts.set_memtable_prefix_bloom_ratio(0.1);
            // Whole keys too: most point lookups (a new message's marker) miss, and the room's
            // prefix alone is in the memtable, so without this each miss searched its skiplist.
            opts.set_memtable_whole_key_filtering(true);
        }
        let db = Arc::new(DB::open(&opts, &path).map_err(engine_err)?);
        Ok(Self {
            db,
            key_prefix: tuning.key_prefix,
            path,
            write: WriteMode { sync: tuning.sync_writes, wal: tuning.wal },
            writer: tuning.background_writes.clone(),
            in_flight: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// An integer RocksDB property such as `rocksdb.estimate-num-keys`.
    pub fn property_int(&self, name: &str) -> Option<u64> {
        self.db.property_int_value(name).ok().flatten()
    }

    /// Flushes memtables to SST files (used before measuring on-disk size).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(engine_err)
    }

    pub fn compact(&self) {
        self.db.compact_range::<&[u8], &[u8]>(None, None);
    }
}

impl KvStore for RocksStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.db.get(key).map_err(engine_err)
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let mut ro = rocksdb::ReadOptions::default();
        // A range, not one room's keys: ordered across every prefix, whatever the prefix
        // extractor (without this, RocksDB may skip keys past the first prefix).
        ro.set_total_order_seek(true);
        if let Some(to) = to {
            ro.set_iterate_upper_bound(to.to_vec());
        }
        let iter = self.db.iterator_opt(IteratorMode::From(from, Direction::Forward), ro);
        for item in iter {
            let (k, v) = item.map_err(engine_err)?;
            if !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan_prefix(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        // A scan of exactly one group may use the prefix bloom filters.
        let whole_group = self.key_prefix.is_some_and(|kp| (kp.prefix_len)(prefix) == Some(prefix.len()));
        let mut ro = rocksdb::ReadOptions::default();
        if whole_group {
            ro.set_prefix_same_as_start(true);
        }
        if let Some(end) = super::prefix_end(prefix) {
            ro.set_iterate_upper_bound(end);
        }
        for item in self.db.iterator_opt(IteratorMode::From(prefix, Direction::Forward), ro) {
            let (k, v) = item.map_err(engine_err)?;
            if !k.starts_with(prefix) || !visit(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.finish_write()?;
        write_db(&self.db, batch, self.write)
    }

    fn start_write(&mut self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        let Some(writer) = &self.writer else {
            return self.write(&batch);
        };
        let writer = writer.clone();
        self.finish_write()?;
        self.in_flight = Some(writer.submit(self.db.clone(), batch, self.write)?);
        Ok(())
    }

    fn finish_write(&mut self) -> Result<(), StoreError> {
        self.in_flight.take().map_or(Ok(()), Submitted::wait)
    }

    fn write_ended(&self) -> bool {
        self.in_flight.as_ref().is_none_or(|w| w.ended.load(Ordering::Acquire))
    }
}

/// RocksDB wants plain function pointers; one key-prefix scheme per process is all allread
/// has, so it is kept in a static.
static KEY_PREFIX: std::sync::OnceLock<KeyPrefix> = std::sync::OnceLock::new();

fn prefix_transform(kp: KeyPrefix) -> rocksdb::SliceTransform {
    let stored = KEY_PREFIX.get_or_init(|| kp);
    assert_eq!(stored.name, kp.name, "one key-prefix scheme per process");
    fn transform(key: &[u8]) -> &[u8] {
        let len = KEY_PREFIX.get().and_then(|kp| (kp.prefix_len)(key)).unwrap_or(key.len());
        &key[..len]
    }
    fn in_domain(key: &[u8]) -> bool {
        KEY_PREFIX.get().and_then(|kp| (kp.prefix_len)(key)).is_some()
    }
    rocksdb::SliceTransform::create(kp.name, transform, Some(in_domain))
}

//! RocksDB as the state engine: column families and the project's store survive close and reopen.

use allread::store::rocks::{RocksOptions, RocksStore};
use allread::store::{KvStore, WriteBatch};
use rocksdb::{ColumnFamilyDescriptor, Options, DB};

#[test]
fn two_column_families_survive_close_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let cfs = || ["task-0", "task-1"].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
    {
        let db = DB::open_cf_descriptors(&opts, dir.path(), cfs()).unwrap();
        let mut batch = rocksdb::WriteBatch::default();
        batch.put_cf(db.cf_handle("task-0").unwrap(), b"room", b"zero");
        batch.put_cf(db.cf_handle("task-1").unwrap(), b"room", b"one");
        db.write(batch).unwrap();
    }
    let db = DB::open_cf_descriptors(&opts, dir.path(), cfs()).unwrap();
    assert_eq!(db.get_cf(db.cf_handle("task-0").unwrap(), b"room").unwrap().as_deref(), Some(&b"zero"[..]));
    assert_eq!(db.get_cf(db.cf_handle("task-1").unwrap(), b"room").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(db.get(b"room").unwrap(), None, "the default column family is separate");
}

#[test]
fn the_store_keeps_an_atomic_batch_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = RocksOptions::default();
    {
        let mut store = RocksStore::open(dir.path(), &opts).unwrap();
        let mut batch = WriteBatch::new();
        for i in 0..100u32 {
            batch.put(format!("k{i:03}").into_bytes(), i.to_be_bytes().to_vec());
        }
        batch.delete(b"k050".to_vec());
        store.write(&batch).unwrap();
    }
    let store = RocksStore::open(dir.path(), &opts).unwrap();
    let mut keys = Vec::new();
    store
        .scan_prefix(b"k0", &mut |k, _| {
            keys.push(String::from_utf8(k.to_vec()).unwrap());
            true
        })
        .unwrap();
    assert_eq!(keys.len(), 99);
    assert!(!keys.contains(&"k050".to_string()));
    assert_eq!(store.get(b"k099").unwrap(), Some(99u32.to_be_bytes().to_vec()));
}

/// `[rocksdb]`: every task's memtables are charged to the one shared block cache, so the
/// budget covers both. Nothing is read here, so without the write buffer manager the cache
/// would stay empty while the memtables grow.
#[test]
fn the_memory_budget_charges_every_store_s_memtables_to_the_shared_cache() {
    let dir = tempfile::tempdir().unwrap();
    let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb {
        memory_bytes: 64 << 20,
        write_buffer_bytes: 8 << 20,
    });
    let cache = opts.block_cache.clone().expect("a shared block cache");
    assert_eq!(cache.get_usage(), 0);
    let mut stores: Vec<RocksStore> =
        (0..2).map(|t| RocksStore::open(dir.path().join(format!("task-{t}")), &opts).unwrap()).collect();
    for (t, store) in stores.iter_mut().enumerate() {
        let mut batch = WriteBatch::new();
        for i in 0..4_000u32 {
            batch.put(format!("room{t}/k{i:05}").into_bytes(), vec![b'x'; 500]);
        }
        store.write(&batch).unwrap();
    }
    // About 4 MB written in all: the cache holds at least that much of reservations.
    assert!(cache.get_usage() >= 2 << 20, "cache usage {} with the memtables of two stores", cache.get_usage());
}

/// The tasks' stores keep no write-ahead log (the changelog is their log): closing one
/// flushes its memtables, so a clean stop loses nothing and a restart restores nothing.
#[test]
fn without_the_wal_a_closed_store_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb::default());
    assert!(!opts.wal);
    {
        let mut store = RocksStore::open(dir.path(), &opts).unwrap();
        for n in 0..10u32 {
            store.write(&numbered_batch(n, 100)).unwrap();
        }
    }
    let store = RocksStore::open(dir.path(), &opts).unwrap();
    assert_eq!(batch_number_of(&store, 100), Some(9));
}

/// Without the WAL, a crash loses the writes its memtables held, but what survives is a whole
/// earlier batch (each task's commit is one batch): here a child process writes numbered
/// batches into small memtables, so that some are flushed, and aborts without closing.
#[test]
fn without_the_wal_a_crash_leaves_a_whole_earlier_batch() {
    const KEYS: u32 = 500;
    if let Ok(dir) = std::env::var("ALLREAD_TEST_CRASH_DIR") {
        let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb {
            memory_bytes: 8 << 20,
            write_buffer_bytes: 1 << 20,
        });
        let mut store = RocksStore::open(&dir, &opts).unwrap();
        for n in 0..100 {
            store.write(&numbered_batch(n, KEYS)).unwrap();
        }
        // The background flushes of those full memtables finish; the next 10 batches (about
        // 0.5 MiB) stay in the memtable.
        std::thread::sleep(std::time::Duration::from_secs(1));
        for n in 100..110 {
            store.write(&numbered_batch(n, KEYS)).unwrap();
        }
        std::process::abort();
    }
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "without_the_wal_a_crash_leaves_a_whole_earlier_batch", "--nocapture"])
        .env("ALLREAD_TEST_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success(), "the child aborts");
    let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb::default());
    let store = RocksStore::open(dir.path(), &opts).unwrap();
    let survived = batch_number_of(&store, KEYS);
    // 100 batches of 500 keys of about 100 bytes filled memtables of 1 MiB several times.
    assert!(survived.is_some_and(|n| n < 100), "flushed batches survive, the last do not: {survived:?}");
    eprintln!("batch {survived:?} survived the crash");
}

/// Batch `n`: keys `k000`.. each holding `n` and 96 bytes of padding.
fn numbered_batch(n: u32, keys: u32) -> WriteBatch {
    let mut batch = WriteBatch::new();
    for i in 0..keys {
        let mut value = n.to_be_bytes().to_vec();
        value.resize(100, b'.');
        batch.put(format!("k{i:03}").into_bytes(), value);
    }
    batch
}

/// The batch number every key holds; panics if the keys disagree (a torn batch).
fn batch_number_of(store: &RocksStore, keys: u32) -> Option<u32> {
    let mut numbers = std::collections::BTreeSet::new();
    let mut count = 0;
    store
        .scan(&[], None, &mut |_, v| {
            numbers.insert(u32::from_be_bytes(v[..4].try_into().unwrap()));
            count += 1;
            true
        })
        .unwrap();
    assert!(count == 0 || count == keys, "{count} of {keys} keys: a torn batch");
    assert!(numbers.len() <= 1, "keys from different batches: {numbers:?}");
    numbers.into_iter().next()
}

/// Threads of this process with the name `name`.
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

/// The tasks' stores write a commit's batch on the options' writer thread (`start_write`):
/// reads in the meantime see whole batches, never a torn one and never older than the batch
/// before; `finish_write` waits for it; dropping the store lets the batch in flight land
/// before the database closes, and the thread ends with the last user of its options. (No
/// other test here starts a writer thread: they write with `write`.)
#[test]
fn background_writes_land_whole_in_order_and_before_the_store_closes() {
    const KEYS: u32 = 500;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("task-7");
    let opts = allread::runtime::engine_rocks_options(&allread::config::Rocksdb::default());
    assert!(opts.background_writes.is_some());
    {
        let mut store = RocksStore::open(&path, &opts).unwrap();
        assert_eq!(threads_named("store-writer"), 0, "started by the first background write");
        for n in 0..50 {
            store.start_write(std::sync::Arc::new(numbered_batch(n, KEYS))).unwrap();
            let seen = batch_number_of(&store, KEYS);
            assert!(n == 0 || seen >= Some(n - 1), "batch {n} begun, the store holds {seen:?}");
        }
        assert_eq!(threads_named("store-writer"), 1);
        store.finish_write().unwrap();
        assert!(store.write_ended());
        assert_eq!(batch_number_of(&store, KEYS), Some(49));
        store.start_write(std::sync::Arc::new(numbered_batch(50, KEYS))).unwrap();
    }
    let store = RocksStore::open(&path, &opts).unwrap();
    assert_eq!(batch_number_of(&store, KEYS), Some(50), "the batch in flight landed before the store closed");
    drop((store, opts));
    // The thread has been joined, but the kernel may list it for a moment after it has
    // exited (its tid is released before its task is reaped): allow it a few seconds.
    let gone = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        threads_named("store-writer") == 0
    });
    assert!(gone, "the writer thread ends with its last user");
}

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

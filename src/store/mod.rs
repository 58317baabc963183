//! State storage: a small ordered key-value trait and its engines.
//!
//! The receipt engine reads and writes its state only through [`KvStore`], so the same engine
//! runs on RocksDB in production ([`rocks::RocksStore`]) and on a `BTreeMap` in fast tests
//! ([`memory::MemoryStore`]). Keys are ordered bytewise; every write goes through one atomic
//! [`WriteBatch`], which is how a task's state changes and the input offsets they consumed
//! become durable together.
//!
//! A store may write a batch in the background ([`KvStore::start_write`]): the caller then
//! reads what it wrote from its own copy of the batch until [`KvStore::finish_write`] says
//! the store holds it. That is how a task's commit leaves the memtable inserts to another
//! thread while it goes on processing (see `Engine::write_prepared`).

pub mod memory;
pub mod rocks;

use std::ops::Bound;
use std::sync::Arc;

/// An error from a storage engine. Storage errors are not the input's fault: the caller
/// stops the task's progress and may retry after reopening the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error: {0}")]
    Engine(String),
    #[error("corrupt value under key {key:?}: {reason}")]
    Corrupt { key: String, reason: String },
}

impl StoreError {
    /// Whether retrying the same operation (after reopening the store) can help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, StoreError::Engine(_))
    }

    pub fn corrupt(key: &[u8], reason: impl std::fmt::Display) -> Self {
        StoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), reason: reason.to_string() }
    }
}

/// One write: a put (`Some(value)`) or a delete (`None`).
pub type Write = (Vec<u8>, Option<Vec<u8>>);

/// Writes applied atomically and in order by [`KvStore::write`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    pub writes: Vec<Write>,
}

impl WriteBatch {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.writes.push((key, Some(value)));
    }
    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.push((key, None));
    }
    pub fn len(&self) -> usize {
        self.writes.len()
    }
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

/// An ordered key-value store. Implementations need not be thread-safe: one task owns one store.
pub trait KvStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;

    /// Visits, in key order, every entry with `from <= key < to` (`to = None`: no upper
    /// bound) until `visit` returns `false`.
    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError>;

    /// Applies every write of `batch` atomically, after the write [`KvStore::start_write`]
    /// began (if any), and returns once reads see it.
    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError>;

    /// Begins applying every write of `batch` atomically, after the write begun before (if
    /// any). When this returns, reads may or may not see the batch, in whole or not at all,
    /// until [`KvStore::finish_write`] returns. A store that cannot write in the background
    /// writes the batch here.
    fn start_write(&mut self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        self.write(&batch)
    }

    /// Waits until reads see the batch of the last [`KvStore::start_write`], and returns
    /// whether writing it failed (a failed batch is not in the store at all). `Ok` when no
    /// write is in progress.
    fn finish_write(&mut self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Whether [`KvStore::finish_write`] would return at once.
    fn write_ended(&self) -> bool {
        true
    }

    /// Visits every entry whose key starts with `prefix`.
    fn scan_prefix(&self, prefix: &[u8], visit: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> Result<(), StoreError> {
        let end = prefix_end(prefix);
        self.scan(prefix, end.as_deref(), visit)
    }
}

/// The smallest key greater than every key starting with `prefix` (`None` if there is none).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(crate) fn range_bounds<'a>(from: &'a [u8], to: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (Bound::Included(from), to.map_or(Bound::Unbounded, Bound::Excluded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte_that_can_be() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
    }
}

//! An in-memory [`KvStore`] for tests: a `BTreeMap`, atomic by construction.
//!
//! A batch begun with [`KvStore::start_write`] is applied only when [`KvStore::finish_write`]
//! (or the next write) asks for it, and reads do not see it before: the longest lag a store
//! that writes in the background may show, so that tests on this store check that the engine
//! never reads its own commit from the store before the store holds it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{range_bounds, KvStore, StoreError, WriteBatch};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Begun with `start_write`, not applied yet.
    deferred: Option<Arc<WriteBatch>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn len(&self) -> usize {
        self.map.len()
    }
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
    pub fn entries(&self) -> impl Iterator<Item = (&Vec<u8>, &Vec<u8>)> {
        self.map.iter()
    }

    fn apply(&mut self, batch: &WriteBatch) {
        for (key, value) in &batch.writes {
            match value {
                Some(v) => self.map.insert(key.clone(), v.clone()),
                None => self.map.remove(key),
            };
        }
    }
}

impl KvStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.map.get(key).cloned())
    }

    fn scan(
        &self,
        from: &[u8],
        to: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for (k, v) in self.map.range::<[u8], _>(range_bounds(from, to)) {
            if !visit(k, v) {
                break;
            }
        }
        Ok(())
    }

    fn write(&mut self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.finish_write()?;
        self.apply(batch);
        Ok(())
    }

    fn start_write(&mut self, batch: Arc<WriteBatch>) -> Result<(), StoreError> {
        self.finish_write()?;
        self.deferred = Some(batch);
        Ok(())
    }

    fn finish_write(&mut self) -> Result<(), StoreError> {
        if let Some(batch) = self.deferred.take() {
            self.apply(&batch);
        }
        Ok(())
    }

    fn write_ended(&self) -> bool {
        self.deferred.is_none()
    }
}

//! An in-memory [`KvStore`] for tests: a `BTreeMap`, atomic by construction.

use std::collections::BTreeMap;

use super::{range_bounds, KvStore, StoreError, WriteBatch};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
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
        for (key, value) in &batch.writes {
            match value {
                Some(v) => self.map.insert(key.clone(), v.clone()),
                None => self.map.remove(key),
            };
        }
        Ok(())
    }
}

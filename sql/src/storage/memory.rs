//! An in-memory [`KvStore`] for unit tests: a `BTreeMap` behind a lock. Not durable.

use std::collections::BTreeMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::{KvPair, KvStore, WriteOp};
use crate::error::Result;

#[derive(Default)]
pub struct MemoryStore {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl KvStore for MemoryStore {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.map.read().get(key).cloned())
    }

    fn scan(&self, start: &[u8], end: &[u8], limit: usize) -> Result<Vec<KvPair>> {
        let map = self.map.read();
        let range = (Bound::Included(start), Bound::Excluded(end));
        Ok(map
            .range::<[u8], _>(range)
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn last_key(&self, start: &[u8], end: &[u8]) -> Result<Option<Vec<u8>>> {
        let map = self.map.read();
        let range = (Bound::Included(start), Bound::Excluded(end));
        Ok(map
            .range::<[u8], _>(range)
            .next_back()
            .map(|(k, _)| k.clone()))
    }

    fn write(&self, ops: Vec<WriteOp>, _sync: bool) -> Result<()> {
        let mut map = self.map.write();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k, v);
                }
                WriteOp::Delete(k) => {
                    map.remove(&k);
                }
                WriteOp::DeleteRange(start, end) => {
                    let doomed: Vec<Vec<u8>> = map
                        .range::<[u8], _>((Bound::Included(&start[..]), Bound::Excluded(&end[..])))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_is_ordered_and_bounded() {
        let s = MemoryStore::new();
        s.write(
            vec![
                WriteOp::Put(b"b".to_vec(), b"2".to_vec()),
                WriteOp::Put(b"a".to_vec(), b"1".to_vec()),
                WriteOp::Put(b"c".to_vec(), b"3".to_vec()),
            ],
            true,
        )
        .unwrap();
        let got = s.scan(b"a", b"c", 10).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, b"a");
        assert_eq!(s.last_key(b"a", b"z").unwrap().unwrap(), b"c");
    }
}

//! Transactions: a private overlay of writes, validated and applied atomically at commit.
//!
//! A [`Txn`] buffers every row write with the value it observed in the committed state when it
//! first touched the key (its *expectation*). Reads inside the transaction see the overlay
//! over the committed state. At commit ([`commit`]) the keys' lock stripes are taken, every
//! expectation is checked against the committed state (first committer wins: a mismatch is a
//! serialization failure, or a unique violation for a key expected absent), and the whole
//! batch, catalog changes included, is written in one synced KV write. Stripe locks are held
//! only during validation and the write, and commits on disjoint stripes run concurrently, so
//! their WAL syncs are shared by RocksDB's group commit.
//!
//! Isolation: statements read the latest committed data (read committed); lost updates are
//! impossible because every overwritten row is validated at commit.

pub mod locks;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use crate::catalog::Catalog;
use crate::error::{Error, Result, sqlstate};
use crate::storage::{KvPair, KvStore, WriteOp};
use locks::KeyLocks;

/// What the committed state must hold for a key when the transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    Absent,
    Value(Vec<u8>),
}

impl From<Option<Vec<u8>>> for Expect {
    fn from(v: Option<Vec<u8>>) -> Self {
        match v {
            Some(v) => Expect::Value(v),
            None => Expect::Absent,
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    expect: Expect,
    new: Option<Vec<u8>>,
    /// Which table the key belongs to, for messages and truncation.
    table_id: u32,
}

#[derive(Debug, Default, Clone)]
pub struct Txn {
    writes: BTreeMap<Vec<u8>, Pending>,
    /// Tables truncated in this transaction: their committed rows are invisible to it.
    truncated: BTreeSet<u32>,
    /// Catalog changes made in this transaction (a private copy), and the version it copied.
    catalog: Option<(Catalog, u64)>,
    /// Writes applied before the row writes at commit (catalog records, range deletes).
    extra_ops: Vec<WriteOp>,
    /// Keys read (not written) whose committed value must be unchanged at commit: the rows
    /// a foreign key references.
    reads: BTreeMap<Vec<u8>, (u32, Expect)>,
    /// The row layout (`TableDef::layout`) of each table this transaction wrote rows of.
    layouts: BTreeMap<u32, u32>,
    /// Tables this transaction rewrote (ALTER TABLE), with the engine's count of commits
    /// that wrote them when it read their rows.
    rewrites: BTreeMap<u32, u64>,
    /// NOTIFY's (channel, payload) pairs, sent when the transaction commits.
    notifications: Vec<(String, String)>,
    /// Open savepoints, oldest first: each name with the transaction's state when it was set.
    savepoints: Vec<(String, Box<Txn>)>,
}

/// A key range's uncommitted state: `(key, Some(value))` for puts, `(key, None)` for deletes.
pub type OverlayEntry = (Vec<u8>, Option<Vec<u8>>);

impl Txn {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.catalog.is_none() && self.extra_ops.is_empty()
    }

    pub fn catalog_draft(&self) -> Option<&Catalog> {
        self.catalog.as_ref().map(|(c, _)| c)
    }

    /// The transaction's private catalog, copied from `current` on first use.
    pub fn catalog_mut(&mut self, current: &Arc<Catalog>) -> &mut Catalog {
        &mut self
            .catalog
            .get_or_insert_with(|| ((**current).clone(), current.version))
            .0
    }

    pub fn push_ops(&mut self, ops: Vec<WriteOp>) {
        self.extra_ops.extend(ops);
    }

    pub fn truncate(&mut self, table_id: u32, prefix: Vec<u8>, end: Vec<u8>) {
        self.writes
            .retain(|k, _| !(k.as_slice() >= prefix.as_slice() && k.as_slice() < end.as_slice()));
        self.truncated.insert(table_id);
        self.extra_ops.push(WriteOp::DeleteRange(prefix, end));
    }

    pub fn is_truncated(&self, table_id: u32) -> bool {
        self.truncated.contains(&table_id)
    }

    /// The transaction's view of one key: `Some(v)` if it wrote it, else `None` (look at the
    /// committed state, unless the table was truncated).
    pub fn overlay_get(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.writes.get(key).map(|p| p.new.as_deref())
    }

    pub fn overlay_range(&self, start: &[u8], end: &[u8]) -> Vec<OverlayEntry> {
        self.writes
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .map(|(k, p)| (k.clone(), p.new.clone()))
            .collect()
    }

    /// Records a write of `key`; `observed` is the committed value the statement saw.
    pub fn write(
        &mut self,
        table_id: u32,
        key: Vec<u8>,
        observed: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) {
        match self.writes.get_mut(&key) {
            Some(p) => p.new = new,
            None => {
                self.writes.insert(
                    key,
                    Pending {
                        expect: observed.into(),
                        new,
                        table_id,
                    },
                );
            }
        }
    }

    /// Records that the transaction relied on `key` holding `observed` (validated at commit
    /// like a write's expectation, but nothing is written).
    pub fn expect_unchanged(&mut self, table_id: u32, key: Vec<u8>, observed: Option<Vec<u8>>) {
        if !self.writes.contains_key(&key) {
            self.reads.entry(key).or_insert((table_id, observed.into()));
        }
    }

    /// `NOTIFY channel, payload`: sent at commit, once per distinct pair.
    pub fn notify(&mut self, channel: String, payload: String) {
        if !self
            .notifications
            .iter()
            .any(|(c, p)| *c == channel && *p == payload)
        {
            self.notifications.push((channel, payload));
        }
    }

    pub fn take_notifications(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.notifications)
    }

    /// Notes that rows of `table` were written in layout `layout`.
    pub fn note_layout(&mut self, table: u32, layout: u32) {
        self.layouts.insert(table, layout);
    }

    pub fn layouts(&self) -> &BTreeMap<u32, u32> {
        &self.layouts
    }

    /// Notes that this transaction rewrote every row of `table`, having read them when
    /// `writes` commits had written it.
    pub fn note_rewrite(&mut self, table: u32, writes: u64) {
        self.rewrites.entry(table).or_insert(writes);
    }

    pub fn rewrites(&self) -> &BTreeMap<u32, u64> {
        &self.rewrites
    }

    pub fn write_count(&self) -> usize {
        self.writes.len()
    }

    /// `SAVEPOINT name`: remembers the state to return to. A name may be reused; the newest
    /// savepoint of a name is the one RELEASE and ROLLBACK TO find.
    pub fn savepoint(&mut self, name: String) {
        let mut state = self.clone();
        state.savepoints.clear();
        self.savepoints.push((name, Box::new(state)));
    }

    fn find_savepoint(&self, name: &str) -> Result<usize> {
        self.savepoints
            .iter()
            .rposition(|(n, _)| n == name)
            .ok_or_else(|| {
                Error::user(
                    sqlstate::INVALID_SAVEPOINT_SPECIFICATION,
                    format!("savepoint \"{name}\" does not exist"),
                )
            })
    }

    /// `RELEASE SAVEPOINT name`: forgets it and every savepoint set after it, keeping the
    /// writes made since.
    pub fn release_savepoint(&mut self, name: &str) -> Result<()> {
        let at = self.find_savepoint(name)?;
        self.savepoints.truncate(at);
        Ok(())
    }

    /// `ROLLBACK TO SAVEPOINT name`: undoes every write made since it was set and forgets the
    /// savepoints set after it; the savepoint itself stays.
    pub fn rollback_to_savepoint(&mut self, name: &str) -> Result<()> {
        let at = self.find_savepoint(name)?;
        let mut savepoints = std::mem::take(&mut self.savepoints);
        savepoints.truncate(at + 1);
        let restored = (*savepoints[at].1).clone();
        *self = restored;
        self.savepoints = savepoints;
        Ok(())
    }
}

/// Merges a chunk of committed pairs with the overlay entries of the same range.
///
/// `committed` holds the first entries of `[start, end)`; when `exhausted` is false there may be
/// more after its last key, so overlay entries beyond that key wait for the next chunk.
/// Returns the visible pairs and the key to resume from, if any.
pub fn merge_chunk(
    committed: Vec<KvPair>,
    overlay: &[OverlayEntry],
    exhausted: bool,
) -> (Vec<KvPair>, Option<Vec<u8>>) {
    let resume = if exhausted {
        None
    } else {
        committed.last().map(|(k, _)| {
            let mut next = k.clone();
            next.push(0);
            next
        })
    };
    let limit_key = resume.as_ref();
    let overlay: Vec<&OverlayEntry> = overlay
        .iter()
        .filter(|(k, _)| limit_key.is_none_or(|r| k < r))
        .collect();
    if overlay.is_empty() {
        return (committed, resume);
    }
    let mut out = Vec::with_capacity(committed.len() + overlay.len());
    let mut ov = overlay.into_iter().peekable();
    for (k, v) in committed {
        while let Some((ok, ovv)) = ov.peek() {
            if *ok < k {
                if let Some(val) = ovv {
                    out.push((ok.clone(), val.clone()));
                }
                ov.next();
            } else {
                break;
            }
        }
        match ov.peek() {
            Some((ok, ovv)) if *ok == k => {
                if let Some(val) = ovv {
                    out.push((k, val.clone()));
                }
                ov.next();
            }
            _ => out.push((k, v)),
        }
    }
    for (ok, ovv) in ov {
        if let Some(val) = ovv {
            out.push((ok.clone(), val.clone()));
        }
    }
    (out, resume)
}

/// What the commit must also do to the shared catalog.
pub enum CatalogCommit {
    Unchanged,
    Install(Catalog),
}

/// Validates and applies `txn` to `kv` in one synced batch. Returns the catalog to install
/// (the caller holds the catalog commit lock when the transaction changed the catalog and
/// passes the current version).
pub fn commit(
    kv: &dyn KvStore,
    locks: &KeyLocks,
    txn: Txn,
    current_catalog_version: u64,
) -> Result<CatalogCommit> {
    if txn.is_empty() {
        return Ok(CatalogCommit::Unchanged);
    }
    let _guard = locks.acquire(
        txn.writes
            .keys()
            .chain(txn.reads.keys())
            .map(|k| k.as_slice()),
    );
    if let Some((_, base)) = &txn.catalog
        && *base != current_catalog_version
    {
        return Err(serialization_failure("the catalog changed concurrently"));
    }
    validate(kv, &txn)?;
    let Txn {
        writes,
        catalog,
        mut extra_ops,
        ..
    } = txn;
    extra_ops.reserve(writes.len());
    for (key, p) in writes {
        extra_ops.push(match p.new {
            Some(v) => WriteOp::Put(key, v),
            None => WriteOp::Delete(key),
        });
    }
    kv.write(extra_ops, true)?;
    Ok(match catalog {
        Some((mut cat, _)) => {
            cat.version = current_catalog_version + 1;
            CatalogCommit::Install(cat)
        }
        None => CatalogCommit::Unchanged,
    })
}

fn validate(kv: &dyn KvStore, txn: &Txn) -> Result<()> {
    let reads: Vec<(&Vec<u8>, &Expect)> = txn
        .reads
        .iter()
        .filter(|(k, (table, _))| !txn.truncated.contains(table) && !txn.writes.contains_key(*k))
        .map(|(k, (_, e))| (k, e))
        .collect();
    for chunk in reads.chunks(4096) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| (*k).clone()).collect();
        let current = kv.multi_get(&keys)?;
        for ((_, expect), now) in chunk.iter().zip(current) {
            let same = match (expect, &now) {
                (Expect::Absent, None) => true,
                (Expect::Value(v), Some(n)) => v == n,
                _ => false,
            };
            if !same {
                return Err(serialization_failure(
                    "a row this transaction's foreign keys reference was changed concurrently",
                ));
            }
        }
    }
    let checked: Vec<(&Vec<u8>, &Pending)> = txn
        .writes
        .iter()
        .filter(|(_, p)| !txn.truncated.contains(&p.table_id))
        .collect();
    for chunk in checked.chunks(4096) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| (*k).clone()).collect();
        let current = kv.multi_get(&keys)?;
        for ((_, p), now) in chunk.iter().zip(current) {
            let ok = match (&p.expect, &now) {
                (Expect::Absent, None) => true,
                (Expect::Value(v), Some(n)) => v == n,
                _ => false,
            };
            if !ok {
                return Err(match p.expect {
                    Expect::Absent => Error::user(
                        sqlstate::UNIQUE_VIOLATION,
                        "duplicate key value violates unique constraint",
                    )
                    .with_detail("a concurrent transaction inserted the same key"),
                    Expect::Value(_) => {
                        serialization_failure("a row was changed by a concurrent transaction")
                    }
                });
            }
        }
    }
    Ok(())
}

fn serialization_failure(why: &str) -> Error {
    Error::user(
        sqlstate::SERIALIZATION_FAILURE,
        "could not serialize access due to concurrent update",
    )
    .with_detail(why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    fn kv_with(keys: &[(&[u8], &[u8])]) -> MemoryStore {
        let kv = MemoryStore::new();
        kv.write(
            keys.iter()
                .map(|(k, v)| WriteOp::Put(k.to_vec(), v.to_vec()))
                .collect(),
            true,
        )
        .unwrap();
        kv
    }

    #[test]
    fn first_committer_wins() {
        let kv = kv_with(&[(b"k", b"1")]);
        let locks = KeyLocks::new();
        let mut a = Txn::default();
        let mut b = Txn::default();
        a.write(1, b"k".to_vec(), Some(b"1".to_vec()), Some(b"2".to_vec()));
        b.write(1, b"k".to_vec(), Some(b"1".to_vec()), Some(b"3".to_vec()));
        commit(&kv, &locks, a, 0).unwrap();
        let err = commit(&kv, &locks, b, 0).err().unwrap();
        assert_eq!(err.sqlstate(), sqlstate::SERIALIZATION_FAILURE);
        assert_eq!(kv.get(b"k").unwrap().unwrap(), b"2");
    }

    #[test]
    fn concurrent_insert_of_same_key_is_a_unique_violation() {
        let kv = MemoryStore::new();
        let locks = KeyLocks::new();
        let mut a = Txn::default();
        let mut b = Txn::default();
        a.write(1, b"k".to_vec(), None, Some(b"a".to_vec()));
        b.write(1, b"k".to_vec(), None, Some(b"b".to_vec()));
        commit(&kv, &locks, a, 0).unwrap();
        let err = commit(&kv, &locks, b, 0).err().unwrap();
        assert_eq!(err.sqlstate(), sqlstate::UNIQUE_VIOLATION);
    }

    #[test]
    fn merge_respects_chunk_boundary_and_deletes() {
        let committed = vec![
            (b"b".to_vec(), b"1".to_vec()),
            (b"d".to_vec(), b"1".to_vec()),
        ];
        let overlay = vec![
            (b"a".to_vec(), Some(b"x".to_vec())),
            (b"b".to_vec(), None),
            (b"c".to_vec(), Some(b"y".to_vec())),
            (b"e".to_vec(), Some(b"z".to_vec())),
        ];
        let (out, resume) = merge_chunk(committed.clone(), &overlay, false);
        let keys: Vec<&[u8]> = out.iter().map(|(k, _)| k.as_slice()).collect();
        assert_eq!(keys, vec![&b"a"[..], b"c", b"d"]);
        assert!(resume.is_some());
        let (out, resume) = merge_chunk(committed, &overlay, true);
        assert_eq!(out.len(), 4);
        assert!(resume.is_none());
    }
}

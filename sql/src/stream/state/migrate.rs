//! Moves operator state written before state tables (format 1: `s <pipeline> <group key>`,
//! and a Kafka sink's previous checkpoint record at `s <pipeline> 0xff previous-record`) into
//! the current layout (`s <pipeline> <operator> <key group> <key>`, `q <pipeline>`).
//!
//! Runs once when the engine opens a data dir without [`keys::META_STATE_FORMAT`], in one
//! synced batch with the format marker, so a crash leaves either layout whole.

use crate::catalog::Catalog;
use crate::error::Result;
use crate::keys;
use crate::storage::{KvStore, WriteOp, for_each_chunk};
use crate::stream::manager::AGGREGATE_OPERATOR;

const OLD_PREVIOUS_RECORD: &[u8] = b"\xffprevious-record";

pub fn migrate(kv: &dyn KvStore, catalog: &Catalog) -> Result<()> {
    if kv.get(keys::META_STATE_FORMAT)?.is_some() {
        return Ok(());
    }
    let mut ops = Vec::new();
    let state = [b's'];
    for_each_chunk(kv, &state, 4096, |chunk| {
        for (k, v) in chunk {
            let Some(pipeline) = k
                .get(1..5)
                .map(|b| u32::from_be_bytes(b.try_into().expect("4")))
            else {
                continue;
            };
            let rest = &k[5..];
            ops.push(WriteOp::Delete(k.clone()));
            if rest == OLD_PREVIOUS_RECORD {
                ops.push(WriteOp::Put(
                    keys::previous_checkpoint_key(pipeline),
                    v.clone(),
                ));
                continue;
            }
            // A SESSION window's key ends with the session's start (8 bytes), which is not
            // part of its key group.
            let session = catalog
                .tables()
                .find(|t| t.id == pipeline)
                .and_then(|t| t.kind.query().map(|q| q.sql.clone()))
                .and_then(|sql| crate::stream::plan::parse_query(&sql).ok())
                .is_some_and(|q| crate::stream::plan::uses_session_window(&q));
            let partition = match session && rest.len() >= 8 {
                true => &rest[..rest.len() - 8],
                false => rest,
            };
            let prefix = keys::operator_state_prefix(pipeline, AGGREGATE_OPERATOR);
            let key = keys::state_key(&prefix, keys::key_group(partition), rest);
            ops.push(WriteOp::Put(key, v.clone()));
        }
        Ok(())
    })?;
    if !ops.is_empty() {
        tracing::info!(
            "moving {} operator state entries to the state table layout",
            ops.len() / 2
        );
    }
    ops.push(WriteOp::Put(
        keys::META_STATE_FORMAT.to_vec(),
        keys::STATE_FORMAT.to_be_bytes().to_vec(),
    ));
    kv.write(ops, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    #[test]
    fn old_state_moves_into_the_operator_table_and_the_record_out_of_it() {
        let kv = MemoryStore::new();
        let catalog = Catalog::default();
        let mut old = vec![b's'];
        old.extend_from_slice(&9u32.to_be_bytes());
        let mut group = old.clone();
        group.extend_from_slice(b"group-1");
        let mut record = old.clone();
        record.extend_from_slice(OLD_PREVIOUS_RECORD);
        kv.write(
            vec![
                WriteOp::Put(group.clone(), b"state".to_vec()),
                WriteOp::Put(record.clone(), b"{}".to_vec()),
            ],
            true,
        )
        .unwrap();
        migrate(&kv, &catalog).unwrap();
        assert_eq!(kv.get(&group).unwrap(), None);
        assert_eq!(kv.get(&record).unwrap(), None);
        assert_eq!(
            kv.get(&keys::previous_checkpoint_key(9)).unwrap(),
            Some(b"{}".to_vec())
        );
        let prefix = keys::operator_state_prefix(9, AGGREGATE_OPERATOR);
        let moved = keys::state_key(&prefix, keys::key_group(b"group-1"), b"group-1");
        assert_eq!(kv.get(&moved).unwrap(), Some(b"state".to_vec()));
        // A second open finds the marker and leaves everything as it is.
        migrate(&kv, &catalog).unwrap();
        assert_eq!(kv.get(&moved).unwrap(), Some(b"state".to_vec()));
    }
}

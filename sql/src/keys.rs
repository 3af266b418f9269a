//! The layout of every key in the store: the one place that decides which byte starts what.
//!
//! ```text
//! c <schema> 0x00 <name>                       catalog record of a relation (catalog.rs)
//! c <schema> 0x00 0x01 <name>                  a model's record
//! c 0x00 0x02 <name>                           a role's record
//! m/<name>                                     engine metadata (next table id, format)
//! t <table id u32> <primary key>               a table's rows (and a view's, a stream's;
//!                                              a sequence's one row under row id 1)
//! t <index id u32> (<0|1> <value>)* [<row key>]  a secondary index's entries → row key (index
//!                                              ids come from the table id counter)
//! p <pipeline u32>                             a pipeline's last checkpoint record
//! q <pipeline u32>                             the checkpoint before it (Kafka sinks only)
//! s <pipeline u32> <operator u16> <group u16> <key>   operator state
//! l <view u32> <seq u64>                       a view's changelog (upserts of its rows)
//! r <view u32> <subscriber u32>                where a pipeline reading the view's changelog
//!                                              stands (the log is kept from the lowest)
//! ```
//!
//! Invariants: the first byte alone tells the kind of a key, so the prefixes of different
//! kinds never nest. Everything a pipeline owns (rows, records, state) lies in ranges that
//! [`pipeline_ranges`] lists, which is what DROP deletes. State keys carry their key group
//! (a hash of the operator's partitioning key, [`key_group`]), so a partition of a parallel
//! operator owns a contiguous range of groups within its operator's prefix.

const CATALOG: u8 = b'c';
const TABLE: u8 = b't';
const CHECKPOINT: u8 = b'p';
const PREVIOUS_CHECKPOINT: u8 = b'q';
const STATE: u8 = b's';
const CHANGELOG: u8 = b'l';
const SUBSCRIPTION: u8 = b'r';

/// Key groups per operator: the unit state is partitioned in (fixed, so the number of
/// partitions can change without moving state between groups).
pub const KEY_GROUPS: u16 = 256;

/// Prefix of every catalog record.
pub fn catalog_prefix() -> Vec<u8> {
    vec![CATALOG]
}

/// Engine metadata: the next table id.
pub const META_NEXT_TABLE_ID: &[u8] = b"m/next_table_id";
/// Engine metadata: the layout version of operator state (absent: before state tables).
pub const META_STATE_FORMAT: &[u8] = b"m/state_format";
/// The current state layout version.
pub const STATE_FORMAT: u32 = 2;

/// Prefix of every row key of the table with this id.
pub fn table_prefix(table_id: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.push(TABLE);
    k.extend_from_slice(&table_id.to_be_bytes());
    k
}

/// The key of a pipeline's last committed checkpoint record.
pub fn checkpoint_key(pipeline: u32) -> Vec<u8> {
    let mut k = vec![CHECKPOINT];
    k.extend_from_slice(&pipeline.to_be_bytes());
    k
}

/// The key of the checkpoint record before the last: a Kafka sink resumes from it when
/// Kafka has not committed the last epoch's transaction.
pub fn previous_checkpoint_key(pipeline: u32) -> Vec<u8> {
    let mut k = vec![PREVIOUS_CHECKPOINT];
    k.extend_from_slice(&pipeline.to_be_bytes());
    k
}

/// Prefix of all operator state of a pipeline.
pub fn pipeline_state_prefix(pipeline: u32) -> Vec<u8> {
    let mut k = vec![STATE];
    k.extend_from_slice(&pipeline.to_be_bytes());
    k
}

/// Prefix of the state of one operator of a pipeline.
pub fn operator_state_prefix(pipeline: u32, operator: u16) -> Vec<u8> {
    let mut k = pipeline_state_prefix(pipeline);
    k.extend_from_slice(&operator.to_be_bytes());
    k
}

/// Length of an operator's state prefix; the key group follows it.
pub const OPERATOR_PREFIX_LEN: usize = 1 + 4 + 2;
/// Length of the prefix of a state key before the operator's own key.
pub const STATE_KEY_PREFIX_LEN: usize = OPERATOR_PREFIX_LEN + 2;

/// The store key of `key` in key group `group` of an operator.
pub fn state_key(operator_prefix: &[u8], group: u16, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(operator_prefix.len() + 2 + key.len());
    k.extend_from_slice(operator_prefix);
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The key group of a partitioning key (its bytes, e.g. the row encoding of GROUP BY
/// columns). FNV-1a: stable across versions and machines, which a persisted layout needs.
pub fn key_group(partition_key: &[u8]) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in partition_key {
        hash ^= *b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    ((hash ^ (hash >> 32)) % KEY_GROUPS as u64) as u16
}

/// The partition, of `partitions`, that owns key group `group`: partitions own contiguous
/// ranges of groups, so each one's state is one range of keys per operator.
pub fn partition_of(group: u16, partitions: usize) -> usize {
    group as usize * partitions / KEY_GROUPS as usize
}

/// The key groups partition `partition` of `partitions` owns (see [`partition_of`]).
pub fn partition_groups(partition: usize, partitions: usize) -> std::ops::Range<u16> {
    let first = |p: usize| (p * KEY_GROUPS as usize).div_ceil(partitions) as u16;
    first(partition)..first(partition + 1)
}

/// Prefix of a view's changelog entries.
pub fn changelog_prefix(view: u32) -> Vec<u8> {
    let mut k = vec![CHANGELOG];
    k.extend_from_slice(&view.to_be_bytes());
    k
}

/// The key of entry `seq` of a view's changelog.
pub fn changelog_key(view: u32, seq: u64) -> Vec<u8> {
    let mut k = changelog_prefix(view);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// Prefix of the subscriptions to a view's changelog.
pub fn subscription_prefix(view: u32) -> Vec<u8> {
    let mut k = vec![SUBSCRIPTION];
    k.extend_from_slice(&view.to_be_bytes());
    k
}

/// The key of pipeline `subscriber`'s position in a view's changelog.
pub fn subscription_key(view: u32, subscriber: u32) -> Vec<u8> {
    let mut k = subscription_prefix(view);
    k.extend_from_slice(&subscriber.to_be_bytes());
    k
}

/// Prefix of every subscription key.
pub fn subscriptions_prefix() -> Vec<u8> {
    vec![SUBSCRIPTION]
}

/// The subscriber a subscription key names.
pub fn subscriber_of(key: &[u8]) -> Option<u32> {
    (key.len() == 9 && key[0] == SUBSCRIPTION)
        .then(|| u32::from_be_bytes(key[5..9].try_into().expect("4 bytes")))
}

/// Every key range a pipeline owns: its rows, its checkpoint records and its state.
pub fn pipeline_ranges(pipeline: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
    [
        table_prefix(pipeline),
        checkpoint_key(pipeline),
        previous_checkpoint_key(pipeline),
        pipeline_state_prefix(pipeline),
        changelog_prefix(pipeline),
        subscription_prefix(pipeline),
    ]
    .into_iter()
    .map(|p| {
        let end = crate::storage::prefix_end(&p);
        (p, end)
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_of_different_kinds_never_nest() {
        let id = 7;
        let state = pipeline_state_prefix(id);
        for other in [
            checkpoint_key(id),
            previous_checkpoint_key(id),
            table_prefix(id),
            catalog_prefix(),
            META_NEXT_TABLE_ID.to_vec(),
            META_STATE_FORMAT.to_vec(),
            changelog_prefix(id),
            subscription_prefix(id),
        ] {
            assert!(!other.starts_with(&state) && !state.starts_with(&other));
        }
        let op = operator_state_prefix(id, 3);
        assert_eq!(op.len(), OPERATOR_PREFIX_LEN);
        let k = state_key(&op, key_group(b"abc"), b"abc");
        assert_eq!(&k[STATE_KEY_PREFIX_LEN..], b"abc");
        assert!(k.starts_with(&state));
    }

    #[test]
    fn partitions_own_contiguous_ranges_of_groups() {
        for n in 1..=7 {
            let mut next = 0;
            for p in 0..n {
                let groups = partition_groups(p, n);
                assert_eq!(groups.start, next, "ranges of {n} partitions touch");
                assert!(!groups.is_empty());
                for g in groups.clone() {
                    assert_eq!(partition_of(g, n), p, "group {g} of {n} partitions");
                }
                next = groups.end;
            }
            assert_eq!(next, KEY_GROUPS, "{n} partitions own every group");
        }
    }

    #[test]
    fn key_groups_are_stable_and_spread() {
        // Persisted state depends on these values: they may never change.
        assert_eq!(
            [
                key_group(b""),
                key_group(b"abc"),
                key_group(&7u32.to_be_bytes())
            ],
            [193, 82, 111]
        );
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let g = key_group(&i.to_be_bytes());
            assert!(g < KEY_GROUPS);
            seen.insert(g);
        }
        assert_eq!(seen.len(), KEY_GROUPS as usize, "every group is used");
    }
}

//! Top-N: the rows ranked within a bound in each partition, kept exact as rows arrive and,
//! over an updating input, leave.
//!
//! `SELECT ... FROM (SELECT ..., row_number() OVER (PARTITION BY p ORDER BY o) AS rn ...)
//! WHERE rn <= n` (also `rank()`, `dense_rank()`) and `ORDER BY o LIMIT n [OFFSET m]` become
//! this operator. Its output is a changelog: when a row enters a partition's top, the row it
//! pushes out (and every row whose rank it shifts) is deleted and inserted again with its new
//! rank, so the view below holds exactly what a batch query over the same rows returns.
//!
//! State, per partition (key group of the partition key):
//! - `0 ‖ partition` → the partition's *candidates*: its rows whose rank (by the function the
//!   bound names) is within the bound, in order, with their multiplicities. The operator's
//!   output for the partition is a function of this list alone, so the old output is known
//!   without remembering what was emitted.
//! - over an updating input only, `1 ‖ partition ‖ sort key ‖ row ‖ row length` → how many
//!   copies of the row the input holds: when a top row is deleted, the next one comes from
//!   here (a bounded scan in sort order). Over an appending input a row outside the bound can
//!   never enter it again, so only the candidates are kept.
//!
//! Rows compare by the encoded sort key (`arrow_row`, with each ORDER BY's direction and
//! NULLS order), then by the whole row, so ties are broken the same way in every run and on
//! every restore.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch, UInt64Array};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, Rows, SortField};
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::PhysicalExpr;

use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::changelog;
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;

/// A ranking function.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    /// 1, 2, 3, ... (ties in the stored order).
    RowNumber,
    /// 1 + the rows ranked strictly before (ties share, gaps follow).
    Rank,
    /// 1 + the distinct sort keys before (ties share, no gaps).
    DenseRank,
}

impl Rank {
    pub fn from_name(name: &str) -> Option<Rank> {
        match name {
            "row_number" => Some(Rank::RowNumber),
            "rank" => Some(Rank::Rank),
            "dense_rank" => Some(Rank::DenseRank),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Rank::RowNumber => "row_number",
            Rank::Rank => "rank",
            Rank::DenseRank => "dense_rank",
        }
    }
}

#[derive(Debug)]
pub struct TopPlan {
    /// The rows the operator takes.
    pub input: SchemaRef,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    pub order_by: Vec<PhysicalSortExpr>,
    /// Ranking columns appended to each output row, in order.
    pub ranks: Vec<Rank>,
    /// The input's columns, then one per ranking function.
    pub output: SchemaRef,
    /// The function whose value bounds the result, and the bound: rows ranked `1..=limit`.
    pub by: Rank,
    pub limit: u64,
    /// Rows numbered `1..=skip` are not output (OFFSET; only with row numbers).
    pub skip: u64,
    /// The input is a changelog: every row is kept, so a deleted top row can be replaced.
    pub updates: bool,
}

impl TopPlan {
    /// For EXPLAIN: what is ranked and kept.
    pub fn describe(&self) -> String {
        let list = |items: Vec<String>| items.join(", ");
        let partition = list(self.partition_by.iter().map(|e| e.to_string()).collect());
        let order = list(self.order_by.iter().map(|e| e.to_string()).collect());
        let kept = match (self.ranks.is_empty(), self.skip) {
            (true, 0) => format!("first {} rows", self.limit),
            (true, skip) => format!("rows {} to {}", skip + 1, self.limit),
            (false, _) => format!("rows with {}() <= {}", self.by.name(), self.limit),
        };
        format!("partition by [{partition}], order by [{order}]; {kept}")
    }
}

/// One distinct row of a partition, with how many times it occurs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    sort: Vec<u8>,
    row: Vec<u8>,
    count: u64,
}

/// Takes a partition's entries in order and keeps those within the bound.
struct Selector {
    by: Rank,
    limit: u64,
    kept: Vec<Entry>,
    /// Copies taken so far, distinct sort keys so far, and the rank of the last kept entry.
    copies: u64,
    keys: u64,
    last_rank: u64,
}

impl Selector {
    fn new(by: Rank, limit: u64) -> Self {
        Self {
            by,
            limit,
            kept: Vec::new(),
            copies: 0,
            keys: 0,
            last_rank: 0,
        }
    }

    /// Takes the next entry (in order); false once no later entry can be within the bound.
    fn push(&mut self, mut entry: Entry) -> bool {
        let new_key = self.kept.last().is_none_or(|last| last.sort != entry.sort);
        let rank = match self.by {
            Rank::RowNumber => self.copies + 1,
            Rank::Rank if new_key => self.copies + 1,
            Rank::Rank => self.last_rank,
            Rank::DenseRank => self.keys + new_key as u64,
        };
        if rank > self.limit {
            return false;
        }
        if self.by == Rank::RowNumber {
            entry.count = entry.count.min(self.limit - self.copies);
        }
        self.copies += entry.count;
        self.keys += new_key as u64;
        self.last_rank = rank;
        self.kept.push(entry);
        match self.by {
            Rank::RowNumber => self.copies < self.limit,
            // A tie of the last kept row may still follow.
            Rank::Rank | Rank::DenseRank => true,
        }
    }
}

/// Each partition's key and the indexes of its rows in a batch.
type Partitions<'a> = Vec<(&'a [u8], Vec<usize>)>;

/// A partition's key, its old candidates and its new ones.
type Top = (Vec<u8>, Vec<Entry>, Vec<Entry>);

/// A row of the output: the input row and its ranks.
type Ranked = (Vec<u8>, Vec<u64>);

fn encode_list(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::new();
    for e in entries {
        v.extend_from_slice(&(e.sort.len() as u32).to_be_bytes());
        v.extend_from_slice(&e.sort);
        v.extend_from_slice(&(e.row.len() as u32).to_be_bytes());
        v.extend_from_slice(&e.row);
        v.extend_from_slice(&e.count.to_be_bytes());
    }
    v
}

fn decode_list(mut bytes: &[u8]) -> Result<Vec<Entry>> {
    let corrupt = || Error::internal("corrupt top-N state");
    let take = |n: usize, bytes: &mut &[u8]| -> Result<Vec<u8>> {
        let (head, rest) = bytes.split_at_checked(n).ok_or_else(corrupt)?;
        *bytes = rest;
        Ok(head.to_vec())
    };
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let len = u32::from_be_bytes(take(4, &mut bytes)?.try_into().expect("4")) as usize;
        let sort = take(len, &mut bytes)?;
        let len = u32::from_be_bytes(take(4, &mut bytes)?.try_into().expect("4")) as usize;
        let row = take(len, &mut bytes)?;
        let count = u64::from_be_bytes(take(8, &mut bytes)?.try_into().expect("8"));
        entries.push(Entry { sort, row, count });
    }
    Ok(entries)
}

const CANDIDATES: u8 = 0;
const ROWS: u8 = 1;

fn candidates_key(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + partition.len());
    k.push(CANDIDATES);
    k.extend_from_slice(partition);
    k
}

fn rows_prefix(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + partition.len());
    k.push(ROWS);
    k.extend_from_slice(partition);
    k
}

fn row_key(partition: &[u8], sort: &[u8], row: &[u8]) -> Vec<u8> {
    let mut k = rows_prefix(partition);
    k.extend_from_slice(sort);
    k.extend_from_slice(row);
    k.extend_from_slice(&(row.len() as u32).to_be_bytes());
    k
}

/// The sort key and row of a stored row key (after `1 ‖ partition`).
fn split_row_key(rest: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let corrupt = || Error::internal("corrupt top-N row key");
    let at = rest.len().checked_sub(4).ok_or_else(corrupt)?;
    let len = u32::from_be_bytes(rest[at..].try_into().expect("4")) as usize;
    let start = at.checked_sub(len).ok_or_else(corrupt)?;
    Ok((rest[..start].to_vec(), rest[start..at].to_vec()))
}

fn count_of(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| v.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub struct TopN {
    plan: Arc<TopPlan>,
    state: StateTable,
    partitions: RowConverter,
    sorts: RowConverter,
    rows: RowConverter,
}

/// One batch's rows, encoded.
struct Encoded {
    /// None without PARTITION BY (every row in the one partition, encoded as no bytes).
    partitions: Option<Rows>,
    sorts: Rows,
    rows: Rows,
}

impl TopN {
    pub fn new(plan: Arc<TopPlan>, state: StateTable) -> Result<Self> {
        let partitions = plan
            .partition_by
            .iter()
            .map(|e| Ok(SortField::new(e.data_type(&plan.input)?)))
            .collect::<Result<Vec<_>>>()?;
        let sorts = plan
            .order_by
            .iter()
            .map(|s| {
                Ok(SortField::new_with_options(
                    s.expr.data_type(&plan.input)?,
                    s.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let rows = plan
            .input
            .fields()
            .iter()
            .map(|f| SortField::new(f.data_type().clone()))
            .collect();
        Ok(Self {
            state,
            partitions: RowConverter::new(partitions)?,
            sorts: RowConverter::new(sorts)?,
            rows: RowConverter::new(rows)?,
            plan,
        })
    }

    fn encode(&self, batch: &RecordBatch) -> Result<Encoded> {
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> {
            Ok(e.evaluate(batch)?.into_array(batch.num_rows())?)
        };
        let partitions: Vec<ArrayRef> = self
            .plan
            .partition_by
            .iter()
            .map(eval)
            .collect::<Result<_>>()?;
        let sorts: Vec<ArrayRef> = self
            .plan
            .order_by
            .iter()
            .map(|s| eval(&s.expr))
            .collect::<Result<_>>()?;
        Ok(Encoded {
            partitions: match partitions.is_empty() {
                true => None,
                false => Some(self.partitions.convert_columns(&partitions)?),
            },
            sorts: self.sorts.convert_columns(&sorts)?,
            rows: self.rows.convert_columns(batch.columns())?,
        })
    }

    /// The output rows of a partition's candidates: rows ranked after the OFFSET, with their
    /// ranks.
    fn ranked(&self, candidates: &[Entry]) -> Vec<Ranked> {
        let mut out = Vec::new();
        let (mut number, mut rank, mut dense) = (0u64, 0u64, 0u64);
        let mut previous: Option<&[u8]> = None;
        for e in candidates {
            if previous != Some(e.sort.as_slice()) {
                rank = number + 1;
                dense += 1;
                previous = Some(&e.sort);
            }
            for _ in 0..e.count {
                number += 1;
                if number <= self.plan.skip {
                    continue;
                }
                let ranks = self
                    .plan
                    .ranks
                    .iter()
                    .map(|r| match r {
                        Rank::RowNumber => number,
                        Rank::Rank => rank,
                        Rank::DenseRank => dense,
                    })
                    .collect();
                out.push((e.row.clone(), ranks));
            }
        }
        out
    }

    /// Rows to retract and to insert to go from one partition's output to another.
    fn diff(
        &self,
        old: &[Entry],
        new: &[Entry],
        retract: &mut Vec<Ranked>,
        insert: &mut Vec<Ranked>,
    ) {
        let mut counts: HashMap<Ranked, i64> = HashMap::new();
        for r in self.ranked(old) {
            *counts.entry(r).or_default() -= 1;
        }
        for r in self.ranked(new) {
            *counts.entry(r).or_default() += 1;
        }
        let mut changed: Vec<(Ranked, i64)> = counts.into_iter().filter(|(_, n)| *n != 0).collect();
        changed.sort();
        for (r, n) in changed {
            let target = if n < 0 { &mut *retract } else { &mut *insert };
            for _ in 0..n.unsigned_abs() {
                target.push(r.clone());
            }
        }
    }

    /// Output rows as a batch of the output's columns.
    fn batch(&self, rows: &[Ranked]) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let mut columns = self
            .rows
            .convert_rows(rows.iter().map(|(r, _)| parser.parse(r)))?;
        for (i, _) in self.plan.ranks.iter().enumerate() {
            let values: UInt64Array = rows.iter().map(|(_, ranks)| Some(ranks[i])).collect();
            columns.push(Arc::new(values));
        }
        let columns = columns
            .into_iter()
            .zip(self.plan.output.fields())
            .map(|(c, f)| match c.data_type() == f.data_type() {
                true => Ok(c),
                false => Ok(cast(&c, f.data_type())?),
            })
            .collect::<Result<Vec<_>>>()?;
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows.len()));
        Ok(RecordBatch::try_new_with_options(
            self.plan.output.clone(),
            columns,
            &options,
        )?)
    }

    fn emit(&self, retract: &[Ranked], insert: &[Ranked], out: &mut Vec<Message>) -> Result<()> {
        if retract.is_empty() && insert.is_empty() {
            return Ok(());
        }
        let retracted = self.batch(retract)?;
        let inserted = self.batch(insert)?;
        if let Some(c) = changelog::changes(&[retracted], &[inserted])? {
            out.push(Message::Changes(c));
        }
        Ok(())
    }

    /// Partitions in order of first appearance, with the indexes of their rows.
    fn by_partition(encoded: &Encoded, rows: usize) -> Partitions<'_> {
        let mut at: HashMap<&[u8], usize> = HashMap::new();
        let mut groups: Partitions<'_> = Vec::new();
        for i in 0..rows {
            let p = encoded
                .partitions
                .as_ref()
                .map_or(&[][..], |p| p.row(i).data());
            let g = *at.entry(p).or_insert_with(|| {
                groups.push((p, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        groups
    }

    fn stored_candidates(&self, partitions: &[&[u8]]) -> Result<Vec<Vec<Entry>>> {
        let keys: Vec<Vec<u8>> = partitions.iter().map(|p| candidates_key(p)).collect();
        let wanted: Vec<(u16, &[u8])> = partitions
            .iter()
            .zip(&keys)
            .map(|(p, k)| (key_group(p), k.as_slice()))
            .collect();
        self.state
            .get_many(&wanted)?
            .into_iter()
            .map(|v| {
                v.map(|v| decode_list(&v))
                    .transpose()
                    .map(Option::unwrap_or_default)
            })
            .collect()
    }

    fn store_candidates(&mut self, partition: &[u8], list: &[Entry]) {
        let key = candidates_key(partition);
        match list.is_empty() {
            true => self.state.delete(key_group(partition), &key),
            false => self
                .state
                .put(key_group(partition), &key, encode_list(list)),
        }
    }

    /// Rows arrive and none leave: each partition's candidates merged with its new rows.
    fn on_appends(&mut self, batch: &RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let encoded = self.encode(batch)?;
        let groups = Self::by_partition(&encoded, batch.num_rows());
        let partitions: Vec<&[u8]> = groups.iter().map(|(p, _)| *p).collect();
        let stored = self.stored_candidates(&partitions)?;
        let mut tops = Vec::new();
        for ((partition, rows), old) in groups.iter().zip(stored) {
            let mut merged = old.clone();
            for i in rows {
                merged.push(Entry {
                    sort: encoded.sorts.row(*i).data().to_vec(),
                    row: encoded.rows.row(*i).data().to_vec(),
                    count: 1,
                });
            }
            merged.sort();
            merged.dedup_by(|later, earlier| {
                let same = later.sort == earlier.sort && later.row == earlier.row;
                if same {
                    earlier.count += later.count;
                }
                same
            });
            let mut selector = Selector::new(self.plan.by, self.plan.limit);
            for e in merged {
                if !selector.push(e) {
                    break;
                }
            }
            tops.push((partition.to_vec(), old, selector.kept));
        }
        self.replace_candidates(tops, out)
    }

    /// Stores each partition's new candidates and emits the changes from its old output to
    /// its new one.
    fn replace_candidates(&mut self, tops: Vec<Top>, out: &mut Vec<Message>) -> Result<()> {
        let (mut retract, mut insert) = (Vec::new(), Vec::new());
        for (partition, old, new) in tops.into_iter().filter(|(_, old, new)| old != new) {
            self.diff(&old, &new, &mut retract, &mut insert);
            self.store_candidates(&partition, &new);
        }
        self.emit(&retract, &insert, out)
    }

    /// Rows arrive and leave: every row is counted, and each changed partition's candidates
    /// are read again from its rows in order.
    fn on_changelog(&mut self, changes: &RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        let (retracted, inserted) = changelog::split(changes)?;
        let rows =
            datafusion::arrow::compute::concat_batches(&self.plan.input, [&retracted, &inserted])?;
        let encoded = self.encode(&rows)?;
        let groups = Self::by_partition(&encoded, rows.num_rows());
        // Net change of each distinct row.
        let mut net: HashMap<Vec<u8>, (u16, i64)> = HashMap::new();
        let mut order = Vec::new();
        for (partition, members) in &groups {
            for &i in members {
                let sign = match i < retracted.num_rows() {
                    true => -1,
                    false => 1,
                };
                let key = row_key(
                    partition,
                    encoded.sorts.row(i).data(),
                    encoded.rows.row(i).data(),
                );
                let slot = net.entry(key.clone()).or_insert_with(|| {
                    order.push(key);
                    (key_group(partition), 0)
                });
                slot.1 += sign;
            }
        }
        let wanted: Vec<(u16, &[u8])> = order.iter().map(|k| (net[k].0, k.as_slice())).collect();
        let stored = self.state.get_many(&wanted)?;
        for (key, old) in order.iter().zip(stored) {
            let (group, change) = net[key];
            let count = (count_of(old.as_deref()) as i64 + change).max(0) as u64;
            match count {
                0 => self.state.delete(group, key),
                n => self.state.put(group, key, n.to_be_bytes().to_vec()),
            }
        }
        let partitions: Vec<&[u8]> = groups.iter().map(|(p, _)| *p).collect();
        let stored = self.stored_candidates(&partitions)?;
        let mut tops = Vec::new();
        for (partition, old) in partitions.iter().zip(stored) {
            let prefix = rows_prefix(partition);
            let mut selector = Selector::new(self.plan.by, self.plan.limit);
            let mut failed = None;
            self.state
                .scan_prefix_until(key_group(partition), &prefix, |_, key, value| {
                    match split_row_key(&key[prefix.len()..]) {
                        Ok((sort, row)) => Ok(selector.push(Entry {
                            sort,
                            row,
                            count: count_of(Some(value)),
                        })),
                        Err(e) => {
                            failed = Some(e);
                            Ok(false)
                        }
                    }
                })?;
            if let Some(e) = failed {
                return Err(e);
            }
            tops.push((partition.to_vec(), old, selector.kept));
        }
        self.replace_candidates(tops, out)
    }
}

#[async_trait]
impl Operator for TopN {
    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.plan.updates {
            false => self.on_appends(&batch, out),
            true => match changelog::changes(&[], &[batch])? {
                Some(c) => self.on_changelog(&c, out),
                None => Ok(()),
            },
        }
    }

    async fn on_changes(&mut self, changes: RecordBatch, out: &mut Vec<Message>) -> Result<()> {
        match self.plan.updates {
            true => self.on_changelog(&changes, out),
            false => Err(Error::internal(
                "a top-N over an appending input received a changelog",
            )),
        }
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        self.state.flush(barrier);
        Ok(())
    }

    fn on_commit(&mut self, epoch: u64) {
        self.state.committed(epoch);
    }
}

#[cfg(test)]
mod tests;

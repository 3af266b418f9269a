//! MATCH_RECOGNIZE over events, in event time (`cep/` holds the matcher).
//!
//! Rows wait per partition until the watermark passes their time, so rows that arrive out of
//! order within the watermark are matched in ORDER BY order (time, the other ORDER BY columns,
//! then arrival). At each watermark the sealed rows of every partition go to the matcher
//! together (row-local DEFINE conditions evaluated once over all of them), WITHIN timers fire
//! (an attempt whose interval ended by the watermark is cut: a replay cuts it at the same
//! point, as timers never read the wall clock), and the matches found become output rows.
//!
//! State, in the operator's table, keyed by the partition's key group:
//! - `0 ‖ block` → rows the watermark had not passed at a barrier, that arrived in the epoch
//!   it ends (their times, sequences and encodings), deleted once the watermark has passed all
//!   of them (a restore takes the rows at or after its watermark);
//! - `1 ‖ partition` → the partition's matching state: its open attempts (threads and their
//!   paths) and the rows they may still read. A partition with no open attempt has no entry
//!   (unless PREV reaches before a match or MATCH_NUMBER() counts, `MatchPlan::keep`).
//!
//! Both are written at barriers: the block of the epoch's rows still waiting, and the
//! partitions that changed since the last one. A row matched within the epoch it arrived in
//! never reaches the store.

use std::collections::BTreeMap;

use ahash::AHashSet as HashSet;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;

use crate::cep::matcher::{Attempt, Partition, Thread};
use crate::cep::run::{MatchPlan, Matching, NewRow, PartitionState};
use crate::error::{Error, Result};
use crate::keys::key_group;
use crate::stream::checkpoint::Barrier;
use crate::stream::pipeline::{Message, Operator};
use crate::stream::state::StateTable;

const PENDING: u8 = 0;
const PARTITION: u8 = 1;

pub struct MatchRecognize {
    matching: Matching,
    state: StateTable,
    /// Rows the watermark has not passed, by (time, ORDER BY, sequence): a watermark seals a
    /// prefix, whatever their partitions.
    pending: BTreeMap<(i64, Vec<u8>, u64), NewRow>,
    /// The watermark rows were last sealed at: rows before it were matched.
    emitted_to: Option<i64>,
    next_seq: u64,
    /// Partitions whose matching state changed since the last barrier.
    dirty: HashSet<Vec<u8>>,
    /// Rows that arrived since the last barrier, by their pending keys: those still pending
    /// at the barrier are stored as one block.
    arrived: Vec<(i64, Vec<u8>, u64)>,
    /// Stored blocks of pending rows: (block id, latest time in it). A block is deleted once
    /// the watermark has passed all its rows.
    blocks: Vec<(u64, i64)>,
}

/// The key of a block of pending rows (key group 0: a block holds rows of many partitions).
fn block_key(id: u64) -> [u8; 9] {
    let mut k = [PENDING; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// A block: per row its time, sequence and encoding.
fn encode_block(rows: &[(i64, u64, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ts, seq, bytes) in rows {
        out.extend_from_slice(&ts.to_le_bytes());
        out.extend_from_slice(&seq.to_le_bytes());
        put_bytes(&mut out, bytes);
    }
    out
}

fn decode_block(block: &[u8]) -> Option<Vec<(i64, u64, Vec<u8>)>> {
    let mut r = Reader(block);
    let mut rows = Vec::new();
    while !r.0.is_empty() {
        rows.push((r.u64()? as i64, r.u64()?, r.bytes()?));
    }
    Some(rows)
}

fn partition_key(partition: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + partition.len());
    k.push(PARTITION);
    k.extend_from_slice(partition);
    k
}

impl MatchRecognize {
    /// The operator over the state of the last checkpoint, whose watermark is `watermark`.
    pub fn restore(
        plan: Arc<MatchPlan>,
        state: StateTable,
        watermark: Option<i64>,
    ) -> Result<Self> {
        let mut this = Self {
            matching: Matching::new(plan)?,
            // The state lives in memory; the table is read only by the scan below.
            state: state.write_through(),
            pending: BTreeMap::new(),
            emitted_to: watermark,
            next_seq: 0,
            dirty: HashSet::default(),
            arrived: Vec::new(),
            blocks: Vec::new(),
        };
        let corrupt = || Error::internal("corrupt MATCH_RECOGNIZE state");
        let mut pending = Vec::new();
        let mut partitions = Vec::new();
        let mut blocks = Vec::new();
        this.state.scan(|_, k, v| {
            match k.first() {
                Some(&PENDING) if k.len() == 9 => {
                    let id = u64::from_be_bytes(k[1..].try_into().expect("8 bytes"));
                    let rows = decode_block(v).ok_or_else(corrupt)?;
                    let latest = rows.iter().map(|r| r.0).max().unwrap_or(i64::MIN);
                    blocks.push((id, latest));
                    // Rows before the checkpoint's watermark were matched before it.
                    for (ts, seq, bytes) in rows {
                        if watermark.is_none_or(|w| ts >= w) {
                            pending.push((seq, bytes));
                        }
                    }
                }
                Some(&PARTITION) => partitions.push((k[1..].to_vec(), v.to_vec())),
                _ => return Err(corrupt()),
            }
            Ok(())
        })?;
        blocks.sort();
        this.next_seq = blocks.last().map_or(0, |b| b.0 + 1);
        this.blocks = blocks;
        let rows = this.matching.decode(
            &pending
                .iter()
                .map(|(_, b)| b.as_slice())
                .collect::<Vec<_>>(),
        )?;
        for ((seq, _), row) in pending.into_iter().zip(rows) {
            this.next_seq = this.next_seq.max(seq + 1);
            this.pending
                .insert((row.row.ts, row.order.clone(), seq), row);
        }
        for (partition, bytes) in partitions {
            let part = this.decode_partition(&bytes)?;
            this.matching.restore_partition(partition, part);
        }
        Ok(this)
    }

    fn buffer(&mut self, batch: &RecordBatch) -> Result<()> {
        for row in self.matching.rows_of(batch)? {
            // The source drops events behind the watermark.
            if self.emitted_to.is_some_and(|w| row.row.ts < w) {
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            let key = (row.row.ts, row.order.clone(), seq);
            self.arrived.push(key.clone());
            self.pending.insert(key, row);
        }
        Ok(())
    }

    /// Matches the rows the watermark passed and fires the WITHIN timers it reached; returns
    /// the output rows.
    fn seal(&mut self, watermark: i64) -> Result<Option<RecordBatch>> {
        if self.emitted_to.is_some_and(|w| watermark <= w) {
            return Ok(None);
        }
        let still = self.pending.split_off(&(watermark, Vec::new(), 0));
        let done = std::mem::replace(&mut self.pending, still);
        let mut sealed = Vec::with_capacity(done.len());
        sealed.extend(done.into_values());
        // Blocks whose rows are all matched now.
        let (gone, kept): (Vec<_>, Vec<_>) = self
            .blocks
            .iter()
            .partition(|(_, latest)| *latest < watermark);
        for (id, _) in gone {
            self.state.delete(0, &block_key(id));
        }
        self.blocks = kept;
        // Each partition's rows together, in order (stable: the map's order within), and the
        // partitions in key order, so a replay emits in the same order.
        sealed.sort_by(|a, b| a.partition.cmp(&b.partition));
        // The partitions this watermark changes: trimmed below, written at the barrier.
        let mut touched: Vec<Vec<u8>> = Vec::new();
        for row in &sealed {
            if touched.last() != Some(&row.partition) {
                touched.push(row.partition.clone());
            }
        }
        let mut found = self.matching.push(sealed)?;
        let (timed, changed) = self.matching.advance(watermark);
        found.extend(timed);
        touched.extend(changed);
        self.emitted_to = Some(watermark);
        let out = match found.is_empty() {
            true => None,
            false => Some(self.matching.output(&found)?),
        };
        self.matching.trim(touched.iter());
        self.dirty.extend(touched);
        Ok(out)
    }

    fn encode_partition(part: &PartitionState) -> Vec<u8> {
        let mut out = Vec::new();
        let m = &part.matcher;
        for v in [m.next, m.resume, m.matches, part.rows.base] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&(part.rows.rows.len() as u32).to_le_bytes());
        for r in &part.rows.rows {
            out.extend_from_slice(&r.ts.to_le_bytes());
            out.extend_from_slice(&r.bits.to_le_bytes());
            put_bytes(&mut out, &r.bytes);
        }
        out.extend_from_slice(&(m.attempts.len() as u32).to_le_bytes());
        for a in &m.attempts {
            out.extend_from_slice(&a.start.to_le_bytes());
            out.extend_from_slice(&a.start_ts.to_le_bytes());
            for path in [&a.accepted, &a.cut] {
                match path {
                    None => out.push(0),
                    Some(p) => {
                        out.push(1);
                        put_path(&mut out, p);
                    }
                }
            }
            out.extend_from_slice(&(a.threads.len() as u32).to_le_bytes());
            for t in &a.threads {
                out.extend_from_slice(&t.pc.to_le_bytes());
                put_path(&mut out, &t.path);
            }
        }
        out
    }

    fn decode_partition(&self, bytes: &[u8]) -> Result<PartitionState> {
        let corrupt = || Error::internal("corrupt MATCH_RECOGNIZE partition state");
        let mut r = Reader(bytes);
        let next = r.u64().ok_or_else(corrupt)?;
        let resume = r.u64().ok_or_else(corrupt)?;
        let matches = r.u64().ok_or_else(corrupt)?;
        let base = r.u64().ok_or_else(corrupt)?;
        let n = r.u32().ok_or_else(corrupt)?;
        let mut stored = Vec::new();
        for _ in 0..n {
            let ts = r.u64().ok_or_else(corrupt)? as i64;
            let bits = r.u64().ok_or_else(corrupt)?;
            let row = r.bytes().ok_or_else(corrupt)?;
            stored.push((ts, bits, row));
        }
        let n = r.u32().ok_or_else(corrupt)?;
        let mut attempts = std::collections::VecDeque::new();
        for _ in 0..n {
            let start = r.u64().ok_or_else(corrupt)?;
            let start_ts = r.u64().ok_or_else(corrupt)? as i64;
            let mut paths = [None, None];
            for p in paths.iter_mut() {
                if r.u8().ok_or_else(corrupt)? == 1 {
                    *p = Some(r.path().ok_or_else(corrupt)?);
                }
            }
            let [accepted, cut] = paths;
            let threads = (0..r.u32().ok_or_else(corrupt)?)
                .map(|_| {
                    Some(Thread {
                        pc: r.u32()?,
                        path: r.path()?,
                    })
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(corrupt)?;
            attempts.push_back(Attempt {
                start,
                start_ts,
                threads,
                accepted,
                cut,
            });
        }
        let decoded = self.matching.decode(
            &stored
                .iter()
                .map(|(_, _, b)| b.as_slice())
                .collect::<Vec<_>>(),
        )?;
        let partition = decoded.first().map(|r| r.partition.clone());
        let mut part = PartitionState {
            key: match partition {
                Some(p) => self.matching.key_of(&p)?,
                None => Vec::new(),
            },
            rows: Default::default(),
            matcher: Partition {
                attempts,
                next,
                resume,
                matches,
            },
        };
        part.rows.base = base;
        for ((ts, bits, _), mut row) in stored.into_iter().zip(decoded) {
            row.row.ts = ts;
            row.row.bits = bits;
            part.rows.rows.push_back(row.row);
        }
        Ok(part)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_path(out: &mut Vec<u8>, p: &[u16]) {
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    for e in p {
        out.extend_from_slice(&e.to_le_bytes());
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn path(&mut self) -> Option<Vec<u16>> {
        let n = self.u32()? as usize;
        let b = self.take(n * 2)?;
        Some(
            b.chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect(),
        )
    }
}

#[async_trait::async_trait]
impl Operator for MatchRecognize {
    async fn on_batch(&mut self, batch: RecordBatch, _out: &mut Vec<Message>) -> Result<()> {
        self.buffer(&batch)
    }

    async fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Message>) -> Result<()> {
        if let Some(rows) = self.seal(watermark)?
            && rows.num_rows() > 0
        {
            out.push(Message::Batch(rows));
        }
        out.push(Message::Watermark(watermark));
        Ok(())
    }

    fn on_barrier(&mut self, barrier: &mut Barrier) -> Result<()> {
        // The rows that arrived since the last barrier and still wait, as one block.
        let mut block = Vec::new();
        let mut latest = i64::MIN;
        for key in self.arrived.drain(..) {
            if let Some(row) = self.pending.get(&key) {
                block.push((key.0, key.2, row.row.bytes.as_slice()));
                latest = latest.max(key.0);
            }
        }
        if !block.is_empty() {
            let id = self.next_seq;
            self.next_seq += 1;
            self.state.put(0, &block_key(id), encode_block(&block));
            self.blocks.push((id, latest));
        }
        for partition in self.dirty.drain() {
            let group = key_group(&partition);
            match self.matching.parts().get(&partition) {
                Some(part) => {
                    let value = Self::encode_partition(part);
                    self.state.put(group, &partition_key(&partition), value);
                }
                None => self.state.delete(group, &partition_key(&partition)),
            }
        }
        self.state.flush(barrier);
        Ok(())
    }
}

#[cfg(test)]
mod tests;

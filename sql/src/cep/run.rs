//! MATCH_RECOGNIZE over Arrow batches: the compiled clause ([`MatchPlan`]) and the matching
//! state of every partition ([`Matching`]), shared by batch queries (all rows at once) and the
//! streaming operator (rows as the watermark seals them).
//!
//! Rows come in per partition in ORDER BY order. Each kept row holds its time, the values its
//! leaves read, its row-local DEFINE results and its encoding; a partition keeps the rows its
//! open match attempts may still read (from the first open attempt's first row, less the
//! history PREV can reach before a match), and nothing when no attempt is open, unless PREV
//! reaches before a match's first row or MATCH_NUMBER() counts its matches.
//!
//! Work is vectorised across partitions: the row-local DEFINE conditions of every row a call
//! brings are evaluated in one pass, and MEASURES over every match it finds.

use ahash::AHashMap as HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::physical_expr::PhysicalSortExpr;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::sql::sqlparser::ast;

use super::expr::{Compiled, Leaf, MatchView, Rows, Scope, StoredRow, truth};
use super::matcher::{Define, EXCLUDED, Found, MatchConfig, Matcher, Partition, Skip};
use super::pattern::{Pattern, Program, Var};
use super::syntax::{Clause, RowsPerMatch, SkipTo, var_index};
use crate::error::{Error, Result, sqlstate};

/// A DEFINE compiled, and whether it depends on the row alone.
#[derive(Debug, Clone)]
pub struct DefinePlan {
    pub compiled: Compiled,
    pub row_local: bool,
}

/// A MATCH_RECOGNIZE clause compiled against its input.
#[derive(Debug, Clone)]
pub struct MatchPlan {
    pub input: SchemaRef,
    pub partition_by: Vec<Arc<dyn PhysicalExpr>>,
    /// ORDER BY after the time (ties are broken by them, then by arrival).
    pub order_by: Vec<PhysicalSortExpr>,
    /// The ORDER BY time column.
    pub time: usize,
    pub config: MatchConfig,
    pub pattern: Pattern,
    pub vars: Vec<String>,
    /// Input columns the leaves read.
    pub slots: Vec<usize>,
    pub defines: Vec<Option<DefinePlan>>,
    pub measures: Vec<Compiled>,
    pub rows: RowsPerMatch,
    /// Partition columns (or the input's, for ALL ROWS PER MATCH), then the measures.
    pub output: SchemaRef,
    /// Rows before a match's first row that PREV can reach.
    pub history: u64,
    /// Partitions are kept without open attempts (history, or MATCH_NUMBER counts).
    pub keep: bool,
    /// Some NEXT reads rows after the current one.
    pub reads_ahead: bool,
}

fn syntax(message: impl Into<String>) -> Error {
    Error::user(sqlstate::SYNTAX_ERROR, message.into())
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::user(sqlstate::FEATURE_NOT_SUPPORTED, message.into())
}

/// A name for an output column from its expression (`a.b` → `b`).
fn column_name(expr: &ast::Expr) -> String {
    match expr {
        ast::Expr::Identifier(id) => fold(id),
        ast::Expr::CompoundIdentifier(parts) => parts.last().map(fold).unwrap_or_default(),
        other => other.to_string(),
    }
}

fn fold(id: &ast::Ident) -> String {
    match id.quote_style {
        Some(_) => id.value.clone(),
        None => id.value.to_ascii_lowercase(),
    }
}

impl MatchPlan {
    /// Compiles `clause` over rows of `input`; `state` plans the expressions.
    pub fn new(clause: &Clause, input: SchemaRef, state: &SessionState) -> Result<Self> {
        let df_input = DFSchema::try_from(input.as_ref().clone())?;
        let physical = |e: &ast::Expr, what: &str| -> Result<Arc<dyn PhysicalExpr>> {
            let logical = state
                .create_logical_expr(&e.to_string(), &df_input)
                .map_err(|err| syntax(format!("in {what}: {err}")))?;
            Ok(state.create_physical_expr(logical, &df_input)?)
        };
        let partition_by = clause
            .partition_by
            .iter()
            .map(|e| physical(e, "PARTITION BY"))
            .collect::<Result<Vec<_>>>()?;
        let (first, rest) = clause
            .order_by
            .split_first()
            .ok_or_else(|| syntax("MATCH_RECOGNIZE needs ORDER BY the event time"))?;
        let time = match &first.expr {
            ast::Expr::Identifier(id) => input.index_of(&fold(id)).ok(),
            ast::Expr::CompoundIdentifier(p) => {
                p.last().and_then(|id| input.index_of(&fold(id)).ok())
            }
            _ => None,
        }
        .filter(|i| {
            matches!(input.field(*i).data_type(), DataType::Timestamp(..))
                && first.options.asc != Some(false)
        })
        .ok_or_else(|| {
            syntax(format!(
                "MATCH_RECOGNIZE must be ORDER BY a timestamp column of its input first, \
                 ascending (the event time), not {}",
                first.expr
            ))
        })?;
        let order_by = rest
            .iter()
            .map(|o| {
                Ok(PhysicalSortExpr {
                    expr: physical(&o.expr, "ORDER BY")?,
                    options: datafusion::arrow::compute::SortOptions {
                        descending: o.options.asc == Some(false),
                        nulls_first: o
                            .options
                            .nulls_first
                            .unwrap_or(o.options.asc == Some(false)),
                    },
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut slots = Vec::new();
        let mut scope = Scope {
            input: &input,
            vars: &clause.vars,
            subsets: &clause.subsets,
            state,
            slots: &mut slots,
        };
        let mut defines = vec![None; clause.vars.len()];
        for (var, expr) in &clause.defines {
            let what = format!("DEFINE {}", clause.vars[*var]);
            let compiled = scope.compile(expr, &what)?;
            if compiled.expr.data_type(&compiled.schema)? != DataType::Boolean {
                return Err(Error::user(
                    sqlstate::DATATYPE_MISMATCH,
                    format!("{what} must be a boolean condition"),
                ));
            }
            if compiled
                .leaves
                .iter()
                .any(|l| matches!(l, Leaf::MatchNumber | Leaf::TimedOut))
            {
                return Err(syntax(format!(
                    "{what}: MATCH_NUMBER() and TIMED_OUT() are for MEASURES"
                )));
            }
            let row_local = compiled.row_local(*var as Var).is_some();
            defines[*var] = Some(DefinePlan {
                compiled,
                row_local,
            });
        }
        let mut measures = Vec::new();
        for (expr, name) in &clause.measures {
            measures.push(scope.compile(expr, &format!("MEASURES {name}"))?);
        }
        let mut fields: Vec<Field> = match clause.rows {
            RowsPerMatch::One => clause
                .partition_by
                .iter()
                .zip(&partition_by)
                .map(|(e, p)| Ok(Field::new(column_name(e), p.data_type(&input)?, true)))
                .collect::<Result<Vec<_>>>()?,
            RowsPerMatch::All => input.fields().iter().map(|f| f.as_ref().clone()).collect(),
        };
        for ((_, name), m) in clause.measures.iter().zip(&measures) {
            let name = fold(name);
            if fields.iter().any(|f| f.name() == &name) {
                return Err(Error::user(
                    "42701",
                    format!("MATCH_RECOGNIZE output column \"{name}\" is given twice"),
                ));
            }
            fields.push(Field::new(name, m.expr.data_type(&m.schema)?, true));
        }
        let skip_vars = |v: &ast::Ident| -> u64 {
            var_index(&clause.vars, &v.value).map_or_else(
                || {
                    clause
                        .subsets
                        .iter()
                        .find(|(s, _)| s.eq_ignore_ascii_case(&v.value))
                        .map_or(0, |(_, set)| *set)
                },
                |i| 1 << i,
            )
        };
        let skip = match &clause.skip {
            SkipTo::PastLastRow => Skip::PastLastRow,
            SkipTo::ToNextRow => Skip::ToNextRow,
            SkipTo::ToFirst(v) => Skip::ToFirst(skip_vars(v)),
            SkipTo::ToLast(v) => Skip::ToLast(skip_vars(v)),
        };
        let within = match &clause.within {
            Some(e) => Some(interval_us(state, e)?),
            None => None,
        };
        if clause.timeouts && within.is_none() {
            return Err(syntax("EMIT TIMEOUTS needs WITHIN"));
        }
        let min_offsets = clause.pattern.min_offsets(clause.vars.len());
        let (history, reads_ahead) = reach(&defines, &measures, &min_offsets);
        let counts = measures
            .iter()
            .any(|m| m.leaves.contains(&Leaf::MatchNumber));
        let dedup = defines.iter().flatten().all(|d| d.row_local);
        Ok(Self {
            input,
            partition_by,
            order_by,
            time,
            config: MatchConfig {
                program: Program::compile(&clause.pattern)?,
                skip,
                within,
                timeouts: clause.timeouts,
                dedup,
            },
            pattern: clause.pattern.clone(),
            vars: clause.vars.clone(),
            slots,
            defines,
            measures,
            rows: clause.rows,
            output: Arc::new(Schema::new(fields)),
            history,
            keep: history > 0 || counts,
            reads_ahead,
        })
    }

    /// With ONE ROW PER MATCH, the input columns the clause reads (partitions, order, the
    /// columns its expressions read), for an input that keeps only them; None if that is
    /// every column, or the rows are output whole (ALL ROWS PER MATCH).
    pub fn needed_columns(&self) -> Option<Vec<String>> {
        if self.rows == RowsPerMatch::All {
            return None;
        }
        let mut used: Vec<usize> = self.slots.clone();
        used.push(self.time);
        let exprs = self
            .partition_by
            .iter()
            .chain(self.order_by.iter().map(|o| &o.expr));
        for e in exprs {
            for c in datafusion::physical_expr::utils::collect_columns(e) {
                used.push(c.index());
            }
        }
        used.sort();
        used.dedup();
        if used.len() == self.input.fields().len() {
            return None;
        }
        Some(
            used.into_iter()
                .map(|i| self.input.field(i).name().clone())
                .collect(),
        )
    }

    /// The input query that keeps only [`MatchPlan::needed_columns`] of `input`, if fewer.
    pub fn narrower_input(&self, input: &str) -> Option<String> {
        let list = self
            .needed_columns()?
            .iter()
            .map(|c| format!("\"{}\"", c.replace('"', "\"\"")))
            .collect::<Vec<_>>()
            .join(", ");
        Some(format!("SELECT {list} FROM {input}"))
    }

    /// One line for EXPLAIN.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "partition by [{}], order by {} (event time), pattern {}",
            self.partition_by
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            self.input.field(self.time).name(),
            self.pattern.display(&self.vars),
        );
        if let Some(w) = self.config.within {
            s.push_str(&format!(", within {w} us"));
            if self.config.timeouts {
                s.push_str(" (timeouts emitted)");
            }
        }
        s.push_str(match self.rows {
            RowsPerMatch::One => ", one row per match",
            RowsPerMatch::All => ", all rows per match",
        });
        s
    }

    /// Refuses what a stream cannot do: `^`/`$` (a stream's partitions have no first or last
    /// row) and NEXT (rows after the current one have not come).
    pub fn check_streaming(&self) -> Result<()> {
        let (start, end) = self.pattern.anchors();
        if start || end {
            return Err(unsupported(
                "^ and $ in a streaming MATCH_RECOGNIZE (a stream's partitions have no first \
                 or last row); they work in queries over tables",
            ));
        }
        if self.reads_ahead {
            return Err(unsupported(
                "NEXT in a streaming MATCH_RECOGNIZE (it reads rows that have not come yet); \
                 it works in queries over tables",
            ));
        }
        Ok(())
    }
}

/// WITHIN's interval in microseconds.
fn interval_us(state: &SessionState, e: &ast::Expr) -> Result<i64> {
    let bad = || {
        Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!("WITHIN {e} must be a positive interval of days or less"),
        )
    };
    let schema = DFSchema::empty();
    let logical = state
        .create_logical_expr(&e.to_string(), &schema)
        .map_err(|_| bad())?;
    let physical = state.create_physical_expr(logical, &schema)?;
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::empty()),
        Vec::new(),
        &RecordBatchOptions::new().with_row_count(Some(1)),
    )?;
    let value = physical.evaluate(&batch)?.into_array(1)?;
    let value = ScalarValue::try_from_array(&value, 0)?;
    crate::stream::plan::interval_us(&value)
        .filter(|us| *us > 0)
        .ok_or_else(bad)
}

/// How far before a match's first row PREV can reach, and whether NEXT is used.
fn reach(
    defines: &[Option<DefinePlan>],
    measures: &[Compiled],
    min_offsets: &[Option<u32>],
) -> (u64, bool) {
    let mut history = 0u64;
    let mut ahead = false;
    let mut visit = |leaves: &[Leaf], var: Option<usize>| {
        for leaf in leaves {
            let Leaf::Value { base, offset, .. } = leaf else {
                continue;
            };
            if *offset > 0 {
                ahead = true;
                continue;
            }
            let back = offset.unsigned_abs();
            // In the DEFINE of a variable, its own current row is at least as far into the
            // match as that variable can first be.
            let floor = match (base, var) {
                (super::expr::Base::Last { vars, n: 0 }, Some(v)) if vars & (1 << v) != 0 => {
                    min_offsets[v].unwrap_or(0) as u64
                }
                _ => 0,
            };
            history = history.max(back.saturating_sub(floor));
        }
    };
    for (v, d) in defines.iter().enumerate() {
        if let Some(d) = d {
            visit(&d.compiled.leaves, Some(v));
        }
    }
    for m in measures {
        visit(&m.leaves, None);
    }
    (history, ahead)
}

/// A row as it comes in: its partition, sort position and what is kept of it.
pub struct NewRow {
    pub partition: Vec<u8>,
    /// ORDER BY after the time, encoded to sort as it does.
    pub order: Vec<u8>,
    pub row: StoredRow,
}

/// What a call found: each decided attempt reported, with its partition's key, in order.
pub type FoundRows = Vec<(Vec<u8>, Found)>;

/// One partition's state.
#[derive(Debug, Clone, Default)]
pub struct PartitionState {
    pub key: Vec<ScalarValue>,
    pub rows: Rows,
    pub matcher: Partition,
}

/// The matching state of every partition.
pub struct Matching {
    pub plan: Arc<MatchPlan>,
    matcher: Matcher,
    parts: HashMap<Vec<u8>, PartitionState>,
    /// Under WITHIN: when each partition's first open attempt runs out, indexed by time, so
    /// a watermark finds the attempts it cuts without visiting every partition.
    deadlines: std::collections::BTreeSet<(i64, Vec<u8>)>,
    deadline_of: HashMap<Vec<u8>, i64>,
    pub rows: RowConverter,
    keys: RowConverter,
    order: RowConverter,
}

/// DEFINE for the matcher over a partition's kept rows.
struct Defines<'a> {
    plan: &'a MatchPlan,
    rows: &'a Rows,
    /// Read row-local conditions from the results computed when the rows came (`bits`);
    /// false (the reference matcher): evaluate every condition per row and path.
    ahead: bool,
}

impl Define for Defines<'_> {
    fn holds(&mut self, var: Var, start: u64, path: &[u16], row: u64) -> Result<bool> {
        let Some(d) = &self.plan.defines[var as usize] else {
            return Ok(true);
        };
        if d.row_local && self.ahead {
            return Ok(self
                .rows
                .get(row as i64)
                .is_some_and(|r| r.bits & (1 << var) != 0));
        }
        // The row is the path's next: `start + path.len()`.
        let view = MatchView {
            start,
            path,
            upto: path.len(),
            current: Some(var),
            number: 0,
            timed_out: false,
        };
        let result = d.compiled.evaluate(1, |leaf, _| {
            view.value(&d.compiled.leaves[leaf], self.rows, &self.plan.vars)
        })?;
        Ok(truth(result.as_ref(), 0))
    }
}

impl Matching {
    pub fn new(plan: Arc<MatchPlan>) -> Result<Self> {
        let sort_fields = |types: Vec<DataType>| types.into_iter().map(SortField::new).collect();
        let key_types = plan
            .partition_by
            .iter()
            .map(|e| Ok(e.data_type(&plan.input)?))
            .collect::<Result<Vec<_>>>()?;
        let order_fields = plan
            .order_by
            .iter()
            .map(|o| {
                Ok(SortField::new_with_options(
                    o.expr.data_type(&plan.input)?,
                    o.options,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            matcher: Matcher::new(plan.config.clone()),
            parts: HashMap::default(),
            deadlines: Default::default(),
            deadline_of: HashMap::default(),
            rows: RowConverter::new(sort_fields(
                plan.input
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect(),
            ))?,
            keys: RowConverter::new(sort_fields(key_types))?,
            order: RowConverter::new(order_fields)?,
            plan,
        })
    }

    /// The rows of an input batch as the matcher keeps them (rows with a NULL time are
    /// dropped: they have no place in the order).
    pub fn rows_of(&self, batch: &RecordBatch) -> Result<Vec<NewRow>> {
        let n = batch.num_rows();
        let plan = &self.plan;
        let eval = |e: &Arc<dyn PhysicalExpr>| -> Result<ArrayRef> {
            Ok(e.evaluate(batch)?.into_array(n)?)
        };
        let keys = plan
            .partition_by
            .iter()
            .map(eval)
            .collect::<Result<Vec<_>>>()?;
        // Rows of no columns hold no rows: no PARTITION BY (or ORDER BY after the time) is
        // an empty key.
        let key_rows = match keys.is_empty() {
            true => None,
            false => Some(self.keys.convert_columns(&keys)?),
        };
        let order = plan
            .order_by
            .iter()
            .map(|o| eval(&o.expr))
            .collect::<Result<Vec<_>>>()?;
        let order_rows = match order.is_empty() {
            true => None,
            false => Some(self.order.convert_columns(&order)?),
        };
        let encoded = self.rows.convert_columns(batch.columns())?;
        let times = crate::stream::operators::micros(batch.column(plan.time).as_ref())?;
        let mut out = Vec::with_capacity(n);
        for (i, ts) in times.into_iter().enumerate() {
            let Some(ts) = ts else { continue };
            out.push(NewRow {
                partition: key_rows
                    .as_ref()
                    .map_or_else(Vec::new, |k| k.row(i).as_ref().to_vec()),
                order: order_rows
                    .as_ref()
                    .map_or_else(Vec::new, |o| o.row(i).as_ref().to_vec()),
                row: StoredRow {
                    ts,
                    values: plan
                        .slots
                        .iter()
                        .map(|s| ScalarValue::try_from_array(batch.column(*s), i))
                        .collect::<datafusion::error::Result<_>>()?,
                    bits: 0,
                    bytes: encoded.row(i).as_ref().to_vec(),
                },
            });
        }
        Ok(out)
    }

    /// Appends rows (each partition's in order) and runs the matcher over them; returns what
    /// was found, by partition.
    pub fn push(&mut self, rows: Vec<NewRow>) -> Result<Vec<(Vec<u8>, Found)>> {
        // Runs of one partition's rows: (partition, position of the first, rows).
        let mut runs: Vec<(Vec<u8>, u64, usize)> = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some(first) = rows.next() {
            let partition = first.partition;
            if !self.parts.contains_key(&partition) {
                let part = PartitionState {
                    key: self.key_of(&partition)?,
                    ..Default::default()
                };
                self.parts.insert(partition.clone(), part);
            }
            let part = self.parts.get_mut(&partition).expect("inserted");
            if part.rows.rows.is_empty() {
                part.rows.base = part.matcher.next;
            }
            let at = part.rows.end();
            part.rows.rows.push_back(first.row);
            while let Some(next) = rows.next_if(|r| r.partition == partition) {
                part.rows.rows.push_back(next.row);
            }
            let n = (part.rows.end() - at) as usize;
            runs.push((partition, at, n));
        }
        self.row_local_defines(&runs)?;
        let mut found = Vec::new();
        let mut out = Vec::new();
        for (partition, first, count) in runs {
            let part = self.parts.get_mut(&partition).expect("placed above");
            for pos in first..first + count as u64 {
                let ts = part.rows.get(pos as i64).map_or(0, |r| r.ts);
                let mut defines = Defines {
                    plan: &self.plan,
                    rows: &part.rows,
                    ahead: true,
                };
                self.matcher
                    .push(&mut part.matcher, ts, &mut defines, &mut out)?;
            }
            found.extend(out.drain(..).map(|f| (partition.clone(), f)));
            self.reindex(&partition);
        }
        Ok(found)
    }

    /// The partitions' state (for the operator to store).
    pub fn parts(&self) -> &HashMap<Vec<u8>, PartitionState> {
        &self.parts
    }

    /// A partition's state as a checkpoint stored it.
    pub fn restore_partition(&mut self, partition: Vec<u8>, part: PartitionState) {
        self.parts.insert(partition.clone(), part);
        self.reindex(&partition);
    }

    /// Files the partition under the deadline of its first open attempt (under WITHIN).
    fn reindex(&mut self, partition: &[u8]) {
        let Some(within) = self.plan.config.within else {
            return;
        };
        let now = self
            .parts
            .get(partition)
            .and_then(|p| p.matcher.attempts.front())
            .map(|a| a.start_ts.saturating_add(within));
        let before = self.deadline_of.get(partition).copied();
        if now == before {
            return;
        }
        if let Some(old) = before {
            self.deadlines.remove(&(old, partition.to_vec()));
            self.deadline_of.remove(partition);
        }
        if let Some(new) = now {
            self.deadlines.insert((new, partition.to_vec()));
            self.deadline_of.insert(partition.to_vec(), new);
        }
    }

    /// A partition's PARTITION BY values, from its key.
    pub fn key_of(&self, partition: &[u8]) -> Result<Vec<ScalarValue>> {
        if self.plan.partition_by.is_empty() {
            return Ok(Vec::new());
        }
        let parser = self.keys.parser();
        let columns = self
            .keys
            .convert_rows(std::iter::once(parser.parse(partition)))?;
        Ok(columns
            .iter()
            .map(|c| ScalarValue::try_from_array(c, 0))
            .collect::<datafusion::error::Result<_>>()?)
    }

    /// Evaluates the row-local DEFINEs of the new rows, all at once per variable.
    fn row_local_defines(&mut self, runs: &[(Vec<u8>, u64, usize)]) -> Result<()> {
        let plan = self.plan.clone();
        let local: Vec<(usize, &DefinePlan)> = plan
            .defines
            .iter()
            .enumerate()
            .filter_map(|(v, d)| d.as_ref().filter(|d| d.row_local).map(|d| (v, d)))
            .collect();
        if local.is_empty() {
            return Ok(());
        }
        let total: usize = runs.iter().map(|r| r.2).sum();
        let mut bits = vec![0u64; total];
        {
            let kept: Vec<&Rows> = runs.iter().map(|(p, _, _)| &self.parts[p].rows).collect();
            // (run, position) of each new row.
            let at: Vec<(usize, u64)> = runs
                .iter()
                .enumerate()
                .flat_map(|(i, (_, first, n))| (*first..*first + *n as u64).map(move |p| (i, p)))
                .collect();
            // Each (column, offset) a condition reads, built once for all of them.
            let mut arrays: HashMap<(usize, i64), ArrayRef> = HashMap::default();
            for (var, d) in local {
                let mut columns = Vec::with_capacity(d.compiled.leaves.len());
                for (leaf, field) in d.compiled.leaves.iter().zip(d.compiled.schema.fields()) {
                    let Leaf::Value { slot, offset, .. } = leaf else {
                        return Err(Error::internal("row-local DEFINE with a non-row leaf"));
                    };
                    let (slot, offset) = (*slot, *offset);
                    if let Some(a) = arrays.get(&(slot, offset)) {
                        columns.push(a.clone());
                        continue;
                    }
                    let values = at
                        .iter()
                        .map(|(run, pos)| {
                            kept[*run]
                                .get(*pos as i64 + offset)
                                .map_or(ScalarValue::Null, |row| row.values[slot].clone())
                        })
                        .collect();
                    let array = array_of(values, field.data_type())?;
                    arrays.insert((slot, offset), array.clone());
                    columns.push(array);
                }
                let batch = RecordBatch::try_new_with_options(
                    d.compiled.schema.clone(),
                    columns,
                    &RecordBatchOptions::new().with_row_count(Some(total)),
                )?;
                let result = d.compiled.expr.evaluate(&batch)?.into_array(total)?;
                for (r, b) in bits.iter_mut().enumerate() {
                    if truth(result.as_ref(), r) {
                        *b |= 1 << var;
                    }
                }
            }
        }
        let mut next = bits.into_iter();
        for (partition, first, n) in runs {
            let rows = &mut self.parts.get_mut(partition).expect("placed").rows;
            let from = (first - rows.base) as usize;
            for row in rows.rows.range_mut(from..from + n) {
                row.bits = next.next().unwrap_or(0);
            }
        }
        Ok(())
    }

    /// The watermark passed `watermark`: attempts whose WITHIN ended time out. Returns what
    /// was found (in partition order) and the partitions whose attempts changed.
    pub fn advance(&mut self, watermark: i64) -> (FoundRows, Vec<Vec<u8>>) {
        let mut found = Vec::new();
        let mut changed = Vec::new();
        if self.plan.config.within.is_none() {
            return (found, changed);
        }
        let mut out = Vec::new();
        // The partitions whose first attempt's interval ended by the watermark, in key order.
        let mut keys: Vec<Vec<u8>> = self
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= watermark)
            .map(|(_, k)| k.clone())
            .collect();
        keys.sort();
        for partition in keys {
            let Some(part) = self.parts.get_mut(&partition) else {
                continue;
            };
            self.matcher.advance(&mut part.matcher, watermark, &mut out);
            found.extend(out.drain(..).map(|f| (partition.clone(), f)));
            self.reindex(&partition);
            changed.push(partition);
        }
        (found, changed)
    }

    /// Rows from their encodings (kept in state).
    pub fn decode(&self, encoded: &[&[u8]]) -> Result<Vec<NewRow>> {
        if encoded.is_empty() {
            return Ok(Vec::new());
        }
        let parser = self.rows.parser();
        let columns = self
            .rows
            .convert_rows(encoded.iter().map(|b| parser.parse(b)))?;
        let batch = RecordBatch::try_new(self.plan.input.clone(), columns)?;
        let rows = self.rows_of(&batch)?;
        if rows.len() != encoded.len() {
            return Err(Error::internal("a kept MATCH_RECOGNIZE row has no time"));
        }
        Ok(rows)
    }

    /// Every partition has ended (a batch query).
    pub fn finish(&mut self) -> Result<Vec<(Vec<u8>, Found)>> {
        let mut found = Vec::new();
        let mut out = Vec::new();
        let mut keys: Vec<&Vec<u8>> = self.parts.keys().collect();
        keys.sort();
        let keys: Vec<Vec<u8>> = keys.into_iter().cloned().collect();
        for partition in keys {
            let part = self.parts.get_mut(&partition).expect("listed");
            self.matcher.finish(&mut part.matcher, &mut out)?;
            found.extend(out.drain(..).map(|f| (partition.clone(), f)));
        }
        Ok(found)
    }

    /// The output rows of what was found.
    pub fn output(&self, found: &[(Vec<u8>, Found)]) -> Result<RecordBatch> {
        let plan = &self.plan;
        // (partition, found, rows of the match it covers) per output row.
        let mut out_rows: Vec<(&PartitionState, &Found, usize)> = Vec::new();
        for (partition, f) in found {
            let part = &self.parts[partition];
            match plan.rows {
                RowsPerMatch::One => out_rows.push((part, f, f.path.len())),
                RowsPerMatch::All => {
                    for (i, e) in f.path.iter().enumerate() {
                        if e & EXCLUDED == 0 {
                            out_rows.push((part, f, i + 1));
                        }
                    }
                }
            }
        }
        let n = out_rows.len();
        let mut columns: Vec<ArrayRef> = Vec::new();
        match plan.rows {
            RowsPerMatch::One => {
                for (c, field) in plan.partition_by.iter().zip(plan.output.fields()) {
                    let _ = c;
                    let col = columns.len();
                    let values = out_rows
                        .iter()
                        .map(|(p, _, _)| p.key[col].clone())
                        .collect::<Vec<_>>();
                    columns.push(array_of(values, field.data_type())?);
                }
            }
            RowsPerMatch::All => {
                let parser = self.rows.parser();
                let bytes = out_rows
                    .iter()
                    .map(|(p, f, upto)| {
                        p.rows
                            .get((f.start + *upto as u64 - 1) as i64)
                            .map(|r| r.bytes.as_slice())
                            .ok_or_else(|| Error::internal("a matched row is no longer kept"))
                    })
                    .collect::<Result<Vec<_>>>()?;
                columns.extend(
                    self.rows
                        .convert_rows(bytes.into_iter().map(|b| parser.parse(b)))?,
                );
            }
        }
        for m in &plan.measures {
            columns.push(m.evaluate(n, |leaf, r| {
                let (part, f, upto) = out_rows[r];
                let view = MatchView {
                    start: f.start,
                    path: &f.path,
                    upto,
                    current: None,
                    number: f.number,
                    timed_out: f.timed_out,
                };
                view.value(&m.leaves[leaf], &part.rows, &plan.vars)
            })?);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(n));
        Ok(RecordBatch::try_new_with_options(
            plan.output.clone(),
            columns,
            &options,
        )?)
    }

    /// Drops the rows no open attempt of these partitions can read any more, and the
    /// partitions with nothing to keep.
    pub fn trim<'k>(&mut self, partitions: impl Iterator<Item = &'k Vec<u8>>) {
        let plan = &self.plan;
        let mut emptied = Vec::new();
        for partition in partitions {
            let Some(part) = self.parts.get_mut(partition) else {
                continue;
            };
            let end = part.rows.end();
            let keep_from = part
                .matcher
                .oldest()
                .unwrap_or(end)
                .saturating_sub(plan.history)
                .min(end);
            while part.rows.base < keep_from && !part.rows.rows.is_empty() {
                part.rows.rows.pop_front();
                part.rows.base += 1;
            }
            if part.rows.rows.is_empty() {
                part.rows.base = part.matcher.next;
            }
            if part.matcher.attempts.is_empty() && part.rows.rows.is_empty() && !plan.keep {
                emptied.push(partition.clone());
            }
        }
        for p in &emptied {
            self.parts.remove(p);
            self.reindex(p);
        }
    }
}

fn array_of(values: Vec<ScalarValue>, t: &DataType) -> Result<ArrayRef> {
    if values.is_empty() {
        return Ok(datafusion::arrow::array::new_empty_array(t));
    }
    let values = values
        .into_iter()
        .map(|v| match v.is_null() {
            true => ScalarValue::try_from(t),
            false => Ok(v),
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?;
    Ok(ScalarValue::iter_to_array(values)?)
}

/// The matches the reference matcher (`reference.rs`: backtracking over the pattern as
/// written) finds over whole partitions, in partition order, as (partition, found).
pub fn reference_matches(
    plan: Arc<MatchPlan>,
    batches: &[RecordBatch],
) -> Result<Vec<(Vec<u8>, Found)>> {
    let matching = Matching::new(plan.clone())?;
    let mut rows = Vec::new();
    for b in batches {
        rows.extend(matching.rows_of(b)?);
    }
    rows.sort_by(|a, b| {
        (&a.partition, a.row.ts, &a.order).cmp(&(&b.partition, b.row.ts, &b.order))
    });
    let mut out = Vec::new();
    let mut i = 0;
    while i < rows.len() {
        let partition = rows[i].partition.clone();
        let mut kept = Rows::default();
        while i < rows.len() && rows[i].partition == partition {
            kept.rows.push_back(std::mem::replace(
                &mut rows[i].row,
                StoredRow {
                    ts: 0,
                    values: Vec::new(),
                    bits: 0,
                    bytes: Vec::new(),
                },
            ));
            i += 1;
        }
        let times: Vec<i64> = kept.rows.iter().map(|r| r.ts).collect();
        let mut defines = Defines {
            plan: &plan,
            rows: &kept,
            ahead: false,
        };
        let found = super::reference::find_all(
            &plan.pattern,
            &plan.config,
            &times,
            &mut defines,
            usize::MAX,
        )?
        .unwrap_or_default();
        out.extend(found.into_iter().map(|f| (partition.clone(), f)));
    }
    Ok(out)
}

/// The matches over whole partitions (a batch query): sorts the rows and matches every
/// partition to its end; returns the state (which keeps every row) and the matches, in
/// partition order.
pub fn batch_matches(
    plan: Arc<MatchPlan>,
    batches: &[RecordBatch],
) -> Result<(Matching, FoundRows)> {
    let mut matching = Matching::new(plan)?;
    let mut rows = Vec::new();
    for b in batches {
        rows.extend(matching.rows_of(b)?);
    }
    // Stable: rows equal in partition, time and ORDER BY keep the input's order.
    rows.sort_by(|a, b| {
        (&a.partition, a.row.ts, &a.order).cmp(&(&b.partition, b.row.ts, &b.order))
    });
    let mut found = matching.push(rows)?;
    found.extend(matching.finish()?);
    found.sort_by(|a, b| (&a.0, a.1.number).cmp(&(&b.0, b.1.number)));
    Ok((matching, found))
}

/// MATCH_RECOGNIZE over whole partitions (a batch query): its output rows.
pub fn run_batch(plan: Arc<MatchPlan>, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let (matching, found) = batch_matches(plan, batches)?;
    matching.output(&found)
}

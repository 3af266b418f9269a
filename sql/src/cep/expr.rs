//! DEFINE conditions and MEASURES: pattern navigation compiled to *leaves*, the rest to a
//! DataFusion expression over them.
//!
//! Every piece of an expression that reads the match — a column of a row found by
//! navigation (`price`, `A.price`, `PREV(A.price, 2)`, `FIRST(B.ts)`, `NEXT(LAST(A.x))`), an
//! aggregate over the rows mapped to a variable (`count(A.*)`, `avg(B.price)`),
//! `CLASSIFIER()`, `MATCH_NUMBER()` or Eddy's `TIMED_OUT()` — becomes a [`Leaf`]; the
//! expression around the leaves (arithmetic, comparisons, functions) is planned by DataFusion
//! over one column per leaf and evaluated vectorised over many rows at once.
//!
//! Navigation follows the standard's running semantics: in DEFINE of `B` the match is the rows
//! mapped so far plus the current row mapped to `B`, so `B.price` and plain `price` are the
//! current row's and `PREV(price)` the row before it in the partition; in MEASURES of ONE ROW
//! PER MATCH the whole match (`price` is its last row's); in ALL ROWS PER MATCH the match up
//! to each output row. A DEFINE whose leaves are all the current row or rows before it at
//! fixed offsets ([`Compiled::row_local`]) does not depend on the path, and is evaluated once
//! per row, vectorised, when the row arrives.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::execution::context::SessionState;
use datafusion::physical_plan::PhysicalExpr;
use datafusion::sql::sqlparser::ast::{
    self, Expr as Sql, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, VisitMut, VisitorMut,
};

use super::matcher::var_of;
use super::pattern::Var;
use crate::error::{Error, Result, sqlstate};

/// Every variable (the universal row pattern variable).
pub const ALL: u64 = u64::MAX;

/// Where navigation starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Base {
    /// The `n`-th row (from 0) mapped to one of `vars`, from the match's first row.
    First { vars: u64, n: u32 },
    /// The `n`-th row (from 0) mapped to one of `vars`, from the match's last row (the current
    /// row under running semantics).
    Last { vars: u64, n: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AggFunc {
    Count,
    Sum,
    Avg,
    Min,
    Max,
}

/// A value read from the match.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Leaf {
    /// Input column `slot` of the row at `base`, moved `offset` rows in the partition (PREV
    /// negative, NEXT positive).
    Value {
        slot: usize,
        base: Base,
        offset: i64,
    },
    /// An aggregate over the rows mapped to `vars` (`slot` None: count the rows).
    Agg {
        func: AggFunc,
        vars: u64,
        slot: Option<usize>,
    },
    Classifier,
    MatchNumber,
    TimedOut,
}

/// An expression compiled over its leaves.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub leaves: Vec<Leaf>,
    /// One column per leaf.
    pub schema: SchemaRef,
    pub expr: Arc<dyn PhysicalExpr>,
}

/// What an expression is compiled against.
pub struct Scope<'a> {
    /// The input's columns.
    pub input: &'a Schema,
    /// Pattern variables (as first written) and SUBSETs.
    pub vars: &'a [String],
    pub subsets: &'a [(String, u64)],
    pub state: &'a SessionState,
    /// Columns the leaves read, by input index; a leaf's slot indexes this list.
    pub slots: &'a mut Vec<usize>,
}

const LEAF: &str = "__eddy_leaf_";

fn syntax(message: impl Into<String>) -> Error {
    Error::user(sqlstate::SYNTAX_ERROR, message.into())
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::user(sqlstate::FEATURE_NOT_SUPPORTED, message.into())
}

impl Scope<'_> {
    /// Compiles `expr` (`what` names it in errors).
    pub fn compile(&mut self, expr: &Sql, what: &str) -> Result<Compiled> {
        let mut lifter = Lifter {
            scope: self,
            leaves: Vec::new(),
            error: None,
            what,
        };
        let mut rewritten = expr.clone();
        let _ = rewritten.visit(&mut lifter);
        if let Some(e) = lifter.error {
            return Err(e);
        }
        let leaves = lifter.leaves;
        let fields = leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| {
                Ok(Field::new(
                    format!("{LEAF}{i}"),
                    self.leaf_type(leaf, what)?,
                    true,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let schema = Arc::new(Schema::new(fields));
        let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
        let logical = self
            .state
            .create_logical_expr(&rewritten.to_string(), &df_schema)
            .map_err(|e| Error::user(sqlstate::SYNTAX_ERROR, format!("in {what}: {e}")))?;
        let expr = self.state.create_physical_expr(logical, &df_schema)?;
        Ok(Compiled {
            leaves,
            schema,
            expr,
        })
    }

    fn column(&mut self, name: &Ident, what: &str) -> Result<usize> {
        let wanted = match name.quote_style {
            Some(_) => name.value.clone(),
            None => name.value.to_ascii_lowercase(),
        };
        let index = self.input.index_of(&wanted).map_err(|_| {
            Error::user(
                sqlstate::UNDEFINED_COLUMN,
                format!("in {what}: column \"{wanted}\" does not exist in the input"),
            )
        })?;
        Ok(match self.slots.iter().position(|s| *s == index) {
            Some(slot) => slot,
            None => {
                self.slots.push(index);
                self.slots.len() - 1
            }
        })
    }

    fn vars_named(&self, name: &Ident, what: &str) -> Result<u64> {
        if let Some(v) = super::syntax::var_index(self.vars, &name.value) {
            return Ok(1 << v);
        }
        self.subsets
            .iter()
            .find(|(s, _)| s.eq_ignore_ascii_case(&name.value))
            .map(|(_, set)| *set)
            .ok_or_else(|| {
                syntax(format!(
                    "in {what}: \"{}\" is not a pattern variable (PATTERN names {})",
                    name.value,
                    self.vars.join(", ")
                ))
            })
    }

    /// A column reference: `col` (every variable) or `var.col`.
    fn reference(&mut self, expr: &Sql, what: &str) -> Result<(u64, Option<usize>)> {
        match expr {
            Sql::Identifier(col) => Ok((ALL, Some(self.column(col, what)?))),
            Sql::CompoundIdentifier(parts) if parts.len() == 2 => {
                let vars = self.vars_named(&parts[0], what)?;
                Ok((vars, Some(self.column(&parts[1], what)?)))
            }
            Sql::QualifiedWildcard(name, _) if name.0.len() == 1 => {
                let ident = name.0[0]
                    .as_ident()
                    .ok_or_else(|| syntax(format!("in {what}: unexpected {name}")))?;
                Ok((self.vars_named(ident, what)?, None))
            }
            Sql::Wildcard(_) => Ok((ALL, None)),
            Sql::Nested(inner) => self.reference(inner, what),
            other => Err(unsupported(format!(
                "in {what}: {other} is not a column of a pattern variable (navigation and \
                 aggregates read columns; compute expressions in the input)"
            ))),
        }
    }

    fn leaf_type(&self, leaf: &Leaf, what: &str) -> Result<DataType> {
        let slot_type = |slot: usize| self.input.field(self.slots[slot]).data_type().clone();
        Ok(match leaf {
            Leaf::Value { slot, .. } => slot_type(*slot),
            Leaf::Agg {
                func: AggFunc::Count,
                ..
            } => DataType::Int64,
            Leaf::Agg {
                func: AggFunc::Avg, ..
            } => DataType::Float64,
            Leaf::Agg {
                func: AggFunc::Sum,
                slot: Some(slot),
                ..
            } => sum_type(&slot_type(*slot)).ok_or_else(|| {
                unsupported(format!("in {what}: sum over {} values", slot_type(*slot)))
            })?,
            Leaf::Agg { slot: Some(s), .. } => slot_type(*s),
            Leaf::Agg { .. } => return Err(syntax(format!("in {what}: only count takes *"))),
            Leaf::Classifier => DataType::Utf8,
            Leaf::MatchNumber => DataType::Int64,
            Leaf::TimedOut => DataType::Boolean,
        })
    }
}

/// The type sum() returns over a type.
fn sum_type(t: &DataType) -> Option<DataType> {
    Some(match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => DataType::Int64,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
            DataType::UInt64
        }
        DataType::Float16 | DataType::Float32 | DataType::Float64 => DataType::Float64,
        DataType::Decimal128(_, s) => DataType::Decimal128(38, *s),
        _ => return None,
    })
}

struct Lifter<'s, 'a> {
    scope: &'s mut Scope<'a>,
    leaves: Vec<Leaf>,
    error: Option<Error>,
    what: &'s str,
}

/// A function call's name (lower case) and plain arguments.
fn call(expr: &Sql) -> Option<(String, Vec<&Sql>, bool)> {
    let Sql::Function(f) = expr else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    let (args, distinct) = match &f.args {
        FunctionArguments::None => (Vec::new(), false),
        FunctionArguments::List(list) => (
            list.args
                .iter()
                .map(|a| match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                    _ => None,
                })
                .collect::<Option<Vec<_>>>()
                .unwrap_or_default(),
            list.duplicate_treatment.is_some(),
        ),
        FunctionArguments::Subquery(_) => return None,
    };
    Some((name, args, distinct))
}

/// `count(*)` and `count(A.*)` arrive as wildcard arguments.
fn wildcard_arg(expr: &Sql) -> Option<Sql> {
    let Sql::Function(f) = expr else {
        return None;
    };
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] => Some(Sql::Wildcard(
            datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
        )),
        [FunctionArg::Unnamed(FunctionArgExpr::QualifiedWildcard(name))] => {
            Some(Sql::QualifiedWildcard(
                name.clone(),
                datafusion::sql::sqlparser::ast::helpers::attached_token::AttachedToken::empty(),
            ))
        }
        _ => None,
    }
}

fn integer(expr: &Sql, what: &str) -> Result<u32> {
    match expr {
        Sql::Value(v) => match &v.value {
            ast::Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
    .ok_or_else(|| {
        syntax(format!(
            "in {what}: offset {expr} must be a non-negative integer"
        ))
    })
}

impl Lifter<'_, '_> {
    fn leaf(&mut self, expr: &Sql) -> Result<Option<Leaf>> {
        let what = self.what;
        if let Sql::Identifier(id) = expr
            && id.value.starts_with(LEAF)
        {
            return Ok(None);
        }
        if matches!(expr, Sql::Identifier(_) | Sql::CompoundIdentifier(_)) {
            let (vars, slot) = self.scope.reference(expr, what)?;
            return Ok(Some(Leaf::Value {
                slot: slot.expect("a column"),
                base: Base::Last { vars, n: 0 },
                offset: 0,
            }));
        }
        let Some((name, args, distinct)) = call(expr) else {
            return Ok(None);
        };
        let leaf = match name.as_str() {
            "prev" | "next" => {
                let sign = if name == "prev" { -1 } else { 1 };
                let (inner, n) = match args.as_slice() {
                    [inner] => (*inner, 1),
                    [inner, n] => (*inner, integer(n, what)?),
                    _ => {
                        return Err(syntax(format!(
                            "in {what}: {name} takes (column [, offset])"
                        )));
                    }
                };
                let Some(Leaf::Value {
                    slot,
                    base,
                    offset: 0,
                }) = self.navigation(inner)?
                else {
                    return Err(syntax(format!(
                        "in {what}: {} takes a column or FIRST/LAST of one",
                        name.to_uppercase()
                    )));
                };
                Leaf::Value {
                    slot,
                    base,
                    offset: sign * n as i64,
                }
            }
            "first" | "last" => match self.navigation(expr)? {
                Some(leaf) => leaf,
                None => return Ok(None),
            },
            "count" | "sum" | "avg" | "min" | "max" => {
                if distinct {
                    return Err(unsupported(format!("in {what}: DISTINCT in {name}()")));
                }
                let func = match name.as_str() {
                    "count" => AggFunc::Count,
                    "sum" => AggFunc::Sum,
                    "avg" => AggFunc::Avg,
                    "min" => AggFunc::Min,
                    _ => AggFunc::Max,
                };
                let arg = match (args.as_slice(), wildcard_arg(expr)) {
                    ([arg], _) => (*arg).clone(),
                    ([], Some(w)) if func == AggFunc::Count => w,
                    _ => return Err(syntax(format!("in {what}: {name} takes one argument"))),
                };
                let (vars, slot) = self.scope.reference(&arg, what)?;
                Leaf::Agg { func, vars, slot }
            }
            "classifier" | "match_number" | "timed_out" => {
                if !args.is_empty() {
                    return Err(unsupported(format!(
                        "in {what}: {}() takes no arguments",
                        name.to_uppercase()
                    )));
                }
                match name.as_str() {
                    "classifier" => Leaf::Classifier,
                    "match_number" => Leaf::MatchNumber,
                    _ => Leaf::TimedOut,
                }
            }
            _ => return Ok(None),
        };
        Ok(Some(leaf))
    }

    /// A column, or FIRST/LAST of one.
    fn navigation(&mut self, expr: &Sql) -> Result<Option<Leaf>> {
        let what = self.what;
        if let Some((name, args, _)) = call(expr)
            && (name == "first" || name == "last")
        {
            let (inner, n) = match args.as_slice() {
                [inner] => (*inner, 0),
                [inner, n] => (*inner, integer(n, what)?),
                _ => {
                    return Err(syntax(format!(
                        "in {what}: {name} takes (column [, offset])"
                    )));
                }
            };
            let (vars, slot) = self.scope.reference(inner, what)?;
            let slot = slot.ok_or_else(|| syntax(format!("in {what}: {name} takes a column")))?;
            let base = match name.as_str() {
                "first" => Base::First { vars, n },
                _ => Base::Last { vars, n },
            };
            return Ok(Some(Leaf::Value {
                slot,
                base,
                offset: 0,
            }));
        }
        match expr {
            Sql::Identifier(_) | Sql::CompoundIdentifier(_) => {
                let (vars, slot) = self.scope.reference(expr, what)?;
                Ok(Some(Leaf::Value {
                    slot: slot.expect("a column"),
                    base: Base::Last { vars, n: 0 },
                    offset: 0,
                }))
            }
            Sql::Nested(inner) => self.navigation(inner),
            _ => Ok(None),
        }
    }
}

impl VisitorMut for Lifter<'_, '_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Sql) -> ControlFlow<()> {
        match self.leaf(expr) {
            Ok(Some(leaf)) => {
                let i = match self.leaves.iter().position(|l| *l == leaf) {
                    Some(i) => i,
                    None => {
                        self.leaves.push(leaf);
                        self.leaves.len() - 1
                    }
                };
                *expr = Sql::Identifier(Ident::new(format!("{LEAF}{i}")));
                ControlFlow::Continue(())
            }
            Ok(None) => ControlFlow::Continue(()),
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

impl Compiled {
    /// Whether, as the DEFINE of `var`, it reads only the current row and rows before it at
    /// fixed offsets: then its value depends on the row alone. Returns the farthest offset.
    pub fn row_local(&self, var: Var) -> Option<u32> {
        let mut reach = 0;
        for leaf in &self.leaves {
            match leaf {
                Leaf::Value {
                    base: Base::Last { vars, n: 0 },
                    offset,
                    ..
                } if vars & (1 << var) != 0 && *offset <= 0 => {
                    reach = reach.max(offset.unsigned_abs() as u32);
                }
                _ => return None,
            }
        }
        Some(reach)
    }

    /// Evaluates over many rows: `values(leaf, row)` gives each leaf's value for each row.
    pub fn evaluate(
        &self,
        rows: usize,
        mut values: impl FnMut(usize, usize) -> Result<ScalarValue>,
    ) -> Result<ArrayRef> {
        let mut columns = Vec::with_capacity(self.leaves.len());
        for (i, field) in self.schema.fields().iter().enumerate() {
            let mut scalars = Vec::with_capacity(rows);
            for r in 0..rows {
                let v = values(i, r)?;
                scalars.push(match v.is_null() {
                    true => ScalarValue::try_from(field.data_type())?,
                    false => v,
                });
            }
            columns.push(match scalars.is_empty() {
                true => datafusion::arrow::array::new_empty_array(field.data_type()),
                false => ScalarValue::iter_to_array(scalars)?,
            });
        }
        let options =
            datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch = RecordBatch::try_new_with_options(self.schema.clone(), columns, &options)?;
        Ok(self.expr.evaluate(&batch)?.into_array(rows)?)
    }
}

/// A row a partition keeps: its time, the values of the columns leaves read (by slot), the
/// row-local DEFINE results (bit per variable), and the whole row encoded.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub ts: i64,
    pub values: Vec<ScalarValue>,
    pub bits: u64,
    pub bytes: Vec<u8>,
}

/// A partition's kept rows: positions `base..base + rows.len()`.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    pub base: u64,
    pub rows: VecDeque<StoredRow>,
}

impl Rows {
    pub fn get(&self, pos: i64) -> Option<&StoredRow> {
        let i = pos.checked_sub(self.base as i64)?;
        usize::try_from(i).ok().and_then(|i| self.rows.get(i))
    }

    /// The position after the last row.
    pub fn end(&self) -> u64 {
        self.base + self.rows.len() as u64
    }
}

/// The match as navigation sees it: rows `start..` mapped by `path` (the first `upto`
/// entries), plus, while a DEFINE is evaluated, the current row mapped to `current`.
#[derive(Debug, Clone, Copy)]
pub struct MatchView<'a> {
    pub start: u64,
    pub path: &'a [u16],
    pub upto: usize,
    pub current: Option<Var>,
    pub number: u64,
    pub timed_out: bool,
}

impl MatchView<'_> {
    fn len(&self) -> usize {
        self.upto + usize::from(self.current.is_some())
    }

    fn var_at(&self, i: usize) -> Var {
        match i < self.upto {
            true => var_of(self.path[i]),
            false => self.current.expect("the current row"),
        }
    }

    /// Position of the row navigation starts from.
    fn base(&self, base: Base) -> Option<u64> {
        let n = self.len();
        let found = match base {
            Base::First { vars, n: k } => (0..n)
                .filter(|i| vars & (1 << self.var_at(*i)) != 0)
                .nth(k as usize),
            Base::Last { vars, n: k } => (0..n)
                .rev()
                .filter(|i| vars & (1 << self.var_at(*i)) != 0)
                .nth(k as usize),
        };
        found.map(|i| self.start + i as u64)
    }

    /// A leaf's value.
    pub fn value(&self, leaf: &Leaf, rows: &Rows, vars: &[String]) -> Result<ScalarValue> {
        Ok(match leaf {
            Leaf::Value { slot, base, offset } => self
                .base(*base)
                .and_then(|p| rows.get(p as i64 + offset))
                .map_or(ScalarValue::Null, |r| r.values[*slot].clone()),
            Leaf::Agg { func, vars, slot } => {
                let values = (0..self.len())
                    .filter(|i| vars & (1 << self.var_at(*i)) != 0)
                    .filter_map(|i| rows.get((self.start + i as u64) as i64))
                    .map(|r| slot.map_or(ScalarValue::Boolean(Some(true)), |s| r.values[s].clone()))
                    .filter(|v| !v.is_null());
                aggregate(*func, values)?
            }
            Leaf::Classifier => match self.len() {
                0 => ScalarValue::Utf8(None),
                n => ScalarValue::Utf8(Some(vars[self.var_at(n - 1) as usize].clone())),
            },
            Leaf::MatchNumber => ScalarValue::Int64(Some(self.number as i64)),
            Leaf::TimedOut => ScalarValue::Boolean(Some(self.timed_out)),
        })
    }
}

fn aggregate(func: AggFunc, mut values: impl Iterator<Item = ScalarValue>) -> Result<ScalarValue> {
    Ok(match func {
        AggFunc::Count => ScalarValue::Int64(Some(values.count() as i64)),
        AggFunc::Min | AggFunc::Max => {
            let mut best: Option<ScalarValue> = None;
            for v in values {
                let better = best.as_ref().is_none_or(|b| match func {
                    AggFunc::Min => v < *b,
                    _ => v > *b,
                });
                if better {
                    best = Some(v);
                }
            }
            best.unwrap_or(ScalarValue::Null)
        }
        AggFunc::Sum => {
            let Some(first) = values.next() else {
                return Ok(ScalarValue::Null);
            };
            let target = sum_type(&first.data_type())
                .ok_or_else(|| unsupported(format!("sum over {}", first.data_type())))?;
            let mut sum = first.cast_to(&target)?;
            for v in values {
                sum = sum.add_checked(v.cast_to(&target)?)?;
            }
            sum
        }
        AggFunc::Avg => {
            let (mut sum, mut n) = (0f64, 0u64);
            for v in values {
                if let ScalarValue::Float64(Some(x)) = v.cast_to(&DataType::Float64)? {
                    sum += x;
                    n += 1;
                }
            }
            match n {
                0 => ScalarValue::Float64(None),
                _ => ScalarValue::Float64(Some(sum / n as f64)),
            }
        }
    })
}

/// The value of a boolean result at `i` (NULL is false, as in WHERE).
pub fn truth(array: &dyn Array, i: usize) -> bool {
    array
        .as_any()
        .downcast_ref::<datafusion::arrow::array::BooleanArray>()
        .is_some_and(|b| b.is_valid(i) && b.value(i))
}

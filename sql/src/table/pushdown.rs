//! Turns filter predicates on primary-key columns into key reads.
//!
//! Recognised conjuncts: `key_col <op> literal` (either side) with `=`, `<`, `<=`, `>`, `>=`,
//! `key_col IN (literals)` and `key_col BETWEEN literal AND literal`. Equality on every key
//! column gives point reads (up to [`MAX_POINTS`] combinations); equality on a leading prefix
//! plus bounds on the next column give one range; anything else scans the table's range.

use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;

use crate::catalog::TableDef;
use crate::codec::key::encode_scalar;
use crate::error::Result;
use crate::storage::prefix_end;

pub const MAX_POINTS: usize = 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum KeyPlan {
    /// Exactly these keys (possibly none).
    Points(Vec<Vec<u8>>),
    /// Keys in `[start, end)`.
    Range(Vec<u8>, Vec<u8>),
}

/// Constraints gathered for one key column.
#[derive(Default)]
struct ColumnBounds {
    equal: Option<Vec<ScalarValue>>,
    lower: Vec<(ScalarValue, bool)>,
    upper: Vec<(ScalarValue, bool)>,
}

/// Whether `filter` is a conjunct the key plan can use.
pub fn constrains_key(filter: &Expr, def: &TableDef) -> bool {
    !def.primary_key.is_empty()
        && split_conjunction(filter)
            .into_iter()
            .any(|c| key_constraint(c, def).is_some())
}

enum Constraint {
    Eq(Vec<ScalarValue>),
    Lower(ScalarValue, bool),
    Upper(ScalarValue, bool),
    Both((ScalarValue, bool), (ScalarValue, bool)),
}

fn key_column(e: &Expr, def: &TableDef) -> Option<usize> {
    let Expr::Column(c) = e else { return None };
    let idx = def.column_index(&c.name)?;
    def.primary_key.iter().position(|&k| k == idx)
}

fn literal(e: &Expr) -> Option<ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v.clone()),
        _ => None,
    }
}

/// Returns (position in primary key, constraint).
fn key_constraint(e: &Expr, def: &TableDef) -> Option<(usize, Constraint)> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (pos, value, op) = match (key_column(left, def), literal(right)) {
                (Some(pos), Some(v)) => (pos, v, *op),
                _ => (key_column(right, def)?, literal(left)?, op.swap()?),
            };
            Some((
                pos,
                match op {
                    Operator::Eq => Constraint::Eq(vec![value]),
                    Operator::Gt => Constraint::Lower(value, false),
                    Operator::GtEq => Constraint::Lower(value, true),
                    Operator::Lt => Constraint::Upper(value, false),
                    Operator::LtEq => Constraint::Upper(value, true),
                    _ => return None,
                },
            ))
        }
        Expr::InList(in_list) if !in_list.negated => {
            let pos = key_column(&in_list.expr, def)?;
            let values: Option<Vec<ScalarValue>> = in_list.list.iter().map(literal).collect();
            Some((pos, Constraint::Eq(values?)))
        }
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) => {
            let pos = key_column(expr, def)?;
            Some((
                pos,
                Constraint::Both((literal(low)?, true), (literal(high)?, true)),
            ))
        }
        _ => None,
    }
}

impl KeyPlan {
    pub fn full(def: &TableDef) -> Self {
        let prefix = def.key_prefix();
        let end = prefix_end(&prefix);
        KeyPlan::Range(prefix, end)
    }

    pub fn from_filters(filters: &[Expr], def: &TableDef) -> Result<Self> {
        if def.primary_key.is_empty() {
            return Ok(Self::full(def));
        }
        let mut bounds: Vec<ColumnBounds> = def
            .primary_key
            .iter()
            .map(|_| ColumnBounds::default())
            .collect();
        for conjunct in filters.iter().flat_map(split_conjunction) {
            let Some((pos, c)) = key_constraint(conjunct, def) else {
                continue;
            };
            let b = &mut bounds[pos];
            match c {
                Constraint::Eq(values) => {
                    // Two equality constraints: keep the smaller list (both must hold).
                    if b.equal.as_ref().is_none_or(|e| values.len() < e.len()) {
                        b.equal = Some(values);
                    }
                }
                Constraint::Lower(v, inc) => b.lower.push((v, inc)),
                Constraint::Upper(v, inc) => b.upper.push((v, inc)),
                Constraint::Both(lo, hi) => {
                    b.lower.push(lo);
                    b.upper.push(hi);
                }
            }
        }
        Self::build(def, &bounds)
    }

    fn build(def: &TableDef, bounds: &[ColumnBounds]) -> Result<Self> {
        // Leading columns fixed by equality: enumerate their combinations.
        let mut prefixes: Vec<Vec<u8>> = vec![def.key_prefix()];
        let mut fixed = 0;
        for (pos, b) in bounds.iter().enumerate() {
            let Some(values) = &b.equal else { break };
            let ty = &def.columns[def.primary_key[pos]].ty;
            let mut next = Vec::new();
            for p in &prefixes {
                for v in values {
                    let mut k = p.clone();
                    if encode_scalar(v, ty, &mut k)? {
                        next.push(k);
                    }
                }
            }
            next.sort();
            next.dedup();
            if next.len() > MAX_POINTS {
                break;
            }
            prefixes = next;
            fixed += 1;
        }
        if fixed == def.primary_key.len() {
            return Ok(KeyPlan::Points(prefixes));
        }
        if prefixes.len() != 1 {
            // Several prefixes with an open suffix: scan from the first to the last.
            let (Some(first), Some(last)) = (prefixes.first(), prefixes.last()) else {
                return Ok(KeyPlan::Points(Vec::new()));
            };
            return Ok(KeyPlan::Range(first.clone(), prefix_end(last)));
        }
        let prefix = prefixes.remove(0);
        let b = &bounds[fixed];
        let ty = &def.columns[def.primary_key[fixed]].ty;
        let mut start = prefix.clone();
        for (v, inclusive) in &b.lower {
            let mut k = prefix.clone();
            if !encode_scalar(v, ty, &mut k)? {
                continue;
            }
            let candidate = if *inclusive { k } else { prefix_end(&k) };
            start = start.max(candidate);
        }
        let mut end = prefix_end(&prefix);
        for (v, inclusive) in &b.upper {
            let mut k = prefix.clone();
            if !encode_scalar(v, ty, &mut k)? {
                continue;
            }
            let candidate = if *inclusive { prefix_end(&k) } else { k };
            end = end.min(candidate);
        }
        if start >= end {
            return Ok(KeyPlan::Points(Vec::new()));
        }
        Ok(KeyPlan::Range(start, end))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};

    use super::*;
    use crate::catalog::ColumnDef;
    use crate::types::SqlType;

    fn def(pk: Vec<usize>) -> TableDef {
        let c = |n: &str| ColumnDef {
            name: n.into(),
            ty: SqlType::Int8,
            nullable: false,
            default: None,
            identity: None,
            comment: None,
        };
        TableDef::new(
            7,
            "public".into(),
            "t".into(),
            vec![c("a"), c("b"), c("v")],
            pk,
        )
    }

    #[test]
    fn equality_on_whole_key_is_a_point_read() {
        let d = def(vec![0]);
        let plan = KeyPlan::from_filters(&[col("a").eq(lit(5i64))], &d).unwrap();
        assert!(matches!(plan, KeyPlan::Points(ref p) if p.len() == 1));
        let plan = KeyPlan::from_filters(
            &[col("a").in_list(vec![lit(1i64), lit(2i64), lit(1i64)], false)],
            &d,
        )
        .unwrap();
        assert!(matches!(plan, KeyPlan::Points(ref p) if p.len() == 2));
    }

    #[test]
    fn bounds_become_one_range_inside_the_table() {
        let d = def(vec![0]);
        let plan = KeyPlan::from_filters(
            &[col("a").gt_eq(lit(10i64)).and(col("a").lt(lit(20i64)))],
            &d,
        )
        .unwrap();
        let KeyPlan::Range(start, end) = plan else {
            panic!("not a range")
        };
        let full = KeyPlan::full(&d);
        let KeyPlan::Range(fs, fe) = full else {
            unreachable!()
        };
        assert!(start > fs && end < fe && start < end);
    }

    #[test]
    fn contradictory_bounds_read_nothing() {
        let d = def(vec![0]);
        let plan =
            KeyPlan::from_filters(&[col("a").gt(lit(10i64)).and(col("a").lt(lit(5i64)))], &d)
                .unwrap();
        assert_eq!(plan, KeyPlan::Points(vec![]));
    }

    #[test]
    fn non_key_predicates_scan_everything() {
        let d = def(vec![0, 1]);
        let plan = KeyPlan::from_filters(&[col("v").eq(lit(1i64))], &d).unwrap();
        assert_eq!(plan, KeyPlan::full(&d));
        assert!(!constrains_key(&col("v").eq(lit(1i64)), &d));
        // Equality on a key prefix narrows to that prefix.
        let plan = KeyPlan::from_filters(&[col("a").eq(lit(1i64))], &d).unwrap();
        assert!(matches!(plan, KeyPlan::Range(..)) && plan != KeyPlan::full(&d));
    }
}

//! ASOF and temporal joins: `a ASOF JOIN b MATCH_CONDITION (a.ts >= b.ts) ON a.k = b.k` and
//! `a JOIN b FOR SYSTEM_TIME AS OF a.ts ON a.k = b.k`.
//!
//! DataFusion plans neither, so before planning each becomes an ordinary join whose `ON`
//! carries a marker, `eddy_asof(later, earlier, strict)` (true when `later >= earlier`, or `>`
//! when strict): ASOF JOIN a LEFT JOIN (each left row is kept, as in Snowflake), a temporal
//! JOIN an INNER and a temporal LEFT JOIN a LEFT one. The join planner finds the marker in the
//! physical join's filter and plans an [`AsofJoinPlan`] instead of an interval join; the marker
//! is never evaluated as a filter of a streaming join.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::compute::kernels::cmp::{gt, gt_eq};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{JoinSide, JoinType, Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_expr::expressions::{CastExpr, Column, Literal};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, FunctionArguments, Ident, JoinConstraint, JoinOperator,
    ObjectName, Query, SetExpr, TableFactor, TableVersion, TableWithJoins, Value,
};

use super::joins::JoinParts;
use super::not_supported;
use crate::catalog::{Catalog, DEFAULT_SCHEMA, TableDef};
use crate::error::{Error, Result};
use crate::stream::operators::asof_join::AsofJoinPlan;

/// The marker's name.
pub const MARKER: &str = "eddy_asof";

/// `eddy_asof(later, earlier, strict)`: whether `later >= earlier` (`>` when strict).
#[derive(Debug, PartialEq, Eq, Hash)]
struct Marker {
    signature: Signature,
}

impl ScalarUDFImpl for Marker {
    fn name(&self) -> &str {
        MARKER
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let n = args.number_rows;
        let time = DataType::Timestamp(TimeUnit::Microsecond, None);
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DfResult<_>>()?;
        let [later, earlier, strict] = arrays.as_slice() else {
            return datafusion::common::exec_err!("{MARKER} takes three arguments");
        };
        let (later, earlier) = (cast(later, &time)?, cast(earlier, &time)?);
        let strict = matches!(
            ScalarValue::try_from_array(strict, 0)?,
            ScalarValue::Boolean(Some(true))
        );
        let result: BooleanArray = match strict {
            true => gt(&later, &earlier)?,
            false => gt_eq(&later, &earlier)?,
        };
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// The marker as a function to register.
pub fn marker() -> ScalarUDF {
    ScalarUDF::new_from_impl(Marker {
        signature: Signature::any(3, Volatility::Immutable),
    })
}

/// Rewrites the query's ASOF and temporal joins into joins with the marker.
pub(super) fn rewrite(query: &mut Query, catalog: &Catalog) -> Result<()> {
    rewrite_set(&mut query.body, catalog)
}

fn rewrite_set(body: &mut SetExpr, catalog: &Catalog) -> Result<()> {
    match body {
        SetExpr::Select(select) => {
            for from in select.from.iter_mut() {
                rewrite_from(from, catalog)?;
            }
        }
        SetExpr::Query(q) => rewrite(q, catalog)?,
        SetExpr::SetOperation { left, right, .. } => {
            rewrite_set(left, catalog)?;
            rewrite_set(right, catalog)?;
        }
        _ => {}
    }
    Ok(())
}

fn marker_call(later: SqlExpr, earlier: SqlExpr, strict: bool) -> SqlExpr {
    use datafusion::sql::sqlparser::ast::{
        Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    };
    let arg = |e: SqlExpr| FunctionArg::Unnamed(FunctionArgExpr::Expr(e));
    SqlExpr::Function(Function {
        name: ObjectName::from(vec![Ident::new(MARKER)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![
                arg(later),
                arg(earlier),
                arg(SqlExpr::value(Value::Boolean(strict))),
            ],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// `on AND marker` (or the marker alone).
fn with_marker(constraint: JoinConstraint, marker: SqlExpr) -> Result<JoinConstraint> {
    Ok(JoinConstraint::On(match constraint {
        JoinConstraint::On(on) => SqlExpr::BinaryOp {
            left: Box::new(SqlExpr::Nested(Box::new(on))),
            op: BinaryOperator::And,
            right: Box::new(marker),
        },
        JoinConstraint::None => marker,
        JoinConstraint::Using(_) | JoinConstraint::Natural => {
            return Err(not_supported(
                "ASOF and temporal joins with USING or NATURAL (write ON a.k = b.k)",
            ));
        }
    }))
}

/// The version time of a temporal join's versioned side: its source's WATERMARK column.
fn version_time(factor: &TableFactor, catalog: &Catalog) -> Result<SqlExpr> {
    let TableFactor::Table { name, alias, .. } = factor else {
        return Err(not_supported(
            "FOR SYSTEM_TIME AS OF on anything but a source",
        ));
    };
    let table = super::unqualified(&name.to_string());
    let def: Arc<TableDef> = catalog
        .table(DEFAULT_SCHEMA, &table)
        .ok_or_else(|| Error::undefined_table(&table))?;
    let column = def
        .source()
        .and_then(|s| s.watermark.as_ref())
        .map(|w| w.column.clone())
        .ok_or_else(|| {
            not_supported(format!(
                "FOR SYSTEM_TIME AS OF over \"{}\", which is not a source with a WATERMARK \
                 (its event time is each version's time)",
                def.name
            ))
        })?;
    let qualifier = alias
        .as_ref()
        .map(|a| a.name.clone())
        .unwrap_or_else(|| Ident::with_quote('"', def.name.clone()));
    Ok(SqlExpr::CompoundIdentifier(vec![
        qualifier,
        Ident::with_quote('"', column),
    ]))
}

fn rewrite_from(from: &mut TableWithJoins, catalog: &Catalog) -> Result<()> {
    if let TableFactor::Derived { subquery, .. } = &mut from.relation {
        rewrite(subquery, catalog)?;
    }
    for join in from.joins.iter_mut() {
        if let TableFactor::Derived { subquery, .. } = &mut join.relation {
            rewrite(subquery, catalog)?;
        }
        // A temporal join: the version of the relation as of the left row's time.
        let as_of = match &mut join.relation {
            TableFactor::Table { version, .. } => match version.take() {
                Some(TableVersion::ForSystemTimeAsOf(e)) => Some(e),
                Some(_) => {
                    return Err(not_supported(
                        "table versions other than FOR SYSTEM_TIME AS OF",
                    ));
                }
                None => None,
            },
            _ => None,
        };
        if let Some(at) = as_of {
            let marker = marker_call(at, version_time(&join.relation, catalog)?, false);
            let operator = std::mem::replace(
                &mut join.join_operator,
                JoinOperator::CrossJoin(JoinConstraint::None),
            );
            join.join_operator = match operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => {
                    JoinOperator::Inner(with_marker(c, marker)?)
                }
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => {
                    JoinOperator::LeftOuter(with_marker(c, marker)?)
                }
                _ => {
                    return Err(not_supported(
                        "temporal joins other than JOIN and LEFT JOIN ... FOR SYSTEM_TIME AS OF",
                    ));
                }
            };
            continue;
        }
        let JoinOperator::AsOf { .. } = &join.join_operator else {
            continue;
        };
        let JoinOperator::AsOf {
            match_condition,
            constraint,
        } = std::mem::replace(
            &mut join.join_operator,
            JoinOperator::CrossJoin(JoinConstraint::None),
        )
        else {
            unreachable!("matched above");
        };
        let mut condition = match_condition;
        while let SqlExpr::Nested(inner) = condition {
            condition = *inner;
        }
        let SqlExpr::BinaryOp { left, op, right } = condition else {
            return Err(not_supported(
                "ASOF MATCH_CONDITION other than a comparison of the two sides' times",
            ));
        };
        let marker = match op {
            BinaryOperator::GtEq => marker_call(*left, *right, false),
            BinaryOperator::Gt => marker_call(*left, *right, true),
            BinaryOperator::LtEq => marker_call(*right, *left, false),
            BinaryOperator::Lt => marker_call(*right, *left, true),
            other => {
                return Err(not_supported(format!(
                    "ASOF MATCH_CONDITION with {other} (use >=, >, <= or <)"
                )));
            }
        };
        join.join_operator = JoinOperator::LeftOuter(with_marker(constraint, marker)?);
    }
    Ok(())
}

/// The marker call in a join's filter, if any: (later, earlier, strict) as filter columns.
fn find_marker(expr: &Arc<dyn PhysicalExpr>) -> Option<(Column, Column, bool)> {
    let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
    if f.name() != MARKER {
        return None;
    }
    let column = |e: &Arc<dyn PhysicalExpr>| -> Option<Column> {
        match e.downcast_ref::<CastExpr>() {
            Some(c) => c.expr().downcast_ref::<Column>().cloned(),
            None => e.downcast_ref::<Column>().cloned(),
        }
    };
    let [later, earlier, strict] = f.args() else {
        return None;
    };
    let strict = matches!(
        strict.downcast_ref::<Literal>()?.value(),
        ScalarValue::Boolean(Some(true))
    );
    Some((column(later)?, column(earlier)?, strict))
}

/// Whether a join's filter holds the marker (anywhere).
pub(super) fn is_asof(filter: Option<&JoinFilter>) -> bool {
    let Some(filter) = filter else {
        return false;
    };
    let mut found = false;
    let _ = filter.expression().apply(|node| {
        if node
            .downcast_ref::<ScalarFunctionExpr>()
            .is_some_and(|f| f.name() == MARKER)
        {
            found = true;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The ASOF join a marked join is. `exact[i][c]`: column `c` of input `i` is its source's event
/// time, unchanged.
pub(super) fn plan(parts: &JoinParts<'_>, exact: &[Vec<bool>; 2]) -> Result<AsofJoinPlan> {
    let filter = parts
        .filter
        .ok_or_else(|| Error::internal("ASOF join without its marker"))?;
    let mut all = Vec::new();
    super::joins::conjuncts(filter.expression(), &mut all);
    let [only] = all.as_slice() else {
        return Err(not_supported(
            "conditions across both sides of an ASOF or temporal join other than equal keys \
             (filter the joined rows in WHERE)",
        ));
    };
    let (later, earlier, strict) = find_marker(only).ok_or_else(|| {
        not_supported("an ASOF or temporal join's time comparison inside another expression")
    })?;
    let side = |c: &Column| {
        filter
            .column_indices()
            .get(c.index())
            .map(|i| (i.side, i.index))
    };
    let (Some((JoinSide::Left, l)), Some((JoinSide::Right, r))) = (side(&later), side(&earlier))
    else {
        return Err(not_supported(
            "ASOF joins that look forward (the right row's time must be at or before the left \
             row's: MATCH_CONDITION (left.ts >= right.ts))",
        ));
    };
    if !exact[0].get(l).copied().unwrap_or(false) || !exact[1].get(r).copied().unwrap_or(false) {
        return Err(not_supported(
            "ASOF and temporal joins on times other than both sources' event-time (WATERMARK) \
             columns",
        ));
    }
    match parts.join_type {
        JoinType::Inner | JoinType::Left => {}
        other => {
            return Err(not_supported(format!(
                "{other} ASOF or temporal joins (the left side's rows are the ones answered)"
            )));
        }
    }
    let (schema, keys) = parts.schema_and_keys();
    Ok(AsofJoinPlan {
        join_type: parts.join_type,
        inputs: [parts.left.schema(), parts.right.schema()],
        keys,
        time: [l, r],
        strict,
        schema,
        projection: parts.projection.clone(),
    })
}

//! `RETURNING` on INSERT, UPDATE and DELETE.
//!
//! The select list is planned as `SELECT <list> FROM <target> [AS alias]` when the statement
//! is prepared, which gives the clients the row description and PostgreSQL's column names.
//! At execution the scan of the target in that plan is replaced by the rows the statement
//! wrote (defaults and sequence values filled in, ON CONFLICT updates included) or deleted.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::{MemTable, provider_as_source};
use datafusion::logical_expr::{LogicalPlan, TableScanBuilder};
use datafusion::sql::sqlparser::ast::{self, SelectItem, Statement};

use super::dml::DmlOutput;
use super::naming;
use super::session::{QueryOutput, Session};
use crate::error::{Error, Result};

/// The RETURNING list of a statement, if it has one.
pub fn items(statement: &Statement) -> Option<&[SelectItem]> {
    match statement {
        Statement::Insert(i) => i.returning.as_deref(),
        Statement::Update(u) => u.returning.as_deref(),
        Statement::Delete(d) => d.returning.as_deref(),
        _ => None,
    }
}

/// The statement without its RETURNING list (what DataFusion plans).
pub fn strip(statement: &mut Statement) {
    match statement {
        Statement::Insert(i) => i.returning = None,
        Statement::Update(u) => u.returning = None,
        Statement::Delete(d) => d.returning = None,
        _ => {}
    }
}

/// `SELECT <returning list> FROM <target> [AS alias]`, or `None` without RETURNING.
pub fn query(statement: &Statement) -> Result<Option<Statement>> {
    let Some(list) = items(statement) else {
        return Ok(None);
    };
    let (name, alias) = match statement {
        Statement::Insert(i) => match &i.table {
            ast::TableObject::TableName(n) => {
                (n.clone(), i.table_alias.as_ref().map(|a| a.alias.clone()))
            }
            _ => return Err(Error::not_supported("RETURNING from a table function")),
        },
        Statement::Update(u) => match &u.table.relation {
            ast::TableFactor::Table { name, alias, .. } => {
                (name.clone(), alias.as_ref().map(|a| a.name.clone()))
            }
            _ => return Err(Error::not_supported("RETURNING from this UPDATE target")),
        },
        Statement::Delete(d) => {
            let tables = match &d.from {
                ast::FromTable::WithFromKeyword(t) | ast::FromTable::WithoutKeyword(t) => t,
            };
            match tables.first().map(|t| &t.relation) {
                Some(ast::TableFactor::Table { name, alias, .. }) => {
                    (name.clone(), alias.as_ref().map(|a| a.name.clone()))
                }
                _ => return Err(Error::not_supported("RETURNING from this DELETE target")),
            }
        }
        _ => return Ok(None),
    };
    let list: Vec<String> = list.iter().map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {} FROM {name}{}",
        list.join(", "),
        alias.map(|a| format!(" AS {a}")).unwrap_or_default()
    );
    let mut statements = Session::parse(&sql)?;
    match statements.pop() {
        Some(super::session::Stmt::Sql(s)) => Ok(Some(s)),
        _ => Err(Error::internal("RETURNING did not parse as a query")),
    }
}

/// Runs the planned RETURNING list over the rows the statement changed.
pub async fn output(session: &Session, plan: LogicalPlan, out: DmlOutput) -> Result<QueryOutput> {
    let table = Arc::new(MemTable::try_new(
        out.schema.clone(),
        vec![out.rows.clone()],
    )?);
    let mut replaced = false;
    let plan = plan
        .transform_up(|node| {
            let LogicalPlan::TableScan(scan) = &node else {
                return Ok(Transformed::no(node));
            };
            if replaced {
                return Ok(Transformed::no(node));
            }
            replaced = true;
            let source = provider_as_source(table.clone());
            let new = TableScanBuilder::new(scan.table_name.clone(), source)
                .with_projection(scan.projection.clone())
                .build()?;
            Ok(Transformed::yes(LogicalPlan::TableScan(new)))
        })?
        .data;
    let names = naming::output_names(&plan);
    let df = DataFrame::new(session.ctx().state(), plan);
    let mut schema = Arc::new(df.schema().as_arrow().clone());
    if let Some(names) = names {
        schema = naming::rename(&schema, &names);
    }
    let batches = df.collect().await?;
    let batches = batches
        .into_iter()
        .map(|b| {
            datafusion::arrow::array::RecordBatch::try_new_with_options(
                schema.clone(),
                b.columns().to_vec(),
                &datafusion::arrow::array::RecordBatchOptions::new()
                    .with_row_count(Some(b.num_rows())),
            )
        })
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let stream =
        datafusion::physical_plan::memory::MemoryStream::try_new(batches, schema.clone(), None)?;
    Ok(QueryOutput::Rows {
        schema,
        stream: Box::pin(stream),
        command: Some(out.tag),
    })
}

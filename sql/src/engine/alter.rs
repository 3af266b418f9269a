//! ALTER TABLE: columns (ADD, DROP, RENAME, TYPE, DEFAULT, NOT NULL), constraints (ADD,
//! DROP, RENAME), RENAME TO, with their IF [NOT] EXISTS forms.
//!
//! Changes that alter the stored row layout (ADD / DROP COLUMN, SET DATA TYPE) rewrite every
//! row inside the statement's transaction and bump the table's layout version, so a
//! transaction that wrote rows in the old layout fails at commit rather than storing them.
//! Each operation applies to the result of the previous one, as in PostgreSQL.

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::sql::sqlparser::ast::{
    self, AlterColumnOperation, AlterTableOperation, Expr as SqlExpr,
};

use super::constraints::{self, Spec};
use super::ddl::{default_text, ident, name_parts};
use super::session::{CommandTag, Session};
use crate::catalog::{Relation, TableDef, TableKind};
use crate::codec::{ColumnRef, row};
use crate::error::{Error, Result, sqlstate};
use crate::storage::{WriteOp, prefix_end};
use crate::types::SqlType;

pub async fn alter_table(session: &Session, alter: &ast::AlterTable) -> Result<CommandTag> {
    let tag = CommandTag::new("ALTER TABLE");
    let Some((_, table, relation)) = session.resolve(&alter.name)? else {
        if alter.if_exists {
            return Ok(tag);
        }
        return Err(Error::undefined_table(
            name_parts(&alter.name).pop().unwrap_or_default(),
        ));
    };
    let Relation::Table(def) = relation else {
        return Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("\"{table}\" is not a table"),
        ));
    };
    if def.kind != TableKind::Table {
        return Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("\"{table}\" is a {}", def.kind.describe()),
        )
        .with_hint(
            "ALTER TABLE changes tables; streams, views and sources are dropped and created again.",
        ));
    }
    let mut def = (*def).clone();
    for op in &alter.operations {
        def = apply(session, def, op).await?;
    }
    Ok(tag)
}

fn undefined_column(column: &str, table: &str) -> Error {
    Error::user(
        sqlstate::UNDEFINED_COLUMN,
        format!("column \"{column}\" of relation \"{table}\" does not exist"),
    )
}

fn column_at(def: &TableDef, column: &str) -> Result<usize> {
    def.column_index(column)
        .ok_or_else(|| undefined_column(column, &def.name))
}

/// Stores `new` in place of `old` in the transaction's catalog.
fn store(session: &Session, old: &TableDef, new: TableDef) -> Result<TableDef> {
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let ops = txn.catalog_mut(&current).replace_table(old, new.clone())?;
    txn.push_ops(ops);
    Ok(new)
}

async fn apply(session: &Session, def: TableDef, op: &AlterTableOperation) -> Result<TableDef> {
    match op {
        AlterTableOperation::AddColumn {
            if_not_exists,
            column_def,
            column_position: None,
            ..
        } => add_column(session, def, column_def, *if_not_exists).await,
        AlterTableOperation::DropColumn {
            column_names,
            if_exists,
            drop_behavior,
            ..
        } => {
            let mut def = def;
            for c in column_names {
                def = drop_column(
                    session,
                    def,
                    &ident(c),
                    *if_exists,
                    matches!(drop_behavior, Some(ast::DropBehavior::Cascade)),
                )
                .await?;
            }
            Ok(def)
        }
        AlterTableOperation::RenameColumn {
            old_column_name,
            new_column_name,
        } => rename_column(
            session,
            def,
            &ident(old_column_name),
            &ident(new_column_name),
        ),
        AlterTableOperation::RenameTable { table_name } => {
            let name = match table_name {
                ast::RenameTableNameKind::As(n) | ast::RenameTableNameKind::To(n) => n,
            };
            let new_name = name_parts(name).pop().unwrap_or_default();
            let mut new = def.clone();
            if !def.primary_key.is_empty() {
                new.pkey_name = Some(def.pkey_name());
            }
            new.name = new_name;
            store(session, &def, new)
        }
        AlterTableOperation::AlterColumn { column_name, op } => {
            alter_column(session, def, &ident(column_name), op).await
        }
        AlterTableOperation::AddConstraint { constraint, .. } => {
            add_constraint(session, def, constraint).await
        }
        AlterTableOperation::DropConstraint {
            if_exists, name, ..
        } => drop_constraint(session, def, &ident(name), *if_exists),
        AlterTableOperation::RenameConstraint { old_name, new_name } => {
            rename_constraint(session, def, &ident(old_name), &ident(new_name))
        }
        other => Err(Error::not_supported(format!("ALTER TABLE ... {other}"))),
    }
}

async fn add_column(
    session: &Session,
    def: TableDef,
    column: &ast::ColumnDef,
    if_not_exists: bool,
) -> Result<TableDef> {
    let name = ident(&column.name);
    if def.column_index(&name).is_some() {
        if if_not_exists {
            return Ok(def);
        }
        return Err(Error::user(
            "42701",
            format!(
                "column \"{name}\" of relation \"{}\" already exists",
                def.name
            ),
        ));
    }
    // The column as CREATE TABLE would make it (SERIAL, identity, constraints).
    let spec = super::ddl::column_from_ast(&def.name, column)?;
    if spec.primary_key {
        return Err(Error::not_supported(
            "adding a primary key column to an existing table",
        ));
    }
    let (mut col, specs, sequence) = (spec.def, spec.constraints, spec.sequence);
    let mut new = def.clone();
    let position = new.columns.len();
    let current = session.engine().catalog();
    if let Some(options) = sequence {
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        let seq_name =
            super::sequences::serial_sequence_name(catalog, &def.schema, &def.name, &name);
        let mut given = options;
        given.ty.get_or_insert(col.ty.clone());
        let mut info = given.apply(None)?;
        info.owned_by = Some((def.id, name.clone()));
        if col.identity.is_none() {
            col.default = Some(super::sequences::nextval_default(&def.schema, &seq_name));
        }
        let (_, ops) = super::sequences::create_in(catalog, &def.schema, &seq_name, info)?;
        txn.push_ops(ops);
    }
    new.columns.push(col.clone());
    new.layout += 1;
    let new = new.refreshed();
    // Existing rows take the default (evaluated per row: nextval numbers them) or NULL.
    rewrite_rows(session, &def, &new, |old| {
        let value = super::copy::default_values(session, &new, position, old.num_rows())?;
        if !col.nullable && value.null_count() > 0 {
            return Err(Error::user(
                sqlstate::NOT_NULL_VIOLATION,
                format!(
                    "column \"{name}\" of relation \"{}\" contains null values",
                    def.name
                ),
            ));
        }
        let mut columns = old.columns().to_vec();
        columns.push(value);
        Ok(columns)
    })
    .await?;
    let stored = store(session, &def, new)?;
    if specs.is_empty() {
        return Ok(stored);
    }
    add_specs(session, stored, specs).await
}

/// Adds constraints to a table that may have rows: a unique constraint's index is filled,
/// and every row is checked against a new CHECK or foreign key.
async fn add_specs(session: &Session, def: TableDef, specs: Vec<Spec>) -> Result<TableDef> {
    let current = session.engine().catalog();
    let (new, ops) = {
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        constraints::add(session, catalog, &def, specs)?
    };
    session.txn().lock().push_ops(ops);
    let stored = store(session, &def, new.clone())?;
    let catalog = session.view().catalog();
    for index in new
        .indexes
        .iter()
        .filter(|i| !def.indexes.iter().any(|d| d.id == i.id))
    {
        constraints::build_index(session, &new, index).await?;
    }
    let added_checks = new.checks.len() > def.checks.len();
    let added_keys = new.foreign_keys.len() > def.foreign_keys.len();
    if added_checks || added_keys {
        let mut only = new.clone();
        only.checks = new.checks[def.checks.len()..].to_vec();
        only.foreign_keys = new.foreign_keys[def.foreign_keys.len()..].to_vec();
        for (arrays, _) in super::dml::read_rows(session, &new).await? {
            constraints::check_rows(session, &only, &arrays)
                .map_err(|e| existing_rows(e, &only))?;
            constraints::check_references(session, &catalog, &only, &arrays)?;
        }
    }
    Ok(stored)
}

/// PostgreSQL words a CHECK that existing rows fail differently from an insert's.
fn existing_rows(e: Error, def: &TableDef) -> Error {
    if e.sqlstate() != constraints::CHECK_VIOLATION {
        return e;
    }
    let name = def
        .checks
        .last()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    Error::user(
        constraints::CHECK_VIOLATION,
        format!(
            "check constraint \"{name}\" of relation \"{}\" is violated by some row",
            def.name
        ),
    )
    .with_constraint(&def.schema, &def.name, &name)
}

async fn drop_column(
    session: &Session,
    def: TableDef,
    column: &str,
    if_exists: bool,
    cascade: bool,
) -> Result<TableDef> {
    let Some(at) = def.column_index(column) else {
        if if_exists {
            return Ok(def);
        }
        return Err(undefined_column(column, &def.name));
    };
    if def.primary_key.contains(&at) {
        return Err(
            Error::not_supported(format!("dropping primary key column \"{column}\""))
                .with_hint("Create a new table with the key you want and copy the rows into it."),
        );
    }
    if def.columns.len() == 1 {
        return Err(Error::not_supported("a table without columns"));
    }
    let catalog = session.view().catalog();
    for (child, fk) in constraints::referencing_keys(&catalog, &def) {
        if fk.ref_columns.contains(&at) && !cascade {
            return Err(Error::user(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                format!(
                    "cannot drop column {column} of table {} because other objects depend on it",
                    def.name
                ),
            )
            .with_detail(format!(
                "constraint {} on table {} depends on column {column} of table {}",
                fk.name, child.name, def.name
            ))
            .with_hint("Use DROP ... CASCADE to drop the dependent objects too."));
        }
    }
    // Referencing foreign keys on this column go with it (CASCADE).
    for (child, fk) in constraints::referencing_keys(&catalog, &def) {
        if fk.ref_columns.contains(&at) && child.id != def.id {
            let mut new_child = (*child).clone();
            new_child.foreign_keys.retain(|f| f.name != fk.name);
            store(session, &child, new_child)?;
        }
    }
    let shift = |c: usize| if c > at { c - 1 } else { c };
    let mut new = def.clone();
    new.columns.remove(at);
    new.primary_key = new.primary_key.iter().map(|&c| shift(c)).collect();
    let mut dropped_indexes = Vec::new();
    new.indexes.retain(|i| {
        let keep = !i.columns.contains(&at);
        if !keep {
            dropped_indexes.push(i.id);
        }
        keep
    });
    for i in &mut new.indexes {
        i.columns = i.columns.iter().map(|&c| shift(c)).collect();
    }
    new.checks
        .retain(|c| !constraints::mentions_column(&c.expr, column));
    new.foreign_keys.retain(|f| !f.columns.contains(&at));
    for f in &mut new.foreign_keys {
        f.columns = f.columns.iter().map(|&c| shift(c)).collect();
        if f.table == def.id {
            f.ref_columns = f.ref_columns.iter().map(|&c| shift(c)).collect();
        }
    }
    new.layout += 1;
    let new = new.refreshed();
    {
        let mut txn = session.txn().lock();
        for id in dropped_indexes {
            let prefix = crate::keys::table_prefix(id);
            let end = prefix_end(&prefix);
            txn.push_ops(vec![WriteOp::DeleteRange(prefix, end)]);
        }
    }
    rewrite_rows(session, &def, &new, |old| {
        let mut columns = old.columns().to_vec();
        columns.remove(at);
        Ok(columns)
    })
    .await?;
    // Its sequence (SERIAL, identity) goes with it.
    let current = session.engine().catalog();
    {
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        if let Some(seq) = super::sequences::owned_sequence(catalog, &def, column) {
            let ops = catalog.drop_relation(&seq.schema, &seq.name)?;
            txn.push_ops(ops);
        }
    }
    store(session, &def, new)
}

fn rename_column(session: &Session, def: TableDef, old: &str, new_name: &str) -> Result<TableDef> {
    let at = column_at(&def, old)?;
    if def.column_index(new_name).is_some() {
        return Err(Error::user(
            "42701",
            format!(
                "column \"{new_name}\" of relation \"{}\" already exists",
                def.name
            ),
        ));
    }
    let mut new = def.clone();
    new.columns[at].name = new_name.to_string();
    for check in &mut new.checks {
        check.expr = rename_in_expr(&check.expr, old, new_name);
    }
    let new = new.refreshed();
    let stored = store(session, &def, new)?;
    // The column's sequence stays owned by it under the new name.
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    if let Some(seq) = super::sequences::owned_sequence(catalog, &def, old) {
        let mut renamed = (*seq).clone();
        if let TableKind::Sequence(info) = &mut renamed.kind {
            info.owned_by = Some((def.id, new_name.to_string()));
        }
        let ops = catalog.replace_table(&seq, renamed)?;
        txn.push_ops(ops);
    }
    Ok(stored)
}

/// An expression's text with a column renamed.
fn rename_in_expr(sql: &str, old: &str, new: &str) -> String {
    use datafusion::sql::sqlparser::ast::{VisitMut, VisitorMut};
    use std::ops::ControlFlow;
    let Ok(mut expr) = super::ddl::parse_sql_expr(sql) else {
        return sql.to_string();
    };
    struct Rename<'a>(&'a str, &'a str);
    impl VisitorMut for Rename<'_> {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &mut SqlExpr) -> ControlFlow<()> {
            if let SqlExpr::Identifier(i) = e
                && ident(i) == self.0
            {
                *i = ast::Ident::new(self.1);
                if super::pg_catalog::quote_ident(self.1) != self.1 {
                    *i = ast::Ident::with_quote('"', self.1);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Rename(old, new));
    expr.to_string()
}

async fn alter_column(
    session: &Session,
    def: TableDef,
    column: &str,
    op: &AlterColumnOperation,
) -> Result<TableDef> {
    let at = column_at(&def, column)?;
    let mut new = def.clone();
    match op {
        AlterColumnOperation::SetNotNull => {
            for (arrays, _) in super::dml::read_rows(session, &def).await? {
                if arrays[at].null_count() > 0 {
                    return Err(Error::user(
                        sqlstate::NOT_NULL_VIOLATION,
                        format!(
                            "column \"{column}\" of relation \"{}\" contains null values",
                            def.name
                        ),
                    )
                    .with_column(&def.schema, &def.name, column));
                }
            }
            new.columns[at].nullable = false;
        }
        AlterColumnOperation::DropNotNull => {
            if def.primary_key.contains(&at) {
                return Err(Error::user(
                    sqlstate::INVALID_TABLE_DEFINITION,
                    format!("column \"{column}\" is in a primary key"),
                ));
            }
            if def.columns[at].identity.is_some() {
                return Err(Error::user(
                    "55000",
                    format!(
                        "column \"{column}\" of relation \"{}\" is an identity column",
                        def.name
                    ),
                ));
            }
            new.columns[at].nullable = true;
        }
        AlterColumnOperation::SetDefault { value } => {
            let text = default_text(value, &def.columns[at].ty);
            let state = session.ctx().state();
            let expr = state.create_logical_expr(
                &super::sequences::plain_regclass_literals(&text),
                &DFSchema::empty(),
            )?;
            expr.cast_to(&def.columns[at].ty.arrow_type(), &DFSchema::empty())?;
            new.columns[at].default = Some(text);
        }
        AlterColumnOperation::DropDefault => new.columns[at].default = None,
        AlterColumnOperation::SetDataType {
            data_type, using, ..
        } => return set_type(session, def, at, data_type, using.as_ref()).await,
        other => return Err(Error::not_supported(format!("ALTER COLUMN ... {other}"))),
    }
    let new = new.refreshed();
    store(session, &def, new)
}

async fn set_type(
    session: &Session,
    def: TableDef,
    at: usize,
    data_type: &ast::DataType,
    using: Option<&SqlExpr>,
) -> Result<TableDef> {
    let ty = SqlType::from_ast(data_type)?;
    let mut new = def.clone();
    new.columns[at].ty = ty.clone();
    new.layout += 1;
    let new = new.refreshed();
    let column = def.columns[at].name.clone();
    let using = using.map(|u| u.to_string());
    rewrite_rows(session, &def, &new, |old| {
        let value = match &using {
            Some(sql) => {
                let schema = DFSchema::try_from(def.arrow_schema().as_ref().clone())?;
                let state = session.ctx().state();
                let expr = state.create_logical_expr(sql, &schema)?;
                let physical = state.create_physical_expr(expr, &schema)?;
                physical.evaluate(old)?.into_array(old.num_rows())?
            }
            None => old.column(at).clone(),
        };
        let converted = datafusion::arrow::compute::cast_with_options(
            &value,
            &ty.arrow_type(),
            &datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            },
        )
        .map_err(|e| {
            Error::user(
                "42804",
                format!(
                    "column \"{column}\" cannot be cast automatically to type {}: {e}",
                    ty.pg_name()
                ),
            )
            .with_hint(format!(
                "You might need to specify \"USING {column}::{}\".",
                ty.pg_name()
            ))
        })?;
        let mut columns = old.columns().to_vec();
        columns[at] = converted;
        Ok(columns)
    })
    .await?;
    store(session, &def, new)
}

async fn add_constraint(
    session: &Session,
    def: TableDef,
    constraint: &ast::TableConstraint,
) -> Result<TableDef> {
    if let ast::TableConstraint::PrimaryKey(_) = constraint {
        return Err(match def.primary_key.is_empty() {
            true => Error::not_supported("adding a primary key to an existing table")
                .with_hint("Create a new table with the key and copy the rows into it."),
            false => Error::user(
                sqlstate::INVALID_TABLE_DEFINITION,
                format!(
                    "multiple primary keys for table \"{}\" are not allowed",
                    def.name
                ),
            ),
        });
    }
    let specs = Spec::from_table_constraint(constraint)?
        .into_iter()
        .collect();
    add_specs(session, def, specs).await
}

fn drop_constraint(
    session: &Session,
    def: TableDef,
    name: &str,
    if_exists: bool,
) -> Result<TableDef> {
    let mut new = def.clone();
    if let Some(at) = new
        .indexes
        .iter()
        .position(|i| i.constraint && i.name == name)
    {
        let index = new.indexes.remove(at);
        let prefix = crate::keys::table_prefix(index.id);
        let end = prefix_end(&prefix);
        session
            .txn()
            .lock()
            .push_ops(vec![WriteOp::DeleteRange(prefix, end)]);
    } else if let Some(at) = new.checks.iter().position(|c| c.name == name) {
        new.checks.remove(at);
    } else if let Some(at) = new.foreign_keys.iter().position(|f| f.name == name) {
        new.foreign_keys.remove(at);
    } else if !def.primary_key.is_empty() && name == def.pkey_name() {
        return Err(Error::not_supported("dropping a table's primary key"));
    } else if if_exists {
        return Ok(def);
    } else {
        return Err(Error::user(
            sqlstate::UNDEFINED_OBJECT,
            format!(
                "constraint \"{name}\" of relation \"{}\" does not exist",
                def.name
            ),
        ));
    }
    store(session, &def, new)
}

fn rename_constraint(
    session: &Session,
    def: TableDef,
    old: &str,
    new_name: &str,
) -> Result<TableDef> {
    let mut new = def.clone();
    if let Some(i) = new
        .indexes
        .iter_mut()
        .find(|i| i.constraint && i.name == old)
    {
        i.name = new_name.to_string();
    } else if let Some(c) = new.checks.iter_mut().find(|c| c.name == old) {
        c.name = new_name.to_string();
    } else if let Some(f) = new.foreign_keys.iter_mut().find(|f| f.name == old) {
        f.name = new_name.to_string();
    } else {
        return Err(Error::user(
            sqlstate::UNDEFINED_OBJECT,
            format!(
                "constraint \"{old}\" of relation \"{}\" does not exist",
                def.name
            ),
        ));
    }
    store(session, &def, new)
}

/// Rewrites every row of `old` into the layout of `new`: `convert` maps a chunk of old rows
/// (all columns) to the new columns. Rows keep their keys unless the key's value changes;
/// indexes are rebuilt from the new rows.
async fn rewrite_rows(
    session: &Session,
    old: &TableDef,
    new: &TableDef,
    convert: impl Fn(&RecordBatch) -> Result<Vec<ArrayRef>>,
) -> Result<()> {
    let writes = session.engine().table_writes(old.id);
    let chunks = super::dml::read_rows(session, old).await?;
    let kv = session.engine().kv().clone();
    {
        let mut txn = session.txn().lock();
        // Every row is now in the new layout; a commit that wrote the table since the rows
        // were read would leave one behind, so it makes this one fail.
        txn.note_rewrite(old.id, writes);
        txn.note_layout(new.id, new.layout);
        for index in &old.indexes {
            let prefix = crate::keys::table_prefix(index.id);
            let end = prefix_end(&prefix);
            txn.truncate(index.id, prefix, end);
        }
    }
    for (arrays, keys) in chunks {
        let batch = RecordBatch::try_new(old.arrow_schema(), arrays)?;
        let columns = convert(&batch)?;
        let columns: Vec<ArrayRef> = columns
            .iter()
            .zip(&new.columns)
            .map(|(a, c)| cast(a, &c.ty.arrow_type()))
            .collect::<std::result::Result<_, _>>()?;
        for (c, array) in new.columns.iter().zip(&columns) {
            if !c.nullable && array.null_count() > 0 {
                return Err(Error::user(
                    sqlstate::NOT_NULL_VIOLATION,
                    format!(
                        "column \"{}\" of relation \"{}\" contains null values",
                        c.name, new.name
                    ),
                ));
            }
        }
        let refs = columns
            .iter()
            .zip(&new.columns)
            .map(|(a, c)| ColumnRef::new(a, &c.ty))
            .collect::<Result<Vec<_>>>()?;
        let committed = kv.multi_get(&keys)?;
        let mut new_keys = Vec::with_capacity(keys.len());
        let mut txn = session.txn().lock();
        let truncated = txn.is_truncated(old.id);
        for (i, old_key) in keys.iter().enumerate() {
            let mut value = Vec::with_capacity(64);
            row::encode_row(&refs, i, &mut value);
            let key = if new.primary_key.is_empty() {
                old_key.clone()
            } else {
                let mut k = new.key_prefix();
                for &pk in &new.primary_key {
                    crate::codec::key::encode_value(&refs[pk], i, &mut k);
                }
                k
            };
            let seen = if truncated {
                None
            } else {
                committed[i].clone()
            };
            if key != *old_key {
                txn.write(old.id, old_key.clone(), seen, None);
                let seen = if truncated { None } else { kv.get(&key)? };
                txn.write(new.id, key.clone(), seen, Some(value));
            } else {
                txn.write(new.id, key.clone(), seen, Some(value));
            }
            new_keys.push(key);
        }
        constraints::write_index_entries(
            kv.as_ref(),
            &mut txn,
            new,
            None,
            Some((&columns, &new_keys)),
        )?;
    }
    Ok(())
}

//! Constraints beyond the primary key, and secondary indexes: UNIQUE, CHECK, FOREIGN KEY,
//! CREATE [UNIQUE] INDEX.
//!
//! Definitions come from CREATE TABLE, ALTER TABLE ADD CONSTRAINT and CREATE INDEX, and are
//! kept in the table's catalog record. Every write of a row goes through [`Rows`], which
//! keeps the indexes in step and checks the constraints in the session's transaction:
//!
//! - an index entry is written with the committed value it observed, so two transactions
//!   inserting the same unique value cannot both commit (the second fails validation);
//! - a foreign key's referenced row is read with an expectation that it still exists at
//!   commit, so a concurrent delete of the parent fails one of the two;
//! - the actions on referencing rows (CASCADE, SET NULL, SET DEFAULT, and the NO ACTION /
//!   RESTRICT check) run after the statement's own writes, as statements of their own inside
//!   the same transaction (see `dml.rs`).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::common::DFSchema;
use datafusion::sql::sqlparser::ast::{self, ObjectName, ReferentialAction};

use super::ddl::ident;
use super::session::Session;
use crate::catalog::{Catalog, CheckDef, FkAction, ForeignKeyDef, IndexDef, Relation, TableDef};
use crate::codec::{ColumnRef, key};
use crate::error::{Error, Result, sqlstate};
use crate::storage::{KvStore, WriteOp};
use crate::txn::Txn;

pub const CHECK_VIOLATION: &str = "23514";
pub const FOREIGN_KEY_VIOLATION: &str = "23503";

/// A constraint as written, before it is resolved against the catalog.
#[derive(Debug, Clone)]
pub enum Spec {
    Unique {
        name: Option<String>,
        columns: Vec<String>,
    },
    Check {
        name: Option<String>,
        expr: Box<ast::Expr>,
    },
    ForeignKey {
        name: Option<String>,
        columns: Vec<String>,
        table: ObjectName,
        ref_columns: Vec<String>,
        on_delete: FkAction,
        on_update: FkAction,
    },
}

fn action(a: Option<ReferentialAction>) -> FkAction {
    match a {
        None | Some(ReferentialAction::NoAction) => FkAction::NoAction,
        Some(ReferentialAction::Restrict) => FkAction::Restrict,
        Some(ReferentialAction::Cascade) => FkAction::Cascade,
        Some(ReferentialAction::SetNull) => FkAction::SetNull,
        Some(ReferentialAction::SetDefault) => FkAction::SetDefault,
    }
}

fn index_column_name(c: &ast::IndexColumn) -> Result<String> {
    match &c.column.expr {
        ast::Expr::Identifier(i) => Ok(ident(i)),
        other => Err(Error::not_supported(format!(
            "an index or constraint over the expression {other}"
        ))),
    }
}

impl Spec {
    /// A column's UNIQUE, CHECK or REFERENCES option; `None` for other options.
    pub fn from_column_option(
        column: &str,
        name: Option<&ast::Ident>,
        option: &ast::ColumnOption,
    ) -> Result<Option<Spec>> {
        let name = name.map(ident);
        Ok(Some(match option {
            ast::ColumnOption::Unique(u) => {
                check_nulls_distinct(&u.nulls_distinct)?;
                check_characteristics(u.characteristics.as_ref())?;
                Spec::Unique {
                    name: name.or(u.name.as_ref().map(ident)),
                    columns: vec![column.to_string()],
                }
            }
            ast::ColumnOption::Check(c) => Spec::Check {
                name: name.or(c.name.as_ref().map(ident)),
                expr: c.expr.clone(),
            },
            ast::ColumnOption::ForeignKey(fk) => {
                check_reference(fk)?;
                Spec::ForeignKey {
                    name: name.or(fk.name.as_ref().map(ident)),
                    columns: vec![column.to_string()],
                    table: fk.foreign_table.clone(),
                    ref_columns: fk.referred_columns.iter().map(ident).collect(),
                    on_delete: action(fk.on_delete),
                    on_update: action(fk.on_update),
                }
            }
            _ => return Ok(None),
        }))
    }

    /// A table constraint other than PRIMARY KEY; `None` for a primary key.
    pub fn from_table_constraint(c: &ast::TableConstraint) -> Result<Option<Spec>> {
        Ok(Some(match c {
            ast::TableConstraint::PrimaryKey(_) => return Ok(None),
            ast::TableConstraint::Unique(u) => {
                check_nulls_distinct(&u.nulls_distinct)?;
                check_characteristics(u.characteristics.as_ref())?;
                Spec::Unique {
                    name: u.name.as_ref().map(ident),
                    columns: u
                        .columns
                        .iter()
                        .map(index_column_name)
                        .collect::<Result<_>>()?,
                }
            }
            ast::TableConstraint::Check(c) => Spec::Check {
                name: c.name.as_ref().map(ident),
                expr: c.expr.clone(),
            },
            ast::TableConstraint::ForeignKey(fk) => {
                check_reference(fk)?;
                Spec::ForeignKey {
                    name: fk.name.as_ref().map(ident),
                    columns: fk.columns.iter().map(ident).collect(),
                    table: fk.foreign_table.clone(),
                    ref_columns: fk.referred_columns.iter().map(ident).collect(),
                    on_delete: action(fk.on_delete),
                    on_update: action(fk.on_update),
                }
            }
            other => return Err(Error::not_supported(format!("table constraint {other}"))),
        }))
    }
}

/// Constraints are checked at once: DEFERRABLE and NOT ENFORCED are refused, not ignored.
fn check_characteristics(c: Option<&ast::ConstraintCharacteristics>) -> Result<()> {
    let Some(c) = c else { return Ok(()) };
    if c.deferrable == Some(true) || matches!(c.initially, Some(ast::DeferrableInitial::Deferred)) {
        return Err(Error::not_supported("DEFERRABLE constraints"));
    }
    if c.enforced == Some(false) {
        return Err(Error::not_supported("NOT ENFORCED constraints"));
    }
    Ok(())
}

/// Foreign keys match simply (a NULL column exempts the row) and are checked at once.
fn check_reference(fk: &ast::ForeignKeyConstraint) -> Result<()> {
    if matches!(
        fk.match_kind,
        Some(ast::ConstraintReferenceMatchKind::Full | ast::ConstraintReferenceMatchKind::Partial)
    ) {
        return Err(Error::not_supported(format!(
            "foreign keys MATCH {}",
            fk.match_kind
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default()
        )));
    }
    check_characteristics(fk.characteristics.as_ref())
}

fn check_nulls_distinct(n: &ast::NullsDistinctOption) -> Result<()> {
    match n {
        ast::NullsDistinctOption::NotDistinct => {
            Err(Error::not_supported("UNIQUE NULLS NOT DISTINCT"))
        }
        _ => Ok(()),
    }
}

fn column_positions(def: &TableDef, names: &[String]) -> Result<Vec<usize>> {
    names
        .iter()
        .map(|n| {
            def.column_index(n).ok_or_else(|| {
                Error::user(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{n}\" named in key does not exist"),
                )
            })
        })
        .collect()
}

/// Whether `name` is free for a new index or constraint in `schema` (indexes share the
/// relations' namespace; constraints must differ within their table).
fn name_taken(catalog: &Catalog, def: &TableDef, name: &str) -> bool {
    catalog.relation(&def.schema, name).is_some()
        || catalog.index_owner(&def.schema, name).is_some()
        || def.indexes.iter().any(|i| i.name == name)
        || def.checks.iter().any(|c| c.name == name)
        || def.foreign_keys.iter().any(|f| f.name == name)
        || (!def.primary_key.is_empty() && def.pkey_name() == name)
}

/// PostgreSQL's generated name: `<table>_<columns>_<suffix>`, numbered when taken.
pub fn choose_name(catalog: &Catalog, def: &TableDef, columns: &[&str], suffix: &str) -> String {
    let mut base = def.name.clone();
    for c in columns {
        base.push('_');
        base.push_str(c);
    }
    base.truncate(63 - suffix.len() - 1);
    let first = format!("{base}_{suffix}");
    if !name_taken(catalog, def, &first) {
        return first;
    }
    (1..)
        .map(|i| format!("{base}_{suffix}{i}"))
        .find(|n| !name_taken(catalog, def, n))
        .expect("some numbered name is free")
}

/// Whether an expression's text names a column (as a whole word).
pub fn mentions_column(expr: &str, column: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    expr.match_indices(column).any(|(at, _)| {
        !expr[..at].chars().next_back().is_some_and(is_ident)
            && !expr[at + column.len()..]
                .chars()
                .next()
                .is_some_and(is_ident)
    })
}

/// Columns a CHECK expression mentions, in order of appearance.
fn mentioned_columns(def: &TableDef, expr: &ast::Expr) -> Vec<String> {
    use datafusion::sql::sqlparser::ast::Visit;
    use std::ops::ControlFlow;
    let mut out: Vec<String> = Vec::new();
    let _ = expr.visit(&mut VisitIdents(|i: &ast::Ident| {
        let n = ident(i);
        if def.column_index(&n).is_some() && !out.contains(&n) {
            out.push(n);
        }
        ControlFlow::<()>::Continue(())
    }));
    out
}

struct VisitIdents<F>(F);
impl<F: FnMut(&ast::Ident) -> std::ops::ControlFlow<()>> ast::Visitor for VisitIdents<F> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &ast::Expr) -> std::ops::ControlFlow<()> {
        match e {
            ast::Expr::Identifier(i) => (self.0)(i),
            ast::Expr::CompoundIdentifier(parts) => match parts.last() {
                Some(i) => (self.0)(i),
                None => std::ops::ControlFlow::Continue(()),
            },
            _ => std::ops::ControlFlow::Continue(()),
        }
    }
}

/// Adds constraints to `def` (in `catalog`, the transaction's copy). Returns the new
/// definition and the writes that persist it; the indexes of a table that has rows are
/// filled by [`build_index`] afterwards.
pub fn add(
    session: &Session,
    catalog: &mut Catalog,
    def: &TableDef,
    specs: Vec<Spec>,
) -> Result<(TableDef, Vec<WriteOp>)> {
    let mut new = def.clone();
    let mut ops = Vec::new();
    for spec in specs {
        match spec {
            Spec::Unique { name, columns } => {
                let positions = column_positions(&new, &columns)?;
                let names: Vec<&str> = columns.iter().map(String::as_str).collect();
                let name = match name {
                    Some(n) if name_taken(catalog, &new, &n) => {
                        return Err(Error::user(
                            sqlstate::DUPLICATE_TABLE,
                            format!("relation \"{n}\" already exists"),
                        ));
                    }
                    Some(n) => n,
                    None => choose_name(catalog, &new, &names, "key"),
                };
                let (id, op) = catalog.allocate_id();
                ops.push(op);
                new.indexes.push(IndexDef {
                    id,
                    name,
                    columns: positions,
                    unique: true,
                    constraint: true,
                    comment: None,
                });
            }
            Spec::Check { name, expr } => {
                let mentioned = mentioned_columns(&new, &expr);
                let name = match name {
                    Some(n) => {
                        if new.checks.iter().any(|c| c.name == n) {
                            return Err(Error::user(
                                "42710",
                                format!(
                                    "constraint \"{n}\" for relation \"{}\" already exists",
                                    new.name
                                ),
                            ));
                        }
                        n
                    }
                    None if mentioned.len() == 1 => {
                        choose_name(catalog, &new, &[mentioned[0].as_str()], "check")
                    }
                    None => choose_name(catalog, &new, &[], "check"),
                };
                let check = CheckDef {
                    name,
                    expr: expr.to_string(),
                };
                // A bad expression fails now, not at the first insert.
                check_expression(session, &new, &check)?;
                new.checks.push(check);
            }
            Spec::ForeignKey {
                name,
                columns,
                table,
                ref_columns,
                on_delete,
                on_update,
            } => {
                let positions = column_positions(&new, &columns)?;
                let parent = referenced_table(session, catalog, &new, &table)?;
                let ref_positions = if ref_columns.is_empty() {
                    if parent.primary_key.is_empty() {
                        return Err(Error::user(
                            sqlstate::UNDEFINED_OBJECT,
                            format!(
                                "there is no primary key for referenced table \"{}\"",
                                parent.name
                            ),
                        ));
                    }
                    parent.primary_key.clone()
                } else {
                    column_positions(&parent, &ref_columns)?
                };
                if ref_positions.len() != positions.len() {
                    return Err(Error::user(
                        "42830",
                        "number of referencing and referenced columns for foreign key disagree",
                    ));
                }
                let keyed = ref_positions == parent.primary_key
                    || parent
                        .indexes
                        .iter()
                        .any(|i| i.unique && i.columns == ref_positions);
                if !keyed {
                    return Err(Error::user(
                        "42830",
                        format!(
                            "there is no unique constraint matching given keys for referenced table \"{}\"",
                            parent.name
                        ),
                    ));
                }
                for (&c, &r) in positions.iter().zip(&ref_positions) {
                    let (ct, rt) = (&new.columns[c].ty, &parent.columns[r].ty);
                    if ct.arrow_type() != rt.arrow_type() && !(ct.is_integer() && rt.is_integer()) {
                        return Err(Error::user(
                            "42804",
                            format!(
                                "foreign key constraint cannot be implemented: key columns \"{}\" and \"{}\" are of incompatible types",
                                new.columns[c].name, parent.columns[r].name
                            ),
                        ));
                    }
                }
                let names: Vec<&str> = columns.iter().map(String::as_str).collect();
                let name = match name {
                    Some(n) => n,
                    None => choose_name(catalog, &new, &names, "fkey"),
                };
                let parent_id = if parent.id == def.id {
                    new.id
                } else {
                    parent.id
                };
                new.foreign_keys.push(ForeignKeyDef {
                    name,
                    columns: positions,
                    table: parent_id,
                    ref_columns: ref_positions,
                    on_delete,
                    on_update,
                });
            }
        }
    }
    Ok((new, ops))
}

/// The table a foreign key references (the table itself when it names itself).
fn referenced_table(
    session: &Session,
    catalog: &Catalog,
    def: &TableDef,
    name: &ObjectName,
) -> Result<TableDef> {
    let mut parts = super::ddl::name_parts(name);
    let object = parts.pop().unwrap_or_default();
    if object == def.name && (parts.is_empty() || parts.first() == Some(&def.schema)) {
        return Ok(def.clone());
    }
    let schemas = match parts.pop() {
        Some(s) => vec![s],
        None => session.settings().search_path(&session.info().user),
    };
    let found = schemas.iter().find_map(|s| catalog.relation(s, &object));
    match found {
        Some(Relation::Table(t)) if t.kind == crate::catalog::TableKind::Table => Ok((*t).clone()),
        Some(_) => Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("referenced relation \"{object}\" is not a table"),
        )),
        None => Err(Error::undefined_table(object)),
    }
}

fn check_expression(session: &Session, def: &TableDef, check: &CheckDef) -> Result<()> {
    let schema = DFSchema::try_from(def.arrow_schema().as_ref().clone())?;
    let state = session.ctx().state();
    let expr = state.create_logical_expr(&check.expr, &schema)?;
    use datafusion::logical_expr::ExprSchemable;
    let ty = expr.get_type(&schema)?;
    if ty != datafusion::arrow::datatypes::DataType::Boolean {
        return Err(Error::user(
            "42804",
            format!("argument of CHECK must be type boolean, not type {ty}"),
        ));
    }
    Ok(())
}

/// The storage key of an index entry for `arrays[row]`, and whether it is a unique key
/// (unique index, no NULL column).
fn index_key(
    def: &TableDef,
    index: &IndexDef,
    cols: &[ColumnRef<'_>],
    row: usize,
    row_key: &[u8],
) -> (Vec<u8>, bool) {
    let mut k = key::table_prefix(index.id);
    let mut has_null = false;
    for &c in &index.columns {
        if cols[c].is_null(row) {
            has_null = true;
            k.push(0);
        } else {
            k.push(1);
            key::encode_value(&cols[c], row, &mut k);
        }
    }
    let unique = index.unique && !has_null;
    if !unique {
        k.extend_from_slice(&row_key[def.key_prefix().len()..]);
    }
    (k, unique)
}

fn column_refs<'a>(def: &TableDef, arrays: &'a [ArrayRef]) -> Result<Vec<ColumnRef<'a>>> {
    arrays
        .iter()
        .zip(&def.columns)
        .map(|(a, c)| ColumnRef::new(a, &c.ty))
        .collect()
}

/// The committed value of `key`, unless the transaction wrote it (or truncated its table).
fn visible(kv: &dyn KvStore, txn: &Txn, table: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if let Some(v) = txn.overlay_get(key) {
        return Ok(v.map(|v| v.to_vec()));
    }
    if txn.is_truncated(table) {
        return Ok(None);
    }
    kv.get(key)
}

fn committed(kv: &dyn KvStore, txn: &Txn, table: u32, key: &[u8]) -> Result<Option<Vec<u8>>> {
    if txn.is_truncated(table) {
        return Ok(None);
    }
    kv.get(key)
}

pub fn unique_violation(
    def: &TableDef,
    index: &IndexDef,
    arrays: &[ArrayRef],
    row: usize,
) -> Error {
    let names: Vec<&str> = index
        .columns
        .iter()
        .map(|&c| def.columns[c].name.as_str())
        .collect();
    let values: Vec<String> = index
        .columns
        .iter()
        .map(|&c| array_value_to_string(&arrays[c], row).unwrap_or_default())
        .collect();
    Error::user(
        sqlstate::UNIQUE_VIOLATION,
        format!(
            "duplicate key value violates unique constraint \"{}\"",
            index.name
        ),
    )
    .with_detail(format!(
        "Key ({})=({}) already exists.",
        names.join(", "),
        values.join(", ")
    ))
    .with_constraint(&def.schema, &def.name, &index.name)
}

/// The row a unique index maps these values to (`arrays[row]`'s index columns), if any.
pub fn unique_owner(
    kv: &dyn KvStore,
    txn: &Txn,
    def: &TableDef,
    index: &IndexDef,
    arrays: &[ArrayRef],
    row: usize,
) -> Result<Option<Vec<u8>>> {
    let cols = column_refs(def, arrays)?;
    let (k, unique) = index_key(def, index, &cols, row, &def.key_prefix());
    if !unique {
        return Ok(None);
    }
    visible(kv, txn, index.id, &k)
}

/// Keeps a table's indexes in step with row writes.
///
/// `old` are the rows' previous values (UPDATE, DELETE), `new` their new values (INSERT,
/// UPDATE); both hold all table columns, cast to the column types. `old_keys` / `new_keys`
/// are the rows' storage keys.
pub fn write_index_entries(
    kv: &dyn KvStore,
    txn: &mut Txn,
    def: &TableDef,
    old: Option<(&[ArrayRef], &[Vec<u8>])>,
    new: Option<(&[ArrayRef], &[Vec<u8>])>,
) -> Result<()> {
    if def.indexes.is_empty() {
        return Ok(());
    }
    let old_cols = old.map(|(a, _)| column_refs(def, a)).transpose()?;
    let new_cols = new.map(|(a, _)| column_refs(def, a)).transpose()?;
    for index in &def.indexes {
        // Removals first, so a row that keeps its value (or a value moved between rows of
        // the same statement) does not conflict with itself.
        if let (Some(cols), Some((_, keys))) = (&old_cols, old) {
            for (row, row_key) in keys.iter().enumerate() {
                let (k, _) = index_key(def, index, cols, row, row_key);
                let seen = committed(kv, txn, index.id, &k)?;
                txn.write(index.id, k, seen, None);
            }
        }
        if let (Some(cols), Some((arrays, keys))) = (&new_cols, new) {
            for (row, row_key) in keys.iter().enumerate() {
                let (k, unique) = index_key(def, index, cols, row, row_key);
                if unique
                    && let Some(owner) = visible(kv, txn, index.id, &k)?
                    && owner != *row_key
                {
                    return Err(unique_violation(def, index, arrays, row));
                }
                let seen = committed(kv, txn, index.id, &k)?;
                txn.write(index.id, k, seen, Some(row_key.clone()));
            }
        }
    }
    Ok(())
}

/// Checks the CHECK constraints on new rows (a NULL result passes, as in PostgreSQL).
pub fn check_rows(session: &Session, def: &TableDef, arrays: &[ArrayRef]) -> Result<()> {
    if def.checks.is_empty() || arrays.first().is_none_or(|a| a.is_empty()) {
        return Ok(());
    }
    let schema = def.arrow_schema();
    let batch = RecordBatch::try_new(schema.clone(), arrays.to_vec())?;
    let df_schema = DFSchema::try_from(schema.as_ref().clone())?;
    let state = session.ctx().state();
    for check in &def.checks {
        let expr = state.create_logical_expr(&check.expr, &df_schema)?;
        let physical = state.create_physical_expr(expr, &df_schema)?;
        let result = physical.evaluate(&batch)?.into_array(batch.num_rows())?;
        let result = result.as_boolean();
        if let Some(row) = (0..result.len()).find(|&i| result.is_valid(i) && !result.value(i)) {
            return Err(Error::user(
                CHECK_VIOLATION,
                format!(
                    "new row for relation \"{}\" violates check constraint \"{}\"",
                    def.name, check.name
                ),
            )
            .with_detail(format!("Failing row contains ({}).", row_text(arrays, row)))
            .with_constraint(&def.schema, &def.name, &check.name));
        }
    }
    Ok(())
}

fn row_text(arrays: &[ArrayRef], row: usize) -> String {
    arrays
        .iter()
        .map(|a| {
            if a.is_null(row) {
                "null".to_string()
            } else {
                array_value_to_string(a, row).unwrap_or_default()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The storage key of the row of `parent` whose referenced columns equal `child[row]`'s
/// referencing columns, and the table id it lives under (for truncation checks).
fn parent_lookup_key(
    parent: &TableDef,
    fk: &ForeignKeyDef,
    values: &[ArrayRef],
    row: usize,
) -> Result<(Vec<u8>, u32)> {
    if fk.ref_columns == parent.primary_key {
        let mut k = parent.key_prefix();
        for (v, &r) in values.iter().zip(&fk.ref_columns) {
            let c = ColumnRef::new(v, &parent.columns[r].ty)?;
            key::encode_value(&c, row, &mut k);
        }
        return Ok((k, parent.id));
    }
    let index = parent
        .indexes
        .iter()
        .find(|i| i.unique && i.columns == fk.ref_columns)
        .ok_or_else(|| Error::internal("foreign key without a unique index"))?;
    let mut k = key::table_prefix(index.id);
    for (v, &r) in values.iter().zip(&fk.ref_columns) {
        let c = ColumnRef::new(v, &parent.columns[r].ty)?;
        k.push(1);
        key::encode_value(&c, row, &mut k);
    }
    Ok((k, index.id))
}

/// Checks that every new row's foreign keys reference existing rows. Each referenced row
/// read is recorded in the transaction, so its deletion by a concurrent transaction makes
/// one of the two fail at commit.
pub fn check_references(
    session: &Session,
    catalog: &Catalog,
    def: &TableDef,
    arrays: &[ArrayRef],
) -> Result<()> {
    if def.foreign_keys.is_empty() {
        return Ok(());
    }
    let kv = session.engine().kv().clone();
    let n = arrays.first().map_or(0, |a| a.len());
    for fk in &def.foreign_keys {
        let parent = if fk.table == def.id {
            Arc::new(def.clone())
        } else {
            catalog
                .table_by_id(fk.table)
                .ok_or_else(|| Error::internal("foreign key to a dropped table"))?
        };
        let values: Vec<ArrayRef> = fk
            .columns
            .iter()
            .zip(&fk.ref_columns)
            .map(|(&c, &r)| cast(&arrays[c], &parent.columns[r].ty.arrow_type()))
            .collect::<std::result::Result<_, _>>()?;
        let mut txn = session.txn().lock();
        for row in 0..n {
            if values.iter().any(|v| v.is_null(row)) {
                continue; // MATCH SIMPLE: a NULL column exempts the row
            }
            let (k, table) = parent_lookup_key(&parent, fk, &values, row)?;
            let found = visible(kv.as_ref(), &txn, table, &k)?;
            if found.is_none() {
                let names: Vec<&str> = fk
                    .columns
                    .iter()
                    .map(|&c| def.columns[c].name.as_str())
                    .collect();
                let shown: Vec<String> = fk
                    .columns
                    .iter()
                    .map(|&c| array_value_to_string(&arrays[c], row).unwrap_or_default())
                    .collect();
                return Err(Error::user(
                    FOREIGN_KEY_VIOLATION,
                    format!(
                        "insert or update on table \"{}\" violates foreign key constraint \"{}\"",
                        def.name, fk.name
                    ),
                )
                .with_detail(format!(
                    "Key ({})=({}) is not present in table \"{}\".",
                    names.join(", "),
                    shown.join(", "),
                    parent.name
                ))
                .with_constraint(&def.schema, &def.name, &fk.name));
            }
            if txn.overlay_get(&k).is_none() {
                let seen = committed(kv.as_ref(), &txn, table, &k)?;
                txn.expect_unchanged(table, k, seen);
            }
        }
    }
    Ok(())
}

/// Fills a new index from the table's rows (CREATE INDEX, ADD UNIQUE on a table with
/// rows), failing on a duplicate of a unique one.
pub async fn build_index(session: &Session, def: &TableDef, index: &IndexDef) -> Result<()> {
    let mut only = def.clone();
    only.indexes = vec![index.clone()];
    let rows = super::dml::read_rows(session, def).await?;
    for (arrays, keys) in rows {
        let mut txn = session.txn().lock();
        write_index_entries(
            session.engine().kv().as_ref(),
            &mut txn,
            &only,
            None,
            Some((&arrays, &keys)),
        )
        .map_err(|e| match e.sqlstate() == sqlstate::UNIQUE_VIOLATION {
            // As PostgreSQL words a unique index that existing rows already break.
            true => Error::user(
                sqlstate::UNIQUE_VIOLATION,
                format!("could not create unique index \"{}\"", index.name),
            )
            .with_detail(
                e.detail()
                    .unwrap_or_default()
                    .replace("already exists.", "is duplicated."),
            )
            .with_constraint(&def.schema, &def.name, &index.name),
            false => e,
        })?;
    }
    Ok(())
}

/// The referencing rows' conditions as SQL over the child's columns: for each parent row,
/// the child's foreign key columns equal the parent's referenced values.
pub fn referencing_condition(
    child: &TableDef,
    fk: &ForeignKeyDef,
    parent: &TableDef,
    parent_rows: &[ArrayRef],
    rows: &[usize],
) -> Result<Option<String>> {
    let mut terms = Vec::new();
    for &row in rows {
        let mut parts = Vec::new();
        let mut null = false;
        for (&c, &r) in fk.columns.iter().zip(&fk.ref_columns) {
            let array = &parent_rows[r];
            if array.is_null(row) {
                null = true;
                break;
            }
            parts.push(format!(
                "{} = {}",
                super::pg_catalog::quote_ident(&child.columns[c].name),
                literal(array, row, &parent.columns[r].ty)?
            ));
        }
        if !null {
            terms.push(format!("({})", parts.join(" AND ")));
        }
    }
    Ok((!terms.is_empty()).then(|| terms.join(" OR ")))
}

/// A value as a typed SQL literal.
pub fn literal(array: &ArrayRef, row: usize, ty: &crate::types::SqlType) -> Result<String> {
    if array.is_null(row) {
        return Ok("NULL".to_string());
    }
    let text = array_value_to_string(array, row)?;
    Ok(format!(
        "CAST('{}' AS {})",
        text.replace('\'', "''"),
        ty.pg_name()
    ))
}

/// Key values of changed parent rows: which rows' referenced columns changed (UPDATE).
pub fn changed_rows(fk_ref_columns: &[usize], old: &[ArrayRef], new: &[ArrayRef]) -> Vec<usize> {
    let n = old.first().map_or(0, |a| a.len());
    (0..n)
        .filter(|&row| {
            fk_ref_columns.iter().any(|&c| {
                let (a, b) = (&old[c], &new[c]);
                a.is_null(row) != b.is_null(row)
                    || (!a.is_null(row)
                        && array_value_to_string(a, row).ok() != array_value_to_string(b, row).ok())
            })
        })
        .collect()
}

/// Foreign keys of other tables (or this one) that reference `def`.
pub fn referencing_keys(catalog: &Catalog, def: &TableDef) -> Vec<(Arc<TableDef>, ForeignKeyDef)> {
    let mut out = Vec::new();
    for child in catalog.referencing(def.id) {
        for fk in child.foreign_keys.iter().filter(|fk| fk.table == def.id) {
            out.push((child.clone(), fk.clone()));
        }
    }
    out
}

//! Statements Eddy runs itself rather than through DataFusion's planner: CREATE/DROP of
//! tables, views and schemas, TRUNCATE, and the session statements SET, SHOW, RESET, DISCARD.
//!
//! Catalog changes go into the session's transaction (its private catalog copy plus the KV
//! records that persist it) and become visible to others when it commits.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::ExprSchemable;
use datafusion::sql::sqlparser::ast::{
    self, ColumnOption, Expr as SqlExpr, GeneratedAs, Ident, ObjectName, ObjectType, Statement,
    TableConstraint,
};

use super::constraints::Spec;
use super::sequences::SequenceOptionsGiven;
use super::session::{CommandTag, QueryOutput, Session, text_rows};
use super::settings::Settings;
use crate::catalog::{ColumnDef, Identity, Relation, TableKind};
use crate::error::{Error, Result, sqlstate};
use crate::storage::prefix_end;
use crate::types::SqlType;

/// An expression kept as SQL text (a default, a CHECK), parsed again.
pub(super) fn parse_sql_expr(
    sql: &str,
) -> std::result::Result<SqlExpr, datafusion::sql::sqlparser::parser::ParserError> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(sql)?
        .parse_expr()
}

/// The normalised name of an identifier: unquoted names fold to lower case.
pub fn ident(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

pub(super) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .filter_map(|p| p.as_ident())
        .map(ident)
        .collect()
}

impl Session {
    /// Schema and name for an object to create or write: unqualified names go to
    /// `current_schema()` (where DataFusion also resolves them).
    pub(super) fn qualify(&self, name: &ObjectName) -> Result<(String, String)> {
        let mut parts = name_parts(name);
        let object = parts.pop().ok_or_else(|| Error::internal("empty name"))?;
        let schema = match parts.pop() {
            Some(s) => s,
            None => self.info().current_schema().ok_or_else(|| {
                Error::user(
                    sqlstate::INVALID_SCHEMA_NAME,
                    "no schema has been selected to create in",
                )
            })?,
        };
        Ok((schema, object))
    }

    /// Schema and name of an existing relation, searching `search_path` when unqualified.
    pub(super) fn resolve(&self, name: &ObjectName) -> Result<Option<(String, String, Relation)>> {
        let mut parts = name_parts(name);
        let object = parts.pop().ok_or_else(|| Error::internal("empty name"))?;
        let cat = self.view().catalog();
        let schemas = match parts.pop() {
            Some(s) => vec![s],
            None => self.settings().search_path(&self.info().user),
        };
        Ok(schemas.into_iter().find_map(|s| {
            cat.relation(&s, &object)
                .map(|r| (s.clone(), object.clone(), r))
        }))
    }
}

/// What a statement executed here returns, for Describe.
pub fn result_schema(statement: &Statement, settings: &Settings) -> Option<SchemaRef> {
    match statement {
        Statement::ShowVariable { variable } => {
            let name = show_name(variable);
            let columns = if name == "all" {
                vec!["name", "setting", "description"]
            } else {
                vec![]
            };
            let fields: Vec<Field> = if columns.is_empty() {
                vec![Field::new(
                    settings.display_name(&name),
                    DataType::Utf8,
                    true,
                )]
            } else {
                columns
                    .into_iter()
                    .map(|c| Field::new(c, DataType::Utf8, true))
                    .collect()
            };
            Some(Arc::new(Schema::new(fields)))
        }
        _ => None,
    }
}

pub async fn execute(session: &Session, statement: &Statement) -> Result<QueryOutput> {
    let tag = match statement {
        Statement::CreateTable(ct) => create_table(session, ct).await?,
        Statement::CreateView(cv) => create_view(session, cv).await?,
        Statement::CreateSchema {
            schema_name,
            if_not_exists,
            ..
        } => create_schema(session, schema_name, *if_not_exists)?,
        Statement::Drop {
            object_type: ObjectType::Index,
            if_exists,
            names,
            ..
        } => drop_indexes(session, names, *if_exists)?,
        Statement::Drop {
            object_type,
            if_exists,
            names,
            ..
        } if super::roles::is_role_object(*object_type) => {
            super::roles::drop_roles(session, names, *if_exists)?
        }
        Statement::Drop {
            object_type,
            if_exists,
            names,
            cascade,
            ..
        } => drop(session, *object_type, *if_exists, names, *cascade)?,
        Statement::CreateRole(r) => super::roles::create_role(session, r)?,
        Statement::CreateIndex(ci) => create_index(session, ci).await?,
        Statement::Comment {
            object_type,
            object_name,
            comment,
            if_exists,
        } => comment_on(
            session,
            *object_type,
            object_name,
            comment.clone(),
            *if_exists,
        )?,
        Statement::Copy { to: true, .. } => return session.copy_out(statement).await,
        Statement::Copy { .. } => return session.start_copy(statement),
        Statement::AlterTable(alter) => super::alter::alter_table(session, alter).await?,
        Statement::CreateSequence {
            temporary: false,
            if_not_exists,
            name,
            data_type,
            sequence_options,
            owned_by,
        } => super::sequences::create(
            session,
            name,
            *if_not_exists,
            data_type.as_ref(),
            sequence_options,
            owned_by.as_ref(),
        )?,
        Statement::AlterRole { name, operation } => {
            super::roles::alter_role(session, name, operation)?
        }
        Statement::Truncate(t) => truncate(session, t)?,
        Statement::Set(set) => return set_statement(session, set).map(QueryOutput::Command),
        Statement::ShowVariable { variable } => return show(session, variable),
        Statement::Reset(reset) => {
            match &reset.reset {
                ast::Reset::ALL => session.info().settings.write().reset_all(),
                ast::Reset::ConfigurationParameter(name) => {
                    session.info().settings.write().reset(&name.to_string())
                }
            }
            session.sync_default_schema();
            CommandTag::new("RESET")
        }
        Statement::Discard { .. } => {
            session.info().settings.write().reset_all();
            session.sync_default_schema();
            session.inbox().unlisten(None);
            session.sql_prepared().clear();
            CommandTag::new("DISCARD ALL")
        }
        Statement::LISTEN { channel } => {
            let channel = ident(channel);
            super::notify::check(&channel, "")?;
            session.inbox().listen(&channel);
            CommandTag::new("LISTEN")
        }
        Statement::UNLISTEN { channel } => {
            let channel = ident(channel);
            session
                .inbox()
                .unlisten((channel != "*").then_some(channel.as_str()));
            CommandTag::new("UNLISTEN")
        }
        Statement::NOTIFY { channel, payload } => {
            let channel = ident(channel);
            let payload = payload.clone().unwrap_or_default();
            super::notify::check(&channel, &payload)?;
            session.txn().lock().notify(channel, payload);
            CommandTag::new("NOTIFY")
        }
        other => {
            let sql = other.to_string();
            let words: Vec<&str> = sql.split_whitespace().take(2).collect();
            return Err(Error::not_supported(words.join(" ")));
        }
    };
    Ok(QueryOutput::Command(tag))
}

/// `CREATE TABLE t (LIKE source [INCLUDING | EXCLUDING DEFAULTS])`: the source's column
/// names, types and NOT NULL constraints (and defaults when included), as PostgreSQL copies.
fn like_columns(session: &Session, like: &ast::CreateTableLikeKind) -> Result<Vec<ColumnDef>> {
    let (ast::CreateTableLikeKind::Parenthesized(like) | ast::CreateTableLikeKind::Plain(like)) =
        like;
    let def = match session.resolve(&like.name)? {
        Some((_, _, crate::catalog::Relation::Table(def))) => def,
        Some((_, name, crate::catalog::Relation::View(_))) => {
            return Err(Error::not_supported(format!(
                "CREATE TABLE … (LIKE a view: \"{name}\")"
            )));
        }
        None => {
            return Err(Error::undefined_table(
                name_parts(&like.name).pop().unwrap_or_default(),
            ));
        }
    };
    let defaults = matches!(like.defaults, Some(ast::CreateTableLikeDefaults::Including));
    Ok(def
        .columns
        .iter()
        .map(|c| ColumnDef {
            default: if defaults { c.default.clone() } else { None },
            ..ColumnDef::new(c.name.clone(), c.ty.clone(), c.nullable)
        })
        .collect())
}

async fn create_table(session: &Session, ct: &ast::CreateTable) -> Result<CommandTag> {
    if ct.query.is_some() {
        return Err(Error::not_supported("CREATE TABLE ... AS"));
    }
    let (schema, name) = session.qualify(&ct.name)?;
    if ct.if_not_exists && session.view().catalog().relation(&schema, &name).is_some() {
        return Ok(CommandTag::new("CREATE TABLE"));
    }
    let mut columns = Vec::with_capacity(ct.columns.len());
    let mut primary_key: Vec<usize> = Vec::new();
    // Columns that draw from a sequence of their own (SERIAL, identity), with its options.
    let mut sequences: Vec<(usize, SequenceOptionsGiven)> = Vec::new();
    // UNIQUE, CHECK and FOREIGN KEY constraints, added once the table exists.
    let mut specs: Vec<Spec> = Vec::new();
    if let Some(like) = &ct.like {
        columns.extend(like_columns(session, like)?);
    }
    for c in &ct.columns {
        let i = columns.len();
        let column = column_from_ast(&name, c)?;
        if columns
            .iter()
            .any(|d: &ColumnDef| d.name == column.def.name)
        {
            return Err(Error::user(
                "42701",
                format!("column \"{}\" specified more than once", column.def.name),
            ));
        }
        if column.primary_key {
            if !primary_key.is_empty() {
                return Err(multiple_primary_keys(&name));
            }
            primary_key.push(i);
        }
        if let Some(options) = column.sequence {
            sequences.push((i, options));
        }
        specs.extend(column.constraints);
        columns.push(column.def);
    }
    for constraint in &ct.constraints {
        match constraint {
            TableConstraint::PrimaryKey(pk) => {
                if !primary_key.is_empty() {
                    return Err(multiple_primary_keys(&name));
                }
                for ic in &pk.columns {
                    let col = ic.column.expr.to_string();
                    let col = col.trim_matches('"').to_string();
                    let idx = columns
                        .iter()
                        .position(|c| c.name == col || c.name == col.to_lowercase())
                        .ok_or_else(|| {
                            Error::user(
                                sqlstate::UNDEFINED_COLUMN,
                                format!("column \"{col}\" named in key does not exist"),
                            )
                        })?;
                    primary_key.push(idx);
                }
            }
            other => {
                if let Some(spec) = Spec::from_table_constraint(other)? {
                    specs.push(spec);
                }
            }
        }
    }
    for &k in &primary_key {
        columns[k].nullable = false;
    }
    check_defaults(session, &columns)?;
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let mut ops = Vec::new();
    let mut owned = Vec::new();
    for (i, options) in sequences {
        let column = &mut columns[i];
        let seq_name = sequence_name_for(catalog, &schema, &name, &column.name, &owned);
        let mut given = options;
        given.ty.get_or_insert(column.ty.clone());
        let info = given.apply(None)?;
        if column.identity.is_none() {
            column.default = Some(super::sequences::nextval_default(&schema, &seq_name));
        }
        owned.push((seq_name, info, column.name.clone()));
    }
    let (table, table_ops) = catalog.create_table(&schema, &name, columns, primary_key)?;
    ops.extend(table_ops);
    if !specs.is_empty() {
        let (with_constraints, constraint_ops) =
            super::constraints::add(session, catalog, &table, specs)?;
        ops.extend(constraint_ops);
        ops.extend(catalog.replace_table(&table, with_constraints)?);
    }
    for (seq_name, mut info, column) in owned {
        info.owned_by = Some((table.id, column));
        let (_, seq_ops) = super::sequences::create_in(catalog, &schema, &seq_name, info)?;
        ops.extend(seq_ops);
    }
    txn.push_ops(ops);
    Ok(CommandTag::new("CREATE TABLE"))
}

/// One column of CREATE TABLE or ALTER TABLE ADD COLUMN, as written.
pub(super) struct ColumnSpec {
    pub def: ColumnDef,
    /// `PRIMARY KEY` on the column.
    pub primary_key: bool,
    /// SERIAL or identity: the options of the sequence it owns.
    pub sequence: Option<SequenceOptionsGiven>,
    /// Its UNIQUE, CHECK and REFERENCES options.
    pub constraints: Vec<Spec>,
}

pub(super) fn column_from_ast(table: &str, c: &ast::ColumnDef) -> Result<ColumnSpec> {
    let name = table;
    let col_name = ident(&c.name);
    let serial = serial_type(&c.data_type);
    let ty = match &serial {
        Some(ty) => ty.clone(),
        None => SqlType::from_ast(&c.data_type)?,
    };
    let mut out = ColumnSpec {
        def: ColumnDef::new(col_name, ty, true),
        primary_key: false,
        sequence: None,
        constraints: Vec::new(),
    };
    let def = &mut out.def;
    if serial.is_some() {
        // SERIAL: NOT NULL, with a default from a sequence the column owns.
        def.nullable = false;
        out.sequence = Some(SequenceOptionsGiven::default());
    }
    for opt in &c.options {
        match &opt.option {
            ColumnOption::Null if serial.is_some() || def.identity.is_some() => {
                return Err(Error::user(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "conflicting NULL/NOT NULL declarations for column \"{}\" of table \"{name}\"",
                        def.name
                    ),
                ));
            }
            ColumnOption::Null => def.nullable = true,
            ColumnOption::NotNull => def.nullable = false,
            ColumnOption::Default(_) if serial.is_some() || def.identity.is_some() => {
                return Err(Error::user(
                    sqlstate::SYNTAX_ERROR,
                    format!(
                        "multiple default values specified for column \"{}\" of table \"{name}\"",
                        def.name
                    ),
                ));
            }
            ColumnOption::Default(e) => def.default = Some(default_text(e, &def.ty)),
            ColumnOption::Generated {
                generated_as: generated @ (GeneratedAs::Always | GeneratedAs::ByDefault),
                sequence_options,
                generation_expr: None,
                ..
            } => {
                if !def.ty.is_integer() {
                    return Err(Error::user(
                        sqlstate::INVALID_PARAMETER_VALUE,
                        "identity column type must be smallint, integer, or bigint",
                    ));
                }
                if def.default.is_some() || def.identity.is_some() {
                    return Err(Error::user(
                        sqlstate::SYNTAX_ERROR,
                        format!(
                            "multiple default values specified for column \"{}\" of table \"{name}\"",
                            def.name
                        ),
                    ));
                }
                def.identity = Some(match generated {
                    GeneratedAs::Always => Identity::Always,
                    _ => Identity::ByDefault,
                });
                def.nullable = false;
                out.sequence = Some(SequenceOptionsGiven::from_ast(
                    None,
                    sequence_options.as_deref().unwrap_or_default(),
                )?);
            }
            ColumnOption::PrimaryKey(_) => out.primary_key = true,
            other => match Spec::from_column_option(&def.name, opt.name.as_ref(), other)? {
                Some(spec) => out.constraints.push(spec),
                None => {
                    return Err(Error::not_supported(format!("column constraint {other}")));
                }
            },
        }
    }
    Ok(out)
}

/// A DEFAULT as PostgreSQL keeps it: a string literal carries its cast to the column's type
/// (`'anon'::character varying`), as `pg_get_expr` and `\d` show it.
pub(super) fn default_text(e: &SqlExpr, ty: &SqlType) -> String {
    let literal =
        matches!(e, SqlExpr::Value(v) if matches!(v.value, ast::Value::SingleQuotedString(_)));
    if literal {
        let name = ty.pg_name();
        let base = name.split('(').next().unwrap_or(&name).trim();
        format!("{e}::{base}")
    } else {
        e.to_string()
    }
}

/// The integer type of `serial`, `bigserial` and `smallserial` (and serial2/4/8).
fn serial_type(t: &ast::DataType) -> Option<SqlType> {
    let ast::DataType::Custom(name, args) = t else {
        return None;
    };
    if !args.is_empty() {
        return None;
    }
    match name.to_string().to_lowercase().as_str() {
        "serial" | "serial4" => Some(SqlType::Int4),
        "bigserial" | "serial8" => Some(SqlType::Int8),
        "smallserial" | "serial2" => Some(SqlType::Int2),
        _ => None,
    }
}

/// A free name for a new column's sequence, also avoiding the ones this statement is about
/// to create.
fn sequence_name_for(
    catalog: &crate::catalog::Catalog,
    schema: &str,
    table: &str,
    column: &str,
    taken: &[(String, crate::catalog::SequenceInfo, String)],
) -> String {
    let base = super::sequences::serial_sequence_name(catalog, schema, table, column);
    if !taken.iter().any(|(n, _, _)| *n == base) {
        return base;
    }
    (1..)
        .map(|i| format!("{table}_{column}_seq{i}"))
        .find(|n| catalog.relation(schema, n).is_none() && !taken.iter().any(|(t, _, _)| t == n))
        .expect("some numbered name is free")
}

/// `CREATE [UNIQUE] INDEX [IF NOT EXISTS] [name] ON table [USING btree] (column, ...)`.
pub async fn create_index(session: &Session, ci: &ast::CreateIndex) -> Result<CommandTag> {
    let tag = CommandTag::new("CREATE INDEX");
    let Some((schema, table, Relation::Table(def))) = session.resolve(&ci.table_name)? else {
        return Err(Error::undefined_table(ci.table_name.to_string()));
    };
    if def.kind != TableKind::Table {
        return Err(Error::user(
            sqlstate::WRONG_OBJECT_TYPE,
            format!("cannot create index on {} \"{table}\"", def.kind.describe()),
        ));
    }
    if let Some(using) = &ci.using
        && !using.to_string().eq_ignore_ascii_case("btree")
    {
        return Err(Error::not_supported(format!("index access method {using}")));
    }
    if ci.predicate.is_some() {
        return Err(Error::not_supported(
            "partial indexes (CREATE INDEX ... WHERE)",
        ));
    }
    if !ci.include.is_empty() {
        return Err(Error::not_supported("CREATE INDEX ... INCLUDE"));
    }
    let mut columns = Vec::with_capacity(ci.columns.len());
    for c in &ci.columns {
        let name = match &c.column.expr {
            SqlExpr::Identifier(i) => ident(i),
            other => {
                return Err(Error::not_supported(format!(
                    "an index over the expression {other}"
                )));
            }
        };
        let at = def.column_index(&name).ok_or_else(|| {
            Error::user(
                sqlstate::UNDEFINED_COLUMN,
                format!("column \"{name}\" does not exist"),
            )
        })?;
        columns.push(at);
    }
    let current = session.engine().catalog();
    let index = {
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        let name = match &ci.name {
            Some(n) => name_parts(n).pop().unwrap_or_default(),
            None => {
                let names: Vec<&str> = columns
                    .iter()
                    .map(|&c| def.columns[c].name.as_str())
                    .collect();
                super::constraints::choose_name(catalog, &def, &names, "idx")
            }
        };
        if catalog.relation(&schema, &name).is_some()
            || catalog.index_owner(&schema, &name).is_some()
        {
            if ci.if_not_exists {
                return Ok(tag);
            }
            return Err(Error::user(
                sqlstate::DUPLICATE_TABLE,
                format!("relation \"{name}\" already exists"),
            ));
        }
        let (id, op) = catalog.allocate_id();
        let index = crate::catalog::IndexDef {
            id,
            name,
            columns,
            unique: ci.unique,
            constraint: false,
            comment: None,
        };
        let mut new = (*def).clone();
        new.indexes.push(index.clone());
        let mut ops = vec![op];
        ops.extend(catalog.replace_table(&def, new)?);
        txn.push_ops(ops);
        index
    };
    // Existing rows get their entries (and a unique index checks them) now.
    super::constraints::build_index(session, &def, &index).await?;
    Ok(tag)
}

/// `COMMENT ON TABLE | VIEW | MATERIALIZED VIEW | SEQUENCE | COLUMN | INDEX name IS '…' | NULL`:
/// kept with the object, shown by `obj_description`, `col_description`, `pg_description` and
/// psql's `\d+`.
fn comment_on(
    session: &Session,
    object_type: ast::CommentObject,
    name: &ObjectName,
    comment: Option<String>,
    if_exists: bool,
) -> Result<CommandTag> {
    use ast::CommentObject as O;
    let tag = CommandTag::new("COMMENT");
    let mut parts = name_parts(name);
    let (table_name, column) = match object_type {
        O::Column => {
            let column = parts.pop().unwrap_or_default();
            if parts.is_empty() {
                return Err(Error::user(
                    sqlstate::SYNTAX_ERROR,
                    "column name must be qualified",
                ));
            }
            (parts, Some(column))
        }
        O::Table | O::MaterializedView | O::Sequence | O::Index => (parts, None),
        other => return Err(Error::not_supported(format!("COMMENT ON {other}"))),
    };
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let object = table_name.last().cloned().unwrap_or_default();
    let schemas: Vec<String> = match table_name.len() {
        1 => session.settings().search_path(&session.info().user),
        _ => vec![table_name[0].clone()],
    };
    if object_type == O::Index {
        let Some(owner) = schemas.iter().find_map(|s| catalog.index_owner(s, &object)) else {
            if if_exists {
                return Ok(tag);
            }
            return Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("index \"{object}\" does not exist"),
            ));
        };
        let mut new = (*owner).clone();
        if let Some(i) = new.indexes.iter_mut().find(|i| i.name == object) {
            i.comment = comment;
        }
        let ops = catalog.replace_table(&owner, new)?;
        txn.push_ops(ops);
        return Ok(tag);
    }
    let Some(def) = schemas.iter().find_map(|s| catalog.table(s, &object)) else {
        if if_exists {
            return Ok(tag);
        }
        return Err(Error::undefined_table(object));
    };
    let mut new = (*def).clone();
    match column {
        Some(c) => {
            let at = new.column_index(&c).ok_or_else(|| {
                Error::user(
                    sqlstate::UNDEFINED_COLUMN,
                    format!("column \"{c}\" of relation \"{object}\" does not exist"),
                )
            })?;
            new.columns[at].comment = comment;
        }
        None => new.comment = comment,
    }
    let ops = catalog.replace_table(&def, new)?;
    txn.push_ops(ops);
    Ok(tag)
}

/// `DROP INDEX [IF EXISTS] name, ...`: an index made by CREATE INDEX (a constraint's index
/// goes with ALTER TABLE ... DROP CONSTRAINT).
fn drop_indexes(session: &Session, names: &[ObjectName], if_exists: bool) -> Result<CommandTag> {
    for name in names {
        let mut parts = name_parts(name);
        let index = parts.pop().unwrap_or_default();
        let schemas = match parts.pop() {
            Some(s) => vec![s],
            None => session.settings().search_path(&session.info().user),
        };
        let current = session.engine().catalog();
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        let owner = schemas.iter().find_map(|s| catalog.index_owner(s, &index));
        let Some(def) = owner else {
            let is_key = schemas.iter().any(|s| {
                catalog
                    .tables()
                    .any(|t| t.schema == *s && !t.primary_key.is_empty() && t.pkey_name() == index)
            });
            if is_key {
                let table = index.trim_end_matches("_pkey").to_string();
                return Err(constraint_needs_index(&index, &table));
            }
            if if_exists {
                continue;
            }
            return Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("index \"{index}\" does not exist"),
            ));
        };
        let at = def
            .indexes
            .iter()
            .position(|i| i.name == index)
            .expect("the owner has it");
        if def.indexes[at].constraint {
            return Err(constraint_needs_index(&index, &def.name));
        }
        let mut new = (*def).clone();
        let removed = new.indexes.remove(at);
        let mut ops = catalog.replace_table(&def, new)?;
        let prefix = crate::keys::table_prefix(removed.id);
        let end = prefix_end(&prefix);
        ops.push(crate::storage::WriteOp::DeleteRange(prefix, end));
        txn.push_ops(ops);
    }
    Ok(CommandTag::new("DROP INDEX"))
}

fn constraint_needs_index(index: &str, table: &str) -> Error {
    Error::user(
        "2BP01",
        format!(
            "cannot drop index {index} because constraint {index} on table {table} requires it"
        ),
    )
    .with_hint(format!(
        "You can drop constraint {index} on table {table} instead."
    ))
}

fn multiple_primary_keys(table: &str) -> Error {
    Error::user(
        sqlstate::INVALID_TABLE_DEFINITION,
        format!("multiple primary keys for table \"{table}\" are not allowed"),
    )
}

/// Plans each DEFAULT expression now, so a bad one fails CREATE TABLE rather than INSERT.
fn check_defaults(session: &Session, columns: &[ColumnDef]) -> Result<()> {
    let state = session.ctx().state();
    for c in columns {
        if let Some(sql) = &c.default {
            let expr = state.create_logical_expr(sql, &DFSchema::empty())?;
            expr.cast_to(&c.ty.arrow_type(), &DFSchema::empty())?;
        }
    }
    Ok(())
}

async fn create_view(session: &Session, cv: &ast::CreateView) -> Result<CommandTag> {
    if cv.materialized {
        return Err(Error::internal(
            "CREATE MATERIALIZED VIEW is Eddy's own statement",
        ));
    }
    let (schema, name) = session.qualify(&cv.name)?;
    let sql = cv.query.to_string();
    // Plan it once to report errors (unknown tables, columns) at CREATE time.
    session.ctx().state().create_logical_plan(&sql).await?;
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let exists = catalog.relation(&schema, &name);
    match exists {
        Some(Relation::View(_)) if cv.or_replace => {
            let ops = catalog.drop_relation(&schema, &name)?;
            txn.push_ops(ops);
        }
        Some(_) if cv.if_not_exists => return Ok(CommandTag::new("CREATE VIEW")),
        _ => {}
    }
    let ops = txn.catalog_mut(&current).create_view(&schema, &name, sql)?;
    txn.push_ops(ops);
    Ok(CommandTag::new("CREATE VIEW"))
}

fn create_schema(
    session: &Session,
    name: &ast::SchemaName,
    if_not_exists: bool,
) -> Result<CommandTag> {
    let name = match name {
        ast::SchemaName::Simple(n) | ast::SchemaName::NamedAuthorization(n, _) => name_parts(n)
            .pop()
            .ok_or_else(|| Error::internal("empty schema name"))?,
        ast::SchemaName::UnnamedAuthorization(user) => ident(user),
    };
    if if_not_exists && session.view().catalog().schema_exists(&name) {
        return Ok(CommandTag::new("CREATE SCHEMA"));
    }
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let ops = txn.catalog_mut(&current).create_schema(&name)?;
    txn.push_ops(ops);
    std::mem::drop(txn);
    session.sync_default_schema();
    Ok(CommandTag::new("CREATE SCHEMA"))
}

fn drop(
    session: &Session,
    object_type: ObjectType,
    if_exists: bool,
    names: &[ObjectName],
    cascade: bool,
) -> Result<CommandTag> {
    let tag = match object_type {
        ObjectType::Table => "DROP TABLE",
        ObjectType::View => "DROP VIEW",
        ObjectType::Schema => "DROP SCHEMA",
        ObjectType::Sequence => "DROP SEQUENCE",
        other => return Err(Error::not_supported(format!("DROP {other}"))),
    };
    for name in names {
        if object_type == ObjectType::Schema {
            let schema = name_parts(name).pop().unwrap_or_default();
            if !session.view().catalog().schema_exists(&schema) && if_exists {
                continue;
            }
            let current = session.engine().catalog();
            let mut txn = session.txn().lock();
            let ops = txn.catalog_mut(&current).drop_schema(&schema, cascade)?;
            txn.push_ops(ops);
            continue;
        }
        let Some((schema, object, relation)) = session.resolve(name)? else {
            if if_exists {
                continue;
            }
            return Err(Error::undefined_table(
                name_parts(name).pop().unwrap_or_default(),
            ));
        };
        let is_sequence = matches!(&relation, Relation::Table(d) if d.sequence().is_some());
        if object_type == ObjectType::Sequence && !is_sequence {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!("\"{object}\" is not a sequence"),
            ));
        }
        if let Relation::Table(def) = &relation
            && def.kind != TableKind::Table
            && !(is_sequence && object_type == ObjectType::Sequence)
        {
            let (what, how) = match &def.kind {
                TableKind::Source(_) => ("a source", "DROP SOURCE".to_string()),
                TableKind::Stream(_) => ("a stream", "DROP STREAM".to_string()),
                TableKind::Sink(_) => ("a sink", "DROP SINK".to_string()),
                TableKind::MaterializedView(_) => {
                    ("a materialized view", "DROP MATERIALIZED VIEW".to_string())
                }
                TableKind::DeadLetters { source } => {
                    let of_sink = session
                        .view()
                        .catalog()
                        .table(&schema, source)
                        .is_some_and(|t| matches!(t.kind, TableKind::Sink(_)));
                    if of_sink {
                        (
                            "the dead-letter table of a sink",
                            format!("DROP SINK {source}"),
                        )
                    } else {
                        (
                            "the dead-letter table of a source",
                            format!("DROP SOURCE {source}"),
                        )
                    }
                }
                TableKind::LateEvents { source } => (
                    "the late-event table of a source",
                    format!("DROP SOURCE {source}"),
                ),
                TableKind::Sequence(_) => ("a sequence", "DROP SEQUENCE".to_string()),
                TableKind::Table => unreachable!("checked"),
            };
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "\"{object}\" is not a {}",
                    if object_type == ObjectType::Table {
                        "table"
                    } else {
                        "view"
                    }
                ),
            )
            .with_detail(format!("\"{object}\" is {what}: use {how}.")));
        }
        let is_table = matches!(relation, Relation::Table(_));
        if is_table != matches!(object_type, ObjectType::Table | ObjectType::Sequence) {
            let kind = if is_table { "a table" } else { "a view" };
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!(
                    "\"{object}\" is not {}",
                    if is_table { "a view" } else { "a table" }
                ),
            )
            .with_detail(format!("\"{object}\" is {kind}")));
        }
        let current = session.engine().catalog();
        let mut txn = session.txn().lock();
        let catalog = txn.catalog_mut(&current);
        let dependents = catalog.views_mentioning(&object);
        if !dependents.is_empty() && !cascade {
            return Err(Error::user(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                format!(
                    "cannot drop {} {object} because other objects depend on it",
                    if is_table { "table" } else { "view" }
                ),
            )
            .with_detail(format!(
                "{} {} depends on {} {object}",
                catalog
                    .table(&schema, &dependents[0])
                    .map_or("view", |t| t.kind.describe()),
                dependents[0],
                if is_table { "table" } else { "view" }
            )));
        }
        let mut ops = Vec::new();
        for view in dependents {
            ops.extend(catalog.drop_relation(&schema, &view)?);
        }
        ops.extend(catalog.drop_relation(&schema, &object)?);
        txn.push_ops(ops);
    }
    Ok(CommandTag::new(tag))
}

fn truncate(session: &Session, t: &ast::Truncate) -> Result<CommandTag> {
    let mut targets: Vec<Arc<crate::catalog::TableDef>> = Vec::new();
    for target in &t.table_names {
        let Some((_, object, relation)) = session.resolve(&target.name)? else {
            if t.if_exists {
                continue;
            }
            return Err(Error::undefined_table(target.name.to_string()));
        };
        let Relation::Table(def) = relation else {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!("\"{object}\" is not a table"),
            ));
        };
        if matches!(
            def.kind,
            TableKind::Stream(_)
                | TableKind::MaterializedView(_)
                | TableKind::Sink(_)
                | TableKind::Sequence(_)
        ) {
            return Err(Error::user(
                sqlstate::WRONG_OBJECT_TYPE,
                format!("cannot truncate {} \"{object}\"", def.kind.describe()),
            ));
        }
        targets.push(def);
    }
    let catalog = session.view().catalog();
    let cascade = t.cascade == Some(ast::CascadeOption::Cascade);
    // Tables whose rows reference a truncated one are truncated too (CASCADE), or refused.
    let mut i = 0;
    while i < targets.len() {
        for (child, fk) in super::constraints::referencing_keys(&catalog, &targets[i]) {
            if targets.iter().any(|d| d.id == child.id) {
                continue;
            }
            if !cascade {
                return Err(Error::user(
                    sqlstate::FEATURE_NOT_SUPPORTED,
                    "cannot truncate a table referenced in a foreign key constraint",
                )
                .with_detail(format!(
                    "Table \"{}\" references \"{}\".",
                    child.name, targets[i].name
                ))
                .with_hint(format!(
                    "Truncate table \"{}\" at the same time, or use TRUNCATE ... CASCADE.",
                    child.name
                )));
            }
            let _ = fk;
            targets.push(child);
        }
        i += 1;
    }
    let mut txn = session.txn().lock();
    for def in &targets {
        let prefix = def.key_prefix();
        let end = prefix_end(&prefix);
        txn.truncate(def.id, prefix, end);
        for index in &def.indexes {
            let prefix = crate::keys::table_prefix(index.id);
            let end = prefix_end(&prefix);
            txn.truncate(index.id, prefix, end);
        }
    }
    std::mem::drop(txn);
    if t.identity == Some(ast::TruncateIdentityOption::Restart) {
        let kv = session.engine().kv().clone();
        for def in &targets {
            for c in &def.columns {
                if let Some(seq) = super::sequences::owned_sequence(&catalog, def, &c.name)
                    && let Some(info) = seq.sequence()
                {
                    session
                        .engine()
                        .sequences
                        .set(kv.as_ref(), &seq, info.start, false)?;
                }
            }
        }
    }
    Ok(CommandTag::new("TRUNCATE TABLE"))
}

fn value_text(e: &SqlExpr) -> String {
    match e {
        SqlExpr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::DoubleQuotedString(s) => s.clone(),
            ast::Value::EscapedStringLiteral(s) => s.clone(),
            other => other.to_string(),
        },
        SqlExpr::Identifier(i) => i.value.clone(),
        other => other.to_string(),
    }
}

fn set_statement(session: &Session, set: &ast::Set) -> Result<CommandTag> {
    match set {
        ast::Set::SingleAssignment {
            variable, values, ..
        } => {
            let name = variable.to_string();
            let is_default = values.len() == 1
                && matches!(&values[0], SqlExpr::Identifier(i) if i.value.eq_ignore_ascii_case("default"));
            if is_default {
                session.info().settings.write().reset(&name);
                session.sync_default_schema();
            } else {
                let value = values.iter().map(value_text).collect::<Vec<_>>().join(", ");
                session.set_setting(&name, value);
            }
        }
        ast::Set::SetTimeZone { value, .. } => session.set_setting("TimeZone", value_text(value)),
        ast::Set::SetNames { charset_name, .. } => {
            session.set_setting("client_encoding", charset_name.value.clone())
        }
        ast::Set::SetTransaction { .. }
        | ast::Set::SetSessionParam(_)
        | ast::Set::SetRole { .. } => {}
        ast::Set::SetSessionAuthorization(_) => {}
        ast::Set::MultipleAssignments { assignments } => {
            for a in assignments {
                session.set_setting(&a.name.to_string(), value_text(&a.value));
            }
        }
        other => return Err(Error::not_supported(other.to_string())),
    }
    Ok(CommandTag::new("SET"))
}

fn show_name(variable: &[Ident]) -> String {
    let words: Vec<String> = variable.iter().map(|i| i.value.to_lowercase()).collect();
    match words.join(" ").as_str() {
        "transaction isolation level" => "transaction_isolation".into(),
        "time zone" => "timezone".into(),
        other => other.to_string(),
    }
}

fn show(session: &Session, variable: &[Ident]) -> Result<QueryOutput> {
    let name = show_name(variable);
    let settings = session.settings();
    if name == "all" {
        let schema = result_schema(
            &Statement::ShowVariable {
                variable: variable.to_vec(),
            },
            &settings,
        )
        .ok_or_else(|| Error::internal("SHOW ALL schema"))?;
        let (names, values): (Vec<String>, Vec<String>) = settings
            .all()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .unzip();
        let descriptions = vec![String::new(); names.len()];
        use datafusion::arrow::array::StringArray;
        let batch = datafusion::arrow::array::RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(names)),
                Arc::new(StringArray::from(values)),
                Arc::new(StringArray::from(descriptions)),
            ],
        )?;
        return super::session::rows(schema, vec![batch]);
    }
    let value = settings.get(&name).map(str::to_string).ok_or_else(|| {
        Error::user(
            sqlstate::UNDEFINED_OBJECT,
            format!("unrecognized configuration parameter \"{name}\""),
        )
    })?;
    text_rows(&settings.display_name(&name), vec![value])
}

//! Sequences: CREATE / ALTER / DROP SEQUENCE, SERIAL and identity columns, and the functions
//! `nextval`, `currval`, `setval`, `lastval` and `pg_get_serial_sequence`.
//!
//! A sequence is a catalog relation ([`TableKind::Sequence`]) whose one stored row,
//! `(last_value, log_cnt, is_called)`, is its state. As in PostgreSQL, `nextval` is not
//! transactional: a value handed out is never handed out again, even when the transaction
//! that took it rolls back. Values are logged ahead in blocks: the stored row says how far
//! values may have been handed out, written (synced) before any value beyond the previous
//! block is returned, so a crash skips at most one block and never repeats a value.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, Int64Builder, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Int64Type};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, ObjectName, SequenceOptions, Statement,
};
use parking_lot::Mutex;

use super::catalog_provider::SessionView;
use super::ddl::{ident, name_parts};
use super::functions::SessionInfo;
use super::session::{CommandTag, Session};
use crate::catalog::{Catalog, ColumnDef, Relation, SequenceInfo, TableDef, TableKind};
use crate::codec::{ColumnRef, row};
use crate::error::{Error, Result, sqlstate};
use crate::storage::{KvStore, WriteOp};
use crate::types::SqlType;

/// Values logged ahead per write (PostgreSQL logs 32).
const LOG_AHEAD: i64 = 32;

/// The engine's view of every sequence's current value.
#[derive(Default)]
pub struct Sequences {
    state: Mutex<HashMap<u32, SeqState>>,
}

#[derive(Debug, Clone, Copy)]
struct SeqState {
    last: i64,
    is_called: bool,
    /// Values after `last` that the stored row already covers.
    logged_ahead: i64,
}

/// The columns of a sequence relation.
pub fn sequence_columns() -> Vec<ColumnDef> {
    vec![
        ColumnDef::new("last_value", SqlType::Int8, false),
        ColumnDef::new("log_cnt", SqlType::Int8, false),
        ColumnDef::new("is_called", SqlType::Bool, false),
    ]
}

fn row_key(def: &TableDef) -> Vec<u8> {
    let mut k = def.key_prefix();
    k.extend_from_slice(&1u64.to_be_bytes());
    k
}

fn encode_state(last: i64, log_cnt: i64, is_called: bool) -> Result<Vec<u8>> {
    let arrays: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![last])),
        Arc::new(Int64Array::from(vec![log_cnt])),
        Arc::new(BooleanArray::from(vec![is_called])),
    ];
    let types = [SqlType::Int8, SqlType::Int8, SqlType::Bool];
    let cols = arrays
        .iter()
        .zip(&types)
        .map(|(a, t)| ColumnRef::new(a, t))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(24);
    row::encode_row(&cols, 0, &mut out);
    Ok(out)
}

fn decode_state(bytes: &[u8]) -> Result<(i64, bool)> {
    let mut decoder = row::RowDecoder::new(&[SqlType::Int8, SqlType::Int8, SqlType::Bool], None, 1);
    decoder.append(bytes)?;
    let arrays = decoder.finish()?;
    let last = arrays[0].as_primitive::<Int64Type>().value(0);
    let called = arrays[2].as_boolean().value(0);
    Ok((last, called))
}

/// The stored row of a new sequence (or one restarted at `value`).
pub fn initial_row(def: &TableDef, value: i64) -> Result<WriteOp> {
    Ok(WriteOp::Put(row_key(def), encode_state(value, 0, false)?))
}

fn out_of_range(what: &str, name: &str, limit: i64) -> Error {
    Error::user(
        "2200H",
        format!("nextval: reached {what} value of sequence \"{name}\" ({limit})"),
    )
}

/// The value after `v`, wrapping around when the sequence cycles.
fn step(info: &SequenceInfo, name: &str, v: i64) -> Result<i64> {
    let next = v.checked_add(info.increment);
    match next {
        Some(n) if n >= info.min && n <= info.max => Ok(n),
        _ if info.cycle => Ok(if info.increment > 0 {
            info.min
        } else {
            info.max
        }),
        _ if info.increment > 0 => Err(out_of_range("maximum", name, info.max)),
        _ => Err(out_of_range("minimum", name, info.min)),
    }
}

impl Sequences {
    fn load(&self, kv: &dyn KvStore, def: &TableDef) -> Result<SeqState> {
        let info = def
            .sequence()
            .ok_or_else(|| Error::internal("not a sequence"))?;
        let (last, is_called) = match kv.get(&row_key(def))? {
            Some(bytes) => decode_state(&bytes)?,
            None => (info.start, false),
        };
        Ok(SeqState {
            last,
            is_called,
            logged_ahead: 0,
        })
    }

    /// `n` next values of the sequence, in order.
    pub fn next_values(&self, kv: &dyn KvStore, def: &TableDef, n: usize) -> Result<Vec<i64>> {
        let info = def
            .sequence()
            .ok_or_else(|| Error::internal("not a sequence"))?;
        let mut all = self.state.lock();
        let st = match all.get_mut(&def.id) {
            Some(st) => st,
            None => {
                let loaded = self.load(kv, def)?;
                all.entry(def.id).or_insert(loaded)
            }
        };
        let mut out = Vec::with_capacity(n);
        let mut current = *st;
        for _ in 0..n {
            let next = if current.is_called {
                step(info, &def.name, current.last)?
            } else {
                current.last
            };
            current.last = next;
            current.is_called = true;
            out.push(next);
        }
        let taken = n as i64;
        if st.logged_ahead < taken {
            // Log a block ahead of the last value handed out, before handing any out.
            let ahead = LOG_AHEAD.max(info.cache);
            let mut logged = current.last;
            let mut covered = 0;
            while covered < ahead {
                match step(info, &def.name, logged) {
                    Ok(v) => logged = v,
                    Err(_) => break,
                }
                covered += 1;
            }
            kv.write(
                vec![WriteOp::Put(row_key(def), encode_state(logged, 0, true)?)],
                true,
            )?;
            current.logged_ahead = covered;
        } else {
            current.logged_ahead = st.logged_ahead - taken;
        }
        *st = current;
        Ok(out)
    }

    /// `setval`: the sequence continues after `value` (or at it, when `is_called` is false).
    pub fn set(&self, kv: &dyn KvStore, def: &TableDef, value: i64, is_called: bool) -> Result<()> {
        let info = def
            .sequence()
            .ok_or_else(|| Error::internal("not a sequence"))?;
        if value < info.min || value > info.max {
            return Err(Error::user(
                sqlstate::NUMERIC_VALUE_OUT_OF_RANGE,
                format!(
                    "setval: value {value} is out of bounds for sequence \"{}\" ({}..{})",
                    def.name, info.min, info.max
                ),
            ));
        }
        let mut all = self.state.lock();
        kv.write(
            vec![WriteOp::Put(
                row_key(def),
                encode_state(value, 0, is_called)?,
            )],
            true,
        )?;
        all.insert(
            def.id,
            SeqState {
                last: value,
                is_called,
                logged_ahead: 0,
            },
        );
        Ok(())
    }

    /// The sequence's row as `SELECT * FROM seq` shows it: the last value handed out, how
    /// many values are logged ahead of it, and whether it was handed out.
    pub fn state_row(
        &self,
        kv: &dyn KvStore,
        def: &TableDef,
    ) -> Result<datafusion::arrow::array::RecordBatch> {
        let st = match self.state.lock().get(&def.id) {
            Some(st) => *st,
            None => self.load(kv, def)?,
        };
        let arrays: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(vec![st.last])),
            Arc::new(Int64Array::from(vec![st.logged_ahead])),
            Arc::new(BooleanArray::from(vec![st.is_called])),
        ];
        Ok(datafusion::arrow::array::RecordBatch::try_new(
            def.arrow_schema(),
            arrays,
        )?)
    }

    /// Before ALTER SEQUENCE changes how values step: stores the exact last value, so the
    /// values logged ahead under the old parameters are not skipped or misread.
    pub fn settle(&self, kv: &dyn KvStore, def: &TableDef) -> Result<()> {
        let mut all = self.state.lock();
        if let Some(st) = all.get_mut(&def.id) {
            kv.write(
                vec![WriteOp::Put(
                    row_key(def),
                    encode_state(st.last, 0, st.is_called)?,
                )],
                true,
            )?;
            st.logged_ahead = 0;
        }
        Ok(())
    }

    /// Forgets a sequence's cached state (it is read again from its stored row).
    pub fn forget(&self, id: u32) {
        self.state.lock().remove(&id);
    }
}

/// Bounds of a sequence's type.
fn type_bounds(ty: &SqlType) -> (i64, i64) {
    match ty {
        SqlType::Int2 => (i16::MIN as i64, i16::MAX as i64),
        SqlType::Int4 => (i32::MIN as i64, i32::MAX as i64),
        _ => (i64::MIN, i64::MAX),
    }
}

fn integer(e: &SqlExpr) -> Result<i64> {
    let text = e.to_string();
    text.replace(' ', "").parse::<i64>().map_err(|_| {
        Error::user(
            sqlstate::SYNTAX_ERROR,
            format!("a sequence option takes an integer, not {text}"),
        )
    })
}

/// Options of CREATE / ALTER SEQUENCE as given (`None`: not mentioned).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SequenceOptionsGiven {
    pub ty: Option<SqlType>,
    pub increment: Option<i64>,
    pub min: Option<Option<i64>>,
    pub max: Option<Option<i64>>,
    pub start: Option<i64>,
    pub cache: Option<i64>,
    pub cycle: Option<bool>,
}

impl SequenceOptionsGiven {
    pub fn from_ast(
        data_type: Option<&ast::DataType>,
        options: &[SequenceOptions],
    ) -> Result<Self> {
        let mut given = SequenceOptionsGiven {
            ty: data_type.map(SqlType::from_ast).transpose()?,
            ..Default::default()
        };
        if let Some(ty) = &given.ty
            && !matches!(ty, SqlType::Int2 | SqlType::Int4 | SqlType::Int8)
        {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                "sequence type must be smallint, integer, or bigint",
            ));
        }
        for o in options {
            match o {
                SequenceOptions::IncrementBy(e, _) => given.increment = Some(integer(e)?),
                SequenceOptions::MinValue(e) => {
                    given.min = Some(e.as_ref().map(integer).transpose()?)
                }
                SequenceOptions::MaxValue(e) => {
                    given.max = Some(e.as_ref().map(integer).transpose()?)
                }
                SequenceOptions::StartWith(e, _) => given.start = Some(integer(e)?),
                SequenceOptions::Cache(e) => given.cache = Some(integer(e)?),
                SequenceOptions::Cycle(c) => given.cycle = Some(!*c),
            }
        }
        Ok(given)
    }

    /// The sequence's parameters: `base`'s (ALTER) or the defaults, changed as given.
    pub fn apply(&self, base: Option<&SequenceInfo>) -> Result<SequenceInfo> {
        let ty = self
            .ty
            .clone()
            .or_else(|| base.map(|b| b.ty.clone()))
            .unwrap_or(SqlType::Int8);
        let increment = self.increment.or(base.map(|b| b.increment)).unwrap_or(1);
        if increment == 0 {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                "INCREMENT must not be zero",
            ));
        }
        let (type_min, type_max) = type_bounds(&ty);
        let type_changed = self.ty.is_some();
        let default_min = if increment > 0 { 1 } else { type_min };
        let default_max = if increment > 0 { type_max } else { -1 };
        let min = match self.min {
            Some(Some(v)) => v,
            Some(None) => default_min,
            None => base
                .filter(|_| !type_changed)
                .map_or(default_min, |b| b.min),
        };
        let max = match self.max {
            Some(Some(v)) => v,
            Some(None) => default_max,
            None => base
                .filter(|_| !type_changed)
                .map_or(default_max, |b| b.max),
        };
        if min < type_min || max > type_max {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("MINVALUE ({min}) and MAXVALUE ({max}) must fit in the sequence's type"),
            ));
        }
        if min >= max {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("MINVALUE ({min}) must be less than MAXVALUE ({max})"),
            ));
        }
        let start = self
            .start
            .or(base.map(|b| b.start))
            .unwrap_or(if increment > 0 { min } else { max });
        if start < min {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("START value ({start}) cannot be less than MINVALUE ({min})"),
            ));
        }
        if start > max {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("START value ({start}) cannot be greater than MAXVALUE ({max})"),
            ));
        }
        let cache = self.cache.or(base.map(|b| b.cache)).unwrap_or(1);
        if cache < 1 {
            return Err(Error::user(
                sqlstate::INVALID_PARAMETER_VALUE,
                format!("CACHE ({cache}) must be greater than zero"),
            ));
        }
        Ok(SequenceInfo {
            ty,
            start,
            increment,
            min,
            max,
            cache,
            cycle: self.cycle.or(base.map(|b| b.cycle)).unwrap_or(false),
            owned_by: base.and_then(|b| b.owned_by.clone()),
        })
    }
}

/// Creates a sequence in the transaction's catalog; returns it and the writes that persist it.
pub fn create_in(
    catalog: &mut Catalog,
    schema: &str,
    name: &str,
    info: SequenceInfo,
) -> Result<(Arc<TableDef>, Vec<WriteOp>)> {
    let start = info.start;
    let (def, mut ops) = catalog.create_relation(
        schema,
        name,
        sequence_columns(),
        Vec::new(),
        TableKind::Sequence(info),
    )?;
    ops.push(initial_row(&def, start)?);
    Ok((def, ops))
}

/// A free name for a column's sequence: `<table>_<column>_seq`, or with a number appended
/// when that is taken, as PostgreSQL chooses it.
pub fn serial_sequence_name(catalog: &Catalog, schema: &str, table: &str, column: &str) -> String {
    let base = format!("{table}_{column}_seq");
    if catalog.relation(schema, &base).is_none() {
        return base;
    }
    (1..)
        .map(|i| format!("{base}{i}"))
        .find(|n| catalog.relation(schema, n).is_none())
        .expect("some numbered name is free")
}

/// The `nextval(...)` default of a SERIAL column.
pub fn nextval_default(schema: &str, sequence: &str) -> String {
    let name = if schema == crate::catalog::DEFAULT_SCHEMA {
        super::pg_catalog::quote_ident(sequence)
    } else {
        format!(
            "{}.{}",
            super::pg_catalog::quote_ident(schema),
            super::pg_catalog::quote_ident(sequence)
        )
    };
    format!("nextval('{}'::regclass)", name.replace('\'', "''"))
}

/// A DEFAULT expression's text with `'name'::regclass` casts of literals taken off, for
/// planning outside a statement (where the catalog lookup they stand for is not rewritten):
/// the sequence functions take the name as text too.
pub fn plain_regclass_literals(sql: &str) -> String {
    use datafusion::sql::sqlparser::ast::{Value, VisitMut, VisitorMut};
    use std::ops::ControlFlow;
    if !sql.to_ascii_lowercase().contains("regclass") {
        return sql.to_string();
    }
    let Ok(mut expr) = super::ddl::parse_sql_expr(sql) else {
        return sql.to_string();
    };
    struct Strip;
    impl VisitorMut for Strip {
        type Break = ();
        fn post_visit_expr(&mut self, e: &mut SqlExpr) -> ControlFlow<()> {
            if let SqlExpr::Cast {
                expr, data_type, ..
            } = e
                && data_type.to_string().eq_ignore_ascii_case("regclass")
                && matches!(expr.as_ref(), SqlExpr::Value(v) if matches!(v.value, Value::SingleQuotedString(_)))
            {
                *e = (**expr).clone();
            }
            ControlFlow::Continue(())
        }
    }
    let _ = expr.visit(&mut Strip);
    expr.to_string()
}

/// The sequence an identity or SERIAL column of `table` draws from.
pub fn owned_sequence(catalog: &Catalog, table: &TableDef, column: &str) -> Option<Arc<TableDef>> {
    catalog
        .tables()
        .find(|t| {
            t.sequence().is_some_and(|s| {
                s.owned_by
                    .as_ref()
                    .is_some_and(|(id, c)| *id == table.id && c == column)
            })
        })
        .cloned()
}

pub fn create(
    session: &Session,
    name: &ObjectName,
    if_not_exists: bool,
    data_type: Option<&ast::DataType>,
    options: &[SequenceOptions],
    owned_by: Option<&ObjectName>,
) -> Result<CommandTag> {
    let (schema, object) = session.qualify(name)?;
    if session
        .view()
        .catalog()
        .relation(&schema, &object)
        .is_some()
        && if_not_exists
    {
        return Ok(CommandTag::new("CREATE SEQUENCE"));
    }
    let mut info = SequenceOptionsGiven::from_ast(data_type, options)?.apply(None)?;
    if let Some(owner) = owned_by {
        info.owned_by = resolve_owner(session, owner, &schema)?;
    }
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let (_, ops) = create_in(txn.catalog_mut(&current), &schema, &object, info)?;
    txn.push_ops(ops);
    Ok(CommandTag::new("CREATE SEQUENCE"))
}

/// `OWNED BY table.column | NONE`.
fn resolve_owner(
    session: &Session,
    owner: &ObjectName,
    sequence_schema: &str,
) -> Result<Option<(u32, String)>> {
    let mut parts = name_parts(owner);
    if parts.len() == 1 && parts[0] == "none" {
        return Ok(None);
    }
    let column = parts.pop().ok_or_else(|| Error::internal("empty name"))?;
    if parts.is_empty() {
        return Err(
            Error::user(sqlstate::INVALID_PARAMETER_VALUE, "invalid OWNED BY option")
                .with_hint("Specify OWNED BY table.column or OWNED BY NONE."),
        );
    }
    let table_name = ObjectName::from(parts.into_iter().map(ast::Ident::new).collect::<Vec<_>>());
    let Some((schema, table, Relation::Table(def))) = session.resolve(&table_name)? else {
        return Err(Error::undefined_table(table_name.to_string()));
    };
    if schema != sequence_schema {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "sequence must be in same schema as table it is linked to",
        ));
    }
    if def.column_index(&column).is_none() {
        return Err(Error::user(
            sqlstate::UNDEFINED_COLUMN,
            format!("column \"{column}\" of relation \"{table}\" does not exist"),
        ));
    }
    Ok(Some((def.id, column)))
}

/// `ALTER SEQUENCE [IF EXISTS] name option ...` (see [`AlterSequence`]).
pub fn alter(session: &Session, alter: &AlterSequence) -> Result<CommandTag> {
    let Some((schema, _, Relation::Table(def))) = session.resolve(&alter.name)? else {
        if alter.if_exists {
            return Ok(CommandTag::new("ALTER SEQUENCE"));
        }
        return Err(Error::undefined_table(alter.name.to_string()));
    };
    let Some(base) = def.sequence() else {
        return Err(not_a_sequence(&def.name));
    };
    let mut info = alter.options.apply(Some(base))?;
    if let Some(owner) = &alter.owned_by {
        info.owned_by = resolve_owner(session, owner, &schema)?;
    }
    let mut new = (*def).clone();
    new.kind = TableKind::Sequence(info.clone());
    if let Some(to) = &alter.rename {
        new.name = ident(to);
    }
    let restart = alter.restart.map(|r| r.unwrap_or(info.start));
    if let Some(value) = restart
        && (value < info.min || value > info.max)
    {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            format!(
                "RESTART value ({value}) cannot be outside MINVALUE ({}) and MAXVALUE ({})",
                info.min, info.max
            ),
        ));
    }
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let ops = txn.catalog_mut(&current).replace_table(&def, new.clone())?;
    txn.push_ops(ops);
    drop(txn);
    // Like nextval, the sequence's position changes at once, not at commit.
    let (engine, kv) = (session.engine(), session.engine().kv().clone());
    match restart {
        Some(value) => {
            engine.sequences.forget(def.id);
            kv.write(vec![initial_row(&new, value)?], true)?;
        }
        None => engine.sequences.settle(kv.as_ref(), &def)?,
    }
    engine.sequences.forget(def.id);
    Ok(CommandTag::new("ALTER SEQUENCE"))
}

fn not_a_sequence(name: &str) -> Error {
    Error::user(
        sqlstate::WRONG_OBJECT_TYPE,
        format!("\"{name}\" is not a sequence"),
    )
}

/// `ALTER SEQUENCE`, which sqlparser does not parse.
#[derive(Debug, Clone, PartialEq)]
pub struct AlterSequence {
    pub name: ObjectName,
    pub if_exists: bool,
    pub options: SequenceOptionsGiven,
    /// `RESTART [WITH n]`.
    pub restart: Option<Option<i64>>,
    pub owned_by: Option<ObjectName>,
    pub rename: Option<ast::Ident>,
}

impl std::fmt::Display for AlterSequence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ALTER SEQUENCE {}", self.name)
    }
}

type Parser<'a> = datafusion::sql::sqlparser::parser::Parser<'a>;
type ParserError = datafusion::sql::sqlparser::parser::ParserError;

/// The clauses of CREATE / ALTER SEQUENCE, in any order (sqlparser wants a fixed one).
#[derive(Default)]
struct Clauses {
    data_type: Option<ast::DataType>,
    options: Vec<SequenceOptions>,
    restart: Option<Option<i64>>,
    owned_by: Option<ObjectName>,
    rename: Option<ast::Ident>,
}

fn parse_clauses(
    parser: &mut Parser<'_>,
    alter: bool,
) -> std::result::Result<Clauses, ParserError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let mut c = Clauses::default();
    let number = |parser: &mut Parser<'_>| -> std::result::Result<SqlExpr, ParserError> {
        let negative = parser.consume_token(&Token::Minus);
        let n = parser.parse_number_value()?;
        let text = format!("{}{}", if negative { "-" } else { "" }, n.value);
        Ok(SqlExpr::value(ast::Value::Number(text, false)))
    };
    loop {
        if parser.parse_keyword(Keyword::AS) {
            c.data_type = Some(parser.parse_data_type()?);
        } else if parser.parse_keyword(Keyword::INCREMENT) {
            let by = parser.parse_keyword(Keyword::BY);
            c.options
                .push(SequenceOptions::IncrementBy(number(parser)?, by));
        } else if parser.parse_keyword(Keyword::MINVALUE) {
            c.options
                .push(SequenceOptions::MinValue(Some(number(parser)?)));
        } else if parser.parse_keyword(Keyword::MAXVALUE) {
            c.options
                .push(SequenceOptions::MaxValue(Some(number(parser)?)));
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::MINVALUE]) {
            c.options.push(SequenceOptions::MinValue(None));
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::MAXVALUE]) {
            c.options.push(SequenceOptions::MaxValue(None));
        } else if parser.parse_keywords(&[Keyword::NO, Keyword::CYCLE]) {
            c.options.push(SequenceOptions::Cycle(true));
        } else if parser.parse_keyword(Keyword::CYCLE) {
            c.options.push(SequenceOptions::Cycle(false));
        } else if parser.parse_keyword(Keyword::START) {
            let with = parser.parse_keyword(Keyword::WITH);
            c.options
                .push(SequenceOptions::StartWith(number(parser)?, with));
        } else if parser.parse_keyword(Keyword::CACHE) {
            c.options.push(SequenceOptions::Cache(number(parser)?));
        } else if parser.parse_keywords(&[Keyword::OWNED, Keyword::BY]) {
            c.owned_by = Some(parser.parse_object_name(false)?);
        } else if alter && parser.parse_keyword(Keyword::RESTART) {
            let with = parser.parse_keyword(Keyword::WITH);
            let value = match parser.peek_token().token {
                Token::Number(..) | Token::Minus => Some(number(parser)?),
                _ if with => Some(number(parser)?),
                _ => None,
            };
            c.restart = Some(
                value
                    .map(|v| integer(&v))
                    .transpose()
                    .map_err(|e| ParserError::ParserError(e.to_string()))?,
            );
        } else if alter && parser.parse_keywords(&[Keyword::RENAME, Keyword::TO]) {
            c.rename = Some(parser.parse_identifier()?);
        } else {
            break;
        }
    }
    Ok(c)
}

/// Parses `CREATE [TEMP] SEQUENCE ...` when the next tokens start it.
pub fn parse_create(
    parser: &mut Parser<'_>,
) -> std::result::Result<Option<Statement>, ParserError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::Token;
    let word = |n: usize| match parser.peek_nth_token(n).token {
        Token::Word(w) => Some(w.keyword),
        _ => None,
    };
    if word(0) != Some(Keyword::CREATE) {
        return Ok(None);
    }
    let temporary = matches!(word(1), Some(Keyword::TEMP | Keyword::TEMPORARY));
    let at = if temporary { 2 } else { 1 };
    if word(at) != Some(Keyword::SEQUENCE) {
        return Ok(None);
    }
    for _ in 0..=at {
        parser.next_token();
    }
    let if_not_exists = parser.parse_keywords(&[Keyword::IF, Keyword::NOT, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let c = parse_clauses(parser, false)?;
    Ok(Some(Statement::CreateSequence {
        temporary,
        if_not_exists,
        name,
        data_type: c.data_type,
        sequence_options: c.options,
        owned_by: c.owned_by,
    }))
}

/// Parses `ALTER SEQUENCE` after those two words.
pub fn parse_alter(parser: &mut Parser<'_>) -> std::result::Result<AlterSequence, ParserError> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    let if_exists = parser.parse_keywords(&[Keyword::IF, Keyword::EXISTS]);
    let name = parser.parse_object_name(false)?;
    let c = parse_clauses(parser, true)?;
    let options = SequenceOptionsGiven::from_ast(c.data_type.as_ref(), &c.options)
        .map_err(|e| ParserError::ParserError(e.to_string()))?;
    Ok(AlterSequence {
        name,
        if_exists,
        options,
        restart: c.restart,
        owned_by: c.owned_by,
        rename: c.rename,
    })
}

/// The SQL with the options of each `AS IDENTITY ( ... )` put in the order sqlparser reads
/// (PostgreSQL takes them in any order); `None` when there is nothing to reorder.
pub fn order_identity_options(sql: &str) -> Option<String> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    if !sql.to_ascii_lowercase().contains("identity") {
        return None;
    }
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize()
        .ok()?;
    let is_kw = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    let rank = |t: &Token, next: Option<&Token>| -> Option<u8> {
        let Token::Word(w) = t else { return None };
        Some(match w.keyword {
            Keyword::INCREMENT => 0,
            Keyword::MINVALUE => 1,
            Keyword::MAXVALUE => 2,
            Keyword::NO => match next {
                Some(Token::Word(n)) if n.keyword == Keyword::MINVALUE => 1,
                Some(Token::Word(n)) if n.keyword == Keyword::MAXVALUE => 2,
                _ => 5,
            },
            Keyword::START => 3,
            Keyword::CACHE => 4,
            Keyword::CYCLE => 5,
            _ => return None,
        })
    };
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut changed = false;
    let mut i = 0;
    while i < tokens.len() {
        out.push(tokens[i].clone());
        let significant_before = out
            .iter()
            .rev()
            .filter(|t| !matches!(t, Token::Whitespace(_)))
            .nth(1);
        let opens = tokens[i] == Token::LParen
            && significant_before.is_some_and(|t| is_kw(t, Keyword::IDENTITY));
        i += 1;
        if !opens {
            continue;
        }
        let close = tokens[i..].iter().position(|t| *t == Token::RParen)?;
        let inner = &tokens[i..i + close];
        // Groups of tokens, each starting at an option keyword.
        let mut groups: Vec<(u8, Vec<Token>)> = Vec::new();
        let significant: Vec<usize> = (0..inner.len())
            .filter(|&k| !matches!(inner[k], Token::Whitespace(_)))
            .collect();
        for (n, &k) in significant.iter().enumerate() {
            let next = significant.get(n + 1).map(|&j| &inner[j]);
            let prev_is_no = n > 0 && is_kw(&inner[significant[n - 1]], Keyword::NO);
            match rank(&inner[k], next) {
                Some(r) if !prev_is_no => groups.push((r, vec![inner[k].clone()])),
                _ => match groups.last_mut() {
                    Some((_, g)) => g.push(inner[k].clone()),
                    None => return None,
                },
            }
        }
        let mut sorted = groups.clone();
        sorted.sort_by_key(|(r, _)| *r);
        if sorted
            .iter()
            .map(|(r, _)| r)
            .ne(groups.iter().map(|(r, _)| r))
        {
            changed = true;
        }
        for (_, g) in sorted {
            for t in g {
                out.push(Token::Whitespace(
                    datafusion::sql::sqlparser::tokenizer::Whitespace::Space,
                ));
                out.push(t);
            }
        }
        i += close;
    }
    changed.then(|| out.iter().map(|t| t.to_string()).collect())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Nextval,
    Currval,
    Setval,
    Lastval,
    SerialSequence,
}

/// The session's sequence functions, with the values `currval` and `lastval` report.
struct SeqFn {
    kind: Kind,
    name: &'static str,
    signature: Signature,
    view: Weak<SessionView>,
    info: Arc<SessionInfo>,
    seen: Arc<Mutex<SessionValues>>,
}

#[derive(Default)]
struct SessionValues {
    current: HashMap<u32, i64>,
    last: Option<(u32, i64)>,
}

impl std::fmt::Debug for SeqFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for SeqFn {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.seen, &other.seen)
    }
}
impl Eq for SeqFn {}
impl std::hash::Hash for SeqFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state)
    }
}

pub fn register(ctx: &SessionContext, view: &Arc<SessionView>, info: Arc<SessionInfo>) {
    let seen = Arc::new(Mutex::new(SessionValues::default()));
    let any = |n| Signature::any(n, Volatility::Volatile);
    let fns = [
        (Kind::Nextval, "nextval", any(1)),
        (Kind::Currval, "currval", any(1)),
        (
            Kind::Setval,
            "setval",
            Signature::one_of(
                vec![
                    datafusion::logical_expr::TypeSignature::Any(2),
                    datafusion::logical_expr::TypeSignature::Any(3),
                ],
                Volatility::Volatile,
            ),
        ),
        (
            Kind::Lastval,
            "lastval",
            Signature::nullary(Volatility::Volatile),
        ),
        (Kind::SerialSequence, "pg_get_serial_sequence", any(2)),
    ];
    for (kind, name, signature) in fns {
        ctx.register_udf(ScalarUDF::new_from_impl(SeqFn {
            kind,
            name,
            signature,
            view: Arc::downgrade(view),
            info: info.clone(),
            seen: seen.clone(),
        }));
    }
}

fn to_df(e: Error) -> DataFusionError {
    crate::error::to_df(e)
}

/// One argument's value at `row` as text or as an OID.
enum NameArg {
    Text(String),
    Oid(i64),
}

fn name_arg(value: &ColumnarValue, row: usize) -> DfResult<Option<NameArg>> {
    let scalar = match value {
        ColumnarValue::Scalar(s) => s.clone(),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row)?,
    };
    if scalar.is_null() {
        return Ok(None);
    }
    Ok(Some(match scalar {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => NameArg::Text(s),
        other => NameArg::Oid(
            other
                .cast_to(&DataType::Int64)
                .ok()
                .and_then(|v| match v {
                    ScalarValue::Int64(Some(v)) => Some(v),
                    _ => None,
                })
                .ok_or_else(|| {
                    to_df(Error::user(
                        sqlstate::UNDEFINED_FUNCTION,
                        format!("a sequence is named by text or regclass, not {other}"),
                    ))
                })?,
        ),
    }))
}

fn int_arg(value: &ColumnarValue, row: usize) -> DfResult<Option<i64>> {
    let scalar = match value {
        ColumnarValue::Scalar(s) => s.clone(),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row)?,
    };
    if scalar.is_null() {
        return Ok(None);
    }
    match scalar.cast_to(&DataType::Int64)? {
        ScalarValue::Int64(v) => Ok(v),
        _ => Ok(None),
    }
}

impl SeqFn {
    fn view(&self) -> DfResult<Arc<SessionView>> {
        self.view
            .upgrade()
            .ok_or_else(|| DataFusionError::Internal("session closed".into()))
    }

    /// A relation named by text (`'users_id_seq'`, `'public."My Seq"'`) or by OID.
    fn relation(&self, catalog: &Catalog, arg: &NameArg) -> Result<Arc<TableDef>> {
        match arg {
            NameArg::Oid(oid) => super::pg_catalog::table_id_of_oid(*oid)
                .and_then(|id| catalog.table_by_id(id))
                .ok_or_else(|| {
                    Error::user(
                        sqlstate::UNDEFINED_TABLE,
                        format!("could not open relation with OID {oid}"),
                    )
                }),
            NameArg::Text(text) if text.parse::<i64>().is_ok() => {
                self.relation(catalog, &NameArg::Oid(text.parse().expect("checked")))
            }
            NameArg::Text(text) => {
                let name = parse_name(text)?;
                let mut parts = name_parts(&name);
                let object = parts.pop().unwrap_or_default();
                let schemas = match parts.pop() {
                    Some(s) => vec![s],
                    None => self.info.settings.read().search_path(&self.info.user),
                };
                schemas
                    .iter()
                    .find_map(|s| catalog.table(s, &object))
                    .ok_or_else(|| Error::undefined_table(object))
            }
        }
    }

    fn sequence(&self, catalog: &Catalog, arg: &NameArg) -> Result<Arc<TableDef>> {
        let def = self.relation(catalog, arg)?;
        if def.sequence().is_none() {
            return Err(not_a_sequence(&def.name));
        }
        Ok(def)
    }

    fn nextval(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let view = self.view()?;
        let catalog = view.catalog();
        let kv = view.engine.kv().clone();
        let n = args.number_rows;
        if let ColumnarValue::Scalar(_) = &args.args[0] {
            let Some(arg) = name_arg(&args.args[0], 0)? else {
                return Ok(ColumnarValue::Scalar(ScalarValue::Int64(None)));
            };
            let def = self.sequence(&catalog, &arg).map_err(to_df)?;
            let values = view
                .engine
                .sequences
                .next_values(kv.as_ref(), &def, n.max(1))
                .map_err(to_df)?;
            self.saw(def.id, *values.last().expect("at least one value"));
            return Ok(if n == 0 {
                ColumnarValue::Scalar(ScalarValue::Int64(values.first().copied()))
            } else {
                ColumnarValue::Array(Arc::new(Int64Array::from(values)))
            });
        }
        let mut out = Int64Builder::with_capacity(n);
        for row in 0..n {
            match name_arg(&args.args[0], row)? {
                None => out.append_null(),
                Some(arg) => {
                    let def = self.sequence(&catalog, &arg).map_err(to_df)?;
                    let v = view
                        .engine
                        .sequences
                        .next_values(kv.as_ref(), &def, 1)
                        .map_err(to_df)?[0];
                    self.saw(def.id, v);
                    out.append_value(v);
                }
            }
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }

    fn saw(&self, id: u32, value: i64) {
        let mut seen = self.seen.lock();
        seen.current.insert(id, value);
        seen.last = Some((id, value));
    }

    fn per_row(
        &self,
        args: &ScalarFunctionArgs,
        f: impl Fn(&Catalog, usize) -> Result<Option<i64>>,
    ) -> DfResult<ColumnarValue> {
        let view = self.view()?;
        let catalog = view.catalog();
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if scalar {
            let v = f(&catalog, 0).map_err(to_df)?;
            return Ok(ColumnarValue::Scalar(ScalarValue::Int64(v)));
        }
        let values = (0..args.number_rows)
            .map(|row| f(&catalog, row))
            .collect::<Result<Vec<_>>>()
            .map_err(to_df)?;
        Ok(ColumnarValue::Array(Arc::new(Int64Array::from(values))))
    }

    fn currval(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.per_row(args, |catalog, row| {
            let Some(arg) = name_arg(&args.args[0], row).map_err(Error::from)? else {
                return Ok(None);
            };
            let def = self.sequence(catalog, &arg)?;
            match self.seen.lock().current.get(&def.id) {
                Some(v) => Ok(Some(*v)),
                None => Err(Error::user(
                    "55000",
                    format!(
                        "currval of sequence \"{}\" is not yet defined in this session",
                        def.name
                    ),
                )),
            }
        })
    }

    fn setval(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let view = self.view()?;
        let kv = view.engine.kv().clone();
        self.per_row(args, |catalog, row| {
            let (Some(arg), Some(value)) = (
                name_arg(&args.args[0], row).map_err(Error::from)?,
                int_arg(&args.args[1], row).map_err(Error::from)?,
            ) else {
                return Ok(None);
            };
            let is_called = match args.args.get(2) {
                Some(a) => {
                    let v = match a {
                        ColumnarValue::Scalar(s) => s.clone(),
                        ColumnarValue::Array(a) => {
                            ScalarValue::try_from_array(a, row).map_err(Error::from)?
                        }
                    };
                    !matches!(v, ScalarValue::Boolean(Some(false)))
                }
                None => true,
            };
            let def = self.sequence(catalog, &arg)?;
            view.engine
                .sequences
                .set(kv.as_ref(), &def, value, is_called)?;
            if is_called {
                self.saw(def.id, value);
            }
            Ok(Some(value))
        })
    }

    fn serial_sequence(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let view = self.view()?;
        let catalog = view.catalog();
        let one = |row: usize| -> Result<Option<String>> {
            let (Some(table), Some(NameArg::Text(column))) = (
                name_arg(&args.args[0], row).map_err(Error::from)?,
                name_arg(&args.args[1], row).map_err(Error::from)?,
            ) else {
                return Ok(None);
            };
            let def = self.relation(&catalog, &table)?;
            // The column is an identifier as written: quoted keeps its case.
            let column = name_parts(&parse_name(&column)?).pop().unwrap_or_default();
            if def.column_index(&column).is_none() {
                return Err(Error::user(
                    sqlstate::UNDEFINED_COLUMN,
                    format!(
                        "column \"{column}\" of relation \"{}\" does not exist",
                        def.name
                    ),
                ));
            }
            Ok(owned_sequence(&catalog, &def, &column).map(|s| {
                format!(
                    "{}.{}",
                    super::pg_catalog::quote_ident(&s.schema),
                    super::pg_catalog::quote_ident(&s.name)
                )
            }))
        };
        let scalar = args
            .args
            .iter()
            .all(|a| matches!(a, ColumnarValue::Scalar(_)));
        if scalar {
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(
                one(0).map_err(to_df)?,
            )));
        }
        let values = (0..args.number_rows)
            .map(one)
            .collect::<Result<Vec<_>>>()
            .map_err(to_df)?;
        Ok(ColumnarValue::Array(Arc::new(StringArray::from(values))))
    }
}

/// A relation name given as text, parsed as SQL names are (`"My Seq"` keeps its case).
fn parse_name(text: &str) -> Result<ObjectName> {
    let dialect = datafusion::sql::sqlparser::dialect::PostgreSqlDialect {};
    datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(text)
        .and_then(|mut p| p.parse_object_name(false))
        .map_err(|_| {
            Error::user(
                sqlstate::INVALID_NAME,
                format!("invalid name syntax: \"{text}\""),
            )
        })
}

impl ScalarUDFImpl for SeqFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::SerialSequence => DataType::Utf8,
            _ => DataType::Int64,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match self.kind {
            Kind::Nextval => self.nextval(&args),
            Kind::Currval => self.currval(&args),
            Kind::Setval => self.setval(&args),
            Kind::Lastval => match self.seen.lock().last {
                Some((_, v)) => Ok(ColumnarValue::Scalar(ScalarValue::Int64(Some(v)))),
                None => Err(to_df(Error::user(
                    "55000",
                    "lastval is not yet defined in this session",
                ))),
            },
            Kind::SerialSequence => self.serial_sequence(&args),
        }
    }
}

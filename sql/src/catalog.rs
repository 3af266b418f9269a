//! The catalog: schemas, tables and views, persisted in the KV store.
//!
//! A [`Catalog`] is an immutable snapshot; changes build a new snapshot (copy on write) and
//! the engine swaps it in when the transaction that made them commits, together with the
//! catalog's own KV records in the same atomic batch. Each snapshot has a `version`; a
//! transaction that changed the catalog commits only if the version it started from is still
//! current. Table ids are never reused, so a dropped table's rows can be deleted lazily by a
//! range delete without touching a newer table.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use serde::{Deserialize, Serialize};

use crate::codec::key::table_prefix;
use crate::error::{Error, Result, sqlstate};
use crate::storage::{KvStore, WriteOp, for_each_chunk};
use crate::types::SqlType;

pub const DEFAULT_SCHEMA: &str = "public";
/// Schemas that exist in every database and hold no user objects.
pub const SYSTEM_SCHEMAS: [&str; 2] = ["pg_catalog", "information_schema"];

use crate::keys::META_NEXT_TABLE_ID;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ColumnDef {
    pub name: String,
    pub ty: SqlType,
    pub nullable: bool,
    /// The DEFAULT expression as SQL text, evaluated at insert time.
    pub default: Option<String>,
}

/// What a stored relation is. Sources, streams and materialized views are stored relations
/// too: a push source's rows are its event log, a stream's rows are its retained output, a
/// materialized view's rows are its current result, so SELECT reads all of them the same way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub enum TableKind {
    #[default]
    Table,
    /// Rows are the events pushed by INSERT or HTTP (keyed by arrival sequence); a source
    /// with a connector stores no rows.
    Source(SourceInfo),
    /// An append-only continuous query; rows are its retained output (keyed by sequence).
    Stream(QueryInfo),
    /// A continuously maintained query result.
    MaterializedView(QueryInfo),
    /// The `<source>_errors` table of a source.
    DeadLetters { source: String },
    /// The `<source>_late` table of a source created with `late_events = 'table'`.
    LateEvents { source: String },
    /// A continuous query whose rows leave Eddy (Parquet files); it stores no rows.
    Sink(QueryInfo),
}

impl TableKind {
    pub fn describe(&self) -> &'static str {
        match self {
            TableKind::Table => "table",
            TableKind::Source(_) => "source",
            TableKind::Stream(_) => "stream",
            TableKind::MaterializedView(_) => "materialized view",
            TableKind::DeadLetters { .. } => "dead-letter table",
            TableKind::LateEvents { .. } => "late-event table",
            TableKind::Sink(_) => "sink",
        }
    }

    pub fn query(&self) -> Option<&QueryInfo> {
        match self {
            TableKind::Stream(q) | TableKind::MaterializedView(q) | TableKind::Sink(q) => Some(q),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SourceInfo {
    /// `None` for a push source (INSERT and HTTP only).
    pub connector: Option<String>,
    /// WITH options as given (may hold credentials: never display them unredacted).
    pub options: Vec<(String, String)>,
    pub watermark: Option<WatermarkDef>,
    /// Milliseconds since the epoch at CREATE SOURCE.
    pub created_at_ms: i64,
    /// Table id of `<source>_errors`.
    pub errors_table: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WatermarkDef {
    pub column: String,
    /// The watermark expression as SQL text over the source's columns.
    pub expr: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QueryInfo {
    /// The defining SELECT as SQL text.
    pub sql: String,
    /// Sources and streams the query reads.
    pub depends_on: Vec<String>,
    /// Models the query scores with (PREDICT and friends).
    #[serde(default)]
    pub models: Vec<String>,
    /// Windowed results appear only when the window closes (EMIT ON WINDOW CLOSE).
    pub emit_on_close: bool,
    pub options: Vec<(String, String)>,
    /// Its HOP windows are aggregated in panes (`stream/plan/hop.rs`); false for views
    /// created before panes, whose state holds a group per window.
    #[serde(default)]
    pub panes: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableDef {
    pub id: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnDef>,
    /// Indexes into `columns`; empty when the table has no primary key (rows are then keyed
    /// by a hidden row id).
    pub primary_key: Vec<usize>,
    #[serde(default)]
    pub kind: TableKind,
    #[serde(skip)]
    arrow: Option<SchemaRef>,
}

impl TableDef {
    pub fn new(
        id: u32,
        schema: String,
        name: String,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
    ) -> Self {
        let mut def = TableDef {
            id,
            schema,
            name,
            columns,
            primary_key,
            kind: TableKind::Table,
            arrow: None,
        };
        def.arrow = Some(def.build_arrow_schema());
        def
    }

    pub fn with_kind(mut self, kind: TableKind) -> Self {
        self.kind = kind;
        self
    }

    pub fn source(&self) -> Option<&SourceInfo> {
        match &self.kind {
            TableKind::Source(s) => Some(s),
            _ => None,
        }
    }

    /// The table's Arrow schema. Every field is nullable: NOT NULL is enforced by Eddy when
    /// rows are written (with a 23502 naming the column), not by Arrow while DataFusion
    /// builds the batches to write.
    fn build_arrow_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| c.ty.arrow_field(&c.name, true))
                .collect::<Vec<_>>(),
        ))
    }

    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow
            .clone()
            .unwrap_or_else(|| self.build_arrow_schema())
    }

    pub fn types(&self) -> Vec<SqlType> {
        self.columns.iter().map(|c| c.ty.clone()).collect()
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    pub fn key_prefix(&self) -> Vec<u8> {
        table_prefix(self.id)
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ViewDef {
    pub schema: String,
    pub name: String,
    /// The view's query as SQL text, re-planned when the view is used.
    pub sql: String,
}

/// An ONNX model in the catalog: its versions and which one is active.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelDef {
    pub schema: String,
    pub name: String,
    /// Ascending by version number.
    pub versions: Vec<ModelVersion>,
    /// The version PREDICT uses (a running query switches at its next checkpoint).
    pub active: u32,
    /// Versions that were active before, most recent last (ROLLBACK goes back one).
    #[serde(default)]
    pub history: Vec<u32>,
}

impl ModelDef {
    pub fn version(&self, version: u32) -> Option<&ModelVersion> {
        self.versions.iter().find(|v| v.version == version)
    }

    pub fn active_version(&self) -> &ModelVersion {
        self.version(self.active)
            .or_else(|| self.versions.last())
            .expect("a model has at least one version")
    }
}

/// One version of a model; its file lives in the data dir under its SHA-256.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelVersion {
    pub version: u32,
    pub sha256: String,
    pub inputs: Vec<ModelTensor>,
    pub outputs: Vec<ModelTensor>,
    pub intra_threads: usize,
    /// Names of the features, in PREDICT's argument order (for named arguments); empty when
    /// the model has none.
    #[serde(default)]
    pub features: Vec<String>,
    /// Where the model was loaded from, as given.
    pub location: String,
    /// When the version was added (milliseconds since the epoch).
    #[serde(default)]
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelTensor {
    pub name: String,
    pub element: String,
    pub shape: Vec<i64>,
}

/// A role (user): what it may do, and how it proves who it is. Passwords are kept only as
/// verifiers (see [`crate::auth`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RoleDef {
    pub name: String,
    pub superuser: bool,
    pub login: bool,
    pub create_db: bool,
    pub create_role: bool,
    pub inherit: bool,
    pub replication: bool,
    pub bypass_rls: bool,
    /// -1: no limit.
    pub connection_limit: i32,
    pub scram: Option<crate::auth::ScramSecret>,
    /// `md5…` of PostgreSQL's MD5 scheme, kept only when MD5 authentication is enabled.
    pub md5: Option<String>,
    /// The bootstrap administrator: OID 10, which owns every object.
    #[serde(default)]
    pub bootstrap: bool,
}

impl RoleDef {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_string(),
            superuser: false,
            login: false,
            create_db: false,
            create_role: false,
            inherit: true,
            replication: false,
            bypass_rls: false,
            connection_limit: -1,
            scram: None,
            md5: None,
            bootstrap: false,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum Record {
    Schema { name: String },
    Table(TableDef),
    View(ViewDef),
    Model(ModelDef),
    Role(RoleDef),
}

/// What a name refers to.
#[derive(Debug, Clone)]
pub enum Relation {
    Table(Arc<TableDef>),
    View(Arc<ViewDef>),
}

type Name = (String, String);

#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub version: u64,
    schemas: BTreeSet<String>,
    tables: BTreeMap<Name, Arc<TableDef>>,
    views: BTreeMap<Name, Arc<ViewDef>>,
    models: BTreeMap<Name, Arc<ModelDef>>,
    roles: BTreeMap<String, Arc<RoleDef>>,
    next_table_id: u32,
}

fn record_key(schema: &str, name: &str) -> Vec<u8> {
    let mut k = crate::keys::catalog_prefix();
    k.extend_from_slice(schema.as_bytes());
    k.push(0);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Models have their own namespace: their records sit beside relations' under a marker byte.
fn model_key(schema: &str, name: &str) -> Vec<u8> {
    let mut k = record_key(schema, "");
    k.push(1);
    k.extend_from_slice(name.as_bytes());
    k
}

/// Roles belong to no schema: their records sit under an empty schema name and a marker byte.
fn role_key(name: &str) -> Vec<u8> {
    let mut k = record_key("", "");
    k.push(2);
    k.extend_from_slice(name.as_bytes());
    k
}

fn encode(record: &Record) -> Result<Vec<u8>> {
    serde_json::to_vec(record).map_err(|e| Error::internal(format!("catalog encode: {e}")))
}

impl Catalog {
    /// Reads the whole catalog from the store; creates `public` on a fresh store.
    pub fn load(kv: &dyn KvStore) -> Result<Self> {
        let mut cat = Catalog {
            next_table_id: 1,
            ..Default::default()
        };
        for_each_chunk(kv, &crate::keys::catalog_prefix(), 1024, |chunk| {
            for (_, value) in chunk {
                let record: Record = serde_json::from_slice(value)
                    .map_err(|e| Error::Storage(format!("corrupt catalog record: {e}")))?;
                cat.apply(record);
            }
            Ok(())
        })?;
        if let Some(v) = kv.get(META_NEXT_TABLE_ID)? {
            let bytes: [u8; 4] = v
                .try_into()
                .map_err(|_| Error::Storage("corrupt table id counter".into()))?;
            cat.next_table_id = cat.next_table_id.max(u32::from_be_bytes(bytes));
        }
        if !cat.schemas.contains(DEFAULT_SCHEMA) {
            let ops = cat.create_schema(DEFAULT_SCHEMA)?;
            kv.write(ops, true)?;
        }
        Ok(cat)
    }

    fn apply(&mut self, record: Record) {
        match record {
            Record::Schema { name } => {
                self.schemas.insert(name);
            }
            Record::Table(t) => {
                self.next_table_id = self.next_table_id.max(t.id + 1);
                let t = TableDef::new(t.id, t.schema, t.name, t.columns, t.primary_key)
                    .with_kind(t.kind);
                self.tables
                    .insert((t.schema.clone(), t.name.clone()), Arc::new(t));
            }
            Record::View(v) => {
                self.views
                    .insert((v.schema.clone(), v.name.clone()), Arc::new(v));
            }
            Record::Role(r) => {
                self.roles.insert(r.name.clone(), Arc::new(r));
            }
            Record::Model(m) => {
                self.models
                    .insert((m.schema.clone(), m.name.clone()), Arc::new(m));
            }
        }
    }

    pub fn schema_exists(&self, schema: &str) -> bool {
        self.schemas.contains(schema) || SYSTEM_SCHEMAS.contains(&schema)
    }

    pub fn schemas(&self) -> impl Iterator<Item = &String> {
        self.schemas.iter()
    }

    pub fn relation(&self, schema: &str, name: &str) -> Option<Relation> {
        let key = (schema.to_string(), name.to_string());
        if let Some(t) = self.tables.get(&key) {
            return Some(Relation::Table(t.clone()));
        }
        self.views.get(&key).map(|v| Relation::View(v.clone()))
    }

    pub fn table(&self, schema: &str, name: &str) -> Option<Arc<TableDef>> {
        self.tables
            .get(&(schema.to_string(), name.to_string()))
            .cloned()
    }

    pub fn relation_names(&self, schema: &str) -> Vec<String> {
        let tables = self.tables.keys().filter(|(s, _)| s == schema);
        let views = self.views.keys().filter(|(s, _)| s == schema);
        tables.chain(views).map(|(_, n)| n.clone()).collect()
    }

    pub fn tables(&self) -> impl Iterator<Item = &Arc<TableDef>> {
        self.tables.values()
    }

    pub fn views(&self) -> impl Iterator<Item = &Arc<ViewDef>> {
        self.views.values()
    }

    fn check_new_name(&self, schema: &str, name: &str) -> Result<()> {
        if !self.schema_exists(schema) || SYSTEM_SCHEMAS.contains(&schema) {
            return Err(Error::user(
                sqlstate::INVALID_SCHEMA_NAME,
                format!("schema \"{schema}\" does not exist"),
            ));
        }
        if self.relation(schema, name).is_some() {
            return Err(Error::user(
                sqlstate::DUPLICATE_TABLE,
                format!("relation \"{name}\" already exists"),
            ));
        }
        Ok(())
    }

    /// Adds a schema; returns the KV writes that persist it.
    pub fn create_schema(&mut self, name: &str) -> Result<Vec<WriteOp>> {
        if self.schema_exists(name) {
            return Err(Error::user(
                sqlstate::DUPLICATE_SCHEMA,
                format!("schema \"{name}\" already exists"),
            ));
        }
        self.schemas.insert(name.to_string());
        let record = Record::Schema {
            name: name.to_string(),
        };
        Ok(vec![WriteOp::Put(record_key(name, ""), encode(&record)?)])
    }

    pub fn drop_schema(&mut self, name: &str, cascade: bool) -> Result<Vec<WriteOp>> {
        if SYSTEM_SCHEMAS.contains(&name) || !self.schemas.contains(name) {
            return Err(Error::user(
                sqlstate::INVALID_SCHEMA_NAME,
                format!("schema \"{name}\" does not exist"),
            ));
        }
        let members = self.relation_names(name);
        if !members.is_empty() && !cascade {
            return Err(Error::user(
                sqlstate::DEPENDENT_OBJECTS_STILL_EXIST,
                format!("cannot drop schema {name} because other objects depend on it"),
            )
            .with_detail(format!("{} objects, e.g. {}", members.len(), members[0])));
        }
        let mut ops = Vec::new();
        for member in members {
            ops.extend(self.drop_relation(name, &member)?);
        }
        self.schemas.remove(name);
        ops.push(WriteOp::Delete(record_key(name, "")));
        Ok(ops)
    }

    /// Adds a table with a fresh id; returns it and the KV writes that persist it.
    pub fn create_table(
        &mut self,
        schema: &str,
        name: &str,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
    ) -> Result<(Arc<TableDef>, Vec<WriteOp>)> {
        self.create_relation(schema, name, columns, primary_key, TableKind::Table)
    }

    /// The id the next created relation gets.
    pub fn next_id(&self) -> u32 {
        self.next_table_id
    }

    /// Adds a stored relation of any kind with a fresh id.
    pub fn create_relation(
        &mut self,
        schema: &str,
        name: &str,
        columns: Vec<ColumnDef>,
        primary_key: Vec<usize>,
        kind: TableKind,
    ) -> Result<(Arc<TableDef>, Vec<WriteOp>)> {
        self.check_new_name(schema, name)?;
        let id = self.next_table_id;
        self.next_table_id += 1;
        let def = Arc::new(
            TableDef::new(
                id,
                schema.to_string(),
                name.to_string(),
                columns,
                primary_key,
            )
            .with_kind(kind),
        );
        self.tables
            .insert((schema.to_string(), name.to_string()), def.clone());
        let ops = vec![
            WriteOp::Put(
                record_key(schema, name),
                encode(&Record::Table((*def).clone()))?,
            ),
            WriteOp::Put(
                META_NEXT_TABLE_ID.to_vec(),
                self.next_table_id.to_be_bytes().to_vec(),
            ),
        ];
        Ok((def, ops))
    }

    pub fn create_view(&mut self, schema: &str, name: &str, sql: String) -> Result<Vec<WriteOp>> {
        self.check_new_name(schema, name)?;
        let def = ViewDef {
            schema: schema.to_string(),
            name: name.to_string(),
            sql,
        };
        let record = encode(&Record::View(def.clone()))?;
        self.views
            .insert((schema.to_string(), name.to_string()), Arc::new(def));
        Ok(vec![WriteOp::Put(record_key(schema, name), record)])
    }

    /// Removes a table or view; a table's rows go with it, and a pipeline's checkpoint
    /// records and state (range deletes: ids are never reused).
    pub fn drop_relation(&mut self, schema: &str, name: &str) -> Result<Vec<WriteOp>> {
        let key = (schema.to_string(), name.to_string());
        let mut ops = vec![WriteOp::Delete(record_key(schema, name))];
        if let Some(t) = self.tables.remove(&key) {
            for (start, end) in crate::keys::pipeline_ranges(t.id) {
                ops.push(WriteOp::DeleteRange(start, end));
            }
        } else if self.views.remove(&key).is_none() {
            return Err(Error::undefined_table(name));
        }
        Ok(ops)
    }

    pub fn role(&self, name: &str) -> Option<Arc<RoleDef>> {
        self.roles.get(name).cloned()
    }

    pub fn roles(&self) -> impl Iterator<Item = &Arc<RoleDef>> {
        self.roles.values()
    }

    /// Stores a new or changed role.
    pub fn put_role(&mut self, def: RoleDef) -> Result<Vec<WriteOp>> {
        let record = encode(&Record::Role(def.clone()))?;
        let key = role_key(&def.name);
        self.roles.insert(def.name.clone(), Arc::new(def));
        Ok(vec![WriteOp::Put(key, record)])
    }

    pub fn drop_role(&mut self, name: &str) -> Result<Vec<WriteOp>> {
        match self.roles.remove(name) {
            Some(_) => Ok(vec![WriteOp::Delete(role_key(name))]),
            None => Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("role \"{name}\" does not exist"),
            )),
        }
    }

    pub fn model(&self, schema: &str, name: &str) -> Option<Arc<ModelDef>> {
        self.models
            .get(&(schema.to_string(), name.to_string()))
            .cloned()
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelDef>> {
        self.models.values()
    }

    pub fn create_model(&mut self, def: ModelDef) -> Result<Vec<WriteOp>> {
        if !self.schema_exists(&def.schema) {
            return Err(Error::user(
                sqlstate::INVALID_SCHEMA_NAME,
                format!("schema \"{}\" does not exist", def.schema),
            ));
        }
        if self.model(&def.schema, &def.name).is_some() {
            return Err(
                Error::user("42710", format!("model \"{}\" already exists", def.name)).with_detail(
                    format!(
                        "Add a version with CREATE MODEL {} VERSION n FROM '...'.",
                        def.name
                    ),
                ),
            );
        }
        self.put_model(def)
    }

    /// Stores a new or changed model (a version added, another one active).
    pub fn put_model(&mut self, def: ModelDef) -> Result<Vec<WriteOp>> {
        let key = model_key(&def.schema, &def.name);
        let record = encode(&Record::Model(def.clone()))?;
        self.models
            .insert((def.schema.clone(), def.name.clone()), Arc::new(def));
        Ok(vec![WriteOp::Put(key, record)])
    }

    pub fn drop_model(&mut self, schema: &str, name: &str) -> Result<Vec<WriteOp>> {
        match self.models.remove(&(schema.to_string(), name.to_string())) {
            Some(_) => Ok(vec![WriteOp::Delete(model_key(schema, name))]),
            None => Err(Error::user(
                sqlstate::UNDEFINED_OBJECT,
                format!("model \"{name}\" does not exist"),
            )),
        }
    }

    /// Views whose SQL mentions `name` (a conservative dependency check for DROP), and the
    /// streams, materialized views and dead-letter tables that depend on it.
    pub fn views_mentioning(&self, name: &str) -> Vec<String> {
        let needle = name.to_lowercase();
        let views = self
            .views
            .values()
            .filter(|v| v.name != name && mentions(&v.sql.to_lowercase(), &needle))
            .map(|v| v.name.clone());
        let queries = self
            .tables
            .values()
            .filter(|t| match t.kind.query() {
                Some(q) => q.depends_on.iter().any(|d| d == name),
                None => false,
            })
            .map(|t| t.name.clone());
        views.chain(queries).collect()
    }

    /// Stored relations that exist only because `def` exists (a source's error table).
    pub fn owned_by(&self, def: &TableDef) -> Vec<Arc<TableDef>> {
        self.tables
            .values()
            .filter(|t| {
                matches!(&t.kind, TableKind::DeadLetters { source } | TableKind::LateEvents { source }
                    if *source == def.name && t.schema == def.schema)
            })
            .cloned()
            .collect()
    }

    pub fn table_by_id(&self, id: u32) -> Option<Arc<TableDef>> {
        self.tables.values().find(|t| t.id == id).cloned()
    }
}

/// Whether `sql` contains `word` as a whole identifier.
fn mentions(sql: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    sql.match_indices(word).any(|(at, _)| {
        let before = sql[..at].chars().next_back();
        let after = sql[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::memory::MemoryStore;

    fn col(name: &str, ty: SqlType) -> ColumnDef {
        ColumnDef {
            name: name.into(),
            ty,
            nullable: false,
            default: None,
        }
    }

    #[test]
    fn persists_and_reloads() {
        let kv = MemoryStore::new();
        let mut cat = Catalog::load(&kv).unwrap();
        let (t, ops) = cat
            .create_table("public", "t", vec![col("id", SqlType::Int8)], vec![0])
            .unwrap();
        kv.write(ops, true).unwrap();
        kv.write(
            cat.create_view("public", "v", "SELECT * FROM t".into())
                .unwrap(),
            true,
        )
        .unwrap();
        let again = Catalog::load(&kv).unwrap();
        assert_eq!(again.table("public", "t").unwrap().id, t.id);
        assert!(matches!(
            again.relation("public", "v"),
            Some(Relation::View(_))
        ));
        assert_eq!(again.views_mentioning("t"), vec!["v".to_string()]);
    }

    #[test]
    fn table_ids_are_never_reused() {
        let kv = MemoryStore::new();
        let mut cat = Catalog::load(&kv).unwrap();
        let (t1, ops) = cat
            .create_table("public", "a", vec![col("x", SqlType::Int4)], vec![])
            .unwrap();
        kv.write(ops, true).unwrap();
        kv.write(cat.drop_relation("public", "a").unwrap(), true)
            .unwrap();
        let mut again = Catalog::load(&kv).unwrap();
        let (t2, _) = again
            .create_table("public", "a", vec![col("x", SqlType::Int4)], vec![])
            .unwrap();
        assert!(t2.id > t1.id);
    }

    #[test]
    fn duplicate_names_are_refused() {
        let kv = MemoryStore::new();
        let mut cat = Catalog::load(&kv).unwrap();
        cat.create_table("public", "a", vec![col("x", SqlType::Int4)], vec![])
            .unwrap();
        let err = cat
            .create_view("public", "a", "SELECT 1".into())
            .unwrap_err();
        assert_eq!(err.sqlstate(), sqlstate::DUPLICATE_TABLE);
    }
}

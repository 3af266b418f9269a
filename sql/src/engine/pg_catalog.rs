//! `pg_catalog`: PostgreSQL's system catalogs, built from Eddy's catalog where Eddy has
//! objects (namespaces, classes, attributes, defaults, primary keys, roles, the database,
//! foreign servers) and from the static export of a real PostgreSQL shipped by
//! `datafusion-pg-catalog` for everything else (types, functions, operators, access methods,
//! collations, extensions, and the catalogs that are empty in Eddy).
//!
//! Sources, streams, sinks and models are foreign tables (relkind `f`): psql lists them with
//! `\d`, and `\d name` prints their connector as the server and their options.

mod functions;
mod information_schema;
mod objects;
mod rewrite;
mod rows;
mod subquery;

use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;
use datafusion_pg_catalog::pg_catalog::catalog_info::CatalogInfo;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_pg_catalog::pg_catalog::{
    PG_CATALOG_TABLES, PgCatalogSchemaProvider, PgCatalogStaticTables,
};

pub use functions::{pg_text_udf, register};
pub use information_schema::InformationSchema;
pub use objects::{PgObjects, quote_ident, table_id_of_oid};
pub use rewrite::rewrite;

use super::catalog_provider::SessionView;
use objects::*;
use rows::{Row, V};

/// The static tables, read once per process.
fn statics() -> Arc<PgCatalogStaticTables> {
    static STATICS: OnceLock<Arc<PgCatalogStaticTables>> = OnceLock::new();
    STATICS
        .get_or_init(|| {
            Arc::new(
                PgCatalogStaticTables::try_new().expect(
                    "the PostgreSQL catalog export shipped with datafusion-pg-catalog reads",
                ),
            )
        })
        .clone()
}

/// The crate's provider answers the catalogs Eddy does not build; it sees no DataFusion
/// catalogs (Eddy's objects come from [`PgObjects`]).
#[derive(Debug, Clone)]
struct NoCatalogs;

#[async_trait]
impl CatalogInfo for NoCatalogs {
    async fn catalog_names(&self) -> DfResult<Vec<String>> {
        Ok(Vec::new())
    }
    async fn schema_names(&self, _: &str) -> DfResult<Option<Vec<String>>> {
        Ok(None)
    }
    async fn table_names(&self, _: &str, _: &str) -> DfResult<Option<Vec<String>>> {
        Ok(None)
    }
    async fn table_schema(&self, _: &str, _: &str, _: &str) -> DfResult<Option<SchemaRef>> {
        Ok(None)
    }
    async fn table_type(
        &self,
        _: &str,
        _: &str,
        _: &str,
    ) -> DfResult<Option<datafusion::datasource::TableType>> {
        Ok(None)
    }
}

type StaticProvider = PgCatalogSchemaProvider<NoCatalogs, EmptyContextProvider>;

fn static_provider() -> Arc<StaticProvider> {
    static PROVIDER: OnceLock<Arc<StaticProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            Arc::new(
                PgCatalogSchemaProvider::try_new(NoCatalogs, statics(), EmptyContextProvider)
                    .expect("static pg_catalog provider"),
            )
        })
        .clone()
}

/// Catalogs built from Eddy's objects; the rest come from the static provider.
const BUILT: &[&str] = &[
    "pg_namespace",
    "pg_class",
    "pg_attribute",
    "pg_attrdef",
    "pg_index",
    "pg_constraint",
    "pg_sequence",
    "pg_description",
    "pg_database",
    "pg_authid",
    "pg_roles",
    "pg_user",
    "pg_tables",
    "pg_views",
    "pg_matviews",
    "pg_foreign_table",
    "pg_foreign_server",
    "pg_foreign_data_wrapper",
    "pg_settings",
];

pub struct PgCatalog {
    pub view: Arc<SessionView>,
}

impl std::fmt::Debug for PgCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgCatalog")
    }
}

#[async_trait]
impl SchemaProvider for PgCatalog {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = PG_CATALOG_TABLES.iter().map(|s| s.to_string()).collect();
        names.extend(BUILT.iter().map(|s| s.to_string()));
        names.sort();
        names.dedup();
        names
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if rewrite::ALWAYS_EMPTY.contains(&name.as_str()) {
            let Some(table) = static_provider().table(&name).await? else {
                return Ok(None);
            };
            let schema = nullable(&table.schema());
            return Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![]])?)));
        }
        if !BUILT.contains(&name.as_str()) {
            return static_provider().table(&name).await;
        }
        if name == "pg_settings" {
            let schema = crate_schema("pg_settings").await?;
            let rows = settings_rows(&self.view);
            let batch = rows::batch(&schema, &rows)?;
            return Ok(Some(Arc::new(MemTable::try_new(
                schema,
                vec![vec![batch]],
            )?)));
        }
        let objects = PgObjects::load(&self.view).await;
        let database = self.view.database.clone();
        let batches = build(&name, &objects, &database).await?;
        let schema = batches[0].schema();
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![batches])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        BUILT.contains(&name.as_str()) || PG_CATALOG_TABLES.contains(&name.as_str())
    }
}

/// The static rows of a catalog, with every column nullable (so built rows can leave text
/// NULL) and optionally only the rows `keep` selects.
fn static_rows(
    table: &datafusion_pg_catalog::pg_catalog::ArrowTable,
    extra: &[(&str, DataType)],
    keep: impl Fn(&RecordBatch, usize) -> bool,
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    let schema = rows::with_columns(&nullable(&table.schema()), extra);
    let mut out = Vec::new();
    for batch in table.data() {
        let mask: datafusion::arrow::array::BooleanArray = (0..batch.num_rows())
            .map(|i| Some(keep(batch, i)))
            .collect();
        let kept = filter_record_batch(batch, &mask)?;
        let mut columns = kept.columns().to_vec();
        for f in schema.fields().iter().skip(columns.len()) {
            columns.push(datafusion::arrow::array::new_null_array(
                f.data_type(),
                kept.num_rows(),
            ));
        }
        out.push(RecordBatch::try_new(schema.clone(), columns)?);
    }
    Ok((schema, out))
}

fn nullable(schema: &SchemaRef) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<Field>>(),
    ))
}

fn int_at(batch: &RecordBatch, column: &str, row: usize) -> i32 {
    batch
        .column_by_name(column)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .map_or(0, |a| a.value(row))
}

/// Static rows of PostgreSQL's own objects: those below the first user OID.
fn system_rows(
    table: &datafusion_pg_catalog::pg_catalog::ArrowTable,
    oid_column: &'static str,
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    static_rows(table, &[], move |b, i| int_at(b, oid_column, i) < 16384)
}

fn with_rows(
    (schema, mut batches): (SchemaRef, Vec<RecordBatch>),
    rows: &[Row],
) -> DfResult<Vec<RecordBatch>> {
    batches.push(rows::batch(&schema, rows)?);
    Ok(batches)
}

/// The crate's columns for a catalog it builds from DataFusion's catalogs (plus `extra`), and
/// no rows.
async fn crate_shape(
    name: &str,
    extra: &[(&str, DataType)],
) -> DfResult<(SchemaRef, Vec<RecordBatch>)> {
    Ok((
        rows::with_columns(&crate_schema(name).await?, extra),
        Vec::new(),
    ))
}

async fn crate_schema(name: &str) -> DfResult<SchemaRef> {
    let table = static_provider()
        .table(name)
        .await?
        .expect("the static provider has this view");
    Ok(nullable(&table.schema()))
}

fn relkind_am(kind: char) -> i32 {
    match kind {
        'r' | 'm' => HEAP_AM,
        _ => 0,
    }
}

async fn build(name: &str, o: &PgObjects, database: &str) -> DfResult<Vec<RecordBatch>> {
    let s = statics();
    let owner = |oid: i32| V::Text(o.role_name(oid).unwrap_or_else(|| o.superuser()));
    match name {
        "pg_namespace" => {
            let shape = crate_shape("pg_namespace", &[]).await?;
            let mut rows: Vec<Row> = [
                (PG_CATALOG_NAMESPACE, "pg_catalog"),
                (99, "pg_toast"),
                (INFORMATION_SCHEMA_NAMESPACE, "information_schema"),
            ]
            .into_iter()
            .map(|(oid, name)| {
                vec![
                    ("oid", oid.into()),
                    ("nspname", name.into()),
                    ("nspowner", SUPERUSER_OID.into()),
                ]
            })
            .collect();
            rows.extend(o.namespaces.iter().map(|n| {
                vec![
                    ("oid", n.oid.into()),
                    ("nspname", n.name.clone().into()),
                    ("nspowner", n.owner.into()),
                ]
            }));
            with_rows(shape, &rows)
        }
        "pg_class" => {
            let mut rows = Vec::new();
            for r in &o.relations {
                rows.push(vec![
                    ("oid", r.oid.into()),
                    ("relname", r.name.clone().into()),
                    ("relnamespace", r.namespace.into()),
                    ("relowner", SUPERUSER_OID.into()),
                    ("relam", relkind_am(r.kind).into()),
                    ("relfilenode", r.oid.into()),
                    ("reltuples", V::Float(-1.0)),
                    ("relhasindex", (!r.indexes.is_empty()).into()),
                    ("relhastriggers", r.has_triggers.into()),
                    (
                        "relchecks",
                        (r.constraints.iter().filter(|c| c.kind == 'c').count() as i32).into(),
                    ),
                    ("relpersistence", 'p'.into()),
                    ("relkind", r.kind.into()),
                    ("relnatts", (r.columns.len() as i32).into()),
                    ("relispopulated", true.into()),
                    (
                        "relreplident",
                        match r.kind {
                            'r' | 'm' => 'd',
                            _ => 'n',
                        }
                        .into(),
                    ),
                    ("relfrozenxid", "0".into()),
                    ("relminmxid", "0".into()),
                ]);
                for index in &r.indexes {
                    rows.push(vec![
                        ("oid", index.oid.into()),
                        ("relname", index.name.clone().into()),
                        ("relnamespace", r.namespace.into()),
                        ("relowner", SUPERUSER_OID.into()),
                        ("relam", BTREE_AM.into()),
                        ("relfilenode", index.oid.into()),
                        ("reltuples", V::Float(-1.0)),
                        ("relpersistence", 'p'.into()),
                        ("relkind", 'i'.into()),
                        ("relnatts", (index.columns.len() as i32).into()),
                        ("relispopulated", true.into()),
                        ("relreplident", 'n'.into()),
                        ("relfrozenxid", "0".into()),
                        ("relminmxid", "0".into()),
                    ]);
                }
            }
            let extra = [
                ("reltype", DataType::Int32),
                ("reloftype", DataType::Int32),
                ("reltoastrelid", DataType::Int32),
                ("relrewrite", DataType::Int32),
                ("relacl", DataType::Utf8),
                ("reloptions", text_array()),
            ];
            with_rows(crate_shape("pg_class", &extra).await?, &rows)
        }
        "pg_attribute" => {
            let mut rows = Vec::new();
            let attribute = |relid: i32, num: usize, c: &PgColumn| -> Row {
                vec![
                    ("attrelid", relid.into()),
                    ("attname", c.name.clone().into()),
                    ("atttypid", c.ty.oid.into()),
                    ("attlen", (c.ty.len as i32).into()),
                    ("attnum", (num as i32 + 1).into()),
                    ("attcacheoff", (-1).into()),
                    ("atttypmod", c.ty.typmod.into()),
                    ("attbyval", c.ty.byval.into()),
                    ("attalign", 'i'.into()),
                    ("attstorage", c.ty.storage.into()),
                    ("attcompression", "".into()),
                    ("attnotnull", c.not_null.into()),
                    ("atthasdef", c.default.is_some().into()),
                    (
                        "attidentity",
                        c.identity.map(String::from).unwrap_or_default().into(),
                    ),
                    ("attgenerated", "".into()),
                    ("attislocal", true.into()),
                    ("attcollation", c.ty.collation.into()),
                    ("attstattarget", (-1).into()),
                ]
            };
            for r in &o.relations {
                for (i, c) in r.columns.iter().enumerate() {
                    rows.push(attribute(r.oid, i, c));
                }
                for index in &r.indexes {
                    for (i, &k) in index.columns.iter().enumerate() {
                        let mut c = r.columns[k].clone();
                        c.default = None;
                        c.identity = None;
                        rows.push(attribute(index.oid, i, &c));
                    }
                }
            }
            let extra = [
                ("attrelid", DataType::Int32),
                ("atttypid", DataType::Int32),
                ("attndims", DataType::Int32),
                ("attacl", DataType::Utf8),
                ("attoptions", DataType::Utf8),
                ("attfdwoptions", DataType::Utf8),
            ];
            // atttypid is an oid: `array_agg(atttypid)` is an oid[], which drivers that
            // introspect types (asyncpg) can read without introspecting it first.
            let (schema, batches) = crate_shape("pg_attribute", &extra).await?;
            let schema = rows::with_type(&schema, "atttypid", DataType::UInt32);
            with_rows((schema, batches), &rows)
        }
        "pg_attrdef" => {
            let rows: Vec<Row> = o
                .relations
                .iter()
                .flat_map(|r| {
                    r.columns.iter().enumerate().filter_map(move |(i, c)| {
                        c.default.as_ref().map(|d| {
                            vec![
                                (
                                    "oid",
                                    hashed_oid("attrdef", &r.qualified_name(), &c.name).into(),
                                ),
                                ("adrelid", r.oid.into()),
                                ("adnum", (i as i32 + 1).into()),
                                ("adbin", d.clone().into()),
                            ]
                        })
                    })
                })
                .collect();
            with_rows(static_rows(&s.pg_attrdef, &[], |_, _| false)?, &rows)
        }
        "pg_index" => {
            let mut rows = Vec::new();
            for r in &o.relations {
                for index in &r.indexes {
                    let n = index.columns.len() as i32;
                    rows.push(vec![
                        ("indexrelid", index.oid.into()),
                        ("indrelid", r.oid.into()),
                        ("indnatts", n.into()),
                        ("indnkeyatts", n.into()),
                        ("indisunique", index.unique.into()),
                        ("indisprimary", index.primary.into()),
                        ("indimmediate", true.into()),
                        ("indisvalid", true.into()),
                        ("indisready", true.into()),
                        ("indislive", true.into()),
                        ("indkey", V::List(one_based(&index.columns))),
                        (
                            "indoption",
                            V::List(vec!["0".to_string(); index.columns.len()]),
                        ),
                        (
                            "indcollation",
                            V::List(
                                index
                                    .columns
                                    .iter()
                                    .map(|&c| r.columns[c].ty.collation.to_string())
                                    .collect(),
                            ),
                        ),
                        (
                            "indclass",
                            V::List(
                                index
                                    .columns
                                    .iter()
                                    .map(|&c| default_opclass(r.columns[c].ty.oid).to_string())
                                    .collect(),
                            ),
                        ),
                    ]);
                }
            }
            let shape = system_rows(&s.pg_index, "indexrelid")?;
            let shape = rows::int2_lists(shape, "indkey", rows::int2_list(true))?;
            let shape = rows::int2_lists(shape, "indclass", rows::oid_vector())?;
            let shape = rows::int2_lists(shape, "indoption", rows::int2_list(true))?;
            let shape = rows::int2_lists(shape, "indcollation", rows::oid_vector())?;
            with_rows(shape, &rows)
        }
        "pg_constraint" => {
            let mut rows = Vec::new();
            for r in &o.relations {
                for c in &r.constraints {
                    let mut row: Row = vec![
                        ("oid", c.oid.into()),
                        ("conname", c.name.clone().into()),
                        ("connamespace", r.namespace.into()),
                        ("contype", c.kind.into()),
                        ("convalidated", true.into()),
                        ("conrelid", r.oid.into()),
                        ("conindid", c.index.unwrap_or(0).into()),
                        ("conislocal", true.into()),
                        ("connoinherit", (c.kind != 'c').into()),
                        ("conkey", V::List(one_based(&c.columns))),
                    ];
                    if let Some(check) = &c.check {
                        row.push(("conbin", check.clone().into()));
                    }
                    if let Some(f) = &c.foreign {
                        row.extend([
                            ("confrelid", f.table.into()),
                            ("confupdtype", f.on_update.into()),
                            ("confdeltype", f.on_delete.into()),
                            ("confmatchtype", 's'.into()),
                            ("confkey", V::List(one_based(&f.columns))),
                        ]);
                    } else {
                        row.extend([
                            ("confupdtype", ' '.into()),
                            ("confdeltype", ' '.into()),
                            ("confmatchtype", ' '.into()),
                        ]);
                    }
                    rows.push(row);
                }
            }
            let shape = system_rows(&s.pg_constraint, "oid")?;
            let shape = rows::int2_lists(shape, "conkey", rows::int2_list(false))?;
            let shape = rows::int2_lists(shape, "confkey", rows::int2_list(false))?;
            with_rows(shape, &rows)
        }
        "pg_sequence" => {
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter_map(|r| {
                    let q = r.sequence.as_ref()?;
                    Some(vec![
                        ("seqrelid", r.oid.into()),
                        ("seqtypid", objects::PgType::of(&q.ty).oid.into()),
                        ("seqstart", V::Int(q.start)),
                        ("seqincrement", V::Int(q.increment)),
                        ("seqmax", V::Int(q.max)),
                        ("seqmin", V::Int(q.min)),
                        ("seqcache", V::Int(q.cache)),
                        ("seqcycle", q.cycle.into()),
                    ])
                })
                .collect();
            with_rows(static_rows(&s.pg_sequence, &[], |_, _| false)?, &rows)
        }
        "pg_description" => {
            let mut rows: Vec<Row> = Vec::new();
            for r in &o.relations {
                if let Some(c) = &r.comment {
                    rows.push(description(r.oid, 0, c));
                }
                for (i, c) in &r.column_comments {
                    rows.push(description(r.oid, *i as i32 + 1, c));
                }
                for index in &r.indexes {
                    if let Some(c) = &index.comment {
                        rows.push(description(index.oid, 0, c));
                    }
                }
            }
            with_rows(
                static_rows(&s.pg_description, &[], |b, i| {
                    int_at(b, "objoid", i) < 16384
                })?,
                &rows,
            )
        }
        "pg_database" => {
            let shape = crate_shape("pg_database", &[("datacl", DataType::Utf8)]).await?;
            let row: Row = vec![
                ("oid", 5.into()),
                ("datname", database.into()),
                ("datdba", SUPERUSER_OID.into()),
                ("encoding", 6.into()),
                ("datlocprovider", 'c'.into()),
                ("datallowconn", true.into()),
                ("datconnlimit", (-1).into()),
                ("datfrozenxid", "0".into()),
                ("datminmxid", "1".into()),
                ("dattablespace", 1663.into()),
                ("datcollate", "C.UTF-8".into()),
                ("datctype", "C.UTF-8".into()),
            ];
            with_rows(shape, &[row])
        }
        "pg_authid" => {
            let system = static_rows(&s.pg_authid, &[], |b, i| {
                int_at(b, "oid", i) != SUPERUSER_OID
            })?;
            with_rows(system, &role_rows(o))
        }
        "pg_roles" => {
            let schema = crate_schema("pg_roles").await?;
            let mut rows = role_rows(o);
            rows.push(vec![
                ("oid", DATABASE_OWNER_OID.into()),
                ("rolname", "pg_database_owner".into()),
                ("rolinherit", true.into()),
                ("rolconnlimit", (-1).into()),
                ("rolpassword", "********".into()),
            ]);
            Ok(vec![rows::batch(&schema, &rows)?])
        }
        "pg_user" => {
            let schema = rows::schema(&[
                ("usename", DataType::Utf8),
                ("usesysid", DataType::Int32),
                ("usecreatedb", DataType::Boolean),
                ("usesuper", DataType::Boolean),
                ("userepl", DataType::Boolean),
                ("usebypassrls", DataType::Boolean),
                ("passwd", DataType::Utf8),
                (
                    "valuntil",
                    DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                ),
                (
                    "useconfig",
                    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))),
                ),
            ]);
            let rows: Vec<Row> = o
                .roles
                .iter()
                .filter(|(_, r)| r.login)
                .map(|(oid, r)| {
                    vec![
                        ("usename", r.name.clone().into()),
                        ("usesysid", (*oid).into()),
                        ("usecreatedb", r.create_db.into()),
                        ("usesuper", r.superuser.into()),
                        ("userepl", r.replication.into()),
                        ("usebypassrls", r.bypass_rls.into()),
                        ("passwd", "********".into()),
                    ]
                })
                .collect();
            Ok(vec![rows::batch(&schema, &rows)?])
        }
        "pg_tables" | "pg_views" | "pg_matviews" => {
            let schema = crate_schema(name).await?;
            let kind = match name {
                "pg_tables" => 'r',
                "pg_views" => 'v',
                _ => 'm',
            };
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter(|r| r.kind == kind)
                .map(|r| {
                    vec![
                        ("schemaname", r.schema.clone().into()),
                        ("tablename", r.name.clone().into()),
                        ("viewname", r.name.clone().into()),
                        ("matviewname", r.name.clone().into()),
                        ("tableowner", owner(SUPERUSER_OID)),
                        ("viewowner", owner(SUPERUSER_OID)),
                        ("matviewowner", owner(SUPERUSER_OID)),
                        ("hasindex", r.index_oid().is_some().into()),
                        ("ispopulated", true.into()),
                        ("definition", r.definition.clone().into()),
                    ]
                })
                .collect();
            Ok(vec![rows::batch(&schema, &rows)?])
        }
        "pg_foreign_table" => {
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter_map(|r| {
                    let server = r.server.as_ref()?;
                    Some(vec![
                        ("ftrelid", r.oid.into()),
                        ("ftserver", PgObjects::server_oid(server).into()),
                        ("ftoptions", V::List(option_items(&r.options))),
                    ])
                })
                .collect();
            with_rows(static_rows(&s.pg_foreign_table, &[], |_, _| false)?, &rows)
        }
        "pg_foreign_server" => {
            let rows: Vec<Row> = o
                .servers()
                .into_iter()
                .map(|(oid, name)| {
                    vec![
                        ("oid", oid.into()),
                        ("srvname", name.into()),
                        ("srvowner", SUPERUSER_OID.into()),
                        ("srvfdw", EDDY_FDW_OID.into()),
                    ]
                })
                .collect();
            with_rows(static_rows(&s.pg_foreign_server, &[], |_, _| false)?, &rows)
        }
        "pg_foreign_data_wrapper" => {
            let row: Row = vec![
                ("oid", EDDY_FDW_OID.into()),
                ("fdwname", "eddy".into()),
                ("fdwowner", SUPERUSER_OID.into()),
            ];
            with_rows(
                static_rows(&s.pg_foreign_data_wrapper, &[], |_, _| false)?,
                &[row],
            )
        }
        _ => unreachable!("only built catalogs reach here"),
    }
}

/// The default btree operator class of a type (`pg_index.indclass`).
fn default_opclass(type_oid: i32) -> i32 {
    match type_oid {
        16 => 10003,
        17 => 10006,
        1082 => 3122,
        700 => 10012,
        701 => 3123,
        21 => 1979,
        23 => 1978,
        20 => 3124,
        1186 => 10022,
        1700 => 3125,
        1184 => 3127,
        1114 => 3128,
        2950 => 10065,
        3802 => 10088,
        _ => 3126, // text_ops: text and varchar
    }
}

/// Column numbers as `indkey` and `conkey` hold them (1-based).
fn one_based(columns: &[usize]) -> Vec<String> {
    columns.iter().map(|k| (k + 1).to_string()).collect()
}

/// A `pg_description` row of a relation (`sub` 0) or of its column `sub`.
fn description(oid: i32, sub: i32, text: &str) -> Row {
    vec![
        ("objoid", oid.into()),
        ("classoid", 1259.into()),
        ("objsubid", sub.into()),
        ("description", text.into()),
    ]
}

/// `pg_settings`: the session's settings as SHOW reports them.
fn settings_rows(view: &SessionView) -> Vec<Row> {
    let Some(info) = view.info.lock().upgrade() else {
        return Vec::new();
    };
    let settings = info.settings.read();
    let mut all: Vec<(&str, &str)> = settings.all().collect();
    all.sort_by_key(|(name, _)| name.to_ascii_lowercase());
    all.into_iter()
        .map(|(name, value)| {
            vec![
                ("name", name.into()),
                ("setting", value.into()),
                ("category", "Eddy".into()),
                ("short_desc", "".into()),
                ("context", "user".into()),
                ("vartype", "string".into()),
                ("source", "session".into()),
                ("reset_val", value.into()),
                ("pending_restart", false.into()),
            ]
        })
        .collect()
}

fn text_array() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
}

/// `pg_authid`/`pg_roles` rows of Eddy's roles; passwords show as `********`.
fn role_rows(o: &PgObjects) -> Vec<Row> {
    o.roles
        .iter()
        .map(|(oid, r)| {
            vec![
                ("oid", (*oid).into()),
                ("rolname", r.name.clone().into()),
                ("rolsuper", r.superuser.into()),
                ("rolinherit", r.inherit.into()),
                ("rolcreaterole", r.create_role.into()),
                ("rolcreatedb", r.create_db.into()),
                ("rolcanlogin", r.login.into()),
                ("rolreplication", r.replication.into()),
                ("rolbypassrls", r.bypass_rls.into()),
                ("rolconnlimit", r.connection_limit.into()),
                ("rolpassword", "********".into()),
            ]
        })
        .collect()
}

/// Options in PostgreSQL's stored form, `key=value`.
fn option_items(options: &[(String, String)]) -> Vec<String> {
    options.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

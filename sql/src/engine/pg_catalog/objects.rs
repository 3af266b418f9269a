//! Eddy's catalog as PostgreSQL objects: every schema, relation, column, default and primary
//! key with the OID, relkind and type OID that `pg_catalog` reports for it.
//!
//! OIDs are stable across sessions and restarts: a table's comes from its catalog id, a
//! view's, model's or schema's from a hash of its name, so clients that cache OIDs (pgjdbc,
//! asyncpg) keep finding the same objects.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::catalog::CatalogProvider;

use super::super::catalog_provider::{EDDY_CATALOG, EddyCatalog, SessionView};
use crate::catalog::{Catalog, RoleDef, TableDef, TableKind};
use crate::types::SqlType;

/// `pg_catalog`'s namespace OID in every PostgreSQL cluster.
pub const PG_CATALOG_NAMESPACE: i32 = 11;
/// `information_schema`'s namespace OID in PostgreSQL 15 clusters.
pub const INFORMATION_SCHEMA_NAMESPACE: i32 = 13_181;
/// `public`'s namespace OID in every PostgreSQL cluster.
pub const PUBLIC_NAMESPACE: i32 = 2200;
/// The bootstrap superuser's OID in every PostgreSQL cluster.
pub const SUPERUSER_OID: i32 = 10;
/// The role that owns `public` since PostgreSQL 15.
pub const DATABASE_OWNER_OID: i32 = 6171;
/// The bootstrap superuser's name when no role has been created (authentication off).
pub const DEFAULT_SUPERUSER: &str = "eddy";
/// `pg_am` rows of the heap and btree access methods.
pub const HEAP_AM: i32 = 2;
pub const BTREE_AM: i32 = 403;
/// The default collation (`pg_collation`), which text columns carry.
pub const DEFAULT_COLLATION: i32 = 100;
/// The one foreign-data wrapper, which every Eddy server belongs to.
pub const EDDY_FDW_OID: i32 = 900_000_000;
const FIRST_USER_OID: i32 = 16384;

/// The catalog id of the stored relation with this OID (tables' OIDs come from their ids).
pub fn table_id_of_oid(oid: i64) -> Option<u32> {
    let offset = oid.checked_sub(FIRST_USER_OID as i64)?;
    (offset >= 0 && offset % 2 == 0 && offset < 2_000_000_000).then_some((offset / 2) as u32)
}

/// A stable OID for an object without a catalog id, in a range table OIDs never reach.
pub fn hashed_oid(kind: &str, schema: &str, name: &str) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in kind
        .bytes()
        .chain([0])
        .chain(schema.bytes())
        .chain([0])
        .chain(name.bytes())
    {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    1_000_000_000 + (h % 1_000_000_000) as i32
}

fn namespace_oid(schema: &str) -> i32 {
    match schema {
        "public" => PUBLIC_NAMESPACE,
        "pg_catalog" => PG_CATALOG_NAMESPACE,
        other => hashed_oid("namespace", "", other),
    }
}

/// A type as `pg_type` and `pg_attribute` describe it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PgType {
    pub oid: i32,
    pub typmod: i32,
    pub len: i16,
    pub byval: bool,
    /// `attstorage`: p(lain), m(ain) or x (extended).
    pub storage: char,
    pub collation: i32,
}

impl PgType {
    pub fn of(ty: &SqlType) -> Self {
        let fixed = |oid, len: i16| PgType {
            oid,
            typmod: -1,
            len,
            byval: len <= 8,
            storage: 'p',
            collation: 0,
        };
        let varlena = |oid, typmod, storage, collation| PgType {
            oid,
            typmod,
            len: -1,
            byval: false,
            storage,
            collation,
        };
        match ty {
            SqlType::Bool => fixed(16, 1),
            SqlType::Int2 => fixed(21, 2),
            SqlType::Int4 => fixed(23, 4),
            SqlType::Int8 => fixed(20, 8),
            SqlType::Float4 => fixed(700, 4),
            SqlType::Float8 => fixed(701, 8),
            SqlType::Numeric(p) => varlena(
                1700,
                p.map_or(-1, |(p, s)| ((p as i32) << 16 | (s as i32 & 0xffff)) + 4),
                'm',
                0,
            ),
            SqlType::Text => varlena(25, -1, 'x', DEFAULT_COLLATION),
            SqlType::Varchar(n) => {
                varlena(1043, n.map_or(-1, |n| n as i32 + 4), 'x', DEFAULT_COLLATION)
            }
            SqlType::Bytea => varlena(17, -1, 'x', 0),
            SqlType::Date => fixed(1082, 4),
            SqlType::Timestamp => fixed(1114, 8),
            SqlType::Timestamptz => fixed(1184, 8),
            SqlType::Interval => PgType {
                byval: false,
                ..fixed(1186, 16)
            },
            SqlType::Uuid => PgType {
                byval: false,
                ..fixed(2950, 16)
            },
            SqlType::Jsonb => varlena(3802, -1, 'x', 0),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgColumn {
    pub name: String,
    pub ty: PgType,
    pub not_null: bool,
    /// The DEFAULT expression as SQL text.
    pub default: Option<String>,
    /// `attidentity`: 'a' (always), 'd' (by default), or none.
    pub identity: Option<char>,
}

/// An index as `pg_index` lists it (the primary key's first).
#[derive(Debug, Clone)]
pub struct PgIndex {
    pub oid: i32,
    pub name: String,
    /// Positions (0-based) of its columns in the table.
    pub columns: Vec<usize>,
    pub unique: bool,
    pub primary: bool,
    pub comment: Option<String>,
}

/// A constraint as `pg_constraint` lists it.
#[derive(Debug, Clone)]
pub struct PgConstraint {
    pub oid: i32,
    pub name: String,
    /// p(rimary key), u(nique), c(heck), f(oreign key).
    pub kind: char,
    /// Positions (0-based) of its columns in the table.
    pub columns: Vec<usize>,
    /// The index that enforces it (primary key, unique).
    pub index: Option<i32>,
    /// What `pg_get_constraintdef` prints.
    pub definition: String,
    /// A CHECK's condition.
    pub check: Option<String>,
    pub foreign: Option<PgForeignKey>,
}

#[derive(Debug, Clone)]
pub struct PgForeignKey {
    pub table: i32,
    /// Positions (0-based) of the referenced columns.
    pub columns: Vec<usize>,
    pub on_update: char,
    pub on_delete: char,
}

#[derive(Debug, Clone)]
pub struct Namespace {
    pub oid: i32,
    pub name: String,
    pub owner: i32,
}

/// A relation as `pg_class` lists it.
#[derive(Debug, Clone)]
pub struct PgRelation {
    pub oid: i32,
    pub namespace: i32,
    pub schema: String,
    pub name: String,
    /// `relkind`: r(table), v(iew), m(aterialized view), f(oreign table: sources, streams,
    /// sinks and models).
    pub kind: char,
    pub columns: Vec<PgColumn>,
    /// Column positions (0-based) of the primary key; its index has OID `oid + 1`.
    pub primary_key: Vec<usize>,
    /// For foreign tables: the server (connector) and options psql prints under the table.
    pub server: Option<String>,
    pub options: Vec<(String, String)>,
    /// The defining query of a view or materialized view.
    pub definition: Option<String>,
    /// Its indexes, the primary key's first.
    pub indexes: Vec<PgIndex>,
    pub constraints: Vec<PgConstraint>,
    /// `COMMENT ON` the relation, and on its columns (by position).
    pub comment: Option<String>,
    pub column_comments: Vec<(usize, String)>,
    /// A sequence's parameters (`pg_sequence`).
    pub sequence: Option<crate::catalog::SequenceInfo>,
    /// The primary key's name when the table was renamed after it was made.
    pub pkey_name: Option<String>,
    /// `relhastriggers`: foreign keys are triggers in PostgreSQL, and psql lists a table's
    /// foreign keys (and those referencing it) only when it has triggers.
    pub has_triggers: bool,
}

impl PgRelation {
    pub fn index_oid(&self) -> Option<i32> {
        (!self.primary_key.is_empty()).then_some(self.oid + 1)
    }

    pub fn index_name(&self) -> String {
        self.pkey_name
            .clone()
            .unwrap_or_else(|| format!("{}_pkey", self.name))
    }

    /// The index with this OID.
    pub fn index(&self, oid: i32) -> Option<&PgIndex> {
        self.indexes.iter().find(|i| i.oid == oid)
    }

    pub fn constraint(&self, oid: i32) -> Option<&PgConstraint> {
        self.constraints.iter().find(|c| c.oid == oid)
    }

    pub fn column_names(&self, positions: &[usize]) -> Vec<String> {
        positions
            .iter()
            .filter_map(|&i| self.columns.get(i))
            .map(|c| quote_ident(&c.name))
            .collect()
    }

    pub fn key_columns(&self) -> Vec<&str> {
        self.primary_key
            .iter()
            .map(|&i| self.columns[i].name.as_str())
            .collect()
    }

    pub fn qualified_name(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does.
pub fn quote_ident(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !datafusion::sql::sqlparser::keywords::RESERVED_FOR_COLUMN_ALIAS
            .iter()
            .any(|k| format!("{k:?}").eq_ignore_ascii_case(name));
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Every object of a session's catalog, with OIDs.
#[derive(Debug, Default)]
pub struct PgObjects {
    pub namespaces: Vec<Namespace>,
    pub relations: Vec<PgRelation>,
    /// Roles with their OIDs; the bootstrap superuser (OID 10) first.
    pub roles: Vec<(i32, Arc<RoleDef>)>,
    by_oid: HashMap<i32, usize>,
}

impl PgObjects {
    /// Reads the session's catalog (its transaction's copy inside a block). Views are planned
    /// to learn their columns; a view that no longer plans shows without columns. The result
    /// is kept until the catalog changes, so a query joining several catalogs builds it once.
    pub async fn load(view: &Arc<SessionView>) -> Arc<Self> {
        let catalog = view.catalog();
        if let Some((seen, objects)) = view.pg_objects.lock().as_ref()
            && Arc::ptr_eq(seen, &catalog)
        {
            return objects.clone();
        }
        let mut objects = Self::from_catalog(&catalog);
        let provider = EddyCatalog { view: view.clone() };
        for r in objects.relations.iter_mut().filter(|r| r.kind == 'v') {
            if let Some(schema) = provider.schema(&r.schema)
                && let Ok(Some(table)) = schema.table(&r.name).await
            {
                r.columns = table
                    .schema()
                    .fields()
                    .iter()
                    .map(|field| PgColumn {
                        name: field.name().clone(),
                        ty: PgType::of(&SqlType::from_arrow(field).unwrap_or(SqlType::Text)),
                        not_null: false,
                        default: None,
                        identity: None,
                    })
                    .collect();
            }
        }
        let objects = Arc::new(objects);
        *view.pg_objects.lock() = Some((catalog, objects.clone()));
        objects
    }

    /// The objects of a catalog, without the columns of plain views (which need planning).
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let mut objects = PgObjects::default();
        let bootstrap = catalog.roles().find(|r| r.bootstrap).cloned();
        let bootstrap = bootstrap.unwrap_or_else(|| {
            let mut r = RoleDef::new(DEFAULT_SUPERUSER);
            r.superuser = true;
            r.login = true;
            r.create_db = true;
            r.create_role = true;
            r.replication = true;
            r.bypass_rls = true;
            r.bootstrap = true;
            Arc::new(r)
        });
        objects.roles.push((SUPERUSER_OID, bootstrap.clone()));
        for r in catalog.roles().filter(|r| r.name != bootstrap.name) {
            objects
                .roles
                .push((hashed_oid("role", "", &r.name), r.clone()));
        }
        let mut schemas: Vec<String> = catalog.schemas().cloned().collect();
        schemas.push(EDDY_CATALOG.to_string());
        for schema in &schemas {
            objects.namespaces.push(Namespace {
                oid: namespace_oid(schema),
                name: schema.clone(),
                owner: match schema.as_str() {
                    "public" => DATABASE_OWNER_OID,
                    _ => SUPERUSER_OID,
                },
            });
        }
        for def in catalog.tables() {
            objects.relations.push(table_relation(def, catalog));
        }
        for v in catalog.views() {
            objects.relations.push(PgRelation {
                oid: hashed_oid("view", &v.schema, &v.name),
                namespace: namespace_oid(&v.schema),
                schema: v.schema.clone(),
                name: v.name.clone(),
                kind: 'v',
                columns: Vec::new(),
                primary_key: Vec::new(),
                server: None,
                options: Vec::new(),
                definition: Some(v.sql.clone()),
                indexes: Vec::new(),
                constraints: Vec::new(),
                comment: None,
                column_comments: Vec::new(),
                sequence: None,
                pkey_name: None,
                has_triggers: false,
            });
        }
        for m in catalog.models() {
            let active = m.active_version();
            objects.relations.push(PgRelation {
                oid: hashed_oid("model", &m.schema, &m.name),
                namespace: namespace_oid(&m.schema),
                schema: m.schema.clone(),
                name: m.name.clone(),
                kind: 'f',
                columns: Vec::new(),
                primary_key: Vec::new(),
                server: Some("onnx".to_string()),
                options: [
                    ("version", active.version.to_string()),
                    (
                        "location",
                        eddy_connectors::options::strip_url_credentials(&active.location),
                    ),
                    ("features", active.features.join(", ")),
                ]
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
                definition: None,
                indexes: Vec::new(),
                constraints: Vec::new(),
                comment: None,
                column_comments: Vec::new(),
                sequence: None,
                pkey_name: None,
                has_triggers: false,
            });
        }
        objects.relations.sort_by_key(|r| r.oid);
        objects.by_oid = objects
            .relations
            .iter()
            .enumerate()
            .flat_map(|(i, r)| {
                std::iter::once((r.oid, i))
                    .chain(r.indexes.iter().map(move |x| (x.oid, i)))
                    .chain(r.constraints.iter().map(move |c| (c.oid, i)))
            })
            .collect();
        objects
    }

    /// The name of an OID's role (`pg_get_userbyid`).
    pub fn role_name(&self, oid: i32) -> Option<String> {
        if oid == DATABASE_OWNER_OID {
            return Some("pg_database_owner".to_string());
        }
        self.roles
            .iter()
            .find(|(o, _)| *o == oid)
            .map(|(_, r)| r.name.clone())
    }

    /// The owner of every object.
    pub fn superuser(&self) -> String {
        self.roles[0].1.name.clone()
    }

    /// The relation with this OID, or that has an index or constraint with it.
    pub fn relation(&self, oid: i32) -> Option<&PgRelation> {
        self.by_oid.get(&oid).map(|&i| &self.relations[i])
    }

    /// Connector names of the foreign tables, each a `pg_foreign_server`, with its OID.
    pub fn servers(&self) -> Vec<(i32, String)> {
        let mut names: Vec<String> = self
            .relations
            .iter()
            .filter_map(|r| r.server.clone())
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .map(|n| (hashed_oid("server", "", &n), n))
            .collect()
    }

    pub fn server_oid(name: &str) -> i32 {
        hashed_oid("server", "", name)
    }
}

/// The OID of a stored relation (tables, sources, streams, views, sequences) or a secondary
/// index: from its catalog id.
pub fn relation_oid(id: u32) -> i32 {
    FIRST_USER_OID + 2 * id as i32
}

fn table_relation(def: &TableDef, catalog: &Catalog) -> PgRelation {
    let columns = def
        .columns
        .iter()
        .map(|c| PgColumn {
            name: c.name.clone(),
            ty: PgType::of(&c.ty),
            not_null: !c.nullable,
            default: c.default.clone(),
            identity: c.identity.map(|i| i.code()),
        })
        .collect();
    let redacted = |options: &[(String, String)]| -> Vec<(String, String)> {
        options
            .iter()
            .map(|(k, v)| {
                (
                    k.to_ascii_lowercase(),
                    eddy_connectors::options::shown_value(k, v),
                )
            })
            .collect()
    };
    let (kind, server, options, definition) = match &def.kind {
        TableKind::Table | TableKind::DeadLetters { .. } | TableKind::LateEvents { .. } => {
            ('r', None, Vec::new(), None)
        }
        TableKind::Source(s) => {
            let mut options = redacted(&s.options);
            options.retain(|(k, _)| k != "connector");
            let server = s.connector.clone().unwrap_or_else(|| "push".to_string());
            ('f', Some(server), options, None)
        }
        TableKind::Stream(q) => {
            let mut options = vec![("query".to_string(), crate::cep::syntax::restore(&q.sql))];
            options.extend(redacted(&q.options));
            ('f', Some("stream".to_string()), options, None)
        }
        TableKind::Sink(q) => {
            let mut options = redacted(&q.options);
            let connector = options
                .iter()
                .position(|(k, _)| k == "connector")
                .map(|i| options.remove(i).1)
                .unwrap_or_else(|| "sink".to_string());
            options.insert(
                0,
                ("query".to_string(), crate::cep::syntax::restore(&q.sql)),
            );
            ('f', Some(connector), options, None)
        }
        TableKind::Sequence(_) => ('S', None, Vec::new(), None),
        TableKind::MaterializedView(q) => (
            'm',
            None,
            Vec::new(),
            Some(crate::cep::syntax::restore(&q.sql)),
        ),
    };
    let oid = relation_oid(def.id);
    let mut relation = PgRelation {
        oid,
        namespace: namespace_oid(&def.schema),
        schema: def.schema.clone(),
        name: def.name.clone(),
        kind,
        columns,
        primary_key: match kind {
            'r' => def.primary_key.clone(),
            _ => Vec::new(),
        },
        server,
        options,
        definition,
        indexes: Vec::new(),
        constraints: Vec::new(),
        comment: def.comment.clone(),
        column_comments: def
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.comment.clone().map(|t| (i, t)))
            .collect(),
        sequence: def.sequence().cloned(),
        pkey_name: def.pkey_name.clone(),
        has_triggers: !def.foreign_keys.is_empty() || !catalog.referencing(def.id).is_empty(),
    };
    if kind == 'r' {
        add_keys(&mut relation, def, catalog);
    }
    relation
}

/// A relation's indexes and constraints, in the order psql's `\d` lists them.
fn add_keys(r: &mut PgRelation, def: &TableDef, catalog: &Catalog) {
    let qualified = r.qualified_name();
    if let Some(index) = r.index_oid() {
        r.indexes.push(PgIndex {
            oid: index,
            name: r.index_name(),
            columns: def.primary_key.clone(),
            unique: true,
            primary: true,
            comment: None,
        });
        r.constraints.push(PgConstraint {
            oid: index,
            name: r.index_name(),
            kind: 'p',
            columns: def.primary_key.clone(),
            index: Some(index),
            definition: format!(
                "PRIMARY KEY ({})",
                r.column_names(&def.primary_key).join(", ")
            ),
            check: None,
            foreign: None,
        });
    }
    for index in &def.indexes {
        let oid = relation_oid(index.id);
        r.indexes.push(PgIndex {
            oid,
            name: index.name.clone(),
            columns: index.columns.clone(),
            unique: index.unique,
            primary: false,
            comment: index.comment.clone(),
        });
        if index.constraint {
            r.constraints.push(PgConstraint {
                oid: hashed_oid("constraint", &qualified, &index.name),
                name: index.name.clone(),
                kind: 'u',
                columns: index.columns.clone(),
                index: Some(oid),
                definition: format!("UNIQUE ({})", r.column_names(&index.columns).join(", ")),
                check: None,
                foreign: None,
            });
        }
    }
    for check in &def.checks {
        let columns: Vec<usize> = (0..def.columns.len())
            .filter(|&i| {
                super::super::constraints::mentions_column(&check.expr, &def.columns[i].name)
            })
            .collect();
        r.constraints.push(PgConstraint {
            oid: hashed_oid("constraint", &qualified, &check.name),
            name: check.name.clone(),
            kind: 'c',
            columns,
            index: None,
            definition: format!("CHECK (({}))", check.expr),
            check: Some(check.expr.clone()),
            foreign: None,
        });
    }
    for fk in &def.foreign_keys {
        let parent = catalog.table_by_id(fk.table);
        let (parent_name, ref_names) = match &parent {
            Some(p) => {
                let name = if p.schema == crate::catalog::DEFAULT_SCHEMA {
                    quote_ident(&p.name)
                } else {
                    format!("{}.{}", quote_ident(&p.schema), quote_ident(&p.name))
                };
                let cols: Vec<String> = fk
                    .ref_columns
                    .iter()
                    .map(|&c| quote_ident(&p.columns[c].name))
                    .collect();
                (name, cols)
            }
            None => (String::new(), Vec::new()),
        };
        let mut definition = format!(
            "FOREIGN KEY ({}) REFERENCES {parent_name}({})",
            r.column_names(&fk.columns).join(", "),
            ref_names.join(", ")
        );
        if fk.on_update != crate::catalog::FkAction::NoAction {
            definition.push_str(&format!(" ON UPDATE {}", fk.on_update.sql()));
        }
        if fk.on_delete != crate::catalog::FkAction::NoAction {
            definition.push_str(&format!(" ON DELETE {}", fk.on_delete.sql()));
        }
        r.constraints.push(PgConstraint {
            oid: hashed_oid("constraint", &qualified, &fk.name),
            name: fk.name.clone(),
            kind: 'f',
            columns: fk.columns.clone(),
            index: parent.as_ref().and_then(|p| {
                if fk.ref_columns == p.primary_key {
                    Some(relation_oid(p.id) + 1)
                } else {
                    p.indexes
                        .iter()
                        .find(|i| i.unique && i.columns == fk.ref_columns)
                        .map(|i| relation_oid(i.id))
                }
            }),
            definition,
            check: None,
            foreign: Some(PgForeignKey {
                table: relation_oid(fk.table),
                columns: fk.ref_columns.clone(),
                on_update: fk.on_update.code(),
                on_delete: fk.on_delete.code(),
            }),
        });
    }
}

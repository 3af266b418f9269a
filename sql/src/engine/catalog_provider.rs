//! Eddy's catalog as seen by DataFusion: one catalog provider per session, resolving names
//! through the session's transaction (its private catalog copy and uncommitted rows).

use std::sync::{Arc, Weak};

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::ViewTable;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::SessionState;
use datafusion::logical_expr::{Expr, ExprSchemable};
use parking_lot::{Mutex, RwLock};

use super::Engine;
use crate::catalog::{Catalog, Relation, TableDef};
use crate::table::{KvTable, SharedTxn};

/// What a session's catalog provider needs to resolve names.
pub struct SessionView {
    pub engine: Arc<Engine>,
    pub txn: SharedTxn,
    /// While planning UPDATE/DELETE: the target table, which then exposes its storage columns.
    pub dml_target: Mutex<Option<(String, String)>>,
    /// The session's DataFusion state, to plan views and column defaults.
    pub state: Mutex<Weak<RwLock<SessionState>>>,
    /// The database the session connected to (`pg_database` lists it).
    pub database: String,
    /// pg_catalog's view of the catalog it was built from (see `PgObjects::load`).
    pub pg_objects: Mutex<Option<(Arc<Catalog>, Arc<super::pg_catalog::PgObjects>)>>,
    /// The session's settings and user, for `pg_settings` (weak: the session owns both).
    pub info: Mutex<Weak<super::functions::SessionInfo>>,
}

impl SessionView {
    /// The catalog this session sees: its transaction's copy, or the committed one.
    pub fn catalog(&self) -> Arc<Catalog> {
        if let Some(draft) = self.txn.lock().catalog_draft() {
            return Arc::new(draft.clone());
        }
        self.engine.catalog()
    }

    pub(crate) fn state(&self) -> Option<SessionState> {
        let weak = self.state.lock().clone();
        weak.upgrade().map(|s| s.read().clone())
    }

    /// The DEFAULT of one column, planned (an identity column's draws from its sequence).
    pub fn column_default(&self, def: &TableDef, column: usize) -> DfResult<Option<Expr>> {
        Ok(self.defaults(def)?.into_iter().nth(column).flatten())
    }

    fn defaults(&self, def: &TableDef) -> DfResult<Vec<Option<Expr>>> {
        if def
            .columns
            .iter()
            .all(|c| c.default.is_none() && c.identity.is_none())
        {
            return Ok(vec![None; def.columns.len()]);
        }
        let state = self
            .state()
            .ok_or_else(|| DataFusionError::Internal("session closed".into()))?;
        let catalog = self.catalog();
        def.columns
            .iter()
            .map(|c| {
                // An identity column draws from the sequence it owns.
                let identity = c.identity.and_then(|_| {
                    super::sequences::owned_sequence(&catalog, def, &c.name)
                        .map(|s| super::sequences::nextval_default(&s.schema, &s.name))
                });
                identity
                    .as_ref()
                    .or(c.default.as_ref())
                    .map(|sql| {
                        let sql = super::sequences::plain_regclass_literals(sql);
                        let e = state.create_logical_expr(&sql, &DFSchema::empty())?;
                        e.cast_to(&c.ty.arrow_type(), &DFSchema::empty())
                    })
                    .transpose()
            })
            .collect()
    }
}

#[derive(Clone)]
pub struct EddyCatalog {
    pub view: Arc<SessionView>,
}

impl std::fmt::Debug for EddyCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EddyCatalog")
    }
}

/// Eddy's own system tables: `eddy_catalog.models`, `eddy_catalog.sinks`.
pub const EDDY_CATALOG: &str = "eddy_catalog";

impl CatalogProvider for EddyCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.view.catalog().schemas().cloned().collect();
        names.push(EDDY_CATALOG.to_string());
        names.push("pg_catalog".to_string());
        names.push("information_schema".to_string());
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if name == "information_schema" {
            return Some(Arc::new(super::pg_catalog::InformationSchema {
                view: self.view.clone(),
            }));
        }
        if name == "pg_catalog" {
            return Some(Arc::new(super::pg_catalog::PgCatalog {
                view: self.view.clone(),
            }));
        }
        if name == EDDY_CATALOG {
            return Some(Arc::new(SystemTables {
                view: self.view.clone(),
            }));
        }
        let cat = self.view.catalog();
        cat.schemas().any(|s| s == name).then(|| {
            Arc::new(EddySchema {
                name: name.to_string(),
                view: self.view.clone(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

pub struct EddySchema {
    name: String,
    view: Arc<SessionView>,
}

impl std::fmt::Debug for EddySchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EddySchema({})", self.name)
    }
}

#[async_trait]
impl SchemaProvider for EddySchema {
    fn table_names(&self) -> Vec<String> {
        self.view.catalog().relation_names(&self.name)
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let cat = self.view.catalog();
        match cat.relation(&self.name, name) {
            None => Ok(None),
            Some(Relation::Table(def)) => {
                if matches!(def.kind, crate::catalog::TableKind::Sink(_)) {
                    return Err(crate::error::to_df(crate::error::Error::user(
                        crate::error::sqlstate::FEATURE_NOT_SUPPORTED,
                        format!("sink \"{name}\" stores no rows: read the files it writes"),
                    )));
                }
                if let Some(c) = def.source().and_then(|s| s.connector.as_ref()) {
                    return Err(crate::error::to_df(crate::error::Error::user(
                        crate::error::sqlstate::FEATURE_NOT_SUPPORTED,
                        format!(
                            "source \"{name}\" reads from {c} and stores no rows: query a stream or materialized view over it"
                        ),
                    )));
                }
                if def.sequence().is_some() {
                    // A sequence reads as its live state, not the row logged ahead.
                    let batch = self
                        .view
                        .engine
                        .sequences
                        .state_row(self.view.engine.kv().as_ref(), &def)
                        .map_err(crate::error::to_df)?;
                    let table = datafusion::datasource::MemTable::try_new(
                        batch.schema(),
                        vec![vec![batch]],
                    )?;
                    return Ok(Some(Arc::new(table)));
                }
                let storage_columns = self
                    .view
                    .dml_target
                    .lock()
                    .as_ref()
                    .is_some_and(|(s, n)| *s == def.schema && *n == def.name);
                let defaults = self.view.defaults(&def)?;
                Ok(Some(Arc::new(KvTable::new(
                    def,
                    self.view.engine.kv().clone(),
                    self.view.txn.clone(),
                    storage_columns,
                    defaults,
                ))))
            }
            Some(Relation::View(v)) => {
                let state = self
                    .view
                    .state()
                    .ok_or_else(|| DataFusionError::Internal("session closed".into()))?;
                let plan = state.create_logical_plan(&v.sql).await?;
                Ok(Some(Arc::new(ViewTable::new(plan, Some(v.sql.clone())))))
            }
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.view.catalog().relation(&self.name, name).is_some()
    }
}

/// `eddy_catalog`: tables computed from the catalog when a query reads them.
struct SystemTables {
    view: Arc<SessionView>,
}

impl std::fmt::Debug for SystemTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SystemTables")
    }
}

#[async_trait]
impl SchemaProvider for SystemTables {
    fn table_names(&self) -> Vec<String> {
        vec!["models".to_string(), "sinks".to_string()]
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let catalog = self.view.catalog();
        let batch = match name {
            "models" => super::models::catalog_batch(&catalog),
            "sinks" => super::streaming::sinks_batch(&self.view.engine, &catalog),
            _ => return Ok(None),
        }
        .map_err(crate::error::to_df)?;
        let table = datafusion::datasource::MemTable::try_new(batch.schema(), vec![vec![batch]])?;
        Ok(Some(Arc::new(table)))
    }

    fn table_exist(&self, name: &str) -> bool {
        matches!(name, "models" | "sinks")
    }
}

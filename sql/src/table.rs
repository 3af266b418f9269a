//! Stored tables as DataFusion tables.
//!
//! [`KvTable`] reads a table's rows from the KV store merged with the session's uncommitted
//! writes. Predicates on the primary key are pushed down ([`pushdown`]): equality on the whole
//! key becomes point reads, bounds on a key prefix become one key-range scan, so a lookup never
//! reads the whole table. Pushed filters are `Inexact`: DataFusion still applies them, so the
//! key plan only has to be a superset of the matching rows.
//!
//! For UPDATE and DELETE the engine plans against a [`KvTable`] that also exposes each row's
//! storage key and stored bytes as two hidden columns, so the write knows which keys to change
//! and what it read (for validation at commit).

pub mod pushdown;
pub mod scan;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::Session;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::StreamingTableExec;
use parking_lot::Mutex;

use crate::catalog::TableDef;
use crate::storage::KvStore;
use crate::txn::Txn;
use pushdown::KeyPlan;
use scan::ScanPartition;

/// Hidden column holding a row's storage key (UPDATE/DELETE planning only).
pub const KEY_COLUMN: &str = "__eddy_key";
/// Hidden column holding a row's stored bytes (UPDATE/DELETE planning only).
pub const ROW_COLUMN: &str = "__eddy_row";

/// The session's open transaction, shared with the scans it plans.
pub type SharedTxn = Arc<Mutex<Txn>>;

pub struct KvTable {
    def: Arc<TableDef>,
    kv: Arc<dyn KvStore>,
    txn: SharedTxn,
    schema: SchemaRef,
    /// Whether the hidden key and row columns are part of the schema.
    with_storage_columns: bool,
    defaults: Vec<Option<Expr>>,
}

impl std::fmt::Debug for KvTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KvTable({})", self.def.qualified_name())
    }
}

impl KvTable {
    pub fn new(
        def: Arc<TableDef>,
        kv: Arc<dyn KvStore>,
        txn: SharedTxn,
        with_storage_columns: bool,
        defaults: Vec<Option<Expr>>,
    ) -> Self {
        let table_schema = def.arrow_schema();
        let schema = if with_storage_columns {
            let mut fields: Vec<Field> = table_schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect();
            fields.push(Field::new(KEY_COLUMN, DataType::Binary, false));
            fields.push(Field::new(ROW_COLUMN, DataType::Binary, false));
            Arc::new(Schema::new(fields))
        } else {
            table_schema
        };
        Self {
            def,
            kv,
            txn,
            schema,
            with_storage_columns,
            defaults,
        }
    }

    pub fn def(&self) -> &Arc<TableDef> {
        &self.def
    }
}

#[async_trait]
impl TableProvider for KvTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        let idx = self.def.column_index(column)?;
        self.defaults.get(idx)?.as_ref()
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|f| {
                if pushdown::constrains_key(f, &self.def) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let plan = KeyPlan::from_filters(filters, &self.def).map_err(crate::error::to_df)?;
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let projected = Arc::new(self.schema.project(&projection)?);
        let partition = ScanPartition::new(
            self.def.clone(),
            self.kv.clone(),
            &self.txn.lock(),
            plan,
            projection,
            projected.clone(),
            self.with_storage_columns,
            limit,
        );
        Ok(Arc::new(StreamingTableExec::try_new(
            projected,
            vec![Arc::new(partition)],
            None,
            Vec::new(),
            false,
            limit,
        )?))
    }
}

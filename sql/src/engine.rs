//! The engine: the store, the shared catalog, and the commit path every session uses.
//!
//! Invariants: the catalog snapshot in [`Engine::catalog`] always equals what the store holds
//! (it is swapped only after the batch that persists it is durable); catalog-changing commits
//! are serialized by `catalog_commit`; row commits go through [`txn::commit`] and may run
//! concurrently (RocksDB groups their WAL syncs).

pub mod advisory;
mod alter;
mod catalog_provider;
mod constraints;
mod constraints_actions;
mod copy;
mod cursors;
mod ddl;
mod dml;
mod functions;
mod json_build;
mod match_recognize;
pub mod memory;
mod models;
mod naming;
pub mod notify;
mod pg_casts;
mod pg_catalog;
mod pg_functions;
mod point_get;
mod point_write;
mod returning;
mod roles;
mod scalar_select;
pub mod sequences;
mod session;
mod settings;
mod sql_prepare;
mod statement;
mod streaming;
pub mod subscribe;
mod system_time;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

use parking_lot::{Mutex, RwLock};

pub use copy::{BinaryDecoder, CopyFormat};
pub use dml::parse_bytea;
pub use naming::{output_names, rename};
pub use point_get::read_committed;
pub use roles::bootstrap_admin;
pub use session::{CommandTag, Prepared, QueryOutput, Session, TxnStatus, is_transaction_control};
pub use settings::SERVER_VERSION;
pub use statement::{EddyStatement, ObjectKind, Stmt};

use crate::catalog::{Catalog, TableDef};
use crate::error::{Error, Result};
use crate::storage::memory::MemoryStore;
use crate::storage::rocks::RocksStore;
use crate::storage::{KvStore, prefix_end};
use crate::stream::log::LogWriter;
use crate::stream::manager::{DEFAULT_CHECKPOINT_INTERVAL_MS, StreamManager};
use crate::txn::{self, CatalogCommit, Txn, locks::KeyLocks};

pub struct Engine {
    kv: Arc<dyn KvStore>,
    catalog: RwLock<Arc<Catalog>>,
    /// Held exclusively by commits that change the catalog, shared by those that write rows
    /// (so a row commit sees the layout its rows must have).
    catalog_commit: RwLock<()>,
    /// Per table: its current row layout (where not 0), and how many commits wrote its rows.
    layouts: RwLock<HashMap<u32, u32>>,
    table_writes: Mutex<HashMap<u32, u64>>,
    locks: KeyLocks,
    /// Next hidden row id per table without a primary key.
    row_ids: Mutex<HashMap<u32, u64>>,
    /// LISTEN / NOTIFY between sessions (and from notify sinks).
    pub notifier: Arc<notify::Notifier>,
    /// Current values of sequences (`nextval`).
    pub sequences: sequences::Sequences,
    next_backend_pid: AtomicI32,
    /// Pipelines of streams and materialized views.
    pub streams: Arc<StreamManager>,
    /// Appends events pushed into sources (INSERT, HTTP).
    pub log: LogWriter,
    /// ONNX model files and loaded sessions.
    pub models: models::ModelStore,
    /// `pg_advisory_lock` and friends.
    pub advisory: Arc<advisory::AdvisoryLocks>,
    /// Whether passwords set from now on also keep PostgreSQL's MD5 hash (the server enables
    /// it when MD5 authentication is configured).
    pub md5_passwords: std::sync::atomic::AtomicBool,
    /// What one statement or client may make the server spend.
    pub limits: crate::limits::Limits,
    /// The memory all sessions' queries share (`limits.query_memory_bytes`).
    pub query_memory: Arc<memory::QueryMemory>,
}

fn altered_concurrently(why: &str) -> Error {
    Error::user(
        crate::error::sqlstate::SERIALIZATION_FAILURE,
        "could not serialize access due to concurrent ALTER TABLE",
    )
    .with_detail(why.to_string())
}

/// A file of [`RESERVE_BYTES`] kept in the data dir and deleted at every start before the
/// store opens: room for RocksDB to replay its log and flush after the disk filled up.
pub const RESERVE_FILE: &str = "space-reserve";
pub const RESERVE_BYTES: usize = 64 << 20;

/// Allocates the reserve file's blocks (without writing them) and syncs it.
fn write_reserve(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::create(path)?;
    // SAFETY: a valid open descriptor and a non-negative range.
    let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, RESERVE_BYTES as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc));
    }
    f.sync_all()
}

/// Bytes free for unprivileged writers on the filesystem of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a pointer to a zeroed statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut stat) };
    (rc == 0).then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

impl Engine {
    /// Opens (or creates) the database in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Arc<Self>> {
        Self::open_with_limits(data_dir, Default::default())
    }

    /// Opens (or creates) the database in `data_dir`, enforcing `limits`.
    pub fn open_with_limits(data_dir: &Path, limits: crate::limits::Limits) -> Result<Arc<Self>> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", data_dir.display())))?;
        // The reserve file gives its space back before the store opens, so a data dir whose
        // filesystem filled up (and was then killed) can always replay its log.
        let reserve = data_dir.join(RESERVE_FILE);
        if free_bytes(data_dir).is_none_or(|free| free < 4 * RESERVE_BYTES as u64) {
            let _ = std::fs::remove_file(&reserve);
        }
        let kv: Arc<dyn KvStore> = Arc::new(RocksStore::open(&data_dir.join("db"))?);
        if !reserve.exists()
            && let Err(e) = write_reserve(&reserve)
        {
            let _ = std::fs::remove_file(&reserve);
            tracing::warn!(
                "cannot keep the {RESERVE_BYTES}-byte reserve file {}: {e} (free some space)",
                reserve.display()
            );
        }
        Self::with_store(kv, data_dir.to_path_buf(), limits)
    }

    /// A non-durable engine for tests.
    pub fn in_memory() -> Arc<Self> {
        let dir = std::env::temp_dir().join(format!("eddy-memory-{}", std::process::id()));
        Self::with_store(Arc::new(MemoryStore::new()), dir, Default::default())
            .expect("in-memory catalog loads")
    }

    fn with_store(
        kv: Arc<dyn KvStore>,
        data_dir: std::path::PathBuf,
        limits: crate::limits::Limits,
    ) -> Result<Arc<Self>> {
        let catalog = Catalog::load(kv.as_ref())?;
        crate::stream::state::migrate::migrate(kv.as_ref(), &catalog)?;
        let log = LogWriter::default();
        let streams = Arc::new(StreamManager::new(
            kv.clone(),
            log.signal.clone(),
            DEFAULT_CHECKPOINT_INTERVAL_MS,
            data_dir.join("sinks"),
            limits.state_cache_bytes,
            limits.parallelism,
        ));
        let notifier = streams.notifier.clone();
        Ok(Arc::new_cyclic(|engine| Self {
            models: models::ModelStore::new(data_dir.join("models"), engine.clone()),
            streams,
            log,
            kv,
            layouts: RwLock::new(
                catalog
                    .tables()
                    .filter(|t| t.layout != 0)
                    .map(|t| (t.id, t.layout))
                    .collect(),
            ),
            catalog: RwLock::new(Arc::new(catalog)),
            catalog_commit: RwLock::new(()),
            table_writes: Mutex::new(HashMap::new()),
            locks: KeyLocks::new(),
            row_ids: Mutex::new(HashMap::new()),
            sequences: Default::default(),
            notifier: notifier.clone(),
            next_backend_pid: AtomicI32::new(1000),
            advisory: Arc::default(),
            md5_passwords: Default::default(),
            query_memory: memory::QueryMemory::new(limits.query_memory_bytes),
            limits,
        }))
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    pub fn storage_stats(&self) -> Vec<(String, u64)> {
        self.kv.stats()
    }

    /// Commits `txn`: validates, writes one synced batch, installs catalog changes.
    /// Blocking (it waits for the WAL sync): call from a blocking thread.
    pub fn commit(&self, txn: Txn) -> Result<()> {
        let written: Vec<u32> = txn.layouts().keys().copied().collect();
        if txn.catalog_draft().is_none() {
            let _shared = self.catalog_commit.read();
            self.check_layouts(&txn)?;
            let version = self.catalog.read().version;
            txn::commit(self.kv.as_ref(), &self.locks, txn, version)?;
            self.count_writes(&written);
            return Ok(());
        }
        let _serial = self.catalog_commit.write();
        if let Some(draft) = txn.catalog_draft() {
            // Rows this transaction wrote must have the layout its own catalog gives them.
            for (table, seen) in txn.layouts() {
                if let Some(t) = draft.table_by_id(*table)
                    && t.layout != *seen
                {
                    return Err(altered_concurrently(
                        "rows were written in a layout this transaction changed afterwards",
                    ));
                }
            }
        }
        {
            let writes = self.table_writes.lock();
            for (table, seen) in txn.rewrites() {
                if writes.get(table).copied().unwrap_or(0) != *seen {
                    return Err(altered_concurrently(
                        "rows of a table this statement rewrote were written concurrently",
                    ));
                }
            }
        }
        let version = self.catalog.read().version;
        if let CatalogCommit::Install(cat) =
            txn::commit(self.kv.as_ref(), &self.locks, txn, version)?
        {
            let cat = Arc::new(cat);
            *self.layouts.write() = cat
                .tables()
                .filter(|t| t.layout != 0)
                .map(|t| (t.id, t.layout))
                .collect();
            *self.catalog.write() = cat.clone();
            self.streams.reconcile(&cat);
        }
        self.count_writes(&written);
        Ok(())
    }

    /// Rows written in a table's old layout cannot be stored after ALTER TABLE changed it.
    fn check_layouts(&self, txn: &Txn) -> Result<()> {
        if txn.layouts().is_empty() {
            return Ok(());
        }
        let layouts = self.layouts.read();
        for (table, seen) in txn.layouts() {
            if layouts.get(table).copied().unwrap_or(0) != *seen {
                return Err(altered_concurrently(
                    "the table was altered after this transaction wrote its rows",
                ));
            }
        }
        Ok(())
    }

    fn count_writes(&self, tables: &[u32]) {
        if tables.is_empty() {
            return;
        }
        let mut writes = self.table_writes.lock();
        for t in tables {
            *writes.entry(*t).or_insert(0) += 1;
        }
    }

    /// How many commits have written rows of `table` (ALTER TABLE notes it before rewriting).
    pub fn table_writes(&self, table: u32) -> u64 {
        self.table_writes.lock().get(&table).copied().unwrap_or(0)
    }

    /// Starts the pipelines of every stream and materialized view (from their last
    /// checkpoints); from now on catalog changes start and stop pipelines.
    pub fn start_streams(&self, runtime: tokio::runtime::Handle) {
        self.streams.set_models(self.models.source());
        self.streams.start(runtime, &self.catalog());
    }

    /// Appends rows (in the source's column types) and dead letters to a push source's log.
    pub fn append_events(
        &self,
        source: &TableDef,
        batch: &datafusion::arrow::array::RecordBatch,
        dead: &mut [eddy_connectors::DeadLetter],
    ) -> Result<u64> {
        let catalog = self.catalog();
        let errors = catalog
            .owned_by(source)
            .into_iter()
            .find(|t| matches!(t.kind, crate::catalog::TableKind::DeadLetters { .. }));
        self.log.append(
            self.kv.as_ref(),
            source,
            errors.as_deref(),
            batch,
            dead,
            chrono::Utc::now().timestamp_micros(),
        )
    }

    /// Allocates `n` consecutive hidden row ids for a table without a primary key.
    pub fn allocate_row_ids(&self, table: &TableDef, n: u64) -> Result<u64> {
        let mut ids = self.row_ids.lock();
        let next = match ids.get(&table.id) {
            Some(next) => *next,
            None => {
                let prefix = table.key_prefix();
                match self.kv.last_key(&prefix, &prefix_end(&prefix))? {
                    Some(k) if k.len() == prefix.len() + 8 => {
                        let id: [u8; 8] = k[prefix.len()..].try_into().expect("length checked");
                        u64::from_be_bytes(id) + 1
                    }
                    _ => 1,
                }
            }
        };
        ids.insert(table.id, next + n);
        Ok(next)
    }

    fn next_backend_pid(&self) -> i32 {
        self.next_backend_pid.fetch_add(1, Ordering::Relaxed)
    }
}

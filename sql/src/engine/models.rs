//! Models: CREATE MODEL copies the ONNX file into the data dir under its SHA-256 (so the model
//! survives restarts and the source file's deletion) and records its inputs and outputs in
//! the catalog. A model has numbered versions, one of them active: ad-hoc PREDICT uses the
//! active one, and running pipelines switch to a new active version at their next checkpoint
//! (see `stream::models`). Loaded sessions are cached per file.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int32Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Value as SqlValue,
    VisitMut, VisitorMut,
};
use eddy_udf::onnx::{Model, TensorInfo};
use eddy_udf::predict::{ModelLookup, Resolved};
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Engine;
use super::catalog_provider::SessionView;
use super::session::{CommandTag, QueryOutput, Session, rows};
use super::statement::{AlterModel, CreateModel};
use crate::catalog::{Catalog, DEFAULT_SCHEMA, ModelDef, ModelTensor, ModelVersion};
use crate::error::{Error, Result, sqlstate};
use crate::stream::models::ModelSource;

pub struct ModelStore {
    dir: PathBuf,
    /// Loaded sessions by (file hash, intra-op threads).
    loaded: Mutex<HashMap<(String, usize), Arc<Model>>>,
    engine: Weak<Engine>,
}

impl std::fmt::Debug for ModelStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelStore({})", self.dir.display())
    }
}

fn tensors(infos: &[TensorInfo]) -> Vec<ModelTensor> {
    infos
        .iter()
        .map(|t| ModelTensor {
            name: t.name.clone(),
            element: t.element.clone(),
            shape: t.shape.clone(),
        })
        .collect()
}

fn model_error(message: String) -> Error {
    Error::user(sqlstate::INVALID_PARAMETER_VALUE, message)
}

fn undefined_model(name: &str) -> Error {
    Error::user(
        sqlstate::UNDEFINED_OBJECT,
        format!("model \"{name}\" does not exist"),
    )
}

impl ModelStore {
    /// The store in `dir`; copies a crash interrupted (`incoming-*.tmp`) are removed.
    pub fn new(dir: PathBuf, engine: Weak<Engine>) -> Self {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("incoming-") && name.ends_with(".tmp") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
            engine,
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.onnx"))
    }

    /// Moves a staged model file into the store (durably: the file and the directory entry
    /// are synced before the catalog commit that names it) and loads it; returns its hash
    /// and the session. `source` names the file in errors.
    fn import(&self, source: &str, staged: Staged, threads: usize) -> Result<(String, Arc<Model>)> {
        let Staged { tmp, sha256 } = staged;
        let path = self.path(&sha256);
        let model = if path.exists() {
            let _ = std::fs::remove_file(&tmp);
            Model::load(&path, threads).map_err(|e| model_error(e.0))?
        } else {
            // Load from the staged copy first: a file that is not a model never lands in
            // the store under its final name.
            let model = match Model::load(&tmp, threads) {
                Ok(m) => m,
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    let reason = e.0.rsplit(": ").next().unwrap_or(&e.0).to_string();
                    return Err(model_error(format!(
                        "{source} is not a usable ONNX model: {reason}"
                    )));
                }
            };
            std::fs::rename(&tmp, &path)
                .and_then(|_| sync_dir(&self.dir))
                .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))?;
            model
        };
        let model = Arc::new(model);
        self.loaded
            .lock()
            .insert((sha256.clone(), threads), model.clone());
        Ok((sha256, model))
    }

    /// A fresh temporary name in the store's directory (which is created if need be).
    fn staging_path(&self) -> Result<PathBuf> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::Storage(format!("cannot create {}: {e}", self.dir.display())))?;
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .dir
            .join(format!("incoming-{}-{n}.tmp", std::process::id())))
    }

    /// The loaded session of one version of a catalog model.
    pub fn get(&self, name: &str, version: &ModelVersion) -> Result<Arc<Model>> {
        let key = (version.sha256.clone(), version.intra_threads);
        if let Some(m) = self.loaded.lock().get(&key) {
            return Ok(m.clone());
        }
        let model = Model::load(&self.path(&version.sha256), version.intra_threads)
            .map_err(|e| model_error(format!("model \"{name}\": {}", e.0)))?;
        let model = Arc::new(model);
        self.loaded.lock().insert(key, model.clone());
        Ok(model)
    }

    /// A model by name at `version` (None: the active one), as REST inference uses it.
    pub fn resolve(
        &self,
        catalog: &Catalog,
        name: &str,
        version: Option<u32>,
    ) -> Result<(u32, Arc<Model>)> {
        let def = catalog
            .model(DEFAULT_SCHEMA, name)
            .ok_or_else(|| undefined_model(name))?;
        let v = match version {
            None => def.active_version(),
            Some(n) => def.version(n).ok_or_else(|| {
                Error::user(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("model \"{name}\" has no version {n}"),
                )
            })?,
        };
        Ok((v.version, self.get(name, v)?))
    }

    /// What a session's PREDICT uses to find models: their active versions in the catalog
    /// the session sees (its transaction's, with models it created but did not commit yet).
    pub fn session_lookup(&self, view: Weak<SessionView>) -> Arc<dyn ModelLookup> {
        Arc::new(EngineModels {
            engine: self.engine.clone(),
            scope: Scope::Session(view),
        })
    }

    /// What pipelines pin their model versions from: the committed catalog.
    pub fn source(&self) -> Arc<dyn ModelSource> {
        Arc::new(EngineModels {
            engine: self.engine.clone(),
            scope: Scope::Committed,
        })
    }

    /// The models of one catalog (what CREATE STREAM plans against).
    pub fn source_in(&self, catalog: Arc<Catalog>) -> Arc<dyn ModelSource> {
        Arc::new(EngineModels {
            engine: self.engine.clone(),
            scope: Scope::Snapshot(catalog),
        })
    }
}

/// Which catalog a model name is looked up in.
#[derive(Debug)]
enum Scope {
    Committed,
    Session(Weak<SessionView>),
    Snapshot(Arc<Catalog>),
}

#[derive(Debug)]
struct EngineModels {
    engine: Weak<Engine>,
    scope: Scope,
}

impl EngineModels {
    fn engine(&self) -> std::result::Result<Arc<Engine>, String> {
        self.engine
            .upgrade()
            .ok_or_else(|| "the database is shutting down".to_string())
    }

    fn catalog(&self) -> std::result::Result<Arc<Catalog>, String> {
        match &self.scope {
            Scope::Committed => Ok(self.engine()?.catalog()),
            Scope::Session(view) => view
                .upgrade()
                .map(|v| v.catalog())
                .ok_or_else(|| "the session has ended".to_string()),
            Scope::Snapshot(catalog) => Ok(catalog.clone()),
        }
    }

    fn def(&self, name: &str) -> Option<Arc<ModelDef>> {
        self.catalog().ok()?.model(DEFAULT_SCHEMA, name)
    }

    fn resolve(&self, name: &str, version: Option<u32>) -> std::result::Result<Resolved, String> {
        let (version, model) = self
            .engine()?
            .models
            .resolve(self.catalog()?.as_ref(), name, version)
            .map_err(|e| e.to_string())?;
        Ok(Resolved { model, version })
    }
}

impl ModelLookup for EngineModels {
    fn model(&self, name: &str) -> std::result::Result<Resolved, String> {
        self.resolve(name, None)
    }
}

impl ModelSource for EngineModels {
    fn active_version(&self, name: &str) -> Option<u32> {
        self.def(name).map(|d| d.active)
    }

    fn has_version(&self, name: &str, version: u32) -> bool {
        self.def(name).is_some_and(|d| d.version(version).is_some())
    }

    fn load(&self, name: &str, version: u32) -> std::result::Result<Resolved, String> {
        self.resolve(name, Some(version))
    }
}

/// Features a version takes: its float inputs' widths, summed (None: not PREDICT-able).
fn feature_count(v: &ModelVersion) -> Option<usize> {
    v.inputs
        .iter()
        .map(|t| match (t.element.as_str(), t.shape.as_slice()) {
            ("f32", [_]) => Some(1),
            ("f32", [_, k]) if *k > 0 => Some(*k as usize),
            _ => None,
        })
        .sum()
}

/// Whether a query that scores with version `a` can go on with version `b`: the same
/// feature count, the same type of first output and, when both name their features, the
/// same names (named arguments were resolved by position when the query was created).
fn compatible(a: &ModelVersion, b: &ModelVersion) -> bool {
    let output = |v: &ModelVersion| v.outputs.first().map(|o| o.element.clone());
    feature_count(a) == feature_count(b)
        && output(a) == output(b)
        && (a.features.is_empty() || b.features.is_empty() || a.features == b.features)
}

/// A model file copied into the model directory under a temporary name, synced, with the
/// SHA-256 of its bytes.
struct Staged {
    tmp: PathBuf,
    sha256: String,
}

/// Syncs a directory, so that a rename into it survives a crash.
fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

fn too_large(location: &str, max: u64) -> Error {
    Error::user(
        sqlstate::PROGRAM_LIMIT_EXCEEDED,
        format!("model file {location} is larger than max_model_size ({max} bytes)"),
    )
    .with_detail("Raise max_model_size in the server's configuration to load larger models.")
}

/// Writes chunks to a staging file while hashing them, refusing more than `max` bytes.
struct Stager {
    file: std::fs::File,
    tmp: PathBuf,
    hasher: Sha256,
    written: u64,
    max: u64,
}

impl Stager {
    fn create(tmp: PathBuf, max: u64) -> Result<Self> {
        let file = std::fs::File::create(&tmp)
            .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))?;
        Ok(Self {
            file,
            tmp,
            hasher: Sha256::new(),
            written: 0,
            max,
        })
    }

    /// Appends a chunk; false (and nothing written) when it would pass the limit.
    fn write(&mut self, chunk: &[u8]) -> Result<bool> {
        if self.written + chunk.len() as u64 > self.max {
            return Ok(false);
        }
        self.hasher.update(chunk);
        self.written += chunk.len() as u64;
        self.file
            .write_all(chunk)
            .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))?;
        Ok(true)
    }

    /// The staged file, synced, when `copied` is Ok; otherwise the partial copy is removed.
    fn complete(self, copied: Result<()>) -> Result<Staged> {
        let synced = copied.and_then(|()| {
            self.file
                .sync_all()
                .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))
        });
        if let Err(e) = synced {
            let _ = std::fs::remove_file(&self.tmp);
            return Err(e);
        }
        let sha256 = self
            .hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Ok(Staged {
            tmp: self.tmp,
            sha256,
        })
    }
}

/// Copies a local model file into the store's staging area, on the calling (blocking) thread.
fn stage_local(path: &str, tmp: PathBuf, max: u64) -> Result<Staged> {
    use std::io::Read;
    let cannot = |e: std::io::Error| model_error(format!("cannot read model file {path}: {e}"));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let meta = file.metadata().map_err(cannot)?;
    if !meta.is_file() {
        return Err(model_error(format!(
            "cannot read model file {path}: not a regular file"
        )));
    }
    if meta.len() > max {
        return Err(too_large(path, max));
    }
    let mut stager = Stager::create(tmp, max)?;
    let mut buf = vec![0u8; 1 << 20];
    let copied = (|| loop {
        let n = file.read(&mut buf).map_err(cannot)?;
        if n == 0 {
            return Ok(());
        }
        if !stager.write(&buf[..n])? {
            return Err(too_large(path, max));
        }
    })();
    stager.complete(copied)
}

/// Copies a model file into the store's staging area: a local path or `file://` URL (read on
/// a blocking thread), or an object in S3, Google Cloud Storage or Azure Blob Storage
/// (`eddy_connectors::store`: settings from `options`), streamed. At most `max` bytes are
/// copied. Credentials are used for this read only: the catalog keeps the location.
async fn fetch(
    location: &str,
    options: &[(String, String)],
    tmp: PathBuf,
    max: u64,
) -> Result<Staged> {
    if eddy_connectors::store::scheme(location).is_none() {
        if let Some(other) = location
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            && other != "file"
        {
            return Err(Error::not_supported(format!(
                "model locations of scheme {other}:// (use a local path, file://, s3://, gs:// or az://)"
            )));
        }
        if let Some((k, _)) = options.first() {
            return Err(model_error(format!(
                "unknown option \"{k}\" (models take intra_threads and features; store settings only apply to s3://, gs:// and az:// locations)"
            )));
        }
        let path = location
            .strip_prefix("file://")
            .unwrap_or(location)
            .to_string();
        return tokio::task::spawn_blocking(move || stage_local(&path, tmp, max))
            .await
            .map_err(|e| Error::internal(format!("model copy failed: {e}")))?;
    }
    let (store, path) = eddy_connectors::store::open(location, options).map_err(model_error)?;
    let invalid = |e: object_store::Error| {
        model_error(format!(
            "cannot read model {location}: {}",
            eddy_connectors::store::describe(&e)
        ))
    };
    use futures::StreamExt;
    use object_store::ObjectStoreExt;
    let object = store.get(&path).await.map_err(invalid)?;
    if object.meta.size > max {
        return Err(too_large(location, max));
    }
    let mut chunks = object.into_stream();
    let mut stager = Stager::create(tmp, max)?;
    let copied = async {
        while let Some(chunk) = chunks.next().await {
            if !stager.write(&chunk.map_err(invalid)?)? {
                return Err(too_large(location, max));
            }
        }
        Ok(())
    }
    .await;
    stager.complete(copied)
}

/// CREATE MODEL's options: intra-op threads, feature names, and the object store's settings.
type ModelOptions = (usize, Option<Vec<String>>, Vec<(String, String)>);

fn parse_options(options: &[(String, String)]) -> Result<ModelOptions> {
    let mut threads = 1;
    let mut features = None;
    let mut store = Vec::new();
    for (k, v) in options {
        match k.as_str() {
            "intra_threads" => threads = v
                .parse()
                .ok()
                .filter(|n| (1..=256).contains(n))
                .ok_or_else(|| {
                    model_error(format!(
                        "invalid value for option \"intra_threads\": \"{v}\" (expected 1 to 256)"
                    ))
                })?,
            "features" => {
                let names: Vec<String> = v
                    .split(',')
                    .map(|n| n.trim().to_lowercase())
                    .filter(|n| !n.is_empty())
                    .collect();
                if names.is_empty() {
                    return Err(model_error(
                        "option \"features\" lists the feature names, e.g. 'temp, vibration'"
                            .into(),
                    ));
                }
                features = Some(names);
            }
            _ => store.push((k.clone(), v.clone())),
        }
    }
    Ok((threads, features, store))
}

pub async fn create(session: &Session, m: &CreateModel) -> Result<CommandTag> {
    let tag = CommandTag::new("CREATE MODEL");
    let (schema, name) = session.qualify(&m.name)?;
    if schema != DEFAULT_SCHEMA {
        return Err(Error::not_supported("models outside schema public"));
    }
    let existing = session.view().catalog().model(&schema, &name);
    match (&existing, m.version) {
        (Some(_), None) if m.if_not_exists => return Ok(tag),
        (Some(_), None) => {
            return Err(
                Error::user("42710", format!("model \"{name}\" already exists")).with_detail(
                    format!("Add a version with CREATE MODEL {name} VERSION n FROM '...'."),
                ),
            );
        }
        (Some(d), Some(v)) if d.version(v).is_some() => {
            if m.if_not_exists {
                return Ok(tag);
            }
            return Err(Error::user(
                "42710",
                format!("model \"{name}\" already has version {v}"),
            ));
        }
        _ => {}
    }
    let (threads, features, store_options) = parse_options(&m.options)?;
    let engine = session.engine();
    let tmp = engine.models.staging_path()?;
    let staged = fetch(
        &m.location,
        &store_options,
        tmp,
        engine.limits.max_model_bytes,
    )
    .await?;
    let (sha256, model) = engine.models.import(&m.location, staged, threads)?;
    let features = match features {
        Some(names) => {
            let width = model.feature_count().map_err(|e| {
                model_error(format!("model \"{name}\" cannot take named features: {e}"))
            })?;
            if names.len() != width {
                return Err(model_error(format!(
                    "option \"features\" names {} features; the model takes {width}",
                    names.len()
                )));
            }
            names
        }
        None => model.input_names().unwrap_or_default(),
    };
    let version = ModelVersion {
        version: m.version.unwrap_or(1),
        sha256,
        inputs: tensors(&model.inputs),
        outputs: tensors(&model.outputs),
        intra_threads: threads,
        features,
        location: m.location.clone(),
        created_at_ms: chrono::Utc::now().timestamp_millis(),
    };
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let ops = match catalog.model(&schema, &name) {
        // A new version; the active one stays until ALTER MODEL ... SET ACTIVE VERSION.
        Some(def) if m.version.is_some() => {
            let mut def = def.as_ref().clone();
            def.versions.push(version);
            def.versions.sort_by_key(|v| v.version);
            catalog.put_model(def)?
        }
        _ => catalog.create_model(ModelDef {
            schema: schema.clone(),
            name,
            active: version.version,
            versions: vec![version],
            history: Vec::new(),
        })?,
    };
    txn.push_ops(ops);
    Ok(tag)
}

/// Streams and materialized views that score with the model `name`.
fn users(catalog: &Catalog, name: &str) -> Vec<String> {
    catalog
        .tables()
        .filter(|t| match t.kind.query() {
            Some(q) => q.models.iter().any(|m| m == name),
            None => false,
        })
        .map(|t| t.name.clone())
        .collect()
}

pub fn alter(session: &Session, name: &ObjectName, action: AlterModel) -> Result<CommandTag> {
    let (schema, name) = session.qualify(name)?;
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    let def = catalog
        .model(&schema, &name)
        .ok_or_else(|| undefined_model(&name))?;
    let mut def = def.as_ref().clone();
    let target = match action {
        AlterModel::SetActive(v) => {
            if def.version(v).is_none() {
                return Err(Error::user(
                    sqlstate::UNDEFINED_OBJECT,
                    format!("model \"{name}\" has no version {v}"),
                ));
            }
            if v != def.active {
                def.history.push(def.active);
            }
            v
        }
        AlterModel::Rollback => def.history.pop().ok_or_else(|| {
            Error::user(
                "55000",
                format!("model \"{name}\" has no earlier active version to roll back to"),
            )
        })?,
    };
    let (from, to) = (
        def.active_version().clone(),
        def.version(target).expect("checked").clone(),
    );
    let queries = users(catalog, &name);
    if !compatible(&from, &to)
        && let Some(query) = queries.first()
    {
        return Err(Error::user(
            "55000",
            format!(
                "cannot switch model \"{name}\" to version {target}: \"{query}\" scores with it, and version {target} takes other features or gives another output than version {}",
                from.version
            ),
        )
        .with_detail(format!(
            "version {}: inputs {}, outputs {}; version {target}: inputs {}, outputs {}",
            from.version,
            describe(&from.inputs),
            describe(&from.outputs),
            describe(&to.inputs),
            describe(&to.outputs)
        )));
    }
    def.active = target;
    let ops = catalog.put_model(def)?;
    txn.push_ops(ops);
    Ok(CommandTag::new("ALTER MODEL"))
}

pub fn drop(session: &Session, name: &ObjectName, if_exists: bool, cascade: bool) -> Result<()> {
    let (schema, name) = session.qualify(name)?;
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    if catalog.model(&schema, &name).is_none() {
        return match if_exists {
            true => Ok(()),
            false => Err(undefined_model(&name)),
        };
    }
    let readers = users(catalog, &name);
    let what = format!("model {name}");
    let mut ops = super::streaming::drop_dependents(
        catalog,
        &schema,
        readers,
        &what,
        "scores with",
        cascade,
    )?;
    ops.extend(catalog.drop_model(&schema, &name)?);
    txn.push_ops(ops);
    Ok(())
}

/// The columns of SHOW MODELS and `eddy_catalog.models`: one row per version.
pub fn catalog_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("name"),
        Field::new("version", DataType::Int32, false),
        Field::new("active", DataType::Boolean, false),
        text("inputs"),
        text("outputs"),
        text("features"),
        text("sha256"),
        text("location"),
        Field::new(
            "created_at",
            DataType::Timestamp(TimeUnit::Millisecond, Some("+00:00".into())),
            true,
        ),
    ]))
}

fn describe(t: &[ModelTensor]) -> String {
    t.iter()
        .map(|t| {
            let dims: Vec<String> = t
                .shape
                .iter()
                .map(|d| {
                    if *d < 0 {
                        "?".to_string()
                    } else {
                        d.to_string()
                    }
                })
                .collect();
            format!("{} {}[{}]", t.name, t.element, dims.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every version of every model, as rows of [`catalog_schema`].
pub fn catalog_batch(catalog: &Catalog) -> Result<RecordBatch> {
    let rows: Vec<(&ModelDef, &ModelVersion)> = catalog
        .models()
        .flat_map(|m| m.versions.iter().map(move |v| (m.as_ref(), v)))
        .collect();
    let text = |f: &dyn Fn(&ModelDef, &ModelVersion) -> String| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|(m, v)| f(m, v)),
        ))
    };
    let columns: Vec<ArrayRef> = vec![
        text(&|m, _| m.name.clone()),
        Arc::new(Int32Array::from_iter_values(
            rows.iter().map(|(_, v)| v.version as i32),
        )),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|(m, v)| Some(m.active == v.version)),
        )),
        text(&|_, v| describe(&v.inputs)),
        text(&|_, v| describe(&v.outputs)),
        text(&|_, v| v.features.join(", ")),
        text(&|_, v| v.sha256.clone()),
        text(&|_, v| v.location.clone()),
        Arc::new(
            TimestampMillisecondArray::from_iter_values(rows.iter().map(|(_, v)| v.created_at_ms))
                .with_timezone("+00:00"),
        ),
    ];
    Ok(RecordBatch::try_new(catalog_schema(), columns)?)
}

pub fn show(session: &Session) -> Result<QueryOutput> {
    let batch = catalog_batch(&session.view().catalog())?;
    rows(catalog_schema(), vec![batch])
}

/// Rewrites `PREDICT('m', temp => a, vibration => b)` (and PREDICT_PROBA) into positional
/// arguments in the order of the model's feature names (its active version's). Every feature
/// must be given once; unknown names are errors.
pub fn resolve_named_features<V: VisitMut>(node: &mut V, catalog: &Catalog) -> Result<()> {
    struct Rewriter<'a> {
        catalog: &'a Catalog,
        error: Option<Error>,
    }
    impl Rewriter<'_> {
        fn rewrite(&self, f: &mut Function) -> Result<()> {
            let function = f.name.to_string().to_lowercase();
            if !matches!(function.as_str(), "predict" | "predict_proba") {
                return Ok(());
            }
            let FunctionArguments::List(list) = &mut f.args else {
                return Ok(());
            };
            let named = |a: &FunctionArg| !matches!(a, FunctionArg::Unnamed(_));
            if !list.args.iter().any(named) {
                return Ok(());
            }
            let syntax = |m: String| Error::user(sqlstate::SYNTAX_ERROR, m);
            let model = match list.args.first() {
                Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))) => {
                    match &v.value {
                        SqlValue::SingleQuotedString(s) => s.clone(),
                        _ => None.ok_or_else(|| {
                            syntax(format!("{function}'s first argument must be a model name"))
                        })?,
                    }
                }
                _ => {
                    return Err(syntax(format!(
                        "{function}'s first argument must be a model name, e.g. {function}('m', temp => t)"
                    )));
                }
            };
            let def = self
                .catalog
                .model(DEFAULT_SCHEMA, &model)
                .ok_or_else(|| undefined_model(&model))?;
            let features = &def.active_version().features;
            if features.is_empty() {
                return Err(model_error(format!(
                    "model \"{model}\" has no feature names: pass its features by position, or name them with CREATE MODEL ... WITH (features = 'a, b, ...')"
                )));
            }
            let mut given: Vec<Option<FunctionArgExpr>> = vec![None; features.len()];
            for arg in list.args.drain(1..) {
                let (name, value) = match arg {
                    FunctionArg::Named { name, arg, .. } => (name.value, arg),
                    FunctionArg::ExprNamed { name, arg, .. } => (name.to_string(), arg),
                    FunctionArg::Unnamed(_) => {
                        return Err(syntax(format!(
                            "{function}: give every feature by name (temp => t) or none"
                        )));
                    }
                };
                let Some(i) = features.iter().position(|f| f.eq_ignore_ascii_case(&name)) else {
                    return Err(model_error(format!(
                        "model \"{model}\" has no feature \"{name}\" (its features: {})",
                        features.join(", ")
                    )));
                };
                if given[i].replace(value).is_some() {
                    return Err(syntax(format!("feature \"{name}\" is given twice")));
                }
            }
            for (i, value) in given.into_iter().enumerate() {
                let value = value.ok_or_else(|| {
                    model_error(format!(
                        "{function}: feature \"{}\" of model \"{model}\" is missing",
                        features[i]
                    ))
                })?;
                list.args.push(FunctionArg::Unnamed(value));
            }
            Ok(())
        }
    }
    impl VisitorMut for Rewriter<'_> {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Expr::Function(f) = expr
                && let Err(e) = self.rewrite(f)
            {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        }
    }
    let mut rewriter = Rewriter {
        catalog,
        error: None,
    };
    let _ = node.visit(&mut rewriter);
    match rewriter.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

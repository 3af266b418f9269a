//! Models: CREATE MODEL copies the ONNX file into the data dir under its SHA-256 (so the model
//! survives restarts and the source file's deletion) and records its inputs and outputs in
//! the catalog; PREDICT finds models here by name. Loaded sessions are cached per file.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use eddy_udf::onnx::{Model, TensorInfo};
use eddy_udf::predict::ModelLookup;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Engine;
use super::session::{CommandTag, QueryOutput, Session, rows};
use super::statement::CreateModel;
use crate::catalog::{DEFAULT_SCHEMA, ModelDef, ModelTensor};
use crate::error::{Error, Result, sqlstate};

pub struct ModelStore {
    dir: PathBuf,
    loaded: Mutex<HashMap<String, Arc<Model>>>,
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

impl ModelStore {
    pub fn new(dir: PathBuf, engine: Weak<Engine>) -> Self {
        Self {
            dir,
            loaded: Mutex::new(HashMap::new()),
            engine,
        }
    }

    fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{sha256}.onnx"))
    }

    /// Copies the model file in (durably) and loads it; returns its hash and the session.
    fn import(&self, location: &str, threads: usize) -> Result<(String, Arc<Model>)> {
        let source = location.strip_prefix("file://").unwrap_or(location);
        if location.contains("://") && !location.starts_with("file://") {
            return Err(Error::not_supported(format!(
                "model locations other than local files ({location})"
            )));
        }
        let bytes = std::fs::read(source)
            .map_err(|e| model_error(format!("cannot read model file {source}: {e}")))?;
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = self.path(&sha256);
        let model = if path.exists() {
            Model::load(&path, threads).map_err(|e| model_error(e.0))?
        } else {
            // Load from a temporary copy first: a file that is not a model never lands in
            // the data dir.
            std::fs::create_dir_all(&self.dir).map_err(|e| {
                Error::Storage(format!("cannot create {}: {e}", self.dir.display()))
            })?;
            let tmp = self.dir.join(format!("{sha256}.tmp"));
            std::fs::File::create(&tmp)
                .and_then(|mut f| f.write_all(&bytes).and_then(|_| f.sync_all()))
                .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))?;
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
                .map_err(|e| Error::Storage(format!("cannot store the model: {e}")))?;
            model
        };
        let model = Arc::new(model);
        self.loaded.lock().insert(sha256.clone(), model.clone());
        Ok((sha256, model))
    }

    /// The loaded session of a catalog model.
    pub fn get(&self, def: &ModelDef) -> Result<Arc<Model>> {
        if let Some(m) = self.loaded.lock().get(&def.sha256) {
            return Ok(m.clone());
        }
        let model = Model::load(&self.path(&def.sha256), def.intra_threads)
            .map_err(|e| model_error(format!("model \"{}\": {}", def.name, e.0)))?;
        let model = Arc::new(model);
        self.loaded.lock().insert(def.sha256.clone(), model.clone());
        Ok(model)
    }

    /// What PREDICT uses to find models.
    pub fn lookup(&self) -> Arc<dyn ModelLookup> {
        Arc::new(EngineModels(self.engine.clone()))
    }
}

#[derive(Debug)]
struct EngineModels(Weak<Engine>);

impl ModelLookup for EngineModels {
    fn model(&self, name: &str) -> std::result::Result<Arc<Model>, String> {
        let engine = self.0.upgrade().ok_or("the database is shutting down")?;
        let def = engine
            .catalog()
            .model(DEFAULT_SCHEMA, name)
            .ok_or_else(|| format!("model \"{name}\" does not exist"))?;
        engine.models.get(&def).map_err(|e| e.to_string())
    }
}

pub fn create(session: &Session, m: &CreateModel) -> Result<CommandTag> {
    let tag = CommandTag::new("CREATE MODEL");
    let (schema, name) = session.qualify(&m.name)?;
    if schema != DEFAULT_SCHEMA {
        return Err(Error::not_supported("models outside schema public"));
    }
    if session.view().catalog().model(&schema, &name).is_some() && m.if_not_exists {
        return Ok(tag);
    }
    let mut threads = 1;
    for (k, v) in &m.options {
        match k.as_str() {
            "intra_threads" => {
                threads = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    model_error(format!(
                        "invalid value for option \"intra_threads\": \"{v}\""
                    ))
                })?
            }
            other => return Err(model_error(format!("unknown option \"{other}\""))),
        }
    }
    let (sha256, model) = session.engine().models.import(&m.location, threads)?;
    let def = ModelDef {
        schema: schema.clone(),
        name,
        sha256,
        inputs: tensors(&model.inputs),
        outputs: tensors(&model.outputs),
        intra_threads: threads,
        location: m.location.clone(),
    };
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let ops = txn.catalog_mut(&current).create_model(def)?;
    txn.push_ops(ops);
    Ok(tag)
}

pub fn drop(
    session: &Session,
    name: &datafusion::sql::sqlparser::ast::ObjectName,
    if_exists: bool,
) -> Result<()> {
    let (schema, name) = session.qualify(name)?;
    let current = session.engine().catalog();
    let mut txn = session.txn().lock();
    let catalog = txn.catalog_mut(&current);
    if catalog.model(&schema, &name).is_none() && if_exists {
        return Ok(());
    }
    let ops = catalog.drop_model(&schema, &name)?;
    txn.push_ops(ops);
    Ok(())
}

pub fn show_schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, true);
    Arc::new(Schema::new(vec![
        text("name"),
        text("inputs"),
        text("outputs"),
        text("sha256"),
        text("location"),
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

pub fn show(session: &Session) -> Result<QueryOutput> {
    let catalog = session.view().catalog();
    let models: Vec<&Arc<ModelDef>> = catalog.models().collect();
    let col = |f: &dyn Fn(&ModelDef) -> String| {
        Arc::new(StringArray::from(
            models.iter().map(|m| Some(f(m))).collect::<Vec<_>>(),
        )) as _
    };
    let schema = show_schema();
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            col(&|m| m.name.clone()),
            col(&|m| describe(&m.inputs)),
            col(&|m| describe(&m.outputs)),
            col(&|m| m.sha256.clone()),
            col(&|m| m.location.clone()),
        ],
    )?;
    rows(schema, vec![batch])
}

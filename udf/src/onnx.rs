//! ONNX Runtime, loaded at run time (ort's `load-dynamic`), and models as Eddy runs them.
//!
//! Nothing is downloaded at build or run time: the shared library is found at `EDDY_ORT_LIB`
//! or `ORT_DYLIB_PATH`, or where the project's own set-up installs it (the `onnxruntime`
//! wheel under `.tools/onnx`, see scripts/setup.sh). A missing library is an error that says
//! how to install it; Eddy keeps running without it.
//!
//! A [`Model`] runs one ONNX Runtime call per batch of rows: the feature columns are copied
//! into one row-major `[rows, features]` float tensor, never one call per row.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use ort::session::Session;
use ort::value::{Tensor, ValueType};
use parking_lot::Mutex;

/// The ONNX Runtime version ort 2.0.0-rc.15 is built against.
pub const ORT_VERSION: &str = "1.31.1";

#[derive(Debug, Clone, PartialEq)]
pub struct OnnxError(pub String);

impl std::error::Error for OnnxError {}

impl std::fmt::Display for OnnxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Result<T> = std::result::Result<T, OnnxError>;

fn err(message: impl Into<String>) -> OnnxError {
    OnnxError(message.into())
}

/// Where to look for the library, in order.
fn candidates() -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for var in ["EDDY_ORT_LIB", "ORT_DYLIB_PATH"] {
        if let Ok(p) = std::env::var(var) {
            return vec![PathBuf::from(p)];
        }
    }
    let wheel = format!(".tools/onnx/onnxruntime/capi/libonnxruntime.so.{ORT_VERSION}");
    if let Ok(dir) = std::env::current_dir() {
        paths.push(dir.join(&wheel));
    }
    // The checkout this binary was built from (development and CI on the build machine).
    paths.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(&wheel),
    );
    paths.push(PathBuf::from(format!(
        "/usr/local/lib/libonnxruntime.so.{ORT_VERSION}"
    )));
    paths.push(PathBuf::from("/usr/local/lib/libonnxruntime.so"));
    paths
}

/// The library to load, or an error saying how to get one.
pub fn library_path() -> Result<PathBuf> {
    find_library(&candidates())
}

fn find_library(tried: &[PathBuf]) -> Result<PathBuf> {
    tried
        .iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        let list: Vec<String> = tried.iter().map(|p| p.display().to_string()).collect();
        err(format!(
            "ONNX Runtime {ORT_VERSION} is not installed (looked for {}). Install it with \
             `python3 -m pip install --target .tools/onnx onnxruntime=={ORT_VERSION}` (scripts/setup.sh does), \
             or set EDDY_ORT_LIB to the path of libonnxruntime.so",
            list.join(", ")
        ))
    })
}

static RUNTIME: OnceLock<std::result::Result<Arc<ort::environment::Environment>, String>> =
    OnceLock::new();

/// The process's ONNX Runtime environment, loaded on first use.
pub fn runtime() -> Result<Arc<ort::environment::Environment>> {
    RUNTIME
        .get_or_init(|| {
            let path = library_path().map_err(|e| e.0)?;
            let builder = ort::init_from(&path)
                .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
            builder
                .with_name("eddy")
                .build()
                .map(Arc::new)
                .map_err(|e| format!("cannot start ONNX Runtime: {e}"))
        })
        .clone()
        .map_err(OnnxError)
}

/// One input or output of a model.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// ONNX element type as ort names it (`f32`, `i64`, ...); `sequence`/`map` for others.
    pub element: String,
    /// Dimensions; -1 where dynamic (the batch dimension).
    pub shape: Vec<i64>,
}

fn info(outlet: &ort::value::Outlet) -> TensorInfo {
    let (element, shape) = match outlet.dtype() {
        ValueType::Tensor { ty, shape, .. } => (ty.to_string(), shape.iter().copied().collect()),
        ValueType::Sequence(_) => ("sequence".to_string(), Vec::new()),
        ValueType::Map { .. } => ("map".to_string(), Vec::new()),
        other => (format!("{other:?}"), Vec::new()),
    };
    TensorInfo {
        name: outlet.name().to_string(),
        element,
        shape,
    }
}

pub struct Model {
    session: Mutex<Session>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

impl Model {
    /// Loads an ONNX file; a file that is not a valid model is an error naming the file.
    pub fn load(path: &Path, intra_threads: usize) -> Result<Self> {
        let env = runtime()?;
        let bad = |e: ort::Error| {
            err(format!(
                "{} is not a usable ONNX model: {e}",
                path.display()
            ))
        };
        let session = Session::builder(&env)
            .map_err(|e| err(format!("ONNX Runtime: {e}")))?
            .with_intra_threads(intra_threads.max(1))
            .map_err(|e| err(format!("ONNX Runtime: {e}")))?
            .commit_from_file(path)
            .map_err(bad)?;
        let inputs = session.inputs().iter().map(info).collect();
        let outputs = session.outputs().iter().map(info).collect();
        Ok(Self {
            session: Mutex::new(session),
            inputs,
            outputs,
        })
    }

    /// Number of features of the (single, `[batch, n]` float) input.
    pub fn feature_count(&self) -> Result<usize> {
        match self.inputs.as_slice() {
            [one] if one.element == "f32" && one.shape.len() == 2 && one.shape[1] > 0 => {
                Ok(one.shape[1] as usize)
            }
            _ => Err(err(format!(
                "the model's inputs {:?} are not one [batch, n] float tensor",
                self.inputs
            ))),
        }
    }

    /// Scores `rows` rows whose features are `columns` (one slice per feature, all `rows`
    /// long) in one ONNX Runtime call; returns the first output, one value per row.
    pub fn predict(&self, columns: &[&[f32]], rows: usize) -> Result<Vec<f32>> {
        let n = columns.len();
        if n != self.feature_count()? {
            return Err(err(format!(
                "the model takes {} features, not {n}",
                self.feature_count()?
            )));
        }
        if rows == 0 {
            return Ok(Vec::new());
        }
        // Row-major [rows, n]: one pass per column.
        let mut data = vec![0f32; rows * n];
        for (j, col) in columns.iter().enumerate() {
            for (i, v) in col.iter().take(rows).enumerate() {
                data[i * n + j] = *v;
            }
        }
        let tensor =
            Tensor::from_array(([rows, n], data)).map_err(|e| err(format!("ONNX Runtime: {e}")))?;
        let mut session = self.session.lock();
        let outputs = session
            .run(ort::inputs![tensor])
            .map_err(|e| err(format!("model run failed: {e}")))?;
        let values = outputs[0]
            .try_extract_array::<f32>()
            .map_err(|e| err(format!("the model's first output is not float: {e}")))?;
        if values.len() != rows {
            return Err(err(format!(
                "the model gave {} values for {rows} rows",
                values.len()
            )));
        }
        Ok(values.iter().copied().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the test models and their onnxruntime (Python) reference outputs.
    fn models() -> PathBuf {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = std::env::temp_dir().join(format!("eddy-models-{}", std::process::id()));
        let status = std::process::Command::new("python3")
            .arg(root.join("scripts/models/build_models.py"))
            .arg(&out)
            .env("PYTHONPATH", root.join(".tools/onnx"))
            .stdout(std::process::Stdio::null())
            .status()
            .expect("python3 runs");
        assert!(
            status.success(),
            "build_models.py failed (run scripts/setup.sh first)"
        );
        out
    }

    fn reference(dir: &Path, name: &str) -> (Vec<Vec<f32>>, Vec<f32>) {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let inputs = v["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        let outputs = v["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect();
        (inputs, outputs)
    }

    #[test]
    fn predictions_equal_onnxruntime_in_python() {
        let dir = models();
        for name in ["linear", "mlp"] {
            let model = Model::load(&dir.join(format!("{name}.onnx")), 1).unwrap();
            let (rows, expected) = reference(&dir, name);
            let width = model.feature_count().unwrap();
            let columns: Vec<Vec<f32>> = (0..width)
                .map(|j| rows.iter().map(|r| r[j]).collect())
                .collect();
            let slices: Vec<&[f32]> = columns.iter().map(|c| c.as_slice()).collect();
            let got = model.predict(&slices, rows.len()).unwrap();
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                assert!(
                    (g - e).abs() <= 1e-5 * e.abs().max(1.0),
                    "{name}: {g} vs {e}"
                );
            }
        }
        let model = Model::load(&dir.join("linear.onnx"), 1).unwrap();
        assert_eq!(model.inputs[0].shape, vec![-1, 3]);
        let one = [1.0f32];
        let e = model.predict(&[&one, &one], 1).unwrap_err();
        assert!(e.0.contains("takes 3 features, not 2"), "{e}");
        let bogus = dir.join("bogus.onnx");
        std::fs::write(&bogus, b"not a model").unwrap();
        let e = Model::load(&bogus, 1).unwrap_err();
        assert!(e.0.contains("is not a usable ONNX model"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_library_says_how_to_install_it() {
        let e = find_library(&[PathBuf::from("/nonexistent/libonnxruntime.so")]).unwrap_err();
        assert!(
            e.0.contains("pip install") && e.0.contains("EDDY_ORT_LIB"),
            "{e}"
        );
    }
}

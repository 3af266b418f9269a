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

use ort::session::{OutputSelector, RunOptions, Session};
use ort::value::{TensorRef, ValueType};
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

/// What PREDICT returns for a model: a number (regressors) or a class label (classifiers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    Number,
    IntLabel,
    TextLabel,
}

/// A batch of predictions, one per row.
#[derive(Debug, Clone, PartialEq)]
pub enum Predictions {
    Numbers(Vec<f64>),
    IntLabels(Vec<i64>),
    TextLabels(Vec<String>),
}

/// Class probabilities: `classes` values per row, row after row, classes in label order.
#[derive(Debug, Clone, PartialEq)]
pub struct Probabilities {
    pub classes: usize,
    pub values: Vec<f32>,
}

/// The session and the input buffers it is fed from, used under one lock.
struct Inner {
    session: Session,
    scratch: Vec<Vec<f32>>,
}

/// Columns into rows (`data[i * K + j] = cols[j][i]`) for a width known at compile time, so
/// the inner loop is unrolled and free of bounds checks: row by row, sequential writes and one
/// sequential read stream per feature.
fn interleave<const K: usize>(data: &mut [f32], cols: &[&[f32]]) {
    let cols: [&[f32]; K] = std::array::from_fn(|j| cols[j]);
    let rows = data.len() / K;
    let cols = cols.map(|c| &c[..rows]);
    for (i, row) in data.chunks_exact_mut(K).enumerate() {
        let row: &mut [f32; K] = row.try_into().expect("K wide");
        for j in 0..K {
            row[j] = cols[j][i];
        }
    }
}

pub struct Model {
    inner: Mutex<Inner>,
    pub inputs: Vec<TensorInfo>,
    pub outputs: Vec<TensorInfo>,
    /// Features each input takes, or why the inputs are not float `[batch, k]` tensors.
    widths: std::result::Result<Vec<usize>, String>,
    /// What the first output is, or why PREDICT cannot use it.
    kind: std::result::Result<OutputKind, String>,
    /// The output holding class probabilities (a `[batch, classes]` float tensor or a
    /// ZipMap-style sequence of maps), for classifiers.
    probabilities: Option<usize>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish()
    }
}

/// Features an input takes: `[batch, k]` takes k, `[batch]` one.
fn input_widths(inputs: &[TensorInfo]) -> std::result::Result<Vec<usize>, String> {
    if inputs.is_empty() {
        return Err("the model has no inputs".into());
    }
    inputs
        .iter()
        .map(|t| match (t.element.as_str(), t.shape.as_slice()) {
            ("f32", [_]) => Ok(1),
            ("f32", [_, k]) if *k > 0 => Ok(*k as usize),
            _ => Err(format!(
                "input \"{}\" is {}[{}]; PREDICT feeds float tensors of shape [batch, features]",
                t.name,
                t.element,
                t.shape
                    .iter()
                    .map(|d| if *d < 0 { "?".into() } else { d.to_string() })
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })
        .collect()
}

fn output_kind(outputs: &[TensorInfo]) -> std::result::Result<OutputKind, String> {
    match outputs.first().map(|o| o.element.as_str()) {
        Some("f32" | "f64") => Ok(OutputKind::Number),
        Some("i64" | "i32") => Ok(OutputKind::IntLabel),
        Some("String") => Ok(OutputKind::TextLabel),
        Some(other) => Err(format!(
            "the model's first output is {other}; PREDICT needs a number or a class label"
        )),
        None => Err("the model has no outputs".into()),
    }
}

fn probability_output(outputs: &[TensorInfo]) -> Option<usize> {
    outputs.iter().enumerate().skip(1).find_map(|(i, o)| {
        let tensor = o.element == "f32" && o.shape.len() == 2;
        (tensor || o.element == "sequence").then_some(i)
    })
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
        let inputs: Vec<TensorInfo> = session.inputs().iter().map(info).collect();
        let outputs: Vec<TensorInfo> = session.outputs().iter().map(info).collect();
        let kind = output_kind(&outputs);
        let probabilities = match kind {
            Ok(OutputKind::IntLabel | OutputKind::TextLabel) => probability_output(&outputs),
            _ => None,
        };
        Ok(Self {
            inner: Mutex::new(Inner {
                session,
                scratch: Vec::new(),
            }),
            widths: input_widths(&inputs),
            inputs,
            outputs,
            kind,
            probabilities,
        })
    }

    /// Number of features PREDICT takes: the widths of the float inputs, summed.
    pub fn feature_count(&self) -> Result<usize> {
        self.widths
            .as_ref()
            .map(|w| w.iter().sum())
            .map_err(|e| err(e.clone()))
    }

    /// Feature names when every input takes one feature (the input names), for named
    /// arguments.
    pub fn input_names(&self) -> Option<Vec<String>> {
        let widths = self.widths.as_ref().ok()?;
        (widths.len() > 1 && widths.iter().all(|w| *w == 1))
            .then(|| self.inputs.iter().map(|t| t.name.clone()).collect())
    }

    pub fn output_kind(&self) -> Result<OutputKind> {
        self.kind.clone().map_err(err)
    }

    /// Whether the model gives class probabilities (PREDICT_PROBA).
    pub fn has_probabilities(&self) -> bool {
        self.probabilities.is_some()
    }

    /// Copies `rows` rows of `columns` (one slice per feature) into `scratch`, one row-major
    /// `[rows, k]` buffer per input. The buffers are reused from call to call: fresh large
    /// allocations would cost page faults on every batch.
    fn fill(&self, scratch: &mut Vec<Vec<f32>>, columns: &[&[f32]], rows: usize) -> Result<()> {
        let widths = self.widths.as_ref().map_err(|e| err(e.clone()))?;
        let n: usize = widths.iter().sum();
        if columns.len() != n {
            return Err(err(format!(
                "the model takes {n} features, not {}",
                columns.len()
            )));
        }
        scratch.resize_with(widths.len(), Vec::new);
        let mut next = 0;
        for (data, &k) in scratch.iter_mut().zip(widths) {
            let cols: Vec<&[f32]> = columns[next..next + k].iter().map(|c| &c[..rows]).collect();
            next += k;
            data.clear();
            if let [one] = cols.as_slice() {
                data.extend_from_slice(one);
                continue;
            }
            data.resize(rows * k, 0.0);
            match k {
                2 => interleave::<2>(data, &cols),
                3 => interleave::<3>(data, &cols),
                4 => interleave::<4>(data, &cols),
                5 => interleave::<5>(data, &cols),
                6 => interleave::<6>(data, &cols),
                7 => interleave::<7>(data, &cols),
                8 => interleave::<8>(data, &cols),
                _ => {
                    for (i, row) in data.chunks_exact_mut(k).enumerate() {
                        for (slot, col) in row.iter_mut().zip(&cols) {
                            *slot = col[i];
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// The filled buffers as input tensors, without copying them.
    fn feeds<'a>(
        &'a self,
        scratch: &'a [Vec<f32>],
        rows: usize,
    ) -> Result<Vec<(&'a str, TensorRef<'a, f32>)>> {
        self.inputs
            .iter()
            .zip(scratch)
            .map(|(input, data)| {
                let tensor = if input.shape.len() == 1 {
                    TensorRef::from_array_view(([rows], data.as_slice()))
                } else {
                    TensorRef::from_array_view(([rows, data.len() / rows.max(1)], data.as_slice()))
                }
                .map_err(|e| err(format!("ONNX Runtime: {e}")))?;
                Ok((input.name.as_str(), tensor))
            })
            .collect()
    }

    /// Scores `rows` rows whose features are `columns` (one slice per feature, all `rows`
    /// long) in one ONNX Runtime call: the first output, one value per row.
    pub fn predict(&self, columns: &[&[f32]], rows: usize) -> Result<Predictions> {
        let kind = self.output_kind()?;
        let mut inner = self.inner.lock();
        let Inner { session, scratch } = &mut *inner;
        self.fill(scratch, columns, rows)?;
        if rows == 0 {
            return Ok(match kind {
                OutputKind::Number => Predictions::Numbers(Vec::new()),
                OutputKind::IntLabel => Predictions::IntLabels(Vec::new()),
                OutputKind::TextLabel => Predictions::TextLabels(Vec::new()),
            });
        }
        let first = self.outputs[0].name.clone();
        // Only the first output: ONNX Runtime then skips what only other outputs need.
        let options = match self.outputs.len() {
            1 => None,
            _ => Some(
                RunOptions::new()
                    .map_err(|e| err(format!("ONNX Runtime: {e}")))?
                    .with_outputs(OutputSelector::no_default().with(first.as_str())),
            ),
        };
        let feeds = self.feeds(scratch, rows)?;
        let outputs = match &options {
            None => session.run(feeds),
            Some(options) => session.run_with_options(feeds, options),
        }
        .map_err(|e| err(format!("model run failed: {e}")))?;
        let value = &outputs[first.as_str()];
        let predictions = match kind {
            OutputKind::Number => Predictions::Numbers(
                match self.outputs[0].element.as_str() {
                    "f64" => value.try_extract_tensor::<f64>().map(|(_, v)| v.to_vec()),
                    _ => value
                        .try_extract_tensor::<f32>()
                        .map(|(_, v)| v.iter().map(|x| *x as f64).collect()),
                }
                .map_err(|e| err(format!("cannot read the model's output: {e}")))?,
            ),
            OutputKind::IntLabel => Predictions::IntLabels(
                match self.outputs[0].element.as_str() {
                    "i32" => value
                        .try_extract_tensor::<i32>()
                        .map(|(_, v)| v.iter().map(|x| *x as i64).collect()),
                    _ => value.try_extract_tensor::<i64>().map(|(_, v)| v.to_vec()),
                }
                .map_err(|e| err(format!("cannot read the model's output: {e}")))?,
            ),
            OutputKind::TextLabel => Predictions::TextLabels(
                value
                    .try_extract_strings()
                    .map(|(_, v)| v)
                    .map_err(|e| err(format!("cannot read the model's output: {e}")))?,
            ),
        };
        let got = match &predictions {
            Predictions::Numbers(v) => v.len(),
            Predictions::IntLabels(v) => v.len(),
            Predictions::TextLabels(v) => v.len(),
        };
        if got != rows {
            return Err(err(format!(
                "the model gave {got} values for {rows} rows; PREDICT needs one per row"
            )));
        }
        Ok(predictions)
    }

    /// Runs a single-input model on features already laid out row-major (`rows` × the
    /// feature count), with no copy: ONNX Runtime at its most direct, the reference the
    /// predict benchmark compares PREDICT with. Returns the first output's values.
    pub fn run_row_major(&self, data: &[f32], rows: usize) -> Result<usize> {
        let n = self.feature_count()?;
        if self.inputs.len() != 1 || data.len() != rows * n {
            return Err(err("run_row_major takes one [rows, features] input"));
        }
        let tensor = TensorRef::from_array_view(([rows, n], data))
            .map_err(|e| err(format!("ONNX Runtime: {e}")))?;
        let mut inner = self.inner.lock();
        let outputs = inner
            .session
            .run(ort::inputs![tensor])
            .map_err(|e| err(format!("model run failed: {e}")))?;
        let (_, values) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(format!("cannot read the model's output: {e}")))?;
        Ok(values.len())
    }

    /// Class probabilities of `rows` rows in one ONNX Runtime call.
    pub fn predict_proba(&self, columns: &[&[f32]], rows: usize) -> Result<Probabilities> {
        let Some(index) = self.probabilities else {
            return Err(err("the model gives no class probabilities"));
        };
        let mut inner = self.inner.lock();
        let Inner { session, scratch } = &mut *inner;
        self.fill(scratch, columns, rows)?;
        if rows == 0 {
            return Ok(Probabilities {
                classes: 0,
                values: Vec::new(),
            });
        }
        let name = self.outputs[index].name.clone();
        let options = RunOptions::new()
            .map_err(|e| err(format!("ONNX Runtime: {e}")))?
            .with_outputs(OutputSelector::no_default().with(name.as_str()));
        let feeds = self.feeds(scratch, rows)?;
        let outputs = session
            .run_with_options(feeds, &options)
            .map_err(|e| err(format!("model run failed: {e}")))?;
        let value = &outputs[name.as_str()];
        let read = |e: ort::Error| err(format!("cannot read the model's probabilities: {e}"));
        if self.outputs[index].element == "sequence" {
            // ZipMap: one {label: probability} map per row; classes in label order.
            let maps = value
                .try_extract_sequence::<ort::value::DynMapValueType>()
                .map_err(read)?;
            let mut values = Vec::with_capacity(rows * 2);
            let mut classes = 0;
            for map in &maps {
                let row: Vec<f32> = match map.try_extract_key_values::<i64, f32>() {
                    Ok(mut kv) => {
                        kv.sort_by_key(|(k, _)| *k);
                        kv.into_iter().map(|(_, v)| v).collect()
                    }
                    Err(_) => {
                        let mut kv = map.try_extract_key_values::<String, f32>().map_err(read)?;
                        kv.sort_by(|a, b| a.0.cmp(&b.0));
                        kv.into_iter().map(|(_, v)| v).collect()
                    }
                };
                classes = row.len();
                values.extend(row);
            }
            if maps.len() != rows || values.len() != rows * classes {
                return Err(err("the model gave probabilities of another shape"));
            }
            return Ok(Probabilities { classes, values });
        }
        let (shape, values) = value.try_extract_tensor::<f32>().map_err(read)?;
        let classes = shape.get(1).copied().unwrap_or(1).max(1) as usize;
        if shape.first().copied() != Some(rows as i64) || values.len() != rows * classes {
            return Err(err("the model gave probabilities of another shape"));
        }
        Ok(Probabilities {
            classes,
            values: values.to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds the test models and their onnxruntime (Python) reference outputs.
    fn models(test: &str) -> PathBuf {
        // The checkout the test runs in (cargo sets the variable when it runs tests); a
        // target dir shared between checkouts may hold a build made in another one.
        let manifest = std::env::var("CARGO_MANIFEST_DIR")
            .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
        let root = Path::new(&manifest).join("..");
        let out = std::env::temp_dir().join(format!("eddy-models-{}-{test}", std::process::id()));
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

    /// The reference's input rows and its numeric outputs (empty for text labels).
    fn inputs_and_outputs(v: &serde_json::Value) -> (Vec<Vec<f32>>, Vec<f32>) {
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
            .filter_map(|x| x.as_f64().map(|x| x as f32))
            .collect();
        (inputs, outputs)
    }

    fn reference(dir: &Path, name: &str) -> (Vec<Vec<f32>>, Vec<f32>) {
        let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
        inputs_and_outputs(&serde_json::from_str(&text).unwrap())
    }

    #[test]
    fn predictions_equal_onnxruntime_in_python() {
        let dir = models("regressors");
        for name in ["linear", "mlp", "gbt"] {
            let model = Model::load(&dir.join(format!("{name}.onnx")), 1).unwrap();
            let (rows, expected) = reference(&dir, name);
            let width = model.feature_count().unwrap();
            let columns: Vec<Vec<f32>> = (0..width)
                .map(|j| rows.iter().map(|r| r[j]).collect())
                .collect();
            let slices: Vec<&[f32]> = columns.iter().map(|c| c.as_slice()).collect();
            let Predictions::Numbers(got) = model.predict(&slices, rows.len()).unwrap() else {
                panic!("{name} is a regressor");
            };
            assert_eq!(got.len(), expected.len());
            for (g, e) in got.iter().zip(&expected) {
                let e = *e as f64;
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

    fn columns(rows: &[Vec<f32>]) -> Vec<Vec<f32>> {
        (0..rows[0].len())
            .map(|j| rows.iter().map(|r| r[j]).collect())
            .collect()
    }

    #[test]
    fn classifiers_give_labels_and_probabilities_like_onnxruntime_in_python() {
        let dir = models("classifiers");
        for name in ["logistic", "churn"] {
            let model = Model::load(&dir.join(format!("{name}.onnx")), 1).unwrap();
            assert!(model.has_probabilities(), "{name}");
            let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            let (rows, _) = inputs_and_outputs(&v);
            let cols = columns(&rows);
            let slices: Vec<&[f32]> = cols.iter().map(|c| c.as_slice()).collect();
            let labels: Vec<serde_json::Value> = match model.predict(&slices, rows.len()).unwrap() {
                Predictions::IntLabels(l) => l.into_iter().map(|x| x.into()).collect(),
                Predictions::TextLabels(l) => l.into_iter().map(|x| x.into()).collect(),
                Predictions::Numbers(_) => panic!("{name} is a classifier"),
            };
            assert_eq!(&labels, v["outputs"].as_array().unwrap());
            let probs = model.predict_proba(&slices, rows.len()).unwrap();
            let expected = v["probabilities"].as_array().unwrap();
            for (i, row) in probs.values.chunks(probs.classes).enumerate() {
                let want = expected[i].as_array().unwrap();
                assert_eq!(row.len(), want.len());
                for (g, e) in row.iter().zip(want) {
                    assert!((*g as f64 - e.as_f64().unwrap()).abs() <= 1e-5, "{name}");
                }
            }
        }
        // Two named inputs of one feature each.
        let pair = Model::load(&dir.join("pair.onnx"), 1).unwrap();
        assert_eq!(pair.feature_count().unwrap(), 2);
        assert_eq!(
            pair.input_names(),
            Some(vec!["temp".to_string(), "vibration".to_string()])
        );
        let got = pair.predict(&[&[3.0, 1.0], &[1.0, 0.5]], 2).unwrap();
        assert_eq!(got, Predictions::Numbers(vec![5.0, 1.5]));
        // A run-time failure is an error, not a crash.
        let lookup = Model::load(&dir.join("lookup.onnx"), 1).unwrap();
        assert_eq!(
            lookup.predict(&[&[2.0]], 1).unwrap(),
            Predictions::Numbers(vec![20.0])
        );
        let e = lookup.predict(&[&[2.0, 42.0]], 2).unwrap_err();
        assert!(e.0.contains("model run failed"), "{e}");
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

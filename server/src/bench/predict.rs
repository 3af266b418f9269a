//! `eddy bench predict`: PREDICT in a continuous query against ONNX Runtime called directly.
//!
//! Eddy's side is the stateless stage of `SELECT PREDICT('m', f0, ...) AS y FROM feats`, what
//! a running pipeline executes per batch (DataFusion, the cast to float, the copy into one
//! row-major tensor, one ONNX Runtime call, NULL handling), over 8192-row Arrow batches. The
//! reference is the same ort session run directly on the same batches, already laid out as
//! row-major tensors, so it pays for nothing but inference; and the same session called on
//! the Arrow batches with the tensor built from the columns by hand, which is what calling ort
//! directly from Arrow costs. Figures are rows per CPU second, median of the runs. Serving (prepared single-row PREDICT, REST) is `benches/serving.rs`.
//!
//! Models come from scripts/models/build_models.py (run from the repository root).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use datafusion::arrow::array::{ArrayRef, Float32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use eddy_sql::stream::plan;
use eddy_sql::{Engine, Session};

use super::{cpu_seconds, run_sql};

pub struct PredictArgs {
    pub model: String,
    pub rows: u64,
    pub runs: usize,
}

/// Builds the test models into a temporary directory.
fn build_models() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("eddy-bench-models-{}", std::process::id()));
    let status = std::process::Command::new("python3")
        .arg("scripts/models/build_models.py")
        .arg(&dir)
        .env("PYTHONPATH", ".tools/onnx")
        .stdout(std::process::Stdio::null())
        .status()
        .context("run python3 scripts/models/build_models.py (from the repository root)")?;
    if !status.success() {
        bail!("build_models.py failed: run scripts/setup.sh first, from the repository root");
    }
    Ok(dir)
}

/// `rows` rows of `width` uniform features in [-10, 10), in 8192-row batches.
fn feature_batches(width: usize, rows: u64) -> Vec<RecordBatch> {
    let schema = Arc::new(Schema::new(
        (0..width)
            .map(|j| Field::new(format!("f{j}"), DataType::Float32, true))
            .collect::<Vec<_>>(),
    ));
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 20.0 - 10.0
    };
    let mut batches = Vec::new();
    let mut left = rows;
    while left > 0 {
        let n = left.min(8192) as usize;
        let columns: Vec<ArrayRef> = (0..width)
            .map(|_| Arc::new(Float32Array::from_iter_values((0..n).map(|_| next()))) as _)
            .collect();
        batches.push(RecordBatch::try_new(schema.clone(), columns).expect("batch"));
        left -= n as u64;
    }
    batches
}

/// The features of `batch` as one row-major tensor, built the plain way (column by column).
fn row_major(batch: &RecordBatch, width: usize) -> Vec<f32> {
    let mut data = vec![0f32; batch.num_rows() * width];
    for j in 0..width {
        let col = batch
            .column(j)
            .as_any()
            .downcast_ref::<Float32Array>()
            .expect("float features");
        for (i, v) in col.values().iter().enumerate() {
            data[i * width + j] = *v;
        }
    }
    data
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

async fn setup(dir: &Path, data: &Path, model: &str) -> Result<(Arc<Engine>, Session, usize)> {
    let engine = Engine::open(data).context("open bench data dir")?;
    engine.start_streams(tokio::runtime::Handle::current());
    let session = engine.new_session("eddy", "eddy");
    run_sql(
        &session,
        &format!(
            "CREATE MODEL {model} FROM '{}'",
            dir.join(format!("{model}.onnx")).display()
        ),
    )
    .await?;
    let (_, loaded) = engine.models.resolve(&engine.catalog(), model, None)?;
    let width = loaded.feature_count()?;
    let columns: Vec<String> = (0..width).map(|j| format!("f{j} real")).collect();
    run_sql(
        &session,
        &format!("CREATE SOURCE feats ({})", columns.join(", ")),
    )
    .await?;
    Ok((engine, session, width))
}

/// PREDICT in the stateless stage of a continuous query versus direct ort calls.
async fn in_query(engine: &Arc<Engine>, args: &PredictArgs, width: usize) -> Result<()> {
    let features: Vec<String> = (0..width).map(|j| format!("f{j}")).collect();
    let sql = format!(
        "SELECT PREDICT('{}', {}) AS y FROM feats",
        args.model,
        features.join(", ")
    );
    let (_, udfs) = engine.streams.model_functions(&Default::default(), None);
    let pipeline = plan::plan(&engine.catalog(), &plan::parse_query(&sql)?, &udfs).await?;
    let batches = feature_batches(width, args.rows);
    let (_, model) = engine
        .models
        .resolve(&engine.catalog(), &args.model, None)?;
    // The reference's input: the same batches as row-major tensors, built beforehand.
    let tensors: Vec<(Vec<f32>, usize)> = batches
        .iter()
        .map(|b| (row_major(b, width), b.num_rows()))
        .collect();
    // Where the difference goes: the model wrapper alone on the Arrow columns (copy into the
    // row-major tensor, one call, output conversion), and the stage without the model.
    let bare = plan::plan(
        &engine.catalog(),
        &plan::parse_query(&format!("SELECT {} FROM feats", features.join(" + ")))?,
        &udfs,
    )
    .await?;
    let rows = args.rows as f64;
    let (mut wrapper, mut stage) = (Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let cpu0 = cpu_seconds();
        for b in &batches {
            let columns: Vec<&[f32]> = (0..width)
                .map(|j| {
                    b.column(j)
                        .as_any()
                        .downcast_ref::<Float32Array>()
                        .expect("float features")
                        .values()
                        .as_ref()
                })
                .collect();
            model.predict(&columns, b.num_rows())?;
        }
        wrapper.push(rows / (cpu_seconds() - cpu0));
        let cpu0 = cpu_seconds();
        for b in &batches {
            bare.run_lower(b.clone()).await?;
        }
        stage.push(rows / (cpu_seconds() - cpu0));
    }
    println!(
        "in_query_parts model={} model_wrapper_rows_per_cpu_second={:.0} stage_without_model_rows_per_cpu_second={:.0}",
        args.model,
        median(wrapper),
        median(stage)
    );
    let (mut eddy, mut raw, mut raw_arrow) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let cpu0 = cpu_seconds();
        let mut scored = 0;
        for b in &batches {
            for out in pipeline.run_lower(b.clone()).await? {
                scored += out.num_rows();
            }
        }
        eddy.push(rows / (cpu_seconds() - cpu0));
        if scored as u64 != args.rows {
            bail!("scored {scored} rows of {}", args.rows);
        }
        let cpu0 = cpu_seconds();
        for (data, n) in &tensors {
            model.run_row_major(data, *n)?;
        }
        raw.push(rows / (cpu_seconds() - cpu0));
        // ort called directly on the Arrow batch: the tensor built from the columns by hand.
        let cpu0 = cpu_seconds();
        for b in &batches {
            model.run_row_major(&row_major(b, width), b.num_rows())?;
        }
        raw_arrow.push(rows / (cpu_seconds() - cpu0));
    }
    let (eddy, raw, raw_arrow) = (median(eddy), median(raw), median(raw_arrow));
    println!(
        "in_query model={} rows={} runs={} eddy_rows_per_cpu_second={eddy:.0} \
         raw_ort_prebuilt_tensors_rows_per_cpu_second={raw:.0} ratio={:.3} \
         raw_ort_from_arrow_rows_per_cpu_second={raw_arrow:.0} ratio={:.3}",
        args.model,
        args.rows,
        args.runs,
        eddy / raw,
        eddy / raw_arrow
    );
    Ok(())
}

pub async fn predict(args: PredictArgs) -> Result<()> {
    println!(
        "predict benchmark: model {}, revision {}",
        args.model,
        option_env!("EDDY_GIT_REVISION").unwrap_or("unknown")
    );
    let models = build_models()?;
    let data = std::env::temp_dir().join(format!("eddy-bench-predict-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let (engine, session, width) = setup(&models, &data, &args.model).await?;
    in_query(&engine, &args, width).await?;
    drop(session);
    drop(engine);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&models);
    Ok(())
}

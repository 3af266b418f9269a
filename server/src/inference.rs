//! On-demand inference over HTTP, on the same catalog models as SQL's PREDICT:
//!
//! - `GET /v1/models`: every model with its versions, inputs, outputs and feature names.
//! - `POST /v1/models/{name}/predict` with `{"rows": [[f1, f2, ...], ...]}` (or rows as
//!   objects keyed by feature name), optionally `"version": n` (default: the active version)
//!   and `"probabilities": true` (classifiers). All rows are scored in one ONNX Runtime call.
//!   `null` features give a `null` prediction. Errors are JSON `{"error": ...}` with 400 (bad
//!   request), 404 (no such model or version), 413 (too many rows), 422 (a model PREDICT
//!   cannot feed) or 500 (the model failed).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use eddy_sql::Engine;
use eddy_sql::catalog::{DEFAULT_SCHEMA, ModelTensor};
use eddy_sql::onnx::Predictions;
use serde_json::{Value, json};

use crate::http::{Reply, reply_error};

/// Most rows one predict request may carry.
const MAX_PREDICT_ROWS: usize = 100_000;

fn tensors(t: &[ModelTensor]) -> Vec<Value> {
    t.iter()
        .map(|t| json!({ "name": t.name, "type": t.element, "shape": t.shape }))
        .collect()
}

pub async fn list_models(State(engine): State<Arc<Engine>>) -> Reply {
    let catalog = engine.catalog();
    let models: Vec<Value> = catalog
        .models()
        .map(|m| {
            let versions: Vec<Value> = m
                .versions
                .iter()
                .map(|v| {
                    json!({
                        "version": v.version,
                        "active": v.version == m.active,
                        "sha256": v.sha256,
                        "inputs": tensors(&v.inputs),
                        "outputs": tensors(&v.outputs),
                        "features": v.features,
                        "location": v.location,
                        "created_at_ms": v.created_at_ms,
                    })
                })
                .collect();
            json!({ "name": m.name, "active_version": m.active, "versions": versions })
        })
        .collect();
    (StatusCode::OK, axum::Json(json!({ "models": models })))
}

/// The request's rows as feature columns (NaN-free zeros where a feature is null) and which
/// rows are complete.
fn columns(
    rows: &[Value],
    width: usize,
    features: &[String],
    name: &str,
) -> Result<(Vec<Vec<f32>>, Vec<bool>), String> {
    let mut columns = vec![Vec::with_capacity(rows.len()); width];
    let mut valid = vec![true; rows.len()];
    for (i, row) in rows.iter().enumerate() {
        let values: Vec<&Value> = match row {
            Value::Array(values) if values.len() == width => values.iter().collect(),
            Value::Array(values) => {
                return Err(format!(
                    "row {i}: model \"{name}\" takes {width} features, not {}",
                    values.len()
                ));
            }
            Value::Object(map) if !features.is_empty() => {
                if let Some(unknown) = map.keys().find(|k| !features.contains(&k.to_lowercase())) {
                    return Err(format!(
                        "row {i}: model \"{name}\" has no feature \"{unknown}\" (its features: {})",
                        features.join(", ")
                    ));
                }
                let lower: std::collections::HashMap<String, &Value> =
                    map.iter().map(|(k, v)| (k.to_lowercase(), v)).collect();
                features
                    .iter()
                    .map(|f| {
                        lower
                            .get(f)
                            .copied()
                            .ok_or_else(|| format!("row {i}: feature \"{f}\" is missing"))
                    })
                    .collect::<Result<_, _>>()?
            }
            Value::Object(_) => {
                return Err(format!(
                    "row {i}: model \"{name}\" has no feature names; send each row as a list"
                ));
            }
            other => return Err(format!("row {i}: expected a list of features, got {other}")),
        };
        for (j, v) in values.into_iter().enumerate() {
            match v {
                Value::Null => {
                    valid[i] = false;
                    columns[j].push(0.0);
                }
                v => match v.as_f64() {
                    Some(x) => columns[j].push(x as f32),
                    None => {
                        return Err(format!("row {i}, feature {j}: expected a number, got {v}"));
                    }
                },
            }
        }
    }
    Ok((columns, valid))
}

pub async fn predict(
    State(engine): State<Arc<Engine>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Reply {
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return reply_error(StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")),
    };
    let Some(rows) = request.get("rows").and_then(|r| r.as_array()) else {
        return reply_error(
            StatusCode::BAD_REQUEST,
            "expected {\"rows\": [[feature, ...], ...]}".into(),
        );
    };
    if rows.len() > MAX_PREDICT_ROWS {
        return reply_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("at most {MAX_PREDICT_ROWS} rows per request"),
        );
    }
    let version = match request.get("version") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64().and_then(|v| u32::try_from(v).ok()) {
            Some(v) => Some(v),
            None => {
                return reply_error(
                    StatusCode::BAD_REQUEST,
                    format!("\"version\" must be a version number, not {v}"),
                );
            }
        },
    };
    let probabilities = request
        .get("probabilities")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let Some(def) = engine.catalog().model(DEFAULT_SCHEMA, &name) else {
        return reply_error(
            StatusCode::NOT_FOUND,
            format!("model \"{name}\" does not exist"),
        );
    };
    let chosen = match version {
        None => def.active_version(),
        Some(n) => match def.version(n) {
            Some(v) => v,
            None => {
                return reply_error(
                    StatusCode::NOT_FOUND,
                    format!("model \"{name}\" has no version {n}"),
                );
            }
        },
    };
    let version = chosen.version;
    let model = match engine.models.get(&name, chosen) {
        Ok(m) => m,
        Err(e) => return reply_error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let width = match model.feature_count() {
        Ok(n) => n,
        Err(e) => return reply_error(StatusCode::UNPROCESSABLE_ENTITY, e.0),
    };
    if probabilities && !model.has_probabilities() {
        return reply_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("model \"{name}\" gives no class probabilities"),
        );
    }
    let (columns, valid) = match columns(rows, width, &chosen.features, &name) {
        Ok(c) => c,
        Err(e) => return reply_error(StatusCode::BAD_REQUEST, e),
    };
    let n = rows.len();
    let result = tokio::task::spawn_blocking(move || {
        let slices: Vec<&[f32]> = columns.iter().map(|c| c.as_slice()).collect();
        let predictions = model.predict(&slices, n)?;
        let probabilities = match probabilities {
            true => Some(model.predict_proba(&slices, n)?),
            false => None,
        };
        Ok::<_, eddy_sql::onnx::OnnxError>((predictions, probabilities))
    })
    .await;
    let (predictions, probabilities) = match result {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.0),
        Err(e) => return reply_error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let values: Vec<Value> = match predictions {
        Predictions::Numbers(v) => v.into_iter().map(|x| json!(x)).collect(),
        Predictions::IntLabels(v) => v.into_iter().map(Value::from).collect(),
        Predictions::TextLabels(v) => v.into_iter().map(Value::from).collect(),
    };
    let keep = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .zip(&valid)
            .map(|(v, ok)| if *ok { v } else { Value::Null })
            .collect()
    };
    let mut reply = json!({ "model": name, "version": version, "predictions": keep(values) });
    if let Some(p) = probabilities {
        let rows: Vec<Value> = p
            .values
            .chunks(p.classes.max(1))
            .map(|row| json!(row.iter().map(|x| *x as f64).collect::<Vec<_>>()))
            .collect();
        reply["probabilities"] = Value::Array(keep(rows));
    }
    (StatusCode::OK, axum::Json(reply))
}

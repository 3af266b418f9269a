//! Models over the wire: CREATE MODEL from ONNX files built by scripts/models/build_models.py
//! (the onnx helper API; references computed by onnxruntime in Python), PREDICT compared with
//! the reference, errors, and a model surviving a restart and its source file's deletion.

use std::path::{Path, PathBuf};

use crate::common::{S3Server, Server, error_text, insert_rows};

pub(crate) fn build_models() -> (tempfile::TempDir, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .arg(root.join("scripts/models/build_models.py"))
        .arg(dir.path())
        .env("PYTHONPATH", root.join(".tools/onnx"))
        .stdout(std::process::Stdio::null())
        .status()
        .expect("python3 runs");
    assert!(
        status.success(),
        "build_models.py failed (run scripts/setup.sh first)"
    );
    let path = dir.path().to_path_buf();
    (dir, path)
}

/// One HTTP/1.1 request to the server's HTTP listener; returns the status and JSON body.
fn http(server: &Server, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(server.http).expect("connect http");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: eddy\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    let status = response[9..12].parse().unwrap();
    let json = response.split("\r\n\r\n").nth(1).unwrap_or("null");
    (
        status,
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn reference(dir: &Path, name: &str) -> (Vec<Vec<f64>>, Vec<f64>) {
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
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect();
    let outputs = v["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    (inputs, outputs)
}

async fn check_predictions(client: &tokio_postgres::Client, dir: &Path, name: &str) {
    let (rows, expected) = reference(dir, name);
    let width = rows[0].len();
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let cells: Vec<String> = r.iter().map(|x| format!("CAST({x:?} AS real)")).collect();
            format!("({i}, {})", cells.join(", "))
        })
        .collect();
    let cols: Vec<String> = (0..width).map(|j| format!("f{j}")).collect();
    let sql = format!(
        "SELECT predict('{name}', {}) FROM (VALUES {}) AS t(i, {}) ORDER BY i",
        cols.join(", "),
        values.join(", "),
        cols.join(", ")
    );
    let got: Vec<f64> = client
        .query(&sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, f64>(0))
        .collect();
    assert_eq!(got.len(), expected.len());
    for (g, e) in got.iter().zip(&expected) {
        assert!(
            (g - e).abs() <= 1e-5 * e.abs().max(1.0),
            "{name}: {g} vs {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_matches_onnxruntime_and_models_survive_restarts() {
    let (_keep, dir) = build_models();
    let mut server = Server::start();
    let client = server.connect().await;
    for name in ["linear", "mlp"] {
        client
            .batch_execute(&format!(
                "CREATE MODEL {name} FROM '{}'",
                dir.join(format!("{name}.onnx")).display()
            ))
            .await
            .expect("create model");
        check_predictions(&client, &dir, name).await;
    }
    let shown = client.simple_query("SHOW MODELS").await.unwrap();
    let inputs: Vec<String> = shown
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get("inputs").map(String::from),
            _ => None,
        })
        .collect();
    assert_eq!(inputs, vec!["x f32[?, 3]", "x f32[?, 4]"]);
    let row = client
        .query_one(
            "SELECT predict('linear', 1, 2, 3), predict('linear', NULL, 2, 3)",
            &[],
        )
        .await
        .unwrap();
    assert!((row.get::<_, f64>(0) - 4.75).abs() < 1e-6);
    assert_eq!(
        row.get::<_, Option<f64>>(1),
        None,
        "a NULL feature gives NULL"
    );

    // Prepared single-row scoring: `$1::real` parameters are described as real, so drivers
    // send them as such.
    let statement = client
        .prepare("SELECT predict('linear', $1::real, $2::real, $3::real)")
        .await
        .unwrap();
    assert_eq!(
        statement.params(),
        &[tokio_postgres::types::Type::FLOAT4; 3]
    );
    for (a, want) in [(1.0f32, 4.75), (0.0, 4.25)] {
        let row = client
            .query_one(&statement, &[&a, &2.0f32, &3.0f32])
            .await
            .unwrap();
        assert!((row.get::<_, f64>(0) - want).abs() < 1e-6);
    }

    // Errors are clear and leave the server up.
    let err = |sql: &'static str| {
        let client = &client;
        async move { error_text(&client.query(sql, &[]).await.unwrap_err()) }
    };
    assert!(
        err("SELECT predict('linear', 1, 2)")
            .await
            .contains("takes 3 features, not 2")
    );
    assert!(
        err("SELECT predict('nope', 1)")
            .await
            .contains("model \"nope\" does not exist")
    );
    assert!(
        err("SELECT predict('linear', 'a', 'b', 'c')")
            .await
            .contains("must be numbers")
    );
    let bogus = dir.join("bogus.onnx");
    std::fs::write(&bogus, b"definitely not protobuf").unwrap();
    let e = client
        .batch_execute(&format!("CREATE MODEL bogus FROM '{}'", bogus.display()))
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("is not a usable ONNX model"),
        "{}",
        error_text(&e)
    );

    // PREDICT in a continuous query: every event scored once, in batches.
    client
        .batch_execute(
            "CREATE SOURCE feats (id int NOT NULL, a real, b real, c real); \
             CREATE STREAM scored AS SELECT id, predict('linear', a, b, c) AS y FROM feats; \
             CREATE MATERIALIZED VIEW score_sum AS SELECT count(*) AS n, sum(predict('linear', a, b, c)) AS total FROM feats; \
             INSERT INTO feats VALUES (1, 1, 2, 3), (2, 0, 0, 0), (3, NULL, 1, 1)",
        )
        .await
        .expect("stream with PREDICT");
    let start = std::time::Instant::now();
    let scored = loop {
        let rows = client
            .query("SELECT id, y FROM scored ORDER BY id", &[])
            .await
            .unwrap();
        if rows.len() >= 3 || start.elapsed() > std::time::Duration::from_secs(30) {
            break rows;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let ys: Vec<Option<f64>> = scored.iter().map(|r| r.get(1)).collect();
    assert_eq!(ys, vec![Some(4.75), Some(0.75), None]);
    let start = std::time::Instant::now();
    let (n, total) = loop {
        let row = client
            .query_opt("SELECT n, total FROM score_sum", &[])
            .await
            .unwrap();
        let got = row.map(|r| (r.get::<_, i64>(0), r.get::<_, f64>(1)));
        match got {
            Some((3, total)) => break (3, total),
            _ if start.elapsed() > std::time::Duration::from_secs(30) => {
                break got.unwrap_or((0, 0.0));
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    assert_eq!(n, 3);
    assert!((total - 5.5).abs() < 1e-6, "{total}");

    // The same models over REST.
    let (status, listed) = http(&server, "GET", "/v1/models", "");
    assert_eq!(status, 200);
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["linear", "mlp"]);
    let (status, scored) = http(
        &server,
        "POST",
        "/v1/models/linear/predict",
        r#"{"rows": [[1, 2, 3], [0, 0, 0], [null, 1, 1]]}"#,
    );
    assert_eq!(status, 200, "{scored}");
    assert_eq!(scored["predictions"], serde_json::json!([4.75, 0.75, null]));
    let (status, e) = http(
        &server,
        "POST",
        "/v1/models/linear/predict",
        r#"{"rows": [[1, 2]]}"#,
    );
    assert_eq!(status, 400);
    assert!(
        e["error"].as_str().unwrap().contains("takes 3 features"),
        "{e}"
    );
    assert_eq!(
        http(
            &server,
            "POST",
            "/v1/models/nope/predict",
            r#"{"rows": []}"#
        )
        .0,
        404
    );
    assert_eq!(
        http(&server, "POST", "/v1/models/linear/predict", "{oops").0,
        400
    );

    // The model is a copy in the data dir: it outlives its source file and a restart.
    std::fs::remove_file(dir.join("linear.onnx")).unwrap();
    server.restart();
    let client = server.connect().await;
    check_predictions(&client, &dir, "linear").await;
    let e = client.batch_execute("DROP MODEL linear").await.unwrap_err();
    assert_eq!(
        e.code().unwrap().code(),
        "2BP01",
        "a running stream uses it"
    );
    client
        .batch_execute("DROP MODEL linear CASCADE")
        .await
        .unwrap();
    assert!(
        error_text(
            &client
                .query("SELECT predict('linear', 1, 2, 3)", &[])
                .await
                .unwrap_err()
        )
        .contains("does not exist")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_onnx_runtime_models_fail_clearly_and_the_server_stays_up() {
    let (_keep, dir) = build_models();
    let server = Server::start_with_env(&[("EDDY_ORT_LIB", "/nonexistent/libonnxruntime.so")]);
    let client = server.connect().await;
    let e = client
        .batch_execute(&format!(
            "CREATE MODEL linear FROM '{}'",
            dir.join("linear.onnx").display()
        ))
        .await
        .unwrap_err();
    let text = error_text(&e);
    assert!(
        text.contains("ONNX Runtime") && text.contains("pip install"),
        "{text}"
    );
    let row = client.query_one("SELECT 1 + 1", &[]).await.unwrap();
    assert_eq!(row.get::<_, i64>(0), 2, "the server is up");
}

/// Polls `sql` (one bigint) until `done` holds or the deadline passes; returns the last value.
async fn wait_count(
    client: &tokio_postgres::Client,
    sql: &str,
    deadline: std::time::Duration,
    done: impl Fn(i64) -> bool,
) -> i64 {
    let start = std::time::Instant::now();
    loop {
        let n: i64 = client.query_one(sql, &[]).await.unwrap().get(0);
        if done(n) || start.elapsed() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn json_file(dir: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
        .unwrap()
}

/// `VALUES (i, f0, f1, ...)` rows of a reference's inputs, as real.
fn values_rows(reference: &serde_json::Value) -> (String, String) {
    let rows = reference["inputs"].as_array().unwrap();
    let width = rows[0].as_array().unwrap().len();
    let values: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let cells: Vec<String> = r
                .as_array()
                .unwrap()
                .iter()
                .map(|x| format!("CAST({} AS real)", x.as_f64().unwrap()))
                .collect();
            format!("({i}, {})", cells.join(", "))
        })
        .collect();
    let cols: Vec<String> = (0..width).map(|j| format!("f{j}")).collect();
    (
        cols.join(", "),
        format!(
            "(VALUES {}) AS t(i, {})",
            values.join(", "),
            cols.join(", ")
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classifiers_trees_named_features_versions_and_rest() {
    let (_keep, dir) = build_models();
    let server = Server::start();
    let client = server.connect().await;
    for name in ["gbt", "logistic", "churn", "pair"] {
        client
            .batch_execute(&format!(
                "CREATE MODEL {name} FROM '{}'",
                dir.join(format!("{name}.onnx")).display()
            ))
            .await
            .expect("create model");
    }

    // A gradient-boosted tree ensemble (scikit-learn through skl2onnx) equals onnxruntime.
    check_predictions(&client, &dir, "gbt").await;

    // Classifiers: PREDICT gives the label (int or text), PREDICT_PROBA the probabilities.
    for (name, text_labels) in [("logistic", false), ("churn", true)] {
        let reference = json_file(&dir, name);
        let (cols, from) = values_rows(&reference);
        let rows = client
            .query(
                &format!(
                    "SELECT predict('{name}', {cols}), predict_proba('{name}', {cols}) FROM {from} ORDER BY i"
                ),
                &[],
            )
            .await
            .unwrap();
        let want_labels = reference["outputs"].as_array().unwrap();
        let want_probs = reference["probabilities"].as_array().unwrap();
        assert_eq!(rows.len(), want_labels.len());
        for (i, row) in rows.iter().enumerate() {
            let label = match text_labels {
                true => serde_json::Value::from(row.get::<_, String>(0)),
                false => serde_json::Value::from(row.get::<_, i64>(0)),
            };
            assert_eq!(label, want_labels[i], "{name} row {i}");
            let probs: Vec<f64> = row.get(1);
            let want: Vec<f64> = want_probs[i]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p.as_f64().unwrap())
                .collect();
            assert_eq!(probs.len(), want.len());
            for (g, w) in probs.iter().zip(&want) {
                assert!(
                    (g - w).abs() <= 1e-5,
                    "{name} row {i}: {probs:?} vs {want:?}"
                );
            }
        }
    }
    let row = client
        .query_one("SELECT predict_proba('logistic', 1, 2, 3, 4)[2]", &[])
        .await
        .unwrap();
    assert!(row.get::<_, f64>(0) > 0.0, "one class's probability");
    let e = client
        .query("SELECT predict_proba('gbt', 1, 2, 3, 4, 5)", &[])
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("not a classifier"),
        "{}",
        error_text(&e)
    );

    // Features by name: the model's input names, or names given at CREATE.
    let row = client
        .query_one(
            "SELECT predict('pair', vibration => 1.0, temp => 3.0) AS named, predict('pair', 3.0, 1.0) AS positional",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 5.0);
    assert_eq!(row.get::<_, f64>(1), 5.0);
    client
        .batch_execute(&format!(
            "CREATE MODEL lin FROM '{}' WITH (features = 'a, b, c')",
            dir.join("linear.onnx").display()
        ))
        .await
        .unwrap();
    let row = client
        .query_one("SELECT predict('lin', c => 3, a => 1, b => 2)", &[])
        .await
        .unwrap();
    assert!((row.get::<_, f64>(0) - 4.75).abs() < 1e-6);
    for (sql, expected) in [
        (
            "SELECT predict('lin', a => 1, b => 2)",
            "feature \"c\" of model \"lin\" is missing",
        ),
        (
            "SELECT predict('lin', a => 1, b => 2, d => 3)",
            "has no feature \"d\"",
        ),
        ("SELECT predict('gbt', a => 1)", "has no feature names"),
    ] {
        let e = client.query(sql, &[]).await.unwrap_err();
        assert!(
            error_text(&e).contains(expected),
            "{sql}: {}",
            error_text(&e)
        );
    }
    let e = client
        .batch_execute(&format!(
            "CREATE MODEL lin2 FROM '{}' WITH (features = 'a, b')",
            dir.join("linear.onnx").display()
        ))
        .await
        .unwrap_err();
    assert!(error_text(&e).contains("names 2 features; the model takes 3"));

    // Versions: adding one keeps the active version; SET ACTIVE VERSION and ROLLBACK switch.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    client
        .batch_execute(&format!(
            "CREATE MODEL anomaly FROM '{v1}'; CREATE MODEL anomaly VERSION 2 FROM '{v2}'",
            v1 = examples.join("anomaly_v1.onnx").display(),
            v2 = examples.join("anomaly_v2.onnx").display()
        ))
        .await
        .unwrap();
    let score = "SELECT predict('anomaly', 70, 1.2), predict_version('anomaly')";
    let scored = |row: tokio_postgres::Row| (row.get::<_, f64>(0), row.get::<_, i32>(1));
    let (y, v) = scored(client.query_one(score, &[]).await.unwrap());
    assert_eq!(v, 1);
    assert!((y - 1.2).abs() < 1e-5, "{y}");
    let prepared = client
        .prepare("SELECT predict('anomaly', $1::real, $2::real), predict_version('anomaly')")
        .await
        .unwrap();
    client
        .batch_execute("ALTER MODEL anomaly SET ACTIVE VERSION 2")
        .await
        .unwrap();
    let (y, v) = scored(client.query_one(score, &[]).await.unwrap());
    assert_eq!(v, 2);
    assert!((y - 1.7).abs() < 1e-5, "{y}");
    // A statement prepared before the switch scores with the new version too.
    let (y, v) = scored(
        client
            .query_one(&prepared, &[&70f32, &1.2f32])
            .await
            .unwrap(),
    );
    assert_eq!(v, 2);
    assert!((y - 1.7).abs() < 1e-5, "{y}");
    client
        .batch_execute("ALTER MODEL anomaly ROLLBACK")
        .await
        .unwrap();
    assert_eq!(scored(client.query_one(score, &[]).await.unwrap()).1, 1);
    for (sql, code, expected) in [
        (
            "ALTER MODEL anomaly ROLLBACK",
            "55000",
            "no earlier active version",
        ),
        (
            "ALTER MODEL anomaly SET ACTIVE VERSION 7",
            "42704",
            "has no version 7",
        ),
        (
            "ALTER MODEL nope SET ACTIVE VERSION 1",
            "42704",
            "does not exist",
        ),
        (
            "CREATE MODEL anomaly FROM 'examples/models/anomaly_v1.onnx'",
            "42710",
            "already exists",
        ),
    ] {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), code, "{sql}");
        assert!(
            error_text(&e).contains(expected),
            "{sql}: {}",
            error_text(&e)
        );
    }
    let versions: Vec<(String, i32, bool)> = client
        .query(
            "SELECT name, version, active FROM eddy_catalog.models WHERE name = 'anomaly' ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        versions,
        vec![("anomaly".into(), 1, true), ("anomaly".into(), 2, false)]
    );

    // A running query keeps a model from being dropped, unless CASCADE.
    client
        .batch_execute(
            "CREATE SOURCE s (a real, b real); \
             CREATE STREAM uses AS SELECT predict('anomaly', a, b) AS y FROM s; \
             CREATE MATERIALIZED VIEW reads AS SELECT count(*) AS n FROM uses",
        )
        .await
        .unwrap();
    let e = client
        .batch_execute("DROP MODEL anomaly")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "2BP01");
    let detail = e.as_db_error().and_then(|d| d.detail()).unwrap_or_default();
    assert!(
        detail.contains("stream uses scores with model anomaly"),
        "{detail}"
    );
    // A version with other features cannot become active under a running query.
    client
        .batch_execute(&format!(
            "CREATE MODEL anomaly VERSION 3 FROM '{}'",
            dir.join("linear.onnx").display()
        ))
        .await
        .unwrap();
    let e = client
        .batch_execute("ALTER MODEL anomaly SET ACTIVE VERSION 3")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "55000", "{}", error_text(&e));
    client
        .batch_execute("DROP MODEL anomaly CASCADE")
        .await
        .unwrap();
    for gone in ["uses", "reads"] {
        let e = client
            .query(&format!("SELECT * FROM {gone}"), &[])
            .await
            .unwrap_err();
        assert_eq!(
            e.code().unwrap().code(),
            "42P01",
            "{gone} went with the model"
        );
    }

    // REST: versions, named rows, labels and probabilities.
    client
        .batch_execute(&format!(
            "CREATE MODEL anomaly FROM '{v1}' WITH (features = 'temperature, vibration'); \
             CREATE MODEL anomaly VERSION 2 FROM '{v2}' WITH (features = 'temperature, vibration')",
            v1 = examples.join("anomaly_v1.onnx").display(),
            v2 = examples.join("anomaly_v2.onnx").display()
        ))
        .await
        .unwrap();
    let (status, body) = http(&server, "GET", "/v1/models", "");
    assert_eq!(status, 200);
    let anomaly = body["models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "anomaly")
        .unwrap();
    assert_eq!(anomaly["active_version"], 1);
    assert_eq!(anomaly["versions"].as_array().unwrap().len(), 2);
    assert_eq!(
        anomaly["versions"][0]["features"],
        serde_json::json!(["temperature", "vibration"])
    );
    let (status, body) = http(
        &server,
        "POST",
        "/v1/models/anomaly/predict",
        r#"{"rows": [{"temperature": 70, "vibration": 1.2}, [90, 3.0]], "version": 2}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["version"], 2);
    let got: Vec<f64> = body["predictions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert!(
        (got[0] - 1.7).abs() < 1e-5 && (got[1] - 4.5).abs() < 1e-5,
        "{got:?}"
    );
    let (status, body) = http(
        &server,
        "POST",
        "/v1/models/churn/predict",
        r#"{"rows": [[1, 2, 3, 4], [null, 1, 1, 1]], "probabilities": true}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["predictions"][0].is_string(), "{body}");
    assert!(body["predictions"][1].is_null(), "{body}");
    let p = body["probabilities"][0].as_array().unwrap();
    let total: f64 = p.iter().map(|x| x.as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-5, "{body}");
    for (path, request, status, expected) in [
        (
            "/v1/models/anomaly/predict",
            r#"{"rows": [[1, 2]], "version": 9}"#,
            404,
            "no version 9",
        ),
        (
            "/v1/models/anomaly/predict",
            r#"{"rows": [{"temp": 1}]}"#,
            400,
            "no feature \"temp\"",
        ),
        (
            "/v1/models/gbt/predict",
            r#"{"rows": [[1, 2, 3, 4, 5]], "probabilities": true}"#,
            422,
            "no class probabilities",
        ),
        (
            "/v1/models/anomaly/predict",
            r#"{"rows": [[1, 2]], "version": "x"}"#,
            400,
            "version",
        ),
    ] {
        let (got, body) = http(&server, "POST", path, request);
        assert_eq!(got, status, "{request}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains(expected),
            "{request}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_failing_at_run_time_sends_rows_to_dead_letters() {
    let (_keep, dir) = build_models();
    let server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE MODEL lookup FROM '{}'; \
             CREATE SOURCE codes (id int NOT NULL, code real); \
             CREATE STREAM looked AS SELECT id, predict('lookup', code) AS y FROM codes; \
             INSERT INTO codes VALUES (1, 2), (2, 42), (3, 5), (4, NULL), (5, -30), (6, 9)",
            dir.join("lookup.onnx").display()
        ))
        .await
        .unwrap();
    let deadline = std::time::Duration::from_secs(30);
    wait_count(&client, "SELECT count(*) FROM looked", deadline, |n| n >= 4).await;
    let rows: Vec<(i32, Option<f64>)> = client
        .query("SELECT id, y FROM looked ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        rows,
        vec![(1, Some(20.0)), (3, Some(50.0)), (4, None), (6, Some(90.0))]
    );
    let dead: Vec<(String, String)> = client
        .query(
            "SELECT payload, error FROM codes_errors ORDER BY \"offset\"",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert!(
        dead[0].0.contains("\"id\":2") && dead[1].0.contains("\"id\":5"),
        "{dead:?}"
    );
    assert!(
        dead[0].1.contains("looked") && dead[0].1.contains("model \"lookup\""),
        "{dead:?}"
    );
    // The pipeline goes on.
    client
        .batch_execute("INSERT INTO codes VALUES (7, 1)")
        .await
        .unwrap();
    wait_count(&client, "SELECT count(*) FROM looked", deadline, |n| n >= 5).await;
    let shown = client.simple_query("SHOW STREAMS").await.unwrap();
    let status: Vec<String> = shown
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(format!(
                "{} {}",
                r.get("status").unwrap(),
                r.get("dead_letters").unwrap()
            )),
            _ => None,
        })
        .collect();
    assert_eq!(status, vec!["running 2"]);
    // Ad hoc, the failure is an error with SQLSTATE 38000.
    let e = client
        .query("SELECT predict('lookup', 42)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "38000", "{}", error_text(&e));
}

/// The reference scores of the example models (anomaly_v1/v2.onnx).
fn anomaly(version: i32, temperature: f64, vibration: f64) -> f64 {
    match version {
        1 => 0.02 * temperature + 1.5 * vibration - 2.0,
        2 => 0.05 * temperature + 1.0 * vibration - 3.0,
        v => panic!("no version {v}"),
    }
}

/// Switches the active version twice under a running stream and kills the server with SIGKILL
/// at a seeded random batch: every row is scored exactly once, by the version it says scored
/// it, and the versions change in row order exactly at the two switches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_swap_under_a_running_stream_scores_every_row_once() {
    let seed = crate::common::crash_seed();
    println!("hot swap test seed: {seed} (set EDDY_CRASH_SEED={seed} to replay)");
    let mut rng = crate::common::Rng(seed);
    const BATCHES: i64 = 60;
    const ROWS: i64 = 50;
    let kill_at = 5 + rng.below(50) as i64;
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    let mut server = Server::start();
    let client = server.connect().await;
    client
        .batch_execute(&format!(
            "CREATE MODEL anomaly FROM '{v1}' WITH (features = 'temperature, vibration'); \
             CREATE MODEL anomaly VERSION 2 FROM '{v2}' WITH (features = 'temperature, vibration'); \
             CREATE SOURCE readings (id int NOT NULL, temperature real, vibration real); \
             CREATE STREAM scored WITH (checkpoint_interval = '50ms') AS \
               SELECT id, temperature, vibration, \
                      PREDICT('anomaly', vibration => vibration, temperature => temperature) AS score, \
                      PREDICT_VERSION('anomaly') AS version \
               FROM readings",
            v1 = examples.join("anomaly_v1.onnx").display(),
            v2 = examples.join("anomaly_v2.onnx").display()
        ))
        .await
        .unwrap();
    let mut client = client;
    // Phase 1 (version 1) until batch 20, then SET ACTIVE VERSION 2; phase 2 until batch 40
    // and until a row scored by version 2 is seen, then ROLLBACK; phase 3 until batch 60 and
    // until a row after the last version-2 row is scored by version 1 again. Switches happen
    // while rows are in flight: there is no waiting for the stream to catch up.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let mut phase = 1;
    let mut b = 0;
    loop {
        let values: Vec<String> = (b * ROWS..(b + 1) * ROWS)
            .map(|i| format!("({i}, {}, {})", 50 + i % 40, (i % 13) as f64 / 4.0))
            .collect();
        insert_rows(&client, "readings", &values).await;
        b += 1;
        if b == kill_at {
            println!("SIGKILL after batch {b}");
            server.restart();
            client = server.connect().await;
        }
        let seen = |sql: &'static str| {
            let client = &client;
            async move { client.query_one(sql, &[]).await.unwrap().get::<_, bool>(0) }
        };
        match phase {
            1 if b >= 20 => {
                client
                    .batch_execute("ALTER MODEL anomaly SET ACTIVE VERSION 2")
                    .await
                    .unwrap();
                phase = 2;
            }
            2 if b >= 40 && seen("SELECT count(*) > 0 FROM scored WHERE version = 2").await => {
                client
                    .batch_execute("ALTER MODEL anomaly ROLLBACK")
                    .await
                    .unwrap();
                phase = 3;
            }
            3 if b >= BATCHES
                && seen(
                    "SELECT count(*) > 0 FROM scored WHERE version = 1 AND id > \
                     (SELECT max(id) FROM scored WHERE version = 2)",
                )
                .await =>
            {
                break;
            }
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "phase {phase} never ended (seed {seed})"
        );
    }
    let total = b * ROWS;
    let n = wait_count(
        &client,
        "SELECT count(*) FROM scored",
        std::time::Duration::from_secs(120),
        |n| n >= total,
    )
    .await;
    assert_eq!(n, total, "every row scored (seed {seed})");
    let rows = client
        .query(
            "SELECT id, temperature, vibration, score, version FROM scored ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len() as i64, total);
    let mut versions = Vec::new();
    for (i, r) in rows.iter().enumerate() {
        let id: i32 = r.get(0);
        assert_eq!(id as usize, i, "each row exactly once (seed {seed})");
        let (t, v): (f32, f32) = (r.get(1), r.get(2));
        let version: i32 = r.get(4);
        let score: f64 = r.get(3);
        let want = anomaly(version, t as f64, v as f64);
        assert!(
            (score - want).abs() < 1e-4,
            "row {id}: scored {score}, version {version} gives {want} (seed {seed})"
        );
        if versions.last() != Some(&version) {
            versions.push(version);
        }
    }
    assert_eq!(
        versions,
        vec![1, 2, 1],
        "versions in row order switch exactly twice (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_load_from_an_s3_compatible_store() {
    let s3 = S3Server::start();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
    s3.put("/models", b"");
    s3.put(
        "/models/anomaly/v1.onnx",
        &std::fs::read(examples.join("anomaly_v1.onnx")).unwrap(),
    );
    s3.put("/models/not-a-model.onnx", b"garbage");
    let server = Server::start();
    let client = server.connect().await;
    let settings = format!(
        "aws_endpoint = 'http://127.0.0.1:{}', aws_allow_http = 'true', aws_region = 'us-east-1', \
         aws_access_key_id = 'edge', aws_secret_access_key = 'very-secret'",
        s3.port
    );
    client
        .batch_execute(&format!(
            "CREATE MODEL remote FROM 's3://models/anomaly/v1.onnx' WITH ({settings})"
        ))
        .await
        .expect("model from S3");
    let row = client
        .query_one("SELECT predict('remote', 70, 1.2)", &[])
        .await
        .unwrap();
    assert!((row.get::<_, f64>(0) - 1.2).abs() < 1e-5);
    let location: String = client
        .query_one(
            "SELECT location FROM eddy_catalog.models WHERE name = 'remote'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(location, "s3://models/anomaly/v1.onnx");
    for (sql, expected) in [
        (
            format!("CREATE MODEL m2 FROM 's3://models/missing.onnx' WITH ({settings})"),
            "cannot read model s3://models/missing.onnx",
        ),
        (
            format!("CREATE MODEL m3 FROM 's3://models/not-a-model.onnx' WITH ({settings})"),
            "is not a usable ONNX model",
        ),
        (
            format!(
                "CREATE MODEL m4 FROM 's3://models/anomaly/v1.onnx' WITH ({settings}, colour = 'blue')"
            ),
            "unknown option \"colour\"",
        ),
        (
            "CREATE MODEL m5 FROM 'ftp://host/m.onnx'".to_string(),
            "scheme ftp://",
        ),
    ] {
        let e = client.batch_execute(&sql).await.unwrap_err();
        let text = error_text(&e);
        assert!(text.contains(expected), "{sql}: {text}");
        assert!(
            !text.contains("very-secret"),
            "credentials never show: {text}"
        );
    }
    // The copy in the data dir outlives the store.
    drop(s3);
    let row = client
        .query_one("SELECT predict('remote', 70, 1.2)", &[])
        .await
        .unwrap();
    assert!((row.get::<_, f64>(0) - 1.2).abs() < 1e-5);
}

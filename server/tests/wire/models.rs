//! Models over the wire: CREATE MODEL from ONNX files built by scripts/models/build_models.py
//! (the onnx helper API; references computed by onnxruntime in Python), PREDICT compared with
//! the reference, errors, and a model surviving a restart and its source file's deletion.

use std::path::{Path, PathBuf};

use crate::common::{Server, error_text};

fn build_models() -> (tempfile::TempDir, PathBuf) {
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
    client.batch_execute("DROP MODEL linear").await.unwrap();
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

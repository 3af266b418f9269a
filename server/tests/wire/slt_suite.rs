//! Runs every `.slt` file under `sqllogictest/` in both query protocols (only the files
//! whose name contains `EDDY_SLT`, when it is set).

use std::path::PathBuf;
use std::sync::Arc;

use sqllogictest::Runner;
use tokio::sync::Mutex;

use crate::common::Server;
use crate::common::slt::EddyDb;

fn slt_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sqllogictest");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("sqllogictest dir")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .filter(|p| match std::env::var("EDDY_SLT") {
            Ok(only) => p.to_string_lossy().contains(&only),
            Err(_) => true,
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no .slt files in {}", dir.display());
    files
}

async fn run_all(extended: bool) {
    let server = Arc::new(Mutex::new(Server::start()));
    let mut failures = Vec::new();
    for file in slt_files() {
        let server = server.clone();
        let mut runner = Runner::new(move || {
            let server = server.clone();
            async move {
                let client = server.lock().await.connect().await;
                Ok::<_, crate::common::slt::DbError>(EddyDb {
                    client,
                    server,
                    extended,
                })
            }
        });
        runner.with_column_validator(|_, _| true);
        runner.add_label(if extended { "extended" } else { "simple" });
        if let Err(e) = runner.run_file_async(&file).await {
            failures.push(format!("{}:\n{e}", file.display()));
        }
    }
    assert!(
        failures.is_empty(),
        "{} slt file(s) failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_simple_protocol() {
    run_all(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slt_extended_protocol() {
    run_all(true).await;
}

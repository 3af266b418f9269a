//! What the benchmarks that drive a real `eddy serve` share (each uses a part of it).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `eddy serve` on free ports, its data in a temporary directory.
pub struct Eddy {
    pub child: Child,
    pub pg: u16,
    pub http: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Eddy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server and waits for its "eddy ready" line.
pub fn start() -> Eddy {
    let dir = tempfile::tempdir().unwrap();
    let (pg, http) = (free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["serve", "--data-dir", dir.path().to_str().unwrap()])
        .args(["--pg-listen", &format!("127.0.0.1:{pg}")])
        .args(["--http-listen", &format!("127.0.0.1:{http}")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start eddy");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    while let Some(Ok(line)) = lines.next() {
        if line.starts_with("eddy ready") {
            break;
        }
    }
    Eddy {
        child,
        pg,
        http,
        _dir: dir,
    }
}

pub async fn connect(pg: u16) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={pg} user=eddy dbname=eddy"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("connect");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

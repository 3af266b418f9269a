//! The server process: settings from file, environment and flags; clean SIGTERM shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::spawn;

/// The Postgres port from a ready line.
fn pg_port(ready: &str) -> String {
    let after = ready
        .split("postgres on 127.0.0.1:")
        .nth(1)
        .expect("pg address");
    after.split(',').next().unwrap().to_string()
}

fn psql(port: &str, sql: &str) -> std::process::Output {
    Command::new("psql")
        .args([
            "-X",
            "-At",
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-U",
            "eddy",
            "-d",
            "eddy",
            "-c",
            sql,
        ])
        .output()
        .unwrap()
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "server did not exit within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn settings_come_from_flags_then_environment_then_file() {
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("from-file");
    let env_dir = dir.path().join("from-env");
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\npg_listen = \"127.0.0.1:1\"\nhttp_listen = \"127.0.0.1:0\"\n",
            file_dir.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // The file's data dir and http address are used; the flag overrides its pg address.
    let (mut child, line) = spawn(&["--config", config, "--pg-listen", "127.0.0.1:0"], &[]);
    assert!(
        line.contains(&format!("data in {}", file_dir.display())),
        "{line}"
    );
    assert!(!line.contains("postgres on 127.0.0.1:1,"), "{line}");
    child.kill().unwrap();
    let _ = child.wait();
    // The environment beats the file; a flag beats the environment.
    let env_dir_s = env_dir.to_str().unwrap().to_string();
    let (mut child, line) = spawn(
        &["--config", config, "--pg-listen", "127.0.0.1:0"],
        &[
            ("EDDY_DATA_DIR", env_dir_s.as_str()),
            ("EDDY_HTTP_LISTEN", "127.0.0.1:0"),
        ],
    );
    assert!(
        line.contains(&format!("data in {}", env_dir.display())),
        "{line}"
    );
    child.kill().unwrap();
    let _ = child.wait();
    // A bad config file is refused with a message naming the problem.
    std::fs::write(dir.path().join("bad.toml"), "pg_listen = 5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(["serve", "--config"])
        .arg(dir.path().join("bad.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid config file"));
}

#[test]
fn sigterm_shuts_down_cleanly_and_data_stays() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let args = [
        "--data-dir",
        data,
        "--pg-listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let (mut child, line) = spawn(&args, &[]);
    let port = pg_port(&line);
    let created = psql(
        &port,
        "CREATE TABLE kept (x int PRIMARY KEY); INSERT INTO kept VALUES (7)",
    );
    assert!(created.status.success());
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
    let (mut child, line) = spawn(&args, &[]);
    let out = psql(&pg_port(&line), "SELECT x FROM kept");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    assert!(wait_exit(&mut child, Duration::from_secs(20)).success());
}

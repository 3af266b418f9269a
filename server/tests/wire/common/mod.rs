//! A real `eddy serve` process for tests: started on free ports with its own data dir, killed
//! with SIGKILL and restarted on the same ports and data.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a server may take to print its ready line.
const READY_DEADLINE: Duration = Duration::from_secs(60);

pub struct Server {
    child: Option<Child>,
    pub pg: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    /// The bootstrap superuser's password, when authentication is on.
    pub password: Option<String>,
    env: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

/// The admin password of servers started with [`Server::start_secure`].
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

impl Server {
    /// A fresh server with an empty data dir.
    pub fn start() -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start_in(tmp.path(), "127.0.0.1:0", "127.0.0.1:0");
        s._tmp = Some(tmp);
        s
    }

    /// A fresh server started with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut s = Self::start_in_with(tmp.path(), "127.0.0.1:0", "127.0.0.1:0", env);
        s._tmp = Some(tmp);
        s
    }

    /// A fresh server with SCRAM-SHA-256 authentication on; its connection string asks for
    /// TLS (`sslmode=require`) and carries the admin's password.
    pub fn start_secure() -> Server {
        let mut s = Self::start_with_env(&[
            ("EDDY_AUTH", "scram-sha-256"),
            ("EDDY_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ]);
        s.password = Some(ADMIN_PASSWORD.to_string());
        s
    }

    pub fn start_in(data_dir: &Path, pg: &str, http: &str) -> Server {
        Self::start_in_with(data_dir, pg, http, &[])
    }

    /// A fresh server whose process `configure` adjusts before it starts (resource limits,
    /// a piped stderr to read with [`Server::take_stderr`]).
    pub fn start_configured(env: &[(&str, &str)], configure: impl FnOnce(&mut Command)) -> Server {
        Self::start_fresh(Command::new(eddy_binary()), env, configure)
    }

    /// A fresh server run by `command` (a wrapper that runs `eddy`, such as strace).
    pub fn start_wrapped(command: Command) -> Server {
        Self::start_fresh(command, &[], |_| {})
    }

    /// A server with a new data dir, on free ports, started by `command`.
    fn start_fresh(
        command: Command,
        env: &[(&str, &str)],
        configure: impl FnOnce(&mut Command),
    ) -> Server {
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().to_str().expect("utf-8 path");
        let args = [
            "--data-dir",
            data,
            "--pg-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ];
        let (child, line) = spawn_command(command, &args, env, configure);
        let mut s = Self::from_ready(child, &line, tmp.path(), env);
        s._tmp = Some(tmp);
        s
    }

    pub fn take_stderr(&mut self) -> Option<std::process::ChildStderr> {
        self.child.as_mut().and_then(|c| c.stderr.take())
    }

    fn start_in_with(data_dir: &Path, pg: &str, http: &str, env: &[(&str, &str)]) -> Server {
        let data = data_dir.to_str().expect("utf-8 path");
        let (child, line) = spawn(
            &["--data-dir", data, "--pg-listen", pg, "--http-listen", http],
            env,
        );
        Self::from_ready(child, &line, data_dir, env)
    }

    fn from_ready(child: Child, line: &str, data_dir: &Path, env: &[(&str, &str)]) -> Server {
        let addr_after = |label: &str| -> SocketAddr {
            let rest = &line[line.find(label).expect("label in ready line") + label.len()..];
            rest.split([',', ' '])
                .next()
                .unwrap()
                .parse()
                .expect("address")
        };
        Server {
            pg: addr_after("postgres on "),
            http: addr_after("http on "),
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
            password: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: None,
        }
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            unsafe {
                libc::kill(child.id() as i32, libc::SIGKILL);
            }
            let _ = child.wait();
        }
    }

    /// SIGKILL, then start again on the same ports and data dir.
    pub fn restart(&mut self) {
        self.restart_with(&[]);
    }

    /// [`Server::restart`] with `extra` environment variables for this run (a setting that
    /// changes between runs, such as the parallelism).
    pub fn restart_with(&mut self, extra: &[(&str, &str)]) {
        self.kill9();
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .chain(extra.iter().copied())
            .collect();
        let fresh = Server::start_in_with(
            &self.data_dir,
            &self.pg.to_string(),
            &self.http.to_string(),
            &env,
        );
        self.child = fresh.child_take();
    }

    fn child_take(mut self) -> Option<Child> {
        self.child.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("running")
    }

    /// psql's connection string: over TLS with the password when authentication is on.
    pub fn conn_string(&self) -> String {
        match &self.password {
            None => self.plain_conn_string(),
            Some(_) => format!("{} sslmode=require", self.plain_conn_string()),
        }
    }

    /// Without TLS (tokio-postgres here has no TLS connector), with the password if any.
    pub fn plain_conn_string(&self) -> String {
        let mut s = format!(
            "host={} port={} user=eddy dbname=eddy",
            self.pg.ip(),
            self.pg.port()
        );
        if let Some(p) = &self.password {
            s.push_str(&format!(" password='{p}'"));
        }
        s
    }

    /// `postgresql://eddy[:PASSWORD]@HOST:PORT/eddy`, for tools that take URLs.
    pub fn url(&self) -> String {
        let password: String = self
            .password
            .as_deref()
            .map(|p| {
                let encoded: String = p
                    .bytes()
                    .map(|b| match b {
                        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!(":{encoded}")
            })
            .unwrap_or_default();
        format!("postgresql://eddy{password}@{}/eddy", self.pg)
    }

    pub async fn connect(&self) -> tokio_postgres::Client {
        let (client, conn) =
            tokio_postgres::connect(&self.plain_conn_string(), tokio_postgres::NoTls)
                .await
                .expect("connect to eddy");
        tokio::spawn(async move {
            let _ = conn.await;
        });
        client
    }
}

/// Starts `eddy serve ARGS` with extra environment, and waits (with a deadline) for the line
/// it prints when ready. Returns the process and that line.
pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> (Child, String) {
    spawn_with(args, env, |_| {})
}

/// The binary under test: this build's `eddy`, or `EDDY_TEST_BINARY` (to run the suite
/// against another build, such as the one before a fix).
pub fn eddy_binary() -> String {
    std::env::var("EDDY_TEST_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_eddy").to_string())
}

/// [`spawn`], with the command adjusted by `configure` first.
pub fn spawn_with(
    args: &[&str],
    env: &[(&str, &str)],
    configure: impl FnOnce(&mut Command),
) -> (Child, String) {
    spawn_command(Command::new(eddy_binary()), args, env, configure)
}

/// [`spawn_with`] for a command that runs `eddy` (the binary itself, or a wrapper such as
/// strace given the binary's path).
pub fn spawn_command(
    mut command: Command,
    args: &[&str],
    env: &[(&str, &str)],
    configure: impl FnOnce(&mut Command),
) -> (Child, String) {
    // Keyed operators run in two partitions whatever the machine's cores (a test's own
    // environment may ask for another number).
    command
        .arg("serve")
        .args(args)
        .env("EDDY_PARALLELISM", "2")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    configure(&mut command);
    let mut child = command.spawn().expect("spawn eddy");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        match rx.recv_timeout(READY_DEADLINE) {
            Ok(line) if line.starts_with("eddy ready:") => return (child, line),
            Ok(_) => continue,
            Err(e) => panic!("eddy did not become ready within {READY_DEADLINE:?}: {e}"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Logs in as `user` (with `password`, if any) without TLS; the error as [`error_text`].
pub async fn connect_result(
    server: &Server,
    user: &str,
    password: Option<&str>,
) -> Result<tokio_postgres::Client, String> {
    let mut conn = format!(
        "host={} port={} user={user} dbname=eddy",
        server.pg.ip(),
        server.pg.port()
    );
    if let Some(p) = password {
        conn.push_str(&format!(" password='{p}'"));
    }
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls)
        .await
        .map_err(|e| error_text(&e))?;
    tokio::spawn(connection);
    Ok(client)
}

/// The text of a database error as the tests match it: `SQLSTATE: message`.
pub fn error_text(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
pub mod slt;

/// A tiny deterministic generator (splitmix64), so a crash test's seed replays its kill points.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The crash-test seed: EDDY_CRASH_SEED if set, else the clock.
/// Whether a sink's directory holds a Parquet file yet.
pub fn has_parquet_files(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir).unwrap().any(|e| {
        e.unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".parquet")
    })
}

pub fn crash_seed() -> u64 {
    match std::env::var("EDDY_CRASH_SEED") {
        Ok(s) => s.parse().expect("EDDY_CRASH_SEED is a number"),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    }
}

/// moto's S3-compatible server on a free port, stopped when dropped.
pub struct S3Server {
    child: std::process::Child,
    pub port: u16,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    pub fn start() -> S3Server {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .env("PYTHONPATH", root.join(".tools/moto"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start moto (scripts/setup.sh installs it)");
        let server = S3Server { child, port };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto did not start listening"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        server
    }

    /// An unsigned PUT (moto accepts them): creates a bucket or stores an object.
    pub fn put(&self, path: &str, body: &[u8]) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.port,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut response = String::new();
        s.read_to_string(&mut response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 200"),
            "PUT {path}: {response}"
        );
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: while stopped, requests hang.
    pub fn pause(&self, stop: bool) {
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill has no memory-safety preconditions; the pid is our child's.
        let rc = unsafe { libc::kill(self.child.id() as i32, signal) };
        assert_eq!(rc, 0, "signal moto");
    }

    /// Downloads every object under `bucket/prefix` into `dir` (boto3, which moto brings).
    pub fn download(&self, bucket: &str, prefix: &str, dir: &std::path::Path) {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let script = format!(
            "import boto3, os\n\
             s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', \
             aws_access_key_id='k', aws_secret_access_key='s')\n\
             for page in s3.get_paginator('list_objects_v2').paginate(Bucket='{bucket}', Prefix='{prefix}'):\n\
             \x20   for o in page.get('Contents', []):\n\
             \x20       s3.download_file('{bucket}', o['Key'], os.path.join('{}', os.path.basename(o['Key'])))\n",
            self.port,
            dir.display()
        );
        let status = std::process::Command::new("python3")
            .args(["-c", &script])
            .env("PYTHONPATH", root.join(".tools/moto"))
            .status()
            .expect("python3 runs");
        assert!(status.success(), "download from moto failed");
    }
}

/// The Tansu broker installed by scripts/setup.sh (a real Kafka-compatible broker), in
/// memory on a free port of 127.0.0.1; stopped when dropped.
pub struct Tansu(std::process::Child);

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Tansu {
    fn binary() -> PathBuf {
        if let Ok(p) = std::env::var("EDDY_TANSU") {
            return p.into();
        }
        let home = std::env::var("CARGO_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
        let path = home.join("bin/tansu");
        assert!(
            path.exists(),
            "tansu not found at {} (scripts/setup.sh installs it; or set EDDY_TANSU)",
            path.display()
        );
        path
    }

    /// Starts a broker with `topics` (name, partitions); returns it and its bootstrap address.
    pub async fn start(topics: &[(&str, i32)]) -> (Tansu, String) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tcp://127.0.0.1:{port}");
        let broker = Tansu(
            std::process::Command::new(Self::binary())
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &url,
                ])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start tansu"),
        );
        let bootstrap = format!("127.0.0.1:{port}");
        let start = std::time::Instant::now();
        while std::net::TcpStream::connect(&bootstrap).is_err() {
            assert!(
                start.elapsed() < std::time::Duration::from_secs(30),
                "tansu did not listen"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .expect("admin client");
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, n)| NewTopic::new(name, *n, TopicReplication::Fixed(1)))
            .collect();
        let created = admin
            .create_topics(&new, &AdminOptions::new())
            .await
            .expect("create topics");
        assert!(created.iter().all(|r| r.is_ok()), "{created:?}");
        (broker, bootstrap)
    }
}

/// `INSERT INTO table VALUES` the given row literals (`"(1, 'a')"`, ...).
pub async fn insert_rows(client: &tokio_postgres::Client, table: &str, rows: &[String]) {
    client
        .batch_execute(&format!("INSERT INTO {table} VALUES {}", rows.join(", ")))
        .await
        .unwrap();
}

/// Runs each statement and checks it fails with `code` and a message containing the text.
pub async fn expect_errors(client: &tokio_postgres::Client, code: &str, cases: &[(&str, &str)]) {
    for (sql, expected) in cases {
        let e = client.batch_execute(sql).await.unwrap_err();
        assert_eq!(e.code().unwrap().code(), code, "{sql}: {}", error_text(&e));
        assert!(
            error_text(&e).contains(expected),
            "{sql}: {}",
            error_text(&e)
        );
    }
}

/// A real PostgreSQL server (the system's, which `scripts/setup.sh` installs) in a temp dir,
/// reached over a Unix socket, for comparing Eddy's answers with PostgreSQL's. Its superuser
/// is `eddy`, like Eddy's, so owners print the same.
pub struct Postgres {
    pub socket_dir: PathBuf,
    pub port: u16,
    bin: PathBuf,
    data: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries in /usr/lib/postgresql (scripts/setup.sh)")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .find(|b| b.join("initdb").exists())
            .expect("initdb under /usr/lib/postgresql/*/bin");
        let tmp = tempfile::tempdir().expect("temp dir");
        let data = tmp.path().join("data");
        let socket_dir = tmp.path().to_path_buf();
        if running_as_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres"])
                .arg(tmp.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the PostgreSQL temp dir to postgres");
        }
        let run = |program: &Path, args: &[&str]| {
            let out = postgres_command(program)
                .args(args)
                .output()
                .expect("run a PostgreSQL binary");
            assert!(
                out.status.success(),
                "{} {args:?}: {}",
                program.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port number");
        let data_s = data.to_str().expect("utf-8 path");
        run(
            &bin.join("initdb"),
            &[
                "-D",
                data_s,
                "-U",
                "eddy",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        let options = format!(
            "-p {port} -k {} -c listen_addresses='' -c fsync=off",
            socket_dir.display()
        );
        run(
            &bin.join("pg_ctl"),
            &[
                "-D",
                data_s,
                "-o",
                &options,
                "-l",
                &format!("{data_s}/log"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        Postgres {
            socket_dir,
            port,
            bin,
            data,
            _tmp: tmp,
        }
    }

    pub fn conn_string(&self) -> String {
        format!(
            "host={} port={} user=eddy dbname=postgres",
            self.socket_dir.display(),
            self.port
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap_or_default().to_string();
        let _ = postgres_command(&self.bin.join("pg_ctl"))
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
    }
}

fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A PostgreSQL program, run as the `postgres` account when we are root (PostgreSQL refuses
/// to run as root).
fn postgres_command(program: &Path) -> Command {
    match running_as_root() {
        true => {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        }
        false => Command::new(program),
    }
}

/// Runs psql (aligned output, as a user sees it) with `commands` on stdin; returns stdout,
/// and panics with stderr if psql fails.
pub fn psql_session(conn: &str, commands: &str) -> String {
    psql_with(conn, &[], commands)
}

/// psql with extra arguments (`-At`, `-v name=value`, …).
pub fn psql_with(conn: &str, args: &[&str], commands: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("psql")
        .arg(conn)
        .args(["-X", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql must be installed (scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(commands.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "psql failed on {commands:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

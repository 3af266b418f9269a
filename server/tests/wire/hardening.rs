//! Hostile clients against a real `eddy serve`: each sends one of the inputs that used to end
//! the process, hold its memory or hand out the machine, and the server must answer it with an
//! error, keep its memory bounded (the process's peak resident size, VmHWM, from /proc), and
//! go on answering normal queries.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::{ADMIN_PASSWORD, Server, error_text};

/// A field of /proc/PID/status in kB (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// The server's peak resident memory so far, in MB.
fn peak_mb(server: &Server) -> u64 {
    status_kb(server.pid(), "VmHWM") / 1024
}

/// CPU seconds the process has used (user + system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("proc stat");
    let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// A memory cgroup (v1 or v2, where the kernel lets the tests make one) that holds a server
/// process, so a hostile input that escapes its limits kills the server, not the machine.
struct MemoryCgroup(Option<(std::path::PathBuf, u32)>);

impl MemoryCgroup {
    const LIMIT: u64 = 1 << 30;

    fn confine(server: &Server) -> MemoryCgroup {
        let name = format!("eddy-hardening-{}", server.pid());
        let tries = [
            ("/sys/fs/cgroup/unified", "memory.max"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes"),
            ("/sys/fs/cgroup", "memory.max"),
        ];
        for (root, limit_file) in tries {
            let dir = std::path::Path::new(root).join(&name);
            if std::fs::create_dir(&dir).is_err() {
                continue;
            }
            let confined = std::fs::write(dir.join(limit_file), Self::LIMIT.to_string())
                .and_then(|_| std::fs::write(dir.join("cgroup.procs"), server.pid().to_string()));
            if confined.is_ok() {
                return MemoryCgroup(Some((dir, server.pid())));
            }
            let _ = std::fs::remove_dir(&dir);
        }
        eprintln!("no memory cgroup could be made here: memory is checked through VmHWM only");
        MemoryCgroup(None)
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // The server goes back to the parent group (it may still be running), then the
        // group is removed.
        if let Some((dir, pid)) = &self.0 {
            if let Some(parent) = dir.parent() {
                let _ = std::fs::write(parent.join("cgroup.procs"), pid.to_string());
            }
            let _ = std::fs::remove_dir(dir);
        }
    }
}

async fn answers(server: &Server) {
    let c = server.connect().await;
    let rows = c.simple_query("SELECT 40 + 2").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42")),
        "the server answers a normal query"
    );
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parameter sent exactly as given, in binary, whatever its declared type.
#[derive(Debug)]
struct RawBinary(Vec<u8>);

impl tokio_postgres::types::ToSql for RawBinary {
    fn to_sql(
        &self,
        _ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }

    fn accepts(_ty: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_parameters_outside_postgres_limits_are_refused() {
    use tokio_postgres::types::Type;
    let server = Server::start();
    let _cgroup = MemoryCgroup::confine(&server);
    let c = server.connect().await;
    let before = peak_mb(&server);
    // NUMERIC with dscale 0xFFFF: once a fraction loop that ran until the kernel killed us.
    let numeric = c
        .prepare_typed("SELECT $1::text", &[Type::NUMERIC])
        .await
        .unwrap();
    let huge_scale = RawBinary(vec![0, 1, 0, 0, 0, 0, 0xff, 0xff, 0, 1]);
    let e = c.query(&numeric, &[&huge_scale]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22P03", "{}", error_text(&e));
    // An int4[] that declares two billion elements and sends none.
    let array = c
        .prepare_typed("SELECT cardinality($1)", &[Type::INT4_ARRAY])
        .await
        .unwrap();
    let mut header = vec![0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 23];
    header.extend(i32::MAX.to_be_bytes());
    header.extend(1i32.to_be_bytes());
    let e = c.query(&array, &[&RawBinary(header)]).await.unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22P03", "{}", error_text(&e));
    // Infinity as a timestamp is out of range, not an overflow.
    let ts = c
        .prepare_typed("SELECT $1::text", &[Type::TIMESTAMP])
        .await
        .unwrap();
    let e = c
        .query(&ts, &[&RawBinary(i64::MAX.to_be_bytes().to_vec())])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "22008", "{}", error_text(&e));
    // A valid numeric still binds, and the session and server go on.
    let ok = RawBinary(vec![0, 2, 0, 0, 0, 0, 0, 2, 0, 123, 0x11, 0x94]);
    let row = c.query_one(&numeric, &[&ok]).await.unwrap();
    assert_eq!(row.get::<_, String>(0), "123.45");
    answers(&server).await;
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
}

/// A startup packet for `user`.
fn startup(user: &str) -> Vec<u8> {
    let mut body = 196_608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", user), ("database", "eddy")] {
        body.extend(k.as_bytes());
        body.push(0);
        body.extend(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// Reads one backend message: its type and body; None at end of stream.
fn read_message(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    s.read_exact(&mut header).ok()?;
    let len = i32::from_be_bytes(header[1..5].try_into().unwrap()) as usize;
    let mut body = vec![0u8; len - 4];
    s.read_exact(&mut body).ok()?;
    Some((header[0], body))
}

/// The SQLSTATE of an ErrorResponse body.
fn error_code(body: &[u8]) -> String {
    body.split(|b| *b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).to_string())
        .unwrap_or_default()
}

/// Opens a connection as `user` and reads up to the first authentication request.
fn start_login(server: &Server, user: &str) -> TcpStream {
    let mut s = TcpStream::connect(server.pg).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&startup(user)).unwrap();
    let (kind, _) = read_message(&mut s).expect("authentication request");
    assert_eq!(kind, b'R');
    s
}

/// Reads until an ErrorResponse and returns its code; the connection must then close.
fn refused_with(s: &mut TcpStream) -> String {
    loop {
        match read_message(s) {
            Some((b'E', body)) => {
                let code = error_code(&body);
                assert!(read_message(s).is_none(), "the connection closes");
                return code;
            }
            Some(_) => continue,
            None => panic!("closed without an error"),
        }
    }
}

#[test]
fn messages_before_authentication_are_small_and_expected() {
    let server = Server::start_secure();
    let _cgroup = MemoryCgroup::confine(&server);
    let before = peak_mb(&server);
    // Four clients that never log in but declare 1 GB query messages and start sending them:
    // each is refused from the header alone.
    let mut pending = Vec::new();
    for _ in 0..4 {
        let mut s = start_login(&server, "eddy");
        let mut q = vec![b'p'];
        q.extend((1i32 << 30).to_be_bytes());
        let _ = s.write_all(&q);
        let _ = s.write_all(&vec![b'x'; 4 << 20]);
        pending.push(s);
    }
    for mut s in pending {
        assert_eq!(refused_with(&mut s), "08P01");
    }
    // A query where a password response belongs is refused at once.
    let mut s = start_login(&server, "eddy");
    let mut q = vec![b'Q'];
    q.extend(13i32.to_be_bytes());
    q.extend(b"SELECT 1;\0");
    s.write_all(&q).unwrap();
    assert_eq!(refused_with(&mut s), "08P01");
    // A startup packet that claims to be huge never gets buffered.
    let mut s = TcpStream::connect(server.pg).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&0x3fff_ffffi32.to_be_bytes());
    let _ = s.write_all(&vec![0u8; 1 << 20]);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
    let out = Command::new("psql")
        .arg(server.conn_string())
        .args(["-X", "-At", "-c", "SELECT 1"])
        .env("PGPASSWORD", ADMIN_PASSWORD)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1");
}

async fn connect_as(server: &Server, user: &str) -> Result<tokio_postgres::Client, String> {
    crate::common::connect_result(server, user, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_limited_with_slots_reserved_for_superusers() {
    let server = Server::start_with_env(&[
        ("EDDY_MAX_CONNECTIONS", "5"),
        ("EDDY_SUPERUSER_RESERVED_CONNECTIONS", "2"),
    ]);
    let admin = server.connect().await;
    let before = peak_mb(&server);
    admin
        .batch_execute("CREATE ROLE app LOGIN CONNECTION LIMIT 1; CREATE ROLE viewer LOGIN")
        .await
        .unwrap();
    let _app = connect_as(&server, "app").await.unwrap();
    let e = connect_as(&server, "app").await.unwrap_err();
    assert_eq!(e, "53300: too many connections for role \"app\"");
    let _viewer = connect_as(&server, "viewer").await.unwrap();
    // Three sessions: the last two slots are the superusers'.
    let e = connect_as(&server, "viewer").await.unwrap_err();
    assert_eq!(
        e,
        "53300: remaining connection slots are reserved for roles with the SUPERUSER attribute"
    );
    let _a = connect_as(&server, "eddy").await.unwrap();
    let _b = connect_as(&server, "eddy").await.unwrap();
    let e = connect_as(&server, "eddy").await.unwrap_err();
    assert_eq!(e, "53300: sorry, too many clients already");
    let shown = admin.simple_query("SHOW max_connections").await.unwrap();
    assert!(
        matches!(&shown[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("5"))
    );
    // A closed session gives its slot back.
    drop(_b);
    let deadline = Instant::now() + Duration::from_secs(10);
    while connect_as(&server, "eddy").await.is_err() {
        assert!(Instant::now() < deadline, "the slot comes back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
}

/// Raises this process's open-file limit to its hard limit (the test opens many sockets).
fn raise_own_file_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_and_keeps_serving() {
    use std::os::unix::process::CommandExt;
    raise_own_file_limit();
    let mut server = Server::start_configured(&[("EDDY_MAX_CONNECTIONS", "2000")], |cmd| {
        cmd.stderr(std::process::Stdio::piped());
        // SAFETY: setrlimit is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 200,
                    rlim_max: 200,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
    });
    let stderr = server.take_stderr().unwrap();
    let logged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = logged.clone();
    std::thread::spawn(move || {
        let mut stderr = stderr;
        let mut buf = [0u8; 8192];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            counter.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let c = server.connect().await;
    let before = peak_mb(&server);
    // More idle sockets than the server has descriptors for (200), fewer than it has
    // descriptors and listen backlog (128) together, so that every connect completes.
    let idle: Vec<TcpStream> = (0..250)
        .map(|_| TcpStream::connect(server.pg).unwrap())
        .collect();
    // Once the table is full, accept fails: wait until the log says so.
    let deadline = Instant::now() + Duration::from_secs(30);
    while logged.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the server reports failed accepts"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (cpu, log) = (
        cpu_seconds(server.pid()),
        logged.load(std::sync::atomic::Ordering::Relaxed),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = cpu_seconds(server.pid()) - cpu;
    let log = logged.load(std::sync::atomic::Ordering::Relaxed) - log;
    assert!(
        cpu < 0.5,
        "{cpu:.2} CPU seconds in 2 s while out of descriptors"
    );
    assert!(
        log < 4096,
        "{log} bytes logged in 2 s while out of descriptors"
    );
    // The open session is served meanwhile; when the sockets go, new clients get in.
    let rows = c.simple_query("SELECT 1 + 1").await.unwrap();
    assert!(
        matches!(&rows[1], tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("2"))
    );
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), connect_as(&server, "eddy")).await {
            Ok(Ok(_)) => break,
            _ => assert!(Instant::now() < deadline, "new clients get in again"),
        }
    }
}

/// Sends `request` over a new HTTP connection and returns what came back before it closed
/// (or within `within`).
fn http_exchange(server: &Server, request: &[u8], within: Duration) -> String {
    let mut s = TcpStream::connect(server.http).unwrap();
    s.set_read_timeout(Some(within)).unwrap();
    let _ = s.write_all(request);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).to_string()
}

#[test]
fn http_clients_cannot_hold_connections_forever() {
    let server = Server::start_with_env(&[
        ("EDDY_HTTP_HEADER_TIMEOUT", "1s"),
        ("EDDY_HTTP_BODY_TIMEOUT", "1s"),
        ("EDDY_HTTP_MAX_CONNECTIONS_PER_CLIENT", "3"),
    ]);
    let before = peak_mb(&server);
    // Slowloris: a request head that never ends is cut off.
    let started = Instant::now();
    http_exchange(
        &server,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n",
        Duration::from_secs(30),
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A body that never arrives whole: 408.
    let started = Instant::now();
    let reply = http_exchange(
        &server,
        b"POST /v1/sources/none HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"a\":",
        Duration::from_secs(30),
    );
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // Three idle connections from one address are its share; a fourth is turned away.
    let held: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(server.http).unwrap())
        .collect();
    let health = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    wait_for(
        "a fourth connection is refused",
        Duration::from_secs(10),
        || http_exchange(&server, health, Duration::from_secs(5)).starts_with("HTTP/1.1 503"),
    );
    drop(held);
    wait_for("the slots come back", Duration::from_secs(10), || {
        http_exchange(&server, health, Duration::from_secs(5)).starts_with("HTTP/1.1 200")
    });
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn model_files_are_streamed_under_a_size_limit() {
    let server = Server::start_with_env(&[("EDDY_MAX_MODEL_SIZE", "1MB")]);
    let _cgroup = MemoryCgroup::confine(&server);
    let c = server.connect().await;
    let before = peak_mb(&server);
    let e = c
        .batch_execute("CREATE MODEL zero FROM '/dev/zero'")
        .await
        .unwrap_err();
    assert!(
        error_text(&e).contains("not a regular file"),
        "{}",
        error_text(&e)
    );
    // A 4 GB (sparse) file: refused by its size, never read into memory.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.onnx");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let e = c
        .batch_execute(&format!("CREATE MODEL big FROM '{}'", big.display()))
        .await
        .unwrap_err();
    assert_eq!(
        error_text(&e),
        format!(
            "54000: model file {} is larger than max_model_size (1048576 bytes)",
            big.display()
        )
    );
    assert!(peak_mb(&server) < before + 64, "peak grew from {before} MB");
    let models = server.data_dir.join("models");
    let left: Vec<_> = std::fs::read_dir(&models)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing staged is left behind: {left:?}");
    answers(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_and_query_memory_end_the_query_not_the_server() {
    let server = Server::start_with_env(&[("EDDY_WORK_MEM_LIMIT", "64MB")]);
    let _cgroup = MemoryCgroup::confine(&server);
    let c = server.connect().await;
    c.batch_execute("SET statement_timeout = '500ms'")
        .await
        .unwrap();
    let started = Instant::now();
    let e = c
        .simple_query("SELECT count(*) FROM generate_series(1, 100000000000)")
        .await
        .unwrap_err();
    assert_eq!(
        error_text(&e),
        "57014: canceling statement due to statement timeout"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The extended protocol too.
    let e = c
        .query("SELECT count(*) FROM generate_series(1, 100000000000)", &[])
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "57014");
    c.batch_execute("SET statement_timeout = 0").await.unwrap();
    // A 2 GB string_agg fails with 53200 once it passes the session's 64 MB.
    let before = peak_mb(&server);
    let e = c
        .simple_query(
            "SELECT length(string_agg(repeat('x', 1000), ',')) FROM generate_series(1, 2000000)",
        )
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "53200", "{}", error_text(&e));
    // One value past PostgreSQL's 1 GB, made by a function outside any pool: refused first.
    for sql in [
        "SELECT length(repeat('x', 1500000000))",
        "SELECT length(lpad('x', 400000000))",
        "SELECT cardinality(array_repeat(1, 500000000))",
    ] {
        let e = c.simple_query(sql).await.unwrap_err();
        assert_eq!(
            e.code().unwrap().code(),
            "54000",
            "{sql}: {}",
            error_text(&e)
        );
    }
    assert!(
        peak_mb(&server) < before + 512,
        "peak grew from {before} MB"
    );
    answers(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_ended_by_its_timeout() {
    let server = Server::start();
    let admin = server.connect().await;
    admin
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let (c, connection) =
        tokio_postgres::connect(&server.plain_conn_string(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let connection = tokio::spawn(connection);
    c.batch_execute(
        "SET idle_in_transaction_session_timeout = '300ms'; BEGIN; INSERT INTO t VALUES (1)",
    )
    .await
    .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the server ends the idle transaction's connection")
        .unwrap();
    let e = ended.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("25P03"), "{e}");
    // Its transaction was rolled back.
    let n: i64 = admin
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifiers_with_huge_iteration_counts_are_refused() {
    let server = Server::start();
    let c = server.connect().await;
    let key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let e = c
        .batch_execute(&format!(
            "CREATE ROLE slow LOGIN PASSWORD 'SCRAM-SHA-256$1000000000:c2FsdHNhbHRzYWx0c2FsdA==${key}:{key}'"
        ))
        .await
        .unwrap_err();
    assert_eq!(
        error_text(&e),
        "22023: SCRAM verifier iteration count 1000000000 is out of range (1 to 1000000)"
    );
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs");
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remembered_http_logins_end_with_the_role_state_they_were_made_under() {
    let server = Server::start_secure();
    let admin = server.connect().await;
    admin
        .batch_execute("CREATE ROLE bob LOGIN PASSWORD 'first'")
        .await
        .unwrap();
    let url = |path: &str| format!("http://{}{path}", server.http);
    let token = || {
        let out = Command::new("curl")
            .args([
                "-s",
                "-X",
                "POST",
                "-u",
                "bob:first",
                &url("/v1/auth/token"),
            ])
            .output()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        format!("Authorization: Bearer {}", body["token"].as_str().unwrap())
    };
    let bearer = token();
    assert_eq!(curl(&["-H", &bearer, &url("/v1/models")]), "200");
    assert_eq!(curl(&["-u", "bob:first", &url("/v1/models")]), "200");
    // A new password ends both the token and the remembered password.
    admin
        .batch_execute("ALTER ROLE bob PASSWORD 'second'")
        .await
        .unwrap();
    assert_eq!(curl(&["-H", &bearer, &url("/v1/models")]), "401");
    assert_eq!(curl(&["-u", "bob:first", &url("/v1/models")]), "401");
    admin
        .batch_execute("ALTER ROLE bob PASSWORD 'first'")
        .await
        .unwrap();
    let bearer = token();
    admin.batch_execute("ALTER ROLE bob NOLOGIN").await.unwrap();
    assert_eq!(curl(&["-H", &bearer, &url("/v1/models")]), "401");
    admin.batch_execute("ALTER ROLE bob LOGIN").await.unwrap();
    let bearer = token();
    admin.batch_execute("DROP ROLE bob").await.unwrap();
    assert_eq!(curl(&["-H", &bearer, &url("/v1/models")]), "401");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_logs_in_only_existing_roles_with_their_own_attributes() {
    let server = Server::start();
    let e = connect_as(&server, "ghost").await.unwrap_err();
    assert_eq!(e, "28000: role \"ghost\" does not exist");
    let admin = server.connect().await;
    admin
        .batch_execute("CREATE ROLE app LOGIN; CREATE ROLE nologin")
        .await
        .unwrap();
    let e = connect_as(&server, "nologin").await.unwrap_err();
    assert_eq!(e, "28000: role \"nologin\" is not permitted to log in");
    let show = |c: tokio_postgres::Client| async move {
        let rows = c.simple_query("SHOW is_superuser").await.unwrap();
        match &rows[1] {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).unwrap().to_string(),
            _ => panic!("a row"),
        }
    };
    assert_eq!(show(connect_as(&server, "app").await.unwrap()).await, "off");
    assert_eq!(show(admin).await, "on");
}

/// The salt the server's SCRAM challenge gives for `user`.
fn scram_salt(server: &Server, user: &str) -> String {
    let mut s = start_login(server, user);
    let mechanism = b"SCRAM-SHA-256\0";
    let first = b"n,,n=,r=abcdefghijkl";
    let mut body = mechanism.to_vec();
    body.extend((first.len() as i32).to_be_bytes());
    body.extend(first);
    let mut message = vec![b'p'];
    message.extend(((body.len() + 4) as i32).to_be_bytes());
    message.extend(body);
    s.write_all(&message).unwrap();
    let (kind, body) = read_message(&mut s).expect("server-first-message");
    assert_eq!(kind, b'R');
    let text = String::from_utf8_lossy(&body[4..]).to_string();
    text.split(',')
        .find_map(|a| a.strip_prefix("s="))
        .expect("a salt")
        .to_string()
}

#[test]
fn unknown_roles_get_a_fixed_salt_like_real_ones() {
    let mut server = Server::start_secure();
    let ghost = scram_salt(&server, "ghost");
    assert_eq!(ghost, scram_salt(&server, "ghost"));
    let real = scram_salt(&server, "eddy");
    assert_eq!(real, scram_salt(&server, "eddy"));
    assert_ne!(ghost, real);
    assert_ne!(ghost, scram_salt(&server, "phantom"));
    server.restart();
    assert_eq!(
        ghost,
        scram_salt(&server, "ghost"),
        "the same across restarts"
    );
}

/// A one-shot HTTP server on loopback: answers its first request with `status` and `body`,
/// and returns the request it received.
fn capture_one_request(status: &str, body: &str) -> (u16, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (status, body) = (status.to_string(), body.to_string());
    let handle = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut request = Vec::new();
        let mut buf = [0u8; 4096];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => request.extend_from_slice(&buf[..n]),
            }
        }
        let reply = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = s.write_all(reply.as_bytes());
        String::from_utf8_lossy(&request).to_string()
    });
    (port, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_stores_never_send_the_servers_own_credentials() {
    let server = Server::start_with_env(&[
        ("AWS_ACCESS_KEY_ID", "AKIASERVERSOWNKEY"),
        ("AWS_SECRET_ACCESS_KEY", "server-secret"),
        ("AWS_SESSION_TOKEN", "SERVERSESSIONTOKEN"),
    ]);
    let c = server.connect().await;
    let (port, request) = capture_one_request(
        "403 Forbidden",
        "<Error><Code>AccessDenied</Code><Message>REMOTE-BODY-TEXT</Message></Error>",
    );
    let e = c
        .batch_execute(&format!(
            "CREATE MODEL m FROM 's3://bucket/m.onnx' WITH (aws_endpoint = 'http://127.0.0.1:{port}', \
             aws_allow_http = 'true', aws_region = 'us-east-1')"
        ))
        .await
        .unwrap_err();
    let request = request.join().unwrap();
    assert!(request.starts_with("GET /bucket/m.onnx"), "{request}");
    assert!(
        !request.contains("AKIASERVERSOWNKEY") && !request.contains("SERVERSESSIONTOKEN"),
        "the server's credentials went out: {request}"
    );
    let text = error_text(&e);
    assert!(!text.contains("REMOTE-BODY-TEXT"), "{text}");
    assert!(
        text.contains("cannot read model s3://bucket/m.onnx"),
        "{text}"
    );
    answers(&server).await;
}

/// A small tmpfs mounted for one test (the tests run as root), unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a small tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn free(&self) -> u64 {
        eddy_sql::engine::free_bytes(self.path()).unwrap()
    }

    /// Takes all but `leave` bytes of the free space with a filler file.
    fn fill(&self, leave: u64) {
        use std::os::fd::AsRawFd;
        let len = self.free().saturating_sub(leave);
        let f = std::fs::File::create(self.path().join("filler")).unwrap();
        // SAFETY: a valid descriptor and a non-negative range.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) };
        assert_eq!(rc, 0, "fallocate the filler");
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path().join("filler")).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_with_53100_and_loses_no_acknowledged_row() {
    let disk = SmallDisk::mount("256m");
    let data = disk.path().join("data");
    let mut server = Server::start_in(&data, "127.0.0.1:0", "127.0.0.1:0");
    let c = server.connect().await;
    c.batch_execute("CREATE TABLE t (id int PRIMARY KEY, payload text)")
        .await
        .unwrap();
    // Incompressible rows, so that flushed files take their size too.
    let mut rng = crate::common::Rng(7);
    let payload: String = (0..12_500)
        .map(|_| format!("{:08x}", rng.next() as u32))
        .collect();
    let insert = c.prepare("INSERT INTO t VALUES ($1, $2)").await.unwrap();
    disk.fill(4 << 20);
    let mut acknowledged = 0i64;
    let code = loop {
        match c
            .execute(&insert, &[&(acknowledged as i32), &payload])
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(e) => break e.code().map(|c| c.code().to_string()),
        }
        assert!(acknowledged < 1000, "the disk never filled up");
    };
    assert_eq!(code.as_deref(), Some("53100"));
    // The server stays up and reads; writes fail until space comes back, then resume.
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, acknowledged);
    disk.unfill();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match c
            .execute(&insert, &[&(acknowledged as i32), &payload])
            .await
        {
            Ok(_) => {
                acknowledged += 1;
                break;
            }
            Err(e) => {
                assert_eq!(e.code().map(|c| c.code()), Some("53100"), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "writes resume when space returns"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // Full again, killed: the data dir reopens (the reserve file makes room) with every
    // acknowledged row.
    disk.fill(0);
    while c
        .execute(&insert, &[&(acknowledged as i32), &payload])
        .await
        .is_ok()
    {
        acknowledged += 1;
    }
    drop(c);
    server.restart();
    let c = server.connect().await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, acknowledged, "every acknowledged row, nothing else");
}

/// Every value of every row `sql` returns, as one string.
async fn all_text(c: &tokio_postgres::Client, sql: &str) -> String {
    let mut out = String::new();
    for m in c.simple_query(sql).await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(r) = m {
            for i in 0..r.len() {
                out.push_str(r.get(i).unwrap_or(""));
                out.push('|');
            }
            out.push('\n');
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_show_in_listings_catalogs_or_errors() {
    let server = Server::start();
    let c = server.connect().await;
    c.batch_execute(
        "CREATE SOURCE r (a int) WITH (connector = 'datagen', rows = '1', rows_per_second = '0')",
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE SINK hook FROM r WITH (connector = 'webhook', \
         url = 'http://bob:HUNTER2@127.0.0.1:9/alert?token=TOKEN1', \
         \"headers.x-api-key\" = 'APIKEY', headers.cookie = 'session=COOKIE', max_retries = '0')",
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE SINK lake FROM r WITH (connector = 'parquet', path = 's3://bucket/p', \
         aws_access_key_id = 'AKIAUSERKEY', aws_secret_access_key = 'SECRETKEY', \
         aws_endpoint = 'http://127.0.0.1:9', aws_allow_http = 'true', aws_region = 'x')",
    )
    .await
    .unwrap();
    c.batch_execute(
        "CREATE SOURCE k (a int) WITH (connector = 'kafka', bootstrap.servers = 'localhost:1', \
         topic = 't', properties.sasl.password = 'SASLPASS', properties.ssl.key.pem = 'KEYPEM')",
    )
    .await
    .unwrap();
    // Wait until both sinks have tried (and failed) to deliver, so their errors show too.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let errors = all_text(
            &c,
            "SELECT name FROM eddy_catalog.sinks WHERE last_error IS NOT NULL",
        )
        .await;
        if errors.contains("hook") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut shown = String::new();
    for sql in [
        "SHOW SINKS",
        "SHOW SOURCES",
        "SELECT * FROM eddy_catalog.sinks",
        "SELECT * FROM pg_foreign_table",
    ] {
        shown.push_str(&all_text(&c, sql).await);
    }
    let psql = crate::common::psql_session(&server.conn_string(), "\\d hook\n\\d lake\n\\d k");
    shown.push_str(&psql);
    for secret in [
        "HUNTER2",
        "TOKEN1",
        "APIKEY",
        "COOKIE",
        "AKIAUSERKEY",
        "SECRETKEY",
        "SASLPASS",
        "KEYPEM",
    ] {
        assert!(!shown.contains(secret), "{secret} shows in:\n{shown}");
    }
    // What is harmless still shows.
    assert!(shown.contains("127.0.0.1:9"), "{shown}");
    assert!(shown.contains("localhost:1"), "{shown}");
}

/// Kills a process's children (SIGKILL) when dropped.
struct KillChildren(u32);

impl Drop for KillChildren {
    fn drop(&mut self) {
        let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.0))
            .unwrap_or_default();
        for pid in children
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            // SAFETY: kill has no memory-safety preconditions; the pid is our wrapper's child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// The file and directory syncs and renames of a server run under strace, in order, with
/// the paths of their descriptors (`fsync(7</data/models>)`).
fn traced_syscalls(trace: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(trace)
        .unwrap()
        .lines()
        .filter(|l| l.contains("fsync(") || l.contains("fdatasync(") || l.contains("rename"))
        .filter(|l| !l.contains("= -1"))
        .map(str::to_string)
        .collect()
}

fn position(calls: &[String], what: &str, matches: impl Fn(&str) -> bool) -> usize {
    calls
        .iter()
        .position(|c| matches(c))
        .unwrap_or_else(|| panic!("no {what} in:\n{}", calls.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_synced_with_their_directory_before_the_commit_that_names_them() {
    let (_keep, models) = crate::models::build_models();
    let trace_dir = tempfile::tempdir().unwrap();
    let trace = trace_dir.path().join("trace");
    let mut command = Command::new("strace");
    command
        .args([
            "-f",
            "-y",
            "-qq",
            "-e",
            "trace=fsync,fdatasync,rename,renameat,renameat2",
        ])
        .arg("-o")
        .arg(&trace)
        .arg("--")
        .arg(env!("CARGO_BIN_EXE_eddy"));
    let server = Server::start_wrapped(command);
    // Killing strace would leave the traced server running (and holding the test runner's
    // output open): the server itself is killed first, when this guard drops.
    let _traced = KillChildren(server.pid());
    let data = server.data_dir.display().to_string();
    // The self-signed certificate made at first start: each file synced before it is renamed
    // into place, the directory after.
    let calls = traced_syscalls(&trace);
    let cert_synced = position(&calls, "a sync of the new certificate", |c| {
        c.contains("sync(") && c.contains("server.crt.tmp>")
    });
    let cert_renamed = position(&calls, "the certificate's rename", |c| {
        c.contains("rename") && c.contains("server.crt.tmp") && c.contains("server.crt\"")
    });
    let tls_dir_synced = cert_renamed
        + position(&calls[cert_renamed..], "a sync of the tls directory", |c| {
            c.contains("fsync(") && c.contains(&format!("{data}/tls>"))
        });
    assert!(
        cert_synced < cert_renamed && cert_renamed < tls_dir_synced,
        "{calls:#?}"
    );
    // A model file: synced, renamed into the models directory, the directory synced, and only
    // then the catalog commit that names it (the RocksDB log's sync).
    let c = server.connect().await;
    c.batch_execute(&format!(
        "CREATE MODEL linear FROM '{}'",
        models.join("linear.onnx").display()
    ))
    .await
    .unwrap();
    let calls = traced_syscalls(&trace);
    let renamed = position(&calls, "the model's rename", |c| {
        c.contains("rename") && c.contains("/models/incoming-")
    });
    let dir_synced = renamed
        + position(&calls[renamed..], "a sync of the models directory", |c| {
            c.contains("fsync(") && c.contains(&format!("{data}/models>"))
        });
    let staged_synced = position(&calls, "a sync of the staged model", |c| {
        c.contains("sync(") && c.contains("/models/incoming-")
    });
    let committed = renamed
        + position(&calls[renamed..], "the catalog commit's log sync", |c| {
            c.contains("sync(") && c.contains("/db/") && c.contains(".log>")
        });
    assert!(
        staged_synced < renamed && dir_synced < committed,
        "{:#?}",
        &calls[staged_synced.min(renamed)..]
    );
}

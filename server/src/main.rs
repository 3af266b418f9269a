use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use eddy::config::{Config, Overrides};

/// mimalloc: many small, short-lived allocations per query across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc's `mi_option_purge_delay` (its option enum in mimalloc.h, v3; libmimalloc-sys
/// names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed pages stay with the allocator before they go back to the OS.
const PURGE_DELAY_MS: std::os::raw::c_long = 10;

/// Freed pages go back to the OS after 10 ms rather than mimalloc's 1 s: at the edge the peak
/// resident memory is what counts, and the 1 s delay kept about 140 MB of freed pages at the
/// GROUP BY state benchmark's peak (docs/benchmarks.md). Returning them at once (0) cost far
/// more than it saved: the kernel zeroed every page the next batch faulted in again (45 % of
/// Nexmark q1's CPU), and q1 ran 1.8x faster at 10 ms with a peak within the GROUP BY
/// benchmark's run-to-run spread. `MIMALLOC_PURGE_DELAY` in the environment overrides it.
fn return_freed_memory_promptly() {
    // mimalloc's own variable, when set, decides.
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return;
    }
    // SAFETY: sets a process-wide allocator option; any value is valid for this option.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// Eddy: a SQL-first streaming database for edge AI.
#[derive(Parser)]
#[command(name = "eddy", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Benchmarks (see docs/benchmarks.md).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// A Nexmark query through the streaming engine, beside DataFusion batch.
    Nexmark {
        #[arg(long, default_value = "q0")]
        query: String,
        #[arg(long, default_value_t = 10_000_000)]
        events: u64,
        /// Event-time rate of the generator (events per event-second).
        #[arg(long, default_value_t = 10_000_000)]
        rate: u64,
        #[arg(long, default_value_t = 1000)]
        checkpoint_interval: u64,
        /// Partitions of the keyed operators (default: the machine's cores).
        #[arg(long)]
        parallelism: Option<usize>,
    },
    /// JSON decoding rate of the Kafka source's decoder, on Nexmark bids.
    JsonDecode {
        #[arg(long, default_value_t = 2_000_000)]
        rows: u64,
    },
    /// The Parquet sink versus a bare ArrowWriter on Nexmark bids, and the Kafka sink's
    /// rows per CPU-second (mock cluster).
    Sink {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
    /// PREDICT in a continuous query versus ONNX Runtime called directly on the same
    /// batches. Run from the repository root.
    Predict {
        /// A model of scripts/models/build_models.py: mlp, gbt, linear, logistic.
        #[arg(long, default_value = "mlp")]
        model: String,
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
        #[arg(long, default_value_t = 5)]
        runs: usize,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// TOML file with data_dir, pg_listen, http_listen, tls_cert, tls_key.
    #[arg(long, env = "EDDY_CONFIG")]
    config: Option<PathBuf>,
    /// Where Eddy keeps its data [default: ./eddy-data].
    #[arg(long, env = "EDDY_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Postgres protocol address [default: 127.0.0.1:5432].
    #[arg(long, env = "EDDY_PG_LISTEN")]
    pg_listen: Option<String>,
    /// HTTP address [default: 127.0.0.1:8080].
    #[arg(long, env = "EDDY_HTTP_LISTEN")]
    http_listen: Option<String>,
    /// TLS certificate chain (PEM) for the Postgres listener [default: a self-signed one made
    /// in the data dir on first start].
    #[arg(long, env = "EDDY_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, env = "EDDY_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// How clients authenticate: scram-sha-256, md5 or trust [default: trust when both
    /// listeners are on loopback addresses, scram-sha-256 otherwise].
    #[arg(long, env = "EDDY_AUTH")]
    auth: Option<String>,
    /// The bootstrap superuser, created on first start [default: eddy].
    #[arg(long, env = "EDDY_ADMIN_USER")]
    admin_user: Option<String>,
    /// The bootstrap superuser's password, set when it has none (prefer the environment
    /// variable to the flag: flags show in the process list).
    #[arg(long, env = "EDDY_ADMIN_PASSWORD", hide_env_values = true)]
    admin_password: Option<String>,
    /// Serve non-loopback addresses without authentication.
    #[arg(long, env = "EDDY_INSECURE_ALLOW_REMOTE_TRUST")]
    insecure_allow_remote_trust: bool,
}

fn main() -> Result<()> {
    return_freed_memory_promptly();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDDY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Serve(args) => args,
        Command::Bench(bench) => return run_bench(bench),
    };
    let config = Config::resolve(Overrides {
        config: args.config,
        data_dir: args.data_dir,
        pg_listen: args.pg_listen,
        http_listen: args.http_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        auth: args.auth,
        admin_user: args.admin_user,
        admin_password: args.admin_password,
        insecure_allow_remote_trust: args.insecure_allow_remote_trust,
    })?;
    // Large stacks: planning deeply nested SQL recurses; an error beats a stack overflow.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()?;
    runtime.block_on(eddy::run(config, shutdown_signal()))
}

fn run_bench(bench: BenchCommand) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(32 << 20)
        .build()?;
    match bench {
        BenchCommand::Nexmark {
            query,
            events,
            rate,
            checkpoint_interval,
            parallelism,
        } => runtime.block_on(eddy::bench::nexmark(eddy::bench::NexmarkArgs {
            query,
            events,
            rate,
            checkpoint_interval_ms: checkpoint_interval,
            parallelism,
        })),
        BenchCommand::JsonDecode { rows } => eddy::bench::json_decode(rows),
        BenchCommand::Sink { events, runs } => {
            runtime.block_on(eddy::bench::sink::sink(eddy::bench::sink::SinkArgs {
                events,
                runs,
            }))
        }
        BenchCommand::Predict { model, rows, runs } => runtime.block_on(
            eddy::bench::predict::predict(eddy::bench::predict::PredictArgs { model, rows, runs }),
        ),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    /// The option set at start-up is mimalloc's purge delay (its default in v3: 1000 ms).
    #[test]
    fn the_purge_delay_option_is_the_one_set() {
        // SAFETY: reads a process-wide allocator option.
        let value = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        let expected = std::env::var("MIMALLOC_PURGE_DELAY")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(1000);
        assert_eq!(value, expected);
    }
}

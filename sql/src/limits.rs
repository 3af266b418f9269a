//! Server-wide resource limits the engine enforces, set once at start-up from the server's
//! configuration (README, "Security": each limit and its setting).

/// Limits on what one statement or one client may make the server spend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// The largest model file CREATE MODEL copies into the data dir (`max_model_size`).
    pub max_model_bytes: u64,
    /// Memory all running queries may hold together (`query_memory_limit`); a query that
    /// needs more than is left fails with 53200 instead of growing the process.
    pub query_memory_bytes: usize,
    /// Memory one session's query may hold (`work_mem_limit`), within the server-wide pool.
    pub session_memory_bytes: usize,
    /// Memory for streaming operators' state before it is read from disk (`state_cache`):
    /// the server-wide cache of state values, and each operator's groups in memory.
    pub state_cache_bytes: usize,
    /// Partitions of each keyed operator of a pipeline (`parallelism`; a view's own
    /// `parallelism` option overrides it): the machine's cores by default.
    pub parallelism: usize,
}

/// The most partitions a keyed operator runs in: one per key group.
pub const MAX_PARALLELISM: usize = crate::keys::KEY_GROUPS as usize;

pub const DEFAULT_MAX_MODEL_BYTES: u64 = 1 << 30;

/// The machine's memory (MemTotal of /proc/meminfo), if it can be read.
fn physical_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    kb.checked_mul(1024)
}

impl Default for Limits {
    /// Queries together may take half the machine's memory, one session's a quarter.
    fn default() -> Self {
        let memory = physical_memory().unwrap_or(4 << 30);
        Self {
            max_model_bytes: DEFAULT_MAX_MODEL_BYTES,
            query_memory_bytes: memory / 2,
            session_memory_bytes: memory / 4,
            // A sixteenth of the machine's memory, at least 64 MB.
            state_cache_bytes: (memory / 16).max(64 << 20),
            parallelism: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

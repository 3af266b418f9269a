//! Query memory: every session's DataFusion queries draw on a pool of their own
//! (`work_mem_limit`), and all pools together on the server's (`query_memory_limit`). An
//! operator that asks for more than either has left fails its query with 53200 ("out of
//! memory"); the session, the other sessions and the server go on.
//!
//! Invariant: the server's `used` is the sum of the sessions' `used`; a reservation grows
//! both or neither.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryLimit, MemoryPool, MemoryReservation, human_readable_size,
};

/// The server-wide budget all sessions' query memory shares.
#[derive(Debug)]
pub struct QueryMemory {
    limit: usize,
    used: AtomicUsize,
}

impl QueryMemory {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held by running queries now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }
}

/// Adds `n` to `counter` unless that passes `limit`.
fn try_add(counter: &AtomicUsize, n: usize, limit: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            cur.checked_add(n).filter(|next| *next <= limit)
        })
        .is_ok()
}

/// One session's pool, inside the server's.
#[derive(Debug)]
pub struct SessionPool {
    server: Arc<QueryMemory>,
    limit: usize,
    used: AtomicUsize,
}

impl SessionPool {
    pub fn new(server: Arc<QueryMemory>, limit: usize) -> Arc<Self> {
        Arc::new(Self {
            server,
            limit,
            used: AtomicUsize::new(0),
        })
    }

    fn exhausted(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
        what: &str,
    ) -> DataFusionError {
        DataFusionError::ResourcesExhausted(format!(
            "out of memory: {} asked for {} more, past {what}",
            reservation.consumer().name(),
            human_readable_size(additional),
        ))
    }
}

impl std::fmt::Display for SessionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "session pool: {} of {} used",
            human_readable_size(self.reserved()),
            human_readable_size(self.limit)
        )
    }
}

impl MemoryPool for SessionPool {
    fn name(&self) -> &str {
        "eddy_session"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::AcqRel);
        self.server.used.fetch_add(additional, Ordering::AcqRel);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::AcqRel);
        self.server.used.fetch_sub(shrink, Ordering::AcqRel);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if !try_add(&self.used, additional, self.limit) {
            let what = format!(
                "the session's work_mem_limit of {}",
                human_readable_size(self.limit)
            );
            return Err(self.exhausted(reservation, additional, &what));
        }
        if !try_add(&self.server.used, additional, self.server.limit) {
            self.used.fetch_sub(additional, Ordering::AcqRel);
            let what = format!(
                "the server's query_memory_limit of {} shared by all sessions",
                human_readable_size(self.server.limit)
            );
            return Err(self.exhausted(reservation, additional, &what));
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn sessions_are_bounded_alone_and_together() {
        let server = QueryMemory::new(100);
        let a: Arc<dyn MemoryPool> = SessionPool::new(server.clone(), 60);
        let b: Arc<dyn MemoryPool> = SessionPool::new(server.clone(), 60);
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(50).unwrap();
        let e = ra.try_grow(20).unwrap_err().to_string();
        assert!(e.contains("work_mem_limit"), "{e}");
        rb.try_grow(40).unwrap();
        let e = rb.try_grow(20).unwrap_err().to_string();
        assert!(e.contains("query_memory_limit"), "{e}");
        assert_eq!(server.used(), 90);
        assert_eq!(b.reserved(), 40, "a refused grow takes nothing");
        drop(ra);
        assert_eq!(server.used(), 40);
        rb.try_grow(20).unwrap();
    }
}

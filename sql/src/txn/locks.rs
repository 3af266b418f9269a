//! Striped key locks held while a commit validates and writes.
//!
//! A commit takes all its stripes at once (waiting until none is held by another commit), so
//! two commits can never deadlock, and commits on disjoint stripes proceed in parallel.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hasher};

use parking_lot::{Condvar, Mutex};

const STRIPES: u64 = 4096;

pub struct KeyLocks {
    held: Mutex<BTreeSet<u16>>,
    released: Condvar,
    hasher: std::collections::hash_map::RandomState,
}

pub struct StripeGuard<'a> {
    locks: &'a KeyLocks,
    stripes: BTreeSet<u16>,
}

impl Default for KeyLocks {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyLocks {
    pub fn new() -> Self {
        Self {
            held: Mutex::new(BTreeSet::new()),
            released: Condvar::new(),
            hasher: Default::default(),
        }
    }

    fn stripe(&self, key: &[u8]) -> u16 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        (h.finish() % STRIPES) as u16
    }

    pub fn acquire<'k>(&self, keys: impl Iterator<Item = &'k [u8]>) -> StripeGuard<'_> {
        let mut stripes = BTreeSet::new();
        for k in keys {
            stripes.insert(self.stripe(k));
            if stripes.len() as u64 == STRIPES {
                break;
            }
        }
        let mut held = self.held.lock();
        while stripes.iter().any(|s| held.contains(s)) {
            self.released.wait(&mut held);
        }
        held.extend(stripes.iter().copied());
        StripeGuard {
            locks: self,
            stripes,
        }
    }
}

impl Drop for StripeGuard<'_> {
    fn drop(&mut self) {
        let mut held = self.locks.held.lock();
        for s in &self.stripes {
            held.remove(s);
        }
        drop(held);
        self.locks.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn same_key_waits_for_release() {
        let locks = Arc::new(KeyLocks::new());
        let g = locks.acquire([&b"k"[..]].into_iter());
        let done = Arc::new(AtomicBool::new(false));
        let (l2, d2) = (locks.clone(), done.clone());
        let t = std::thread::spawn(move || {
            let _g = l2.acquire([&b"k"[..]].into_iter());
            d2.store(true, Ordering::SeqCst);
        });
        // The other thread cannot finish while we hold the stripe.
        assert!(!done.load(Ordering::SeqCst));
        drop(g);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
    }
}

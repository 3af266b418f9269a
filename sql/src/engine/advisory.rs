//! PostgreSQL's advisory locks, which migration tools (sqlx, dbmate, golang-migrate) take to
//! run one at a time: `pg_advisory_lock`, `pg_try_advisory_lock`, `pg_advisory_unlock`,
//! `pg_advisory_unlock_all`, and the transaction-scoped `pg_advisory_xact_lock` and
//! `pg_try_advisory_xact_lock`, each with one `bigint` key or two `int` keys.
//!
//! Locks are exclusive and held by a session. As in PostgreSQL, a session may take a lock it
//! holds again, and holds it until it has unlocked it as many times; transaction-scoped holds
//! end with the transaction (at the end of the statement in autocommit); a session's holds
//! all end when it disconnects. A waiting `pg_advisory_lock` is an async wait, so cancelling
//! the query (or closing the connection) stops it.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, BooleanArray};
use datafusion::arrow::datatypes::{DataType, Int32Type, Int64Type};
use datafusion::common::{Result as DfResult, exec_err};
use datafusion::logical_expr::async_udf::{AsyncScalarUDF, AsyncScalarUDFImpl};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion::scalar::ScalarValue;
use parking_lot::Mutex;

/// Who holds a lock, and how many times at each scope.
#[derive(Debug, Clone, Copy)]
struct Hold {
    owner: i32,
    session: u32,
    xact: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Session,
    Transaction,
}

/// The advisory locks of one server.
#[derive(Debug, Default)]
pub struct AdvisoryLocks {
    held: Mutex<HashMap<i64, Hold>>,
    released: tokio::sync::Notify,
}

impl AdvisoryLocks {
    /// Takes `key` for `owner` if it is free or `owner`'s already.
    pub fn try_lock(&self, key: i64, owner: i32, scope: Scope) -> bool {
        let mut held = self.held.lock();
        let hold = held.entry(key).or_insert(Hold {
            owner,
            session: 0,
            xact: 0,
        });
        if hold.owner != owner {
            return false;
        }
        match scope {
            Scope::Session => hold.session += 1,
            Scope::Transaction => hold.xact += 1,
        }
        true
    }

    /// Waits until `key` can be taken for `owner`, and takes it.
    pub async fn lock(&self, key: i64, owner: i32, scope: Scope) {
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            // Registered before trying, so a release between the try and the wait wakes us.
            released.as_mut().enable();
            if self.try_lock(key, owner, scope) {
                return;
            }
            released.await;
        }
    }

    /// Releases one session-scoped hold of `key` by `owner`; false if it held none.
    pub fn unlock(&self, key: i64, owner: i32) -> bool {
        let mut held = self.held.lock();
        let Some(hold) = held
            .get_mut(&key)
            .filter(|h| h.owner == owner && h.session > 0)
        else {
            return false;
        };
        hold.session -= 1;
        if hold.session == 0 && hold.xact == 0 {
            held.remove(&key);
            drop(held);
            self.released.notify_waiters();
        }
        true
    }

    /// Releases `owner`'s holds of `scope` (all of them for `None`).
    pub fn release(&self, owner: i32, scope: Option<Scope>) {
        let mut held = self.held.lock();
        let before = held.len();
        held.retain(|_, h| {
            if h.owner != owner {
                return true;
            }
            match scope {
                Some(Scope::Session) => h.session = 0,
                Some(Scope::Transaction) => h.xact = 0,
                None => (h.session, h.xact) = (0, 0),
            }
            h.session > 0 || h.xact > 0
        });
        if held.len() != before {
            drop(held);
            self.released.notify_waiters();
        }
    }

    /// Whether `owner` holds anything at `scope` (cheap: checked after every statement).
    pub fn holds(&self, owner: i32, scope: Scope) -> bool {
        self.held.lock().values().any(|h| {
            h.owner == owner
                && match scope {
                    Scope::Session => h.session > 0,
                    Scope::Transaction => h.xact > 0,
                }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Lock(Scope),
    TryLock(Scope),
    Unlock,
    UnlockAll,
}

#[derive(Debug)]
struct LockFn {
    kind: Kind,
    name: &'static str,
    signature: Signature,
    locks: Arc<AdvisoryLocks>,
    owner: i32,
}

impl PartialEq for LockFn {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind
            && self.owner == other.owner
            && Arc::ptr_eq(&self.locks, &other.locks)
    }
}
impl Eq for LockFn {}
impl std::hash::Hash for LockFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.kind, self.owner).hash(state)
    }
}

/// The lock keys of each row: one bigint, or two ints combined as PostgreSQL does (high and
/// low 32 bits). NULL keys give None.
fn keys(args: &ScalarFunctionArgs) -> DfResult<Vec<Option<i64>>> {
    let n = args.number_rows;
    let arrays = args
        .args
        .iter()
        .map(|a| a.to_array(n))
        .collect::<DfResult<Vec<_>>>()?;
    Ok(match arrays.as_slice() {
        [k] => {
            let k = datafusion::arrow::compute::cast(k, &DataType::Int64)?;
            let k = k.as_primitive::<Int64Type>();
            (0..n).map(|i| k.is_valid(i).then(|| k.value(i))).collect()
        }
        [a, b] => {
            let strict = datafusion::arrow::compute::CastOptions {
                safe: false,
                ..Default::default()
            };
            let int = |k| {
                datafusion::arrow::compute::cast_with_options(k, &DataType::Int32, &strict)
                    .map_err(|_| {
                        datafusion::error::DataFusionError::Execution(
                            "advisory lock keys of two parts are integers (-2147483648 to 2147483647)"
                                .into(),
                        )
                    })
            };
            let (a, b) = (int(a)?, int(b)?);
            let (a, b) = (a.as_primitive::<Int32Type>(), b.as_primitive::<Int32Type>());
            (0..n)
                .map(|i| {
                    (a.is_valid(i) && b.is_valid(i))
                        .then(|| ((a.value(i) as i64) << 32) | (b.value(i) as u32 as i64))
                })
                .collect()
        }
        _ => Vec::new(),
    })
}

impl LockFn {
    /// The functions that answer at once (everything but the waiting locks).
    fn run(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        match self.kind {
            Kind::UnlockAll => {
                self.locks.release(self.owner, Some(Scope::Session));
                Ok(ColumnarValue::Scalar(ScalarValue::Null))
            }
            Kind::TryLock(scope) => {
                let got: BooleanArray = keys(args)?
                    .into_iter()
                    .map(|k| k.map(|k| self.locks.try_lock(k, self.owner, scope)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(got)))
            }
            Kind::Unlock => {
                let done: BooleanArray = keys(args)?
                    .into_iter()
                    .map(|k| k.map(|k| self.locks.unlock(k, self.owner)))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(done)))
            }
            Kind::Lock(_) => exec_err!("{} waits: it runs asynchronously", self.name),
        }
    }
}

impl ScalarUDFImpl for LockFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::TryLock(_) | Kind::Unlock => DataType::Boolean,
            // void: NULL, shown empty.
            Kind::Lock(_) | Kind::UnlockAll => DataType::Null,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        self.run(&args)
    }
}

#[async_trait]
impl AsyncScalarUDFImpl for LockFn {
    async fn invoke_async_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Kind::Lock(scope) = self.kind else {
            return self.run(&args);
        };
        for key in keys(&args)?.into_iter().flatten() {
            self.locks.lock(key, self.owner, scope).await;
        }
        Ok(ColumnarValue::Scalar(ScalarValue::Null))
    }
}

/// Registers the advisory-lock functions of the session `owner` (its backend pid).
pub fn register(ctx: &SessionContext, locks: Arc<AdvisoryLocks>, owner: i32) {
    let keyed = || {
        Signature::one_of(
            vec![
                TypeSignature::Exact(vec![DataType::Int64]),
                // (int, int): literals and parameters arrive as bigint; out of int range is
                // an error below.
                TypeSignature::Exact(vec![DataType::Int64, DataType::Int64]),
            ],
            Volatility::Volatile,
        )
    };
    let fns = [
        (Kind::Lock(Scope::Session), "pg_advisory_lock"),
        (Kind::Lock(Scope::Transaction), "pg_advisory_xact_lock"),
        (Kind::TryLock(Scope::Session), "pg_try_advisory_lock"),
        (
            Kind::TryLock(Scope::Transaction),
            "pg_try_advisory_xact_lock",
        ),
        (Kind::Unlock, "pg_advisory_unlock"),
        (Kind::UnlockAll, "pg_advisory_unlock_all"),
    ];
    for (kind, name) in fns {
        let signature = match kind {
            Kind::UnlockAll => Signature::exact(vec![], Volatility::Volatile),
            _ => keyed(),
        };
        let f = LockFn {
            kind,
            name,
            signature,
            locks: locks.clone(),
            owner,
        };
        let udf = match kind {
            Kind::Lock(_) => AsyncScalarUDF::new(Arc::new(f)).into_scalar_udf(),
            _ => ScalarUDF::new_from_impl(f),
        };
        ctx.register_udf(udf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn locks_are_exclusive_reentrant_and_released_by_scope() {
        let locks = Arc::new(AdvisoryLocks::default());
        assert!(locks.try_lock(7, 1, Scope::Session));
        assert!(locks.try_lock(7, 1, Scope::Session), "reentrant");
        assert!(!locks.try_lock(7, 2, Scope::Session), "exclusive");
        assert!(locks.unlock(7, 1));
        assert!(!locks.try_lock(7, 2, Scope::Transaction), "held once more");
        assert!(!locks.unlock(7, 2), "not 2's to unlock");
        // A waiter gets the lock as soon as it is released.
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.lock(7, 2, Scope::Transaction).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(locks.unlock(7, 1));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(locks.holds(2, Scope::Transaction));
        locks.release(2, Some(Scope::Transaction));
        assert!(!locks.holds(2, Scope::Transaction));
        assert!(locks.try_lock(7, 1, Scope::Session), "free again");
        locks.release(1, None);
        assert!(locks.try_lock(7, 3, Scope::Session));
    }
}

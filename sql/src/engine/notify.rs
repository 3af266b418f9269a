//! LISTEN / NOTIFY / pg_notify, as PostgreSQL has them: a notification is sent when the
//! transaction that made it commits (never when it rolls back), once per distinct channel
//! and payload in that transaction, to every session listening on the channel (the sender
//! included), and is delivered to a session between its transactions.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Weak};

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use parking_lot::{Mutex, RwLock};

use super::catalog_provider::SessionView;
use crate::error::{Error, Result, sqlstate};

/// PostgreSQL's limit on a payload.
const MAX_PAYLOAD: usize = 7999;
/// Notifications a session may have waiting before the oldest are dropped (a client that
/// listens but never reads must not grow the server without bound).
const MAX_QUEUED: usize = 100_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The backend PID of the session that sent it.
    pub pid: i32,
    pub channel: String,
    pub payload: String,
}

/// A session's channels and the notifications waiting for it.
#[derive(Default)]
pub struct Inbox {
    channels: Mutex<BTreeSet<String>>,
    queue: Mutex<VecDeque<Notification>>,
    /// Signalled when a notification arrives.
    pub arrived: tokio::sync::Notify,
}

impl Inbox {
    /// The waiting notifications, oldest first.
    pub fn take(&self) -> Vec<Notification> {
        self.queue.lock().drain(..).collect()
    }

    pub fn listen(&self, channel: &str) {
        self.channels.lock().insert(channel.to_string());
    }

    /// `UNLISTEN channel`, or every channel (`None`: `UNLISTEN *`).
    pub fn unlisten(&self, channel: Option<&str>) {
        match channel {
            Some(c) => {
                self.channels.lock().remove(c);
            }
            None => self.channels.lock().clear(),
        }
    }

    pub fn channels(&self) -> Vec<String> {
        self.channels.lock().iter().cloned().collect()
    }

    fn deliver(&self, n: &Notification) {
        if !self.channels.lock().contains(&n.channel) {
            return;
        }
        let mut queue = self.queue.lock();
        if queue.len() >= MAX_QUEUED {
            queue.pop_front();
        }
        queue.push_back(n.clone());
        drop(queue);
        self.arrived.notify_one();
    }
}

/// Every session's inbox, by backend PID.
#[derive(Default)]
pub struct Notifier {
    inboxes: RwLock<HashMap<i32, Weak<Inbox>>>,
}

impl Notifier {
    pub fn register(&self, pid: i32, inbox: &Arc<Inbox>) {
        self.inboxes.write().insert(pid, Arc::downgrade(inbox));
    }

    pub fn unregister(&self, pid: i32) {
        self.inboxes.write().remove(&pid);
    }

    /// Sends the notifications of a committed transaction.
    pub fn publish(&self, pid: i32, notes: Vec<(String, String)>) {
        if notes.is_empty() {
            return;
        }
        let inboxes: Vec<Arc<Inbox>> = self
            .inboxes
            .read()
            .values()
            .filter_map(Weak::upgrade)
            .collect();
        for (channel, payload) in notes {
            let n = Notification {
                pid,
                channel,
                payload,
            };
            for inbox in &inboxes {
                inbox.deliver(&n);
            }
        }
    }

    /// Whether any session listens on `channel` (the notify sink skips work otherwise).
    pub fn has_listeners(&self, channel: &str) -> bool {
        self.inboxes
            .read()
            .values()
            .filter_map(Weak::upgrade)
            .any(|i| i.channels.lock().contains(channel))
    }
}

/// A NOTIFY's channel and payload, checked as PostgreSQL checks them.
pub fn check(channel: &str, payload: &str) -> Result<()> {
    if channel.is_empty() {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "channel name cannot be empty",
        ));
    }
    if channel.len() > 63 {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "channel name too long",
        ));
    }
    if payload.len() > MAX_PAYLOAD {
        return Err(Error::user(
            sqlstate::INVALID_PARAMETER_VALUE,
            "payload string too long",
        ));
    }
    Ok(())
}

/// `pg_notify(channel, payload)`: NOTIFY from an expression, per row.
#[derive(Debug)]
struct PgNotify {
    signature: Signature,
    view: Weak<SessionView>,
}

impl PartialEq for PgNotify {
    fn eq(&self, other: &Self) -> bool {
        Weak::ptr_eq(&self.view, &other.view)
    }
}
impl Eq for PgNotify {}
impl std::hash::Hash for PgNotify {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        "pg_notify".hash(state)
    }
}

pub fn register(ctx: &SessionContext, view: &Arc<SessionView>) {
    ctx.register_udf(ScalarUDF::new_from_impl(PgNotify {
        signature: Signature::one_of(
            vec![TypeSignature::Exact(vec![DataType::Utf8, DataType::Utf8])],
            Volatility::Volatile,
        ),
        view: Arc::downgrade(view),
    }));
}

impl ScalarUDFImpl for PgNotify {
    fn name(&self) -> &str {
        "pg_notify"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let Some(view) = self.view.upgrade() else {
            return Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)));
        };
        let n = args.number_rows.max(1);
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<DfResult<Vec<_>>>()?;
        let text = |i: usize, row: usize| -> DfResult<Option<String>> {
            Ok(match ScalarValue::try_from_array(&arrays[i], row)? {
                ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => v,
                _ => None,
            })
        };
        let mut txn = view.txn.lock();
        for row in 0..n {
            let Some(channel) = text(0, row)? else {
                return Err(crate::error::to_df(Error::user(
                    sqlstate::INVALID_PARAMETER_VALUE,
                    "channel name cannot be empty",
                )));
            };
            let payload = text(1, row)?.unwrap_or_default();
            check(&channel, &payload).map_err(crate::error::to_df)?;
            txn.notify(channel, payload);
        }
        Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
    }
}

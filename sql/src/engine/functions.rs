//! Session functions Postgres clients call: `version()`, `current_setting()`, `set_config()`,
//! `current_database()`, `current_schema()`, `current_schemas()`, `current_user`,
//! `session_user`, `pg_backend_pid()`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, ListBuilder, StringArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DataFusionError, ScalarValue};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use parking_lot::RwLock;

use super::settings::{SERVER_VERSION, Settings};

/// What the session functions read.
pub struct SessionInfo {
    pub user: String,
    pub database: String,
    pub backend_pid: i32,
    pub settings: RwLock<Settings>,
    /// Schemas that exist (to resolve `current_schema()` against `search_path`).
    pub schema_exists: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Whether the session's user is a superuser (every session is when authentication is
    /// off, as with PostgreSQL's trust).
    pub superuser: std::sync::atomic::AtomicBool,
}

impl SessionInfo {
    pub fn current_schema(&self) -> Option<String> {
        let path = self.settings.read().search_path(&self.user);
        path.into_iter().find(|s| (self.schema_exists)(s))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Version,
    CurrentDatabase,
    CurrentSchema,
    CurrentSchemas,
    CurrentUser,
    SessionUser,
    CurrentSetting,
    SetConfig,
    BackendPid,
}

struct SessionFn {
    kind: Kind,
    name: &'static str,
    signature: Signature,
    info: Arc<SessionInfo>,
}

impl std::fmt::Debug for SessionFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for SessionFn {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && Arc::ptr_eq(&self.info, &other.info)
    }
}
impl Eq for SessionFn {}
impl std::hash::Hash for SessionFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.kind.hash(state)
    }
}

pub fn register(ctx: &SessionContext, info: Arc<SessionInfo>) {
    let text = || DataType::Utf8;
    let fns: Vec<(Kind, &'static str, Signature)> = vec![
        (
            Kind::Version,
            "version",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentDatabase,
            "current_database",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentDatabase,
            "current_catalog",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentSchema,
            "current_schema",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentSchemas,
            "current_schemas",
            Signature::exact(vec![DataType::Boolean], Volatility::Stable),
        ),
        (
            Kind::CurrentUser,
            "current_user",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentUser,
            "current_role",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentUser,
            "user",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::SessionUser,
            "session_user",
            Signature::exact(vec![], Volatility::Stable),
        ),
        (
            Kind::CurrentSetting,
            "current_setting",
            Signature::one_of(
                vec![
                    TypeSignature::Exact(vec![text()]),
                    TypeSignature::Exact(vec![text(), DataType::Boolean]),
                ],
                Volatility::Stable,
            ),
        ),
        (
            Kind::SetConfig,
            "set_config",
            Signature::exact(
                vec![text(), text(), DataType::Boolean],
                Volatility::Volatile,
            ),
        ),
        (
            Kind::BackendPid,
            "pg_backend_pid",
            Signature::exact(vec![], Volatility::Stable),
        ),
    ];
    for (kind, name, signature) in fns {
        ctx.register_udf(ScalarUDF::new_from_impl(SessionFn {
            kind,
            name,
            signature,
            info: info.clone(),
        }));
    }
}

fn arg_str(args: &ScalarFunctionArgs, i: usize, row: usize) -> Option<String> {
    match &args.args[i] {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                v.clone()
            }
            _ => None,
        },
        ColumnarValue::Array(a) => {
            let a = datafusion::arrow::compute::cast(a, &DataType::Utf8).ok()?;
            let a = a.as_string::<i32>();
            (!datafusion::arrow::array::Array::is_null(a, row)).then(|| a.value(row).to_string())
        }
    }
}

fn arg_bool(args: &ScalarFunctionArgs, i: usize) -> bool {
    match args.args.get(i) {
        Some(ColumnarValue::Scalar(ScalarValue::Boolean(Some(b)))) => *b,
        Some(ColumnarValue::Array(a)) => {
            let a = a.as_boolean();
            datafusion::arrow::array::Array::len(a) > 0 && a.value(0)
        }
        _ => false,
    }
}

impl SessionFn {
    fn current_setting(&self, args: &ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let missing_ok = arg_bool(args, 1);
        let settings = self.info.settings.read();
        let lookup = |name: Option<String>| -> DfResult<Option<String>> {
            let Some(name) = name else { return Ok(None) };
            match settings.get(&name) {
                Some(v) => Ok(Some(v.to_string())),
                None if missing_ok => Ok(None),
                None => Err(DataFusionError::External(Box::new(
                    crate::error::Error::user(
                        crate::error::sqlstate::UNDEFINED_OBJECT,
                        format!("unrecognized configuration parameter \"{name}\""),
                    ),
                ))),
            }
        };
        match &args.args[0] {
            ColumnarValue::Scalar(_) => Ok(ColumnarValue::Scalar(ScalarValue::Utf8(lookup(
                arg_str(args, 0, 0),
            )?))),
            ColumnarValue::Array(a) => {
                let values = (0..a.len())
                    .map(|row| lookup(arg_str(args, 0, row)))
                    .collect::<DfResult<Vec<_>>>()?;
                Ok(ColumnarValue::Array(
                    Arc::new(StringArray::from(values)) as ArrayRef
                ))
            }
        }
    }
}

impl ScalarUDFImpl for SessionFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::CurrentSchemas => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
            }
            Kind::BackendPid => DataType::Int32,
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let text = |s: Option<String>| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(s)));
        match self.kind {
            Kind::Version => text(Some(format!(
                "PostgreSQL {SERVER_VERSION} (Eddy {}) on x86_64-pc-linux-gnu, compiled by rustc, 64-bit",
                env!("CARGO_PKG_VERSION")
            ))),
            Kind::CurrentDatabase => text(Some(self.info.database.clone())),
            Kind::CurrentSchema => text(self.info.current_schema()),
            Kind::CurrentUser | Kind::SessionUser => text(Some(self.info.user.clone())),
            Kind::BackendPid => Ok(ColumnarValue::Scalar(ScalarValue::Int32(Some(
                self.info.backend_pid,
            )))),
            Kind::CurrentSchemas => {
                let include_implicit = arg_bool(&args, 0);
                let mut schemas = Vec::new();
                if include_implicit {
                    schemas.push("pg_catalog".to_string());
                }
                let path = self.info.settings.read().search_path(&self.info.user);
                schemas.extend(path.into_iter().filter(|s| (self.info.schema_exists)(s)));
                let mut b = ListBuilder::new(StringBuilder::new());
                for s in schemas {
                    b.values().append_value(s);
                }
                b.append(true);
                let list = b.finish();
                Ok(ColumnarValue::Scalar(ScalarValue::List(Arc::new(list))))
            }
            Kind::CurrentSetting => self.current_setting(&args),
            Kind::SetConfig => {
                let (Some(name), value) = (arg_str(&args, 0, 0), arg_str(&args, 1, 0)) else {
                    return text(None);
                };
                let value = value.unwrap_or_default();
                self.info.settings.write().set(&name, value.clone());
                text(Some(value))
            }
        }
    }
}

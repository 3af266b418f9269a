//! The catalog functions clients call beside `pg_catalog`'s tables: `pg_get_userbyid`,
//! `pg_table_is_visible`, `pg_get_indexdef`, `pg_get_constraintdef`, `pg_get_expr`,
//! `pg_get_viewdef`, `obj_description` and friends, answered from Eddy's catalog. Functions
//! with nothing Eddy-specific to say (`format_type`, `quote_ident`, `has_*_privilege`,
//! `pg_encoding_to_char`, `array_upper`, ...) come from `datafusion-pg-catalog`.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, ListArray, ListBuilder, StringArray, StringBuilder,
    new_empty_array,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type};
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature,
    Volatility,
};
use datafusion::prelude::SessionContext;
use datafusion_pg_catalog::pg_catalog as crate_fns;

use super::objects::{PgObjects, PgRelation, quote_ident};
use crate::engine::catalog_provider::SessionView;
use crate::engine::functions::SessionInfo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    UserById,
    TableIsVisible,
    FunctionIsVisible,
    IndexDef,
    ConstraintDef,
    Expr,
    ViewDef,
    /// `obj_description`, `col_description`: COMMENT ON text; `shobj_description`: none.
    Description,
    ColumnDescription,
    SharedDescription,
    /// `x::regclass` of a non-literal (a name or an OID): the relation's OID.
    RegclassOid,
    /// `x::regclass::text`: the relation's name, qualified when the search path does not
    /// find it.
    RegclassText,
    /// `pg_get_function_result` / `pg_get_function_arguments`: Eddy has no user functions.
    FunctionSignature,
    /// `quote_ident(key) || ' ' || quote_literal(value)` of each `key=value` option.
    FormatOptions,
    /// Its list argument, with NULL made an empty list (`ARRAY(subquery)` over no rows).
    EmptyIfNull,
    /// `prefix || item` of each item of a text array.
    PrefixItems,
    EncodingToChar,
    /// `to_regtype(name)`: the type's OID, NULL when there is none.
    ToRegtype,
    /// `to_regclass(name)`: the relation's OID (by the search path), NULL when there is none.
    ToRegclass,
}

struct CatalogFn {
    kind: Kind,
    name: &'static str,
    signature: Signature,
    view: Arc<SessionView>,
    info: Arc<SessionInfo>,
}

impl std::fmt::Debug for CatalogFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl PartialEq for CatalogFn {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && Arc::ptr_eq(&self.info, &other.info)
    }
}
impl Eq for CatalogFn {}
impl std::hash::Hash for CatalogFn {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

/// `eddy_pg_text(x)`: a timestamp or float as the text PostgreSQL prints for it.
pub fn pg_text_udf() -> Arc<ScalarUDF> {
    // One instance for every session: it reads no session state.
    static UDF: std::sync::OnceLock<Arc<ScalarUDF>> = std::sync::OnceLock::new();
    UDF.get_or_init(|| Arc::new(ScalarUDF::new_from_impl(PgText::default())))
        .clone()
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct PgText {
    signature: Signature,
}

impl Default for PgText {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for PgText {
    fn name(&self) -> &str {
        "eddy_pg_text"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use datafusion::arrow::datatypes::{Float64Type, TimeUnit, TimestampMicrosecondType};
        let array = args.args[0].to_array(args.number_rows)?;
        let text: StringArray = match array.data_type() {
            DataType::Timestamp(_, tz) => {
                let micros = datafusion::arrow::compute::cast(
                    &array,
                    &DataType::Timestamp(TimeUnit::Microsecond, tz.clone()),
                )?;
                micros
                    .as_primitive::<TimestampMicrosecondType>()
                    .iter()
                    .map(|v| v.map(|v| crate::types::timestamp_text(v, tz.is_some())))
                    .collect()
            }
            DataType::Float32 | DataType::Float64 => {
                let digits = match array.data_type() {
                    DataType::Float32 => 6,
                    _ => 15,
                };
                let wide = datafusion::arrow::compute::cast(&array, &DataType::Float64)?;
                wide.as_primitive::<Float64Type>()
                    .iter()
                    .map(|v| v.map(|v| crate::types::float_text(v, digits)))
                    .collect()
            }
            _ => {
                let cast = datafusion::arrow::compute::cast(&array, &DataType::Utf8)?;
                cast.as_string::<i32>().iter().collect()
            }
        };
        Ok(ColumnarValue::Array(Arc::new(text)))
    }
}

/// Registers the catalog functions, Eddy's and the crate's, on a session.
pub fn register(ctx: &SessionContext, view: Arc<SessionView>, info: Arc<SessionInfo>) {
    for udf in [
        crate_fns::format_type::create_format_type_udf(),
        crate_fns::quote_ident_udf::create_quote_ident_udf(),
        crate_fns::quote_ident_udf::create_parse_ident_udf(),
        crate_fns::array_bounds_udf::create_array_upper_udf(),
        crate_fns::array_bounds_udf::create_array_lower_udf(),
        crate_fns::has_privilege_udf::create_has_privilege_udf("has_table_privilege"),
        crate_fns::has_privilege_udf::create_has_privilege_udf("has_schema_privilege"),
        crate_fns::has_privilege_udf::create_has_privilege_udf("has_database_privilege"),
        crate_fns::has_privilege_udf::create_has_privilege_udf("has_any_column_privilege"),
        crate_fns::create_pg_relation_is_publishable_udf(),
        crate_fns::create_pg_get_statisticsobjdef_columns_udf(),
        crate_fns::create_pg_get_partkeydef_udf(),
        crate_fns::create_pg_get_partition_ancestors_udf(),
        crate_fns::create_pg_relation_size_udf(),
        crate_fns::create_pg_total_relation_size_udf(),
    ] {
        ctx.register_udf(udf);
    }
    super::subquery::register(ctx, view.clone());
    // generate_series over int4 bounds (array_lower, array_upper).
    crate_fns::generate_series_arg_coercion::CoerceIntArgsToBigInt::widen(ctx);
    let oid = || DataType::Int64;
    let text = || DataType::Utf8;
    let text_list = || DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)));
    let fns: Vec<(Kind, &'static str, Vec<Vec<DataType>>)> = vec![
        (Kind::UserById, "pg_get_userbyid", vec![vec![oid()]]),
        (
            Kind::TableIsVisible,
            "pg_table_is_visible",
            vec![vec![oid()]],
        ),
        (
            Kind::FunctionIsVisible,
            "pg_function_is_visible",
            vec![vec![oid()]],
        ),
        (
            Kind::FunctionIsVisible,
            "pg_type_is_visible",
            vec![vec![oid()]],
        ),
        (
            Kind::IndexDef,
            "pg_get_indexdef",
            vec![vec![oid()], vec![oid(), oid(), DataType::Boolean]],
        ),
        (
            Kind::ConstraintDef,
            "pg_get_constraintdef",
            vec![vec![oid()], vec![oid(), DataType::Boolean]],
        ),
        (
            Kind::Expr,
            "pg_get_expr",
            vec![vec![text(), oid()], vec![text(), oid(), DataType::Boolean]],
        ),
        (
            Kind::ViewDef,
            "pg_get_viewdef",
            vec![vec![oid()], vec![oid(), DataType::Boolean], vec![text()]],
        ),
        (
            Kind::Description,
            "obj_description",
            vec![vec![oid()], vec![oid(), text()]],
        ),
        (
            Kind::ColumnDescription,
            "col_description",
            vec![vec![oid(), oid()]],
        ),
        (
            Kind::RegclassOid,
            "eddy_regclass_oid",
            vec![vec![text()], vec![oid()]],
        ),
        (
            Kind::RegclassText,
            "eddy_regclass_text",
            vec![vec![text()], vec![oid()]],
        ),
        (
            Kind::SharedDescription,
            "shobj_description",
            vec![vec![oid(), text()]],
        ),
        (
            Kind::FunctionSignature,
            "pg_get_function_result",
            vec![vec![oid()]],
        ),
        (
            Kind::FunctionSignature,
            "pg_get_function_arguments",
            vec![vec![oid()]],
        ),
        (
            Kind::FormatOptions,
            "eddy_format_options",
            vec![vec![text()]],
        ),
        (
            Kind::EncodingToChar,
            "pg_encoding_to_char",
            vec![vec![oid()]],
        ),
        (Kind::ToRegtype, "to_regtype", vec![vec![text()]]),
        (Kind::ToRegclass, "to_regclass", vec![vec![text()]]),
        (
            Kind::PrefixItems,
            "eddy_prefix_items",
            vec![vec![text(), text()], vec![text(), text_list()]],
        ),
    ];
    for (kind, name, signatures) in fns {
        let signature = Signature::one_of(
            signatures.into_iter().map(TypeSignature::Exact).collect(),
            Volatility::Stable,
        );
        ctx.register_udf(ScalarUDF::new_from_impl(CatalogFn {
            kind,
            name,
            signature,
            view: view.clone(),
            info: info.clone(),
        }));
    }
    ctx.register_udf(ScalarUDF::new_from_impl(CatalogFn {
        kind: Kind::EmptyIfNull,
        name: "eddy_empty_if_null",
        signature: Signature::any(1, Volatility::Immutable),
        view,
        info,
    }));
}

/// The OIDs in an argument (NULL where NULL).
fn oids(array: &ArrayRef) -> DfResult<Vec<Option<i32>>> {
    let a = datafusion::arrow::compute::cast(array, &DataType::Int64)?;
    Ok(a.as_primitive::<Int64Type>()
        .iter()
        .map(|v| v.map(|v| v as i32))
        .collect())
}

/// The OIDs of the system catalogs clients name as regclass (`'pg_catalog.pg_class'::regclass`
/// as `pg_description.classoid`), which are the same in every PostgreSQL cluster.
fn system_catalog_oid(schemas: &[String], name: &str) -> Option<i32> {
    if !schemas.is_empty() && !schemas.iter().any(|s| s == "pg_catalog") && schemas.len() == 1 {
        return None;
    }
    Some(match name {
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_proc" => 1255,
        "pg_class" => 1259,
        "pg_authid" => 1260,
        "pg_database" => 1262,
        "pg_am" => 2601,
        "pg_attrdef" => 2604,
        "pg_constraint" => 2606,
        "pg_description" => 2609,
        "pg_index" => 2610,
        "pg_inherits" => 2611,
        "pg_namespace" => 2615,
        "pg_rewrite" => 2618,
        "pg_trigger" => 2620,
        "pg_sequence" => 2224,
        "pg_collation" => 3456,
        _ => return None,
    })
}

/// A name as written in a regclass string: quoted keeps its case, unquoted folds to lower.
fn unquote(name: &str) -> String {
    match name.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
        Some(inner) => inner.replace("\"\"", "\""),
        None => name.to_lowercase(),
    }
}

fn texts(array: &ArrayRef) -> DfResult<Vec<Option<String>>> {
    let a = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect())
}

fn text_result(values: Vec<Option<String>>) -> ColumnarValue {
    ColumnarValue::Array(Arc::new(StringArray::from(values)))
}

fn list_result(values: Vec<Option<Vec<String>>>) -> ColumnarValue {
    let mut b = ListBuilder::new(StringBuilder::new());
    for v in values {
        match v {
            Some(items) => {
                for i in items {
                    b.values().append_value(i);
                }
                b.append(true);
            }
            None => b.append(false),
        }
    }
    ColumnarValue::Array(Arc::new(b.finish()))
}

/// `CREATE UNIQUE INDEX t_pkey ON public.t USING btree (id)`.
fn index_def(r: &PgRelation, index: &super::objects::PgIndex) -> String {
    format!(
        "CREATE {}INDEX {} ON {} USING btree ({})",
        if index.unique { "UNIQUE " } else { "" },
        quote_ident(&index.name),
        r.qualified_name(),
        r.column_names(&index.columns).join(", ")
    )
}

/// `'quoted'` as `quote_literal` writes it.
fn quote_literal(value: &str) -> String {
    if value.contains('\\') {
        format!("E'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
    } else {
        format!("'{}'", value.replace('\'', "''"))
    }
}

/// The OID of a type name as `to_regtype` reads it: SQL spellings (`integer`, `double
/// precision`, `timestamp with time zone`, …) or `pg_type` names.
fn type_oid(pg_type: &datafusion_pg_catalog::pg_catalog::ArrowTable, name: &str) -> Option<i32> {
    let name = name
        .trim()
        .trim_start_matches("pg_catalog.")
        .to_ascii_lowercase();
    let name = match name.as_str() {
        "integer" | "int" => "int4",
        "smallint" => "int2",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" | "float" => "float8",
        "boolean" => "bool",
        "character varying" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" => "numeric",
        "timestamp with time zone" => "timestamptz",
        "timestamp without time zone" => "timestamp",
        "time without time zone" => "time",
        "time with time zone" => "timetz",
        other => other,
    };
    pg_type.data().iter().find_map(|batch| {
        let names = batch.column_by_name("typname")?.as_string_opt::<i32>()?;
        let oids = batch
            .column_by_name("oid")?
            .as_primitive_opt::<datafusion::arrow::datatypes::Int32Type>()?;
        (0..batch.num_rows())
            .find(|&i| names.value(i) == name)
            .map(|i| oids.value(i))
    })
}

/// The non-NULL items of PostgreSQL's text form of an array (`{a,"b c"}`).
fn array_items(text: &str) -> Vec<String> {
    crate::types::array_text_items(text)
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

impl CatalogFn {
    fn objects(&self) -> PgObjects {
        PgObjects::from_catalog(&self.view.catalog())
    }

    fn relation_text(
        &self,
        arg: &ArrayRef,
        f: impl Fn(&PgRelation, i32) -> Option<String>,
    ) -> DfResult<ColumnarValue> {
        let objects = self.objects();
        let values = oids(arg)?
            .into_iter()
            .map(|oid| oid.and_then(|oid| objects.relation(oid).and_then(|r| f(r, oid))))
            .collect();
        Ok(text_result(values))
    }
}

impl ScalarUDFImpl for CatalogFn {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.kind {
            Kind::TableIsVisible | Kind::FunctionIsVisible => DataType::Boolean,
            Kind::ToRegtype | Kind::ToRegclass | Kind::RegclassOid => DataType::Int32,
            Kind::EmptyIfNull => args[0].clone(),
            Kind::FormatOptions | Kind::PrefixItems => {
                DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true)))
            }
            _ => DataType::Utf8,
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let arrays: Vec<ArrayRef> = args
            .args
            .iter()
            .map(|a| a.to_array(rows))
            .collect::<DfResult<_>>()?;
        match self.kind {
            Kind::UserById => {
                let objects = self.objects();
                Ok(text_result(
                    oids(&arrays[0])?
                        .into_iter()
                        .map(|o| o.and_then(|o| objects.role_name(o)))
                        .collect(),
                ))
            }
            Kind::TableIsVisible => {
                let objects = self.objects();
                let path = self.info.settings.read().search_path(&self.info.user);
                let visible: BooleanArray = oids(&arrays[0])?
                    .into_iter()
                    .map(|oid| {
                        let oid = oid?;
                        Some(match objects.relation(oid) {
                            // The first schema of the path holding the name wins.
                            Some(r) => path
                                .iter()
                                .find(|s| {
                                    objects.relations.iter().any(|o| {
                                        &o.schema == *s
                                            && (o.name == r.name
                                                || o.indexes.iter().any(|i| i.name == r.name))
                                    })
                                })
                                .is_some_and(|s| *s == r.schema),
                            // PostgreSQL's own relations live in pg_catalog, always searched.
                            None => oid < 16384,
                        })
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(visible)))
            }
            Kind::FunctionIsVisible => {
                let visible: BooleanArray = oids(&arrays[0])?
                    .into_iter()
                    .map(|o| o.map(|_| true))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(visible)))
            }
            Kind::IndexDef => {
                // With a column number, the definition of that index column.
                let column = match arrays.get(1) {
                    Some(a) => oids(a)?,
                    None => vec![Some(0); rows],
                };
                let objects = self.objects();
                let values = oids(&arrays[0])?
                    .into_iter()
                    .zip(column)
                    .map(|(oid, column)| {
                        let r = objects.relation(oid?)?;
                        let index = r.index(oid?)?;
                        match column? {
                            0 => Some(index_def(r, index)),
                            n => r.column_names(&index.columns).get(n as usize - 1).cloned(),
                        }
                    })
                    .collect();
                Ok(text_result(values))
            }
            Kind::ConstraintDef => {
                // Pretty (the second argument true): a CHECK's condition without the
                // parentheses PostgreSQL's stored form adds.
                let pretty = arrays
                    .get(1)
                    .and_then(|a| a.as_boolean_opt().map(|b| !b.is_empty() && b.value(0)))
                    .unwrap_or(false);
                self.relation_text(&arrays[0], |r, oid| {
                    r.constraint(oid).map(|c| match (&c.check, pretty) {
                        (Some(check), true) => format!("CHECK ({check})"),
                        _ => c.definition.clone(),
                    })
                })
            }
            // Defaults are stored as their SQL text.
            Kind::Expr => Ok(text_result(texts(&arrays[0])?)),
            Kind::ViewDef => {
                if arrays[0].data_type() == &DataType::Utf8 {
                    let objects = self.objects();
                    let values = texts(&arrays[0])?
                        .into_iter()
                        .map(|name| {
                            let name = name?;
                            let (schema, name) = match name.split_once('.') {
                                Some((s, n)) => (Some(s.to_string()), n.to_string()),
                                None => (None, name),
                            };
                            objects
                                .relations
                                .iter()
                                .find(|r| {
                                    r.name == name && schema.as_ref().is_none_or(|s| *s == r.schema)
                                })
                                .and_then(|r| r.definition.clone())
                        })
                        .collect();
                    return Ok(text_result(values));
                }
                self.relation_text(&arrays[0], |r, _| r.definition.clone())
            }
            Kind::SharedDescription | Kind::FunctionSignature => Ok(text_result(vec![None; rows])),
            Kind::Description => {
                let objects = self.objects();
                let values = oids(&arrays[0])?
                    .into_iter()
                    .map(|oid| {
                        let oid = oid?;
                        let r = objects.relation(oid)?;
                        match r.oid == oid {
                            true => r.comment.clone(),
                            false => r.index(oid).and_then(|i| i.comment.clone()),
                        }
                    })
                    .collect();
                Ok(text_result(values))
            }
            Kind::ColumnDescription => {
                let objects = self.objects();
                let values = oids(&arrays[0])?
                    .into_iter()
                    .zip(oids(&arrays[1])?)
                    .map(|(oid, column)| {
                        let (oid, column) = (oid?, column?);
                        let r = objects.relation(oid).filter(|r| r.oid == oid)?;
                        r.column_comments
                            .iter()
                            .find(|(i, _)| *i as i32 + 1 == column)
                            .map(|(_, c)| c.clone())
                    })
                    .collect();
                Ok(text_result(values))
            }
            Kind::RegclassOid | Kind::RegclassText => {
                let objects = self.objects();
                let path = self.info.settings.read().search_path(&self.info.user);
                let numeric = arrays[0].data_type().is_integer();
                let texts = texts(&arrays[0])?;
                let mut found = Vec::with_capacity(texts.len());
                for value in texts {
                    let Some(value) = value else {
                        found.push(None);
                        continue;
                    };
                    let relation = match value.parse::<i32>() {
                        Ok(oid) => objects.relation(oid).filter(|r| r.oid == oid),
                        Err(_) => {
                            let (schemas, name) = match value.split_once('.') {
                                Some((s, n)) => (vec![unquote(s)], unquote(n)),
                                None => (path.clone(), unquote(&value)),
                            };
                            let r = schemas.iter().find_map(|s| {
                                objects
                                    .relations
                                    .iter()
                                    .find(|r| r.schema == *s && r.name == name)
                            });
                            if r.is_none()
                                && let Some(oid) = system_catalog_oid(&schemas, &name)
                            {
                                found.push(Some(match self.kind {
                                    Kind::RegclassOid => oid.to_string(),
                                    _ => name,
                                }));
                                continue;
                            }
                            if r.is_none() && !numeric {
                                return Err(crate::error::to_df(
                                    crate::error::Error::undefined_table(name),
                                ));
                            }
                            r
                        }
                    };
                    found.push(match (self.kind, relation) {
                        (Kind::RegclassOid, Some(r)) => Some(r.oid.to_string()),
                        (Kind::RegclassOid, None) => {
                            value.parse::<i32>().ok().map(|o| o.to_string())
                        }
                        (_, Some(r)) => {
                            let visible = path
                                .iter()
                                .find(|s| {
                                    objects
                                        .relations
                                        .iter()
                                        .any(|o| &o.schema == *s && o.name == r.name)
                                })
                                .is_some_and(|s| *s == r.schema);
                            Some(if visible {
                                quote_ident(&r.name)
                            } else {
                                r.qualified_name()
                            })
                        }
                        (_, None) => Some(value),
                    });
                }
                if self.kind == Kind::RegclassOid {
                    let oids: datafusion::arrow::array::Int32Array = found
                        .into_iter()
                        .map(|v| v.and_then(|v| v.parse::<i32>().ok()))
                        .collect();
                    return Ok(ColumnarValue::Array(Arc::new(oids)));
                }
                Ok(text_result(found))
            }
            Kind::FormatOptions => Ok(list_result(
                texts(&arrays[0])?
                    .into_iter()
                    .map(|options| {
                        Some(
                            array_items(&options?)
                                .into_iter()
                                .map(|item| {
                                    let (k, v) = item.split_once('=').unwrap_or((&item, ""));
                                    format!("{} {}", quote_ident(k), quote_literal(v))
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            )),
            Kind::PrefixItems => {
                let prefixes = texts(&arrays[0])?;
                let items: Vec<Option<Vec<String>>> = match arrays[1].data_type() {
                    DataType::List(_) => {
                        let list = arrays[1].as_list::<i32>();
                        (0..list.len())
                            .map(|i| {
                                (!list.is_null(i)).then(|| {
                                    texts(&list.value(i))
                                        .unwrap_or_default()
                                        .into_iter()
                                        .flatten()
                                        .collect()
                                })
                            })
                            .collect()
                    }
                    _ => texts(&arrays[1])?
                        .into_iter()
                        .map(|t| t.map(|t| array_items(&t)))
                        .collect(),
                };
                Ok(list_result(
                    prefixes
                        .into_iter()
                        .zip(items)
                        .map(|(p, items)| {
                            let p = p?;
                            Some(items?.into_iter().map(|i| format!("{p}{i}")).collect())
                        })
                        .collect(),
                ))
            }
            Kind::ToRegtype => {
                let types = super::statics();
                let oids: datafusion::arrow::array::Int32Array = texts(&arrays[0])?
                    .into_iter()
                    .map(|name| type_oid(&types.pg_type, &name?))
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(oids)))
            }
            Kind::ToRegclass => {
                let objects = self.objects();
                let path = self.info.settings.read().search_path(&self.info.user);
                let oids: datafusion::arrow::array::Int32Array = texts(&arrays[0])?
                    .into_iter()
                    .map(|name| {
                        let name = name?;
                        let (schemas, name) = match name.split_once('.') {
                            Some((s, n)) => (vec![s.to_string()], n.to_string()),
                            None => (path.clone(), name),
                        };
                        schemas.iter().find_map(|s| {
                            objects
                                .relations
                                .iter()
                                .find(|r| r.schema == *s && r.name == name)
                                .map(|r| r.oid)
                        })
                    })
                    .collect();
                Ok(ColumnarValue::Array(Arc::new(oids)))
            }
            Kind::EncodingToChar => Ok(text_result(
                oids(&arrays[0])?
                    .into_iter()
                    .map(|e| {
                        e.map(|e| match e {
                            0 => "SQL_ASCII".to_string(),
                            6 => "UTF8".to_string(),
                            8 => "LATIN1".to_string(),
                            _ => String::new(),
                        })
                    })
                    .collect(),
            )),
            Kind::EmptyIfNull => {
                let array = &arrays[0];
                let DataType::List(field) = array.data_type() else {
                    return Ok(ColumnarValue::Array(array.clone()));
                };
                let list = array.as_list::<i32>();
                if list.null_count() == 0 {
                    return Ok(ColumnarValue::Array(array.clone()));
                }
                let values = if list.values().is_empty() {
                    new_empty_array(field.data_type())
                } else {
                    list.values().clone()
                };
                let out = ListArray::try_new(
                    field.clone(),
                    OffsetBuffer::new(list.offsets().inner().clone()),
                    values,
                    None,
                )?;
                Ok(ColumnarValue::Array(Arc::new(out)))
            }
        }
    }
}

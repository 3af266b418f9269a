//! `information_schema`: the SQL-standard views of the catalog that Grafana's query builder,
//! DBeaver and migration tools read, with PostgreSQL's type names.
//!
//! It lists what a query can read: tables, views, materialized views, push sources, streams
//! and dead-letter tables. Sinks, models and sources that read a connector store no rows, so
//! they are left out (psql's `\d` still shows them).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::datasource::MemTable;
use datafusion::error::Result as DfResult;

use super::objects::{PgColumn, PgObjects, PgRelation};
use super::rows::{self, Row, V};
use crate::engine::catalog_provider::SessionView;

const TABLES: &[&str] = &[
    "schemata",
    "tables",
    "columns",
    "views",
    "table_constraints",
    "key_column_usage",
    "referential_constraints",
    "constraint_column_usage",
    "check_constraints",
    "sequences",
];

pub struct InformationSchema {
    pub view: Arc<SessionView>,
}

impl std::fmt::Debug for InformationSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InformationSchema")
    }
}

#[async_trait]
impl SchemaProvider for InformationSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        let name = name.to_ascii_lowercase();
        if !TABLES.contains(&name.as_str()) {
            return Ok(None);
        }
        let objects = PgObjects::load(&self.view).await;
        let batch = build(&name, &objects, &self.view.database)?;
        Ok(Some(Arc::new(MemTable::try_new(
            batch.schema(),
            vec![vec![batch]],
        )?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name.to_ascii_lowercase().as_str())
    }
}

/// Every constraint of every table, with its table.
fn constraints(
    o: &PgObjects,
) -> impl Iterator<Item = (&PgRelation, &super::objects::PgConstraint)> {
    o.relations
        .iter()
        .flat_map(|r| r.constraints.iter().map(move |c| (r, c)))
}

/// Whether SELECT can read the relation.
fn queryable(r: &PgRelation) -> bool {
    match r.kind {
        'r' | 'v' | 'm' => true,
        'f' => matches!(r.server.as_deref(), Some("push" | "stream")),
        _ => false,
    }
}

fn table_type(r: &PgRelation) -> &'static str {
    match r.kind {
        'v' => "VIEW",
        'm' => "MATERIALIZED VIEW",
        'f' => "FOREIGN",
        _ => "BASE TABLE",
    }
}

/// `data_type` and `udt_name` of a column, as PostgreSQL's information_schema spells them.
fn type_names(c: &PgColumn) -> (&'static str, &'static str) {
    match c.ty.oid {
        16 => ("boolean", "bool"),
        17 => ("bytea", "bytea"),
        20 => ("bigint", "int8"),
        21 => ("smallint", "int2"),
        23 => ("integer", "int4"),
        25 => ("text", "text"),
        700 => ("real", "float4"),
        701 => ("double precision", "float8"),
        1043 => ("character varying", "varchar"),
        1082 => ("date", "date"),
        1114 => ("timestamp without time zone", "timestamp"),
        1184 => ("timestamp with time zone", "timestamptz"),
        1186 => ("interval", "interval"),
        1700 => ("numeric", "numeric"),
        2950 => ("uuid", "uuid"),
        3802 => ("jsonb", "jsonb"),
        _ => ("text", "text"),
    }
}

fn yes_no(b: bool) -> V {
    V::Text(if b { "YES" } else { "NO" }.to_string())
}

fn build(
    name: &str,
    o: &PgObjects,
    database: &str,
) -> DfResult<datafusion::arrow::array::RecordBatch> {
    let text = || DataType::Utf8;
    let int = || DataType::Int32;
    match name {
        "schemata" => {
            let schema = rows::schema(&[
                ("catalog_name", text()),
                ("schema_name", text()),
                ("schema_owner", text()),
                ("default_character_set_catalog", text()),
                ("default_character_set_schema", text()),
                ("default_character_set_name", text()),
                ("sql_path", text()),
            ]);
            let mut names: Vec<(String, String)> = o
                .namespaces
                .iter()
                .map(|n| {
                    let owner = o.role_name(n.owner).unwrap_or_else(|| o.superuser());
                    (n.name.clone(), owner)
                })
                .collect();
            names.push(("pg_catalog".to_string(), o.superuser()));
            names.push(("information_schema".to_string(), o.superuser()));
            names.sort();
            let rows: Vec<Row> = names
                .into_iter()
                .map(|(n, owner)| {
                    vec![
                        ("catalog_name", database.into()),
                        ("schema_name", n.into()),
                        ("schema_owner", owner.into()),
                    ]
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "tables" => {
            let schema = rows::schema(&[
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("table_type", text()),
                ("self_referencing_column_name", text()),
                ("reference_generation", text()),
                ("user_defined_type_catalog", text()),
                ("user_defined_type_schema", text()),
                ("user_defined_type_name", text()),
                ("is_insertable_into", text()),
                ("is_typed", text()),
                ("commit_action", text()),
            ]);
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter(|r| queryable(r))
                .map(|r| {
                    vec![
                        ("table_catalog", database.into()),
                        ("table_schema", r.schema.clone().into()),
                        ("table_name", r.name.clone().into()),
                        ("table_type", table_type(r).into()),
                        (
                            "is_insertable_into",
                            yes_no(r.kind == 'r' || r.server.as_deref() == Some("push")),
                        ),
                        ("is_typed", "NO".into()),
                    ]
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "columns" => {
            let schema = rows::schema(&[
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("column_name", text()),
                ("ordinal_position", int()),
                ("column_default", text()),
                ("is_nullable", text()),
                ("data_type", text()),
                ("character_maximum_length", int()),
                ("character_octet_length", int()),
                ("numeric_precision", int()),
                ("numeric_precision_radix", int()),
                ("numeric_scale", int()),
                ("datetime_precision", int()),
                ("interval_type", text()),
                ("interval_precision", int()),
                ("character_set_catalog", text()),
                ("character_set_schema", text()),
                ("character_set_name", text()),
                ("collation_catalog", text()),
                ("collation_schema", text()),
                ("collation_name", text()),
                ("domain_catalog", text()),
                ("domain_schema", text()),
                ("domain_name", text()),
                ("udt_catalog", text()),
                ("udt_schema", text()),
                ("udt_name", text()),
                ("scope_catalog", text()),
                ("scope_schema", text()),
                ("scope_name", text()),
                ("maximum_cardinality", int()),
                ("dtd_identifier", text()),
                ("is_self_referencing", text()),
                ("is_identity", text()),
                ("identity_generation", text()),
                ("identity_start", text()),
                ("identity_increment", text()),
                ("identity_maximum", text()),
                ("identity_minimum", text()),
                ("identity_cycle", text()),
                ("is_generated", text()),
                ("generation_expression", text()),
                ("is_updatable", text()),
            ]);
            let mut rows: Vec<Row> = Vec::new();
            for r in o.relations.iter().filter(|r| queryable(r)) {
                for (i, c) in r.columns.iter().enumerate() {
                    let (data_type, udt) = type_names(c);
                    let numeric = |bits: i32| -> Vec<(&'static str, V)> {
                        vec![
                            ("numeric_precision", bits.into()),
                            ("numeric_precision_radix", 2.into()),
                            ("numeric_scale", 0.into()),
                        ]
                    };
                    let mut row: Row = vec![
                        ("table_catalog", database.into()),
                        ("table_schema", r.schema.clone().into()),
                        ("table_name", r.name.clone().into()),
                        ("column_name", c.name.clone().into()),
                        ("ordinal_position", (i as i32 + 1).into()),
                        ("column_default", c.default.clone().into()),
                        ("is_nullable", yes_no(!c.not_null)),
                        ("data_type", data_type.into()),
                        ("udt_catalog", database.into()),
                        ("udt_schema", "pg_catalog".into()),
                        ("udt_name", udt.into()),
                        ("dtd_identifier", (i + 1).to_string().into()),
                        ("is_self_referencing", "NO".into()),
                        ("is_identity", "NO".into()),
                        ("identity_cycle", "NO".into()),
                        ("is_generated", "NEVER".into()),
                        ("is_updatable", yes_no(r.kind == 'r')),
                    ];
                    let nulls = [
                        "character_maximum_length",
                        "character_octet_length",
                        "numeric_precision",
                        "numeric_precision_radix",
                        "numeric_scale",
                        "datetime_precision",
                        "interval_precision",
                        "maximum_cardinality",
                    ];
                    row.extend(nulls.iter().map(|n| (*n, V::Null)));
                    let set = |row: &mut Row, extra: Vec<(&'static str, V)>| {
                        for (k, v) in extra {
                            if let Some(slot) = row.iter_mut().find(|(n, _)| *n == k) {
                                slot.1 = v;
                            }
                        }
                    };
                    match c.ty.oid {
                        21 => set(&mut row, numeric(16)),
                        23 => set(&mut row, numeric(32)),
                        20 => set(&mut row, numeric(64)),
                        700 => set(&mut row, numeric(24)[..2].to_vec()),
                        701 => set(&mut row, numeric(53)[..2].to_vec()),
                        1700 if c.ty.typmod >= 4 => set(
                            &mut row,
                            vec![
                                ("numeric_precision", ((c.ty.typmod - 4) >> 16).into()),
                                ("numeric_precision_radix", 10.into()),
                                ("numeric_scale", ((c.ty.typmod - 4) & 0xffff).into()),
                            ],
                        ),
                        1700 => set(&mut row, vec![("numeric_precision_radix", 10.into())]),
                        25 => set(
                            &mut row,
                            vec![("character_octet_length", 1_073_741_824.into())],
                        ),
                        1043 => {
                            let n = (c.ty.typmod >= 4).then(|| c.ty.typmod - 4);
                            set(
                                &mut row,
                                vec![
                                    ("character_maximum_length", n.into()),
                                    (
                                        "character_octet_length",
                                        n.map_or(1_073_741_824, |n| n * 4).into(),
                                    ),
                                ],
                            )
                        }
                        1082 => set(&mut row, vec![("datetime_precision", 0.into())]),
                        1114 | 1184 | 1186 => set(&mut row, vec![("datetime_precision", 6.into())]),
                        _ => {}
                    }
                    rows.push(row);
                }
            }
            rows::batch(&schema, &rows)
        }
        "table_constraints" => {
            let schema = rows::schema(&[
                ("constraint_catalog", text()),
                ("constraint_schema", text()),
                ("constraint_name", text()),
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("constraint_type", text()),
                ("is_deferrable", text()),
                ("initially_deferred", text()),
                ("enforced", text()),
                ("nulls_distinct", text()),
            ]);
            let rows: Vec<Row> = constraints(o)
                .map(|(r, c)| {
                    let kind = match c.kind {
                        'p' => "PRIMARY KEY",
                        'u' => "UNIQUE",
                        'f' => "FOREIGN KEY",
                        _ => "CHECK",
                    };
                    vec![
                        ("constraint_catalog", database.into()),
                        ("constraint_schema", r.schema.clone().into()),
                        ("constraint_name", c.name.clone().into()),
                        ("table_catalog", database.into()),
                        ("table_schema", r.schema.clone().into()),
                        ("table_name", r.name.clone().into()),
                        ("constraint_type", kind.into()),
                        ("is_deferrable", "NO".into()),
                        ("initially_deferred", "NO".into()),
                        ("enforced", "YES".into()),
                        ("nulls_distinct", (c.kind == 'u').then_some("YES").into()),
                    ]
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "key_column_usage" => {
            let schema = rows::schema(&[
                ("constraint_catalog", text()),
                ("constraint_schema", text()),
                ("constraint_name", text()),
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("column_name", text()),
                ("ordinal_position", int()),
                ("position_in_unique_constraint", int()),
            ]);
            let mut rows: Vec<Row> = Vec::new();
            for (r, c) in constraints(o).filter(|(_, c)| matches!(c.kind, 'p' | 'u' | 'f')) {
                for (i, &col) in c.columns.iter().enumerate() {
                    rows.push(vec![
                        ("constraint_catalog", database.into()),
                        ("constraint_schema", r.schema.clone().into()),
                        ("constraint_name", c.name.clone().into()),
                        ("table_catalog", database.into()),
                        ("table_schema", r.schema.clone().into()),
                        ("table_name", r.name.clone().into()),
                        ("column_name", r.columns[col].name.clone().into()),
                        ("ordinal_position", (i as i32 + 1).into()),
                        (
                            "position_in_unique_constraint",
                            c.foreign.as_ref().map(|_| i as i32 + 1).into(),
                        ),
                    ]);
                }
            }
            rows::batch(&schema, &rows)
        }
        "referential_constraints" => {
            let schema = rows::schema(&[
                ("constraint_catalog", text()),
                ("constraint_schema", text()),
                ("constraint_name", text()),
                ("unique_constraint_catalog", text()),
                ("unique_constraint_schema", text()),
                ("unique_constraint_name", text()),
                ("match_option", text()),
                ("update_rule", text()),
                ("delete_rule", text()),
            ]);
            let rule = |code: char| match code {
                'c' => "CASCADE",
                'n' => "SET NULL",
                'd' => "SET DEFAULT",
                'r' => "RESTRICT",
                _ => "NO ACTION",
            };
            let rows: Vec<Row> = constraints(o)
                .filter_map(|(r, c)| {
                    let f = c.foreign.as_ref()?;
                    let referenced = o.relation(f.table);
                    let unique = referenced.and_then(|p| {
                        p.constraints
                            .iter()
                            .find(|u| u.index.is_some() && u.index == c.index)
                    });
                    Some(vec![
                        ("constraint_catalog", database.into()),
                        ("constraint_schema", r.schema.clone().into()),
                        ("constraint_name", c.name.clone().into()),
                        ("unique_constraint_catalog", database.into()),
                        (
                            "unique_constraint_schema",
                            referenced.map(|p| p.schema.clone()).into(),
                        ),
                        (
                            "unique_constraint_name",
                            unique.map(|u| u.name.clone()).into(),
                        ),
                        ("match_option", "NONE".into()),
                        ("update_rule", rule(f.on_update).into()),
                        ("delete_rule", rule(f.on_delete).into()),
                    ])
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "constraint_column_usage" => {
            let schema = rows::schema(&[
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("column_name", text()),
                ("constraint_catalog", text()),
                ("constraint_schema", text()),
                ("constraint_name", text()),
            ]);
            let mut rows: Vec<Row> = Vec::new();
            for (r, c) in constraints(o) {
                // A foreign key uses the referenced table's columns.
                let (table, columns) = match &c.foreign {
                    Some(f) => match o.relation(f.table) {
                        Some(p) => (p, f.columns.clone()),
                        None => continue,
                    },
                    None => (r, c.columns.clone()),
                };
                for col in columns {
                    rows.push(vec![
                        ("table_catalog", database.into()),
                        ("table_schema", table.schema.clone().into()),
                        ("table_name", table.name.clone().into()),
                        ("column_name", table.columns[col].name.clone().into()),
                        ("constraint_catalog", database.into()),
                        ("constraint_schema", r.schema.clone().into()),
                        ("constraint_name", c.name.clone().into()),
                    ]);
                }
            }
            rows::batch(&schema, &rows)
        }
        "check_constraints" => {
            let schema = rows::schema(&[
                ("constraint_catalog", text()),
                ("constraint_schema", text()),
                ("constraint_name", text()),
                ("check_clause", text()),
            ]);
            let rows: Vec<Row> = constraints(o)
                .filter_map(|(r, c)| {
                    let check = c.check.as_ref()?;
                    Some(vec![
                        ("constraint_catalog", database.into()),
                        ("constraint_schema", r.schema.clone().into()),
                        ("constraint_name", c.name.clone().into()),
                        ("check_clause", format!("(({check}))").into()),
                    ])
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "sequences" => {
            let schema = rows::schema(&[
                ("sequence_catalog", text()),
                ("sequence_schema", text()),
                ("sequence_name", text()),
                ("data_type", text()),
                ("numeric_precision", int()),
                ("numeric_precision_radix", int()),
                ("numeric_scale", int()),
                ("start_value", text()),
                ("minimum_value", text()),
                ("maximum_value", text()),
                ("increment", text()),
                ("cycle_option", text()),
            ]);
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter_map(|r| {
                    let q = r.sequence.as_ref()?;
                    // An identity column's sequence is part of the column, not listed.
                    let identity = q.owned_by.as_ref().is_some_and(|(table, column)| {
                        o.relation(super::objects::relation_oid(*table))
                            .and_then(|t| t.columns.iter().find(|c| c.name == *column))
                            .is_some_and(|c| c.identity.is_some())
                    });
                    if identity {
                        return None;
                    }
                    let (ty, bits) = match q.ty {
                        crate::types::SqlType::Int2 => ("smallint", 16),
                        crate::types::SqlType::Int4 => ("integer", 32),
                        _ => ("bigint", 64),
                    };
                    Some(vec![
                        ("sequence_catalog", database.into()),
                        ("sequence_schema", r.schema.clone().into()),
                        ("sequence_name", r.name.clone().into()),
                        ("data_type", ty.into()),
                        ("numeric_precision", bits.into()),
                        ("numeric_precision_radix", 2.into()),
                        ("numeric_scale", 0.into()),
                        ("start_value", q.start.to_string().into()),
                        ("minimum_value", q.min.to_string().into()),
                        ("maximum_value", q.max.to_string().into()),
                        ("increment", q.increment.to_string().into()),
                        ("cycle_option", if q.cycle { "YES" } else { "NO" }.into()),
                    ])
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        "views" => {
            let schema = rows::schema(&[
                ("table_catalog", text()),
                ("table_schema", text()),
                ("table_name", text()),
                ("view_definition", text()),
                ("check_option", text()),
                ("is_updatable", text()),
                ("is_insertable_into", text()),
                ("is_trigger_updatable", text()),
                ("is_trigger_deletable", text()),
                ("is_trigger_insertable_into", text()),
            ]);
            let rows: Vec<Row> = o
                .relations
                .iter()
                .filter(|r| r.kind == 'v')
                .map(|r| {
                    vec![
                        ("table_catalog", database.into()),
                        ("table_schema", r.schema.clone().into()),
                        ("table_name", r.name.clone().into()),
                        ("view_definition", r.definition.clone().into()),
                        ("check_option", "NONE".into()),
                        ("is_updatable", "NO".into()),
                        ("is_insertable_into", "NO".into()),
                        ("is_trigger_updatable", "NO".into()),
                        ("is_trigger_deletable", "NO".into()),
                        ("is_trigger_insertable_into", "NO".into()),
                    ]
                })
                .collect();
            rows::batch(&schema, &rows)
        }
        _ => unreachable!("only information_schema's tables reach here"),
    }
}

//! What a change to referenced rows does to the rows that reference them: the ON DELETE and
//! ON UPDATE actions of foreign keys. Each runs as a statement of its own in the same
//! transaction, after the statement that changed the referenced rows (so a referencing row
//! that the statement itself removed no longer counts, as with PostgreSQL's NO ACTION).

use datafusion::arrow::array::Array;
use datafusion::arrow::util::display::array_value_to_string;
use futures::StreamExt;

use super::constraints::{FOREIGN_KEY_VIOLATION, changed_rows, literal, referencing_condition};
use super::dml::Written;
use super::pg_catalog::quote_ident;
use super::session::{QueryOutput, Session};
use crate::catalog::{Catalog, FkAction, TableDef};
use crate::error::{Error, Result};

fn qualified(def: &TableDef) -> String {
    format!("{}.{}", quote_ident(&def.schema), quote_ident(&def.name))
}

/// Applies the foreign keys' actions for one batch of updated or deleted rows of `def`.
pub async fn parent_changed(
    session: &Session,
    catalog: &Catalog,
    def: &TableDef,
    written: &Written,
) -> Result<()> {
    let Some(old) = &written.old else {
        return Ok(()); // inserted rows are referenced by nothing yet
    };
    for (child, fk) in super::constraints::referencing_keys(catalog, def) {
        let rows: Vec<usize> = match &written.new {
            None => (0..old.num_rows()).collect(),
            Some(new) => changed_rows(&fk.ref_columns, old.columns(), new.columns()),
        };
        if rows.is_empty() {
            continue;
        }
        let deleting = written.new.is_none();
        let action = if deleting { fk.on_delete } else { fk.on_update };
        let Some(condition) = referencing_condition(&child, &fk, def, old.columns(), &rows)? else {
            continue;
        };
        let table = qualified(&child);
        let fk_columns: Vec<String> = fk
            .columns
            .iter()
            .map(|&c| quote_ident(&child.columns[c].name))
            .collect();
        match action {
            FkAction::Cascade if deleting => {
                session
                    .run_nested(format!("DELETE FROM {table} WHERE {condition}"))
                    .await?;
            }
            FkAction::Cascade => {
                // Each changed key moves its referencing rows to the new key.
                let new = written.new.as_ref().expect("an update has new rows");
                for &row in &rows {
                    let Some(one) = referencing_condition(&child, &fk, def, old.columns(), &[row])?
                    else {
                        continue;
                    };
                    let sets = fk
                        .columns
                        .iter()
                        .zip(&fk.ref_columns)
                        .map(|(&c, &r)| {
                            Ok(format!(
                                "{} = {}",
                                quote_ident(&child.columns[c].name),
                                literal(new.column(r), row, &child.columns[c].ty)?
                            ))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    session
                        .run_nested(format!(
                            "UPDATE {table} SET {} WHERE {one}",
                            sets.join(", ")
                        ))
                        .await?;
                }
            }
            FkAction::SetNull | FkAction::SetDefault => {
                let sets: Vec<String> = fk
                    .columns
                    .iter()
                    .map(|&c| {
                        let column = &child.columns[c];
                        let value = match (action, &column.default) {
                            (FkAction::SetDefault, Some(d)) => d.clone(),
                            _ => "NULL".to_string(),
                        };
                        format!("{} = {value}", quote_ident(&column.name))
                    })
                    .collect();
                session
                    .run_nested(format!(
                        "UPDATE {table} SET {} WHERE {condition}",
                        sets.join(", ")
                    ))
                    .await?;
            }
            FkAction::NoAction | FkAction::Restrict => {
                let output = session
                    .run_nested(format!(
                        "SELECT {} FROM {table} WHERE {condition} LIMIT 1",
                        fk_columns.join(", ")
                    ))
                    .await?;
                let QueryOutput::Rows { mut stream, .. } = output else {
                    return Err(Error::internal("a SELECT returned no rows"));
                };
                while let Some(batch) = stream.next().await {
                    let batch = batch?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let names: Vec<&str> = fk
                        .ref_columns
                        .iter()
                        .map(|&r| def.columns[r].name.as_str())
                        .collect();
                    let values: Vec<String> = batch
                        .columns()
                        .iter()
                        .map(|a| {
                            if a.is_null(0) {
                                "null".to_string()
                            } else {
                                array_value_to_string(a, 0).unwrap_or_default()
                            }
                        })
                        .collect();
                    return Err(Error::user(
                        FOREIGN_KEY_VIOLATION,
                        format!(
                            "update or delete on table \"{}\" violates foreign key constraint \"{}\" on table \"{}\"",
                            def.name, fk.name, child.name
                        ),
                    )
                    .with_detail(format!(
                        "Key ({})=({}) is still referenced from table \"{}\".",
                        names.join(", "),
                        values.join(", "),
                        child.name
                    ))
                    .with_constraint(&child.schema, &child.name, &fk.name));
                }
            }
        }
    }
    Ok(())
}

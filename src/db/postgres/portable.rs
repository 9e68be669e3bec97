//! Portable rows ([`crate::db::portable`]) in and out of PostgreSQL, for
//! `united-hub migrate`.

use deadpool_postgres::Client;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::db::portable::{Kind, Row as PortableRow, Table, Value};
use crate::db::DbError;

/// Rows of `table` in key order, after `after` (from the start without it).
pub async fn export_page(
    client: &Client,
    table: &Table,
    after: Option<&Value>,
    limit: u32,
) -> Result<Vec<PortableRow>, DbError> {
    let (cols, name, key) = (table.column_list(), table.name, table.key);
    let limit = limit as i64;
    let rows = match after {
        None => {
            let sql = format!("SELECT {cols} FROM {name} ORDER BY {key} LIMIT $1");
            client.query(&sql, &[&limit]).await?
        }
        Some(after) => {
            let sql = format!("SELECT {cols} FROM {name} WHERE {key} > $2 ORDER BY {key} LIMIT $1");
            let after = param(after, table.columns[0].1);
            client.query(&sql, &[&limit, &*after]).await?
        }
    };
    rows.iter().map(|r| portable_row(r, table)).collect()
}

/// How many rows `table` holds.
pub async fn count_rows(client: &Client, table: &Table) -> Result<u64, DbError> {
    let sql = format!("SELECT count(*) FROM {}", table.name);
    Ok(client.query_one(&sql, &[]).await?.try_get::<_, i64>(0)? as u64)
}

/// Inserts rows of `table` as they are, in one statement.
pub async fn import_rows(
    client: &mut Client,
    table: &Table,
    rows: &[PortableRow],
) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let width = table.columns.len();
    let tuples: Vec<String> = (0..rows.len())
        .map(|r| {
            let cells: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", cells.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {} ({}) VALUES {}",
        table.name,
        table.column_list(),
        tuples.join(", ")
    );
    let params: Vec<Box<dyn ToSql + Sync + Send>> = rows
        .iter()
        .flat_map(|row| {
            row.iter()
                .zip(table.columns)
                .map(|(v, (_, k))| param(v, *k))
        })
        .collect();
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    let tx = client.transaction().await?;
    tx.execute(&sql, &refs).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes every row of the portable tables, children first, in one
/// transaction (`united-hub migrate --replace`).
pub async fn clear_tables(client: &mut Client, tables: &[Table]) -> Result<u64, DbError> {
    let tx = client.transaction().await?;
    let mut deleted = 0;
    for table in tables.iter().rev() {
        deleted += tx
            .execute(&format!("DELETE FROM {}", table.name), &[])
            .await?;
    }
    tx.commit().await?;
    Ok(deleted)
}

/// After an import: each conversation's `last_seq` from its messages, and
/// the offline queue's id sequence past the ids copied.
pub async fn finish_import(client: &Client) -> Result<(), DbError> {
    client
        .batch_execute(
            "UPDATE dm_conversations c SET last_seq = COALESCE( \
                 (SELECT MAX(server_sequence) FROM dm_messages m WHERE m.conversation_id = c.id), 0); \
             SELECT setval(pg_get_serial_sequence('dm_offline_queue', 'id'), \
                 COALESCE((SELECT MAX(id) FROM dm_offline_queue), 0) + 1, false);",
        )
        .await?;
    Ok(())
}

fn portable_row(r: &Row, table: &Table) -> Result<PortableRow, DbError> {
    let or_null = |v: Option<Value>| v.unwrap_or(Value::Null);
    (table.columns.iter().enumerate())
        .map(|(i, (_, kind))| {
            Ok(match kind {
                Kind::Text => Value::Text(r.try_get(i)?),
                Kind::OptText => or_null(r.try_get::<_, Option<String>>(i)?.map(Value::Text)),
                Kind::Int => Value::Int(r.try_get(i)?),
                Kind::OptInt => or_null(r.try_get::<_, Option<i64>>(i)?.map(Value::Int)),
                Kind::Blob => Value::Blob(r.try_get(i)?),
                Kind::OptBlob => or_null(r.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob)),
                Kind::Uuid => Value::Uuid(r.try_get(i)?),
                Kind::Bool => Value::Bool(r.try_get(i)?),
            })
        })
        .collect()
}

/// A portable value as a parameter of the column's type (a `NULL` needs
/// the type too).
fn param(v: &Value, kind: Kind) -> Box<dyn ToSql + Sync + Send> {
    match (v, kind) {
        (Value::Null, Kind::OptInt | Kind::Int) => Box::new(None::<i64>),
        (Value::Null, Kind::OptBlob | Kind::Blob) => Box::new(None::<Vec<u8>>),
        (Value::Null, Kind::Uuid) => Box::new(None::<uuid::Uuid>),
        (Value::Null, Kind::Bool) => Box::new(None::<bool>),
        (Value::Null, Kind::Text | Kind::OptText) => Box::new(None::<String>),
        (Value::Int(n), _) => Box::new(*n),
        (Value::Text(s), _) => Box::new(s.clone()),
        (Value::Blob(b), _) => Box::new(b.clone()),
        (Value::Uuid(u), _) => Box::new(*u),
        (Value::Bool(b), _) => Box::new(*b),
    }
}

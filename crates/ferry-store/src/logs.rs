//! Task logs kept within `workflow.log_rotation_size`: past it, a task's oldest lines move
//! into gzip-compressed archive rows (JSON lines, with the id range they cover; at most
//! `ARCHIVE_BYTES` of messages each), each in the same transaction that deletes its lines from
//! `task_logs`; reading a task's log serves archived lines first, in id order, so `ferry logs`
//! (and following) sees the whole log either way. Rotating and reading hold a bounded number
//! of lines in memory, whatever the log's size.

use std::io::{BufRead, BufReader, Write};

use chrono::{DateTime, Utc};
use flate2::Compression;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set, TransactionTrait,
};

use crate::entity::{task_log, task_log_archive};
use crate::{Result, Store, StoreError};

fn corrupt(archive: i64, detail: impl std::fmt::Display) -> StoreError {
    StoreError::CorruptLogArchive {
        archive,
        message: detail.to_string(),
    }
}

/// Gzip of one JSON object per line.
fn encode(lines: &[task_log::Model]) -> std::io::Result<Vec<u8>> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    for l in lines {
        let row = serde_json::json!({
            "id": l.id,
            "step": l.step_name,
            "ts": l.ts.to_rfc3339(),
            "level": l.level,
            "source": l.source,
            "message": l.message,
        });
        serde_json::to_writer(&mut gz, &row)?;
        gz.write_all(b"\n")?;
    }
    gz.finish()
}

/// Every line of an archive (tests, and readers that want it all).
#[cfg(test)]
fn decode(a: &task_log_archive::Model) -> Result<Vec<task_log::Model>> {
    let mut out = Vec::new();
    decode_into(a, i64::MIN, usize::MAX, &mut out)?;
    Ok(out)
}

/// Appends the archive's lines after `after_id` to `out` until it holds `limit`, reading
/// the archive as a stream: memory follows `limit`, not the archive's size.
fn decode_into(
    a: &task_log_archive::Model,
    after_id: i64,
    limit: usize,
    out: &mut Vec<task_log::Model>,
) -> Result<()> {
    let reader = BufReader::new(GzDecoder::new(a.data.as_slice()));
    for line in reader.lines() {
        if out.len() >= limit {
            return Ok(());
        }
        let line = line.map_err(|e| corrupt(a.id, e))?;
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| corrupt(a.id, e))?;
        let id = v["id"]
            .as_i64()
            .ok_or_else(|| corrupt(a.id, "a line without an id"))?;
        if id <= after_id {
            continue;
        }
        let field = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        out.push(task_log::Model {
            id,
            task_id: a.task_id,
            step_name: field("step"),
            ts: DateTime::parse_from_rfc3339(&field("ts"))
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| corrupt(a.id, e))?,
            level: field("level"),
            source: field("source"),
            message: field("message"),
        });
    }
    Ok(())
}

/// Lines read into memory at once when rotating, and the most message bytes one archive row
/// holds: rotation's memory stays within a few of these whatever the log's size.
const ROTATE_LINES: u64 = 10_000;
const ARCHIVE_BYTES: u64 = 8 * 1024 * 1024;

impl Store {
    /// A task's log lines after `after_id`, oldest first, at most `limit`: archived lines
    /// first, then those still in `task_logs`.
    pub async fn logs(
        &self,
        task_id: i64,
        after_id: i64,
        limit: u64,
    ) -> Result<Vec<task_log::Model>> {
        let limit = limit as usize;
        // The archives' ranges first; each archive's data is read only when its lines are.
        let archives: Vec<(i64, i64)> = task_log_archive::Entity::find()
            .select_only()
            .column(task_log_archive::Column::Id)
            .column(task_log_archive::Column::LastId)
            .filter(task_log_archive::Column::TaskId.eq(task_id))
            .filter(task_log_archive::Column::LastId.gt(after_id))
            .order_by_asc(task_log_archive::Column::FirstId)
            .into_tuple()
            .all(&self.db)
            .await?;
        let mut out = Vec::new();
        let mut after = after_id;
        for (id, last_id) in archives {
            if out.len() >= limit {
                return Ok(out);
            }
            after = after.max(last_id);
            let Some(a) = task_log_archive::Entity::find_by_id(id)
                .one(&self.db)
                .await?
            else {
                continue;
            };
            decode_into(&a, after_id, limit, &mut out)?;
        }
        if out.len() < limit {
            out.extend(
                task_log::Entity::find()
                    .filter(task_log::Column::TaskId.eq(task_id))
                    .filter(task_log::Column::Id.gt(after))
                    .order_by_asc(task_log::Column::Id)
                    .limit((limit - out.len()) as u64)
                    .all(&self.db)
                    .await?,
            );
        }
        Ok(out)
    }

    /// Tasks whose lines in `task_logs` hold more than `max_bytes` of messages.
    pub async fn tasks_over_log_size(&self, max_bytes: u64) -> Result<Vec<i64>> {
        Ok(task_log::Entity::find()
            .select_only()
            .column(task_log::Column::TaskId)
            .group_by(task_log::Column::TaskId)
            .having(Expr::cust(format!("SUM(LENGTH(message)) > {max_bytes}")))
            .into_tuple::<i64>()
            .all(&self.db)
            .await?)
    }

    /// Moves `task_id`'s oldest lines into compressed archives until at most half of
    /// `max_bytes` stays in `task_logs` (so rotation happens once per half a limit of new
    /// lines, not at every line). Returns the lines archived.
    pub async fn rotate_logs(&self, task_id: i64, max_bytes: u64) -> Result<u64> {
        let total = self.log_bytes(task_id).await?;
        if total <= max_bytes {
            return Ok(0);
        }
        let keep = max_bytes / 2;
        let (mut remaining, mut moved_total) = (total, 0u64);
        // Archive by pieces of at most ARCHIVE_BYTES, each in its own transaction (an archive
        // row and the deletion of its lines together).
        while remaining > keep {
            let txn = self.db.begin().await?;
            let lines = task_log::Entity::find()
                .filter(task_log::Column::TaskId.eq(task_id))
                .order_by_asc(task_log::Column::Id)
                .limit(ROTATE_LINES)
                .all(&txn)
                .await?;
            let (mut moved, mut bytes) = (0usize, 0u64);
            while moved < lines.len() && remaining - bytes > keep && bytes < ARCHIVE_BYTES {
                bytes += lines[moved].message.len() as u64;
                moved += 1;
            }
            let old = &lines[..moved];
            let (Some(first), Some(last)) = (old.first(), old.last()) else {
                break;
            };
            let data = encode(old).map_err(|e| corrupt(0, e))?;
            task_log_archive::Entity::insert(task_log_archive::ActiveModel {
                task_id: Set(task_id),
                first_id: Set(first.id),
                last_id: Set(last.id),
                lines: Set(moved as i64),
                bytes: Set(bytes as i64),
                data: Set(data),
                created_at: Set(Utc::now()),
                ..Default::default()
            })
            .exec_without_returning(&txn)
            .await?;
            task_log::Entity::delete_many()
                .filter(task_log::Column::TaskId.eq(task_id))
                .filter(task_log::Column::Id.lte(last.id))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            remaining = remaining.saturating_sub(bytes);
            moved_total += moved as u64;
        }
        Ok(moved_total)
    }

    /// The message bytes of `task_id`'s lines still in `task_logs`.
    async fn log_bytes(&self, task_id: i64) -> Result<u64> {
        let total: Option<i64> = task_log::Entity::find()
            .select_only()
            .column_as(Expr::cust("COALESCE(SUM(LENGTH(message)), 0)"), "total")
            .filter(task_log::Column::TaskId.eq(task_id))
            .into_tuple()
            .one(&self.db)
            .await?;
        Ok(total.unwrap_or(0).max(0) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archived_lines_come_back_as_they_were() {
        let lines: Vec<task_log::Model> = (1..=3)
            .map(|i| task_log::Model {
                id: i,
                task_id: 7,
                step_name: "train".into(),
                ts: Utc::now(),
                level: "INFO".into(),
                source: "stdout".into(),
                message: format!("epoch {i}: loss \"{}\"\nnext", 0.5 / i as f64),
            })
            .collect();
        let a = task_log_archive::Model {
            id: 1,
            task_id: 7,
            first_id: 1,
            last_id: 3,
            lines: 3,
            bytes: 0,
            data: encode(&lines).expect("encode"),
            created_at: Utc::now(),
        };
        let back = decode(&a).expect("decode");
        assert_eq!(back.len(), 3);
        for (x, y) in lines.iter().zip(&back) {
            assert_eq!(
                (x.id, &x.message, &x.step_name),
                (y.id, &y.message, &y.step_name)
            );
            assert_eq!(x.ts.timestamp_millis(), y.ts.timestamp_millis());
        }
        let broken = task_log_archive::Model {
            data: b"not gzip".to_vec(),
            ..a
        };
        assert!(decode(&broken).is_err());
    }
}

//! SQLite: one file, one table, written through a single connection.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use nekms_keys::{KeyRecord, KeySpec, Origin};
use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::alias::Alias;
use crate::{checked, Damaged, Entry, KeyStore, Page, StoreError};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS key_records (
    key_id             TEXT PRIMARY KEY NOT NULL,
    spec               TEXT NOT NULL,
    public_key         BLOB NOT NULL,
    kms_key_id         TEXT NOT NULL,
    encryption_context TEXT NOT NULL,
    encrypted_data_key BLOB NOT NULL,
    sealed_private_key BLOB NOT NULL,
    origin             TEXT NOT NULL,
    created_at         INTEGER NOT NULL,
    attestation        BLOB,
    migration          BLOB,
    deletion_date      INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS key_meta (
    key_id TEXT PRIMARY KEY NOT NULL,
    meta   TEXT NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS aliases (
    name    TEXT PRIMARY KEY NOT NULL,
    target  TEXT NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL
) STRICT;
";

const COLUMNS: &str =
    "key_id, spec, public_key, kms_key_id, encryption_context, encrypted_data_key, sealed_private_key, origin, created_at, \
                       attestation, migration, deletion_date";

/// Key records in a SQLite file.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
}

fn backend(e: rusqlite::Error) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            StoreError::Unavailable(e.to_string())
        }
        _ => StoreError::Backend(e.to_string()),
    }
}

/// A row: its key id, and the record with its deletion date or why it is damaged.
fn from_row(row: &Row<'_>) -> rusqlite::Result<(String, Result<Entry, StoreError>)> {
    let key_id: String = row.get(0)?;
    let entry = match read_row(row, &key_id) {
        Ok(r) => r.and_then(|(record, at)| checked(record).map(|r| (r, at))),
        Err(e) => Err(StoreError::Corrupt { key_id: key_id.clone(), reason: e.to_string() }),
    };
    Ok((key_id, entry))
}

fn read_row(row: &Row<'_>, key_id: &str) -> rusqlite::Result<Result<Entry, StoreError>> {
    let key_id = key_id.to_owned();
    let spec: String = row.get(1)?;
    let context: String = row.get(4)?;
    let origin: String = row.get(7)?;
    let corrupt = |reason: String| StoreError::Corrupt { key_id: key_id.clone(), reason };
    let spec = match spec.parse::<KeySpec>() {
        Ok(s) => s,
        Err(e) => return Ok(Err(corrupt(e.to_string()))),
    };
    let encryption_context = match serde_json::from_str::<BTreeMap<String, String>>(&context) {
        Ok(c) => c,
        Err(e) => return Ok(Err(corrupt(format!("encryption context: {e}")))),
    };
    let origin = match origin.parse::<Origin>() {
        Ok(o) => o,
        Err(e) => return Ok(Err(corrupt(e))),
    };
    let created_at: i64 = row.get(8)?;
    let deletion: Option<i64> = row.get(11)?;
    let record = KeyRecord {
        key_id: key_id.clone(),
        spec,
        public_key: row.get(2)?,
        kms_key_id: row.get(3)?,
        encryption_context,
        encrypted_data_key: row.get(5)?,
        sealed_private_key: row.get(6)?,
        origin,
        created_at: created_at.max(0) as u64,
        attestation: row.get(9)?,
        migration: row.get(10)?,
    };
    Ok(Ok((record, deletion.map(|d| d.max(0) as u64))))
}

impl SqliteStore {
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Backend(format!("{}: {e}", parent.display())))?;
        }
        let conn = Connection::open(path).map_err(|e| StoreError::Backend(format!("{}: {e}", path.display())))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        conn.execute_batch(SCHEMA).map_err(backend)?;
        // A store made before migrated records: add their column.
        let has_migration: bool = conn
            .query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('key_records') WHERE name = 'migration'", [], |r| r.get(0))
            .map_err(backend)?;
        if !has_migration {
            conn.execute_batch("ALTER TABLE key_records ADD COLUMN migration BLOB").map_err(backend)?;
        }
        // A store made before scheduled deletion: add its column.
        let has_deletion: bool = conn
            .query_row("SELECT COUNT(*) > 0 FROM pragma_table_info('key_records') WHERE name = 'deletion_date'", [], |r| r.get(0))
            .map_err(backend)?;
        if !has_deletion {
            conn.execute_batch("ALTER TABLE key_records ADD COLUMN deletion_date INTEGER").map_err(backend)?;
        }
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)) })
    }

    pub(crate) async fn meta(&self, key_id: &str) -> Result<Option<String>, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            c.query_row("SELECT meta FROM key_meta WHERE key_id = ?1", params![key_id], |r| r.get(0)).optional().map_err(backend)
        })
        .await
    }

    pub(crate) async fn put_meta(&self, key_id: &str, meta: String) -> Result<(), StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            c.execute(
                "INSERT INTO key_meta (key_id, meta) VALUES (?1, ?2) ON CONFLICT(key_id) DO UPDATE SET meta = excluded.meta",
                params![key_id, meta],
            )
            .map_err(backend)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn alias(&self, name: &str) -> Result<Option<Alias>, StoreError> {
        let name = name.to_owned();
        self.with(move |c| {
            c.query_row("SELECT name, target, created, updated FROM aliases WHERE name = ?1", params![name], |r| {
                Ok(Alias {
                    name: r.get(0)?,
                    target: r.get(1)?,
                    created: r.get::<_, i64>(2)?.max(0) as u64,
                    updated: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })
            .optional()
            .map_err(backend)
        })
        .await
    }

    pub(crate) async fn put_alias(&self, a: &Alias, replacing: Option<&str>) -> Result<bool, StoreError> {
        let (a, replacing) = (a.clone(), replacing.map(str::to_owned));
        self.with(move |c| {
            if let Some(old) = replacing {
                let n = c
                    .execute(
                        "UPDATE aliases SET target = ?2, updated = ?3 WHERE name = ?1 AND target = ?4",
                        params![a.name, a.target, a.updated as i64, old],
                    )
                    .map_err(backend)?;
                return Ok(n > 0);
            }
            match c.execute(
                "INSERT INTO aliases (name, target, created, updated) VALUES (?1, ?2, ?3, ?4)",
                params![a.name, a.target, a.created as i64, a.updated as i64],
            ) {
                Ok(_) => Ok(true),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Err(StoreError::Exists(a.name.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    pub(crate) async fn delete_alias(&self, name: &str, target: &str) -> Result<bool, StoreError> {
        let (name, target) = (name.to_owned(), target.to_owned());
        self.with(
            move |c| Ok(c.execute("DELETE FROM aliases WHERE name = ?1 AND target = ?2", params![name, target]).map_err(backend)? > 0),
        )
        .await
    }

    pub(crate) async fn aliases(&self) -> Result<Vec<Alias>, StoreError> {
        self.with(|c| {
            let mut stmt = c.prepare("SELECT name, target, created, updated FROM aliases ORDER BY name").map_err(backend)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(Alias {
                        name: r.get(0)?,
                        target: r.get(1)?,
                        created: r.get::<_, i64>(2)?.max(0) as u64,
                        updated: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                })
                .map_err(backend)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(backend)
        })
        .await
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let guard = conn.lock().unwrap_or_else(|p| p.into_inner());
            f(&guard)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("store task failed: {e}")))?
    }
}

impl KeyStore for SqliteStore {
    async fn create(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let r = record.clone();
        self.with(move |c| {
            let context = serde_json::to_string(&r.encryption_context).expect("a string map serializes");
            let result = c.execute(
                &format!("INSERT INTO key_records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL)"),
                params![
                    r.key_id,
                    r.spec.as_str(),
                    r.public_key,
                    r.kms_key_id,
                    context,
                    r.encrypted_data_key,
                    r.sealed_private_key,
                    r.origin.as_str(),
                    r.created_at as i64,
                    r.attestation,
                    r.migration
                ],
            );
            match result {
                Ok(_) => Ok(()),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    Err(StoreError::Exists(r.key_id.clone()))
                }
                Err(e) => Err(backend(e)),
            }
        })
        .await
    }

    async fn entry(&self, key_id: &str) -> Result<Option<Entry>, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            let row = c
                .query_row(&format!("SELECT {COLUMNS} FROM key_records WHERE key_id = ?1"), params![key_id], from_row)
                .optional()
                .map_err(backend)?;
            match row {
                Some((_, Ok((_, Some(at))))) if at <= crate::now() => {
                    c.execute("DELETE FROM key_records WHERE key_id = ?1", params![key_id]).map_err(backend)?;
                    Ok(None)
                }
                Some((_, entry)) => entry.map(Some),
                None => Ok(None),
            }
        })
        .await
    }

    async fn set_deletion(&self, key_id: &str, at: Option<u64>) -> Result<bool, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| {
            let n = c
                .execute("UPDATE key_records SET deletion_date = ?2 WHERE key_id = ?1", params![key_id, at.map(|a| a as i64)])
                .map_err(backend)?;
            Ok(n > 0)
        })
        .await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Page, StoreError> {
        let after = after.unwrap_or("").to_owned();
        let limit = limit.clamp(1, 1000);
        self.with(move |c| {
            let mut stmt =
                c.prepare(&format!("SELECT {COLUMNS} FROM key_records WHERE key_id > ?1 ORDER BY key_id LIMIT ?2")).map_err(backend)?;
            let rows = stmt.query_map(params![after, (limit + 1) as i64], from_row).map_err(backend)?;
            let mut read = Vec::new();
            for row in rows {
                read.push(row.map_err(backend)?);
            }
            let next = if read.len() > limit {
                read.truncate(limit);
                read.last().map(|(id, _)| id.clone())
            } else {
                None
            };
            let mut page = Page { next, ..Page::default() };
            let now = crate::now();
            for (key_id, entry) in read {
                match entry {
                    Ok((_, Some(at))) if at <= now => {
                        c.execute("DELETE FROM key_records WHERE key_id = ?1", params![key_id]).map_err(backend)?;
                    }
                    Ok((record, at)) => {
                        if let Some(at) = at {
                            page.pending_deletion.insert(key_id, at);
                        }
                        page.records.push(record);
                    }
                    Err(StoreError::Corrupt { key_id, reason }) => page.damaged.push(Damaged { key_id, reason }),
                    Err(e) => return Err(e),
                }
            }
            Ok(page)
        })
        .await
    }

    async fn delete(&self, key_id: &str) -> Result<bool, StoreError> {
        let key_id = key_id.to_owned();
        self.with(move |c| Ok(c.execute("DELETE FROM key_records WHERE key_id = ?1", params![key_id]).map_err(backend)? > 0)).await
    }
}

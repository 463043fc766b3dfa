//! The local KMS's state: SQLite in the data directory.
//!
//! Key material never touches the database in the clear: each version is
//! sealed with AES-256-GCM under `master.key` (32 random bytes, mode 0600,
//! made on first start), with the key id and version as associated data, so
//! material cannot be moved between keys. The database runs in WAL mode with
//! `synchronous=FULL`: once a call returns, its write survives a crash.
//! Every multi-row change is one transaction.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use rusqlite::{params, Connection, OptionalExtension};
use zeroize::Zeroizing;

use crate::grant::Grant;
use crate::model::KeyMetadata;

/// What went wrong with the state.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is readable by others; run chmod 600 on it")]
    MasterKeyPermissions(PathBuf),
    #[error("{0} is not a 32-byte master key")]
    MasterKeyLength(PathBuf),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored metadata is unreadable: {0}")]
    Metadata(#[from] serde_json::Error),
    #[error("key material of {key_id} version {version} does not open with this master key")]
    Material { key_id: String, version: u32 },
    #[error("no key material for {0}")]
    NoMaterial(String),
    #[error("alias {0} already exists")]
    AliasExists(String),
    #[error("alias {0} does not exist")]
    NoAlias(String),
}

/// A key's stored record (without material).
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub metadata: KeyMetadata,
    pub policy: String,
    pub rotation_enabled: bool,
}

/// An alias.
#[derive(Clone, Debug, PartialEq)]
pub struct Alias {
    pub name: String,
    pub key_id: String,
    pub creation_date: f64,
}

/// The state of one local KMS.
pub struct Store {
    conn: Mutex<Connection>,
    master: LessSafeKey,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS keys (
    key_id TEXT PRIMARY KEY,
    arn TEXT NOT NULL UNIQUE,
    metadata TEXT NOT NULL,
    policy TEXT NOT NULL,
    rotation_enabled INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS material (
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    version INTEGER NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    name TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    creation_date REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    tag_key TEXT NOT NULL,
    tag_value TEXT NOT NULL,
    PRIMARY KEY (key_id, tag_key)
);
CREATE TABLE IF NOT EXISTS grants (
    grant_id TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(key_id),
    retiring_principal TEXT,
    grant TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS grants_by_key ON grants(key_id);
CREATE INDEX IF NOT EXISTS grants_by_retiring ON grants(retiring_principal);
CREATE TABLE IF NOT EXISTS grant_tokens (
    token TEXT PRIMARY KEY,
    grant_id TEXT NOT NULL
);
";

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

fn load_or_create_master(path: &Path) -> Result<Zeroizing<Vec<u8>>, StoreError> {
    if !path.exists() {
        let mut key = Zeroizing::new(vec![0u8; 32]);
        SystemRandom::new().fill(&mut key).expect("system RNG");
        let tmp = path.with_extension("tmp");
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(io(&tmp))?;
        f.write_all(&key).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, path).map_err(io(path))?;
    }
    let mode = fs::metadata(path).map_err(io(path))?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(StoreError::MasterKeyPermissions(path.to_owned()));
    }
    let key = Zeroizing::new(fs::read(path).map_err(io(path))?);
    if key.len() != 32 {
        return Err(StoreError::MasterKeyLength(path.to_owned()));
    }
    Ok(key)
}

fn material_aad(key_id: &str, version: u32) -> Vec<u8> {
    format!("nekms-kms material v1\0{key_id}\0{version}").into_bytes()
}

impl Store {
    /// Open (or create) the state in `dir`: `kms.sqlite` and `master.key`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let master = load_or_create_master(&dir.join("master.key"))?;
        let master = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &master).expect("32-byte key"));
        let conn = Connection::open(dir.join("kms.sqlite"))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.execute_batch(SCHEMA)?;
        Ok(Store { conn: Mutex::new(conn), master })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn seal(&self, key_id: &str, version: u32, material: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).expect("system RNG");
        let mut body = material.to_vec();
        self.master
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(material_aad(key_id, version)), &mut body)
            .expect("AES-GCM seal");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&body);
        body.iter_mut().for_each(|b| *b = 0);
        out
    }

    fn unseal(&self, key_id: &str, version: u32, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let bad = || StoreError::Material { key_id: key_id.to_owned(), version };
        if sealed.len() < NONCE_LEN + 16 {
            return Err(bad());
        }
        let nonce: [u8; NONCE_LEN] = sealed[..NONCE_LEN].try_into().expect("length checked");
        let mut body = Zeroizing::new(sealed[NONCE_LEN..].to_vec());
        let len = self
            .master
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(material_aad(key_id, version)), &mut body)
            .map_err(|_| bad())?
            .len();
        body.truncate(len);
        Ok(body)
    }

    /// Store a new key with its first material version (1), policy and tags.
    pub fn insert_key(&self, meta: &KeyMetadata, policy: &str, tags: &[(String, String)], material: &[u8]) -> Result<(), StoreError> {
        let sealed = self.seal(&meta.key_id, 1, material);
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO keys (key_id, arn, metadata, policy) VALUES (?1, ?2, ?3, ?4)",
            params![meta.key_id, meta.arn, serde_json::to_string(meta)?, policy],
        )?;
        tx.execute("INSERT INTO material (key_id, version, sealed) VALUES (?1, 1, ?2)", params![meta.key_id, sealed])?;
        for (k, v) in tags {
            tx.execute("INSERT OR REPLACE INTO tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3)", params![meta.key_id, k, v])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// A key by its id.
    pub fn key(&self, key_id: &str) -> Result<Option<StoredKey>, StoreError> {
        let row = self
            .conn()
            .query_row("SELECT metadata, policy, rotation_enabled FROM keys WHERE key_id = ?1", [key_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?))
            })
            .optional()?;
        row.map(|(m, policy, rotation_enabled)| Ok(StoredKey { metadata: serde_json::from_str(&m)?, policy, rotation_enabled })).transpose()
    }

    /// Resolve a key id, key ARN, alias name (`alias/x`) or alias ARN to a key id.
    pub fn resolve(&self, id: &str) -> Result<Option<String>, StoreError> {
        let conn = self.conn();
        let alias = id.find(":alias/").map(|i| &id[i + 1..]).or(id.starts_with("alias/").then_some(id));
        if let Some(name) = alias {
            return Ok(conn.query_row("SELECT key_id FROM aliases WHERE name = ?1", [name], |r| r.get(0)).optional()?);
        }
        Ok(conn.query_row("SELECT key_id FROM keys WHERE key_id = ?1 OR arn = ?1", [id], |r| r.get(0)).optional()?)
    }

    /// Every key, in creation order: (key id, ARN).
    pub fn list_keys(&self) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT key_id, arn FROM keys ORDER BY rowid")?;
        let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn update_metadata(&self, meta: &KeyMetadata) -> Result<(), StoreError> {
        self.conn().execute("UPDATE keys SET metadata = ?2 WHERE key_id = ?1", params![meta.key_id, serde_json::to_string(meta)?])?;
        Ok(())
    }

    pub fn set_policy(&self, key_id: &str, policy: &str) -> Result<(), StoreError> {
        self.conn().execute("UPDATE keys SET policy = ?2 WHERE key_id = ?1", params![key_id, policy])?;
        Ok(())
    }

    pub fn set_rotation(&self, key_id: &str, enabled: bool) -> Result<(), StoreError> {
        self.conn().execute("UPDATE keys SET rotation_enabled = ?2 WHERE key_id = ?1", params![key_id, enabled])?;
        Ok(())
    }

    /// One version of a key's material, opened.
    pub fn material(&self, key_id: &str, version: u32) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let sealed: Option<Vec<u8>> = self
            .conn()
            .query_row("SELECT sealed FROM material WHERE key_id = ?1 AND version = ?2", params![key_id, version], |r| r.get(0))
            .optional()?;
        let sealed = sealed.ok_or_else(|| StoreError::NoMaterial(format!("{key_id} version {version}")))?;
        self.unseal(key_id, version, &sealed)
    }

    /// The newest material version and its material.
    pub fn current_material(&self, key_id: &str) -> Result<(u32, Zeroizing<Vec<u8>>), StoreError> {
        let row: Option<(u32, Vec<u8>)> = self
            .conn()
            .query_row("SELECT version, sealed FROM material WHERE key_id = ?1 ORDER BY version DESC LIMIT 1", [key_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let (version, sealed) = row.ok_or_else(|| StoreError::NoMaterial(key_id.to_owned()))?;
        Ok((version, self.unseal(key_id, version, &sealed)?))
    }

    /// Add a new material version (rotation); old versions stay for decryption.
    pub fn rotate(&self, key_id: &str, material: &[u8]) -> Result<u32, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let version: u32 = tx.query_row("SELECT COALESCE(MAX(version), 0) + 1 FROM material WHERE key_id = ?1", [key_id], |r| r.get(0))?;
        tx.execute(
            "INSERT INTO material (key_id, version, sealed) VALUES (?1, ?2, ?3)",
            params![key_id, version, self.seal(key_id, version, material)],
        )?;
        tx.commit()?;
        Ok(version)
    }

    /// Store a new grant of key `key_id` with its first token, in one
    /// transaction. Refused (false) when the key already has `max` grants.
    pub fn insert_grant(&self, key_id: &str, grant: &Grant, token: &str, max: usize) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n: i64 = tx.query_row("SELECT COUNT(*) FROM grants WHERE key_id = ?1", [key_id], |r| r.get(0))?;
        if n as usize >= max {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO grants (grant_id, key_id, retiring_principal, grant) VALUES (?1, ?2, ?3, ?4)",
            params![grant.grant_id, key_id, grant.retiring_principal, serde_json::to_string(grant)?],
        )?;
        tx.execute("INSERT INTO grant_tokens (token, grant_id) VALUES (?1, ?2)", params![token, grant.grant_id])?;
        tx.commit()?;
        Ok(true)
    }

    /// Another token for an existing grant (CreateGrant repeated with the same Name).
    pub fn add_grant_token(&self, grant_id: &str, token: &str) -> Result<(), StoreError> {
        self.conn().execute("INSERT INTO grant_tokens (token, grant_id) VALUES (?1, ?2)", params![token, grant_id])?;
        Ok(())
    }

    fn grants_where(&self, clause: &str, arg: &str) -> Result<Vec<Grant>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT grant FROM grants WHERE {clause} ORDER BY rowid"))?;
        let rows = stmt.query_map([arg], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
        rows.iter().map(|t| Ok(serde_json::from_str(t)?)).collect()
    }

    /// The grants of key `key_id`, oldest first.
    pub fn grants(&self, key_id: &str) -> Result<Vec<Grant>, StoreError> {
        self.grants_where("key_id = ?1", key_id)
    }

    /// The grants whose retiring principal is `principal`, oldest first.
    pub fn grants_retirable_by(&self, principal: &str) -> Result<Vec<Grant>, StoreError> {
        self.grants_where("retiring_principal = ?1", principal)
    }

    /// A grant and its key id.
    pub fn grant(&self, grant_id: &str) -> Result<Option<(String, Grant)>, StoreError> {
        let row = self
            .conn()
            .query_row("SELECT key_id, grant FROM grants WHERE grant_id = ?1", [grant_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })
            .optional()?;
        row.map(|(k, g)| Ok((k, serde_json::from_str(&g)?))).transpose()
    }

    /// The grant a token was issued for (the grant may since have been retired).
    pub fn token_grant(&self, token: &str) -> Result<Option<String>, StoreError> {
        Ok(self.conn().query_row("SELECT grant_id FROM grant_tokens WHERE token = ?1", [token], |r| r.get(0)).optional()?)
    }

    /// Delete a grant; false when there was none. Its tokens stay known, so a
    /// later use of one is a grant that no longer allows anything rather than
    /// an invalid token.
    pub fn delete_grant(&self, grant_id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM grants WHERE grant_id = ?1", [grant_id])? > 0)
    }

    /// Remove a key for good (after its deletion date): material, aliases, tags, grants.
    pub fn delete_key(&self, key_id: &str) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("DELETE FROM grant_tokens WHERE grant_id IN (SELECT grant_id FROM grants WHERE key_id = ?1)", [key_id])?;
        for table in ["material", "aliases", "tags", "grants", "keys"] {
            tx.execute(&format!("DELETE FROM {table} WHERE key_id = ?1"), [key_id])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn create_alias(&self, name: &str, key_id: &str, now: f64) -> Result<(), StoreError> {
        match self.conn().execute("INSERT INTO aliases (name, key_id, creation_date) VALUES (?1, ?2, ?3)", params![name, key_id, now]) {
            Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                Err(StoreError::AliasExists(name.to_owned()))
            }
            r => r.map(|_| ()).map_err(Into::into),
        }
    }

    pub fn update_alias(&self, name: &str, key_id: &str) -> Result<(), StoreError> {
        match self.conn().execute("UPDATE aliases SET key_id = ?2 WHERE name = ?1", params![name, key_id])? {
            0 => Err(StoreError::NoAlias(name.to_owned())),
            _ => Ok(()),
        }
    }

    pub fn delete_alias(&self, name: &str) -> Result<(), StoreError> {
        match self.conn().execute("DELETE FROM aliases WHERE name = ?1", [name])? {
            0 => Err(StoreError::NoAlias(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Aliases, all or those of one key.
    pub fn aliases(&self, key_id: Option<&str>) -> Result<Vec<Alias>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT name, key_id, creation_date FROM aliases WHERE ?1 IS NULL OR key_id = ?1 ORDER BY name")?;
        let rows = st
            .query_map([key_id], |r| Ok(Alias { name: r.get(0)?, key_id: r.get(1)?, creation_date: r.get(2)? }))?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    pub fn tag(&self, key_id: &str, tags: &[(String, String)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for (k, v) in tags {
            tx.execute("INSERT OR REPLACE INTO tags (key_id, tag_key, tag_value) VALUES (?1, ?2, ?3)", params![key_id, k, v])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn untag(&self, key_id: &str, keys: &[String]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for k in keys {
            tx.execute("DELETE FROM tags WHERE key_id = ?1 AND tag_key = ?2", params![key_id, k])?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn tags(&self, key_id: &str) -> Result<Vec<(String, String)>, StoreError> {
        let conn = self.conn();
        let mut st = conn.prepare("SELECT tag_key, tag_value FROM tags WHERE key_id = ?1 ORDER BY tag_key")?;
        let rows = st.query_map([key_id], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<_, _>>()?;
        Ok(rows)
    }
}

impl From<StoreError> for crate::error::KmsError {
    fn from(e: StoreError) -> crate::error::KmsError {
        match e {
            StoreError::AliasExists(name) => crate::error::KmsError::new(
                "AlreadyExistsException",
                format!("An alias with the name arn:aws:kms:*:*:{name} already exists"),
            ),
            StoreError::NoAlias(name) => crate::error::KmsError::not_found(format!("Alias {name} is not found.")),
            // Never echo material; the store's messages name keys, not bytes.
            other => crate::error::KmsError::internal(format!("the local KMS's state failed: {other}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KeySpec, KeyUsage};

    fn meta(id: &str) -> KeyMetadata {
        KeyMetadata::new("111122223333", "us-east-1", id, KeySpec::SymmetricDefault, KeyUsage::EncryptDecrypt, "test", 1.0)
    }

    fn tmp() -> PathBuf {
        let d = std::env::temp_dir().join(format!("nekms-kms-store-{}-{}", std::process::id(), rand_suffix()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn rand_suffix() -> String {
        let mut b = [0u8; 6];
        SystemRandom::new().fill(&mut b).unwrap();
        hex::encode(b)
    }

    #[test]
    fn keys_survive_a_restart_and_material_is_never_stored_in_the_clear() {
        let dir = tmp();
        let material = [0x5au8; 32];
        {
            let s = Store::open(&dir).unwrap();
            s.insert_key(&meta("k1"), "{}", &[("team".into(), "a".into())], &material).unwrap();
            s.create_alias("alias/one", "k1", 2.0).unwrap();
        }
        let s = Store::open(&dir).unwrap();
        assert_eq!(s.key("k1").unwrap().unwrap().metadata.description, "test");
        assert_eq!(&s.material("k1", 1).unwrap()[..], &material);
        assert_eq!(s.resolve("alias/one").unwrap().as_deref(), Some("k1"));
        assert_eq!(s.resolve("arn:aws:kms:us-east-1:111122223333:alias/one").unwrap().as_deref(), Some("k1"));
        assert_eq!(s.resolve("arn:aws:kms:us-east-1:111122223333:key/k1").unwrap().as_deref(), Some("k1"));
        assert_eq!(s.tags("k1").unwrap(), vec![("team".to_owned(), "a".to_owned())]);
        drop(s);
        let mut all = Vec::new();
        for f in ["kms.sqlite", "kms.sqlite-wal"] {
            all.extend(fs::read(dir.join(f)).unwrap_or_default());
        }
        assert!(!all.windows(32).any(|w| w == material), "material in the clear on disk");
        assert_eq!(fs::metadata(dir.join("master.key")).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rotation_keeps_old_versions_and_material_is_bound_to_its_key() {
        let dir = tmp();
        let s = Store::open(&dir).unwrap();
        s.insert_key(&meta("k1"), "{}", &[], &[1; 32]).unwrap();
        s.insert_key(&meta("k2"), "{}", &[], &[2; 32]).unwrap();
        assert_eq!(s.rotate("k1", &[3; 32]).unwrap(), 2);
        assert_eq!(s.current_material("k1").unwrap().0, 2);
        assert_eq!(&s.material("k1", 1).unwrap()[..], &[1; 32]);
        // Move k2's sealed material under k1: it must not open there.
        {
            let conn = s.conn();
            conn.execute(
                "UPDATE material SET sealed = (SELECT sealed FROM material WHERE key_id = 'k2') WHERE key_id = 'k1' AND version = 1",
                [],
            )
            .unwrap();
        }
        assert!(matches!(s.material("k1", 1), Err(StoreError::Material { .. })));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn aliases_are_unique_and_errors_name_them() {
        let dir = tmp();
        let s = Store::open(&dir).unwrap();
        s.insert_key(&meta("k1"), "{}", &[], &[1; 32]).unwrap();
        s.create_alias("alias/a", "k1", 1.0).unwrap();
        assert!(matches!(s.create_alias("alias/a", "k1", 1.0), Err(StoreError::AliasExists(n)) if n == "alias/a"));
        assert!(matches!(s.delete_alias("alias/none"), Err(StoreError::NoAlias(_))));
        s.delete_alias("alias/a").unwrap();
        assert_eq!(s.resolve("alias/a").unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_master_key_readable_by_others_is_refused() {
        let dir = tmp();
        drop(Store::open(&dir).unwrap());
        fs::set_permissions(dir.join("master.key"), fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(Store::open(&dir), Err(StoreError::MasterKeyPermissions(_))));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let dir = tmp();
        let s = std::sync::Arc::new(Store::open(&dir).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        s.insert_key(&meta(&format!("k-{t}-{i}")), "{}", &[], &[t as u8; 32]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(s.list_keys().unwrap().len(), 100);
        drop(s);
        assert_eq!(Store::open(&dir).unwrap().list_keys().unwrap().len(), 100);
        fs::remove_dir_all(dir).unwrap();
    }
}

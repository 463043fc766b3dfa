//! The parent's token database: one JSON file, `{"tokens": [...]}`, each
//! token its label, the PIN verifier the enclave made, whether it is
//! writable, and its keys by name (records in the key store) with CKA_IDs and
//! certificate chains. It holds no PIN and no key; it is written 0600 all
//! the same (a verifier is a salted hash of the PIN), and atomically.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nekms_rpc::PinVerifier;
use serde::{Deserialize, Serialize};

/// The most tokens an enclave holds.
pub const MAX_TOKENS: usize = 1024;

/// `$XDG_DATA_HOME/nekms/p11-tokens.json`, else
/// `~/.local/share/nekms/p11-tokens.json`; `None` when neither variable is set.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))?;
    Some(base.join("nekms/p11-tokens.json"))
}

/// The whole file.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct Database {
    pub tokens: Vec<TokenEntry>,
}

/// One token as the parent keeps it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TokenEntry {
    pub label: String,
    pub pin_verifier: VerifierEntry,
    pub keys: Vec<KeyEntry>,
    #[serde(default)]
    pub writable: bool,
}

/// A PIN verifier, hex: what the enclave checks a PIN against when the
/// token is restored. Empty (the default) until the enclave has made one.
#[derive(Serialize, Deserialize, Default, Clone, Debug, PartialEq, Eq)]
pub struct VerifierEntry {
    pub salt: String,
    pub iterations: u32,
    pub hash: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyEntry {
    /// CKA_ID, hex.
    pub id: String,
    /// The key's name in the key store (also its CKA_LABEL).
    pub key: String,
    /// DER certificates, base64, leaf first.
    pub certificates: Vec<String>,
    /// The key may decrypt as well as sign.
    #[serde(default)]
    pub decrypt: bool,
}

impl From<PinVerifier> for VerifierEntry {
    fn from(v: PinVerifier) -> VerifierEntry {
        VerifierEntry { salt: hex::encode(v.salt), iterations: v.iterations, hash: hex::encode(v.hash) }
    }
}

impl VerifierEntry {
    /// The verifier as the enclave takes it back.
    pub fn to_pin_verifier(&self) -> anyhow::Result<PinVerifier> {
        Ok(PinVerifier { salt: hex::decode(&self.salt)?, iterations: self.iterations, hash: hex::decode(&self.hash)? })
    }
}

impl Database {
    /// The database at `path`; an absent file is an empty database.
    pub fn load(path: &Path) -> anyhow::Result<Database> {
        match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b).with_context(|| format!("{}: not a token database", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Database::default()),
            Err(e) => Err(e).with_context(|| path.display().to_string()),
        }
    }

    /// Write the database to `path` (mode 0600 when new) through a temporary
    /// file beside it, synced, then renamed over it: a crash leaves the old
    /// file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| tmp.display().to_string())?;
        f.write_all(&serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
        Ok(())
    }

    /// The index of the token labelled `label`.
    pub fn position(&self, label: &str) -> Option<usize> {
        self.tokens.iter().position(|t| t.label == label)
    }

    /// The token labelled `label`.
    pub fn get(&self, label: &str) -> Option<&TokenEntry> {
        self.tokens.iter().find(|t| t.label == label)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn sample() -> Database {
        Database {
            tokens: vec![TokenEntry {
                label: "web".into(),
                pin_verifier: VerifierEntry { salt: "0011".into(), iterations: 100_000, hash: "aabb".into() },
                keys: vec![KeyEntry { id: "01".into(), key: "web".into(), certificates: vec!["MIIB".into()], decrypt: true }],
                writable: false,
            }],
        }
    }

    #[test]
    fn a_missing_database_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Database::load(&dir.path().join("absent.json")).unwrap(), Database::default());
    }

    #[test]
    fn a_saved_database_is_0600_and_reads_back_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/p11-tokens.json");
        sample().save(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.path().join("sub/p11-tokens.tmp").exists());
        assert_eq!(Database::load(&path).unwrap(), sample());
    }

    #[test]
    fn the_file_keeps_its_json_shape() {
        let v: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"tokens": [{
                "label": "web",
                "pin_verifier": {"salt": "0011", "iterations": 100000, "hash": "aabb"},
                "keys": [{"id": "01", "key": "web", "certificates": ["MIIB"], "decrypt": true}],
                "writable": false,
            }]})
        );
    }

    #[test]
    fn entries_written_before_writable_and_decrypt_existed_read_as_false() {
        let old = r#"{"tokens":[{"label":"a","pin_verifier":{"salt":"","iterations":0,"hash":""},"keys":[{"id":"01","key":"k","certificates":[]}]}]}"#;
        let db: Database = serde_json::from_str(old).unwrap();
        assert!(!db.tokens[0].writable && !db.tokens[0].keys[0].decrypt);
    }

    #[test]
    fn a_file_that_is_not_json_is_not_a_token_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.json");
        std::fs::write(&path, "not json").unwrap();
        let e = Database::load(&path).unwrap_err();
        assert!(format!("{e:#}").starts_with(&format!("{}: not a token database: ", path.display())), "{e:#}");
    }

    #[test]
    fn a_verifier_goes_to_hex_and_back() {
        let v = PinVerifier { salt: vec![1, 2], iterations: 7, hash: vec![0xff] };
        let entry = VerifierEntry::from(v.clone());
        assert_eq!((entry.salt.as_str(), entry.hash.as_str()), ("0102", "ff"));
        assert_eq!(entry.to_pin_verifier().unwrap(), v);
    }

    #[test]
    fn tokens_are_found_by_label() {
        let db = sample();
        assert_eq!(db.position("web"), Some(0));
        assert!(db.get("mail").is_none());
    }
}

//! Tokens into the enclave and the token database together: add, update,
//! remove, sync (key pairs generated on a token into the store), restore
//! (every token back after the enclave restarted), and pack (an entry made
//! without the enclave, for restore to provision).

use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use nekms_keys::PinVerifierExt;
use nekms_rpc::{P11Request, P11Response, PinVerifier};
use nekms_store::KeyStore;

use crate::connect::{unexpected, Enclave, KeyStoreLocation};
use crate::db::{Database, KeyEntry, VerifierEntry, MAX_TOKENS};
use crate::token::{read_pin, token_request, TokenSpec};

/// Add a new token (it needs a PIN file); the slot it got.
pub async fn add(enclave: &Enclave, store: &KeyStoreLocation, db: &Path, spec: &TokenSpec) -> anyhow::Result<u64> {
    provision(enclave, store, db, spec, false).await
}

/// Replace a token's keys and certificates, and its PIN if `spec` gives a
/// PIN file (else the database's verifier stays); the slot it is in.
pub async fn update(enclave: &Enclave, store: &KeyStoreLocation, db: &Path, spec: &TokenSpec) -> anyhow::Result<u64> {
    provision(enclave, store, db, spec, true).await
}

async fn provision(enclave: &Enclave, store: &KeyStoreLocation, path: &Path, a: &TokenSpec, replace: bool) -> anyhow::Result<u64> {
    let mut db = Database::load(path)?;
    let existing = db.position(&a.label);
    match (existing, replace) {
        (Some(_), false) => bail!("the token database already has a token labelled {:?}; use `nekms p11 token update`", a.label),
        (None, true) => bail!("the token database has no token labelled {:?}", a.label),
        _ => {}
    }
    let pin = match &a.pin_file {
        Some(p) => Some(read_pin(p)?),
        None if replace => None,
        None => bail!("a new token needs --pin-file"),
    };
    let old_verifier = existing.map(|i| db.tokens[i].pin_verifier.clone());
    let token = a.entry(old_verifier)?;
    let store = store.open().await?;
    let request = token_request(&store, &token, pin).await?;
    let (slot, v) = match enclave.p11(P11Request::AddToken { token: request, replace }).await? {
        P11Response::TokenAdded { slot, pin_verifier } => (slot, pin_verifier),
        other => return unexpected(other),
    };
    let token = crate::db::TokenEntry { pin_verifier: v.into(), ..token };
    match existing {
        Some(i) => db.tokens[i] = token,
        None => db.tokens.push(token),
    }
    db.save(path)?;
    Ok(slot)
}

/// Remove a token from the enclave (its sessions end), then from the database.
pub async fn remove(enclave: &Enclave, path: &Path, label: &str) -> anyhow::Result<()> {
    let mut db = Database::load(path)?;
    enclave.p11(P11Request::RemoveToken { label: label.to_owned() }).await?;
    db.tokens.retain(|t| t.label != label);
    db.save(path)
}

/// A key pair generated on a token, now in the store and the database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncedKey {
    /// Its record's name in the key store.
    pub name: String,
    /// CKA_ID, hex.
    pub id: String,
}

/// Store the key pairs generated on token `label` (C_GenerateKeyPair) that
/// the database does not list yet: each record into the key store (unless
/// the same key is there), each key into the token's entry. `stored` hears
/// of each as it is stored; the count is returned.
pub async fn sync(
    enclave: &Enclave,
    store: &KeyStoreLocation,
    path: &Path,
    label: &str,
    mut stored: impl FnMut(&SyncedKey),
) -> anyhow::Result<usize> {
    let mut tokens = Database::load(path)?;
    let i = tokens.position(label).with_context(|| format!("the token database has no token labelled {label:?}"))?;
    let keys = match enclave.p11(P11Request::Keys { label: label.to_owned() }).await? {
        P11Response::Keys(k) => k,
        other => return unexpected(other),
    };
    let store = store.open().await?;
    let mut added = 0;
    for k in keys {
        let id = hex::encode(&k.id);
        if tokens.tokens[i].keys.iter().any(|d| d.id == id) {
            continue;
        }
        match store.get(&k.record.key_id).await? {
            Some(existing) if existing.public_key == k.record.public_key => {}
            Some(_) => bail!("the store already has another key named {:?}", k.record.key_id),
            None => store.create(&k.record).await?,
        }
        tokens.tokens[i].keys.push(KeyEntry { id: id.clone(), key: k.record.key_id.clone(), certificates: vec![], decrypt: k.decrypt });
        stored(&SyncedKey { name: k.record.key_id.clone(), id });
        added += 1;
    }
    tokens.save(path)?;
    Ok(added)
}

/// Put every token of the database into the enclave (replacing one it
/// still holds), with the verifiers the database keeps; `restored` hears of
/// each token's label as it is back.
pub async fn restore(enclave: &Enclave, store: &KeyStoreLocation, path: &Path, mut restored: impl FnMut(&str)) -> anyhow::Result<()> {
    let tokens = Database::load(path)?;
    let store = store.open().await?;
    let have: Vec<String> = match enclave.p11(P11Request::Slots).await? {
        P11Response::Slots(s) => s.into_iter().map(|s| s.label).collect(),
        other => return unexpected(other),
    };
    for t in &tokens.tokens {
        let request = token_request(&store, t, None).await?;
        let replace = have.contains(&t.label);
        enclave.p11(P11Request::AddToken { token: request, replace }).await.with_context(|| format!("token {:?}", t.label))?;
        restored(&t.label);
    }
    Ok(())
}

/// The database entry `add` would write, made without the enclave (the PIN
/// verifier is made here), replacing one of that label only if `replace`.
/// Every key must be in the store and every leaf certificate for its key;
/// the enclave checks both again when the token is restored.
pub async fn pack(store: &KeyStoreLocation, path: &Path, a: &TokenSpec, replace: bool) -> anyhow::Result<()> {
    let mut db = Database::load(path)?;
    let existing = db.position(&a.label);
    if existing.is_some() && !replace {
        bail!("the token database already has a token labelled {:?}; give --replace", a.label);
    }
    if existing.is_none() && db.tokens.len() >= MAX_TOKENS {
        bail!("the token database already has {MAX_TOKENS} tokens, the most an enclave holds");
    }
    let pin = read_pin(a.pin_file.as_ref().context("a packed token needs --pin-file")?)?;
    let v = PinVerifier::new(pin.0.as_bytes()).context("a PIN is 4 to 64 bytes")?;
    let token = a.entry(Some(VerifierEntry::from(v)))?;
    let store = store.open().await?;
    for k in &token.keys {
        let record = store.get(&k.key).await?.with_context(|| format!("no key named {:?} in the store", k.key))?;
        if k.decrypt && !record.may_decrypt() {
            bail!("--decrypt {}: the key was made to sign only (rule key-usage: only a key made with --decrypt may decrypt)", k.key);
        }
        if let Some(leaf) = k.certificates.first() {
            let der = B64.decode(leaf)?;
            let (_, cert) =
                x509_parser::parse_x509_certificate(&der).map_err(|e| anyhow::anyhow!("{}: not a DER certificate: {e}", k.key))?;
            if cert.tbs_certificate.subject_pki.raw != record.public_key.as_slice() {
                bail!("the first certificate given for {} is not for that key's public key", k.key);
            }
        }
    }
    match existing {
        Some(i) => db.tokens[i] = token,
        None => db.tokens.push(token),
    }
    db.save(path)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use nekms_store::StoreUrl;

    use super::*;
    use crate::db::TokenEntry;

    struct World {
        _dir: tempfile::TempDir,
        db: PathBuf,
        pin: PathBuf,
        store: KeyStoreLocation,
    }

    fn world() -> World {
        let dir = tempfile::tempdir().unwrap();
        let pin = dir.path().join("pin");
        std::fs::write(&pin, "123456\n").unwrap();
        let store = KeyStoreLocation::new(StoreUrl::Sqlite(dir.path().join("keys.db")), None);
        World { db: dir.path().join("p11-tokens.json"), pin, store, _dir: dir }
    }

    fn spec(w: &World, label: &str) -> TokenSpec {
        TokenSpec { label: label.into(), pin_file: Some(w.pin.clone()), keys: vec!["web:01".into()], ..TokenSpec::default() }
    }

    fn entry(label: &str) -> TokenEntry {
        TokenEntry { label: label.into(), pin_verifier: VerifierEntry::default(), keys: vec![], writable: false }
    }

    // An address nothing listens on: these checks must refuse before dialling.
    fn nowhere() -> Enclave {
        Enclave::new("unix:///nonexistent/nekms-p11-provision-test.sock".parse().unwrap())
    }

    #[tokio::test]
    async fn add_refuses_a_label_the_database_has_before_reaching_the_enclave() {
        let w = world();
        Database { tokens: vec![entry("web")] }.save(&w.db).unwrap();
        let e = add(&nowhere(), &w.store, &w.db, &spec(&w, "web")).await.unwrap_err();
        assert_eq!(e.to_string(), "the token database already has a token labelled \"web\"; use `nekms p11 token update`");
        assert!(!w._dir.path().join("keys.db").exists(), "the store was opened");
    }

    #[tokio::test]
    async fn update_wants_a_token_the_database_has_and_add_wants_a_pin() {
        let w = world();
        let e = update(&nowhere(), &w.store, &w.db, &spec(&w, "web")).await.unwrap_err();
        assert_eq!(e.to_string(), "the token database has no token labelled \"web\"");
        let no_pin = TokenSpec { pin_file: None, ..spec(&w, "web") };
        let e = add(&nowhere(), &w.store, &w.db, &no_pin).await.unwrap_err();
        assert_eq!(e.to_string(), "a new token needs --pin-file");
    }

    #[tokio::test]
    async fn sync_wants_a_token_the_database_has() {
        let w = world();
        let e = sync(&nowhere(), &w.store, &w.db, "web", |_| {}).await.unwrap_err();
        assert_eq!(e.to_string(), "the token database has no token labelled \"web\"");
    }

    #[tokio::test]
    async fn pack_refuses_a_full_database_an_existing_label_and_a_short_pin() {
        let w = world();
        Database { tokens: (0..MAX_TOKENS).map(|i| entry(&format!("t{i}"))).collect() }.save(&w.db).unwrap();
        let e = pack(&w.store, &w.db, &spec(&w, "web"), false).await.unwrap_err();
        assert_eq!(e.to_string(), "the token database already has 1024 tokens, the most an enclave holds");
        let e = pack(&w.store, &w.db, &spec(&w, "t0"), false).await.unwrap_err();
        assert_eq!(e.to_string(), "the token database already has a token labelled \"t0\"; give --replace");

        std::fs::write(&w.pin, "123\n").unwrap();
        let e = pack(&w.store, &w.db, &spec(&w, "t0"), true).await.unwrap_err();
        assert_eq!(e.to_string(), "a PIN is 4 to 64 bytes");
    }

    #[tokio::test]
    async fn pack_wants_every_key_in_the_store_and_leaves_the_database_as_it_was() {
        let w = world();
        let e = pack(&w.store, &w.db, &spec(&w, "web"), false).await.unwrap_err();
        assert_eq!(e.to_string(), "no key named \"web\" in the store");
        assert!(!w.db.exists());
    }
}

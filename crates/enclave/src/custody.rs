//! Key custody inside the enclave: making and importing keys, sealing them
//! into records under a KMS data key, and signing with a record's key.
//!
//! The data key is generated and decrypted with a Recipient, so its
//! plaintext exists only here. Opened keys are kept in [`KeyCache`]
//! (bounded in count and age; a key is zeroized when it leaves), keyed by a
//! digest of every sealed field, so a record changed in any way is opened
//! afresh and checked afresh.

use nekms_keys::RecordExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use nekms_keys::context::{import_context_with_usage, Usage};
use nekms_keys::envelope::{open_record, seal_record};
use nekms_keys::record::{binding_context, check_key_id};
use nekms_keys::{parse_private_key, KeyError, KeyRecord, OaepHash, Origin, Payload, PrivateKey, RsaPadding, Scheme, Signature};
use nekms_kms_client::DataKeySpec;
use nekms_nsm::AttestationRequest;
use nekms_rpc::{CacheInfo, Entropy, ErrorCode, GenerateKey, ImportKey, RpcError};
use zeroize::Zeroizing;

use crate::rpc::kms_error;
use crate::Enclave;

/// An opened key, when it was opened and when it was last used.
type CacheEntry = (Arc<PrivateKey>, Instant, Instant);

/// Opened keys, most recently used kept.
pub struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], CacheEntry>>,
    capacity: usize,
    ttl: Duration,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl KeyCache {
    /// `capacity` 0 disables caching: every signature opens the record.
    pub fn new(capacity: usize, ttl: Duration) -> KeyCache {
        KeyCache { entries: Mutex::new(HashMap::new()), capacity, ttl, hits: AtomicU64::new(0), misses: AtomicU64::new(0) }
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Arc<PrivateKey>> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Only the entry asked for is checked here; insert() sweeps the rest.
        if entries.get(digest).is_some_and(|(_, opened, _)| now.duration_since(*opened) >= self.ttl) {
            entries.remove(digest);
        }
        let found = entries.get_mut(digest).map(|(key, _, used)| {
            *used = now;
            key.clone()
        });
        let counter = if found.is_some() { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    fn insert(&self, digest: [u8; 32], key: Arc<PrivateKey>) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, opened, _)| now.duration_since(*opened) < self.ttl);
        while entries.len() >= self.capacity && !entries.contains_key(&digest) {
            let oldest = entries.iter().min_by_key(|(_, (_, _, used))| *used).map(|(d, _)| *d).expect("not empty");
            entries.remove(&oldest);
        }
        entries.insert(digest, (key, now, now));
    }

    /// Drop every opened key.
    pub fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    pub fn info(&self) -> CacheInfo {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        entries.retain(|_, (_, opened, _)| now.duration_since(*opened) < self.ttl);
        CacheInfo {
            entries: entries.len() as u32,
            capacity: self.capacity as u32,
            ttl_seconds: self.ttl.as_secs(),
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }
}

fn key_error(e: KeyError) -> RpcError {
    let code = match e {
        KeyError::Record { .. } | KeyError::Sealed { .. } | KeyError::Mismatch { .. } => ErrorCode::RecordRejected,
        KeyError::Crypto(_) | KeyError::Entropy(_) => ErrorCode::Internal,
        _ => ErrorCode::BadRequest,
    };
    RpcError::new(code, e.to_string())
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Enclave {
    /// NSM GetRandom, the OS generator and, when asked, KMS GenerateRandom.
    async fn entropy(&self, source: Entropy) -> Result<Zeroizing<Vec<u8>>, RpcError> {
        let mut seed =
            Zeroizing::new(self.nsm.get_random().map_err(|e| RpcError::new(ErrorCode::Attestation, format!("NSM GetRandom: {e}")))?);
        let mut os = Zeroizing::new([0u8; 32]);
        SystemRandom::new().fill(&mut *os).map_err(|_| RpcError::new(ErrorCode::Internal, "the OS random generator failed"))?;
        seed.extend_from_slice(&*os);
        if source == Entropy::Kms {
            let kms = self.kms.generate_random(32).await.map_err(kms_error)?;
            seed.extend_from_slice(&kms);
        }
        Ok(seed)
    }

    /// A fresh data key under a pinned custody key, whose encryption context
    /// binds the new record's id, spec and origin.
    async fn data_key_for(
        &self,
        key_id: &str,
        spec: nekms_keys::KeySpec,
        origin: Origin,
        kms_key_id: Option<&str>,
        extra_context: &BTreeMap<String, String>,
        usage: Usage,
    ) -> Result<(BTreeMap<String, String>, nekms_kms_client::DataKey), RpcError> {
        let pinned = self.trust.custody_key(kms_key_id)?;
        let mut context = binding_context(key_id, spec, origin, extra_context).map_err(|e| RpcError::refused(e.to_string()))?;
        usage.check_spec(spec).map_err(RpcError::bad_request)?;
        if let Some(v) = usage.context_value() {
            context.insert(nekms_keys::context::USAGE.into(), v.into());
        }
        let data_key = self.kms.generate_data_key(pinned.as_str(), Some(DataKeySpec::Aes256), None, &context).await.map_err(kms_error)?;
        self.trust.check_answered(pinned, &data_key.key_id)?;
        Ok((context, data_key))
    }

    /// Seal `private` into a new record under `data_key`, with an origin
    /// document whose user_data is the record's origin commitment.
    pub(crate) fn seal_new(
        &self,
        private: &PrivateKey,
        key_id: &str,
        (context, data_key): (BTreeMap<String, String>, nekms_kms_client::DataKey),
        origin: Origin,
        nonce: Option<Vec<u8>>,
        migration: Option<Vec<u8>>,
    ) -> Result<KeyRecord, RpcError> {
        let template = KeyRecord {
            key_id: key_id.to_owned(),
            spec: private.spec(),
            public_key: private.public_key().spki().to_vec(),
            // The ARN KMS answered with, so the record names the key exactly.
            kms_key_id: data_key.key_id.clone(),
            encryption_context: context,
            encrypted_data_key: data_key.ciphertext_blob.clone(),
            sealed_private_key: Vec::new(),
            origin,
            created_at: now_seconds(),
            attestation: None,
            migration,
        };
        let mut record = seal_record(template, &data_key.plaintext, private).map_err(key_error)?;
        let user_data = record.origin_commitment(private.public_key());
        let document = self
            .nsm
            .attestation(AttestationRequest { user_data: Some(user_data), nonce, public_key: None })
            .map_err(|e| RpcError::new(ErrorCode::Attestation, e.to_string()))?;
        record.attestation = Some(document);
        Ok(record)
    }

    pub async fn generate_key(&self, req: GenerateKey) -> Result<KeyRecord, RpcError> {
        check_key_id(&req.key_id).map_err(key_error)?;
        check_nonce(&req.nonce)?;
        // KMS first: a key it will not seal is not worth generating.
        let usage = match (req.decrypt_only, Usage::from_flags(req.decrypt, req.privval).map_err(RpcError::bad_request)?) {
            (false, usage) => usage,
            (true, Usage::Sign) => Usage::Decrypt,
            (true, _) => return Err(RpcError::bad_request("decrypt_only is a usage of its own, not with decrypt or privval")),
        };
        let data_key =
            self.data_key_for(&req.key_id, req.spec, Origin::Generated, req.kms_key_id.as_deref(), &req.encryption_context, usage).await?;
        let seed = self.entropy(req.entropy).await?;
        let spec = req.spec;
        // RSA generation takes a while; keep it off the connection's task.
        let private = tokio::task::spawn_blocking(move || PrivateKey::generate(spec, &seed))
            .await
            .map_err(|e| RpcError::new(ErrorCode::Internal, format!("key generation task: {e}")))?
            .map_err(key_error)?;
        self.seal_new(&private, &req.key_id, data_key, Origin::Generated, req.nonce, None)
    }

    /// Import an administrator's key: only an import ciphertext (made under
    /// a pinned custody key with `nekms:purpose=import` and this key id in its
    /// context) is accepted, so no other ciphertext, a record's data key
    /// included, can be turned into a record the parent could open.
    pub async fn import_key(&self, req: ImportKey) -> Result<KeyRecord, RpcError> {
        check_key_id(&req.key_id).map_err(key_error)?;
        check_nonce(&req.nonce)?;
        self.trust.check_import()?;
        let Some(spec) = req.spec else {
            return Err(RpcError::bad_request("ImportKey requires the key's spec: the import context binds it (nekms:key-spec)"));
        };
        let source = self.trust.custody_key(req.ciphertext_key_id.as_deref().or(req.kms_key_id.as_deref()))?;
        // The administrator's ciphertext says whether the key may decrypt:
        // asking for it without (or with, for one that may not) is refused by KMS.
        let usage = Usage::from_flags(req.decrypt, req.privval).map_err(RpcError::bad_request)?;
        usage.check_spec(spec).map_err(RpcError::bad_request)?;
        let context =
            import_context_with_usage(&req.key_id, spec, &req.ciphertext_context, usage).map_err(|e| RpcError::refused(e.to_string()))?;
        let material = self.kms.decrypt_under(&req.ciphertext, &context, Some(source.as_str())).await.map_err(|e| {
            let mut err = kms_error(e);
            if matches!(err.kms_code.as_deref(), Some("InvalidCiphertextException" | "IncorrectKeyException")) {
                err.message = format!(
                    "rule import-ciphertext: KMS refused this ciphertext with the import context {{nekms:purpose=import, nekms:key-id={}, nekms:key-spec={spec}{}}} under {source}; \
                     import takes only ciphertexts made for it (nekms key encrypt-for-import): {}",
                    req.key_id,
                    usage.context_value().map(|v| format!(", nekms:usage={v}")).unwrap_or_default(),
                    err.message
                );
            }
            err
        })?;
        self.trust.check_answered(source, &material.key_id)?;
        let private = parse_private_key(&material.plaintext, Some(spec)).map_err(key_error)?;
        drop(material);
        let data_key = self
            .data_key_for(&req.key_id, private.spec(), Origin::Imported, req.kms_key_id.as_deref(), &req.encryption_context, usage)
            .await?;
        self.seal_new(&private, &req.key_id, data_key, Origin::Imported, req.nonce, None)
    }

    /// The record's key, from the cache or opened now.
    pub(crate) async fn open(&self, record: &KeyRecord) -> Result<Arc<PrivateKey>, RpcError> {
        // The digest covers every field the checks read, so a hit is a record
        // identical to one that passed them and opened.
        // A hit is a record whose every sealed and bound field equals one that
        // passed every check below, provenance included.
        let digest = record.cache_digest();
        if let Some(key) = self.keys.get(&digest) {
            return Ok(key);
        }
        record.check().map_err(|e| RpcError::new(ErrorCode::RecordRejected, format!("rule record-binding: {e}")))?;
        // Provenance before KMS is asked: a record no trusted enclave made is
        // refused even if its seal would open.
        let pinned = self.trust.check_record(record)?;
        let data_key = self
            .kms
            .decrypt_under(&record.encrypted_data_key, &record.encryption_context, Some(pinned.as_str()))
            .await
            .map_err(|e| {
                let mut err = kms_error(e);
                if err.kms_code.as_deref() == Some("InvalidCiphertextException") {
                    err.message = format!(
                        "key record {}: KMS refused its data key with this encryption context (tampered with, or taken from another record): {}",
                        record.key_id, err.message
                    );
                }
                err
            })?;
        self.trust.check_answered(pinned, &data_key.key_id)?;
        let key = Arc::new(open_record(record, &data_key.plaintext).map_err(key_error)?);
        self.keys.insert(digest, key.clone());
        Ok(key)
    }

    /// The general Sign (the RPC, the agent, PKCS#11): never with a
    /// consensus key, which signs only under the validator signer's
    /// double-sign rules (rule key-usage).
    pub async fn sign(&self, record: &KeyRecord, scheme: Option<Scheme>, payload: &Payload) -> Result<Signature, RpcError> {
        refuse_privval(record)?;
        refuse_decrypt_only(record)?;
        let scheme = scheme.unwrap_or_else(|| Scheme::default_for_payload(record.spec, payload));
        scheme.check_spec(record.spec).map_err(key_error)?;
        let key = self.open(record).await?;
        key.sign(scheme, payload).map_err(key_error)
    }
}

impl Enclave {
    /// RSAES-OAEP decryption with a record's key: only a key made to decrypt
    /// (rule key-usage), whose usage KMS bound into its data key's context,
    /// so a record edited to claim it does not open. OAEP only: no PKCS#1
    /// v1.5 (a padding oracle) and no raw operation (a signing oracle).
    pub async fn key_decrypt(&self, record: &KeyRecord, hash: OaepHash, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, RpcError> {
        refuse_privval(record)?;
        if !record.may_decrypt() {
            return Err(RpcError::refused(format!(
                "rule key-usage: key {} was made to sign only; only an RSA key made to decrypt (nekms:usage=sign,decrypt or decrypt, fixed when it was made) decrypts",
                record.key_id
            )));
        }
        let key = self.open(record).await?;
        key.rsa_decrypt(RsaPadding::Oaep(hash), ciphertext, None).map_err(|e| match e {
            KeyError::Payload(m) => RpcError::new(ErrorCode::BadRequest, m),
            other => key_error(other),
        })
    }
}

/// Refuse a key made only to decrypt wherever a signature would come out.
pub(crate) fn refuse_decrypt_only(record: &KeyRecord) -> Result<(), RpcError> {
    if record.usage() == Usage::Decrypt {
        return Err(RpcError::refused(format!(
            "rule key-usage: key {} was made only to decrypt (nekms:usage=decrypt, AWS KMS's ENCRYPT_DECRYPT); it signs nothing",
            record.key_id
        )));
    }
    Ok(())
}

/// Refuse a consensus key anywhere but the validator signer.
pub(crate) fn refuse_privval(record: &KeyRecord) -> Result<(), RpcError> {
    if record.is_privval() {
        return Err(RpcError::refused(format!(
            "rule key-usage: key {} is a validator's consensus key (nekms:usage=privval); only the validator signer signs with it, under its double-sign rules",
            record.key_id
        )));
    }
    Ok(())
}

fn check_nonce(nonce: &Option<Vec<u8>>) -> Result<(), RpcError> {
    match nonce {
        Some(n) if n.len() > nekms_nsm::MAX_NONCE => {
            Err(RpcError::bad_request(format!("nonce is {} bytes; the NSM takes at most {}", n.len(), nekms_nsm::MAX_NONCE)))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nekms_keys::KeySpec;

    fn key(n: u8) -> Arc<PrivateKey> {
        Arc::new(PrivateKey::generate(KeySpec::Ed25519, &[n; 32]).unwrap())
    }

    #[test]
    fn the_least_recently_used_key_leaves_when_the_cache_is_full() {
        let cache = KeyCache::new(2, Duration::from_secs(60));
        cache.insert([1; 32], key(1));
        cache.insert([2; 32], key(2));
        assert!(cache.get(&[1; 32]).is_some());
        cache.insert([3; 32], key(3));
        assert!(cache.get(&[2; 32]).is_none(), "2 was used least recently");
        assert!(cache.get(&[1; 32]).is_some() && cache.get(&[3; 32]).is_some());
        let info = cache.info();
        assert_eq!((info.entries, info.capacity, info.hits, info.misses), (2, 2, 3, 1));
    }

    #[test]
    fn keys_expire_after_the_ttl_and_a_zero_capacity_caches_nothing() {
        let cache = KeyCache::new(8, Duration::from_millis(30));
        cache.insert([1; 32], key(1));
        assert!(cache.get(&[1; 32]).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&[1; 32]).is_none());
        assert_eq!(cache.info().entries, 0, "expired keys are dropped, and zeroized with them");

        let none = KeyCache::new(0, Duration::from_secs(60));
        none.insert([1; 32], key(1));
        assert!(none.get(&[1; 32]).is_none());
        cache.insert([2; 32], key(2));
        cache.clear();
        assert_eq!(cache.info().entries, 0);
    }
}

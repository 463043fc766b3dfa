//! What takes cryptography about a key record: its checks, its public key,
//! its origin commitment and its cache digest. The record itself (all of it
//! public) is [`nekms_protocol::KeyRecord`].

use nekms_protocol::context::is_reserved;

pub use nekms_protocol::record::*;

use crate::public::PublicKey;
use crate::KeyError;

/// The checks and digests of a [`KeyRecord`] that need its public key or a hash.
pub trait RecordExt {
    /// Checks that need no secret: a valid id, the binding context (exactly
    /// the reserved entries for this id, spec and origin, and no other key in
    /// the reserved namespace), a public key of the stated spec, a sealed key
    /// of plausible size.
    fn check(&self) -> Result<PublicKey, KeyError>;
    /// The record's public key, once [`RecordExt::check`] passed.
    fn public(&self) -> Result<PublicKey, KeyError>;
    /// What the creating enclave's attestation carries as user_data:
    /// `nekms-key:v2:<origin>:<key id>:<spec>:<SHA-256 of the SPKI, hex>:<binding, hex>`,
    /// where the binding is SHA-256 over the KMS key ARN and the encryption
    /// context, each length-prefixed. A verifier recomputes it from the
    /// record; the enclave never puts a caller's bytes after this prefix.
    fn origin_commitment(&self, public: &PublicKey) -> Vec<u8>;
    /// A stable digest of the sealed fields, used to cache opened keys: a
    /// record that differs in any of them is a different cache entry.
    fn cache_digest(&self) -> [u8; 32];
}

fn err(record: &KeyRecord, reason: impl Into<String>) -> KeyError {
    KeyError::Record { key_id: record.key_id.clone(), reason: reason.into() }
}

impl RecordExt for KeyRecord {
    fn check(&self) -> Result<PublicKey, KeyError> {
        check_key_id(&self.key_id)?;
        let want = [(CONTEXT_KEY_ID, self.key_id.as_str()), (CONTEXT_SPEC, self.spec.as_str()), (CONTEXT_ORIGIN, self.origin.as_str())];
        for (k, v) in want {
            if self.encryption_context.get(k).map(String::as_str) != Some(v) {
                return Err(err(
                    self,
                    format!("its encryption context does not bind {k} to {v:?} (a record made before nekms-key:v2 provenance, or altered)"),
                ));
            }
        }
        nekms_protocol::context::Usage::of_context(&self.encryption_context, self.spec)
            .map_err(|e| err(self, format!("its encryption context's usage: {e}")))?;
        let migrated = self.origin == nekms_protocol::Origin::Migrated;
        let allowed = |k: &str| k == nekms_protocol::context::USAGE || (migrated && k == nekms_protocol::context::MIGRATION);
        if let Some(k) = self.encryption_context.keys().find(|k| is_reserved(k) && !allowed(k) && !want.iter().any(|(w, _)| w == k)) {
            return Err(err(self, format!("its encryption context holds {k:?}, a reserved key no record carries")));
        }
        if migrated != self.encryption_context.contains_key(nekms_protocol::context::MIGRATION) || migrated != self.migration.is_some() {
            return Err(err(self, "a migrated record, and only one, carries its approval and binds it (nekms:migration)"));
        }
        let public = PublicKey::from_spki(&self.public_key).map_err(|e| err(self, e.to_string()))?;
        if public.spec() != self.spec {
            return Err(err(self, format!("the public key is {}, the record says {}", public.spec(), self.spec)));
        }
        if self.sealed_private_key.len() < crate::envelope::OVERHEAD + 32 {
            return Err(err(self, "the sealed private key is too short"));
        }
        if self.encrypted_data_key.is_empty() || self.kms_key_id.is_empty() {
            return Err(err(self, "the data key or the KMS key id is missing"));
        }
        Ok(public)
    }

    fn public(&self) -> Result<PublicKey, KeyError> {
        self.check()
    }

    fn origin_commitment(&self, public: &PublicKey) -> Vec<u8> {
        let mut binding = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        binding.update(b"nekms-key binding v2\0");
        let mut put = |b: &[u8]| {
            binding.update(&(b.len() as u64).to_be_bytes());
            binding.update(b);
        };
        put(self.kms_key_id.as_bytes());
        for (k, v) in &self.encryption_context {
            put(k.as_bytes());
            put(v.as_bytes());
        }
        format!(
            "{COMMITMENT_PREFIX}{}:{}:{}:{}:{}",
            self.origin.as_str(),
            self.key_id,
            public.spec(),
            hex::encode(public.fingerprint()),
            hex::encode(binding.finish().as_ref())
        )
        .into_bytes()
    }

    fn cache_digest(&self) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&crate::envelope::associated_data(self));
        for field in [&self.encrypted_data_key, &self.sealed_private_key] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        // A migrated record's approval is checked on open like its document,
        // but unlike the document it is never left out of a call: another
        // approval is another record, checked afresh.
        if let Some(m) = &self.migration {
            ctx.update(b"migration");
            ctx.update(&(m.len() as u64).to_be_bytes());
            ctx.update(m);
        }
        ctx.finish().as_ref().try_into().expect("SHA-256")
    }
}

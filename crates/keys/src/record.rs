//! The key record: everything the parent stores about a key, all of it
//! public. The private key is in it only sealed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::public::PublicKey;
use crate::spec::KeySpec;
use crate::KeyError;

use crate::context::{is_reserved, record_context};
pub use crate::context::{KEY_ID as CONTEXT_KEY_ID, KEY_SPEC as CONTEXT_SPEC, ORIGIN as CONTEXT_ORIGIN};

/// What an origin commitment starts with ([`KeyRecord::origin_commitment`]).
pub const COMMITMENT_PREFIX: &str = "nekms-key:v2:";
/// What every attestation document the enclave makes for a caller carries
/// before the caller's user_data, so that caller data never reads as a
/// statement the enclave makes itself.
pub const CALLER_PREFIX: &[u8] = b"nekms-caller:v1:";

/// How the key came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Made inside an enclave.
    Generated,
    /// Brought by an administrator, KMS-encrypted.
    Imported,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
        }
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Origin, String> {
        match s {
            "generated" => Ok(Origin::Generated),
            "imported" => Ok(Origin::Imported),
            _ => Err(format!("unknown origin {s:?}")),
        }
    }
}

/// A stored key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub key_id: String,
    pub spec: KeySpec,
    /// SubjectPublicKeyInfo, DER.
    #[serde(with = "b64")]
    pub public_key: Vec<u8>,
    /// The KMS key the data key was generated under (its ARN).
    pub kms_key_id: String,
    /// Passed to KMS with the data key; always holds the two binding entries.
    pub encryption_context: BTreeMap<String, String>,
    /// KMS CiphertextBlob of the data key.
    #[serde(with = "b64")]
    pub encrypted_data_key: Vec<u8>,
    /// Version byte, 12-byte nonce, AES-256-GCM ciphertext and tag.
    #[serde(with = "b64")]
    pub sealed_private_key: Vec<u8>,
    pub origin: Origin,
    /// Unix seconds.
    pub created_at: u64,
    /// The attestation document the enclave gave when it made the record;
    /// its user_data commits to the public key ([`KeyRecord::attestation_user_data`]).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub attestation: Option<Vec<u8>>,
}

/// A key name: 1-128 characters of letters, digits and `._-:@/`.
pub fn check_key_id(key_id: &str) -> Result<(), KeyError> {
    let ok = !key_id.is_empty() && key_id.len() <= 128 && key_id.chars().all(|c| c.is_ascii_alphanumeric() || "._-:@/".contains(c));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Record {
            key_id: key_id.chars().take(140).collect(),
            reason: "a key id is 1-128 characters of letters, digits and ._-:@/".into(),
        })
    }
}

/// The encryption context of a new record: the caller's entries plus the
/// reserved ones binding id, spec and origin.
pub fn binding_context(
    key_id: &str,
    spec: KeySpec,
    origin: Origin,
    extra: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, KeyError> {
    record_context(key_id, spec, origin, extra).map_err(|e| KeyError::Record { key_id: key_id.into(), reason: e.to_string() })
}

impl KeyRecord {
    fn err(&self, reason: impl Into<String>) -> KeyError {
        KeyError::Record { key_id: self.key_id.clone(), reason: reason.into() }
    }

    /// Checks that need no secret: a valid id, the binding context (exactly
    /// the reserved entries for this id, spec and origin, and no other key in
    /// the reserved namespace), a public key of the stated spec, a sealed key
    /// of plausible size.
    pub fn check(&self) -> Result<PublicKey, KeyError> {
        check_key_id(&self.key_id)?;
        let want = [(CONTEXT_KEY_ID, self.key_id.as_str()), (CONTEXT_SPEC, self.spec.as_str()), (CONTEXT_ORIGIN, self.origin.as_str())];
        for (k, v) in want {
            if self.encryption_context.get(k).map(String::as_str) != Some(v) {
                return Err(self.err(format!(
                    "its encryption context does not bind {k} to {v:?} (a record made before nekms-key:v2 provenance, or altered)"
                )));
            }
        }
        crate::context::Usage::of_context(&self.encryption_context, self.spec)
            .map_err(|e| self.err(format!("its encryption context's usage: {e}")))?;
        if let Some(k) = self
            .encryption_context
            .keys()
            .find(|k| is_reserved(k) && k.as_str() != crate::context::USAGE && !want.iter().any(|(w, _)| w == k))
        {
            return Err(self.err(format!("its encryption context holds {k:?}, a reserved key no record carries")));
        }
        let public = PublicKey::from_spki(&self.public_key).map_err(|e| self.err(e.to_string()))?;
        if public.spec() != self.spec {
            return Err(self.err(format!("the public key is {}, the record says {}", public.spec(), self.spec)));
        }
        if self.sealed_private_key.len() < crate::envelope::OVERHEAD + 32 {
            return Err(self.err("the sealed private key is too short"));
        }
        if self.encrypted_data_key.is_empty() || self.kms_key_id.is_empty() {
            return Err(self.err("the data key or the KMS key id is missing"));
        }
        Ok(public)
    }

    /// Whether the record's key was made to decrypt as well as sign
    /// (`nekms:usage`, bound into its data key's context and its seal).
    pub fn may_decrypt(&self) -> bool {
        self.usage() == crate::context::Usage::SignDecrypt
    }

    /// What the record's key was made for (`nekms:usage`); a usage its spec
    /// may not carry reads as plain signing here and is refused by [`KeyRecord::check`].
    pub fn usage(&self) -> crate::context::Usage {
        crate::context::Usage::of_context(&self.encryption_context, self.spec).unwrap_or_default()
    }

    /// Whether the record holds a validator's consensus key, which only the
    /// validator signer signs with.
    pub fn is_privval(&self) -> bool {
        self.encryption_context.get(crate::context::USAGE).map(String::as_str) == Some(crate::context::USAGE_PRIVVAL)
    }

    pub fn public(&self) -> Result<PublicKey, KeyError> {
        self.check()
    }

    /// What the creating enclave's attestation carries as user_data:
    /// `nekms-key:v2:<origin>:<key id>:<spec>:<SHA-256 of the SPKI, hex>:<binding, hex>`,
    /// where the binding is SHA-256 over the KMS key ARN and the encryption
    /// context, each length-prefixed. A verifier recomputes it from the
    /// record ([`KeyRecord::origin_commitment`]); the enclave never puts a
    /// caller's bytes after this prefix.
    pub fn origin_commitment(&self, public: &PublicKey) -> Vec<u8> {
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

    /// A stable digest of the sealed fields, used to cache opened keys: a
    /// record that differs in any of them is a different cache entry.
    pub fn cache_digest(&self) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&crate::envelope::associated_data(self));
        for field in [&self.encrypted_data_key, &self.sealed_private_key] {
            ctx.update(&(field.len() as u64).to_be_bytes());
            ctx.update(field);
        }
        ctx.finish().as_ref().try_into().expect("SHA-256")
    }
}

/// Bytes as base64 in JSON, as a byte string in CBOR.
pub(crate) mod b64 {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            base64::engine::general_purpose::STANDARD.decode(s).map_err(serde::de::Error::custom)
        } else {
            serde_bytes::ByteBuf::deserialize(d).map(|b| b.into_vec())
        }
    }
}

pub(crate) mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct W(#[serde(with = "super::b64")] Vec<u8>);

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        v.as_ref().map(|b| W(b.clone())).serialize(s)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

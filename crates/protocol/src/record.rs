//! The key record: everything the parent stores about a key, all of it
//! public. The private key is in it only sealed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::KeyError;
use crate::spec::KeySpec;

use crate::context::record_context;
pub use crate::context::{KEY_ID as CONTEXT_KEY_ID, KEY_SPEC as CONTEXT_SPEC, ORIGIN as CONTEXT_ORIGIN};

/// What an origin commitment starts with (nekms-keys' `RecordExt::origin_commitment`).
pub const COMMITMENT_PREFIX: &str = "nekms-key:v2:";
/// What every attestation document the enclave makes for a caller carries
/// before the caller's user_data, so that caller data never reads as a
/// statement the enclave makes itself.
pub const CALLER_PREFIX: &[u8] = b"nekms-caller:v1:";

/// What a refusal for a record without its origin document says, so a
/// client that sent a record without it (to spare the bytes) knows to send
/// it whole.
pub const ORIGIN_MISSING: &str = "has no origin document";

/// How the key came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Made inside an enclave.
    Generated,
    /// Brought by an administrator, KMS-encrypted.
    Imported,
    /// Re-sealed under another custody key by a migration a quorum
    /// approved; the record carries the approval (`migration`).
    Migrated,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Generated => "generated",
            Origin::Imported => "imported",
            Origin::Migrated => "migrated",
        }
    }
}

impl std::str::FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Origin, String> {
        match s {
            "generated" => Ok(Origin::Generated),
            "imported" => Ok(Origin::Imported),
            "migrated" => Ok(Origin::Migrated),
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
    /// its user_data commits to the public key (nekms-keys' `RecordExt::origin_commitment`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub attestation: Option<Vec<u8>>,
    /// A migrated record's approval: the statement, the approvals, its
    /// manifest leaf and proof (JSON, `nekms_keys::migration::MigrationProof`),
    /// bound into the data key's context (`nekms:migration`).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub migration: Option<Vec<u8>>,
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
    /// Whether the record's key was made to decrypt, as well as or instead
    /// of signing (`nekms:usage`, bound into its data key's context and its seal).
    pub fn may_decrypt(&self) -> bool {
        self.usage().decrypts()
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
}

/// Bytes as base64 in JSON, as a byte string in CBOR.
pub mod b64 {
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

pub mod opt_b64 {
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

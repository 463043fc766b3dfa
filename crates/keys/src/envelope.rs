//! Sealing a private key under a KMS data key: AES-256-GCM with the record's
//! public fields as associated data, so a sealed key moved to another record,
//! or a record whose public key, spec, id, KMS key or context was edited,
//! does not open.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::record::KeyRecord;
#[cfg(feature = "private-keys")]
use crate::record::RecordExt;
use crate::KeyError;

const VERSION: u8 = 1;
/// Version byte, nonce and tag.
pub const OVERHEAD: usize = 1 + NONCE_LEN + 16;

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// The associated data: every public field that says what the key is.
pub fn associated_data(r: &KeyRecord) -> Vec<u8> {
    let mut out = b"nekms sealed key v1\0".to_vec();
    put(&mut out, r.key_id.as_bytes());
    put(&mut out, r.spec.as_str().as_bytes());
    put(&mut out, &r.public_key);
    put(&mut out, r.kms_key_id.as_bytes());
    put(&mut out, r.origin.as_str().as_bytes());
    out.extend_from_slice(&(r.encryption_context.len() as u32).to_be_bytes());
    for (k, v) in &r.encryption_context {
        put(&mut out, k.as_bytes());
        put(&mut out, v.as_bytes());
    }
    out
}

fn key(data_key: &[u8]) -> Result<LessSafeKey, KeyError> {
    if data_key.len() != 32 {
        return Err(KeyError::Crypto("the data key is not 32 bytes (AES-256)"));
    }
    Ok(LessSafeKey::new(UnboundKey::new(&AES_256_GCM, data_key).map_err(|_| KeyError::Crypto("AES-256-GCM key"))?))
}

/// Seal `secret` for `record` (whose `sealed_private_key` is ignored).
pub fn seal(data_key: &[u8], record: &KeyRecord, secret: &[u8]) -> Result<Vec<u8>, KeyError> {
    let key = key(data_key)?;
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).map_err(|_| KeyError::Crypto("random nonce"))?;
    let mut body = Zeroizing::new(secret.to_vec());
    key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(associated_data(record)), &mut *body)
        .map_err(|_| KeyError::Crypto("AES-256-GCM seal"))?;
    let mut out = Vec::with_capacity(OVERHEAD + secret.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&body);
    Ok(out)
}

/// Open `record.sealed_private_key`.
pub fn open(data_key: &[u8], record: &KeyRecord) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let sealed = &record.sealed_private_key;
    let tampered = || KeyError::Sealed { key_id: record.key_id.clone() };
    if sealed.len() < OVERHEAD || sealed[0] != VERSION {
        return Err(tampered());
    }
    let key = key(data_key)?;
    let nonce = Nonce::try_assume_unique_for_key(&sealed[1..1 + NONCE_LEN]).map_err(|_| tampered())?;
    let mut body = Zeroizing::new(sealed[1 + NONCE_LEN..].to_vec());
    let len = key.open_in_place(nonce, Aad::from(associated_data(record)), &mut body).map_err(|_| tampered())?.len();
    body.truncate(len);
    Ok(body)
}

/// Seal `private` into `record`, whose public fields must already describe it.
#[cfg(feature = "private-keys")]
pub fn seal_record(mut record: KeyRecord, data_key: &[u8], private: &crate::PrivateKey) -> Result<KeyRecord, KeyError> {
    if record.public_key != private.public_key().spki() || record.spec != private.spec() {
        return Err(KeyError::Record { key_id: record.key_id, reason: "the record does not describe the key being sealed".into() });
    }
    record.sealed_private_key = seal(data_key, &record, &private.secret_bytes()?)?;
    record.check()?;
    Ok(record)
}

/// Open a record's key and refuse it unless it is the record's public key.
#[cfg(feature = "private-keys")]
pub fn open_record(record: &KeyRecord, data_key: &[u8]) -> Result<crate::PrivateKey, KeyError> {
    record.check()?;
    let secret = open(data_key, record)?;
    let private = crate::PrivateKey::from_secret(record.spec, &secret).map_err(|_| KeyError::Sealed { key_id: record.key_id.clone() })?;
    if private.public_key().spki() != record.public_key {
        return Err(KeyError::Mismatch { key_id: record.key_id.clone() });
    }
    Ok(private)
}

//! The local KMS's ciphertext blobs.
//!
//! ```text
//! "NEKMS" | version=1 | len16(key ARN) | key ARN | material version (u32 BE)
//!         | nonce (12) | AES-256-GCM ciphertext || tag (16)
//! ```
//!
//! The associated data is everything before the nonce followed by the
//! encryption context (sorted by key, each key and value length-prefixed), so
//! a changed key ARN, material version, context, nonce or ciphertext byte all
//! fail authentication. Like real KMS blobs, a blob names its key, so Decrypt
//! needs no KeyId for symmetric keys; rotated material keeps its version so
//! old blobs still decrypt.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

const MAGIC: &[u8; 5] = b"NEKMS";
const VERSION: u8 = 1;
const TAG_LEN: usize = 16;
/// Real KMS's limit on CiphertextBlob.
pub const MAX_BLOB: usize = 6144;

/// An encryption context: sorted, so its encoding is canonical.
pub use nekms_kms_proto::request::EncryptionContext;

/// Why a blob cannot be opened (`InvalidCiphertextException` on the wire).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    #[error("the ciphertext is not a ciphertext blob of this KMS")]
    NotABlob,
    #[error("the ciphertext blob version {0} is not supported")]
    Version(u8),
    #[error("the ciphertext is {0} bytes; the limit is {MAX_BLOB}")]
    TooLarge(usize),
    #[error("the ciphertext or its encryption context has been altered, or the context is wrong")]
    Authentication,
}

/// What a blob says about itself before it is opened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobHeader {
    pub key_arn: String,
    pub material_version: u32,
    /// Length of the header (the first part of the associated data).
    header_len: usize,
}

fn context_bytes(context: &EncryptionContext) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in context {
        out.extend_from_slice(&(k.len() as u32).to_be_bytes());
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(&(v.len() as u32).to_be_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

fn key(material: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, material).expect("32-byte AES-256 key"))
}

/// Encrypt `plaintext` under `material` (version `material_version` of key `key_arn`).
pub fn seal(key_arn: &str, material_version: u32, material: &[u8; 32], context: &EncryptionContext, plaintext: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 1 + 2 + key_arn.len() + 4 + NONCE_LEN + plaintext.len() + TAG_LEN);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.extend_from_slice(&(key_arn.len() as u16).to_be_bytes());
    out.extend_from_slice(key_arn.as_bytes());
    out.extend_from_slice(&material_version.to_be_bytes());
    let mut aad = out.clone();
    aad.extend_from_slice(&context_bytes(context));
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new().fill(&mut nonce).expect("system RNG");
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    key(material).seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body).expect("AES-GCM seal");
    out.extend_from_slice(&body);
    out
}

/// Read the header without decrypting (to find the key).
pub fn peek(blob: &[u8]) -> Result<BlobHeader, BlobError> {
    if blob.len() > MAX_BLOB {
        return Err(BlobError::TooLarge(blob.len()));
    }
    if blob.len() < MAGIC.len() + 1 || &blob[..5] != MAGIC {
        return Err(BlobError::NotABlob);
    }
    if blob[5] != VERSION {
        return Err(BlobError::Version(blob[5]));
    }
    let arn_len = blob.get(6..8).map(|b| u16::from_be_bytes([b[0], b[1]]) as usize).ok_or(BlobError::NotABlob)?;
    let arn_end = 8 + arn_len;
    let key_arn = blob.get(8..arn_end).and_then(|b| std::str::from_utf8(b).ok()).ok_or(BlobError::NotABlob)?;
    let version = blob.get(arn_end..arn_end + 4).ok_or(BlobError::NotABlob)?;
    let header_len = arn_end + 4;
    if blob.len() < header_len + NONCE_LEN + TAG_LEN {
        return Err(BlobError::NotABlob);
    }
    Ok(BlobHeader {
        key_arn: key_arn.to_owned(),
        material_version: u32::from_be_bytes([version[0], version[1], version[2], version[3]]),
        header_len,
    })
}

/// Decrypt a blob whose header is `header` with the matching material.
pub fn open(blob: &[u8], header: &BlobHeader, material: &[u8; 32], context: &EncryptionContext) -> Result<Zeroizing<Vec<u8>>, BlobError> {
    let mut aad = blob[..header.header_len].to_vec();
    aad.extend_from_slice(&context_bytes(context));
    let nonce: [u8; NONCE_LEN] = blob[header.header_len..header.header_len + NONCE_LEN].try_into().expect("length checked in peek");
    let mut body = Zeroizing::new(blob[header.header_len + NONCE_LEN..].to_vec());
    let len = key(material)
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body)
        .map_err(|_| BlobError::Authentication)?
        .len();
    body.truncate(len);
    Ok(body)
}

impl From<BlobError> for crate::error::KmsError {
    fn from(e: BlobError) -> crate::error::KmsError {
        crate::error::KmsError::invalid_ciphertext(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab";

    fn ctx(pairs: &[(&str, &str)]) -> EncryptionContext {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_blob_names_its_key_and_opens_with_its_context() {
        let m = [7u8; 32];
        let c = ctx(&[("purpose", "test"), ("app", "nekms")]);
        let blob = seal(ARN, 3, &m, &c, b"Hello, KMS!");
        let h = peek(&blob).unwrap();
        assert_eq!((h.key_arn.as_str(), h.material_version), (ARN, 3));
        assert_eq!(&open(&blob, &h, &m, &c).unwrap()[..], b"Hello, KMS!");
    }

    #[test]
    fn any_change_is_an_authentication_failure() {
        let m = [7u8; 32];
        let c = ctx(&[("purpose", "test")]);
        let blob = seal(ARN, 1, &m, &c, b"secret");
        let h = peek(&blob).unwrap();
        assert_eq!(open(&blob, &h, &m, &ctx(&[("purpose", "prod")])).unwrap_err(), BlobError::Authentication);
        assert_eq!(open(&blob, &h, &m, &ctx(&[])).unwrap_err(), BlobError::Authentication);
        assert_eq!(open(&blob, &h, &[8u8; 32], &c).unwrap_err(), BlobError::Authentication);
        for i in 0..blob.len() {
            let mut bad = blob.clone();
            bad[i] ^= 0x01;
            let result = peek(&bad).and_then(|h| open(&bad, &h, &m, &c));
            assert!(result.is_err(), "byte {i} flipped yet the blob opened");
        }
    }

    #[test]
    fn foreign_or_truncated_bytes_are_not_blobs() {
        assert_eq!(peek(b"").unwrap_err(), BlobError::NotABlob);
        assert_eq!(peek(b"AQICAHh...not ours").unwrap_err(), BlobError::NotABlob);
        let blob = seal(ARN, 1, &[1; 32], &ctx(&[]), b"x");
        assert_eq!(peek(&blob[..20]).unwrap_err(), BlobError::NotABlob);
        let mut v2 = blob.clone();
        v2[5] = 2;
        assert_eq!(peek(&v2).unwrap_err(), BlobError::Version(2));
        assert_eq!(peek(&vec![0u8; 7000]).unwrap_err(), BlobError::TooLarge(7000));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data: Vec<u8>) {
            if let Ok(h) = peek(&data) {
                let _ = open(&data, &h, &[0; 32], &EncryptionContext::new());
            }
        }
    }
}

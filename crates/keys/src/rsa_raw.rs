//! The RSA operations AWS-LC's safe interface (aws-lc-rs) does not offer,
//! called through aws-lc-sys on the same library: PKCS#1 v1.5 signing of
//! caller-built bytes (what PKCS#11's raw `CKM_RSA_PKCS` is), PSS with any
//! hash, MGF1 hash and salt length, the raw private operation
//! (`CKM_RSA_X_509`, for keys allowed to decrypt only), and the matching
//! public operations. Each call parses the key from its DER for the call
//! and frees it after; AWS-LC blinds every private operation and clears
//! the key when it frees it. This is the only unsafe code of the crate.
#![allow(unsafe_code)]

use aws_lc_sys as sys;
#[cfg(feature = "private-keys")]
use zeroize::Zeroizing;

use crate::Hash;
use crate::KeyError;

/// An `EVP_PKEY` holding an RSA key, freed when dropped.
struct Pkey(*mut sys::EVP_PKEY);

impl Drop for Pkey {
    fn drop(&mut self) {
        // SAFETY: the pointer came from EVP_parse_*_key and is freed once.
        unsafe { sys::EVP_PKEY_free(self.0) }
    }
}

impl Pkey {
    fn parse(der: &[u8], private: bool) -> Result<Pkey, KeyError> {
        // SAFETY: CBS_init only records the slice, which outlives the parse;
        // the parser reads at most `der.len()` bytes.
        let pkey = unsafe {
            let mut cbs = std::mem::zeroed::<sys::CBS>();
            sys::CBS_init(&mut cbs, der.as_ptr(), der.len());
            if private {
                sys::EVP_parse_private_key(&mut cbs)
            } else {
                sys::EVP_parse_public_key(&mut cbs)
            }
        };
        if pkey.is_null() {
            return Err(KeyError::Crypto("RSA key encoding"));
        }
        let pkey = Pkey(pkey);
        if pkey.rsa().is_null() {
            return Err(KeyError::Crypto("not an RSA key"));
        }
        Ok(pkey)
    }

    fn rsa(&self) -> *mut sys::RSA {
        // SAFETY: a live EVP_PKEY; the RSA it returns lives as long as it.
        unsafe { sys::EVP_PKEY_get0_RSA(self.0) }
    }

    fn size(&self) -> usize {
        // SAFETY: a live RSA key.
        unsafe { sys::RSA_size(self.rsa()) as usize }
    }
}

fn md(hash: Hash) -> *const sys::EVP_MD {
    // SAFETY: these return pointers to static tables.
    unsafe {
        match hash {
            Hash::Sha1 => sys::EVP_sha1(),
            Hash::Sha224 => sys::EVP_sha224(),
            Hash::Sha256 => sys::EVP_sha256(),
            Hash::Sha384 => sys::EVP_sha384(),
            Hash::Sha512 => sys::EVP_sha512(),
        }
    }
}

#[cfg(feature = "private-keys")]
/// The private operation with `padding` (RSA_PKCS1_PADDING: `input` is
/// padded with PKCS#1 v1.5 type 1 and may be up to k-11 bytes;
/// RSA_NO_PADDING: `input` is k bytes, as an integer below the modulus).
fn private_op(pkcs8: &[u8], input: &[u8], padding: i32) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let key = Pkey::parse(pkcs8, true)?;
    let k = key.size();
    let mut out = Zeroizing::new(vec![0u8; k]);
    let mut len = 0usize;
    // SAFETY: `out` has k writable bytes, `input` is readable for its length.
    let ok = unsafe { sys::RSA_sign_raw(key.rsa(), &mut len, out.as_mut_ptr(), k, input.as_ptr(), input.len(), padding) };
    if ok != 1 || len != k {
        return Err(KeyError::Payload(match padding {
            sys::RSA_PKCS1_PADDING => format!("PKCS#1 v1.5 signs at most {} bytes with this key, not {}", k - 11, input.len()),
            _ => format!("the raw RSA operation takes {k} bytes below the modulus"),
        }));
    }
    Ok(out)
}

#[cfg(feature = "private-keys")]
/// PKCS#1 v1.5 (type 1) signature over `t`, a DigestInfo. Never give it
/// bytes a caller chose freely: with most of the block chosen, two such
/// signatures combine into a raw private operation (a decryption), by
/// lattice reduction.
pub(crate) fn sign_pkcs1(pkcs8: &[u8], t: &[u8]) -> Result<Vec<u8>, KeyError> {
    Ok(private_op(pkcs8, t, sys::RSA_PKCS1_PADDING)?.to_vec())
}

#[cfg(feature = "private-keys")]
/// The raw private operation, m^d mod n, over k bytes.
pub(crate) fn private_raw(pkcs8: &[u8], input: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    private_op(pkcs8, input, sys::RSA_NO_PADDING)
}

#[cfg(feature = "private-keys")]
/// PSS over `digest` (a `hash` digest), MGF1 over `mgf`, `salt` bytes.
pub(crate) fn sign_pss(pkcs8: &[u8], digest: &[u8], hash: Hash, mgf: Hash, salt: usize) -> Result<Vec<u8>, KeyError> {
    if digest.len() != hash.output_len() {
        return Err(KeyError::Payload(format!("PSS with {} signs a {}-byte digest, not {}", hash.name(), hash.output_len(), digest.len())));
    }
    let key = Pkey::parse(pkcs8, true)?;
    let k = key.size();
    if salt + hash.output_len() + 2 > k {
        return Err(KeyError::Scheme(format!("a {}-byte salt with {} does not fit a {}-bit key", salt, hash.name(), k * 8)));
    }
    let mut out = vec![0u8; k];
    let mut len = 0usize;
    // SAFETY: `out` has k writable bytes; the digest length matches `md`;
    // the salt length was checked against the key.
    let ok = unsafe {
        sys::RSA_sign_pss_mgf1(key.rsa(), &mut len, out.as_mut_ptr(), k, digest.as_ptr(), digest.len(), md(hash), md(mgf), salt as i32)
    };
    if ok != 1 || len != k {
        return Err(KeyError::Crypto("RSA-PSS signing"));
    }
    Ok(out)
}

/// The public operation on a k-byte signature with `padding`: what was
/// signed (PKCS#1 v1.5: the padded bytes `t`; none: the integer).
fn public_op(spki: &[u8], signature: &[u8], padding: i32) -> Option<Vec<u8>> {
    let key = Pkey::parse(spki, false).ok()?;
    let k = key.size();
    if signature.len() != k {
        return None;
    }
    let mut out = vec![0u8; k];
    let mut len = 0usize;
    // SAFETY: `out` has k writable bytes, `signature` k readable ones.
    let ok = unsafe { sys::RSA_verify_raw(key.rsa(), &mut len, out.as_mut_ptr(), k, signature.as_ptr(), k, padding) };
    (ok == 1).then(|| {
        out.truncate(len);
        out
    })
}

/// Whether `signature` is a PKCS#1 v1.5 signature over exactly `t`.
pub(crate) fn verify_pkcs1(spki: &[u8], t: &[u8], signature: &[u8]) -> bool {
    public_op(spki, signature, sys::RSA_PKCS1_PADDING).is_some_and(|got| got == t)
}

/// The public operation without padding (CKM_RSA_X_509's verification and
/// encryption): s^e mod n, k bytes.
pub fn public_raw(spki: &[u8], input: &[u8]) -> Option<Vec<u8>> {
    public_op(spki, input, sys::RSA_NO_PADDING)
}

/// Whether `signature` is a PSS signature over `digest`.
pub(crate) fn verify_pss(spki: &[u8], digest: &[u8], hash: Hash, mgf: Hash, salt: usize, signature: &[u8]) -> bool {
    let Ok(key) = Pkey::parse(spki, false) else {
        return false;
    };
    if digest.len() != hash.output_len() || signature.len() != key.size() || salt + hash.output_len() + 2 > key.size() {
        return false;
    }
    // SAFETY: the lengths were checked; the key is live.
    unsafe {
        sys::RSA_verify_pss_mgf1(
            key.rsa(),
            digest.as_ptr(),
            digest.len(),
            md(hash),
            md(mgf),
            salt as i32,
            signature.as_ptr(),
            signature.len(),
        ) == 1
    }
}

pub use nekms_protocol::digest_info::{digest_info, parse_digest_info, DIGEST_INFO};

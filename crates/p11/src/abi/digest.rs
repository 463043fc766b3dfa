//! C_DigestInit, C_Digest, C_DigestUpdate, C_DigestFinal.

use cryptoki_sys::*;

use super::{bytes, entry, mechanism_type, out_space, write_reply};
use crate::digest;

#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM) -> CK_RV {
    entry(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM (PKCS#11 C_DigestInit).
        let mechanism = unsafe { mechanism_type(mechanism) };
        digest::digest_init(m, session, mechanism)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Digest(
    session: CK_SESSION_HANDLE,
    data: *mut u8,
    data_len: CK_ULONG,
    out: *mut u8,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    entry(|m| {
        // SAFETY: pData points to ulDataLen bytes, and a non-NULL
        // pulDigestLen to a CK_ULONG (PKCS#11 C_Digest); `bytes` and
        // `out_space` check for NULL.
        let (data, space) = unsafe { (bytes(data, data_len), out_space(out, out_len)) };
        let reply = digest::digest(m, session, data, space)?;
        // SAFETY: `space` was read from `out` and `out_len`: a non-NULL
        // pDigest points to `*pulDigestLen` bytes (PKCS#11 C_Digest).
        unsafe { write_reply(out, out_len, space, reply) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pPart points to ulPartLen bytes (PKCS#11 C_DigestUpdate);
        // `bytes` checks for NULL.
        let part = unsafe { bytes(part, part_len) };
        digest::digest_update(m, session, part)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestFinal(session: CK_SESSION_HANDLE, out: *mut u8, out_len: *mut CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: a non-NULL pulDigestLen points to a CK_ULONG (PKCS#11
        // C_DigestFinal); `out_space` checks for NULL.
        let space = unsafe { out_space(out, out_len) };
        let reply = digest::digest_final(m, session, space)?;
        // SAFETY: `space` was read from `out` and `out_len`: a non-NULL
        // pDigest points to `*pulDigestLen` bytes (PKCS#11 C_DigestFinal).
        unsafe { write_reply(out, out_len, space, reply) }
    })
}

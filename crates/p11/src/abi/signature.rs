//! C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_VerifyInit, C_Verify,
//! C_VerifyUpdate, C_VerifyFinal.

use cryptoki_sys::*;

use super::{bytes, entry, out_space, signing_mechanism, write_reply};
use crate::signature;

#[no_mangle]
pub unsafe extern "C" fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    entry(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM whose parameter holds `ulParameterLen` bytes (PKCS#11
        // C_SignInit).
        let mechanism = unsafe { signing_mechanism(mechanism) };
        signature::sign_init(m, session, &mechanism, key)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut u8,
    data_len: CK_ULONG,
    sig: *mut u8,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    entry(|m| {
        // SAFETY: pData points to ulDataLen bytes, and a non-NULL
        // pulSignatureLen to a CK_ULONG (PKCS#11 C_Sign); `bytes` and
        // `out_space` check for NULL.
        let (data, space) = unsafe { (bytes(data, data_len), out_space(sig, sig_len)) };
        let reply = signature::sign(m, session, data, space)?;
        // SAFETY: `space` was read from `sig` and `sig_len`: a non-NULL
        // pSignature points to `*pulSignatureLen` bytes (PKCS#11 C_Sign).
        unsafe { write_reply(sig, sig_len, space, reply) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pPart points to ulPartLen bytes (PKCS#11 C_SignUpdate);
        // `bytes` checks for NULL.
        let part = unsafe { bytes(part, part_len) };
        signature::sign_update(m, session, part)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(session: CK_SESSION_HANDLE, sig: *mut u8, sig_len: *mut CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: a non-NULL pulSignatureLen points to a CK_ULONG (PKCS#11
        // C_SignFinal); `out_space` checks for NULL.
        let space = unsafe { out_space(sig, sig_len) };
        let reply = signature::sign_final(m, session, space)?;
        // SAFETY: `space` was read from `sig` and `sig_len`: a non-NULL
        // pSignature points to `*pulSignatureLen` bytes (PKCS#11 C_SignFinal).
        unsafe { write_reply(sig, sig_len, space, reply) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    entry(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM whose parameter holds `ulParameterLen` bytes (PKCS#11
        // C_VerifyInit).
        let mechanism = unsafe { signing_mechanism(mechanism) };
        signature::verify_init(m, session, &mechanism, key)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Verify(session: CK_SESSION_HANDLE, data: *mut u8, data_len: CK_ULONG, sig: *mut u8, sig_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pData points to ulDataLen bytes and pSignature to
        // ulSignatureLen bytes (PKCS#11 C_Verify); `bytes` checks for NULL.
        let (data, sig) = unsafe { (bytes(data, data_len), bytes(sig, sig_len)) };
        signature::verify(m, session, data, sig)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pPart points to ulPartLen bytes (PKCS#11 C_VerifyUpdate);
        // `bytes` checks for NULL.
        let part = unsafe { bytes(part, part_len) };
        signature::verify_update(m, session, part)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(session: CK_SESSION_HANDLE, sig: *mut u8, sig_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pSignature points to ulSignatureLen bytes (PKCS#11
        // C_VerifyFinal); `bytes` checks for NULL.
        let sig = unsafe { bytes(sig, sig_len) };
        signature::verify_final(m, session, sig)
    })
}

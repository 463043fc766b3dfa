//! C_DecryptInit, C_Decrypt, C_EncryptInit, C_Encrypt.

use cryptoki_sys::*;

use super::{bytes, cipher_mechanism, entry, out_space, write_reply};
use crate::encryption;

#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    entry(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM whose parameter holds `ulParameterLen` bytes (PKCS#11
        // C_DecryptInit), and an OAEP label `ulSourceDataLen` bytes.
        let mechanism = unsafe { cipher_mechanism(mechanism) };
        encryption::decrypt_init(m, session, &mechanism, key)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Decrypt(
    session: CK_SESSION_HANDLE,
    data: *mut u8,
    data_len: CK_ULONG,
    out: *mut u8,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    entry(|m| {
        // SAFETY: pEncryptedData points to ulEncryptedDataLen bytes, and a
        // non-NULL pulDataLen to a CK_ULONG (PKCS#11 C_Decrypt); `bytes` and
        // `out_space` check for NULL.
        let (data, space) = unsafe { (bytes(data, data_len), out_space(out, out_len)) };
        let reply = encryption::decrypt(m, session, data, space)?;
        // SAFETY: `space` was read from `out` and `out_len`: a non-NULL pData
        // points to `*pulDataLen` bytes (PKCS#11 C_Decrypt). The safe code
        // has returned, so its view of `data`, which may be the same
        // buffer, has ended.
        unsafe { write_reply(out, out_len, space, reply) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    entry(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM whose parameter holds `ulParameterLen` bytes (PKCS#11
        // C_EncryptInit), and an OAEP label `ulSourceDataLen` bytes.
        let mechanism = unsafe { cipher_mechanism(mechanism) };
        encryption::encrypt_init(m, session, &mechanism, key)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Encrypt(
    session: CK_SESSION_HANDLE,
    data: *mut u8,
    data_len: CK_ULONG,
    out: *mut u8,
    out_len: *mut CK_ULONG,
) -> CK_RV {
    entry(|m| {
        // SAFETY: pData points to ulDataLen bytes, and a non-NULL
        // pulEncryptedDataLen to a CK_ULONG (PKCS#11 C_Encrypt); `bytes` and
        // `out_space` check for NULL.
        let (data, space) = unsafe { (bytes(data, data_len), out_space(out, out_len)) };
        let reply = encryption::encrypt(m, session, data, space)?;
        // SAFETY: `space` was read from `out` and `out_len`: a non-NULL
        // pEncryptedData points to `*pulEncryptedDataLen` bytes (PKCS#11
        // C_Encrypt). The safe code has returned, so its view of `data`,
        // which may be the same buffer, has ended.
        unsafe { write_reply(out, out_len, space, reply) }
    })
}

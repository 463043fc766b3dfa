//! The function list (C_GetFunctionList), the PKCS#11 3.0 interface
//! (C_GetInterfaceList, C_GetInterface), and the functions this version
//! does not offer.

use std::os::raw::{c_char, c_void};

use cryptoki_sys::*;

// Every entry point of the other ABI files, and the helpers.
use super::*;

/// Functions this version does not offer: in the list, not exported.
macro_rules! unsupported {
    ($($name:ident($($arg:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name($(_: $arg),*) -> CK_RV {
                entry(|_| Err(CKR_FUNCTION_NOT_SUPPORTED))
            }
        )*
    };
}

type H = CK_SESSION_HANDLE;
type O = CK_OBJECT_HANDLE;
type U = CK_ULONG;
type B = *mut u8;
type L = *mut CK_ULONG;
type M = *mut CK_MECHANISM;
type T = *mut CK_ATTRIBUTE;
type OH = *mut CK_OBJECT_HANDLE;

unsupported! {
    c_init_token(CK_SLOT_ID, B, U, B);
    c_init_pin(H, B, U);
    c_set_pin(H, B, U, B, U);
    c_get_operation_state(H, B, L);
    c_set_operation_state(H, B, U, O, O);
    c_create_object(H, T, U, OH);
    c_get_object_size(H, O, L);
    c_encrypt_update(H, B, U, B, L);
    c_encrypt_final(H, B, L);
    c_decrypt_update(H, B, U, B, L);
    c_decrypt_final(H, B, L);
    c_digest_key(H, O);
    c_sign_recover_init(H, M, O);
    c_sign_recover(H, B, U, B, L);
    c_verify_recover_init(H, M, O);
    c_verify_recover(H, B, U, B, L);
    c_digest_encrypt_update(H, B, U, B, L);
    c_decrypt_digest_update(H, B, U, B, L);
    c_sign_encrypt_update(H, B, U, B, L);
    c_decrypt_verify_update(H, B, U, B, L);
    c_generate_key(H, M, T, U, OH);
    c_unwrap_key(H, M, O, B, U, T, U, OH);
    c_derive_key(H, M, O, T, U, OH);
    c_get_function_status(H);
    c_cancel_function(H);
}

static FUNCTIONS: CK_FUNCTION_LIST = CK_FUNCTION_LIST {
    version: CK_VERSION { major: 2, minor: 40 },
    C_Initialize: Some(C_Initialize),
    C_Finalize: Some(C_Finalize),
    C_GetInfo: Some(C_GetInfo),
    C_GetFunctionList: Some(C_GetFunctionList),
    C_GetSlotList: Some(C_GetSlotList),
    C_GetSlotInfo: Some(C_GetSlotInfo),
    C_GetTokenInfo: Some(C_GetTokenInfo),
    C_GetMechanismList: Some(C_GetMechanismList),
    C_GetMechanismInfo: Some(C_GetMechanismInfo),
    C_InitToken: Some(c_init_token),
    C_InitPIN: Some(c_init_pin),
    C_SetPIN: Some(c_set_pin),
    C_OpenSession: Some(C_OpenSession),
    C_CloseSession: Some(C_CloseSession),
    C_CloseAllSessions: Some(C_CloseAllSessions),
    C_GetSessionInfo: Some(C_GetSessionInfo),
    C_GetOperationState: Some(c_get_operation_state),
    C_SetOperationState: Some(c_set_operation_state),
    C_Login: Some(C_Login),
    C_Logout: Some(C_Logout),
    C_CreateObject: Some(c_create_object),
    C_CopyObject: Some(C_CopyObject),
    C_DestroyObject: Some(C_DestroyObject),
    C_GetObjectSize: Some(c_get_object_size),
    C_GetAttributeValue: Some(C_GetAttributeValue),
    C_SetAttributeValue: Some(C_SetAttributeValue),
    C_FindObjectsInit: Some(C_FindObjectsInit),
    C_FindObjects: Some(C_FindObjects),
    C_FindObjectsFinal: Some(C_FindObjectsFinal),
    C_EncryptInit: Some(C_EncryptInit),
    C_Encrypt: Some(C_Encrypt),
    C_EncryptUpdate: Some(c_encrypt_update),
    C_EncryptFinal: Some(c_encrypt_final),
    C_DecryptInit: Some(C_DecryptInit),
    C_Decrypt: Some(C_Decrypt),
    C_DecryptUpdate: Some(c_decrypt_update),
    C_DecryptFinal: Some(c_decrypt_final),
    C_DigestInit: Some(C_DigestInit),
    C_Digest: Some(C_Digest),
    C_DigestUpdate: Some(C_DigestUpdate),
    C_DigestKey: Some(c_digest_key),
    C_DigestFinal: Some(C_DigestFinal),
    C_SignInit: Some(C_SignInit),
    C_Sign: Some(C_Sign),
    C_SignUpdate: Some(C_SignUpdate),
    C_SignFinal: Some(C_SignFinal),
    C_SignRecoverInit: Some(c_sign_recover_init),
    C_SignRecover: Some(c_sign_recover),
    C_VerifyInit: Some(C_VerifyInit),
    C_Verify: Some(C_Verify),
    C_VerifyUpdate: Some(C_VerifyUpdate),
    C_VerifyFinal: Some(C_VerifyFinal),
    C_VerifyRecoverInit: Some(c_verify_recover_init),
    C_VerifyRecover: Some(c_verify_recover),
    C_DigestEncryptUpdate: Some(c_digest_encrypt_update),
    C_DecryptDigestUpdate: Some(c_decrypt_digest_update),
    C_SignEncryptUpdate: Some(c_sign_encrypt_update),
    C_DecryptVerifyUpdate: Some(c_decrypt_verify_update),
    C_GenerateKey: Some(c_generate_key),
    C_GenerateKeyPair: Some(C_GenerateKeyPair),
    C_WrapKey: Some(C_WrapKey),
    C_UnwrapKey: Some(c_unwrap_key),
    C_DeriveKey: Some(c_derive_key),
    C_SeedRandom: Some(C_SeedRandom),
    C_GenerateRandom: Some(C_GenerateRandom),
    C_GetFunctionStatus: Some(c_get_function_status),
    C_CancelFunction: Some(c_cancel_function),
    C_WaitForSlotEvent: Some(C_WaitForSlotEvent),
};

#[no_mangle]
pub unsafe extern "C" fn C_GetFunctionList(list: *mut *mut CK_FUNCTION_LIST) -> CK_RV {
    guarded(|| {
        if list.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: `list` is not NULL (checked above) and points to the
        // CK_FUNCTION_LIST_PTR the caller gave for the answer (PKCS#11
        // C_GetFunctionList). The list is a static that callers only read.
        unsafe { list.write(&FUNCTIONS as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST) };
        CKR_OK
    })
}

/// The one interface ("PKCS 11", the 2.40 function list), for PKCS#11 3.0 callers.
struct Interface(CK_INTERFACE);

// SAFETY: the interface's pointers are to immutable statics (its name and
// the function list), which callers only read, so sharing it between
// threads is sound.
unsafe impl Sync for Interface {}

static INTERFACE_NAME: &[u8] = b"PKCS 11\0";
static INTERFACE: Interface = Interface(CK_INTERFACE {
    pInterfaceName: INTERFACE_NAME.as_ptr() as *mut CK_CHAR,
    pFunctionList: &FUNCTIONS as *const CK_FUNCTION_LIST as *mut c_void,
    flags: 0,
});

#[no_mangle]
pub unsafe extern "C" fn C_GetInterfaceList(list: *mut CK_INTERFACE, count: *mut CK_ULONG) -> CK_RV {
    guarded(|| {
        if count.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: `count` is not NULL (checked above); pulCount points to a
        // CK_ULONG and a non-NULL pInterfacesList to `*pulCount` interfaces
        // (PKCS#11 3.0 C_GetInterfaceList).
        rv(unsafe { write_list(list, count, std::slice::from_ref(&INTERFACE.0)) })
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetInterface(
    name: *mut CK_UTF8CHAR,
    version: *mut CK_VERSION,
    out: *mut *mut CK_INTERFACE,
    _flags: CK_FLAGS,
) -> CK_RV {
    guarded(|| {
        if out.is_null() {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: a non-NULL pInterfaceName is a NUL-terminated string
        // (PKCS#11 3.0 C_GetInterface), only read.
        if !name.is_null() && unsafe { std::ffi::CStr::from_ptr(name as *const c_char) }.to_bytes() != b"PKCS 11" {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: a non-NULL pVersion points to a CK_VERSION (PKCS#11 3.0
        // C_GetInterface), only read.
        if !version.is_null() && unsafe { ((*version).major, (*version).minor) } != (2, 40) {
            return CKR_ARGUMENTS_BAD;
        }
        // SAFETY: `out` is not NULL (checked above) and points to the
        // CK_INTERFACE_PTR the caller gave for the answer. The interface is
        // a static that callers only read.
        unsafe { out.write(&INTERFACE.0 as *const CK_INTERFACE as *mut CK_INTERFACE) };
        CKR_OK
    })
}

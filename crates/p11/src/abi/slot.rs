//! C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo, C_GetMechanismList,
//! C_GetMechanismInfo, C_WaitForSlotEvent.

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{entry, write_list};
use crate::slot;

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(_token_present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG) -> CK_RV {
    entry(|m| {
        if count.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let ids = slot::slot_ids(m)?;
        // SAFETY: `count` is not NULL (checked above); pulCount points to a
        // CK_ULONG and a non-NULL pSlotList to `*pulCount` slot IDs (PKCS#11
        // C_GetSlotList).
        unsafe { write_list(list, count, &ids) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    entry(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let answer = slot::slot_info(m, slot)?;
        // SAFETY: `info` is not NULL (checked above) and points to a
        // CK_SLOT_INFO the caller gave for the answer (PKCS#11 C_GetSlotInfo).
        unsafe { info.write(answer) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    entry(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let answer = slot::token_info(m, slot)?;
        // SAFETY: `info` is not NULL (checked above) and points to a
        // CK_TOKEN_INFO the caller gave for the answer (PKCS#11
        // C_GetTokenInfo).
        unsafe { info.write(answer) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG) -> CK_RV {
    entry(|m| {
        if count.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let all = slot::mechanisms(m, slot)?;
        // SAFETY: `count` is not NULL (checked above); pulCount points to a
        // CK_ULONG and a non-NULL pMechanismList to `*pulCount` mechanism
        // types (PKCS#11 C_GetMechanismList).
        unsafe { write_list(list, count, &all) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO) -> CK_RV {
    entry(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let answer = slot::mechanism_info(m, slot, mechanism)?;
        // SAFETY: `info` is not NULL (checked above) and points to a
        // CK_MECHANISM_INFO the caller gave for the answer (PKCS#11
        // C_GetMechanismInfo).
        unsafe { info.write(answer) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(_flags: CK_FLAGS, _slot: *mut CK_SLOT_ID, _reserved: *mut c_void) -> CK_RV {
    entry(|_| Err(CKR_FUNCTION_NOT_SUPPORTED))
}

//! C_Initialize, C_Finalize, C_GetInfo.

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{entry, guarded, rv};
use crate::general;

#[no_mangle]
pub unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guarded(|| {
        if !args.is_null() {
            // SAFETY: a non-NULL pInitArgs points to a CK_C_INITIALIZE_ARGS
            // (PKCS#11 C_Initialize); it is only read.
            let a = unsafe { &*(args as *const CK_C_INITIALIZE_ARGS) };
            if !a.pReserved.is_null() {
                return CKR_ARGUMENTS_BAD;
            }
            let some = [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            if some.iter().any(|x| *x) && !some.iter().all(|x| *x) {
                return CKR_ARGUMENTS_BAD;
            }
        }
        // The module always takes its own lock, whatever the flags and
        // callbacks say.
        rv(general::initialize())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    if !reserved.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    guarded(|| rv(general::finalize()))
}

#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    entry(|_| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let answer = general::info();
        // SAFETY: `info` is not NULL (checked above) and points to a CK_INFO
        // the caller gave for the answer (PKCS#11 C_GetInfo).
        unsafe { info.write(answer) };
        Ok(())
    })
}

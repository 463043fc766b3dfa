//! C_OpenSession, C_CloseSession, C_CloseAllSessions, C_GetSessionInfo,
//! C_Login, C_Logout.

use std::os::raw::c_void;

use cryptoki_sys::*;

use super::{bytes, entry};
use crate::session;

#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    entry(|m| {
        if session.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let h = session::open(m, slot, flags)?;
        // SAFETY: `session` is not NULL (checked above) and points to the
        // CK_SESSION_HANDLE the caller gave for the new handle (PKCS#11
        // C_OpenSession).
        unsafe { session.write(h) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    entry(|m| session::close(m, session))
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    entry(|m| session::close_all(m, slot))
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    entry(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let answer = session::info(m, session)?;
        // SAFETY: `info` is not NULL (checked above) and points to a
        // CK_SESSION_INFO the caller gave for the answer (PKCS#11
        // C_GetSessionInfo).
        unsafe { info.write(answer) };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pPin points to ulPinLen bytes (PKCS#11 C_Login); `bytes`
        // checks for NULL.
        let pin = unsafe { bytes(pin, pin_len) };
        session::login(m, session, user, pin)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    entry(|m| session::logout(m, session))
}

//! Sessions and login: C_OpenSession, C_CloseSession, C_CloseAllSessions,
//! C_GetSessionInfo, C_Login, C_Logout. The enclave checks the PIN and
//! keeps the login, shared by every process of the token; this process
//! remembers which of its slots it logged in.

use cryptoki_sys::*;
use nekms_protocol::rpc::P11Request;
use nekms_protocol::rpc::SecretString;
use zeroize::Zeroizing;

use crate::state::{Module, Session};

/// Most sessions one process keeps open.
const MAX_SESSIONS: usize = 4096;

/// C_OpenSession: the new session's handle.
pub(crate) fn open(m: &mut Module, slot: CK_SLOT_ID, flags: CK_FLAGS) -> Result<CK_SESSION_HANDLE, CK_RV> {
    if flags & CKF_SERIAL_SESSION == 0 {
        return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
    }
    let s = m.known_slot(slot)?;
    let rw = flags & CKF_RW_SESSION != 0;
    if rw && !s.writable {
        return Err(CKR_TOKEN_WRITE_PROTECTED);
    }
    if m.sessions.len() >= MAX_SESSIONS {
        return Err(CKR_SESSION_COUNT);
    }
    m.handle(slot)?;
    let h = m.next_session;
    m.next_session += 1;
    m.sessions.insert(h, Session::new(slot, rw));
    Ok(h)
}

/// C_CloseSession.
pub(crate) fn close(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    m.sessions.remove(&session);
    // The last session on a slot logs the application out (PKCS#11 5.6).
    if !m.sessions.values().any(|s| s.slot == slot) && m.logged_in.remove(&slot) {
        if let Some(handle) = m.handles.get(&slot).cloned() {
            let _ = m.call(P11Request::Logout { handle });
        }
    }
    Ok(())
}

/// C_CloseAllSessions.
pub(crate) fn close_all(m: &mut Module, slot: CK_SLOT_ID) -> Result<(), CK_RV> {
    m.known_slot(slot)?;
    m.sessions.retain(|_, s| s.slot != slot);
    if m.logged_in.remove(&slot) {
        if let Some(handle) = m.handles.get(&slot).cloned() {
            let _ = m.call(P11Request::Logout { handle });
        }
    }
    Ok(())
}

/// C_GetSessionInfo.
pub(crate) fn info(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<CK_SESSION_INFO, CK_RV> {
    let (slot, rw) = (m.session(session)?.slot, m.session(session)?.rw);
    let state = match (rw, m.logged_in.contains(&slot)) {
        (false, false) => CKS_RO_PUBLIC_SESSION,
        (false, true) => CKS_RO_USER_FUNCTIONS,
        (true, false) => CKS_RW_PUBLIC_SESSION,
        (true, true) => CKS_RW_USER_FUNCTIONS,
    };
    let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
    Ok(CK_SESSION_INFO { slotID: slot, state, flags, ulDeviceError: 0 })
}

/// C_Login: the normal user only, with the PIN the enclave checks.
pub(crate) fn login(m: &mut Module, session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: Result<&[u8], CK_RV>) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    match user {
        CKU_USER => {}
        CKU_SO => return Err(CKR_PIN_INCORRECT),
        CKU_CONTEXT_SPECIFIC => return Err(CKR_OPERATION_NOT_INITIALIZED),
        _ => return Err(CKR_USER_TYPE_INVALID),
    }
    if m.logged_in.contains(&slot) {
        return Err(CKR_USER_ALREADY_LOGGED_IN);
    }
    let pin = String::from_utf8(pin?.to_vec()).map_err(|_| CKR_PIN_INVALID)?;
    let handle = m.handle(slot)?;
    match m.call(P11Request::Login { handle, pin: SecretString(Zeroizing::new(pin)) }) {
        Ok(_) => {
            m.logged_in.insert(slot);
            Ok(())
        }
        // Another session of this process logged in first.
        Err(CKR_USER_ALREADY_LOGGED_IN) => {
            m.logged_in.insert(slot);
            Err(CKR_USER_ALREADY_LOGGED_IN)
        }
        Err(rv) => Err(m.gone(slot, rv)),
    }
}

/// C_Logout.
pub(crate) fn logout(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if !m.logged_in.remove(&slot) {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    let handle = m.handle(slot)?;
    m.call(P11Request::Logout { handle }).map(|_| ()).map_err(|rv| m.gone(slot, rv))
}

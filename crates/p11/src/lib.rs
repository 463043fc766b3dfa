//! `libnekms_p11.so`: the PKCS#11 module that runs inside the enclave,
//! loaded by `p11-kit server`, and reaches `nekms-enclave` over an
//! in-enclave socket (`NEKMS_P11_RPC`, default `unix:///run/nekms/p11.sock`).
//!
//! It is thin: tokens, PIN checks, failure counters and login state live in
//! the enclave, because p11-kit's server forks one module process per
//! connection and those must be shared. The module keeps per-process state
//! only: its sessions, their find and sign operations, and a cached copy of
//! the slots' public descriptions (refreshed by C_GetSlotList and
//! C_FindObjectsInit, so a running client sees new tokens).
//!
//! Every entry point checks its pointers and lengths, runs under
//! `catch_unwind` (a panic is CKR_GENERAL_ERROR, never an abort), and holds
//! one process-wide lock, whatever C_Initialize's arguments say. A process
//! forked after C_Initialize must call C_Initialize again (libp11 does).
//!
//! What this first version implements: information, slots, tokens,
//! mechanisms, read-only sessions, login, objects and attributes, signing
//! (RSA PKCS#1 v1.5 and PSS, ECDSA, EdDSA; single- and multi-part) in the
//! enclave, verification and digests (SHA-1, SHA-224/256/384/512) here, and
//! C_GenerateRandom from the NSM. Everything else answers
//! CKR_FUNCTION_NOT_SUPPORTED, and the calls that would copy, change, wrap
//! or destroy a key answer CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY
//! or CKR_KEY_NOT_WRAPPABLE.
#![allow(non_snake_case, clippy::missing_safety_doc)]

pub mod client;
pub mod mech;
pub mod objects;

use std::collections::HashMap;
use std::os::raw::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use cryptoki_sys::*;
use nekms_rpc::protocol::{P11Request, P11Response, P11Slot};
use nekms_rpc::{ErrorCode, Secret, SecretString};
use zeroize::Zeroizing;

use client::{CallError, Conn};
use mech::Mech;
use objects::{Kind, Object, Value};

/// Where the module finds the enclave when `NEKMS_P11_RPC` is not set.
pub const DEFAULT_RPC: &str = "unix:///run/nekms/p11.sock";
/// Most sessions one process keeps open.
const MAX_SESSIONS: usize = 4096;
/// Most random bytes one C_GenerateRandom gives.
const MAX_RANDOM: usize = 64 * 1024;

struct SignOp {
    slot: u64,
    key_id: Vec<u8>,
    spec: nekms_keys::KeySpec,
    sig_len: usize,
    mech: Mech,
    /// The running hash of C_SignUpdate's parts.
    hasher: Option<aws_lc_rs::digest::Context>,
    /// The key was provisioned to decrypt (raw operations allowed).
    decrypt: bool,
}

struct VerifyOp {
    public_key: Vec<u8>,
    spec: nekms_keys::KeySpec,
    sig_len: usize,
    mech: Mech,
    hasher: Option<aws_lc_rs::digest::Context>,
}

struct DecryptOp {
    slot: u64,
    key_id: Vec<u8>,
    modulus_len: usize,
    padding: nekms_keys::RsaPadding,
    label: Option<Vec<u8>>,
    /// A plaintext already computed for a caller whose buffer was too short.
    done: Option<Zeroizing<Vec<u8>>>,
}

/// An encryption with a key's public half, done here (no enclave call).
struct EncryptOp {
    public_key: Vec<u8>,
    modulus_len: usize,
    padding: nekms_keys::RsaPadding,
    label: Option<Vec<u8>>,
}

struct Session {
    slot: u64,
    rw: bool,
    find: Option<(Vec<CK_OBJECT_HANDLE>, usize)>,
    sign: Option<SignOp>,
    verify: Option<VerifyOp>,
    digest: Option<aws_lc_rs::digest::Context>,
    decrypt: Option<DecryptOp>,
    encrypt: Option<EncryptOp>,
}

struct Module {
    pid: u32,
    address: String,
    conn: Option<Conn>,
    slots: Vec<P11Slot>,
    /// Slots whose certificates are in `slots` (the summary has none).
    full: std::collections::HashSet<u64>,
    /// The enclave handle of each slot this process opened.
    handles: HashMap<u64, Secret>,
    logged_in: std::collections::HashSet<u64>,
    sessions: HashMap<CK_SESSION_HANDLE, Session>,
    next_session: CK_SESSION_HANDLE,
}

static MODULE: Mutex<Option<Module>> = Mutex::new(None);

fn debug(message: &str) {
    if std::env::var_os("NEKMS_P11_DEBUG").is_some() {
        eprintln!("libnekms_p11: {message}");
    }
}

fn rv_of(e: CallError) -> CK_RV {
    match e {
        CallError::Transport(m) => {
            debug(&m);
            CKR_DEVICE_ERROR
        }
        CallError::Enclave(e) => {
            debug(&e.message);
            match (e.code, e.pkcs11) {
                (_, Some(rv)) => rv as CK_RV,
                (ErrorCode::BadRequest, _) => CKR_ARGUMENTS_BAD,
                _ => CKR_FUNCTION_FAILED,
            }
        }
    }
}

impl Module {
    fn call(&mut self, request: P11Request) -> Result<P11Response, CK_RV> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(&self.address).map_err(rv_of)?);
        }
        let result = self.conn.as_mut().expect("connected").p11(request);
        if let Err(CallError::Transport(_)) = &result {
            self.conn = None;
        }
        result.map_err(rv_of)
    }

    fn refresh(&mut self) -> Result<(), CK_RV> {
        match self.call(P11Request::Slots)? {
            P11Response::Slots(s) => {
                self.slots = s;
                self.full.clear();
                Ok(())
            }
            _ => Err(CKR_DEVICE_ERROR),
        }
    }

    /// Make sure a slot's entry carries its certificates.
    fn load(&mut self, slot: u64) -> Result<(), CK_RV> {
        if self.full.contains(&slot) {
            return Ok(());
        }
        match self.call(P11Request::Slot { slot }) {
            Ok(P11Response::Slot(full)) => {
                match self.slots.iter_mut().find(|s| s.slot == slot) {
                    Some(s) => *s = full,
                    None => self.slots.push(full),
                }
                self.full.insert(slot);
                Ok(())
            }
            Ok(_) => Err(CKR_DEVICE_ERROR),
            Err(CKR_SLOT_ID_INVALID) => {
                self.slots.retain(|s| s.slot != slot);
                Err(CKR_TOKEN_NOT_PRESENT)
            }
            Err(rv) => Err(rv),
        }
    }

    /// One slot's description fetched again (PIN state, keys,
    /// certificates): one Slot call, not the whole list, so a client that
    /// asks every slot's token info costs one call per slot.
    fn fresh_slot(&mut self, slot: u64) -> Result<(), CK_RV> {
        let known = self.slot(slot).is_some();
        self.full.remove(&slot);
        match self.load(slot) {
            Err(CKR_TOKEN_NOT_PRESENT) if !known => Err(CKR_SLOT_ID_INVALID),
            r => r,
        }
    }

    fn slot(&self, slot: u64) -> Option<&P11Slot> {
        self.slots.iter().find(|s| s.slot == slot)
    }

    fn session(&mut self, h: CK_SESSION_HANDLE) -> Result<&mut Session, CK_RV> {
        self.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// This process's enclave handle on `slot`, opened on first use.
    fn handle(&mut self, slot: u64) -> Result<Secret, CK_RV> {
        if let Some(h) = self.handles.get(&slot) {
            return Ok(h.clone());
        }
        match self.call(P11Request::Open { slot })? {
            P11Response::Opened { handle } => {
                self.handles.insert(slot, handle.clone());
                Ok(handle)
            }
            _ => Err(CKR_DEVICE_ERROR),
        }
    }

    /// Forget a slot whose token is gone: its handle, login and sessions.
    fn token_gone(&mut self, slot: u64) {
        self.handles.remove(&slot);
        self.logged_in.remove(&slot);
        self.sessions.retain(|_, s| s.slot != slot);
    }
}

/// Run `f` on the initialised module of this process.
fn with_module(f: impl FnOnce(&mut Module) -> Result<(), CK_RV>) -> CK_RV {
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut guard = MODULE.lock().unwrap_or_else(|p| p.into_inner());
        match guard.as_mut() {
            Some(m) if m.pid == std::process::id() => f(m),
            _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
        }
    }));
    match outcome {
        Ok(Ok(())) => CKR_OK,
        Ok(Err(rv)) => rv,
        Err(_) => CKR_GENERAL_ERROR,
    }
}

/// Run `f` without the module (C_GetFunctionList, C_Initialize).
fn guarded(f: impl FnOnce() -> CK_RV) -> CK_RV {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(CKR_GENERAL_ERROR)
}

fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

unsafe fn bytes<'a>(p: *const u8, n: CK_ULONG) -> Result<&'a [u8], CK_RV> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts(p, n as usize))
}

// ---- general ----

#[no_mangle]
pub unsafe extern "C" fn C_Initialize(args: *mut c_void) -> CK_RV {
    guarded(|| {
        if !args.is_null() {
            let a = &*(args as *const CK_C_INITIALIZE_ARGS);
            if !a.pReserved.is_null() {
                return CKR_ARGUMENTS_BAD;
            }
            let some = [a.CreateMutex.is_some(), a.DestroyMutex.is_some(), a.LockMutex.is_some(), a.UnlockMutex.is_some()];
            if some.iter().any(|x| *x) && !some.iter().all(|x| *x) {
                return CKR_ARGUMENTS_BAD;
            }
        }
        let mut guard = MODULE.lock().unwrap_or_else(|p| p.into_inner());
        if guard.as_ref().is_some_and(|m| m.pid == std::process::id()) {
            return CKR_CRYPTOKI_ALREADY_INITIALIZED;
        }
        // A fresh start, also in a child forked from an initialised process.
        *guard = Some(Module {
            pid: std::process::id(),
            address: std::env::var("NEKMS_P11_RPC").unwrap_or_else(|_| DEFAULT_RPC.into()),
            conn: None,
            slots: Vec::new(),
            full: Default::default(),
            handles: HashMap::new(),
            logged_in: Default::default(),
            sessions: HashMap::new(),
            next_session: 1,
        });
        CKR_OK
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Finalize(reserved: *mut c_void) -> CK_RV {
    if !reserved.is_null() {
        return CKR_ARGUMENTS_BAD;
    }
    let rv = with_module(|m| {
        let handles: Vec<Secret> = m.handles.drain().map(|(_, h)| h).collect();
        for handle in handles {
            let _ = m.call(P11Request::Close { handle });
        }
        Ok(())
    });
    if rv == CKR_OK {
        *MODULE.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
    rv
}

#[no_mangle]
pub unsafe extern "C" fn C_GetInfo(info: *mut CK_INFO) -> CK_RV {
    with_module(|_| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        *info = CK_INFO {
            cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
            manufacturerID: pad("nekms"),
            flags: 0,
            libraryDescription: pad("nekms enclave PKCS#11 module"),
            libraryVersion: CK_VERSION { major: 0, minor: 1 },
        };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotList(_token_present: CK_BBOOL, list: *mut CK_SLOT_ID, count: *mut CK_ULONG) -> CK_RV {
    with_module(|m| {
        if count.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        m.refresh()?;
        let ids: Vec<CK_SLOT_ID> = m.slots.iter().map(|s| s.slot as CK_SLOT_ID).collect();
        if list.is_null() {
            *count = ids.len() as CK_ULONG;
            return Ok(());
        }
        if (*count as usize) < ids.len() {
            *count = ids.len() as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        std::ptr::copy_nonoverlapping(ids.as_ptr(), list, ids.len());
        *count = ids.len() as CK_ULONG;
        Ok(())
    })
}

fn known_slot(m: &mut Module, slot: CK_SLOT_ID) -> Result<P11Slot, CK_RV> {
    if m.slot(slot).is_none() {
        m.refresh()?;
    }
    m.slot(slot).cloned().ok_or(CKR_SLOT_ID_INVALID)
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSlotInfo(slot: CK_SLOT_ID, info: *mut CK_SLOT_INFO) -> CK_RV {
    with_module(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let s = known_slot(m, slot)?;
        *info = CK_SLOT_INFO {
            slotDescription: pad(&format!("nekms enclave token {}", s.label)),
            manufacturerID: pad("nekms"),
            flags: CKF_TOKEN_PRESENT | CKF_HW_SLOT,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
        };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetTokenInfo(slot: CK_SLOT_ID, info: *mut CK_TOKEN_INFO) -> CK_RV {
    with_module(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        m.fresh_slot(slot)?;
        let s = m.slot(slot).cloned().ok_or(CKR_SLOT_ID_INVALID)?;
        let sessions = m.sessions.values().filter(|x| x.slot == slot).count() as CK_ULONG;
        let mut flags = CKF_RNG | CKF_LOGIN_REQUIRED | CKF_USER_PIN_INITIALIZED | CKF_TOKEN_INITIALIZED;
        if !s.writable {
            flags |= CKF_WRITE_PROTECTED;
        }
        if s.locked {
            flags |= CKF_USER_PIN_LOCKED;
        } else if s.failures > 0 {
            flags |= CKF_USER_PIN_COUNT_LOW;
        }
        *info = CK_TOKEN_INFO {
            label: pad(&s.label),
            manufacturerID: pad("nekms"),
            model: pad("nekms-token"),
            serialNumber: pad(&format!("{:016x}", s.slot)),
            flags,
            ulMaxSessionCount: CK_EFFECTIVELY_INFINITE,
            ulSessionCount: sessions,
            ulMaxRwSessionCount: if s.writable { CK_EFFECTIVELY_INFINITE } else { 0 },
            ulRwSessionCount: 0,
            ulMaxPinLen: 64,
            ulMinPinLen: 4,
            ulTotalPublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePublicMemory: CK_UNAVAILABLE_INFORMATION,
            ulTotalPrivateMemory: CK_UNAVAILABLE_INFORMATION,
            ulFreePrivateMemory: CK_UNAVAILABLE_INFORMATION,
            hardwareVersion: CK_VERSION { major: 0, minor: 1 },
            firmwareVersion: CK_VERSION { major: 0, minor: 1 },
            utcTime: pad(""),
        };
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismList(slot: CK_SLOT_ID, list: *mut CK_MECHANISM_TYPE, count: *mut CK_ULONG) -> CK_RV {
    with_module(|m| {
        if count.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        known_slot(m, slot)?;
        let all: Vec<CK_MECHANISM_TYPE> = mech::MECHANISMS.iter().map(|x| x.0).collect();
        if list.is_null() {
            *count = all.len() as CK_ULONG;
            return Ok(());
        }
        if (*count as usize) < all.len() {
            *count = all.len() as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        std::ptr::copy_nonoverlapping(all.as_ptr(), list, all.len());
        *count = all.len() as CK_ULONG;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetMechanismInfo(slot: CK_SLOT_ID, mechanism: CK_MECHANISM_TYPE, info: *mut CK_MECHANISM_INFO) -> CK_RV {
    with_module(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        known_slot(m, slot)?;
        let (_, min, max, flags) = mech::MECHANISMS.iter().find(|x| x.0 == mechanism).ok_or(CKR_MECHANISM_INVALID)?;
        *info = CK_MECHANISM_INFO { ulMinKeySize: *min, ulMaxKeySize: *max, flags: *flags };
        Ok(())
    })
}

// ---- sessions and login ----

#[no_mangle]
pub unsafe extern "C" fn C_OpenSession(
    slot: CK_SLOT_ID,
    flags: CK_FLAGS,
    _app: *mut c_void,
    _notify: CK_NOTIFY,
    session: *mut CK_SESSION_HANDLE,
) -> CK_RV {
    with_module(|m| {
        if session.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if flags & CKF_SERIAL_SESSION == 0 {
            return Err(CKR_SESSION_PARALLEL_NOT_SUPPORTED);
        }
        let s = known_slot(m, slot)?;
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
        m.sessions.insert(h, Session { slot, rw, find: None, sign: None, verify: None, digest: None, decrypt: None, encrypt: None });
        *session = h;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseSession(session: CK_SESSION_HANDLE) -> CK_RV {
    with_module(|m| {
        let slot = m.session(session)?.slot;
        m.sessions.remove(&session);
        // The last session on a slot logs the application out (PKCS#11 5.6).
        if !m.sessions.values().any(|s| s.slot == slot) && m.logged_in.remove(&slot) {
            if let Some(handle) = m.handles.get(&slot).cloned() {
                let _ = m.call(P11Request::Logout { handle });
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CloseAllSessions(slot: CK_SLOT_ID) -> CK_RV {
    with_module(|m| {
        known_slot(m, slot)?;
        m.sessions.retain(|_, s| s.slot != slot);
        if m.logged_in.remove(&slot) {
            if let Some(handle) = m.handles.get(&slot).cloned() {
                let _ = m.call(P11Request::Logout { handle });
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_GetSessionInfo(session: CK_SESSION_HANDLE, info: *mut CK_SESSION_INFO) -> CK_RV {
    with_module(|m| {
        if info.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let (slot, rw) = (m.session(session)?.slot, m.session(session)?.rw);
        let state = match (rw, m.logged_in.contains(&slot)) {
            (false, false) => CKS_RO_PUBLIC_SESSION,
            (false, true) => CKS_RO_USER_FUNCTIONS,
            (true, false) => CKS_RW_PUBLIC_SESSION,
            (true, true) => CKS_RW_USER_FUNCTIONS,
        };
        let flags = CKF_SERIAL_SESSION | if rw { CKF_RW_SESSION } else { 0 };
        *info = CK_SESSION_INFO { slotID: slot, state, flags, ulDeviceError: 0 };
        Ok(())
    })
}

/// A token removed under a session: forget it locally and say so.
fn gone(m: &mut Module, slot: u64, rv: CK_RV) -> CK_RV {
    if rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_SESSION_HANDLE_INVALID {
        m.token_gone(slot);
    }
    rv
}

#[no_mangle]
pub unsafe extern "C" fn C_Login(session: CK_SESSION_HANDLE, user: CK_USER_TYPE, pin: *mut CK_UTF8CHAR, pin_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
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
        let pin = bytes(pin, pin_len)?;
        let pin = String::from_utf8(pin.to_vec()).map_err(|_| CKR_PIN_INVALID)?;
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
            Err(rv) => Err(gone(m, slot, rv)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_Logout(session: CK_SESSION_HANDLE) -> CK_RV {
    with_module(|m| {
        let slot = m.session(session)?.slot;
        if !m.logged_in.remove(&slot) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        let handle = m.handle(slot)?;
        m.call(P11Request::Logout { handle }).map(|_| ()).map_err(|rv| gone(m, slot, rv))
    })
}

// ---- objects ----

unsafe fn template<'a>(t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> Result<&'a mut [CK_ATTRIBUTE], CK_RV> {
    if n == 0 {
        return Ok(&mut []);
    }
    if t.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(std::slice::from_raw_parts_mut(t, n as usize))
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(session: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let slot = m.session(session)?.slot;
        if m.session(session)?.find.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let wanted: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> = template(t, n)?
            .iter()
            .map(|a| bytes(a.pValue as *const u8, a.ulValueLen).map(|v| (a.type_, v.to_vec())))
            .collect::<Result<_, _>>()?;
        if let Err(rv) = m.fresh_slot(slot) {
            m.token_gone(slot);
            return Err(rv);
        }
        let logged_in = m.logged_in.contains(&slot);
        let found: Vec<CK_OBJECT_HANDLE> = match m.slot(slot) {
            Some(s) => objects::objects(s, logged_in)
                .into_iter()
                .filter(|(_, o)| wanted.iter().all(|(t, v)| matches!(o.attribute(*t), Value::Bytes(b) if b == *v)))
                .map(|(h, _)| h)
                .collect(),
            None => {
                m.token_gone(slot);
                return Err(CKR_TOKEN_NOT_PRESENT);
            }
        };
        m.session(session)?.find = Some((found, 0));
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    with_module(|m| {
        if count.is_null() || (out.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let s = m.session(session)?;
        let (found, at) = s.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let n = (found.len() - *at).min(max as usize);
        if n > 0 {
            std::ptr::copy_nonoverlapping(found[*at..].as_ptr(), out, n);
        }
        *at += n;
        *count = n as CK_ULONG;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        s.find.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        Ok(())
    })
}

/// The object a handle names, as this session may see it.
fn object<'a>(m: &'a Module, slot: u64, h: CK_OBJECT_HANDLE) -> Result<Object<'a>, CK_RV> {
    let (s, key, kind) = objects::parse_handle(h).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
    if s != slot {
        return Err(CKR_OBJECT_HANDLE_INVALID);
    }
    let token = m.slot(slot).ok_or(CKR_TOKEN_NOT_PRESENT)?;
    let key = token.keys.get(key).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
    match kind {
        Kind::Private if !m.logged_in.contains(&slot) => Err(CKR_OBJECT_HANDLE_INVALID),
        Kind::Certificate(n) if n >= key.certificates.len() => Err(CKR_OBJECT_HANDLE_INVALID),
        _ => Ok(Object { key, kind }),
    }
}

#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(session: CK_SESSION_HANDLE, h: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let slot = m.session(session)?.slot;
        let attrs = template(t, n)?;
        m.load(slot)?;
        let o = object(m, slot, h)?;
        // Every attribute is answered; the worst error is returned (PKCS#11 5.7).
        let mut rv = CKR_OK;
        for a in attrs.iter_mut() {
            match o.attribute(a.type_) {
                Value::Bytes(v) => {
                    if a.pValue.is_null() {
                        a.ulValueLen = v.len() as CK_ULONG;
                    } else if (a.ulValueLen as usize) < v.len() {
                        a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                        rv = CKR_BUFFER_TOO_SMALL;
                    } else {
                        std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len());
                        a.ulValueLen = v.len() as CK_ULONG;
                    }
                }
                Value::Sensitive => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    rv = CKR_ATTRIBUTE_SENSITIVE;
                }
                Value::Invalid => {
                    a.ulValueLen = CK_UNAVAILABLE_INFORMATION;
                    if rv == CKR_OK {
                        rv = CKR_ATTRIBUTE_TYPE_INVALID;
                    }
                }
            }
        }
        if rv == CKR_OK {
            Ok(())
        } else {
            Err(rv)
        }
    })
}

// ---- signing ----

/// A sign or verify mechanism for a key, with its PSS parameters if any.
unsafe fn signing_mechanism(mech: &CK_MECHANISM, spec: nekms_keys::KeySpec) -> Result<Mech, CK_RV> {
    let params = if mech.pParameter.is_null() || mech.ulParameterLen as usize != std::mem::size_of::<CK_RSA_PKCS_PSS_PARAMS>() {
        None
    } else {
        Some(&*(mech.pParameter as *const CK_RSA_PKCS_PSS_PARAMS))
    };
    let param_len = if mech.pParameter.is_null() { 0 } else { mech.ulParameterLen as usize };
    mech::mechanism(spec, mech.mechanism, params, param_len)
}

#[no_mangle]
pub unsafe extern "C" fn C_SignInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let slot = m.session(session)?.slot;
        if m.session(session)?.sign.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        if !m.logged_in.contains(&slot) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        m.load(slot)?;
        let o = object(m, slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if o.kind != Kind::Private {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        let chosen = signing_mechanism(&*mechanism, o.key.spec)?;
        if chosen == Mech::RsaX509 && !o.key.decrypt {
            // The raw private operation decrypts: only for keys provisioned
            // to decrypt.
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        let op = SignOp {
            slot,
            key_id: o.key.id.clone(),
            spec: o.key.spec,
            sig_len: objects::signature_len(o.key),
            mech: chosen,
            hasher: None,
            decrypt: o.key.decrypt,
        };
        m.session(session)?.sign = Some(op);
        Ok(())
    })
}

/// Sign `data` with the session's operation (which ends unless the caller
/// only asked for the length or gave a short buffer).
unsafe fn finish_sign(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Option<&[u8]>,
    sig: *mut u8,
    sig_len: *mut CK_ULONG,
) -> Result<(), CK_RV> {
    if sig_len.is_null() {
        m.session(session)?.sign = None;
        return Err(CKR_ARGUMENTS_BAD);
    }
    let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let need = op.sig_len;
    if sig.is_null() {
        *sig_len = need as CK_ULONG;
        return Ok(());
    }
    if (*sig_len as usize) < need {
        *sig_len = need as CK_ULONG;
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    let op = m.session(session)?.sign.take().expect("checked");
    if let Some(block) = mech::raw_block(op.spec, op.mech, data.unwrap_or_default())? {
        if !op.decrypt {
            // Freely chosen bytes, signed raw, decrypt: only for keys
            // provisioned to decrypt. A DigestInfo is always signed.
            return Err(CKR_DATA_INVALID);
        }
        let handle = m.handle(op.slot)?;
        let out = match m.call(P11Request::Decrypt {
            handle,
            id: op.key_id.clone(),
            padding: nekms_keys::RsaPadding::Raw,
            ciphertext: block,
            label: None,
        }) {
            Ok(P11Response::Plaintext(p)) => p.into_zeroizing(),
            Ok(_) => return Err(CKR_DEVICE_ERROR),
            Err(CKR_ENCRYPTED_DATA_INVALID) => return Err(CKR_DATA_INVALID),
            Err(rv) => return Err(gone(m, op.slot, rv)),
        };
        if out.len() != need {
            return Err(CKR_DEVICE_ERROR);
        }
        std::ptr::copy_nonoverlapping(out.as_ptr(), sig, out.len());
        *sig_len = out.len() as CK_ULONG;
        return Ok(());
    }
    let (scheme, payload) = match (data, op.hasher) {
        (Some(input), _) => mech::to_scheme(op.spec, op.mech, input)?,
        (None, Some(h)) => mech::to_scheme_hashed(op.spec, op.mech, h.finish().as_ref())?,
        (None, None) => {
            let h = mech::running_hash(op.mech).ok_or(CKR_FUNCTION_NOT_SUPPORTED)?;
            mech::to_scheme_hashed(op.spec, op.mech, &h.digest(&[]))?
        }
    };
    let handle = m.handle(op.slot)?;
    let signature = match m.call(P11Request::Sign { handle, id: op.key_id.clone(), scheme, payload }) {
        Ok(P11Response::Signature(s)) => s,
        Ok(_) => return Err(CKR_DEVICE_ERROR),
        Err(rv) => return Err(gone(m, op.slot, rv)),
    };
    if signature.len() > need {
        return Err(CKR_DEVICE_ERROR);
    }
    std::ptr::copy_nonoverlapping(signature.as_ptr(), sig, signature.len());
    *sig_len = signature.len() as CK_ULONG;
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn C_Sign(
    session: CK_SESSION_HANDLE,
    data: *mut u8,
    data_len: CK_ULONG,
    sig: *mut u8,
    sig_len: *mut CK_ULONG,
) -> CK_RV {
    with_module(|m| {
        let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if op.hasher.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let input = match bytes(data, data_len) {
            Ok(d) => d,
            Err(rv) => {
                m.session(session)?.sign = None;
                return Err(rv);
            }
        };
        finish_sign(m, session, Some(input), sig, sig_len)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let failed = |s: &mut Session, rv| {
            s.sign = None;
            Err(rv)
        };
        if !op.mech.multi_part() {
            return failed(s, CKR_FUNCTION_NOT_SUPPORTED);
        }
        let part = match bytes(part, part_len) {
            Ok(p) => p,
            Err(rv) => return failed(s, rv),
        };
        let hash = mech::running_hash(op.mech).expect("multi-part mechanisms hash");
        op.hasher.get_or_insert_with(|| aws_lc_rs::digest::Context::new(hash.algorithm())).update(part);
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SignFinal(session: CK_SESSION_HANDLE, sig: *mut u8, sig_len: *mut CK_ULONG) -> CK_RV {
    with_module(|m| {
        let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if !op.mech.multi_part() {
            m.session(session)?.sign = None;
            return Err(CKR_FUNCTION_NOT_SUPPORTED);
        }
        finish_sign(m, session, None, sig, sig_len)
    })
}

// ---- key-pair generation (in the enclave) ----

/// What a key-pair template asks for: CKA_ID, CKA_LABEL, CKA_MODULUS_BITS, CKA_EC_PARAMS.
type Asked = (Option<Vec<u8>>, Option<String>, Option<CK_ULONG>, Option<Vec<u8>>);

/// The attributes a key-pair template may set, and what they must say.
unsafe fn generation_template(t: &[CK_ATTRIBUTE]) -> Result<Asked, CK_RV> {
    let (mut id, mut label, mut bits, mut params) = (None, None, None, None);
    for a in t {
        let v = bytes(a.pValue as *const u8, a.ulValueLen)?;
        let flag = || v.first().copied().unwrap_or(0) != 0;
        let ulong = || -> Result<CK_ULONG, CK_RV> { v.try_into().map(CK_ULONG::from_ne_bytes).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID) };
        match a.type_ {
            CKA_ID => id = Some(v.to_vec()),
            CKA_LABEL => label = Some(String::from_utf8(v.to_vec()).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?),
            CKA_MODULUS_BITS => bits = Some(ulong()?),
            CKA_EC_PARAMS => params = Some(v.to_vec()),
            CKA_PUBLIC_EXPONENT if v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>() != [1, 0, 1] => {
                return Err(CKR_TEMPLATE_INCONSISTENT)
            }
            // Token objects only; private keys are always sensitive and never extractable.
            CKA_TOKEN if !flag() => return Err(CKR_TEMPLATE_INCONSISTENT),
            CKA_EXTRACTABLE if flag() => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            CKA_SENSITIVE if !flag() => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            // Usage flags (CKA_SIGN, CKA_DECRYPT, CKA_DERIVE, ...) that tools
            // set by default are not honoured: a generated key signs only.
            _ => {}
        }
    }
    Ok((id, label, bits, params))
}

#[no_mangle]
pub unsafe extern "C" fn C_GenerateKeyPair(
    session: CK_SESSION_HANDLE,
    mechanism: *mut CK_MECHANISM,
    public_template: *mut CK_ATTRIBUTE,
    public_count: CK_ULONG,
    private_template: *mut CK_ATTRIBUTE,
    private_count: CK_ULONG,
    public_out: *mut CK_OBJECT_HANDLE,
    private_out: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() || public_out.is_null() || private_out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let (slot, rw) = (m.session(session)?.slot, m.session(session)?.rw);
        if !rw {
            return Err(CKR_SESSION_READ_ONLY);
        }
        if !m.logged_in.contains(&slot) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        let (pub_id, pub_label, bits, params) = generation_template(template(public_template, public_count)?)?;
        let (priv_id, priv_label, _, _) = generation_template(template(private_template, private_count)?)?;
        let spec = match (*mechanism).mechanism {
            CKM_RSA_PKCS_KEY_PAIR_GEN => match bits {
                Some(2048) => nekms_keys::KeySpec::Rsa2048,
                Some(3072) => nekms_keys::KeySpec::Rsa3072,
                Some(4096) => nekms_keys::KeySpec::Rsa4096,
                Some(_) => return Err(CKR_KEY_SIZE_RANGE),
                None => return Err(CKR_TEMPLATE_INCOMPLETE),
            },
            CKM_EC_KEY_PAIR_GEN => {
                let p = params.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
                [nekms_keys::KeySpec::P256, nekms_keys::KeySpec::P384, nekms_keys::KeySpec::Secp256k1]
                    .into_iter()
                    .find(|s| objects::ec_params(*s) == Some(p.as_slice()))
                    .ok_or(CKR_CURVE_NOT_SUPPORTED)?
            }
            _ => return Err(CKR_MECHANISM_INVALID),
        };
        let id = match (pub_id, priv_id) {
            (Some(a), Some(b)) if a != b => return Err(CKR_TEMPLATE_INCONSISTENT),
            (Some(a), _) | (None, Some(a)) => a,
            (None, None) => return Err(CKR_TEMPLATE_INCOMPLETE),
        };
        let label = priv_label.or(pub_label).unwrap_or_default();
        let handle = m.handle(slot)?;
        match m.call(P11Request::GenerateKeyPair { handle, spec, id: id.clone(), label }) {
            Ok(P11Response::KeyPair { .. }) => {}
            Ok(_) => return Err(CKR_DEVICE_ERROR),
            Err(rv) => return Err(gone(m, slot, rv)),
        }
        m.full.remove(&slot);
        m.refresh()?;
        m.load(slot)?;
        let index = m.slot(slot).and_then(|s| s.keys.iter().position(|k| k.id == id)).ok_or(CKR_DEVICE_ERROR)?;
        *public_out = objects::handle(slot, index, Kind::Public);
        *private_out = objects::handle(slot, index, Kind::Private);
        Ok(())
    })
}

// ---- decryption (RSA, in the enclave) ----

#[no_mangle]
pub unsafe extern "C" fn C_DecryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let slot = m.session(session)?.slot;
        if m.session(session)?.decrypt.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        if !m.logged_in.contains(&slot) {
            return Err(CKR_USER_NOT_LOGGED_IN);
        }
        m.load(slot)?;
        let o = object(m, slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if o.kind != Kind::Private {
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        if objects::key_type(o.key.spec) != CKK_RSA {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        if !o.key.decrypt {
            // Provisioned to sign only (CKA_DECRYPT false).
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        let (padding, label) = mech::decryption(&*mechanism)?;
        let op = DecryptOp { slot, key_id: o.key.id.clone(), modulus_len: objects::signature_len(o.key), padding, label, done: None };
        m.session(session)?.decrypt = Some(op);
        Ok(())
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
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.decrypt.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if out_len.is_null() {
            s.decrypt = None;
            return Err(CKR_ARGUMENTS_BAD);
        }
        if op.done.is_none() {
            if out.is_null() {
                // A length query: the modulus is enough for any plaintext.
                *out_len = op.modulus_len as CK_ULONG;
                return Ok(());
            }
            let ciphertext = match bytes(data, data_len) {
                Ok(c) if c.len() == op.modulus_len => c.to_vec(),
                Ok(_) => {
                    s.decrypt = None;
                    return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
                }
                Err(rv) => {
                    s.decrypt = None;
                    return Err(rv);
                }
            };
            let (slot, key_id, padding, label) = (op.slot, op.key_id.clone(), op.padding, op.label.clone());
            let handle = match m.handle(slot) {
                Ok(h) => h,
                Err(rv) => {
                    m.session(session)?.decrypt = None;
                    return Err(rv);
                }
            };
            let plaintext = match m.call(P11Request::Decrypt { handle, id: key_id, padding, ciphertext, label }) {
                Ok(P11Response::Plaintext(p)) => p.into_zeroizing(),
                Ok(_) => {
                    m.session(session)?.decrypt = None;
                    return Err(CKR_DEVICE_ERROR);
                }
                Err(rv) => {
                    m.session(session)?.decrypt = None;
                    return Err(gone(m, slot, rv));
                }
            };
            m.session(session)?.decrypt.as_mut().expect("active").done = Some(plaintext);
        }
        let s = m.session(session)?;
        let plaintext = s.decrypt.as_ref().and_then(|o| o.done.as_ref()).expect("decrypted");
        if out.is_null() {
            *out_len = plaintext.len() as CK_ULONG;
            return Ok(());
        }
        if (*out_len as usize) < plaintext.len() {
            *out_len = plaintext.len() as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        std::ptr::copy_nonoverlapping(plaintext.as_ptr(), out, plaintext.len());
        *out_len = plaintext.len() as CK_ULONG;
        s.decrypt = None;
        Ok(())
    })
}

// ---- encryption, on this side ----

#[no_mangle]
pub unsafe extern "C" fn C_EncryptInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let slot = m.session(session)?.slot;
        if m.session(session)?.encrypt.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        m.load(slot)?;
        let o = object(m, slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if o.kind != Kind::Public {
            // Only the public key object has CKA_ENCRYPT.
            return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
        }
        if objects::key_type(o.key.spec) != CKK_RSA {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        // The mechanisms and parameters C_Decrypt takes.
        let (padding, label) = mech::decryption(&*mechanism)?;
        let op = EncryptOp { public_key: o.key.public_key.clone(), modulus_len: objects::signature_len(o.key), padding, label };
        m.session(session)?.encrypt = Some(op);
        Ok(())
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
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.encrypt.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if out_len.is_null() {
            s.encrypt = None;
            return Err(CKR_ARGUMENTS_BAD);
        }
        // Every ciphertext is as long as the modulus.
        let need = op.modulus_len;
        if out.is_null() {
            *out_len = need as CK_ULONG;
            return Ok(());
        }
        if (*out_len as usize) < need {
            *out_len = need as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        let op = s.encrypt.take().expect("checked");
        let input = bytes(data, data_len)?;
        let block;
        let plaintext = if op.padding == nekms_keys::RsaPadding::Raw {
            // CKM_RSA_X_509: up to k bytes, padded on the left with zeros.
            if input.len() > need {
                return Err(CKR_DATA_LEN_RANGE);
            }
            block = [vec![0u8; need - input.len()], input.to_vec()].concat();
            &block[..]
        } else {
            input
        };
        let public = nekms_keys::PublicKey::from_spki(&op.public_key).map_err(|_| CKR_DEVICE_ERROR)?;
        let ciphertext = public.rsa_encrypt(op.padding, plaintext, op.label.as_deref()).map_err(|e| match e {
            nekms_keys::KeyError::Payload(_) => CKR_DATA_LEN_RANGE,
            _ => CKR_DEVICE_ERROR,
        })?;
        if ciphertext.len() != need {
            return Err(CKR_DEVICE_ERROR);
        }
        std::ptr::copy_nonoverlapping(ciphertext.as_ptr(), out, need);
        *out_len = need as CK_ULONG;
        Ok(())
    })
}

// ---- verification and digests, on this side ----

#[no_mangle]
pub unsafe extern "C" fn C_VerifyInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM, key: CK_OBJECT_HANDLE) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let slot = m.session(session)?.slot;
        if m.session(session)?.verify.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        m.load(slot)?;
        let o = object(m, slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
        if matches!(o.kind, Kind::Certificate(_)) {
            return Err(CKR_KEY_TYPE_INCONSISTENT);
        }
        let chosen = signing_mechanism(&*mechanism, o.key.spec)?;
        let op = VerifyOp {
            public_key: o.key.public_key.clone(),
            spec: o.key.spec,
            sig_len: objects::signature_len(o.key),
            mech: chosen,
            hasher: None,
        };
        m.session(session)?.verify = Some(op);
        Ok(())
    })
}

/// Check a signature with the key's public key, here (no enclave call):
/// over `data`, or over the parts hashed so far.
fn finish_verify(op: VerifyOp, data: Option<&[u8]>, signature: &[u8]) -> Result<(), CK_RV> {
    if signature.len() != op.sig_len {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    if let Some(block) = mech::raw_block(op.spec, op.mech, data.unwrap_or_default())? {
        let recovered = nekms_keys::rsa_raw::public_raw(&op.public_key, signature).ok_or(CKR_SIGNATURE_INVALID)?;
        return if recovered == block { Ok(()) } else { Err(CKR_SIGNATURE_INVALID) };
    }
    let (scheme, payload) = match (data, op.hasher) {
        (Some(d), _) => mech::to_scheme(op.spec, op.mech, d)?,
        (None, Some(h)) => mech::to_scheme_hashed(op.spec, op.mech, h.finish().as_ref())?,
        (None, None) => {
            let h = mech::running_hash(op.mech).ok_or(CKR_FUNCTION_NOT_SUPPORTED)?;
            mech::to_scheme_hashed(op.spec, op.mech, &h.digest(&[]))?
        }
    };
    let public = nekms_keys::PublicKey::from_spki(&op.public_key).map_err(|_| CKR_DEVICE_ERROR)?;
    public.verify(scheme, &payload, signature).map_err(|_| CKR_SIGNATURE_INVALID)
}

#[no_mangle]
pub unsafe extern "C" fn C_Verify(session: CK_SESSION_HANDLE, data: *mut u8, data_len: CK_ULONG, sig: *mut u8, sig_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if op.hasher.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        finish_verify(op, Some(bytes(data, data_len)?), bytes(sig, sig_len)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.verify.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let part = bytes(part, part_len);
        match (part, mech::running_hash(op.mech)) {
            (Ok(p), Some(hash)) => {
                op.hasher.get_or_insert_with(|| aws_lc_rs::digest::Context::new(hash.algorithm())).update(p);
                Ok(())
            }
            (Ok(_), None) => {
                s.verify = None;
                Err(CKR_FUNCTION_NOT_SUPPORTED)
            }
            (Err(rv), _) => {
                s.verify = None;
                Err(rv)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_VerifyFinal(session: CK_SESSION_HANDLE, sig: *mut u8, sig_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let op = s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        if !op.mech.multi_part() {
            return Err(CKR_FUNCTION_NOT_SUPPORTED);
        }
        finish_verify(op, None, bytes(sig, sig_len)?)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestInit(session: CK_SESSION_HANDLE, mechanism: *mut CK_MECHANISM) -> CK_RV {
    with_module(|m| {
        if mechanism.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let s = m.session(session)?;
        if s.digest.is_some() {
            return Err(CKR_OPERATION_ACTIVE);
        }
        let alg = mech::digest_algorithm((*mechanism).mechanism).ok_or(CKR_MECHANISM_INVALID)?;
        s.digest = Some(aws_lc_rs::digest::Context::new(alg));
        Ok(())
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
    with_module(|m| {
        let s = m.session(session)?;
        let ctx = s.digest.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let need = ctx.algorithm().output_len();
        if out_len.is_null() {
            s.digest = None;
            return Err(CKR_ARGUMENTS_BAD);
        }
        if out.is_null() {
            *out_len = need as CK_ULONG;
            return Ok(());
        }
        if (*out_len as usize) < need {
            *out_len = need as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        let mut ctx = s.digest.take().expect("checked");
        ctx.update(bytes(data, data_len)?);
        let d = ctx.finish();
        std::ptr::copy_nonoverlapping(d.as_ref().as_ptr(), out, need);
        *out_len = need as CK_ULONG;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestUpdate(session: CK_SESSION_HANDLE, part: *mut u8, part_len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let ctx = s.digest.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        match bytes(part, part_len) {
            Ok(p) => {
                ctx.update(p);
                Ok(())
            }
            Err(rv) => {
                s.digest = None;
                Err(rv)
            }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DigestFinal(session: CK_SESSION_HANDLE, out: *mut u8, out_len: *mut CK_ULONG) -> CK_RV {
    with_module(|m| {
        let s = m.session(session)?;
        let ctx = s.digest.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
        let need = ctx.algorithm().output_len();
        if out_len.is_null() {
            s.digest = None;
            return Err(CKR_ARGUMENTS_BAD);
        }
        if out.is_null() {
            *out_len = need as CK_ULONG;
            return Ok(());
        }
        if (*out_len as usize) < need {
            *out_len = need as CK_ULONG;
            return Err(CKR_BUFFER_TOO_SMALL);
        }
        let d = s.digest.take().expect("checked").finish();
        std::ptr::copy_nonoverlapping(d.as_ref().as_ptr(), out, need);
        *out_len = need as CK_ULONG;
        Ok(())
    })
}

// ---- random ----

#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(session: CK_SESSION_HANDLE, out: *mut u8, len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        if len == 0 {
            // p11-kit's server passes an empty buffer as NULL.
            return Ok(());
        }
        if out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        if len as usize > MAX_RANDOM {
            return Err(CKR_DATA_LEN_RANGE);
        }
        let mut done = 0usize;
        while done < len as usize {
            let n = (len as usize - done).min(4096);
            match m.call(P11Request::Random { length: n as u32 })? {
                P11Response::Random(bytes) if bytes.expose().len() == n => {
                    std::ptr::copy_nonoverlapping(bytes.expose().as_ptr(), out.add(done), n);
                    done += n;
                }
                _ => return Err(CKR_DEVICE_ERROR),
            }
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(session: CK_SESSION_HANDLE, _seed: *mut u8, _len: CK_ULONG) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
    })
}

// ---- what a key never does here ----

#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    _h: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        Err(CKR_ATTRIBUTE_READ_ONLY)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    session: CK_SESSION_HANDLE,
    _h: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    _new: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        Err(CKR_ACTION_PROHIBITED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(session: CK_SESSION_HANDLE, _h: CK_OBJECT_HANDLE) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        Err(CKR_ACTION_PROHIBITED)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_WrapKey(
    session: CK_SESSION_HANDLE,
    _mech: *mut CK_MECHANISM,
    _wrapping: CK_OBJECT_HANDLE,
    _key: CK_OBJECT_HANDLE,
    _out: *mut u8,
    _out_len: *mut CK_ULONG,
) -> CK_RV {
    with_module(|m| {
        m.session(session)?;
        Err(CKR_KEY_NOT_WRAPPABLE)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_WaitForSlotEvent(_flags: CK_FLAGS, _slot: *mut CK_SLOT_ID, _reserved: *mut c_void) -> CK_RV {
    with_module(|_| Err(CKR_FUNCTION_NOT_SUPPORTED))
}

/// Functions this version does not offer.
macro_rules! unsupported {
    ($($name:ident($($arg:ty),*);)*) => {
        $(
            unsafe extern "C" fn $name($(_: $arg),*) -> CK_RV {
                with_module(|_| Err(CKR_FUNCTION_NOT_SUPPORTED))
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
        *list = &FUNCTIONS as *const CK_FUNCTION_LIST as *mut CK_FUNCTION_LIST;
        CKR_OK
    })
}

/// The one interface ("PKCS 11", the 2.40 function list), for PKCS#11 3.0 callers.
struct Interface(CK_INTERFACE);
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
        if list.is_null() {
            *count = 1;
            return CKR_OK;
        }
        if *count < 1 {
            *count = 1;
            return CKR_BUFFER_TOO_SMALL;
        }
        std::ptr::copy_nonoverlapping(&INTERFACE.0, list, 1);
        *count = 1;
        CKR_OK
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
        if !name.is_null() && std::ffi::CStr::from_ptr(name as *const std::os::raw::c_char).to_bytes() != b"PKCS 11" {
            return CKR_ARGUMENTS_BAD;
        }
        if !version.is_null() && ((*version).major, (*version).minor) != (2, 40) {
            return CKR_ARGUMENTS_BAD;
        }
        *out = &INTERFACE.0 as *const CK_INTERFACE as *mut CK_INTERFACE;
        CKR_OK
    })
}

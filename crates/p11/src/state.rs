//! The process's state: the module (one per process, behind one lock), its
//! sessions and their operations, its connection to the enclave and its
//! cached copy of the slots.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use cryptoki_sys::*;
use nekms_protocol::rpc::{ErrorCode, Secret};
use nekms_protocol::rpc::{P11Request, P11Response, P11Slot};

use crate::client::{CallError, Conn};
use crate::encryption::{DecryptOp, EncryptOp};
use crate::objects::{self, Kind, Object};
use crate::signature::{SignOp, VerifyOp};

/// Where the module finds the enclave when `NEKMS_P11_RPC` is not set.
pub const DEFAULT_RPC: &str = "unix:///run/nekms/p11.sock";

pub(crate) struct Session {
    pub slot: u64,
    pub rw: bool,
    /// The handles C_FindObjectsInit found, and how many were given.
    pub find: Option<(Vec<CK_OBJECT_HANDLE>, usize)>,
    pub sign: Option<SignOp>,
    pub verify: Option<VerifyOp>,
    pub digest: Option<crate::hash::Hasher>,
    pub decrypt: Option<DecryptOp>,
    pub encrypt: Option<EncryptOp>,
}

impl Session {
    /// A session with no operation under way.
    pub fn new(slot: u64, rw: bool) -> Session {
        Session { slot, rw, find: None, sign: None, verify: None, digest: None, decrypt: None, encrypt: None }
    }
}

pub(crate) struct Module {
    /// The process that called C_Initialize (a forked child must call it again).
    pub pid: u32,
    pub address: String,
    pub conn: Option<Conn>,
    pub slots: Vec<P11Slot>,
    /// Slots whose certificates are in `slots` (the summary has none).
    pub full: HashSet<u64>,
    /// The enclave handle of each slot this process opened.
    pub handles: HashMap<u64, Secret>,
    pub logged_in: HashSet<u64>,
    pub sessions: HashMap<CK_SESSION_HANDLE, Session>,
    pub next_session: CK_SESSION_HANDLE,
}

static MODULE: Mutex<Option<Module>> = Mutex::new(None);

pub(crate) fn debug(message: &str) {
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

/// Run `f` on the initialised module of this process, under the lock.
pub(crate) fn with_module<T>(f: impl FnOnce(&mut Module) -> Result<T, CK_RV>) -> Result<T, CK_RV> {
    let mut guard = MODULE.lock().unwrap_or_else(|p| p.into_inner());
    match guard.as_mut() {
        Some(m) if m.pid == std::process::id() => f(m),
        _ => Err(CKR_CRYPTOKI_NOT_INITIALIZED),
    }
}

/// Start the module of this process: `Err(CKR_CRYPTOKI_ALREADY_INITIALIZED)`
/// if it already runs here. A child forked from an initialised process
/// starts afresh.
pub(crate) fn start() -> Result<(), CK_RV> {
    let mut guard = MODULE.lock().unwrap_or_else(|p| p.into_inner());
    if guard.as_ref().is_some_and(|m| m.pid == std::process::id()) {
        return Err(CKR_CRYPTOKI_ALREADY_INITIALIZED);
    }
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
    Ok(())
}

/// Drop the module (C_Finalize, once its handles are closed).
pub(crate) fn stop() {
    *MODULE.lock().unwrap_or_else(|p| p.into_inner()) = None;
}

impl Module {
    pub fn call(&mut self, request: P11Request) -> Result<P11Response, CK_RV> {
        if self.conn.is_none() {
            self.conn = Some(Conn::connect(&self.address).map_err(rv_of)?);
        }
        let result = self.conn.as_mut().expect("connected").p11(request);
        if let Err(CallError::Transport(_)) = &result {
            self.conn = None;
        }
        result.map_err(rv_of)
    }

    pub fn refresh(&mut self) -> Result<(), CK_RV> {
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
    pub fn load(&mut self, slot: u64) -> Result<(), CK_RV> {
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
    pub fn fresh_slot(&mut self, slot: u64) -> Result<(), CK_RV> {
        let known = self.slot(slot).is_some();
        self.full.remove(&slot);
        match self.load(slot) {
            Err(CKR_TOKEN_NOT_PRESENT) if !known => Err(CKR_SLOT_ID_INVALID),
            r => r,
        }
    }

    pub fn slot(&self, slot: u64) -> Option<&P11Slot> {
        self.slots.iter().find(|s| s.slot == slot)
    }

    /// A slot's description, the list fetched again if the slot is not known.
    pub fn known_slot(&mut self, slot: CK_SLOT_ID) -> Result<P11Slot, CK_RV> {
        if self.slot(slot).is_none() {
            self.refresh()?;
        }
        self.slot(slot).cloned().ok_or(CKR_SLOT_ID_INVALID)
    }

    pub fn session(&mut self, h: CK_SESSION_HANDLE) -> Result<&mut Session, CK_RV> {
        self.sessions.get_mut(&h).ok_or(CKR_SESSION_HANDLE_INVALID)
    }

    /// This process's enclave handle on `slot`, opened on first use.
    pub fn handle(&mut self, slot: u64) -> Result<Secret, CK_RV> {
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
    pub fn token_gone(&mut self, slot: u64) {
        self.handles.remove(&slot);
        self.logged_in.remove(&slot);
        self.sessions.retain(|_, s| s.slot != slot);
    }

    /// A token removed under a session: forget it locally and say so.
    pub fn gone(&mut self, slot: u64, rv: CK_RV) -> CK_RV {
        if rv == CKR_TOKEN_NOT_PRESENT || rv == CKR_SESSION_HANDLE_INVALID {
            self.token_gone(slot);
        }
        rv
    }

    /// The object a handle names, as this session may see it.
    pub fn object(&self, slot: u64, h: CK_OBJECT_HANDLE) -> Result<Object<'_>, CK_RV> {
        let (s, key, kind) = objects::parse_handle(h).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        if s != slot {
            return Err(CKR_OBJECT_HANDLE_INVALID);
        }
        let token = self.slot(slot).ok_or(CKR_TOKEN_NOT_PRESENT)?;
        let key = token.keys.get(key).ok_or(CKR_OBJECT_HANDLE_INVALID)?;
        match kind {
            Kind::Private if !self.logged_in.contains(&slot) => Err(CKR_OBJECT_HANDLE_INVALID),
            Kind::Certificate(n) if n >= key.certificates.len() => Err(CKR_OBJECT_HANDLE_INVALID),
            _ => Ok(Object { key, kind }),
        }
    }
}

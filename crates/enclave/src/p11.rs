//! PKCS#11 tokens, kept by the enclave for `libnekms_p11.so`.
//!
//! p11-kit's server forks one module process per client connection, so what
//! must be shared lives here, in the one enclave process: the tokens (label,
//! PIN verifier, keys as custody records, certificate chains), the wrong-PIN
//! counters, and each module process's login state ("handles", one per
//! process and slot, named by 32 random bytes the process keeps).
//!
//! What the parent can do through this interface, and why it obtains no key:
//! - provisioning (`AddToken`, `RemoveToken`) takes custody records, which
//!   the enclave opens under its own rules before accepting them (pinned KMS
//!   key, reserved context, provenance); a record it would not open for
//!   signing is refused here too;
//! - `Slots` returns public keys and certificates only;
//! - `Sign` signs after a login, and `Decrypt` decrypts with an RSA token
//!   key provisioned to decrypt, which its record must allow (sign-only by
//!   default, and fixed when the key was made: an RSA decryption
//!   oracle, PKCS#1 v1.5 above all, computes raw private-key operations and
//!   would get around any rule on what a key signs); neither returns key
//!   material, and no call does.
//!
//! The PIN guards a token against local users who can reach the p11-kit
//! socket. Root on the parent can provision a token with a PIN it chooses
//! (it can already make the enclave sign with a custody key over the native
//! RPC), but not extract a key.

use nekms_keys::PinVerifierExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use nekms_keys::KeyRecord;
use nekms_rpc::protocol::{P11PublicKey, P11Request, P11Response, P11Slot, P11Token, PinVerifier};
use nekms_rpc::{RpcError, Secret};

use crate::Enclave;

/// Most tokens one enclave holds.
pub const MAX_TOKENS: usize = 1024;
/// Most module handles (processes) open on one token.
pub const MAX_HANDLES_PER_TOKEN: usize = 1024;
/// Most handles one connection to the module's socket (one module process,
/// which needs one per token) holds open on one token.
pub const MAX_HANDLES_PER_CONNECTION: usize = 4;
/// Wrong PINs in a row before a token locks.
pub const MAX_PIN_FAILURES: u32 = 10;
/// Most keys on one token, and certificates per key.
pub const MAX_KEYS: usize = 64;
pub const MAX_CHAIN: usize = 8;

/// The CK_RV values the enclave answers with.
pub mod ckr {
    pub const ARGUMENTS_BAD: u64 = 0x07;
    pub const SLOT_ID_INVALID: u64 = 0x03;
    pub const DATA_INVALID: u64 = 0x20;
    pub const KEY_HANDLE_INVALID: u64 = 0x60;
    pub const KEY_TYPE_INCONSISTENT: u64 = 0x63;
    pub const KEY_FUNCTION_NOT_PERMITTED: u64 = 0x68;
    pub const ENCRYPTED_DATA_INVALID: u64 = 0x40;
    pub const PIN_INCORRECT: u64 = 0xA0;
    pub const PIN_LEN_RANGE: u64 = 0xA2;
    pub const PIN_LOCKED: u64 = 0xA4;
    pub const SESSION_COUNT: u64 = 0xB1;
    pub const SESSION_HANDLE_INVALID: u64 = 0xB3;
    pub const TOKEN_NOT_PRESENT: u64 = 0xE0;
    pub const USER_ALREADY_LOGGED_IN: u64 = 0x100;
    pub const USER_NOT_LOGGED_IN: u64 = 0x101;
    pub const TOKEN_WRITE_PROTECTED: u64 = 0xE2;
    pub const TEMPLATE_INCONSISTENT: u64 = 0xD1;
    pub const DEVICE_MEMORY: u64 = 0x31;
}

struct Token {
    writable: bool,
    label: String,
    verifier: PinVerifier,
    failures: u32,
    keys: Vec<TokenKey>,
}

struct TokenKey {
    decrypt: bool,
    id: Vec<u8>,
    label: String,
    record: KeyRecord,
    certificates: Vec<Vec<u8>>,
}

struct Handle {
    slot: u64,
    logged_in: bool,
    /// When it was opened or last used logged in: calls that need no PIN
    /// (a C_Logout refused, a login with a wrong PIN) never move it, so a
    /// handle nobody logs in on ages whatever it is sent.
    last_used: std::time::Instant,
}

#[derive(Default)]
struct State {
    tokens: BTreeMap<u64, Token>,
    next_slot: u64,
    handles: HashMap<[u8; 32], Handle>,
}

/// The tokens and the handles on them.
#[derive(Default)]
pub struct Tokens {
    state: Mutex<State>,
}

fn err(rv: u64, message: impl Into<String>) -> RpcError {
    RpcError::pkcs11(rv, message)
}

fn handle_id(handle: &Secret) -> Result<[u8; 32], RpcError> {
    handle.expose().try_into().map_err(|_| err(ckr::SESSION_HANDLE_INVALID, "a handle is 32 bytes"))
}

/// A new verifier for `pin`.
pub fn make_verifier(pin: &[u8]) -> Result<PinVerifier, RpcError> {
    if !(4..=64).contains(&pin.len()) {
        return Err(err(ckr::PIN_LEN_RANGE, "a PIN is 4 to 64 bytes"));
    }
    PinVerifier::new(pin).ok_or_else(|| RpcError::new(nekms_rpc::ErrorCode::Internal, "no randomness"))
}

/// Whether `pin` matches, compared in constant time.
fn pin_matches(verifier: &PinVerifier, pin: &[u8]) -> bool {
    verifier.matches(pin)
}

fn check_label(label: &str) -> Result<(), RpcError> {
    let ok = !label.is_empty()
        && label.len() <= 32
        && label.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:@/ ".contains(&b))
        && !label.ends_with(' ');
    if ok {
        Ok(())
    } else {
        Err(RpcError::bad_request(format!(
            "token label {label:?}: 1 to 32 characters of letters, digits, spaces and ._-:@/ (no trailing space)"
        )))
    }
}

/// The SubjectPublicKeyInfo of a DER certificate.
fn certificate_spki(der: &[u8]) -> Result<Vec<u8>, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }
    Ok(cert.tbs_certificate.subject_pki.raw.to_vec())
}

impl Tokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn slots(&self, only: Option<u64>) -> Vec<P11Slot> {
        let state = self.lock();
        let with_certificates = only.is_some();
        state
            .tokens
            .iter()
            .filter(|(slot, _)| only.is_none_or(|o| o == **slot))
            .map(|(slot, t)| P11Slot {
                slot: *slot,
                label: t.label.clone(),
                locked: t.failures >= MAX_PIN_FAILURES,
                failures: t.failures,
                writable: t.writable,
                keys: t
                    .keys
                    .iter()
                    .map(|k| P11PublicKey {
                        id: k.id.clone(),
                        label: k.label.clone(),
                        spec: k.record.spec,
                        public_key: k.record.public_key.clone(),
                        certificates: if with_certificates {
                            k.certificates.iter().cloned().map(serde_bytes::ByteBuf::from).collect()
                        } else {
                            Vec::new()
                        },
                        certificate_count: k.certificates.len() as u32,
                        decrypt: k.decrypt,
                    })
                    .collect(),
            })
            .collect()
    }

    fn open(&self, slot: u64) -> Result<Secret, RpcError> {
        let mut state = self.lock();
        if !state.tokens.contains_key(&slot) {
            return Err(err(ckr::SLOT_ID_INVALID, format!("no token in slot {slot}")));
        }
        if state.handles.values().filter(|h| h.slot == slot).count() >= MAX_HANDLES_PER_TOKEN {
            // Make room by dropping the handle not logged in that has gone
            // longest without logged-in use: a flood of Opens needs no PIN and
            // only ever displaces its own kind, never a logged-in handle.
            let idle =
                state.handles.iter().filter(|(_, h)| h.slot == slot && !h.logged_in).min_by_key(|(_, h)| h.last_used).map(|(id, _)| *id);
            match idle {
                Some(id) => {
                    state.handles.remove(&id);
                }
                None => return Err(err(ckr::SESSION_COUNT, format!("slot {slot} already has {MAX_HANDLES_PER_TOKEN} open handles"))),
            }
        }
        let mut id = [0u8; 32];
        SystemRandom::new().fill(&mut id).map_err(|_| RpcError::new(nekms_rpc::ErrorCode::Internal, "no randomness"))?;
        state.handles.insert(id, Handle { slot, logged_in: false, last_used: std::time::Instant::now() });
        Ok(Secret::new(id.to_vec()))
    }

    /// Open for one connection to the module's socket, which already opened
    /// the handles in `mine`: at most [`MAX_HANDLES_PER_CONNECTION`] of them
    /// still open on `slot`.
    pub(crate) fn open_for(&self, slot: u64, mine: &mut Vec<[u8; 32]>) -> Result<Secret, RpcError> {
        {
            let state = self.lock();
            mine.retain(|id| state.handles.contains_key(id));
            if mine.iter().filter(|id| state.handles[*id].slot == slot).count() >= MAX_HANDLES_PER_CONNECTION {
                return Err(err(
                    ckr::SESSION_COUNT,
                    format!(
                        "this connection already holds {MAX_HANDLES_PER_CONNECTION} handles on slot {slot}; a module process needs one"
                    ),
                ));
            }
        }
        let handle = self.open(slot)?;
        mine.push(handle_id(&handle)?);
        Ok(handle)
    }

    /// Close the handles a connection opened (its module process is gone).
    pub(crate) fn close_all(&self, ids: &[[u8; 32]]) {
        let mut state = self.lock();
        for id in ids {
            state.handles.remove(id);
        }
    }

    /// The label of the token a handle is on, for the audit trail.
    pub(crate) fn label_of(&self, handle: &Secret) -> Option<String> {
        let id = handle_id(handle).ok()?;
        let state = self.lock();
        let slot = state.handles.get(&id)?.slot;
        state.tokens.get(&slot).map(|t| t.label.clone())
    }

    fn close(&self, handle: &Secret) -> Result<(), RpcError> {
        self.lock().handles.remove(&handle_id(handle)?);
        Ok(())
    }

    /// The token a handle is on (a removed token's handles are gone).
    fn token_of(state: &mut State, handle: &[u8; 32]) -> Result<(u64, bool), RpcError> {
        let h = state
            .handles
            .get_mut(handle)
            .ok_or_else(|| err(ckr::SESSION_HANDLE_INVALID, "no such handle (closed, dropped while idle, or its token was removed)"))?;
        if h.logged_in {
            h.last_used = std::time::Instant::now();
        }
        if !state.tokens.contains_key(&h.slot) {
            return Err(err(ckr::TOKEN_NOT_PRESENT, format!("the token of slot {} was removed", h.slot)));
        }
        Ok((h.slot, h.logged_in))
    }

    fn login(&self, handle: &Secret, pin: &[u8]) -> Result<(), RpcError> {
        let id = handle_id(handle)?;
        let verifier = {
            let mut state = self.lock();
            let (slot, logged_in) = Self::token_of(&mut state, &id)?;
            if logged_in {
                return Err(err(ckr::USER_ALREADY_LOGGED_IN, "already logged in"));
            }
            let token = &state.tokens[&slot];
            if token.failures >= MAX_PIN_FAILURES {
                return Err(err(
                    ckr::PIN_LOCKED,
                    format!("token {:?} is locked after {MAX_PIN_FAILURES} wrong PINs; provision it again", token.label),
                ));
            }
            token.verifier.clone()
        };
        let good = pin_matches(&verifier, pin);
        let mut state = self.lock();
        let (slot, _) = Self::token_of(&mut state, &id)?;
        let token = state.tokens.get_mut(&slot).expect("checked");
        if token.verifier != verifier {
            return Err(err(ckr::PIN_INCORRECT, "the token's PIN changed during the login; try again"));
        }
        // Checked again: wrong PINs tried at the same time may have locked it meanwhile.
        if token.failures >= MAX_PIN_FAILURES {
            return Err(err(
                ckr::PIN_LOCKED,
                format!("token {:?} is locked after {MAX_PIN_FAILURES} wrong PINs; provision it again", token.label),
            ));
        }
        if !good {
            token.failures += 1;
            let left = MAX_PIN_FAILURES.saturating_sub(token.failures);
            return Err(if left == 0 {
                err(ckr::PIN_LOCKED, format!("wrong PIN; token {:?} is now locked", token.label))
            } else {
                err(ckr::PIN_INCORRECT, format!("wrong PIN; {left} tries left before token {:?} locks", token.label))
            });
        }
        token.failures = 0;
        let h = state.handles.get_mut(&id).expect("checked");
        (h.logged_in, h.last_used) = (true, std::time::Instant::now());
        Ok(())
    }

    fn logout(&self, handle: &Secret) -> Result<(), RpcError> {
        let id = handle_id(handle)?;
        let mut state = self.lock();
        let (_, logged_in) = Self::token_of(&mut state, &id)?;
        if !logged_in {
            return Err(err(ckr::USER_NOT_LOGGED_IN, "not logged in"));
        }
        state.handles.get_mut(&id).expect("checked").logged_in = false;
        Ok(())
    }

    /// The record of key `key_id` for a logged-in handle, and whether it may decrypt.
    fn signing_record(&self, handle: &Secret, key_id: &[u8]) -> Result<KeyRecord, RpcError> {
        self.usable_record(handle, key_id).map(|(r, _)| r)
    }

    fn usable_record(&self, handle: &Secret, key_id: &[u8]) -> Result<(KeyRecord, bool), RpcError> {
        let id = handle_id(handle)?;
        let mut state = self.lock();
        let (slot, logged_in) = Self::token_of(&mut state, &id)?;
        if !logged_in {
            return Err(err(ckr::USER_NOT_LOGGED_IN, "log in before signing"));
        }
        let token = &state.tokens[&slot];
        token
            .keys
            .iter()
            .find(|k| k.id == key_id)
            .map(|k| (k.record.clone(), k.decrypt))
            .ok_or_else(|| err(ckr::KEY_HANDLE_INVALID, format!("token {:?} has no key with that CKA_ID", token.label)))
    }

    /// Check a token's shape (not its records, which the enclave opens).
    fn check(token: &P11Token) -> Result<(), RpcError> {
        check_label(&token.label)?;
        if token.keys.is_empty() || token.keys.len() > MAX_KEYS {
            return Err(RpcError::bad_request(format!("a token holds 1 to {MAX_KEYS} keys, not {}", token.keys.len())));
        }
        for (i, k) in token.keys.iter().enumerate() {
            if k.id.is_empty() || k.id.len() > 64 {
                return Err(RpcError::bad_request(format!("key {i}: CKA_ID is 1 to 64 bytes")));
            }
            if token.keys[..i].iter().any(|o| o.id == k.id) {
                return Err(RpcError::bad_request(format!("key {i}: CKA_ID {} is used twice", hex::encode(&k.id))));
            }
            if k.label.len() > 64 {
                return Err(RpcError::bad_request(format!("key {i}: a key label is at most 64 bytes")));
            }
            if k.decrypt && !k.record.may_decrypt() {
                // A decryption oracle on a key made to sign would be one the
                // parent grants itself: only keys made to decrypt may.
                return Err(RpcError::refused(format!(
                    "rule key-usage: key {i} ({}) was made to sign only; only a key made with decrypt (nekms key create|import --decrypt, bound in its record as nekms:usage=sign,decrypt) may decrypt in a token",
                    k.label
                )));
            }
            if k.record.usage() == nekms_keys::context::Usage::Decrypt {
                // A token's C_Decrypt serves PKCS#1 v1.5 and the raw operation, which is a signature.
                return Err(RpcError::refused(format!(
                    "rule key-usage: key {i} ({}) was made only to decrypt with RSAES-OAEP (nekms:usage=decrypt, AWS KMS's ENCRYPT_DECRYPT); a token, whose C_Decrypt computes the raw RSA operation, does not take it",
                    k.label
                )));
            }
            if k.certificates.len() > MAX_CHAIN || k.certificates.iter().any(|c| c.len() > 16 * 1024) {
                return Err(RpcError::bad_request(format!("key {i}: at most {MAX_CHAIN} certificates of 16 KiB each")));
            }
            if let Some(leaf) = k.certificates.first() {
                let spki = certificate_spki(leaf)
                    .map_err(|e| RpcError::bad_request(format!("key {i} ({}): the leaf certificate: {e}", k.label)))?;
                if spki != k.record.public_key {
                    return Err(RpcError::bad_request(format!(
                        "key {i} ({}): the leaf certificate is for another public key than the key's",
                        k.label
                    )));
                }
            }
            for (j, c) in k.certificates.iter().enumerate().skip(1) {
                certificate_spki(c).map_err(|e| RpcError::bad_request(format!("key {i} ({}): certificate {j}: {e}", k.label)))?;
            }
        }
        Ok(())
    }

    fn add(&self, token: P11Token, verifier: PinVerifier, replace: bool) -> Result<u64, RpcError> {
        let mut state = self.lock();
        let existing = state.tokens.iter().find(|(_, t)| t.label == token.label).map(|(s, _)| *s);
        let keys = token
            .keys
            .into_iter()
            .map(|k| TokenKey {
                decrypt: k.decrypt,
                id: k.id,
                label: k.label,
                record: k.record,
                certificates: k.certificates.into_iter().map(|c| c.into_vec()).collect(),
            })
            .collect();
        match (existing, replace) {
            (Some(_), false) => Err(RpcError::bad_request(format!("a token labelled {:?} exists; update it instead", token.label))),
            (None, true) => Err(RpcError::bad_request(format!("no token labelled {:?} to update", token.label))),
            (Some(slot), true) => {
                let t = state.tokens.get_mut(&slot).expect("found");
                let pin_changed = t.verifier != verifier;
                *t = Token { writable: token.writable, label: token.label, verifier, failures: 0, keys };
                if pin_changed {
                    state.handles.values_mut().filter(|h| h.slot == slot).for_each(|h| h.logged_in = false);
                }
                Ok(slot)
            }
            (None, false) => {
                if state.tokens.len() >= MAX_TOKENS {
                    return Err(RpcError::refused(format!("this enclave already holds {MAX_TOKENS} tokens, the most it takes")));
                }
                let slot = state.next_slot;
                state.next_slot += 1;
                state.tokens.insert(slot, Token { writable: token.writable, label: token.label, verifier, failures: 0, keys });
                Ok(slot)
            }
        }
    }

    /// Where a new key pair goes: the token of a logged-in handle, writable,
    /// with room and without that CKA_ID. Its label.
    fn generation_target(&self, handle: &Secret, id: &[u8]) -> Result<String, RpcError> {
        let hid = handle_id(handle)?;
        let mut state = self.lock();
        let (slot, logged_in) = Self::token_of(&mut state, &hid)?;
        if !logged_in {
            return Err(err(ckr::USER_NOT_LOGGED_IN, "log in before generating a key pair"));
        }
        let token = &state.tokens[&slot];
        if !token.writable {
            return Err(err(
                ckr::TOKEN_WRITE_PROTECTED,
                format!("token {:?} is write-protected (provision it with --writable)", token.label),
            ));
        }
        if id.is_empty() || id.len() > 64 {
            return Err(err(ckr::TEMPLATE_INCONSISTENT, "CKA_ID is 1 to 64 bytes"));
        }
        if token.keys.iter().any(|k| k.id == id) {
            return Err(err(
                ckr::TEMPLATE_INCONSISTENT,
                format!("token {:?} already has a key with CKA_ID {}", token.label, hex::encode(id)),
            ));
        }
        if token.keys.len() >= MAX_KEYS {
            return Err(err(ckr::DEVICE_MEMORY, format!("token {:?} holds {MAX_KEYS} keys, the most it takes", token.label)));
        }
        Ok(token.label.clone())
    }

    /// Add a generated key to a token (checked again: the token may have changed meanwhile).
    fn add_generated(&self, label: &str, key: TokenKey) -> Result<(), RpcError> {
        let mut state = self.lock();
        let token = state
            .tokens
            .values_mut()
            .find(|t| t.label == label)
            .ok_or_else(|| err(ckr::TOKEN_NOT_PRESENT, format!("token {label:?} was removed")))?;
        if token.keys.iter().any(|k| k.id == key.id) || token.keys.len() >= MAX_KEYS {
            return Err(err(ckr::TEMPLATE_INCONSISTENT, format!("token {label:?} changed while the key was made")));
        }
        token.keys.push(key);
        Ok(())
    }

    fn keys_of(&self, label: &str) -> Result<Vec<nekms_rpc::P11Key>, RpcError> {
        let state = self.lock();
        let token = state
            .tokens
            .values()
            .find(|t| t.label == label)
            .ok_or_else(|| RpcError::bad_request(format!("no token labelled {label:?}")))?;
        Ok(token
            .keys
            .iter()
            .map(|k| nekms_rpc::P11Key {
                id: k.id.clone(),
                label: k.label.clone(),
                record: k.record.clone(),
                certificates: k.certificates.iter().cloned().map(serde_bytes::ByteBuf::from).collect(),
                decrypt: k.decrypt,
            })
            .collect())
    }

    fn remove(&self, label: &str) -> Result<(), RpcError> {
        let mut state = self.lock();
        let slot = state
            .tokens
            .iter()
            .find(|(_, t)| t.label == label)
            .map(|(s, _)| *s)
            .ok_or_else(|| RpcError::bad_request(format!("no token labelled {label:?}")))?;
        state.tokens.remove(&slot);
        state.handles.retain(|_, h| h.slot != slot);
        Ok(())
    }
}

impl Enclave {
    /// Answer a PKCS#11 call.
    pub async fn p11_call(&self, request: P11Request) -> Result<P11Response, RpcError> {
        if crate::p11_public::is_public(&request) {
            // RSA and ECDSA arithmetic on a key the caller chose, needing no
            // login: off the async workers that serve signing and the validator signer.
            return tokio::task::spawn_blocking(move || crate::p11_public::answer(&request))
                .await
                .map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Internal, format!("a public operation stopped: {e}")))?;
        }
        let tokens = &self.p11;
        match request {
            P11Request::AddToken { token, replace } => {
                Tokens::check(&token)?;
                let verifier = match (&token.pin, &token.pin_verifier) {
                    (Some(pin), None) => make_verifier(pin.0.as_bytes())?,
                    (None, Some(v)) => {
                        if !v.iterations_in_range() {
                            return Err(RpcError::bad_request("a PIN verifier takes 1 to 10,000,000 iterations"));
                        }
                        if v.salt.len() < 16 || v.hash.len() != 32 {
                            return Err(RpcError::bad_request("a PIN verifier has a salt of 16 bytes or more and a 32-byte hash"));
                        }
                        v.clone()
                    }
                    _ => {
                        return Err(RpcError::bad_request("give a new token's PIN, or the PIN verifier the enclave gave for it, not both"))
                    }
                };
                // Each record must open under the enclave's custody rules,
                // exactly as it would to sign.
                for k in &token.keys {
                    crate::custody::refuse_privval(&k.record)?;
                    self.open(&k.record)
                        .await
                        .map_err(|e| RpcError { message: format!("key {} ({}): {}", hex::encode(&k.id), k.label, e.message), ..e })?;
                }
                let slot = tokens.add(token, verifier.clone(), replace)?;
                Ok(P11Response::TokenAdded { slot, pin_verifier: verifier })
            }
            P11Request::RemoveToken { label } => tokens.remove(&label).map(|_| P11Response::Done),
            P11Request::Slots => Ok(P11Response::Slots(tokens.slots(None))),
            P11Request::Slot { slot } => tokens
                .slots(Some(slot))
                .pop()
                .map(P11Response::Slot)
                .ok_or_else(|| err(ckr::SLOT_ID_INVALID, format!("no token in slot {slot}"))),
            P11Request::Open { slot } => tokens.open(slot).map(|handle| P11Response::Opened { handle }),
            P11Request::Close { handle } => tokens.close(&handle).map(|_| P11Response::Done),
            P11Request::Login { handle, pin } => tokens.login(&handle, pin.0.as_bytes()).map(|_| P11Response::Done),
            P11Request::Logout { handle } => tokens.logout(&handle).map(|_| P11Response::Done),
            P11Request::Sign { handle, id, scheme, payload } => {
                let record = tokens.signing_record(&handle, &id)?;
                let sig = self.sign(&record, Some(scheme), &payload).await.map_err(|e| match e.code {
                    nekms_rpc::ErrorCode::BadRequest => err(ckr::DATA_INVALID, e.message),
                    _ => e,
                })?;
                Ok(P11Response::Signature(sig.signature))
            }
            P11Request::GenerateKeyPair { handle, spec, id, label } => {
                let token = tokens.generation_target(&handle, &id)?;
                // The record's name in the parent's store: token and CKA_ID.
                let safe: String = token.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '_' }).collect();
                let key_id = format!("p11/{safe}/{}", hex::encode(&id));
                let mut context = std::collections::BTreeMap::new();
                context.insert("p11-token".to_owned(), token.clone());
                let record = self
                    .generate_key(nekms_rpc::GenerateKey {
                        key_id,
                        spec,
                        kms_key_id: None,
                        entropy: nekms_rpc::Entropy::Nsm,
                        encryption_context: context,
                        nonce: None,
                        decrypt: false,
                        privval: false,
                        decrypt_only: false,
                    })
                    .await?;
                let public_key = serde_bytes::ByteBuf::from(record.public_key.clone());
                let label = if label.is_empty() { record.key_id.clone() } else { label };
                tokens.add_generated(&token, TokenKey { decrypt: false, id, label, record, certificates: Vec::new() })?;
                Ok(P11Response::KeyPair { public_key })
            }
            P11Request::Keys { label } => tokens.keys_of(&label).map(P11Response::Keys),
            P11Request::Decrypt { handle, id, padding, ciphertext, label } => {
                let (record, may_decrypt) = tokens.usable_record(&handle, &id)?;
                if !may_decrypt {
                    return Err(err(
                        ckr::KEY_FUNCTION_NOT_PERMITTED,
                        "this token key was provisioned to sign only (nekms p11 token add --decrypt NAME allows decryption)",
                    ));
                }
                let key = self.open(&record).await?;
                let plaintext = key.rsa_decrypt(padding, &ciphertext, label.as_deref()).map_err(|e| match e {
                    nekms_keys::KeyError::Scheme(m) => err(ckr::KEY_TYPE_INCONSISTENT, m),
                    e => err(ckr::ENCRYPTED_DATA_INVALID, e.to_string()),
                })?;
                Ok(P11Response::Plaintext(Secret::from(plaintext)))
            }
            P11Request::Random { length } => {
                if !(1..=4096).contains(&length) {
                    return Err(err(ckr::ARGUMENTS_BAD, "C_GenerateRandom through nekms gives 1 to 4096 bytes per call"));
                }
                let mut out = Vec::with_capacity(length as usize);
                while out.len() < length as usize {
                    let chunk = self
                        .nsm
                        .get_random()
                        .map_err(|e| RpcError::new(nekms_rpc::ErrorCode::Attestation, format!("NSM GetRandom: {e}")))?;
                    out.extend_from_slice(&chunk);
                }
                out.truncate(length as usize);
                Ok(P11Response::Random(Secret::from(zeroize::Zeroizing::new(out))))
            }
            // Answered by p11_public above.
            P11Request::Verify { .. } | P11Request::RsaPublic { .. } | P11Request::Encrypt { .. } => {
                Err(RpcError::new(nekms_rpc::ErrorCode::Internal, "a public operation reached the token service"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_verifier_matches_its_pin_only() {
        let v = make_verifier(b"1234-secret").unwrap();
        assert!(pin_matches(&v, b"1234-secret"));
        assert!(!pin_matches(&v, b"1234-secreT"));
        assert_eq!(make_verifier(b"123").unwrap_err().pkcs11, Some(ckr::PIN_LEN_RANGE));
        assert!(!pin_matches(&PinVerifier { iterations: 0, ..v }, b"1234-secret"), "a zero iteration count never matches");
    }

    #[test]
    fn labels_are_checked() {
        for ok in ["web", "web-01.example.com", "a b"] {
            check_label(ok).unwrap();
        }
        for bad in ["", "x".repeat(33).as_str(), "trailing ", "semi;colon", "ünïcode"] {
            assert!(check_label(bad).is_err(), "{bad:?}");
        }
    }
}

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
//! It is not a key store, a PIN checker or a software token: no key's
//! private half is ever here, and nothing it keeps survives the process.
//!
//! What this first version implements: information, slots, tokens,
//! mechanisms, read-only sessions, login, objects and attributes, signing
//! (RSA PKCS#1 v1.5 and PSS, ECDSA, EdDSA; single- and multi-part) in the
//! enclave, verification and digests (SHA-1, SHA-224/256/384/512) here, and
//! C_GenerateRandom from the NSM. Everything else answers
//! CKR_FUNCTION_NOT_SUPPORTED, and the calls that would copy, change, wrap
//! or destroy a key answer CKR_ACTION_PROHIBITED, CKR_ATTRIBUTE_READ_ONLY
//! or CKR_KEY_NOT_WRAPPABLE.
//!
//! # Layout
//!
//! - `abi`: every `extern "C"` entry point, the function list and the
//!   PKCS#11 3.0 interface; the only `unsafe` code. Each entry checks its
//!   pointers and lengths, runs under `catch_unwind` (a panic is
//!   CKR_GENERAL_ERROR, never an abort), holds one process-wide lock
//!   whatever C_Initialize's arguments say, and hands safe values (slices,
//!   `arguments`) to the code below.
//! - Safe code, one file per family of calls: `general` (C_Initialize,
//!   C_Finalize, C_GetInfo), `slot` (slots, tokens, mechanisms), `session`
//!   (sessions and login), `object_access` (finding objects, reading
//!   attributes), `signature` (signing and verification), `encryption`
//!   (RSA decryption and encryption), `digest`, `keygen`, `random`; the
//!   process's state in `state`.
//! - [`objects`] (the objects of a token and their attributes), [`mech`]
//!   (mechanisms to the enclave's schemes) and [`client`] (the enclave's
//!   RPC).
//!
//! A process forked after C_Initialize must call C_Initialize again
//! (libp11 does).
#![allow(non_snake_case, clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]

mod abi;
mod arguments;
pub mod client;
mod digest;
mod encryption;
mod general;
pub mod hash;
mod keygen;
pub mod mech;
mod object_access;
pub mod objects;
mod random;
mod session;
mod signature;
mod slot;
mod state;

pub use abi::*;
pub use state::DEFAULT_RPC;

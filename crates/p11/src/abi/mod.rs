//! The C side of the module: every `extern "C"` entry point, the function
//! list and the PKCS#11 3.0 interface. All of the module's `unsafe` code
//! is here.
//!
//! Each entry point:
//!
//! 1. runs under [`guarded`] (a panic is CKR_GENERAL_ERROR, never an
//!    unwind into C; only C_Finalize's check of its one pointer comes
//!    first) and, once the module is initialised, under [`entry`], which
//!    holds the process-wide lock;
//! 2. checks the pointers that PKCS#11 says must not be NULL, where the
//!    module always checked them (before any session check);
//! 3. reads the caller's other arguments once into safe values (slices,
//!    [`crate::arguments`], [`crate::mech`]'s decoded mechanisms); a
//!    pointer that cannot be read becomes an `Err(CK_RV)` the safe code
//!    reports in its turn;
//! 4. calls the safe code, and writes its answer back into the caller's
//!    memory, checking again that the answer fits what the caller gave.
//!
//! The soundness of every `unsafe` block rests on the PKCS#11 contract
//! (2.40, section 5): a non-NULL pointer argument points to a valid,
//! aligned object of its type (an array: of the length passed with it),
//! which stays valid and is not touched by another thread for the length
//! of the call. A caller that breaks it can make any C library misbehave;
//! the module can do no better than check for NULL.

mod digest;
mod encryption;
mod function_list;
mod general;
mod keygen;
mod object_access;
mod random;
mod session;
mod signature;
mod slot;

pub use digest::*;
pub use encryption::*;
pub use function_list::*;
pub use general::*;
pub use keygen::*;
pub use object_access::*;
pub use random::*;
pub use session::*;
pub use signature::*;
pub use slot::*;

use std::mem::{size_of, MaybeUninit};
use std::panic::{catch_unwind, AssertUnwindSafe};

use cryptoki_sys::*;

use crate::arguments::{Attribute, AttributeAnswer, AttributeRequest, OutSpace, Reply};
use crate::mech::{CipherMechanism, OaepParams, SigningMechanism, MAX_OAEP_LABEL};
use crate::state::{self, Module};

/// Run `f`, a panic answered CKR_GENERAL_ERROR (unwinding into C is
/// undefined behaviour).
fn guarded(f: impl FnOnce() -> CK_RV) -> CK_RV {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(CKR_GENERAL_ERROR)
}

/// `Ok(())` as CKR_OK, an error as itself.
fn rv(r: Result<(), CK_RV>) -> CK_RV {
    match r {
        Ok(()) => CKR_OK,
        Err(rv) => rv,
    }
}

/// Run `f` on the initialised module of this process, under the lock and
/// [`guarded`]: CKR_CRYPTOKI_NOT_INITIALIZED before C_Initialize (or in a
/// child forked after it).
fn entry(f: impl FnOnce(&mut Module) -> Result<(), CK_RV>) -> CK_RV {
    guarded(|| rv(state::with_module(f)))
}

// ---- reading the caller's memory ----

/// The `n` bytes at `p`; an empty slice when `n` is 0 (whatever `p` is),
/// CKR_ARGUMENTS_BAD when `p` is NULL with a length.
///
/// # Safety
/// When `n > 0` and `p` is not NULL, `p` must point to `n` readable bytes
/// that stay valid and unchanged for `'a`.
unsafe fn bytes<'a>(p: *const u8, n: CK_ULONG) -> Result<&'a [u8], CK_RV> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: `p` is not NULL and, by this function's contract (the caller's
    // PKCS#11 one: a buffer and its length), points to `n` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) })
}

/// A template the module fills in (C_GetAttributeValue): its `n`
/// entries; empty when `n` is 0, CKR_ARGUMENTS_BAD when `t` is NULL with a
/// length.
///
/// # Safety
/// When `n > 0` and `t` is not NULL, `t` must point to `n` writable
/// CK_ATTRIBUTEs that stay valid for `'a` and that nothing else reads or
/// writes then.
unsafe fn template_to_fill<'a>(t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> Result<&'a mut [CK_ATTRIBUTE], CK_RV> {
    if n == 0 {
        return Ok(&mut []);
    }
    if t.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: `t` is not NULL and, by this function's contract (PKCS#11's
    // for a template and its count), points to `n` attributes the module
    // has to itself for the call.
    Ok(unsafe { std::slice::from_raw_parts_mut(t, n as usize) })
}

/// A template the module only reads (C_FindObjectsInit,
/// C_GenerateKeyPair): each entry's type and value; empty when `n` is 0,
/// CKR_ARGUMENTS_BAD when `t` is NULL with a length.
///
/// # Safety
/// When `n > 0` and `t` is not NULL, `t` must point to `n` readable
/// CK_ATTRIBUTEs, and each entry's `pValue`, when not NULL, to
/// `ulValueLen` readable bytes, valid and unchanged for `'a`.
unsafe fn template<'a>(t: *const CK_ATTRIBUTE, n: CK_ULONG) -> Result<Vec<Attribute<'a>>, CK_RV> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if t.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    // SAFETY: `t` is not NULL and, by this function's contract (PKCS#11's
    // for a template and its count), points to `n` attributes; they are
    // only read (a caller's template may be constant).
    let entries = unsafe { std::slice::from_raw_parts(t, n as usize) };
    Ok(entries
        .iter()
        .map(|a| Attribute {
            kind: a.type_,
            // SAFETY: a template's value is `ulValueLen` bytes at `pValue`
            // (this function's contract); `bytes` checks for NULL.
            value: unsafe { bytes(a.pValue as *const u8, a.ulValueLen) },
        })
        .collect())
}

/// A C_GetAttributeValue entry's question: its type, and the room at
/// `pValue` (`None`: NULL, a length query).
fn attribute_request(a: &CK_ATTRIBUTE) -> AttributeRequest {
    AttributeRequest { kind: a.type_, room: if a.pValue.is_null() { None } else { Some(a.ulValueLen as usize) } }
}

/// Write C_GetAttributeValue's answers into the template they answer.
///
/// # Safety
/// Each entry's `pValue`, when not NULL, must point to `ulValueLen`
/// writable bytes (PKCS#11's contract for a template to fill).
unsafe fn write_attributes(template: &mut [CK_ATTRIBUTE], answers: Vec<AttributeAnswer>) -> Result<(), CK_RV> {
    for (a, answer) in template.iter_mut().zip(answers) {
        a.ulValueLen = match answer {
            AttributeAnswer::Length(n) => n as CK_ULONG,
            AttributeAnswer::Unavailable => CK_UNAVAILABLE_INFORMATION,
            AttributeAnswer::Bytes(v) => {
                if a.pValue.is_null() || (a.ulValueLen as usize) < v.len() {
                    // The safe code answered a question it was not asked.
                    return Err(CKR_GENERAL_ERROR);
                }
                // SAFETY: `pValue` is not NULL and holds `ulValueLen` bytes
                // (this function's contract), at least `v.len()` (checked
                // above); `v` is the module's own vector, so they do not
                // overlap.
                unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), a.pValue as *mut u8, v.len()) };
                v.len() as CK_ULONG
            }
        };
    }
    Ok(())
}

/// The type of the CK_MECHANISM at `p`, its parameter not read.
///
/// # Safety
/// `p` must point to a valid CK_MECHANISM.
unsafe fn mechanism_type(p: *const CK_MECHANISM) -> CK_MECHANISM_TYPE {
    // SAFETY: `p` points to a CK_MECHANISM (this function's contract).
    unsafe { (*p).mechanism }
}

/// A sign or verify mechanism: its type, and its parameter read as
/// CK_RSA_PKCS_PSS_PARAMS when it has their size (the only parameter a
/// signing mechanism here takes).
///
/// # Safety
/// `p` must point to a valid CK_MECHANISM whose `pParameter`, when not
/// NULL, points to `ulParameterLen` readable bytes.
unsafe fn signing_mechanism(p: *const CK_MECHANISM) -> SigningMechanism {
    // SAFETY: `p` points to a CK_MECHANISM (this function's contract).
    let m = unsafe { *p };
    let pss = if m.pParameter.is_null() || m.ulParameterLen as usize != size_of::<CK_RSA_PKCS_PSS_PARAMS>() {
        None
    } else {
        // SAFETY: `pParameter` is not NULL and holds `ulParameterLen` bytes
        // (this function's contract), exactly a CK_RSA_PKCS_PSS_PARAMS; any
        // bits are a valid one (three integers). Read unaligned, so a
        // careless caller's alignment does not matter.
        Some(unsafe { std::ptr::read_unaligned(m.pParameter as *const CK_RSA_PKCS_PSS_PARAMS) })
    };
    let param_len = if m.pParameter.is_null() { 0 } else { m.ulParameterLen as usize };
    SigningMechanism { mechanism: m.mechanism, pss, param_len }
}

/// An encrypt or decrypt mechanism: its type, its declared parameter
/// length, and for CKM_RSA_PKCS_OAEP its CK_RSA_PKCS_OAEP_PARAMS with the
/// label they point to.
///
/// # Safety
/// `p` must point to a valid CK_MECHANISM whose `pParameter`, when not
/// NULL, points to `ulParameterLen` readable bytes; an OAEP parameter's
/// `pSourceData`, when not NULL, to `ulSourceDataLen` readable bytes that
/// stay valid for `'a`.
unsafe fn cipher_mechanism<'a>(p: *const CK_MECHANISM) -> CipherMechanism<'a> {
    // SAFETY: `p` points to a CK_MECHANISM (this function's contract).
    let m = unsafe { *p };
    let oaep = if m.mechanism == CKM_RSA_PKCS_OAEP
        && !m.pParameter.is_null()
        && m.ulParameterLen as usize == size_of::<CK_RSA_PKCS_OAEP_PARAMS>()
    {
        // SAFETY: `pParameter` is not NULL and holds `ulParameterLen` bytes
        // (this function's contract), exactly a CK_RSA_PKCS_OAEP_PARAMS; any
        // bits are a valid one (integers and a pointer not yet followed).
        let o = unsafe { std::ptr::read_unaligned(m.pParameter as *const CK_RSA_PKCS_OAEP_PARAMS) };
        let source_data = if o.source != CKZ_DATA_SPECIFIED || o.pSourceData.is_null() || o.ulSourceDataLen > MAX_OAEP_LABEL as CK_ULONG {
            None
        } else {
            // SAFETY: CKZ_DATA_SPECIFIED source data is `ulSourceDataLen`
            // bytes at `pSourceData` (this function's contract), not NULL
            // and at most MAX_OAEP_LABEL long (checked above).
            Some(unsafe { std::slice::from_raw_parts(o.pSourceData as *const u8, o.ulSourceDataLen as usize) })
        };
        Some(OaepParams { hash_alg: o.hashAlg, mgf: o.mgf, source: o.source, source_len: o.ulSourceDataLen, source_data })
    } else {
        None
    };
    CipherMechanism { mechanism: m.mechanism, param_len: m.ulParameterLen, oaep }
}

/// A buffer for random bytes: `n` bytes at `p`, empty when `n` is 0
/// (p11-kit's server passes an empty buffer as NULL); CKR_ARGUMENTS_BAD
/// when `p` is NULL with a length, CKR_DATA_LEN_RANGE beyond `max`.
///
/// # Safety
/// When `0 < n <= max` and `p` is not NULL, `p` must point to `n` writable
/// bytes (not necessarily initialised) valid for `'a` that nothing else
/// reads or writes then.
unsafe fn out_bytes<'a>(p: *mut u8, n: CK_ULONG, max: usize) -> Result<&'a mut [MaybeUninit<u8>], CK_RV> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(CKR_ARGUMENTS_BAD);
    }
    if n as usize > max {
        return Err(CKR_DATA_LEN_RANGE);
    }
    // SAFETY: `p` is not NULL and, by this function's contract (PKCS#11's
    // for an output buffer and its length), points to `n` writable bytes;
    // `MaybeUninit` asks nothing of their contents.
    Ok(unsafe { std::slice::from_raw_parts_mut(p.cast::<MaybeUninit<u8>>(), n as usize) })
}

// ---- writing the answers ----

/// The caller's `(pOut, pulOutLen)` pair, read per PKCS#11 5.2.
///
/// # Safety
/// `out_len`, when not NULL, must point to a readable CK_ULONG.
unsafe fn out_space(out: *mut u8, out_len: *mut CK_ULONG) -> OutSpace {
    if out_len.is_null() {
        OutSpace::Missing
    } else if out.is_null() {
        OutSpace::Query
    } else {
        // SAFETY: `out_len` is not NULL and points to a CK_ULONG (this
        // function's contract).
        OutSpace::Room(unsafe { *out_len } as usize)
    }
}

/// Write the safe code's reply into the `(pOut, pulOutLen)` pair that
/// [`out_space`] read as `space`: CKR_BUFFER_TOO_SMALL for
/// [`Reply::TooSmall`], and CKR_GENERAL_ERROR (nothing written) for a
/// reply that does not fit `space`, which the safe code never gives.
///
/// # Safety
/// `out` and `out_len` must be the pointers `space` was read from: `out`,
/// when `space` is `Room(n)`, points to `n` writable bytes, and `out_len`,
/// unless `space` is `Missing`, to a writable CK_ULONG.
unsafe fn write_reply<T: AsRef<[u8]>>(out: *mut u8, out_len: *mut CK_ULONG, space: OutSpace, reply: Reply<T>) -> Result<(), CK_RV> {
    match (reply, space) {
        (Reply::Length(n), OutSpace::Query | OutSpace::Room(_)) => {
            // SAFETY: `space` is not `Missing`, so `out_len` points to a
            // CK_ULONG (this function's contract).
            unsafe { out_len.write(n as CK_ULONG) };
            Ok(())
        }
        (Reply::TooSmall(n), OutSpace::Query | OutSpace::Room(_)) => {
            // SAFETY: `space` is not `Missing`, so `out_len` points to a
            // CK_ULONG (this function's contract).
            unsafe { out_len.write(n as CK_ULONG) };
            Err(CKR_BUFFER_TOO_SMALL)
        }
        (Reply::Bytes(b), OutSpace::Room(room)) if b.as_ref().len() <= room => {
            let b = b.as_ref();
            // SAFETY: `space` is `Room(room)`, so `out` points to `room`
            // writable bytes and `out_len` to a CK_ULONG (this function's
            // contract); `b` is no longer than `room` (checked above) and is
            // the module's own memory, so they do not overlap.
            unsafe {
                std::ptr::copy_nonoverlapping(b.as_ptr(), out, b.len());
                out_len.write(b.len() as CK_ULONG);
            }
            Ok(())
        }
        _ => Err(CKR_GENERAL_ERROR),
    }
}

/// Write a list into the caller's `(pList, pulCount)` pair: the count
/// alone when `list` is NULL, CKR_BUFFER_TOO_SMALL (with the count) when
/// the caller's is smaller.
///
/// # Safety
/// `count` must point to a readable and writable CK_ULONG, and `list`,
/// when not NULL, to `*count` writable `T`s.
unsafe fn write_list<T: Copy>(list: *mut T, count: *mut CK_ULONG, items: &[T]) -> Result<(), CK_RV> {
    if list.is_null() {
        // SAFETY: `count` points to a CK_ULONG (this function's contract).
        unsafe { count.write(items.len() as CK_ULONG) };
        return Ok(());
    }
    // SAFETY: `count` points to a CK_ULONG (this function's contract).
    let room = unsafe { count.read() } as usize;
    if room < items.len() {
        // SAFETY: `count` points to a CK_ULONG (this function's contract).
        unsafe { count.write(items.len() as CK_ULONG) };
        return Err(CKR_BUFFER_TOO_SMALL);
    }
    // SAFETY: `list` is not NULL and holds `room` entries (this function's
    // contract), at least `items.len()` (checked above); `items` is the
    // module's own memory, so they do not overlap. `count` points to a
    // CK_ULONG (this function's contract).
    unsafe {
        std::ptr::copy_nonoverlapping(items.as_ptr(), list, items.len());
        count.write(items.len() as CK_ULONG);
    }
    Ok(())
}

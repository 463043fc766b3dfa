//! Signing and verification, both in the enclave (verification with the
//! key's public half, which needs no login): C_SignInit, C_Sign,
//! C_SignUpdate, C_SignFinal, C_VerifyInit, C_Verify, C_VerifyUpdate,
//! C_VerifyFinal. Multi-part mechanisms hash the parts here; the enclave
//! signs or verifies the digest.

use cryptoki_sys::*;
use nekms_protocol::rpc::{P11Request, P11Response};
use zeroize::Zeroizing;

use crate::arguments::{OutSpace, Reply};
use crate::hash::{self, Hasher};
use crate::mech::{self, Mech, SigningMechanism};
use crate::objects::{self, Kind};
use crate::state::{Module, Session};

/// A signing operation under way.
pub(crate) struct SignOp {
    slot: u64,
    key_id: Vec<u8>,
    spec: nekms_protocol::KeySpec,
    sig_len: usize,
    mech: Mech,
    /// The running hash of C_SignUpdate's parts.
    hasher: Option<Hasher>,
    /// The key was provisioned to decrypt (raw operations allowed).
    decrypt: bool,
}

/// A verification under way.
pub(crate) struct VerifyOp {
    public_key: Vec<u8>,
    spec: nekms_protocol::KeySpec,
    sig_len: usize,
    mech: Mech,
    hasher: Option<Hasher>,
}

/// C_SignInit.
pub(crate) fn sign_init(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: &SigningMechanism,
    key: CK_OBJECT_HANDLE,
) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if m.session(session)?.sign.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    if !m.logged_in.contains(&slot) {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    m.load(slot)?;
    let o = m.object(slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
    if o.kind != Kind::Private {
        return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    let chosen = mechanism.for_key(o.key.spec)?;
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
}

/// Sign `data` with the session's operation (which ends unless the caller
/// only asked for the length or gave a short buffer).
fn finish_sign(m: &mut Module, session: CK_SESSION_HANDLE, data: Option<&[u8]>, out: OutSpace) -> Result<Reply<Zeroizing<Vec<u8>>>, CK_RV> {
    if out == OutSpace::Missing {
        m.session(session)?.sign = None;
        return Err(CKR_ARGUMENTS_BAD);
    }
    let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let need = op.sig_len;
    if let Some(reply) = out.lacks(need) {
        return Ok(reply);
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
            padding: nekms_protocol::RsaPadding::Raw,
            ciphertext: block,
            label: None,
        }) {
            Ok(P11Response::Plaintext(p)) => p.into_zeroizing(),
            Ok(_) => return Err(CKR_DEVICE_ERROR),
            Err(CKR_ENCRYPTED_DATA_INVALID) => return Err(CKR_DATA_INVALID),
            Err(rv) => return Err(m.gone(op.slot, rv)),
        };
        if out.len() != need {
            return Err(CKR_DEVICE_ERROR);
        }
        return Ok(Reply::Bytes(out));
    }
    let (scheme, payload) = match (data, op.hasher) {
        (Some(input), _) => mech::to_scheme(op.spec, op.mech, input)?,
        (None, Some(h)) => mech::to_scheme_hashed(op.spec, op.mech, &h.finish())?,
        (None, None) => {
            let h = mech::running_hash(op.mech).ok_or(CKR_FUNCTION_NOT_SUPPORTED)?;
            mech::to_scheme_hashed(op.spec, op.mech, &hash::digest(h, &[]))?
        }
    };
    let handle = m.handle(op.slot)?;
    let signature = match m.call(P11Request::Sign { handle, id: op.key_id.clone(), scheme, payload }) {
        Ok(P11Response::Signature(s)) => s,
        Ok(_) => return Err(CKR_DEVICE_ERROR),
        Err(rv) => return Err(m.gone(op.slot, rv)),
    };
    if signature.len() > need {
        return Err(CKR_DEVICE_ERROR);
    }
    Ok(Reply::Bytes(Zeroizing::new(signature)))
}

/// C_Sign: single-part, over `data`.
pub(crate) fn sign(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Result<&[u8], CK_RV>,
    out: OutSpace,
) -> Result<Reply<Zeroizing<Vec<u8>>>, CK_RV> {
    let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if op.hasher.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let input = match data {
        Ok(d) => d,
        Err(rv) => {
            m.session(session)?.sign = None;
            return Err(rv);
        }
    };
    finish_sign(m, session, Some(input), out)
}

/// C_SignUpdate: one more part into the running hash.
pub(crate) fn sign_update(m: &mut Module, session: CK_SESSION_HANDLE, part: Result<&[u8], CK_RV>) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    let op = s.sign.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let failed = |s: &mut Session, rv| {
        s.sign = None;
        Err(rv)
    };
    if !op.mech.multi_part() {
        return failed(s, CKR_FUNCTION_NOT_SUPPORTED);
    }
    let part = match part {
        Ok(p) => p,
        Err(rv) => return failed(s, rv),
    };
    let hash = mech::running_hash(op.mech).expect("multi-part mechanisms hash");
    op.hasher.get_or_insert_with(|| Hasher::new(hash)).update(part);
    Ok(())
}

/// C_SignFinal: the signature over the parts hashed so far.
pub(crate) fn sign_final(m: &mut Module, session: CK_SESSION_HANDLE, out: OutSpace) -> Result<Reply<Zeroizing<Vec<u8>>>, CK_RV> {
    let op = m.session(session)?.sign.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if !op.mech.multi_part() {
        m.session(session)?.sign = None;
        return Err(CKR_FUNCTION_NOT_SUPPORTED);
    }
    finish_sign(m, session, None, out)
}

/// C_VerifyInit: with a public or private key object (its public half).
pub(crate) fn verify_init(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: &SigningMechanism,
    key: CK_OBJECT_HANDLE,
) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if m.session(session)?.verify.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    m.load(slot)?;
    let o = m.object(slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
    if matches!(o.kind, Kind::Certificate(_)) {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    let chosen = mechanism.for_key(o.key.spec)?;
    let op = VerifyOp {
        public_key: o.key.public_key.clone(),
        spec: o.key.spec,
        sig_len: objects::signature_len(o.key),
        mech: chosen,
        hasher: None,
    };
    m.session(session)?.verify = Some(op);
    Ok(())
}

/// Check a signature with the key's public key, in the enclave (a public
/// operation: no handle, no login): over `data`, or over the parts hashed so far.
fn finish_verify(m: &mut Module, op: VerifyOp, data: Option<&[u8]>, signature: &[u8]) -> Result<(), CK_RV> {
    if signature.len() != op.sig_len {
        return Err(CKR_SIGNATURE_LEN_RANGE);
    }
    if let Some(block) = mech::raw_block(op.spec, op.mech, data.unwrap_or_default())? {
        let request = P11Request::RsaPublic { public_key: op.public_key, input: signature.to_vec() };
        return match m.call(request)? {
            P11Response::Output(recovered) if recovered == block => Ok(()),
            P11Response::Output(_) => Err(CKR_SIGNATURE_INVALID),
            _ => Err(CKR_DEVICE_ERROR),
        };
    }
    let (scheme, payload) = match (data, op.hasher) {
        (Some(d), _) => mech::to_scheme(op.spec, op.mech, d)?,
        (None, Some(h)) => mech::to_scheme_hashed(op.spec, op.mech, &h.finish())?,
        (None, None) => {
            let h = mech::running_hash(op.mech).ok_or(CKR_FUNCTION_NOT_SUPPORTED)?;
            mech::to_scheme_hashed(op.spec, op.mech, &hash::digest(h, &[]))?
        }
    };
    match m.call(P11Request::Verify { public_key: op.public_key, scheme, payload, signature: signature.to_vec() })? {
        P11Response::Done => Ok(()),
        _ => Err(CKR_DEVICE_ERROR),
    }
}

/// C_Verify: single-part, over `data`.
pub(crate) fn verify(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Result<&[u8], CK_RV>,
    signature: Result<&[u8], CK_RV>,
) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    let op = s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if op.hasher.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    finish_verify(m, op, Some(data?), signature?)
}

/// C_VerifyUpdate: one more part into the running hash.
pub(crate) fn verify_update(m: &mut Module, session: CK_SESSION_HANDLE, part: Result<&[u8], CK_RV>) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    let op = s.verify.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    match (part, mech::running_hash(op.mech)) {
        (Ok(p), Some(hash)) => {
            op.hasher.get_or_insert_with(|| Hasher::new(hash)).update(p);
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
}

/// C_VerifyFinal: the signature over the parts hashed so far.
pub(crate) fn verify_final(m: &mut Module, session: CK_SESSION_HANDLE, signature: Result<&[u8], CK_RV>) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    let op = s.verify.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if !op.mech.multi_part() {
        return Err(CKR_FUNCTION_NOT_SUPPORTED);
    }
    finish_verify(m, op, None, signature?)
}

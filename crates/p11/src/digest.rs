//! Digests, here: C_DigestInit, C_Digest, C_DigestUpdate, C_DigestFinal
//! (SHA-1, SHA-224/256/384/512; C_DigestKey is not offered), computed here
//! with [`crate::hash`].

use cryptoki_sys::*;

use crate::arguments::{OutSpace, Reply};
use crate::hash::Hasher;
use crate::mech;
use crate::state::Module;

/// C_DigestInit.
pub(crate) fn digest_init(m: &mut Module, session: CK_SESSION_HANDLE, mechanism: CK_MECHANISM_TYPE) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    if s.digest.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let alg = mech::digest_algorithm(mechanism).ok_or(CKR_MECHANISM_INVALID)?;
    s.digest = Some(Hasher::new(alg));
    Ok(())
}

/// The digest's length, or the reply for a caller who only asked for it
/// or gave too little room (the operation goes on), or CKR_ARGUMENTS_BAD
/// for one who gave no length (the operation ends).
fn room_for(m: &mut Module, session: CK_SESSION_HANDLE, out: OutSpace) -> Result<Option<Reply<Vec<u8>>>, CK_RV> {
    let s = m.session(session)?;
    let ctx = s.digest.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let need = ctx.output_len();
    if out == OutSpace::Missing {
        s.digest = None;
        return Err(CKR_ARGUMENTS_BAD);
    }
    Ok(out.lacks(need))
}

/// C_Digest: single-part, over `data`.
pub(crate) fn digest(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Result<&[u8], CK_RV>,
    out: OutSpace,
) -> Result<Reply<Vec<u8>>, CK_RV> {
    if let Some(reply) = room_for(m, session, out)? {
        return Ok(reply);
    }
    let mut ctx = m.session(session)?.digest.take().expect("checked");
    ctx.update(data?);
    Ok(Reply::Bytes(ctx.finish()))
}

/// C_DigestUpdate.
pub(crate) fn digest_update(m: &mut Module, session: CK_SESSION_HANDLE, part: Result<&[u8], CK_RV>) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    let ctx = s.digest.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    match part {
        Ok(p) => {
            ctx.update(p);
            Ok(())
        }
        Err(rv) => {
            s.digest = None;
            Err(rv)
        }
    }
}

/// C_DigestFinal: the digest of the parts so far.
pub(crate) fn digest_final(m: &mut Module, session: CK_SESSION_HANDLE, out: OutSpace) -> Result<Reply<Vec<u8>>, CK_RV> {
    if let Some(reply) = room_for(m, session, out)? {
        return Ok(reply);
    }
    let ctx = m.session(session)?.digest.take().expect("checked");
    Ok(Reply::Bytes(ctx.finish()))
}

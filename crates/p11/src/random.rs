//! Random bytes from the NSM, through the enclave: C_GenerateRandom.
//! C_SeedRandom is refused (the NSM takes no seed).

use std::mem::MaybeUninit;

use cryptoki_sys::*;
use nekms_protocol::rpc::{P11Request, P11Response};

use crate::state::Module;

/// Most random bytes one C_GenerateRandom gives.
pub(crate) const MAX_RANDOM: usize = 64 * 1024;
/// Most bytes asked of the enclave in one call.
const CHUNK: usize = 4096;

/// C_GenerateRandom: fill `out` (at most [`MAX_RANDOM`] bytes, checked by
/// the ABI layer) with the enclave's random bytes.
pub(crate) fn generate(m: &mut Module, session: CK_SESSION_HANDLE, out: Result<&mut [MaybeUninit<u8>], CK_RV>) -> Result<(), CK_RV> {
    m.session(session)?;
    let out = out?;
    let mut done = 0usize;
    while done < out.len() {
        let n = (out.len() - done).min(CHUNK);
        match m.call(P11Request::Random { length: n as u32 })? {
            P11Response::Random(bytes) if bytes.expose().len() == n => {
                for (slot, byte) in out[done..done + n].iter_mut().zip(bytes.expose()) {
                    slot.write(*byte);
                }
                done += n;
            }
            _ => return Err(CKR_DEVICE_ERROR),
        }
    }
    Ok(())
}

/// C_SeedRandom.
pub(crate) fn seed(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    m.session(session)?;
    Err(CKR_RANDOM_SEED_NOT_SUPPORTED)
}

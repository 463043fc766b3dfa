//! C_GenerateRandom, C_SeedRandom.

use cryptoki_sys::*;

use super::{entry, out_bytes};
use crate::random;

#[no_mangle]
pub unsafe extern "C" fn C_GenerateRandom(session: CK_SESSION_HANDLE, out: *mut u8, len: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pRandomData points to ulRandomLen writable bytes (PKCS#11
        // C_GenerateRandom); `out_bytes` checks for NULL and makes no slice
        // beyond MAX_RANDOM.
        let out = unsafe { out_bytes(out, len, random::MAX_RANDOM) };
        random::generate(m, session, out)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SeedRandom(session: CK_SESSION_HANDLE, _seed: *mut u8, _len: CK_ULONG) -> CK_RV {
    entry(|m| random::seed(m, session))
}

//! General-purpose calls: C_Initialize, C_Finalize, C_GetInfo. (The
//! function list and the PKCS#11 3.0 interface are pointers only: they
//! live in the ABI layer.)

use cryptoki_sys::*;
use nekms_protocol::rpc::P11Request;
use nekms_protocol::rpc::Secret;

use crate::state;

/// A text field of a PKCS#11 structure: UTF-8, padded with blanks, not
/// terminated.
pub(crate) fn pad<const N: usize>(s: &str) -> [CK_UTF8CHAR; N] {
    let mut out = [b' '; N];
    let b = s.as_bytes();
    let n = b.len().min(N);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// C_Initialize, once its arguments were checked.
pub(crate) fn initialize() -> Result<(), CK_RV> {
    state::start()
}

/// C_Finalize: close this process's enclave handles (which logs it out),
/// then forget everything.
pub(crate) fn finalize() -> Result<(), CK_RV> {
    state::with_module(|m| {
        let handles: Vec<Secret> = m.handles.drain().map(|(_, h)| h).collect();
        for handle in handles {
            let _ = m.call(P11Request::Close { handle });
        }
        Ok(())
    })?;
    state::stop();
    Ok(())
}

/// C_GetInfo.
pub(crate) fn info() -> CK_INFO {
    CK_INFO {
        cryptokiVersion: CK_VERSION { major: 2, minor: 40 },
        manufacturerID: pad("nekms"),
        flags: 0,
        libraryDescription: pad("nekms enclave PKCS#11 module"),
        libraryVersion: CK_VERSION { major: 0, minor: 1 },
    }
}

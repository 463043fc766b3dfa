//! C_GenerateKeyPair, C_WrapKey.

use cryptoki_sys::*;

use super::{entry, mechanism_type, template};
use crate::keygen;

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
    entry(|m| {
        if mechanism.is_null() || public_out.is_null() || private_out.is_null() {
            return Err(CKR_ARGUMENTS_BAD);
        }
        // SAFETY: `mechanism` is not NULL (checked above) and points to a
        // CK_MECHANISM; each template points to its count of attributes,
        // each `pValue` to `ulValueLen` bytes (PKCS#11 C_GenerateKeyPair);
        // `template` checks for NULL.
        let (mechanism, public, private) =
            unsafe { (mechanism_type(mechanism), template(public_template, public_count), template(private_template, private_count)) };
        let (public_key, private_key) = keygen::generate_key_pair(m, session, mechanism, public, private)?;
        // SAFETY: neither is NULL (checked above); each points to the
        // CK_OBJECT_HANDLE the caller gave for a new key's handle (PKCS#11
        // C_GenerateKeyPair).
        unsafe {
            public_out.write(public_key);
            private_out.write(private_key);
        }
        Ok(())
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
    entry(|m| keygen::wrap_key(m, session))
}

//! C_FindObjectsInit, C_FindObjects, C_FindObjectsFinal,
//! C_GetAttributeValue, C_SetAttributeValue, C_CopyObject,
//! C_DestroyObject.

use cryptoki_sys::*;

use super::{attribute_request, entry, template, template_to_fill, write_attributes};
use crate::object_access;

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsInit(session: CK_SESSION_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pTemplate points to ulCount attributes, each `pValue` to
        // `ulValueLen` bytes (PKCS#11 C_FindObjectsInit), valid for the call;
        // `template` checks for NULL.
        let wanted = unsafe { template(t, n) };
        object_access::find_init(m, session, wanted)
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjects(
    session: CK_SESSION_HANDLE,
    out: *mut CK_OBJECT_HANDLE,
    max: CK_ULONG,
    count: *mut CK_ULONG,
) -> CK_RV {
    entry(|m| {
        if count.is_null() || (out.is_null() && max > 0) {
            return Err(CKR_ARGUMENTS_BAD);
        }
        let found = object_access::find_next(m, session, max as usize)?;
        if found.len() > max as usize {
            // More than the caller has room for: never given.
            return Err(CKR_GENERAL_ERROR);
        }
        // SAFETY: `count` is not NULL, and `out` is not NULL whenever `max`
        // (hence `found.len()`, checked above) is not 0: phObject points to
        // `ulMaxObjectCount` handles and pulObjectCount to a CK_ULONG
        // (PKCS#11 C_FindObjects); `found` is the module's own memory.
        unsafe {
            if !found.is_empty() {
                std::ptr::copy_nonoverlapping(found.as_ptr(), out, found.len());
            }
            count.write(found.len() as CK_ULONG);
        }
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_FindObjectsFinal(session: CK_SESSION_HANDLE) -> CK_RV {
    entry(|m| object_access::find_final(m, session))
}

#[no_mangle]
pub unsafe extern "C" fn C_GetAttributeValue(session: CK_SESSION_HANDLE, h: CK_OBJECT_HANDLE, t: *mut CK_ATTRIBUTE, n: CK_ULONG) -> CK_RV {
    entry(|m| {
        // SAFETY: pTemplate points to ulCount attributes the module fills
        // in (PKCS#11 C_GetAttributeValue), for the call; `template_to_fill`
        // checks for NULL.
        let entries = unsafe { template_to_fill(t, n) };
        let requests = entries.as_deref().map(|e| e.iter().map(attribute_request).collect()).map_err(|rv| *rv);
        let answer = object_access::attribute_values(m, session, h, requests)?;
        // The safe code reads the template before it answers, so it is there.
        let entries = entries?;
        // SAFETY: each entry's non-NULL `pValue` points to `ulValueLen`
        // writable bytes (PKCS#11 C_GetAttributeValue).
        unsafe { write_attributes(entries, answer.entries) }?;
        if answer.rv == CKR_OK {
            Ok(())
        } else {
            Err(answer.rv)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn C_SetAttributeValue(
    session: CK_SESSION_HANDLE,
    _h: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
) -> CK_RV {
    entry(|m| object_access::set_attribute_value(m, session))
}

#[no_mangle]
pub unsafe extern "C" fn C_CopyObject(
    session: CK_SESSION_HANDLE,
    _h: CK_OBJECT_HANDLE,
    _t: *mut CK_ATTRIBUTE,
    _n: CK_ULONG,
    _new: *mut CK_OBJECT_HANDLE,
) -> CK_RV {
    entry(|m| object_access::copy_or_destroy(m, session))
}

#[no_mangle]
pub unsafe extern "C" fn C_DestroyObject(session: CK_SESSION_HANDLE, _h: CK_OBJECT_HANDLE) -> CK_RV {
    entry(|m| object_access::copy_or_destroy(m, session))
}

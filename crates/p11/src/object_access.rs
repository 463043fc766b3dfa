//! Finding objects and reading their attributes: C_FindObjectsInit,
//! C_FindObjects, C_FindObjectsFinal, C_GetAttributeValue. The calls that
//! would change, copy or destroy an object are refused: its key lives in
//! the enclave and is provisioned there.

use cryptoki_sys::*;

use crate::arguments::{Attribute, AttributeAnswer, AttributeRequest, TemplateAnswer};
use crate::objects::{self, Value};
use crate::state::Module;

/// C_FindObjectsInit: the objects whose attributes equal the template's,
/// from the slot's description fetched again.
pub(crate) fn find_init(m: &mut Module, session: CK_SESSION_HANDLE, template: Result<Vec<Attribute<'_>>, CK_RV>) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if m.session(session)?.find.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    let wanted: Vec<(CK_ATTRIBUTE_TYPE, Vec<u8>)> =
        template?.iter().map(|a| a.value.map(|v| (a.kind, v.to_vec()))).collect::<Result<_, _>>()?;
    if let Err(rv) = m.fresh_slot(slot) {
        m.token_gone(slot);
        return Err(rv);
    }
    let logged_in = m.logged_in.contains(&slot);
    let found: Vec<CK_OBJECT_HANDLE> = match m.slot(slot) {
        Some(s) => objects::objects(s, logged_in)
            .into_iter()
            .filter(|(_, o)| wanted.iter().all(|(t, v)| matches!(o.attribute(*t), Value::Bytes(b) if b == *v)))
            .map(|(h, _)| h)
            .collect(),
        None => {
            m.token_gone(slot);
            return Err(CKR_TOKEN_NOT_PRESENT);
        }
    };
    m.session(session)?.find = Some((found, 0));
    Ok(())
}

/// C_FindObjects: up to `max` of the handles found, not given before.
pub(crate) fn find_next(m: &mut Module, session: CK_SESSION_HANDLE, max: usize) -> Result<Vec<CK_OBJECT_HANDLE>, CK_RV> {
    let s = m.session(session)?;
    let (found, at) = s.find.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    let n = (found.len() - *at).min(max);
    let next = found[*at..*at + n].to_vec();
    *at += n;
    Ok(next)
}

/// C_FindObjectsFinal.
pub(crate) fn find_final(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    let s = m.session(session)?;
    s.find.take().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    Ok(())
}

/// C_GetAttributeValue: every attribute asked is answered, and the
/// return value says what went wrong (PKCS#11 5.7).
pub(crate) fn attribute_values(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    h: CK_OBJECT_HANDLE,
    template: Result<Vec<AttributeRequest>, CK_RV>,
) -> Result<TemplateAnswer, CK_RV> {
    let slot = m.session(session)?.slot;
    let template = template?;
    m.load(slot)?;
    let o = m.object(slot, h)?;
    let mut rv = CKR_OK;
    let mut entries = Vec::with_capacity(template.len());
    for a in &template {
        entries.push(match o.attribute(a.kind) {
            Value::Bytes(v) => match a.room {
                None => AttributeAnswer::Length(v.len()),
                Some(room) if room < v.len() => {
                    rv = CKR_BUFFER_TOO_SMALL;
                    AttributeAnswer::Unavailable
                }
                Some(_) => AttributeAnswer::Bytes(v),
            },
            Value::Sensitive => {
                rv = CKR_ATTRIBUTE_SENSITIVE;
                AttributeAnswer::Unavailable
            }
            Value::Invalid => {
                if rv == CKR_OK {
                    rv = CKR_ATTRIBUTE_TYPE_INVALID;
                }
                AttributeAnswer::Unavailable
            }
        });
    }
    Ok(TemplateAnswer { entries, rv })
}

/// C_SetAttributeValue: every attribute is read-only.
pub(crate) fn set_attribute_value(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    m.session(session)?;
    Err(CKR_ATTRIBUTE_READ_ONLY)
}

/// C_CopyObject and C_DestroyObject: prohibited.
pub(crate) fn copy_or_destroy(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    m.session(session)?;
    Err(CKR_ACTION_PROHIBITED)
}

//! Key-pair generation, in the enclave: C_GenerateKeyPair (RSA 2048/3072/
//! 4096, P-256, P-384, secp256k1). A key never leaves the enclave, so
//! C_WrapKey is refused here too.

use cryptoki_sys::*;
use nekms_protocol::rpc::{P11Request, P11Response};

use crate::arguments::Attribute;
use crate::objects::{self, Kind};
use crate::state::Module;

/// What a key-pair template asks for: CKA_ID, CKA_LABEL, CKA_MODULUS_BITS, CKA_EC_PARAMS.
type Asked = (Option<Vec<u8>>, Option<String>, Option<CK_ULONG>, Option<Vec<u8>>);

/// The attributes a key-pair template may set, and what they must say.
fn generation_template(t: &[Attribute<'_>]) -> Result<Asked, CK_RV> {
    let (mut id, mut label, mut bits, mut params) = (None, None, None, None);
    for a in t {
        let v = a.value?;
        let flag = || v.first().copied().unwrap_or(0) != 0;
        let ulong = || -> Result<CK_ULONG, CK_RV> { v.try_into().map(CK_ULONG::from_ne_bytes).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID) };
        match a.kind {
            CKA_ID => id = Some(v.to_vec()),
            CKA_LABEL => label = Some(String::from_utf8(v.to_vec()).map_err(|_| CKR_ATTRIBUTE_VALUE_INVALID)?),
            CKA_MODULUS_BITS => bits = Some(ulong()?),
            CKA_EC_PARAMS => params = Some(v.to_vec()),
            CKA_PUBLIC_EXPONENT if v.iter().skip_while(|b| **b == 0).copied().collect::<Vec<_>>() != [1, 0, 1] => {
                return Err(CKR_TEMPLATE_INCONSISTENT)
            }
            // Token objects only; private keys are always sensitive and never extractable.
            CKA_TOKEN if !flag() => return Err(CKR_TEMPLATE_INCONSISTENT),
            CKA_EXTRACTABLE if flag() => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            CKA_SENSITIVE if !flag() => return Err(CKR_ATTRIBUTE_VALUE_INVALID),
            // Usage flags (CKA_SIGN, CKA_DECRYPT, CKA_DERIVE, ...) that tools
            // set by default are not honoured: a generated key signs only.
            _ => {}
        }
    }
    Ok((id, label, bits, params))
}

/// C_GenerateKeyPair: the new public and private key objects' handles.
pub(crate) fn generate_key_pair(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: CK_MECHANISM_TYPE,
    public_template: Result<Vec<Attribute<'_>>, CK_RV>,
    private_template: Result<Vec<Attribute<'_>>, CK_RV>,
) -> Result<(CK_OBJECT_HANDLE, CK_OBJECT_HANDLE), CK_RV> {
    let (slot, rw) = (m.session(session)?.slot, m.session(session)?.rw);
    if !rw {
        return Err(CKR_SESSION_READ_ONLY);
    }
    if !m.logged_in.contains(&slot) {
        return Err(CKR_USER_NOT_LOGGED_IN);
    }
    let (pub_id, pub_label, bits, params) = generation_template(&public_template?)?;
    let (priv_id, priv_label, _, _) = generation_template(&private_template?)?;
    let spec = match mechanism {
        CKM_RSA_PKCS_KEY_PAIR_GEN => match bits {
            Some(2048) => nekms_protocol::KeySpec::Rsa2048,
            Some(3072) => nekms_protocol::KeySpec::Rsa3072,
            Some(4096) => nekms_protocol::KeySpec::Rsa4096,
            Some(_) => return Err(CKR_KEY_SIZE_RANGE),
            None => return Err(CKR_TEMPLATE_INCOMPLETE),
        },
        CKM_EC_KEY_PAIR_GEN => {
            let p = params.ok_or(CKR_TEMPLATE_INCOMPLETE)?;
            [nekms_protocol::KeySpec::P256, nekms_protocol::KeySpec::P384, nekms_protocol::KeySpec::Secp256k1]
                .into_iter()
                .find(|s| objects::ec_params(*s) == Some(p.as_slice()))
                .ok_or(CKR_CURVE_NOT_SUPPORTED)?
        }
        _ => return Err(CKR_MECHANISM_INVALID),
    };
    let id = match (pub_id, priv_id) {
        (Some(a), Some(b)) if a != b => return Err(CKR_TEMPLATE_INCONSISTENT),
        (Some(a), _) | (None, Some(a)) => a,
        (None, None) => return Err(CKR_TEMPLATE_INCOMPLETE),
    };
    let label = priv_label.or(pub_label).unwrap_or_default();
    let handle = m.handle(slot)?;
    match m.call(P11Request::GenerateKeyPair { handle, spec, id: id.clone(), label }) {
        Ok(P11Response::KeyPair { .. }) => {}
        Ok(_) => return Err(CKR_DEVICE_ERROR),
        Err(rv) => return Err(m.gone(slot, rv)),
    }
    m.full.remove(&slot);
    m.refresh()?;
    m.load(slot)?;
    let index = m.slot(slot).and_then(|s| s.keys.iter().position(|k| k.id == id)).ok_or(CKR_DEVICE_ERROR)?;
    Ok((objects::handle(slot, index, Kind::Public), objects::handle(slot, index, Kind::Private)))
}

/// C_WrapKey: no key leaves the enclave.
pub(crate) fn wrap_key(m: &mut Module, session: CK_SESSION_HANDLE) -> Result<(), CK_RV> {
    m.session(session)?;
    Err(CKR_KEY_NOT_WRAPPABLE)
}

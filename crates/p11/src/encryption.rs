//! RSA decryption and encryption, both in the enclave (encryption with the
//! key's public half, which needs no login): C_DecryptInit, C_Decrypt,
//! C_EncryptInit, C_Encrypt (single-part only; the multi-part calls are not
//! offered).

use cryptoki_sys::*;
use nekms_protocol::rpc::{P11Request, P11Response, Secret};
use zeroize::Zeroizing;

use crate::arguments::{OutSpace, Reply};
use crate::mech::{self, CipherMechanism};
use crate::objects::{self, Kind};
use crate::state::Module;

/// A decryption under way.
pub(crate) struct DecryptOp {
    slot: u64,
    key_id: Vec<u8>,
    modulus_len: usize,
    padding: nekms_protocol::RsaPadding,
    label: Option<Vec<u8>>,
    /// A plaintext already computed for a caller whose buffer was too short.
    done: Option<Zeroizing<Vec<u8>>>,
}

/// An encryption with a key's public half, done here (no enclave call).
pub(crate) struct EncryptOp {
    public_key: Vec<u8>,
    modulus_len: usize,
    padding: nekms_protocol::RsaPadding,
    label: Option<Vec<u8>>,
}

/// C_DecryptInit: with a private RSA key provisioned to decrypt.
pub(crate) fn decrypt_init(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: &CipherMechanism<'_>,
    key: CK_OBJECT_HANDLE,
) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if m.session(session)?.decrypt.is_some() {
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
    if objects::key_type(o.key.spec) != CKK_RSA {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    if !o.key.decrypt {
        // Provisioned to sign only (CKA_DECRYPT false).
        return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    let (padding, label) = mech::decryption(mechanism)?;
    let op = DecryptOp { slot, key_id: o.key.id.clone(), modulus_len: objects::signature_len(o.key), padding, label, done: None };
    m.session(session)?.decrypt = Some(op);
    Ok(())
}

/// C_Decrypt: the enclave decrypts once; a plaintext too long for the
/// caller's buffer is kept for the next call.
pub(crate) fn decrypt(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Result<&[u8], CK_RV>,
    out: OutSpace,
) -> Result<Reply<Zeroizing<Vec<u8>>>, CK_RV> {
    let s = m.session(session)?;
    let op = s.decrypt.as_mut().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if out == OutSpace::Missing {
        s.decrypt = None;
        return Err(CKR_ARGUMENTS_BAD);
    }
    if op.done.is_none() {
        if out == OutSpace::Query {
            // A length query: the modulus is enough for any plaintext.
            return Ok(Reply::Length(op.modulus_len));
        }
        let ciphertext = match data {
            Ok(c) if c.len() == op.modulus_len => c.to_vec(),
            Ok(_) => {
                s.decrypt = None;
                return Err(CKR_ENCRYPTED_DATA_LEN_RANGE);
            }
            Err(rv) => {
                s.decrypt = None;
                return Err(rv);
            }
        };
        let (slot, key_id, padding, label) = (op.slot, op.key_id.clone(), op.padding, op.label.clone());
        let handle = match m.handle(slot) {
            Ok(h) => h,
            Err(rv) => {
                m.session(session)?.decrypt = None;
                return Err(rv);
            }
        };
        let plaintext = match m.call(P11Request::Decrypt { handle, id: key_id, padding, ciphertext, label }) {
            Ok(P11Response::Plaintext(p)) => p.into_zeroizing(),
            Ok(_) => {
                m.session(session)?.decrypt = None;
                return Err(CKR_DEVICE_ERROR);
            }
            Err(rv) => {
                m.session(session)?.decrypt = None;
                return Err(m.gone(slot, rv));
            }
        };
        m.session(session)?.decrypt.as_mut().expect("active").done = Some(plaintext);
    }
    let s = m.session(session)?;
    let length = s.decrypt.as_ref().and_then(|o| o.done.as_ref()).expect("decrypted").len();
    if let Some(reply) = out.lacks(length) {
        return Ok(reply);
    }
    let plaintext = s.decrypt.take().and_then(|o| o.done).expect("decrypted");
    Ok(Reply::Bytes(plaintext))
}

/// C_EncryptInit: with a public RSA key object, and the mechanisms and
/// parameters C_Decrypt takes.
pub(crate) fn encrypt_init(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    mechanism: &CipherMechanism<'_>,
    key: CK_OBJECT_HANDLE,
) -> Result<(), CK_RV> {
    let slot = m.session(session)?.slot;
    if m.session(session)?.encrypt.is_some() {
        return Err(CKR_OPERATION_ACTIVE);
    }
    m.load(slot)?;
    let o = m.object(slot, key).map_err(|_| CKR_KEY_HANDLE_INVALID)?;
    if o.kind != Kind::Public {
        // Only the public key object has CKA_ENCRYPT.
        return Err(CKR_KEY_FUNCTION_NOT_PERMITTED);
    }
    if objects::key_type(o.key.spec) != CKK_RSA {
        return Err(CKR_KEY_TYPE_INCONSISTENT);
    }
    let (padding, label) = mech::decryption(mechanism)?;
    let op = EncryptOp { public_key: o.key.public_key.clone(), modulus_len: objects::signature_len(o.key), padding, label };
    m.session(session)?.encrypt = Some(op);
    Ok(())
}

/// C_Encrypt, here with the public key.
pub(crate) fn encrypt(
    m: &mut Module,
    session: CK_SESSION_HANDLE,
    data: Result<&[u8], CK_RV>,
    out: OutSpace,
) -> Result<Reply<Vec<u8>>, CK_RV> {
    let s = m.session(session)?;
    let op = s.encrypt.as_ref().ok_or(CKR_OPERATION_NOT_INITIALIZED)?;
    if out == OutSpace::Missing {
        s.encrypt = None;
        return Err(CKR_ARGUMENTS_BAD);
    }
    // Every ciphertext is as long as the modulus.
    let need = op.modulus_len;
    if let Some(reply) = out.lacks(need) {
        return Ok(reply);
    }
    let op = s.encrypt.take().expect("checked");
    let input = data?;
    let block;
    let plaintext = if op.padding == nekms_protocol::RsaPadding::Raw {
        // CKM_RSA_X_509: up to k bytes, padded on the left with zeros.
        if input.len() > need {
            return Err(CKR_DATA_LEN_RANGE);
        }
        let mut padded = Zeroizing::new(vec![0u8; need]);
        padded[need - input.len()..].copy_from_slice(input);
        block = padded;
        &block[..]
    } else {
        input
    };
    let request = P11Request::Encrypt {
        public_key: op.public_key,
        padding: op.padding,
        plaintext: Secret::from(Zeroizing::new(plaintext.to_vec())),
        label: op.label,
    };
    let ciphertext = match m.call(request)? {
        P11Response::Output(c) => c,
        _ => return Err(CKR_DEVICE_ERROR),
    };
    if ciphertext.len() != need {
        return Err(CKR_DEVICE_ERROR);
    }
    Ok(Reply::Bytes(ciphertext))
}

//! The PKCS#11 module's public operations (C_Verify, C_Encrypt and the raw
//! RSA verification), done here so that the module carries no cryptography
//! of its own. Each takes the SubjectPublicKeyInfo it is given and uses no
//! key, record or secret of the enclave's, needs no session, and returns
//! only what anyone holding that public key computes: offered to the parent
//! as to the module, it gives the parent nothing it lacks.

use nekms_keys::{KeyError, Payload, PublicKey, Scheme};
use nekms_rpc::protocol::{P11Request, P11Response};
use nekms_rpc::RpcError;

/// The CK_RV values these answers carry.
mod ckr {
    pub const DATA_LEN_RANGE: u64 = 0x21;
    pub const DEVICE_ERROR: u64 = 0x30;
    pub const MECHANISM_INVALID: u64 = 0x70;
    pub const SIGNATURE_INVALID: u64 = 0xC0;
}

/// What the module verifies: ECDSA, Ed25519 and RSA over a digest or a
/// message. The Ethereum schemes (typed-data JSON, transactions) are no
/// PKCS#11 mechanism, so their parsers stay out of reach of this path.
fn module_verifies(scheme: Scheme, payload: &Payload) -> bool {
    let scheme_ok = matches!(
        scheme,
        Scheme::EcdsaDer | Scheme::EcdsaRaw | Scheme::Ed25519 | Scheme::RsaPkcs1(_) | Scheme::RsaPss(_) | Scheme::RsaPssParams(..)
    );
    scheme_ok && matches!(payload, Payload::Digest(_) | Payload::Message(_))
}

fn public_key(spki: &[u8]) -> Result<PublicKey, RpcError> {
    PublicKey::from_spki(spki).map_err(|e| RpcError::pkcs11(ckr::DEVICE_ERROR, format!("the object's public key: {e}")))
}

/// Whether `request` is one of the public operations this module answers.
pub fn is_public(request: &P11Request) -> bool {
    matches!(request, P11Request::Verify { .. } | P11Request::RsaPublic { .. } | P11Request::Encrypt { .. })
}

/// Answer `Verify`, `RsaPublic` or `Encrypt` (see [`is_public`]).
pub fn answer(request: &P11Request) -> Result<P11Response, RpcError> {
    match request {
        P11Request::Verify { scheme, payload, .. } if !module_verifies(*scheme, payload) => {
            Err(RpcError::pkcs11(ckr::MECHANISM_INVALID, format!("{scheme} is no PKCS#11 mechanism of the module's")))
        }
        P11Request::Verify { public_key: spki, scheme, payload, signature } => public_key(spki).and_then(|key| {
            key.verify(*scheme, payload, signature)
                .map(|()| P11Response::Done)
                .map_err(|e| RpcError::pkcs11(ckr::SIGNATURE_INVALID, e.to_string()))
        }),
        P11Request::RsaPublic { public_key: spki, input } => nekms_keys::rsa_raw::public_raw(spki, input)
            .map(P11Response::Output)
            .ok_or_else(|| RpcError::pkcs11(ckr::SIGNATURE_INVALID, "not an RSA public key, or the input is not below its modulus")),
        P11Request::Encrypt { public_key: spki, padding, plaintext, label } => public_key(spki).and_then(|key| {
            key.rsa_encrypt(*padding, plaintext.expose(), label.as_deref()).map(P11Response::Output).map_err(|e| match e {
                KeyError::Payload(m) => RpcError::pkcs11(ckr::DATA_LEN_RANGE, m),
                e => RpcError::pkcs11(ckr::DEVICE_ERROR, e.to_string()),
            })
        }),
        _ => Err(RpcError::new(nekms_rpc::ErrorCode::Internal, "not a public operation")),
    }
}

//! Sign (in the enclave) and Verify (here, with the record's public key),
//! with KMS's algorithms and message types.

use nekms_keys::{Hash, KeyError, KeySpec, Payload, PublicKey, Scheme};
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::{b64, Request as Fields};
use serde_json::json;

use super::{enclave_error, store_error, Answer, Ctx};

/// KMS's largest RAW message.
const MAX_MESSAGE: usize = 4096;

/// The scheme KMS's `algorithm` names for a key of `spec`, and the length a DIGEST must have
/// (`None`: the algorithm takes only RAW messages).
fn scheme_for(spec: KeySpec, algorithm: &str) -> Result<(Scheme, Option<usize>), KmsError> {
    let rsa = |h: &str| match h {
        "256" => Some((Hash::Sha256, 32)),
        "384" => Some((Hash::Sha384, 48)),
        "512" => Some((Hash::Sha512, 64)),
        _ => None,
    };
    let found = match (spec, algorithm) {
        (KeySpec::P256 | KeySpec::Secp256k1, "ECDSA_SHA_256") => Some((Scheme::EcdsaDer, Some(32))),
        (KeySpec::P384, "ECDSA_SHA_384") => Some((Scheme::EcdsaDer, Some(48))),
        (KeySpec::Ed25519, "ED25519_SHA_512") => Some((Scheme::Ed25519, None)),
        (s, a) if s.is_rsa() => match (a.strip_prefix("RSASSA_PKCS1_V1_5_SHA_"), a.strip_prefix("RSASSA_PSS_SHA_")) {
            (Some(h), _) => rsa(h).map(|(h, n)| (Scheme::RsaPkcs1(h), Some(n))),
            (_, Some(h)) => rsa(h).map(|(h, n)| (Scheme::RsaPss(h), Some(n))),
            _ => None,
        },
        _ => None,
    };
    found.ok_or_else(|| {
        KmsError::key_usage(format!(
            "SigningAlgorithm {algorithm} is not valid for a {} key; use one of {}",
            super::keys::kms_spec(spec),
            super::keys::signing_algorithms(spec).join(", ")
        ))
    })
}

/// The payload a request names: its Message as MessageType says.
fn payload(f: &Fields, spec: KeySpec, algorithm: &str) -> Result<(Scheme, Payload), KmsError> {
    let message = f.blob("Message", 1, MAX_MESSAGE)?;
    let (scheme, digest_len) = scheme_for(spec, algorithm)?;
    let payload = match f.opt_str("MessageType")?.unwrap_or("RAW") {
        "RAW" => Payload::Message(message.to_vec()),
        "DIGEST" => match digest_len {
            Some(n) if message.len() == n => Payload::Digest(message.to_vec()),
            Some(n) => return Err(KmsError::validation(format!("a DIGEST for {algorithm} is {n} bytes, not {}", message.len()))),
            None => return Err(KmsError::validation(format!("{algorithm} signs RAW messages only"))),
        },
        "EXTERNAL_MU" => return Err(KmsError::unsupported("MessageType EXTERNAL_MU is for ML-DSA keys")),
        other => return Err(KmsError::validation(format!("MessageType {other} is not RAW or DIGEST"))),
    };
    Ok((scheme, payload))
}

pub(super) async fn sign(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "Sign").await?;
    let algorithm = f.str("SigningAlgorithm")?;
    if f.opt_bool("DryRun")? == Some(true) {
        return Err(KmsError::new("DryRunOperationException", "The request would have succeeded, but the DryRun option is set."));
    }
    let record = ctx
        .state
        .cached_record(&name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| KmsError::not_found(format!("Key '{}' does not exist", ctx.arn(&name))))?;
    let (scheme, payload) = payload(f, record.spec, algorithm)?;
    let signature = ctx
        .state
        .enclave
        .call(|c| {
            let (r, p) = ((*record).clone(), payload.clone());
            async move { c.sign(r, Some(scheme), p).await }
        })
        .await
        .map_err(enclave_error)?;
    Ok(json!({"KeyId": ctx.arn(&name), "Signature": b64(&signature.signature), "SigningAlgorithm": algorithm}))
}

pub(super) async fn verify(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "Verify").await?;
    let algorithm = f.str("SigningAlgorithm")?;
    let signature = f.blob("Signature", 1, 6144)?;
    let (record, deletion) = super::keys::entry(ctx, &name).await?;
    if deletion.is_some() {
        return Err(KmsError::invalid_state(format!("{} is pending deletion.", ctx.arn(&name))));
    }
    let (scheme, payload) = payload(f, record.spec, algorithm)?;
    let public = PublicKey::from_spki(&record.public_key).map_err(|e| KmsError::internal(e.to_string()))?;
    match public.verify(scheme, &payload, &signature) {
        Ok(()) => Ok(json!({"KeyId": ctx.arn(&name), "SignatureValid": true, "SigningAlgorithm": algorithm})),
        Err(KeyError::BadSignature(_)) => {
            Err(KmsError::new("KMSInvalidSignatureException", "The signature does not verify with this key and message."))
        }
        Err(e) => Err(KmsError::validation(e.to_string())),
    }
}

//! Sign (in the enclave) and Verify (here, with the record's public key),
//! with KMS's algorithms and message types.

use std::sync::Arc;

use nekms_keys::{KeyError, KeyRecord, PublicKey};
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::{b64, Request as Fields};
use serde_json::json;

use super::{enclave_error, store_error, Answer, Ctx};

/// Record `name` as the enclave will use it (cached a few seconds), refused
/// when it is pending deletion or disabled.
pub(super) async fn usable_record(ctx: &Ctx<'_>, name: &str) -> Result<Arc<KeyRecord>, KmsError> {
    let record = ctx
        .state
        .cached_record(name)
        .await
        .map_err(store_error)?
        .ok_or_else(|| KmsError::not_found(format!("Key '{}' does not exist", ctx.arn(name))))?;
    super::meta::usable(ctx, &record).await?;
    Ok(record)
}

/// Refused when `record` is, to KMS's clients, an ENCRYPT_DECRYPT key.
fn signs(ctx: &Ctx<'_>, record: &KeyRecord, action: &str) -> Result<(), KmsError> {
    if record.may_decrypt() {
        return Err(KmsError::key_usage(format!(
            "{} key usage is ENCRYPT_DECRYPT which is not valid for {action}.",
            ctx.arn(&record.key_id)
        )));
    }
    Ok(())
}

pub(super) async fn sign(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "Sign").await?;
    let algorithm = f.str("SigningAlgorithm")?;
    let record = usable_record(ctx, &name).await?;
    signs(ctx, &record, "Sign")?;
    let (scheme, payload) = super::parse::sign_request(f, record.spec, algorithm)?;
    super::dry_run(f)?;
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
    signs(ctx, &record, "Verify")?;
    let (scheme, payload) = super::parse::sign_request(f, record.spec, algorithm)?;
    super::meta::usable(ctx, &record).await?;
    super::opened(ctx, &record).await?;
    let public = PublicKey::from_spki(&record.public_key).map_err(|e| KmsError::internal(e.to_string()))?;
    match public.verify(scheme, &payload, &signature) {
        Ok(()) => Ok(json!({"KeyId": ctx.arn(&name), "SignatureValid": true, "SigningAlgorithm": algorithm})),
        Err(KeyError::BadSignature(_)) => {
            Err(KmsError::new("KMSInvalidSignatureException", "The signature does not verify with this key and message."))
        }
        Err(e) => Err(KmsError::validation(e.to_string())),
    }
}

//! Encrypt (here, with the record's public key, as KMS does it) and Decrypt
//! (in the enclave) with RSA keys made to decrypt, RSAES-OAEP with SHA-1 or
//! SHA-256 as KMS names them. A ciphertext is the bare RSA block, as KMS's
//! is: one made by anyone from GetPublicKey's SPKI decrypts the same.

use nekms_keys::{KeyRecord, PublicKey, RsaPadding};
use nekms_kms_proto::error::KmsError;
use nekms_kms_proto::request::{b64, Request as Fields};
use nekms_rpc::ErrorCode;
use serde_json::json;

use super::{enclave_error, Answer, Ctx};

/// KMS's largest Encrypt plaintext and Decrypt ciphertext.
const MAX_PLAINTEXT: usize = 4096;
const MAX_CIPHERTEXT: usize = 6144;

/// Refused unless `record` was made to decrypt (KMS's InvalidKeyUsageException).
fn decrypts(ctx: &Ctx<'_>, record: &KeyRecord, action: &str) -> Result<(), KmsError> {
    if record.may_decrypt() {
        return Ok(());
    }
    Err(KmsError::key_usage(format!("{} key usage is SIGN_VERIFY which is not valid for {action}.", ctx.arn(&record.key_id))))
}

/// Fields KMS takes only with symmetric keys.
fn no_context(f: &Fields) -> Result<(), KmsError> {
    if f.has("EncryptionContext") {
        return Err(KmsError::validation("EncryptionContext is for symmetric keys; an RSA key takes none"));
    }
    Ok(())
}

pub(super) async fn encrypt(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    let name = ctx.resolve(f.key_id("KeyId")?, "Encrypt").await?;
    let plaintext = f.blob("Plaintext", 1, MAX_PLAINTEXT)?;
    no_context(f)?;
    let record = super::sign::usable_record(ctx, &name).await?;
    decrypts(ctx, &record, "Encrypt")?;
    let (hash, algorithm) = super::parse::encryption_algorithm(f, record.spec)?;
    super::opened(ctx, &record).await?;
    super::dry_run(f)?;
    let public = PublicKey::from_spki(&record.public_key).map_err(|e| KmsError::internal(e.to_string()))?;
    let ciphertext = public.rsa_encrypt(RsaPadding::Oaep(hash), &plaintext, None).map_err(|e| KmsError::validation(e.to_string()))?;
    Ok(json!({"KeyId": ctx.arn(&name), "CiphertextBlob": b64(&ciphertext), "EncryptionAlgorithm": algorithm}))
}

pub(super) async fn decrypt(ctx: &Ctx<'_>, f: &Fields) -> Answer {
    // KMS finds a symmetric key from its ciphertext; an RSA ciphertext names none.
    let Some(key_id) = f.opt_str("KeyId")? else {
        return Err(KmsError::validation("KeyId is required: an enclave key is asymmetric, and its ciphertext does not name it"));
    };
    let name = ctx.resolve(key_id, "Decrypt").await?;
    if !ctx.caller.decrypt {
        return Err(KmsError::new(
            "AccessDeniedException",
            format!("User: {} is not authorized to perform: kms:Decrypt (the access file does not let it decrypt)", ctx.caller.name),
        ));
    }
    let ciphertext = f.blob("CiphertextBlob", 1, MAX_CIPHERTEXT)?;
    if f.has("Recipient") {
        return Err(KmsError::unsupported(
            "Recipient: an enclave key's plaintext is its caller's; ask the enclave's kmstool for KMS's own keys",
        ));
    }
    no_context(f)?;
    let record = super::sign::usable_record(ctx, &name).await?;
    decrypts(ctx, &record, "Decrypt")?;
    let (hash, algorithm) = super::parse::encryption_algorithm(f, record.spec)?;
    super::dry_run(f)?;
    let plaintext = ctx
        .state
        .enclave
        .call(|c| {
            let r = (*record).clone();
            let ciphertext = ciphertext.clone();
            async move { c.key_decrypt(r, hash, &ciphertext).await }
        })
        .await
        .map_err(|e| match e.remote() {
            // The enclave's one answer for a ciphertext that does not open: no padding oracle here either.
            Some(r) if r.code == ErrorCode::BadRequest => {
                KmsError::invalid_ciphertext("The ciphertext does not decrypt with this key and algorithm.")
            }
            _ => enclave_error(e),
        })?;
    Ok(json!({"KeyId": ctx.arn(&name), "Plaintext": b64(plaintext.expose()), "EncryptionAlgorithm": algorithm}))
}
